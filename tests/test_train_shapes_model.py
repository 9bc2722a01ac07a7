"""scripts/train_shapes_model.sh, the one command that reproduces the built-in shapes model, on a
tiny budget: the real configs (configs/shapes/*.yaml, the shipped network sizes) with 48 images
and a few steps per stage. It must go from nothing to a packaged, loadable model folder with a
model card, write nothing into the tracked configs, skip finished stages when run again, resume
an interrupted training from its checkpoint, and stop with one clear line when a stage fails.
The two tests that run it are marked slow (~7 min together); the wrong-use test runs by default."""
import csv
import sys
from pathlib import Path

import numpy as np
import pytest

from tests._model_builders import first_build, run_builder

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "N_IMAGES": "48",
    "VAE_ARGS": "train.steps=2 train.batch_size=4 train.ckpt_every=1 train.log_every=1",
    "LDM_ARGS": "train.steps=3 train.batch_size=4 train.warmup_steps=1 train.text_encoder_start_step=1 "
                "train.ema_start=0 train.ckpt_every=1 train.log_every=1",
    "REFINE_STEPS": "2",
    "REFINE_ARGS": "train.batch_size=4 train.warmup_steps=1 train.ckpt_every=1 train.log_every=1",
    "EVAL_ARGS": "--steps 2 --per_prompt 1 --n_heldout 2 --n_seen 1",
    "PACKAGE_ARGS": "--per_prompt 1",
}


def _run(tmp: Path, *args, **env_over):
    return run_builder("train_shapes_model.sh", tmp, TINY, *args, timeout=1200, **env_over)


def _scale(path: Path) -> float:
    from mind_diffusion.config import read_yaml

    return float(read_yaml(path).model.scale_factor)


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    return first_build(tmp_path_factory, "train_shapes_model.sh", TINY, "configs/shapes/*.yaml")


@pytest.mark.slow  # every stage, each its own process and graph compile (~3.5 min)
def test_from_nothing_to_a_packaged_model(first):
    tmp, proc, tracked = first
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    model, runs = tmp / "model", tmp / "runs"
    names = {p.name for p in model.iterdir()}
    assert {"config.yaml", "model.ckpt", "vocab.txt", "README.md", "samples.png", "samples.md", "loss.png",
            "loss_vae.png", "metrics_ldm.csv", "metrics_vae.csv", "adherence_grid_heldout.png",
            "metrics_ldm_refine.csv", "loss_refine.png"} <= names
    for p, before in tracked.items():
        assert p.read_bytes() == before, f"{p} was modified"
    # the latent scale measured on this run's autoencoder is the one the LDM trained with and ships with
    measured = _scale(runs / "shapes-ldm.yaml")
    assert measured == _scale(model / "config.yaml") == _scale(runs / "shapes-ldm" / "model.yaml") \
        == _scale(runs / "shapes-ldm-refine" / "model.yaml")
    assert measured != _scale(ROOT / "configs" / "shapes" / "ldm.yaml")
    steps = [r["step"] for r in csv.DictReader(open(model / "metrics_ldm.csv"))]
    assert steps == ["1", "2", "3"]
    # the refine stage continued the ldm stage's weights, and its model is what was evaluated and shipped
    assert [r["step"] for r in csv.DictReader(open(model / "metrics_ldm_refine.csv"))] == ["1", "2"]
    assert f"init.checkpoint={runs / 'shapes-ldm' / 'model.ckpt'}" in proc.stdout
    from mind_diffusion.checkpoint.io import read_checkpoint

    shipped, refined = read_checkpoint(model / "model.ckpt"), read_checkpoint(runs / "shapes-ldm-refine" / "model.ckpt")
    assert all(np.array_equal(np.asarray(shipped[k]), np.asarray(refined[k]).astype(np.float16)) for k in refined
               if not k.startswith("meta."))
    card = (model / "README.md").read_text(encoding="utf-8")
    assert "| training | 3 steps from scratch" in card and "then 2 steps refining the UNet" in card
    table = (runs / "shapes-ldm-refine" / "eval" / "adherence.md").read_text(encoding="utf-8").strip()
    assert table in card and "| held-out combinations | 2 |" in table
    assert "f=4: 16×16×4 latents" in card and f"bash scripts/train_shapes_model.sh {model}" in card
    for stage in ("export", "vae", "scale", "ldm", "refine", "eval", "package"):
        assert (runs / f"shapes-{stage}.log").is_file(), stage
    # the folder loads strictly and generates (the packaging step already sampled it)
    import mindspore as ms

    from mind_diffusion.ldm.pipeline import LDMPipeline

    ms.set_context(mode=ms.PYNATIVE_MODE)
    pipe = LDMPipeline.from_pretrained(model / "config.yaml", model / "model.ckpt")
    img = pipe(["一个红色的圆形在左边"], seed=0, num_inference_steps=2, progress=False).images
    assert img.shape == (1, 64, 64, 3)


@pytest.mark.slow  # a second and a third pass through the stages (~3 min more)
def test_rerun_skips_finished_stages_and_resumes_a_stopped_training(first):
    tmp, proc, _ = first
    assert proc.returncode == 0
    runs = tmp / "runs"
    vae_ckpt = (runs / "shapes-vae" / "vae.ckpt").read_bytes()
    # an interrupted LDM run: checkpoints but no finish mark; this time it is asked for 4 steps
    (runs / "shapes-ldm" / ".finished").unlink()
    ldm_args = TINY["LDM_ARGS"].replace("train.steps=3", "train.steps=4")
    # resumed in PyNative mode (RUNTIME_ARGS reaches every MindSpore stage): a graph-mode checkpoint carries over
    again = _run(tmp, str(tmp / "model"), LDM_ARGS=ldm_args, RUNTIME_ARGS="--mode pynative")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    out = again.stdout
    assert "holds an export, kept" in out and "== vae: finished before" in out and "exists, kept" in out
    assert "resumed from" in out and "step_0000003.ckpt" in out and "mode=pynative" in out
    assert (runs / "shapes-vae" / "vae.ckpt").read_bytes() == vae_ckpt
    steps = [r["step"] for r in csv.DictReader(open(tmp / "model" / "metrics_ldm.csv"))]
    assert steps == ["1", "2", "3", "4"]
    # the evaluation is of the resumed model: it was redone, and the card has the new table
    assert "== eval: " + sys.executable in out
    card = (tmp / "model" / "README.md").read_text(encoding="utf-8")
    assert "| training | 4 steps from scratch" in card
    # the refine run had begun from the 3-step weights: it started over from the 4-step ones
    assert "began from another" in out and "== refine: " + sys.executable in out
    assert [r["step"] for r in csv.DictReader(open(tmp / "model" / "metrics_ldm_refine.csv"))] == ["1", "2"]
    # once more: the evaluation is of this very checkpoint now, so it is kept too
    table = (runs / "shapes-ldm-refine" / "eval" / "adherence.md").read_bytes()
    third = _run(tmp, str(tmp / "model"), LDM_ARGS=ldm_args, RUNTIME_ARGS="--mode pynative")
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert "== ldm: finished before" in third.stdout and "evaluated this model.ckpt, kept" in third.stdout
    assert "== refine: finished before" in third.stdout and "began from another" not in third.stdout
    assert (runs / "shapes-ldm-refine" / "eval" / "adherence.md").read_bytes() == table


def test_wrong_use_and_a_failing_stage(tmp_path):
    proc = _run(tmp_path, "a", "b")
    assert proc.returncode == 2 and "one argument at most" in proc.stderr
    proc = _run(tmp_path, str(tmp_path / "m"), REFINE_STEPS="many")
    assert proc.returncode == 2 and "REFINE_STEPS must be a whole number" in proc.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "m").exists()
    data = tmp_path / "data"
    data.mkdir()
    (data / "data.csv").write_text("dir,text\nimages/0.png,一个红色的圆形在左边\n", encoding="utf-8")
    (data / "vocab.txt").write_text("[PAD]\n[UNK]\n", encoding="utf-8")
    proc = _run(tmp_path, str(tmp_path / "model"))
    assert proc.returncode == 1
    assert "stage 'vae' failed" in proc.stderr and "run the same command again" in proc.stderr
    assert "images/0.png" in (tmp_path / "runs" / "shapes-vae.log").read_text(encoding="utf-8")
    assert not (tmp_path / "model").exists()
