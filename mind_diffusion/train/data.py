"""Training data: readers for user-supplied datasets and a deterministic, resumable,
rank-sharded batch stream fed through ``mindspore.dataset``.

Readers return ``(images uint8 N x H x W x C, labels int64 N, class_names)``:
- ``read_cifar10``: the official ``cifar-10-python.tar.gz`` (or its extracted
  ``cifar-10-batches-py`` folder), read with a restricted unpickler (no code execution) and
  checked against the published md5 sums when the tarball is given.
- ``read_image_folder``: ``root/<class name>/*.png|jpg|...``, one sub-folder per class.
- ``read_digits``: scikit-learn's bundled 8x8 digits, upscaled (a real dataset that ships
  offline with scikit-learn).

Batches (:class:`GlobalOrder`, :func:`shard_rows`): the data order is the global sample
sequence. For update ``s`` the global batch of ``G`` samples is rows ``[s*G, (s+1)*G)`` of the
sequence of seeded epoch permutations of the whole dataset (``default_rng([seed, epoch, 7])``,
the incomplete last batch of an epoch dropped), and its per-sample randomness (flips / timesteps /
noise) comes from ``default_rng([seed, s, ...])`` for all ``G`` rows at once. With ``W`` workers
and ``A`` accumulated micro-batches of ``b = G / (W * A)`` rows, rank ``r`` takes rows
``[r*A*b, (r+1)*A*b)`` and feeds them as micro-batches ``m = 0..A-1`` of ``b`` rows each (global
rows ``(r*A + m)*b ...``). So a run resumed at update ``s`` sees exactly the data an
uninterrupted run would, whatever ``W`` and ``A`` are as long as ``G`` is unchanged (the
checkpoint records ``G`` and the samples consumed, ``s * G``), and the workers together see
exactly the batch one process would.
"""
from __future__ import annotations

import csv
import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


class DataError(ValueError):
    """The dataset at a user path is missing or malformed; the message says how to fix it."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds dicts / lists / numpy arrays and nothing else (CIFAR batches need no more)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2 (pure data, no side effects)
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _load_cifar_batch(raw: bytes, name: str, origin: str):
    try:
        d = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()
        data = np.asarray(d["data"], dtype=np.uint8)
        labels = np.asarray(d["labels"], dtype=np.int64)
    except Exception as exc:
        raise DataError(f"{origin}: member {name} is not a CIFAR-10 python batch ({exc}); "
                        f"use the official cifar-10-python.tar.gz") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(f"{origin}: member {name} has data of shape {data.shape}, expected (N, 3072)")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def read_cifar10(path: str | Path, split: str = "train", verify_md5: bool = True):
    """Read CIFAR-10 from the official tarball or its extracted folder."""
    if split not in ("train", "test"):
        raise DataError(f"CIFAR-10 split must be 'train' or 'test', got {split!r}")
    p = Path(path).expanduser()
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    raws = {}
    if p.is_file():
        try:
            with tarfile.open(p, "r:*") as tar:
                members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
                for n in names:
                    if n not in members:
                        raise DataError(f"{p} has no member {n}: not the CIFAR-10 python tarball "
                                        f"(expected cifar-10-python.tar.gz)")
                    raws[n] = tar.extractfile(members[n]).read()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DataError(f"{p} is not a readable tar archive ({exc}); re-download cifar-10-python.tar.gz") from None
        if verify_md5:
            for n, raw in raws.items():
                if hashlib.md5(raw).hexdigest() != CIFAR10_MD5[n]:
                    raise DataError(f"{p}: member {n} fails its md5 check (corrupt or modified archive); "
                                    f"re-download it or pass verify_md5=False")
    elif p.is_dir():
        folder = p / "cifar-10-batches-py" if (p / "cifar-10-batches-py").is_dir() else p
        for n in names:
            f = folder / n
            if not f.is_file():
                raise DataError(f"CIFAR-10 folder {folder} lacks {n}; point to cifar-10-python.tar.gz "
                                f"or its extracted cifar-10-batches-py folder")
            raws[n] = f.read_bytes()
    else:
        raise DataError(f"CIFAR-10 not found at {p}: download cifar-10-python.tar.gz and pass its path")
    parts = [_load_cifar_batch(raws[n], n, str(p)) for n in names]
    images = np.concatenate([a for a, _ in parts])
    labels = np.concatenate([b for _, b in parts])
    return images, labels, list(CIFAR10_CLASSES)


def _read_image(path: Path, channels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB" if channels == 3 else "L")
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None
    return arr if arr.ndim == 3 else arr[:, :, None]


def read_image_folder(root: str | Path, image_size: int, channels: int = 3, resize: bool = False):
    """``root/<class>/*.png``: classes sorted by folder name give ids 0..K-1."""
    import cv2

    r = Path(root).expanduser()
    if not r.is_dir():
        raise DataError(f"data folder not found: {r} (expected one sub-folder of images per class)")
    classes = sorted(d.name for d in r.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{r} has no class sub-folders; put images in {r}/<class name>/*.png")
    images, labels = [], []
    for cid, cname in enumerate(classes):
        files = sorted(f for f in (r / cname).iterdir() if f.suffix.lower() in IMAGE_EXTS)
        for f in files:
            img = _read_image(f, channels)
            if img.shape[:2] != (image_size, image_size):
                if not resize:
                    raise DataError(f"{f} is {img.shape[1]}x{img.shape[0]}, the model expects "
                                    f"{image_size}x{image_size}: resize the images or set data.resize=true")
                img = cv2.resize(img, (image_size, image_size), interpolation=cv2.INTER_AREA)
                img = img if img.ndim == 3 else img[:, :, None]
            images.append(img)
            labels.append(cid)
    if not images:
        raise DataError(f"{r}: no images ({', '.join(sorted(IMAGE_EXTS))}) in its class folders")
    return np.stack(images), np.asarray(labels, np.int64), classes


def read_digits(image_size: int = 16):
    """scikit-learn's 1797 8x8 digits (values 0..16) upscaled bilinearly to image_size, uint8."""
    import cv2
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = (d.images.astype(np.float32) * (255.0 / 16.0))
    if image_size != 8:
        imgs = np.stack([cv2.resize(im, (image_size, image_size), interpolation=cv2.INTER_LINEAR) for im in imgs])
    imgs = np.clip(np.rint(imgs), 0, 255).astype(np.uint8)[..., None]
    return imgs, d.target.astype(np.int64), [str(i) for i in range(10)]


def load_dataset(kind: str, path: str | None, image_size: int, channels: int, resize: bool = False):
    if kind == "cifar10":
        if not path:
            raise DataError("data.kind=cifar10 needs data.path=/path/to/cifar-10-python.tar.gz")
        images, labels, classes = read_cifar10(path)
    elif kind == "folder":
        if not path:
            raise DataError("data.kind=folder needs data.path=/path/to/root with one folder per class")
        images, labels, classes = read_image_folder(path, image_size, channels, resize)
    elif kind == "digits":
        images, labels, classes = read_digits(image_size)
    else:
        raise DataError(f"unknown data.kind {kind!r}: use cifar10, folder or digits")
    if images.shape[1:3] != (image_size, image_size):
        raise DataError(f"{kind} images are {images.shape[2]}x{images.shape[1]} but the model is configured "
                        f"for {image_size}x{image_size}: set model.image_size={images.shape[1]}")
    if images.shape[3] != channels:
        raise DataError(f"{kind} images have {images.shape[3]} channels, the model expects {channels} "
                        f"(set model.img_channels={images.shape[3]})")
    return images, labels, classes


def check_global_batch(global_batch: int, workers: int, accum_steps: int,
                       what: str = "train.batch_size") -> int:
    """The micro-batch ``b = global_batch / (workers * accum_steps)``, or a :class:`DataError`
    saying which sizes divide."""
    global_batch, workers, accum_steps = int(global_batch), int(workers), int(accum_steps)
    split = workers * accum_steps
    if global_batch < 1 or global_batch % split:
        lo = max(split, global_batch // split * split)
        hi = (global_batch // split + 1) * split
        sizes = f"{lo} or {hi}" if lo != hi else f"{hi}"
        raise DataError(f"{what}={global_batch} (the global batch) must be divisible by {workers} worker(s) x "
                        f"train.grad_accum_steps={accum_steps} = {split}: use {what}={sizes}, or change "
                        f"train.grad_accum_steps")
    return global_batch // split


def shard_rows(global_batch: int, workers: int, accum_steps: int, rank: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of the global batch that ``rank`` takes (its ``accum_steps``
    micro-batches, in order). Pure: the same for every process."""
    b = check_global_batch(global_batch, workers, accum_steps)
    if not 0 <= int(rank) < int(workers):
        raise ValueError(f"rank {rank} out of range for {workers} worker(s)")
    per_rank = b * int(accum_steps)
    return int(rank) * per_rank, (int(rank) + 1) * per_rank


def micro_batches(arrays, accum_steps: int) -> list[tuple]:
    """A rank's batch (a tuple of arrays with ``A * b`` rows) as ``A`` micro-batches of ``b`` rows."""
    arrays = tuple(arrays)
    n = len(arrays[0])
    if n % int(accum_steps):
        raise ValueError(f"a batch of {n} rows does not split into {accum_steps} micro-batches")
    b = n // int(accum_steps)
    return [tuple(np.ascontiguousarray(a[m * b:(m + 1) * b]) for a in arrays) for m in range(int(accum_steps))]


class GlobalOrder:
    """The global sample sequence: update ``step`` takes samples ``[step*G, (step+1)*G)`` of the
    concatenated epoch orders (seeded permutations when ``shuffle``, else 0..N-1; each epoch's
    incomplete last batch dropped). A function of (num_samples, global_batch, seed) only: no
    worker count, no accumulation."""

    def __init__(self, num_samples: int, global_batch: int, seed: int = 0, shuffle: bool = True):
        self.num_samples, self.global_batch = int(num_samples), int(global_batch)
        self.seed, self.shuffle = int(seed), bool(shuffle)
        self.steps_per_epoch = self.num_samples // self.global_batch  # drop_last
        self._perm_epoch, self._perm = -1, None

    def permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_samples)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch, 7]).permutation(self.num_samples)
            self._perm_epoch = epoch
        return self._perm

    def indices(self, step: int) -> np.ndarray:
        epoch, pos = divmod(int(step), self.steps_per_epoch)
        return self.permutation(epoch)[pos * self.global_batch:(pos + 1) * self.global_batch]

    def samples_seen(self, step: int) -> int:
        """The global position after ``step`` updates."""
        return int(step) * self.global_batch


class DiffusionBatches:
    """Random-access source: item ``step`` -> this rank's (x0, y, t, noise) for that update
    (``accum_steps`` micro-batches of ``global_batch / (group_size * accum_steps)`` rows, stacked)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, global_batch: int, num_timesteps: int,
                 seed: int = 0, rank: int = 0, group_size: int = 1, random_flip: bool = False,
                 accum_steps: int = 1):
        if len(images) < global_batch:
            raise DataError(f"the dataset has {len(images)} images, fewer than one batch of {global_batch}; "
                            f"lower train.batch_size")
        check_global_batch(global_batch, group_size, accum_steps)
        self.images, self.labels = images, labels
        self.global_batch, self.num_timesteps = global_batch, num_timesteps
        self.seed, self.rank, self.group = seed, rank, group_size
        self.accum_steps = int(accum_steps)
        self.rows = shard_rows(global_batch, group_size, accum_steps, rank)
        self.local = self.rows[1] - self.rows[0]
        self.order = GlobalOrder(len(images), global_batch, seed, shuffle=True)
        self.steps_per_epoch = self.order.steps_per_epoch
        self.random_flip = random_flip

    def global_indices(self, step: int) -> np.ndarray:
        return self.order.indices(step)

    def describe_global_batch(self) -> str:
        return (f"train.batch_size={self.global_batch} is the global batch, over {self.group} worker(s) x "
                f"train.grad_accum_steps={self.accum_steps}")

    def reach_global_batch(self, target: int) -> str:
        """How to get the global batch ``target`` on this run's workers (for the resume error)."""
        if target % self.group:
            return f"set train.batch_size={target} and run on a worker count that divides it"
        if target % (self.group * self.accum_steps):
            return f"set train.batch_size={target} and a train.grad_accum_steps that divides {target // self.group}"
        return f"set train.batch_size={target}"

    def __getitem__(self, step: int):
        step = int(step)
        idx = self.global_indices(step)
        rng = np.random.default_rng([self.seed, step, 11])
        x = self.images[idx].astype(np.float32) / 127.5 - 1.0            # B,H,W,C in [-1,1]
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        flips = rng.random(len(idx)) < 0.5
        t = rng.integers(0, self.num_timesteps, size=len(idx)).astype(np.int32)
        noise = rng.standard_normal(x.shape).astype(np.float32)
        if self.random_flip:
            x[flips] = x[flips][..., ::-1]
        sl = slice(*self.rows)
        return (np.ascontiguousarray(x[sl]), self.labels[idx][sl].astype(np.int32), t[sl],
                np.ascontiguousarray(noise[sl]))

    def __len__(self):
        return 2**62


def make_dataset(source: DiffusionBatches, start_step: int, end_step: int):
    """A ``mindspore.dataset`` pipeline over steps [start_step, end_step) (background prefetch)."""
    import mindspore.dataset as ds

    return ds.GeneratorDataset(source, column_names=["x0", "y", "t", "noise"],
                               sampler=list(range(start_step, end_step)), shuffle=False,
                               num_parallel_workers=1, python_multiprocessing=False)


# ------------------------------------------------------------------------- image-text CSV folders
#: the columns of an image-text CSV file (Wukong-Huahua's ``ldm/data/dataset.py``)
IMAGE_COLUMN, TEXT_COLUMN = "dir", "text"


def check_image_size(image_size: int):
    if int(image_size) < 8:
        raise DataError(f"data.image_size must be >= 8, got {image_size}")


def read_csv_pairs(data_path: str | Path, need_text: bool = True) -> list[tuple[Path, str]]:
    """(image path, caption) for every row of ``data_path/*.csv`` (files sorted by name)."""
    root = Path(str(data_path)).expanduser()
    if not root.is_dir():
        raise DataError(f"data folder not found: {root} (data.path must be a folder holding *.csv "
                        f"files with columns '{IMAGE_COLUMN}' and '{TEXT_COLUMN}')")
    files = sorted(root.glob("*.csv"))
    if not files:
        raise DataError(f"{root} holds no *.csv file: add a CSV with columns '{IMAGE_COLUMN}' (image path "
                        f"relative to {root}) and '{TEXT_COLUMN}' (caption)")
    pairs, missing = [], []
    for f in files:
        try:
            with open(f, newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                cols = [c.strip() for c in (reader.fieldnames or [])]
                need = [IMAGE_COLUMN, TEXT_COLUMN] if need_text else [IMAGE_COLUMN]
                lacking = [c for c in need if c not in cols]
                if lacking:
                    raise DataError(f"{f} lacks column(s) {', '.join(repr(c) for c in lacking)} (it has "
                                    f"{cols}); the header must name '{IMAGE_COLUMN}' and '{TEXT_COLUMN}'")
                for row in reader:
                    row = {(k or "").strip(): v for k, v in row.items()}
                    rel = (row.get(IMAGE_COLUMN) or "").strip()
                    if not rel:
                        continue
                    p = root / rel
                    if not p.is_file():
                        missing.append(rel)
                    pairs.append((p, row.get(TEXT_COLUMN) or ""))
        except UnicodeDecodeError as exc:
            raise DataError(f"{f} is not UTF-8 text ({exc}); save the CSV as UTF-8") from None
        except csv.Error as exc:
            raise DataError(f"{f} is not a valid CSV file: {exc}") from None
    if missing:
        shown = ", ".join(missing[:5]) + (f" ... ({len(missing)} in all)" if len(missing) > 5 else "")
        raise DataError(f"{len(missing)} image file(s) listed in {root}/*.csv do not exist (paths are "
                        f"relative to {root}): {shown}")
    if not pairs:
        raise DataError(f"the CSV files in {root} list no images")
    return pairs


def _image_size_of(path: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


def load_rgb(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


def smallest_max_size(img: np.ndarray, size: int) -> np.ndarray:
    """albumentations ``SmallestMaxSize(size)``: scale so the short side is ``size`` (bilinear,
    the new sides rounded with Python's round)."""
    import cv2

    h, w = img.shape[:2]
    scale = size / float(min(h, w))
    if scale == 1.0:
        return img
    nh, nw = round(h * scale), round(w * scale)
    return cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)


def preprocess(img: np.ndarray, size: int, crop: tuple[float, float] | None = None,
               flip: bool = False) -> np.ndarray:
    """uint8 HWC -> float32 CHW in [-1, 1]. ``crop=None``: center crop; ``(u, v)`` in [0, 1):
    random-crop offsets (albumentations: ``int((H - size + 1) * u)``)."""
    img = smallest_max_size(img, size)
    h, w = img.shape[:2]
    if crop is None:
        y0, x0 = (h - size) // 2, (w - size) // 2
    else:
        y0, x0 = int((h - size + 1) * crop[0]), int((w - size + 1) * crop[1])
    img = img[y0:y0 + size, x0:x0 + size]
    if flip:
        img = img[:, ::-1]
    x = img.astype(np.float32) / 127.5 - 1.0
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def unreadable_images(paths) -> list[tuple[Path, str]]:
    """(path, reason) for every image in ``paths`` that does not decode in full (corrupt,
    truncated, not an image): each file is read once, as training would."""
    from PIL import Image

    bad = []
    for path in paths:
        try:
            with Image.open(path) as im:
                im.load()
                if min(im.size) < 1:
                    raise OSError("empty image")
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError ...
            bad.append((Path(path), str(exc).strip() or type(exc).__name__))
    return bad


#: what CSVImageText does with images that do not decode: not look (read lazily, as before),
#: skip them (counted, one line), or refuse the data (``--strict``)
VERIFY_MODES = ("off", "skip", "strict")


class ImageTextPairs:
    """(image path, caption) pairs read on demand: ``paths``, ``texts`` and ``image(i)``, the
    image center-cropped (or cropped at ``crop``, flipped) to ``image_size`` in [-1, 1]."""

    def __init__(self, pairs, image_size: int):
        check_image_size(image_size)
        self.paths = [p for p, _ in pairs]
        self.texts = [t for _, t in pairs]
        self.image_size = int(image_size)

    def __len__(self):
        return len(self.paths)

    def image(self, i: int, crop=None, flip: bool = False) -> np.ndarray:
        return preprocess(load_rgb(self.paths[i]), self.image_size, crop, flip)


class CSVImageText(ImageTextPairs):
    """The image-text pairs of a ``data.path`` folder (after the optional small-image filter).

    ``verify="skip"``: every image is decoded once up front and the unreadable ones are left out
    (``self.unreadable``, one line printed); ``"strict"``: any unreadable image is a
    :class:`DataError` naming them; ``"off"``: images are read only when used."""

    def __init__(self, data_path, image_size: int = 512, filter_small_size: bool = True,
                 image_filter_size: int = 256, need_text: bool = True, verify: str = "off"):
        check_image_size(image_size)
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {', '.join(VERIFY_MODES)}, got {verify!r}")
        self.root = Path(str(data_path)).expanduser()
        pairs = read_csv_pairs(data_path, need_text)
        self.dropped = 0
        self.unreadable = []
        if verify != "off":
            self.unreadable = unreadable_images([p for p, _ in pairs])
            if self.unreadable:
                first, why = self.unreadable[0]
                what = (f"{len(self.unreadable)} of {len(pairs)} images listed in {self.root}/*.csv "
                        f"cannot be read (e.g. {first}: {why})")
                if verify == "strict" or len(self.unreadable) == len(pairs):
                    raise DataError(f"{what}; fix or remove them from the CSV"
                                    + ("" if verify == "strict" else " (none is left to train on)"))
                print(f"[mind_diffusion] data: skipped {what}; training uses the other "
                      f"{len(pairs) - len(self.unreadable)} (--strict refuses such data)", flush=True)
                bad = {p for p, _ in self.unreadable}
                pairs = [(p, t) for p, t in pairs if p not in bad]
        if filter_small_size:
            kept = [(p, t) for p, t in pairs if min(_image_size_of(p)) >= int(image_filter_size)]
            self.dropped = len(pairs) - len(kept)
            if not kept:
                raise DataError(f"all {len(pairs)} images in {self.root} are smaller than "
                                f"data.image_filter_size={image_filter_size} on their short side; lower it "
                                f"or set data.filter_small_size=false")
            pairs = kept
        super().__init__(pairs, image_size)
