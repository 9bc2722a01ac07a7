"""GLIDE's text transformer (Taichu-GLIDE ``model/glide_text2im/model/xf.py`` and ``get_text_emb`` in
``text2im_model.py``): the text conditioning of the base and the super-resolution UNets.

tokens (B, text_ctx) int32 and mask (B, text_ctx) int32 (1 = real token) ->

1. ``x = token_embedding(tokens) + positional_embedding``;
2. ``x = where(mask, x, padding_embedding)`` (xf_padding: a learned embedding per padded slot);
3. ``xf_layers`` pre-LN residual blocks ``x += attn(ln_1(x)); x += mlp(ln_2(x))`` with
   ``attn = c_proj(MHA(c_qkv(x)))`` (per head the c_qkv output holds [q | k | v] of 64 channels,
   q and k both scaled by ``1/sqrt(sqrt(64))``, softmax in fp32, **no** causal or padding mask)
   and ``mlp = c_proj(GELU(c_fc(x)))``;
4. ``final_ln``;
5. ``xf_proj = transformer_proj(x[:, -1])`` (the LAST position, usually a padding slot) and
   ``xf_out = x`` transposed to (B, xf_width, text_ctx), the encoder tokens of every attention
   block.

Numerics that differ between Taichu-GLIDE (MindSpore) and OpenAI glide-text2im, both selectable:
``gelu="tanh"`` (MindSpore ``nn.GELU`` default, Taichu) or ``"exact"`` (erf, OpenAI) and
``ln_eps=1e-7`` (MindSpore ``nn.LayerNorm`` default, Taichu) or ``1e-5`` (PyTorch, OpenAI).

In the checkpoints the text transformer is not a sub-cell: its parameters sit at the top level
of the UNet (``positional_embedding``, ``padding_embedding``, ``transformer.resblocks.L.…``,
``final_ln.{gamma,beta}``, ``token_embedding.embedding_table``, ``transformer_proj.{weight,bias}``).
A MindSpore parameter is named after the attribute path that holds it, so the pieces are attached
to the UNet itself by :class:`TextConditioning` (a mixin, not a Cell). :class:`GlideTextTransformer`
is the same thing as a stand-alone cell, with the same relative names.

Precision: parameters fp32 (the official files store the two embeddings as fp16; they are cast
on load). LayerNorm and softmax compute in fp32; the Dense layers may compute in fp16
(``apply_compute_dtype``) while the residual stream stays in the dtype of the embeddings (fp32),
as in the original, whose ``_Linear`` casts its output back to its input's dtype.
"""
from __future__ import annotations

import math

import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import Normal, initializer

from ..nn.layers import LayerNorm, dense

__all__ = [
    "GELU_MODES",
    "GlideTextTransformer",
    "ResidualAttentionBlock",
    "TextConditioning",
    "Transformer",
    "check_text_config",
]

GELU_MODES = ("tanh", "exact")


def check_text_config(text_ctx: int, xf_width: int, xf_layers: int, xf_heads: int, n_vocab: int,
                      gelu: str, ln_eps: float) -> None:
    for key, val in (("text_ctx", text_ctx), ("xf_width", xf_width), ("xf_heads", xf_heads),
                     ("n_vocab", n_vocab)):
        if not isinstance(val, int) or val < 1:
            raise ValueError(f"GLIDE text transformer: {key} must be a positive int, got {val!r}")
    if not isinstance(xf_layers, int) or xf_layers < 0:
        raise ValueError(f"GLIDE text transformer: xf_layers must be an int >= 0, got {xf_layers!r}")
    if xf_width % xf_heads:
        raise ValueError(f"GLIDE text transformer: xf_width {xf_width} is not divisible by "
                         f"xf_heads {xf_heads} (GLIDE uses 512 / 8 = 64 channels per head)")
    if gelu not in GELU_MODES:
        raise ValueError(f"GLIDE text transformer: gelu must be one of {GELU_MODES} "
                         f"('tanh' = Taichu-GLIDE / MindSpore nn.GELU, 'exact' = erf as in "
                         f"OpenAI glide-text2im), got {gelu!r}")
    if not float(ln_eps) > 0:
        raise ValueError(f"GLIDE text transformer: ln_eps must be > 0 (Taichu 1e-7, OpenAI 1e-5), "
                         f"got {ln_eps!r}")


class GELU(nn.Cell):
    """``tanh``: MindSpore ``GeLU`` (tanh approximation); ``exact``: ``0.5 x (1 + erf(x/sqrt 2))``."""

    def __init__(self, mode: str = "tanh"):
        super().__init__()
        self.exact = mode == "exact"
        self.gelu_tanh = ops.GeLU()
        self.erf = ops.Erf()

    def construct(self, x):
        if self.exact:
            return x * (self.erf(x * 0.7071067811865476) * 0.5 + 0.5)
        return self.gelu_tanh(x)


class MultiheadAttention(nn.Cell):
    """``c_qkv`` (W -> 3W, per head [q|k|v]) -> attention without mask -> ``c_proj``."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.width = width
        self.heads = heads
        self.head_dim = width // heads
        self.scale = 1.0 / math.sqrt(math.sqrt(self.head_dim))
        self.c_qkv = dense(width, 3 * width)
        self.c_proj = dense(width, width)
        self.bmm_qk = ops.BatchMatMul(transpose_b=True)   # q k^T
        self.bmm_av = ops.BatchMatMul()                   # attn v
        self.softmax = ops.Softmax(axis=-1)

    def construct(self, x):
        b, n, _ = x.shape
        h, d = self.heads, self.head_dim
        qkv = self.c_qkv(x).reshape(b, n, h, 3 * d)
        q, k, v = ops.split(qkv, d, axis=-1)                       # each (B, L, H, D)
        q = (q * self.scale).transpose(0, 2, 1, 3).reshape(b * h, n, d)
        k = (k * self.scale).transpose(0, 2, 1, 3).reshape(b * h, n, d)
        v = v.transpose(0, 2, 1, 3).reshape(b * h, n, d)
        attn = ops.cast(self.softmax(ops.cast(self.bmm_qk(q, k), ms.float32)), v.dtype)
        out = self.bmm_av(attn, v).reshape(b, h, n, d).transpose(0, 2, 1, 3).reshape(b, n, h * d)
        return self.c_proj(out)


class MLP(nn.Cell):
    def __init__(self, width: int, gelu: str):
        super().__init__()
        self.c_fc = dense(width, 4 * width)
        self.c_proj = dense(4 * width, width)
        self.gelu = GELU(gelu)

    def construct(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Cell):
    """Pre-LN block; attribute order = checkpoint order (attn, ln_1, mlp, ln_2)."""

    def __init__(self, width: int, heads: int, gelu: str, ln_eps: float):
        super().__init__()
        self.attn = MultiheadAttention(width, heads)
        self.ln_1 = LayerNorm(width, eps=ln_eps)
        self.mlp = MLP(width, gelu)
        self.ln_2 = LayerNorm(width, eps=ln_eps)

    def construct(self, x):
        # the residual stream keeps x's dtype (fp32) even when the Dense layers compute in fp16
        x = x + ops.cast(self.attn(self.ln_1(x)), x.dtype)
        return x + ops.cast(self.mlp(self.ln_2(x)), x.dtype)


class Transformer(nn.Cell):
    def __init__(self, width: int, layers: int, heads: int, gelu: str, ln_eps: float):
        super().__init__()
        self.resblocks = nn.CellList([ResidualAttentionBlock(width, heads, gelu, ln_eps)
                                      for _ in range(layers)])

    def construct(self, x):
        for block in self.resblocks:
            x = block(x)
        return x


class TextConditioning:
    """Mixin for a Cell that carries GLIDE's text transformer as its own top-level attributes.

    Call ``_init_text_params`` before the cell's other children (the two embeddings are direct
    parameters and come first in the checkpoint anyway) and ``_init_text_cells`` after them, so
    the parameter order matches the official checkpoints. ``encode_text(tokens, mask)`` returns
    ``(xf_proj (B, emb), xf_out (B, xf_width, text_ctx))``."""

    def _init_text_params(self, text_ctx: int, xf_width: int):
        self.text_ctx = int(text_ctx)
        self.xf_width = int(xf_width)
        # Taichu creates both with numpy.empty (unspecified values) in fp16; we keep fp32 params
        # with a small random init (only relevant when training from scratch)
        self.positional_embedding = Parameter(
            initializer(Normal(0.01), [text_ctx, xf_width], ms.float32), name="positional_embedding")
        self.padding_embedding = Parameter(
            initializer(Normal(0.01), [text_ctx, xf_width], ms.float32), name="padding_embedding")

    def _init_text_cells(self, xf_layers: int, xf_heads: int, n_vocab: int, proj_dim: int,
                         gelu: str, ln_eps: float):
        self.n_vocab = int(n_vocab)
        self.transformer = Transformer(self.xf_width, xf_layers, xf_heads, gelu, ln_eps)
        self.final_ln = LayerNorm(self.xf_width, eps=ln_eps)
        self.token_embedding = nn.Embedding(n_vocab, self.xf_width, embedding_table=Normal(0.02))
        self.transformer_proj = dense(self.xf_width, proj_dim)

    def encode_text(self, tokens, mask):
        b, n = tokens.shape
        if n != self.text_ctx:
            raise ValueError("GLIDE text transformer: tokens must have shape (B, text_ctx): pad or "
                             "truncate them to the model's text_ctx (128 for the official models)")
        w = self.xf_width
        x = self.token_embedding(ops.cast(tokens, ms.int32))                     # (B, L, W) fp32
        shape = (b, n, w)
        pos = ops.cast(self.positional_embedding, x.dtype).reshape(1, n, w)
        x = x + ops.broadcast_to(pos, shape)
        pad = ops.broadcast_to(ops.cast(self.padding_embedding, x.dtype).reshape(1, n, w), shape)
        keep = ops.broadcast_to(ops.cast(mask, ms.bool_).reshape(b, n, 1), shape)
        x = ops.select(keep, x, pad)
        x = self.final_ln(self.transformer(x))
        xf_proj = self.transformer_proj(x[:, n - 1])
        return xf_proj, x.transpose(0, 2, 1)


class GlideTextTransformer(TextConditioning, nn.Cell):
    """The text transformer alone (same relative parameter names as inside the UNets).

    ``construct(tokens, mask) -> (xf_proj (B, proj_dim), xf_out (B, xf_width, text_ctx))``;
    ``proj_dim`` is the UNet's time-embedding width (4 x model_channels = 768 in GLIDE)."""

    def __init__(self, text_ctx: int = 128, xf_width: int = 512, xf_layers: int = 16,
                 xf_heads: int = 8, n_vocab: int = 50001, proj_dim: int = 768,
                 gelu: str = "tanh", ln_eps: float = 1e-7):
        nn.Cell.__init__(self)
        check_text_config(text_ctx, xf_width, xf_layers, xf_heads, n_vocab, gelu, ln_eps)
        self._init_text_params(text_ctx, xf_width)
        self._init_text_cells(xf_layers, xf_heads, n_vocab, proj_dim, gelu, ln_eps)

    def construct(self, tokens, mask):
        return self.encode_text(tokens, mask)
