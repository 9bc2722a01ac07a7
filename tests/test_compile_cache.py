"""The graph compile cache (mind_diffusion/compile_cache.py): where it lives, what its key holds,
atomic publication when two runs race, and end to end on the tiny model: a second run loads the
graphs the first one wrote (files untouched) and writes bit-identical images; two runs at once
leave one complete key folder; image edits of other inputs reuse the graphs and equal fresh ones."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mind_diffusion import compile_cache as cc

ROOT = Path(__file__).resolve().parents[1]


def test_root_from_flag_env_and_default(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv(cc.ENV, "")
    assert cc.resolve_root(None) == tmp_path / "xdg" / "mind_diffusion" / "compile"
    monkeypatch.setenv(cc.ENV, str(tmp_path / "env"))
    assert cc.resolve_root(None) == tmp_path / "env"
    assert cc.resolve_root(str(tmp_path / "flag")) == tmp_path / "flag"  # the flag beats the env
    assert cc.resolve_root(False) is None
    for off in ("off", "0", "false", "OFF"):
        monkeypatch.setenv(cc.ENV, off)
        assert cc.resolve_root(None) is None


def test_key_changes_with_everything_that_changes_a_graph(tmp_path):
    base = dict(device_target="CPU", mode="graph", precision="float32",
                script_key={"config": {"unet": {"ch": 32}}, "H": 64})
    k = cc.key_hash(cc.key_parts(**base))
    assert k == cc.key_hash(cc.key_parts(**base))
    for change in ({"mode": "pynative"}, {"precision": "float16"}, {"device_target": "GPU"},
                   {"rank": 1}, {"script_key": {"config": {"unet": {"ch": 64}}, "H": 64}},
                   {"script_key": {"config": {"unet": {"ch": 32}}, "H": 128}}):
        assert cc.key_hash(cc.key_parts(**{**base, **change})) != k, change
    parts = cc.key_parts(**base)
    assert parts["mindspore"] and parts["code"] == cc.code_version()
    # the code version is a hash over names and contents: any edit of a library file changes it
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("x = 1\n")
    b.write_text("y = 2\n")
    h = cc._hash_files([a, b], tmp_path)
    a.write_text("x = 2\n")
    assert cc._hash_files([a, b], tmp_path) != h
    # the default key: the command line and the content of the files it names
    cfg = tmp_path / "c.yaml"
    cfg.write_text("a: 1\n")
    k1 = cc.default_script_key(["--config", str(cfg)])
    cfg.write_text("a: 2\n")
    assert cc.default_script_key(["--config", str(cfg)]) != k1


def _fake_run(root: Path, key: str, content: bytes) -> cc.CompileCache:
    private = root / ".tmp" / f"{key}-{os.getpid()}-{content.hex()[:8]}"
    (private / "rank_0" / "graph_cache").mkdir(parents=True)
    (private / "rank_0" / "graph_cache" / "compile_cache_0.mindir").write_bytes(content)
    return cc.CompileCache(root, key, {"k": key}, private, hit=False)


def test_publication_is_atomic_and_the_first_run_wins(tmp_path):
    a, b = _fake_run(tmp_path, "k1", b"first"), _fake_run(tmp_path, "k1", b"second")
    a.publish()
    b.publish()  # the key folder exists: b's copy is dropped, a's stays whole
    assert cc.graph_files(tmp_path / "k1")[0].read_bytes() == b"first"
    assert (tmp_path / "k1" / "key.json").is_file()
    assert list((tmp_path / ".tmp").iterdir()) == []
    c = _fake_run(tmp_path, "k2", b"failed")
    c.discard()  # a failed run leaves nothing
    assert not (tmp_path / "k2").exists() and list((tmp_path / ".tmp").iterdir()) == []
    # a run that compiled nothing (pynative) publishes nothing
    empty = tmp_path / ".tmp" / f"k3-{os.getpid()}-0"
    empty.mkdir()
    cc.CompileCache(tmp_path, "k3", {}, empty, hit=False).publish()
    assert not (tmp_path / "k3").exists() and not empty.exists()


def test_prune_drops_old_keys_and_dead_runs(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    for d in (old, new):
        d.mkdir()
        (d / cc.STAMP).touch()
    os.utime(old / cc.STAMP, (1, 1))
    dead = tmp_path / ".tmp" / "k-999999999-abc"  # no such pid
    live = tmp_path / ".tmp" / f"k-{os.getpid()}-abc"
    dead.mkdir(parents=True)
    live.mkdir()
    cc.prune(tmp_path)
    assert not old.exists() and new.exists() and not dead.exists() and live.exists()


def test_setup_sets_mindspore_env_and_turns_off(monkeypatch, tmp_path):
    monkeypatch.setattr(cc, "_setups", 0)
    monkeypatch.setattr(cc, "_active", None)
    for var in ("MS_COMPILER_CACHE_ENABLE", "MS_COMPILER_CACHE_PATH"):
        monkeypatch.delenv(var, raising=False)
    kw = dict(device_target="CPU", mode="graph", precision="float32", script_key={"t": 1})
    cache = cc.setup(str(tmp_path), **kw)
    assert not cache.hit and cache.path.parent == tmp_path / ".tmp"
    assert os.environ["MS_COMPILER_CACHE_ENABLE"] == "1"
    assert os.environ["MS_COMPILER_CACHE_PATH"] == str(cache.path)
    # a second runtime init in one process: MindSpore numbers graphs per process, so the cache
    # is turned off rather than mixing two keys' numbering
    assert cc.setup(str(tmp_path), **kw) is None
    assert os.environ["MS_COMPILER_CACHE_ENABLE"] == "0" and not cache.path.exists()
    monkeypatch.setattr(cc, "_setups", 0)
    assert cc.setup(False, **kw) is None and os.environ["MS_COMPILER_CACHE_ENABLE"] == "0"
    from mind_diffusion.runtime import add_runtime_args, cli_options
    import argparse

    p = add_runtime_args(argparse.ArgumentParser())
    assert cli_options(p.parse_args(["--no_compile_cache"]))["compile_cache"] is False
    assert cli_options(p.parse_args(["--compile_cache_dir", "/x"]))["compile_cache"] == "/x"
    assert cli_options(p.parse_args([]))["compile_cache"] is None


# ------------------------------------------------------------------ end to end, tiny model
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from conftest import SHARED
    from ldm_tiny import make_tiny_model_dir

    if not SHARED.is_dir():
        pytest.skip(f"../shared not found at {SHARED} (the vocab lives there in CI)")
    # two checkpoints of one config: the same graphs (one cache key), different weights
    return [make_tiny_model_dir(tmp_path_factory.mktemp(f"tiny_cc{seed}"), SHARED, seed=seed)
            for seed in (0, 1)]


def _popen(script: str, *argv) -> subprocess.Popen:
    """scripts/<script> with ``argv`` in a subprocess (output and errors in one pipe); see :func:`_finish`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(ROOT / "scripts" / script)] + [str(a) for a in argv],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _ldm_args(model, out: Path) -> list:
    cfg, ckpt = model
    return ["--config", cfg, "--ckpt_path", ckpt.parent, "--ckpt_name", ckpt.name, "--output_path", out,
            "--H", 64, "--W", 64, "--device_target", "CPU", "--mode", "graph", "--skip_grid"]


def _start(model, out: Path, *extra) -> subprocess.Popen:
    return _popen("txt2img.py", *_ldm_args(model, out), "--prompt", "狗 绘画", "--ddim_steps", 2, *extra)


def _finish(procs) -> list:
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out[-3000:]
        outs.append(out)
    return outs


def test_second_run_hits_the_cache_and_two_runs_can_share_it(tiny_dir, tmp_path):
    cache = tmp_path / "cache"
    (cfg0, ckpt0), (cfg1, ckpt1) = tiny_dir
    # two runs at once on an empty cache, same config (so the same key), different checkpoints:
    # both compile, one key folder is published whole
    outs = _finish([_start((cfg0, ckpt0), tmp_path / "a", "--compile_cache_dir", cache),
                    _start((cfg1, ckpt1), tmp_path / "b", "--compile_cache_dir", cache)])
    assert all("compile cache new" in o for o in outs)
    keys = [d for d in cache.iterdir() if not d.name.startswith(".")]
    assert len(keys) == 1 and list((cache / ".tmp").iterdir()) == []
    files = cc.graph_files(keys[0])
    assert len(files) == 3  # text encoder, guided UNet, VAE decoder
    stamps = {f: (f.stat().st_mtime_ns, f.read_bytes()) for f in files}
    # a third run loads those graphs and leaves them untouched; the graphs hold no weights: with
    # the second checkpoint its image is bit-identical to the one from freshly compiled graphs
    out = _finish([_start((cfg1, ckpt1), tmp_path / "c", "--compile_cache_dir", cache, "--timings")])[0]
    assert "compile cache hit" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("[mind_diffusion] timings:"))
    for phase in ("import", "checkpoint load", "compile", "text encode", "sampling", "decode", "write",
                  "total"):
        assert f" {phase} " in line, line
    assert {f: (f.stat().st_mtime_ns, f.read_bytes()) for f in cc.graph_files(keys[0])} == stamps
    assert sorted(d.name for d in cache.iterdir() if not d.name.startswith(".")) == [keys[0].name]
    a, b, c = ((tmp_path / o / "samples" / "00000.png").read_bytes() for o in "abc")
    assert c == b and a != b


def _edit(script: str, model, out: Path, *args) -> subprocess.Popen:
    return _popen(script, *_ldm_args(model, out), "--ddim_steps", 3, *args)


def test_edits_share_one_key_and_a_cached_edit_equals_a_fresh_one(tiny_dir, tmp_path):
    """img2img and inpainting key their graphs on what decides them (config, size, batch, mode), not on the
    image, mask, prompt, seed, strength, blur or output folder: a second edit of other inputs loads the first
    one's graphs, and its images are bit-identical to the same edit compiled afresh."""
    import numpy as np

    from mind_diffusion.utils.images import save_png

    rng = np.random.default_rng(0)
    for k in range(2):
        save_png(tmp_path / f"img{k}.png", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
        mask = np.zeros((64, 64), np.uint8)
        mask[:, 32 * k:32 * k + 32] = 255
        save_png(tmp_path / f"mask{k}.png", np.repeat(mask[..., None], 3, -1))
    cache = tmp_path / "cache"
    first = {"img2img.py": ["--init_img", tmp_path / "img0.png", "--prompt", "狗 绘画", "--strength", 0.6],
             "inpaint.py": ["--img", tmp_path / "img0.png", "--mask", tmp_path / "mask0.png", "--prompt", "狗 绘画"]}
    other = {"img2img.py": ["--init_img", tmp_path / "img1.png", "--prompt", "猫 写实", "--strength", 0.9,
                            "--encode", "sample", "--seed", 7],
             "inpaint.py": ["--img", tmp_path / "img1.png", "--mask", tmp_path / "mask1.png", "--prompt", "猫 写实",
                            "--mask_blur", 2, "--seed", 7, "--scale", 3.0]}
    outs = _finish([_edit(s, tiny_dir[0], tmp_path / f"a_{s}", *a, "--compile_cache_dir", cache)
                    for s, a in first.items()])
    assert all("compile cache new" in o for o in outs)
    outs = _finish([_edit(s, tiny_dir[0], tmp_path / f"b_{s}", *a, "--compile_cache_dir", cache, "--timings")
                    for s, a in other.items()])
    assert all("compile cache hit" in o for o in outs), outs
    _finish([_edit(s, tiny_dir[0], tmp_path / f"c_{s}", *a, "--no_compile_cache") for s, a in other.items()])
    assert len([d for d in cache.iterdir() if not d.name.startswith(".")]) == 2   # one key per task
    for s in other:
        got = (tmp_path / f"b_{s}" / "samples" / "00000.png").read_bytes()
        assert got == (tmp_path / f"c_{s}" / "samples" / "00000.png").read_bytes(), s
        assert got != (tmp_path / f"a_{s}" / "samples" / "00000.png").read_bytes(), s


def test_glide_runs_share_one_key_and_a_cached_run_equals_a_fresh_one(tmp_path):
    """glide_txt2img.py keys its graphs on the config, the stages and the batches: another prompt, seed,
    sampler, step count, guidance scale or output folder loads the first run's graphs (all three stages), and
    its images are bit-identical to the same run compiled afresh; --timings names each stage's time."""
    from glide_tiny import make_tiny_glide_dir

    tiny = make_tiny_glide_dir(tmp_path / "tiny")
    cache = tmp_path / "cache"

    def start(out, *extra):
        return _popen("glide_txt2img.py", "--config", tiny / "glide-tiny.yaml", "--ckpt_path", tiny,
                      "--output_path", tmp_path / out, "--device_target", "CPU", "--mode", "graph",
                      "--pics_generated", 2, "--stages", 1024, "--skip_strip", *extra)

    out = _finish([start("a", "--prompt", "一只可爱的猫坐在草地上", "--denoise_steps", 2, "--compile_cache_dir", cache)])[0]
    assert "compile cache new" in out
    other = ["--prompt", "一张画着柯基的油画", "--seed", 9, "--denoise_steps", 3, "--sampler", "ddim",
             "--guidance_scale", 3.0]
    outs = _finish([start("b", *other, "--compile_cache_dir", cache, "--timings"), start("c", *other, "--no_compile_cache")])
    assert "compile cache hit" in outs[0], outs[0][-2000:]
    assert len([d for d in cache.iterdir() if not d.name.startswith(".")]) == 1
    line = next(ln for ln in outs[0].splitlines() if ln.startswith("[mind_diffusion] timings:"))
    for phase in ("build", "checkpoint load", "compile", "base 64 px", "super-res 256 px", "SRGAN 1024 px",
                  "write", "total"):
        assert f" {phase} " in line, line
    b = sorted((tmp_path / "b" / "samples").iterdir())
    assert len(b) == 6   # 2 images x 3 stages
    for f in b:
        assert f.read_bytes() == (tmp_path / "c" / "samples" / f.name).read_bytes(), f.name


def test_sampling_imports_nothing_it_does_not_use():
    """The library adds no heavy package to what MindSpore itself imports on infer.sh's path."""
    code = ("import sys, mindspore; before = set(sys.modules)\n"
            "import scripts.txt2img, mind_diffusion.ldm.pipeline, mind_diffusion.utils.images, "
            "mind_diffusion.runtime, mind_diffusion.config, mind_diffusion.ldm.config\n"
            "print(' '.join(sorted({m.split('.')[0] for m in set(sys.modules) - before})))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    added = set(p.stdout.split())
    banned = {"torch", "torchvision", "diffusers", "transformers", "matplotlib", "scipy", "pandas",
              "sklearn", "cv2", "jieba"}
    assert not added & banned, sorted(added & banned)
