"""Data sharded by global rank: the data order is the global sample sequence (seeded epoch
permutations of the whole dataset, ``G = micro-batch x workers x accumulation`` samples per update),
each rank takes its slice, and a run saved on one world size resumes on another with the same
data. The sharding functions are pure, so the ranks are simulated in one process."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from mind_diffusion.checkpoint.io import CheckpointError, save_atomic
from mind_diffusion.config import ConfigError, load_config
from mind_diffusion.ddpm.config import ddpm_config_defaults
from mind_diffusion.train.data import (DataError, DiffusionBatches, GlobalOrder, check_global_batch,
                                       micro_batches, read_digits, shard_rows)
from mind_diffusion.train.validate import check_train_section

from cli_helpers import captured_error

ROOT = Path(__file__).resolve().parents[1]
WORLDS = (1, 2, 4, 8)


def test_ranks_and_micro_batches_tile_the_global_batch():
    """For every world size and accumulation, rank r's micro-batch m is global rows
    [(r*A + m)*b, (r*A + m + 1)*b): together, each row exactly once, in order."""
    for world in WORLDS:
        for accum in (1, 2, 4):
            g = 32  # divisible by every world x accum here
            b = check_global_batch(g, world, accum)
            rows = []
            for r in range(world):
                start, stop = shard_rows(g, world, accum, r)
                assert (start, stop) == (r * accum * b, (r + 1) * accum * b)
                mine = np.arange(start, stop)
                for m, (mb,) in enumerate(micro_batches((mine,), accum)):
                    np.testing.assert_array_equal(mb, np.arange((r * accum + m) * b, (r * accum + m + 1) * b))
                    rows.append(mb)
            np.testing.assert_array_equal(np.concatenate(rows), np.arange(g))


def test_global_order_is_independent_of_workers_and_accumulation():
    """The sample sequence is seeded epoch permutations of the whole dataset, G per update,
    incomplete last batch dropped; every epoch visits each sample once."""
    order = GlobalOrder(101, 8, seed=4)
    assert order.steps_per_epoch == 12
    perm0 = np.random.default_rng([4, 0, 7]).permutation(101)
    np.testing.assert_array_equal(order.indices(0), perm0[:8])
    np.testing.assert_array_equal(order.indices(11), perm0[88:96])
    np.testing.assert_array_equal(order.indices(12), np.random.default_rng([4, 1, 7]).permutation(101)[:8])
    epoch = np.concatenate([order.indices(s) for s in range(12)])
    assert len(np.unique(epoch)) == 96
    assert order.samples_seen(5) == 40
    np.testing.assert_array_equal(GlobalOrder(10, 4, shuffle=False).indices(2), [0, 1, 2, 3])  # wraps


@pytest.fixture(scope="module")
def digits():
    images, labels, _ = read_digits(8)
    return images[:200], labels[:200]


def _rank_batches(digits, world, accum, step, g=16):
    """What every rank feeds at update ``step``: [rank][micro] -> (x, y, t, noise)."""
    images, labels = digits
    out = []
    for r in range(world):
        src = DiffusionBatches(images, labels, g, 1000, seed=3, rank=r, group_size=world, random_flip=True,
                               accum_steps=accum)
        out.append(micro_batches(src[step], accum))
    return out


def test_every_world_size_feeds_the_same_global_batch(digits):
    """World sizes 1/2/4/8 (x accumulation 1/2): the micro-batches of all ranks, in (rank, micro)
    order, are exactly the one-process batch, sample randomness (t, noise, flips) included."""
    images, labels = digits
    single = DiffusionBatches(images, labels, 16, 1000, seed=3, random_flip=True)
    for step in (0, 3, single.steps_per_epoch + 2):  # into the second epoch
        whole = single[step]
        for world in WORLDS:
            for accum in (1, 2):
                parts = [mb for rank in _rank_batches(digits, world, accum, step) for mb in rank]
                assert len(parts) == world * accum and len(parts[0][0]) == 16 // (world * accum)
                for i, arr in enumerate(whole):
                    np.testing.assert_array_equal(np.concatenate([p[i] for p in parts]), arr)


def test_resume_on_another_world_size_continues_the_sample_sequence(digits):
    """Saved on 8 workers after 5 updates, resumed on 4 workers with accumulation 2 (or with the
    per-worker batch doubled): updates 5.. draw exactly the samples an uninterrupted 8-worker run
    would, and the checkpointed position (samples consumed) is the same."""
    images, labels = digits
    g, saved_at, total = 16, 5, 14  # crosses an epoch boundary (12 updates per epoch of 200)

    def consumed(world, accum, steps):
        rows = []
        for s in steps:
            rows.append(np.concatenate([np.concatenate([mb[1] for mb in rank])
                                        for rank in _rank_batches(digits, world, accum, s, g)]))
        return rows

    straight = consumed(8, 1, range(total))
    resumed = consumed(8, 1, range(saved_at)) + consumed(4, 2, range(saved_at, total))
    doubled = consumed(8, 1, range(saved_at)) + consumed(4, 1, range(saved_at, total))  # 4 x 4 rows
    for a, b, c in zip(straight, resumed, doubled):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    order = GlobalOrder(len(images), g, seed=3)
    assert order.samples_seen(saved_at) == saved_at * g
    np.testing.assert_array_equal(np.concatenate(straight), labels[np.concatenate(
        [order.indices(s) for s in range(total)])])


# ------------------------------------------------------------------------------- bad input
def test_batch_and_accumulation_errors_are_one_clear_line():
    with pytest.raises(DataError, match=r"train.batch_size=10 \(the global batch\) must be divisible by 2 "
                                        r"worker\(s\) x train.grad_accum_steps=4 = 8: use train.batch_size=8 or 16"):
        check_global_batch(10, 2, 4)
    with pytest.raises(DataError, match="divisible by 3 worker"):
        DiffusionBatches(np.zeros((20, 8, 8, 1), np.uint8), np.zeros(20, np.int64), 8, 1000, group_size=3)
    for bad in (0, -2, 1.5, True):
        cfg = load_config(None, [], ddpm_config_defaults())
        cfg.train.grad_accum_steps = bad
        with pytest.raises(ConfigError, match=r"train.grad_accum_steps must be (an integer )?>= 1, got"):
            check_train_section(cfg.train)


def _script(name):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TINY = ["model.img_channels=1", "model.image_size=8", "model.base_channels=16", "model.channel_mults=[1,2]",
        "model.num_res_blocks=1", "model.time_emb_dim=32", "model.num_groups=4", "model.dropout=0.0",
        "model.attention_resolutions=[1]", "model.num_classes=10", "data.kind=digits", "train.steps=4"]


@pytest.mark.parametrize("extra, needles", [
    (["train.grad_accum_steps=0"], ["train.grad_accum_steps must be >= 1, got 0"]),
    (["train.grad_accum_steps=2.5"], ["train.grad_accum_steps"]),
    (["train.batch_size=10", "train.grad_accum_steps=4"], ["train.batch_size=10", "= 4", "8 or 12"]),
])
def test_train_script_refuses_bad_accumulation(tmp_path, capsys, extra, needles):
    out = tmp_path / "run"
    rc = _script("train_ddpm").main(["--config", str(ROOT / "configs/ddpm/digits16.yaml"), "--no_progress",
                                     "--device_target", "CPU", f"train.output_dir={out}", *TINY, *extra])
    captured_error(capsys, rc, *needles)
    assert not out.exists()


def test_resume_with_another_global_batch_is_refused(tmp_path, capsys):
    """A checkpoint records its global batch; resuming it with another one is one line saying
    how to get the checkpoint's back, before any training (and nothing is written)."""
    run = tmp_path / "run"
    ckpt = save_atomic({"w": np.zeros(1, np.float32)}, run / "checkpoints" / "step_0000002.ckpt",
                       extra={"meta.train_step": 2, "meta.seed": 0, "meta.global_batch": 16,
                              "meta.samples_seen": 32})
    (run / "checkpoints" / "latest.txt").write_text("step_0000002.ckpt\n")
    before = sorted(p.name for p in run.rglob("*"))
    rc = _script("train_ddpm").main(["--config", str(ROOT / "configs/ddpm/digits16.yaml"), "--no_progress",
                                     "--device_target", "CPU", f"train.output_dir={run}", *TINY,
                                     "train.batch_size=8", "--resume", "auto"])
    captured_error(capsys, rc, str(ckpt), "global batch of 16", "this run's is 8", "train.batch_size=16")
    assert sorted(p.name for p in run.rglob("*")) == before
