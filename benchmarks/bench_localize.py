"""Ear localisation cost and accuracy on synthetic subjects: registration, refinement, detection.

Run: ``.venv/bin/python benchmarks/bench_localize.py [--subjects 1] [--threads 2]``. Writes a
synthetic BIDS dataset to a temporary folder (~10 s per subject, not timed), then per subject:
template registration (T1w), matched-filter refinement of each ear from the registered
landmark, and slab-only detection (``detect`` localizer). Errors are to the true TFS
bounding-box centre.
"""

from __future__ import annotations

import argparse
import tempfile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=1)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="FFT workers (ITK: always 1)")
    args = parser.parse_args()

    import json
    import time
    from pathlib import Path

    import nibabel as nib
    import numpy as np

    from ievnet_bids.localize.refine import detect_ears, labyrinth_template, refine_centre
    from ievnet_bids.localize.register import register_template, template_ear_centres
    from ievnet_bids.synth.head import write_bids_dataset

    labyrinth_template("right")  # warm-up: load the template
    with tempfile.TemporaryDirectory(prefix="bench_localize_") as tmp:
        t0 = time.perf_counter()
        summary = write_bids_dataset(
            Path(tmp) / "bids", Path(tmp) / "truth", n_subjects=args.subjects, seed=args.seed
        )
        print(f"dataset: {args.subjects} subject(s), {time.perf_counter() - t0:.1f} s (untimed)")
        print(f"threads: {args.threads}")
        for rec in summary["images"]:
            truth = json.loads(Path(rec["truth"]).read_text())
            t1, slab = nib.load(rec["t1w"]), nib.load(rec["t2w"])
            slab.get_fdata(dtype=np.float32, caching="fill")  # decompression is not timed
            tx = register_template(t1)
            guesses = template_ear_centres(tx)
            print(f"sub-{rec['subject']}: registration {tx.seconds:.2f} s")
            for side in ("left", "right"):
                true = np.array(truth["ears"][side]["tfs_bbox_centre_mm"])
                r = refine_centre(
                    slab, guesses[side], side, head_rotation=tx.head_axes, threads=args.threads
                )
                print(
                    f"  {side:5s} landmark {np.linalg.norm(guesses[side] - true):5.2f} mm → "
                    f"refined {np.linalg.norm(r.refined_mm - true):4.2f} mm "
                    f"(score {r.score:.2f}), refinement {r.seconds:.2f} s"
                )
            t0 = time.perf_counter()
            found = detect_ears(slab, threads=args.threads)
            dt = time.perf_counter() - t0
            errs = [
                np.linalg.norm(
                    found[s].refined_mm - np.array(truth["ears"][s]["tfs_bbox_centre_mm"])
                )
                for s in ("left", "right")
            ]
            print(f"  detect (slab only): {dt:.2f} s, errors {errs[0]:.2f} / {errs[1]:.2f} mm")


if __name__ == "__main__":
    main()
