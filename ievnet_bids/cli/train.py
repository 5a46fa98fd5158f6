"""``ievnet-train``: train IE-Vnet on synthetic phantoms (and optionally real ROI pairs).

Writes into ``--out``: ``best.safetensors`` + ``best.model_card.json`` (highest validation
TFS Dice), ``last.*``, ``state.pt`` (for ``--resume``), ``training_log.tsv``,
``training_curve.png``, ``config.json`` and the cached validation phantoms in ``val/``.

Exit status: 0 success, 1 bad data or run folder, 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ievnet_bids.synth.seeds import HOLDOUT_SEED_START, VAL_SEED_START

PROG = "ievnet-train"
EXIT_OK, EXIT_BAD, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _tristate(value: str) -> bool | None:
    v = value.lower()
    if v == "auto":
        return None
    if v in ("on", "yes", "true", "1"):
        return True
    if v in ("off", "no", "false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected auto, on or off, got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="run folder")

    _add_source_options(p)
    _add_model_options(p)
    _add_augmentation_options(p)
    _add_optimisation_options(p)
    _add_validation_options(p)
    return p


def _add_source_options(p: argparse.ArgumentParser) -> None:
    """Training data sources and their weights."""
    src = p.add_argument_group("data sources (mixed by weight)")
    src.add_argument(
        "--pool", type=Path, metavar="DIR", help="folder of pre-generated phantom-*.npz"
    )
    src.add_argument("--pool-weight", type=float, default=1.0, metavar="W")
    src.add_argument(
        "--pool-refresh",
        type=int,
        default=200,
        metavar="N",
        help="re-list the pool folder about every N steps",
    )
    src.add_argument(
        "--synthetic-weight",
        type=float,
        default=None,
        metavar="W",
        help=f"weight of on-the-fly phantoms (seeds < {HOLDOUT_SEED_START}); default 1 "
        "without --pool/--data, else 0",
    )
    src.add_argument(
        "--synthetic-realism",
        type=int,
        choices=(1, 2),
        default=1,
        help="phantom version of the on-the-fly source (2: phantoms v2 with septa, marrow, "
        "vessel dots, dim tissue and fundus nerves)",
    )
    src.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help="real 200×150×100 ROI pairs: *_image.nii.gz + *_mask.nii.gz, or images/ + labels/",
    )
    src.add_argument("--data-weight", type=float, default=1.0, metavar="W")
    src.add_argument(
        "--reuse",
        type=float,
        default=1.0,
        metavar="N",
        help="mean number of uses of each loaded phantom (each loader worker keeps a small "
        "reservoir; the augmentations differ per use): feeds a fast GPU when generating "
        "phantoms on the fly is the bottleneck",
    )


def _add_model_options(p: argparse.ArgumentParser) -> None:
    """Network and initialisation options."""
    m = p.add_argument_group("model")
    m.add_argument(
        "--out-channels",
        type=int,
        choices=(1, 2),
        default=1,
        help="1: TFS; 2: TFS + other bright fluid (multi-label sigmoid)",
    )
    m.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128, 256], metavar="C")
    m.add_argument("--res-units", type=int, default=2, metavar="N")
    m.add_argument("--dropout", type=float, default=0.5, metavar="P")
    m.add_argument("--name", default="ievnet-synth", help="model name in the card")
    m.add_argument("--model-version", default="1.0")
    m.add_argument(
        "--init",
        type=Path,
        metavar="WEIGHTS",
        help="start from these weights (.safetensors/.pth of the same architecture) with a "
        "fresh optimizer: fine-tuning, e.g. of the shipped model",
    )


def _add_augmentation_options(p: argparse.ArgumentParser) -> None:
    """Augmentation, crop and batch options."""
    a = p.add_argument_group("augmentation and batches")
    a.add_argument(
        "--crop", type=int, nargs=3, metavar=("X", "Y", "Z"), default=[96, 96, 64],
        help="training patch size (208 160 112: the full padded ROI, as at inference; smaller "
        "crops train faster but shift the instance-norm statistics: finish with full ROIs)",
    )  # fmt: skip
    a.add_argument(
        "--pos-fraction",
        type=float,
        default=2 / 3,
        metavar="F",
        help="fraction of TFS-centred crops",
    )
    a.add_argument(
        "--elastic",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="affine + elastic deformation (prob 0.75); slow on CPU (~8 s per full ROI)",
    )
    a.add_argument(
        "--lowres-prob",
        type=float,
        default=0.0,
        metavar="P",
        help="probability of simulating coarser acquisition voxels (0.2-0.6 mm: area "
        "average, then trilinear back to 0.2 mm), as a slab looks after ROI extraction",
    )
    a.add_argument(
        "--slab-prob",
        type=float,
        default=0.0,
        metavar="P",
        help="probability of re-acquiring the ROI on a tilted 0.35-0.65 mm slab grid with "
        "Rician noise on the slab voxels, then cubic back to 0.2 mm, as the participant "
        "level extracts ROIs from SPACE slabs",
    )
    a.add_argument(
        "--aug-on-device",
        type=_tristate,
        default=None,
        metavar="{auto,on,off}",
        help="run affine/elastic + crop on the training device (auto: on CUDA)",
    )
    a.add_argument("--batch-size", type=int, default=2, metavar="N")
    a.add_argument(
        "--workers", type=int, default=0, metavar="N", help="data loader worker processes"
    )


def _add_optimisation_options(p: argparse.ArgumentParser) -> None:
    """Loss, optimiser, steps and device options."""
    o = p.add_argument_group("optimisation")
    o.add_argument("--steps", type=int, default=1000, metavar="N", help="total optimizer steps")
    o.add_argument(
        "--lr",
        type=float,
        default=3e-4,
        help="Adam learning rate (with --resume: replaces the saved one)",
    )
    o.add_argument("--loss", choices=("dice", "dicebce"), default="dice")
    o.add_argument(
        "--bce-weight", type=float, default=1.0, metavar="W", help="BCE weight of --loss dicebce"
    )
    o.add_argument(
        "--thin-weight",
        type=float,
        default=0.0,
        metavar="W",
        help="extra BCE weight (x 1+W) on thin target parts, the semicircular canals "
        "(voxels outside the opening of the target by a 1.4 mm cube), and 0.4 mm around "
        "them; --loss dicebce only",
    )
    o.add_argument(
        "--amp", type=_tristate, default=None, metavar="{auto,on,off}",
        help="bf16 autocast on CUDA",
    )  # fmt: skip
    o.add_argument("--compile", action="store_true", help="torch.compile the network")
    o.add_argument("--time-limit", type=float, metavar="MINUTES", help="stop cleanly after this")
    o.add_argument("--device", default="auto", help="auto, cpu or cuda")
    o.add_argument("--threads", type=int, metavar="N", help="torch.set_num_threads")
    o.add_argument("--seed", type=int, default=0, metavar="N")
    o.add_argument("--resume", action="store_true", help="continue from OUT/state.pt")


def _add_validation_options(p: argparse.ArgumentParser) -> None:
    """Validation and logging options."""
    v = p.add_argument_group("validation")
    v.add_argument(
        "--val-seeds", type=int, default=4, metavar="N",
        help=f"validation phantoms (seeds {VAL_SEED_START}…), cached in OUT/val",
    )  # fmt: skip
    v.add_argument("--val-every", type=int, default=100, metavar="N", help="validate every N steps")
    v.add_argument("--val-batch", type=int, default=1, metavar="N")
    v.add_argument(
        "--log-every", type=int, default=10, metavar="N", help="flush the TSV log every N steps"
    )
    v.add_argument(
        "--progress", type=_tristate, default=None, metavar="{auto,on,off}",
        help="tqdm progress bar (auto: on a terminal)",
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ievnet-train``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from ievnet_bids.train.loop import TrainConfig, TrainError, train

    try:
        config = TrainConfig(
            run_dir=args.out,
            pool=args.pool,
            pool_weight=args.pool_weight,
            synthetic_weight=args.synthetic_weight,
            data=args.data,
            data_weight=args.data_weight,
            pool_refresh=args.pool_refresh,
            reuse=args.reuse,
            synthetic_realism=args.synthetic_realism,
            init=args.init,
            out_channels=args.out_channels,
            channels=tuple(args.channels),
            num_res_units=args.res_units,
            dropout=args.dropout,
            name=args.name,
            version=args.model_version,
            crop=tuple(args.crop),
            pos_fraction=args.pos_fraction,
            elastic=args.elastic,
            lowres_prob=args.lowres_prob,
            slab_prob=args.slab_prob,
            aug_on_device=args.aug_on_device,
            batch_size=args.batch_size,
            workers=args.workers,
            steps=args.steps,
            lr=args.lr,
            loss=args.loss,
            bce_weight=args.bce_weight,
            thin_weight=args.thin_weight,
            amp=args.amp,
            compile=args.compile,
            val_seeds=args.val_seeds,
            val_every=args.val_every,
            val_batch=args.val_batch,
            log_every=args.log_every,
            seed=args.seed,
            threads=args.threads,
            device=args.device,
            time_limit_min=args.time_limit,
            resume=args.resume,
            progress=args.progress,
        )
    except TrainError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        best = train(config)
    except TrainError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_BAD
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (resume with --resume)", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(best)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
