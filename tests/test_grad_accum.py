"""Gradient accumulation (``train.grad_accum_steps``): A micro-batches accumulated make exactly
the update of one step on the combined batch, in graph and pynative mode, with the loss scale
(dynamic and static), the overflow skip, clipping, the LR schedule, keyed dropout and the EMA
all advancing once per update; the DDPM and LDM trainers end with the same checkpoint either way."""
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor, nn, ops

from mind_diffusion.checkpoint.io import CheckpointError, read_checkpoint
from mind_diffusion.config import load_config
from mind_diffusion.ddpm.config import ddpm_config_defaults
from mind_diffusion.ddpm.training import build_ddpm_trainer
from mind_diffusion.nn.dropout import KeyedDropout, attach_dropout_keys, make_micro_counter
from mind_diffusion.runtime import Precision, Runtime
from mind_diffusion.train.schedules import WarmupLR
from mind_diffusion.train.step import GRAD_BUFFER_PREFIX, AccumulatingTrainStep, LossScaler, TrainStep

TOL = 2e-5


class _Net(nn.Cell):
    """A small regression net with keyed dropout (so the micro-batch row offsets matter)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Dense(6, 16)
        self.drop = KeyedDropout(0.3)
        self.b = nn.Dense(16, 3)

    def construct(self, x, y):
        d = self.b(self.drop(ops.tanh(self.a(x)))) - y
        return (d * d).mean()


def _build(accum, loss_scale="dynamic", clip=0.5):
    ms.set_seed(0)
    net = _Net()
    net.set_train(True)
    opt = nn.Adam(net.trainable_params(), learning_rate=WarmupLR(1e-2, 3))
    scaler = LossScaler(1024.0, dynamic=loss_scale == "dynamic", window=2)
    micro = make_micro_counter() if accum > 1 else None
    rng_step = attach_dropout_keys(net, 3, 0, accum, micro)
    if accum == 1:
        return net, opt, TrainStep(net, opt, scaler, clip_grad_norm=clip, rng_step=rng_step)
    return net, opt, AccumulatingTrainStep(net, opt, accum, scaler, clip_grad_norm=clip, rng_step=rng_step,
                                           rng_micro=micro)


def _micro(x, y, accum):
    b = len(x) // accum
    return [(Tensor(x[m * b:(m + 1) * b]), Tensor(y[m * b:(m + 1) * b])) for m in range(accum)]


def _data(updates, batch=8, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((updates, batch, 6)).astype(np.float32),
            rng.standard_normal((updates, batch, 3)).astype(np.float32))


@pytest.fixture(params=[("graph", "dynamic"), ("pynative", "dynamic"), ("pynative", "static")],
                ids=["graph-dynamic", "pynative-dynamic", "pynative-static"])
def mode_and_scale(request):
    mode, scale = request.param
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    yield mode, scale
    ms.set_context(mode=ms.PYNATIVE_MODE)


def test_accumulated_update_equals_the_combined_batch(mode_and_scale):
    """3 updates of 8 rows: A=4 (graph) / 2 (pynative) micro-batches == one step on 8 (Adam, warmup
    LR, clipping active at 0.5, loss scale 1024 dynamic (doubling every 2 good updates) or static,
    keyed dropout). The static scale only changes what the scale does, so one mode covers it."""
    ms_mode, loss_scale = mode_and_scale
    updates, accum = 3, 4 if ms_mode == "graph" else 2
    xs, ys = _data(updates)
    out = {}
    for a in (1, accum):
        net, opt, step = _build(a, loss_scale)
        log = []
        for s in range(updates):
            loss, finite, scale = step.run(_micro(xs[s], ys[s], a))
            log.append((float(loss.asnumpy()), bool(finite.asnumpy()), float(scale.asnumpy())))
        out[a] = ({p.name: p.asnumpy() for p in net.get_parameters()}, log, int(opt.global_step.asnumpy()),
                  float(step.scaler.scale.asnumpy()))
    (p1, log1, gs1, sc1), (pa, loga, gsa, sca) = out[1], out[accum]
    assert gs1 == gsa == updates                       # the LR schedule counts updates
    assert sc1 == sca == (2048.0 if loss_scale == "dynamic" else 1024.0)  # the scale moves per update
    assert [f for _, f, _ in loga] == [True] * updates
    for (l1, _, s1), (la, _, sa) in zip(log1, loga):
        assert la == pytest.approx(l1, rel=1e-6) and s1 == sa
    for k in p1:
        np.testing.assert_allclose(pa[k], p1[k], rtol=0, atol=TOL, err_msg=k)
    init = _build(1)[0]
    moved = max(np.abs(p1[p.name] - p.asnumpy()).max() for p in init.trainable_params())
    assert moved > 1e-3  # the comparison is between trained weights
    if accum > 1:
        bufs = [p for p in step.get_parameters() if p.name.startswith(GRAD_BUFFER_PREFIX)]
        assert bufs and all(not np.any(b.asnumpy()) for b in bufs)  # zeroed after every update


def test_overflow_in_one_micro_batch_skips_the_whole_update(ms_mode):
    """A non-finite gradient in micro-batch 2 of 3: no parameter moves, the optimizer step (and
    its LR schedule) does not advance, the dynamic scale halves once, the buffers are cleared; the
    next update is exact again."""
    xs, ys = _data(2, batch=6, seed=1)
    net, opt, step = _build(3, "dynamic", clip=0.0)
    before = {p.name: p.asnumpy().copy() for p in net.trainable_params()}
    bad = xs[0].copy()
    bad[3, 0] = np.inf  # row 3: micro-batch 1 of [0,1], [2,3], [4,5]
    _, finite, scale = step.run(_micro(bad, ys[0], 3))
    assert not bool(finite.asnumpy()) and float(scale.asnumpy()) == 512.0  # the scale after the update
    assert float(step.scaler.scale.asnumpy()) == 512.0          # halved once, not per micro-batch
    assert int(opt.global_step.asnumpy()) == 0
    for p in net.trainable_params():
        np.testing.assert_array_equal(p.asnumpy(), before[p.name], err_msg=p.name)
    assert all(not np.any(b.asnumpy()) for b in step.buffers)
    assert int(step.apply_update.rng_step.asnumpy()) == 1   # a skipped update is still a step of the data
    _, finite, _ = step.run(_micro(xs[1], ys[1], 3))
    assert bool(finite.asnumpy()) and int(opt.global_step.asnumpy()) == 1
    # the reference: one combined-batch step on the same good batch, from the same state (scale 512,
    # dropout step 1)
    ref_net, _, ref = _build(1, "dynamic", clip=0.0)
    ref.scaler.scale.set_data(Tensor(512.0, ms.float32))
    ref.rng_step.set_data(Tensor(np.asarray(1, np.int32)))
    ref.run(_micro(xs[1], ys[1], 1))
    for p in ref_net.trainable_params():
        got = [q for q in net.trainable_params() if q.name == p.name][0].asnumpy()
        assert np.abs(got - before[p.name]).max() > 1e-4, p.name
        np.testing.assert_allclose(got, p.asnumpy(), rtol=0, atol=TOL, err_msg=p.name)


def test_accum_steps_must_be_a_positive_int():
    net = _Net()
    opt = nn.Adam(net.trainable_params(), learning_rate=1e-3)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="must be an integer >= 1"):
            AccumulatingTrainStep(net, opt, bad)


# ------------------------------------------------------------------------------ the trainers
TINY_DDPM = [
    "model.img_channels=1", "model.image_size=8", "model.base_channels=16", "model.channel_mults=[1,2]",
    "model.num_res_blocks=1", "model.time_emb_dim=32", "model.num_groups=4", "model.dropout=0.1",
    "model.attention_resolutions=[1]", "model.num_classes=10", "data.kind=digits", "train.batch_size=8",
    "train.lr=1e-3", "train.ema_start=1", "train.ema_decay=0.9", "train.log_every=1", "train.warmup_steps=2",
    "train.clip_grad_norm=1.0", "train.loss_scale=dynamic", "train.init_loss_scale=256.0",
    "train.ckpt_every=2", "train.keep_checkpoints=5",
]


def _ddpm(out, steps, *extra, resume=None, runtime=None):
    ms.set_context(mode=ms.GRAPH_MODE)
    cfg = load_config(None, TINY_DDPM + [f"train.steps={steps}", f"train.output_dir={out}", *extra],
                      ddpm_config_defaults())
    trainer, make = build_ddpm_trainer(cfg, runtime or Runtime("CPU", "graph", 0, Precision()), resume=resume,
                                       progress=False)
    trainer.fit(make)
    return trainer


def _assert_same_checkpoint(a, b, tol=TOL):
    a, b = read_checkpoint(a), read_checkpoint(b)
    assert set(a) == set(b)
    assert not any(k.startswith(GRAD_BUFFER_PREFIX) for k in a)
    for k in a:
        np.testing.assert_allclose(np.asarray(b[k], np.float64), np.asarray(a[k], np.float64), rtol=0, atol=tol,
                                   err_msg=k)


@pytest.mark.slow
def test_ddpm_trainer_accumulation_and_resume_with_another_split(tmp_path):
    """The tiny DDPM (dropout 0.1, warmup, clipping, dynamic scale, EMA): 3 updates of 8 rows with
    grad_accum_steps=4 == with 1 (model, EMA, Adam moments, optimizer step, scale, dropout step);
    a run saved at update 2 with accumulation 1 resumes with accumulation 2 (the same global
    batch, as when 8 workers become 4) and ends at the same checkpoint. A resume with another
    global batch is refused before any training, naming the fix."""
    ms.set_context(mode=ms.GRAPH_MODE)
    _ddpm(tmp_path / "one", 3)
    _ddpm(tmp_path / "four", 3, "train.grad_accum_steps=4")
    last = "checkpoints/step_0000003.ckpt"
    _assert_same_checkpoint(tmp_path / "one" / last, tmp_path / "four" / last)
    state = read_checkpoint(tmp_path / "four" / last)
    assert int(state["meta.global_batch"]) == 8 and int(state["meta.samples_seen"]) == 24
    assert int(state["global_step"]) == 3 and int(state["train_rng_step"]) == 3
    a = (tmp_path / "one" / "metrics.csv").read_text().splitlines()[1:]
    b = (tmp_path / "four" / "metrics.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in b] == ["1", "2", "3"]
    for ra, rb in zip(a, b):
        assert float(rb.split(",")[1]) == pytest.approx(float(ra.split(",")[1]), rel=1e-5)
    # resume update 2 of the accumulation-1 run with accumulation 2
    shutil.copytree(tmp_path / "one", tmp_path / "split")
    _ddpm(tmp_path / "split", 3, "train.grad_accum_steps=2", "train.ckpt_every=100",
          resume=str(tmp_path / "split" / "checkpoints" / "step_0000002.ckpt"))
    _assert_same_checkpoint(tmp_path / "one" / last, tmp_path / "split" / last)
    with pytest.raises(CheckpointError, match=r"global batch of 8 .* this run's is 4 .*train.batch_size=8"):
        _ddpm(tmp_path / "split", 4, "train.batch_size=4", resume="auto")


@pytest.mark.slow
def test_ldm_trainer_accumulation(tmp_path):
    """The tiny LDM (text encoder trained, UNet dropout 0.1, caption dropout, shuffled data,
    dynamic loss scale, clipping): 3 updates of global batch 4 as 1 micro-batch of 4 == as 4
    micro-batches of 1 (train.batch_size=1, train.grad_accum_steps=4)."""
    from test_ldm_training import VOCAB, _cfg, _write_images
    from mind_diffusion.ldm.training import build_ldm_trainer

    if not VOCAB.is_file():
        pytest.skip(f"{VOCAB} not found (reference data lives beside the repo)")
    ms.set_context(mode=ms.GRAPH_MODE)
    data = _write_images(tmp_path / "imgs", 4)
    common = ("train.steps=3", "train.ckpt_every=3", "train.start_learning_rate=3e-3", "train.warmup_steps=1",
              "train.loss_scale=dynamic", "train.init_loss_scale=1024.0", "train.loss_scale_window=2",
              "train.clip_grad_norm=1.0", "train.unet_dropout=0.1", "data.caption_dropout=0.25",
              "data.shuffle=true")
    for tag, extra in (("one", ("train.batch_size=4",)), ("four", ("train.batch_size=1", "train.grad_accum_steps=4"))):
        cfg = _cfg(data, tmp_path / tag, *common, *extra)
        trainer, make = build_ldm_trainer(cfg, Runtime("CPU", "graph", 0, Precision()), progress=False)
        assert trainer.global_batch == 4 and trainer.accum_steps == (4 if tag == "four" else 1)
        trainer.fit(make)
    last = "checkpoints/step_0000003.ckpt"
    _assert_same_checkpoint(tmp_path / "one" / last, tmp_path / "four" / last)
    state = read_checkpoint(tmp_path / "four" / last)
    assert int(state["meta.samples_seen"]) == 12 and float(state["scale_sense"]) == 2048.0


# ------------------------------------------------------------------- across world sizes (msrun)
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_saved_on_two_workers_resumes_on_one_with_accumulation(tmp_path):
    """Two msrun workers accumulating 2 micro-batches each (global batch 8 = 2 workers x 2 x 2 rows;
    gradients all-reduced once per update) train 2 updates and save; one process resumes that
    checkpoint with train.grad_accum_steps=4 (8 = 1 x 4 x 2) for update 3: the result equals 3
    updates of one process on the whole batch (<= 2e-5)."""
    bindir = Path(sys.executable).parent
    msrun = bindir / "msrun"
    if not msrun.exists():
        pytest.skip("msrun is not installed next to this Python (pip install mindspore)")
    env = dict(os.environ, PATH=f"{bindir}:{os.environ.get('PATH', '')}")  # msrun uses the first python
    me = str(Path(__file__).resolve())
    proc = subprocess.run(
        [str(msrun), "--worker_num=2", "--local_worker_num=2", f"--master_port={_free_port()}",
         f"--log_dir={tmp_path / 'logs'}", "--join=True", "--cluster_time_out=300",
         "python", me, str(tmp_path / "two"), "2", "train.grad_accum_steps=2"],
        env=env, cwd=Path(me).parents[1], timeout=600, capture_output=True, text=True)
    if proc.returncode != 0:
        logs = "".join(p.read_text()[-2000:] for p in sorted((tmp_path / "logs").glob("*.log")))
        pytest.fail(f"msrun failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{logs}")
    saved = tmp_path / "two" / "checkpoints" / "step_0000002.ckpt"
    assert int(read_checkpoint(saved)["meta.samples_seen"]) == 16
    _ddpm(tmp_path / "two", 3, "train.grad_accum_steps=4", resume="auto")
    _ddpm(tmp_path / "one", 3)
    last = "checkpoints/step_0000003.ckpt"
    _assert_same_checkpoint(tmp_path / "one" / last, tmp_path / "two" / last)


def _worker(out_dir: str, steps: int, *extra):
    """msrun worker of the test above: the tiny DDPM on this rank's share of the global batch."""
    from mind_diffusion.runtime import init_runtime

    rt = init_runtime("CPU", "graph", seed=0, verbose=False)
    assert rt.group_size == 2, rt
    _ddpm(out_dir, steps, *extra, runtime=rt)


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]), *sys.argv[3:])
