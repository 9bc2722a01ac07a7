"""OpenAI CLIP BPE tokenizer (SD-v1's): known ids, cross-check with HF ``CLIPTokenizer`` built
offline from the same merges file, framing / truncation / padding, and file errors."""
import gzip
import html
import json

import numpy as np
import pytest

from mind_diffusion.text.bpe import CLIPBPETokenizer, bytes_to_unicode

SOT, EOT = 49406, 49407

# (text, encode() ids without SOT/EOT)
KNOWN = [
    ("a photo of a cat", [320, 1125, 539, 320, 2368]),
    ("a photograph of an astronaut riding a horse", [320, 8853, 539, 550, 18376, 6765, 320, 4558]),
]

# Varied English prompts; the HF side is fed ftfy+html-cleaned text (see test docstring).
CROSS = [
    "a photo of a cat",
    "A Photo Of A CAT!!",
    "it's 3.14 o'clock, isn't it? we'll see; they'd've",
    "café naïve résumé Ångström",
    "tom &amp; jerry &lt;3 &amp;amp; friends",
    "“curly quotes” and ‘single’ ones — dash…",
    "  lots   of\tspace\n\nand newlines  ",
    "hello, world?! (parentheses) [brackets] {braces} #hashtag @user",
    "numbers 1234567890 and 3rd 21st 1e-5 0.5x",
    "emoji 🐱🚀 and symbols ©®™ ½ ∑",
    "ALL CAPS SHOUTING and MiXeD cAsE",
    "a very long prompt " * 30,
    "cyberpunk city at night, trending on artstation, 8k, highly detailed, by greg rutkowski",
    "hyphen-ated words and under_scores and slashes/and\\backslashes",
    "<|startoftext|> literal specials <|endoftext|>",
    "",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
]

_CACHE = {}


@pytest.fixture
def merges_path(shared_dir):
    path = shared_dir / "reference" / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        pytest.skip(f"CLIP BPE merges not found at {path} (reference data lives in ../shared)")
    return path


@pytest.fixture
def tok(merges_path):
    if merges_path not in _CACHE:
        _CACHE[merges_path] = CLIPBPETokenizer(merges_path)
    return _CACHE[merges_path]


def test_vocab_layout(tok):
    assert tok.vocab_size == len(tok) == 49408
    assert (tok.sot_id, tok.eot_id, tok.pad_id) == (SOT, EOT, EOT)
    assert tok.vocab["!"] == 0 and tok.vocab["a"] == 64 and tok.vocab["a</w>"] == 320
    assert len(bytes_to_unicode()) == 256 and len(set(bytes_to_unicode().values())) == 256


@pytest.mark.parametrize("text,ids", KNOWN, ids=[k[0] for k in KNOWN])
def test_known_vectors(tok, text, ids):
    assert tok.encode(text) == ids
    out = tok(text)
    assert out.shape == (1, 77) and out.dtype == np.int64
    expected = [SOT, *ids, EOT] + [EOT] * (77 - len(ids) - 2)
    assert out[0].tolist() == expected
    assert tok.decode(out[0]) == text


def test_framing_truncation_padding(tok, merges_path):
    # 100 content tokens -> SOT + first 75 + EOT; n_tokens counts all of them.
    info = tok.tokenize_with_info("cat " * 100)
    assert info.ids.shape == (77,) and info.ids.dtype == np.int64
    assert info.ids.tolist() == [SOT] + [2368] * 75 + [EOT]
    assert (info.n_tokens, info.truncated, info.unknown_chars) == (100, True, [])
    ids, n, truncated, unknown = tok.tokenize_with_info("a photo of a cat")
    assert ids[:7].tolist() == [SOT, 320, 1125, 539, 320, 2368, EOT]
    assert (n, truncated, unknown) == (5, False, [])
    assert tok("").tolist() == [[SOT] + [EOT] * 76]
    # Exactly 75 content tokens fit without truncation.
    assert not tok.tokenize_with_info("cat " * 75).truncated
    assert tok.tokenize_with_info("cat " * 76).truncated
    batch = tok(["a photo of a cat", "cat " * 100], dtype=np.int32)
    assert batch.shape == (2, 77) and batch.dtype == np.int32
    # SD-v2 / open_clip style zero padding and a shorter context.
    zero = CLIPBPETokenizer(merges_path, context_length=8, pad_id=0)
    assert zero("a cat").tolist() == [[SOT, 320, 2368, EOT, 0, 0, 0, 0]]
    assert zero("a b c d e f g h").tolist()[0][-1] == EOT


def test_cleaning(tok):
    assert tok.encode("tom &amp; jerry") == tok.encode("tom & jerry")
    assert tok.encode("&amp;amp;") == tok.encode("&")            # unescaped twice
    assert tok.encode("  A\tCat \n") == tok.encode("a cat")
    assert tok.encode("cafÃ©") == tok.encode("café")              # ftfy fixes mojibake
    assert tok.encode("<|endoftext|>") == [EOT]


def test_cross_check_with_hf_clip_tokenizer(tok, merges_path, tmp_path):
    """transformers >= 5's CLIPTokenizer is the *tokenizers* backend: NFC instead of ftfy and no
    HTML unescape. The BPE, regex split, byte mapping, framing and padding must agree exactly;
    the HF side gets the text after the ftfy + double-unescape step that SD-v1's (OpenAI / HF slow)
    tokenizer performs. Strings that cleaning leaves unchanged are compared raw as well."""
    transformers = pytest.importorskip("transformers", reason="HF CLIPTokenizer is the reference")
    ftfy = pytest.importorskip("ftfy")
    # Derive HF's vocab.json / merges.txt from the same .gz (OpenAI simple_tokenizer's recipe).
    lines = gzip.decompress(merges_path.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (tmp_path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    hf = transformers.CLIPTokenizer.from_pretrained(str(tmp_path))

    def hf_ids(text):
        return hf(text, padding="max_length", max_length=77, truncation=True)["input_ids"]

    raw_checked = 0
    for text in CROSS:
        cleaned = html.unescape(html.unescape(ftfy.fix_text(text)))
        ours = tok(text)[0].tolist()
        assert ours == hf_ids(cleaned), text
        if cleaned == text:
            assert ours == hf_ids(text), text
            raw_checked += 1
    assert raw_checked >= 10
    assert tok(CROSS)[-1].tolist() == hf_ids(CROSS[-1])


def test_missing_and_corrupt_files(tmp_path):
    missing = tmp_path / "nope" / "bpe_simple_vocab_16e6.txt.gz"
    with pytest.raises(FileNotFoundError, match=r"nope.*bpe_simple_vocab_16e6\.txt\.gz.*OpenAI CLIP"):
        CLIPBPETokenizer(missing)
    bad = tmp_path / "bad.txt.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(ValueError, match=r"bad\.txt\.gz.*open_clip"):
        CLIPBPETokenizer(bad)
    short = tmp_path / "short.txt.gz"
    short.write_bytes(gzip.compress(b"#version: 0.2\na b\nc d\n"))
    with pytest.raises(ValueError, match=r"short\.txt\.gz' has only 2 merges, CLIP needs 48894"):
        CLIPBPETokenizer(short)
    broken = tmp_path / "broken.txt"
    broken.write_text("#version\n" + "a b\n" * 10 + "oops\n" + "c d\n" * 50000)
    with pytest.raises(ValueError, match=r"broken\.txt' line 12 is not a merge pair"):
        CLIPBPETokenizer(broken)
