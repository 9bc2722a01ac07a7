"""Layers shared by the UNets: fp32 GroupNorm, timestep embeddings, PyTorch-style initialised
convs / dense layers, nearest upsampling, single-head spatial attention.

Only classic ``mindspore.nn`` / ``mindspore.ops`` are used (many ``mindspore.mint`` ops have no
CPU kernel). Norms always compute in fp32 whatever the compute dtype (precision policy).
"""
from __future__ import annotations

import math

import numpy as np

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import HeUniform, Uniform, initializer

from ..cpu_gemm import accelerate, norm_op, norm_params, restore


def _torch_bias_init(fan_in: int, n: int):
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return initializer(Uniform(bound), [n], ms.float32)


def conv2d(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, padding: int | None = None,
           bias: bool = True, zero_init: bool = False) -> nn.Conv2d:
    """Conv2d with PyTorch's default init (kaiming-uniform a=sqrt(5), bias U(+-1/sqrt(fan_in))); on CPU
    its product runs through OpenBLAS (``mind_diffusion/cpu_gemm.py``)."""
    padding = kernel // 2 if padding is None else padding
    fan_in = in_ch * kernel * kernel
    w_init = "zeros" if zero_init else HeUniform(negative_slope=math.sqrt(5))
    b_init = "zeros" if zero_init else _torch_bias_init(fan_in, out_ch)
    return accelerate(nn.Conv2d(in_ch, out_ch, kernel, stride=stride, pad_mode="pad" if padding else "valid",
                                padding=padding, has_bias=bias, weight_init=w_init,
                                bias_init=b_init if bias else None))


def dense(in_ch: int, out_ch: int, bias: bool = True, zero_init: bool = False) -> nn.Dense:
    w_init = "zeros" if zero_init else HeUniform(negative_slope=math.sqrt(5))
    b_init = "zeros" if zero_init else _torch_bias_init(in_ch, out_ch)
    return accelerate(nn.Dense(in_ch, out_ch, weight_init=w_init, bias_init=b_init if bias else None,
                               has_bias=bias))


class GroupNorm(nn.Cell):
    """GroupNorm computed in fp32; parameters ``gamma`` / ``beta`` as in ``mindspore.nn.GroupNorm``.

    Same formula as the framework kernel (biased variance, eps inside the sqrt, two-pass
    centred variance), but the group reductions are matrix-vector products and the affine
    transform is folded into one per-channel scale and shift, which is several times faster
    than MindSpore's CPU GroupNorm kernel in forward and backward."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: {num_channels} channels are not divisible by {num_groups} groups")
        self.num_groups = num_groups
        self.eps = eps
        self.gamma = Parameter(initializer("ones", [num_channels], ms.float32), name="gamma")
        self.beta = Parameter(initializer("zeros", [num_channels], ms.float32), name="beta")
        # on CPU one kernel, forward and backward (mind_diffusion/cpu_gemm.py); elsewhere the ops below
        self.fused = norm_op("group", eps, num_groups)
        self.norm_params = norm_params("group", eps, num_groups)

    def construct(self, x):
        dtype = x.dtype
        if self.fused is not None:
            return ops.cast(self.fused(ops.cast(x, ms.float32), self.gamma, self.beta, self.norm_params), dtype)
        b, c, h, w = x.shape
        g = self.num_groups
        n = (c // g) * h * w
        xg = ops.cast(x, ms.float32).reshape(b * g, n)
        avg = ops.fill(ms.float32, (n, 1), 1.0 / n)
        mu = ops.matmul(xg, avg)                                 # (B*G, 1)
        # explicit broadcast_to + same-shape ops: an implicitly broadcasting binary op keeps a
        # workspace of ~4x its output alive for the graph's lifetime on CPU (GBs in a big UNet)
        xc = xg - ops.broadcast_to(mu, (b * g, n))
        rstd = ops.rsqrt(ops.matmul(xc * xc, avg) + self.eps)    # (B*G, 1)
        scale = (rstd.reshape(b, g, 1) * self.gamma.reshape(1, g, c // g)).reshape(b, c, 1, 1)
        shape = (b, c, h, w)
        y = xc.reshape(shape) * ops.broadcast_to(scale, shape) + ops.broadcast_to(self.beta.reshape(1, c, 1, 1), shape)
        return ops.cast(y, dtype)


FREQ_CONVENTIONS = ("float64", "mindspore_fp32")


def mindspore_fp32_freqs(half: int, max_period: float = 10000.0, denom: int | None = None) -> Tensor:
    """``exp(-log(max_period) * arange(half) / denom)`` evaluated op by op with MindSpore float32
    kernels: log of the float32 constant, negate, times the float32 ``arange``, divide by the
    integer ``denom`` (default ``half``), exp. This is how the MindSpore Wukong-Huahua UNet builds
    its frequencies at run time; MindSpore's float32 ``exp`` / ``log`` differ from a
    correctly rounded float64 evaluation by up to ~5e-6 relative, so the order and the kernels
    matter for bit-identical outputs. Evaluated eagerly (the same kernels a graph runs)."""
    denom = half if denom is None else denom
    k = Tensor(np.arange(half, dtype=np.float32))
    neg_log = -ops.log(Tensor(max_period, ms.float32))
    return ops.exp(neg_log * k / denom)


class SinusoidalTimeEmbedding(nn.Cell):
    """emb = concat[sin(t f), cos(t f)] with f_k = exp(-k ln(max_period) / (half - shift)).

    ``shift=0`` is abarankab's DDPM (divides by half); ``shift=1`` is Ho / fairseq.
    ``flip=True`` puts cos first (GLIDE / guided-diffusion order). ``t`` is (B,) raw steps.

    ``freqs`` picks how the frequencies are rounded to float32: ``"float64"`` (default) evaluates
    them in float64 numpy and rounds once (the DDPM port, whose reference is PyTorch code);
    ``"mindspore_fp32"`` evaluates them with MindSpore float32 ops in the MindSpore Wukong-Huahua
    order (:func:`mindspore_fp32_freqs`), so official LDM weights give the original's numbers."""

    def __init__(self, dim: int, max_period: float = 10000.0, shift: int = 0, flip: bool = False,
                 freqs: str = "float64"):
        super().__init__()
        if dim % 2:
            raise ValueError(f"timestep embedding dim must be even, got {dim}")
        if freqs not in FREQ_CONVENTIONS:
            raise ValueError(f"timestep embedding freqs must be one of {FREQ_CONVENTIONS}, got {freqs!r}")
        half = dim // 2
        if freqs == "mindspore_fp32":
            self.freqs = mindspore_fp32_freqs(half, max_period, half - shift).reshape(1, half)
        else:
            f = np.exp(-math.log(max_period) * np.arange(half, dtype=np.float64) / (half - shift))
            self.freqs = Tensor(f.astype(np.float32)[None, :])
        self.flip = flip
        self.concat = ops.Concat(axis=1)

    def construct(self, t):
        args = ops.cast(t, ms.float32).reshape(-1, 1) * self.freqs
        if self.flip:
            return self.concat((ops.cos(args), ops.sin(args)))
        return self.concat((ops.sin(args), ops.cos(args)))


class Upsample2x(nn.Cell):
    """Nearest-neighbour x2 (exact), optionally followed by a 3x3 conv."""

    def __init__(self, channels: int | None = None, with_conv: bool = True):
        super().__init__()
        self.conv = conv2d(channels, channels, 3) if with_conv else None

    def construct(self, x):
        b, c, h, w = x.shape
        x = ops.broadcast_to(x.reshape(b, c, h, 1, w, 1), (b, c, h, 2, w, 2)).reshape(b, c, 2 * h, 2 * w)
        if self.conv is not None:
            x = self.conv(x)
        return x


class SpatialSelfAttention(nn.Cell):
    """Single-head self-attention over H*W positions with a residual:
    out = x + proj(softmax(q k^T / sqrt(C)) v), q/k/v from one 1x1 conv over GroupNorm(x)."""

    def __init__(self, channels: int, num_groups: int = 32, zero_init_proj: bool = False):
        super().__init__()
        self.norm = GroupNorm(num_groups, channels)
        self.to_qkv = conv2d(channels, 3 * channels, 1)
        self.to_out = conv2d(channels, channels, 1, zero_init=zero_init_proj)
        self.scale = channels ** -0.5
        self.bmm_qk = ops.BatchMatMul(transpose_a=True)        # q^T k
        self.bmm_av = ops.BatchMatMul(transpose_b=True)        # v attn^T
        self.softmax = ops.Softmax(axis=-1)

    def construct(self, x):
        b, c, h, w = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(b, 3 * c, h * w)
        q, k, v = ops.split(qkv, c, axis=1)                      # each B, C, HW
        attn = self.bmm_qk(q * self.scale, k)                    # B, HW(q), HW(k)
        attn = ops.cast(self.softmax(ops.cast(attn, ms.float32)), v.dtype)
        out = self.bmm_av(v, attn).reshape(b, c, h, w)           # B, C, HW(q)
        return x + self.to_out(out)


def count_params(net: nn.Cell) -> int:
    return int(sum(int(np.prod(p.shape)) for p in net.get_parameters()))


def apply_compute_dtype(net: nn.Cell, dtype) -> nn.Cell:
    """Precision policy: convolutions and dense layers compute in ``dtype`` (fp16 / bf16 on
    Ascend and GPU); GroupNorm / LayerNorm and softmax stay in fp32 (our norm cells upcast
    internally, attention upcasts its softmax). Parameters stay fp32. No-op for fp32."""
    if dtype == ms.float32:
        return net
    for _, cell in net.cells_and_names():
        if isinstance(cell, (nn.Conv2d, nn.Dense)):
            restore(cell).to_float(dtype)
    return net


class LayerNorm(nn.Cell):
    """LayerNorm over the last axis, computed in fp32; parameters ``gamma`` / ``beta`` as in
    ``mindspore.nn.LayerNorm``. The mean and variance are matrix-vector products (the CPU
    LayerNorm kernel is far slower than a matmul); same formula as the kernel: biased variance,
    eps inside the sqrt."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.gamma = Parameter(initializer("ones", [dim], ms.float32), name="gamma")
        self.beta = Parameter(initializer("zeros", [dim], ms.float32), name="beta")
        self.avg = Tensor(np.full((dim, 1), 1.0 / dim, np.float32))
        # on CPU, inference runs one kernel (mind_diffusion/cpu_gemm.py); training the ops below
        self.fused = norm_op("layer", eps)
        self.norm_params = norm_params("layer", eps)

    def construct(self, x):
        dtype = x.dtype
        shape = x.shape
        if self.fused is not None and not self.training:
            y = self.fused(ops.cast(x, ms.float32).reshape(-1, self.dim), self.gamma, self.beta, self.norm_params)
            return ops.cast(y.reshape(shape), dtype)
        x2 = ops.cast(x, ms.float32).reshape(-1, self.dim)
        flat = x2.shape
        # explicit broadcasts: see GroupNorm (implicit broadcasting pins CPU workspace memory)
        xc = x2 - ops.broadcast_to(ops.matmul(x2, self.avg), flat)
        rstd = ops.rsqrt(ops.matmul(xc * xc, self.avg) + self.eps)
        y = (xc * ops.broadcast_to(rstd, flat) * ops.broadcast_to(self.gamma.reshape(1, self.dim), flat)
             + ops.broadcast_to(self.beta.reshape(1, self.dim), flat))
        return ops.cast(y.reshape(shape), dtype)


class ConvNd(nn.Cell):
    """A conv held as ``.conv`` (CompVis ``conv_nd`` wrappers in MindSpore ports name their
    parameters ``<name>.conv.weight``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1,
                 padding: int | None = None, bias: bool = True, zero_init: bool = False):
        super().__init__()
        self.conv = conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding, bias=bias,
                           zero_init=zero_init)

    def construct(self, x):
        return self.conv(x)
