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

from cli_helpers import ROOT, captured_error

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


# ------------------------------------------------------------------ training configs checked first
DDPM_TRAIN = ["--config", str(ROOT / "configs" / "ddpm" / "digits16.yaml"), "--device_target", "CPU"]


@pytest.mark.parametrize(("override", "needles"), [
    ("train.lr=-1", ("train.lr must be > 0", "-1")),
    ("train.batch_size=0", ("train.batch_size must be", ">= 1", "got 0")),
    ("train.steps=0", ("train.steps must be",)),
    ("train.ema_decay=1.5", ("train.ema_decay must be in [0, 1]",)),
    ("train.adam_betas=[0.9,1.0]", ("train.adam_betas[1] must be in [0, 1)",)),
    ("train.warmup_steps=-2", ("train.warmup_steps must be",)),
    ("train.seed=-1", ("seed -1 is out of range",)),
    ("train.log_every=0", ("train.log_every must be",)),
    ("model.image_size=7", ("model.image_size=7 must be a multiple of 4", "use 4 or 8")),
    ("model.dropout=1.0", ("model.dropout must be in [0, 1)",)),
    ("model.num_groups=5", ("model.num_groups=5 must divide",)),
])
def test_ddpm_train_config_refused_up_front(tmp_path, capsys, monkeypatch, override, needles):
    from mind_diffusion_scripts import train_ddpm

    monkeypatch.chdir(tmp_path)  # a graph-compile failure would drop analyze_fail.ir here
    rc = train_ddpm.main(DDPM_TRAIN + [override, f"train.output_dir={tmp_path / 'out'}"])
    captured_error(capsys, rc, *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no run folder, no compiler dump


def test_ddpm_classes_in_data_must_match_the_model(tmp_path, capsys):
    from PIL import Image

    from mind_diffusion_scripts import train_ddpm

    for cls in ("cat", "dog"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        Image.new("L", (16, 16), 30).save(tmp_path / "data" / cls / "0.png")
    args = DDPM_TRAIN + ["data.kind=folder", f"data.path={tmp_path / 'data'}", f"train.output_dir={tmp_path / 'o'}"]
    rc = train_ddpm.main(args + ["model.num_classes=10"])
    captured_error(capsys, rc, "the data has 2 classes (cat, dog) but model.num_classes=10",
                   "model.num_classes=2")
    assert not (tmp_path / "o").exists()


def test_check_number_and_train_section_closed_ranges():
    from omegaconf import OmegaConf

    from mind_diffusion.config import ConfigError
    from mind_diffusion.train.validate import check_number, check_train_section

    check_number(0.0, "x", 0, 1)            # inclusive ends
    check_number(1.0, "x", 0, 1)
    for bad in (-1e-9, 1 + 1e-9, float("inf"), True, "0.5"):
        with pytest.raises(ConfigError):
            check_number(bad, "x", 0, 1)
    with pytest.raises(ConfigError, match="x must be an integer >= 1, got 2.5"):
        check_number(2.5, "x", 1, None, integer=True)
    # LDM: steps=0 / ckpt_every=0 mean "the default" there, not in DDPM
    ldm = OmegaConf.create({"steps": 0, "ckpt_every": 0, "epochs": 2, "start_learning_rate": 1e-5,
                            "end_learning_rate": 0.0, "betas": [0.9, 0.98], "loss_scale": "dynamic"})
    check_train_section(ldm, zero_ok=("steps", "ckpt_every"))
    with pytest.raises(ConfigError, match="train.steps must be"):
        check_train_section(ldm)
    with pytest.raises(ConfigError, match="train.loss_scale must be one of none, static, dynamic"):
        check_train_section(OmegaConf.create({"loss_scale": "auto"}))


@pytest.mark.skipif(not VOCAB.is_file(), reason="reference vocab missing")
@pytest.mark.parametrize(("override", "needle"), [
    ("train.start_learning_rate=-1", "train.start_learning_rate must be > 0"),
    ("train.batch_size=0", "train.batch_size must be"),
    ("train.epochs=0", "train.epochs must be"),
    ("data.caption_dropout=2", "data.caption_dropout must be in [0, 1]"),
])
def test_ldm_train_config_refused_up_front(tmp_path, capsys, override, needle):
    from mind_diffusion_scripts import train_ldm

    folder = _csv_folder(tmp_path / "d")
    rc = train_ldm.main(["--config", str(TINY_LDM), "--device_target", "CPU", f"data.path={folder}",
                         f"init.vocab={VOCAB}", f"train.output_dir={tmp_path / 'out'}", override])
    captured_error(capsys, rc, needle)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ outputs never overwritten
def _two_images(folder: Path) -> Path:
    from PIL import Image

    folder.mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(folder / f"{i}.png")
    return folder


def test_fid_save_stats_refuses_an_existing_file(tmp_path, capsys):
    from mind_diffusion_scripts import fid

    imgs = _two_images(tmp_path / "imgs")
    old = tmp_path / "ref.npz"
    old.write_bytes(b"earlier statistics")
    captured_error(capsys, fid.main([str(imgs), "--save-stats", str(old)]), f"{old} exists", "--overwrite")
    captured_error(capsys, fid.main([str(imgs), "--save-stats", str(tmp_path / "ref")]), "ref.npz exists")
    captured_error(capsys, fid.main([str(imgs), "--save-stats", str(imgs)]), "is a folder")
    assert old.read_bytes() == b"earlier statistics"


def test_fid_compare_out_must_be_new_or_empty(tmp_path, capsys):
    from mind_diffusion_scripts import fid_compare

    cfg = str(ROOT / "configs" / "fid" / "builtin-quick.yaml")
    taken = _two_images(tmp_path / "taken")
    before = sorted(p.name for p in taken.iterdir())
    captured_error(capsys, fid_compare.main(["--config", cfg, "--out", str(taken)]),
                   "already exists and is not empty", "nothing was overwritten")
    assert sorted(p.name for p in taken.iterdir()) == before
    afile = tmp_path / "report.md"
    afile.write_text("keep me")
    captured_error(capsys, fid_compare.main(["--config", cfg, "--out", str(afile)]), "is a file")
    assert afile.read_text() == "keep me"


def test_converter_hint_names_the_config_given():
    from mind_diffusion_scripts import convert_sd_to_ms

    hint = convert_sd_to_ms.run_hint("configs/my-sd.yaml", Path("/m/sd-tiny-ms.ckpt"))
    assert hint == ('run: python scripts/txt2img.py --config configs/my-sd.yaml --ckpt_path /m '
                    '--ckpt_name sd-tiny-ms.ckpt --prompt "..."')


def test_file_exists_is_a_user_error(capsys):
    from mind_diffusion.cli import run_cli

    def job():
        raise FileExistsError("output folder x already exists")

    captured_error(capsys, run_cli(job), "output folder x already exists")


def test_samples_path_being_a_file_is_refused_before_sampling(tmp_path, capsys):
    from mind_diffusion.utils.images import OutputPathError, check_output_dir

    out = tmp_path / "o"
    out.mkdir()
    (out / "samples").write_text("keep me")
    with pytest.raises(OutputPathError, match="samples exists and is not a folder"):
        check_output_dir(out, subfolders=("samples", "grids"))
    assert check_output_dir(out, subfolders=("grids",)) == out  # only the named ones matter
    if (ROOT / "models" / "shapes_zh" / "config.yaml").is_file():
        from mind_diffusion_scripts import txt2img

        rc = txt2img.main(["--prompt", "一个红色的圆形在左边", "--output_path", str(out), "--device_target", "CPU"])
        captured_error(capsys, rc, f"{out / 'samples'} exists and is not a folder")
    assert (out / "samples").read_text() == "keep me" and not (out / "grids").exists()
