"""The web page's library parts without a browser (and without gradio): model discovery,
the engine's checks (the pipelines' messages, nothing loaded, nothing written), the command line
it shows, and settings read back from suite and AUTOMATIC1111 PNGs."""
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from mind_diffusion.utils.images import save_png
from mind_diffusion.webui.engine import Engine
from mind_diffusion.webui.models import find_models
from mind_diffusion.webui.pnginfo import form_values

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ROOT / "models" / "shapes_zh"
DIGITS = ROOT / "models" / "ddpm_digits16"
PROMPT = "一个红色的圆形在左边"


@pytest.fixture
def models_dir(tmp_path):
    """shapes_zh (a link), a second LDM folder, the digits DDPM, a Wukong and an SD file (empty
    stand-ins: discovery reads names only), a GLIDE folder with the base stage only."""
    d = tmp_path / "models"
    d.mkdir()
    (d / "shapes_zh").symlink_to(SHAPES)
    (d / "ddpm_digits16").symlink_to(DIGITS)
    other = d / "other_zh"
    other.mkdir()
    for f in ("config.yaml", "vocab.txt"):
        shutil.copy(SHAPES / f, other / f)
    (other / "model.ckpt").symlink_to(SHAPES / "model.ckpt")
    (d / "wukong-huahua-ms.ckpt").write_bytes(b"")
    (d / "sd-v1-5-ms.ckpt").write_bytes(b"")
    (d / "glide").mkdir()
    (d / "glide" / "glide_gen.ckpt").write_bytes(b"")
    (d / "glide" / "cog-pretrain.model").write_bytes(b"")
    (d / "notes").mkdir()  # a folder without config.yaml is no model
    return d


def test_finds_every_kind_of_model(models_dir):
    found = find_models(models_dir, ROOT)
    ldm = [(m.label, m.config, m.ckpt) for m in found["ldm"]]
    assert ldm == [
        ("wukong-huahua-ms.ckpt (Wukong-Huahua)", ROOT / "configs/wukong/v1-inference-chinese.yaml",
         models_dir / "wukong-huahua-ms.ckpt"),
        ("sd-v1-5-ms.ckpt (Stable Diffusion v1.x)", ROOT / "configs/sd/v1-inference.yaml", models_dir / "sd-v1-5-ms.ckpt"),
        ("other_zh (shapes-zh)", models_dir / "other_zh/config.yaml", models_dir / "other_zh/model.ckpt"),
        ("shapes_zh (shapes-zh)", models_dir / "shapes_zh/config.yaml", models_dir / "shapes_zh/model.ckpt")]
    assert [(m.label, m.classes) for m in found["ddpm"]] == [("ddpm_digits16", tuple("0123456789"))]
    assert [(m.label, m.stages) for m in found["glide"]] == [("glide (Taichu-GLIDE)", (64,))]
    (models_dir / "glide" / "glide_super_res.ckpt").write_bytes(b"")
    (models_dir / "glide" / "srgan.ckpt").write_bytes(b"")
    assert find_models(models_dir, ROOT)["glide"][0].stages == (64, 256, 1024)
    assert find_models(models_dir / "missing", ROOT) == {"ldm": [], "glide": [], "ddpm": []}


def first_error(gen):
    with pytest.raises(Exception) as e:
        next(gen)
    return e.value


@pytest.mark.parametrize("change, needles", [
    ({"p": "  "}, ["the prompt is empty"]),
    ({"w": 70}, ["Width (--W) must be a positive multiple of 16", "got 70"]),
    ({"h": 8}, ["Height (--H) must be a positive multiple of 16"]),
    ({"st": 0}, ["sampling steps must be >= 1, got 0"]),
    ({"sc": -1.0}, ["CFG scale must be >= 0"]),
    ({"bs": 0}, ["batch size must be an integer >= 1, got 0"]),
    ({"sd": 2 ** 32}, ["seed must be at most 4294967295"]),
    ({"smp": "euler"}, ["unknown sampler 'euler'"]),
    ({"label": "nope"}, ["no model 'nope'", "shapes_zh (shapes-zh)"]),
])
def test_bad_input_is_one_readable_message_before_anything_loads(models_dir, tmp_path, change, needles):
    from mind_diffusion.cli import user_error_types
    from mind_diffusion.webui.engine import page_message

    eng = Engine(ROOT, models_dir, tmp_path / "out")
    args = {"label": "shapes_zh (shapes-zh)", "p": PROMPT, "n": "", "smp": "dpm_solver", "st": 20, "sc": 4.0,
            "sd": 42, "w": 64, "h": 64, "bc": 1, "bs": 1, **change}
    err = first_error(eng.txt2img(*args.values()))
    assert isinstance(err, user_error_types()), err
    msg = page_message(err)
    for n in needles:
        assert n in msg, msg
    assert eng.loaded is None and not (tmp_path / "out").exists()


def test_missing_checkpoint_names_the_file(models_dir, tmp_path):
    from mind_diffusion.webui.engine import page_message

    eng = Engine(ROOT, models_dir, tmp_path / "out")
    (models_dir / "other_zh" / "model.ckpt").unlink()  # removed after the page listed it
    err = first_error(eng.txt2img("other_zh (shapes-zh)", PROMPT, "", "dpm_solver", 20, 4.0, 42, 64, 64, 1, 1))
    assert "checkpoint not found" in page_message(err) and "other_zh/model.ckpt" in page_message(err)
    assert eng.loaded is None


def test_command_line_is_infer_sh_with_every_setting(models_dir, tmp_path):
    eng = Engine(ROOT, models_dir, tmp_path / "out", device_target="CPU")
    entry, _cfg, a, n_iter, n_samples = eng.check_txt2img(
        "shapes_zh (shapes-zh)", PROMPT, "模糊", "plms", 12, 3.5, 7, 64, 48, 2, 3)
    cmd = shlex.split(eng.txt2img_command(entry, a, n_iter, n_samples))
    assert cmd[:3] == ["bash", "infer.sh", PROMPT]
    flags = dict(zip(cmd[3::2], cmd[4::2]))
    assert flags == {"--config": "models/shapes_zh/config.yaml", "--ckpt_path": "models/shapes_zh",
                     "--ckpt_name": "model.ckpt", "--negative_prompt": "模糊", "--sampler": "plms",
                     "--ddim_steps": "12", "--scale": "3.5", "--seed": "7", "--H": "48", "--W": "64",
                     "--n_samples": "3", "--n_iter": "2", "--output_path": str(tmp_path / "out"),
                     "--device_target": "CPU"}
    # the txt2img parser reads it back to the same settings
    from scripts.txt2img import parse_args

    args = parse_args(cmd[3:] + ["--prompt", PROMPT])
    assert (args.sampler, args.ddim_steps, args.scale, args.seed, args.H, args.W, args.n_samples, args.n_iter) \
        == ("plms", 12, 3.5, 7, 48, 64, 3, 2)
    # a random seed (-1) is drawn once and shown
    _e, _c, a, _i, _s = eng.check_txt2img("shapes_zh (shapes-zh)", PROMPT, "", "plms", 12, 3.5, -1, 64, 48, 1, 1)
    assert 0 <= a["seed"] <= 2 ** 32 - 1


def test_png_info_reads_suite_and_a1111_pngs(tmp_path):
    img = np.zeros((8, 8, 3), np.uint8)
    ours = save_png(tmp_path / "ours.png", img, {
        "prompt": PROMPT, "negative_prompt": "模糊, 低质量", "model": "shapes-zh", "sampler": "plms", "steps": 12,
        "scale": 3.5, "seed": 7, "size": "64x48", "checkpoint": "model.ckpt", "checkpoint_sha256": "ab12"})
    v = form_values(ours)
    assert {k: v[k] for k in ("prompt", "negative_prompt", "sampler", "steps", "scale", "seed", "width", "height",
                              "checkpoint", "source")} == {
        "prompt": PROMPT, "negative_prompt": "模糊, 低质量", "sampler": "plms", "steps": 12, "scale": 3.5, "seed": 7,
        "width": 64, "height": 48, "checkpoint": "model.ckpt", "source": "mind_diffusion"}

    info = PngInfo()
    info.add_text("parameters", "a red fox, in the snow\nwinter\nNegative prompt: blurry, low quality\n"
                                "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 1234, "
                                "Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
                                "Lora hashes: \"a: 1, b: 2\", Version: v1.10.1")
    Image.fromarray(img).save(tmp_path / "a1111.png", pnginfo=info)
    v = form_values(tmp_path / "a1111.png")
    assert (v["prompt"], v["negative_prompt"], v["steps"], v["sampler"], v["scale"], v["seed"], v["width"],
            v["height"], v["checkpoint"], v["source"]) == (
        "a red fox, in the snow\nwinter", "blurry, low quality", 30, "dpm_solver", 6.5, 1234, 512, 768,
        "v1-5-pruned-emaonly", "A1111")

    info = PngInfo()
    info.add_text("parameters", "cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 512x512")
    Image.fromarray(img).save(tmp_path / "euler.png", pnginfo=info)
    v = form_values(tmp_path / "euler.png")
    assert v["sampler"] is None and "'Euler a' has no counterpart" in v["notes"][0]

    Image.fromarray(img).save(tmp_path / "bare.png")
    with pytest.raises(ValueError, match="carries no generation settings"):
        form_values(tmp_path / "bare.png")
    Image.fromarray(img).save(tmp_path / "x.jpg")
    with pytest.raises(ValueError, match="JPEG image, not a PNG"):
        form_values(tmp_path / "x.jpg")
    (tmp_path / "t.png").write_text("hello")
    with pytest.raises(ValueError, match="not an image"):
        form_values(tmp_path / "t.png")


class FakePipe:
    """Stands in for the loaded LDMPipeline: runs the callback per step, images of one grey
    level per seed."""

    def __init__(self, cfg):
        self.cfg, self.seeds = cfg, []

    def __call__(self, prompt, *, seed, num_images, height, width, num_inference_steps, callback, **kw):
        self.seeds.append(seed)
        for i in range(num_inference_steps):
            callback(i, 999 - i, None, None)
        from types import SimpleNamespace

        return SimpleNamespace(images=np.full((num_images, height, width, 3), seed, np.uint8))

    def settings(self, **kw):
        return dict(kw)


def test_batches_written_as_they_finish_progress_and_cancel(models_dir, tmp_path):
    from mind_diffusion.config import load_config
    from mind_diffusion.ldm.config import ldm_config_defaults
    from mind_diffusion.utils.images import read_png_parameters

    eng = Engine(ROOT, models_dir, tmp_path / "out", device_target="CPU")
    entry = eng.entry("ldm", "shapes_zh (shapes-zh)")
    fake = FakePipe(load_config(entry.config, (), ldm_config_defaults()))
    eng._pipe, eng._key = fake, entry.key  # the model is loaded: the engine keeps it
    seen = []
    runs = eng.txt2img(entry.label, PROMPT, "", "ddim", 4, 2.0, 10, 32, 16, 3, 2,
                       progress=lambda frac, text: seen.append((round(frac, 3), text)))
    first = next(runs)
    assert [p.name for p in first.paths] == ["00000.png", "00001.png"] and not first.done
    assert seen[-4:] == [(0.083, "sampling: step 1/12"), (0.167, "sampling: step 2/12"), (0.25, "sampling: step 3/12"),
                         (0.333, "sampling: step 4/12")]
    assert "--seed 10" in first.command and "--n_iter 3" in first.command
    eng.cancel()
    last = next(runs)
    assert last.done and last.status.startswith("cancelled: 2 image(s) written")
    assert fake.seeds == [10, 12] and eng.loaded == entry.key
    out = tmp_path / "out"
    assert [read_png_parameters(out / "samples" / n)["seed"] for n in ("00000.png", "00001.png")] == [10, 11]
    assert read_png_parameters(out / "grids" / "00000.png")["seeds"] == "10..11"
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["00000.png", "00001.png"]
    # the next request runs (the cancel is cleared) and numbers on: nothing is overwritten
    done = list(eng.txt2img(entry.label, PROMPT, "", "ddim", 2, 2.0, 20, 32, 16, 1, 1))
    assert done[-1].done and [p.name for p in done[-1].paths] == ["00002.png"]


def test_lora_files_listed_checked_and_in_the_command(models_dir, tmp_path):
    from mind_diffusion.webui.engine import page_message
    from mind_diffusion.webui.models import find_loras

    lora = models_dir / "lora"
    lora.mkdir()
    (lora / "broken.safetensors").write_text("not tensors")
    (lora / "readme.txt").write_text("")
    assert [p.name for p in find_loras(models_dir)] == ["broken.safetensors"]
    assert "lora (" not in " ".join(m.label for m in find_models(models_dir, ROOT)["ldm"])
    eng = Engine(ROOT, models_dir, tmp_path / "out", device_target="CPU")
    args = ("shapes_zh (shapes-zh)", PROMPT, "", "dpm_solver", 20, 4.0, 42, 64, 64, 1, 1)
    for loras, weight, needle in ((["broken.safetensors"], 1.0, "broken.safetensors"),
                                  (["gone.ckpt"], 1.0, "no LoRA file 'gone.ckpt'"),
                                  (["broken.safetensors"], float("nan"), "LoRA weight must be a finite number")):
        err = first_error(eng.txt2img(*args, loras=loras, lora_weight=weight))
        assert needle in page_message(err), page_message(err)
    assert eng.loaded is None
    entry, _cfg, a, n_iter, n_samples = eng.check_txt2img(*args)
    cmd = shlex.split(eng.txt2img_command(entry, a, n_iter, n_samples, [(lora / "style.ckpt", 0.8)]))
    assert cmd[cmd.index("--lora") + 1] == f"{lora / 'style.ckpt'}:0.8"


# ---------------------------------------------------------------------------- image editing
def scene(tmp_path, size=(48, 64)):
    """A shapes-world scene (a red disc on the left, grey ground) and a mask of its right half."""
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    img = np.full((h, w, 3), 235, np.uint8)
    img[(yy - h // 2) ** 2 + (xx - w // 4) ** 2 < (h // 4) ** 2] = (220, 30, 30)
    img[h - 6:] = 128
    Image.fromarray(img).save(tmp_path / "scene.png")
    mask = np.zeros((h, w), np.uint8)
    mask[:, w // 2:] = 255
    return tmp_path / "scene.png", mask


@pytest.mark.slow  # about 100 s on 2 busy cores (the built-in model, 4 runs)
@pytest.mark.parametrize("task", ["img2img", "inpaint"])
def test_edit_equals_the_script_of_its_command_line(models_dir, tmp_path, task):
    """img2img and inpainting (drawn mask, blended: the note says so) through the engine, then the
    command line it shows run by the script: the same pixels, the same metadata."""
    from mind_diffusion.utils.images import read_png_parameters

    init, mask = scene(tmp_path)
    out = tmp_path / "out"
    eng = Engine(ROOT, models_dir, out, device_target="CPU", mode="pynative")
    ups = list(eng.edit("shapes_zh (shapes-zh)", task, str(init), None, mask if task == "inpaint" else None,
                        "一个蓝色的正方形在右边", "", "ddim", 4, 3.0, 5, 64, 64, 1, 2,
                        0.7 if task == "img2img" else 1.0, "auto", 2 if task == "inpaint" else 0, "resize"))
    u = ups[-1]
    assert u.done and [p.name for p in u.paths] == ["00000.png", "00001.png"]
    assert sorted(p.name for p in (out / "inputs").iterdir()) == \
        (["00000-init.png"] if task == "img2img" else ["00000-init.png", "00000-mask.png"])
    assert any("stretched to 64x64" in n for n in u.warnings)
    assert any("blended latent diffusion" in n for n in u.warnings) == (task == "inpaint")
    cmd = shlex.split(u.command)
    assert cmd[:2] == ["python", f"scripts/{task}.py"]
    flags = dict(zip(cmd[2::2], cmd[3::2]))
    if task == "inpaint":
        assert flags["--img"] == str(out / "inputs" / "00000-init.png")
        assert flags["--mask"] == str(out / "inputs" / "00000-mask.png")
        assert (flags["--inpaint_mode"], flags["--mask_blur"], flags["--strength"]) == ("auto", "2", "1")
        assert np.array_equal(np.asarray(Image.open(out / "inputs" / "00000-mask.png")), mask)
    else:
        assert (flags["--init_img"], flags["--strength"]) == (str(out / "inputs" / "00000-init.png"), "0.7")
    ref = tmp_path / "ref"
    script = __import__(f"scripts.{task}", fromlist=["main"])
    assert script.main(cmd[2:] + ["--output_path", str(ref)]) in (0, None)
    for folder in ("samples", "grids"):
        mine, theirs = sorted((out / folder).glob("*.png")), sorted((ref / folder).glob("*.png"))
        assert [p.name for p in mine] == [p.name for p in theirs] and mine
        for a, b in zip(mine, theirs):
            assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b))), a
            assert read_png_parameters(a) == read_png_parameters(b)
    meta = read_png_parameters(out / "samples" / "00001.png")
    assert meta["seed"] == 6 and meta["strength"] == (0.7 if task == "img2img" else 1.0)
    assert meta["init_image_file"] == "00000-init.png" and len(meta["init_image_sha256"]) == 64
    if task == "inpaint":
        assert meta["mode"] == "blend" and meta["mask_blur"] == 2 and len(meta["mask_file_sha256"]) == 64
    grid = np.asarray(Image.open(out / "grids" / "00000.png"))
    assert grid.shape[1] == (4 if task == "inpaint" else 3) * 66 + 2  # init | mask | 2 results


@pytest.mark.parametrize("change, needles", [
    ({"init": None}, ["no init image"]),
    ({"drawn": np.zeros((48, 64), np.uint8)}, ["the mask is empty"]),
    ({"drawn": None}, ["the mask is empty"]),
    ({"drawn": np.full((48, 64), 255, np.uint8)}, ["white everywhere"]),
    ({"strength": 0.0}, ["Strength must be in (0, 1]"]),
    ({"strength": 1.5}, ["Strength must be in (0, 1]"]),
    ({"w": 70}, ["Width (--W) must be a positive multiple of 16"]),
    ({"mode": "model"}, ["--inpaint_mode model needs an inpainting model"]),
    ({"blur": -1}, ["mask blur must be an integer >= 0"]),
    ({"task": "img2img", "aug": "crop"}, ["--aug crop places its window around the mask"]),
    ({"mask": "MASK64"}, ["is 64x64 but the init image", "same size"]),
    ({"init": "TEXT"}, ["is not an image PIL can read", "the Init image field"]),
])
def test_edit_bad_input_is_one_readable_message_before_anything_is_written(models_dir, tmp_path, change, needles):
    from mind_diffusion.cli import user_error_types
    from mind_diffusion.webui.engine import page_message

    init, _ = scene(tmp_path)
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(tmp_path / "m64.png")
    (tmp_path / "t.png").write_text("hello")
    drawn = np.zeros((48, 64), np.uint8)
    drawn[10:20, 40:60] = 255
    args = {"task": "inpaint", "init": str(init), "mask": None, "drawn": drawn, "strength": 1.0, "mode": "auto",
            "blur": 0, "aug": "resize", "w": 64, **change}
    args["mask"] = {"MASK64": str(tmp_path / "m64.png")}.get(args["mask"], args["mask"])
    args["init"] = {"TEXT": str(tmp_path / "t.png")}.get(args["init"], args["init"])
    eng = Engine(ROOT, models_dir, tmp_path / "out")
    err = first_error(eng.edit("shapes_zh (shapes-zh)", args["task"], args["init"], args["mask"], args["drawn"],
                               PROMPT, "", "ddim", 4, 3.0, 5, args["w"], 64, 1, 1, args["strength"], args["mode"],
                               args["blur"], args["aug"]))
    assert isinstance(err, user_error_types()), err
    msg = page_message(err)
    for n in needles:
        assert n in msg, msg
    assert eng.loaded is None and not (tmp_path / "out").exists()


class FakeEditPipe(FakePipe):
    """Stands in for the loaded LDMPipeline in editing: records each call's arguments, images
    from them (seed, strength, the image's and mask's pixels), the editing settings."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.calls = []

    def _edit(self, task, prompt, image, mask=None, **kw):
        from types import SimpleNamespace

        cb = kw.pop("callback", None)
        kw.pop("progress", None)
        self.calls.append((task, prompt, image.copy(), None if mask is None else mask.copy(), kw))
        for i in range(kw["num_inference_steps"]):
            if cb is not None:
                cb(i, 999 - i, None, None)
        level = (kw["seed"] * 7 + int(kw["strength"] * 100) + int(image.sum()) + int(0 if mask is None else mask.sum()))
        imgs = np.stack([(image.astype(np.int64) + level + k) % 256 for k in range(kw["num_images_per_prompt"])])
        settings = {"mode": kw.get("mode", "img2img"), "strength": kw["strength"], "start_step": 1,
                    "init_image_sha256": str(int(image.sum()))}
        if mask is not None:
            settings.update(mask_blur=kw["mask_blur"], mask_sha256=str(int(mask.sum())))
        return SimpleNamespace(images=imgs.astype(np.uint8), settings=settings)

    def img2img(self, prompt, image, **kw):
        return self._edit("img2img", prompt, image, **kw)

    def inpaint(self, prompt, image, mask, **kw):
        return self._edit("inpaint", prompt, image, mask, **kw)


@pytest.mark.parametrize("task", ["img2img", "inpaint"])
def test_edit_makes_the_scripts_pipeline_call_and_files(models_dir, tmp_path, monkeypatch, task):
    """With a stand-in pipeline (fast): the engine's edit and the script run with the command line
    it shows make the same pipeline call (image, mask, every setting) and write the same files
    (pixels, metadata, grid with init | mask); progress per step; the drawn mask is kept as a file."""
    from mind_diffusion.config import load_config
    from mind_diffusion.ldm.config import ldm_config_defaults
    from mind_diffusion.ldm.pipeline import LDMPipeline
    from mind_diffusion.utils.images import read_png_parameters

    init, mask = scene(tmp_path)
    out = tmp_path / "out"
    eng = Engine(ROOT, models_dir, out, device_target="CPU")
    entry = eng.entry("ldm", "shapes_zh (shapes-zh)")
    fake = FakeEditPipe(load_config(entry.config, (), ldm_config_defaults()))
    eng._pipe, eng._key = fake, entry.key
    seen = []
    ups = list(eng.edit(entry.label, task, str(init), None, mask if task == "inpaint" else None, PROMPT, "模糊",
                        "plms", 3, 2.5, 11, 64, 32, 2, 2, 0.6, "blend", 3 if task == "inpaint" else 0, "cover",
                        progress=lambda frac, text: seen.append(text)))
    assert [u.done for u in ups] == [False, True] and len(ups[-1].paths) == 4
    assert seen[-1] == "sampling: step 6/6"
    cmd = shlex.split(ups[-1].command)
    flags = dict(zip(cmd[4::2], cmd[5::2]))
    assert cmd[:4] == ["python", f"scripts/{task}.py", "--prompt", PROMPT]
    want = {"--config": "models/shapes_zh/config.yaml", "--ckpt_path": "models/shapes_zh", "--ckpt_name": "model.ckpt",
            "--negative_prompt": "模糊", "--sampler": "plms", "--ddim_steps": "3", "--scale": "2.5", "--seed": "11",
            "--H": "32", "--W": "64", "--n_samples": "2", "--n_iter": "2", "--strength": "0.6", "--aug": "cover",
            "--output_path": str(out), "--device_target": "CPU"}
    if task == "inpaint":
        want.update({"--img": str(out / "inputs/00000-init.png"), "--mask": str(out / "inputs/00000-mask.png"),
                     "--inpaint_mode": "blend", "--mask_blur": "3"})
    else:
        want["--init_img"] = str(out / "inputs/00000-init.png")
    assert flags == want
    ref = tmp_path / "ref"
    script = __import__(f"scripts.{task}", fromlist=["main"])
    monkeypatch.setattr(LDMPipeline, "from_pretrained", classmethod(lambda cls, *a, **k: theirs))
    theirs = FakeEditPipe(fake.cfg)
    assert script.main(cmd[2:] + ["--output_path", str(ref)]) in (0, None)
    assert len(fake.calls) == len(theirs.calls) == 2
    for (t1, p1, i1, m1, k1), (t2, p2, i2, m2, k2) in zip(fake.calls, theirs.calls):
        assert (t1, p1) == (t2, p2) == (task, PROMPT) and np.array_equal(i1, i2) and i1.shape == (32, 64, 3)
        assert (m1 is None and m2 is None) or np.array_equal(m1, m2)
        assert k1 == {k: v for k, v in k2.items() if k != "encode"} and k2.get("encode", "mean") == "mean", (k1, k2)
    for folder in ("samples", "grids"):
        mine, refs = sorted((out / folder).glob("*.png")), sorted((ref / folder).glob("*.png"))
        assert [p.name for p in mine] == [p.name for p in refs] and mine
        for a, b in zip(mine, refs):
            assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b))), a
            assert read_png_parameters(a) == read_png_parameters(b)
    meta = read_png_parameters(out / "samples" / "00003.png")
    assert (meta["seed"], meta["strength"], meta["aug"], meta["init_image_file"]) == (14, 0.6, "cover", "00000-init.png")
    assert meta["init_image_file_size"] == "64x48" and len(meta["init_image_file_sha256"]) == 64
    if task == "inpaint":
        assert (meta["mode"], meta["mask_blur"], meta["mask_file"]) == ("blend", 3, "00000-mask.png")
    assert np.asarray(Image.open(out / "grids/00000.png")).shape[1] == (4 if task == "inpaint" else 3) * 66 + 2
