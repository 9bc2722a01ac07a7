"""OmegaConf YAML configs with CLI dotlist overrides and strict, readable validation.

A family declares its schema as a nested dict of defaults (e.g. ``ddpm_train_defaults()``).
``load_config(path, overrides, schema)`` merges schema <- YAML <- overrides and rejects:
- a key that the schema does not have (typo in the YAML or on the command line), naming the
  closest valid key;
- a value whose type does not match the default's type (``train.lr=abc``);
- a malformed override (``train.lr`` without ``=``) or an unreadable / invalid YAML file.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Iterable, Mapping

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A config file or override is wrong; the message says what and how to fix it."""


def _type_name(v: Any) -> str:
    return type(v).__name__


def _compatible(default: Any, value: Any) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, (list, tuple, ListConfig)):
        return isinstance(value, (list, tuple, ListConfig))
    if isinstance(default, (dict, DictConfig)):
        return isinstance(value, (dict, DictConfig))
    return True


def _check(schema: Any, value: Any, where: str, source: str):
    if isinstance(schema, (dict, DictConfig)):
        if not isinstance(value, (dict, DictConfig)):
            raise ConfigError(f"{source}: '{where}' must be a mapping, got {_type_name(value)}")
        for key, sub in value.items():
            path = f"{where}.{key}" if where else str(key)
            if key not in schema:
                close = difflib.get_close_matches(str(key), [str(k) for k in schema], n=1)
                hint = f" (did you mean '{(where + '.') if where else ''}{close[0]}'?)" if close else ""
                valid = ", ".join(sorted(str(k) for k in schema))
                raise ConfigError(f"{source}: unknown config key '{path}'{hint}; valid keys here: {valid}")
            _check(schema[key], sub, path, source)
        return
    if not _compatible(schema, value):
        raise ConfigError(
            f"{source}: '{where}' must be {_type_name(schema)} (default {schema!r}), got {value!r}"
        )


def _floats_as_schema(schema: Any, cfg: Any):
    """In place: every int of ``cfg`` whose schema default is a float becomes that float (a YAML
    ``lora_alpha: 8`` under a default of 4.0), so a later layer checked against ``cfg`` (a flag,
    an override) may give any number there, as the schema allows."""
    if not isinstance(schema, (dict, DictConfig)) or not isinstance(cfg, (dict, DictConfig)):
        return
    for key in list(cfg.keys()):
        if key not in schema:
            continue
        default, value = schema[key], cfg[key]
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            cfg[key] = float(value)
        else:
            _floats_as_schema(default, value)


def _parse_overrides(overrides: Iterable[str]) -> DictConfig:
    items = list(overrides or [])
    for item in items:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r} must look like key.sub=value (e.g. train.lr=1e-4)")
    try:
        return OmegaConf.from_dotlist(items)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot parse overrides {items}: {exc}") from None


def read_yaml(path: str | Path) -> DictConfig:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"config file not found: {p} (pass --config with a YAML file, e.g. configs/ddpm/...)")
    try:
        cfg = OmegaConf.load(p)
    except Exception as exc:  # yaml.YAMLError, UnicodeDecodeError, ...
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"config file {p} must hold a mapping at top level")
    return cfg


#: The one ``sampling:`` vocabulary of every family (the pipelines' argument names) ...
SAMPLING_KEYS = ("sampler", "num_inference_steps", "guidance_scale", "height", "width",
                 "num_images_per_prompt", "seed", "negative_prompt")
#: ... and the originals' / earlier names it still reads: Wukong-Huahua's ``steps`` / ``scale`` /
#: ``H`` / ``W``, Taichu-GLIDE's ``denoise_steps`` / ``super_res_step`` / ``pics_generated``,
#: DDPM's ``sample.num_steps`` (its ``sample:`` section is read as ``sampling:``).
LEGACY_SAMPLING_KEYS = {"steps": "num_inference_steps", "num_steps": "num_inference_steps",
                        "denoise_steps": "num_inference_steps", "scale": "guidance_scale",
                        "H": "height", "W": "width", "n_samples": "num_images_per_prompt",
                        "pics_generated": "num_images_per_prompt",
                        "super_res_step": "super_res_steps"}


def sampling_defaults(**family) -> dict:
    """A family's ``sampling:`` section: the common keys (every default given by the family)
    plus its own (e.g. GLIDE's ``super_res_steps``, LDM's ``quantize``)."""
    missing = [k for k in SAMPLING_KEYS if k not in family]
    if missing:
        raise ValueError(f"sampling defaults lack {missing}")
    return dict(family)


def _legacy_sampling(cfg: DictConfig, schema: Mapping | None) -> DictConfig:
    """Rename the older sampling keys (``LEGACY_SAMPLING_KEYS``, DDPM's ``sample:``) in a file
    or override layer to the one vocabulary, when the schema has a ``sampling:`` section."""
    if schema is None or "sampling" not in schema:
        return cfg
    plain = OmegaConf.to_container(cfg, resolve=False)
    if not isinstance(plain, dict):
        return cfg
    if isinstance(plain.get("sample"), dict) and "sample" not in schema:
        old = plain.pop("sample")
        plain["sampling"] = {**old, **(plain.get("sampling") or {})}
    sec = plain.get("sampling")
    if isinstance(sec, dict):
        for old_key, new_key in LEGACY_SAMPLING_KEYS.items():
            if old_key in sec and old_key not in schema["sampling"]:
                value = sec.pop(old_key)
                sec.setdefault(new_key, value)
    return OmegaConf.create(plain)


def load_config(
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    schema: Mapping | None = None,
) -> DictConfig:
    """schema defaults <- YAML file <- CLI overrides, validated against the schema. Older
    sampling key names are read as today's (see ``LEGACY_SAMPLING_KEYS``)."""
    base = OmegaConf.create(dict(schema) if schema is not None else {})
    layers = []
    if path is not None:
        file_cfg = _legacy_sampling(read_yaml(path), schema)
        if schema is not None:
            _check(base, file_cfg, "", f"config {path}")
        layers.append(file_cfg)
    over = _legacy_sampling(_parse_overrides(overrides), schema)
    if schema is not None:
        _check(base, over, "", "command line")
    layers.append(over)
    try:
        cfg = OmegaConf.merge(base, *layers)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot merge config: {exc}") from None
    if schema is not None:
        _floats_as_schema(schema, cfg)
    OmegaConf.set_struct(cfg, True)
    return cfg


def merge_overrides(defaults: Mapping, overrides: Mapping | None, source: str) -> dict:
    """A plain dict: ``defaults`` overridden by ``overrides`` (a dict or DictConfig, may be None),
    checked as ``load_config`` checks a file: an unknown key (with the closest valid one) or a
    value of the wrong type raises ``ConfigError`` starting with ``source``."""
    out = to_plain(defaults)
    if overrides is None:
        return out
    over = to_plain(overrides)
    _check(out, over, "", source)
    out = _deep_update(out, over)
    _floats_as_schema(defaults, out)
    return out


def _deep_update(base: dict, over: Mapping) -> dict:
    for key, value in over.items():
        if isinstance(base.get(key), dict) and isinstance(value, Mapping):
            base[key] = _deep_update(dict(base[key]), value)
        else:
            base[key] = value
    return base


def to_plain(cfg: DictConfig | Mapping) -> dict:
    """A resolved plain dict from a DictConfig (or a shallow copy of a plain mapping)."""
    if OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return dict(cfg)


def save_config(cfg: DictConfig | Mapping, path: str | Path):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(cfg) if not isinstance(cfg, DictConfig) else cfg, path)
