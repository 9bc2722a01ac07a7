"""GLIDE's text-conditional UNets (Taichu-GLIDE ``model/glide_text2im/model/unet.py`` and
``text2im_model.py``): ``GlideText2ImUNet`` (the 64 px base) and ``GlideSuperResUNet`` (64 -> 256),
parameter names as in the Taichu-GLIDE checkpoints
(relative to ``diffusion_with_p_sample.p_mean_variance.guider_net.``).

Architecture (the same as OpenAI glide-text2im ``Text2ImUNet`` / ``SuperResText2ImUNet``):

* ResBlock: ``in_layers_0`` GroupNorm32+SiLU -> [up: nearest x2 | down: avgpool 2x2 of both h and
  the skip] -> ``in_layers_2`` conv3x3; ``emb_layers.1`` Dense(emb -> 2 out) split into
  (scale, shift); ``h = out_layers_0(h) * (1 + scale) + shift`` -> SiLU -> dropout ->
  ``out_layers_3`` conv3x3 (zero-init); skip = identity or ``skip_connection`` conv1x1.
* AttentionBlock: ``norm`` GN32 -> ``qkv`` 1x1 conv -> QKV attention ("new order": per head
  [q|k|v] contiguous channels; ``encoder_kv`` 1x1 conv of the text tokens gives per head [k|v],
  the text positions come FIRST in the key sequence; q and k each scaled by ``1/sqrt(sqrt(64))``;
  softmax fp32; no mask) -> ``proj_out`` 1x1 conv (zero-init) -> + x.
* Timestep embedding: ``[cos(t f), sin(t f)]``, ``f_k = exp(-ln(10000) k / half)``, dim =
  model_channels, t on the original 0..999 scale; fp32 by default, fp16 (Taichu) with
  ``timestep_fp16=True``; the frequency table from MindSpore kernels in Taichu's op order
  (``timestep_freqs="mindspore"``, default) or OpenAI's float32 numpy table (``"numpy"``).
  ``emb = time_embed(temb) + transformer_proj(xf_out[:, -1])``.
* Head: ``out.0`` GN32+SiLU, ``out2`` conv3x3 -> out_channels (zero-init).

1x1 convs are stored as 4-D ``[out, in, 1, 1]`` (MindSpore Conv1d layout), as in the checkpoints.
The output is cast to x's dtype.
"""
from __future__ import annotations

import math

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from ..cpu_attention import fused_attention_op
from ..nn.layers import ConvNd, GroupNorm, dense
from ..nn.unet_blocks import UNetBlocksMixin, build_unet_blocks, dropout_cell
from .config import glide_base_defaults, glide_sr_defaults, network_config
from .text_transformer import TextConditioning, check_text_config

__all__ = ["GlideSuperResUNet", "GlideText2ImUNet", "GlideTimestepEmbedding", "legacy_bilinear_resize"]


def _upsample_nearest2x(x):
    b, c, h, w = x.shape
    return ops.broadcast_to(x.reshape(b, c, h, 1, w, 1), (b, c, h, 2, w, 2)).reshape(b, c, 2 * h, 2 * w)


def _avgpool2x2(x):
    b, c, h, w = x.shape
    return x.reshape(b, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))


class GlideTimestepEmbedding(nn.Cell):
    """``[cos(t f), sin(t f)]`` with ``f_k = exp(-ln(10000) k / half)``, k < half = dim // 2.

    ``fp16=False``: fp32 (OpenAI's and Taichu-GLIDE's default policy). ``fp16=True``: Taichu-GLIDE's
    fp16 policy, where the frequencies, the product ``t f`` and cos / sin are all fp16, the
    frequencies rounded step by step in fp16: ``exp(fp16(fp16(-ln 10000) * k) / half)``.

    ``freqs`` picks the kernels that build the frequency table (once, at construction):

    * ``"numpy"`` (the class default): numpy in the embedding's dtype; for fp32 this is OpenAI
      glide-text2im's / PyTorch's float32 table.
    * ``"mindspore"``: Taichu's ``TimestepEmbedding`` op order in the embedding's dtype with
      MindSpore kernels (:meth:`taichu_freqs`), the table Taichu computes at run time in its
      graph, so the released checkpoints give the original's numbers bit for bit. MindSpore's
      float32 ``exp`` differs from numpy's by up to ~5e-6 relative and its fp16 ``exp`` rounds some
      entries one ulp away from numpy's (up to ~4e-3 on the fp16 embedding at t=999).

    The GLIDE network configs select it with ``timestep_freqs`` (default ``"mindspore"``)."""

    FREQS = ("numpy", "mindspore")

    def __init__(self, dim: int, fp16: bool = False, max_period: float = 10000.0, freqs: str = "numpy"):
        super().__init__()
        if dim % 2:
            raise ValueError(f"timestep embedding dim (model_channels) must be even, got {dim}")
        if freqs not in self.FREQS:
            raise ValueError(f"GLIDE timestep embedding freqs must be one of {self.FREQS}, got {freqs!r}")
        half = dim // 2
        self.dtype = ms.float16 if fp16 else ms.float32
        if freqs == "mindspore":
            self.freqs = self.taichu_freqs(half, self.dtype, max_period).reshape(1, half)
        elif fp16:
            k = np.arange(half, dtype=np.float16)
            f = np.exp((np.float16(-math.log(max_period)) * k) / np.float16(half)).astype(np.float16)
            self.freqs = Tensor(f[None, :])
        else:
            f = np.exp(-math.log(max_period) * np.arange(half, dtype=np.float32) / np.float32(half))
            self.freqs = Tensor(f.astype(np.float32)[None, :])
        self.half = half

    @staticmethod
    def taichu_freqs(half: int, dtype, max_period: float = 10000.0) -> Tensor:
        """Taichu's op order in ``dtype``: constant ``-ln(max_period)``, times the ``arange``,
        divided by the integer ``half``, then ``exp``; evaluated eagerly (a graph runs the same
        kernels)."""
        c = Tensor(-math.log(max_period), dtype)
        k = Tensor(np.arange(half), dtype)
        return ops.exp(c * k / half)

    def construct(self, t):
        b = t.shape[0]
        args = ops.broadcast_to(ops.cast(t, self.dtype).reshape(b, 1), (b, self.half)) * \
            ops.broadcast_to(self.freqs, (b, self.half))
        return ops.concat((ops.cos(args), ops.sin(args)), axis=1)


def legacy_bilinear_resize(x, size):
    """Bilinear resize with MindSpore's legacy (TF1) mapping ``src = dst * in / out`` (no half
    pixel centres, edge clamp): ``ResizeBilinearV2(align_corners=False, half_pixel_centers=False)``,
    what Taichu-GLIDE's ``ops.ResizeBilinear`` (``SuperResText2ImUNet``) computes."""
    return ops.ResizeBilinearV2(align_corners=False, half_pixel_centers=False)(x, size)


class ResBlock(nn.Cell):
    """Scale-shift-norm ResBlock, optionally resampling (``up``: nearest x2, ``down``: avgpool 2x2)
    inside. Attribute order = checkpoint order."""

    def __init__(self, ch: int, emb_ch: int, out_ch: int, dropout: float = 0.0, up: bool = False,
                 down: bool = False, num_groups: int = 32):
        super().__init__()
        self.in_layers_0 = GroupNorm(num_groups, ch)
        self.in_layers_2 = ConvNd(ch, out_ch, 3)
        self.emb_layers = nn.SequentialCell([nn.SiLU(), dense(emb_ch, 2 * out_ch)])
        self.out_layers_0 = GroupNorm(num_groups, out_ch)
        self.out_layers_3 = ConvNd(out_ch, out_ch, 3, zero_init=True)
        self.has_skip = ch != out_ch
        if self.has_skip:
            self.skip_connection = ConvNd(ch, out_ch, 1)
        self.act = nn.SiLU()
        self.dropout = dropout_cell(dropout)
        self.up = up
        self.down = down
        self.out_ch = out_ch

    def construct(self, x, emb, xf_out):
        h = self.act(self.in_layers_0(x))
        if self.up:
            h = _upsample_nearest2x(h)
            x = _upsample_nearest2x(x)
        elif self.down:
            h = _avgpool2x2(h)
            x = _avgpool2x2(x)
        h = self.in_layers_2(h)
        e = self.emb_layers(emb)
        b = e.shape[0]
        scale, shift = ops.split(e.reshape(b, 2 * self.out_ch, 1, 1), self.out_ch, axis=1)
        shape = h.shape
        h = self.out_layers_0(h)
        h = h * (ops.broadcast_to(ops.cast(scale, h.dtype), shape) + 1.0) + \
            ops.broadcast_to(ops.cast(shift, h.dtype), shape)
        h = self.out_layers_3(self.dropout(self.act(h)))
        if self.has_skip:
            return self.skip_connection(x) + h
        return x + h


class AttentionBlock(nn.Cell):
    """Self-attention over H*W positions whose keys / values are preceded by the text tokens'
    (``encoder_kv``). ``heads`` heads of ``ch // heads`` channels."""

    def __init__(self, ch: int, heads: int, encoder_ch: int, num_groups: int = 32):
        super().__init__()
        self.norm = GroupNorm(num_groups, ch)
        self.qkv = ConvNd(ch, 3 * ch, 1)
        self.encoder_kv = ConvNd(encoder_ch, 2 * ch, 1)
        self.proj_out = ConvNd(ch, ch, 1, zero_init=True)
        self.ch = ch
        self.heads = heads
        self.head_dim = ch // heads
        self.scale = 1.0 / math.sqrt(math.sqrt(self.head_dim))
        self.bmm_qk = ops.BatchMatMul(transpose_a=True)   # q^T k: (BH, T, S)
        self.bmm_av = ops.BatchMatMul(transpose_b=True)   # v attn^T: (BH, c, T)
        self.softmax = ops.Softmax(axis=-1)
        # on CPU: one fused kernel on the (BH, c, T) layout (mind_diffusion/cpu_attention.py)
        self.fused = fused_attention_op("channels_first")

    def construct(self, x, emb, xf_out):
        b, c, hh, ww = x.shape
        t = hh * ww
        bh, d = b * self.heads, self.head_dim
        qkv = self.qkv(self.norm(x)).reshape(bh, 3 * d, t)
        q, k, v = ops.split(qkv, d, axis=1)                              # (BH, c, T)
        n_text = xf_out.shape[2]
        ekv = self.encoder_kv(xf_out.reshape(b, xf_out.shape[1], n_text, 1))
        ek, ev = ops.split(ops.cast(ekv, qkv.dtype).reshape(bh, 2 * d, n_text), d, axis=1)
        k = ops.concat((ek, k), axis=2)                                 # text positions first
        v = ops.concat((ev, v), axis=2)
        if self.fused is not None:
            f32 = ms.float32
            out = self.fused(ops.cast(q * self.scale, f32), ops.cast(k * self.scale, f32), ops.cast(v, f32))
            return x + self.proj_out(ops.cast(out, v.dtype).reshape(b, c, hh, ww))
        scores = self.bmm_qk(q * self.scale, k * self.scale)              # (BH, T, S)
        attn = ops.cast(self.softmax(ops.cast(scores, ms.float32)), v.dtype)
        out = self.bmm_av(v, attn).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


def _check_unet_config(in_channels, out_channels, model_channels, channel_mult, num_res_blocks,
                       attention_resolutions, num_heads, num_head_channels, num_heads_upsample,
                       dropout, num_groups):
    for key, val in (("in_channels", in_channels), ("out_channels", out_channels),
                     ("model_channels", model_channels), ("num_res_blocks", num_res_blocks),
                     ("num_groups", num_groups)):
        if not isinstance(val, int) or val < 1:
            raise ValueError(f"GLIDE UNet: {key} must be a positive int, got {val!r}")
    if not channel_mult or any((not isinstance(m, int)) or m < 1 for m in channel_mult):
        raise ValueError(f"GLIDE UNet: channel_mult must be a non-empty list of positive ints, got {channel_mult!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"GLIDE UNet: dropout is the drop probability, in [0, 1) (Taichu's "
                         f"keep_prob 0.9 is dropout 0.1), got {dropout!r}")
    possible = {2 ** i for i in range(len(channel_mult))}
    bad = [a for a in attention_resolutions if a not in possible]
    if bad:
        raise ValueError(f"GLIDE UNet: attention_resolutions are downsample factors (ds) and must be "
                         f"among {sorted(possible)} for {len(channel_mult)} levels, got {bad}")
    for level, mult in enumerate(channel_mult):
        ch = model_channels * mult
        if ch % num_groups:
            raise ValueError(f"GLIDE UNet: channels {ch} (model_channels {model_channels} x mult {mult}) "
                             f"are not divisible by num_groups {num_groups}")
        # heads matter only where attention is: the levels of attention_resolutions and the middle block
        if 2 ** level not in attention_resolutions and level != len(channel_mult) - 1:
            continue
        if num_head_channels == -1:
            for heads in (num_heads, num_heads_upsample if num_heads_upsample != -1 else num_heads):
                if heads < 1 or ch % heads:
                    raise ValueError(f"GLIDE UNet: channels {ch} are not divisible by num_heads {heads}")
        elif num_head_channels < 1 or ch % num_head_channels:
            raise ValueError(f"GLIDE UNet: channels {ch} are not divisible by num_head_channels "
                             f"{num_head_channels} (set num_head_channels=-1 to use num_heads)")
    if model_channels % 2:
        raise ValueError(f"GLIDE UNet: model_channels must be even (timestep embedding), got {model_channels}")


class _GlideUNet(TextConditioning, UNetBlocksMixin, nn.Cell):
    """Shared body of the base and SR UNets; see the module docstring."""

    def __init__(self, *, in_channels, model_channels, out_channels, num_res_blocks,
                 attention_resolutions, dropout, channel_mult, num_heads, num_head_channels,
                 num_heads_upsample, text_ctx, xf_width, xf_layers, xf_heads, n_vocab, gelu, ln_eps,
                 timestep_fp16, timestep_freqs, num_groups, image_size):
        nn.Cell.__init__(self)
        channel_mult = tuple(channel_mult)
        attention_resolutions = tuple(attention_resolutions)
        _check_unet_config(in_channels, out_channels, model_channels, channel_mult, num_res_blocks,
                           attention_resolutions, num_heads, num_head_channels, num_heads_upsample,
                           dropout, num_groups)
        check_text_config(text_ctx, xf_width, xf_layers, xf_heads, n_vocab, gelu, ln_eps)
        if timestep_freqs not in GlideTimestepEmbedding.FREQS:
            raise ValueError(f"GLIDE UNet: timestep_freqs must be 'mindspore' (Taichu-GLIDE's run-time "
                             f"MindSpore kernels) or 'numpy' (OpenAI's float32 table), got {timestep_freqs!r}")
        down = 2 ** (len(channel_mult) - 1)
        if not isinstance(image_size, int) or image_size < 1 or image_size % down:
            raise ValueError(f"GLIDE UNet: image_size {image_size!r} must be a positive multiple of "
                             f"{down} (2 ** (levels - 1))")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.image_size = image_size
        self.size_multiple = down
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        emb_ch = 4 * model_channels

        def heads_for(ch, default):
            return ch // num_head_channels if num_head_channels != -1 else default

        def res(ch, out, up=False, down=False):
            return ResBlock(ch, emb_ch, out, dropout, up=up, down=down, num_groups=num_groups)

        def attn(ch, default_heads):
            return AttentionBlock(ch, heads_for(ch, default_heads), xf_width, num_groups)

        # order of attributes = order of parameters in the official checkpoints
        self._init_text_params(text_ctx, xf_width)
        self.time_proj = GlideTimestepEmbedding(model_channels, fp16=timestep_fp16, freqs=timestep_freqs)
        self.time_embed = nn.SequentialCell([dense(model_channels, emb_ch), nn.SiLU(), dense(emb_ch, emb_ch)])

        self.input_blocks, self.middle_block, self.output_blocks, ch = build_unet_blocks(
            in_channels, model_channels, channel_mult, num_res_blocks, attention_resolutions,
            res=res, attn=lambda c, part: attn(c, num_heads_upsample if part == "output" else num_heads),
            down=lambda c: res(c, c, down=True), up=lambda c: res(c, c, up=True))
        self.out = nn.SequentialCell([GroupNorm(num_groups, ch), nn.SiLU()])
        self.out2 = ConvNd(ch, out_channels, 3, zero_init=True)
        self._init_text_cells(xf_layers, xf_heads, n_vocab, emb_ch, gelu, ln_eps)
        self.num_inputs = len(self.input_blocks)

    def _forward(self, x, t, tokens, mask):
        xf_proj, xf_out = self.encode_text(tokens, mask)
        # an fp16 embedding (timestep_fp16) is exact in fp32; the Dense layers cast to their
        # compute dtype themselves
        emb = self.time_embed(ops.cast(self.time_proj(t), ms.float32))
        emb = emb + ops.cast(xf_proj, emb.dtype)
        h = self.run_blocks(x, emb, xf_out)
        return ops.cast(self.out2(self.out(h)), x.dtype)

    def _check_x(self, x):
        if x.shape[1] != self.in_channels_x or x.shape[2] % self.size_multiple or x.shape[3] % self.size_multiple:
            raise ValueError("GLIDE UNet: x must be (B, 3, H, W) with H and W multiples of "
                             "2 ** (len(channel_mult) - 1)")


class GlideText2ImUNet(_GlideUNet):
    """The base model. ``construct(x (B,3,H,W) float, t (B,) timesteps 0..999 float or int,
    tokens (B, text_ctx) int32, mask (B, text_ctx) int32 1 = real token) -> (B, out_channels, H, W)``
    (channels 0..2: eps, 3..5: the learned-range variance interpolation v).

    ``cfg`` overrides ``glide_base_defaults()`` (unknown keys raise a ValueError)."""

    def __init__(self, **cfg):
        super().__init__(**network_config(glide_base_defaults(), cfg, "GlideText2ImUNet"))
        self.in_channels_x = self.in_channels

    def construct(self, x, t, tokens, mask):
        self._check_x(x)
        return self._forward(x, t, tokens, mask)


class GlideSuperResUNet(_GlideUNet):
    """The 64 -> 256 upsampler: ``construct(x (B,3,H,W), t, low_res (B,3,h,w), tokens, mask)``.
    ``low_res`` is resized to (H, W) inside with the legacy bilinear mapping
    (:func:`legacy_bilinear_resize`) and
    concatenated after x (in_channels = 6). Quantising low_res to 8 bits is the sampler's job.

    ``cfg`` overrides ``glide_sr_defaults()`` (unknown keys raise a ValueError)."""

    def __init__(self, **cfg):
        super().__init__(**network_config(glide_sr_defaults(), cfg, "GlideSuperResUNet"))
        if self.in_channels % 2:
            raise ValueError(f"GLIDE SR UNet: in_channels must be 2 x the image channels (x and the "
                             f"upsampled low-res image), got {self.in_channels}")
        self.in_channels_x = self.in_channels // 2
        self.resize = ops.ResizeBilinearV2(align_corners=False, half_pixel_centers=False)

    def construct(self, x, t, low_res, tokens, mask):
        self._check_x(x)
        if low_res.shape[1] != self.in_channels_x:
            raise ValueError("GLIDE SR UNet: low_res must have as many channels as x")
        hh, ww = x.shape[2], x.shape[3]
        up = self.resize(ops.cast(low_res, ms.float32), (hh, ww))
        return self._forward(ops.concat((x, ops.cast(up, x.dtype)), axis=1), t, tokens, mask)
