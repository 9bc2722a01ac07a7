"""The built-in shapes model was trained with the float64-rounded timestep frequency table (the
LDM default is now ``time_freqs: mindspore_fp32``, Wukong-Huahua's MindSpore-kernel table): its
shipped config and its training config pin ``time_freqs: float64`` so it samples exactly as it was
trained, and a model trained from configs/shapes/ldm.yaml records the key in its exported config."""
import math
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _float64_table(half):
    return np.exp(-math.log(10000.0) * np.arange(half, dtype=np.float64) / half).astype(np.float32)


def test_shipped_shapes_pipeline_uses_the_float64_table():
    from mind_diffusion.ldm.pipeline import LDMPipeline
    from mind_diffusion.nn.layers import mindspore_fp32_freqs

    model = ROOT / "models" / "shapes_zh"
    pipe = LDMPipeline.from_pretrained(model / "config.yaml", model / "model.ckpt")
    freqs = pipe.model.unet.time_proj.freqs.asnumpy()[0]
    np.testing.assert_array_equal(freqs, _float64_table(32))  # model_channels 64
    # the LDM default table differs, so a config without the key would not sample as trained
    assert not np.array_equal(freqs, mindspore_fp32_freqs(32).asnumpy())


def test_shapes_training_config_records_float64():
    from mind_diffusion.config import load_config
    from mind_diffusion.ldm.config import ldm_config_defaults
    from mind_diffusion.ldm.config import ldm_train_config_defaults
    from mind_diffusion.ldm.training import inference_config

    assert ldm_config_defaults()["model"]["unet"]["time_freqs"] == "mindspore_fp32"
    cfg = load_config(ROOT / "configs" / "shapes" / "ldm.yaml", (), ldm_train_config_defaults())
    assert cfg.model.unet.time_freqs == "float64"
    assert inference_config(cfg)["model"]["unet"]["time_freqs"] == "float64"  # written to model.yaml
    shipped = load_config(ROOT / "models" / "shapes_zh" / "config.yaml", (), ldm_config_defaults())
    assert shipped.model.unet.time_freqs == "float64"
