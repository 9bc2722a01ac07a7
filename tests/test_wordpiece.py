"""WordPiece (BERT-Chinese) tokenizer: spec wukong.md §4.2/§4.3 test vectors and layout."""

import numpy as np
import pytest

from mind_diffusion.text.wordpiece import WordPieceTokenizer, basic_tokenize

CLS, SEP, PAD, UNK = 101, 102, 0, 100

# wukong.md §4.3 "Test vectors (verified, encode() output without SOT/EOT)".
SPEC_VECTORS = [
    ("狗 绘画 写实风格", None, [4318, 5313, 4514, 1091, 2141, 7599, 3419]),
    ("来自深渊 风景 绘画 写实风格", None, [3341, 5632, 3918, 3929, 7599, 3250, 5313, 4514, 1091, 2141, 7599, 3419]),
    (
        "城市夜景 赛博朋克 格雷格·鲁特科夫斯基",
        None,
        [1814, 2356, 1915, 3250, 6612, 1300, 3301, 1046, 3419, 7440, 3419, 185, 7826, 4294, 4906, 1923, 3172, 1825],
    ),
    (
        "A Van Gogh style oil-painting, 2023!",
        ["a", "van", "go", "##gh", "style", "oil", "-", "pa", "##int", "##ing", ",", "202", "##3", "!"],
        [143, 9933, 8373, 11304, 8969, 13046, 118, 9519, 9824, 8221, 117, 9707, 8152, 106],
    ),
    ("α猫 插画风格", ["α", "猫", "插", "画", "风", "格"], [210, 4344, 2991, 4514, 7599, 3419]),
    ("Café ÉCOLE", ["cafe", "eco", "##le"], [8377, 12791, 8268]),
]


_CACHE = {}


@pytest.fixture
def vocab_path(shared_dir):
    path = shared_dir / "reference" / "vocab_zh.txt"
    if not path.is_file():
        pytest.skip(f"BERT-Chinese vocab not found at {path} (reference data lives in ../shared)")
    return path


@pytest.fixture
def tok(vocab_path):
    # Load the 21128-line vocab once per session.
    if vocab_path not in _CACHE:
        _CACHE[vocab_path] = WordPieceTokenizer(vocab_path)
    return _CACHE[vocab_path]


def test_vocab_layout(tok):
    assert len(tok) == 21128
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id) == (PAD, UNK, CLS, SEP)
    assert tok.vocab["[MASK]"] == 103


@pytest.mark.parametrize("text,pieces,ids", SPEC_VECTORS, ids=[v[0] for v in SPEC_VECTORS])
def test_spec_vectors(tok, text, pieces, ids):
    assert tok.encode(text) == ids
    if pieces is not None:
        assert tok.tokenize(text) == pieces
    framed = tok(text)
    assert framed.shape == (1, 77) and framed.dtype == np.int64
    expected = [CLS] + ids + [SEP]
    assert framed[0].tolist() == expected + [PAD] * (77 - len(expected))


def test_spec_vector_pieces_middle_dot(tok):
    pieces = tok.tokenize("城市夜景 赛博朋克 格雷格·鲁特科夫斯基")
    assert pieces[8:13] == ["格", "雷", "格", "·", "鲁"]


def test_chinese_one_token_per_char(tok):
    text = "一只可爱的猫咪在花园里"
    pieces = tok.tokenize(text)
    assert pieces == list(text)
    assert all(i != UNK for i in tok.encode(text))
    # No spaces needed between CJK chars and Latin text either.
    assert tok.tokenize("猫cat猫") == ["猫", "cat", "猫"]


def test_punctuation_split(tok):
    assert basic_tokenize("hello,world!(x)$y^z`") == ["hello", ",", "world", "!", "(", "x", ")", "$", "y", "^", "z", "`"]
    # Unicode punctuation (category P*), including full-width Chinese punctuation.
    assert tok.tokenize("你好，世界。") == ["你", "好", "，", "世", "界", "。"]
    assert basic_tokenize("a...b") == ["a", ".", ".", ".", "b"]


def test_wordpiece_continuation(tok):
    assert "painting" not in tok.vocab
    assert tok.tokenize("painting") == ["pa", "##int", "##ing"]
    assert tok.encode("painting") == [9519, 9824, 8221]


def test_lowercase_and_accent_strip(tok):
    assert basic_tokenize("Café ÉCOLE Naïve") == ["cafe", "ecole", "naive"]
    assert tok.tokenize("CAFÉ") == tok.tokenize("cafe") == ["cafe"]
    # lower_case=False keeps case and accents (BERT only strips accents when lower-casing).
    assert basic_tokenize("Café", lower_case=False) == ["Café"]


def test_clean_text_and_whitespace(tok):
    assert basic_tokenize("a\tb\nc\r\nd\u3000e\x00f\ufffdg\x07h") == ["a", "b", "c", "d", "efgh"]
    assert tok.encode("  \t\n ") == []


def test_unknown_char(tok):
    ch = "丂"  # U+4E02: a CJK ideograph absent from vocab_zh.txt
    assert ch not in tok.vocab and "##" + ch not in tok.vocab
    assert tok.encode(f"猫{ch}狗") == [4344, UNK, 4318]
    info = tok.tokenize_with_info(f"猫{ch}狗")
    assert info.unknown_chars == [ch]
    assert not info.truncated and info.n_tokens == 3
    # Emoji inside a Latin word: the whole word becomes [UNK], the emoji is reported.
    assert tok.encode("cat😀") == [UNK]
    assert tok.tokenize_with_info("cat😀").unknown_chars == ["😀"]
    # A literal [UNK] maps to 100 and is not reported as unknown text.
    assert tok.encode("[UNK]") == [UNK]
    assert tok.tokenize_with_info("[UNK]").unknown_chars == []
    # never_split specials absent from the vocab map to the [UNK] id (reference returned the string).
    assert tok.encode("<|endoftext|>") == [UNK]


def test_word_longer_than_100_chars(tok):
    assert tok.encode("a" * 100) != [UNK]
    assert tok.encode("a" * 101) == [UNK]
    assert tok.tokenize_with_info("a" * 101).unknown_chars == ["a" * 101]


def test_empty_prompt(tok):
    out = tok("")
    assert out.shape == (1, 77) and out.dtype == np.int64
    assert out[0].tolist() == [CLS, SEP] + [PAD] * 75
    ids, n, truncated, unknown = tok.tokenize_with_info("")
    assert ids.tolist() == out[0].tolist() and n == 0 and not truncated and unknown == []


def test_truncation_keeps_76_then_sep(tok):
    text = "猫" * 100
    out = tok(text)
    assert out.shape == (1, 77)
    assert out[0, 0] == CLS
    assert out[0, -1] == SEP
    assert (out[0, 1:76] == 4344).all()
    info = tok.tokenize_with_info(text)
    assert info.truncated and info.n_tokens == 100
    assert info.ids.tolist() == out[0].tolist()
    # Exactly 75 content tokens fit without truncation; 76 do not.
    assert not tok.tokenize_with_info("猫" * 75).truncated
    assert tok("猫" * 75)[0].tolist() == [CLS] + [4344] * 75 + [SEP]
    info76 = tok.tokenize_with_info("猫" * 76)
    assert info76.truncated and info76.ids.tolist() == [CLS] + [4344] * 75 + [SEP]


def test_batch(tok):
    prompts = ["狗 绘画 写实风格", "", "A Van Gogh style oil-painting, 2023!", "猫" * 90]
    out = tok(prompts)
    assert out.shape == (4, 77) and out.dtype == np.int64
    for row, p in zip(out, prompts):
        assert row.tolist() == tok(p)[0].tolist()
    assert out[1].tolist() == [CLS, SEP] + [PAD] * 75
    assert tok(tuple(prompts)).tolist() == out.tolist()
    assert tok(prompts, dtype=np.int32).dtype == np.int32
    assert tok([]).shape == (0, 77)


def test_decode(tok):
    assert tok.decode(tok("A Van Gogh style oil-painting, 2023!")[0]) == "a van gogh style oil - painting , 2023 !"
    assert tok.decode(tok("狗 绘画")[0]) == "狗 绘 画"
    assert tok.decode([CLS, UNK, SEP, PAD]) == "[UNK]"
    assert tok.decode([CLS, 4318, SEP], skip_special=False) == "[CLS] 狗 [SEP]"


def test_custom_context_length(vocab_path):
    t = WordPieceTokenizer(vocab_path, context_length=8)
    assert t("狗 绘画 写实风格")[0].tolist() == [CLS, 4318, 5313, 4514, 1091, 2141, 7599, SEP]
    assert t("狗")[0].tolist() == [CLS, 4318, SEP, 0, 0, 0, 0, 0]


def test_missing_vocab_error(tmp_path):
    missing = tmp_path / "models" / "vocab_zh.txt"
    with pytest.raises(FileNotFoundError) as exc:
        WordPieceTokenizer(missing)
    msg = str(exc.value)
    assert str(missing) in msg and "models/" in msg and "checkpoint" in msg


def test_empty_or_bad_vocab_error(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty") as exc:
        WordPieceTokenizer(empty)
    assert str(empty) in str(exc.value) and "models/" in str(exc.value)

    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\xfa\x00garbage")
    with pytest.raises(ValueError) as exc:
        WordPieceTokenizer(binary)
    assert str(binary) in str(exc.value)

    no_specials = tmp_path / "plain.txt"
    no_specials.write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(ValueError, match="special"):
        WordPieceTokenizer(no_specials)


def test_vocab_line_separator_quirk(tok):
    # vocab_zh.txt line 343 is U+2028 (strips to ""), yet ids stay equal to line indices.
    assert tok.vocab["[SEP]"] == 102 and tok.vocab["狗"] == 4318
    # U+2028 is not BERT whitespace (category Zl) but Python's str.split() splits on it.
    assert basic_tokenize("a\u2028b") == ["a", "b"]
