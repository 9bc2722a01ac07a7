"""UNet with spatial transformers of Wukong-Huahua / Stable-Diffusion v1 (CompVis ``UNetModel``
with ``use_spatial_transformer=True``), parameter names as in the MindSpore port.

Defaults are the SD-v1 / Wukong shape: 320 channels, mults (1,2,4,4), 2 ResBlocks per level,
attention at ds 1, 2, 4, 8 heads, context 768; 686 tensors, 859,520,964 parameters. Names
relative to this cell are the checkpoint's ``model.diffusion_model.*`` names without the prefix
(``input_blocks.1.0.in_layers_conv.conv.weight``, ``...transformer_blocks.0.attn2.to_k.weight``).

Numerics: GroupNorm eps 1e-5 (ResBlocks, ``out.0``) and 1e-6 (SpatialTransformer ``norm``),
LayerNorm eps 1e-5, all norms and the attention softmax in fp32. ``gelu="tanh"`` is Wukong's
GEGLU (MindSpore ``GeLU`` is the tanh approximation); ``gelu="exact"`` is the erf GELU of the
PyTorch CompVis / diffusers SD-v1.

Speed on CPU: attention runs as one fused kernel (``mind_diffusion/cpu_attention.py``: q, k, v in
the projections' (B, N, heads, dim) layout, the softmax block by block in cache, never the whole
score matrix; 4096 positions x 320 channels 0.39 s against 0.71 s composed, and the full UNet
step's peak RSS ~6.0 GB against ~9.1 GB). Elsewhere (GPU, Ascend, or CPU with
``MIND_DIFFUSION_FUSED_ATTENTION=off`` or without a C++ compiler) it is composed of MindSpore
kernels: batched matmuls with transpose flags (no explicit ``k^T``), the
``1/sqrt(d)`` scale folded into q, softmax in fp32; ``attn_slice`` processes the query
rows in chunks of that many rows to bound the memory of the (B*heads, N, M) score matrix
(chunks are chained with ``ops.depend`` so they run one after another; results are identical).
At 64x64 latents, batch 2, ``attn_slice=1024`` lowers the graph-mode peak RSS from ~9.0 GB to
~7.6 GB and is no slower. Broadcasts are explicit (``ops.broadcast_to``): an implicitly
broadcasting binary op pins extra CPU workspace memory for the graph's lifetime.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

from ..nn.layers import (
    ConvNd,
    GroupNorm,
    LayerNorm,
    SinusoidalTimeEmbedding,
    conv2d,
    dense,
)
from ..cpu_attention import fused_attention_op
from ..cpu_gemm import geglu_op, geglu_params
from ..nn.lora import UNET_ATTN_TARGETS, inject_lora
from ..nn.unet_blocks import UNetBlocksMixin, build_unet_blocks, dropout_cell

GELU_MODES = ("tanh", "exact")


class ResBlock(nn.Cell):
    """h = conv(SiLU(GN(x))) + Dense(SiLU(emb)); h = conv(drop(SiLU(GN(h)))); out = skip(x) + h."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0, num_groups: int = 32):
        super().__init__()
        self.in_layers_norm = GroupNorm(num_groups, in_ch, eps=1e-5)
        self.in_layers_conv = ConvNd(in_ch, out_ch, 3)
        self.emb_layers = nn.SequentialCell([nn.SiLU(), dense(emb_dim, out_ch)])
        self.out_layers_norm = GroupNorm(num_groups, out_ch, eps=1e-5)
        self.out_layers_conv = ConvNd(out_ch, out_ch, 3, zero_init=True)
        self.has_skip = in_ch != out_ch
        if self.has_skip:
            self.skip_connection = ConvNd(in_ch, out_ch, 1)
        self.act = nn.SiLU()
        self.dropout = dropout_cell(dropout)

    def construct(self, x, emb, context):
        h = self.in_layers_conv(self.act(self.in_layers_norm(x)))
        e = self.emb_layers(emb)
        # explicit broadcast: implicitly broadcasting ops pin extra CPU workspace memory in graph mode
        h = h + ops.broadcast_to(e.reshape(e.shape[0], e.shape[1], 1, 1), h.shape)
        h = self.out_layers_conv(self.dropout(self.act(self.out_layers_norm(h))))
        if self.has_skip:
            return self.skip_connection(x) + h
        return x + h


class Downsample(nn.Cell):
    """Conv2d k3, stride 2, padding 1 (held as ``op.conv``)."""

    def __init__(self, ch: int):
        super().__init__()
        self.op = ConvNd(ch, ch, 3, stride=2, padding=1)

    def construct(self, x, emb, context):
        return self.op(x)


class Upsample(nn.Cell):
    """Nearest-neighbour x2, then Conv2d k3 p1 (held as ``conv.conv``)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = ConvNd(ch, ch, 3)

    def construct(self, x, emb, context):
        b, c, h, w = x.shape
        x = ops.broadcast_to(x.reshape(b, c, h, 1, w, 1), (b, c, h, 2, w, 2)).reshape(b, c, 2 * h, 2 * w)
        return self.conv(x)


class CrossAttention(nn.Cell):
    """Multi-head attention: q from x (B, N, C), k/v from context (B, M, Cc); to_q/k/v without
    bias, ``to_out = [Dense(inner, C), Dropout]``. ``construct(x, context)`` (self-attention:
    pass x twice)."""

    def __init__(self, query_dim: int, context_dim: int, heads: int, dim_head: int, dropout: float = 0.0,
                 attn_slice: int | None = None):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.dim_head = dim_head
        self.scale = dim_head ** -0.5
        self.attn_slice = attn_slice
        self.to_q = dense(query_dim, inner, bias=False)
        self.to_k = dense(context_dim, inner, bias=False)
        self.to_v = dense(context_dim, inner, bias=False)
        self.to_out = nn.SequentialCell([dense(inner, query_dim), dropout_cell(dropout)])
        self.bmm_qk = ops.BatchMatMul(transpose_b=True)   # q k^T
        self.bmm_av = ops.BatchMatMul()                   # attn v
        self.softmax = ops.Softmax(axis=-1)
        # on CPU: one fused kernel in the projections' layout (mind_diffusion/cpu_attention.py)
        self.fused = fused_attention_op()

    def _heads(self, t):
        b, n, _ = t.shape
        return t.reshape(b, n, self.heads, self.dim_head).transpose(0, 2, 1, 3).reshape(
            b * self.heads, n, self.dim_head)

    def _attend(self, q, k, v):
        s = self.bmm_qk(q, k)
        p = ops.cast(self.softmax(ops.cast(s, ms.float32)), v.dtype)
        return self.bmm_av(p, v)

    def construct(self, x, context):
        b, n, _ = x.shape
        if self.fused is not None:
            m = context.shape[1]
            q = ops.cast(self.to_q(x) * self.scale, ms.float32).reshape(b, n, self.heads, self.dim_head)
            k = ops.cast(self.to_k(context), ms.float32).reshape(b, m, self.heads, self.dim_head)
            v = ops.cast(self.to_v(context), ms.float32).reshape(b, m, self.heads, self.dim_head)
            out = self.fused(q, k, v).reshape(b, n, self.heads * self.dim_head)
            return self.to_out(ops.cast(out, x.dtype))
        q = self._heads(self.to_q(x) * self.scale)
        k = self._heads(self.to_k(context))
        v = self._heads(self.to_v(context))
        if self.attn_slice is None or self.attn_slice >= n:
            out = self._attend(q, k, v)
        else:
            chunks = []
            prev = None
            for start in range(0, n, self.attn_slice):
                stop = min(start + self.attn_slice, n)
                qc = q[:, start:stop]
                if prev is not None:
                    # run the chunks one after another so each score block is freed before the next
                    qc = ops.depend(qc, prev)
                prev = self._attend(qc, k, v)
                chunks.append(prev)
            out = ops.concat(chunks, axis=1)
        out = out.reshape(b, self.heads, n, self.dim_head).transpose(0, 2, 1, 3).reshape(
            b, n, self.heads * self.dim_head)
        return self.to_out(out)


class GEGLU(nn.Cell):
    """a, gate = split(proj(x)); a * gelu(gate) (tanh approximation or exact erf)."""

    def __init__(self, dim_in: int, dim_out: int, gelu: str = "tanh"):
        super().__init__()
        self.proj = dense(dim_in, dim_out * 2)
        self.dim_out = dim_out
        self.exact = gelu == "exact"
        self.gelu_tanh = ops.GeLU()
        self.erf = ops.Erf()
        # on CPU, inference runs one kernel (mind_diffusion/cpu_gemm.py); training the ops below
        self.fused = geglu_op(self.exact)
        self.fused_params = geglu_params(self.exact)

    def construct(self, x):
        h = self.proj(x)
        if self.fused is not None and not self.training and h.dtype == ms.float32:
            return self.fused(h, self.fused_params)
        return self.composed(h)

    def composed(self, h):
        """``a * gelu(gate)`` of the projection's output h = [a | gate], in MindSpore ops (training,
        fp16 / bf16, devices other than CPU)."""
        a, gate = ops.split(h, self.dim_out, axis=-1)
        if self.exact:
            # 0.5 g (1 + erf(g / sqrt 2)); built from Erf because ops.gelu(approximate="none")
            # keeps its intermediates alive in CPU graph mode (~170 MB more per block at 64x64)
            return a * (gate * (self.erf(gate * 0.7071067811865476) * 0.5 + 0.5))
        return a * self.gelu_tanh(gate)


class FeedForward(nn.Cell):
    """``net = [GEGLU(dim -> 4 dim), Dropout, Dense(4 dim -> dim)]``."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0, gelu: str = "tanh"):
        super().__init__()
        inner = dim * mult
        self.net = nn.SequentialCell([GEGLU(dim, inner, gelu), dropout_cell(dropout), dense(inner, dim)])

    def construct(self, x):
        return self.net(x)


class BasicTransformerBlock(nn.Cell):
    """x += attn1(norm1(x)); x += attn2(norm2(x), context); x += ff(norm3(x)).
    Definition order (= save order): attn1, ff, attn2, norm1, norm2, norm3."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int, dropout: float = 0.0,
                 gelu: str = "tanh", attn_slice: int | None = None):
        super().__init__()
        self.attn1 = CrossAttention(dim, dim, heads, dim_head, dropout, attn_slice)
        self.ff = FeedForward(dim, dropout=dropout, gelu=gelu)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head, dropout, attn_slice)
        self.norm1 = LayerNorm(dim, eps=1e-5)
        self.norm2 = LayerNorm(dim, eps=1e-5)
        self.norm3 = LayerNorm(dim, eps=1e-5)

    def construct(self, x, context):
        h = self.norm1(x)
        x = self.attn1(h, h) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Cell):
    """GroupNorm (eps 1e-6) -> 1x1 conv -> (B, HW, C) -> transformer blocks -> (B, C, H, W) ->
    1x1 conv (zero-init) -> + input."""

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int,
                 num_groups: int = 32, dropout: float = 0.0, gelu: str = "tanh",
                 attn_slice: int | None = None):
        super().__init__()
        inner = heads * dim_head
        self.norm = GroupNorm(num_groups, channels, eps=1e-6)
        self.proj_in = conv2d(channels, inner, 1)
        self.transformer_blocks = nn.CellList([
            BasicTransformerBlock(inner, heads, dim_head, context_dim, dropout, gelu, attn_slice)
            for _ in range(depth)])
        self.proj_out = conv2d(inner, channels, 1, zero_init=True)

    def construct(self, x, emb, context):
        b, _c, h, w = x.shape
        y = self.proj_in(self.norm(x))
        ci = y.shape[1]
        y = y.reshape(b, ci, h * w).transpose(0, 2, 1)
        for blk in self.transformer_blocks:
            y = blk(y, context)
        y = y.transpose(0, 2, 1).reshape(b, ci, h, w)
        return self.proj_out(y) + x


class LDMUNet(UNetBlocksMixin, nn.Cell):
    """``construct(x (B,C,H,W), t (B,) int or float timesteps, context (B,L,context_dim)) -> eps``.

    H and W must be divisible by ``2 ** (len(channel_mult) - 1)`` (8 for SD-v1).

    ``enable_lora`` (the original's ``v1-*-chinese-lora.yaml`` keys ``enable_lora``, ``lora_rank``,
    ``lora_alpha``) wraps the layers named by ``lora_targets`` (default the attention projections
    ``to_q``, ``to_k``, ``to_v``, ``to_out.0``, as the original) in LoRA layers
    (:mod:`mind_diffusion.nn.lora`): the base names stay, ``*.tk_delta_lora_a/b`` are added."""

    def __init__(self, in_channels=4, out_channels=4, model_channels=320, channel_mult=(1, 2, 4, 4),
                 num_res_blocks=2, attention_resolutions=(4, 2, 1), num_heads=8, context_dim=768,
                 transformer_depth=1, num_groups=32, gelu="tanh", dropout=0.0, attn_slice=None,
                 time_freqs="float64", enable_lora=False, lora_rank=4, lora_alpha=4, lora_targets=None):
        super().__init__()
        channel_mult = tuple(int(m) for m in channel_mult)
        attention_resolutions = tuple(int(a) for a in attention_resolutions)
        if gelu not in GELU_MODES:
            raise ValueError(f"gelu must be one of {GELU_MODES} ('tanh' = Wukong / MindSpore GeLU, "
                             f"'exact' = erf as in PyTorch SD-v1), got {gelu!r}")
        if attn_slice is not None and (not isinstance(attn_slice, int) or attn_slice <= 0):
            raise ValueError(f"attn_slice must be None or a positive int (query rows per chunk), got {attn_slice!r}")
        if not channel_mult or num_res_blocks < 1 or transformer_depth < 1:
            raise ValueError("channel_mult must be non-empty, num_res_blocks and transformer_depth >= 1")
        for mult in channel_mult:
            ch = model_channels * mult
            if ch % num_groups:
                raise ValueError(f"channels {ch} (model_channels {model_channels} x mult {mult}) are not "
                                 f"divisible by num_groups={num_groups}")
            if ch % num_heads:
                raise ValueError(f"channels {ch} are not divisible by num_heads={num_heads}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.num_levels = len(channel_mult)
        emb_dim = model_channels * 4
        st = {"depth": transformer_depth, "context_dim": context_dim, "num_groups": num_groups, "dropout": dropout,
                  "gelu": gelu, "attn_slice": attn_slice}

        def transformer(ch):
            return SpatialTransformer(ch, num_heads, ch // num_heads, **st)

        # time_freqs="mindspore_fp32": the frequencies as Wukong-Huahua computes them (MindSpore fp32
        # ops); "float64": rounded once from float64, as diffusers / PyTorch give them
        self.time_proj = SinusoidalTimeEmbedding(model_channels, shift=0, flip=True, freqs=time_freqs)
        self.time_embed = nn.SequentialCell([dense(model_channels, emb_dim), nn.SiLU(), dense(emb_dim, emb_dim)])

        self.input_blocks, self.middle_block, self.output_blocks, ch = build_unet_blocks(
            in_channels, model_channels, channel_mult, num_res_blocks, attention_resolutions,
            res=lambda c, out: ResBlock(c, out, emb_dim, dropout, num_groups),
            attn=lambda c, part: transformer(c), down=Downsample, up=Upsample)
        self.out = nn.SequentialCell([GroupNorm(num_groups, ch, eps=1e-5), nn.SiLU(),
                                      ConvNd(model_channels, out_channels, 3, zero_init=True)])
        self.num_inputs = len(self.input_blocks)
        if enable_lora:
            inject_lora(self, lora_rank, lora_alpha, tuple(lora_targets or UNET_ATTN_TARGETS))

    def construct(self, x, t, context):
        emb = self.time_embed(self.time_proj(t))
        return self.out(self.run_blocks(x, emb, context))
