"""The sampling memory guard: the LDM peak-memory estimate against the measured table
(bench/results/sampling_memory.csv), txt2img refusing a size / batch that cannot fit before
the model loads, and GLIDE's chunked calls giving the same images as one call."""
import sys
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import check_one_line_error, run_script

ROOT = Path(__file__).resolve().parents[1]
SHAPES_CFG = ROOT / "models" / "shapes_zh" / "config.yaml"
# bench/sampling_memory.py on the 2-core CPU (fresh process, graph mode, 1 step): kind, side
# (H = W), batch, peak RSS bytes; the fit in mind_diffusion/utils/resources.py came from these
MEASURED_TABLE = [
    ("decode", 64, 1, 912535552),
    ("decode", 64, 2, 921526272),
    ("decode", 64, 4, 959258624),
    ("decode", 128, 1, 965996544),
    ("decode", 128, 2, 1007075328),
    ("decode", 128, 4, 1103605760),
    ("decode", 192, 1, 1047879680),
    ("decode", 192, 2, 1150590976),
    ("decode", 192, 4, 1374547968),
    ("latent", 64, 1, 888225792),
    ("latent", 64, 2, 901713920),
    ("latent", 64, 4, 934051840),
    ("latent", 128, 1, 931872768),
    ("latent", 128, 2, 975691776),
    ("latent", 128, 4, 1073913856),
    ("latent", 192, 1, 1009262592),
    ("latent", 192, 2, 1112174592),
    ("latent", 192, 4, 1335095296),
]


def shapes_model_cfg():
    from mind_diffusion.config import read_yaml

    return read_yaml(SHAPES_CFG).model


def test_estimate_matches_the_measured_table_and_is_monotonic():
    from mind_diffusion.utils.resources import MEASURED, ldm_peak_bytes

    m = shapes_model_cfg()
    for kind, side, batch, peak in MEASURED_TABLE:
        if kind == "decode":
            est = ldm_peak_bytes(m, batch, side, side)
            assert abs(est - peak) <= MEASURED["max_err"], (side, batch, est - peak)
    # the coefficients are the least-squares fits of the table (latent rows: the UNet part)
    for kind, slope in (("latent", MEASURED["unet_per_px"]),
                        ("decode", MEASURED["unet_per_px"] + MEASURED["vae_per_px"])):
        rows = [(b * h * h, p) for k, h, b, p in MEASURED_TABLE if k == kind]
        A = np.array([[1.0, x] for x, _ in rows])
        (b0, a), *_ = np.linalg.lstsq(A, np.array([p for _, p in rows], float), rcond=None)
        assert a == pytest.approx(slope, abs=1e-3)
        if kind == "decode":
            assert b0 == pytest.approx(MEASURED["base"], abs=1.0)
    base = ldm_peak_bytes(m, 1, 64, 64)
    assert ldm_peak_bytes(m, 2, 64, 64) > base and ldm_peak_bytes(m, 1, 128, 64) > base
    assert ldm_peak_bytes(m, 1, 64, 128) == ldm_peak_bytes(m, 1, 128, 64)
    # closed form: linear in batch x H x W
    d1 = ldm_peak_bytes(m, 3, 64, 64) - ldm_peak_bytes(m, 1, 64, 64)
    d2 = ldm_peak_bytes(m, 1, 192, 64) - ldm_peak_bytes(m, 1, 64, 64)
    assert d1 == pytest.approx(d2, rel=1e-12)


def test_scaling_to_a_bigger_model():
    """UNet part x width ratio x (VAE factor ratio)^2, VAE part x VAE width ratio, plus twice
    the extra checkpoint bytes."""
    from mind_diffusion.config import read_yaml
    from mind_diffusion.utils.resources import MEASURED, ldm_per_pixel, ldm_peak_bytes

    wk = read_yaml(ROOT / "configs" / "wukong" / "v1-inference-chinese.yaml").model
    expect = MEASURED["unet_per_px"] * 320 / 64 * (4 / 8) ** 2 + MEASURED["vae_per_px"] * 128 / 16
    assert ldm_per_pixel(wk) == pytest.approx(expect)
    ck = MEASURED["model"]["ckpt_bytes"] + 10**9
    assert ldm_peak_bytes(wk, 1, 512, 512, ck) == pytest.approx(
        MEASURED["base"] + 2e9 + expect * 512 * 512)


def test_check_memory_message_and_largest_fit():
    from mind_diffusion.utils.resources import HEADROOM, ldm_largest, ldm_memory_check, ldm_peak_bytes

    m = shapes_model_cfg()
    free = 4 * 2**30
    n, side = ldm_largest(m, HEADROOM * free, 1, 8192, 8192, 16)
    assert side % 16 == 0 and ldm_peak_bytes(m, 1, side, side) <= HEADROOM * free
    assert ldm_peak_bytes(m, 1, side + 16, side + 16) > HEADROOM * free and n == 0
    with pytest.raises(ValueError) as e:
        ldm_memory_check(m, 1, 8192, 8192, "CPU", 16, free=free)
    msg = str(e.value)
    assert "\n" not in msg and "4.0 GB is free" in msg and f"{side}x{side} at --n_samples 1" in msg
    assert "--force_memory" in msg and f"the largest that fits is {side}x{side}" in msg
    # what fits passes; GPU / Ascend are not checked (device memory is not readable here)
    assert ldm_memory_check(m, 1, side, side, "CPU", 16, free=free) <= HEADROOM * free
    assert ldm_memory_check(m, 1, 8192, 8192, "GPU", 16, free=free) is None


@pytest.mark.parametrize("extra, needles", [
    (["--H", 8192, "--W", 8192], ["1 image(s) of 8192x8192", "the largest that fits is ", "x", " at --n_samples 1,"]),
    (["--n_samples", 10**7], ["10000000 image(s) of 64x64", "the largest that fits is --n_samples ", "--n_iter"]),
])
def test_txt2img_refuses_what_cannot_fit_before_loading(tmp_path, extra, needles):
    from mind_diffusion.utils.resources import free_memory_bytes, ldm_peak_bytes

    est = ldm_peak_bytes(shapes_model_cfg(), *((1, 8192, 8192) if "--H" in extra else (10**7, 64, 64)))
    if (free_memory_bytes() or 0) > est:
        pytest.skip("this machine has room for it")
    p = run_script("scripts/txt2img.py", "--device_target", "CPU", "--output_path", tmp_path / "o",
                   "--prompt", "一个红色的圆形在左边", *extra, timeout=120)
    err = check_one_line_error(p.returncode, p.stderr, "--force_memory", "GB is free", *needles)
    assert "loaded" not in p.stdout, p.stdout  # refused before the checkpoint was read
    assert "(estimate)" in err


GLIDE_RUN = """
import runpy, sys
import mind_diffusion.utils.resources as r
r.IMAGES_PER_CALL = int(sys.argv[1])
sys.argv = ["glide_txt2img.py"] + sys.argv[2:]
runpy.run_path("scripts/glide_txt2img.py", run_name="__main__")
"""


def test_glide_in_chunks_gives_the_images_of_one_call(tmp_path):
    """The script with 2 images per call writes 3 images (calls of 2 + 1: seeds 5, 6 | 7)
    that equal one in-process pipeline call of 3, with the seeds and indices of one call."""
    import subprocess

    from PIL import Image

    from glide_tiny import make_tiny_glide_dir
    from mind_diffusion.glide.pipeline import GlidePipeline
    from mind_diffusion.utils.images import read_png_parameters
    from mind_diffusion.utils.resources import chunks

    assert chunks(3, 2) == [(0, 2), (2, 1)] and chunks(8, 8) == [(0, 8)] and chunks(0, 8) == []
    tiny = make_tiny_glide_dir(tmp_path / "tiny")
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-c", GLIDE_RUN, "2", "--config", str(tiny / "glide-tiny.yaml"),
                        "--ckpt_path", str(tiny), "--output_path", str(out), "--device_target", "CPU",
                        "--prompt", "一只可爱的猫", "--pics_generated", "3", "--denoise_steps", "2",
                        "--seed", "5", "--stages", "64", "--mode", "pynative"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("stage 64: wrote") == 2, p.stdout  # two calls, each written at once
    pipe = GlidePipeline.from_pretrained(tiny / "glide-tiny.yaml", tiny / "glide_gen.ckpt",
                                         tokenizer=tiny / "cog-pretrain.model", stages=64)
    ref = pipe("一只可爱的猫", num_images_per_prompt=3, num_inference_steps=2, seed=5, progress=False)[64]
    names = sorted(f.name for f in (out / "samples").iterdir())
    assert names == [f"{k:05d}-一只可爱的猫-16.png" for k in range(3)], names
    for k, n in enumerate(names):
        f = out / "samples" / n
        assert np.array_equal(np.asarray(Image.open(f)), ref[k]), n
        meta = read_png_parameters(f)
        assert (meta["seed"], meta["image"], meta["pics_generated"]) == (5 + k, k, 3)
    strips = sorted((out / "strips").iterdir())  # one per call
    assert [read_png_parameters(f)["seeds"] for f in strips] == ["5..6", "7..7"]
