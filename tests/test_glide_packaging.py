"""Packaging the built-in GLIDE (fp16 matrices, fp32 vectors, strict reload) and the per-stage
adherence evaluation that its model card reports."""
from __future__ import annotations

import numpy as np
import pytest

from mind_diffusion.checkpoint.io import CheckpointError, read_checkpoint
from mind_diffusion.evaluation.adherence import evaluate_stages, stage_markdown, stage_rates
from mind_diffusion.glide.checkpoint import load_glide_checkpoint, save_glide_checkpoint
from mind_diffusion.glide.config import GLIDE_TINY
from mind_diffusion.glide.model import build_glide_base, build_srgan
from mind_diffusion.glide.packaging import fp16_state, max_fp16_error, package_stage
from mind_diffusion.shapes.world import ShapesWorld


def test_fp16_state_keeps_vectors_and_rounds_matrices():
    state = {"w": np.array([[1.0, 1e-3], [3.14159, -2.0]], np.float32), "b": np.array([1e-7, 2.5], np.float32),
             "n": np.array([3], np.int32)}
    half = fp16_state(state)
    assert half["w"].dtype == np.float16 and half["b"].dtype == np.float32 and half["n"].dtype == np.int32
    np.testing.assert_array_equal(half["b"], state["b"])  # 1e-7 would be a subnormal in fp16
    x = state["w"].astype(np.float64)
    want = np.linalg.norm(x - state["w"].astype(np.float16)) / np.linalg.norm(x)
    assert max_fp16_error(state) == pytest.approx(want)
    with pytest.raises(CheckpointError, match="beyond fp16's range"):
        fp16_state({"big": np.full((2, 2), 7e4, np.float32)})


def test_packaged_stage_reloads_strictly(tmp_path):
    net = build_glide_base(GLIDE_TINY["base"])
    src = save_glide_checkpoint(net, tmp_path / "glide_gen_ema.ckpt", "base")
    info = package_stage(src, tmp_path / "pkg" / "glide_gen.ckpt", "base")
    assert info["bytes"] < src.stat().st_size * 0.6
    state = read_checkpoint(info["path"], "packaged")
    assert all(k.startswith("diffusion_with_p_sample.p_mean_variance.guider_net.") for k in state)
    fresh = build_glide_base(GLIDE_TINY["base"])
    load_glide_checkpoint(fresh, info["path"], "base")  # strict
    for p, q in zip(net.get_parameters(), fresh.get_parameters()):
        a, b = p.asnumpy(), q.asnumpy()
        want = a.astype(np.float16).astype(np.float32) if a.ndim >= 2 else a
        np.testing.assert_array_equal(b, want, err_msg=p.name)
    with pytest.raises(CheckpointError, match="not the srgan stage"):
        package_stage(src, tmp_path / "pkg" / "srgan.ckpt", "srgan")
    g = build_srgan(GLIDE_TINY["srgan"])
    s = save_glide_checkpoint(g, tmp_path / "srgan.ckpt", "srgan")
    package_stage(s, tmp_path / "pkg" / "srgan.ckpt", "srgan")
    load_glide_checkpoint(build_srgan(GLIDE_TINY["srgan"]), tmp_path / "pkg" / "srgan.ckpt", "srgan")


def test_evaluate_stages_scores_each_stage_and_their_agreement():
    """A fake cascade that renders each prompt's scene: perfect at 64 and at 256 (the same scene
    rendered larger); at 1024 the second image is blanked, so its verdicts change."""
    world = ShapesWorld(seed=3, split="heldout")
    scenes = world.eval_scenes(2)
    by_prompt = {p: s for s, p in scenes}

    def run(prompts, seed):
        from mind_diffusion.shapes.world import render_scene

        out = {size: np.stack([render_scene(by_prompt[p], size, antialias=True) for p in prompts])
               for size in (64, 256)}
        big = np.stack([render_scene(by_prompt[p], 256, antialias=True).repeat(4, 0).repeat(4, 1) for p in prompts])
        big[1] = big[1, 0, 0]  # background only
        out[1024] = big
        return out

    rows, images = evaluate_stages(run, [p for _, p in scenes], per_prompt=1, seed=10, batch=4)
    assert [r["seed"] for r in rows] == [10, 11] and sorted(images) == [64, 256, 1024]
    table = stage_rates(rows)
    assert table[64]["all"] == 1.0 and table[256]["all"] == 1.0 and table[256]["same"] == 1.0
    assert table[1024]["same"] == 0.5 and table[1024]["colour"] == 0.5
    md = stage_markdown({"held-out": table}, {"seed": 10})
    assert "| held-out | 1024 px | 2 |" in md and "50.0%" in md


def test_package_script_ships_one_stage_and_keeps_the_others(tmp_path, capsys):
    """scripts/package_glide_shapes.py with only --sr writes the SR file and leaves the other stages'
    files and package.json records in --out as they were; with no stage it stops with one line."""
    import json

    from scripts.package_glide_shapes import main

    from mind_diffusion.glide.model import build_glide_sr

    out = tmp_path / "model"
    out.mkdir()
    (out / "srgan.ckpt").write_bytes(b"kept")
    (out / "package.json").write_text(json.dumps({"srgan.ckpt": {"bytes": 4}}), encoding="utf-8")
    run = tmp_path / "sr_run"
    run.mkdir()
    net = build_glide_sr(GLIDE_TINY["sr"])
    save_glide_checkpoint(net, run / "glide_super_res_ema.ckpt", "sr")
    (run / "metrics.csv").write_text("step,loss,loss_smooth\n10,0.5,0.5\n20,0.4,0.45\n", encoding="utf-8")
    tok = tmp_path / "sp.model"
    tok.write_bytes(b"sp")
    cfg = tmp_path / "config.yaml"
    cfg.write_text("model: {}\n", encoding="utf-8")
    assert main(["--sr", str(run), "--out", str(out), "--tokenizer", str(tok), "--config", str(cfg)]) in (0, None)
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".ckpt") == ["glide_super_res.ckpt", "srgan.ckpt"]
    assert (out / "srgan.ckpt").read_bytes() == b"kept"
    record = json.loads((out / "package.json").read_text(encoding="utf-8"))
    assert set(record) == {"srgan.ckpt", "glide_super_res.ckpt"}
    assert record["glide_super_res.ckpt"]["from"] == str(run / "glide_super_res_ema.ckpt")
    load_glide_checkpoint(build_glide_sr(GLIDE_TINY["sr"]), out / "glide_super_res.ckpt", "sr")  # strict
    assert (out / "loss_sr.png").is_file() and (out / "metrics_sr.csv").is_file()
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(out)])
    assert exc.value.code == 2
    assert "nothing to package" in capsys.readouterr().err


def test_package_script_copies_the_32px_phase_log_beside_the_base(tmp_path, capsys):
    """--base32 / --base32_text add the 32 px phases' logs and curves (metrics_base32*.csv,
    loss_base32*.png) next to the base's; a folder without a log stops with one line before anything
    is written."""
    from scripts.package_glide_shapes import main

    from mind_diffusion.glide.model import build_glide_base

    base, base32, out = tmp_path / "base", tmp_path / "base32", tmp_path / "model"
    base32_text = tmp_path / "base32_text"
    for run, rows in ((base, "10,0.3,0.3\n20,0.2,0.25\n"), (base32, "10,0.9,0.9\n20,0.5,0.7\n30,0.4,0.6\n"),
                      (base32_text, "10,0.6,0.6\n20,0.5,0.55\n")):
        run.mkdir()
        (run / "metrics.csv").write_text("step,loss,loss_smooth\n" + rows, encoding="utf-8")
    save_glide_checkpoint(build_glide_base(GLIDE_TINY["base"]), base / "glide_gen_ema.ckpt", "base")
    tok, cfg = tmp_path / "sp.model", tmp_path / "config.yaml"
    tok.write_bytes(b"sp")
    cfg.write_text("model: {}\n", encoding="utf-8")
    common = ["--base", str(base), "--out", str(out), "--tokenizer", str(tok), "--config", str(cfg)]

    assert main(["--base32", str(tmp_path / "nothing"), *common]) == 2
    assert "--base32" in capsys.readouterr().err
    assert main(["--base32", str(base32), "--base32_text", str(tmp_path / "nothing"), *common]) == 2
    assert "--base32_text" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())  # nothing written

    assert main(["--base32", str(base32), "--base32_text", str(base32_text), *common]) in (0, None)
    for run, tag in ((base32, "base32"), (base32_text, "base32_text")):
        assert (out / f"metrics_{tag}.csv").read_text(encoding="utf-8") == (run / "metrics.csv").read_text(
            encoding="utf-8")
        assert (out / f"loss_{tag}.png").stat().st_size > 0
    assert (out / "metrics_base.csv").read_text(encoding="utf-8") == (base / "metrics.csv").read_text(encoding="utf-8")
    assert (out / "loss_base32.png").stat().st_size > 0 and (out / "loss_base.png").stat().st_size > 0
    load_glide_checkpoint(build_glide_base(GLIDE_TINY["base"]), out / "glide_gen.ckpt", "base")  # strict


def _trained_expert(net, moved, run, tmp_path) -> list:
    """Stand-in for an expert run: ``net``'s weights rounded as the packaged (fp16) base, those ``moved(name)``
    picks shifted by 0.01, saved as ``run``/glide_gen_ema.ckpt; returns the script's --tokenizer / --config."""
    from mindspore import Tensor

    for p in net.get_parameters():
        a = p.asnumpy()
        a = a.astype(np.float16).astype(np.float32) if a.ndim >= 2 else a
        if moved(p.name):
            a = a + np.float32(0.01)
        p.set_data(Tensor(a))
    save_glide_checkpoint(net, run / "glide_gen_ema.ckpt", "base")
    tok, cfg = tmp_path / "sp.model", tmp_path / "config.yaml"
    tok.write_bytes(b"sp")
    cfg.write_text("model: {}\n", encoding="utf-8")
    return ["--tokenizer", str(tok), "--config", str(cfg)]


def test_package_script_ships_the_low_noise_expert_as_the_changed_tensors(tmp_path, capsys):
    """--base with --base_expert: glide_gen_expert.ckpt holds exactly the tensors the expert run changed
    (fp16 like the base), the packaged base under it gives back the expert's weights, package.json records
    it; an expert run that equals the base stops with one line."""
    import json

    from scripts.package_glide_shapes import main

    from mind_diffusion.glide.checkpoint import load_base_expert, strip_unet_prefix
    from mind_diffusion.glide.model import build_glide_base

    base_run, expert_run, out = tmp_path / "base", tmp_path / "expert", tmp_path / "model"
    for run in (base_run, expert_run):
        run.mkdir()
    net = build_glide_base(GLIDE_TINY["base"])
    save_glide_checkpoint(net, base_run / "glide_gen_ema.ckpt", "base")
    # the expert run starts from the packaged (fp16) base and changes the output blocks only
    common = ["--out", str(out), *_trained_expert(net, lambda name: name.startswith("output_blocks."), expert_run,
                                                  tmp_path)]
    assert main(["--base", str(base_run), "--base_expert", str(expert_run), *common]) in (0, None)
    expert = read_checkpoint(out / "glide_gen_expert.ckpt")
    changed = {p.name for p in net.get_parameters() if p.name.startswith("output_blocks.")}
    assert {strip_unet_prefix(k) for k in expert} == changed
    record = json.loads((out / "package.json").read_text(encoding="utf-8"))
    assert record["glide_gen_expert.ckpt"]["tensors"] == len(changed)
    assert "glide_gen_expert.ckpt: " in capsys.readouterr().out
    fresh = build_glide_base(GLIDE_TINY["base"])
    load_glide_checkpoint(fresh, out / "glide_gen.ckpt", "base")
    load_base_expert(fresh, out / "glide_gen_expert.ckpt")
    for p, q in zip(net.get_parameters(), fresh.get_parameters()):
        a = p.asnumpy()
        want = a.astype(np.float16).astype(np.float32) if a.ndim >= 2 else a
        np.testing.assert_array_equal(q.asnumpy(), want, err_msg=p.name)
    assert main(["--base_expert", str(base_run), *common]) == 2  # the base itself: nothing changed
    assert "equals the base" in capsys.readouterr().err


def test_package_script_ships_an_expert_with_added_attention(tmp_path, capsys):
    """--base_expert on a run whose network adds attention at one more level (init.grow_attention): the
    expert file holds the added blocks whole and the tensors that changed under their moved names, and it
    loads over the packaged base into that network (model.base_expert) with the run's weights;
    --base_expert_v1 ships the first phase's log."""
    from scripts.package_glide_shapes import main

    from mind_diffusion.glide.checkpoint import load_base_expert, load_grown_attention, strip_unet_prefix
    from mind_diffusion.glide.model import build_glide_base

    base_run, v1, expert_run, out = tmp_path / "base", tmp_path / "v1", tmp_path / "expert", tmp_path / "model"
    for run in (base_run, v1, expert_run):
        run.mkdir()
    (v1 / "metrics.csv").write_text("step,loss,loss_smooth\n1,0.5,0.5\n2,0.4,0.45\n", encoding="utf-8")
    small_cfg = dict(GLIDE_TINY["base"], attention_resolutions=[1])
    small = build_glide_base(small_cfg)
    save_glide_checkpoint(small, base_run / "glide_gen_ema.ckpt", "base")
    grown_cfg = dict(GLIDE_TINY["base"], attention_resolutions=[1, 2])
    net = build_glide_base(grown_cfg)
    _, added = load_grown_attention(net, read_checkpoint(base_run / "glide_gen_ema.ckpt"))
    # trained: the added blocks and the input blocks move
    rest = _trained_expert(net, lambda name: name in added or name.startswith("input_blocks."), expert_run, tmp_path)
    assert main(["--base", str(base_run), "--base_expert_v1", str(v1), "--base_expert", str(expert_run), "--out",
                 str(out), *rest]) in (0, None)
    assert (out / "metrics_base_expert_v1.csv").is_file() and (out / "loss_base_expert_v1.png").is_file()
    expert = {strip_unet_prefix(k) for k in read_checkpoint(out / "glide_gen_expert.ckpt")}
    assert set(added) <= expert and expert == set(added) | {p.name for p in net.get_parameters()
                                                            if p.name.startswith("input_blocks.")}
    fresh = build_glide_base(grown_cfg)
    load_grown_attention(fresh, out / "glide_gen.ckpt")
    load_base_expert(fresh, out / "glide_gen_expert.ckpt")
    for p, q in zip(net.get_parameters(), fresh.get_parameters()):
        a = p.asnumpy()
        want = a.astype(np.float16).astype(np.float32) if a.ndim >= 2 else a
        np.testing.assert_array_equal(q.asnumpy(), want, err_msg=p.name)
    capsys.readouterr()
