"""Config validation and runtime selection."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mind_diffusion.config import ConfigError, load_config
from mind_diffusion.ddpm.config import ddpm_config_defaults
from mind_diffusion.runtime import (RuntimeConfigError, init_runtime, normalize_device, resolve_precision)

ROOT = Path(__file__).resolve().parents[1]


def test_yaml_and_overrides_merge(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  steps: 10\n  lr: 0.001\nmodel:\n  channel_mults: [1, 2]\n")
    cfg = load_config(f, ["train.batch_size=4", "train.lr=5e-4"], ddpm_config_defaults())
    assert cfg.train.steps == 10 and cfg.train.batch_size == 4 and cfg.train.lr == 5e-4
    assert list(cfg.model.channel_mults) == [1, 2] and cfg.model.base_channels == 128  # defaults kept


def test_unknown_key_names_the_closest(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  stpes: 10\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'train.stpes'.*did you mean 'train.steps'"):
        load_config(f, [], ddpm_config_defaults())
    with pytest.raises(ConfigError, match="unknown config key 'modle'"):
        load_config(None, ["modle.base_channels=3"], ddpm_config_defaults())


def test_wrong_type_and_malformed_override(tmp_path):
    with pytest.raises(ConfigError, match="'train.lr' must be float"):
        load_config(None, ["train.lr=fast"], ddpm_config_defaults())
    with pytest.raises(ConfigError, match="'train.steps' must be int"):
        load_config(None, ["train.steps=1.5"], ddpm_config_defaults())
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        load_config(None, ["train.steps"], ddpm_config_defaults())
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, [], ddpm_config_defaults())
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", [], ddpm_config_defaults())


def test_an_int_in_the_yaml_keeps_a_float_key_open_to_any_number(tmp_path):
    """A YAML int under a float default (lora_alpha: 8, default 4.0) is read as 8.0, so a later layer
    checked against the loaded config (run_db_train.py's --lora_alpha 2.5, an override) is accepted;
    an int key still refuses a float."""
    from mind_diffusion.config import merge_overrides

    schema = {"unet": {"lora_alpha": 4.0, "lora_rank": 4}}
    f = tmp_path / "c.yaml"
    f.write_text("unet: {lora_alpha: 8, lora_rank: 8}\n")
    cfg = load_config(f, [], schema)
    assert cfg.unet.lora_alpha == 8.0 and isinstance(cfg.unet.lora_alpha, float) and cfg.unet.lora_rank == 8
    assert load_config(None, ["unet.lora_alpha=2.5"], cfg).unet.lora_alpha == 2.5
    assert merge_overrides(cfg, {"unet": {"lora_alpha": 16.5}}, "command line")["unet"]["lora_alpha"] == 16.5
    with pytest.raises(ConfigError, match="'unet.lora_rank' must be int"):
        load_config(None, ["unet.lora_rank=2.5"], cfg)


def test_shipped_configs_validate():
    for f in sorted((ROOT / "configs" / "ddpm").glob("*.yaml")):
        load_config(f, [], ddpm_config_defaults())


def test_device_names_and_precision_policy():
    assert normalize_device("auto") is None and normalize_device("gpu") == "GPU" and normalize_device("npu") == "Ascend"
    with pytest.raises(RuntimeConfigError, match="unknown device_target"):
        normalize_device("tpu")
    assert resolve_precision("CPU", "auto").compute == "float32"
    assert resolve_precision("Ascend", "auto").compute == "float16"
    assert resolve_precision("GPU", "bf16").compute == "bfloat16"
    with pytest.raises(RuntimeConfigError, match="not supported on CPU"):
        resolve_precision("CPU", "fp16")


def test_runtime_auto_picks_cpu_here_and_refuses_missing_devices(capsys):
    rt = init_runtime("auto", "pynative", seed=1)
    assert rt.device_target == "CPU" and rt.precision.compute == "float32" and not rt.distributed
    assert "device=CPU" in capsys.readouterr().out
    with pytest.raises(RuntimeConfigError, match="not available"):
        init_runtime("Ascend", "pynative")
    with pytest.raises(RuntimeConfigError, match="unknown mode"):
        init_runtime("CPU", "eager")


def test_env_defaults_respect_user_settings():
    keys = ("ONEDNN_MAX_CPU_ISA", "OMP_WAIT_POLICY", "GLOG_v")
    code = f"import os, mind_diffusion; print(*(os.environ[k] for k in {keys!r}))"
    env = {k: v for k, v in os.environ.items() if k not in keys}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True).stdout
    assert out.split() == ["AVX2", "PASSIVE", "3"]
    env.update(ONEDNN_MAX_CPU_ISA="AVX512_CORE", OMP_WAIT_POLICY="ACTIVE", GLOG_v="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True).stdout
    assert out.split() == ["AVX512_CORE", "ACTIVE", "1"]
