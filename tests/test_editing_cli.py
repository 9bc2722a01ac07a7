"""Image editing for users: init images and masks read with one clear line for every bad input
(mind_diffusion/utils/edit_inputs.py), scripts/img2img.py and scripts/inpaint.py (bad input: exit 2,
nothing written; PNG metadata; grids init | mask | results; never overwriting), the shapes-world
editing cases and their reading by the scorer (checked on rendered ground truth), and a small
sample of each path on the built-in model (scripts/eval_editing.py)."""
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_helpers import captured_error

ROOT = Path(__file__).resolve().parents[1]
BUILTIN = ROOT / "models" / "shapes_zh"
needs_builtin = pytest.mark.skipif(not (BUILTIN / "model.ckpt").is_file(), reason="built-in shapes model not installed")


def png(path, arr):
    Image.fromarray(np.asarray(arr, np.uint8)).save(path)
    return path


@pytest.fixture
def scene(tmp_path):
    """A rendered one-shape scene (red circle on the left), the empty right half as mask."""
    from mind_diffusion.shapes.editing import half_mask
    from mind_diffusion.shapes.world import Scene, ShapeObject, render_scene

    img = render_scene(Scene((ShapeObject("红", "圆形", "左边", 0.12),)), 64)
    return png(tmp_path / "scene.png", img), png(tmp_path / "mask.png", half_mask("右边", 64))


# ----------------------------------------------------------------------------- reading files
def test_bad_files_give_one_line(tmp_path, scene):
    from mind_diffusion.utils.edit_inputs import EditInputError, load_edit_inputs, read_image

    img, mask = scene
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "junk.png").write_bytes(b"not an image at all" * 10)
    (tmp_path / "cut.png").write_bytes(img.read_bytes()[:60])
    png(tmp_path / "small_mask.png", np.full((32, 32), 255))
    png(tmp_path / "black.png", np.zeros((64, 64)))
    png(tmp_path / "white.png", np.full((64, 64), 255))
    cases = [
        (lambda: read_image(tmp_path / "nope.png"), "init image not found"),
        (lambda: read_image(tmp_path), "is a folder"),
        (lambda: read_image(tmp_path / "empty.png"), "empty file"),
        (lambda: read_image(tmp_path / "junk.png"), "not an image PIL can read"),
        (lambda: read_image(tmp_path / "cut.png"), "damaged"),
        (lambda: load_edit_inputs(img, 64, 64, tmp_path / "small_mask.png"), "is 32x32 but the init image"),
        (lambda: load_edit_inputs(img, 64, 64, tmp_path / "black.png"), "no white pixel"),
        (lambda: load_edit_inputs(img, 64, 64, tmp_path / "white.png"), "white everywhere"),
        (lambda: load_edit_inputs(img, 128, 128, mask, aug="crop"), "window from the init image"),
    ]
    for call, needle in cases:
        with pytest.raises(EditInputError, match=needle) as e:
            call()
        assert "\n" not in str(e.value)


def test_image_modes_and_fitting(tmp_path, scene):
    from mind_diffusion.utils.edit_inputs import fit_edit_inputs, load_edit_inputs, read_image, read_mask

    img, mask = scene
    rgb = np.asarray(Image.open(img))
    rgba = np.concatenate([rgb, np.full((64, 64, 1), 7, np.uint8)], -1)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    assert np.array_equal(read_image(tmp_path / "a.png").array, rgb)  # alpha dropped, colours kept
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    assert np.abs(read_image(tmp_path / "a.jpg").array.astype(int) - rgb).mean() < 3
    Image.fromarray(np.asarray(Image.open(mask).convert("RGB"))).save(tmp_path / "m_rgb.png")
    assert np.array_equal(read_mask(tmp_path / "m_rgb.png").array, np.asarray(Image.open(mask)))
    got = load_edit_inputs(img, 64, 64, mask)
    assert got.init.sha256 == hashlib.sha256(img.read_bytes()).hexdigest() and got.notes == []
    assert set(np.unique(got.mask)) == {0, 255} and np.array_equal(got.image, rgb)

    wide = np.zeros((40, 80, 3), np.uint8)
    wide[:, 20:60] = 200  # the middle square of a 2:1 image
    wmask = np.zeros((40, 80), np.uint8)
    wmask[:, 60:] = 255
    im, m, notes = fit_edit_inputs(wide, wmask, 32, 32, "resize")
    assert im.shape == (32, 32, 3) and m.shape == (32, 32) and "stretched" in notes[0]
    im, m, notes = fit_edit_inputs(wide, None, 32, 32, "cover")  # scaled to 64x32, centre cut
    assert m is None and notes == [] and im.min() >= 190
    im, m, notes = fit_edit_inputs(wide, wmask, 32, 32, "crop")  # window on the mask, kept inside
    assert np.array_equal(im, wide[4:36, 48:80]) and np.array_equal(m, wmask[4:36, 48:80])
    im, m, _ = fit_edit_inputs(wide, wmask, 16, 16, "resizecrop", 0.5)  # 40x40 window, scaled
    assert im.shape == (16, 16, 3) and set(np.unique(m)) == {0, 255}


# ----------------------------------------------------------------------------- scripts, bad input
def _script(name: str):
    """scripts/<name>.py of this checkout (the installed command package may be another checkout)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_edit_test_{name}", ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(name, *extra):
    return _script(name).main([str(a) for a in extra] + ["--device_target", "CPU"])


def _img2img(*extra):
    return _run("img2img", *extra)


def _inpaint(*extra):
    return _run("inpaint", *extra)


def _txt2img(*extra):
    return _run("txt2img", *extra)


SHAPES_MODEL = ["--config", BUILTIN / "config.yaml", "--ckpt_path", BUILTIN, "--ckpt_name", "model.ckpt"]


@needs_builtin
def test_scripts_refuse_bad_input_before_writing(tmp_path, scene, capsys):
    img, mask = scene
    out = tmp_path / "out"
    png(tmp_path / "small.png", np.zeros((32, 32)))
    prompt = ["--prompt", "一个蓝色的圆形在左边"]
    runs = [
        (_img2img, ["--init_img", tmp_path / "nope.png"], ["init image not found", "--init_img"]),
        (_img2img, ["--init_img", img, "--strength", 0], ["--strength must be in (0, 1]"]),
        (_img2img, ["--init_img", img, "--strength", 1.5], ["--strength must be in (0, 1]"]),
        (_img2img, ["--init_img", img, "--set", "model.unet.in_channels=9"],
         ["inpainting model", "scripts/inpaint.py"]),
        (_txt2img, ["--set", "model.unet.in_channels=9"], ["inpainting model", "scripts/inpaint.py"]),
        (_inpaint, ["--img", img, "--mask", tmp_path / "small.png"], ["is 32x32 but the init image"]),
        (_inpaint, ["--img", img, "--mask", tmp_path / "nope.png"], ["mask not found", "--mask"]),
        (_inpaint, ["--img", img, "--mask", mask, "--inpaint_mode", "model"],
         ["--inpaint_mode model needs an inpainting model", "--inpaint_mode blend"]),
        (_inpaint, ["--img", img, "--mask", mask, "--strength", -0.1], ["--strength must be in (0, 1]"]),
        (_inpaint, ["--img", img, "--mask", mask, "--mask_blur", -1], ["--mask_blur must be >= 0"]),
    ]
    for main, extra, needles in runs:
        rc = main(*SHAPES_MODEL, *prompt, "--output_path", out, *extra)
        captured_error(capsys, rc, *needles)
        assert not out.exists(), (extra, "a refused run must write nothing")


def test_nine_channel_checkpoint_says_which_script(tmp_path, capsys):
    """An inpainting checkpoint (UNet with 9 input channels) under a text-to-image config, and a
    text-to-image one under an inpainting config: one line naming the script that fits."""
    import yaml

    from ldm_tiny import TINY_MODEL
    from mind_diffusion.checkpoint.io import save_atomic
    from mind_diffusion.config import load_config
    from mind_diffusion.ldm.config import ldm_config_defaults
    from mind_diffusion.ldm.model import build_ldm

    model = dict(TINY_MODEL, text_encoder=dict(TINY_MODEL["text_encoder"], vocab_size=154))
    for ch in (4, 9):
        cfg = {"model": dict(model, unet=dict(model["unet"], in_channels=ch)),
               "tokenizer": {"kind": "wordpiece", "vocab_file": "vocab.txt", "pad_id": 0},
               "checkpoint": {"name": f"c{ch}.ckpt", "url": ""},
               "sampling": {"height": 64, "width": 64}}
        (tmp_path / f"c{ch}.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
        net = build_ldm(load_config(tmp_path / f"c{ch}.yaml", (), ldm_config_defaults()).model)
        save_atomic({p.name: p.asnumpy() for p in net.get_parameters()}, tmp_path / f"c{ch}.ckpt")
    (tmp_path / "vocab.txt").write_bytes((ROOT / "models" / "shapes_zh" / "vocab.txt").read_bytes())
    out = tmp_path / "out"
    rc = _txt2img("--config", tmp_path / "c4.yaml", "--ckpt_path", tmp_path, "--ckpt_name", "c9.ckpt",
                  "--prompt", "一个红色的圆形", "--output_path", out)
    captured_error(capsys, rc, "c9.ckpt is an inpainting checkpoint", "scripts/inpaint.py")
    img = png(tmp_path / "i.png", np.zeros((64, 64, 3)))
    m = np.zeros((64, 64))
    m[:, 32:] = 255
    rc = _inpaint("--config", tmp_path / "c9.yaml", "--ckpt_path", tmp_path, "--ckpt_name", "c4.ckpt",
                  "--img", img, "--mask", png(tmp_path / "m.png", m), "--prompt", "一个红色的圆形",
                  "--output_path", out)
    captured_error(capsys, rc, "c4.ckpt is a text-to-image checkpoint", "--inpaint_mode blend")
    assert not out.exists()


# ----------------------------------------------------------------------------- the shapes cases
def test_editing_cases_read_right_on_ground_truth():
    """The scorer reads the rendered target of every case as asked and the untouched init image
    as not yet edited: the readings the demonstration relies on."""
    from mind_diffusion.shapes.editing import img2img_cases, inpaint_cases, read_img2img, read_inpaint
    from mind_diffusion.shapes.world import parse_prompt, render_scene

    for c in img2img_cases(24):
        assert c.target.objects[0].colour != c.source.objects[0].colour
        assert read_img2img(c, render_scene(c.target, 64))["all"]
        r = read_img2img(c, c.image)
        assert not r["colour"] and r["shape_place"]
    for c in inpaint_cases(24):
        r = read_inpaint(c, render_scene(c.target, 64))
        assert r["all"] and r["kept"] and r["outside_equal"] and r["psnr_outside"] == float("inf")
        assert np.isfinite(r["psnr_inside"]) and r["psnr_inside"] < 40
        r = read_inpaint(c, c.image)
        assert not r["all"] and r["kept"] and r["psnr_inside"] == float("inf")
    for c in inpaint_cases(8, prompt="single"):  # the model gets the new shape alone, read on the pair
        assert len(parse_prompt(c.prompt).objects) == 1 and len(parse_prompt(c.target_caption).objects) == 2
        assert read_inpaint(c, render_scene(c.target, 64))["all"]


# ----------------------------------------------------------------------------- a small sample of each path
@needs_builtin
def test_img2img_and_inpaint_scripts_on_the_builtin_model(tmp_path, scene, capsys):
    """Both scripts on the built-in model, a few steps: metadata (file and pixel sha256, strength,
    mode), grids init | (mask |) result, numbering that never overwrites, and blended inpainting
    keeping every pixel outside the mask."""
    from mind_diffusion.utils.images import read_png_parameters

    img, mask = scene
    out = tmp_path / "out"
    common = [*SHAPES_MODEL, "--output_path", out, "--ddim_steps", 2, "--seed", 3, "--mode", "pynative"]
    assert _img2img(*common, "--init_img", img, "--strength", 0.75, "--prompt", "一个蓝色的圆形在左边") == 0
    meta = read_png_parameters(out / "samples" / "00000.png")
    pixels = np.asarray(Image.open(img))
    assert meta["mode"] == "img2img" and meta["strength"] == 0.75 and meta["seed"] == 3 and meta["steps"] == 2
    assert meta["init_image_file_sha256"] == hashlib.sha256(img.read_bytes()).hexdigest()
    assert meta["init_image_sha256"] == hashlib.sha256(pixels.tobytes()).hexdigest()
    assert Image.open(out / "grids" / "00000.png").size == (2 * 64 + 3 * 2, 64 + 2 * 2)  # init | result
    capsys.readouterr()

    assert _inpaint(*common, "--img", img, "--mask", mask,
                    "--prompt", "一个红色的圆形在左边，一个蓝色的正方形在右边") == 0
    assert "blended latent diffusion" in capsys.readouterr().out
    meta = read_png_parameters(out / "samples" / "00001.png")  # after the img2img image, never over it
    assert meta["mode"] == "blend" and meta["strength"] == 1.0 and meta["mask_blur"] == 0
    assert meta["mask_file_sha256"] == hashlib.sha256(mask.read_bytes()).hexdigest()
    result = np.asarray(Image.open(out / "samples" / "00001.png"))
    keep = np.asarray(Image.open(mask)) == 0
    assert np.array_equal(result[keep], pixels[keep]) and not np.array_equal(result[~keep], pixels[~keep])
    grid = np.asarray(Image.open(out / "grids" / "00001.png"))
    assert grid.shape == (64 + 4, 3 * 64 + 4 * 2, 3)  # init | mask | result
    assert np.array_equal(grid[2:66, 68:132, 0], np.asarray(Image.open(mask)))


@pytest.mark.slow
@needs_builtin
def test_eval_editing_small_sample(tmp_path, capsys):
    """scripts/eval_editing.py on two cases of each kind (~60 s of CPU: slow)."""
    out = tmp_path / "eval"
    script = _script("eval_editing")
    args = ["--n_img2img", 2, "--n_inpaint", 2, "--strengths", 0.7, "--steps", 3, "--out", out,
            "--device_target", "CPU", "--mode", "pynative"]
    assert script.main([str(a) for a in args]) == 0
    table = (out / "editing.md").read_text(encoding="utf-8")
    assert "| 0.7 | 2 |" in table and "| blend | 2 |" in table and "∞ (identical)" in table
    import csv

    with open(out / "editing_inpaint.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and all(r["outside_equal"] == "True" and r["psnr_outside"] == "inf" for r in rows)
    assert Image.open(out / "editing_inpaint.png").size == (3 * 128 + 4 * 4, 2 * 128 + 3 * 4)
    captured_error(capsys, script.main([str(a) for a in args]), "already holds an editing run", "--overwrite")


@pytest.mark.slow
@needs_builtin
def test_eval_editing_resampling_and_reference(tmp_path):
    """--resample_steps reaches the pipeline (recorded in the settings, outside pixels exact);
    --txt2img_reference adds the rows of the prompts drawn without an init image."""
    out = tmp_path / "eval"
    args = ["--n_img2img", 0, "--n_inpaint", 2, "--steps", 2, "--resample_steps", 1, "--txt2img_reference",
            "--out", out, "--device_target", "CPU", "--mode", "pynative"]
    assert _script("eval_editing").main([str(a) for a in args]) == 0
    table = (out / "editing.md").read_text(encoding="utf-8")
    assert '"resample_steps": 1, "jump": 1' in table
    assert "| blend | 2 |" in table and "| txt2img reference | 2 |" in table
    import csv

    with open(out / "editing_inpaint.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["mode"] for r in rows] == ["blend", "blend", "txt2img reference", "txt2img reference"]
    assert all(r["outside_equal"] == "True" for r in rows[:2])
