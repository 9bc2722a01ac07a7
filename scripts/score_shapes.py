"""Score shapes-world images against their prompts (colour, shape, position adherence):

    python scripts/score_shapes.py output/samples            # prompts from the PNGs' metadata
    python scripts/score_shapes.py --csv data/shapes_heldout/data.csv   # an export (dir,text)
    python scripts/score_shapes.py output/samples --prompt "一个红色的圆形在左边"

Prints a Markdown table of rates (all images, one / two shapes, training / held-out
combinations) and writes one row per image to --out_csv (default <folder>/shape_scores.csv).
Images whose prompt is not a shapes-world prompt (or that carry none) are skipped and counted.
"""
import argparse
import csv
import os
import sys
from pathlib import Path

KEYS = ("colour", "shape", "position", "all", "count")


def png_prompt(path):
    """The prompt stored by mind_diffusion.utils.images.save_png ('mind_diffusion' JSON chunk, else the
    first line of the 'parameters' chunk), or None."""
    from PIL import Image

    from mind_diffusion.utils.images import read_png_parameters

    try:
        params = read_png_parameters(path)
    except (ValueError, OSError):
        params = {}
    if params.get("prompt"):
        return str(params["prompt"])
    with Image.open(path) as im:
        text = im.info.get("parameters")
    return text.splitlines()[0] if text else None


def collect(args):
    """[(image path, prompt or None)]"""
    if args.csv:
        src = Path(args.csv).expanduser()
        if not src.is_file():
            raise FileNotFoundError(f"--csv file not found: {src}")
        with open(src, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"dir", "text"} <= set(reader.fieldnames):
                raise ValueError(f"{src} needs the columns dir,text (got {reader.fieldnames})")
            return [(src.parent / row["dir"], args.prompt or row["text"]) for row in reader]
    folder = Path(args.folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = sorted(folder.rglob("*.png") if args.recursive else folder.glob("*.png"))
    if not files:
        raise ValueError(f"no .png images in {folder}" + ("" if args.recursive else " (try --recursive)"))
    return [(f, args.prompt or png_prompt(f)) for f in files]


def rate_table(groups):
    lines = ["| images | n | colour | shape | position | all | count |", "|---|---|---|---|---|---|---|"]
    for name, rows in groups:
        if not rows:
            continue
        rates = " | ".join(f"{100.0 * sum(r[k] for r in rows) / len(rows):.1f}%" for k in KEYS)
        lines.append(f"| {name} | {len(rows)} | {rates} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", nargs="?", default=None, help="folder of generated PNGs")
    p.add_argument("--csv", default=None, help="score an image-text CSV (dir,text) instead of a folder")
    p.add_argument("--prompt", default=None, help="score every image against this prompt")
    p.add_argument("--recursive", action="store_true", help="also look in sub-folders")
    p.add_argument("--out_csv", default=None, help="per-image results (default <folder>/shape_scores.csv)")
    args = p.parse_args(argv)

    import numpy as np
    from PIL import Image

    from mind_diffusion.shapes.scorer import score
    from mind_diffusion.shapes.world import (
        HELDOUT_COMBOS,
        PromptNotInWorldError,
        parse_prompt,
    )

    try:
        if (args.folder is None) == (args.csv is None):
            raise ValueError("give either an image folder or --csv (not both)")
        items = collect(args)
        heldout = set(HELDOUT_COMBOS)
        rows, no_prompt, not_world = [], 0, 0
        for path, prompt in items:
            if not prompt:
                no_prompt += 1
                continue
            try:
                parsed = parse_prompt(prompt)
            except PromptNotInWorldError:
                not_world += 1
                continue
            if not Path(path).is_file():
                raise FileNotFoundError(f"image not found: {path}")
            with Image.open(path) as im:
                image = np.asarray(im.convert("RGB"))
            r = score(image, parsed)
            r["file"], r["prompt"] = str(path), prompt
            r["heldout"] = any(o in heldout for o in parsed.objects)
            rows.append(r)
        if no_prompt or not_world:
            print(f"skipped {no_prompt} images without a prompt and {not_world} with a prompt outside the "
                  f"shapes world", file=sys.stderr)
        if not rows:
            raise ValueError("nothing to score: no image carries a shapes-world prompt (use --prompt or --csv)")
        groups = [("all", rows), ("one shape", [r for r in rows if r["n_expected"] == 1]),
                  ("two shapes", [r for r in rows if r["n_expected"] == 2]),
                  ("training combos", [r for r in rows if not r["heldout"]]),
                  ("held-out combos", [r for r in rows if r["heldout"]])]
        print(rate_table(groups))
        base = Path(args.csv).expanduser().parent if args.csv else Path(args.folder).expanduser()
        out_csv = Path(args.out_csv).expanduser() if args.out_csv else base / "shape_scores.csv"
        out_csv.parent.mkdir(parents=True, exist_ok=True)
        with open(out_csv, "w", encoding="utf-8", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["file", "prompt", *KEYS, "n_expected", "n_found", "heldout", "detected"])
            for r in rows:
                det = "; ".join("".join(d["detected"]) if d["detected"] else "-" for d in r["details"])
                w.writerow([r["file"], r["prompt"], *(int(r[k]) for k in KEYS), r["n_expected"], r["n_found"],
                            int(r["heldout"]), det])
        print(f"per-image scores: {out_csv}")
    except (ValueError, FileNotFoundError, PermissionError) as exc:
        if os.environ.get("MIND_DIFFUSION_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
