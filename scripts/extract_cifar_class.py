"""Write one CIFAR-10 class from the official python tarball as PNGs (a FID reference folder).

    python scripts/extract_cifar_class.py --tarball /data/cifar-10-python.tar.gz --class horse \
        --split train --out data/cifar10_horse_train

Writes <out>/00000.png ... (32x32 RGB, archive order) and <out>/cifar_class.json (class, split,
count, whether the archive's md5 sums were verified), which scripts/fid_compare.py reads to tell
whether a run follows the report's protocol (CIFAR-10 horse, train split: 5000 images; test: 1000).
The archive is read with a restricted unpickler (no code from the file runs) and checked against
the published md5 sums (--no_verify_md5 skips that). An --out folder that already holds images
is refused: nothing is overwritten.
"""
import argparse
import sys

from mind_diffusion.cli import run_cli


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tarball", required=True, help="cifar-10-python.tar.gz (or its extracted cifar-10-batches-py folder)")
    p.add_argument("--class", dest="class_name", required=True,
                   help="class name (airplane automobile bird cat deer dog frog horse ship truck) or id 0..9")
    p.add_argument("--split", default="train", choices=["train", "test"])
    p.add_argument("--out", required=True, help="output folder (new or empty)")
    p.add_argument("--no_verify_md5", action="store_true", help="do not check the archive's md5 sums")
    p.add_argument("--no_progress", action="store_true")
    args = p.parse_args(argv)

    def job():
        from mind_diffusion.evaluation.references import extract_cifar_class

        m = extract_cifar_class(args.tarball, args.class_name, args.split, args.out,
                                verify_md5=not args.no_verify_md5, progress=not args.no_progress)
        print(f"wrote {m['count']} {m['class']} images ({m['split']} split) to {args.out}"
              f"{'' if m['md5_verified'] else ' (md5 not verified)'}")

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
