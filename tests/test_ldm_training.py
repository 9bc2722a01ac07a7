"""Latent-diffusion training (mind_diffusion.ldm.training) and VAE training (.vae_training).

Graph compilation of a whole train step dominates the time (~30-45 s on 2 busy cores), so one
module-scoped run (``run``) trains the tiny model once and several tests inspect it; a second
run covers the frozen text encoder and the latent cache together.

This file is also the msrun worker of ``test_two_msrun_workers_match_one_process`` (see the
``__main__`` block at the end).
"""
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

ROOT = Path(__file__).resolve().parents[1]

from mind_diffusion.checkpoint.io import read_checkpoint
from mind_diffusion.config import load_config
from mind_diffusion.ldm.model import build_ldm
from mind_diffusion.ldm.config import ldm_train_config_defaults
from mind_diffusion.ldm.training import LatentDiffusionLoss, LDMBatches, build_ldm_trainer
from mind_diffusion.train.data import CSVImageText, read_csv_pairs
from mind_diffusion.train.optim import decays, weight_decay_groups
from mind_diffusion.train.schedules import WarmupCosineLR, lr_at
from mind_diffusion.runtime import Precision, Runtime
from mind_diffusion.train.data import DataError

TINY_CFG = ROOT / "configs" / "ldm" / "tiny-csv.yaml"
TINY_VAE_CFG = ROOT / "configs" / "ldm" / "tiny-vae.yaml"
SHARED = Path(os.environ.get("MIND_DIFFUSION_SHARED", ROOT.parent / "shared"))
VOCAB = SHARED / "reference" / "vocab_zh.txt"
CAPTIONS = ["红色 圆形 在 蓝色 背景", "绿色 方块 在 白色 背景", "黄色 三角形", "黑色 星星"]


def _write_images(folder: Path, n: int = 2, size=(40, 48)):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    rows = ["dir,text"]
    for i in range(n):
        h, w = size
        img = np.zeros((h, w, 3), np.uint8)
        img[...] = rng.integers(0, 256, 3)
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        img[y:y + h // 2, x:x + w // 2] = rng.integers(0, 256, 3)
        (folder / "img").mkdir(exist_ok=True)
        Image.fromarray(img).save(folder / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,{CAPTIONS[i % len(CAPTIONS)]}")
    (folder / "pairs.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def _rt():
    return Runtime("CPU", "graph", 0, Precision())


def _cfg(data, out, *extra):
    return load_config(TINY_CFG, [f"data.path={data}", f"init.vocab={VOCAB}", f"train.output_dir={out}",
                                  "data.caption_dropout=0.0", "data.shuffle=false", "train.log_every=1",
                                  "train.keep_checkpoints=5", *extra],
                       ldm_train_config_defaults())


def _losses(out: Path) -> dict:
    rows = (out / "metrics.csv").read_text().strip().splitlines()[1:]
    return {int(r.split(",")[0]): float(r.split(",")[1]) for r in rows}


def _params(cell) -> dict:
    return {p.name: p.asnumpy().copy() for p in cell.get_parameters()}


@pytest.fixture(scope="module")
def vocab():
    if not VOCAB.is_file():
        pytest.skip(f"{VOCAB} not found (reference data lives beside the repo)")
    return VOCAB


@pytest.fixture(scope="module")
def csv_dir(tmp_path_factory):
    return _write_images(tmp_path_factory.mktemp("pairs"))


# ------------------------------------------------------------------------------------ loss cell
def _tiny_ldm(seed=0):
    from ldm_tiny import randomize

    cfg = load_config(TINY_CFG, [], ldm_train_config_defaults())
    return randomize(build_ldm(cfg.model), seed, std=0.1), cfg


def test_loss_cell_matches_numpy(ms_mode):
    """Graph mode with the fp32 schedule, PyNative with the original's fp16-rounded one."""
    from mind_diffusion.diffusion.schedule import schedule_from_config

    schedule_fp16 = ms_mode == "pynative"
    ldm, cfg = _tiny_ldm()
    abar = schedule_from_config(cfg.model.schedule).alphas_cumprod
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
    ids = rng.integers(0, 21128, (2, 77)).astype(np.int32)
    t = np.array([17, 803], np.int32)
    noise = rng.standard_normal((2, 4, 2, 2)).astype(np.float32)
    post = rng.standard_normal((2, 4, 2, 2)).astype(np.float32)
    loss_net = LatentDiffusionLoss(ldm, abar, train_text_encoder=True, schedule_fp16=schedule_fp16)
    loss = float(loss_net(Tensor(x), Tensor(ids), Tensor(t), Tensor(noise), Tensor(post)).asnumpy())

    mean, logvar = (a.asnumpy().astype(np.float64) for a in ldm.first_stage_model.encode_moments(Tensor(x)))
    z = 0.18215 * (mean + np.exp(0.5 * logvar) * post)
    a, b = np.sqrt(abar[t]), np.sqrt(1 - abar[t])
    if schedule_fp16:
        a, b = a.astype(np.float16).astype(np.float64), b.astype(np.float16).astype(np.float64)
    x_t = a[:, None, None, None] * z + b[:, None, None, None] * noise
    ctx = ldm.cond_stage_model(Tensor(ids))
    eps = ldm.model.diffusion_model(Tensor(x_t.astype(np.float32)), Tensor(t), ctx).asnumpy()
    ref = np.mean((noise.astype(np.float64) - eps) ** 2)
    assert abs(loss - ref) <= 1e-5 * max(1.0, ref), (loss, ref)
    assert ref > 0.05  # the randomized UNet predicts something (not a zero output)

    # v weighting: per-sample error times 1/abar_t, the weights normalized to mean 1 over t
    v_net = LatentDiffusionLoss(ldm, abar, train_text_encoder=True, schedule_fp16=schedule_fp16,
                                loss_weighting="v")
    v_loss = float(v_net(Tensor(x), Tensor(ids), Tensor(t), Tensor(noise), Tensor(post)).asnumpy())
    w = (1.0 / abar) / np.mean(1.0 / abar)
    per = ((noise.astype(np.float64) - eps) ** 2).mean(axis=(1, 2, 3))
    v_ref = np.mean(w[t] * per)
    assert abs(v_loss - v_ref) <= 1e-5 * max(1.0, v_ref), (v_loss, v_ref)
    assert w[803] / w[17] > 20  # the noisy sample weighs far more (abar 0.98 vs 0.04)
    with pytest.raises(ValueError, match="loss_weighting"):
        LatentDiffusionLoss(ldm, abar, loss_weighting="snr")


def test_lr_schedule_closed_form():
    start, end, warm, decay = 1e-5, 1e-7, 10, 100
    sched = WarmupCosineLR(start, end, warm, decay)
    for step in (0, 1, 5, 9, 10, 11, 50, 99, 100, 150):
        got = float(sched(Tensor(step, ms.int32)).asnumpy())
        if step < warm:
            expect = start * step / warm
        else:  # the cosine is NOT offset by the warmup
            expect = end + 0.5 * (start - end) * (1 + math.cos(math.pi * min(step, decay) / decay))
        assert got == pytest.approx(expect, rel=1e-5, abs=1e-12), step
        assert lr_at(step, start, end, warm, decay) == pytest.approx(expect, rel=1e-12)
    assert float(sched(Tensor(10, ms.int32)).asnumpy()) < start  # already partly decayed at warmup end
    no_warm = WarmupCosineLR(start, end, 0, decay)
    assert float(no_warm(Tensor(0, ms.int32)).asnumpy()) == pytest.approx(start, rel=1e-6)


def test_weight_decay_groups_follow_the_original_rule():
    from mindspore import nn

    from mind_diffusion.ldm.training import set_trainable

    ldm, _ = _tiny_ldm()
    set_trainable(ldm.first_stage_model, False)
    params = ldm.trainable_params()
    opt = nn.AdamWeightDecay(weight_decay_groups(params, 1e-6), learning_rate=1e-5, beta1=0.9, beta2=0.98,
                             eps=1e-6)
    wd = {p.name: float(w.asnumpy()) for p, w in zip(opt.parameters, opt.weight_decay)}
    assert [p.name for p in opt.parameters] == [p.name for p in params]          # order_params
    assert not any(n.startswith("first_stage_model.") for n in wd)                 # VAE frozen
    for name, w in wd.items():
        assert w == (pytest.approx(1e-6) if ("bias" not in name and "layernorm" not in name.lower()) else 0.0)
    gammas = [n for n in wd if n.endswith((".gamma", ".beta"))]
    assert gammas and all(wd[n] > 0 for n in gammas)     # norms DO decay (quirk kept)
    assert all(wd[n] == 0 for n in wd if n.endswith(".bias"))


def test_weight_decay_rule_on_the_real_manifest():
    import json

    path = SHARED / "reference" / "wukong_param_manifest.json"
    if not path.is_file():
        pytest.skip("manifest not found")
    names = [n for n, _, _ in json.loads(path.read_text()) if not n.startswith("first_stage_model.")]
    assert len(names) == 834 and sum(decays(n) for n in names) == 600   # spec §9.4: 600 / 234


# ------------------------------------------------------------------------------------------- data
def test_csv_errors_are_clear(tmp_path):
    with pytest.raises(DataError, match="data folder not found"):
        read_csv_pairs(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no \*\.csv"):
        read_csv_pairs(tmp_path / "empty")
    bad = tmp_path / "cols"
    bad.mkdir()
    (bad / "a.csv").write_text("path,caption\nx.png,hi\n")
    with pytest.raises(DataError, match="lacks column.*'dir'.*'text'"):
        read_csv_pairs(bad)
    miss = _write_images(tmp_path / "miss", 2)
    with open(miss / "pairs.csv", "a") as f:
        f.write("img/gone1.png,a\nimg/gone2.png,b\n")
    with pytest.raises(DataError, match=r"2 image file\(s\).*img/gone1.png, img/gone2.png"):
        read_csv_pairs(miss)
    broken = _write_images(tmp_path / "broken", 2)
    (broken / "img" / "1.png").write_bytes(b"not a png")
    ds = CSVImageText(broken, 32, filter_small_size=False)
    with pytest.raises(DataError, match="cannot read image .*1.png"):
        ds.image(1)
    with pytest.raises(DataError, match="cannot read image"):   # the size filter reads headers
        CSVImageText(broken, 32, filter_small_size=True, image_filter_size=16)


def test_size_filter_and_cli_error(tmp_path, capsys):
    folder = _write_images(tmp_path / "mixed", 2, size=(40, 48))
    _write_images(tmp_path / "tmp_small", 1, size=(20, 24))
    (folder / "img" / "small.png").write_bytes((tmp_path / "tmp_small" / "img" / "0.png").read_bytes())
    with open(folder / "pairs.csv", "a") as f:
        f.write("img/small.png,小图\n")
    kept = CSVImageText(folder, 32, filter_small_size=True, image_filter_size=32)
    assert len(kept) == 2 and kept.dropped == 1
    assert len(CSVImageText(folder, 32, filter_small_size=False)) == 3
    with pytest.raises(DataError, match="smaller than data.image_filter_size"):
        CSVImageText(folder, 32, filter_small_size=True, image_filter_size=100)
    # through the CLI: one line, exit code 2
    from mind_diffusion_scripts import train_ldm

    rc = train_ldm.main(["--config", str(TINY_CFG), "--device_target", "CPU", f"data.path={tmp_path / 'none'}",
                         f"init.vocab={VOCAB}", f"train.output_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: data folder not found")


def test_preprocess_center_and_random_crop():
    from mind_diffusion.train.data import preprocess

    img = np.arange(40 * 60 * 3, dtype=np.int64).reshape(40, 60, 3) % 256
    img = img.astype(np.uint8)
    x = preprocess(img, 40)                        # no resize (short side 40): center crop of 60 -> 40
    np.testing.assert_array_equal(x, (img[:, 10:50].astype(np.float32) / 127.5 - 1).transpose(2, 0, 1))
    x = preprocess(img, 40, crop=(0.0, 0.999), flip=True)   # right-most crop, flipped
    np.testing.assert_array_equal(x, (img[:, 20:60][:, ::-1].astype(np.float32) / 127.5 - 1).transpose(2, 0, 1))
    assert preprocess(img, 20).shape == (3, 20, 20) and preprocess(img, 20).dtype == np.float32
    assert preprocess(img, 20).min() >= -1 and preprocess(img, 20).max() <= 1


def test_batches_caption_dropout_determinism_and_sharding(csv_dir, vocab):
    from mind_diffusion.text.wordpiece import WordPieceTokenizer

    tok = WordPieceTokenizer(vocab)
    data = CSVImageText(_write_images(csv_dir.parent / "four", 4), 16, filter_small_size=False)
    kw = {"num_timesteps": 1000, "latent_shape": (4, 2, 2), "seed": 3, "caption_dropout": 0.3}
    full = LDMBatches(data, tok, 4, **kw)
    shards = [LDMBatches(data, tok, 2, rank=r, group_size=2, **kw) for r in range(2)]
    empty = tok([""])[0]
    dropped = total = 0
    for step in range(60):
        r = full.randomness(step)
        dropped += int(r["drop"].sum())
        total += len(r["drop"])
    assert abs(dropped / total - 0.3) < 0.08
    for step in (0, 3, 7):
        one = full[step]
        again = LDMBatches(data, tok, 4, **kw)[step]
        parts = [s[step] for s in shards]
        for i, arr in enumerate(one):
            np.testing.assert_array_equal(arr, again[i])
            np.testing.assert_array_equal(arr, np.concatenate([p[i] for p in parts]))
        x, ids, t, _noise, _post = one
        assert x.shape == (4, 3, 16, 16) and ids.dtype == np.int32 and t.dtype == np.int32
        drop = full.randomness(step)["drop"]
        idx = full.global_indices(step)
        for j in range(4):
            expect = empty if drop[j] else tok([data.texts[idx[j]]])[0]
            np.testing.assert_array_equal(ids[j], expect)
    # sequential CSV order (the original's), wrapping around
    np.testing.assert_array_equal(LDMBatches(data, tok, 2, **kw).global_indices(1), [2, 3])
    np.testing.assert_array_equal(LDMBatches(data, tok, 2, **kw).global_indices(2), [0, 1])
    with pytest.raises(DataError, match="fewer than one global batch"):
        LDMBatches(data, tok, 3, group_size=2, **kw)


# ----------------------------------------------------------------------------- training runs
RUN_STEPS, RUN_CKPT = 30, 15
RUN_ARGS = (f"train.steps={RUN_STEPS}", f"train.ckpt_every={RUN_CKPT}", "train.start_learning_rate=3e-3",
            "train.warmup_steps=5", "train.loss_scale=dynamic", "train.init_loss_scale=1024.0")


@pytest.fixture(scope="module")
def run(csv_dir, vocab, tmp_path_factory):
    """The tiny model trained for 30 steps on the 2-image CSV (graph mode), checkpoint at 15."""
    ms.set_context(mode=ms.GRAPH_MODE)
    out = tmp_path_factory.mktemp("ldm_run")
    cfg = _cfg(csv_dir, out, *RUN_ARGS)
    trainer, make = build_ldm_trainer(cfg, _rt(), progress=False)
    before = _params(trainer.model)
    import time

    t0 = time.time()
    result = trainer.fit(make)
    elapsed = time.time() - t0
    after = _params(trainer.model)
    return {"trainer": trainer, "make": make, "out": out, "before": before, "after": after,
            "result": result, "elapsed": elapsed, "cfg": cfg}


def test_tiny_model_overfits_two_images(run):
    losses = _losses(run["out"])
    assert sorted(losses) == list(range(1, RUN_STEPS + 1))
    first = np.mean([losses[s] for s in range(1, 6)])
    last = np.mean([losses[s] for s in range(RUN_STEPS - 4, RUN_STEPS + 1)])
    print(f"loss first 5 steps {first:.3f} -> last 5 steps {last:.3f}; {run['elapsed']:.1f} s incl. compile")
    assert last < 0.75 * first, (first, last)


def test_vae_frozen_text_encoder_and_unet_trained(run):
    before, after = run["before"], run["after"]
    opt_names = {p.name for p in run["trainer"].train_step.weights}
    assert not any(n.startswith("first_stage_model.") for n in opt_names)
    assert any(n.startswith("cond_stage_model.") for n in opt_names)
    for n in before:
        if n.startswith("first_stage_model."):
            np.testing.assert_array_equal(before[n], after[n], err_msg=n)
    changed = lambda prefix: max(np.abs(after[n] - before[n]).max() for n in before if n.startswith(prefix))
    assert changed("cond_stage_model.") > 1e-4 and changed("model.diffusion_model.") > 1e-4


def test_resume_is_exact(run, tmp_path):
    """A fresh trainer resumed from the step-15 checkpoint and trained to 30 equals the
    uninterrupted 30-step run: the checkpoint holds everything (weights, Adam moments, the
    optimizer step that drives the LR, the loss scale) and the batch stream is a function of
    the step. (A fresh trainer: restoring into an already-compiled one is not exact, because
    ``load_strict`` uses ``Parameter.set_data``, which the compiled graph's in-place updates
    do not follow; the CLI always resumes before compiling.)"""
    ms.set_context(mode=ms.GRAPH_MODE)
    ckpt = run["out"] / "checkpoints" / f"step_{RUN_CKPT:07d}.ckpt"
    state = read_checkpoint(ckpt)
    assert any(k.startswith("adam_m.") for k in state) and "global_step" in state and "scale_sense" in state
    assert int(state["meta.train_step"]) == RUN_CKPT
    cfg = _cfg(run["cfg"].data.path, tmp_path, *RUN_ARGS)
    trainer, make = build_ldm_trainer(cfg, _rt(), resume=str(ckpt), progress=False)
    assert trainer.step == RUN_CKPT
    trainer.fit(make)
    again = _params(trainer.model)
    for n, v in run["after"].items():
        np.testing.assert_allclose(again[n], v, rtol=0, atol=1e-6, err_msg=n)
    a = read_checkpoint(run["out"] / "checkpoints" / f"step_{RUN_STEPS:07d}.ckpt")
    b = read_checkpoint(tmp_path / "checkpoints" / f"step_{RUN_STEPS:07d}.ckpt")
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6, err_msg=k)
    ra, rb = _losses(run["out"]), _losses(tmp_path)
    assert sorted(rb) == list(range(RUN_CKPT + 1, RUN_STEPS + 1))
    for s in rb:
        assert rb[s] == pytest.approx(ra[s], rel=1e-6), s


def test_checkpoints_and_exports_hand_over_the_parameters_not_a_copy(run, tmp_path, monkeypatch):
    """Trainer.save and the export give save_atomic the Parameters themselves (MindSpore writes one
    tensor at a time), not a host copy of them all first: at full size (Wukong's UNet and text
    encoder with AdamW, 3x the weights) that copy ran a fine-tune out of memory at its first save
    (bench/jobs.py). The files hold the same tensors as before."""
    from mindspore import Parameter

    from mind_diffusion.checkpoint import io as ckio
    from mind_diffusion.ldm import training as ldm_training
    from mind_diffusion.train import trainer as trainer_mod

    trainer, given = run["trainer"], []

    def capture(state, path, extra=None):
        given.append((Path(path).name, dict(state), extra))
        return ckio.save_atomic(state, tmp_path / f"{len(given)}-{Path(path).name}", extra=extra)

    monkeypatch.setattr(trainer_mod, "save_atomic", capture)
    monkeypatch.setattr(ldm_training, "save_atomic", capture)
    monkeypatch.setattr(trainer_mod.run_dir, "mark_latest", lambda *a, **k: None)
    trainer.save("probe.ckpt")
    trainer.export()
    assert [g[0] for g in given] == ["probe.ckpt", "model.ckpt"]
    ours = {id(p) for p in trainer.train_step.get_parameters()} | {id(p) for p in trainer.model.get_parameters()}
    for i, (name, state, extra) in enumerate(given, 1):
        assert state and all(isinstance(v, Parameter) and id(v) in ours for v in state.values()), name
        # byte for byte the file a host copy of the same tensors gives
        copy = ckio.save_atomic({k: v.asnumpy() for k, v in state.items()}, tmp_path / f"copy-{name}", extra=extra)
        assert copy.read_bytes() == (tmp_path / f"{i}-{name}").read_bytes()
    # and the same tensors as the run's own files, written at the same step
    for mine, theirs in (("1-probe.ckpt", run["out"] / "checkpoints" / f"step_{RUN_STEPS:07d}.ckpt"),
                         ("2-model.ckpt", run["out"] / "model.ckpt")):
        a, b = read_checkpoint(tmp_path / mine), read_checkpoint(theirs)
        assert set(a) == set(b), mine
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{mine}: {k}")


def test_export_loads_in_pipeline_and_generates(run):
    from mind_diffusion.ldm.pipeline import LDMPipeline

    out = run["out"]
    assert {"model.ckpt", "model.yaml", "vocab_zh.txt", "config.yaml"} <= {p.name for p in out.iterdir()}
    assert not (out / "model_ema.ckpt").exists()        # no EMA unless train.ema_decay > 0
    ms.set_context(mode=ms.PYNATIVE_MODE)
    pipe = LDMPipeline.from_pretrained(out / "model.yaml", out / "model.ckpt")   # strict load
    loaded = _params(pipe.model)
    for n, v in run["trainer"].model.parameters_and_names():
        np.testing.assert_array_equal(loaded[v.name], v.asnumpy())
    img = pipe("红色 圆形 在 蓝色 背景", num_images=1, num_inference_steps=2, seed=0, progress=False).images
    # model.yaml samples at the training size (a multiple of the model's size factor, 16 here)
    assert img.shape == (1, 32, 32, 3) and img.dtype == np.uint8 and img.std() > 0


def test_package_script_swaps_in_a_finetuned_decoder(run, tmp_path, capsys):
    """scripts/package_shapes_model.py on the tiny run: the packaged model.ckpt is the run's, with
    the decoder of a freeze_encoder fine-tune swapped in; a fine-tune of another encoder is
    refused with one error line and leaves the folder as it was."""
    from cli_helpers import captured_error
    from mind_diffusion.checkpoint.io import save_atomic

    from mind_diffusion.shapes.packaging import DECODER_SIDE
    from mind_diffusion_scripts import package_shapes_model as pkg

    out = run["out"]
    state = {k: v for k, v in read_checkpoint(out / "model.ckpt").items() if not k.startswith("meta.")}
    vae = {k: v.copy() for k, v in state.items() if k.startswith("first_stage_model.")}
    for k in vae:
        if k.startswith(DECODER_SIDE):
            vae[k] = vae[k] + np.float32(0.01)
    dec = tmp_path / "dec"
    dec.mkdir()
    save_atomic(vae, dec / "vae.ckpt")
    (dec / "metrics.csv").write_text((out / "metrics.csv").read_text())

    folder = tmp_path / "pkg"
    assert pkg.main([str(out), str(folder), "--ckpt", "model.ckpt", "--decoder_run", str(dec), "--fp32",
                     "--per_prompt", "1"]) in (0, None)
    assert {"config.yaml", "model.ckpt", "vocab_zh.txt", "samples.png", "samples.md", "loss.png",
            "metrics_ldm.csv", "metrics_vae_decoder.csv", "loss_vae_decoder.png"} <= {f.name for f in folder.iterdir()}
    packed = read_checkpoint(folder / "model.ckpt")
    assert set(packed) == set(state)
    for k, v in state.items():
        want = vae[k] if k.startswith(DECODER_SIDE) else v
        np.testing.assert_array_equal(packed[k], want, err_msg=k)

    # --eval: the adherence table of this checkpoint goes into the model card; one of another is refused
    from mind_diffusion.checkpoint.io import file_sha256

    ev = tmp_path / "eval"
    ev.mkdir()
    table = "| held-out combinations | 2 | 50.0% | 0.0% | 100.0% | 0.0% |"
    (ev / "adherence.md").write_text(f'Settings: {{"checkpoint": "x", "checkpoint_sha256": '
                                     f'"{file_sha256(out / "model.ckpt")}"}}\n\n{table}\n', encoding="utf-8")
    (ev / "grid_heldout.png").write_bytes((folder / "samples.png").read_bytes())
    assert pkg.main([str(out), str(folder), "--ckpt", "model.ckpt", "--eval", str(ev), "--per_prompt", "1"]) in (0, None)
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert table in card and "f=8: 4×4×4 latents" in card and (folder / "adherence_grid_heldout.png").is_file()
    card_before = card
    rc = pkg.main([str(out), str(folder), "--ckpt", f"checkpoints/step_{RUN_CKPT:07d}.ckpt", "--eval", str(ev)])
    captured_error(capsys, rc, "evaluated another checkpoint", "eval_shapes_model.py")
    assert (folder / "README.md").read_text(encoding="utf-8") == card_before

    before = (folder / "model.ckpt").read_bytes()
    vae["first_stage_model.encoder.conv_in.weight"] = vae["first_stage_model.encoder.conv_in.weight"] * 2
    save_atomic(vae, dec / "vae.ckpt")
    rc = pkg.main([str(out), str(folder), "--ckpt", "model.ckpt", "--decoder_run", str(dec)])
    captured_error(capsys, rc, "another encoder", "freeze_encoder")
    assert (folder / "model.ckpt").read_bytes() == before
    rc = pkg.main([str(tmp_path), str(folder)])
    captured_error(capsys, rc, "missing")


def test_eval_shapes_model_reads_a_run_folder(run, tmp_path, capsys):
    """scripts/eval_shapes_model.py on a train_ldm.py output_dir, which holds the inference
    model.yaml beside its training config.yaml: it generates and scores, and the table's rates are
    those of its per-image rows. A folder with neither config is one error line."""
    import csv

    from cli_helpers import captured_error

    from mind_diffusion_scripts import eval_shapes_model as ev

    ms.set_context(mode=ms.GRAPH_MODE)
    assert (run["out"] / "config.yaml").is_file() and (run["out"] / "model.yaml").is_file()
    out = tmp_path / "eval"
    rc = ev.main(["--model", str(run["out"]), "--out", str(out), "--per_prompt", "2", "--n_heldout", "2",
                  "--n_seen", "1", "--steps", "2", "--device_target", "CPU"])
    assert rc == 0, capsys.readouterr().err[-2000:]
    rows = list(csv.DictReader(open(out / "adherence.csv", encoding="utf-8")))
    assert [r["split"] for r in rows] == ["heldout"] * 4 + ["train"] * 2
    assert {r["seed"] for r in rows} >= {"1000", "1001", "1002", "1003"}
    table = (out / "adherence.md").read_text(encoding="utf-8")
    for split, name in (("heldout", "held-out combinations"), ("train", "seen combinations")):
        got = [r for r in rows if r["split"] == split]
        line = next(ln for ln in table.splitlines() if ln.startswith(f"| {name} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1] == str(len(got))
        for key, cell in zip(ev.KEYS, cells[2:]):
            assert cell == f"{100 * sum(r[key] == 'True' for r in got) / len(got):.1f}%", (split, key, line)
        assert (out / f"grid_{split}.png").is_file()
    rc = ev.main(["--model", str(tmp_path / "none"), "--out", str(tmp_path / "e2"), "--device_target", "CPU"])
    captured_error(capsys, rc, "no config.yaml / model.yaml")
    rc = ev.main(["--model", str(run["out"]), "--ckpt", "model_emma.ckpt", "--out", str(tmp_path / "e3"),
                  "--device_target", "CPU"])
    captured_error(capsys, rc, "model_emma.ckpt", "--ckpt is a file name inside --model", "there: model.ckpt")
    assert not (tmp_path / "e3").exists()


FROZEN_ARGS = ("train.steps=4", "train.ckpt_every=2", "train.start_learning_rate=3e-3", "train.warmup_steps=5",
               "train.loss_scale=dynamic", "train.init_loss_scale=1024.0", "data.cache_latents=true",
               "train.ema_decay=0.5")


def _fit(cfg):
    trainer, make = build_ldm_trainer(cfg, _rt(), progress=False)
    before = _params(trainer.model)
    trainer.fit(make)
    return trainer, before, _params(trainer.model)


@pytest.fixture(scope="module")
def frozen(csv_dir, vocab, tmp_path_factory):
    """train_text_encoder=false + data.cache_latents=true, 4 steps (graph mode), checkpoints at 2 and 4."""
    ms.set_context(mode=ms.GRAPH_MODE)
    out = tmp_path_factory.mktemp("ldm_frozen")
    trainer, before, after = _fit(_cfg(csv_dir, out, *FROZEN_ARGS, "train.train_text_encoder=false"))
    return {"trainer": trainer, "out": out, "before": before, "after": after}


def test_frozen_text_encoder_and_latent_cache(run, frozen):
    """The frozen-encoder, cached-latent run. The learning rate of the first update is 0 (warmup
    from step 0), so the first two losses must equal the uncached trained run's exactly as far as
    the data path goes: the cache gives the same z as encoding per step."""
    trainer, before, after, tmp_path = frozen["trainer"], frozen["before"], frozen["after"], frozen["out"]
    ref, got = _losses(run["out"]), _losses(tmp_path)
    for s in (1, 2):
        assert got[s] == pytest.approx(ref[s], rel=1e-5, abs=1e-6), (s, got[s], ref[s])
    for n in before:
        if n.startswith(("first_stage_model.", "cond_stage_model.")):
            np.testing.assert_array_equal(before[n], after[n], err_msg=n)
    assert max(np.abs(after[n] - before[n]).max() for n in before if n.startswith("model.")) > 1e-5
    assert not any(p.name.startswith("cond_stage_model.") for p in trainer.train_step.weights)
    # EMA on: model_ema.ckpt is a complete model file (frozen parts included) that loads strictly
    from mind_diffusion.ldm.checkpoint import load_ldm_checkpoint

    ema = read_checkpoint(tmp_path / "model_ema.ckpt")
    unet_w = "model.diffusion_model.input_blocks.0.0.conv.weight"
    assert np.abs(ema[unet_w] - after[unet_w]).max() > 0           # an average, not a copy
    np.testing.assert_array_equal(ema["first_stage_model.quant_conv.weight"],
                                  after["first_stage_model.quant_conv.weight"])
    ldm, _ = _tiny_ldm(seed=9)
    assert load_ldm_checkpoint(ldm, tmp_path / "model_ema.ckpt").ok


@pytest.mark.slow
def test_text_encoder_start_step(frozen, csv_dir, tmp_path):
    """train.text_encoder_start_step=2: for the first two updates the text encoder stays
    bit-identical and the run is step for step the frozen-encoder run (same losses, same UNet);
    after that it trains (graph mode: an optimizer schedule, no new network). Zero-initialised
    output convs keep its gradient 0 for the first three updates, so it first moves at the fourth."""
    ms.set_context(mode=ms.GRAPH_MODE)
    trainer, before, after = _fit(_cfg(csv_dir, tmp_path, *FROZEN_ARGS, "train.text_encoder_start_step=2"))
    f2 = read_checkpoint(frozen["out"] / "checkpoints" / "step_0000002.ckpt")
    d2 = read_checkpoint(tmp_path / "checkpoints" / "step_0000002.ckpt")
    f_loss, d_loss = _losses(frozen["out"]), _losses(tmp_path)
    for n in before:
        assert np.array_equal(frozen["before"][n], before[n]), n  # same initialisation
        if n.startswith("cond_stage_model."):
            np.testing.assert_array_equal(d2[n], before[n], err_msg=n)
        if n.startswith("model."):
            np.testing.assert_allclose(d2[n], f2[n], rtol=1e-5, atol=1e-7, err_msg=n)
    assert sorted(d_loss) == [1, 2, 3, 4]
    for s in (1, 2, 3):
        assert d_loss[s] == pytest.approx(f_loss[s], rel=1e-5, abs=1e-7), (s, d_loss[s], f_loss[s])
    moved = max(np.abs(after[n] - before[n]).max() for n in before if n.startswith("cond_stage_model."))
    assert moved > 1e-4
    assert any(p.name.startswith("cond_stage_model.") for p in trainer.train_step.weights)


@pytest.mark.parametrize("optim", ["adam", "adamw"])
def test_build_optimizer_delayed_group(optim):
    """build_optimizer: without ``delayed`` it updates exactly as the plain optimizer on a flat
    parameter list; with it, the named parameter stays put until its schedule starts."""
    from omegaconf import OmegaConf

    from mindspore import nn

    from mind_diffusion.train.optim import build_optimizer
    from mind_diffusion.train.schedules import DelayedLR, WarmupCosineLR

    tcfg = OmegaConf.create({"optim": optim, "betas": [0.9, 0.98], "eps": 1e-6, "weight_decay": 0.01})
    rng = np.random.default_rng(0)
    init = {n: rng.standard_normal((3, 2)).astype(np.float32) for n in ("a.weight", "b.weight", "b.bias")}
    grads = [tuple(Tensor(rng.standard_normal((3, 2)).astype(np.float32)) for _ in init) for _ in range(3)]

    def run(make):
        params = [ms.Parameter(Tensor(v), name=n) for n, v in init.items()]
        opt = make(params)
        history = []
        for g in grads:
            opt(g)
            history.append({p.name: p.asnumpy().copy() for p in params})
        return history

    lr = lambda: WarmupCosineLR(1e-2, 1e-4, 0, 10)
    ours = run(lambda ps: build_optimizer(ps, tcfg, lr()))
    if optim == "adam":
        flat = run(lambda ps: nn.Adam(ps, learning_rate=lr(), beta1=0.9, beta2=0.98, eps=1e-6))
    else:
        flat = run(lambda ps: nn.AdamWeightDecay(
            [{"params": ps[:2], "weight_decay": 0.01}, {"params": ps[2:], "weight_decay": 0.0},
             {"order_params": ps}], learning_rate=lr(), beta1=0.9, beta2=0.98, eps=1e-6))
    for h_ours, h_flat in zip(ours, flat):
        for n in init:
            np.testing.assert_allclose(h_ours[n], h_flat[n], rtol=1e-6, atol=1e-7, err_msg=n)
    delayed = run(lambda ps: build_optimizer(ps, tcfg, lr(), ({"b.weight"}, DelayedLR(lr(), 2))))
    for step, h in enumerate(delayed):
        for n in init:
            if n == "b.weight" and step < 2:
                np.testing.assert_array_equal(h[n], init[n])
            elif n != "b.weight":  # the other parameters follow the common schedule
                np.testing.assert_allclose(h[n], ours[step][n], rtol=1e-6, atol=1e-7, err_msg=n)
    assert np.abs(delayed[2]["b.weight"] - init["b.weight"]).max() > 1e-4


@pytest.mark.parametrize(("extra", "needle"), [
    ("train.text_encoder_start_step=-1", "must be >= 0"),
    ("train.text_encoder_start_step=4", "not below train.steps"),
])
def test_text_encoder_start_step_errors(csv_dir, vocab, tmp_path, extra, needle):
    cfg = _cfg(csv_dir, tmp_path, "train.steps=4", extra)
    with pytest.raises(ValueError, match=needle):
        build_ldm_trainer(cfg, _rt(), progress=False)
    cfg = _cfg(csv_dir, tmp_path, "train.steps=4", "train.text_encoder_start_step=2",
               "train.train_text_encoder=false")
    with pytest.raises(ValueError, match="needs train.train_text_encoder=true"):
        build_ldm_trainer(cfg, _rt(), progress=False)


# --------------------------------------------------------------------------------------- VAE
def test_vae_kl_term_closed_form():
    from mind_diffusion.ldm.config import vae_train_config_defaults
    from mind_diffusion.ldm.vae_training import VAELoss, build_vae

    cfg = load_config(TINY_VAE_CFG, [], vae_train_config_defaults())
    holder = build_vae(cfg.model.vae)
    from ldm_tiny import randomize

    randomize(holder, 2, std=0.1)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)
    noise = rng.standard_normal((2, 4, 2, 2)).astype(np.float32)
    loss_net = VAELoss(holder, kl_weight=0.01, l2_weight=0.5)
    l1, l2, kl = (float(v.asnumpy()) for v in loss_net.terms(Tensor(x), Tensor(noise)))
    mean, logvar = (a.asnumpy().astype(np.float64) for a in holder.first_stage_model.encode_moments(Tensor(x)))
    kl_ref = np.mean(0.5 * np.sum(mean ** 2 + np.exp(logvar) - 1 - logvar, axis=(1, 2, 3)))
    assert kl == pytest.approx(kl_ref, rel=1e-5)
    rec = holder.first_stage_model.decode(Tensor((mean + np.exp(0.5 * logvar) * noise).astype(np.float32)))
    diff = rec.asnumpy().astype(np.float64) - x
    assert l1 == pytest.approx(np.abs(diff).mean(), rel=1e-5)
    assert l2 == pytest.approx((diff ** 2).mean(), rel=1e-5)
    total = float(loss_net(Tensor(x), Tensor(noise)).asnumpy())
    assert total == pytest.approx(l1 + 0.5 * l2 + 0.01 * kl, rel=1e-5)

    # contrast weighting: w = 1 + a * mean_c |x - mean_hw(x)|, per pixel
    weighted = VAELoss(holder, kl_weight=0.01, l2_weight=0.5, contrast_weight=8.0)
    w = 1 + 8.0 * np.abs(x - x.mean(axis=(2, 3), keepdims=True)).mean(axis=1, keepdims=True)
    wl1, wl2, wkl = (float(v.asnumpy()) for v in weighted.terms(Tensor(x), Tensor(noise)))
    assert wl1 == pytest.approx((w * np.abs(diff)).mean(), rel=1e-5)
    assert wl2 == pytest.approx((w * diff ** 2).mean(), rel=1e-5)
    assert wkl == pytest.approx(kl, rel=1e-6) and wl1 > 1.5 * l1
    with pytest.raises(ValueError, match="contrast_weight"):
        VAELoss(holder, contrast_weight=-1.0)


def test_vae_trainer_reduces_reconstruction_and_exports(csv_dir, vocab, tmp_path):
    from mind_diffusion.ldm.training import load_vae_weights
    from mind_diffusion.ldm.config import vae_train_config_defaults
    from mind_diffusion.ldm.vae_training import build_vae_trainer

    ms.set_context(mode=ms.GRAPH_MODE)
    data = _write_images(tmp_path / "imgs", 4)
    cfg = load_config(TINY_VAE_CFG, [f"data.path={data}", f"train.output_dir={tmp_path / 'vae'}", "train.steps=80",
                                     "train.log_every=1", "train.lr=5e-3", "data.image_size=16"],
                      vae_train_config_defaults())
    trainer, make = build_vae_trainer(cfg, _rt(), progress=False)
    src = trainer.source
    x_all = Tensor(np.stack([src.data.image(i) for i in range(len(src.data))]))
    zeros = Tensor(np.zeros((len(src.data), 4, 2, 2), np.float32))
    loss_net = trainer.train_step.loss_net

    def l1():  # reconstruction of all 4 images through the posterior mean
        return float(loss_net.terms(x_all, zeros)[0].asnumpy())

    before = l1()
    trainer.fit(make)
    after = l1()
    losses = _losses(tmp_path / "vae")
    print(f"VAE L1 on the 4 images {before:.3f} -> {after:.3f}; training loss first 10 steps "
          f"{np.mean([losses[s] for s in range(1, 11)]):.3f} -> last 10 {np.mean([losses[s] for s in range(71, 81)]):.3f}")
    assert after < 0.8 * before, (before, after)
    state = read_checkpoint(tmp_path / "vae" / "vae.ckpt")
    names = [k for k in state if not k.startswith("meta.")]
    assert names and all(k.startswith("first_stage_model.") for k in names)
    ldm, _ = _tiny_ldm()
    load_vae_weights(ldm.first_stage_model, tmp_path / "vae" / "vae.ckpt")
    for p in ldm.first_stage_model.get_parameters():
        np.testing.assert_array_equal(p.asnumpy(), state[p.name])

    # the latent scale: the std of exactly the posterior samples LDM training feeds the UNet
    from mind_diffusion.ldm.vae_training import latent_statistics

    vae = trainer.model.first_stage_model
    st = latent_statistics(vae, src.data, n=4, batch=3, seed=7)
    noise = np.random.default_rng(7)
    zs = [vae.encode(Tensor(np.stack([src.data.image(i) for i in idx])),
                     Tensor(noise.standard_normal((len(idx), 4, 2, 2)).astype(np.float32))).asnumpy()
          for idx in ([0, 1, 2], [3])]
    z = np.concatenate(zs).astype(np.float64)
    assert st["images"] == 4 and st["std"] == pytest.approx(z.std(), rel=1e-4)
    assert st["scale_factor"] == pytest.approx(1.0 / z.std(), rel=1e-4)

    from mind_diffusion_scripts.vae_latent_scale import write_scale

    yaml = tmp_path / "ldm.yaml"
    yaml.write_text("model:\n  scale_factor: 1.0   # set by vae_latent_scale.py\n  unet: {}\n", encoding="utf-8")
    write_scale(yaml, st["scale_factor"])
    assert load_config(yaml).model.scale_factor == pytest.approx(st["scale_factor"], rel=1e-4)
    assert "# set by vae_latent_scale.py" in yaml.read_text(encoding="utf-8")


def test_vae_decoder_finetune_keeps_the_latents(csv_dir, vocab, tmp_path):
    """train.freeze_encoder: the encoder and quant_conv stay bit-identical to init.checkpoint (so
    the latents an LDM was trained on do not move), the decoder learns, and the resumed-at-the-end
    run re-exports the same file."""
    from mind_diffusion.ldm.config import vae_train_config_defaults
    from mind_diffusion.ldm.vae_training import build_vae_trainer

    ms.set_context(mode=ms.GRAPH_MODE)
    data = _write_images(tmp_path / "imgs", 4)
    base = [f"data.path={data}", "train.lr=5e-3", "data.image_size=16", "train.log_every=1"]
    cfg = load_config(TINY_VAE_CFG, base + [f"train.output_dir={tmp_path / 'v1'}", "train.steps=3"],
                      vae_train_config_defaults())
    trainer, make = build_vae_trainer(cfg, _rt(), progress=False)
    trainer.fit(make)
    start = read_checkpoint(tmp_path / "v1" / "vae.ckpt")

    with pytest.raises(ValueError, match="init.checkpoint"):
        build_vae_trainer(load_config(TINY_VAE_CFG, base + ["train.freeze_encoder=true"],
                                      vae_train_config_defaults()), _rt(), progress=False)
    over = [f"train.output_dir={tmp_path / 'v2'}", "train.steps=30", "train.freeze_encoder=true",
            f"init.checkpoint={tmp_path / 'v1' / 'vae.ckpt'}", "train.ckpt_every=30"]
    cfg2 = load_config(TINY_VAE_CFG, base + over, vae_train_config_defaults())
    trainer2, make2 = build_vae_trainer(cfg2, _rt(), progress=False)
    trainable = {p.name for p in trainer2.train_step.weights}
    assert trainable and not any(".encoder." in n or ".quant_conv." in n for n in trainable)
    trainer2.fit(make2)
    tuned = read_checkpoint(tmp_path / "v2" / "vae.ckpt")
    frozen = [k for k in start if ".encoder." in k or ".quant_conv." in k]
    assert frozen
    for k in frozen:
        np.testing.assert_array_equal(tuned[k], start[k], err_msg=k)
    from mind_diffusion.ldm.autoencoder import vae_unused_param_names

    unused = {"first_stage_model." + n for n in vae_unused_param_names(len(cfg2.model.vae.ch_mult))}
    learned = trainable - unused
    moved = {k for k in learned if not np.array_equal(tuned[k], start[k])}
    assert len(learned) > 50 and moved == learned, sorted(learned - moved)

    # resuming the finished run trains nothing and writes the same export again
    (tmp_path / "v2" / "vae.ckpt").unlink()
    trainer3, make3 = build_vae_trainer(cfg2, _rt(), resume="auto", progress=False)
    assert trainer3.fit(make3)["step"] == 30
    again = read_checkpoint(tmp_path / "v2" / "vae.ckpt")
    for k in tuned:
        if not k.startswith("meta."):
            np.testing.assert_array_equal(again[k], tuned[k], err_msg=k)


# ------------------------------------------------------------------------------ data parallel
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_msrun_workers_match_one_process(csv_dir, vocab, tmp_path):
    bindir = Path(sys.executable).parent
    msrun = bindir / "msrun"
    if not msrun.exists():
        pytest.skip("msrun is not installed next to this Python (pip install mindspore)")
    env = dict(os.environ, PATH=f"{bindir}:{os.environ.get('PATH', '')}")
    data = _write_images(tmp_path / "imgs", 4)
    me = str(Path(__file__).resolve())
    subprocess.run([sys.executable, me, str(data), str(tmp_path), "single"], check=True, env=env, cwd=ROOT,
                   timeout=400)
    proc = subprocess.run(
        [str(msrun), "--worker_num=2", "--local_worker_num=2", f"--master_port={_free_port()}",
         f"--log_dir={tmp_path / 'logs'}", "--join=True", "--cluster_time_out=300",
         "python", me, str(data), str(tmp_path), "rank"],
        check=False, env=env, cwd=ROOT, timeout=500, capture_output=True, text=True)
    if proc.returncode != 0:
        logs = "".join(p.read_text()[-2000:] for p in sorted((tmp_path / "logs").glob("*.log")))
        pytest.fail(f"msrun failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{logs}")
    single = np.load(tmp_path / "single.npz")
    r0, r1 = np.load(tmp_path / "rank0.npz"), np.load(tmp_path / "rank1.npz")
    assert int(r0["group_size"]) == 2 and int(single["group_size"]) == 1
    names = [k for k in single.files if k != "group_size"]
    moved = 0.0
    for k in names:
        np.testing.assert_array_equal(r0[k], r1[k], err_msg=f"ranks diverged on {k}")
        np.testing.assert_allclose(r0[k], single[k], rtol=0, atol=2e-5, err_msg=f"DP != combined batch on {k}")
    init = np.load(tmp_path / "single_init.npz")
    moved = max(np.abs(single[k] - init[k]).max() for k in names)
    assert moved > 1e-4
    assert (tmp_path / "rank_run" / "model.ckpt").exists()


def _worker(data, out_dir, tag):
    """3 steps of the tiny LDM: global batch 2 (one process, or 2 msrun workers x 1)."""
    from mind_diffusion.runtime import init_runtime

    rt = init_runtime("CPU", "graph", seed=0, verbose=False)
    per_worker = 2 // rt.group_size
    cfg = _cfg(data, Path(out_dir) / f"{tag}_run", "train.steps=3", f"train.batch_size={per_worker}",
               "train.ckpt_every=100", "train.start_learning_rate=3e-3", "train.warmup_steps=1",
               "train.loss_scale=none")
    trainer, make = build_ldm_trainer(cfg, rt, progress=False)
    name = f"{tag}{rt.rank}" if rt.distributed else tag
    if not rt.distributed:
        np.savez(Path(out_dir) / f"{name}_init.npz", **_params(trainer.model))
    trainer.fit(make)
    np.savez(Path(out_dir) / f"{name}.npz", group_size=rt.group_size, **_params(trainer.model))



def test_package_training_time_is_the_median_step():
    """The model card's training time: the median step between log rows, so neither a second resumed
    segment (time_s restarts) nor a stretch paused or sharing the CPU distorts it."""
    from mind_diffusion.shapes.packaging import median_step_seconds

    rows = [{"step": s, "time_s": t} for s, t in
            [(50, 100.0), (100, 180.0), (150, 260.0), (200, 1900.0),   # 50 steps paused for 1640 s
             (250, 1980.0), (300, 60.0), (350, 140.0), (400, 220.0)]]   # resumed at 250: time restarts
    assert median_step_seconds(rows) == pytest.approx(1.6)
    assert median_step_seconds(rows[:1]) is None


if __name__ == "__main__":
    import mind_diffusion  # noqa: F401  (environment defaults before mindspore starts)

    _worker(sys.argv[1], sys.argv[2], sys.argv[3])
