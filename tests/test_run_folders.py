"""Run folders cannot be wrecked, training is reproducible with dropout, interrupts keep work.

- a second run into a folder that holds another run is refused (exit 2, one line, the folder
  byte-identical) unless --resume or --overwrite; --overwrite removes only that run's files;
- keep-last-N orders by step and never deletes what latest.txt names;
- --resume auto walks back past a truncated newest checkpoint; stale temp files are swept;
- DDPM with dropout 0.1: identical runs are bit-identical (graph and pynative), and a run stopped
  and resumed from its last checkpoint equals the uninterrupted one bit for bit (DDPM and LDM);
- keyed dropout masks equal their closed form (numpy);
- SIGTERM: the run saves a checkpoint and exits 130 with one line naming it.
"""
import hashlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor, nn

from cli_helpers import ROOT, captured_error
from mind_diffusion.checkpoint.io import read_checkpoint
from mind_diffusion.config import load_config
from mind_diffusion.ddpm.config import ddpm_config_defaults
from mind_diffusion.ddpm.training import train_ddpm
from mind_diffusion.nn.dropout import RNG_STEP_NAME, KeyedDropout, attach_dropout_keys, keep_mask_numpy
from mind_diffusion.runtime import Precision, Runtime
from mind_diffusion.train import run_dir
from mind_diffusion.train.run_dir import RunFolderError

TINY = [
    "model.img_channels=1", "model.image_size=8", "model.base_channels=16", "model.channel_mults=[1,2]",
    "model.num_res_blocks=1", "model.time_emb_dim=32", "model.num_groups=4", "model.dropout=0.1",
    "model.attention_resolutions=[1]", "model.num_classes=10", "data.kind=digits", "train.batch_size=8",
    "train.lr=1e-3", "train.ema_start=2", "train.ema_decay=0.9", "train.log_every=1", "train.warmup_steps=2",
    "train.clip_grad_norm=1.0", "train.keep_checkpoints=3",
]


def _rt(mode="graph"):
    return Runtime("CPU", mode, 0, Precision())


def _train(out, steps, resume=None, overwrite=False, mode="graph", extra=()):
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    cfg = load_config(None, TINY + [f"train.steps={steps}", f"train.output_dir={out}", *extra],
                      ddpm_config_defaults())
    try:
        return train_ddpm(cfg, _rt(mode), resume=resume, progress=False, overwrite=overwrite)
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _assert_same_state(a: Path, b: Path):
    sa, sb = read_checkpoint(a), read_checkpoint(b)
    assert set(sa) == set(sb)
    differ = [k for k in sa if not np.array_equal(sa[k], sb[k])]
    assert not differ, f"{len(differ)} of {len(sa)} tensors differ, e.g. {differ[:5]}"


def _load_script(name):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------------------ keyed dropout
def test_keyed_dropout_masks_match_closed_form(ms_mode):
    class Net(nn.Cell):
        def __init__(self):
            super().__init__()
            self.drop = KeyedDropout(0.25)

        def construct(self, x):
            return self.drop(x)

    net = Net()
    net.set_train(True)
    step = attach_dropout_keys(net, seed=5, rank=1)
    assert step.name == RNG_STEP_NAME and [p.name for p in net.get_parameters()] == [RNG_STEP_NAME]
    x = np.random.default_rng(0).standard_normal((3, 4, 5, 5)).astype(np.float32)
    for s in (0, 7):
        step.set_data(Tensor(np.asarray(s, np.int32)))
        got = net(Tensor(x)).asnumpy()
        keep = keep_mask_numpy(x.shape, 0.25, 5, "drop", s, row_offset=3)  # rank 1 of batch 3: rows 3..5
        np.testing.assert_array_equal(got, np.where(keep, x * np.float32(1 / 0.75), 0).astype(np.float32))
    assert 0.2 < 1 - keep.mean() < 0.3
    # a fraction p over many elements; other steps, layers and seeds draw other masks
    big = keep_mask_numpy((64, 32, 16, 16), 0.1, 0, "a", 0)
    assert abs((1 - big.mean()) - 0.1) < 0.002
    assert (big != keep_mask_numpy(big.shape, 0.1, 0, "a", 1)).mean() > 0.15
    assert (big != keep_mask_numpy(big.shape, 0.1, 0, "b", 0)).mean() > 0.15
    assert (big != keep_mask_numpy(big.shape, 0.1, 1, "a", 0)).mean() > 0.15
    net.set_train(False)
    np.testing.assert_array_equal(net(Tensor(x)).asnumpy(), x)


def test_two_workers_draw_the_global_batch_masks():
    """Rank r's rows are rows r*B.. of the global batch: two ranks' masks == one process's."""
    whole = keep_mask_numpy((4, 3, 2, 2), 0.5, 9, "l", 3)
    halves = [keep_mask_numpy((2, 3, 2, 2), 0.5, 9, "l", 3, row_offset=2 * r) for r in range(2)]
    np.testing.assert_array_equal(np.concatenate(halves), whole)


# ------------------------------------------------------------------------------ run folders
def test_rerun_into_a_run_folder_is_refused_and_overwrite_replaces_it(tmp_path, capsys):
    run = tmp_path / "r"
    _train(run, 3, extra=["train.ckpt_every=1"])
    before = _tree(run)
    assert "checkpoints/step_0000003.ckpt" in before
    with pytest.raises(RunFolderError, match="--resume auto.*--overwrite"):
        _train(run, 2)
    assert _tree(run) == before
    # the script: exit 2, one line naming the folder and both ways out, the folder untouched
    rc = _load_script("train_ddpm").main(["--config", str(ROOT / "configs/ddpm/digits16.yaml"), "--no_progress",
                                          "--device_target", "CPU", f"train.output_dir={run}", "train.steps=2"])
    line = captured_error(capsys, rc, str(run), "--resume auto", "--overwrite", "step 3")
    assert "another run" in line
    assert _tree(run) == before
    with pytest.raises(RunFolderError, match="exclude each other"):
        _train(run, 2, resume="auto", overwrite=True)
    # --overwrite: says what goes, removes the run's files only, starts a fresh log
    (run / "notes.txt").write_text("mine\n")
    _train(run, 2, overwrite=True)
    out = capsys.readouterr().out
    assert "--overwrite: removing the earlier run" in out and "checkpoints/step_0000003.ckpt" in out
    assert (run / "notes.txt").read_text() == "mine\n"
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*.ckpt")) == ["step_0000002.ckpt"]
    assert (run / "checkpoints" / "latest.txt").read_text().strip() == "step_0000002.ckpt"
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2"] and "dropped" not in out


def test_keep_last_n_orders_by_step_and_keeps_latest(tmp_path):
    ck = tmp_path / "checkpoints"
    ck.mkdir()
    for s in (10, 20, 30, 2, 100000):
        (ck / f"step_{s:07d}.ckpt").write_bytes(b"x")
    (ck / "latest.txt").write_text("step_0000002.ckpt\n")
    os.utime(ck / "step_0000030.ckpt", (0, 0))  # the oldest by time: order is by step, not mtime
    run_dir.prune_checkpoints(ck, 2)
    assert sorted(p.name for p in ck.glob("step_*")) == ["step_0000002.ckpt", "step_0000030.ckpt",
                                                          "step_0100000.ckpt"]
    assert [s for s, _ in run_dir.checkpoint_steps(ck)] == [2, 30, 100000]
    run_dir.prune_checkpoints(ck, 0)  # 0 keeps all
    assert len(list(ck.glob("step_*"))) == 3
    assert [p.name for p in run_dir.resume_candidates(ck)] == ["step_0000002.ckpt", "step_0100000.ckpt",
                                                               "step_0000030.ckpt"]


@pytest.mark.slow  # two runs, each with its own compile (~25 s each on 2 cores); the masks: closed-form test above
@pytest.mark.parametrize("mode", ["graph", "pynative"])
def test_ddpm_with_dropout_is_bit_identical(tmp_path, mode):
    """Two identical runs with dropout 0.1 (the shipped configs' value) end bit-identical."""
    for name in ("a", "b"):
        _train(tmp_path / name, 3, mode=mode)
    _assert_same_state(tmp_path / "a" / "checkpoints" / "step_0000003.ckpt",
                       tmp_path / "b" / "checkpoints" / "step_0000003.ckpt")
    # the exports hold the model's tensors only (no dropout step counter)
    assert RNG_STEP_NAME not in read_checkpoint(tmp_path / "a" / "model.ckpt")
    assert int(read_checkpoint(tmp_path / "a" / "checkpoints" / "step_0000003.ckpt")[RNG_STEP_NAME]) == 3


@pytest.mark.slow
def test_ddpm_resume_walks_back_past_a_truncated_checkpoint_and_is_exact(tmp_path, capsys):
    """A run killed after its step-4 checkpoint was cut short (and a temp file left behind) resumes
    from step 2 and ends bit-identical to an uninterrupted run, dropout 0.1 included."""
    _train(tmp_path / "straight", 6, extra=["train.ckpt_every=2"])
    run = tmp_path / "killed"
    _train(run, 4, extra=["train.ckpt_every=2"])
    ck = run / "checkpoints"
    data = (ck / "step_0000004.ckpt").read_bytes()
    (ck / "step_0000004.ckpt").write_bytes(data[: len(data) // 2])
    stale = [ck / ".step_0000006.ab12cd.tmp.tmp", ck / ".step_0000006.ab12cd.tmp.ckpt", run / "metrics.csv.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    capsys.readouterr()
    _train(run, 6, resume="auto", extra=["train.ckpt_every=2"])
    out = capsys.readouterr().out
    assert "stale temp file" in out and not any(p.exists() for p in stale)
    warn = [ln for ln in out.splitlines() if "warning" in ln]
    assert len(warn) == 1 and "step_0000004.ckpt" in warn[0], out
    assert "resumed from" in out and "step_0000002.ckpt at step 2" in out
    _assert_same_state(tmp_path / "straight" / "checkpoints" / "step_0000006.ckpt", ck / "step_0000006.ckpt")
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4", "5", "6"]  # 3, 4 relogged once


def test_resume_auto_with_no_readable_checkpoint_is_one_line(tmp_path):
    run = tmp_path / "r"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "step_0000002.ckpt").write_bytes(b"not a checkpoint")
    from mind_diffusion.checkpoint.io import CheckpointError

    with pytest.raises(CheckpointError, match="no checkpoint in .* reads.*--overwrite"):
        _train(run, 3, resume="auto")


@pytest.mark.slow
def test_ldm_with_dropout_resume_is_bit_identical(tmp_path):
    """LDM (tiny, unet_dropout 0.1, caption dropout): 4 steps straight == 2, stop, resume auto, 2 more."""
    from test_ldm_training import VOCAB, _write_images
    from mind_diffusion.ldm.config import ldm_train_config_defaults
    from mind_diffusion.ldm.training import train_ldm

    if not VOCAB.is_file():
        pytest.skip(f"{VOCAB} not found")
    data = _write_images(tmp_path / "pairs")

    def train(out, steps, resume=None):
        ms.set_context(mode=ms.GRAPH_MODE)
        cfg = load_config(ROOT / "configs" / "ldm" / "tiny-csv.yaml",
                          [f"data.path={data}", f"init.vocab={VOCAB}", f"train.output_dir={out}",
                           "train.unet_dropout=0.1", f"train.steps={steps}", "train.ckpt_every=2",
                           "train.log_every=1"], ldm_train_config_defaults())
        return train_ldm(cfg, _rt(), resume=resume, progress=False)

    train(tmp_path / "straight", 4)
    train(tmp_path / "split", 2)
    train(tmp_path / "split", 4, resume="auto")
    _assert_same_state(tmp_path / "straight" / "checkpoints" / "step_0000004.ckpt",
                       tmp_path / "split" / "checkpoints" / "step_0000004.ckpt")


# ------------------------------------------------------------------------------ interrupts
@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_130(tmp_path):
    run = tmp_path / "r"
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    env.pop("MIND_DIFFUSION_DEBUG", None)
    cmd = [sys.executable, str(ROOT / "scripts" / "train_ddpm.py"), "--config",
           str(ROOT / "configs" / "ddpm" / "digits16.yaml"), "--device_target", "CPU", "--no_progress",
           *TINY, "train.steps=100000", "train.ckpt_every=100000", f"train.output_dir={run}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.time() + 300
    for line in proc.stdout:  # wait until training runs (step 2 logged)
        lines.append(line)
        if line.startswith("step 2 ") or time.time() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    rest, err = proc.communicate(timeout=120)
    out = "".join(lines) + rest
    assert proc.returncode == 130, (out[-2000:], err[-2000:])
    stop = [ln for ln in out.splitlines() if "stopped by SIGTERM" in ln]
    assert len(stop) == 1 and "continue with --resume auto" in stop[0], out[-2000:]
    assert "Traceback" not in err
    name = (run / "checkpoints" / "latest.txt").read_text().strip()
    assert name in stop[0] and str(run) in stop[0]
    step = int(read_checkpoint(run / "checkpoints" / name)["meta.train_step"])
    assert step >= 2 and f"at step {step}:" in stop[0]
