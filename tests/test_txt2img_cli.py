"""scripts/txt2img.py and infer.sh end to end on a tiny random model: files, metadata,
never-overwriting names, and one-line errors for bad input."""
from pathlib import Path

import pytest

from cli_helpers import one_line_error, run_script
from ldm_tiny import make_tiny_model_dir

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from conftest import SHARED

    if not SHARED.is_dir():
        pytest.skip(f"../shared not found at {SHARED} (the vocab lives there in CI)")
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny_cli"), SHARED)


def run(*args, script="scripts/txt2img.py", timeout=300):
    return run_script(script, *args, timeout=timeout)


def tiny_args(tiny_dir, out, *extra):
    cfg, ckpt = tiny_dir
    return ["--config", cfg, "--ckpt_path", ckpt.parent, "--ckpt_name", ckpt.name,
            "--output_path", out, "--H", 64, "--W", 64, "--device_target", "CPU", *extra]


def test_txt2img_writes_numbered_pngs_with_metadata(tiny_dir, tmp_path):
    from mind_diffusion.utils.images import read_png_parameters

    out = tmp_path / "out"
    p = run(*tiny_args(tiny_dir, out, "--prompt", "城市夜景 赛博朋克", "--dpm_solver",
                       "--ddim_steps", 2, "--n_samples", 2, "--n_iter", 1, "--seed", 5,
                       "--negative_prompt", "模糊"))
    assert p.returncode == 0, p.stderr[-3000:]
    files = sorted((out / "samples").glob("*.png"))
    assert [f.name for f in files] == ["00000.png", "00001.png"]
    meta = read_png_parameters(files[1])
    assert meta["prompt"] == "城市夜景 赛博朋克" and meta["negative_prompt"] == "模糊"
    assert meta["sampler"] == "dpm_solver" and meta["steps"] == 2 and meta["seed"] == 6
    assert meta["scale"] == 7.5 and meta["size"] == "64x64" and len(meta["checkpoint_sha256"]) == 10
    assert (out / "grids" / "00000.png").is_file()
    before = files[0].read_bytes()
    # a second run appends, never overwrites; a prompts file gives one batch per line
    (tmp_path / "prompts.txt").write_text("狗 绘画\n\n猫 插画风格\n", encoding="utf-8")
    p = run(*tiny_args(tiny_dir, out, "--data_path", tmp_path, "--prompt", "prompts.txt",
                       "--sampler", "ddim", "--ddim_steps", 1, "--n_samples", 1, "--n_iter", 1))
    assert p.returncode == 0, p.stderr[-3000:]
    names = sorted(f.name for f in (out / "samples").glob("*.png"))
    assert names == ["00000.png", "00001.png", "00002.png", "00003.png"]
    assert read_png_parameters(out / "samples" / "00003.png")["prompt"] == "猫 插画风格"
    assert (out / "samples" / "00000.png").read_bytes() == before


def test_regenerating_one_image_from_its_seed(tiny_dir, tmp_path):
    import numpy as np
    from PIL import Image

    a, b = tmp_path / "a", tmp_path / "b"
    common = ["--prompt", "狗 绘画 写实风格", "--sampler", "ddim", "--ddim_steps", 2, "--skip_grid"]
    assert run(*tiny_args(tiny_dir, a, *common, "--n_samples", 2, "--seed", 3)).returncode == 0
    assert run(*tiny_args(tiny_dir, b, *common, "--n_samples", 1, "--seed", 4)).returncode == 0
    img_a = np.asarray(Image.open(a / "samples" / "00001.png"))
    img_b = np.asarray(Image.open(b / "samples" / "00000.png"))
    assert np.abs(img_a.astype(int) - img_b.astype(int)).max() <= 1


@pytest.mark.parametrize("extra, needles", [
    (["--prompt", "  "], ["prompt is empty"]),
    (["--prompt", "狗", "--H", 500], ["--H must be a positive multiple of 16"]),
    (["--prompt", "狗", "--ddim_steps", 0], ["--ddim_steps must be >= 1"]),
    (["--prompt", "狗", "--scale", -2], ["--scale must be >= 0"]),
    (["--prompt", "nope.txt", "--data_path", "/nonexistent_dir"], ["prompts file not found"]),
    (["--prompt", "狗", "--ckpt_name", "missing.ckpt"], ["checkpoint not found", "missing.ckpt"]),
    (["--prompt", "狗", "--vocab", "/nonexistent/vocab_zh.txt"], ["tokenizer vocabulary not found"]),
    (["--prompt", "狗", "--set", "model.unet.channel_multt=[1]"], ["channel_multt"]),
])
def test_bad_input_one_line_errors(tiny_dir, tmp_path, extra, needles):
    out = tmp_path / "out"
    (out / "samples").mkdir(parents=True)
    (out / "samples" / "00000.png").write_bytes(b"keep me")
    one_line_error(run(*tiny_args(tiny_dir, out), *extra), *needles)
    assert (out / "samples" / "00000.png").read_bytes() == b"keep me"


def test_truncated_and_foreign_checkpoints(tiny_dir, tmp_path):
    cfg, ckpt = tiny_dir
    bad = tmp_path / "models"
    bad.mkdir()
    (bad / "vocab_zh.txt").write_bytes((ckpt.parent / "vocab_zh.txt").read_bytes())
    (bad / "cut.ckpt").write_bytes(ckpt.read_bytes()[:5000])
    p = run("--config", cfg, "--ckpt_path", bad, "--ckpt_name", "cut.ckpt", "--prompt", "狗",
            "--output_path", tmp_path / "o", "--device_target", "CPU")
    one_line_error(p, "cut.ckpt", "truncated")
    ddpm = ROOT / "models" / "ddpm_digits16" / "model_ema.ckpt"
    (bad / "ddpm.ckpt").write_bytes(ddpm.read_bytes())
    p = run("--config", cfg, "--ckpt_path", bad, "--ckpt_name", "ddpm.ckpt", "--prompt", "狗",
            "--output_path", tmp_path / "o", "--device_target", "CPU")
    one_line_error(p, "not a latent-diffusion")


def test_infer_sh_without_any_model_says_what_to_do(tmp_path):
    """A checkout with neither the official checkpoint nor the built-in model (models/ emptied): the
    code and configs are copied without models/, and infer.sh there gives one line on what to fetch."""
    import shutil

    repo = tmp_path / "repo"
    for name in ("mind_diffusion", "scripts", "configs"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "infer.sh", repo / "infer.sh")
    p = run_script("infer.sh", "城市夜景 赛博朋克", "--output_path", tmp_path / "o", "--device_target", "CPU",
                   timeout=300, root=repo)
    one_line_error(p, "wukong-huahua-ms.ckpt", "download.mindspore.cn", "git checkout -- models/shapes_zh")
    assert not (tmp_path / "o").exists()
    p = run("  ", script="infer.sh")
    assert p.returncode == 2 and "the prompt is empty" in p.stderr
