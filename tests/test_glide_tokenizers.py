"""GLIDE tokenizers: the Chinese SentencePiece wrapper (spec glide.md §6) on a SentencePiece model
trained here, and the English GPT-2 byte-level BPE against HF ``GPT2Tokenizer`` on a BPE
vocabulary learnt here."""
import gzip
import warnings

import numpy as np
import pytest

from glide_tiny import CORPUS_EN, train_tiny_bpe, train_tiny_sp
from mind_diffusion.text.gpt2_bpe import GPT2BPETokenizer
from mind_diffusion.text.sentencepiece_tokenizer import (SentencePieceTokenizer,
                                                         TokenTruncationWarning,
                                                         padded_tokens_and_mask)


@pytest.fixture(scope="module")
def sp_path(tmp_path_factory):
    return train_tiny_sp(tmp_path_factory.mktemp("sp"))


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    return train_tiny_bpe(tmp_path_factory.mktemp("bpe"))


# ------------------------------------------------------------------ SentencePiece (Chinese)
def test_sp_vocab_and_padding_layout(sp_path):
    import sentencepiece as spm

    ref = spm.SentencePieceProcessor(model_file=str(sp_path))
    tok = SentencePieceTokenizer(sp_path)
    assert tok.n_vocab == ref.vocab_size() + 1 == len(tok)
    assert tok.end_token == tok.pad_id == ref.vocab_size()
    text = "一只可爱的猫坐在草地上"
    ids = ref.EncodeAsIds(text)
    assert tok.encode(text) == ids and len(ids) > 3
    tokens, mask = tok.tokens_and_mask(text, 128)
    assert tokens.dtype == np.int32 and mask.dtype == np.int32
    expect = np.array(ids + [ref.vocab_size()] * (128 - len(ids)), np.int32)
    np.testing.assert_array_equal(tokens, expect)
    np.testing.assert_array_equal(mask, np.array([1] * len(ids) + [0] * (128 - len(ids))))
    # no lower-casing, no BOS/EOS: upper case text keeps its own pieces
    assert tok.encode("ABC") == ref.EncodeAsIds("ABC")
    assert tok.decode(tokens) == ref.DecodeIds(ids)
    # the empty prompt: all pad, mask 0
    t0, m0 = tok.empty_tokens_and_mask()
    assert (t0 == tok.end_token).all() and (m0 == 0).all()


def test_sp_truncates_with_a_warning(sp_path):
    tok = SentencePieceTokenizer(sp_path)
    text = "一只可爱的猫坐在草地上" * 30
    ids = tok.encode(text)
    assert len(ids) > 128
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        tokens, mask = tok.tokens_and_mask(text, 128)
    msgs = [str(w.message) for w in rec if issubclass(w.category, TokenTruncationWarning)]
    assert len(msgs) == 1 and f"{len(ids)} tokens" in msgs[0]
    np.testing.assert_array_equal(tokens, np.array(ids[:128], np.int32))
    assert mask.all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok.tokens_and_mask("猫", 128)  # short prompts do not warn
    batch_t, batch_m = tok.batch(["猫 插画风格", "一张画着柯基的油画"], 16)
    assert batch_t.shape == (2, 16) and batch_m.sum(1).tolist() == [len(tok.encode("猫 插画风格")),
                                                                    len(tok.encode("一张画着柯基的油画"))]


def test_sp_errors_name_the_file(tmp_path):
    missing = tmp_path / "cog-pretrain.model"
    with pytest.raises(FileNotFoundError, match="cog-pretrain.model.*--tokenizer_model"):
        SentencePieceTokenizer(missing)
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"this is not a protobuf \x00\x01\x02" * 10)
    with pytest.raises(ValueError, match="garbage.model is not a SentencePiece model"):
        SentencePieceTokenizer(garbage)
    with pytest.raises(ValueError, match="text_ctx"):
        padded_tokens_and_mask([1, 2], 0, 5)


# ------------------------------------------------------------------ GPT-2 BPE (English)
CROSS = CORPUS_EN + [
    "A Photo Of A CAT!!", "IT'S 3.14 O'CLOCK, ISN'T IT? WE'LL SEE; THEY'D'VE",
    "Café Naïve Résumé ÅNGSTRÖM", "“curly quotes” and ‘single’ ones — dash…",
    "hello, world?! (parentheses) [brackets] {braces} #hashtag @user",
    "trailing spaces   ", "   leading spaces", "tabs\tand\nnewlines\r\nmixed \t \n end",
    "一张画着柯基的油画 and English", "emoji 🐱🚀🎨 family 👨‍👩‍👧", "ÀÉÎÕÜ àéîõü ß ẞ ﬁ",
    "ΑΒΓ αβγ Ελληνικά кириллица", "", " ", "a", "'s 't 're 've 'm 'll 'd", "x" * 300,
    "unseen words: zyxwvut qqq jjj", "mixed123numbers456 and 7 8 9", "\u00a0nbsp\u2003em space",
]


@pytest.fixture(scope="module")
def hf_gpt2(bpe_dir, tmp_path_factory):
    transformers = pytest.importorskip("transformers", reason="HF reference tokenizer")
    folder = tmp_path_factory.mktemp("hf_bpe")
    (folder / "vocab.json").write_bytes((bpe_dir / "encoder.json").read_bytes())
    (folder / "merges.txt").write_bytes((bpe_dir / "vocab.bpe").read_bytes())
    return transformers.GPT2Tokenizer.from_pretrained(str(folder))


@pytest.mark.parametrize("text", CROSS)
def test_bpe_matches_hf_gpt2_after_lowercasing(bpe_dir, hf_gpt2, text):
    tok = GPT2BPETokenizer(bpe_dir)
    ours = tok.encode(text)
    ref = hf_gpt2.encode(text.lower(), add_special_tokens=False)
    assert ours == ref
    assert tok.decode(ours) == text.lower()


def test_bpe_layout_gz_and_truncation(bpe_dir, tmp_path):
    tok = GPT2BPETokenizer(bpe_dir)
    n = len(__import__("json").loads((bpe_dir / "encoder.json").read_text("utf-8")))
    assert tok.n_vocab == n and tok.end_token == n - 1 == tok.encoder["<|endoftext|>"]
    merges = (bpe_dir / "vocab.bpe").read_text("utf-8").splitlines()[1:]
    assert len(merges) > 200 and len(tok.bpe_ranks) == len(merges)  # the corpus runs out at 272
    # merges really apply: "the" is one symbol, not three bytes
    assert tok.tokenize("The the") == ["the", "Ġthe"] and len(tok.encode("photo of a cat")) < 10
    gz_dir = train_tiny_bpe(tmp_path / "gz", gz=True)
    assert gzip.decompress((gz_dir / "vocab.bpe.gz").read_bytes()).startswith(b"#version")
    assert GPT2BPETokenizer(gz_dir).encode("A photo of a cat") == tok.encode("a photo of a cat")
    text = "a photo of a cat " * 40
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        tokens, mask = tok.tokens_and_mask(text, 128)
    assert any(issubclass(w.category, TokenTruncationWarning) for w in rec)
    np.testing.assert_array_equal(tokens, np.array(tok.encode(text)[:128], np.int32))
    short, smask = tok.tokens_and_mask("a cat", 128)
    k = len(tok.encode("a cat"))
    assert (short[k:] == tok.end_token).all() and smask.tolist() == [1] * k + [0] * (128 - k)


def test_bpe_missing_and_bad_files(tmp_path, bpe_dir):
    with pytest.raises(FileNotFoundError, match="BPE folder not found"):
        GPT2BPETokenizer(tmp_path / "nope")
    only = tmp_path / "only"
    only.mkdir()
    (only / "encoder.json").write_bytes((bpe_dir / "encoder.json").read_bytes())
    with pytest.raises(FileNotFoundError, match=r"vocab.bpe\[.gz\] not found"):
        GPT2BPETokenizer(only)
    (only / "vocab.bpe").write_text("#version: 0.2\nthis line has three\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2 is not a merge pair"):
        GPT2BPETokenizer(only)
    (only / "vocab.bpe").write_bytes((bpe_dir / "vocab.bpe").read_bytes())
    (only / "encoder.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        GPT2BPETokenizer(only)
