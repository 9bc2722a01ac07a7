"""scripts/train_glide_shapes.sh, the one command that reproduces the built-in GLIDE, on a tiny budget:
the real configs (configs/glide/shapes-*.yaml, the shipped network sizes) with 24 images and two steps
per training stage. From nothing it must reach a packaged, loadable model folder (the three checkpoints
in the released layout, the word-level tokenizer, the logs of the three base phases) and an evaluation table; each
later base phase must start from the previous phase's EMA weights; tracked configs stay as they are; a second run
skips every finished stage. Marked slow: twelve stages, each its own process and graph compile."""
from pathlib import Path

import pytest

from tests._model_builders import first_build, run_builder


_DIFFUSION = ("train.steps=2 train.warmup_steps=1 train.ema_start=0 train.ckpt_every=1 train.log_every=1 "
              "train.batch_size=2")
_SRGAN = ("train.steps=2 train.batch_size=2 train.warmup_steps=1 train.lr_decay_start=1 train.ckpt_every=1 "
          "train.log_every=1 data.num_scenes=2 data.hr_size=256 data.hr_patch=64 eval.num_scenes=1")
TINY = {
    "N_IMAGES": "24",
    # another seed than the second phase's: its initial weights differ from those the second phase would draw
    "BASE_V3_ARGS": _DIFFUSION + " train.decay_steps=0 train.text_encoder_start_step=1 train.seed=5",
    "BASE_V4_ARGS": _DIFFUSION + " train.decay_steps=0 train.text_encoder_start_step=1",
    "BASE_ARGS": _DIFFUSION + " train.decay_steps=0",
    "BASE_EXPERT_ARGS": _DIFFUSION,
    "BASE_EXPERT_ATTN_ARGS": _DIFFUSION + " train.decay_steps=0",
    "SR_ARGS": _DIFFUSION,
    "SRGAN_ARGS": _SRGAN,
    "SRGAN_FLAT_ARGS": _SRGAN,
    "SRGAN_FINETUNE_ARGS": _SRGAN,
    "EVAL_ARGS": "--per_prompt 1 --n_heldout 1 --n_seen 1 --batch 2 --set sampling.num_inference_steps=2",
}


def _run(tmp: Path, *args, **env_over):
    return run_builder("train_glide_shapes.sh", tmp, TINY, *args, timeout=1800, **env_over)


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    return first_build(tmp_path_factory, "train_glide_shapes.sh", TINY, "configs/glide/shapes-*.yaml")


@pytest.mark.slow  # twelve stages, each its own process and graph compile
def test_from_nothing_to_a_packaged_glide(first):
    from mind_diffusion.checkpoint.io import read_checkpoint
    from mind_diffusion.config import read_yaml
    from mind_diffusion.glide.checkpoint import load_glide_checkpoint
    from mind_diffusion.glide.model import build_glide_base, build_glide_sr

    tmp, proc, tracked = first
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    model, runs = tmp / "model", tmp / "runs"
    names = {p.name for p in model.iterdir()}
    assert {"config.yaml", "glide_gen.ckpt", "glide_gen_expert.ckpt", "glide_super_res.ckpt", "srgan.ckpt",
            "shapes-sp.model", "metrics_base_expert.csv", "metrics_base_expert_v1.csv",
            "package.json", "metrics_base_v3.csv", "metrics_base_v4.csv", "metrics_base.csv", "metrics_sr.csv",
            "loss_base_v3.png", "loss_base_v4.png",
            "loss_base.png", "eval"} <= names, sorted(names)
    from mind_diffusion.shapes.sentencepiece_vocab import build_sentencepiece

    assert (model / "shapes-sp.model").read_bytes() == \
        build_sentencepiece(tmp / "word.model", word_level=True).read_bytes()
    assert (model / "eval" / "adherence.md").is_file()
    for p, before in tracked.items():
        assert p.read_bytes() == before, f"{p} was modified"
    cfg = read_yaml(model / "config.yaml").model
    load_glide_checkpoint(build_glide_base(dict(cfg.base)), model / "glide_gen.ckpt", "base")  # strict
    load_glide_checkpoint(build_glide_sr(dict(cfg.sr)), model / "glide_super_res.ckpt", "sr")
    # each later phase trained the previous phase's EMA weights: its run records that file as its start, and
    # after two small steps its weights are still those (the first 32 px phase drew them with another seed,
    # so a fresh initialisation would differ by the size of the weights themselves)
    import numpy as np

    from mind_diffusion.glide.checkpoint import grown_attention_names, strip_unet_prefix

    for prev, run in (("glide-shapes-base-v3", "glide-shapes-base-v4"), ("glide-shapes-base-v4", "glide-shapes-base"),
                      ("glide-shapes-base", "glide-shapes-base-expert"),
                      ("glide-shapes-base-expert", "glide-shapes-base-expert-attn")):
        start = runs / prev / "glide_gen_ema.ckpt"
        assert Path(str(read_yaml(runs / run / "config.yaml").init.checkpoint)) == start
        a, b = read_checkpoint(str(start)), read_checkpoint(str(runs / run / "glide_gen.ckpt"))
        a = {k: v for k, v in a.items() if np.asarray(v).dtype.kind == "f" and np.asarray(v).size > 1}
        if run.endswith("-attn"):  # the expert's network with attention added at 32 px: its layers moved on
            bare = {strip_unet_prefix(k): k for k in b}
            rename, added = grown_attention_names(list(a), list(bare))
            assert added and any(strip_unet_prefix(k) != rename[k] for k in a)  # output_blocks.7.1 -> 7.2
            a = {bare[rename[k]]: v for k, v in a.items()}
        floats = list(a)
        assert set(floats) <= set(b)
        assert max(np.abs(np.asarray(a[k], np.float64)).max() for k in floats) > 0.1
        assert max(np.abs(np.asarray(b[k], np.float64) - np.asarray(a[k], np.float64)).max() for k in floats) < 0.01


@pytest.mark.slow
def test_a_second_run_skips_every_finished_stage(first):
    tmp, proc, _ = first
    assert proc.returncode == 0
    again = _run(tmp, str(tmp / "model"))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    for stage in ("base-v3", "base-v4", "base", "sr", "srgan", "srgan-flat", "srgan-finetune"):
        assert f"== {stage}: finished before" in again.stdout, stage
    assert "holds an export, kept" in again.stdout and "exists, kept" in again.stdout
