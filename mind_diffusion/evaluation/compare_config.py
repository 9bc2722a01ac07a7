"""The FID comparison config: its YAML schema (defaults, per-kind entries), loading with dotlist
overrides, and validation. Every key is checked; unknown keys are errors naming the closest valid
one::

    name: builtin-quick            # run name (default: the config file's stem)
    output_dir: output/fid_compare # runs go to <output_dir>/<name>/run-NNN (never overwritten)
    num_images: 200                # N generated per row (a row may set its own)
    seed: 0                        # a row may set its own
    batch_size: 50                 # generation batch
    max_reference_images: null     # cap built references (digits / shapes) for quick runs
    report_context: true           # add the report's numbers as (labelled) context
    fid: {preprocess: pt, method: sqrtm, weights: null, batch_size: 50, strict: false}
    references:                    # named reference sets, used by generators' `reference:`
      horse: {kind: folder, path: data/cifar10_horse_train}     # a folder or a .npz stats file
      d7:    {kind: digits, class_label: 7, image_size: 16}
      red:   {kind: shapes, prompt: 一个红色的圆形在左边, image_size: 64}
    generators:                    # one row each; kinds ddpm | ldm | glide
      ddpm_digits: {kind: ddpm, model: models/ddpm_digits16, class_label: 7, sampler: ddim, steps: 50,
                    reference: auto}

A row's ``sampler`` / ``steps`` / ``guidance_scale`` / ``height`` / ``width`` left at ``null``
take the model config's ``sampling:`` defaults, which the family's pipeline resolves
(``check_inputs``). ``reference: auto`` means the ground truth of a built-in demo model's own
world (see :mod:`mind_diffusion.evaluation.generators`); ``fallback: builtin`` lets a DDPM, LDM
or GLIDE row whose files are missing fall back to a built-in demo model (``models/ddpm_digits16``,
``models/shapes_zh``, ``models/glide_shapes``).
"""
from __future__ import annotations

import re
from pathlib import Path

from ..config import ConfigError, load_config, read_yaml

ROOT = Path(__file__).resolve().parents[2]
BUILTIN_DDPM = "models/ddpm_digits16"
BUILTIN_SHAPES = "models/shapes_zh"
GENERATOR_KINDS = ("ddpm", "ldm", "glide")
REFERENCE_KINDS = ("folder", "digits", "shapes")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class CompareConfigError(ConfigError):
    """A comparison config that cannot run (unknown kind, reference name, bad value)."""



# ----------------------------------------------------------------------------- config schema
def compare_defaults() -> dict:
    return {
        "name": "",
        "output_dir": "output/fid_compare",
        "num_images": 1000,
        "seed": 0,
        "batch_size": 50,
        "max_reference_images": None,
        "report_context": True,
        "fid": {"preprocess": "pt", "method": "sqrtm", "weights": None, "batch_size": 50, "strict": False},
        "references": {},
        "generators": {},
    }


def reference_schema(kind: str) -> dict:
    common = {"kind": kind, "label": ""}
    if kind == "folder":
        return {**common, "path": ""}
    if kind == "digits":
        return {**common, "class_label": 0, "image_size": 16}
    if kind == "shapes":
        return {**common, "prompt": "", "num_images": None, "seed": 0, "image_size": 64}
    raise CompareConfigError(f"unknown reference kind {kind!r}; use one of {', '.join(REFERENCE_KINDS)}")


def generator_schema(kind: str) -> dict:
    common = {"kind": kind, "label": "", "enabled": True, "num_images": None, "seed": None, "batch_size": None,
              "reference": "auto", "fallback": "skip", "note": ""}
    if kind == "ddpm":
        return {**common, "model": "", "config": None, "class_label": None, "sampler": None, "steps": None,
                "fallback_class_label": None}
    if kind == "ldm":
        return {**common, "config": "", "ckpt": "", "vocab": None, "prompt": "", "negative_prompt": "",
                "sampler": None, "steps": None, "guidance_scale": None, "height": None, "width": None,
                "fallback_prompt": None}
    if kind == "glide":
        # config null: Taichu-GLIDE's; ckpt_path / file names null: the config's checkpoint: section
        return {**common, "config": None, "ckpt_path": None, "gen_ckpt": None, "super_ckpt": None,
                "srgan_ckpt": None, "tokenizer_model": None, "prompt": "", "stages": 64, "guidance_scale": None,
                "fallback_prompt": None}
    raise CompareConfigError(f"unknown generator kind {kind!r}; use one of {', '.join(GENERATOR_KINDS)}")


def _entries(raw, section: str, path) -> dict:
    entries = raw.get(section, {}) if raw is not None else {}
    if entries is None:
        return {}
    if not hasattr(entries, "items"):
        raise CompareConfigError(f"config {path}: '{section}' must be a mapping of name -> settings")
    for name, entry in entries.items():
        if not _NAME_RE.match(str(name)):
            raise CompareConfigError(f"config {path}: {section} name {name!r} must be letters, digits, '_', '.' or "
                                     f"'-' (it names folders and chart labels; put other text in 'label')")
        if not hasattr(entry, "get") or not entry.get("kind"):
            raise CompareConfigError(f"config {path}: {section}.{name} needs a 'kind' "
                                     f"({' | '.join(GENERATOR_KINDS if section == 'generators' else REFERENCE_KINDS)})")
    return entries


def load_compare_config(path, overrides=()) -> "DictConfig":  # noqa: F821
    """defaults <- YAML <- dotlist overrides, with per-kind schemas for every reference / generator."""
    raw = read_yaml(path)
    for item in overrides or ():
        key = str(item).split("=", 1)[0].strip()
        if re.match(r"^(generators|references)\.[^.]+\.kind$", key):
            raise CompareConfigError(f"command line: {key} cannot be overridden (a row's kind fixes its settings); "
                                     f"edit the config file instead")
    schema = compare_defaults()
    for section, builder in (("references", reference_schema), ("generators", generator_schema)):
        for name, entry in _entries(raw, section, path).items():
            try:
                schema[section][str(name)] = builder(str(entry.get("kind")))
            except CompareConfigError as exc:
                raise CompareConfigError(f"config {path}: {section}.{name}: {exc}") from None
    cfg = load_config(path, overrides, schema)
    if not cfg.name:
        cfg.name = Path(path).stem
    validate_compare_config(cfg, f"config {path}")
    return cfg


def validate_compare_config(cfg, source: str = "config"):
    def bad(msg):
        raise CompareConfigError(f"{source}: {msg}")

    if cfg.fid.preprocess not in ("pt", "tf"):
        bad(f"fid.preprocess must be 'pt' (pytorch-fid) or 'tf' (TF1 legacy), got {cfg.fid.preprocess!r}")
    if cfg.fid.method not in ("sqrtm", "eigh"):
        bad(f"fid.method must be 'sqrtm' (pytorch-fid's recipe) or 'eigh' (fast symmetric route), "
            f"got {cfg.fid.method!r}")
    for key in ("num_images", "batch_size"):
        if int(cfg[key]) < (2 if key == "num_images" else 1):
            bad(f"{key} must be >= {2 if key == 'num_images' else 1} (FID needs at least 2 images), got {cfg[key]}")
    if int(cfg.fid.batch_size) < 1:
        bad(f"fid.batch_size must be >= 1, got {cfg.fid.batch_size}")
    if cfg.max_reference_images is not None and int(cfg.max_reference_images) < 2:
        bad(f"max_reference_images must be >= 2 or null, got {cfg.max_reference_images}")
    if not _NAME_RE.match(str(cfg.name)):
        bad(f"name {cfg.name!r} must be letters, digits, '_', '.' or '-' (it names the run folder)")
    if not cfg.generators:
        bad("no generators configured: add at least one under 'generators:'")
    for name, r in cfg.references.items():
        if r.kind == "folder" and not r.path:
            bad(f"references.{name}.path is empty: give an image folder or a .npz statistics file")
        if r.kind == "shapes" and not r.prompt:
            bad(f"references.{name}.prompt is empty")
        if r.kind == "digits" and not 0 <= int(r.class_label) <= 9:
            bad(f"references.{name}.class_label must be 0..9, got {r.class_label}")
    for name, g in cfg.generators.items():
        where = f"generators.{name}"
        if g.reference != "auto" and g.reference not in cfg.references:
            known = ", ".join(sorted(cfg.references)) or "none defined"
            bad(f"{where}.reference {g.reference!r} is not under 'references:' ({known}); or use 'auto' for a "
                f"built-in demo model")
        if g.fallback not in ("skip", "builtin"):
            bad(f"{where}.fallback must be 'skip' or 'builtin', got {g.fallback!r}")
        if g.num_images is not None and int(g.num_images) < 2:
            bad(f"{where}.num_images must be >= 2 (FID needs at least 2 images), got {g.num_images}")
        if g.batch_size is not None and int(g.batch_size) < 1:
            bad(f"{where}.batch_size must be >= 1, got {g.batch_size}")
        if g.kind == "ddpm" and not g.model:
            bad(f"{where}.model is empty: give a model folder (config.yaml + model_ema.ckpt) or a .ckpt")
        if g.kind == "ldm" and not (g.config and g.ckpt and g.prompt):
            bad(f"{where} needs config, ckpt and prompt")
        if g.kind == "glide":
            if not g.prompt:
                bad(f"{where}.prompt is empty")
            if int(g.stages) not in (64, 256, 1024):
                bad(f"{where}.stages must be 64, 256 or 1024, got {g.stages}")



def resolve_path(path) -> Path:
    """Config paths are relative to the working directory, else to the repository root."""
    p = Path(str(path)).expanduser()
    if p.is_absolute() or p.exists():
        return p
    alt = ROOT / p
    return alt if alt.exists() else p
