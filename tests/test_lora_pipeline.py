"""LoRA through the LDM pipeline and txt2img on a tiny random model: our files (UNet + text
encoder), the original's MindPet-named checkpoints, merged == separate == the LoRA network,
weights, unload, the original's enable_lora config, and one-line errors for bad LoRA input."""
import json

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from cli_helpers import one_line_error, run_script
from ldm_tiny import TINY_MODEL, make_tiny_model_dir
from mind_diffusion.checkpoint.convert_lora import LoRAFileError
from mind_diffusion.checkpoint.io import read_checkpoint, save_atomic
from mind_diffusion.nn.lora import TEXT_ATTN_TARGETS, TEXT_MLP_TARGETS, UNET_ATTN_TARGETS, inject_lora, lora_parameters

PROMPT = "城市夜景 赛博朋克"
# the tiny model with a one-level UNet (attention at the only level): fewer ops per pynative call
MODEL = {**TINY_MODEL, "unet": {**TINY_MODEL["unet"], "channel_mult": [1], "attention_resolutions": [1]}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """tiny model dir + a LoRA network (UNet attention and text encoder) + its saved file."""
    from conftest import SHARED
    from mind_diffusion.config import load_config
    from mind_diffusion.ldm.checkpoint import load_ldm_checkpoint
    from mind_diffusion.ldm.config import ldm_config_defaults
    from mind_diffusion.ldm.lora import save_lora
    from mind_diffusion.ldm.model import build_ldm

    if not SHARED.is_dir():
        pytest.skip(f"../shared not found at {SHARED} (the vocab lives there in CI)")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    folder = tmp_path_factory.mktemp("tiny_lora")
    cfg_path, ckpt = make_tiny_model_dir(folder, SHARED, model=MODEL)
    cfg = load_config(cfg_path, (), ldm_config_defaults())
    net = build_ldm(cfg.model)
    load_ldm_checkpoint(net, ckpt)
    inject_lora(net.unet, rank=4, alpha=4, targets=UNET_ATTN_TARGETS)
    inject_lora(net.text_encoder, rank=2, alpha=1, targets=TEXT_ATTN_TARGETS + TEXT_MLP_TARGETS)
    rng = np.random.default_rng(7)
    for p in lora_parameters(net):
        p.set_data(Tensor((0.3 * rng.standard_normal(p.shape)).astype(np.float32)))
    path = save_lora(net, folder / "lora.ckpt", base_checkpoint=ckpt)
    return {"cfg": cfg_path, "ckpt": ckpt, "net": net, "lora": path, "folder": folder}


def _pipe(tiny, **kw):
    from mind_diffusion.ldm.pipeline import LDMPipeline

    ms.set_context(mode=ms.PYNATIVE_MODE)
    return LDMPipeline.from_pretrained(tiny["cfg"], tiny["ckpt"], **kw)


def _outputs(model, ids):
    rng = np.random.default_rng(3)
    x = Tensor(rng.standard_normal((1, 4, 8, 8)).astype(np.float32))
    ctx = model.text_encoder(Tensor(ids))
    eps = model.unet(x, Tensor(np.array([500.0], np.float32)), ctx)
    return ctx.asnumpy(), eps.asnumpy()


def test_pipeline_load_merged_separate_weight_unload(tiny):
    pipe = _pipe(tiny)
    ids = pipe.tokenize([PROMPT])
    ref_ctx, ref_eps = _outputs(tiny["net"], ids)
    base = {p.name: p.asnumpy().copy() for p in pipe.model.get_parameters()}
    base_ctx = pipe.model.text_encoder(Tensor(ids)).asnumpy()
    assert np.abs(ref_ctx - base_ctx).max() > 1e-2

    entry = pipe.load_lora(tiny["lora"])                        # merged (default)
    assert entry.parsed.format == "mindpet" and not entry.notes  # same base sha256: no note
    ctx, eps = _outputs(pipe.model, ids)
    assert np.abs(ctx - ref_ctx).max() <= 1e-5 * np.abs(ref_ctx).max()
    assert np.abs(eps - ref_eps).max() <= 1e-5 * np.abs(ref_eps).max()
    # the UNet LoRA is not negligible: every attention projection moved
    moved = [np.abs(p.asnumpy() - base[p.name]).max() for p in pipe.model.get_parameters()
             if p.name.startswith("model.diffusion_model.") and ".to_" in p.name and p.name.endswith("weight")]
    assert moved and min(moved) > 1e-2
    assert not lora_parameters(pipe.model)                      # merged: no extra layers
    assert pipe.settings(prompt="p", negative_prompt="", sampler="ddim", steps=1, scale=1.0, seed=0,
                         height=64, width=64)["lora"] == "lora.ckpt:1"
    x = np.random.default_rng(4).standard_normal((1, 4, 8, 8)).astype(np.float32)
    context = np.concatenate([pipe.encode_text([""]), pipe.encode_text([PROMPT])])
    merged_step = pipe.model_fn(context, 7.5)(x, np.array([700.0]))   # the compiled guided step
    assert pipe.unload_lora() == 1
    assert max(np.abs(p.asnumpy() - base[p.name]).max() for p in pipe.model.get_parameters()) <= 1e-6

    pipe.load_lora(tiny["lora"], weight=1.0, merge=False)      # separate layers: same outputs
    assert len(lora_parameters(pipe.model)) == len(lora_parameters(tiny["net"]))
    ctx = pipe.model.text_encoder(Tensor(ids)).asnumpy()
    assert np.abs(ctx - ref_ctx).max() <= 1e-5 * np.abs(ref_ctx).max()
    sep_step = pipe.model_fn(context, 7.5)(x, np.array([700.0]))    # rebuilt around the new layers
    assert np.abs(sep_step - merged_step).max() <= 1e-5 * np.abs(merged_step).max()

    # weight w adds w times the delta: a merged copy at -0.5 halves the separate one
    pipe.load_lora(tiny["lora"], weight=-0.5)
    params = {p.name: p for p in pipe.model.get_parameters()}
    layer = "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k"
    ref_params = {p.name: p for p in tiny["net"].get_parameters()}
    a, b = (ref_params[f"{layer}.{n}"].asnumpy() for n in ("tk_delta_lora_a", "tk_delta_lora_b"))
    want = base[layer + ".weight"] - 0.5 * (b.astype(np.float64) @ a)
    assert np.abs(params[layer + ".weight"].asnumpy() - want).max() <= 1e-6
    assert pipe.unload_lora(tiny["lora"]) == 2 and not pipe.loras and not lora_parameters(pipe.model)
    assert max(np.abs(p.asnumpy() - base[p.name]).max() for p in pipe.model.get_parameters()) <= 1e-6
    with pytest.raises(ValueError, match="is not loaded"):
        pipe.unload_lora(tiny["lora"])


def test_original_mindpet_checkpoint_and_enable_lora_config(tiny, capsys):
    """A file as the original's training writes it (wkhh_txt2img_lora-*.ckpt: only the UNet
    LoRA tensors, tk_delta names, no metadata) under the original's LoRA config keys (enable_lora,
    lora_rank 4, lora_alpha 4 -> scale 1); a base sha256 that differs gives a note."""
    state = read_checkpoint(tiny["lora"])
    unet_only = {k: v for k, v in state.items() if k.startswith("model.diffusion_model.")}
    original = save_atomic(unet_only, tiny["folder"] / "wkhh_txt2img_lora-12_1224.ckpt")
    pipe = _pipe(tiny, overrides=["model.unet.enable_lora=true", "model.text_encoder.enable_lora=true"])
    names = [p.name for p in lora_parameters(pipe.model)]   # the config built empty LoRA layers
    assert len([n for n in names if n.startswith("model.diffusion_model.")]) == len(unet_only)
    assert "cond_stage_model.transformer.transformer_layer.resblocks.1.attn.attn.in_proj.tk_delta_lora_a" in names
    ids = pipe.tokenize([PROMPT])
    ref_eps = tiny["net"].unet(Tensor(np.random.default_rng(3).standard_normal((1, 4, 8, 8)).astype(np.float32)),
                               Tensor(np.array([500.0], np.float32)), pipe.model.text_encoder(Tensor(ids))).asnumpy()
    pipe.load_lora(original)
    _, eps = _outputs(pipe.model, ids)
    assert np.abs(eps - ref_eps).max() <= 1e-5 * np.abs(ref_eps).max()
    # another base: the file records a sha256 that is not this checkpoint's
    meta = json.loads(str(read_checkpoint(tiny["lora"])["meta.lora"]))
    other = save_atomic({k: v for k, v in state.items() if not k.startswith("meta.")},
                        tiny["folder"] / "other_base.ckpt",
                        extra={"meta.lora": json.dumps({**meta, "base_sha256": "0" * 64})})
    entry = pipe.load_lora(other, merge=False)
    assert entry.notes and "was trained on" in capsys.readouterr().out


def test_bad_lora_input_in_the_pipeline(tiny):
    from safetensors.numpy import save_file

    pipe = _pipe(tiny)
    base = {p.name: p.asnumpy().copy() for p in pipe.model.get_parameters()}
    with pytest.raises(LoRAFileError, match="LoRA file not found"):
        pipe.load_lora(tiny["folder"] / "missing.safetensors")
    # a LoRA made for SD-v1 (768-wide context) on this tiny model: names fit, shapes do not
    bad = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight":
           np.zeros((4, 768), np.float32),
           "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight":
           np.zeros((16, 4), np.float32)}
    save_file(bad, str(tiny["folder"] / "sd15.safetensors"))
    with pytest.raises(LoRAFileError, match="made for another base model"):
        pipe.load_lora(tiny["folder"] / "sd15.safetensors")
    with pytest.raises(ValueError, match="finite number"):
        pipe.load_lora(tiny["lora"], weight=float("nan"))
    from mind_diffusion.checkpoint.io import CheckpointError
    from mind_diffusion.ldm.pipeline import LDMPipeline

    with pytest.raises(CheckpointError, match="is a LoRA file .* not a model checkpoint: .* --lora lora.ckpt"):
        LDMPipeline.from_pretrained(tiny["cfg"], tiny["lora"])  # a LoRA passed as the base model
    assert not pipe.loras
    assert all(np.array_equal(p.asnumpy(), base[p.name]) for p in pipe.model.get_parameters())


def test_text_encoder_lora_names_follow_hf_clip(tiny, tmp_path):
    """kohya (lora_te_*) and diffusers (text_encoder.*) text-encoder LoRAs land on the HF CLIP
    layer they name: q/k/v_proj on their rows of our fused in_proj, mlp.fc1/fc2 on c_fc/c_proj
    (read back through the HF CLIP name map of the converter)."""
    from safetensors.numpy import save_file

    from mind_diffusion.checkpoint.convert_text import ours_to_hf_clip_text
    from mind_diffusion.ldm.checkpoint import PREFIX_TEXT

    pipe = _pipe(tiny)

    def hf_state():
        st = {p.name[len(PREFIX_TEXT):]: p.asnumpy().copy() for p in pipe.model.get_parameters()
              if p.name.startswith(PREFIX_TEXT)}
        return ours_to_hf_clip_text(st)

    before = hf_state()
    rng = np.random.default_rng(2)
    width = 16
    layer = "text_model.encoder.layers.1."
    ups = {m: rng.standard_normal((64 if m == "mlp.fc1" else width, 2)).astype(np.float32)
           for m in ("self_attn.k_proj", "mlp.fc1")}
    downs = {m: rng.standard_normal((2, 64 if m == "mlp.fc2" else width)).astype(np.float32) for m in ups}
    kohya = {}
    for m in ups:
        flat = "lora_te_" + (layer + m).replace(".", "_")
        kohya.update({flat + ".lora_down.weight": downs[m], flat + ".lora_up.weight": ups[m],
                      flat + ".alpha": np.asarray(1.0, np.float32)})
    save_file(kohya, str(tmp_path / "te.safetensors"))
    diffusers = {f"text_encoder.{layer}{m}.lora_{ab}.weight": (downs if ab == "A" else ups)[m]
                 for m in ups for ab in "AB"}
    save_file(diffusers, str(tmp_path / "te_diffusers.safetensors"))
    for name, scale in (("te.safetensors", 0.5), ("te_diffusers.safetensors", 1.0)):
        pipe.load_lora(tmp_path / name)
        after = hf_state()
        changed = {k for k in before if not np.array_equal(before[k], after[k])}
        assert changed == {layer + m + ".weight" for m in ups}, (name, changed)
        for m in ups:
            want = before[layer + m + ".weight"] + scale * ups[m].astype(np.float64) @ downs[m]
            assert np.abs(after[layer + m + ".weight"] - want).max() <= 1e-6
        pipe.unload_lora()


def _cli_args(tiny, out, *extra):
    return ["--config", tiny["cfg"], "--ckpt_path", tiny["ckpt"].parent, "--ckpt_name", tiny["ckpt"].name,
            "--output_path", out, "--H", 64, "--W", 64, "--device_target", "CPU", "--prompt", PROMPT,
            "--sampler", "ddim", "--ddim_steps", 1, "--skip_grid", *extra]


def test_lora_flags_checked_before_loading(tiny, tmp_path):
    import argparse

    from mind_diffusion.ldm.lora import add_lora_args, lora_specs_from_args

    parser = argparse.ArgumentParser()
    add_lora_args(parser)

    def specs(*argv):
        return lora_specs_from_args(parser.parse_args([str(a) for a in argv]))

    assert specs("--lora", f"{tiny['lora']}:0.5", "--enable_lora", "True", "--lora_ckpt_filepath",
                 tiny["lora"]) == [(tiny["lora"], 0.5), (tiny["lora"], 1.0)]
    assert specs("--enable_lora", "False", "--lora_ckpt_filepath", "models") == []  # as the original
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    for argv, err, needle in ((["--lora", tmp_path / "nope.ckpt"], LoRAFileError, "LoRA file not found"),
                              (["--lora", tmp_path], LoRAFileError, "LoRA file not found"),
                              (["--lora", tmp_path / "notes.ckpt"], LoRAFileError, "cannot be read"),
                              (["--lora", f"{tiny['lora']}:heavy"], ValueError, "must be a finite number"),
                              (["--enable_lora", "True"], ValueError, "--lora_ckpt_filepath"),
                              (["--enable_lora", "maybe"], ValueError, "--enable_lora")):
        with pytest.raises(err, match=needle):
            specs(*argv)


@pytest.mark.slow
def test_txt2img_lora_flags(tiny, tmp_path):
    """--lora PATH:WEIGHT (repeatable) with the original's --enable_lora / --lora_ckpt_filepath,
    separate mode; the PNG records the LoRAs; a missing file is one line, nothing written."""
    from mind_diffusion.utils.images import read_png_parameters

    out = tmp_path / "out"
    p = run_script("scripts/txt2img.py", *_cli_args(tiny, out, "--lora", f"{tiny['lora']}:0.5",
                                                     "--enable_lora", "True", "--lora_ckpt_filepath",
                                                     tiny["lora"], "--lora_mode", "separate"))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "LoRA lora.ckpt (mindpet" in p.stdout
    assert read_png_parameters(out / "samples" / "00000.png")["lora"] == "lora.ckpt:0.5, lora.ckpt:1"
    bad_out = tmp_path / "bad"
    one_line_error(run_script("scripts/txt2img.py", *_cli_args(tiny, bad_out, "--lora", tmp_path / "nope.ckpt")),
                   "LoRA file not found")
    assert not bad_out.exists()


def test_identifier_embedding_rows_in_a_lora_file(tiny, tmp_path):
    """A LoRA file with the identifier's trained embedding rows (DreamBooth's train_token_rows): the
    pipeline adds them to the embedding table (merged or separate: the same text context as the
    training network, whose rows are a separate delta), unloading restores the table; rows for
    another text encoder, or without their ids, are one line."""
    from mind_diffusion.config import load_config
    from mind_diffusion.ldm.checkpoint import load_ldm_checkpoint
    from mind_diffusion.ldm.config import ldm_config_defaults
    from mind_diffusion.ldm.dreambooth_training import token_ids
    from mind_diffusion.ldm.lora import LORA_META_KEY, save_lora
    from mind_diffusion.ldm.model import build_ldm

    pipe = _pipe(tiny)
    ids = token_ids(pipe.tokenizer, "sks")
    net = build_ldm(load_config(tiny["cfg"], (), ldm_config_defaults()).model)
    load_ldm_checkpoint(net, tiny["ckpt"])
    inject_lora(net.text_encoder, rank=2, alpha=2, targets=TEXT_ATTN_TARGETS)
    rows = net.text_encoder.transformer.attach_token_rows(ids, "sks")
    assert rows.name == "cond_stage_model.transformer.token_rows"
    rng = np.random.default_rng(11)
    for p in lora_parameters(net) + [rows]:
        p.set_data(Tensor((0.5 * rng.standard_normal(p.shape)).astype(np.float32)))
    path = save_lora(net, tmp_path / "ti.ckpt", base_checkpoint=tiny["ckpt"])
    state = read_checkpoint(path)
    assert json.loads(str(state[LORA_META_KEY]))["token_rows"]["ids"] == ids

    prompt = ["一个红色的sks在左边"]
    tok = pipe.tokenize(prompt)
    assert all(i in tok[0] for i in ids)
    want = net.text_encoder(Tensor(tok)).asnumpy()
    table0 = pipe.model.text_encoder.transformer.embedding_table.asnumpy().copy()
    for merge in (True, False):
        entry = pipe.load_lora(path, merge=merge)
        assert entry.parsed.token_rows[0] == ids and entry.parsed.token_rows[2] == "sks"
        got = pipe.model.text_encoder(Tensor(tok)).asnumpy()
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max(), merge
        table = pipe.model.text_encoder.transformer.embedding_table.asnumpy()
        changed = np.nonzero(np.abs(table - table0).max(axis=1))[0].tolist()
        assert changed == sorted(ids)                       # only the identifier's rows move
        assert pipe.unload_lora() == 1
        np.testing.assert_allclose(pipe.model.text_encoder.transformer.embedding_table.asnumpy(), table0,
                                   rtol=0, atol=1e-6)

    for name, edit, needle in (
            ("wide.ckpt", lambda s, m: s.update({"cond_stage_model.transformer.token_rows": np.zeros((len(ids), 7),
                                                                                                   np.float32)}),
             "its token rows are"),
            ("noids.ckpt", lambda s, m: m.pop("token_rows"), "have no ids")):
        s = {k: v for k, v in state.items() if k != LORA_META_KEY}
        meta = json.loads(str(state[LORA_META_KEY]))
        edit(s, meta)
        save_atomic(s, tmp_path / name, extra={LORA_META_KEY: json.dumps(meta)})
        with pytest.raises(LoRAFileError, match=needle) as err:
            pipe.load_lora(tmp_path / name)
        assert "\n" not in str(err.value) and not pipe.loras
    np.testing.assert_allclose(pipe.model.text_encoder.transformer.embedding_table.asnumpy(), table0, rtol=0,
                               atol=1e-6)   # the refused files changed nothing
