"""BERT-Chinese WordPiece tokenizer used by Wukong-Huahua's text encoder.

Pure Python (plus numpy for the batch output); no MindSpore here.

Algorithm (Wukong-Huahua's ``ldm/models/clip_zh/simple_tokenizer.py``, i.e. BERT's BasicTokenizer +
WordPiece; ids wrapped by ``FrozenCLIPEmbedder_ZH.tokenize`` in ``ldm/modules/encoders/modules.py``):

* Basic tokenization: clean the text (drop NUL, U+FFFD and category ``C*`` chars
  except ``\\t \\n \\r``; map whitespace to a space), put spaces around every CJK
  ideograph, split on whitespace, lower-case + strip accents (NFD, drop ``Mn``)
  every token not in ``never_split``, then split on punctuation (ASCII symbol
  ranges plus Unicode ``P*``), each punctuation char becoming its own token.
* WordPiece: greedy longest-match-first with ``##`` continuation pieces; words
  longer than 100 chars, or words with an unmatchable position, become ``[UNK]``.
* Model input: ``[CLS] + ids + [SEP]``; if longer than ``context_length`` keep
  the first ``context_length - 1`` ids and append ``[SEP]``; right-pad with
  ``[PAD]`` (0).

Deliberate deviation from the reference: a ``never_split`` token missing from the
vocab (a literal standalone ``<|startoftext|>`` / ``<|endoftext|>``) maps to the
``[UNK]`` *id* instead of the string ``"[UNK]"`` (which crashed the reference
when building the tensor).
"""

from __future__ import annotations

import os
import unicodedata
from typing import Iterable, List, NamedTuple, Sequence, Union

import numpy as np

__all__ = ["WordPieceTokenizer", "TokenizeInfo", "basic_tokenize", "load_vocab"]

NEVER_SPLIT = ("[UNK]", "<|startoftext|>", "<|endoftext|>")
MAX_CHARS_PER_WORD = 100

_VOCAB_HINT = (
    "the BERT-Chinese vocabulary (vocab_zh.txt, 21128 lines) belongs next to the "
    "checkpoint in models/"
)

# CJK Unified Ideographs blocks used by BERT's _is_chinese_char.
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def _is_cjk(cp: int) -> bool:
    for lo, hi in _CJK_RANGES:
        if lo <= cp <= hi:
            return True
    return False


def _is_whitespace(ch: str) -> bool:
    if ch in (" ", "\t", "\n", "\r"):
        return True
    return unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    # \t \n \r count as whitespace, not control.
    if ch in ("\t", "\n", "\r"):
        return False
    return unicodedata.category(ch).startswith("C")


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    # All non-letter/number ASCII symbols are treated as punctuation (BERT), e.g. $ ^ `.
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _clean_text(text: str) -> str:
    out = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or _is_control(ch):
            continue
        out.append(" " if _is_whitespace(ch) else ch)
    return "".join(out)


def _space_cjk(text: str) -> str:
    out = []
    for ch in text:
        if _is_cjk(ord(ch)):
            out.append(" ")
            out.append(ch)
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


def _strip_accents(text: str) -> str:
    return "".join(ch for ch in unicodedata.normalize("NFD", text) if unicodedata.category(ch) != "Mn")


def _split_punct(token: str) -> List[str]:
    pieces: List[str] = []
    current: List[str] = []
    for ch in token:
        if _is_punctuation(ch):
            if current:
                pieces.append("".join(current))
                current = []
            pieces.append(ch)
        else:
            current.append(ch)
    if current:
        pieces.append("".join(current))
    return pieces


def basic_tokenize(text: str, lower_case: bool = True, never_split: Iterable[str] = NEVER_SPLIT) -> List[str]:
    """BERT BasicTokenizer: clean, space CJK, whitespace split, lower/strip accents, punctuation split."""
    never = set(never_split)
    text = _space_cjk(_clean_text(text))
    tokens: List[str] = []
    for tok in text.split():
        if tok in never:
            tokens.append(tok)
            continue
        if lower_case:
            tok = _strip_accents(tok.lower())
        tokens.extend(_split_punct(tok))
    # Re-split on whitespace (accent stripping / lowering never adds spaces, but be faithful).
    return " ".join(tokens).split()


def load_vocab(vocab_path: Union[str, os.PathLike]) -> dict:
    """Read a BERT vocab file: one token per line (stripped), id = line index."""
    path = os.fspath(vocab_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"WordPiece vocab file not found: {path!r}; {_VOCAB_HINT}")
    try:
        with open(path, "r", encoding="utf-8") as fh:
            lines = list(fh)
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read WordPiece vocab file {path!r} ({exc}); {_VOCAB_HINT}") from exc
    vocab = {}
    for idx, line in enumerate(lines):
        # Like the reference: str.strip() per line.  Note vocab_zh.txt line 343 is U+2028, which
        # strips to "" (never looked up), and line 13502 "##\u2028" strips to "##".
        vocab[line.strip()] = idx
    if not any(vocab):
        raise ValueError(f"WordPiece vocab file {path!r} is empty; {_VOCAB_HINT}")
    missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]") if t not in vocab]
    if missing:
        raise ValueError(
            f"WordPiece vocab file {path!r} lacks special tokens {missing}; "
            f"is it really a BERT vocab? {_VOCAB_HINT}"
        )
    return vocab


class TokenizeInfo(NamedTuple):
    """Result of :meth:`WordPieceTokenizer.tokenize_with_info` (unpacks as a 4-tuple)."""

    ids: np.ndarray  # (context_length,) int64, exactly what the model sees
    n_tokens: int  # content tokens (no [CLS]/[SEP]) before truncation
    truncated: bool  # True if some content tokens were dropped
    unknown_chars: List[str]  # characters (or words) that became [UNK], in order of appearance


class WordPieceTokenizer:
    """BERT-Chinese WordPiece tokenizer producing Wukong-Huahua's (B, 77) id arrays."""

    def __init__(self, vocab_path, context_length: int = 77, lower_case: bool = True):
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 (room for [CLS] and [SEP]), got {context_length}")
        self.vocab_path = os.fspath(vocab_path)
        self.vocab = load_vocab(self.vocab_path)
        self.inv_vocab = {i: t for t, i in self.vocab.items()}
        self.context_length = int(context_length)
        self.lower_case = bool(lower_case)
        self.never_split = NEVER_SPLIT
        self.pad_id = self.vocab["[PAD]"]
        self.unk_id = self.vocab["[UNK]"]
        self.cls_id = self.vocab["[CLS]"]
        self.sep_id = self.vocab["[SEP]"]
        self.special_ids = {self.pad_id, self.cls_id, self.sep_id}
        if "[MASK]" in self.vocab:
            self.special_ids.add(self.vocab["[MASK]"])

    def __len__(self) -> int:
        return len(self.vocab)

    # ---------------------------------------------------------------- pieces
    def _wordpiece(self, word: str) -> List[str]:
        if len(word) > MAX_CHARS_PER_WORD:
            return ["[UNK]"]
        pieces: List[str] = []
        start = 0
        n = len(word)
        while start < n:
            end = n
            found = None
            while start < end:
                cand = word[start:end]
                if start > 0:
                    cand = "##" + cand
                if cand in self.vocab:
                    found = cand
                    break
                end -= 1
            if found is None:
                return ["[UNK]"]
            pieces.append(found)
            start = end
        return pieces

    def tokenize(self, text: str) -> List[str]:
        """Text -> list of WordPiece strings (no specials)."""
        return [p for _, p in self._tokenize_words(text)]

    def _tokenize_words(self, text: str):
        out = []
        for word in basic_tokenize(text, self.lower_case, self.never_split):
            if word in self.never_split:
                out.append((word, word))
                continue
            for piece in self._wordpiece(word):
                out.append((word, piece))
        return out

    def _encode_with_unknown(self, text: str):
        if not isinstance(text, str):
            raise TypeError(f"expected a str prompt, got {type(text).__name__}")
        ids: List[int] = []
        unknown: List[str] = []
        for word, piece in self._tokenize_words(text):
            idx = self.vocab.get(piece)
            if idx is None:  # never_split token absent from the vocab (reference quirk: string "[UNK]")
                idx = self.unk_id
            if idx == self.unk_id and word != "[UNK]":
                unknown.extend(self._unknown_parts(word))
            ids.append(idx)
        return ids, unknown

    def _unknown_parts(self, word: str) -> List[str]:
        """Characters of ``word`` that no vocab piece can cover (the whole word if none / too long)."""
        if len(word) > MAX_CHARS_PER_WORD or word in self.never_split:
            return [word]
        bad = [ch for i, ch in enumerate(word) if (ch if i == 0 else "##" + ch) not in self.vocab and ch not in self.vocab]
        return bad or [word]

    def encode(self, text: str) -> List[int]:
        """Raw WordPiece ids for ``text`` (no [CLS]/[SEP], no truncation)."""
        return self._encode_with_unknown(text)[0]

    # ----------------------------------------------------------- model input
    def _frame(self, ids: Sequence[int]):
        full = [self.cls_id] + list(ids) + [self.sep_id]
        truncated = len(full) > self.context_length
        if truncated:
            full = full[: self.context_length - 1] + [self.sep_id]
        full = full + [self.pad_id] * (self.context_length - len(full))
        return full, truncated

    def tokenize_with_info(self, text: str, dtype=np.int64) -> TokenizeInfo:
        """One prompt -> (ids (context_length,), n_tokens, truncated, unknown_chars)."""
        ids, unknown = self._encode_with_unknown(text)
        framed, truncated = self._frame(ids)
        return TokenizeInfo(np.asarray(framed, dtype=dtype), len(ids), truncated, unknown)

    def __call__(self, texts: Union[str, Sequence[str]], dtype=np.int64) -> np.ndarray:
        """str or list of str -> (B, context_length) ids: [CLS] ids [SEP] then [PAD]=0.

        Inference uses int64 (the default); the reference training pipeline uses int32.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        out = np.full((len(texts), self.context_length), self.pad_id, dtype=dtype)
        for b, text in enumerate(texts):
            framed, _ = self._frame(self.encode(text))
            out[b] = framed
        return out

    # ------------------------------------------------------------- debugging
    def decode(self, ids, skip_special: bool = True) -> str:
        """Ids -> readable text: pieces joined by spaces, ``##`` pieces glued on.

        [PAD]/[CLS]/[SEP]/[MASK] are dropped when ``skip_special``; [UNK] is kept visible.
        """
        words: List[str] = []
        for i in np.asarray(ids).reshape(-1).tolist():
            i = int(i)
            if skip_special and i in self.special_ids:
                continue
            tok = self.inv_vocab.get(i, "[UNK]")
            if tok.startswith("##") and words:
                words[-1] += tok[2:]
            else:
                words.append(tok)
        return " ".join(words)
