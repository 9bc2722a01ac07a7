"""FID comparison runs: generate N images per configured generator, FID against a reference set,
and a report (Markdown table, CSV, bar chart) with the Mind-Diffusion report's numbers beside
ours as context.

    from mind_diffusion.evaluation.compare_config import load_compare_config
    cfg = load_compare_config("configs/fid/builtin-quick.yaml", ["num_images=50"])
    result = run_comparison(cfg)           # -> CompareResult(run_dir, rows, files)

This module is the orchestration (reference sets, run folders, generation in seeded chunks,
statistics and FID); the pieces live beside it: the config schema and loading in
:mod:`.compare_config`, the per-family generator adapters and built-in fallbacks in
:mod:`.generators`, the rows and report files in :mod:`.report`.
"""
from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import to_plain
from .compare_config import CompareConfigError, resolve_path
from .generators import SkipRow, build_generator
from .report import Row, report_comparability, write_report


@dataclass
class CompareResult:
    run_dir: Path
    rows: list
    files: dict


# ----------------------------------------------------------------------------- references
def _count_images(folder: Path) -> int:
    from ..metrics.features import list_images

    return len(list_images(folder))


def check_reference_source(path) -> Path:
    """A folder with >= 2 images or a readable .npz statistics file; clear errors otherwise."""
    from ..metrics.features import FIDInputError

    p = resolve_path(path)
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
                    f"(DDPM on digits, the shapes-world LDM and GLIDE); name a reference under 'references:'")
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
