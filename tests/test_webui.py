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
