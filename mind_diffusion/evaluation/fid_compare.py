"""FID comparison runs: generate N images per configured generator, FID against a reference set,
and a report (Markdown table, CSV, bar chart) with the Mind-Diffusion report's numbers beside
ours as context.

    cfg = load_compare_config("configs/fid/builtin-quick.yaml", ["num_images=50"])
    result = run_comparison(cfg)           # -> CompareResult(run_dir, rows)

Config (YAML; every key is checked, unknown keys are errors naming the closest valid one)::

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

``reference: auto`` means the ground truth of a built-in demo model's own world: the real
scikit-learn digits of the class (DDPM trained with ``data.kind: digits``) or rendered
shapes-world scenes matching the prompt (LDM with ``model.family: shapes-zh``).

A row whose checkpoint / config / vocabulary / pipeline code is missing is reported as
``skipped: <reason>``; with ``fallback: builtin`` a DDPM row falls back to
``models/ddpm_digits16`` and an LDM row to ``models/shapes_zh`` (each against its own world's
reference), clearly labelled as a built-in demo. Library layering: this module sits at the
pipeline level (it imports the families' pipelines lazily, inside the adapters);
``mind_diffusion.metrics`` never imports a family.
"""
from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..config import ConfigError, load_config, read_yaml, to_plain

ROOT = Path(__file__).resolve().parents[2]
BUILTIN_DDPM = "models/ddpm_digits16"
BUILTIN_SHAPES = "models/shapes_zh"
GENERATOR_KINDS = ("ddpm", "ldm", "glide")
REFERENCE_KINDS = ("folder", "digits", "shapes")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

# The Mind-Diffusion report's FID table, as the report gives it; its GAN rows come from the SYSU course project
# github.com/Enderfga/Enderfga (horse_generation: ~1k samples vs the CIFAR-10 horse class, pytorch-fid code).
# Protocol notes say what is known.
REPORT_PROTOCOL = "report: ~1k generated vs CIFAR-10 horse (train folder), pytorch-fid"
REPORT_FIDS = (
    ("GAN", 198.0, "~1k vs CIFAR-10 horse train, pytorch-fid (course repo code)"),
    ("AAE", 299.0, "~1k vs CIFAR-10 horse train, pytorch-fid (course repo code)"),
    ("VAE", 327.0, "~1k vs CIFAR-10 horse train, pytorch-fid (course repo code)"),
    ("DCGAN", 111.0, "~1k vs CIFAR-10 horse train, pytorch-fid (course repo code)"),
    ("WGAN", 241.0, "~1k vs CIFAR-10 horse train, pytorch-fid (course repo code)"),
    ("LSGAN", 172.0, "~1k vs CIFAR-10 horse train, pytorch-fid (course repo code)"),
    ("DRAGAN", 184.0, "~1k vs CIFAR-10 horse train, pytorch-fid (course repo code)"),
    ("BEGAN", 205.0, "~1k vs CIFAR-10 horse train, pytorch-fid (course repo code)"),
    ("StyleGAN3", 100.0, "fid50k with the NVIDIA extractor (mmgen config): different N and extractor"),
    ("StyleGAN-XL", 22.0, "protocol not found"),
    ("DDPM", 219.0, "stated ~1k with pytorch-fid; how it was computed was not found"),
    ("Wukong", 18.0, "stated ~1k with pytorch-fid; how it was computed was not found"),
    ("Taichu", 10.0, "stated ~1k with pytorch-fid; how it was computed was not found"),
)
REPORT_N_GEN = 1000


class CompareConfigError(ConfigError):
    """A comparison config that cannot run (unknown kind, reference name, bad value)."""


class SkipRow(Exception):
    """A generator row that cannot run here (missing checkpoint / code); the message is the reason."""


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
        return {**common, "ckpt_path": "models", "gen_ckpt": "glide_gen.ckpt", "super_ckpt": "glide_super_res.ckpt",
                "srgan_ckpt": "srgan.ckpt", "tokenizer_model": "cog-pretrain.model", "prompt": "", "stages": 64,
                "guidance_scale": None}
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
        if g.kind == "glide" and g.fallback != "skip":
            bad(f"{where}.fallback: GLIDE has no built-in demo model; use 'skip'")
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


# ----------------------------------------------------------------------------- rows
@dataclass
class Row:
    name: str
    label: str
    kind: str
    status: str = "ok"                 # ok | skipped: <reason>
    demo: bool = False                 # a built-in demo model, not a released checkpoint
    condition: str = ""
    sampler: str = ""
    steps: str = ""
    seed: int = 0
    n_gen: int = 0
    n_ref: int = 0
    n_ref_skipped: int = 0
    n_gen_skipped: int = 0
    reference: str = ""
    reference_path: str = ""
    generated_path: str = ""
    fid: float | None = None
    preprocess: str = ""
    method: str = ""
    extractor: str = ""
    checkpoint: str = ""
    checkpoint_sha256: str = ""
    comparable_to_report: str = ""
    gen_seconds: float = 0.0
    fid_seconds: float = 0.0
    note: str = ""
    extra: dict = field(default_factory=dict)

    def metric_name(self) -> str:
        return (f"FID (mode={self.preprocess}, extractor={self.extractor}, N_gen={self.n_gen}, N_ref={self.n_ref}, "
                f"method={self.method})")


@dataclass
class CompareResult:
    run_dir: Path
    rows: list
    files: dict


def _p(path) -> Path:
    """Config paths are relative to the working directory, else to the repository root."""
    p = Path(str(path)).expanduser()
    if p.is_absolute() or p.exists():
        return p
    alt = ROOT / p
    return alt if alt.exists() else p


# ----------------------------------------------------------------------------- generator adapters
class Generator:
    """Loaded model + how to draw ``n`` images: ``generate(start, count, seed) -> uint8 NHWC``."""

    label = ""
    demo = False
    condition = ""
    sampler = ""
    steps = ""
    checkpoint = ""
    checkpoint_sha256 = ""
    auto_reference: dict | None = None  # reference spec for reference: auto
    note = ""
    fallback = False  # a built-in demo model standing in for a missing checkpoint

    def generate(self, start: int, count: int, seed: int) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def settings(self) -> dict:
        return {"model": self.label, "condition": self.condition, "sampler": self.sampler, "steps": self.steps,
                "checkpoint_sha256": self.checkpoint_sha256}


class DDPMGenerator(Generator):
    def __init__(self, g, name: str, model_path: str, class_label, compute_dtype, demo: bool):
        from ..ddpm.pipeline import DDPMPipeline, resolve_model

        try:
            ckpt, cfg_path = resolve_model(_p(model_path), _p(g.config) if g.config else None)
        except Exception as exc:  # CheckpointError: model / config not found
            raise SkipRow(str(exc)) from None
        self.pipe = DDPMPipeline.from_pretrained(ckpt, cfg_path, compute_dtype=compute_dtype)
        nc = self.pipe.num_classes
        if nc is None and class_label is not None:
            raise CompareConfigError(f"generators.{name}: the DDPM at {model_path} is unconditional; "
                                     f"set class_label: null")
        if nc is not None:
            if class_label is None:
                raise CompareConfigError(f"generators.{name}: the DDPM at {model_path} is class-conditional "
                                         f"({nc} classes): set class_label")
            self.pipe.check_labels([int(class_label)])
        self.class_label = None if class_label is None else int(class_label)
        cfg = self.pipe.cfg
        self.sampler_name = g.sampler or str(cfg.sampling.sampler)
        self.num_steps = int(g.steps) if g.steps is not None else int(cfg.sampling.num_inference_steps)
        self.demo = demo
        self.label = g.label or f"DDPM {Path(str(model_path)).name}"
        self.condition = f"class {self.class_label}" if self.class_label is not None else "unconditional"
        self.sampler, self.steps = self.sampler_name, str(self.num_steps)
        self.checkpoint, self.checkpoint_sha256 = str(ckpt), self.pipe.ckpt_hash or ""
        if str(cfg.data.kind) == "digits" and self.class_label is not None:
            self.auto_reference = {"kind": "digits", "class_label": self.class_label,
                                   "image_size": self.pipe.image_size,
                                   "label": f"real sklearn digits, class {self.class_label}, "
                                            f"{self.pipe.image_size}x{self.pipe.image_size}"}

    def generate(self, start, count, seed):
        labels = [self.class_label] * count if self.class_label is not None else None
        return self.pipe(labels, num_images_per_prompt=None if labels else count,
                         num_inference_steps=self.num_steps, sampler=self.sampler_name,
                         seed=seed, batch_size=count, progress=False).images


class LDMGenerator(Generator):
    def __init__(self, g, config, ckpt, vocab, prompt: str, compute_dtype, demo: bool):
        from ..ldm.pipeline import LDMPipeline

        for what, path in (("LDM config", config), ("checkpoint", ckpt), ("vocabulary", vocab)):
            if path and not _p(path).is_file():
                raise SkipRow(f"{what} not found: {path}")
        try:
            self.pipe = LDMPipeline.from_pretrained(_p(config), _p(ckpt), vocab=_p(vocab) if vocab else None,
                                                    compute_dtype=compute_dtype)
        except FileNotFoundError as exc:  # e.g. the vocab next to the checkpoint
            raise SkipRow(str(exc)) from None
        s = self.pipe.cfg.sampling
        self.prompt = prompt
        self.negative_prompt = str(g.negative_prompt or "")
        self.sampler_name = g.sampler or str(s.sampler)
        self.num_steps = int(g.steps) if g.steps is not None else int(s.steps)
        self.scale = float(g.guidance_scale) if g.guidance_scale is not None else float(s.scale)
        self.height = int(g.height) if g.height is not None else int(s.H)
        self.width = int(g.width) if g.width is not None else int(s.W)
        self.pipe.check_size(self.height, self.width, self.pipe.size_multiple)
        self.demo = demo
        family = str(self.pipe.cfg.model.family)
        self.label = g.label or f"LDM {family}"
        self.condition = f"prompt {prompt!r}"
        self.sampler, self.steps = self.sampler_name, f"{self.num_steps} (scale {self.scale:g})"
        self.checkpoint, self.checkpoint_sha256 = str(ckpt), self.pipe.ckpt_hash or ""
        if family == "shapes-zh":
            self.auto_reference = {"kind": "shapes", "prompt": prompt, "image_size": self.height, "seed": 0,
                                   "num_images": None,
                                   "label": f"rendered shapes-world scenes for {prompt!r}, {self.height}px"}

    def generate(self, start, count, seed):
        # image k of an LDM call uses seed + k: chunk at `start` with seed + start = one long call
        return self.pipe(self.prompt, negative_prompt=self.negative_prompt, num_images=count, height=self.height,
                         width=self.width, num_inference_steps=self.num_steps, guidance_scale=self.scale,
                         sampler=self.sampler_name, seed=seed, progress=False).images


class GlideGenerator(Generator):
    """GLIDE (Taichu) through ``mind_diffusion.glide.pipeline.GlidePipeline`` (imported here only):
    ``from_pretrained(gen_ckpt=, super_ckpt=, srgan_ckpt=, tokenizer=, stages=, compute_dtype=)``,
    then ``pipe(prompt, num_images_per_prompt=, seed=, stages=, output_type='uint8')``, which
    returns ``{stage: images}``; image j of a call uses seed + j, so chunk seeds are seed + first
    index."""

    FILE_KEYS = ("gen_ckpt", "super_ckpt", "srgan_ckpt", "tokenizer_model")

    def __init__(self, g, compute_dtype):
        stages = int(g.stages)
        base = _p(g.ckpt_path)
        needed = {"gen_ckpt": True, "tokenizer_model": True, "super_ckpt": stages >= 256, "srgan_ckpt": stages >= 1024}
        paths = {}
        for key in self.FILE_KEYS:
            val = g[key]
            p = Path(str(val)) if val else None
            if p is not None and not p.is_absolute():
                p = base / p
            paths[key] = p
            if needed[key] and (p is None or not p.is_file()):
                raise SkipRow(f"GLIDE {key} not found: {p}")
        try:
            from ..glide.pipeline import GlidePipeline
        except ImportError as exc:
            raise SkipRow(f"GLIDE pipeline not available in this checkout (mind_diffusion.glide.pipeline: {exc})") \
                from None

        def file(key):  # a stage's checkpoint is passed only when that stage runs or the file exists
            p = paths[key]
            return str(p) if p is not None and (needed[key] or p.is_file()) else None

        self.pipe = GlidePipeline.from_pretrained(gen_ckpt=file("gen_ckpt"), super_ckpt=file("super_ckpt"),
                                                  srgan_ckpt=file("srgan_ckpt"), tokenizer=file("tokenizer_model"),
                                                  stages=stages, compute_dtype=compute_dtype)
        self.prompt = str(g.prompt)
        self.stages = stages
        self.scale = g.guidance_scale
        self.label = g.label or f"GLIDE (Taichu) {stages}px"
        self.condition = f"prompt {self.prompt!r}"
        self.sampler, self.steps = "GLIDE default (base '60', SR 'fast27')", ""
        self.checkpoint = str(paths["gen_ckpt"])
        from ..checkpoint.io import file_sha256

        self.checkpoint_sha256 = file_sha256(paths["gen_ckpt"])

    def generate(self, start, count, seed):
        scale = None if self.scale is None else float(self.scale)  # None: the config's scale
        out = self.pipe(self.prompt, num_images_per_prompt=count, seed=seed, stages=self.stages,
                        guidance_scale=scale, output_type="uint8", progress=False)
        return out[self.stages]


def build_generator(name: str, g, compute_dtype) -> Generator:
    """The adapter for one config row; ``SkipRow`` when its files or code are missing (and, with
    ``fallback: builtin``, the family's built-in demo model is missing too)."""
    kind = g.kind
    if kind == "glide":
        return GlideGenerator(g, compute_dtype)
    try:
        if kind == "ddpm":
            return DDPMGenerator(g, name, g.model, g.class_label, compute_dtype, demo=_is_builtin(g.model))
        return LDMGenerator(g, g.config, g.ckpt, g.vocab, str(g.prompt), compute_dtype,
                            demo=_is_builtin(g.ckpt))
    except SkipRow as first:
        if g.fallback != "builtin":
            raise
        reason = str(first)
    try:
        if kind == "ddpm":
            label = g.fallback_class_label if g.fallback_class_label is not None else g.class_label
            gen = DDPMGenerator(_FallbackView(g), name, BUILTIN_DDPM, label, compute_dtype, demo=True)
            gen.label = f"built-in demo DDPM digits16 (instead of {g.label or name})"
        else:
            cfg_path = f"{BUILTIN_SHAPES}/config.yaml"
            prompt = g.fallback_prompt
            if not prompt and _p(cfg_path).is_file():
                prompt = str(read_yaml(_p(cfg_path)).get("sampling", {}).get("default_prompt", ""))
            gen = LDMGenerator(_FallbackView(g), cfg_path, f"{BUILTIN_SHAPES}/model.ckpt",
                               f"{BUILTIN_SHAPES}/vocab.txt", prompt or "一个红色的圆形在左边", compute_dtype,
                               demo=True)
            gen.label = f"built-in demo LDM shapes_zh (instead of {g.label or name})"
    except SkipRow as second:
        raise SkipRow(f"{reason}; built-in fallback also unavailable: {second}") from None
    gen.note = f"fallback: {reason}"
    gen.fallback = True
    return gen


class _FallbackView:
    """A generator entry as seen by the built-in fallback: the demo model's own size, guidance and
    config (the released model's do not carry over); sampler, steps, N and seed from the row."""

    def __init__(self, g):
        self._g = g

    def __getattr__(self, key):
        if key in ("guidance_scale", "height", "width", "config", "label"):
            return None
        return getattr(self._g, key)

    def __getitem__(self, key):
        return getattr(self, key)


def _is_builtin(path) -> bool:
    s = str(path).replace("\\", "/")
    return BUILTIN_DDPM in s or BUILTIN_SHAPES in s


# ----------------------------------------------------------------------------- references
def _count_images(folder: Path) -> int:
    from ..metrics.features import list_images

    return len(list_images(folder))


def check_reference_source(path) -> Path:
    """A folder with >= 2 images or a readable .npz statistics file; clear errors otherwise."""
    from ..metrics.features import FIDInputError

    p = _p(path)
    if str(p).lower().endswith(".npz"):
        if not p.is_file():
            raise FileNotFoundError(f"reference statistics file not found: {p}")
        return p
    if not p.exists():
        raise FileNotFoundError(f"reference image folder not found: {p}")
    n = _count_images(p)
    if n < 2:
        raise FIDInputError(f"need at least 2 reference images for FID statistics, found {n} in {p}")
    return p


def describe_folder_reference(path: Path, spec_label: str = "") -> tuple[str, dict | None]:
    from .references import read_cifar_manifest

    man = read_cifar_manifest(path) if path.is_dir() else None
    if man:
        label = (f"CIFAR-10 {man.get('class')} ({man.get('split')} split, {man.get('count')} images"
                 f"{', md5-verified' if man.get('md5_verified') else ', md5 NOT verified'})")
        return (spec_label + f" = {label}" if spec_label else label), man
    return spec_label or f"folder {path}", None


def write_images(folder: Path, images: np.ndarray, meta: dict, start: int = 0):
    from ..utils.images import save_png

    folder.mkdir(parents=True, exist_ok=True)
    for k, img in enumerate(images):
        save_png(folder / f"{start + k:05d}.png", img, {**meta, "index": start + k})


def materialize_reference(spec: dict, key: str, run_dir: Path, n_default: int, max_images) -> tuple[Path, str, dict | None]:
    """(path, label, cifar manifest) of a reference; built ones are written under run_dir/reference/."""
    from .references import digits_reference, shapes_reference

    kind = spec["kind"]
    if kind == "folder":
        p = check_reference_source(spec["path"])
        label, man = describe_folder_reference(p, spec.get("label") or "")
        if p.suffix.lower() == ".npz":
            label = spec.get("label") or f"statistics file {p.name}"
        return p, label, man
    out = run_dir / "reference" / key
    if kind == "digits":
        imgs = digits_reference(int(spec["class_label"]), int(spec["image_size"]), max_images)
        label = spec.get("label") or (f"real sklearn digits, class {spec['class_label']}, "
                                      f"{spec['image_size']}x{spec['image_size']}")
    else:
        n = int(spec.get("num_images") or n_default)
        if max_images:
            n = min(n, int(max_images))
        imgs = shapes_reference(str(spec["prompt"]), n, int(spec["image_size"]), int(spec.get("seed") or 0))
        label = spec.get("label") or f"rendered shapes-world scenes for {spec['prompt']!r}"
    if not out.exists():
        write_images(out, imgs, {"source": f"reference:{kind}", "label": label})
    return out, label, None


# ----------------------------------------------------------------------------- run folder
def new_run_dir(output_dir, name: str, explicit=None) -> Path:
    """``explicit``: must not exist (or be empty). Else ``<output_dir>/<name>/run-NNN``, the next
    free number, created atomically (never an existing run)."""
    if explicit:
        p = Path(explicit).expanduser()
        if p.exists() and (not p.is_dir() or any(p.iterdir())):
            raise FileExistsError(f"output folder {p} already exists and is not empty: nothing was overwritten; "
                                  f"choose a new --out (or omit it to get a numbered run folder)")
        p.mkdir(parents=True, exist_ok=True)
        return p
    base = Path(output_dir).expanduser() / name
    base.mkdir(parents=True, exist_ok=True)
    nums = [int(m.group(1)) for d in base.iterdir() if (m := re.match(r"^run-(\d+)$", d.name))]
    k = max(nums, default=0) + 1
    while True:
        p = base / f"run-{k:03d}"
        try:
            p.mkdir()
            return p
        except FileExistsError:
            k += 1


# ----------------------------------------------------------------------------- comparability
def report_comparability(row: Row, ref_manifest: dict | None) -> str:
    """Whether ``row`` follows the report's stated protocol (N_gen = 1000 generated vs the
    CIFAR-10 horse train split, pytorch-fid pre-processing with the TF Inception)."""
    why = []
    if row.n_gen != REPORT_N_GEN:
        why.append(f"N_gen={row.n_gen} (report: ~{REPORT_N_GEN})")
    m = ref_manifest or {}
    if not (m.get("dataset") == "CIFAR-10" and m.get("class") == "horse" and m.get("split") == "train"):
        why.append("reference is not the CIFAR-10 horse train split")
    elif row.n_ref != int(m.get("count", -1)) or row.n_ref_skipped:
        why.append(f"reference incomplete ({row.n_ref} of {m.get('count')} images read)")
    if row.preprocess != "pt":
        why.append(f"pre-processing {row.preprocess} (report: pytorch-fid)")
    if row.n_gen_skipped:
        why.append(f"{row.n_gen_skipped} generated image(s) unreadable")
    if why:
        return "no: " + "; ".join(why)
    return "yes: same stated protocol (1000 generated vs CIFAR-10 horse train, pytorch-fid pre-processing)"


# ----------------------------------------------------------------------------- the run
def preflight(cfg):
    """Checks that need no model: the named reference folders / stats files of enabled rows."""
    for name, g in cfg.generators.items():
        if g.enabled and g.reference != "auto":
            spec = cfg.references[g.reference]
            if spec.kind == "folder":
                try:
                    check_reference_source(spec.path)
                except (FileNotFoundError, ValueError) as exc:
                    raise type(exc)(f"references.{g.reference} (used by generators.{name}): {exc}") from None


def _stats_meta(n: int, mode: str, extractor: str, skipped: int) -> dict:
    return {"n": int(n), "mode": mode, "extractor": extractor, "skipped": int(skipped)}


def run_comparison(cfg, run_dir=None, compute_dtype=None, progress: bool = True, extractor=None,
                   log=print) -> CompareResult:
    """Generate, measure and report every configured row (see the module doc)."""
    from tqdm import tqdm

    from ..metrics.features import FeatureExtractor
    from ..metrics.frechet import fid_function, load_stats, save_stats

    mode, method = str(cfg.fid.preprocess), str(cfg.fid.method)
    distance = fid_function(method)
    preflight(cfg)
    if extractor is None:  # weights first: a missing install fails before any generation
        extractor = FeatureExtractor(mode=mode, weights=cfg.fid.weights, batch_size=int(cfg.fid.batch_size),
                                     progress=progress, verbose=True)
    ext_id = extractor.weights_id
    run_dir = Path(run_dir) if run_dir else new_run_dir(cfg.output_dir, str(cfg.name))
    from ..config import save_config

    save_config(cfg, run_dir / "config.yaml")
    ref_cache: dict[str, tuple] = {}  # resolved path -> (mu, sigma, n, skipped, label, manifest)

    def reference_stats(spec: dict, key: str):
        path, label, man = materialize_reference(spec, key, run_dir, int(cfg.num_images), cfg.max_reference_images)
        ck = str(path.resolve())
        if ck not in ref_cache:
            t0 = time.perf_counter()
            if path.suffix.lower() == ".npz":
                mu, sigma, meta = load_stats(path, with_meta=True)
                if meta.get("mode") not in (None, mode) or meta.get("extractor") not in (None, ext_id):
                    raise CompareConfigError(
                        f"reference statistics {path} were made with mode={meta.get('mode')}, extractor="
                        f"{meta.get('extractor')}; this run uses mode={mode}, extractor={ext_id}: FID would be "
                        f"meaningless")
                n, skipped = meta.get("n", 0), int(meta.get("skipped", 0))
            else:
                mu, sigma, n = extractor.stats(path, strict=bool(cfg.fid.strict))
                skipped = len(extractor.skipped)
                save_stats(run_dir / "stats" / f"reference-{key}.npz", mu, sigma,
                           **_stats_meta(n, mode, ext_id, skipped))
            ref_cache[ck] = (mu, sigma, int(n), skipped, label, man, path, time.perf_counter() - t0)
        return ref_cache[ck]

    rows: list[Row] = []
    for name, g in cfg.generators.items():
        row = Row(name=name, label=str(g.label or name), kind=str(g.kind), preprocess=mode, method=method,
                  extractor=ext_id,
                  note=str(g.note or ""))
        rows.append(row)
        if not g.enabled:
            row.status = "skipped: disabled in the config (enabled: false)"
            log(f"[fid_compare] {name}: {row.status}")
            continue
        try:
            gen = build_generator(name, g, compute_dtype)
        except SkipRow as exc:
            row.status = f"skipped: {exc}"
            log(f"[fid_compare] {name}: {row.status}")
            continue
        row.label, row.demo = gen.label, bool(gen.demo)
        row.condition, row.sampler, row.steps = gen.condition, gen.sampler, gen.steps
        row.checkpoint, row.checkpoint_sha256 = gen.checkpoint, gen.checkpoint_sha256
        if gen.note:
            row.note = "; ".join(x for x in (row.note, gen.note) if x)
        if gen.fallback or g.reference == "auto":
            if gen.auto_reference is None:
                raise CompareConfigError(
                    f"generators.{name}.reference is 'auto', which only works for the built-in demo models "
                    f"(DDPM on digits, the shapes-world LDM); name a reference under 'references:'")
            ref_spec, ref_key = dict(gen.auto_reference), f"auto-{name}"
        else:
            ref_spec, ref_key = to_plain(cfg.references[g.reference]), str(g.reference)
        n = int(g.num_images if g.num_images is not None else cfg.num_images)
        if ref_spec["kind"] == "shapes" and not ref_spec.get("num_images"):
            ref_spec["num_images"] = n
        seed = int(g.seed if g.seed is not None else cfg.seed)
        bs = int(g.batch_size if g.batch_size is not None else cfg.batch_size)
        row.seed, row.n_gen = seed, n
        out = run_dir / "generated" / name
        row.generated_path = str(out)
        meta = {**gen.settings(), "seed": seed, "batch_size": bs, "row": name}
        t0 = time.perf_counter()
        bar = tqdm(total=n, desc=f"generate {name}", unit="img", disable=not progress, file=sys.stderr,
                   dynamic_ncols=True)
        try:
            for start in range(0, n, bs):
                count = min(bs, n - start)
                imgs = gen.generate(start, count, seed + start)
                write_images(out, imgs, {**meta, "chunk_seed": seed + start}, start)
                bar.update(count)
        finally:
            bar.close()
        row.gen_seconds = time.perf_counter() - t0
        del gen
        mu_r, s_r, n_r, skip_r, ref_label, man, ref_path, ref_secs = reference_stats(ref_spec, ref_key)
        row.reference, row.reference_path = ref_label, str(ref_path)
        row.n_ref, row.n_ref_skipped = n_r, skip_r
        t0 = time.perf_counter()
        mu_g, s_g, n_g = extractor.stats(out, strict=bool(cfg.fid.strict))
        row.n_gen_skipped = len(extractor.skipped)
        row.n_gen = n_g
        save_stats(run_dir / "stats" / f"generated-{name}.npz", mu_g, s_g,
                   **_stats_meta(n_g, mode, ext_id, row.n_gen_skipped))
        row.fid = float(distance(mu_g, s_g, mu_r, s_r))
        row.fid_seconds = time.perf_counter() - t0 + ref_secs
        row.comparable_to_report = report_comparability(row, man)
        if n_g < 2048 or n_r < 2048:
            row.extra["small_n"] = True
        log(f"FID[{name}]: {row.fid:.4f}  (mode={mode}, extractor={ext_id}, N_gen={n_g}, N_ref={n_r}, method={method}"
            f"{f', {skip_r} unreadable reference image(s) skipped' if skip_r else ''}"
            f"{', built-in demo model' if row.demo else ''})")
    files = write_report(cfg, rows, run_dir, ext_id, mode, method)
    return CompareResult(run_dir=run_dir, rows=rows, files=files)


# ----------------------------------------------------------------------------- report files
CSV_FIELDS = ("source", "row", "label", "kind", "status", "demo", "condition", "sampler", "steps", "seed", "n_gen",
              "n_ref", "n_ref_skipped", "n_gen_skipped", "reference", "fid", "preprocess", "method", "extractor",
              "comparable_to_report", "checkpoint", "checkpoint_sha256", "reference_path", "generated_path",
              "gen_seconds", "fid_seconds", "note")


def _md(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_report(cfg, rows: list[Row], run_dir: Path, ext_id: str, mode: str, method: str = "sqrtm") -> dict:
    from ..metrics.features import MODE_DESCRIPTIONS
    from ..metrics.frechet import METHOD_DESCRIPTIONS

    run_dir = Path(run_dir)
    files = {"csv": run_dir / "fid.csv", "md": run_dir / "fid.md", "png": run_dir / "fid.png",
             "json": run_dir / "fid.json"}
    ours = [r for r in rows if r.status == "ok"]
    any_match = any(r.comparable_to_report.startswith("yes") for r in ours)
    report = list(REPORT_FIDS) if cfg.report_context else []

    with open(files["csv"], "w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in rows:
            d = asdict(r)
            d.pop("extra")
            d["source"], d["row"] = "ours", r.name
            d["fid"] = "" if r.fid is None else repr(r.fid)
            d["gen_seconds"], d["fid_seconds"] = f"{r.gen_seconds:.1f}", f"{r.fid_seconds:.1f}"
            w.writerow({k: d.get(k, "") for k in CSV_FIELDS})
        for model, fid, proto in report:
            w.writerow({"source": "report", "row": f"report-{model}", "label": f"{model} (report)", "status": "context",
                        "fid": repr(fid), "n_gen": "", "reference": "CIFAR-10 horse (per the report)",
                        "preprocess": "pytorch-fid (stated)", "extractor": "pytorch-fid (stated)",
                        "comparable_to_report": "", "note": f"not comparable unless N and protocol match: {proto}"})
    files["json"].write_text(json.dumps({"extractor": ext_id, "preprocess": mode, "method": method,
                                         "rows": [asdict(r) for r in rows]},
                                        ensure_ascii=False, indent=1, default=str) + "\n", encoding="utf-8")

    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [f"# FID comparison: {cfg.name}", "",
             f"Metric: FID with **{ext_id}**, pre-processing **mode={mode}** ({MODE_DESCRIPTIONS[mode]}), "
             f"pool_3 2048-d features, Fréchet distance in float64, method={method} ({METHOD_DESCRIPTIONS[method]}). "
             f"Run {run_dir.name}, {now}.",
             "", "## Our models", "",
             "| row | model | condition | sampler / steps | seed | N_gen | reference | N_ref | FID | same protocol as the report? |",
             "|---|---|---|---|---:|---:|---|---:|---:|---|"]
    for r in rows:
        if r.status != "ok":
            continue
        model = _md(r.label) + (" **(built-in demo model)**" if r.demo else "")
        ref = _md(r.reference) + (f" ({r.n_ref_skipped} unreadable skipped)" if r.n_ref_skipped else "")
        lines.append(f"| {r.name} | {model} | {_md(r.condition)} | {_md(r.sampler)} / {_md(r.steps)} | {r.seed} | "
                     f"{r.n_gen} | {ref} | {r.n_ref} | {r.fid:.2f} | {_md(r.comparable_to_report)} |")
    if not ours:
        lines.append("| – | no row ran | | | | | | | | |")
    skipped = [r for r in rows if r.status != "ok"]
    if skipped:
        lines += ["", "Skipped rows:", ""] + [f"- **{r.name}** ({_md(r.label)}): {_md(r.status)}" for r in skipped]
    notes = [r for r in ours if r.note]
    if notes:
        lines += ["", "Notes:", ""] + [f"- **{r.name}**: {_md(r.note)}" for r in notes]
    lines += ["", f"Every FID above: mode={mode}, extractor={ext_id}, method={method}; N_gen / N_ref per row. "
                  f"With N < 2048 the covariance is singular and FID is biased upwards: compare rows only at equal N "
                  f"and against the same reference."]
    if report:
        lines += ["", "## The report's numbers (context, not comparable)", "",
                  f"From the Mind-Diffusion report's FID table ({REPORT_PROTOCOL} as far as it can be traced; "
                  f"the GAN rows trace to github.com/Enderfga/Enderfga, horse_generation). "
                  + ("A row above follows the same stated protocol; the report's own protocol details remain "
                     "unverified." if any_match else
                     "No row above follows that protocol (N_gen = 1000 vs the CIFAR-10 horse train split, "
                     "pytorch-fid), so these numbers are **not comparable** with ours."), "",
                  "| model (report) | FID (report) | protocol | comparable with our rows |", "|---|---:|---|---|"]
        for model, fid, proto in report:
            comp = ("same stated protocol, unverified" if any_match and "course repo" in proto
                    else "not comparable")
            lines.append(f"| {model} | {fid:g} | {_md(proto)} | {comp} |")
    files["md"].write_text("\n".join(lines) + "\n", encoding="utf-8")
    plot_report(rows, report, files["png"], f"{cfg.name}: FID (mode={mode}, {ext_id}, method={method})", any_match)
    return files


def plot_report(rows: list[Row], report, path: Path, title: str, any_match: bool):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ours = [r for r in rows if r.status == "ok" and r.fid is not None and math.isfinite(r.fid)]
    labels, values, colors, hatches = [], [], [], []
    for r in ours:
        labels.append(f"{r.name}{' [demo]' if r.demo else ''} (N={r.n_gen} vs {r.n_ref})")
        values.append(r.fid)
        colors.append("#d98c2b" if r.demo else "#2b6cd9")
        hatches.append("")
    for model, fid, _ in report:
        labels.append(f"report: {model}")
        values.append(fid)
        colors.append("#bbbbbb")
        hatches.append("//")
    n = max(len(labels), 1)
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.38 * n))
    y = np.arange(len(labels))[::-1]
    bars = ax.barh(y, values, color=colors, edgecolor="#444444", linewidth=0.5)
    for b, h in zip(bars, hatches):
        b.set_hatch(h)
    vmax = max(values) if values else 1.0
    for yi, v in zip(y, values):
        ax.text(v + vmax * 0.01, yi, f"{v:.1f}", va="center", fontsize=8)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlabel("FID (lower is better)")
    ax.set_xlim(0, vmax * 1.15 if values else 1)
    ax.set_title(title, fontsize=9)
    from matplotlib.patches import Patch

    handles = [Patch(color="#2b6cd9", label="ours"), Patch(color="#d98c2b", label="ours, built-in demo model")]
    if report:
        handles.append(Patch(facecolor="#bbbbbb", hatch="//", edgecolor="#444444",
                             label="report (same stated protocol, unverified)" if any_match
                             else "report (not comparable: different N / reference / protocol)"))
    ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.5 / n - 0.08), ncol=3,
              frameon=False)
    if not values:
        ax.text(0.5, 0.5, "no FID computed (all rows skipped)", transform=ax.transAxes, ha="center")
    fig.savefig(path, dpi=110, bbox_inches="tight",
                metadata={"Title": title, "Description": " | ".join(f"{lab}: {v:.2f}" for lab, v in zip(labels, values))})
    plt.close(fig)
