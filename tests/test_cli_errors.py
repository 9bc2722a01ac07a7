"""Bad input to the scripts: one clear line on stderr, exit code 2, nothing already written lost."""
import os
from pathlib import Path

import pytest

from cli_helpers import one_line_error, run_script

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "ddpm_digits16"


def run(script, *args, timeout=240):
    return run_script(script, *args, timeout=timeout)


TRAIN = ["--config", "configs/ddpm/digits16.yaml", "--device_target", "CPU"]


def test_train_missing_cifar(tmp_path):
    p = run("train_ddpm.py", *TRAIN, "data.kind=cifar10", f"data.path={tmp_path}/none.tar.gz",
            f"train.output_dir={tmp_path}/o")
    one_line_error(p, "CIFAR-10 not found", "none.tar.gz")


def test_train_bad_config_key_and_type(tmp_path):
    one_line_error(run("train_ddpm.py", *TRAIN, "train.stepz=3"), "train.stepz", "did you mean 'train.steps'")
    one_line_error(run("train_ddpm.py", *TRAIN, "train.steps=-3", f"train.output_dir={tmp_path}/o"),
                   "train.steps must be >= 1")
    one_line_error(run("train_ddpm.py", "--config", tmp_path / "missing.yaml"), "config file not found")


def test_train_wrong_image_size(tmp_path):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        Image.new("L", (20, 20)).save(tmp_path / "data" / cls / "0.png")
    p = run("train_ddpm.py", *TRAIN, "data.kind=folder", f"data.path={tmp_path}/data", f"train.output_dir={tmp_path}/o")
    one_line_error(p, "is 20x20", "16x16", "data.resize=true")


def test_train_unwritable_output(tmp_path):
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("keep me")
        p = run("train_ddpm.py", *TRAIN, f"train.output_dir={blocker}/sub", "train.steps=1")
        one_line_error(p)
        assert blocker.read_text() == "keep me"
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        one_line_error(run("train_ddpm.py", *TRAIN, f"train.output_dir={ro}/x", "train.steps=1"))


@pytest.mark.skipif(not (MODEL / "model_ema.ckpt").is_file(), reason="shipped digits model missing")
def test_sample_bad_inputs(tmp_path):
    one_line_error(run("sample_ddpm.py", "--model", MODEL, "--classes", "3,12", "--output_dir", tmp_path / "o",
                       "--device_target", "CPU"), "unknown class id 12", "0..9")
    one_line_error(run("sample_ddpm.py", "--model", MODEL, "--steps", "-5", "--output_dir", tmp_path / "o"),
                   "--steps must be >= 1")
    one_line_error(run("sample_ddpm.py", "--model", tmp_path / "nomodel", "--output_dir", tmp_path / "o"),
                   "model not found")
    blocker = tmp_path / "taken"
    blocker.write_text("keep me")
    one_line_error(run("sample_ddpm.py", "--model", MODEL, "--output_dir", blocker), "not a folder")
    assert blocker.read_text() == "keep me"


@pytest.mark.skipif(not (MODEL / "model_ema.ckpt").is_file(), reason="shipped digits model missing")
def test_sample_writes_per_class_files_and_never_overwrites(tmp_path):
    from mind_diffusion.utils.images import read_png_parameters

    args = ["--model", MODEL, "--classes", "1,4", "--num_per_class", "2", "--sampler", "ddim", "--steps", "5",
            "--output_dir", tmp_path, "--device_target", "CPU"]
    assert run("sample_ddpm.py", *args).returncode == 0
    assert run("sample_ddpm.py", *args, "--seed", "1").returncode == 0
    assert sorted(p.name for p in (tmp_path / "4").iterdir()) == [f"{i:05d}.png" for i in range(4)]
    assert sorted(p.name for p in (tmp_path / "grids").iterdir()) == ["00000.png", "00001.png"]
    meta = read_png_parameters(tmp_path / "4" / "00003.png")
    assert meta["class_label"] == 4 and meta["sampler"] == "ddim" and meta["steps"] == 5 and meta["seed"] == 1
