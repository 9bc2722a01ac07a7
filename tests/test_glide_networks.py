"""GLIDE networks vs an independent PyTorch implementation (tests/reference/torch_glide.py) on
the same random weights, in graph and pynative mode: the text transformer, the base UNet, the
super-resolution UNet (with its legacy bilinear resize) and the SRGAN generator. Weights go to
PyTorch through the declared OpenAI name map (``openai_key``), loaded strictly, so the map is
exercised on every tensor. Plus closed forms: legacy bilinear resize, DepthToSpace order and the
timestep embedding (fp32 and Taichu's fp16)."""
import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

TOL = 1e-4


def random_state(net, seed: int = 0) -> dict:
    """{name: array} with noticeable values everywhere (zero-initialised convs would hide bugs):
    weights ~ N(0, 1/fan_in), biases / betas ~ N(0, 0.1^2), gammas ~ 1 + N(0, 0.1^2),
    BN variances in [0.5, 1.5], PReLU slopes in [0.1, 0.3], embeddings ~ N(0, 0.5^2)."""
    rng = np.random.default_rng(seed)
    out = {}
    for p in net.get_parameters():
        shape, name = tuple(p.shape), p.name
        last = name.rsplit(".", 1)[-1]
        if last == "gamma":
            v = 1.0 + 0.1 * rng.standard_normal(shape)
        elif last == "moving_variance":
            v = rng.uniform(0.5, 1.5, shape)
        elif last == "w":
            v = rng.uniform(0.1, 0.3, shape)
        elif "embedding" in name:
            v = 0.5 * rng.standard_normal(shape)
        elif len(shape) >= 2:
            v = rng.standard_normal(shape) / math.sqrt(np.prod(shape[1:]))
        else:
            v = 0.1 * rng.standard_normal(shape)
        out[name] = v.astype(np.float32)
    return out


def _load_ms(net, state):
    from mind_diffusion.checkpoint.io import load_strict
    from mind_diffusion.glide.checkpoint import load_glide_checkpoint
    from mind_diffusion.glide.text_transformer import GlideTextTransformer

    if isinstance(net, GlideTextTransformer):  # not a checkpoint kind of its own
        report = load_strict(net, state)
    else:
        report = load_glide_checkpoint(net, state)
    assert report.loaded == len(state)
    net.set_train(False)
    return net


def _to_torch(module, state):
    from mind_diffusion.glide.checkpoint import openai_key
    from tests.reference.torch_glide import load_openai_state

    load_openai_state(module, {openai_key(n): v for n, v in state.items()})
    return module.eval()


def _text_inputs(rng, b, ctx, vocab):
    tokens = rng.integers(0, vocab, (b, ctx)).astype(np.int32)
    lengths = [0, ctx, 3, ctx - 1][:b]
    mask = (np.arange(ctx)[None] < np.array(lengths)[:, None]).astype(np.int32)
    return tokens, mask


def _report(what, mode, err):
    print(f"\n[glide parity] {what} ({mode}): max abs err {err:.2e}")


@pytest.mark.parametrize("gelu,ln_eps", [("tanh", 1e-7), ("exact", 1e-5)])
def test_text_transformer_matches_torch(ms_mode, gelu, ln_eps):
    torch = pytest.importorskip("torch", reason="PyTorch is the reference for GLIDE parity")
    from mind_diffusion.glide.text_transformer import GlideTextTransformer
    from tests.reference.torch_glide import TextTransformerRef

    cfg = {"text_ctx": 16, "xf_width": 32, "xf_layers": 2, "xf_heads": 2, "n_vocab": 100,
           "proj_dim": 64, "gelu": gelu, "ln_eps": ln_eps}
    net = GlideTextTransformer(**cfg)
    state = random_state(net, 1)
    _load_ms(net, state)
    ref = _to_torch(TextTransformerRef(**cfg), state)
    tokens, mask = _text_inputs(np.random.default_rng(0), 4, 16, 100)
    proj, out = net(Tensor(tokens), Tensor(mask))
    with torch.no_grad():
        rproj, rout = ref(torch.from_numpy(tokens), torch.from_numpy(mask))
    assert proj.shape == (4, 64) and out.shape == (4, 32, 16)
    err = max(np.abs(proj.asnumpy() - rproj.numpy()).max(), np.abs(out.asnumpy() - rout.numpy()).max())
    _report(f"text transformer gelu={gelu} eps={ln_eps}", ms_mode, err)
    assert err <= TOL
    # the quirk switches matter (so the test can tell them apart)
    other = TextTransformerRef(**{**cfg, "gelu": "exact" if gelu == "tanh" else "tanh"})
    _to_torch(other, state)
    with torch.no_grad():
        oproj, oout = other(torch.from_numpy(tokens), torch.from_numpy(mask))
    gap = max(np.abs(oproj.numpy() - rproj.numpy()).max(), np.abs(oout.numpy() - rout.numpy()).max())
    assert gap > 3 * TOL > 3 * err


def _unet_pair(kind, seed):
    from mind_diffusion.glide.config import GLIDE_TINY
    from mind_diffusion.glide.model import build_glide_base, build_glide_sr
    from tests.reference.torch_glide import Text2ImUNetRef

    # the PyTorch reference is OpenAI's float32 timestep table
    cfg = {**GLIDE_TINY[kind], "timestep_freqs": "numpy"}
    net = (build_glide_base if kind == "base" else build_glide_sr)(cfg)
    state = random_state(net, seed)
    _load_ms(net, state)
    ref_cfg = {k: v for k, v in cfg.items() if k not in ("image_size", "timestep_freqs")}
    ref = Text2ImUNetRef(in_channels=6 if kind == "sr" else 3, super_res=kind == "sr", **ref_cfg)
    return net, _to_torch(ref, state), cfg


def test_base_unet_matches_torch(ms_mode):
    torch = pytest.importorskip("torch", reason="PyTorch is the reference for GLIDE parity")
    net, ref, cfg = _unet_pair("base", 2)
    rng = np.random.default_rng(1)
    b, size = 2, cfg["image_size"]
    x = rng.standard_normal((b, 3, size, size)).astype(np.float32)
    t = np.array([999, 17], np.int32)
    tokens, mask = _text_inputs(rng, b, cfg["text_ctx"], cfg["n_vocab"])
    out = net(Tensor(x), Tensor(t), Tensor(tokens), Tensor(mask)).asnumpy()  # int timesteps (SR: float)
    with torch.no_grad():
        want = ref(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(tokens),
                   torch.from_numpy(mask)).numpy()
    assert out.shape == (b, 6, size, size)
    err = np.abs(out - want).max()
    _report("base UNet", ms_mode, err)
    assert err <= TOL and np.abs(want).max() > 0.1


def test_base_unet_of_the_v3_recipe_matches_torch(ms_mode):
    """The network of ``configs/glide/shapes-base-v3.yaml`` (five levels, 16 channels at the top with no
    attention there, attention at three levels): the same random weights give the reference's output."""
    torch = pytest.importorskip("torch", reason="PyTorch is the reference for GLIDE parity")
    from omegaconf import OmegaConf

    from mind_diffusion.glide.model import build_glide_base
    from tests.reference.torch_glide import Text2ImUNetRef

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    cfg = {**OmegaConf.to_container(OmegaConf.load(root / "configs/glide/shapes-base-v3.yaml").model.net),
           "timestep_freqs": "numpy"}
    net = build_glide_base(cfg)
    assert sum(int(np.prod(p.shape)) for p in net.get_parameters()) == 5_014_342
    state = random_state(net, 4)
    _load_ms(net, state)
    ref_cfg = {k: v for k, v in cfg.items() if k not in ("image_size", "timestep_freqs")}
    ref = _to_torch(Text2ImUNetRef(in_channels=3, super_res=False, **ref_cfg), state)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 64, 64)).astype(np.float32)
    t = np.array([640, 3], np.int32)
    tokens, mask = _text_inputs(rng, 2, cfg["text_ctx"], cfg["n_vocab"])
    out = net(Tensor(x), Tensor(t), Tensor(tokens), Tensor(mask)).asnumpy()
    with torch.no_grad():
        want = ref(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(tokens),
                   torch.from_numpy(mask)).numpy()
    err = np.abs(out - want).max()
    _report("v3 base UNet", ms_mode, err)
    assert out.shape == (2, 6, 64, 64) and err <= TOL and np.abs(want).max() > 0.1


def test_sr_unet_matches_torch(ms_mode):
    torch = pytest.importorskip("torch", reason="PyTorch is the reference for GLIDE parity")
    net, ref, cfg = _unet_pair("sr", 3)
    rng = np.random.default_rng(2)
    b, size = 2, cfg["image_size"]
    x = rng.standard_normal((b, 3, size, size)).astype(np.float32)
    low = rng.uniform(-1, 1, (b, 3, size // 4, size // 4)).astype(np.float32)
    t = np.array([0.0, 500.0], np.float32)
    tokens, mask = _text_inputs(rng, b, cfg["text_ctx"], cfg["n_vocab"])
    out = net(Tensor(x), Tensor(t), Tensor(low), Tensor(tokens), Tensor(mask)).asnumpy()
    with torch.no_grad():
        want = ref(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(tokens),
                   torch.from_numpy(mask), low_res=torch.from_numpy(low)).numpy()
    err = np.abs(out - want).max()
    _report("SR UNet", ms_mode, err)
    assert out.shape == (b, 6, size, size)
    assert err <= TOL and np.abs(want).max() > 0.1


def test_srgan_matches_torch_pixelshuffle(ms_mode):
    torch = pytest.importorskip("torch", reason="PyTorch is the reference for GLIDE parity")
    from mind_diffusion.glide.config import GLIDE_TINY
    from mind_diffusion.glide.model import build_srgan
    from tests.reference.torch_glide import SRGANRef, srgan_state_from_mindspore

    cfg = GLIDE_TINY["srgan"]
    net = build_srgan(cfg)
    state = random_state(net, 4)
    _load_ms(net, state)
    ref = SRGANRef(**cfg)
    ref.load_state_dict(srgan_state_from_mindspore(state), strict=True)
    ref.eval()
    x = np.random.default_rng(3).uniform(-1, 1, (2, 3, 12, 10)).astype(np.float32)
    out = net(Tensor(x)).asnumpy()
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    assert out.shape == (2, 3, 48, 40)
    err = np.abs(out - want).max()
    _report("SRGAN", ms_mode, err)
    assert err <= TOL and want.std() > 0.05


def test_depth_to_space_is_dcr(ms_mode):
    """out[c, 2h+i, 2w+j] = in[(2i+j) C + c] (spec §5), the same as ops.DepthToSpace(2)."""
    from mindspore import ops

    from mind_diffusion.glide.srgan import depth_to_space_dcr

    b, c, h, w = 2, 3, 4, 5
    x = np.random.default_rng(0).standard_normal((b, 4 * c, h, w)).astype(np.float32)
    want = np.zeros((b, c, 2 * h, 2 * w), np.float32)
    for i in range(2):
        for j in range(2):
            want[:, :, i::2, j::2] = x[:, (2 * i + j) * c:(2 * i + j + 1) * c]
    np.testing.assert_array_equal(depth_to_space_dcr(Tensor(x), 2).asnumpy(), want)
    np.testing.assert_array_equal(ops.DepthToSpace(2)(Tensor(x)).asnumpy(), want)


def _legacy_bilinear_np(x, out_h, out_w):
    """Closed form, element by element: src = dst * in / out, clamp the upper neighbour."""
    in_h, in_w = x.shape[-2:]
    out = np.zeros(x.shape[:-2] + (out_h, out_w), np.float64)
    for oy in range(out_h):
        sy = oy * in_h / out_h
        y0 = math.floor(sy)
        y1, fy = min(y0 + 1, in_h - 1), sy - y0
        for ox in range(out_w):
            sx = ox * in_w / out_w
            x0 = math.floor(sx)
            x1, fx = min(x0 + 1, in_w - 1), sx - x0
            out[..., oy, ox] = ((1 - fy) * ((1 - fx) * x[..., y0, x0] + fx * x[..., y0, x1])
                                + fy * ((1 - fx) * x[..., y1, x0] + fx * x[..., y1, x1]))
    return out


@pytest.mark.parametrize("in_hw,out_hw", [((8, 8), (32, 32)), ((5, 7), (13, 9)), ((6, 6), (4, 9))])
def test_legacy_bilinear_resize_closed_form(ms_mode, in_hw, out_hw):
    from mind_diffusion.glide.unet import legacy_bilinear_resize

    x = np.random.default_rng(0).uniform(-1, 1, (2, 3) + in_hw).astype(np.float32)
    want = _legacy_bilinear_np(x.astype(np.float64), *out_hw)
    got = legacy_bilinear_resize(Tensor(x), out_hw).asnumpy()
    assert np.abs(got - want).max() <= 1e-6
    torch = pytest.importorskip("torch", reason="PyTorch for the reference resize")
    from tests.reference.torch_glide import legacy_bilinear

    assert np.abs(legacy_bilinear(torch.from_numpy(x), *out_hw).numpy() - want).max() <= 1e-6
    if out_hw[0] > in_hw[0]:  # half-pixel-centre bilinear (PyTorch / OpenAI) is a different grid
        hp = torch.nn.functional.interpolate(torch.from_numpy(x), out_hw, mode="bilinear",
                                             align_corners=False).numpy()
        assert np.abs(hp - want).max() > 0.05


def _timestep_fp32_np(t, dim):
    half = dim // 2
    f = np.exp(-math.log(10000.0) * np.arange(half, dtype=np.float64) / half)
    args = np.float64(t)[:, None] * f[None]
    return np.concatenate([np.cos(args), np.sin(args)], axis=1)


def _timestep_fp16_np(t, dim):
    """Taichu: exp(fp16(-ln 1e4) * arange(half) / half), t * freqs and cos / sin all rounded to fp16."""
    half = dim // 2
    k = np.arange(half, dtype=np.float16)
    scaled = (np.float16(-math.log(10000.0)) * k).astype(np.float16)
    f = np.exp((scaled / np.float16(half)).astype(np.float16).astype(np.float32)).astype(np.float16)
    args = (np.asarray(t, np.float16)[:, None] * f[None]).astype(np.float16).astype(np.float64)
    return np.concatenate([np.cos(args), np.sin(args)], axis=1).astype(np.float16)


def test_timestep_embedding_closed_form(ms_mode):
    from mind_diffusion.glide.unet import GlideTimestepEmbedding

    t = np.array([0, 1, 17, 500, 997, 999], np.float32)
    dim = 192
    got32 = GlideTimestepEmbedding(dim)(Tensor(t)).asnumpy()
    assert got32.dtype == np.float32 and got32.shape == (6, dim)
    # cos first: at t=0 the first half is 1 and the second 0
    np.testing.assert_array_equal(got32[0], np.r_[np.ones(dim // 2), np.zeros(dim // 2)])
    err32 = np.abs(got32 - _timestep_fp32_np(t, dim)).max()
    assert err32 <= 1e-4  # fp32 rounding of t * f (|t f| <= 999)
    got16 = GlideTimestepEmbedding(dim, fp16=True)(Tensor(t)).asnumpy()
    assert got16.dtype == np.float16
    want16 = _timestep_fp16_np(t, dim).astype(np.float32)
    err16 = np.abs(got16.astype(np.float32) - want16).max()
    assert err16 <= 2e-3  # within 2 fp16 ulps at 1 (the fp16 cos / sin kernels round differently)
    # Taichu's fp16 embedding really differs from fp32 (spec §3.1: up to 0.39 at t = 999)
    drift = np.abs(got16.astype(np.float32) - got32).max()
    print(f"\n[glide] timestep embedding: fp32 err {err32:.1e}, fp16 err {err16:.1e}, fp16-fp32 {drift:.2f}")
    assert drift > 0.1


def test_unet_uses_fp16_timestep_option():
    """``timestep_fp16=True`` puts Taichu's fp16 embedding into the UNet (and changes its output)."""
    from mind_diffusion.glide.config import GLIDE_TINY
    from mind_diffusion.glide.model import build_glide_base

    cfg = GLIDE_TINY["base"]
    a = build_glide_base(cfg)
    b = build_glide_base({**cfg, "timestep_fp16": True, "timestep_freqs": "numpy"})  # the numpy closed form
    state = random_state(a, 5)
    _load_ms(a, state)
    _load_ms(b, state)
    t = np.array([999.0], np.float32)
    emb16 = b.time_proj(Tensor(t)).asnumpy()
    assert emb16.dtype == np.float16
    want = _timestep_fp16_np(t, cfg["model_channels"]).astype(np.float32)
    assert np.abs(emb16.astype(np.float32) - want).max() <= 2e-3
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((1, 3, 16, 16)).astype(np.float32))
    tokens, mask = (Tensor(v) for v in _text_inputs(rng, 1, cfg["text_ctx"], cfg["n_vocab"]))
    out_a = a(x, Tensor(t), tokens, mask).asnumpy()
    out_b = b(x, Tensor(t), tokens, mask).asnumpy()
    assert out_b.dtype == np.float32 and np.abs(out_a - out_b).max() > 1e-3


def test_tokens_must_match_text_ctx(ms_mode):
    from mind_diffusion.glide.config import GLIDE_TINY
    from mind_diffusion.glide.model import build_glide_base

    cfg = GLIDE_TINY["base"]
    net = build_glide_base(cfg)
    x = Tensor(np.zeros((1, 3, 16, 16), np.float32))
    bad = Tensor(np.zeros((1, cfg["text_ctx"] + 1), np.int32))
    with pytest.raises(ValueError, match="text_ctx"):
        net(x, Tensor(np.zeros(1, np.float32)), bad, bad)


def test_config_errors_name_the_key():
    from mind_diffusion.glide.model import build_glide_base, build_glide_sr, build_srgan

    with pytest.raises(ValueError, match="unknown config key 'model_channel'.*did you mean 'model_channels'"):
        build_glide_base({"model_channel": 64})
    with pytest.raises(ValueError, match="attention_resolutions"):
        build_glide_sr({"attention_resolutions": [3]})
    with pytest.raises(ValueError, match="gelu"):
        build_glide_base({"gelu": "relu", "xf_layers": 0})
    with pytest.raises(ValueError, match="upscale_factor"):
        build_srgan({"upscale_factor": 3})
    with pytest.raises(ValueError, match="num_head_channels"):
        build_glide_base({"model_channels": 96, "num_res_blocks": 1, "xf_layers": 0, "num_groups": 32})
    # heads are counted only where attention is (as in the original): a 16-channel level without it builds
    light_top = {"image_size": 32, "model_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1,
                 "num_head_channels": 32, "num_groups": 8, "xf_layers": 0}
    net = build_glide_base({**light_top, "attention_resolutions": [2]})
    assert sum(p.size for p in net.get_parameters()) > 0
    with pytest.raises(ValueError, match="channels 16 are not divisible by num_head_channels 32"):
        build_glide_base({**light_top, "attention_resolutions": [1, 2]})
    # the classes themselves take overrides of the same defaults
    from mind_diffusion.glide.config import GLIDE_TINY
    from mind_diffusion.glide.unet import GlideSuperResUNet

    with pytest.raises(ValueError, match="unknown config key 'low_res_size'"):
        GlideSuperResUNet(low_res_size=64)
    sr = GlideSuperResUNet(**GLIDE_TINY["sr"])
    assert sr.in_channels == 6 and sr.in_channels_x == 3


def test_fp16_precision_policy_stays_close_to_fp32():
    """apply_glide_precision(fp16) + timestep_fp16 (Taichu's policy): convs / Dense in fp16, norms
    and softmax fp32; the output (cast back to x's dtype) stays close to the fp32 net's."""
    from mind_diffusion.glide.config import GLIDE_TINY
    from mind_diffusion.glide.model import (
        apply_glide_precision,
        build_glide_base,
    )

    cfg = GLIDE_TINY["base"]
    a = build_glide_base(cfg)
    b = build_glide_base({**cfg, "timestep_fp16": True})
    state = random_state(a, 6)
    _load_ms(a, state)
    _load_ms(b, state)
    apply_glide_precision(b, ms.float16)
    assert all(p.dtype == ms.float32 for p in b.get_parameters())
    rng = np.random.default_rng(1)
    x = Tensor(rng.standard_normal((2, 3, 16, 16)).astype(np.float32))
    tokens, mask = (Tensor(v) for v in _text_inputs(rng, 2, cfg["text_ctx"], cfg["n_vocab"]))
    t = Tensor(np.array([10, 500], np.int32))
    want = a(x, t, tokens, mask).asnumpy()
    got = b(x, t, tokens, mask).asnumpy()
    err = np.abs(got - want).max()
    print(f"\n[glide] fp16 policy vs fp32: max abs err {err:.3f} (output max {np.abs(want).max():.2f})")
    assert got.dtype == np.float32
    assert 1e-4 < err < 0.05 * np.abs(want).max()
