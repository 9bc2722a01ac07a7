"""Init images and masks for image editing (img2img, inpainting): reading PNG/JPG files with one
clear line for every bad input, fitting them to the size the model runs at, and the settings
every output PNG records about them.

Conventions (as the original Wukong-Huahua ``inpaint.py``):

* the init image is read as RGB (an alpha channel is dropped, grey and palette images are
  expanded); the mask as grey levels, **white = repaint**, binarized at 127.5 after fitting,
  so the pipeline gets exactly 0 / 255;
* the mask must have the init image's size (a mask of another size is refused, not stretched);
* both are fitted to the run's ``height x width`` by ``aug``:
  ``"resize"`` (the default, the original's: stretched to H x W; when the aspect differs a note
  says so), ``"cover"`` (scaled keeping the aspect until H x W is covered, then centre-cropped),
  ``"crop"`` (the original's: an H x W window centred on the mask, no scaling) and
  ``"resizecrop"`` (the original's: a square window of the mask's extent / ``mask_ratio`` around
  the mask, scaled to H x W); the last two need a mask;
* a mask with nothing white (nothing to repaint) and a mask that is white everywhere (nothing of
  the init image kept: that is text-to-image) are refused, both after fitting.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["AUGS", "EditInputError", "EditInputs", "LoadedImage", "fit_edit_inputs", "load_edit_inputs",
           "read_image", "read_mask", "strength_error"]

AUGS = ("resize", "cover", "crop", "resizecrop")


class EditInputError(ValueError):
    """An init image or mask that cannot be used; the message says which file and what to do."""


@dataclass
class LoadedImage:
    """Pixels (uint8, (H,W,3) for an image, (H,W) for a mask), the file and its sha256."""

    array: np.ndarray
    path: str
    sha256: str

    @property
    def size(self) -> str:
        return f"{self.array.shape[1]}x{self.array.shape[0]}"


def _read_bytes(path, what: str, flag: str) -> tuple[Path, bytes]:
    p = Path(path).expanduser()
    if not p.exists():
        raise EditInputError(f"{what} not found: {p}; pass an existing PNG or JPG file with {flag}")
    if p.is_dir():
        raise EditInputError(f"{what} {p} is a folder; pass a PNG or JPG file with {flag}")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise EditInputError(f"cannot read {what} {p}: {exc.strerror}") from None
    if not data:
        raise EditInputError(f"{what} {p} is an empty file; pass a PNG or JPG image with {flag}")
    return p, data


def _decode(data: bytes, p: Path, what: str, flag: str, mode: str) -> np.ndarray:
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if mode == "RGB" and im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA").convert("RGB")  # drop alpha, keep the colours
            arr = np.asarray(im.convert(mode))
    except UnidentifiedImageError:
        raise EditInputError(f"{what} {p} is not an image PIL can read (corrupt or another format); "
                             f"pass a PNG or JPG with {flag}") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or damaged data
        raise EditInputError(f"{what} {p} is damaged ({str(exc).strip() or type(exc).__name__}); "
                             f"pass a complete PNG or JPG with {flag}") from None
    if min(arr.shape[:2]) < 1:
        raise EditInputError(f"{what} {p} has no pixels")
    return np.ascontiguousarray(arr, dtype=np.uint8)


def read_image(path, what: str = "init image", flag: str = "--init_img") -> LoadedImage:
    """An RGB uint8 (H,W,3) image from a PNG/JPG (or any format PIL reads), with its sha256."""
    p, data = _read_bytes(path, what, flag)
    return LoadedImage(_decode(data, p, what, flag, "RGB"), str(p), hashlib.sha256(data).hexdigest())


def read_mask(path, what: str = "mask", flag: str = "--mask") -> LoadedImage:
    """A grey uint8 (H,W) mask (white = repaint; colour masks by their luminance), with its
    sha256. Not binarized yet: that happens after fitting (:func:`fit_edit_inputs`)."""
    p, data = _read_bytes(path, what, flag)
    return LoadedImage(_decode(data, p, what, flag, "L"), str(p), hashlib.sha256(data).hexdigest())


def _resize(arr: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    if arr.shape[1] == width and arr.shape[0] == height:
        return arr
    return np.asarray(Image.fromarray(arr).resize((width, height), Image.BICUBIC))


def _mask_window(mask: np.ndarray, win_w: int, win_h: int) -> tuple[int, int]:
    """Top-left corner of a win_w x win_h window centred on the mask's white pixels, kept inside
    the image (the original's ``crop``: centre = mean of the white pixels' coordinates)."""
    ys, xs = np.nonzero(mask > 127.5)
    h, w = mask.shape
    cx = int(np.clip(int(xs.mean()), win_w // 2, w - win_w // 2))
    cy = int(np.clip(int(ys.mean()), win_h // 2, h - win_h // 2))
    return cx - win_w // 2, cy - win_h // 2


def fit_edit_inputs(image: np.ndarray, mask: np.ndarray | None, height: int, width: int,
                    aug: str = "resize", mask_ratio: float = 0.75) -> tuple[np.ndarray, np.ndarray | None, list]:
    """(image (height,width,3), mask (height,width) of exactly 0/255 or None, notes): the init image
    and mask fitted to the run's size by ``aug`` (see the module text). ``notes``: lines the
    caller shows (e.g. that the aspect changed)."""
    if aug not in AUGS:
        raise EditInputError(f"--aug must be one of {', '.join(AUGS)}, got {aug!r}")
    h0, w0 = image.shape[:2]
    notes = []
    if aug in ("crop", "resizecrop"):
        if mask is None:
            raise EditInputError(f"--aug {aug} places its window around the mask; img2img has none: "
                                 f"use --aug resize or cover")
        if not (mask > 127.5).any():
            raise EditInputError("the mask has no white pixel: nothing to repaint; paint the region to "
                                 "repaint white (255) on black")
    if aug == "crop":
        if h0 < height or w0 < width:
            raise EditInputError(f"--aug crop cuts a {width}x{height} window from the init image, which is "
                                 f"only {w0}x{h0}; use --aug resize or pass a smaller --H/--W")
        x, y = _mask_window(mask, width, height)
        image, mask = image[y:y + height, x:x + width], mask[y:y + height, x:x + width]
        notes.append(f"note: --aug crop: the {width}x{height} window at ({x}, {y}) of the "
                     f"{w0}x{h0} init image is edited")
    elif aug == "resizecrop":
        if not 0.0 < mask_ratio <= 1.0:
            raise EditInputError(f"--mask_ratio must be in (0, 1], got {mask_ratio}")
        ys, xs = np.nonzero(mask > 127.5)
        extent = max(int(ys.max() - ys.min()), int(xs.max() - xs.min()), 1)
        side = min(math.ceil(extent / mask_ratio), h0, w0)
        x, y = _mask_window(mask, side, side)
        image = _resize(np.ascontiguousarray(image[y:y + side, x:x + side]), width, height)
        mask = _resize(np.ascontiguousarray(mask[y:y + side, x:x + side]), width, height)
        notes.append(f"note: --aug resizecrop: the {side}x{side} window at ({x}, {y}) of the "
                     f"{w0}x{h0} init image is scaled to {width}x{height} and edited")
    elif aug == "cover":
        s = max(width / w0, height / h0)
        sw, sh = max(width, round(w0 * s)), max(height, round(h0 * s))
        x, y = (sw - width) // 2, (sh - height) // 2
        image = _resize(image, sw, sh)[y:y + height, x:x + width]
        if mask is not None:
            mask = _resize(mask, sw, sh)[y:y + height, x:x + width]
    else:
        if abs(w0 * height - h0 * width) > max(w0, h0):  # aspect differs by more than a pixel
            notes.append(f"note: the {w0}x{h0} init image is stretched to {width}x{height} (another "
                         f"aspect); pass --H/--W of its aspect, or --aug cover to crop instead")
        image = _resize(image, width, height)
        if mask is not None:
            mask = _resize(mask, width, height)
    if mask is not None:
        mask = np.where(mask > 127.5, 255, 0).astype(np.uint8)
    return np.ascontiguousarray(image), mask if mask is None else np.ascontiguousarray(mask), notes


def check_mask_coverage(mask: np.ndarray, path: str = "the mask") -> None:
    """Refuse a mask (0/255, after fitting) with nothing to repaint, or with nothing to keep."""
    white = int((mask > 0).sum())
    if white == 0:
        raise EditInputError(f"mask {path} has no white pixel at the run's size: nothing to repaint; "
                             f"paint the region to repaint white (255) on black")
    if white == mask.size:
        raise EditInputError(f"mask {path} is white everywhere: nothing of the init image would be kept; "
                             f"use scripts/txt2img.py (or img2img.py), or paint the part to keep black")


def strength_error(strength, flag: str = "--strength") -> str | None:
    """None for a strength in (0, 1], else the one-line message."""
    ok = not isinstance(strength, bool) and isinstance(strength, (int, float, np.floating)) \
        and np.isfinite(strength) and 0.0 < strength <= 1.0
    return None if ok else (f"{flag} must be in (0, 1] (the fraction of the schedule that is redone: "
                            f"0.6-0.8 keeps the layout, 1 starts from noise), got {strength!r}")


@dataclass
class EditInputs:
    """The fitted init image (and mask), their files' sha256 and the notes to show."""

    image: np.ndarray
    init: LoadedImage
    mask: np.ndarray | None = None
    mask_file: LoadedImage | None = None
    aug: str = "resize"
    notes: list = field(default_factory=list)

    def settings(self) -> dict:
        """What every output PNG records about the input files (name, sha256 of the file's bytes,
        size before fitting); the pipeline adds the sha256 of the pixels it ran on."""
        out = {"init_image_file": Path(self.init.path).name, "init_image_file_sha256": self.init.sha256,
               "init_image_file_size": self.init.size}
        if self.mask_file is not None:
            out.update(mask_file=Path(self.mask_file.path).name, mask_file_sha256=self.mask_file.sha256)
        if self.aug != "resize":
            out["aug"] = self.aug
        return out

    def grid_head(self) -> list:
        """The images a grid starts with: init | mask (as RGB)."""
        head = [self.image]
        if self.mask is not None:
            head.append(np.repeat(self.mask[..., None], 3, axis=-1))
        return head


def load_edit_inputs(init_path, height: int, width: int, mask_path=None, *, aug: str = "resize",
                     mask_ratio: float = 0.75, init_flag: str = "--init_img", mask_flag: str = "--mask") -> EditInputs:
    """Read, check and fit an init image (and mask) for a run at ``height x width``."""
    init = read_image(init_path, "init image", init_flag)
    mask_file = None
    if mask_path is not None:
        mask_file = read_mask(mask_path, "mask", mask_flag)
        if mask_file.array.shape != init.array.shape[:2]:
            raise EditInputError(f"mask {mask_file.path} is {mask_file.size} but the init image {init.path} is "
                                 f"{init.size}: they must be the same size (white = repaint)")
    image, mask, notes = fit_edit_inputs(init.array, None if mask_file is None else mask_file.array,
                                         height, width, aug, mask_ratio)
    if mask is not None:
        check_mask_coverage(mask, mask_file.path)
    return EditInputs(image, init, mask, mask_file, aug, notes)
