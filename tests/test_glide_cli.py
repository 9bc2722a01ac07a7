"""scripts/glide_txt2img.py end to end on tiny random checkpoints (official layout) and a tiny
SentencePiece model: files, metadata, never-overwriting names, regenerating one image, only the
requested stages' checkpoints needed, and one-line errors for bad input."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import one_line_error, run_script
from glide_tiny import make_tiny_glide_dir

ROOT = Path(__file__).resolve().parents[1]
WEIRD = "猫/狗: 一只可爱的猫坐在草地上 * ? <一张画着柯基的油画> | \"一只可爱的猫\" ..\\"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_glide_dir(tmp_path_factory.mktemp("glide_cli"))


def run(*args, timeout=600):
    return run_script("glide_txt2img.py", *args, timeout=timeout)


def tiny_args(tiny_dir, out, *extra):
    return ["--config", tiny_dir / "glide-tiny.yaml", "--ckpt_path", tiny_dir, "--output_path", out,
            "--device_target", "CPU", *extra]


def test_cli_writes_every_stage_with_metadata_and_never_overwrites(tiny_dir, tmp_path):
    from PIL import Image

    from mind_diffusion.checkpoint.io import file_sha256
    from mind_diffusion.utils.images import read_png_parameters

    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"一张画着柯基的油画\n\n   \n{WEIRD}\n", encoding="utf-8")
    out = tmp_path / "new" / "nested" / "out"  # created
    p = run(*tiny_args(tiny_dir, out, "--prompts_file", prompts, "--pics_generated", 2,
                       "--denoise_steps", 2, "--seed", 5, "--stages", 1024))
    assert p.returncode == 0, p.stderr[-3000:]
    # one warning for the long prompt (not one per image)
    assert len(re.findall(r"warning: prompt has \d+ tokens; only the first 16 are used", p.stderr)) == 1, p.stderr
    names = sorted(f.name for f in (out / "samples").iterdir())
    assert len(names) == 12, names  # 2 prompts x 2 images x 3 stages
    pat = re.compile(r"^(\d{5})-([\w\-]+)-(16|32|128)\.png$")
    assert all(pat.match(n) for n in names), names
    assert {pat.match(n).group(1) for n in names} == {"00000", "00001", "00002", "00003"}
    first = out / "samples" / "00001-一张画着柯基的油画-128.png"
    meta = read_png_parameters(first)
    assert meta["prompt"] == "一张画着柯基的油画" and meta["seed"] == 6 and meta["image"] == 1
    assert meta["stage"] == 1024 and meta["size"] == "128x128" and meta["denoise_steps"] == 2
    assert meta["super_res_step"] == 27 and meta["guidance_scale"] == 5.0 and meta["uncond"] == "random"
    assert meta["super_res_strength"] == 1.0  # the original's start, from noise
    assert meta["pics_generated"] == 2 and meta["is_chinese"] is True and meta["device"] == "CPU"
    for kind, f in (("base", "glide_gen.ckpt"), ("sr", "glide_super_res.ckpt"), ("srgan", "srgan.ckpt")):
        assert meta[f"{kind}_checkpoint"] == f
        assert meta[f"{kind}_checkpoint_sha256"] == file_sha256(tiny_dir / f)
    assert meta["tokenizer_sha256"] == file_sha256(tiny_dir / "cog-pretrain.model")
    weird = [n for n in names if n.startswith("00003-")]
    assert read_png_parameters(out / "samples" / weird[0])["prompt"] == WEIRD
    assert Image.open(first).size == (128, 128)
    strips = sorted((out / "strips").iterdir())
    assert len(strips) == 6 and Image.open(strips[0]).size in {(32, 16), (64, 32), (256, 128)}
    assert json.loads((out / "infer_result.json").read_text()) == {"infer_result": "success"}
    img1 = np.asarray(Image.open(out / "samples" / "00001-一张画着柯基的油画-16.png")).astype(int)
    before = {n: (out / "samples" / n).read_bytes() for n in names}

    # regenerate image 1 alone (seed 6) at 64 px: the SR / SRGAN files are not needed for it
    p = run(*tiny_args(tiny_dir, out, "--prompt", "一张画着柯基的油画", "--pics_generated", 1,
                       "--denoise_steps", 2, "--seed", 6, "--stages", 64, "--is_chinese", "TRUE",
                       "--super_ckpt", "missing.ckpt", "--srgan_ckpt", "missing.ckpt", "--mode", "pynative"))
    assert p.returncode == 0, p.stderr[-3000:]
    new = out / "samples" / "00004-一张画着柯基的油画-16.png"
    assert new.is_file() and len(list((out / "samples").iterdir())) == 13
    assert {n: (out / "samples" / n).read_bytes() for n in names} == before
    assert np.abs(np.asarray(Image.open(new)).astype(int) - img1).max() <= 1
    meta = read_png_parameters(new)
    assert meta["seed"] == 6 and "sr_checkpoint" not in meta and "super_res_step" not in meta


@pytest.mark.parametrize("extra, needles", [
    (["--tokenizer_model", "nope.model"], ["tokenizer model not found", "nope.model", "cog-pretrain.model"]),
    (["--gen_ckpt", "missing.ckpt"], ["base model checkpoint not found", "missing.ckpt", "glide_gen.ckpt"]),
    (["--srgan_ckpt", "none.ckpt"], ["SRGAN x4 model checkpoint not found", "none.ckpt"]),
    (["--prompts_file", "/nonexistent/p.txt"], ["prompts file not found", "/nonexistent/p.txt"]),
    (["--prompts_file", "GBK"], ["is not UTF-8"]),
    (["--prompts_file", "BLANK"], ["has no prompts"]),
    (["--super_res_step", 26], ["--super_res_step must be 27", "fast27"]),
    (["--super_res_strength", 1.5], ["super_res_strength must be a number in (0, 1]"]),
    (["--output_path", "FILE"], ["exists and is not a folder"]),
])
def test_bad_input_one_line_errors(tiny_dir, tmp_path, extra, needles):
    out = tmp_path / "out"
    (out / "samples").mkdir(parents=True)
    keep = out / "samples" / "00000-keep-16.png"
    keep.write_bytes(b"keep me")
    (tmp_path / "gbk.txt").write_bytes("一只可爱的猫".encode("gbk"))
    (tmp_path / "blank.txt").write_text("\n   \n\t\n", encoding="utf-8")
    (tmp_path / "file").write_text("x")
    subst = {"GBK": tmp_path / "gbk.txt", "BLANK": tmp_path / "blank.txt", "FILE": tmp_path / "file"}
    extra = [subst.get(e, e) if isinstance(e, str) else e for e in extra]
    args = tiny_args(tiny_dir, out, "--prompt", "一只可爱的猫", "--denoise_steps", 2)
    if "--prompts_file" in extra:
        args = [a for a in args if a not in ("--prompt", "一只可爱的猫")]
    one_line_error(run(*args, *extra, timeout=300), *needles)
    assert keep.read_bytes() == b"keep me"


def test_is_chinese_is_parsed_strictly(tiny_dir, tmp_path):
    p = run(*tiny_args(tiny_dir, tmp_path / "o", "--prompt", "猫", "--is_chinese", "maybe"), timeout=120)
    assert p.returncode == 2 and "expected true or false, got 'maybe'" in p.stderr
    # false selects the English GPT-2 BPE tokenizer, whose files are looked up in --ckpt_path
    p = run(*tiny_args(tiny_dir, tmp_path / "o", "--prompt", "a cat", "--is_chinese", "false"), timeout=300)
    one_line_error(p, "gpt2-bpe", "encoder.json")


def test_base_stage_sampler_and_negative_prompt_flags(tiny_dir, tmp_path):
    """--sampler dpm_solver for the base stage and --negative_prompt, through the shared flag
    names (--num_inference_steps, --num_images_per_prompt); both are recorded in the PNGs."""
    from mind_diffusion.utils.images import read_png_parameters

    out = tmp_path / "o"
    p = run(*tiny_args(tiny_dir, out, "--prompt", "一张画着柯基的油画", "--num_images_per_prompt", 1,
                       "--num_inference_steps", 3, "--sampler", "dpm_solver",
                       "--negative_prompt", "城市夜景", "--stages", 64, "--skip_strip"))
    assert p.returncode == 0, p.stderr[-3000:]
    (png,) = sorted((out / "samples").iterdir())
    meta = read_png_parameters(png)
    assert meta["sampler"] == "dpm_solver" and meta["negative_prompt"] == "城市夜景"
    assert meta["denoise_steps"] == 3 and meta["pics_generated"] == 1
    one_line_error(run(*tiny_args(tiny_dir, tmp_path / "o2", "--prompt", "猫", "--sampler", "euler",
                                  "--stages", 64)), "unknown sampler", "euler")
