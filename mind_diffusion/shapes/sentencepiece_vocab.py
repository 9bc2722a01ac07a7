"""A SentencePiece model for the shapes world: the built-in GLIDE's tokenizer, read through the
same ``SentencePieceTokenizer`` as Taichu-GLIDE's ``cog-pretrain.model``.

``build_sentencepiece(path)`` trains a unigram model (``vocab_size`` pieces, character coverage 1.0,
no BOS/EOS, unk id 0, one thread, from memory: the same file on every run) on the captions of the
world's training and held-out scene generators: the shipped ``shapes-sp.model`` (its pieces; n_vocab
129 with the end token). Trained freely on these templated captions, the unigram model learns whole
phrases as single pieces ("一个绿色的正方形在右边", "下面有一个橙色的正方形"): about 9% of the
colour, shape and place words of the training captions share a piece with their neighbours, so the
same scene is spelled with other ids depending on the template.

``word_level=True`` makes every word of the world's vocabulary (``world_words()``: the shapes, the
places and the captions' multi-character function words) a piece of its own and every other piece
one character long: no word is fused, and a held-out combination of colour, shape and place is made
of pieces that the training captions use (39 pieces; n_vocab 40). Measured on the built-in base
model (models/glide_shapes/README.md), it did not draw better shapes than the free model.

The GLIDE text transformer needs ``n_vocab = sp.get_piece_size() + 1`` rows (the end token).
"""
from __future__ import annotations

import io
import os
from pathlib import Path

from .world import CAPTION_PLACE_WORDS, NEW_SHAPES, SHAPES, ShapesWorld

#: pieces of the built-in model's tokenizer (n_vocab 129 with the end token)
DEFAULT_VOCAB_SIZE = 128
#: multi-character words of the captions besides shapes and places
FUNCTION_WORDS: tuple[str, ...] = ("一个", "背景", "位于", "画面", "分别")


def world_words() -> list[str]:
    """The world's multi-character caption words, each one piece of the word-level model."""
    places = sorted({w for pair in CAPTION_PLACE_WORDS.values() for w in pair})
    return list(SHAPES) + list(NEW_SHAPES) + places + list(FUNCTION_WORDS)


def world_captions(n_train: int = 20000, n_heldout: int = 2000, seed: int = 0) -> list[str]:
    """Captions of the first scenes of the train and held-out generators (one and two shapes)."""
    out = [ShapesWorld(seed=seed, split="train").sample_scene(i)[1] for i in range(int(n_train))]
    out += [ShapesWorld(seed=seed, split="heldout").sample_scene(i)[1] for i in range(int(n_heldout))]
    return out


def build_sentencepiece(path, vocab_size: int = DEFAULT_VOCAB_SIZE, n_train: int = 20000,
                        n_heldout: int = 2000, seed: int = 0, word_level: bool = False) -> Path:
    """Train the world's SentencePiece model and write it to ``path`` (atomically).

    ``word_level``: the world's words are pieces of their own and every other piece is one
    character; ``vocab_size`` is then only an upper bound (the model has 39 pieces)."""
    import sentencepiece as spm

    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {}
    if word_level:
        extra = dict(user_defined_symbols=world_words(), max_sentencepiece_length=1, hard_vocab_limit=False)
    buf = io.BytesIO()  # trained from memory: no temporary paths recorded in the file
    spm.SentencePieceTrainer.train(sentence_iterator=iter(world_captions(n_train, n_heldout, seed)),
                                   model_writer=buf, vocab_size=int(vocab_size), model_type="unigram",
                                   character_coverage=1.0, bos_id=-1, eos_id=-1, unk_id=0, num_threads=1,
                                   minloglevel=2, **extra)
    tmp_out = path.with_name(f".{path.name}.tmp")
    tmp_out.write_bytes(buf.getvalue())
    os.replace(tmp_out, path)
    return path
