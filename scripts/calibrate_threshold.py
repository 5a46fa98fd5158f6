"""Choose the probability threshold (and flip TTA on/off) on calibration phantoms.

    python scripts/calibrate_threshold.py [--model WEIGHTS] [--count 60] [--folder runs/calib]

The calibration phantoms (seeds from ``CALIB_SEED_START``) are neither training phantoms,
nor the checkpoint-selection validation set, nor the hold-out set (seeds 10 000 000…), nor
the test datasets: the threshold chosen here is then *evaluated* on the hold-out set.  For
each phantom the ROI probability is computed without and with left-right flip TTA, cleaned
with the pipeline's own :func:`~ievnet_bids.postprocess.threshold_and_clean` at each
threshold, and scored (Dice against the phantom TFS).  Prints the mean Dice and relative
volume error per threshold for all, SPACE-like and random-contrast phantoms, and the best
threshold for the SPACE-like ones (the app's domain).

Check any choice on the slab path too (``scripts/eval_participant.py``): on 2026-11-27 the
0.70 chosen here on clean 0.2 mm ROIs (SPACE Dice 0.9253 → 0.9279) made the masks of the
0.5 mm synthetic slabs 5–13 % too small (their mapped-back probability is smoother), so the
shipped threshold stayed 0.5.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ievnet_bids.metrics import dice
from ievnet_bids.model.infer import Segmenter
from ievnet_bids.model.weights import load_model
from ievnet_bids.postprocess import threshold_and_clean
from ievnet_bids.resources import default_model_path
from ievnet_bids.synth.labels import tfs_mask
from ievnet_bids.synth.seeds import VAL_SEED_START, phantom_settings
from ievnet_bids.train.data import pool_seed, validation_set
from ievnet_bids.train.pool import load_sample

CALIB_SEED_START = VAL_SEED_START + 100_000
THRESHOLDS = np.round(np.arange(0.30, 0.801, 0.05), 2)
AT_HALF = int(np.flatnonzero(THRESHOLDS == 0.5)[0])  # column of the default threshold


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=default_model_path())
    p.add_argument("--count", type=int, default=60)
    p.add_argument("--folder", type=Path, default=Path("runs/calib"))
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    paths = validation_set(args.folder, args.count, start=CALIB_SEED_START)
    model, card = load_model(args.model)
    segmenters = {
        tta: Segmenter(model, card, device="cpu", tta_flip=tta, omp_threads=args.threads)
        for tta in (False, True)
    }
    # scores[tta][i, j]: Dice of phantom i at threshold j; vols likewise (pred/ref − 1)
    scores = {tta: np.zeros((len(paths), len(THRESHOLDS))) for tta in segmenters}
    vols = {tta: np.zeros((len(paths), len(THRESHOLDS))) for tta in segmenters}
    contrast = []
    for i, path in enumerate(paths):
        image, labels = load_sample(path)
        seed = pool_seed(path)
        assert seed is not None
        contrast.append(phantom_settings(seed)["contrast"])
        ref = tfs_mask(labels) > 0
        for tta, seg in segmenters.items():
            prob = seg.predict_proba(image)
            for j, t in enumerate(THRESHOLDS):
                mask, _ = threshold_and_clean(
                    prob, card.roi_spacing_mm, float(t), params=card.cleanup, image=image
                )
                scores[tta][i, j] = dice(mask > 0, ref)
                vols[tta][i, j] = mask.sum() / ref.sum() - 1
        at_half = scores[False][i, AT_HALF]
        print(f"{path.name}: {contrast[-1]}, Dice at 0.5 {at_half:.4f}", flush=True)

    groups = {
        "all": np.ones(len(paths), bool),
        "space": np.array([c == "space" for c in contrast]),
        "random": np.array([c == "random" for c in contrast]),
    }
    print(f"\nmodel {args.model} ({card.name}), {len(paths)} calibration phantoms "
          f"(seeds {CALIB_SEED_START}…), mean Dice / mean relative volume error")  # fmt: skip
    for tta in segmenters:
        print(f"\nflip TTA {'on' if tta else 'off'}")
        print("threshold " + "".join(f"{g:>22s}" for g in groups))
        for j, t in enumerate(THRESHOLDS):
            cells = "".join(
                f"{scores[tta][m, j].mean():12.4f} {vols[tta][m, j].mean():+8.3f}"
                for m in groups.values()
                if m.any()
            )
            print(f"{t:9.2f} {cells}")
        best = int(np.argmax(scores[tta][groups["space"]].mean(0)))
        print(f"best for SPACE-like: threshold {THRESHOLDS[best]:.2f}, "
              f"Dice {scores[tta][groups['space'], best].mean():.4f} "
              f"(0.50: {scores[tta][groups['space'], AT_HALF].mean():.4f})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
