"""Host-memory guard for sampling: an estimate of the peak resident memory of one LDM pipeline
call from size x batch x model, checked against the memory that is free before anything loads.

What was measured (bench/sampling_memory.py, results in bench/results/sampling_memory.csv):
peak RSS (VmHWM) of a fresh process that loads the built-in shapes model (models/shapes_zh:
UNet width 64, 4 latent channels, VAE factor 4, VAE width 16, a 15.8 MB checkpoint) and runs
one call on CPU, graph mode, fp32, guidance on (2 x batch UNet rows), at 64/128/192 px and
batch 1/2/4, once stopping at the latents and once through the VAE decode. Both fit
``peak = base + slope x batch x H x W`` by least squares (errors in ``MEASURED``); the latent
slope is the UNet's part per image pixel, decode minus latent what the VAE decode adds on top
(small for this model: its decoder's peak barely exceeds the UNet's, since the peak is a
maximum over the call, not a sum).

What is extrapolated (not measured):
- other models: activation memory of a convolutional network is (channels x pixels) per
  layer, so the UNet part is scaled by UNet width / 64 x (4 / VAE factor)^2 (the UNet runs on
  H/f x W/f latents), the VAE part by (VAE width x ch_mult[0]) / 16 (its full-resolution
  decoder blocks). For a model whose VAE decode dominates the peak (the 128-wide full-size
  decoder of Wukong / SD) this VAE term, measured as an excess over a small decoder, likely
  underestimates. The latent channel count (4 in every model here) only sizes the latents
  themselves, a negligible term, so it is not a factor.
- weights: the fit's base holds the shapes model; a bigger checkpoint adds 2 x its extra
  file size (the file read into a dict, then copied into the parameters).
- sizes beyond 192 px: linear in pixels. Self-attention scores grow with pixels squared; at
  the measured sizes they are inside the fit error, so for large sizes on a model with
  attention at full latent resolution (Wukong / SD at >= 512 px) the estimate is a lower bound.
- devices: only the host (CPU) run is checked. On GPU / Ascend the activations live in device
  memory, which this module cannot read, so :func:`ldm_memory_check` skips the check there.
"""
from __future__ import annotations

import os
from pathlib import Path

# fitted by bench/sampling_memory.py (see the module docstring); bytes and bytes per pixel
MEASURED = {
    # bench/results/sampling_memory.csv (18 rows, 1 step, 2-core CPU): decode rows
    # 870-1311 MiB, latent rows 847-1273 MiB
    "base": 906_672_151.0,   # decode-row intercept: runtime, compiled graphs, shapes model (bytes)
    "unet_per_px": 3091.0087,  # latent-row slope: bytes per image pixel per image
    "vae_per_px": 105.1591,    # decode slope (3196.1679) - latent slope: what the decode adds
    "max_err": 23_384_000.0,   # largest |fit - measured| over the decode rows (2.2 %)
    "model": {"unet_width": 64, "vae_factor": 4, "vae_width": 16, "ckpt_bytes": 15770069},
}
HEADROOM = 0.9  # an estimate must stay under this fraction of the free memory
# GLIDE images per pipeline call (scripts/glide_txt2img.py runs a larger count in calls of this
# many, image k keeping seed + k, and writes each call's images before the next starts): 8 is
# the original's default count per call. Not measured here (the GLIDE weights are not in the
# repository); the SRGAN 1024 px stage already runs one image at a time.
IMAGES_PER_CALL = 8


def free_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux); else free physical pages via sysconf; None
    when neither is readable."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB"


def check_memory(estimate_bytes: float, what: str, fits_hint: str, force_flag: str,
                 free: int | None = None) -> None:
    """Raise a one-line ValueError when ``estimate_bytes`` exceeds ``HEADROOM`` x the free
    memory: the estimate, what is free, ``fits_hint`` (the largest size / batch that fits) and
    the flag that skips the check. Unknown free memory passes."""
    free = free_memory_bytes() if free is None else free
    if free is None or estimate_bytes <= HEADROOM * free:
        return
    raise ValueError(f"{what} needs about {gb(estimate_bytes)} of memory (estimate), only "
                     f"{gb(free)} is free; {fits_hint}, or pass {force_flag} to run it anyway")


def _model_dims(model_cfg) -> dict:
    from ..config import to_plain

    m = to_plain(model_cfg)
    return {"unet_width": int(m["unet"]["model_channels"]), "vae_factor": 2 ** (len(m["vae"]["ch_mult"]) - 1),
            "vae_width": int(m["vae"]["ch"]) * int(m["vae"]["ch_mult"][0])}


def ldm_per_pixel(model_cfg) -> float:
    """Bytes per image pixel per image for this model (see the module docstring)."""
    d, ref = _model_dims(model_cfg), MEASURED["model"]
    unet = MEASURED["unet_per_px"] * d["unet_width"] / ref["unet_width"] * (ref["vae_factor"] / d["vae_factor"]) ** 2
    vae = MEASURED["vae_per_px"] * d["vae_width"] / ref["vae_width"]
    return unet + vae


def ldm_peak_bytes(model_cfg, batch: int, height: int, width: int, ckpt_bytes: int | None = None) -> float:
    """Estimated peak host memory of one LDM pipeline call of ``batch`` images at height x width."""
    extra = 0 if ckpt_bytes is None else max(0, ckpt_bytes - MEASURED["model"]["ckpt_bytes"])
    return MEASURED["base"] + 2 * extra + ldm_per_pixel(model_cfg) * batch * height * width


def ldm_largest(model_cfg, budget: float, batch: int, height: int, width: int, multiple: int,
                ckpt_bytes: int | None = None) -> tuple:
    """(largest batch at height x width, largest square side at ``batch``, a multiple of
    ``multiple``) whose estimate is within ``budget`` bytes; 0 where none fits."""
    fixed = ldm_peak_bytes(model_cfg, 0, height, width, ckpt_bytes)
    per_px = ldm_per_pixel(model_cfg)
    room = max(0.0, budget - fixed)
    n = int(room // (per_px * height * width))
    side = int((room / (per_px * batch)) ** 0.5) // multiple * multiple
    return n, side


def ldm_memory_check(model_cfg, batch: int, height: int, width: int, device_target: str,
                     multiple: int, ckpt_bytes: int | None = None, force_flag: str = "--force_memory",
                     batch_flag: str = "--n_samples", free: int | None = None) -> float | None:
    """Refuse (ValueError, one line) a CPU call whose estimate exceeds the free host memory;
    returns the estimate, or None where the check does not apply (GPU / Ascend: device memory
    is not readable here, and the host only holds the weights)."""
    if str(device_target).upper() != "CPU":
        return None
    est = ldm_peak_bytes(model_cfg, batch, height, width, ckpt_bytes)
    free = free_memory_bytes() if free is None else free
    if free is None:
        return est
    n, side = ldm_largest(model_cfg, HEADROOM * free, batch, height, width, multiple, ckpt_bytes)
    fits = ([f"{batch_flag} {n} at {height}x{width} (more images with --n_iter)"] if n >= 1 else []) + \
        ([f"{side}x{side} at {batch_flag} {batch}"] if side >= multiple else [])
    check_memory(est, f"{batch} image(s) of {height}x{width} per call",
                 "the largest that fits is " + " or ".join(fits) if fits else "not even the smallest size fits",
                 force_flag, free)
    return est


def chunks(total: int, size: int) -> list:
    """(offset, count) pairs covering ``total`` items ``size`` at a time."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    return [(o, min(size, total - o)) for o in range(0, total, size)]
