"""Export the procedural shapes world as an image-text dataset (Wukong fine-tuning CSV format):

    python scripts/export_shapes_csv.py --out data/shapes_train --n 20000
    python scripts/export_shapes_csv.py --out data/shapes_heldout --n 500 --split heldout --seed 1

writes <out>/images/00000.png ..., <out>/data.csv (columns dir,text; UTF-8) and <out>/world.json
(the settings). --vocab also writes the world's small WordPiece vocabulary file.
"""
import argparse
import os
import sys


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, required=True, help="number of images")
    p.add_argument("--split", default="train", choices=["train", "heldout"],
                   help="train: never the held-out colour-shape-place combinations; heldout: only those")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--two_shape_prob", type=float, default=0.25)
    p.add_argument("--antialias", action="store_true", help="mild anti-aliasing (4x supersampling)")
    p.add_argument("--vocab", default=None, help="also write the shapes-world vocab file here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export in --out")
    args = p.parse_args(argv)

    from mind_diffusion.shapes.world import build_vocab, export_csv

    try:
        csv_path = export_csv(args.out, args.n, split=args.split, seed=args.seed, image_size=args.image_size,
                              overwrite=args.overwrite, two_shape_prob=args.two_shape_prob,
                              antialias=args.antialias)
        print(f"wrote {args.n} images and {csv_path}")
        if args.vocab:
            print(f"wrote vocab {build_vocab(args.vocab)}")
    except (ValueError, FileNotFoundError, PermissionError) as exc:
        if os.environ.get("MIND_DIFFUSION_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
