"""What the latent-diffusion scripts (txt2img.py, img2img.py, inpaint.py) share: the flag
vocabulary (the original txt2img.py's flags and the pipeline names as aliases), the model
choice (with the built-in shapes model as fallback), every check before the checkpoint is read,
and the never-overwriting output loop (``samples/NNNNN.png``, ``grids/NNNNN.png``, settings in
each PNG). The scripts keep only what is their own.

Order of a run: :func:`check_run` (config, prompts, sizes, sampler, checkpoint file, task fit:
nothing written, nothing heavy), the script's own checks (init image, mask, strength), then
:func:`start_run` (runtime, memory check, pipeline load, output folder) and :func:`generate`.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = "configs/wukong/v1-inference-chinese.yaml"
BUILTIN_DIR = ROOT / "models" / "shapes_zh"
OFFICIAL_CKPT = "wukong-huahua-ms.ckpt"
OFFICIAL_URL = "https://download.mindspore.cn/toolkits/minddiffusion/wukong-huahua/wukong-huahua-ms.ckpt"
#: settings a pipeline's result carries that every output PNG of an editing run records (the
#: sha256 of the image and mask pixels as run; the files' own sha256 come from the inputs)
EDIT_SETTINGS = ("mode", "strength", "start_step", "mask_blur", "encode", "init_image_sha256", "mask_sha256")


def add_ldm_args(p, default_config: str = DEFAULT_CONFIG, default_ckpt: str = OFFICIAL_CKPT):
    """The flags txt2img.py, img2img.py and inpaint.py share (the original txt2img.py's names,
    the pipeline's argument names as aliases)."""
    from ..runtime import add_runtime_args

    p.add_argument("--prompt", default=None,
                   help="the prompt, or the prompts file name inside --data_path "
                        "(default: the model's, e.g. 狗 绘画 写实风格)")
    p.add_argument("--data_path", default="", help="folder of a prompts file (one prompt per line)")
    p.add_argument("--negative_prompt", default=None,
                   help="text for the unconditional branch (default: the config's, \"\")")
    p.add_argument("--output_path", default="output")
    p.add_argument("--config", default=default_config, help="model config YAML")
    p.add_argument("--ckpt_path", default=str(ROOT / "models"), help="folder of the checkpoint (default: models/)")
    p.add_argument("--ckpt_name", default=None,
                   help=f"checkpoint file in --ckpt_path (default: the config's, {default_ckpt})")
    p.add_argument("--vocab", default=None,
                   help="tokenizer vocabulary (default: the config's file next to the checkpoint)")
    p.add_argument("--n_samples", "--num_images_per_prompt", dest="n_samples", type=int, default=None,
                   help="images per prompt per iteration (default 8; 1 on CPU)")
    p.add_argument("--n_iter", type=int, default=None, help="iterations (default 2; 1 on CPU)")
    p.add_argument("--H", "--height", dest="H", type=int, default=None, help="image height (default: the config's, 512)")
    p.add_argument("--W", "--width", dest="W", type=int, default=None, help="image width (default: the config's, 512)")
    p.add_argument("--scale", "--guidance_scale", dest="scale", type=float, default=None,
                   help="classifier-free guidance scale, 1 = off (default: the config's, 7.5)")
    p.add_argument("--ddim_steps", "--num_inference_steps", dest="ddim_steps", type=int, default=None,
                   help="sampling steps (default: the config's, 15)")
    p.add_argument("--ddim_eta", type=float, default=0.0, help="DDIM eta (sampler ddim only)")
    p.add_argument("--dpm_solver", action="store_true", help="DPM-Solver++ (2M) instead of PLMS")
    p.add_argument("--sampler", default=None, choices=["dpm_solver", "plms", "ddim", "ddpm"],
                   help="sampler (default: the config's; Wukong: dpm_solver as its run_txt2img.sh)")
    p.add_argument("--fixed_code", action="store_true", help="same start noise for every iteration (seed reused)")
    p.add_argument("--seed", type=int, default=None, help="base seed (default: the config's, 42)")
    p.add_argument("--skip_save", action="store_true", help="do not write the single images")
    p.add_argument("--skip_grid", action="store_true", help="do not write grids")
    p.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--force_memory", action="store_true",
                   help="run even when the memory estimate of one call exceeds the free memory")
    add_runtime_args(p)
    from ..ldm.lora import add_lora_args

    add_lora_args(p)
    return p


def resolve_model(args, default_config: str = DEFAULT_CONFIG, official: str = OFFICIAL_CKPT,
                  url: str = OFFICIAL_URL, builtin_note: str = "") -> tuple:
    """(config path, checkpoint path or None = from the config, uses the built-in model).

    With the default --config / --ckpt_name and no official checkpoint in --ckpt_path, fall back
    to the built-in shapes model in models/shapes_zh/ (when it is installed) and say so."""
    cfg_path = Path(args.config)
    if not cfg_path.is_file() and (ROOT / cfg_path).is_file():
        cfg_path = ROOT / cfg_path
    if not cfg_path.is_file():
        raise FileNotFoundError(f"config not found: {args.config}")
    official_path = Path(args.ckpt_path).expanduser() / (args.ckpt_name or official)
    default_model = args.config == default_config and args.ckpt_name is None
    builtin_cfg = BUILTIN_DIR / "config.yaml"
    if default_model and not official_path.is_file() and builtin_cfg.is_file():
        from ..config import read_yaml

        name = str(read_yaml(builtin_cfg).checkpoint.name)
        print(f"note: {official_path} not found, so this uses the built-in shapes model "
              f"({BUILTIN_DIR.relative_to(ROOT)}/), which only knows the shapes world{builtin_note}. For the "
              f"official model put {official} (and vocab_zh.txt) into {args.ckpt_path}/ (see README).")
        return builtin_cfg, BUILTIN_DIR / name, True
    if default_model and not official_path.is_file():
        from ..checkpoint.io import CheckpointError

        raise CheckpointError(
            f"no model to run: neither the official checkpoint {official_path} nor the built-in shapes model "
            f"({BUILTIN_DIR}/config.yaml) is there. Put {official} into {args.ckpt_path}/ (download: "
            f"{url}), or restore the built-in model with 'git checkout -- models/shapes_zh', or pass "
            f"--ckpt_path/--ckpt_name")
    return cfg_path, None, False


def warn_outside_world(prompts):
    from ..shapes.world import is_world_prompt

    for pr in prompts:
        if not is_world_prompt(pr):
            print(f"warning: the built-in model only knows the shapes world (shapes, colours, "
                  f"places, e.g. 一个红色的圆形在左边); {pr!r} will still generate, but expect "
                  f"shapes", file=sys.stderr)


def check_inpaint_mode(cfg, cfg_path, inpaint_mode: str = "auto"):
    """Before loading: ``--inpaint_mode model`` needs an inpainting model (UNet with 9 input
    channels), ``blend`` a text-to-image one (4); the message says which fits. (txt2img.py and
    img2img.py refuse an inpainting model in ``LDMPipeline.check_inputs``.)"""
    from ..ldm.model import is_inpaint_unet

    c = int(cfg.model.unet.in_channels)
    if inpaint_mode == "model" and not is_inpaint_unet(cfg.model):
        raise ValueError(f"--inpaint_mode model needs an inpainting model (a UNet with 9 input channels, e.g. "
                         f"wukong-huahua-inpaint-ms.ckpt with configs/wukong/inpaint-inference.yaml); {cfg_path} "
                         f"describes a text-to-image model ({c} channels): use --inpaint_mode blend (or auto) with it")
    if inpaint_mode == "blend" and is_inpaint_unet(cfg.model):
        raise ValueError(f"--inpaint_mode blend needs a text-to-image model (a UNet with 4 input channels); "
                         f"{cfg_path} describes an inpainting model ({c} channels): use --inpaint_mode model "
                         f"(or auto) with it")


@dataclass
class Run:
    """Everything checked before the checkpoint is read."""

    args: object
    cfg: object
    cfg_path: Path
    ckpt: Path
    builtin: bool
    prompts: list
    a: dict  # the pipeline's checked settings (check_inputs)
    loras: list = field(default_factory=list)  # [(path, weight)] checked, applied after loading
    out: Path | None = None
    rt: object = None
    n_samples: int = 1
    n_iter: int = 1
    written: list = field(default_factory=list)


def check_run(args, task: str, default_config: str = DEFAULT_CONFIG, official: str = OFFICIAL_CKPT,
              url: str = OFFICIAL_URL, builtin_note: str = "", inpaint_mode: str = "auto") -> Run:
    """Every check that needs neither the runtime nor the weights; nothing is written."""
    import warnings

    from ..config import load_config
    from ..utils.images import check_output_dir
    from ..utils.prompts import read_prompts_file
    from ..ldm.config import ldm_config_defaults
    from ..ldm.pipeline import LDMPipeline, PromptWarning

    warnings.simplefilter("always", PromptWarning)
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
    cfg_path, ckpt, builtin = resolve_model(args, default_config, official, url, builtin_note)
    cfg = load_config(cfg_path, args.set, ldm_config_defaults())
    if ckpt is None:
        ckpt = Path(args.ckpt_path).expanduser() / (args.ckpt_name or str(cfg.checkpoint.name))
    if task == "inpaint":
        check_inpaint_mode(cfg, cfg_path, inpaint_mode)
    sampler = args.sampler or ("dpm_solver" if args.dpm_solver else None)
    if args.sampler and args.dpm_solver and args.sampler != "dpm_solver":
        raise ValueError(f"--dpm_solver conflicts with --sampler {args.sampler}: pass one of them")
    prompt_arg = args.prompt if args.prompt is not None else str(cfg.sampling.default_prompt)
    prompts = read_prompts_file(Path(args.data_path) / prompt_arg,
                                "--data_path is the folder, --prompt the file name inside it") \
        if args.data_path else [prompt_arg]
    for name in ("n_samples", "n_iter"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ValueError(f"--{name} must be >= 1, got {v}")
    # every check and default lives in the pipeline; done before the checkpoint is read
    a = LDMPipeline.check_inputs(
        cfg, prompts, negative_prompt=args.negative_prompt, height=args.H, width=args.W,
        num_inference_steps=args.ddim_steps, guidance_scale=args.scale, sampler=sampler,
        seed=args.seed, flags={"num_inference_steps": "--ddim_steps", "guidance_scale": "--scale"}, task=task)
    if args.ddim_eta != 0.0 and a["sampler"] != "ddim":
        raise ValueError(f"--ddim_eta applies to --sampler ddim only (got sampler {a['sampler']})")
    LDMPipeline.check_checkpoint(cfg, ckpt)
    from ..ldm.lora import lora_specs_from_args

    loras = lora_specs_from_args(args)
    check_output_dir(args.output_path, subfolders=("samples", "grids"), create=False)
    if builtin:
        warn_outside_world(prompts)
    return Run(args, cfg, cfg_path, ckpt, builtin, prompts, a, loras)


def start_run(run: Run, task: str = "txt2img"):
    """Runtime, memory check, the pipeline (strict load), then the output folder; returns the
    pipeline."""
    from ..runtime import cli_options, init_runtime
    from ..utils.images import check_output_dir
    from ..ldm.model import size_multiple
    from ..ldm.pipeline import LDMPipeline

    args, a = run.args, run.a
    # the compile-cache key: what decides the graphs (config, shapes, guidance, LoRA layers), not
    # the prompt, seed or, for image editing, the image, mask, strength or output folder: the init
    # image and mask are fitted to H x W before any graph sees them, and every value that changes
    # between calls reaches the graphs as a tensor input (tests/test_compile_cache.py checks an
    # edit from the cache against one compiled afresh)
    key = {"task": task, "config": run.cfg, "H": a["height"], "W": a["width"], "n_samples": args.n_samples,
           "guided": a["guidance_scale"] != 1.0, "vocab": args.vocab,
           "lora_mode": args.lora_mode if run.loras else None,
           "lora": [[str(p), w, p.stat().st_size, p.stat().st_mtime_ns] for p, w in run.loras],
           "inpaint_mode": getattr(args, "inpaint_mode", None)}
    run.rt = rt = init_runtime(args.device_target, args.mode, seed=a["seed"], precision=args.precision,
                               cache_key=key, **cli_options(args))
    on_cpu = rt.device_target == "CPU"
    run.n_samples = args.n_samples or (1 if on_cpu else 8)
    run.n_iter = args.n_iter or (1 if on_cpu else 2)
    if on_cpu and (args.n_samples is None or args.n_iter is None):
        print(f"CPU run: {run.n_samples} image(s) x {run.n_iter} iteration(s) per prompt "
              f"(pass --n_samples / --n_iter for more)")
    if not args.force_memory:  # one call holds n_samples images at H x W
        from ..utils.resources import ldm_memory_check

        ldm_memory_check(run.cfg.model, run.n_samples, a["height"], a["width"], rt.device_target,
                         size_multiple(run.cfg.model), Path(run.ckpt).stat().st_size)
    t0 = time.time()
    try:
        pipe = LDMPipeline.from_pretrained(run.cfg_path, run.ckpt, vocab=args.vocab, overrides=args.set,
                                           compute_dtype=rt.precision.ms_dtype())
    except Exception as exc:
        _explain_channel_mismatch(exc, run.ckpt, task)
        raise
    print(f"loaded {run.ckpt} in {time.time() - t0:.1f} s")
    from ..ldm.lora import apply_lora_specs

    apply_lora_specs(pipe, run.loras, args.lora_mode)
    run.out = check_output_dir(args.output_path, subfolders=("samples", "grids"))
    return pipe


def _explain_channel_mismatch(exc, ckpt, task: str):
    """A checkpoint whose UNet input differs from its config only in channels: say which script
    (and config) fits it, in one line."""
    from ..checkpoint.io import CheckpointError, CheckpointMismatchError

    report = getattr(exc, "report", None)
    if not isinstance(exc, CheckpointMismatchError) or report is None or report.missing or report.unexpected:
        return
    first = [(n, a, b) for n, a, b in report.mismatched if "diffusion_model.input_blocks.0.0." in n
             and n.endswith("weight")]
    if len(first) != 1 or len(report.mismatched) != 1:
        return
    got, want = tuple(first[0][1])[1], tuple(first[0][2])[1]
    if got > want:
        raise CheckpointError(f"{ckpt} is an inpainting checkpoint (its UNet takes {got} input channels: "
                              f"latents, mask, masked image): run it with scripts/inpaint.py and its inpainting "
                              f"config; scripts/{task}.py and this config need a {want}-channel text-to-image "
                              f"checkpoint") from None
    raise CheckpointError(f"{ckpt} is a text-to-image checkpoint (its UNet takes {got} input channels) but the "
                          f"config describes an inpainting UNet ({want}): run it with its text-to-image config "
                          f"(scripts/inpaint.py --inpaint_mode blend, img2img.py or txt2img.py)") from None


def batch_settings(pipe, a: dict, prompt: str, seed: int, result=None, inputs=None) -> dict:
    """What every PNG of a batch records (the scripts and the web page): the run's settings
    (``a``: the pipeline's checked inputs), the editing settings of ``result`` and the input
    files' (:class:`~mind_diffusion.utils.edit_inputs.EditInputs`)."""
    settings = pipe.settings(prompt=prompt, negative_prompt=a["negative_prompt"], sampler=a["sampler"],
                             steps=a["num_inference_steps"], scale=a["guidance_scale"], seed=seed,
                             height=a["height"], width=a["width"])
    extra = getattr(result, "settings", None) or {}
    settings.update({k: extra[k] for k in EDIT_SETTINGS if k in extra})
    if inputs is not None:
        settings.update(inputs.settings())
    return settings


def blend_note(cfg, ckpt, inpaint_mode: str) -> str | None:
    """The one line that says inpainting runs by blended latent diffusion (``auto`` with a
    text-to-image model), else None."""
    from ..ldm.model import is_inpaint_unet

    if inpaint_mode != "auto" or is_inpaint_unet(cfg.model):
        return None
    return (f"note: the UNet of {Path(ckpt).name} takes {cfg.model.unet.in_channels} input channels (a "
            f"text-to-image model), so this inpaints by blended latent diffusion")


def generate(run: Run, pipe, call: Callable, inputs=None):
    """The output loop: for each prompt and iteration, ``call(prompt, n, seed)`` ->
    DiffusionOutput; every image to ``samples/NNNNN.png`` (its own seed, the run's settings, the
    editing settings of the result and of ``inputs`` (:class:`~mind_diffusion.utils.edit_inputs.EditInputs`)),
    one grid per call to ``grids/NNNNN.png`` (init | mask | results for an edit)."""
    from ..utils.images import save_batch

    args, a, out = run.args, run.a, run.out
    samples_dir = out / "samples"
    head = inputs.grid_head() if inputs is not None else []
    for prompt in run.prompts:
        for it in range(run.n_iter):
            seed = a["seed"] if args.fixed_code else a["seed"] + it * run.n_samples
            t0 = time.time()
            result = call(prompt, run.n_samples, seed)
            images = result.images
            print(f"the infer time of a batch is {time.time() - t0:.2f} s")
            settings = batch_settings(pipe, a, prompt, seed, result, inputs)
            run.written += save_batch(out, images, settings, seed, min(run.n_samples, 4),
                                      samples=not args.skip_save, grid=not args.skip_grid, head=head)
    print(f"wrote {len(run.written)} images to {samples_dir}"
          + ("" if args.skip_grid else f" and grids to {out / 'grids'}"))
