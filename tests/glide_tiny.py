"""Helpers for the GLIDE tests: a tiny SentencePiece model trained on the spot, a tiny GPT-2
BPE vocabulary learnt by a minimal BPE trainer, tiny random GLIDE checkpoints, and the shapes-world
data, tokenizer and tiny configs of the training tests."""
from __future__ import annotations

import collections
import io
import json
from pathlib import Path

import numpy as np

CORPUS_ZH = [
    "一张画着柯基的油画", "一只可爱的猫坐在草地上", "城市夜景 赛博朋克", "来自深渊 风景 绘画 写实风格",
    "狗 绘画 写实风格", "猫 插画风格", "一座古老的城堡在山顶上", "海边的日落，金色的阳光",
    "春天的花园里开满了鲜花", "雪山下的湖泊倒映着蓝天", "一个宇航员骑着马", "水墨画风格的竹林",
    "a red fox in the snow, oil painting", "cyberpunk city at night 8k",
]

CORPUS_EN = [
    "a photo of a cat sitting on the grass", "an oil painting of a corgi wearing a hat",
    "the quick brown fox jumps over the lazy dog", "it's a beautiful day, isn't it? we'll see.",
    "cyberpunk city at night, trending on artstation, 8k, highly detailed",
    "numbers 1234567890 and 3rd 21st 1e-5 0.5x", "café naïve résumé ångström",
    "一只可爱的猫坐在草地上", "emoji 🐱🚀 and symbols ©®™ ½", "hyphen-ated under_scores slashes/and",
    "they'd've done it, i'm sure you're right; they've gone", "  lots   of\tspace\n\nnewlines  ",
]

GPT2_PATTERN_TEST = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def train_tiny_sp(folder: Path, name: str = "tiny-sp.model", vocab_size: int = 80) -> Path:
    """A small unigram SentencePiece model (at most ``vocab_size`` pieces) written to folder/name."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS_ZH[:8] * 4), model_writer=buf,
                                   vocab_size=vocab_size, model_type="unigram",
                                   character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path


def _byte_symbols():
    """GPT-2's byte -> printable unicode table, written out independently of the library."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    table, n = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return table


def train_tiny_bpe(folder: Path, n_merges: int = 300, gz: bool = False) -> Path:
    """Learn ``n_merges`` byte-level BPE merges from CORPUS_EN (most frequent pair first, ties
    by the pair itself) and write encoder.json + vocab.bpe (or .gz) into ``folder``."""
    import gzip

    import regex

    pat = regex.compile(GPT2_PATTERN_TEST)
    b2u = _byte_symbols()
    words = collections.Counter()
    for line in CORPUS_EN * 3:
        for piece in pat.findall(line.lower()):
            words[tuple(b2u[b] for b in piece.encode("utf-8"))] += 1
    merges = []
    for _ in range(n_merges):
        pairs = collections.Counter()
        for w, c in words.items():
            for p in zip(w, w[1:]):
                pairs[p] += c
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(best)
        new = collections.Counter()
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new[tuple(out)] += c
        words = new
    vocab = {}
    for s in list(b2u.values()) + ["".join(m) for m in merges] + ["<|endoftext|>"]:
        vocab.setdefault(s, len(vocab))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    enc = json.dumps(vocab, ensure_ascii=False).encode("utf-8")
    bpe = ("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)).encode("utf-8")
    if gz:
        (folder / "encoder.json.gz").write_bytes(gzip.compress(enc))
        (folder / "vocab.bpe.gz").write_bytes(gzip.compress(bpe))
    else:
        (folder / "encoder.json").write_bytes(enc)
        (folder / "vocab.bpe").write_bytes(bpe)
    return folder


def randomize(net, seed: int = 0, std: float = 0.2):
    """Noticeable random values in every parameter (zero-init output convs would hide bugs);
    BatchNorm variances stay positive."""
    from mindspore import Tensor

    rng = np.random.default_rng(seed)
    for p in net.get_parameters():
        shape = tuple(p.shape)
        name = p.name
        if name.endswith(("gamma", "moving_variance")):
            v = 1.0 + std * np.abs(rng.standard_normal(shape)) if "moving_variance" in name \
                else 1.0 + std * rng.standard_normal(shape)
        else:
            v = std * rng.standard_normal(shape)
        p.set_data(Tensor(v.astype(np.float32), p.dtype))
    return net


def write_tiny_glide_config(folder: Path, **sampling) -> Path:
    """A GLIDE inference config with the GLIDE_TINY shapes (base 16 px, SR 32 px, SRGAN x4)."""
    import yaml

    from mind_diffusion.glide.config import GLIDE_TINY

    cfg = {"model": {"family": "glide-tiny", "base": GLIDE_TINY["base"], "sr": GLIDE_TINY["sr"],
                     "srgan": GLIDE_TINY["srgan"]},
           "checkpoint": {"ckpt_path": str(folder)},
           "sampling": {"denoise_steps": 3, "pics_generated": 2, "seed": 0, **sampling}}
    path = Path(folder) / "glide-tiny.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


def make_tiny_glide_dir(folder: Path, seed: int = 0, std: float = 0.05) -> Path:
    """glide-tiny.yaml + glide_gen.ckpt / glide_super_res.ckpt / srgan.ckpt (random weights,
    official layout) + cog-pretrain.model (a tiny SentencePiece model) in ``folder``."""
    from mind_diffusion.glide.checkpoint import save_glide_checkpoint
    from mind_diffusion.glide.config import GLIDE_TINY
    from mind_diffusion.glide.model import build_glide_base, build_glide_sr, build_srgan

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_tiny_glide_config(folder)
    train_tiny_sp(folder, "cog-pretrain.model")
    for i, (build, kind, name) in enumerate(((build_glide_base, "base", "glide_gen.ckpt"),
                                             (build_glide_sr, "sr", "glide_super_res.ckpt"),
                                             (build_srgan, "srgan", "srgan.ckpt"))):
        net = randomize(build(GLIDE_TINY[kind]), seed + i, std)
        save_glide_checkpoint(net, folder / name, kind)
    return folder


# ------------------------------------------------------------------------------------- training
TINY_TRAIN_BASE = {"image_size": 16, "model_channels": 32, "num_res_blocks": 1, "channel_mult": [1, 2],
                   "attention_resolutions": [2], "num_head_channels": 16, "dropout": 0.0, "text_ctx": 16,
                   "xf_width": 32, "xf_layers": 2, "xf_heads": 2}
TINY_TRAIN_SR = {"image_size": 32, "model_channels": 32, "num_res_blocks": 1, "channel_mult": [1, 1, 2],
                 "attention_resolutions": [4], "num_head_channels": 32, "dropout": 0.0, "text_ctx": 16,
                 "xf_width": 32, "xf_layers": 2, "xf_heads": 4}


def train_shapes_sp(folder: Path, vocab_size: int = 100) -> Path:
    """A small unigram SentencePiece model (<= ``vocab_size`` pieces; the tokenizer adds the end
    token) trained on 300 shapes-world captions, in about a second."""
    import sentencepiece as spm

    from mind_diffusion.shapes.world import ShapesWorld

    world = ShapesWorld(seed=3)
    captions = [world.sample_scene(i)[1] for i in range(300)]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(captions), model_writer=buf, vocab_size=vocab_size,
                                   model_type="unigram", character_coverage=1.0, bos_id=-1, eos_id=-1,
                                   unk_id=0, hard_vocab_limit=False, minloglevel=2)
    path = Path(folder) / "shapes-sp.model"
    path.write_bytes(buf.getvalue())
    return path


def shapes_glide_data(folder: Path, n: int) -> Path:
    """A shapes-world export (data.csv + images/, 32 px) and the same pairs in the original's
    list format: list.txt -> caps.txt ('<image>\\t<caption>') with images/ as the image root."""
    from mind_diffusion.shapes.world import export_csv

    folder = Path(folder)
    csv = export_csv(folder, n, image_size=32, progress=False)
    rows = [r.split(",", 1) for r in csv.read_text(encoding="utf-8").splitlines()[1:]]
    (folder / "caps.txt").write_text("".join(f"{Path(p).name}\t{c}\n" for p, c in rows), encoding="utf-8")
    (folder / "list.txt").write_text("# the original's image_caption_path_file\ncaps.txt images\n", encoding="utf-8")
    return folder


def tiny_glide_train_config(folder: Path, sp: Path, data: Path, stage: str = "base", n_vocab: int = 101,
                            **train) -> Path:
    """A tiny GLIDE training config (the trainer's schema) written to folder/tiny-<stage>.yaml."""
    import yaml

    net = dict(TINY_TRAIN_BASE if stage == "base" else TINY_TRAIN_SR, n_vocab=n_vocab)
    t = {"steps": 4, "batch_size": 2, "loss_scale": "none", "log_every": 1, "ckpt_every": 2,
         "output_dir": str(Path(folder) / "run"), **train}
    cfg = {"model": {"stage": stage, "net": net}, "tokenizer": {"sp_model": str(sp)},
           "data": {"kind": "captions", "path": str(data), "image_caption_path_file": "list.txt",
                    "low_res_size": 16},
           "train": t, "init": {"checkpoint": None}}
    path = Path(folder) / f"tiny-{stage}.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


BUILTIN_REAL = Path(__file__).resolve().parents[1] / "models" / "glide_shapes"
#: tiny networks with the built-in's text side (the world's 129 ids, 32 tokens): base 16 px,
#: SR 16 -> 32 px, SRGAN x4
BUILTIN_TINY = {
    "base": {"image_size": 16, "model_channels": 16, "num_res_blocks": 1, "channel_mult": [1, 2],
             "attention_resolutions": [2], "num_head_channels": 16, "num_groups": 8, "dropout": 0.0,
             "text_ctx": 32, "xf_width": 32, "xf_layers": 1, "xf_heads": 2, "n_vocab": 129},
    "sr": {"image_size": 32, "model_channels": 16, "num_res_blocks": 1, "channel_mult": [1, 2],
           "attention_resolutions": [2], "num_head_channels": 16, "num_groups": 8, "dropout": 0.0,
           "text_ctx": 32, "xf_width": 32, "xf_layers": 1, "xf_heads": 2, "n_vocab": 129},
    "srgan": {"upscale_factor": 4, "num_blocks": 1, "channels": 8},
}


def make_builtin_glide_dir(folder: Path, tiny: bool = True, stages=(64, 256, 1024), seed: int = 0,
                           std: float = 0.05, **sampling) -> Path:
    """A built-in GLIDE folder as models/glide_shapes is shipped: its config.yaml (the shipped
    one; ``tiny``: with the :data:`BUILTIN_TINY` networks; ``sampling``: keys of its sampling
    section replaced), the real shapes-sp.model and random checkpoints of ``stages`` in the
    released layout (save_glide_checkpoint)."""
    import shutil

    import yaml

    from mind_diffusion.glide.checkpoint import save_glide_checkpoint
    from mind_diffusion.glide.config import glide_config_defaults
    from mind_diffusion.config import load_config, to_plain
    from mind_diffusion.glide.model import build_glide_base, build_glide_sr, build_srgan

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load((BUILTIN_REAL / "config.yaml").read_text(encoding="utf-8"))
    if tiny:
        raw["model"].update(BUILTIN_TINY)
        if (raw["model"].get("base_expert") or {}).get("attention_resolutions"):  # the expert adds a level here too
            levels = sorted({1, *BUILTIN_TINY["base"]["attention_resolutions"]})
            raw["model"]["base_expert"] = {"attention_resolutions": levels}
    raw["sampling"].update(sampling)
    (folder / "config.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    shutil.copy(BUILTIN_REAL / "shapes-sp.model", folder / "shapes-sp.model")
    cfg = load_config(folder / "config.yaml", (), glide_config_defaults())
    specs = {64: (build_glide_base, "base", "gen_ckpt"), 256: (build_glide_sr, "sr", "super_ckpt"),
             1024: (build_srgan, "srgan", "srgan_ckpt")}
    for stage in stages:
        build, kind, key = specs[stage]
        net = randomize(build(to_plain(cfg.model[kind])), seed + stage, std)
        save_glide_checkpoint(net, folder / str(cfg.checkpoint[key]), kind)
        if kind == "base" and cfg.checkpoint.get("gen_expert_ckpt"):
            # the low-noise expert: its output blocks and the attention blocks its network adds
            from mind_diffusion.checkpoint.io import save_atomic
            from mind_diffusion.glide.checkpoint import glide_state, grown_attention_names, strip_unet_prefix
            from mind_diffusion.glide.pipeline import expert_net_config

            ex = randomize(build_glide_base(expert_net_config(cfg)), seed + stage + 1, std)
            _, added = grown_attention_names([p.name for p in net.get_parameters()],
                                             [p.name for p in ex.get_parameters()])
            expert = {k: v for k, v in glide_state(ex, "base").items()
                      if ".output_blocks." in k or strip_unet_prefix(k) in added}
            save_atomic(expert, folder / str(cfg.checkpoint.gen_expert_ckpt))
    return folder
