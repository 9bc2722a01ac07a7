"""The GLIDE base's low-noise expert (checkpoint.gen_expert_ckpt, diffusion.base_expert_below): a file of
the tensors a copy of the base changed, overlaid on that base; the pipeline calls it for the steps with
t below the switch and the base for the others. Shown on tiny random checkpoints, in both modes:
against a pipeline whose base is the merged full checkpoint, and by the calls each network gets."""
import re
import shutil

import numpy as np
import pytest

from glide_tiny import make_tiny_glide_dir

PROMPT = "一张画着柯基的油画"
KW = dict(num_inference_steps=4, progress=False, output_type="np", seed=5, stages=64)


@pytest.fixture(scope="module")
def expert_dir(tmp_path_factory):
    """A tiny GLIDE folder plus glide_gen_expert.ckpt (the input blocks changed) and glide_merged.ckpt
    (the base with those changes, in full)."""
    from mind_diffusion.checkpoint.io import read_checkpoint, save_atomic
    from mind_diffusion.glide.checkpoint import expert_state

    folder = make_tiny_glide_dir(tmp_path_factory.mktemp("glide_expert"))
    base = read_checkpoint(folder / "glide_gen.ckpt")
    rng = np.random.default_rng(1)
    merged = {k: (v + rng.normal(0, 0.05, np.shape(v)).astype(v.dtype) if "input_blocks" in k and v.ndim > 1 else v)
              for k, v in base.items()}
    changed = expert_state(merged, base)
    assert 0 < len(changed) < len(base) and all("input_blocks" in k for k in changed)
    save_atomic(changed, folder / "glide_gen_expert.ckpt")
    save_atomic(merged, folder / "glide_merged.ckpt")
    return folder


def _pipe(folder, gen="glide_gen.ckpt", overrides=()):
    from mind_diffusion.glide.pipeline import GlidePipeline

    return GlidePipeline.from_pretrained(folder / "glide-tiny.yaml", folder / gen,
                                         tokenizer=folder / "cog-pretrain.model", stages=64, overrides=list(overrides))


def _expert(below):
    return ["checkpoint.gen_expert_ckpt=glide_gen_expert.ckpt", f"diffusion.base_expert_below={below}"]


class _Spy:
    def __init__(self, cell, name, log):
        self.cell, self.name, self.log = cell, name, log

    def __call__(self, x, t, *rest):
        self.log.append((self.name, float(t.asnumpy().max())))
        return self.cell(x, t, *rest)


@pytest.mark.parametrize("mode", ["graph", "pynative"])
def test_expert_takes_the_low_noise_steps(expert_dir, mode):
    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    try:
        plain = _pipe(expert_dir)(PROMPT, **KW)[64]
        merged = _pipe(expert_dir, "glide_merged.ckpt")(PROMPT, **KW)[64]
        everywhere = _pipe(expert_dir, overrides=_expert(1000))
        np.testing.assert_allclose(everywhere(PROMPT, **KW)[64], merged, atol=1e-6)  # the overlay is the merge
        assert np.abs(merged - plain).max() > 1e-3
        split = _pipe(expert_dir, overrides=_expert(500))
        log = []
        split._base_step = _Spy(split._base_step, "base", log)
        split._expert_step = _Spy(split._expert_step, "expert", log)
        out = split(PROMPT, **KW)[64]
        assert {n for n, _ in log} == {"base", "expert"}
        assert all((n == "expert") == (t < 500) for n, t in log), log
        assert np.abs(out - plain).max() > 1e-3 and np.abs(out - merged).max() > 1e-3
        meta = split.settings(prompt=PROMPT, seed=5, stage=64, num_inference_steps=4, super_res_steps=27,
                              guidance_scale=5.0, uncond="random")
        assert meta["base_expert_below"] == 500 and meta["base_expert_checkpoint"] == "glide_gen_expert.ckpt"
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)


def test_expert_file_errors(expert_dir, tmp_path):
    from mind_diffusion.checkpoint.io import CheckpointError, CheckpointMismatchError, read_checkpoint, save_atomic
    from mind_diffusion.config import ConfigError
    from mind_diffusion.glide.checkpoint import expert_state, strip_unet_prefix

    with pytest.raises(CheckpointError, match="low-noise expert .*nope.ckpt is not there"):
        _pipe(expert_dir, overrides=["checkpoint.gen_expert_ckpt=nope.ckpt", "diffusion.base_expert_below=400"])
    for below in (0, 1001):
        with pytest.raises(ConfigError, match="diffusion.base_expert_below must be an integer in"):
            _pipe(expert_dir, overrides=_expert(below))
    other = tmp_path / "other"
    shutil.copytree(expert_dir, other)
    state = read_checkpoint(other / "glide_gen_expert.ckpt")
    name = next(iter(state))
    save_atomic({name: np.zeros((3, 3), np.float32)}, other / "glide_gen_expert.ckpt")
    with pytest.raises(CheckpointMismatchError, match=re.escape(strip_unet_prefix(name))):
        _pipe(other, overrides=_expert(400))
    save_atomic({"no_such.weight": np.zeros(3, np.float32)}, other / "glide_gen_expert.ckpt")
    with pytest.raises(CheckpointMismatchError, match="no_such.weight"):
        _pipe(other, overrides=_expert(400))
    base = read_checkpoint(expert_dir / "glide_gen.ckpt")
    with pytest.raises(CheckpointError, match="trained from another base"):
        expert_state({**base, name: np.zeros((2, 2), np.float32)}, base)
    assert expert_state(base, base) == {}


def test_grown_attention_names_moves_the_later_layers():
    """A block that gains an attention layer keeps its ResBlock at 0, the attention at 1 and moves the
    upsampling layer from 1 to 2; removing a layer, or adding one that is not attention, is refused."""
    from mind_diffusion.checkpoint.io import CheckpointError
    from mind_diffusion.glide.checkpoint import TRAINING_PREFIX, grown_attention_names

    res = ["in_layers_0.gamma", "out_layers_3.conv.weight"]
    attn = ["norm.gamma", "qkv.conv.weight", "encoder_kv.conv.weight", "proj_out.conv.weight"]
    small = [f"output_blocks.3.0.{n}" for n in res] + [f"output_blocks.3.1.{n}" for n in res] + ["out2.conv.weight"]
    grown = ([f"output_blocks.3.0.{n}" for n in res] + [f"output_blocks.3.1.{n}" for n in attn]
             + [f"output_blocks.3.2.{n}" for n in res] + ["out2.conv.weight"])
    rename, added = grown_attention_names([TRAINING_PREFIX + n for n in small], grown)
    assert rename[TRAINING_PREFIX + "output_blocks.3.1.in_layers_0.gamma"] == "output_blocks.3.2.in_layers_0.gamma"
    assert rename[TRAINING_PREFIX + "output_blocks.3.0.in_layers_0.gamma"] == "output_blocks.3.0.in_layers_0.gamma"
    assert sorted(added) == sorted(f"output_blocks.3.1.{n}" for n in attn)
    with pytest.raises(CheckpointError, match="only attention blocks can be added"):
        grown_attention_names(grown, small)
    with pytest.raises(CheckpointError, match="only attention blocks can be added, not removed"):
        grown_attention_names(small + [f"output_blocks.3.2.{n}" for n in res], small)
    with pytest.raises(CheckpointError, match="lacks 1 of the network's tensors"):
        grown_attention_names(small[:-1], small)


@pytest.mark.parametrize("mode", ["graph", "pynative"])
def test_added_attention_blocks_start_as_the_identity(mode):
    """load_grown_attention: a base network with attention at one more level (its upsampling layers
    moved) computes exactly what the checkpoint's network computes."""
    import mindspore as ms
    from mindspore import Tensor

    from glide_tiny import randomize
    from mind_diffusion.glide.checkpoint import glide_state, load_grown_attention
    from mind_diffusion.glide.config import GLIDE_TINY
    from mind_diffusion.glide.model import build_glide_base

    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    try:
        small = randomize(build_glide_base(dict(GLIDE_TINY["base"], attention_resolutions=[1])), 3, 0.05)
        ms.set_seed(0)
        grown = build_glide_base(dict(GLIDE_TINY["base"], attention_resolutions=[1, 2]))
        _, added = load_grown_attention(grown, glide_state(small, "base", fp16_embeddings=False))
        assert added and all(".1." in n for n in added)
        rng = np.random.default_rng(0)
        args = (Tensor(rng.standard_normal((2, 3, 16, 16)).astype(np.float32)), Tensor(np.array([700.0, 20.0], np.float32)),
                Tensor(rng.integers(0, 99, (2, 16)).astype(np.int32)), Tensor(np.ones((2, 16), np.int32)))
        small.set_train(False)
        grown.set_train(False)
        want = small(*args).asnumpy()
        np.testing.assert_allclose(grown(*args).asnumpy(), want, atol=1e-6)
        assert np.abs(want).max() > 1e-2
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)


@pytest.fixture(scope="module")
def grown_expert_dir(expert_dir, tmp_path_factory):
    """An expert whose network adds text attention at the 16 px level (model.base_expert): its file, and
    the full checkpoint of that network (for a pipeline whose base is it)."""
    from mind_diffusion.checkpoint.io import read_checkpoint, save_atomic
    from mind_diffusion.glide.checkpoint import expert_state, glide_state, load_grown_attention
    from mind_diffusion.glide.config import GLIDE_TINY
    from mind_diffusion.glide.model import build_glide_base

    folder = tmp_path_factory.mktemp("glide_grown_expert")
    shutil.copytree(expert_dir, folder, dirs_exist_ok=True)
    base = read_checkpoint(folder / "glide_gen.ckpt")
    net = build_glide_base(dict(GLIDE_TINY["base"], attention_resolutions=[1, 2]))
    _, added = load_grown_attention(net, base)
    rng = np.random.default_rng(2)
    for p in net.get_parameters():  # the added blocks trained away from the identity, the first input blocks too
        if p.name in added or (p.name.startswith("input_blocks.1.") and p.ndim > 1):
            p.set_data(ms_tensor(p.asnumpy() + rng.normal(0, 0.05, p.shape).astype(np.float32)))
    full = glide_state(net, "base")
    changed = expert_state(full, base)
    assert set(added) <= {n.split("guider_net.")[-1] for n in changed}
    assert len(changed) < len(full)
    save_atomic(changed, folder / "glide_gen_expert_attn.ckpt")
    save_atomic(full, folder / "glide_grown_merged.ckpt")
    return folder


def ms_tensor(a):
    from mindspore import Tensor

    return Tensor(a)


GROWN = ["model.base_expert.attention_resolutions=[1,2]"]


@pytest.mark.parametrize("mode", ["graph", "pynative"])
def test_expert_with_added_attention_equals_its_merged_network(grown_expert_dir, mode):
    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    try:
        merged = _pipe(grown_expert_dir, "glide_grown_merged.ckpt",
                       overrides=["model.base.attention_resolutions=[1,2]"])(PROMPT, **KW)[64]
        over = ["checkpoint.gen_expert_ckpt=glide_gen_expert_attn.ckpt", "diffusion.base_expert_below=1000", *GROWN]
        np.testing.assert_allclose(_pipe(grown_expert_dir, overrides=over)(PROMPT, **KW)[64], merged, atol=1e-6)
        assert np.abs(merged - _pipe(grown_expert_dir)(PROMPT, **KW)[64]).max() > 1e-3
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)


def test_expert_attention_levels_must_match_its_file(grown_expert_dir):
    from mind_diffusion.checkpoint.io import CheckpointError, CheckpointMismatchError
    from mind_diffusion.config import ConfigError

    attn = ["checkpoint.gen_expert_ckpt=glide_gen_expert_attn.ckpt", "diffusion.base_expert_below=400"]
    with pytest.raises(CheckpointMismatchError, match="qkv"):   # the file's added blocks, without model.base_expert
        _pipe(grown_expert_dir, overrides=attn)
    with pytest.raises(CheckpointError, match="lacks the .* tensors of the attention blocks model.base_expert"):
        _pipe(grown_expert_dir, overrides=_expert(400) + GROWN)   # a plain expert file with model.base_expert
    with pytest.raises(ConfigError, match=r"must hold the base's \[2\]"):
        _pipe(grown_expert_dir, overrides=attn + ["model.base_expert.attention_resolutions=[1]"])
