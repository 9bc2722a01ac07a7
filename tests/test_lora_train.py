"""LoRA training through the shared trainer (model.unet.enable_lora): only the LoRA weights train,
the exports are LoRA-only files with the base checkpoint's sha256, training checkpoints leave the
frozen base out, a resumed run ends bit-identical; DreamBooth + LoRA; the shell launchers'
argument errors."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MIND_DIFFUSION_SHARED", ROOT.parent / "shared"))
TINY_CFG = ROOT / "configs" / "ldm" / "tiny-csv.yaml"


def _launcher(name, *args, env=None):
    full = dict(os.environ, PYTHON=sys.executable, **(env or {}))
    return subprocess.run(["bash", str(ROOT / "scripts" / name), *args], cwd=ROOT, env=full, capture_output=True,
                          text=True, timeout=120)


def test_launchers_refuse_bad_arguments(tmp_path):
    r = _launcher("run_train_parallel_lora.sh")
    assert r.returncode == 2 and "usage:" in r.stderr
    r = _launcher("run_train_lora.sh", str(tmp_path / "none.yaml"))
    assert r.returncode == 2 and "config file not found" in r.stderr
    r = _launcher("run_train_parallel_lora.sh", "x2")
    assert r.returncode == 2 and "must be an integer" in r.stderr
    r = _launcher("run_db_train.sh", env={"TRAIN_DATA_PATH": str(tmp_path / "none"), "OUTPUT_PATH": str(tmp_path)})
    assert r.returncode == 2 and "instance image folder not found" in r.stderr
    assert not any(tmp_path.iterdir())


def _rt():
    from mind_diffusion.runtime import Precision, Runtime

    return Runtime("CPU", "graph", 0, Precision())


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    if not (SHARED / "reference" / "vocab_zh.txt").is_file():
        pytest.skip("reference vocabulary not found")
    from ldm_tiny import make_tiny_model_dir
    from test_ldm_training import _write_images

    root = tmp_path_factory.mktemp("lora_base")
    _, ckpt = make_tiny_model_dir(root / "base", SHARED)
    return {"ckpt": ckpt, "vocab": root / "base" / "vocab_zh.txt", "csv": _write_images(root / "pairs", 4)}


def _lora_cfg(base, out, *extra):
    from mind_diffusion.config import load_config
    from mind_diffusion.ldm.config import ldm_train_config_defaults

    return load_config(TINY_CFG, [f"data.path={base['csv']}", f"init.vocab={base['vocab']}",
                                  f"init.checkpoint={base['ckpt']}", f"train.output_dir={out}",
                                  "model.unet.enable_lora=true", "model.unet.lora_rank=2", "model.unet.lora_alpha=4",
                                  "data.caption_dropout=0.0", "train.steps=6", "train.ckpt_every=3",
                                  "train.log_every=1", "train.start_learning_rate=1e-2", "train.warmup_steps=1",
                                  "train.ema_decay=0.5", "train.ema_start=0", "train.loss_scale=dynamic",
                                  "train.init_loss_scale=1024.0", *extra], ldm_train_config_defaults())


@pytest.mark.slow
def test_lora_trains_only_lora_exports_small_files_and_resumes_exactly(tiny_base, tmp_path):
    import mindspore as ms

    from mind_diffusion.checkpoint.io import file_sha256, read_checkpoint
    from mind_diffusion.ldm.lora import LORA_META_KEY
    from mind_diffusion.ldm.training import build_ldm_trainer

    ms.set_context(mode=ms.GRAPH_MODE)
    trainer, make = build_ldm_trainer(_lora_cfg(tiny_base, tmp_path / "a"), _rt(), progress=False)
    opt_names = {p.name for p in trainer.train_step.weights}
    assert opt_names and all(".tk_delta_lora_" in n for n in opt_names)
    trainer.fit(make)
    base = read_checkpoint(tiny_base["ckpt"])
    after = {p.name: p.asnumpy() for p in trainer.model.get_parameters()}
    for name, v in base.items():  # the base stays exactly as loaded
        np.testing.assert_array_equal(after[name], v, err_msg=name)
    assert max(np.abs(after[n]).max() for n in after if n.endswith("tk_delta_lora_b")) > 0
    out = tmp_path / "a"
    assert not (out / "model.ckpt").exists()
    for name in ("lora.ckpt", "lora_ema.ckpt"):
        state = read_checkpoint(out / name)
        meta = str(state.pop(LORA_META_KEY))
        assert set(state) == {n for n in after if ".tk_delta_lora_" in n}, name
        assert file_sha256(tiny_base["ckpt"], 64) in meta and '"rank": 2' in meta
    lora = read_checkpoint(out / "lora.ckpt")
    for n, v in lora.items():
        if n != LORA_META_KEY:
            np.testing.assert_array_equal(v, after[n])
    ckpt6 = read_checkpoint(out / "checkpoints" / "step_0000006.ckpt")
    assert not any(n in ckpt6 for n in base), "training checkpoints leave the frozen base out"
    assert (out / "checkpoints" / "step_0000006.ckpt").stat().st_size < 0.2 * Path(tiny_base["ckpt"]).stat().st_size
    # resumed at step 3 (base from init.checkpoint again): the same step-6 state
    trainer2, make2 = build_ldm_trainer(_lora_cfg(tiny_base, tmp_path / "b"), _rt(),
                                        resume=str(out / "checkpoints" / "step_0000003.ckpt"), progress=False)
    assert trainer2.step == 3
    trainer2.fit(make2)
    again = read_checkpoint(tmp_path / "b" / "checkpoints" / "step_0000006.ckpt")
    assert set(again) == set(ckpt6)
    for k in ckpt6:
        np.testing.assert_allclose(again[k], ckpt6[k], rtol=0, atol=1e-6, err_msg=k)
    # the export applies to the base model at inference (model.yaml describes the base)
    from mind_diffusion.ldm.pipeline import LDMPipeline

    pipe = LDMPipeline.from_pretrained(out / "model.yaml", tiny_base["ckpt"], vocab=tiny_base["vocab"])
    loaded = pipe.load_lora(out / "lora.ckpt")
    assert not loaded.notes  # made for this base


@pytest.mark.slow
def test_dreambooth_with_lora(tiny_base, tmp_path):
    import mindspore as ms
    from test_dreambooth import _instances

    from mind_diffusion.checkpoint.io import read_checkpoint
    from mind_diffusion.ldm.dreambooth_training import build_dreambooth_trainer, load_dreambooth_config

    ms.set_context(mode=ms.GRAPH_MODE)
    inst = _instances(tmp_path / "inst", token="sks", n=3, captions=False)
    cls = tmp_path / "cls"
    _instances(cls, token="x", n=2, captions=False)  # given class images: nothing generated
    cfg = load_dreambooth_config(TINY_CFG, {"train_data_path": str(inst), "reg_data_path": str(cls), "class_word": "猫",
                                            "token": "sks", "output_path": str(tmp_path / "out"), "num_class_images": 2,
                                            "enable_lora": True, "lora_rank": 2},
                                 ["train.steps=2", "train.ckpt_every=1", "train.batch_size=2",
                                  f"init.checkpoint={tiny_base['ckpt']}", f"init.vocab={tiny_base['vocab']}"])
    trainer, make = build_dreambooth_trainer(cfg, _rt(), progress=False)
    assert all(".tk_delta_lora_" in p.name for p in trainer.train_step.weights)
    trainer.fit(make)
    state = read_checkpoint(tmp_path / "out" / "lora.ckpt")
    assert state and all(".tk_delta_lora_" in n or n.startswith("meta.") for n in state)


@pytest.mark.slow
def test_dreambooth_lora_trains_the_identifiers_embedding_rows(tiny_base, tmp_path):
    """dreambooth.train_token_rows: the identifier's rows train beside the LoRA (and nothing else of the
    base), lora.ckpt carries them with their ids, and the pipeline applies them."""
    import json

    import mindspore as ms
    from test_dreambooth import _instances

    from mind_diffusion.checkpoint.io import read_checkpoint
    from mind_diffusion.ldm.dreambooth_training import build_dreambooth_trainer, load_dreambooth_config, token_ids
    from mind_diffusion.ldm.lora import LORA_META_KEY
    from mind_diffusion.ldm.pipeline import LDMPipeline

    ms.set_context(mode=ms.GRAPH_MODE)
    inst = _instances(tmp_path / "inst", token="sks", n=3, captions=False)
    cfg = load_dreambooth_config(TINY_CFG, {"train_data_path": str(inst), "class_word": "猫", "token": "sks",
                                            "output_path": str(tmp_path / "out"), "enable_lora": True, "lora_rank": 2},
                                 ["train.steps=3", "train.ckpt_every=3", "train.batch_size=2", "dreambooth.class_data=null",
                                  "train.train_text_encoder=true", "dreambooth.train_token_rows=true",
                                  "model.text_encoder.enable_lora=true", "train.start_learning_rate=1e-2",
                                  f"init.checkpoint={tiny_base['ckpt']}", f"init.vocab={tiny_base['vocab']}"])
    trainer, make = build_dreambooth_trainer(cfg, _rt(), progress=False)
    names = {p.name for p in trainer.train_step.weights}
    assert "cond_stage_model.transformer.token_rows" in names
    assert all(".tk_delta_lora_" in n for n in names - {"cond_stage_model.transformer.token_rows"})
    trainer.fit(make)
    state = read_checkpoint(tmp_path / "out" / "lora.ckpt")
    meta = json.loads(str(state.pop(LORA_META_KEY)))
    rows = state["cond_stage_model.transformer.token_rows"]
    pipe = LDMPipeline.from_pretrained(tmp_path / "out" / "model.yaml", tiny_base["ckpt"], vocab=tiny_base["vocab"])
    ids = token_ids(pipe.tokenizer, "sks")
    assert meta["token_rows"] == {"name": "cond_stage_model.transformer.token_rows", "ids": ids, "token": "sks"}
    assert rows.shape[0] == len(ids) and (np.abs(rows).max(axis=1) > 0).all()   # every row moved
    assert "cond_stage_model.transformer.token_rows" in read_checkpoint(tmp_path / "out" / "checkpoints" /
                                                                       "step_0000003.ckpt")   # resumable
    table0 = pipe.model.text_encoder.transformer.embedding_table.asnumpy().copy()
    pipe.load_lora(tmp_path / "out" / "lora.ckpt")
    table = pipe.model.text_encoder.transformer.embedding_table.asnumpy()
    np.testing.assert_allclose(table[ids] - table0[ids], rows, atol=1e-6)
