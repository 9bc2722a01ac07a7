"""What the web page runs, without gradio: one model kept loaded between requests (switching
frees the previous one), the pipelines' own checks and defaults, the scripts' file writers and
file layout, progress and cancel through the samplers' callback, and the command line that
reproduces each result. One generation at a time (a lock; the page's queue has concurrency 1).
"""
from __future__ import annotations

import gc
import queue
import random
import shlex
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, List, Optional

from .models import GLIDE_CONFIG, GLIDE_FILES, WUKONG_CONFIG, ModelEntry, find_loras, find_models

MAX_SEED = 2 ** 32 - 1
# the pipelines name the scripts' flags in their messages; the page names its fields too
FIELD_NAMES = {"--H ": "Height (--H) ", "--W ": "Width (--W) "}


class Cancelled(Exception):
    """The user pressed Cancel: the sampler stops at its next step."""


@dataclass
class Update:
    """One step of a run, for the page: the images written so far (paths), a status line, the
    command line, warnings, and whether the run is over."""
    paths: List[Path] = field(default_factory=list)
    status: str = ""
    command: str = ""
    warnings: List[str] = field(default_factory=list)
    done: bool = False
    stage: Optional[int] = None


def page_message(exc: BaseException) -> str:
    msg = str(exc).strip() or type(exc).__name__
    for flag, name in FIELD_NAMES.items():
        msg = msg.replace(flag, name)
    return msg


def as_int(value, what: str):
    """A form number as an int (sliders and number boxes may send 20.0); anything else goes to
    the pipeline's check unchanged, whose message then names it."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _rel(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


class Engine:
    def __init__(self, root: str | Path, models_dir: str | Path | None = None,
                 output_dir: str | Path | None = None, device_target: str = "auto",
                 mode: str = "graph", precision: str = "auto"):
        self.root = Path(root).resolve()
        self.models_dir = Path(models_dir) if models_dir else self.root / "models"
        self.output_dir = Path(output_dir) if output_dir else self.root / "output"
        self.device_target, self.mode, self.precision = device_target, mode, precision
        self.lock = threading.Lock()
        self._cancel = threading.Event()
        self._rt = None
        self._key = None
        self._pipe = None
        self.models = find_models(self.models_dir, self.root)
        self.loras = find_loras(self.models_dir)

    # ------------------------------------------------------------------ models
    def refresh(self) -> dict:
        self.models = find_models(self.models_dir, self.root)
        self.loras = find_loras(self.models_dir)
        return self.models

    def lora_specs(self, names, weight) -> list:
        """[(path, weight)] of the LoRA files picked by name, each checked to exist and to hold
        LoRA tensors of a known format (the script's --lora checks) before anything loads."""
        from types import SimpleNamespace

        from ..ldm.lora import check_lora_weight, lora_specs_from_args

        names = [n for n in (names or []) if n]
        if not names:
            return []
        weight = check_lora_weight(weight)
        paths = []
        for n in names:
            p = next((q for q in self.loras if q.name == n), None)
            if p is None:
                have = ", ".join(q.name for q in self.loras) or "none"
                raise FileNotFoundError(f"no LoRA file {n!r} in {self.models_dir / 'lora'} (found: {have}); "
                                        f"press Refresh after adding files")
            paths.append(f"{p}:{weight:g}")
        return lora_specs_from_args(SimpleNamespace(lora=paths, enable_lora="False", lora_ckpt_filepath=None))

    def labels(self, kind: str) -> List[str]:
        return [m.label for m in self.models[kind]]

    def entry(self, kind: str, label) -> ModelEntry:
        for m in self.models[kind]:
            if m.label == label:
                return m
        have = ", ".join(self.labels(kind)) or "none"
        raise FileNotFoundError(f"no model {label!r} under {self.models_dir} (found: {have}); press "
                                f"Refresh after adding checkpoints")

    def runtime(self):
        if self._rt is None:
            from ..runtime import init_runtime

            self._rt = init_runtime(self.device_target, self.mode, precision=self.precision)
        return self._rt

    @property
    def loaded(self) -> Optional[tuple]:
        return self._key

    def free(self):
        """Drop the loaded model (its memory goes back before the next one loads)."""
        self._pipe, self._key = None, None
        gc.collect()

    def pipeline(self, entry: ModelEntry, stages: int = 1024, loras=()):
        """The loaded pipeline of ``entry`` (loaded now, after freeing the previous one, when
        another is loaded). Another LoRA set reloads the base model, so that its weights are
        exactly those of a fresh ``infer.sh --lora`` run (unmerging is exact only to ~1e-6)."""
        key = entry.key + ((stages,) if entry.kind == "glide" else ()) \
            + ((tuple((str(p), float(w)) for p, w in loras),) if loras else ())
        if self._key == key:
            return self._pipe
        self.free()
        rt = self.runtime()
        dtype = rt.precision.ms_dtype()
        if entry.kind == "ldm":
            from ..ldm.pipeline import LDMPipeline

            pipe = LDMPipeline.from_pretrained(entry.config, entry.ckpt, compute_dtype=dtype)
            if loras:
                from ..ldm.lora import apply_lora_specs

                apply_lora_specs(pipe, loras, "merge")
        elif entry.kind == "ddpm":
            from ..ddpm.pipeline import DDPMPipeline

            pipe = DDPMPipeline.from_pretrained(entry.ckpt.parent, entry.config, compute_dtype=dtype)
        else:
            from ..glide.builtin import glide_files
            from ..glide.pipeline import GlidePipeline
            from ..text.factory import build_glide_tokenizer

            cfg = GlidePipeline.load_config(entry.config)  # the files its config names, in its folder
            files = glide_files(cfg, entry.ckpt, stages)
            tok = build_glide_tokenizer(files.pop("tokenizer"), bool(cfg.tokenizer.is_chinese))
            pipe = GlidePipeline.from_pretrained(cfg, *(files.get(s) for s in (64, 256, 1024)), tokenizer=tok,
                                                 stages=stages, compute_dtype=dtype)
        self._pipe, self._key = pipe, key
        return pipe

    # ------------------------------------------------------------------ cancel
    def cancel(self):
        self._cancel.set()

    def _callback(self, progress: Optional[Callable], total: int, done_before: Callable[[], int],
                  what: str):
        def cb(i, t, x, x0):
            if self._cancel.is_set():
                raise Cancelled()
            if progress is not None:
                progress((done_before() + i + 1) / max(total, 1), f"{what}: step {done_before() + i + 1}/{total}")
        return cb

    # ------------------------------------------------------------------ txt2img
    def check_txt2img(self, label, prompt, negative_prompt, sampler, steps, scale, seed, width,
                      height, batch_count, batch_size, task: str = "txt2img"):
        """The checks and resolved settings of a text-to-image (or ``task``: "img2img",
        "inpaint") request, before any model loads."""
        from ..config import load_config
        from ..ldm.config import ldm_config_defaults
        from ..ldm.pipeline import LDMPipeline

        entry = self.entry("ldm", label)
        if self._key is not None and self._key[:3] == entry.key:
            cfg = self._pipe.cfg
        else:
            cfg = load_config(entry.config, (), ldm_config_defaults())
        LDMPipeline.check_checkpoint(cfg, entry.ckpt)
        seed = as_int(seed, "seed")
        if isinstance(seed, int) and seed < 0:  # -1: a random seed, recorded like any other
            seed = random.randint(0, MAX_SEED)
        if isinstance(seed, int) and seed > MAX_SEED:
            raise ValueError(f"seed must be at most {MAX_SEED}, got {seed}")
        for name, v in (("batch count", batch_count), ("batch size", batch_size)):
            v = as_int(v, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        a = LDMPipeline.check_inputs(
            cfg, prompt, negative_prompt=negative_prompt, height=as_int(height, "height"),
            width=as_int(width, "width"), num_inference_steps=as_int(steps, "steps"),
            guidance_scale=scale, sampler=sampler, seed=seed,
            flags={"num_inference_steps": "sampling steps", "guidance_scale": "CFG scale"}, task=task)
        return entry, cfg, a, int(as_int(batch_count, "")), int(as_int(batch_size, ""))

    def txt2img_command(self, entry: ModelEntry, a: dict, n_iter: int, n_samples: int, loras=()) -> str:
        """The ``infer.sh`` line that writes the same images (same seeds, same files' pixels and
        metadata) into its own output folder."""
        prompt = a["prompts"][0]
        cmd = ["bash", "infer.sh"] + (["--prompt", prompt] if prompt.startswith("-") else [prompt])
        official = self.models_dir / "wukong-huahua-ms.ckpt"
        default = entry.config == self.root / WUKONG_CONFIG and entry.ckpt == official \
            and self.models_dir.resolve() == (self.root / "models").resolve()
        return self._command(cmd, entry, a, n_iter, n_samples, loras, name_model=not default)

    def _command(self, cmd: list, entry: ModelEntry, a: dict, n_iter: int, n_samples: int, loras=(),
                 name_model: bool = True, extra=()) -> str:
        """``cmd`` with the flags every latent-diffusion script shares, quoted for a shell."""
        if name_model:
            cmd += ["--config", _rel(entry.config, self.root), "--ckpt_path", _rel(entry.ckpt.parent, self.root),
                    "--ckpt_name", entry.ckpt.name]
        if a["negative_prompt"]:
            cmd += ["--negative_prompt", a["negative_prompt"]]
        for path, weight in loras:
            cmd += ["--lora", f"{_rel(path, self.root)}:{weight:g}"]
        cmd += ["--sampler", a["sampler"], "--ddim_steps", str(a["num_inference_steps"]),
                "--scale", f"{a['guidance_scale']:g}", "--seed", str(a["seed"]),
                "--H", str(a["height"]), "--W", str(a["width"]),
                "--n_samples", str(n_samples), "--n_iter", str(n_iter)] + list(extra)
        if self.output_dir.resolve() != (self.root / "output").resolve():
            cmd += ["--output_path", _rel(self.output_dir, self.root)]
        for flag, value, default in (("--device_target", self.device_target, "auto"),
                                     ("--mode", self.mode, "graph"), ("--precision", self.precision, "auto")):
            if value != default:
                cmd += [flag, value]
        return " ".join(shlex.quote(c) for c in cmd)

    def txt2img(self, label, prompt, negative_prompt, sampler, steps, scale, seed, width, height,
                batch_count, batch_size, progress: Optional[Callable] = None, loras=(),
                lora_weight=1.0) -> Iterator[Update]:
        """Yields an :class:`Update` after each batch is written (``output/samples`` and
        ``output/grids``, as ``infer.sh``), the last one with ``done``. Errors in the inputs
        raise before anything loads."""
        self._cancel.clear()
        entry, cfg, a, n_iter, n_samples = self.check_txt2img(
            label, prompt, negative_prompt, sampler, steps, scale, seed, width, height,
            batch_count, batch_size)
        specs = self.lora_specs(loras, lora_weight)
        command = self.txt2img_command(entry, a, n_iter, n_samples, specs)
        out = self._start_output(entry, cfg, a, n_samples, progress, "infer.sh")

        def call(pipe, seed, cb):
            return pipe(a["prompts"][0], negative_prompt=a["negative_prompt"], num_images=n_samples,
                        height=a["height"], width=a["width"], num_inference_steps=a["num_inference_steps"],
                        guidance_scale=a["guidance_scale"], sampler=a["sampler"], seed=seed, callback=cb,
                        progress=False)
        yield from self._batches(entry, a, n_iter, n_samples, out, call, progress, command,
                                 self._world_notes(cfg, a), loras=specs)

    def _world_notes(self, cfg, a: dict) -> List[str]:
        if str(cfg.model.get("family", "")) == "shapes-zh":
            from ..shapes.world import is_world_prompt

            if not is_world_prompt(a["prompts"][0]):
                return ["the built-in model only knows the shapes world (shapes, colours, places, "
                        "e.g. 一个红色的圆形在左边); expect shapes"]
        return []

    def _start_output(self, entry: ModelEntry, cfg, a: dict, n_samples: int, progress, script: str,
                      subfolders=("samples", "grids")) -> Path:
        """The output folder (created) after the memory check of one batch."""
        from ..ldm.model import size_multiple
        from ..utils.images import check_output_dir
        from ..utils.resources import ldm_memory_check

        out = check_output_dir(self.output_dir, subfolders=subfolders)
        rt = self.runtime()
        ldm_memory_check(cfg.model, n_samples, a["height"], a["width"], rt.device_target,
                         size_multiple(cfg.model), Path(entry.ckpt).stat().st_size,
                         force_flag=f"--force_memory to {script} (the page always checks)")
        return out

    def _batches(self, entry: ModelEntry, a: dict, n_iter: int, n_samples: int, out: Path, call,
                 progress, command: str, notes: List[str], loras=(), inputs=None) -> Iterator[Update]:
        """Loads the model (kept for the next request), then runs ``call(pipe, seed, callback)``
        per batch and writes each batch as the scripts do (``inputs``: an edit's files, whose
        settings every PNG records and whose init | mask start each grid)."""
        from ..cli.ldm import batch_settings
        from ..ldm.pipeline import PromptWarning
        from ..utils.images import save_batch

        if progress is not None:
            same = self._key is not None and self._key[:3] == entry.key
            progress(0.0, "starting" if same else f"loading {entry.label}")
        with self.lock:
            pipe = self.pipeline(entry, loras=loras)
        steps_total = n_iter * a["num_inference_steps"]
        done = [0]
        cb = self._callback(progress, steps_total, lambda: done[0], "sampling")
        head = inputs.grid_head() if inputs is not None else []
        paths: List[Path] = []
        for it in range(n_iter):
            s = a["seed"] + it * n_samples
            try:
                with self.lock, warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", PromptWarning)
                    result = call(pipe, s, cb)
            except Cancelled:
                yield Update(paths, f"cancelled: {len(paths)} image(s) written before Cancel", command,
                             notes, done=True)
                return
            notes += [str(w.message) for w in caught if str(w.message) not in notes]
            settings = batch_settings(pipe, a, a["prompts"][0], s, result, inputs)
            with self.lock:
                paths += save_batch(out, result.images, settings, s, min(n_samples, 4), head=head)
            done[0] += a["num_inference_steps"]
            last = it == n_iter - 1
            yield Update(list(paths), f"{'done' if last else 'batch'} {it + 1}/{n_iter}: "
                         f"{len(paths)} image(s) in {_rel(out / 'samples', self.root)}/ (seed "
                         f"{a['seed']}..{a['seed'] + n_iter * n_samples - 1})", command, notes, done=last)

    # ------------------------------------------------------------------ image editing
    def edit(self, label, task, init_image, mask_file, drawn_mask, prompt, negative_prompt, sampler, steps,
             scale, seed, width, height, batch_count, batch_size, strength, inpaint_mode="auto",
             mask_blur=0, aug="resize", progress: Optional[Callable] = None) -> Iterator[Update]:
        """img2img (``task`` "img2img") or inpainting ("inpaint") of the file ``init_image``, as
        ``scripts/img2img.py`` / ``scripts/inpaint.py`` do with the same settings: the mask is
        ``mask_file`` or, without one, ``drawn_mask`` (an (H, W) array of the init image's size,
        > 0 = repaint). Init image and mask are copied to ``<output>/inputs/NNNNN-init.*`` and
        ``NNNNN-mask.png`` (the command line names them); images and grids as the scripts write
        them. Errors in the inputs raise before anything is written or loaded."""
        self._cancel.clear()
        entry, cfg, a, inputs, n_iter, n_samples, strength, mask_blur = self.check_edit(
            label, task, init_image, mask_file, drawn_mask, prompt, negative_prompt, sampler, steps, scale,
            seed, width, height, batch_count, batch_size, strength, inpaint_mode, mask_blur, aug)
        script = f"scripts/{task}.py"
        out = self._start_output(entry, cfg, a, n_samples, progress, script, ("samples", "grids", "inputs"))
        inputs = self._keep_inputs(out, inputs, a, task, aug)
        if task == "img2img":
            files = ["--init_img", _rel(inputs.init.path, self.root)]
            extra = ["--strength", f"{strength:g}", "--aug", aug]
        else:
            files = ["--img", _rel(inputs.init.path, self.root), "--mask", _rel(inputs.mask_file.path, self.root)]
            extra = ["--strength", f"{strength:g}", "--inpaint_mode", inpaint_mode, "--mask_blur", str(mask_blur),
                     "--aug", aug]
        command = self._command(["python", script, "--prompt", a["prompts"][0]] + files, entry, a, n_iter,
                                n_samples, extra=extra)
        from ..cli.ldm import blend_note

        notes = self._world_notes(cfg, a) + list(inputs.notes)
        if task == "inpaint" and blend_note(cfg, entry.ckpt, inpaint_mode):
            notes.append(blend_note(cfg, entry.ckpt, inpaint_mode))

        def call(pipe, seed, cb):
            common = dict(strength=strength, negative_prompt=a["negative_prompt"],
                          num_inference_steps=a["num_inference_steps"], guidance_scale=a["guidance_scale"],
                          sampler=a["sampler"], seed=seed, num_images_per_prompt=n_samples, callback=cb,
                          progress=False)
            if task == "img2img":
                return pipe.img2img(a["prompts"][0], inputs.image, **common)
            return pipe.inpaint(a["prompts"][0], inputs.image, inputs.mask, mode=inpaint_mode,
                                mask_blur=mask_blur, **common)
        yield from self._batches(entry, a, n_iter, n_samples, out, call, progress, command, notes, inputs=inputs)

    def check_edit(self, label, task, init_image, mask_file, drawn_mask, prompt, negative_prompt, sampler,
                   steps, scale, seed, width, height, batch_count, batch_size, strength, inpaint_mode, mask_blur,
                   aug):
        """Every check of an editing request (the scripts' checks and messages, with the page's
        field names); nothing loaded, nothing written. Returns (entry, cfg, a, EditInputs,
        batch count, batch size, strength, mask blur)."""
        import tempfile

        import numpy as np

        from ..cli.ldm import check_inpaint_mode
        from ..ldm.model import is_inpaint_unet
        from ..utils.edit_inputs import EditInputError, load_edit_inputs, strength_error

        if task not in ("img2img", "inpaint"):
            raise ValueError(f"choose img2img or inpaint, got {task!r}")
        if not init_image:
            raise EditInputError("no init image: upload a PNG or JPG in the Init image field")
        entry, cfg, a, n_iter, n_samples = self.check_txt2img(
            label, prompt, negative_prompt, sampler, steps, scale, seed, width, height, batch_count,
            batch_size, task=task)
        strength = float(strength) if isinstance(strength, int) and not isinstance(strength, bool) else strength
        if strength_error(strength):
            raise ValueError(strength_error(strength, "Strength"))
        mask_blur = as_int(mask_blur, "mask blur")
        if task == "inpaint":
            check_inpaint_mode(cfg, entry.config, inpaint_mode)
            if inpaint_mode not in ("auto", "model", "blend"):
                raise ValueError(f"inpaint mode must be auto, model or blend, got {inpaint_mode!r}")
            if isinstance(mask_blur, bool) or not isinstance(mask_blur, int) or mask_blur < 0:
                raise ValueError(f"mask blur must be an integer >= 0 pixels, got {mask_blur!r}")
            if mask_blur and (inpaint_mode == "model" or inpaint_mode == "auto" and is_inpaint_unet(cfg.model)):
                raise ValueError("mask blur applies to blended inpainting; the inpainting model takes the "
                                 "binary mask: set mask blur to 0")
        else:
            mask_file, drawn_mask, mask_blur = None, None, 0
        with tempfile.TemporaryDirectory() as tmp:
            if task == "inpaint" and not mask_file:
                drawn = None if drawn_mask is None else np.asarray(drawn_mask)
                if drawn is None or drawn.ndim != 2 or not (drawn > 0).any():
                    raise EditInputError("the mask is empty: paint the part to repaint with the white brush "
                                         "on the init image, or upload a mask file (white = repaint)")
                mask_file = Path(tmp) / "mask.png"
                from PIL import Image

                Image.fromarray(np.where(drawn > 0, 255, 0).astype(np.uint8)).save(mask_file)
            inputs = load_edit_inputs(init_image, a["height"], a["width"], mask_file if task == "inpaint" else None,
                                      aug=aug, init_flag="the Init image field",
                                      mask_flag="the Mask file field (or draw the mask)")
        return entry, cfg, a, inputs, n_iter, n_samples, strength, mask_blur

    def _keep_inputs(self, out: Path, inputs, a: dict, task: str, aug: str):
        """The init image and the mask, as read (RGB; grey 0..255), written as PNGs to
        ``<out>/inputs/NNNNN-init.png`` and ``NNNNN-mask.png`` (never overwriting) and read back as
        the script reads them, so the PNGs record the files the command line names."""
        from ..utils.edit_inputs import load_edit_inputs
        from ..utils.images import free_path, next_index, save_png

        with self.lock:
            idx = next_index(out / "inputs")
            init = save_png(free_path(out / "inputs", idx, "-init"), inputs.init.array)
            mask = save_png(free_path(out / "inputs", idx, "-mask"), inputs.mask_file.array) \
                if task == "inpaint" else None
        return load_edit_inputs(init, a["height"], a["width"], mask, aug=aug)

    # ------------------------------------------------------------------ DDPM
    def ddpm(self, label, classes: List[str], num_per_class, sampler, steps, seed,
             progress: Optional[Callable] = None) -> Iterator[Update]:
        """Class-conditional samples into ``output/ddpm_samples/<class>/`` and a grid, as
        ``scripts/sample_ddpm.py``."""
        import numpy as np

        from ..ddpm.pipeline import DDPMPipeline
        from ..utils.images import check_output_dir, make_grid, next_index, save_class_images, save_png

        self._cancel.clear()
        entry = self.entry("ddpm", label)
        if not entry.ckpt.is_file():
            raise FileNotFoundError(f"checkpoint not found: {entry.ckpt}; press Refresh")
        if not classes:
            raise ValueError("pick at least one class")
        ids = [entry.classes.index(c) if c in entry.classes else c for c in classes]
        n = as_int(num_per_class, "")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"images per class must be an integer >= 1, got {n!r}")
        seed = as_int(seed, "")
        if isinstance(seed, int) and seed < 0:
            seed = random.randint(0, MAX_SEED)
        steps = as_int(steps, "")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise ValueError(f"sampling steps must be an integer >= 1, got {steps!r}")
        from ..config import load_config
        from ..ddpm.config import ddpm_config_defaults

        # checked before the model loads, against its config
        a = DDPMPipeline.check_inputs(load_config(entry.config, (), ddpm_config_defaults()), ids,
                                      num_images_per_prompt=n, num_inference_steps=steps,
                                      sampler=sampler or None, seed=seed)
        with self.lock:
            pipe = self.pipeline(entry)
        out = check_output_dir(self.output_dir / "ddpm_samples")
        labels = np.repeat(ids, n)
        settings = pipe.settings(a["sampler"], a["num_inference_steps"], a["seed"])
        written: List[Path] = []
        done = [0]
        total = a["num_inference_steps"] * int(np.ceil(len(labels) / 64))
        cb = self._callback(progress, total, lambda: done[0], "sampling")

        def write(start, batch):
            written.extend(save_class_images(out, start, batch, labels, settings))
            done[0] += a["num_inference_steps"]

        cmd = ["python", "scripts/sample_ddpm.py", "--model", _rel(entry.ckpt.parent, self.root),
               "--classes", ",".join(str(i) for i in ids), "--num_per_class", str(n),
               "--sampler", a["sampler"], "--steps", str(a["num_inference_steps"]),
               "--seed", str(a["seed"]), "--batch_size", "64",
               "--output_dir", _rel(out, self.root)]
        command = " ".join(shlex.quote(c) for c in cmd)
        try:
            with self.lock:
                images = pipe(ids, num_images_per_prompt=n, num_inference_steps=a["num_inference_steps"],
                              sampler=a["sampler"], seed=a["seed"], batch_size=64, on_batch=write,
                              callback=cb, progress=False).images
        except Cancelled:
            yield Update(written, f"cancelled: {len(written)} image(s) written before Cancel", command,
                         done=True)
            return
        g = next_index(out / "grids")
        save_png(out / "grids" / f"{g:05d}.png", make_grid(images, n), {**settings, "classes": ids})
        yield Update(written, f"done: {len(written)} image(s) in {_rel(out, self.root)}/<class>/ "
                     f"and grid {g:05d}.png", command, done=True)

    # ------------------------------------------------------------------ GLIDE
    def glide(self, label, prompt, negative_prompt, steps, scale, seed, num_images, stages,
              progress: Optional[Callable] = None) -> Iterator[Update]:
        """64 -> 256 -> 1024 px, an :class:`Update` as each stage is written (``output/glide``,
        ``NNNNN-<prompt>-<size>.png`` as ``scripts/glide_txt2img.py``)."""
        from ..glide.pipeline import GlidePipeline
        from ..utils.images import check_output_dir, free_path, next_index, save_png
        from ..utils.prompts import slug

        self._cancel.clear()
        entry = self.entry("glide", label)
        stages = int(as_int(stages, ""))
        if stages not in entry.stages:
            raise FileNotFoundError(
                f"the {stages} px stage needs "
                f"{', '.join(GLIDE_FILES[s] for s in GLIDE_FILES if s <= stages)} in {entry.ckpt}; "
                f"found the stages {', '.join(map(str, entry.stages))}")
        cfg = GlidePipeline.load_config(entry.config)
        seed = as_int(seed, "")
        if isinstance(seed, int) and seed < 0:
            seed = random.randint(0, MAX_SEED)
        a = GlidePipeline.check_inputs(
            cfg, prompt, negative_prompt=negative_prompt or None,
            num_images_per_prompt=as_int(num_images, ""), num_inference_steps=as_int(steps, ""),
            guidance_scale=scale, seed=seed, stages=stages)
        out = check_output_dir(self.output_dir / "glide", subfolders=("samples",))
        with self.lock:
            pipe = self.pipeline(entry, stages)
        text = a["prompts"][0]
        cfg_arg = [] if entry.config == self.root / GLIDE_CONFIG else ["--config", _rel(entry.config, self.root)]
        cmd = ["python", "scripts/glide_txt2img.py", *cfg_arg, "--ckpt_path", _rel(entry.ckpt, self.root),
               "--prompt", text, "--num_inference_steps", str(a["num_inference_steps"]),
               "--guidance_scale", f"{a['guidance_scale']:g}", "--seed", str(a["seed"]),
               "--num_images_per_prompt", str(a["num_images_per_prompt"]), "--stages", str(stages),
               "--output_path", _rel(out, self.root)]
        if a["negative_prompt"]:
            cmd += ["--negative_prompt", a["negative_prompt"]]
        command = " ".join(shlex.quote(c) for c in cmd)
        name, first = slug(text), next_index(out / "samples")
        q: queue.Queue = queue.Queue()
        paths: List[Path] = []
        cb = self._callback(progress, a["num_inference_steps"], lambda: 0, "64 px stage")

        def on_stage(stage, images):
            settings = pipe.settings(
                prompt=text, seed=a["seed"], stage=stage, size=images.shape[1], sampler=a["sampler"],
                num_inference_steps=a["num_inference_steps"], negative_prompt=a["negative_prompt"],
                super_res_steps=a["super_res_steps"], guidance_scale=a["guidance_scale"],
                uncond=a["uncond"])
            got = [save_png(free_path(out / "samples", first + k, f"-{name}-{images.shape[1]}"), img,
                            {**settings, "seed": a["seed"] + k, "image": k})
                   for k, img in enumerate(images)]
            q.put(("stage", stage, got))
            if self._cancel.is_set():
                raise Cancelled()

        def work():
            try:
                with self.lock:  # held by this worker: the request's thread only yields
                    pipe(text, negative_prompt=a["negative_prompt"] or None,
                     num_images_per_prompt=a["num_images_per_prompt"],
                     num_inference_steps=a["num_inference_steps"], guidance_scale=a["guidance_scale"],
                     seed=a["seed"], stages=stages, callback=cb, progress=False, on_stage=on_stage)
                q.put(("end", None, None))
            except BaseException as exc:  # handed to the request's thread
                q.put(("error", exc, None))

        threading.Thread(target=work, daemon=True).start()
        while True:
            kind, value, got = q.get()
            if kind == "stage":
                paths += got
                yield Update(list(paths), f"{value} px stage written ({len(got)} image(s))", command,
                             stage=value, done=value == stages)
            elif kind == "end":
                return
            elif isinstance(value, Cancelled):
                yield Update(list(paths), f"cancelled: {len(paths)} image(s) written before Cancel",
                             command, done=True)
                return
            else:
                raise value
