"""The tokenizer factory (no MindSpore here): an LDM config's ``tokenizer:`` section -> a
tokenizer and where its vocabulary file is; GLIDE's SentencePiece / GPT-2 BPE choice."""
from __future__ import annotations

from pathlib import Path


def build_tokenizer(tok_cfg, vocab_path: str | Path, context_length: int):
    """The tokenizer a ``tokenizer:`` config section names: ``kind`` 'wordpiece' (BERT-Chinese,
    Wukong-Huahua) or 'bpe' (CLIP, with ``pad_id``), reading ``vocab_path``, ``context_length``
    ids per prompt."""
    kind = str(tok_cfg["kind"])
    if kind == "wordpiece":
        from .wordpiece import WordPieceTokenizer

        return WordPieceTokenizer(vocab_path, context_length=context_length)
    if kind == "bpe":
        from .bpe import CLIPBPETokenizer

        return CLIPBPETokenizer(vocab_path, context_length=context_length,
                                pad_id=int(tok_cfg["pad_id"]))
    raise ValueError(f"tokenizer.kind must be 'wordpiece' or 'bpe', got {kind!r}")


def resolve_vocab(cfg, ckpt_path: str | Path | None, vocab: str | Path | None) -> Path:
    """--vocab if given, else ``tokenizer.vocab_file`` next to the checkpoint."""
    name = str(cfg.tokenizer.vocab_file)
    if vocab:
        p = Path(vocab).expanduser()
    elif ckpt_path:
        p = Path(ckpt_path).expanduser().parent / name
    else:
        p = Path(name)
    if not p.is_file():
        hint = ("the BERT-Chinese vocab (vocab_zh.txt, 21128 lines) ships with the Wukong-Huahua "
                "code as ldm/models/clip_zh/vocab_zh.txt" if cfg.tokenizer.kind == "wordpiece"
                else "the CLIP BPE merges file bpe_simple_vocab_16e6.txt.gz ships with OpenAI "
                     "CLIP / open_clip")
        raise FileNotFoundError(f"tokenizer vocabulary not found: {p}. Put {name} next to the "
                                f"checkpoint or pass --vocab PATH ({hint})")
    return p


def build_glide_tokenizer(path, is_chinese: bool = True):
    """SentencePiece (Chinese, ``cog-pretrain.model``) or GPT-2 BPE (English, a folder with
    ``encoder.json`` / ``vocab.bpe``)."""
    if is_chinese:
        from .sentencepiece_tokenizer import SentencePieceTokenizer

        return SentencePieceTokenizer(path)
    from .gpt2_bpe import GPT2BPETokenizer

    return GPT2BPETokenizer(path)
