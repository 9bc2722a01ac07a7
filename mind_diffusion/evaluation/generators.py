"""The generator adapters of an FID comparison row: a loaded pipeline and how to draw ``n``
images with a fixed seed (DDPM, latent diffusion, GLIDE), and the built-in demo models a row
falls back to when its files are missing.

The pipelines own their inputs: an adapter passes the row's values (``None`` where the row leaves
them unset) to the family's ``check_inputs``, which resolves every default from the model
config's ``sampling:`` section, and labels its report row with the settings it returns.

A row whose checkpoint / config / vocabulary / pipeline code is missing raises :class:`SkipRow`
(reported as ``skipped: <reason>``); with ``fallback: builtin`` a DDPM row falls back to
``models/ddpm_digits16``, an LDM row to ``models/shapes_zh`` and a GLIDE row to the built-in
shapes-world GLIDE (``models/glide_shapes``, or ``$GLIDE_BUILTIN``; the row's stages, the built-in
config's sampling), each against its own world's reference (``reference: auto``: the real
scikit-learn digits of the class for a DDPM trained with ``data.kind: digits``, rendered
shapes-world scenes matching the prompt for an LDM with ``model.family: shapes-zh`` or a GLIDE with
``model.family: glide-shapes``), clearly labelled as a built-in demo. Library layering: the
families' pipelines are imported lazily, inside the adapters; ``mind_diffusion.metrics`` never
imports a family.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import read_yaml
from ..glide import builtin as glide_builtin
from .compare_config import BUILTIN_DDPM, BUILTIN_SHAPES, CompareConfigError, resolve_path

DEFAULT_SHAPES_PROMPT = "一个红色的圆形在左边"

class SkipRow(Exception):
    """A generator row that cannot run here (missing checkpoint / code); the message is the reason."""


class Generator:
    """Loaded model + how to draw ``n`` images: ``generate(start, count, seed) -> uint8 NHWC``.

    ``resolved``: the settings the family's pipeline resolved for this row (its ``check_inputs``),
    which the report row's sampler / steps text is made from."""

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
    resolved: dict = {}

    def generate(self, start: int, count: int, seed: int) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def settings(self) -> dict:
        return {"model": self.label, "condition": self.condition, "sampler": self.sampler, "steps": self.steps,
                "checkpoint_sha256": self.checkpoint_sha256}


class DDPMGenerator(Generator):
    def __init__(self, g, name: str, model_path: str, class_label, compute_dtype, demo: bool):
        from ..ddpm.pipeline import DDPMPipeline, resolve_model

        try:
            ckpt, cfg_path = resolve_model(resolve_path(model_path),
                                           resolve_path(g.config) if g.config else None)
        except Exception as exc:  # CheckpointError: model / config not found
            raise SkipRow(str(exc)) from None
        self.pipe = DDPMPipeline.from_pretrained(ckpt, cfg_path, compute_dtype=compute_dtype)
        nc = self.pipe.num_classes
        if nc is None and class_label is not None:
            raise CompareConfigError(f"generators.{name}: the DDPM at {model_path} is unconditional; "
                                     f"set class_label: null")
        if nc is not None and class_label is None:
            raise CompareConfigError(f"generators.{name}: the DDPM at {model_path} is class-conditional "
                                     f"({nc} classes): set class_label")
        self.class_label = None if class_label is None else int(class_label)
        self.call_args = {"num_inference_steps": g.steps, "sampler": g.sampler}  # None: the model's default
        cfg = self.pipe.cfg
        labels = [self.class_label] if self.class_label is not None else None
        self.resolved = DDPMPipeline.check_inputs(cfg, labels, **self.call_args)
        self.demo = demo
        self.label = g.label or f"DDPM {Path(str(model_path)).name}"
        self.condition = f"class {self.class_label}" if self.class_label is not None else "unconditional"
        self.sampler, self.steps = str(self.resolved["sampler"]), str(self.resolved["num_inference_steps"])
        self.checkpoint, self.checkpoint_sha256 = str(ckpt), self.pipe.ckpt_hash or ""
        if str(cfg.data.kind) == "digits" and self.class_label is not None:
            self.auto_reference = {"kind": "digits", "class_label": self.class_label,
                                   "image_size": self.pipe.image_size,
                                   "label": f"real sklearn digits, class {self.class_label}, "
                                            f"{self.pipe.image_size}x{self.pipe.image_size}"}

    def generate(self, start, count, seed):
        labels = [self.class_label] * count if self.class_label is not None else None
        return self.pipe(labels, num_images_per_prompt=None if labels else count, seed=seed, batch_size=count,
                         progress=False, **self.call_args).images


class LDMGenerator(Generator):
    def __init__(self, g, config, ckpt, vocab, prompt: str, compute_dtype, demo: bool):
        from ..ldm.pipeline import LDMPipeline

        for what, path in (("LDM config", config), ("checkpoint", ckpt), ("vocabulary", vocab)):
            if path and not resolve_path(path).is_file():
                raise SkipRow(f"{what} not found: {path}")
        try:
            self.pipe = LDMPipeline.from_pretrained(resolve_path(config), resolve_path(ckpt),
                                                    vocab=resolve_path(vocab) if vocab else None,
                                                    compute_dtype=compute_dtype)
        except FileNotFoundError as exc:  # e.g. the vocab next to the checkpoint
            raise SkipRow(str(exc)) from None
        self.prompt = prompt
        # the row's values, None where it leaves them to the model config's sampling: defaults
        self.call_args = {"negative_prompt": g.negative_prompt, "sampler": g.sampler, "num_inference_steps": g.steps,
                          "guidance_scale": g.guidance_scale, "height": g.height, "width": g.width}
        self.resolved = a = LDMPipeline.check_inputs(self.pipe.cfg, prompt, **self.call_args)
        self.demo = demo
        family = str(self.pipe.cfg.model.family)
        self.label = g.label or f"LDM {family}"
        self.condition = f"prompt {prompt!r}"
        self.sampler, self.steps = a["sampler"], f"{a['num_inference_steps']} (scale {a['guidance_scale']:g})"
        self.checkpoint, self.checkpoint_sha256 = str(ckpt), self.pipe.ckpt_hash or ""
        if family == "shapes-zh":
            self.auto_reference = {"kind": "shapes", "prompt": prompt, "image_size": a["height"], "seed": 0,
                                   "num_images": None,
                                   "label": f"rendered shapes-world scenes for {prompt!r}, {a['height']}px"}

    def generate(self, start, count, seed):
        # image k of an LDM call uses seed + k: chunk at `start` with seed + start = one long call
        return self.pipe(self.prompt, num_images_per_prompt=count, seed=seed, progress=False,
                         **self.call_args).images


class GlideGenerator(Generator):
    """GLIDE through ``mind_diffusion.glide.pipeline.GlidePipeline`` (imported here only):
    ``from_pretrained(config=, gen_ckpt=, super_ckpt=, srgan_ckpt=, tokenizer=, stages=,
    compute_dtype=)``, ``GlidePipeline.check_inputs(pipe.cfg, prompt, stages=, guidance_scale=,
    max_stage=)`` for the resolved settings, then ``pipe(prompt, num_images_per_prompt=, seed=,
    stages=, guidance_scale=, output_type='uint8')``, whose result maps stage -> images; image j of
    a call uses seed + j, so chunk seeds are seed + first index.

    The files: the row's names (``gen_ckpt`` ...; null: the config's ``checkpoint:`` names) in its
    ``ckpt_path`` (null: the config's ``checkpoint.ckpt_path``); ``config`` null is Taichu-GLIDE's
    (configs/glide/infer.yaml). A config of the built-in shapes-world GLIDE (``model.family:
    glide-shapes``) makes a built-in demo row, against rendered shapes-world scenes."""

    FILE_KEYS = glide_builtin.FILE_KEYS

    def __init__(self, g, compute_dtype, config=None, ckpt_path=None, names=None, prompt=None):
        from ..config import load_config
        from ..glide.config import glide_config_defaults

        stages = int(g.stages)
        cfg_path = resolve_path(config) if config else None
        if cfg_path is not None and not cfg_path.is_file():
            raise SkipRow(f"GLIDE config not found: {config}")
        cfg = load_config(cfg_path, (), glide_config_defaults())
        base = resolve_path(ckpt_path) if ckpt_path else glide_builtin.resolve_ckpt_dir(cfg.checkpoint.ckpt_path,
                                                                                      cfg_path)
        files = glide_builtin.glide_files(cfg, base, 1024, {k: v for k, v in (names or {}).items() if v})
        paths = dict(zip(self.FILE_KEYS, (files[64], files[256], files[1024], files["tokenizer"])))
        needed = {"gen_ckpt": True, "tokenizer_model": True, "super_ckpt": stages >= 256, "srgan_ckpt": stages >= 1024}
        for key in self.FILE_KEYS:
            if needed[key] and not paths[key].is_file():
                raise SkipRow(f"GLIDE {key} not found: {paths[key]}")
        try:
            from ..glide.pipeline import GlidePipeline
        except ImportError as exc:
            raise SkipRow(f"GLIDE pipeline not available in this checkout (mind_diffusion.glide.pipeline: {exc})") \
                from None

        def file(key):  # a stage's checkpoint is passed only when that stage runs or the file exists
            p = paths[key]
            return str(p) if needed[key] or p.is_file() else None

        self.pipe = GlidePipeline.from_pretrained(config=None if cfg_path is None else str(cfg_path),
                                                  gen_ckpt=file("gen_ckpt"), super_ckpt=file("super_ckpt"),
                                                  srgan_ckpt=file("srgan_ckpt"), tokenizer=file("tokenizer_model"),
                                                  stages=stages, compute_dtype=compute_dtype)
        self.prompt = str(g.prompt if prompt is None else prompt)
        self.stages = stages
        self.call_args = {"stages": stages, "guidance_scale": g.guidance_scale}  # None: the config's scale
        self.resolved = a = GlidePipeline.check_inputs(self.pipe.cfg, self.prompt, max_stage=stages,
                                                       **self.call_args)
        self.demo = str(cfg.model.family) == glide_builtin.BUILTIN_FAMILY
        self.label = g.label or (f"GLIDE built-in (shapes world) {stages}px" if self.demo
                                 else f"GLIDE (Taichu) {stages}px")
        self.condition = f"prompt {self.prompt!r}"
        self.sampler = str(a["sampler"])
        self.steps = f"{a['num_inference_steps']} (scale {a['guidance_scale']:g})"
        if stages >= 256:  # the SR stage: DDIM over its own respacing
            self.sampler += ", SR ddim"
            self.steps += f", SR {a['super_res_steps']}"
        self.checkpoint = str(paths["gen_ckpt"])
        from ..checkpoint.io import file_sha256

        self.checkpoint_sha256 = file_sha256(paths["gen_ckpt"])
        if self.demo:
            m = cfg.model
            size = int(m.base.image_size) if stages == 64 else int(m.sr.image_size) * (
                int(m.srgan.upscale_factor) if stages == 1024 else 1)
            self.auto_reference = {"kind": "shapes", "prompt": self.prompt, "image_size": size, "seed": 0,
                                   "num_images": None,
                                   "label": f"rendered shapes-world scenes for {self.prompt!r}, {size}px"}

    def generate(self, start, count, seed):
        out = self.pipe(self.prompt, num_images_per_prompt=count, seed=seed, output_type="uint8", progress=False,
                        **self.call_args)
        return out[self.stages]


def build_generator(name: str, g, compute_dtype) -> Generator:
    """The adapter for one config row; ``SkipRow`` when its files or code are missing (and, with
    ``fallback: builtin``, the family's built-in demo model is missing too)."""
    kind = g.kind
    try:
        if kind == "glide":
            return GlideGenerator(g, compute_dtype, g.config, g.ckpt_path,
                                  {k: g[k] for k in GlideGenerator.FILE_KEYS})
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
        elif kind == "glide":
            folder = glide_builtin.builtin_dir()
            gen = GlideGenerator(_FallbackView(g), compute_dtype, folder / glide_builtin.BUILTIN_CONFIG, folder,
                                 prompt=g.fallback_prompt or DEFAULT_SHAPES_PROMPT)
            gen.label = f"GLIDE built-in (shapes world) {gen.stages}px (instead of {g.label or name})"
        else:
            cfg_path = f"{BUILTIN_SHAPES}/config.yaml"
            prompt = g.fallback_prompt
            if not prompt and resolve_path(cfg_path).is_file():
                prompt = str(read_yaml(resolve_path(cfg_path)).get("sampling", {}).get("default_prompt", ""))
            gen = LDMGenerator(_FallbackView(g), cfg_path, f"{BUILTIN_SHAPES}/model.ckpt",
                               f"{BUILTIN_SHAPES}/vocab.txt", prompt or DEFAULT_SHAPES_PROMPT, compute_dtype,
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
