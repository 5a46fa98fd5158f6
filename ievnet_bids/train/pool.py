"""A pool of pre-generated phantoms on disk, so CPU training re-uses each costly sample.

Each sample is ``phantom-<seed>.npz`` with ``image`` (float16, 200×150×100), ``labels``
(uint8, :mod:`ievnet_bids.synth.labels`) and ``affine``. Training seeds start at 0; the
held-out evaluation seeds start at :data:`ievnet_bids.synth.seeds.HOLDOUT_SEED_START` and
are never written here by the training tools.

``python -m ievnet_bids.train.pool --out DIR --start 0 --count 500`` fills a pool
(skipping samples already present, so it can run alongside training and be resumed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ievnet_bids.atomic import staged
from ievnet_bids.synth.seeds import HOLDOUT_SEED_START, phantom_settings


def write_sample(folder: Path, seed: int, realism: int = 1) -> Path:
    """Generate the phantom of ``seed`` (phantom version ``realism``) and store it atomically
    in ``folder``."""
    from ievnet_bids.synth.phantom import generate_phantom

    path = folder / f"phantom-{seed:08d}.npz"
    if path.exists():
        return path
    ph = generate_phantom(seed, **phantom_settings(seed), realism=realism)
    with staged(path, suffix=".npz") as tmp:
        np.savez_compressed(
            tmp, image=ph.image.astype(np.float16), labels=ph.labels, affine=ph.affine
        )
    return path


def load_sample(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(image float32, labels uint8) of a pool sample."""
    with np.load(path) as data:
        return data["image"].astype(np.float32), data["labels"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument(
        "--realism",
        type=int,
        choices=(1, 2),
        default=1,
        help="phantom version: 2 adds septa, marrow, vessel dots, dim tissue, fundus nerves",
    )
    args = parser.parse_args(argv)
    if args.start + args.count > HOLDOUT_SEED_START:
        print("ievnet-pool: error: seeds would reach the held-out range", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for seed in range(args.start, args.start + args.count):
        write_sample(args.out, seed, args.realism)
    return 0


if __name__ == "__main__":
    sys.exit(main())
