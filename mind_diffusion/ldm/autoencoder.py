"""KL autoencoder (first stage) of Wukong-Huahua / Stable Diffusion v1 (CompVis ``AutoencoderKL``).

Parameter names are the CompVis ones (GroupNorm ``gamma``/``beta`` instead of ``weight``/
``bias``), in the order MindSpore's ``save_checkpoint`` writes them for the Wukong net
(``first_stage_model.`` prefix stripped). Default config: 86,161,255 parameters in 252 tensors.

Quirk kept for name compatibility: a downsample conv is built for every encoder level,
including the last (``encoder.down.<last>.downsample.conv.*``), and the decoder builds
``decoder.up.0.upsample.conv.*``; neither is applied in forward (the released checkpoint
does not contain them either).

- Encoder downsample: pad (0, 1, 0, 1) (right and bottom only) + valid 3x3 conv, stride 2.
- Decoder upsample: nearest x2 + 3x3 conv. ``decoder.up`` is indexed by level (``up.0`` = full
  resolution) and applied from the last level down to level 0.
- ResnetBlock has no time embedding; swish = ``x * sigmoid(x)``; GroupNorm eps 1e-6 in fp32.
- ``encode`` returns a *sample* ``mean + exp(logvar / 2) * noise`` (noise given by the caller);
  logvar is clipped to [-30, 20]. ``decode`` applies no latent scale factor (0.18215 is the
  pipeline's business).

Precision: parameters are fp32; ``apply_compute_dtype(vae, ms.float16)`` makes the convs run in
fp16 (Wukong's policy) while GroupNorm and the attention softmax stay in fp32. ``encode*`` and
``decode`` always return fp32.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

from ..cpu_attention import fused_attention_op
from ..nn.dropout import KeyedDropout
from ..nn.layers import GroupNorm, Upsample2x, conv2d

__all__ = ["AutoencoderKL", "VAEDecoder", "VAEEncoder", "vae_unused_param_names"]


def _swish(x):
    return x * ops.sigmoid(x)


class ResnetBlock(nn.Cell):
    """h = conv1(swish(norm1(x))); h = conv2(dropout(swish(norm2(h)))); out = shortcut(x) + h."""

    def __init__(self, in_ch: int, out_ch: int, num_groups: int = 32, dropout: float = 0.0):
        super().__init__()
        self.norm1 = GroupNorm(num_groups, in_ch, eps=1e-6)
        self.conv1 = conv2d(in_ch, out_ch, 3)
        self.norm2 = GroupNorm(num_groups, out_ch, eps=1e-6)
        self.dropout = KeyedDropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = conv2d(out_ch, out_ch, 3)
        self.has_shortcut = in_ch != out_ch
        if self.has_shortcut:
            self.nin_shortcut = conv2d(in_ch, out_ch, 1)

    def construct(self, x):
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(self.dropout(_swish(self.norm2(h))))
        if self.has_shortcut:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Cell):
    """Single-head self-attention over H*W positions: q, k, v, proj_out are 1x1 convs;
    out = x + proj_out(v softmax(q^T k / sqrt(C))^T). Softmax in fp32."""

    def __init__(self, channels: int, num_groups: int = 32):
        super().__init__()
        self.norm = GroupNorm(num_groups, channels, eps=1e-6)
        self.q = conv2d(channels, channels, 1)
        self.k = conv2d(channels, channels, 1)
        self.v = conv2d(channels, channels, 1)
        self.proj_out = conv2d(channels, channels, 1)
        self.scale = float(channels) ** -0.5
        self.bmm_qk = ops.BatchMatMul(transpose_a=True)   # (B,C,Nq)^T (B,C,Nk) -> (B,Nq,Nk)
        self.bmm_av = ops.BatchMatMul(transpose_b=True)   # (B,C,Nk) (B,Nq,Nk)^T -> (B,C,Nq)
        self.softmax = ops.Softmax(axis=-1)
        # on CPU: one fused kernel on the (B, C, N) layout (mind_diffusion/cpu_attention.py)
        self.fused = fused_attention_op("channels_first")

    def construct(self, x):
        b, c, h, w = x.shape
        hn = self.norm(x)
        q = self.q(hn).reshape(b, c, h * w)
        k = self.k(hn).reshape(b, c, h * w)
        v = self.v(hn).reshape(b, c, h * w)
        if self.fused is not None:
            f32 = ms.float32
            out = self.fused(ops.cast(q * self.scale, f32), ops.cast(k, f32), ops.cast(v, f32))
            return x + self.proj_out(ops.cast(out, v.dtype).reshape(b, c, h, w))
        attn = self.bmm_qk(q * self.scale, k)
        attn = ops.cast(self.softmax(ops.cast(attn, ms.float32)), v.dtype)
        out = self.bmm_av(v, attn).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Cell):
    """Asymmetric pad (right/bottom by 1) + valid 3x3 conv with stride 2 (CompVis ``Downsample``)."""

    def __init__(self, channels: int):
        super().__init__()
        # MindSpore Conv2d padding order is (top, bottom, left, right)
        self.conv = conv2d(channels, channels, 3, stride=2, padding=(0, 1, 0, 1))

    def construct(self, x):
        return self.conv(x)


class _MidBlock(nn.Cell):
    def __init__(self, channels: int, num_groups: int, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, num_groups, dropout)
        self.attn_1 = AttnBlock(channels, num_groups)
        self.block_2 = ResnetBlock(channels, channels, num_groups, dropout)

    def construct(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class _DownLevel(nn.Cell):
    """``block.{0..}`` then ``downsample`` (always built; applied only when ``apply_resample``)."""

    def __init__(self, in_ch: int, out_ch: int, num_blocks: int, num_groups: int, dropout: float,
                 apply_resample: bool):
        super().__init__()
        blocks = []
        for _ in range(num_blocks):
            blocks.append(ResnetBlock(in_ch, out_ch, num_groups, dropout))
            in_ch = out_ch
        self.block = nn.CellList(blocks)
        self.downsample = Downsample(out_ch)
        self.apply_resample = apply_resample

    def construct(self, x):
        for blk in self.block:
            x = blk(x)
        if self.apply_resample:
            x = self.downsample(x)
        return x


class _UpLevel(nn.Cell):
    """``block.{0..}`` then ``upsample`` (always built; applied only when ``apply_resample``)."""

    def __init__(self, in_ch: int, out_ch: int, num_blocks: int, num_groups: int, dropout: float,
                 apply_resample: bool):
        super().__init__()
        blocks = []
        for _ in range(num_blocks):
            blocks.append(ResnetBlock(in_ch, out_ch, num_groups, dropout))
            in_ch = out_ch
        self.block = nn.CellList(blocks)
        self.upsample = Upsample2x(out_ch, with_conv=True)
        self.apply_resample = apply_resample

    def construct(self, x):
        for blk in self.block:
            x = blk(x)
        if self.apply_resample:
            x = self.upsample(x)
        return x


class Encoder(nn.Cell):
    def __init__(self, ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2, in_channels=3, z_channels=4,
                 double_z=True, num_groups=32, dropout=0.0):
        super().__init__()
        n = len(ch_mult)
        self.conv_in = conv2d(in_channels, ch, 3)
        in_mult = (1,) + tuple(ch_mult)
        levels = []
        for i in range(n):
            levels.append(_DownLevel(ch * in_mult[i], ch * ch_mult[i], num_res_blocks, num_groups, dropout,
                                     apply_resample=i != n - 1))
        self.down = nn.CellList(levels)
        top = ch * ch_mult[-1]
        self.mid = _MidBlock(top, num_groups, dropout)
        self.norm_out = GroupNorm(num_groups, top, eps=1e-6)
        self.conv_out = conv2d(top, 2 * z_channels if double_z else z_channels, 3)

    def construct(self, x):
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(_swish(self.norm_out(h)))


class Decoder(nn.Cell):
    def __init__(self, ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2, out_ch=3, z_channels=4,
                 num_groups=32, dropout=0.0):
        super().__init__()
        n = len(ch_mult)
        top = ch * ch_mult[-1]
        self.conv_in = conv2d(z_channels, top, 3)
        self.mid = _MidBlock(top, num_groups, dropout)
        # input channels of level i: the output channels of level i+1 (or the mid block)
        level_in = [ch * ch_mult[i + 1] for i in range(n - 1)] + [top]
        self.up = nn.CellList([
            _UpLevel(level_in[i], ch * ch_mult[i], num_res_blocks + 1, num_groups, dropout,
                     apply_resample=i != 0)
            for i in range(n)])
        self.num_levels = n
        self.norm_out = GroupNorm(num_groups, ch * ch_mult[0], eps=1e-6)
        self.conv_out = conv2d(ch * ch_mult[0], out_ch, 3)

    def construct(self, z):
        h = self.mid(self.conv_in(z))
        for i in range(self.num_levels - 1, -1, -1):
            h = self.up[i](h)
        return self.conv_out(_swish(self.norm_out(h)))


class AutoencoderKL(nn.Cell):
    """CompVis ``AutoencoderKL`` (no loss / discriminator).

    ``encode_moments(x) -> (mean, logvar)``; ``encode(x, noise) -> mean + exp(logvar/2)*noise``;
    ``decode(z) -> image``; ``construct(x, noise) = decode(encode(x, noise))``.
    Images are NCHW in [-1, 1]; latents are (B, embed_dim, H/2^(L-1), W/2^(L-1))."""

    def __init__(self, embed_dim=4, z_channels=4, ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2,
                 in_channels=3, out_ch=3, num_groups=32, dropout=0.0, double_z=True):
        super().__init__()
        if not double_z:
            raise ValueError("AutoencoderKL needs double_z=True (the encoder must output mean and "
                             "logvar); use double_z=True")
        if not ch_mult or any(int(m) <= 0 for m in ch_mult):
            raise ValueError(f"ch_mult must be a non-empty sequence of positive ints, got {ch_mult!r}")
        if num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {num_res_blocks}")
        ch_mult = tuple(int(m) for m in ch_mult)
        for c in sorted({ch * m for m in ch_mult} | {ch}):
            if c % num_groups:
                raise ValueError(f"AutoencoderKL: channel count {c} (ch={ch} x ch_mult) is not divisible "
                                 f"by num_groups={num_groups}; choose ch / num_groups accordingly")
        self.embed_dim = embed_dim
        self.z_channels = z_channels
        self.downscale = 2 ** (len(ch_mult) - 1)
        self.encoder = Encoder(ch, ch_mult, num_res_blocks, in_channels, z_channels, double_z, num_groups,
                               dropout)
        self.decoder = Decoder(ch, ch_mult, num_res_blocks, out_ch, z_channels, num_groups, dropout)
        self.quant_conv = conv2d(2 * z_channels, 2 * embed_dim, 1)
        self.post_quant_conv = conv2d(embed_dim, z_channels, 1)

    def encode_moments(self, x):
        moments = ops.cast(self.quant_conv(self.encoder(x)), ms.float32)
        mean, logvar = ops.split(moments, self.embed_dim, axis=1)
        logvar = ops.clamp(logvar, -30.0, 20.0)
        return mean, logvar

    def encode(self, x, noise):
        mean, logvar = self.encode_moments(x)
        return mean + ops.exp(0.5 * logvar) * ops.cast(noise, ms.float32)

    def decode(self, z):
        return ops.cast(self.decoder(self.post_quant_conv(z)), ms.float32)

    def construct(self, x, noise):
        return self.decode(self.encode(x, noise))


def vae_unused_param_names(num_levels: int = 4) -> list[str]:
    """Names (relative to AutoencoderKL) of the parameters that are built but never used."""
    return [f"encoder.down.{num_levels - 1}.downsample.conv.weight",
            f"encoder.down.{num_levels - 1}.downsample.conv.bias",
            "decoder.up.0.upsample.conv.weight",
            "decoder.up.0.upsample.conv.bias"]


class VAEEncoder(nn.Cell):
    """``construct(x) -> (mean, logvar)`` of ``vae`` (a separately compilable graph).

    Created with ``auto_prefix=False`` so wrapping does not rename the VAE's parameters.
    Do not assign a wrapper as an attribute of another Cell that also owns ``vae``: MindSpore
    would re-prefix the VAE parameter names with the wrapper's path."""

    def __init__(self, vae: AutoencoderKL):
        super().__init__(auto_prefix=False)
        self.vae = vae

    def construct(self, x):
        return self.vae.encode_moments(x)


class VAEDecoder(nn.Cell):
    """``construct(z) -> image`` = ``vae.decode(z)`` (no latent scale factor); see VAEEncoder."""

    def __init__(self, vae: AutoencoderKL):
        super().__init__(auto_prefix=False)
        self.vae = vae

    def construct(self, z):
        return self.vae.decode(z)
