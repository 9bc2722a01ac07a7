"""GPT-2 byte-level BPE: the English tokenizer of GLIDE (OpenAI glide-text2im's ``bpe.py``,
used by Taichu-GLIDE when ``--is_chinese false``: ``model/glide_text2im/tokenizer/bpe.py``).

Pure Python (plus numpy and ``regex``); no MindSpore here.

Algorithm:

* lower-case the text;
* split it with GPT-2's pattern
  ``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``;
* each piece -> UTF-8 bytes -> printable stand-ins (``bytes_to_unicode``, shared with the CLIP
  tokenizer) -> BPE: repeatedly merge the adjacent pair of lowest rank in ``vocab.bpe``;
* ids from ``encoder.json``. ``n_vocab = len(encoder)`` (50257) and the end token
  ``n_vocab - 1`` (50256, ``<|endoftext|>``) pads.

The files (``encoder.json`` and ``vocab.bpe``, or their ``.gz``, as in glide-text2im) are read
from a folder the user supplies. Note: Taichu-GLIDE's base model has only 50001 embedding
rows, so English ids >= 50001 cannot go into it (the pipeline checks this).
"""
from __future__ import annotations

import json
import os
from typing import List, Optional

from .bpe import bpe_merge, bytes_to_unicode, read_text_file
from .sentencepiece_tokenizer import TokenTruncationWarning, _GlideTokenizerMixin

__all__ = ["GPT2BPETokenizer", "GPT2_PATTERN", "TokenTruncationWarning", "find_bpe_files"]

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

_HINT = ("GLIDE's English tokenizer needs encoder.json and vocab.bpe (or encoder.json.gz and "
         "vocab.bpe.gz, from openai/glide-text2im glide_text2im/tokenizer/ or the GPT-2 release); "
         "pass the folder that holds them")
_CACHE_LIMIT = 100_000


def _first_existing(folder: str, names) -> Optional[str]:
    for name in names:
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            return p
    return None


def find_bpe_files(folder: str | os.PathLike) -> tuple:
    """(encoder path, merges path) in ``folder``; plain files win over ``.gz``."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"GPT-2 BPE folder not found: {folder}; {_HINT}")
    enc = _first_existing(folder, ("encoder.json", "encoder.json.gz"))
    merges = _first_existing(folder, ("vocab.bpe", "vocab.bpe.gz"))
    missing = [n for n, p in (("encoder.json[.gz]", enc), ("vocab.bpe[.gz]", merges)) if p is None]
    if missing:
        raise FileNotFoundError(f"{' and '.join(missing)} not found in {folder}; {_HINT}")
    return enc, merges


class GPT2BPETokenizer(_GlideTokenizerMixin):
    """GPT-2 byte-level BPE with GLIDE's lower-casing and pad = end token."""

    def __init__(self, path: str | os.PathLike | None = None, *,
                 encoder_path: str | os.PathLike | None = None,
                 merges_path: str | os.PathLike | None = None):
        try:
            import regex
        except ImportError as exc:  # in requirements.txt
            raise ImportError(f"GPT2BPETokenizer needs the 'regex' package: {exc}") from exc
        if path is not None:
            encoder_path, merges_path = find_bpe_files(path)
        if encoder_path is None or merges_path is None:
            raise ValueError(f"pass the folder of the BPE files, or both encoder_path and "
                             f"merges_path; {_HINT}")
        self.encoder_path, self.merges_path = os.fspath(encoder_path), os.fspath(merges_path)
        try:
            encoder = json.loads(read_text_file(self.encoder_path, "GPT-2 BPE encoder", _HINT))
        except json.JSONDecodeError as exc:
            raise ValueError(f"GPT-2 BPE encoder {self.encoder_path} is not valid JSON "
                             f"({exc}); {_HINT}") from None
        if not isinstance(encoder, dict) or not encoder or not all(
                isinstance(k, str) and isinstance(v, int) for k, v in encoder.items()):
            raise ValueError(f"GPT-2 BPE encoder {self.encoder_path} must map token strings to "
                             f"integer ids; {_HINT}")
        ranks = {}
        for n, line in enumerate(read_text_file(self.merges_path, "GPT-2 BPE merges file", _HINT).split("\n"), 1):
            if not line.strip() or (n == 1 and line.startswith("#")):
                continue
            pair = tuple(line.split())
            if len(pair) != 2:
                raise ValueError(f"GPT-2 BPE merges file {self.merges_path} line {n} is not a "
                                 f"merge pair: {line[:60]!r}; {_HINT}")
            ranks.setdefault(pair, len(ranks))
        self.encoder = encoder
        self.decoder = {v: k for k, v in encoder.items()}
        self.bpe_ranks = ranks
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self._pat = regex.compile(GPT2_PATTERN)
        self._cache = {}
        self.n_vocab = len(encoder)
        self.end_token = self.n_vocab - 1


    def bpe(self, piece: str) -> tuple:
        """Merge the byte stand-ins of one pre-token into BPE symbols (lowest rank first)."""
        cached = self._cache.get(piece)
        if cached is not None:
            return cached
        out = bpe_merge(list(piece), self.bpe_ranks)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache = {}
        self._cache[piece] = out
        return out

    def tokenize(self, text: str) -> List[str]:
        """Text -> BPE symbol strings (after GLIDE's lower-casing)."""
        if not isinstance(text, str):
            raise TypeError(f"expected a str prompt, got {type(text).__name__}")
        out = []
        for piece in self._pat.findall(text.lower()):
            out.extend(self.bpe("".join(self.byte_encoder[b] for b in piece.encode("utf-8"))))
        return out

    def encode(self, text: str) -> List[int]:
        ids = []
        for sym in self.tokenize(text):
            i = self.encoder.get(sym)
            if i is None:
                raise ValueError(f"BPE symbol {sym!r} is missing from {self.encoder_path} "
                                 f"(encoder.json and vocab.bpe do not belong together); {_HINT}")
            ids.append(i)
        return ids

    def decode(self, ids) -> str:
        """Ids -> text (the end / pad token dropped)."""
        import numpy as np

        syms = [self.decoder[int(i)] for i in np.asarray(ids).reshape(-1)
                if int(i) != self.end_token and int(i) in self.decoder]
        data = bytes(self.byte_decoder[c] for c in "".join(syms) if c in self.byte_decoder)
        return data.decode("utf-8", errors="replace")
