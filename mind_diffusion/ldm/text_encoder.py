"""CLIP text transformer used as the cross-attention context of Wukong-Huahua / SD-v1.

OpenAI-CLIP layout, as in Wukong-Huahua's ``ldm/modules/encoders/text_encoder.py`` (mindspore-lab/
minddiffusion ``vision/wukong-huahua``): token + learned positional embedding, ``layers``
pre-LN residual blocks ``x = x + attn(ln_1(x)); x = x + c_proj(QuickGELU(c_fc(ln_2(x))))`` with a
fused ``in_proj`` (rows q, k, v; q scaled by ``head_dim ** -0.5``), a causal additive mask (key
position > query position is masked, no padding mask), then ``ln_final`` over **all**
``context_length`` positions. There is no text projection and no EOT pooling: the output
(B, L, width) is the UNet's cross-attention context.

Parameter names (relative to :class:`TextEncoder`) follow the MindSpore Wukong checkpoint, in its
save order::

    embedding_table [vocab, width], positional_embedding [ctx, width], ln_final.{gamma,beta},
    transformer_layer.resblocks.{i}.attn.attn.in_proj.{weight,bias},
    transformer_layer.resblocks.{i}.attn.attn.out_proj.{weight,bias},
    transformer_layer.resblocks.{i}.ln_1.{gamma,beta}, ….c_fc.{weight,bias},
    ….c_proj.{weight,bias}, ….ln_2.{gamma,beta}

LayerNorm eps: Wukong's MindSpore ``nn.LayerNorm`` default **1e-7** (the default here); HF
``CLIPTextModel`` (SD-v1's openai/clip-vit-large-patch14) uses 1e-5, otherwise the same network,
so ``TextEncoder(ln_eps=1e-5)`` reproduces SD-v1's ``last_hidden_state``.

Precision: all parameters are stored in fp32 (Wukong keeps the two embeddings in fp16; a checkpoint
with fp16 embeddings is cast on load). LayerNorms and the attention softmax always compute in
fp32; :func:`mind_diffusion.nn.layers.apply_compute_dtype` can switch the Dense layers to fp16.
"""
from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Normal, initializer

from ..nn.layers import LayerNorm, dense

__all__ = ["TextConditioner", "TextEncoder", "causal_mask"]

_MASK_VALUE = -1e9  # additive mask for key > query; exp() of it underflows to exactly 0 in fp32


def causal_mask(length: int) -> np.ndarray:
    """(length, length) float32 additive mask: 0 where key <= query, a large negative above."""
    return np.triu(np.full((length, length), _MASK_VALUE, np.float32), k=1)


class QuickGELU(nn.Cell):
    """``x * sigmoid(1.702 x)`` (OpenAI CLIP's activation)."""

    def construct(self, x):
        return x * ops.sigmoid(1.702 * x)


class FusedSelfAttention(nn.Cell):
    """torch ``nn.MultiheadAttention`` layout: ``in_proj`` (width -> 3 width, rows q|k|v) and
    ``out_proj``; softmax in fp32 with an additive (L, L) mask."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.width = width
        self.heads = heads
        self.head_dim = width // heads
        self.scale = self.head_dim ** -0.5
        self.in_proj = dense(width, 3 * width)
        self.out_proj = dense(width, width)
        self.bmm_qk = ops.BatchMatMul(transpose_b=True)
        self.bmm_av = ops.BatchMatMul()
        self.softmax = ops.Softmax(axis=-1)

    def _heads(self, t, b, n):
        # (B, L, C) -> (B*H, L, D)
        return t.reshape(b, n, self.heads, self.head_dim).transpose(0, 2, 1, 3).reshape(
            b * self.heads, n, self.head_dim)

    def construct(self, x, mask):
        b, n, c = x.shape
        q, k, v = ops.split(self.in_proj(x), c, axis=-1)
        q = self._heads(q * self.scale, b, n)
        k = self._heads(k, b, n)
        v = self._heads(v, b, n)
        scores = ops.cast(self.bmm_qk(q, k), ms.float32) + mask          # (B*H, Lq, Lk)
        attn = ops.cast(self.softmax(scores), v.dtype)
        out = self.bmm_av(attn, v)                                       # (B*H, L, D)
        out = out.reshape(b, self.heads, n, self.head_dim).transpose(0, 2, 1, 3).reshape(b, n, c)
        return self.out_proj(out)


class MaskedAttention(nn.Cell):
    """Holds the attention as ``.attn`` so names read ``attn.attn.in_proj…`` like Wukong's."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = FusedSelfAttention(width, heads)

    def construct(self, x, mask):
        return self.attn(x, mask)


class ResidualAttentionBlock(nn.Cell):
    """Pre-LN block: ``x + attn(ln_1(x))`` then ``x + c_proj(QuickGELU(c_fc(ln_2(x))))``.

    Attribute order = checkpoint order: attn, ln_1, c_fc, c_proj, ln_2."""

    def __init__(self, width: int, heads: int, ln_eps: float):
        super().__init__()
        self.attn = MaskedAttention(width, heads)
        self.ln_1 = LayerNorm(width, eps=ln_eps)
        self.c_fc = dense(width, 4 * width)
        self.c_proj = dense(4 * width, width)
        self.ln_2 = LayerNorm(width, eps=ln_eps)
        self.gelu = QuickGELU()

    def construct(self, x, mask):
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.c_proj(self.gelu(self.c_fc(self.ln_2(x))))


class Transformer(nn.Cell):
    def __init__(self, width: int, layers: int, heads: int, ln_eps: float):
        super().__init__()
        self.resblocks = nn.CellList([ResidualAttentionBlock(width, heads, ln_eps) for _ in range(layers)])

    def construct(self, x, mask):
        for block in self.resblocks:
            x = block(x, mask)
        return x


class TextEncoder(nn.Cell):
    """CLIP text transformer: ids (B, L) int32/int64 -> (B, L, width) after ``ln_final``.

    ``L`` may be at most ``context_length`` (the pipeline always feeds exactly
    ``context_length``). Ids must lie in ``[0, vocab_size)``; that is the caller's job (the
    pipeline validates tokenizer output) — an out-of-range id gives undefined embeddings.
    """

    def __init__(self, vocab_size: int = 49408, context_length: int = 77, width: int = 768,
                 layers: int = 12, heads: int = 12, ln_eps: float = 1e-7):
        super().__init__()
        for key, val in (("vocab_size", vocab_size), ("context_length", context_length),
                         ("width", width), ("heads", heads)):
            if int(val) < 1:
                raise ValueError(f"TextEncoder: {key} must be >= 1, got {val}")
        if layers < 0:
            raise ValueError(f"TextEncoder: layers must be >= 0, got {layers}")
        if width % heads:
            raise ValueError(f"TextEncoder: width {width} is not divisible by heads {heads} "
                             f"(CLIP uses head_dim 64, i.e. heads = width // 64)")
        self.vocab_size = int(vocab_size)
        self.context_length = int(context_length)
        self.width = int(width)
        self.layers = int(layers)
        self.heads = int(heads)
        self.ln_eps = float(ln_eps)
        self.embedding_table = Parameter(
            initializer(Normal(0.02), [vocab_size, width], ms.float32), name="embedding_table")
        self.positional_embedding = Parameter(
            initializer(Normal(0.02), [context_length, width], ms.float32), name="positional_embedding")
        self.ln_final = LayerNorm(width, eps=ln_eps)
        self.transformer_layer = Transformer(width, layers, heads, ln_eps)
        self.attn_mask = Tensor(causal_mask(context_length))
        self.has_token_rows = False
        self.token_row_ids: list = []
        self.token_row_text = ""

    def attach_token_rows(self, ids, text: str = "") -> Parameter:
        """A trainable ``token_rows`` [k, width] (zeros) added to the embedding rows of ``ids`` (the
        identifier's k token ids; textual inversion beside a LoRA); the table itself stays as it is.
        Returns the new Parameter. At inference ``mind_diffusion.ldm.lora.add_token_rows`` adds the
        trained rows into the table instead."""
        ids = [int(i) for i in ids]
        if not ids or len(set(ids)) != len(ids) or min(ids) < 0 or max(ids) >= self.vocab_size:
            raise ValueError(f"token rows need distinct ids in [0, {self.vocab_size}), got {ids}")
        prefix = self.embedding_table.name[: -len("embedding_table")]   # where this cell sits in the model
        self.token_rows = Parameter(Tensor(np.zeros((len(ids), self.width), np.float32)), name="token_rows")
        self.token_rows.name = prefix + "token_rows"   # setattr on a built cell does not prefix it
        self.token_row_index = Tensor(np.asarray(ids, np.int32))
        self.token_row_ids, self.token_row_text = ids, str(text)
        self.has_token_rows = True
        return self.token_rows

    def construct(self, ids):
        n = ids.shape[1]
        x = ops.gather(self.embedding_table, ids, 0)                       # (B, L, C)
        if self.has_token_rows:  # fixed when the graph is built
            hit = ops.cast(ops.equal(ops.cast(ids, ms.int32).reshape(-1, 1), self.token_row_index.reshape(1, -1)),
                           x.dtype)
            x = x + ops.matmul(hit, ops.cast(self.token_rows, x.dtype)).reshape(x.shape)
        x = x + self.positional_embedding[:n]
        x = self.transformer_layer(x, self.attn_mask[:n, :n])
        return self.ln_final(x)


class TextConditioner(nn.Cell):
    """``cond_stage_model`` of the latent diffusion model: ``self.transformer`` is the
    :class:`TextEncoder` (parameter names ``transformer.…``); ids (B, L) -> context (B, L, width)."""

    def __init__(self, vocab_size: int = 49408, context_length: int = 77, width: int = 768,
                 layers: int = 12, heads: int = 12, ln_eps: float = 1e-7):
        super().__init__()
        self.transformer = TextEncoder(vocab_size=vocab_size, context_length=context_length,
                                       width=width, layers=layers, heads=heads, ln_eps=ln_eps)

    def construct(self, ids):
        return self.transformer(ids)
