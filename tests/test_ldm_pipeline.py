"""The text-to-image pipeline on a tiny random Wukong-shaped model: guidance against closed
form, graph == pynative, seeds, negative prompts, prompt warnings, bad input."""
import warnings

import numpy as np
import pytest

from ldm_tiny import make_tiny_model_dir


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, request):
    from conftest import SHARED

    if not SHARED.is_dir():
        pytest.skip(f"../shared not found at {SHARED} (the vocab lives there in CI)")
    folder = tmp_path_factory.mktemp("tiny_ldm")
    return make_tiny_model_dir(folder, SHARED)


def make_pipe(tiny_dir, **kw):
    from mind_diffusion.ldm.pipeline import LDMPipeline

    cfg, ckpt = tiny_dir
    return LDMPipeline.from_pretrained(cfg, ckpt, **kw)


def test_guided_step_matches_closed_form(tiny_dir, ms_mode):
    """One compiled guided step == numpy uncond + s (cond - uncond) from two plain UNet calls."""
    from mindspore import Tensor

    pipe = make_pipe(tiny_dir)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    t = np.array([999.0, 532.6], np.float32)
    cond = pipe.encode_text(["狗 绘画 写实风格", "城市夜景 赛博朋克"])
    uncond = pipe.encode_text(["", ""])
    unet = pipe.model.model.diffusion_model
    e_c = unet(Tensor(x), Tensor(t), Tensor(cond)).asnumpy()
    e_u = unet(Tensor(x), Tensor(t), Tensor(uncond)).asnumpy()
    scale = 7.5
    guided = pipe.model_fn(np.concatenate([uncond, cond]), scale)(x, t)
    np.testing.assert_allclose(guided, e_u + scale * (e_c - e_u), atol=1e-4, rtol=1e-4)
    assert np.abs(e_c - e_u).max() > 1e-3  # the prompt really conditions the tiny model
    plain = pipe.model_fn(cond, 1.0)(x, t)
    np.testing.assert_allclose(plain, e_c, atol=1e-5)


@pytest.mark.parametrize("sampler", ["dpm_solver", "plms"])
def test_graph_and_pynative_give_the_same_image(tiny_dir, sampler):
    import mindspore as ms

    outs = {}
    for mode in (ms.GRAPH_MODE, ms.PYNATIVE_MODE):
        ms.set_context(mode=mode)
        pipe = make_pipe(tiny_dir)
        outs[mode] = pipe("狗 绘画 写实风格", num_images=1, num_inference_steps=3, sampler=sampler,
                          seed=7, progress=False, output_type="np").images
    ms.set_context(mode=ms.PYNATIVE_MODE)
    np.testing.assert_allclose(outs[ms.GRAPH_MODE], outs[ms.PYNATIVE_MODE], atol=1e-4)
    assert outs[ms.GRAPH_MODE].shape == (1, 3, 64, 64)


def test_seeds_per_image_and_negative_prompt(tiny_dir):
    pipe = make_pipe(tiny_dir)
    kw = dict(num_inference_steps=2, sampler="ddim", progress=False, output_type="latent")
    both = pipe("猫 插画风格", num_images=2, seed=10, **kw).images
    second = pipe("猫 插画风格", num_images=1, seed=11, **kw).images
    # image k uses seed + k (batch 2 vs batch 1 differ only by float summation order)
    np.testing.assert_allclose(both[1:], second, atol=1e-3, rtol=1e-3)
    assert np.abs(both[0] - both[1]).max() > 1e-3
    neg = pipe("猫 插画风格", num_images=1, seed=11, negative_prompt="模糊", **kw).images
    assert np.abs(neg - second).max() > 1e-4
    again = pipe("猫 插画风格", num_images=1, seed=11, negative_prompt="模糊", **kw).images
    np.testing.assert_array_equal(neg, again)


def test_context_is_negative_prompt_first(tiny_dir, monkeypatch):
    pipe = make_pipe(tiny_dir)
    seen = {}
    original = pipe.model_fn

    def spy(context, scale):
        seen["context"], seen["scale"] = context, scale
        return original(context, scale)

    monkeypatch.setattr(pipe, "model_fn", spy)
    pipe("狗", num_images=1, num_inference_steps=1, sampler="ddim", negative_prompt="模糊",
         progress=False, output_type="latent", guidance_scale=3.0)
    np.testing.assert_allclose(seen["context"][0], pipe.encode_text(["模糊"])[0], atol=1e-6)
    np.testing.assert_allclose(seen["context"][1], pipe.encode_text(["狗"])[0], atol=1e-6)
    pipe("狗", num_images=1, num_inference_steps=1, sampler="ddim", progress=False,
         output_type="latent", guidance_scale=1.0)
    assert seen["context"].shape[0] == 1  # scale 1: no unconditional branch


def test_truncation_and_unknown_chars_warn(tiny_dir):
    from mind_diffusion.ldm.pipeline import PromptWarning

    pipe = make_pipe(tiny_dir)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ids = pipe.tokenize(["猫" * 100, "😀 狗"])
    msgs = [str(w.message) for w in rec if issubclass(w.category, PromptWarning)]
    assert any("100 tokens" in m for m in msgs), msgs
    assert any("[UNK]" in m for m in msgs), msgs
    assert ids.shape == (2, 77) and ids[0, 76] == 102


@pytest.mark.parametrize("kwargs, needle", [
    (dict(prompt="   "), "prompt is empty"),
    (dict(height=100), "positive multiple of 16"),
    (dict(width=0), "positive multiple of 16"),
    (dict(num_inference_steps=0), "steps must be an integer >= 1"),
    (dict(guidance_scale=-1.0), "guidance scale must be >= 0"),
    (dict(sampler="euler"), "unknown sampler"),
])
def test_bad_arguments(tiny_dir, kwargs, needle):
    pipe = make_pipe(tiny_dir)
    kw = dict(prompt="狗", progress=False)
    kw.update(kwargs)
    with pytest.raises(ValueError, match=needle):
        pipe(kw.pop("prompt"), **kw)


def test_nan_images_are_refused(tiny_dir):
    from mind_diffusion.utils.images import NonFiniteImageError

    pipe = make_pipe(tiny_dir)
    x = np.zeros((1, 3, 8, 8), np.float32)
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(NonFiniteImageError, match="nothing was written"):
        pipe.to_uint8(x)
    # the original truncates: 0.999 of the range is 254, not 255
    img = pipe.to_uint8(np.full((1, 3, 1, 1), 2 * (254.9 / 255) - 1, np.float32))
    assert int(img.max()) == 254
