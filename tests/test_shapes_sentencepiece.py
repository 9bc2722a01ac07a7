"""The built-in GLIDE's SentencePiece models (mind_diffusion/shapes/sentencepiece_vocab.py): the free
unigram model (the default build; it fuses some words with their neighbours into phrase pieces such as
上面有一个红色的正方形) and the word-level model that models/glide_shapes ships (rebuilt byte for byte),
whose pieces are the world's words and characters: no word fused, and every held-out combination of
colour, shape and place spelled with pieces the training captions use."""
from pathlib import Path

import pytest

from mind_diffusion.shapes.sentencepiece_vocab import build_sentencepiece, world_captions, world_words
from mind_diffusion.shapes.world import CAPTION_PLACE_WORDS, HELDOUT_COMBOS, SHAPES, SINGLE_TEMPLATES, ShapesWorld

spm = pytest.importorskip("sentencepiece")
ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "glide_shapes" / "shapes-sp.model"


def _sp(path):
    return spm.SentencePieceProcessor(model_file=str(path))


def _pieces(sp, captions):
    return {p for c in captions for p in sp.encode(c, out_type=str)}


def _heldout_prompts():
    """Every held-out combination under every single-shape template (background 灰), and the
    held-out generator's own captions (one and two shapes)."""
    out = [t.format(c=c, s=s, p=p, b="灰") for c, s, p in HELDOUT_COMBOS for t in SINGLE_TEMPLATES]
    world = ShapesWorld(seed=0, split="heldout")
    return out + [world.sample_scene(i)[1] for i in range(300)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sp")
    return {"word": build_sentencepiece(tmp / "word.model", word_level=True),
            "again": build_sentencepiece(tmp / "again.model", word_level=True),
            "free": build_sentencepiece(tmp / "free.model")}


def test_pieces_are_the_worlds_words_and_characters(models):
    sp = _sp(models["word"])
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    words = world_words()
    assert set(words) <= set(pieces)
    assert all(p in words or len(p) == 1 or p == "<unk>" for p in pieces), pieces
    for w in words:  # each word is one piece wherever it stands
        assert sp.encode(f"一个红色的{w}", out_type=str)[-1] == w
    caption = "一个绿色的正方形在右边"
    assert sp.encode(caption, out_type=str) == ["▁", "一个", "绿", "色", "的", "正方形", "在", "右边"]
    for c in world_captions(200, 50):
        assert sp.decode(sp.encode(c)) == c.replace("，", ",")
    # the same bytes on every build (one thread), so the shipped file can be rebuilt
    assert models["word"].read_bytes() == models["again"].read_bytes()


def _fused(sp, n=2000):
    """Share of the colour, shape and place words in the first ``n`` training captions that do not
    start and end at a piece boundary (a piece runs across the word's edge, fusing it with its
    neighbours; a word split into several pieces inside its edges is not fused)."""
    world = ShapesWorld(seed=0, split="train")
    bad = total = 0
    for i in range(n):
        scene, caption = world.sample_scene(i)[:2]
        text = sp.decode(sp.encode(caption))
        edges, at = {0}, 0
        for piece in sp.encode(caption, out_type=str):
            at += len(piece.replace("\u2581", ""))
            edges.add(at)
        for o in scene.objects:
            for word in (o.colour, o.shape, *CAPTION_PLACE_WORDS[o.place]):
                start = text.find(word)
                while start >= 0:
                    total += 1
                    bad += start not in edges or start + len(word) not in edges
                    start = text.find(word, start + 1)
    return bad / total


def test_captions_spell_colour_shape_and_place_with_the_same_pieces(models):
    train = world_captions(20000, 0)
    sp = _sp(models["word"])
    assert _fused(sp) == 0.0
    assert _pieces(sp, _heldout_prompts()) <= _pieces(sp, train)
    # the free unigram model fuses colour, shape and place of some templates into single pieces
    # ("上面有一个红色的正方形"), so the same scene is spelled with other ids depending on the template
    free = _sp(models["free"])
    assert _fused(free) > 0.05
    fused_pieces = [p for p in _pieces(free, train) if any(s in p for s in SHAPES) and len(p) > 4]
    assert fused_pieces, "the free model was expected to fuse words"


@pytest.mark.skipif(not SHIPPED.is_file(), reason="models/glide_shapes/shapes-sp.model is not in this checkout")
def test_shipped_tokenizer_is_the_word_level_build(models):
    """models/glide_shapes ships the word-level model (its base was trained on those ids), byte for byte."""
    assert SHIPPED.read_bytes() == models["word"].read_bytes()
    assert _sp(SHIPPED).get_piece_size() == 39
