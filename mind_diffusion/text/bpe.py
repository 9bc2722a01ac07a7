"""OpenAI CLIP byte-level BPE tokenizer (the English tokenizer of SD-v1 / HF ``CLIPTokenizer``).

Pure Python (plus numpy for the batch output, ``ftfy`` and ``regex``); no MindSpore here.

Algorithm (OpenAI CLIP's ``clip/simple_tokenizer.py``, as used by SD-v1):

* Clean: ``ftfy.fix_text``, then ``html.unescape`` twice, strip; collapse whitespace runs to one
  space and strip; lower-case.
* Split with the CLIP pattern: the two special tokens, the contractions ``'s 't 're 've 'm 'll 'd``,
  letter runs, single digits, runs of other non-space characters.
* Each piece -> its UTF-8 bytes -> printable unicode stand-ins (GPT-2 ``bytes_to_unicode``), the
  last symbol gets ``</w>``, then BPE: repeatedly merge the adjacent pair with the lowest merge
  rank. A literal ``<|startoftext|>`` / ``<|endoftext|>`` in the text maps to its special id.
* Vocab (49408): the 256 byte symbols, the same with ``</w>``, the 48894 merges
  (``lines[1:49152-256-2+1]`` of ``bpe_simple_vocab_16e6.txt.gz``) joined, then
  ``<|startoftext|>`` = 49406 and ``<|endoftext|>`` = 49407.
* Model input: ``[49406] + ids + [49407]``; if longer than ``context_length`` keep the first
  ``context_length - 1`` ids and append ``49407``; right-pad with ``pad_id`` (default 49407 like
  SD-v1's HF tokenizer; SD-v2's open_clip pads with 0).

Byte-level BPE can spell every string, so ``unknown_chars`` is always empty.

Note: HF ``transformers`` >= 5 ``CLIPTokenizer`` is the *tokenizers*-backed one, which does NFC
instead of ftfy and no HTML unescape; it agrees with this tokenizer on text that ftfy and
``html.unescape`` leave unchanged.
"""

from __future__ import annotations

import gzip
import html
import itertools
import os
import zlib
from collections.abc import Sequence
from functools import lru_cache
from typing import NamedTuple

import numpy as np

__all__ = ["CLIPBPETokenizer", "TokenizeInfo", "bytes_to_unicode", "load_merges"]

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
NUM_MERGES = 49152 - 256 - 2  # 48894 merges used by CLIP
_CACHE_LIMIT = 100_000

_PATTERN = (r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]"""
            r"""|[^\s\p{L}\p{N}]+""")

_MERGES_HINT = (
    "the CLIP BPE merges file bpe_simple_vocab_16e6.txt.gz ships with OpenAI CLIP "
    "(clip/bpe_simple_vocab_16e6.txt.gz) and open_clip (open_clip/bpe_simple_vocab_16e6.txt.gz); "
    "HF's merges.txt of openai/clip-vit-large-patch14 works too"
)


@lru_cache
def bytes_to_unicode() -> dict:
    """Byte value -> printable unicode char (GPT-2 / CLIP): printable Latin-1 bytes map to
    themselves, the other 68 bytes to code points 256, 257, … in byte order.

    The dict's order is the vocabulary order: the printable bytes first (``!``..``~``,
    ``¡``..``¬``, ``®``..``ÿ``), then the 68 remapped ones."""
    keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1)))
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def bpe_merge(word: list, ranks: dict) -> tuple:
    """Apply byte-pair merges to a list of symbols: repeatedly join every occurrence of the
    adjacent pair with the lowest merge rank until no adjacent pair has a rank."""
    while len(word) > 1:
        best, best_rank = None, None
        for pair in itertools.pairwise(word):
            r = ranks.get(pair)
            if r is not None and (best_rank is None or r < best_rank):
                best, best_rank = pair, r
        if best is None:
            break
        first, second = best
        merged, i = [], 0
        while i < len(word):
            if i + 1 < len(word) and word[i] == first and word[i + 1] == second:
                merged.append(first + second)
                i += 2
            else:
                merged.append(word[i])
                i += 1
        word = merged
    return tuple(word)


def read_text_file(path: str, what: str, hint: str) -> str:
    """The UTF-8 text of a plain or gzip'ed file (vocabularies, merges); a missing, truncated or
    undecodable file is a FileNotFoundError / ValueError naming ``what`` and ending in ``hint``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path!r}; {hint}")
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        return raw.decode("utf-8")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {what} {path!r} (truncated, or not a (gzip'ed) UTF-8 text file? "
                         f"{exc}); {hint}") from None


def load_merges(path: str | os.PathLike) -> list:
    """The first 48894 merge pairs of a CLIP merges file (gzip'ed or plain text, first line is a
    header); clear errors when the file is missing, not gzip/UTF-8 or too short."""
    p = os.fspath(path)
    text = read_text_file(p, "CLIP BPE merges file", _MERGES_HINT)
    lines = text.split("\n")
    while lines and not lines[-1].strip():  # a trailing newline is not a merge
        lines.pop()
    lines = lines[1:NUM_MERGES + 1]
    merges = []
    for n, line in enumerate(lines, start=2):
        pair = tuple(line.split())
        if len(pair) != 2:
            raise ValueError(f"CLIP BPE merges file {p!r} line {n} is not a merge pair: {line[:60]!r}; "
                             f"{_MERGES_HINT}")
        merges.append(pair)
    if len(merges) < NUM_MERGES:
        raise ValueError(f"CLIP BPE merges file {p!r} has only {len(merges)} merges, CLIP needs "
                         f"{NUM_MERGES} (truncated file?); {_MERGES_HINT}")
    return merges


class TokenizeInfo(NamedTuple):
    """Result of :meth:`CLIPBPETokenizer.tokenize_with_info` (unpacks as a 4-tuple)."""

    ids: np.ndarray  # (context_length,) int64, exactly what the model sees
    n_tokens: int  # content tokens (no SOT/EOT) before truncation
    truncated: bool  # True if some content tokens were dropped
    unknown_chars: list  # always empty: byte-level BPE covers every character


class CLIPBPETokenizer:
    """OpenAI CLIP BPE tokenizer producing SD-v1's (B, 77) id arrays."""

    def __init__(self, merges_path, context_length: int = 77, pad_id: int | None = None):
        try:
            import ftfy
            import regex
        except ImportError as exc:  # both are in requirements.txt
            raise ImportError(f"CLIPBPETokenizer needs the 'ftfy' and 'regex' packages "
                              f"(pip install -r requirements.txt): {exc}") from exc
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 (room for SOT and EOT), got {context_length}")
        self._fix_text = ftfy.fix_text
        self._pat = regex.compile(_PATTERN, regex.IGNORECASE)
        self._ws = regex.compile(r"\s+")
        self.merges_path = os.fspath(merges_path)
        merges = load_merges(self.merges_path)
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        symbols = list(self.byte_encoder.values())
        tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
        self.vocab = {t: i for i, t in enumerate(tokens)}
        if len(self.vocab) != len(tokens):
            raise ValueError(f"CLIP BPE merges file {self.merges_path!r} yields duplicate vocabulary "
                             f"entries; {_MERGES_HINT}")
        self.inv_vocab = dict(enumerate(tokens))
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.context_length = int(context_length)
        self.sot_id = self.vocab[SOT]
        self.eot_id = self.vocab[EOT]
        self.pad_id = self.eot_id if pad_id is None else int(pad_id)
        if not 0 <= self.pad_id < len(self.vocab):
            raise ValueError(f"pad_id {self.pad_id} is outside the vocabulary [0, {len(self.vocab)})")
        self.special_ids = {self.sot_id, self.eot_id}
        self._cache = {SOT: (SOT,), EOT: (EOT,)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)

    # ---------------------------------------------------------------- pieces
    def clean(self, text: str) -> str:
        """ftfy + double HTML unescape, whitespace collapse, lower-case."""
        text = html.unescape(html.unescape(self._fix_text(text))).strip()
        return self._ws.sub(" ", text).strip().lower()

    def _bpe(self, piece: str) -> tuple:
        cached = self._cache.get(piece)
        if cached is not None:
            return cached
        out = bpe_merge(list(piece[:-1]) + [piece[-1] + "</w>"], self.ranks)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache = {SOT: (SOT,), EOT: (EOT,)}
        self._cache[piece] = out
        return out

    def tokenize(self, text: str) -> list:
        """Text -> list of BPE strings (byte stand-ins, ``</w>`` word ends; no SOT/EOT)."""
        if not isinstance(text, str):
            raise TypeError(f"expected a str prompt, got {type(text).__name__}")
        out = []
        for piece in self._pat.findall(self.clean(text)):
            if piece not in (SOT, EOT):
                piece = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            out.extend(self._bpe(piece))
        return out

    def encode(self, text: str) -> list:
        """Raw BPE ids for ``text`` (no SOT/EOT, no truncation)."""
        return [self.vocab[t] for t in self.tokenize(text)]

    # ----------------------------------------------------------- model input
    def _frame(self, ids: Sequence[int]):
        full = [self.sot_id, *ids, self.eot_id]
        truncated = len(full) > self.context_length
        if truncated:
            full = [*full[: self.context_length - 1], self.eot_id]
        full = full + [self.pad_id] * (self.context_length - len(full))
        return full, truncated

    def tokenize_with_info(self, text: str, dtype=np.int64) -> TokenizeInfo:
        """One prompt -> (ids (context_length,), n_tokens, truncated, unknown_chars=[])."""
        ids = self.encode(text)
        framed, truncated = self._frame(ids)
        return TokenizeInfo(np.asarray(framed, dtype=dtype), len(ids), truncated, [])

    def __call__(self, texts: str | Sequence[str], dtype=np.int64) -> np.ndarray:
        """str or list of str -> (B, context_length) ids: SOT ids EOT then ``pad_id``."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        out = np.full((len(texts), self.context_length), self.pad_id, dtype=dtype)
        for b, text in enumerate(texts):
            out[b] = self._frame(self.encode(text))[0]
        return out

    # ------------------------------------------------------------- debugging
    def decode(self, ids, skip_special: bool = True) -> str:
        """Ids -> text (byte-level decode, ``</w>`` -> space). SOT/EOT (and so EOT padding) are
        dropped when ``skip_special``; a non-EOT ``pad_id`` such as 0 (``!``) is decoded as is."""
        out = bytearray()
        for i in np.asarray(ids).reshape(-1).tolist():
            i = int(i)
            if i in self.special_ids:
                if not skip_special:
                    out += self.inv_vocab[i].encode("utf-8")
                continue
            tok = self.inv_vocab.get(i)
            if tok is None:
                continue
            word_end = tok.endswith("</w>")
            out += bytes(self.byte_decoder[c] for c in (tok[:-4] if word_end else tok))
            if word_end:
                out += b" "
        return out.decode("utf-8", errors="replace").strip()
