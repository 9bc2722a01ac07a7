"""Trainer: exact resume, EMA recipe, dynamic loss scale with overflow skip, atomic checkpoints,
strict loading reports, deterministic sharded batches."""

import numpy as np
import pytest

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from mind_diffusion.checkpoint.io import (CheckpointError, CheckpointMismatchError, load_strict,
                                          read_checkpoint, save_atomic)
from mind_diffusion.config import load_config
from mind_diffusion.ddpm.config import ddpm_config_defaults
from mind_diffusion.ddpm.training import train_ddpm
from mind_diffusion.runtime import Runtime, Precision
from mind_diffusion.train.data import DiffusionBatches, read_digits
from mind_diffusion.train.step import EMA, LossScaler, TrainStep, finite_check, grads_finite

TINY = [
    "model.img_channels=1", "model.image_size=8", "model.base_channels=16", "model.channel_mults=[1,2]",
    "model.num_res_blocks=1", "model.time_emb_dim=32", "model.num_groups=4", "model.dropout=0.0",
    "model.attention_resolutions=[1]", "model.num_classes=10", "data.kind=digits", "train.batch_size=8",
    "train.lr=1e-3", "train.ema_start=2", "train.ema_decay=0.9", "train.log_every=1", "train.warmup_steps=2",
    "train.clip_grad_norm=1.0",
]


def _rt():
    return Runtime("CPU", "graph", 0, Precision())


def _train(tmp, steps, resume=None, extra=()):
    ms.set_context(mode=ms.GRAPH_MODE)
    cfg = load_config(None, TINY + [f"train.steps={steps}", f"train.output_dir={tmp}", "train.ckpt_every=100",
                                    *extra], ddpm_config_defaults())
    return train_ddpm(cfg, _rt(), resume=resume, progress=False)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted 6-step run the resume tests compare against (trained once per module)."""
    out = tmp_path_factory.mktemp("ddpm_straight")
    _train(out, 6)
    return out


def test_resume_is_exact(tmp_path, straight):
    """2N steps straight == N steps, stop, resume, N more (model, EMA, Adam moments)."""
    _train(tmp_path / "split", 3)
    _train(tmp_path / "split", 6, resume="auto")
    a = read_checkpoint(straight / "checkpoints" / "step_0000006.ckpt")
    b = read_checkpoint(tmp_path / "split" / "checkpoints" / "step_0000006.ckpt")
    assert set(a) == set(b)
    assert any(k.startswith("ema.") for k in a) and any(k.startswith("moment1.") for k in a)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # the metrics log continues where it stopped
    rows = (tmp_path / "split" / "metrics.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == [str(i) for i in range(1, 7)]
    # exported sampling weights are the EMA under model names
    ema = read_checkpoint(tmp_path / "split" / "model_ema.ckpt")
    assert "init_conv.weight" in ema
    np.testing.assert_array_equal(ema["init_conv.weight"], b["ema.init_conv.weight"])


def test_resume_from_an_earlier_checkpoint_drops_the_lost_rows(tmp_path, straight):
    """A run killed between checkpoints logged steps it then loses; resumed from the earlier checkpoint,
    the log keeps each step once, with the losses of the steps as retrained (== an uninterrupted run)."""
    run = tmp_path / "r"
    _train(run, 3)
    _train(run, 5, resume="auto")  # logs 4, 5; stands for the segment lost with the killed process
    (run / "metrics.csv").write_text((run / "metrics.csv").read_text() + "not-a-step,x\n")
    _train(run, 6, resume=str(run / "checkpoints" / "step_0000003.ckpt"))

    def losses(d):
        return [r.split(",")[:2] for r in (d / "metrics.csv").read_text().strip().splitlines()[1:]]

    got = losses(run)
    assert [r[0] for r in got] == ["1", "2", "3", "not-a-step", "4", "5", "6"]  # foreign lines are left alone
    assert [r for r in got if r[0] != "not-a-step"] == losses(straight)


def test_resume_rejects_model_only_checkpoint(tmp_path, straight):
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        _train(tmp_path / "r", 2, resume=str(straight / "model_ema.ckpt"))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        _train(tmp_path / "fresh", 2, resume="auto")


class _Toy(nn.Cell):
    def __init__(self):
        super().__init__()
        self.w = Parameter(Tensor(np.array([1.0, -2.0], np.float32)), name="w")

    def construct(self, x):
        return (self.w * x).sum()


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE])
def test_ema_hard_copy_then_decay(mode):
    ms.set_context(mode=mode)
    net = _Toy()
    ema = EMA(net, decay=0.9, start=2)
    values = [np.array([3.0, 4.0]), np.array([5.0, 6.0]), np.array([7.0, -1.0]), np.array([0.5, 0.25])]
    expect = None
    for step, v in enumerate(values):
        ops.assign(net.w, Tensor(v.astype(np.float32)))  # in place, as the optimizer updates
        ema.step(step)
        expect = v if step < 2 else 0.9 * expect + 0.1 * v
        np.testing.assert_allclose(ema.state()["ema.w"], expect, rtol=1e-6)


class _Overflowing(nn.Cell):
    """loss = sum(w * x); x = inf makes every gradient non-finite."""

    def __init__(self):
        super().__init__()
        self.w = Parameter(Tensor(np.ones(3, np.float32)), name="w")

    def construct(self, x):
        return (self.w * x).sum()


class _Finite(nn.Cell):
    def __init__(self, check):
        super().__init__()
        self.check = check

    def construct(self, grads):
        return grads_finite(grads, self.check)


def test_overflow_check_finds_one_bad_element_anywhere(ms_mode):
    """The CPU kernel (one read of each gradient) and ``ms.amp.all_finite`` agree: a single NaN, +inf
    or -inf anywhere (a tensor of several 1M-element chunks, its last element; a small one; an fp16
    one) makes the check fail, and the largest finite values (float32 and fp16) do not."""
    check = finite_check()
    if check is None:
        pytest.skip("the CPU kernels are not available here")
    rng = np.random.default_rng(0)
    base = [rng.standard_normal((3, 2_500_001)).astype(np.float32), rng.standard_normal(7).astype(np.float32),
            rng.standard_normal((4, 5)).astype(np.float16)]
    base[0][1, 17] = np.finfo(np.float32).max
    base[1][0] = -np.finfo(np.float32).max
    base[2][0, 0] = np.finfo(np.float16).max
    cases = [(list(base), True)]
    for i, idx in ((0, (2, 2_500_000)), (0, (0, 0)), (1, (6,)), (2, (3, 4))):
        for bad in (np.nan, np.inf, -np.inf):
            arrays = [a.copy() for a in base]
            arrays[i][idx] = bad
            cases.append((arrays, False))
    ours, ref = _Finite(check), _Finite(None)
    for arrays, want in cases:
        grads = ms.mutable(tuple(Tensor(a) for a in arrays))   # inputs, not constants of the graph
        assert bool(ours(grads).asnumpy()) is want
        assert bool(ref(grads).asnumpy()) is want


def test_overflow_check_compiles_for_a_full_size_models_gradients(graph_mode):
    """A full-size fine-tune (SD-v1 UNet + text encoder) has over a thousand gradients: the check must
    compile for them in graph mode (a Python loop over them went past MindSpore's call-depth limit of
    1000) and still find one NaN among them."""
    check = finite_check()
    if check is None:
        pytest.skip("the CPU kernels are not available here")
    arrays = [np.full((3,), float(i), np.float32) for i in range(1100)]
    ours = _Finite(check)
    assert bool(ours(ms.mutable(tuple(Tensor(a) for a in arrays))).asnumpy()) is True
    arrays[1042][1] = np.nan
    assert bool(ours(ms.mutable(tuple(Tensor(a) for a in arrays))).asnumpy()) is False


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE])
def test_dynamic_loss_scale_skips_overflow(mode):
    ms.set_context(mode=mode)
    net = _Overflowing()
    opt = nn.SGD(net.trainable_params(), learning_rate=0.1)
    step = TrainStep(net, opt, LossScaler(1024.0, dynamic=True, window=2))
    bad = Tensor(np.array([np.inf, 1.0, 1.0], np.float32))
    good = Tensor(np.array([1.0, 2.0, 3.0], np.float32))
    _, finite, _ = step(bad)
    assert not bool(finite.asnumpy())
    np.testing.assert_array_equal(net.w.asnumpy(), np.ones(3))           # update skipped
    assert float(step.scaler.scale.asnumpy()) == 512.0                     # scale halved
    _, finite, _ = step(good)
    assert bool(finite.asnumpy())
    np.testing.assert_allclose(net.w.asnumpy(), 1 - 0.1 * np.array([1, 2, 3]), rtol=1e-6)  # unscaled grads
    step(good)
    assert float(step.scaler.scale.asnumpy()) == 1024.0                    # doubled after 2 good steps
    ms.set_context(mode=ms.PYNATIVE_MODE)


def test_atomic_save_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "m.ckpt"
    save_atomic({"a": np.ones(3, np.float32)}, path)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ms, "save_checkpoint", boom)
    with pytest.raises(OSError):
        save_atomic({"a": np.zeros(3, np.float32)}, path)
    monkeypatch.undo()
    np.testing.assert_array_equal(read_checkpoint(path)["a"], np.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["m.ckpt"]  # no temp files left behind


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "m.ckpt"
    save_atomic({"a": np.ones(1000, np.float32)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot be read|truncated"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "missing.ckpt")


def test_strict_load_lists_every_problem():
    net = nn.SequentialCell(nn.Dense(3, 4), nn.Dense(4, 2))
    names = [p.name for p in net.get_parameters()]
    state = {n: p.asnumpy() for n, p in zip(names, net.get_parameters())}
    state.pop(names[0])
    state[names[1]] = np.zeros(5, np.float32)
    state["extra.weight"] = np.zeros(1, np.float32)
    with pytest.raises(CheckpointMismatchError) as err:
        load_strict(net, state)
    msg = str(err.value)
    assert names[0] in msg and "extra.weight" in msg and "(5,) vs (4,)" in msg
    rep = err.value.report
    assert rep.missing == [names[0]] and rep.unexpected == ["extra.weight"] and len(rep.mismatched) == 1


def test_strict_load_copies_values_and_casts():
    net = nn.Dense(3, 2)
    vals = {p.name: np.random.default_rng(0).standard_normal(p.shape).astype(np.float16)
            for p in net.get_parameters()}
    rep = load_strict(net, vals)
    assert rep.ok and rep.loaded == 2 and len(rep.cast) == 2
    for p in net.get_parameters():
        np.testing.assert_array_equal(p.asnumpy(), vals[p.name].astype(np.float32))


def test_batches_are_deterministic_and_shard_exactly():
    images, labels, _ = read_digits(8)
    full = DiffusionBatches(images, labels, 8, 1000, seed=3)
    shards = [DiffusionBatches(images, labels, 8, 1000, seed=3, rank=r, group_size=2) for r in range(2)]
    for step in (0, 5, full.steps_per_epoch + 1):
        one = full[step]
        parts = [s[step] for s in shards]
        for i in range(4):
            np.testing.assert_array_equal(one[i], np.concatenate([p[i] for p in parts]))
        again = DiffusionBatches(images, labels, 8, 1000, seed=3)[step]
        for a, b in zip(one, again):
            np.testing.assert_array_equal(a, b)
    # epochs are permutations: every image once per epoch
    seen = np.concatenate([full.global_indices(s) for s in range(full.steps_per_epoch)])
    assert len(np.unique(seen)) == len(seen) == full.steps_per_epoch * 8
