"""scripts/convert_sd_to_ms.py path: a tiny random Stable Diffusion v1 (diffusers UNet2DConditionModel +
AutoencoderKL + transformers CLIPTextModel) saved as a diffusers folder, a CompVis .ckpt (with
pickled non-tensor objects that must not be executed) and a CompVis .safetensors; all three convert
to the same state, load strictly into our model, and every component matches the reference on the
same weights; English prompts run through the same pipeline with the CLIP BPE tokenizer."""
import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from ldm_tiny import TINY_MODEL

torch = pytest.importorskip("torch", reason="torch is the reference for the converter tests")
diffusers = pytest.importorskip("diffusers", reason="diffusers is the reference for the converter tests")
transformers = pytest.importorskip("transformers", reason="transformers is the reference (CLIPTextModel)")

ROOT = Path(__file__).resolve().parents[1]

SD_TINY = copy.deepcopy(TINY_MODEL)
SD_TINY["family"] = "sd-v1-tiny"
SD_TINY["unet"]["gelu"] = "exact"
SD_TINY["text_encoder"] = {"vocab_size": 49408, "context_length": 77, "width": 16, "layers": 2,
                           "heads": 2, "ln_eps": 1.0e-5}


class PickledCallback:
    """Stands for the Lightning objects some SD .ckpt files pickle; must never be imported."""

    def __init__(self):
        self.best = 1.0


def _randomize_torch(module, seed, std=0.2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            s = 0.05 if "quant_conv" in name else std
            if name.endswith("weight") and p.ndim == 1:
                p.copy_(1.0 + s * torch.randn(p.shape, generator=g))
            else:
                p.copy_(s * torch.randn(p.shape, generator=g))
    return module.eval()


@pytest.fixture(scope="module")
def sd_tiny(tmp_path_factory):
    from mind_diffusion.checkpoint.convert_unet import compvis_unet_config_to_diffusers

    folder = tmp_path_factory.mktemp("sd_tiny")
    unet_kw = {k: v for k, v in SD_TINY["unet"].items() if k != "gelu"}
    unet = _randomize_torch(diffusers.UNet2DConditionModel(
        sample_size=8, **compvis_unet_config_to_diffusers(unet_kw)), 1)
    v = SD_TINY["vae"]
    vae = _randomize_torch(diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=v["num_groups"],
        block_out_channels=tuple(v["ch"] * m for m in v["ch_mult"]), layers_per_block=v["num_res_blocks"],
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4), 2)
    t = SD_TINY["text_encoder"]
    text = _randomize_torch(transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=t["vocab_size"], hidden_size=t["width"], intermediate_size=4 * t["width"],
        num_hidden_layers=t["layers"], num_attention_heads=t["heads"], max_position_embeddings=77,
        hidden_act="quick_gelu", layer_norm_eps=t["ln_eps"], attn_implementation="eager")), 3)
    pipe_dir = folder / "diffusers"
    unet.save_pretrained(pipe_dir / "unet")
    vae.save_pretrained(pipe_dir / "vae")
    text.save_pretrained(pipe_dir / "text_encoder")
    cfg = {"model": SD_TINY,
           "tokenizer": {"kind": "bpe", "vocab_file": "bpe_simple_vocab_16e6.txt.gz", "pad_id": 49407},
           "checkpoint": {"name": "sd-tiny.ckpt", "url": ""},
           "sampling": {"sampler": "plms", "steps": 3, "scale": 7.5, "H": 64, "W": 64, "seed": 42,
                        "quantize": "round"}}
    (folder / "sd-tiny.yaml").write_text(yaml.safe_dump(cfg))
    return {"folder": folder, "diffusers": pipe_dir, "unet": unet, "vae": vae, "text": text,
            "config": folder / "sd-tiny.yaml"}


def _ours_from_state(state, filled):
    from mind_diffusion.checkpoint.io import load_strict
    from mind_diffusion.ldm.model import build_ldm

    net = build_ldm(SD_TINY)
    load_strict(net, {k: v for k, v in state.items() if k not in filled}, allow_missing=filled)
    return net


def _compvis_layout(state):
    """Our converted state back in the CompVis single-file names (as sd-v1-5*.ckpt)."""
    from mind_diffusion.checkpoint.convert_text import ours_to_hf_clip_text
    from mind_diffusion.checkpoint.convert_unet import ours_to_compvis_unet
    from mind_diffusion.checkpoint.convert_vae import ours_to_compvis_vae

    strip = lambda p: {k[len(p):]: v for k, v in state.items() if k.startswith(p)}  # noqa: E731
    compvis = {}
    compvis.update({"model.diffusion_model." + k: v
                    for k, v in ours_to_compvis_unet(strip("model.diffusion_model.")).items()})
    compvis.update({"first_stage_model." + k: v
                    for k, v in ours_to_compvis_vae(strip("first_stage_model.")).items()})
    compvis.update({"cond_stage_model.transformer." + k: v
                    for k, v in ours_to_hf_clip_text(strip("cond_stage_model.transformer.")).items()})
    return compvis


def test_three_source_formats_convert_identically(sd_tiny, tmp_path):
    from safetensors.numpy import save_file

    from mind_diffusion.checkpoint.convert_sd import convert_stable_diffusion

    state, filled = convert_stable_diffusion(sd_tiny["diffusers"])
    assert len(filled) == 4
    compvis = _compvis_layout(state)
    compvis["betas"] = np.linspace(1e-4, 0.02, 1000, dtype=np.float32)       # buffers to drop
    compvis["model_ema.decay"] = np.float32(0.9999)
    compvis["cond_stage_model.transformer.text_model.embeddings.position_ids"] = np.arange(77)[None]
    ckpt = tmp_path / "sd.ckpt"
    torch.save({"state_dict": {k: torch.from_numpy(np.array(v)) for k, v in compvis.items()},
                "global_step": 470000, "callbacks": {"cb": PickledCallback()}}, ckpt)
    st = tmp_path / "sd.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in compvis.items()}, str(st))
    for src in (ckpt, st):
        other, filled2 = convert_stable_diffusion(src)
        assert sorted(other) == sorted(state) and filled2 == filled
        for k in state:
            np.testing.assert_array_equal(other[k], state[k], err_msg=k)


def test_components_match_references_after_conversion(sd_tiny, ms_mode):
    from mindspore import Tensor

    from mind_diffusion.checkpoint.convert_sd import convert_stable_diffusion

    net = _ours_from_state(*convert_stable_diffusion(sd_tiny["diffusers"]))
    rng = np.random.default_rng(0)
    ids = np.zeros((2, 77), np.int64)
    ids[:, :6] = [[49406, 320, 1125, 539, 2368, 49407], [49406, 49407, 0, 0, 0, 0]]
    ids[1, 2:] = 49407
    with torch.no_grad():
        ref_ctx = sd_tiny["text"](torch.from_numpy(ids)).last_hidden_state.numpy()
    ctx = net.cond_stage_model(Tensor(ids)).asnumpy()
    np.testing.assert_allclose(ctx, ref_ctx, atol=1e-4)

    x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    t = np.array([999.0, 412.3], np.float32)
    with torch.no_grad():
        ref_eps = sd_tiny["unet"](torch.from_numpy(x), torch.from_numpy(t),
                                  encoder_hidden_states=torch.from_numpy(ref_ctx)).sample.numpy()
    eps = net.model.diffusion_model(Tensor(x), Tensor(t), Tensor(ref_ctx)).asnumpy()
    np.testing.assert_allclose(eps, ref_eps, atol=1e-4)

    z = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    with torch.no_grad():
        ref_img = sd_tiny["vae"].decode(torch.from_numpy(z)).sample.numpy()
    img = net.first_stage_model.decode(Tensor(z)).asnumpy()
    np.testing.assert_allclose(img, ref_img, atol=1e-4)


def test_english_prompt_through_the_pipeline(sd_tiny, shared_dir):
    from mind_diffusion.checkpoint.convert_sd import convert_stable_diffusion
    from mind_diffusion.ldm.pipeline import LDMPipeline

    state, _ = convert_stable_diffusion(sd_tiny["diffusers"])
    pipe = LDMPipeline.from_pretrained(sd_tiny["config"], None, state=state,
                                       vocab=shared_dir / "reference" / "bpe_simple_vocab_16e6.txt.gz")
    ids = pipe.tokenize(["a photo of a cat"])
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407] and ids[0, -1] == 49407
    with torch.no_grad():
        ref = sd_tiny["text"](torch.from_numpy(ids.astype(np.int64))).last_hidden_state.numpy()
    np.testing.assert_allclose(pipe.encode_text(["a photo of a cat"]), ref, atol=1e-4)
    images = pipe("a photo of a cat", num_images=1, num_inference_steps=2, progress=False).images
    assert images.shape == (1, 64, 64, 3) and images.dtype == np.uint8 and images.std() > 0


def test_converter_script(sd_tiny, tmp_path, shared_dir):
    env = {k: v for k, v in os.environ.items() if k != "MIND_DIFFUSION_DEBUG"}
    out = tmp_path / "models" / "sd-tiny-ms.ckpt"
    bpe = shared_dir / "reference" / "bpe_simple_vocab_16e6.txt.gz"
    cmd = [sys.executable, str(ROOT / "scripts" / "convert_sd_to_ms.py"), str(sd_tiny["diffusers"]),
           "--output", str(out), "--config", str(sd_tiny["config"]), "--bpe", str(bpe)]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert out.is_file() and (out.parent / "bpe_simple_vocab_16e6.txt.gz").is_file()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "--overwrite" in p.stderr  # never replaces silently
    # the written file runs through txt2img with an English prompt
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "txt2img.py"), "--config", str(sd_tiny["config"]),
                        "--ckpt_path", str(out.parent), "--ckpt_name", out.name, "--prompt", "a red fox",
                        "--H", "64", "--W", "64", "--ddim_steps", "2", "--output_path", str(tmp_path / "o"),
                        "--device_target", "CPU"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (tmp_path / "o" / "samples" / "00000.png").is_file()


@pytest.mark.parametrize("make, needle", [
    (lambda d: d / "missing.ckpt", "not found"),
    (lambda d: (d / "junk.ckpt").write_bytes(b"\x00" * 64) and d / "junk.ckpt", "neither a torch zip"),
    (lambda d: d, "not a diffusers Stable Diffusion folder"),
])
def test_converter_errors(tmp_path, make, needle):
    from mind_diffusion.checkpoint.convert_sd import ConversionError, convert_stable_diffusion

    with pytest.raises(ConversionError, match=needle):
        convert_stable_diffusion(make(tmp_path))


def test_sd2_and_foreign_state_are_refused():
    from mind_diffusion.checkpoint.convert_sd import ConversionError, compvis_to_ours

    with pytest.raises(ConversionError, match="2.x"):
        compvis_to_ours({"model.diffusion_model.x": np.zeros(1),
                         "cond_stage_model.model.token_embedding.weight": np.zeros(1)})
    with pytest.raises(ConversionError, match="not a CompVis-format"):
        compvis_to_ours({"conv_in.weight": np.zeros(1)})


def test_inpainting_sources_convert_and_load(sd_tiny, tmp_path):
    """An SD inpainting model (UNet with 9 input channels) converts from a diffusers folder
    and from the CompVis layout (sd-v1-5-inpainting.ckpt) to the same state, which loads
    strictly into the 9-channel config; the channel count picks the config, and a mismatch
    names the config that fits."""
    import shutil

    from mind_diffusion.checkpoint.convert_sd import (SD_CONFIG, SD_INPAINT_CONFIG,
                                                      ConversionError, check_channels_fit,
                                                      convert_stable_diffusion,
                                                      default_sd_config, unet_in_channels)
    from mind_diffusion.checkpoint.convert_unet import compvis_unet_config_to_diffusers
    from mind_diffusion.checkpoint.io import load_strict
    from mind_diffusion.ldm.model import build_ldm

    folder = tmp_path / "inpaint"
    for part in ("vae", "text_encoder"):
        shutil.copytree(sd_tiny["diffusers"] / part, folder / part)
    unet_kw = {k: v for k, v in SD_TINY["unet"].items() if k != "gelu"}
    unet_kw["in_channels"] = 9
    unet = _randomize_torch(diffusers.UNet2DConditionModel(
        sample_size=8, **compvis_unet_config_to_diffusers(unet_kw)), 5)
    unet.save_pretrained(folder / "unet")
    state, filled = convert_stable_diffusion(folder)
    assert unet_in_channels(state) == 9 and default_sd_config(state) == SD_INPAINT_CONFIG
    w = state["model.diffusion_model.input_blocks.0.0.conv.weight"]
    np.testing.assert_array_equal(w, unet.conv_in.weight.detach().numpy())
    # the CompVis single-file layout of the same weights converts identically
    compvis = _compvis_layout(state)
    ckpt = tmp_path / "sd-inpainting.ckpt"
    torch.save({"state_dict": {k: torch.from_numpy(np.array(v)) for k, v in compvis.items()}}, ckpt)
    other, filled2 = convert_stable_diffusion(ckpt)
    assert sorted(other) == sorted(state) and filled2 == filled
    assert all(np.array_equal(other[k], state[k]) for k in state)
    model = copy.deepcopy(SD_TINY)
    model["unet"]["in_channels"] = 9
    net = build_ldm(model)
    report = load_strict(net, {k: v for k, v in state.items() if k not in filled},
                         allow_missing=filled)
    assert report.ok
    check_channels_fit(state, 9, "inpaint.yaml")
    with pytest.raises(ConversionError, match="v1-inpainting-inference.yaml"):
        check_channels_fit(state, 4, "configs/sd/v1-inference.yaml")
    text_state, _ = convert_stable_diffusion(sd_tiny["diffusers"])
    assert default_sd_config(text_state) == SD_CONFIG
    with pytest.raises(ConversionError, match="text-to-image model"):
        check_channels_fit(text_state, 9, "configs/sd/v1-inpainting-inference.yaml")
