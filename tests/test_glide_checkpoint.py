"""GLIDE checkpoints (spec glide.md §7, ../shared/reference/glide_param_manifest.json): the full-size
nets built from the defaults carry exactly the manifest's names, shapes, order and counts; official
layouts (training prefix, Taichu's inference rewrite, bare) load strictly with every value in its
place (fp16 embeddings cast, optimizer state ignored); saves write the official layout; anything
else is an error that lists the tensors or says which file goes where."""
import json
import time

import numpy as np
import pytest

SPEC_COUNTS = {"base": (384_899_654, 783), "sr": (398_361_286, 797), "srgan": (1_554_691, 222)}
MANIFEST_KEY = {"base": "base_64", "sr": "sr_64_to_256", "srgan": "srgan_x4_256_to_1024"}
NP_DTYPE = {"Float32": np.float32, "Float16": np.float16}
OPTIMIZER_EXTRAS = ("optimizer.global_step", "scale_sense", "loss_scaling_manager.cur_iter",
                    "loss_scaling_manager.last_overflow_iter", "global_step")


@pytest.fixture(scope="module")
def manifest():
    from conftest import SHARED

    path = SHARED / "reference" / "glide_param_manifest.json"
    if not path.is_file():
        pytest.skip(f"{path} not found (reference data lives in ../shared beside the repo)")
    return json.loads(path.read_text())["models"]


_BUILT = {}


def _full(kind):
    """The real full-size classes from the defaults, built once per session with deferred
    parameter initialisation (~1 s each instead of 10-15 s of random init on 2 CPU cores)."""
    from mind_diffusion.glide.model import build_glide_base, build_glide_sr, build_srgan

    if kind not in _BUILT:
        t0 = time.perf_counter()
        net = {"base": build_glide_base, "sr": build_glide_sr, "srgan": build_srgan}[kind](deferred_init=True)
        _BUILT[kind] = (net, time.perf_counter() - t0)
    return _BUILT[kind]


def _tiny(kind):
    from mind_diffusion.glide.config import GLIDE_TINY
    from mind_diffusion.glide.model import (
        build_glide_base,
        build_glide_sr,
        build_srgan,
    )

    return {"base": build_glide_base, "sr": build_glide_sr, "srgan": build_srgan}[kind](GLIDE_TINY[kind])


def _values(net, seed):
    """{relative name: array} of random values, fp16 for the two embeddings (as released)."""
    from mind_diffusion.glide.checkpoint import FP16_PARAMS

    rng = np.random.default_rng(seed)
    out = {}
    for p in net.get_parameters():
        dtype = np.float16 if p.name in FP16_PARAMS else np.float32
        out[p.name] = rng.standard_normal(tuple(p.shape)).astype(dtype)
    return out


def _params(net):
    return {p.name: p.asnumpy() for p in net.get_parameters()}


# ------------------------------------------------------------------ manifest: names, prefixes, counts
def test_declared_prefixes_and_openai_map_match_manifest(manifest):
    from mind_diffusion.glide.checkpoint import (
        INFERENCE_PREFIXES,
        TRAINING_PREFIX,
        openai_key,
    )

    for kind in ("base", "sr"):
        m = manifest[MANIFEST_KEY[kind]]
        assert m["checkpoint_prefix"] == TRAINING_PREFIX
        assert m["inference_prefix_after_txt2img_load_ckpt_rewrite"] == INFERENCE_PREFIXES[kind]
        mapping = m["relative_to_openai_glide_text2im_key"]
        assert len(mapping) == m["n_tensors"]
        assert {rel: openai_key(rel) for rel in mapping} == mapping
    assert manifest[MANIFEST_KEY["srgan"]]["checkpoint_prefix"] == ""


@pytest.mark.parametrize("kind", ["base", "sr", "srgan"])
def test_full_size_names_shapes_counts(manifest, kind):
    from mind_diffusion.nn.layers import count_params

    net, seconds = _full(kind)
    m = manifest[MANIFEST_KEY[kind]]
    prefix = m["checkpoint_prefix"]
    ours = [(prefix + p.name, list(p.shape)) for p in net.get_parameters()]
    assert ours == [(n, s) for n, s, _ in m["params_checkpoint_names"]]
    assert (count_params(net), len(ours)) == SPEC_COUNTS[kind] == (m["param_count"], m["n_tensors"])
    print(f"\n[glide] full-size {kind}: built in {seconds:.1f} s")


def test_fp16_entries_of_manifest_are_the_declared_ones(manifest):
    from mind_diffusion.glide.checkpoint import FP16_PARAMS, TRAINING_PREFIX

    for kind in ("base", "sr"):
        fp16 = {n for n, _, d in manifest[MANIFEST_KEY[kind]]["params_checkpoint_names"] if d == "Float16"}
        assert fp16 == {TRAINING_PREFIX + n for n in FP16_PARAMS}
    assert {d for _, _, d in manifest[MANIFEST_KEY["srgan"]]["params_checkpoint_names"]} == {"Float32"}


@pytest.mark.parametrize("kind", ["base", "sr"])
def test_full_size_official_layouts_load(manifest, kind):
    """Every name of the released layout (and of Taichu's inference rewrite), with optimizer
    state beside it, maps onto the full-size net (dry run: zero-copy views, nothing written)."""
    from mind_diffusion.glide.checkpoint import (
        INFERENCE_PREFIXES,
        TRAINING_PREFIX,
        load_glide_checkpoint,
    )

    net, _ = _full(kind)
    entries = manifest[MANIFEST_KEY[kind]]["params_checkpoint_names"]
    for prefix in (TRAINING_PREFIX, INFERENCE_PREFIXES[kind]):
        state = {prefix + n[len(TRAINING_PREFIX):]: np.broadcast_to(np.zeros((), NP_DTYPE[d]), s)
                 for n, s, d in entries}
        state.update({f"optimizer.adam_m.{n}": np.zeros(1, np.float32) for n, _, _ in entries[:5]})
        state.update({name: np.zeros(1, np.float32) for name in OPTIMIZER_EXTRAS})
        report = load_glide_checkpoint(net, state, kind, dry_run=True)
        assert report.loaded == len(entries)
        assert len(report.ignored) == 5 + len(OPTIMIZER_EXTRAS)
        assert sorted(c[0] for c in report.cast) == ["padding_embedding", "positional_embedding"]


# ------------------------------------------------------------------ real files, every value in place
def test_srgan_official_file_round_trip(manifest, tmp_path):
    from mind_diffusion.checkpoint.io import read_checkpoint, save_atomic
    from mind_diffusion.glide.checkpoint import (
        load_glide_checkpoint,
        save_glide_checkpoint,
    )
    from mind_diffusion.ldm.checkpoint import manifest_state

    entries = manifest[MANIFEST_KEY["srgan"]]["params_checkpoint_names"]
    state = manifest_state(entries, np.random.default_rng(7))
    path = save_atomic(state, tmp_path / "srgan.ckpt")
    net, _ = _full("srgan")
    report = load_glide_checkpoint(net, path)
    assert report.loaded == 222 and not report.cast
    got = _params(net)
    for name, value in state.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    out = save_glide_checkpoint(net, tmp_path / "again.ckpt")
    back = read_checkpoint(out)
    assert list(back) == [n for n, _, _ in entries]
    for name, value in state.items():
        assert back[name].dtype == value.dtype
        np.testing.assert_array_equal(back[name], value, err_msg=name)


@pytest.mark.parametrize("kind", ["base", "sr"])
@pytest.mark.parametrize("layout", ["training", "inference", "bare"])
def test_tiny_unet_official_layout_round_trip(kind, layout, tmp_path):
    """A file in the official layout (fp16 embeddings, optimizer state of both MindSpore
    generations beside it) loads with every value in its parameter; saving writes it back
    identically."""
    from mind_diffusion.checkpoint.io import read_checkpoint, save_atomic
    from mind_diffusion.glide.checkpoint import (
        INFERENCE_PREFIXES,
        TRAINING_PREFIX,
        load_glide_checkpoint,
        save_glide_checkpoint,
    )

    prefix = {"training": TRAINING_PREFIX, "inference": INFERENCE_PREFIXES[kind], "bare": ""}[layout]
    net = _tiny(kind)
    rel = _values(net, 11)
    state = {prefix + n: v for n, v in rel.items()}
    extras = {f"optimizer.adam_m.{prefix}time_embed.0.weight": np.ones((2, 2), np.float32),
              f"adam_v.{prefix}out2.conv.bias": np.ones(2, np.float32),
              **{name: np.ones(1, np.float32) for name in OPTIMIZER_EXTRAS}}
    path = save_atomic({**state, **extras}, tmp_path / "ckpt.ckpt")
    report = load_glide_checkpoint(net, path, kind)
    assert report.loaded == len(rel) and sorted(report.ignored) == sorted(extras)
    assert sorted(c[0] for c in report.cast) == ["padding_embedding", "positional_embedding"]
    got = _params(net)
    for name, value in rel.items():
        assert got[name].dtype == np.float32
        np.testing.assert_array_equal(got[name], value.astype(np.float32), err_msg=name)
    out = save_glide_checkpoint(net, tmp_path / "out.ckpt", layout=layout)
    back = read_checkpoint(out)
    assert list(back) == list(state)
    for name, value in state.items():
        assert back[name].dtype == value.dtype, name
        np.testing.assert_array_equal(back[name], value, err_msg=name)
    # it hands MindSpore the Parameters (no host copy of the weights): the same bytes as the copies give
    from mind_diffusion.glide.checkpoint import glide_state

    copy = glide_state(net, kind, layout)
    assert all(isinstance(v, np.ndarray) for v in copy.values())
    assert save_atomic(copy, tmp_path / "copy.ckpt").read_bytes() == out.read_bytes()


def test_default_save_is_the_released_layout(manifest, tmp_path):
    """save_glide_checkpoint's default names = the manifest's (training prefix), checked on the
    tiny base whose relative names all occur in the full-size manifest's name patterns."""
    from mind_diffusion.checkpoint.io import read_checkpoint
    from mind_diffusion.glide.checkpoint import TRAINING_PREFIX, save_glide_checkpoint

    net = _tiny("base")
    back = read_checkpoint(save_glide_checkpoint(net, tmp_path / "glide_gen.ckpt"))
    assert list(back) == [TRAINING_PREFIX + p.name for p in net.get_parameters()]
    full = {n: d for n, _, d in manifest[MANIFEST_KEY["base"]]["params_checkpoint_names"]}
    for name, value in back.items():
        if name in full:  # e.g. input_blocks.1.0.*, transformer.resblocks.0.*, out2.*
            assert value.dtype == NP_DTYPE[full[name]], name
    assert sum(name in full for name in back) > 0.8 * len(back)


# ------------------------------------------------------------------ errors
def test_missing_unexpected_misshapen_are_listed():
    from mind_diffusion.checkpoint.io import CheckpointMismatchError
    from mind_diffusion.glide.checkpoint import TRAINING_PREFIX, load_glide_checkpoint

    net = _tiny("base")
    state = {TRAINING_PREFIX + n: v for n, v in _values(net, 1).items()}
    del state[TRAINING_PREFIX + "out2.conv.bias"]
    state[TRAINING_PREFIX + "middle_block.1.extra.weight"] = np.zeros(3, np.float32)
    state[TRAINING_PREFIX + "time_embed.2.weight"] = np.zeros((5, 5), np.float32)
    before = _params(net)["time_embed.0.weight"]
    with pytest.raises(CheckpointMismatchError) as exc:
        load_glide_checkpoint(net, state)
    msg = str(exc.value)
    assert "missing from the checkpoint (1)" in msg and "out2.conv.bias" in msg
    assert "unexpected in the checkpoint (1)" in msg and "middle_block.1.extra.weight" in msg
    assert "shape mismatch" in msg and "time_embed.2.weight: (5, 5) vs (128, 128)" in msg
    # nothing was half-loaded (the file's value differs from the net's)
    assert not np.array_equal(state[TRAINING_PREFIX + "time_embed.0.weight"], before)
    np.testing.assert_array_equal(_params(net)["time_embed.0.weight"], before)


def test_vocab_size_mismatch_hint():
    from mind_diffusion.checkpoint.io import CheckpointMismatchError
    from mind_diffusion.glide.checkpoint import load_glide_checkpoint

    net = _tiny("base")
    state = _values(net, 2)
    state["token_embedding.embedding_table"] = np.zeros((257, 32), np.float32)
    with pytest.raises(CheckpointMismatchError, match="set n_vocab=257"):
        load_glide_checkpoint(net, state)


@pytest.mark.parametrize("given,target,expect", [
    ("sr", "base", "GLIDE super-resolution model .* \\(glide_super_res.ckpt, kind='sr'\\), not the GLIDE base"),
    ("base", "sr", "GLIDE base model .* \\(glide_gen.ckpt, kind='base'\\), not the GLIDE super-resolution"),
    ("srgan", "base", "SRGAN x4 generator .* \\(srgan.ckpt, kind='srgan'\\)"),
    ("base", "srgan", "glide_gen.ckpt, kind='base'\\), not the SRGAN"),
    ("ldm", "base", "latent-diffusion"),
])
def test_wrong_model_gets_one_line(given, target, expect, tmp_path):
    from mind_diffusion.checkpoint.io import (
        CheckpointError,
        CheckpointMismatchError,
        save_atomic,
    )
    from mind_diffusion.glide.checkpoint import TRAINING_PREFIX, load_glide_checkpoint

    if given == "ldm":
        state = {"model.diffusion_model.input_blocks.0.0.conv.weight": np.zeros((8, 4, 3, 3), np.float32),
                 "first_stage_model.encoder.conv_in.conv.weight": np.zeros((8, 3, 3, 3), np.float32)}
    else:
        prefix = "" if given == "srgan" else TRAINING_PREFIX
        state = {prefix + n: v for n, v in _values(_tiny(given), 3).items()}
    path = save_atomic(state, tmp_path / "some.ckpt")
    with pytest.raises(CheckpointError, match=expect) as exc:
        load_glide_checkpoint(_tiny(target), path)
    assert not isinstance(exc.value, CheckpointMismatchError)
    assert "\n" not in str(exc.value) and str(path) in str(exc.value)


def test_unrelated_file_and_bad_kind(tmp_path):
    from mind_diffusion.checkpoint.io import CheckpointError, save_atomic
    from mind_diffusion.glide.checkpoint import load_glide_checkpoint

    net = _tiny("sr")
    path = save_atomic({"encoder.weight": np.zeros(3, np.float32)}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="holds none of the GLIDE super-resolution"):
        load_glide_checkpoint(net, path)
    with pytest.raises(ValueError, match="kind='base' does not match"):
        load_glide_checkpoint(net, path, kind="base")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_glide_checkpoint(net, tmp_path / "junk.ckpt")


# ------------------------------------------------------------------ full size, real files (slow)
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["base", "sr"])
def test_full_size_official_file_round_trip(manifest, kind, tmp_path):
    """A 1.5 GB random checkpoint in the released layout: every value lands in place."""
    from mind_diffusion.checkpoint.io import save_atomic
    from mind_diffusion.glide.checkpoint import TRAINING_PREFIX, load_glide_checkpoint

    entries = manifest[MANIFEST_KEY[kind]]["params_checkpoint_names"]
    net, _ = _full(kind)

    def value(i, shape, dtype):
        return (np.random.default_rng(i).random(tuple(shape), dtype=np.float32) + np.float32(i % 97)).astype(
            NP_DTYPE[dtype])

    path = save_atomic({n: value(i, s, d) for i, (n, s, d) in enumerate(entries)}, tmp_path / "full.ckpt")
    report = load_glide_checkpoint(net, path)
    path.unlink()
    assert report.loaded == len(entries)
    params = {p.name: p for p in net.get_parameters()}
    for i, (n, s, d) in enumerate(entries):
        np.testing.assert_array_equal(params[n[len(TRAINING_PREFIX):]].asnumpy(),
                                      value(i, s, d).astype(np.float32), err_msg=n)
