"""Timestep-embedding frequencies as the MindSpore originals compute them (issue 15, item 1).

Wukong-Huahua's UNet and Taichu-GLIDE's UNets build ``freqs = exp(-log(10000) * arange / half)``
at run time with MindSpore ops (float32 for Wukong; fp16, Taichu's policy in every entry point, for
GLIDE, opt-in: ``GlideTimestepEmbedding(freqs="mindspore")``). DDPM and GLIDE's fp32 variant
follow PyTorch originals and keep their numpy tables. MindSpore's float32 ``exp`` differs from
numpy's by up to ~5e-6 relative, so a numpy-precomputed table moves official-weight outputs
(~6e-5 on the LDM UNet at t=999). Each
``_original_*`` cell below transcribes the original's formula, op order and dtypes literally
(the originals' semantics, run here with the same MindSpore ops); our embeddings must equal them
bit for bit in graph and pynative mode, and differ from the float64-numpy table (so these tests
can fail).
"""
import math

import mindspore as ms
import numpy as np
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
    from mind_diffusion.ldm.model import ldm_config_defaults

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
    """The fp32 variant is OpenAI's (a PyTorch original), not a MindSpore one: float32 numpy."""
    from mind_diffusion.glide.unet import GlideTimestepEmbedding

    half = 96
    f = np.exp(-math.log(10000.0) * np.arange(half, dtype=np.float32) / np.float32(half)).astype(np.float32)
    np.testing.assert_array_equal(GlideTimestepEmbedding(2 * half).freqs.asnumpy()[0], f)
