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
