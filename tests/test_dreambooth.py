"""DreamBooth (mind_diffusion/ldm/dreambooth_training.py, scripts/run_db_train.py): bad input is one line and
writes nothing, the original's flags and JSON config map onto the config, the batch stream is a
pure function of the step (and shards over workers), the loss is L(instance) + w * L(class), and
(slow) a few steps on the tiny config generate and cache class images and resume exactly."""
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
from cli_helpers import check_one_line_error  # noqa: E402

from mind_diffusion.ldm.dreambooth_training import (DreamBoothBatches, FolderImageText, check_identifier_token,  # noqa: E402
                                           load_dreambooth_config, read_image_folder_captions)
from mind_diffusion.train.data import DataError  # noqa: E402

SHARED = Path(os.environ.get("MIND_DIFFUSION_SHARED", ROOT.parent / "shared"))
SHAPES = ROOT / "models" / "shapes_zh"
SHAPES_DB = ROOT / "configs" / "shapes" / "dreambooth.yaml"
TINY_CFG = ROOT / "configs" / "ldm" / "tiny-csv.yaml"


def _script():
    spec = importlib.util.spec_from_file_location("run_db_train_under_test", ROOT / "scripts" / "run_db_train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _instances(folder: Path, token="sks", n=3, captions=True):
    from mind_diffusion.shapes.personalize import write_instances

    write_instances(folder, token=token)
    for k in range(n, 5):  # cross_<k>.png / .txt / .mask.png
        for p in folder.glob(f"cross_{k}.*"):
            p.unlink()
    if not captions:
        for p in folder.glob("*.txt"):
            p.unlink()
    return folder


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    run_db_train = _script()
    good = _instances(tmp_path / "inst")
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt = _instances(tmp_path / "corrupt")
    (corrupt / "cross_1.png").write_bytes(b"not a png at all")
    nomask = _instances(tmp_path / "nomask")
    (nomask / "cross_1.mask.png").unlink()
    out = tmp_path / "out"
    base = ["--pretrained_model_path", str(SHAPES), "--train_config", str(SHAPES_DB), "--output_path", str(out),
            "--reg_data_path", str(tmp_path / "cls"), "--class_prompts_file", str(tmp_path / "p.txt"),
            "--device_target", "CPU"]
    (tmp_path / "p.txt").write_text("一个红色的圆形在左边\n", encoding="utf-8")
    cases = [
        (["--train_data_path", str(empty), "--token", "sks"], ("holds no images", "3-5 pictures")),
        (["--train_data_path", str(tmp_path / "nowhere"), "--token", "sks"], ("instance folder not found",)),
        (["--train_data_path", str(corrupt), "--token", "sks"], ("cannot be read", "cross_1.png")),
        (["--train_data_path", str(good), "--token", "α"], ("[UNK]", "rare token that the vocabulary has")),
        (["--train_data_path", str(good), "--token", "色"], ("training captions", "rare token that the vocabulary has")),
        (["--train_data_path", str(good), "--token", "zq"], ("does not contain the identifier token",)),
        (["--train_data_path", str(good), "--token", "sks", "--train_config", str(tmp_path / "no.yaml")],
         ("--train_config not found",)),
        (["--train_data_path", str(good), "--token", "sks", "--enable_lora", "True", "--lora_rank", "0"],
         ("rank must be a positive integer",)),
        (["--train_data_path", str(good), "--token", "sks", "--enable_lora", "True", "--lora_rank", "-2"],
         ("rank must be a positive integer",)),
        (["--train_data_path", str(good), "--token", "sks", "dreambooth.subject_weight=-1"],
         ("dreambooth.subject_weight must be", "0 = the plain loss")),
        (["--train_data_path", str(good), "--token", "sks", "dreambooth.train_token_rows=true",
          "model.unet.enable_lora=false"], ("train_token_rows trains the identifier's embedding rows beside a LoRA",)),
        (["--train_data_path", str(good), "--token", "sks", "dreambooth.token_init=正方形"],
         ("dreambooth.token_init='正方形'", "set dreambooth.train_token_rows=true")),
        (["--train_data_path", str(good), "--token", "sks", "--enable_lora", "True", "train.train_text_encoder=true",
          "dreambooth.train_token_rows=true", "dreambooth.token_init=猫咪狗"], ("[UNK]", "token_init='猫咪狗'")),
        (["--train_data_path", str(good), "--token", "sks", "--enable_lora", "True", "train.train_text_encoder=true",
          "dreambooth.train_token_rows=true", "dreambooth.token_init=圆形"], ("tokenizes to 2 ids", "to 3")),
        (["--train_data_path", str(good), "--token", "sks", "dreambooth.instance_t_min=1000"],
         ("dreambooth.instance_t_min must be", "0 = every step")),
        (["--train_data_path", str(good), "--token", "sks", "dreambooth.instance_t_min=400",
          "dreambooth.instance_t_max=300"], ("dreambooth.instance_t_max must be", "above dreambooth.instance_t_min")),
        (["--train_data_path", str(nomask), "--token", "sks", "dreambooth.subject_weight=5"],
         ("cross_1.png has none: put cross_1.mask.png",)),
        (["--train_data_path", str(good), "--token", "sks", "dreambooth.pivot_steps=10"],
         ("dreambooth.pivot_steps=10", "set dreambooth.train_token_rows=true")),
        (["--train_data_path", str(good), "--token", "sks", "dreambooth.pivot_learning_rate=0"],
         ("dreambooth.pivot_learning_rate > 0",)),
        (["--train_data_path", str(good), "--token", "sks", "--enable_lora", "True", "train.train_text_encoder=true",
          "dreambooth.train_token_rows=true", "train.steps=5", "dreambooth.pivot_steps=5"],
         ("dreambooth.pivot_steps=5 is not below the 5 training steps", "lower it")),
    ]
    for extra, needles in cases:
        rc = run_db_train.main(base + extra)
        check_one_line_error(rc, capsys.readouterr().err, *needles)
        assert not out.exists() and not (tmp_path / "cls").exists(), extra


def test_instance_captions_and_token_checks(tmp_path):
    from mind_diffusion.text.wordpiece import WordPieceTokenizer

    folder = _instances(tmp_path / "inst", n=2)
    pairs = read_image_folder_captions(folder, "unused", "instance")
    assert [c for _, c in pairs] == ["一个红色的sks在中间", "左边有一个蓝色的sks"]
    bare = _instances(tmp_path / "bare", n=2, captions=False)
    assert [c for _, c in read_image_folder_captions(bare, "sks猫", "instance")] == ["sks猫", "sks猫"]
    tok = WordPieceTokenizer(SHAPES / "vocab.txt")
    assert check_identifier_token(tok, "sks", ["一个红色的圆形在左边"] * 50) == [tok.vocab["s"], tok.vocab["##k"],
                                                                               tok.vocab["##s"]]
    with pytest.raises(DataError, match="occurs in 100%"):
        check_identifier_token(tok, "圆形", ["一个红色的圆形在左边"] * 5)
    with pytest.raises(DataError, match="empty"):
        check_identifier_token(tok, " ", [])
    data = FolderImageText(pairs, 64)
    x = data.image(0)
    assert x.shape == (3, 64, 64) and x.dtype == np.float32 and -1 <= x.min() < x.max() <= 1


def test_original_flags_and_json_config(tmp_path):
    cfg_json = tmp_path / "train_db_config.json"
    cfg_json.write_text(json.dumps({
        "model_config": "configs/v1-train-db-chinese.yaml", "pretrained_model_path": "models/",
        "pretrained_model_file": "wukong-huahua-ms.ckpt", "train_data_path": "dataset/train_cat",
        "reg_data_path": "dataset/reg_cat", "train_data_repeats": 100, "class_word": "猫", "token": "α",
        "train_batch_size": 1, "epochs": 5, "betas": [0.9, 0.98], "dropout": 0.1, "weight_decay": 0.01,
        "warmup_steps": 100, "seed": 3407, "image_size": 512, "start_learning_rate": 1e-6,
        "end_learning_rate": 1e-7, "decay_steps": 0, "save_checkpoint_steps": 1000}), encoding="utf-8")
    cfg = load_dreambooth_config(cfg_json, {"output_path": str(tmp_path / "o")})
    assert cfg.dreambooth.instance_data == "dataset/train_cat" and cfg.dreambooth.class_data == "dataset/reg_cat"
    assert cfg.dreambooth.token == "α" and cfg.dreambooth.class_word == "猫"
    assert cfg.train.batch_size == 1 and cfg.train.epochs == 5 and cfg.train.ckpt_every == 1000
    assert cfg.train.unet_dropout == 0.1 and cfg.train.weight_decay == 1e-6  # the original ignores the JSON's
    assert cfg.init.checkpoint == str(Path("models") / "wukong-huahua-ms.ckpt")
    assert cfg.train.output_dir == str(tmp_path / "o")
    # flags win over the file; a model folder brings its own model / tokenizer / sampling
    cfg = load_dreambooth_config(SHAPES_DB, {"token": "xq", "class_word": "形", "train_data_path": "a",
                                             "reg_data_path": "b", "prior_loss_weight": 0.0},
                                 ["train.steps=7"], str(SHAPES))
    assert (cfg.dreambooth.token, cfg.dreambooth.class_word, cfg.dreambooth.instance_data,
            cfg.dreambooth.class_data, cfg.dreambooth.prior_loss_weight) == ("xq", "形", "a", "b", 0.0)
    assert cfg.train.steps == 7 and cfg.model.family == "shapes-zh" and cfg.model.text_encoder.vocab_size == 154
    assert cfg.init.checkpoint == str(SHAPES / "model.ckpt") and cfg.init.vocab == str(SHAPES / "vocab.txt")


class _Tok:
    def __call__(self, texts):
        return np.asarray([[len(t), sum(map(ord, t)) % 97] + [0] * 75 for t in texts], np.int64)


class _Data:
    def __init__(self, n, tag):
        self.texts = [f"{tag}{i}" for i in range(n)]

    def __len__(self):
        return len(self.texts)

    def image(self, i, crop=None, flip=False):
        return np.full((3, 8, 8), float(i), np.float32)


def test_batches_are_a_function_of_the_step_and_shard_over_workers():
    kw = dict(tokenizer=_Tok(), num_timesteps=1000, latent_shape=(4, 2, 2), seed=3, caption_dropout=0.3)
    one = DreamBoothBatches(_Data(5, "i"), batch_size=4, klass=_Data(9, "c"), **kw)
    again = DreamBoothBatches(_Data(5, "i"), batch_size=4, klass=_Data(9, "c"), **kw)
    assert one.column_names == [f"{p}_{n}" for p in ("instance", "class") for n in ("x", "ids", "t", "noise",
                                                                                     "posterior_noise")]
    for step in (7, 0, 7):
        a, b = one[step], again[step]
        assert len(a) == 10 and all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not np.array_equal(one[1][2], one[2][2])
    ranks = [DreamBoothBatches(_Data(5, "i"), batch_size=2, klass=_Data(9, "c"), rank=r, group_size=2, **kw)
             for r in (0, 1)]
    for step in (0, 11):
        full = one[step]
        parts = [r[step] for r in ranks]
        for col in range(10):
            np.testing.assert_array_equal(np.concatenate([p[col] for p in parts]), full[col])
    lone = DreamBoothBatches(_Data(5, "i"), batch_size=4, **kw)
    assert len(lone[0]) == 5 and all(np.array_equal(u, v) for u, v in zip(lone[4], one[4][:5]))
    # dreambooth.instance_t_min: instance rows draw t in [t_min, T), class rows as before, the rest unchanged
    noisy = DreamBoothBatches(_Data(5, "i"), batch_size=4, klass=_Data(9, "c"), instance_t_min=600, **kw)
    ts = np.concatenate([noisy[s][2] for s in range(200)])
    assert ts.min() >= 600 and ts.max() <= 999 and ts.min() < 610
    for step in (0, 7):
        a, b = noisy[step], one[step]
        assert all(np.array_equal(a[c], b[c]) for c in (0, 1, 3, 4, 5, 6, 7, 8, 9))
        assert not np.array_equal(a[2], b[2])
    assert np.concatenate([noisy[s][7] for s in range(200)]).min() < 100   # class rows: every t
    # dreambooth.instance_t_max: and below t_max; the other columns are instance_t_min's run's
    window = DreamBoothBatches(_Data(5, "i"), batch_size=4, klass=_Data(9, "c"), instance_t_min=600,
                               instance_t_max=700, **kw)
    tw = np.concatenate([window[s][2] for s in range(200)])
    assert tw.min() >= 600 and tw.max() <= 699 and tw.min() < 605 and tw.max() > 694
    for step in (0, 7):
        a, b = window[step], noisy[step]
        assert all(np.array_equal(a[c], b[c]) for c in (0, 1, 3, 4, 5, 6, 7, 8, 9))


def _tiny_loss():
    """(ldm, LatentDiffusionLoss on cached latents, alphas_cumprod) of the tiny config, seed 0."""
    import mindspore as ms

    from mind_diffusion.config import load_config
    from mind_diffusion.ldm.config import ldm_train_config_defaults
    from mind_diffusion.ldm.model import build_ldm
    from mind_diffusion.ldm.training import LatentDiffusionLoss

    cfg = load_config(TINY_CFG, [], ldm_train_config_defaults())
    ms.set_seed(0)
    ldm = build_ldm(cfg.model)
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    return ldm, LatentDiffusionLoss(ldm, abar, cached=True), abar


def test_loss_is_instance_plus_weighted_prior():
    import mindspore as ms
    from mindspore import Tensor

    from mind_diffusion.ldm.dreambooth_training import DreamBoothLoss

    ms.set_context(mode=ms.PYNATIVE_MODE)
    _, base, _ = _tiny_loss()
    rng = np.random.default_rng(0)

    def part():
        return [Tensor(rng.standard_normal((2, 4, 4, 4)).astype(np.float32)),
                Tensor(rng.standard_normal((2, 4, 4, 4)).astype(np.float32) - 2),
                Tensor(rng.integers(1, 100, (2, 77)).astype(np.int32)),
                Tensor(rng.integers(0, 1000, 2).astype(np.int32)),
                Tensor(rng.standard_normal((2, 4, 4, 4)).astype(np.float32)),
                Tensor(rng.standard_normal((2, 4, 4, 4)).astype(np.float32))]

    inst, cls = part(), part()
    li, lc = float(base(*inst).asnumpy()), float(base(*cls).asnumpy())
    got = float(DreamBoothLoss(base, 0.5)(*inst, *cls).asnumpy())
    assert got == pytest.approx(li + 0.5 * lc, rel=1e-6) and lc > 0
    assert float(DreamBoothLoss(base, 0.5, with_prior=False)(*inst).asnumpy()) == pytest.approx(li, rel=1e-6)


def test_subject_masks_sidecar_alpha_and_their_errors(tmp_path):
    """Masks: ``<stem>.mask.png`` beside the image, else its alpha channel; cropped as the image is,
    pooled per latent cell into ``1 + F * m``; a mask file is never an instance; an image without
    a mask, a mask of another size or a corrupt mask is one line naming the file."""
    from PIL import Image

    from mind_diffusion.ldm.dreambooth_training import load_subject_mask, subject_loss_weights

    folder = tmp_path / "inst"
    folder.mkdir()
    mask = np.zeros((48, 64), np.uint8)   # landscape: resized to 64 on the short side, then center-cropped
    mask[:24, 16:32] = 255
    rgb = np.repeat(mask[:, :, None], 3, axis=2)   # the subject drawn white where its mask is
    Image.fromarray(rgb).save(folder / "a.png")
    Image.fromarray(mask).save(folder / "a.mask.png")
    rgba = np.concatenate([np.full((48, 64, 3), 128, np.uint8), np.zeros((48, 64, 1), np.uint8)], axis=2)
    rgba[24:, 32:48, 3] = 255
    Image.fromarray(rgba, "RGBA").save(folder / "b.png")
    pairs = read_image_folder_captions(folder, "sks", "instance")
    assert [p.name for p, _ in pairs] == ["a.png", "b.png"]   # a.mask.png is not an instance
    np.testing.assert_array_equal(load_subject_mask(folder / "a.png"), mask)
    np.testing.assert_array_equal(load_subject_mask(folder / "b.png"), rgba[:, :, 3])

    data = FolderImageText(pairs, 64)
    ma, mb = data.mask(0), data.mask(1)
    np.testing.assert_allclose(ma, (data.image(0)[0] + 1) / 2, atol=1e-6)   # cropped as its image is
    # 48x64 -> 64x85, crop columns [10, 74): a's columns 16..32 -> 11..32, rows 0..24 -> 0..32
    assert ma[:31, 12:32].min() == 1 and ma[33:].max() == 0 and ma[:, :10].max() == 0 and ma[:, 34:].max() == 0
    assert mb[33:, 33:53].min() == 1 and mb[:31].max() == 0 and mb[:, :31].max() == 0
    w = subject_loss_weights(data, (4, 4, 4), 4.0)   # latent cells of 16x16 pixels
    assert w.shape == (2, 1, 4, 4) and w.dtype == np.float32
    for k, m in enumerate((ma, mb)):
        np.testing.assert_allclose(w[k, 0], 1 + 4 * m.reshape(4, 16, 4, 16).mean(axis=(1, 3)), rtol=1e-6)
    assert w[0, 0, 3, 0] == 1 and w[0, 0, 0, 1] == 5   # a background cell, a subject cell

    Image.fromarray(rgb).save(folder / "c.png")      # no mask at all
    with pytest.raises(DataError, match=r"c\.png has none: put c\.mask\.png"):
        load_subject_mask(folder / "c.png")
    Image.fromarray(mask[:, :32]).save(folder / "c.mask.png")
    with pytest.raises(DataError, match=r"c\.mask\.png is 32x48 but c\.png is 64x48"):
        load_subject_mask(folder / "c.png")
    (folder / "c.mask.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"cannot read the mask of instance image c\.png"):
        load_subject_mask(folder / "c.png")


def test_batches_carry_the_weight_of_the_instance_they_draw():
    kw = dict(tokenizer=_Tok(), num_timesteps=1000, latent_shape=(4, 2, 2), seed=3)
    weights = np.stack([np.full((1, 2, 2), 1.0 + i, np.float32) for i in range(5)])
    src = DreamBoothBatches(_Data(5, "i"), batch_size=4, klass=_Data(9, "c"), instance_weights=weights, **kw)
    assert src.column_names[:6] == ["instance_x", "instance_ids", "instance_t", "instance_noise",
                                    "instance_posterior_noise", "instance_weight"]
    plain = DreamBoothBatches(_Data(5, "i"), batch_size=4, klass=_Data(9, "c"), **kw)
    for step in (0, 5):
        b, p = src[step], plain[step]
        assert len(b) == 11
        np.testing.assert_array_equal(b[5][:, 0, 0, 0], b[0][:, 0, 0, 0] + 1)   # image i -> weight 1 + i
        assert all(np.array_equal(u, v) for u, v in zip(b[:5] + b[6:], p))   # the rest unchanged


@pytest.mark.parametrize("mode", ["graph", "pynative"])
def test_subject_weighted_loss_is_the_weighted_mean(mode):
    """Per sample ``sum(w * (eps - noise)^2) / (C sum(w))`` against numpy on the UNet's own eps; a flat
    weight is the plain loss; in DreamBoothLoss the weight ends the instance columns."""
    import mindspore as ms
    from mindspore import Tensor

    from mind_diffusion.ldm.dreambooth_training import DreamBoothLoss

    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    ldm, base, abar = _tiny_loss()
    rng = np.random.default_rng(1)
    mean = rng.standard_normal((2, 4, 4, 4)).astype(np.float32)
    logvar = rng.standard_normal((2, 4, 4, 4)).astype(np.float32) - 2
    ids = rng.integers(1, 100, (2, 77)).astype(np.int32)
    t = np.array([10, 700], np.int32)
    noise, post = (rng.standard_normal((2, 4, 4, 4)).astype(np.float32) for _ in range(2))
    w = (1 + 9 * (rng.random((2, 1, 4, 4)) > 0.7)).astype(np.float32)
    cols = [Tensor(a) for a in (mean, logvar, ids, t, noise, post)]
    got = float(base(*cols, Tensor(w)).asnumpy())

    ms.set_context(mode=ms.PYNATIVE_MODE)
    z = (mean + np.exp(0.5 * logvar) * post) * ldm.scale_factor
    x_t = np.sqrt(abar[t]).reshape(-1, 1, 1, 1) * z + np.sqrt(1 - abar[t]).reshape(-1, 1, 1, 1) * noise
    eps = ldm.model.diffusion_model(Tensor(x_t.astype(np.float32)), Tensor(t),
                                    ldm.cond_stage_model(Tensor(ids))).asnumpy()
    sq = (eps - noise).astype(np.float64) ** 2
    want = np.mean((w * sq).sum(axis=(1, 2, 3)) / (4 * w.sum(axis=(1, 2, 3))))
    assert got == pytest.approx(want, rel=1e-4) and want != pytest.approx(sq.mean(), rel=1e-2)
    assert float(base(*cols, Tensor(np.full_like(w, 3.0))).asnumpy()) == pytest.approx(sq.mean(), rel=1e-4)
    cls = [Tensor(a) for a in (mean[::-1].copy(), logvar, ids, t, noise[::-1].copy(), post)]
    both = float(DreamBoothLoss(base, 0.5, subject_weighted=True)(*cols, Tensor(w), *cls).asnumpy())
    assert both == pytest.approx(got + 0.5 * float(base(*cls).asnumpy()), rel=1e-5)


@pytest.mark.parametrize("mode", ["graph", "pynative"])
def test_token_rows_add_to_the_identifiers_embedding_rows(mode):
    """The text encoder with trainable identifier rows gives the context of a table whose rows carry
    them (exact), prompts without the identifier are untouched, and the gradient reaches only the
    rows of ids in the batch."""
    import mindspore as ms
    from mindspore import Tensor, nn, ops

    from mind_diffusion.ldm.text_encoder import TextConditioner

    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)

    class Net(nn.Cell):
        def __init__(self):
            super().__init__()
            self.cond_stage_model = TextConditioner(vocab_size=60, context_length=8, width=16, layers=1, heads=2)

        def construct(self, ids):
            return self.cond_stage_model(ids)

    ms.set_seed(0)
    net = Net()
    rows = net.cond_stage_model.transformer.attach_token_rows([5, 9, 40], "sks")
    delta = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    rows.set_data(Tensor(delta))
    ids = np.array([[2, 5, 9, 40, 5, 3, 0, 0], [2, 7, 8, 3, 0, 0, 0, 0]], np.int32)
    got = net(Tensor(ids)).asnumpy()
    ms.set_seed(0)
    ref = Net()
    table = ref.cond_stage_model.transformer.embedding_table
    t = table.asnumpy().copy()
    t[[5, 9, 40]] += delta
    table.set_data(Tensor(t))
    np.testing.assert_allclose(got, ref(Tensor(ids)).asnumpy(), rtol=0, atol=1e-6)
    plain = net(Tensor(ids[1:])).asnumpy()
    ms.set_seed(0)
    np.testing.assert_array_equal(plain, Net()(Tensor(ids[1:])).asnumpy())   # no identifier: unchanged
    class Total(nn.Cell):
        def __init__(self, inner):
            super().__init__(auto_prefix=False)
            self.inner = inner

        def construct(self, x):
            return self.inner(x).sum()

    grad = ops.GradOperation(get_by_list=True)(Total(net), ms.ParameterTuple([rows]))
    g = grad(Tensor(np.array([[2, 9, 3, 0, 0, 0, 0, 0]], np.int32)))[0].asnumpy()
    assert np.abs(g[1]).max() > 0 and not g[[0, 2]].any()   # only id 9 was in the batch


@pytest.mark.parametrize("mode", ["graph", "pynative"])
def test_token_init_starts_the_identifier_as_the_initializer_words(mode):
    """With ``dreambooth.token_init`` the identifier's rows start at E[init] - E[token]: a caption with the
    token gives exactly the context of the same caption with the initializer's words, before any step."""
    import mindspore as ms
    from mindspore import Tensor

    from mind_diffusion.ldm.dreambooth_training import attach_identifier_rows, initializer_ids, token_ids
    from mind_diffusion.ldm.text_encoder import TextConditioner
    from mind_diffusion.text.wordpiece import WordPieceTokenizer

    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    tok = WordPieceTokenizer(SHAPES / "vocab.txt", context_length=16)
    ms.set_seed(0)
    cond = TextConditioner(vocab_size=len(tok.vocab), context_length=16, width=32, layers=1, heads=2)
    db = load_dreambooth_config(SHAPES_DB, {"token": "sks"}, ["dreambooth.train_token_rows=true",
                                                              "dreambooth.token_init=正方形"]).dreambooth
    ids = token_ids(tok, "sks")
    init = initializer_ids(tok, db, ids)
    assert init == token_ids(tok, "正方形") and len(init) == 3
    attach_identifier_rows(cond.transformer, ids, "sks", init)

    def ctx(text):
        return cond(Tensor(np.asarray(tok.tokenize_with_info(text).ids, np.int32)[None])).asnumpy()

    np.testing.assert_allclose(ctx("一个红色的sks在中间"), ctx("一个红色的正方形在中间"), rtol=0, atol=1e-6)
    assert np.abs(ctx("一个红色的sks在中间") - ctx("一个红色的圆形在中间")).max() > 1e-2
    np.testing.assert_array_equal(cond.transformer.token_rows.asnumpy() != 0, True)


@pytest.mark.parametrize("mode", ["graph", "pynative"])
def test_pivotal_tuning_moves_the_rows_alone_then_everything(mode):
    """The optimizer of ``finish_ldm_trainer``'s pivot: for the first N updates only the named rows move,
    each by the pivot learning rate (AdamWeightDecay's first steps on a constant gradient move by lr
    exactly, up to eps), the LoRA and the text encoder's other weights not at all; from step N every
    group moves on the common schedule (the rows too, by the schedule's lr, no longer the pivot's).
    MindSpore's AdamWeightDecay has no bias correction: on a constant gradient its k-th update is
    lr * (1 - b1^k) / sqrt(1 - b2^k) in the gradient's sign, and a group held at lr 0 keeps counting k."""
    import mindspore as ms
    from mindspore import Parameter, Tensor, nn, ops
    from omegaconf import OmegaConf

    from mind_diffusion.train.optim import build_optimizer
    from mind_diffusion.train.schedules import DelayedLR, PivotLR, WarmupCosineLR

    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)

    class Net(nn.Cell):
        def __init__(self):
            super().__init__()
            self.rows = Parameter(Tensor(np.zeros((2, 3), np.float32)), name="te.token_rows")
            self.te_lora = Parameter(Tensor(np.ones((3,), np.float32)), name="te.lora_a")
            self.unet_lora = Parameter(Tensor(np.ones((4,), np.float32)), name="unet.lora_a")

        def construct(self):
            return self.rows.sum() + 2.0 * self.te_lora.sum() - self.unet_lora.sum()

    net = Net()
    tcfg = OmegaConf.create({"betas": [0.9, 0.999], "eps": 1e-12, "optim": "adamw", "weight_decay": 0.0})
    base = lambda: WarmupCosineLR(1e-3, 1e-3, 0, 100)   # noqa: E731  (constant 1e-3)
    pivot_n, pivot_lr = 3, 0.05
    opt = build_optimizer(net.trainable_params(), tcfg, DelayedLR(base(), pivot_n),
                          [({"te.token_rows"}, PivotLR(base(), pivot_n, pivot_lr)),
                           ({"te.token_rows", "te.lora_a"}, DelayedLR(base(), pivot_n))])
    grad = ops.GradOperation(get_by_list=True)(net, opt.parameters)

    def step():
        opt(grad())

    def u(k):   # the k-th update over lr on a constant gradient
        return (1 - 0.9 ** k) / np.sqrt(1 - 0.999 ** k)

    before = {p.name: p.asnumpy().copy() for p in net.trainable_params()}
    for _ in range(pivot_n):
        step()
    after = {p.name: p.asnumpy().copy() for p in net.trainable_params()}
    moved = pivot_lr * sum(u(k) for k in range(1, pivot_n + 1))
    np.testing.assert_allclose(after["te.token_rows"], before["te.token_rows"] - moved, rtol=1e-5)
    np.testing.assert_array_equal(after["te.lora_a"], before["te.lora_a"])
    np.testing.assert_array_equal(after["unet.lora_a"], before["unet.lora_a"])
    step()
    last = {p.name: p.asnumpy() for p in net.trainable_params()}
    k = pivot_n + 1
    np.testing.assert_allclose(last["te.token_rows"], after["te.token_rows"] - 1e-3 * u(k), rtol=1e-5)
    np.testing.assert_allclose(last["te.lora_a"], after["te.lora_a"] - 1e-3 * u(k), rtol=1e-5)
    np.testing.assert_allclose(last["unet.lora_a"], after["unet.lora_a"] + 1e-3 * u(k), rtol=1e-5)


@pytest.mark.slow
def test_tiny_dreambooth_generates_class_images_and_resumes_exactly(tmp_path, capsys):
    """Class images come from the base model (cached: a second run generates none), a few steps train,
    and a run resumed from its step-2 checkpoint ends bit-identical to the uninterrupted one."""
    if not (SHARED / "reference" / "vocab_zh.txt").is_file():
        pytest.skip("reference vocabulary not found")
    import mindspore as ms
    from ldm_tiny import make_tiny_model_dir

    from mind_diffusion.checkpoint.io import read_checkpoint
    from mind_diffusion.cli.dreambooth import class_image_pipeline
    from mind_diffusion.ldm.dreambooth_training import build_dreambooth_trainer
    from mind_diffusion.runtime import Precision, Runtime

    ms.set_context(mode=ms.GRAPH_MODE)
    make_tiny_model_dir(tmp_path / "base", SHARED)
    inst = _instances(tmp_path / "inst", token="sks", n=3, captions=False)

    def cfg(out, *extra):
        return load_dreambooth_config(TINY_CFG, {"train_data_path": str(inst), "reg_data_path": str(tmp_path / "cls"),
                                                 "class_word": "猫", "token": "sks", "output_path": str(out),
                                                 "num_class_images": 3},
                                      ["train.steps=4", "train.ckpt_every=2", "train.batch_size=2",
                                       "dreambooth.generation_batch=3", "sampling.num_inference_steps=2",
                                       "data.cache_latents=true", "train.log_every=1", *extra],
                                      str(tmp_path / "base"), "tiny.ckpt")

    rt = Runtime("CPU", "graph", 0, Precision())
    trainer, make = build_dreambooth_trainer(cfg(tmp_path / "a"), rt, progress=False,
                                            class_pipeline=class_image_pipeline)
    trainer.fit(make)
    assert "generated 3 class images" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "cls").iterdir()) == [f"class_{k:05d}.{e}" for k in range(3)
                                                                   for e in ("png", "txt")]
    full = read_checkpoint(tmp_path / "a" / "checkpoints" / "step_0000004.ckpt")
    ckpt2 = tmp_path / "a" / "checkpoints" / "step_0000002.ckpt"
    trainer2, make2 = build_dreambooth_trainer(cfg(tmp_path / "b"), rt, resume=str(ckpt2), progress=False,
                                              class_pipeline=class_image_pipeline)
    assert "generated" not in capsys.readouterr().out and trainer2.step == 2
    trainer2.fit(make2)
    resumed = read_checkpoint(tmp_path / "b" / "checkpoints" / "step_0000004.ckpt")
    assert set(full) == set(resumed)
    for k in full:
        np.testing.assert_allclose(resumed[k], full[k], rtol=0, atol=1e-6, err_msg=k)
    model = read_checkpoint(tmp_path / "a" / "model.ckpt")
    assert any(k.startswith("model.diffusion_model.") for k in model)


def test_training_config_lora_choice_survives_the_base_models_sections():
    """--pretrained_model_path brings the base model's model section; the training config's LoRA keys
    (the UNet's and the text encoder's) are kept over it (configs/shapes/lora.yaml trains both)."""
    from pathlib import Path

    from mind_diffusion.ldm.dreambooth_config import load_dreambooth_config

    root = Path(__file__).resolve().parents[1]
    if not (root / "models/shapes_zh/config.yaml").is_file():
        pytest.skip("models/shapes_zh is not in this checkout")
    cfg = load_dreambooth_config(root / "configs/shapes/lora.yaml", {}, [], root / "models/shapes_zh")
    model = cfg["model"] if isinstance(cfg, dict) else cfg.model
    assert model["unet"]["enable_lora"] and model["unet"]["lora_rank"] == 7
    assert model["text_encoder"]["enable_lora"] and model["text_encoder"]["lora_rank"] == 8
    assert list(model["text_encoder"]["lora_targets"]) == ["attn.attn.in_proj", "attn.attn.out_proj", "c_fc", "c_proj"]
    assert cfg.dreambooth.train_token_rows and cfg.dreambooth.instance_t_min == 400
    assert model["text_encoder"]["width"] == 128          # the rest is the base model's
    plain = load_dreambooth_config(root / "configs/shapes/dreambooth.yaml", {}, [], root / "models/shapes_zh")
    pm = plain["model"] if isinstance(plain, dict) else plain.model
    assert not pm["text_encoder"]["enable_lora"] and not pm["unet"]["enable_lora"]
