"""A SentencePiece model for the shapes world: the built-in GLIDE's tokenizer, read through the
same ``SentencePieceTokenizer`` as Taichu-GLIDE's ``cog-pretrain.model``.

``build_sentencepiece(path)`` trains a unigram model (``vocab_size`` pieces, character coverage
1.0, no BOS/EOS, unk id 0, one thread: the same pieces on every run) on the captions of the
world's training and held-out scene generators, so every word of the world's captions has its
pieces. The GLIDE text transformer then needs ``n_vocab = vocab_size + 1`` rows (the end token).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .world import ShapesWorld

#: pieces of the built-in model's tokenizer (n_vocab 129 with the end token)
DEFAULT_VOCAB_SIZE = 128


def world_captions(n_train: int = 20000, n_heldout: int = 2000, seed: int = 0) -> list[str]:
    """Captions of the first scenes of the train and held-out generators (one and two shapes)."""
    out = [ShapesWorld(seed=seed, split="train").sample_scene(i)[1] for i in range(int(n_train))]
    out += [ShapesWorld(seed=seed, split="heldout").sample_scene(i)[1] for i in range(int(n_heldout))]
    return out


def build_sentencepiece(path, vocab_size: int = DEFAULT_VOCAB_SIZE, n_train: int = 20000,
                        n_heldout: int = 2000, seed: int = 0) -> Path:
    """Train the world's SentencePiece model and write it to ``path`` (atomically)."""
    import sentencepiece as spm

    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "captions.txt"
        corpus.write_text("\n".join(world_captions(n_train, n_heldout, seed)) + "\n", encoding="utf-8")
        prefix = Path(tmp) / "world"
        spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(prefix), vocab_size=int(vocab_size),
                                       model_type="unigram", character_coverage=1.0, bos_id=-1, eos_id=-1,
                                       unk_id=0, num_threads=1, minloglevel=2)
        tmp_out = path.with_name(f".{path.name}.tmp")
        tmp_out.write_bytes(prefix.with_suffix(".model").read_bytes())
        os.replace(tmp_out, path)
    return path
