"""Timestep-embedding frequencies as the MindSpore originals compute them (issue 15, item 1).

Wukong-Huahua's UNet and Taichu-GLIDE's UNets build ``freqs = exp(-log(10000) * arange / half)``
at run time with MindSpore ops (float32 for Wukong; for GLIDE in the policy's dtype, float32 or
fp16 with ``timestep_fp16``: ``GlideTimestepEmbedding(freqs="mindspore")``, the GLIDE network
configs' default ``timestep_freqs: mindspore``). DDPM follows a PyTorch original and keeps its
numpy table, and so does GLIDE with ``timestep_freqs: numpy`` (OpenAI's float32 table, what the
PyTorch reference of tests/test_glide_networks.py implements). MindSpore's float32 ``exp`` differs
from numpy's by up to ~5e-6 relative, so a numpy-precomputed table moves official-weight outputs
(~6e-5 on the LDM UNet at t=999, ~2e-4 on the GLIDE base UNet). Each
``_original_*`` cell below transcribes the original's formula, op order and dtypes literally
(the originals' semantics, run here with the same MindSpore ops); our embeddings must equal them
bit for bit in graph and pynative mode, and differ from the float64-numpy table (so these tests
can fail).
"""
import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops

from mindspore.numpy import arange as ms_arange

# float times as DPM-Solver gives them (fp16 values) and integer steps as PLMS gives them
T_FLOAT = np.array([0.0, 1.0, 17.5, 250.25, 500.0, 932.5, 998.0, 999.0], np.float16)
T_INT = np.array([0, 1, 17, 250, 500, 932, 998, 999], np.int32)


class _OriginalWukongEmbedding(nn.Cell):
    """Wukong-Huahua ``timestep_embedding(timesteps, dim)`` (repeat_only=False, even dim)."""

    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def construct(self, timesteps):
        half = self.dim // 2
        freqs = ops.exp(-ops.log(ms.Tensor(10000, ms.float32)) * ms_arange(start=0, stop=half, dtype=ms.float32)
                        / half)
        args = timesteps[:, None] * freqs[None]
        return ops.concat((ops.cos(args), ops.sin(args)), axis=-1)


class _OriginalTaichuEmbedding(nn.Cell):
    """Taichu-GLIDE ``TimestepEmbedding(dtype)`` called as ``(timesteps, dim)``."""

    def __init__(self, dim, dtype):
        super().__init__()
        self.dim = dim
        self.dtype = dtype
        self.max_period = ms.Tensor(input_data=-math.log(10000), dtype=dtype)

    def construct(self, timesteps):
        half = self.dim // 2
        freqs = ops.exp(self.max_period * ms_arange(start=0, stop=half, dtype=self.dtype) / half)
        args = timesteps[:, None] * freqs[None]
        return ops.cast(ops.concat((ops.cos(args), ops.sin(args)), axis=-1), self.dtype)


def _numpy_ldm_embedding(t, dim):
    """The float64-numpy table the LDM UNet used before (what the test must tell apart)."""
    half = dim // 2
    f = np.exp(-math.log(10000.0) * np.arange(half, dtype=np.float64) / half).astype(np.float32)
    args = np.asarray(t, np.float32)[:, None] * f[None]
    return np.concatenate([np.cos(args), np.sin(args)], axis=1), f


def test_ldm_embedding_equals_wukong_original_bitwise(ms_mode):
    from mind_diffusion.ldm.unet import LDMUNet
    from mind_diffusion.nn.layers import SinusoidalTimeEmbedding

    dim = 320  # Wukong model_channels
    ours = SinusoidalTimeEmbedding(dim, shift=0, flip=True, freqs="mindspore_fp32")
    orig = _OriginalWukongEmbedding(dim)
    for t in (T_FLOAT, T_INT):
        got = ours(Tensor(t)).asnumpy()
        want = orig(Tensor(t)).asnumpy()
        assert got.dtype == want.dtype == np.float32
        np.testing.assert_array_equal(got, want)
    # the original's frequencies are not the correctly rounded float64 ones: the test can fail
    want_f = ours.freqs.asnumpy()[0]
    _, np_f = _numpy_ldm_embedding(T_FLOAT, dim)
    rel = np.abs(want_f.astype(np.float64) / np_f - 1).max()
    assert 1e-6 < rel < 1e-5, rel
    old = SinusoidalTimeEmbedding(dim, shift=0, flip=True)(Tensor(T_FLOAT)).asnumpy()
    assert np.abs(old - orig(Tensor(T_FLOAT)).asnumpy()).max() > 1e-5
    # and the LDM UNet uses it when asked (the Wukong config does; the constructor default keeps
    # the float64 table that diffusers parity is measured with)
    from mind_diffusion.ldm.config import ldm_config_defaults

    assert ldm_config_defaults()["model"]["unet"]["time_freqs"] == "mindspore_fp32"
    unet = LDMUNet(in_channels=4, out_channels=4, model_channels=32, attention_resolutions=(), num_res_blocks=1,
                   channel_mult=(1,), num_heads=1, context_dim=8, num_groups=8, time_freqs="mindspore_fp32")
    np.testing.assert_array_equal(unet.time_proj(Tensor(T_FLOAT)).asnumpy(),
                                  _OriginalWukongEmbedding(32)(Tensor(T_FLOAT)).asnumpy())


def test_ddpm_embedding_keeps_float64_table(ms_mode):
    """DDPM ports PyTorch code (not a MindSpore original): its table stays float64-rounded."""
    from mind_diffusion.nn.layers import SinusoidalTimeEmbedding

    emb = SinusoidalTimeEmbedding(128, shift=0)
    half = 64
    f = np.exp(-math.log(10000.0) * np.arange(half, dtype=np.float64) / half).astype(np.float32)
    np.testing.assert_array_equal(emb.freqs.asnumpy()[0], f)


def test_glide_fp16_embedding_equals_taichu_original_bitwise(ms_mode):
    from mind_diffusion.glide.unet import GlideTimestepEmbedding

    dim = 192  # GLIDE model_channels
    ours = GlideTimestepEmbedding(dim, fp16=True, freqs="mindspore")
    orig = _OriginalTaichuEmbedding(dim, ms.float16)
    for t in (T_INT.astype(np.float16), T_FLOAT):  # Taichu's timestep_map is an fp16 tensor
        got = ours(Tensor(t)).asnumpy()
        want = orig(Tensor(t)).asnumpy()
        assert got.dtype == want.dtype == np.float16
        np.testing.assert_array_equal(got, want)
    # the fp16 frequencies from numpy's fp16 exp (freqs="numpy", the default) differ from
    # MindSpore's, and so does the embedding they give
    half = dim // 2
    k = np.arange(half, dtype=np.float16)
    np_f16 = np.exp((np.float16(-math.log(10000.0)) * k) / np.float16(half)).astype(np.float16)
    ms_f16 = ours.freqs.asnumpy()[0]
    assert ms_f16.dtype == np.float16 and not np.array_equal(ms_f16, np_f16)
    np.testing.assert_array_equal(GlideTimestepEmbedding(dim, fp16=True).freqs.asnumpy()[0], np_f16)
    t16 = T_INT.astype(np.float16)
    args = (t16[:, None] * np_f16[None]).astype(np.float16)
    old = np.concatenate([np.cos(args), np.sin(args)], axis=1)
    assert np.abs(old.astype(np.float32) - orig(Tensor(t16)).asnumpy().astype(np.float32)).max() > 1e-3


def test_glide_fp32_embedding_keeps_openai_table():
    """``freqs="numpy"`` (the class default; config ``timestep_freqs: numpy``) is OpenAI's fp32
    table (a PyTorch original): float32 numpy."""
    from mind_diffusion.glide.unet import GlideTimestepEmbedding

    half = 96
    f = np.exp(-math.log(10000.0) * np.arange(half, dtype=np.float32) / np.float32(half)).astype(np.float32)
    np.testing.assert_array_equal(GlideTimestepEmbedding(2 * half).freqs.asnumpy()[0], f)


def _numpy_glide_fp32_freqs(half):
    """OpenAI glide-text2im's float32 table (``timestep_freqs: numpy``)."""
    return np.exp(-math.log(10000.0) * np.arange(half, dtype=np.float32) / np.float32(half)).astype(np.float32)


def test_glide_fp32_embedding_equals_taichu_original_bitwise(ms_mode):
    """Taichu's fp32 policy (``TimestepEmbedding(dtype=float32)``): MindSpore float32 kernels."""
    from mind_diffusion.glide.unet import GlideTimestepEmbedding

    dim = 192  # GLIDE model_channels
    ours = GlideTimestepEmbedding(dim, freqs="mindspore")
    orig = _OriginalTaichuEmbedding(dim, ms.float32)
    # int steps, fp16 steps (Taichu's timestep_map) and fractional float32 times
    for t in (T_INT, T_INT.astype(np.float16), T_FLOAT.astype(np.float32)):
        got = ours(Tensor(t)).asnumpy()
        want = orig(Tensor(t)).asnumpy()
        assert got.dtype == want.dtype == np.float32
        np.testing.assert_array_equal(got, want)
    # MindSpore's float32 exp is not numpy's: the frequencies and the embedding differ (so this
    # test can fail), the embedding by more than float32 rounding at t=999
    half = dim // 2
    ms_f, np_f = ours.freqs.asnumpy()[0], _numpy_glide_fp32_freqs(half)
    assert ms_f.dtype == np.float32
    rel = np.abs(ms_f.astype(np.float64) / np_f - 1).max()
    assert 1e-6 < rel < 1e-5, rel
    old = GlideTimestepEmbedding(dim, freqs="numpy")(Tensor(T_INT)).asnumpy()
    assert np.abs(old - orig(Tensor(T_INT)).asnumpy()).max() > 1e-4


def _default_glide_nets(fp16):
    """The full-size default base and SR UNets (parameters left uninitialised: only the timestep
    embedding is looked at) under our fp32 policy or the fp16 one (``timestep_fp16`` +
    ``apply_glide_precision(float16)``)."""
    from mind_diffusion.glide.model import apply_glide_precision, build_glide_base, build_glide_sr

    nets = []
    for build in (build_glide_base, build_glide_sr):
        for freqs in (None, "numpy"):
            cfg = {"timestep_fp16": True} if fp16 else {}
            if freqs:
                cfg["timestep_freqs"] = freqs
            net = build(cfg, deferred_init=True)
            if fp16:
                apply_glide_precision(net, ms.float16)
            nets.append(net)
    return nets  # base, base numpy, sr, sr numpy


@pytest.mark.slow  # two full-size UNets per mode (~75 s); the tiny UNet test covers the default wiring
def test_default_glide_unets_carry_taichu_embedding(ms_mode):
    """The default GLIDE configs (``timestep_freqs: mindspore``) give the base and SR UNets
    Taichu's embedding bit for bit in both precision policies; ``timestep_freqs: numpy`` gives the
    numpy table instead, which differs."""
    from mind_diffusion.glide.config import glide_base_defaults, glide_sr_defaults

    assert glide_base_defaults()["timestep_freqs"] == glide_sr_defaults()["timestep_freqs"] == "mindspore"
    for fp16, dtype, np_dtype in ((False, ms.float32, np.float32), (True, ms.float16, np.float16)):
        base, base_np, sr, sr_np = _default_glide_nets(fp16)
        t = Tensor(T_INT.astype(np.float16) if fp16 else T_INT)
        for net, net_np in ((base, base_np), (sr, sr_np)):
            dim = net.time_proj.half * 2
            assert dim == 192
            want = _OriginalTaichuEmbedding(dim, dtype)(t).asnumpy()
            got = net.time_proj(t).asnumpy()
            assert got.dtype == want.dtype == np_dtype
            np.testing.assert_array_equal(got, want)
            other = net_np.time_proj(t).asnumpy()
            assert not np.array_equal(net_np.time_proj.freqs.asnumpy(), net.time_proj.freqs.asnumpy())
            gap = np.abs(other.astype(np.float32) - want.astype(np.float32)).max()
            assert gap > (1e-3 if fp16 else 1e-4), gap


def test_glide_timestep_freqs_reaches_the_unet_output():
    """Same weights, default vs ``timestep_freqs: numpy``: the tiny base UNet's output moves (the
    option is wired into the forward pass); a wrong value is a one-line error naming the key."""
    import pytest

    from mind_diffusion.glide.config import GLIDE_TINY
    from mind_diffusion.glide.model import build_glide_base

    a = build_glide_base(GLIDE_TINY["base"])
    b = build_glide_base({**GLIDE_TINY["base"], "timestep_freqs": "numpy"})
    rng = np.random.default_rng(0)
    for (_, pa), (_, pb) in zip(sorted(a.parameters_and_names()), sorted(b.parameters_and_names())):
        pa.set_data(Tensor(rng.standard_normal(pa.shape).astype(np.float32) * 0.1))
        pb.set_data(pa.data)
    cfg = GLIDE_TINY["base"]
    x = Tensor(rng.standard_normal((1, 3, 16, 16)).astype(np.float32))
    tokens = Tensor(rng.integers(1, cfg["n_vocab"], (1, cfg["text_ctx"])).astype(np.int32))
    mask = Tensor(np.ones((1, cfg["text_ctx"]), np.int32))
    t = Tensor(np.array([999], np.int32))
    out_a, out_b = a(x, t, tokens, mask).asnumpy(), b(x, t, tokens, mask).asnumpy()
    np.testing.assert_array_equal(a.time_proj(t).asnumpy(), _OriginalTaichuEmbedding(32, ms.float32)(t).asnumpy())
    assert 0 < np.abs(out_a - out_b).max() < 1e-2 * np.abs(out_a).max()
    with pytest.raises(ValueError, match="timestep_freqs must be 'mindspore'.*or 'numpy'.*got 'torch'"):
        build_glide_base({**GLIDE_TINY["base"], "timestep_freqs": "torch"})
