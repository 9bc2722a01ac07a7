"""Nothing lost: samplers write each image as its batch finishes, interrupts say what was written,
bad input gets one line (exit 2) before any work.

- sample_ddpm writes per batch (pipeline ``on_batch``), images identical to a whole call;
- SIGTERM mid-run: exit 130, one line naming the count and folder, every PNG there complete;
- --seed out of MindSpore's range, --classes "", a text-to-image model, <out>/<class> a file.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import ROOT, captured_error, one_line_error, run_script

MODEL = ROOT / "models" / "ddpm_digits16"
needs_model = pytest.mark.skipif(not (MODEL / "model_ema.ckpt").is_file(), reason="shipped digits model missing")


@pytest.fixture
def pynative():
    import mindspore as ms

    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=ms.GRAPH_MODE)


def _pngs(folder: Path):
    return sorted(p for p in folder.iterdir() if p.suffix == ".png")


@needs_model
def test_sample_ddpm_files_equal_the_whole_run(tmp_path, capsys, pynative):
    from PIL import Image

    from mind_diffusion.ddpm.pipeline import DDPMPipeline
    from mind_diffusion_scripts import sample_ddpm

    rc = sample_ddpm.main(["--model", str(MODEL), "--classes", "2,5", "--num_per_class", "2",
                           "--batch_size", "3", "--sampler", "ddpm", "--steps", "2", "--seed", "11",
                           "--output_dir", str(tmp_path), "--device_target", "CPU", "--mode", "pynative"])
    assert rc == 0, capsys.readouterr().err
    # the script writes per batch (on_batch: 3 images, then 1); a whole call without the hook
    pipe = DDPMPipeline.from_pretrained(MODEL)
    want = pipe([2, 5], num_images_per_prompt=2, num_inference_steps=2, sampler="ddpm", seed=11,
                batch_size=3, progress=False).images
    for c, rows in ((2, want[:2]), (5, want[2:])):
        files = _pngs(tmp_path / str(c))
        assert [f.name for f in files] == ["00000.png", "00001.png"]
        for f, w in zip(files, rows):
            np.testing.assert_array_equal(np.asarray(Image.open(f)), w[..., 0])
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    with pytest.raises(ValueError, match="on_batch must be callable"):
        pipe([1], on_batch=3)


@needs_model
def test_sigterm_keeps_finished_images_and_says_so(tmp_path):
    out = tmp_path / "o"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MIND_DIFFUSION_DEBUG", None)
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "sample_ddpm.py"), "--model", str(MODEL), "--classes", "3",
         "--num_per_class", "400", "--batch_size", "2", "--sampler", "ddim", "--steps", "10",
         "--output_dir", str(out), "--device_target", "CPU"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if (out / "3").is_dir() and len(_pngs(out / "3")) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    files = _pngs(out / "3")
    lines = [ln for ln in err.splitlines() if ln.startswith("interrupted:")]
    assert len(lines) == 1 and f"wrote {len(files)} image(s) to {out / '3'}" in lines[0], err[-2000:]
    assert 2 <= len(files) < 400
    assert [f.name for f in files] == [f"{i:05d}.png" for i in range(len(files))]
    from PIL import Image

    for f in files:  # every file whole
        Image.open(f).load()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_interrupt_line_counts_per_folder(tmp_path, capsys):
    from mind_diffusion.cli import run_cli
    from mind_diffusion.utils import images

    images._WRITTEN.clear()

    def job():
        for k in range(3):
            images.save_png(tmp_path / "a" / f"{k}.png", np.zeros((4, 4, 3), np.uint8))
        images.save_png(tmp_path / "b" / "0.png", np.zeros((4, 4, 3), np.uint8))
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("SIGTERM did not stop the job")

    old = signal.getsignal(signal.SIGTERM)
    assert run_cli(job) == 130
    assert signal.getsignal(signal.SIGTERM) == old  # restored
    err = capsys.readouterr().err
    assert f"interrupted: wrote 4 image(s) to {tmp_path / 'a'} (3), {tmp_path / 'b'} (1)" in err
    images._WRITTEN.clear()


@needs_model
def test_sample_ddpm_bad_input_one_line(tmp_path, capsys):
    from mind_diffusion_scripts import sample_ddpm

    base = ["--model", str(MODEL), "--device_target", "CPU", "--output_dir", str(tmp_path / "o")]
    captured_error(capsys, sample_ddpm.main(base + ["--seed", "99999999999999999999"]),
                   "seed 99999999999999999999 is out of range", "0..4294967295")
    captured_error(capsys, sample_ddpm.main(base + ["--seed", str(2**32)]), "out of range")
    captured_error(capsys, sample_ddpm.main(base + ["--classes", ""]), "--classes is empty", "0..9")
    captured_error(capsys, sample_ddpm.main(base + ["--classes", " , "]), "--classes is empty")
    captured_error(capsys, sample_ddpm.main(["--model", str(ROOT / "models" / "shapes_zh"),
                                             "--output_dir", str(tmp_path / "o")]),
                   "text-to-image model", "use scripts/txt2img.py")
    (tmp_path / "o").mkdir(exist_ok=True)
    (tmp_path / "o" / "7").write_text("keep me")
    captured_error(capsys, sample_ddpm.main(base + ["--classes", "7", "--steps", "2"]),
                   f"{tmp_path / 'o' / '7'} exists and is not a folder")
    assert (tmp_path / "o" / "7").read_text() == "keep me"
    assert not (tmp_path / "o" / "grids").exists()


def test_glide_config_named_for_glide(tmp_path):
    from mind_diffusion.checkpoint.io import CheckpointError
    from mind_diffusion.ddpm.pipeline import check_ddpm_config

    with pytest.raises(CheckpointError, match="use scripts/glide_txt2img.py"):
        check_ddpm_config(ROOT / "configs" / "glide" / "infer.yaml")
    check_ddpm_config(MODEL / "config.yaml")  # a DDPM config passes


# ------------------------------------------------------------------ LDM data read before step 1
SHARED = Path(os.environ.get("MIND_DIFFUSION_SHARED", ROOT.parent / "shared"))
VOCAB = SHARED / "reference" / "vocab_zh.txt"
TINY_LDM = ROOT / "configs" / "ldm" / "tiny-csv.yaml"


def _csv_folder(folder: Path, n: int = 4) -> Path:
    from PIL import Image

    (folder / "img").mkdir(parents=True)
    rows = ["dir,text"]
    for i in range(n):
        Image.fromarray(np.full((40, 48, 3), 40 * i, np.uint8)).save(folder / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,红色 圆形 {i}")
    (folder / "pairs.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    good = (folder / "img" / "2.png").read_bytes()
    (folder / "img" / "1.png").write_bytes(b"not a png at all")
    (folder / "img" / "2.png").write_bytes(good[: len(good) // 2])  # truncated mid-file
    return folder


def test_corrupt_images_skipped_and_counted_or_refused(tmp_path, capsys):
    from mind_diffusion.train.data import CSVImageText, DataError

    folder = _csv_folder(tmp_path / "d")
    data = CSVImageText(folder, 32, filter_small_size=False, verify="skip")
    assert [p.name for p in data.paths] == ["0.png", "3.png"] and data.texts == ["红色 圆形 0", "红色 圆形 3"]
    assert sorted(p.name for p, _ in data.unreadable) == ["1.png", "2.png"]
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and "skipped 2 of 4 images" in out[0] and "--strict" in out[0]
    np.testing.assert_array_equal(data.image(1), np.full((3, 32, 32), np.float32(120) / np.float32(127.5) - np.float32(1), np.float32))
    # the size filter runs on what is left (it no longer meets the unreadable files)
    assert len(CSVImageText(folder, 32, filter_small_size=True, image_filter_size=16, verify="skip")) == 2
    with pytest.raises(DataError, match=r"2 of 4 images .* cannot be read .*fix or remove"):
        CSVImageText(folder, 32, filter_small_size=False, verify="strict")
    assert len(CSVImageText(folder, 32, filter_small_size=False)) == 4  # verify="off": as before, lazily
    for name in ("0.png", "3.png"):
        (folder / "img" / name).write_bytes(b"")
    with pytest.raises(DataError, match="none is left to train on"):
        CSVImageText(folder, 32, filter_small_size=False, verify="skip")


@pytest.mark.skipif(not VOCAB.is_file(), reason="reference vocab missing")
def test_train_ldm_strict_refuses_corrupt_data(tmp_path, capsys):
    from mind_diffusion_scripts import train_ldm

    folder = _csv_folder(tmp_path / "d")
    rc = train_ldm.main(["--config", str(TINY_LDM), "--device_target", "CPU", "--strict", f"data.path={folder}",
                         f"init.vocab={VOCAB}", f"train.output_dir={tmp_path / 'out'}", "data.filter_small_size=false"])
    captured_error(capsys, rc, "2 of 4 images", "cannot be read", "1.png")
    assert not (tmp_path / "out" / "checkpoints").exists()
