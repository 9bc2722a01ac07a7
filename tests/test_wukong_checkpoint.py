"""Official Wukong-Huahua checkpoint layout: our full-size model loads exactly the manifest's
names and shapes (and the released file's quirks), every value lands in the right parameter,
and anything else is an error that lists the offending tensors."""
import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def manifest(request):
    from conftest import SHARED

    path = SHARED / "reference" / "wukong_param_manifest.json"
    if not path.is_file():
        pytest.skip(f"{path} not found (reference data lives in ../shared in CI)")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def full_net():
    from mind_diffusion.config import load_config
    from mind_diffusion.ldm.config import ldm_config_defaults
    from mind_diffusion.ldm.model import build_ldm
    from conftest import ROOT

    cfg = load_config(ROOT / "configs/wukong/v1-inference-chinese.yaml", (), ldm_config_defaults())
    return build_ldm(cfg.model)


def _value(i: int, shape) -> np.ndarray:
    """Cheap, distinct, reproducible values for tensor i (regenerated to check, not kept)."""
    return np.random.default_rng(i).random(tuple(shape), dtype=np.float32) + np.float32(i)


def test_manifest_names_shapes_order_and_counts(manifest, full_net):
    ours = [(p.name, list(p.shape)) for p in full_net.get_parameters()]
    assert ours == [(n, s) for n, s, _ in manifest]
    sizes = {pre: sum(int(np.prod(s)) for n, s, _ in manifest if n.startswith(pre))
             for pre in ("model.", "first_stage_model.", "cond_stage_model.")}
    assert sizes == {"model.": 859_520_964, "first_stage_model.": 86_161_255,
                     "cond_stage_model.": 123_060_480}


def test_fresh_save_layout_loads_strictly(manifest, full_net):
    """A file saved from the original net: all 1086 tensors, text embeddings in fp16."""
    from mind_diffusion.ldm.checkpoint import load_ldm_checkpoint

    state = {n: np.broadcast_to(np.zeros((), {"Float32": np.float32, "Float16": np.float16}[d]), s)
             for n, s, d in manifest}
    report = load_ldm_checkpoint(full_net, "fresh.ckpt", state=state, dry_run=True)
    assert report.loaded == 1086
    assert {c[0] for c in report.cast} == {"cond_stage_model.transformer.embedding_table",
                                           "cond_stage_model.transformer.positional_embedding"}


@pytest.mark.slow  # writes and reads a 4.3 GB file (~100 s, ~12.5 GB RSS); the fresh-save layout test below stays in the default run
def test_released_layout_file_round_trip(manifest, full_net, tmp_path):
    """The released wukong-huahua-ms.ckpt layout (1082 tensors: no unused VAE convs, fp32
    embeddings) written as a real file with random values: every value lands where it should."""
    from mind_diffusion.checkpoint.io import save_atomic
    from mind_diffusion.ldm.checkpoint import UNUSED_VAE_PARAMS, load_ldm_checkpoint

    released = [(i, n, s) for i, (n, s, _) in enumerate(manifest) if n not in UNUSED_VAE_PARAMS]
    assert len(released) == 1082
    path = save_atomic({n: _value(i, s) for i, n, s in released}, tmp_path / "wukong-huahua-ms.ckpt")
    report = load_ldm_checkpoint(full_net, path)
    assert report.loaded == 1082 and not report.cast
    path.unlink()
    params = {p.name: p for p in full_net.get_parameters()}
    for i, n, s in released:
        np.testing.assert_array_equal(params[n].asnumpy(), _value(i, s), err_msg=n)


def test_mismatches_are_listed(manifest, full_net):
    from mind_diffusion.checkpoint.io import CheckpointMismatchError
    from mind_diffusion.ldm.checkpoint import load_ldm_checkpoint

    state = {n: np.broadcast_to(np.float32(0), s) for n, s, _ in manifest}
    del state["model.diffusion_model.out.2.conv.bias"]
    state["model.diffusion_model.input_blocks.1.1.proj_in.weight"] = np.zeros((4, 4), np.float32)
    state["model.diffusion_model.extra.weight"] = np.zeros(3, np.float32)
    state["adam_m.model.diffusion_model.out.2.conv.bias"] = np.zeros(4, np.float32)  # ignored
    with pytest.raises(CheckpointMismatchError) as exc:
        load_ldm_checkpoint(full_net, "bad.ckpt", state=state, dry_run=True)
    msg = str(exc.value)
    assert "out.2.conv.bias" in msg and "proj_in.weight: (4, 4) vs (320, 320, 1, 1)" in msg
    assert "extra.weight" in msg and "adam_m" not in msg


def test_inpainting_and_foreign_checkpoints_are_named(manifest, full_net):
    from mind_diffusion.checkpoint.io import CheckpointError
    from mind_diffusion.ldm.checkpoint import load_ldm_checkpoint

    state = {n: np.broadcast_to(np.float32(0), s) for n, s, _ in manifest}
    state["model.diffusion_model.input_blocks.0.0.conv.weight"] = np.broadcast_to(np.float32(0), (320, 9, 3, 3))
    with pytest.raises(CheckpointError, match="inpainting"):
        load_ldm_checkpoint(full_net, "inpaint.ckpt", state=state, dry_run=True)
    with pytest.raises(CheckpointError, match="not a latent-diffusion"):
        load_ldm_checkpoint(full_net, "ddpm.ckpt", state={"ema.conv_in.weight": np.zeros(3)},
                            dry_run=True)


def test_tiny_config_round_trip_through_pipeline_loader(tmp_path, shared_dir):
    """Save -> load through LDMPipeline.from_pretrained restores every parameter (tiny)."""
    from ldm_tiny import make_tiny_model_dir
    from mind_diffusion.checkpoint.io import read_checkpoint
    from mind_diffusion.ldm.pipeline import LDMPipeline

    cfg, ckpt = make_tiny_model_dir(tmp_path, shared_dir, seed=3)
    pipe = LDMPipeline.from_pretrained(cfg, ckpt)
    saved = read_checkpoint(ckpt)
    for p in pipe.model.get_parameters():
        np.testing.assert_array_equal(p.asnumpy(), saved[p.name])
    assert pipe.ckpt_hash
