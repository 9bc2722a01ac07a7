"""Taichu-GLIDE's Chinese tokenizer: a SentencePiece model (``cog-pretrain.model``, the
CogView / GLM-Chinese model shipped with the Taichu-GLIDE checkpoints), as in the original's
``model/glide_text2im/tokenizer/chinese_tokenizer.py`` (mindspore-lab/minddiffusion ``vision/Taichu-GLIDE``).

Pure Python plus numpy and ``sentencepiece``; no MindSpore here.

* ``encode(text)`` = SentencePiece ``EncodeAsIds(text)``: no lower-casing, no BOS/EOS, the
  model's own normalisation.
* ``n_vocab = sp.vocab_size() + 1``; the end token ``n_vocab - 1`` (= ``sp.vocab_size()``,
  50000 for cog-pretrain) is the pad id.
* ``padded_tokens_and_mask(ids, text_ctx=128)``: keep the first ``text_ctx`` ids, right-pad
  with the end token; the mask is 1 on real tokens and 0 on padding. Both int32.

The GPT-2 BPE tokenizer of the English mode (:mod:`mind_diffusion.text.gpt2_bpe`) has the same
interface, so the GLIDE pipeline takes either.
"""
from __future__ import annotations

import os
import warnings
from typing import List, Sequence, Tuple

import numpy as np

__all__ = ["SentencePieceTokenizer", "TokenTruncationWarning", "padded_tokens_and_mask",
           "GLIDE_TEXT_CTX", "COG_MODEL_HINT"]

#: Token context of every GLIDE text transformer (the original hard-codes 128).
GLIDE_TEXT_CTX = 128

COG_MODEL_HINT = (
    "cog-pretrain.model (the CogView/GLM Chinese SentencePiece model) ships with the Taichu-GLIDE "
    "checkpoints (https://download.mindspore.cn/toolkits/minddiffusion/Taichu-GLIDE/); put it in "
    "the checkpoint folder (--ckpt_path) or pass --tokenizer_model PATH"
)


class TokenTruncationWarning(UserWarning):
    """A prompt has more tokens than the text context; only the first ``text_ctx`` are used."""


def padded_tokens_and_mask(ids: Sequence[int], text_ctx: int, end_token: int
                           ) -> Tuple[np.ndarray, np.ndarray]:
    """(tokens, mask), each int32 of shape ``(text_ctx,)``: the first ``text_ctx`` ids then
    ``end_token`` padding; mask 1 on real tokens, 0 on padding (GLIDE's layout)."""
    if isinstance(text_ctx, bool) or int(text_ctx) != text_ctx or text_ctx < 1:
        raise ValueError(f"text_ctx must be a positive integer, got {text_ctx!r}")
    text_ctx = int(text_ctx)
    ids = [int(i) for i in ids][:text_ctx]
    n = len(ids)
    tokens = np.full((text_ctx,), int(end_token), dtype=np.int32)
    tokens[:n] = ids
    mask = np.zeros((text_ctx,), dtype=np.int32)
    mask[:n] = 1
    return tokens, mask


class _GlideTokenizerMixin:
    """Shared prompt -> (tokens, mask) logic; subclasses provide ``encode`` and ``end_token``."""

    end_token: int
    n_vocab: int

    @property
    def pad_id(self) -> int:
        return self.end_token

    @property
    def vocab_size(self) -> int:
        """Rows a token embedding needs (``n_vocab``, the pad id included)."""
        return self.n_vocab

    def __len__(self) -> int:
        return self.n_vocab

    def padded_tokens_and_mask(self, ids: Sequence[int], text_ctx: int = GLIDE_TEXT_CTX
                               ) -> Tuple[np.ndarray, np.ndarray]:
        return padded_tokens_and_mask(ids, text_ctx, self.end_token)

    def tokens_and_mask(self, text: str, text_ctx: int = GLIDE_TEXT_CTX, *, warn: bool = True
                        ) -> Tuple[np.ndarray, np.ndarray]:
        """One prompt -> (tokens, mask) int32 ``(text_ctx,)``; a
        :class:`TokenTruncationWarning` when it has more than ``text_ctx`` tokens."""
        ids = self.encode(text)
        if warn and len(ids) > text_ctx:
            shown = text if len(text) <= 40 else text[:40] + "..."
            warnings.warn(f"prompt has {len(ids)} tokens; only the first {text_ctx} are used: "
                          f"{shown!r}", TokenTruncationWarning, stacklevel=3)
        return self.padded_tokens_and_mask(ids, text_ctx)

    def batch(self, texts: str | Sequence[str], text_ctx: int = GLIDE_TEXT_CTX
              ) -> Tuple[np.ndarray, np.ndarray]:
        """str or list of str -> (tokens, mask), each int32 ``(B, text_ctx)``."""
        if isinstance(texts, str):
            texts = [texts]
        pairs = [self.tokens_and_mask(t, text_ctx) for t in texts]
        if not pairs:
            return (np.zeros((0, text_ctx), np.int32), np.zeros((0, text_ctx), np.int32))
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    def empty_tokens_and_mask(self, text_ctx: int = GLIDE_TEXT_CTX
                              ) -> Tuple[np.ndarray, np.ndarray]:
        """The empty prompt: all end-token padding, mask all 0 (OpenAI's unconditional)."""
        return self.padded_tokens_and_mask([], text_ctx)


class SentencePieceTokenizer(_GlideTokenizerMixin):
    """Chinese SentencePiece tokenizer of Taichu-GLIDE (``cog-pretrain.model``)."""

    def __init__(self, model_path: str | os.PathLike):
        try:
            import sentencepiece as spm
        except ImportError as exc:  # in requirements.txt
            raise ImportError(f"the GLIDE Chinese tokenizer needs the 'sentencepiece' package "
                              f"(pip install -r requirements.txt): {exc}") from exc
        path = os.fspath(model_path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"SentencePiece tokenizer model not found: {path}; "
                                    f"{COG_MODEL_HINT}")
        try:
            with open(path, "rb") as fh:
                proto = fh.read()
        except OSError as exc:
            raise ValueError(f"cannot read SentencePiece tokenizer model {path}: "
                             f"{exc.strerror}") from None
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(proto)
        except (RuntimeError, OSError, TypeError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"{path} is not a SentencePiece model ({reason[:120]}); "
                             f"{COG_MODEL_HINT}") from None
        if sp.vocab_size() < 1:
            raise ValueError(f"{path} is not a usable SentencePiece model (empty vocabulary); "
                             f"{COG_MODEL_HINT}")
        self.model_path = path
        self.sp = sp
        self.n_vocab = int(sp.vocab_size()) + 1
        self.end_token = self.n_vocab - 1


    def encode(self, text: str) -> List[int]:
        if not isinstance(text, str):
            raise TypeError(f"expected a str prompt, got {type(text).__name__}")
        return [int(i) for i in self.sp.EncodeAsIds(text)]

    def decode(self, ids) -> str:
        """Ids -> text; the end / pad token is dropped."""
        keep = [int(i) for i in np.asarray(ids).reshape(-1) if 0 <= int(i) < self.end_token]
        return self.sp.DecodeIds(keep)
