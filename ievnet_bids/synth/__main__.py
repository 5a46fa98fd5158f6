"""``python -m ievnet_bids.synth`` / ``ievnet-synth``: previews, ROI phantoms, BIDS datasets."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _add_realism(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--realism",
        type=int,
        choices=(1, 2),
        default=1,
        help="phantom version: 2 adds interscalar septa, marrow, vessel dots, dim tissue at "
        "the labyrinth and fundus nerves (synth/detail.py)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ievnet-synth", description="Synthetic inner-ear phantoms with ground truth."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    prev = sub.add_parser("preview", help="draw phantom slices and a 3-D view to a PNG")
    prev.add_argument("--out", type=Path, required=True, help="output PNG")
    prev.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="phantom seeds")
    prev.add_argument("--contrast", choices=("space", "random"), default="space")
    prev.add_argument(
        "--real", type=Path, nargs="*", default=[], help="real ROI crops (NIfTI) to show beside"
    )
    _add_realism(prev)
    prev.add_argument(
        "--hydrops",
        type=float,
        nargs="+",
        default=None,
        metavar="H",
        help="instead: the first seed's ear at these hydrops severities (0-1), SPACE beside "
        "gadolinium FLAIR with the endolymph outlined",
    )

    roi = sub.add_parser("roi", help="write ROI phantoms (image + labels NIfTI)")
    roi.add_argument("--out-dir", type=Path, required=True)
    roi.add_argument("--seeds", type=int, nargs="+", required=True)
    roi.add_argument("--side", choices=("left", "right"), default="right")
    roi.add_argument("--contrast", choices=("space", "random"), default="space")
    _add_realism(roi)

    hold = sub.add_parser(
        "holdout", help="write the held-out evaluation set (seeds never used for training)"
    )
    hold.add_argument("--out-dir", type=Path, required=True)
    hold.add_argument("--count", type=int, default=50)

    bids = sub.add_parser("bids", help="write a synthetic BIDS dataset of full-head phantoms")
    bids.add_argument("--out-dir", type=Path, required=True)
    bids.add_argument("--truth-dir", type=Path, required=True, help="ground truth (outside BIDS)")
    bids.add_argument("--subjects", type=int, default=2)
    bids.add_argument(
        "--sessions",
        type=int,
        nargs="*",
        default=None,
        help="sessions per subject, e.g. 1 2 1 (default: one, no ses- entity)",
    )
    bids.add_argument("--seed", type=int, default=0)
    bids.add_argument(
        "--hydrops",
        action="store_true",
        help="draw endolymphatic hydrops per ear and write a gadolinium FLAIR per image "
        "(ELS truth in the truth folder)",
    )
    bids.add_argument(
        "--hydrops-subjects",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="with --hydrops: only these subjects (1-based; default all)",
    )
    return parser


def write_holdout(out_dir: Path, count: int) -> None:
    """``images/``, ``masks/`` (TFS), ``labels/`` (all labels) and ``holdout.tsv`` (case, seed,
    side, contrast) of the held-out phantoms.

    Seeds start at ``HOLDOUT_SEED_START`` (never used by the training tools); sides alternate
    and a third use the random contrast, as in training.
    """
    import nibabel as nib
    import numpy as np

    from ievnet_bids.synth.labels import tfs_mask
    from ievnet_bids.synth.phantom import generate_phantom
    from ievnet_bids.synth.seeds import HOLDOUT_SEED_START, phantom_settings

    for sub in ("images", "masks", "labels"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    cases = []
    for i in range(count):
        seed = HOLDOUT_SEED_START + i
        settings = phantom_settings(seed)
        cases.append((f"holdout-{i:04d}_desc-{settings['side']}", seed, settings))
    manifest = ["case\tseed\tside\tcontrast"] + [
        f"{case}\t{seed}\t{s['side']}\t{s['contrast']}" for case, seed, s in cases
    ]
    (out_dir / "holdout.tsv").write_text("\n".join(manifest) + "\n")
    for case, seed, settings in cases:
        ph = generate_phantom(seed, **settings)
        name = f"{case}.nii.gz"
        nib.save(nib.Nifti1Image(ph.image, ph.affine), out_dir / "images" / name)
        mask = tfs_mask(ph.labels).astype(np.uint8)
        nib.save(nib.Nifti1Image(mask, ph.affine), out_dir / "masks" / name)
        nib.save(nib.Nifti1Image(ph.labels, ph.affine), out_dir / "labels" / name)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import nibabel as nib
    import numpy as np

    from ievnet_bids.synth.phantom import generate_phantom

    if args.command == "preview" and args.hydrops:
        from ievnet_bids.synth.preview import draw_hydrops_preview

        print(draw_hydrops_preview(args.seeds[0], args.hydrops, args.out, realism=args.realism))
        return 0
    if args.command == "preview":
        from ievnet_bids.synth.preview import draw_preview

        phantoms = [
            generate_phantom(
                s,
                side="right" if i % 2 == 0 else "left",
                contrast=args.contrast,
                realism=args.realism,
            )
            for i, s in enumerate(args.seeds)
        ]
        real = []
        for path in args.real:
            try:
                real.append((path.name, np.asanyarray(nib.load(path).dataobj, dtype=np.float32)))
            except (OSError, ValueError, nib.filebasedimages.ImageFileError) as exc:
                print(f"ievnet-synth: error: cannot read {path}: {exc}", file=sys.stderr)
                return 1
        out = draw_preview(phantoms, args.out, real=real)
        print(out)
        return 0
    if args.command == "roi":
        args.out_dir.mkdir(parents=True, exist_ok=True)
        for s in args.seeds:
            ph = generate_phantom(s, side=args.side, contrast=args.contrast, realism=args.realism)
            stem = args.out_dir / f"phantom-{s:05d}_{args.side}"
            nib.save(nib.Nifti1Image(ph.image, ph.affine), f"{stem}_image.nii.gz")
            nib.save(nib.Nifti1Image(ph.labels, ph.affine), f"{stem}_labels.nii.gz")
        print(args.out_dir)
        return 0
    if args.command == "holdout":
        write_holdout(args.out_dir, args.count)
        print(args.out_dir)
        return 0
    if args.command == "bids":
        from ievnet_bids.synth.head import write_bids_dataset

        write_bids_dataset(
            args.out_dir,
            args.truth_dir,
            n_subjects=args.subjects,
            sessions=args.sessions,
            seed=args.seed,
            hydrops=args.hydrops,
            hydrops_subjects=args.hydrops_subjects,
        )
        print(args.out_dir)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
