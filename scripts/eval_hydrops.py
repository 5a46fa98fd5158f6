"""Hydrops against the phantom truth: ELS%, ELS Dice, registration error, grade ranking.

Usage: ``python scripts/eval_hydrops.py OUTPUT_DIR TRUTH_DIR [--json FILE]`` after
``ievnet-synth bids --hydrops`` (truth) and the participant level (outputs). Per ear: ELS%
of the whole ear, the cochlea and the vestibule (ours: the volumes table; truth: the exact
0.2 mm phantom volumes), ELS Dice on the slab grid (our ELS mask against the truth's) and on
our 0.2 mm ROI grid (the truth's ROI-grid ELS resampled onto it, linear ≥ 0.5), the TFS
volumes (ours on the ROI grid, the phantom's), the
FLAIR → SPACE registration error (mean and maximum over the truth TFS voxels), the severity.
Prints one line per ear and the summary figures of issue 14.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import stats

from ievnet_bids.bids import derivatives as D
from ievnet_bids.geometry.roi import RoiGrid, resample

GRADES = ("none", "mild", "moderate", "severe")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum() + b.sum())
    return 2.0 * int((a & b).sum()) / total if total else float("nan")


def evaluate(output_dir: Path, truth_dir: Path) -> list[dict]:
    rows = []
    for truth_path in sorted(truth_dir.glob("*_truth.json")):
        truth = json.loads(truth_path.read_text())
        if "flair" not in truth:
            continue
        tables = D.find_derivatives(output_dir, D.VOLUMES, {"sub": truth["subject"]})
        if truth.get("session"):
            tables = [t for t in tables if D.source_entities(t).get("ses") == truth["session"]]
        if not tables:
            continue
        table = {r["side"]: r for r in D.read_tsv(tables[0])}
        qc = json.loads(D.sibling(tables[0], D.QC_RECORD).read_text())
        space_to_flair = np.asarray(truth["flair"]["space_to_flair_world"])
        prefix = truth_path.name.removesuffix("_truth.json")
        for side, ear in truth["ears"].items():
            row = table.get(side, {})
            ours = qc.get("hydrops", {}).get("ears", {}).get(side)
            if ours is None or row.get("els_percent") in (None, "n/a"):
                continue
            tfs_img = nib.load(truth_dir / f"{prefix}_desc-{side}_tfs.nii.gz")
            tfs = np.asarray(tfs_img.dataobj) > 0
            els_truth = np.asarray(nib.load(truth_dir / f"{prefix}_desc-{side}_els.nii.gz").dataobj)
            els_ours = np.asarray(nib.load(D.sibling(tables[0], D.ELS_MASK, desc=side)).dataobj)
            roi_ours = nib.load(D.sibling(tables[0], D.ROI_ELS_MASK, desc=side))
            roi_truth = nib.load(truth_dir / f"{prefix}_space-ROI_desc-{side}_els.nii.gz")
            truth_on_ours = resample(
                np.asarray(roi_truth.dataobj, dtype=np.float32),
                roi_truth.affine,
                RoiGrid(roi_ours.shape, roi_ours.affine),
                order=1,
            )
            pts = np.c_[
                nib.affines.apply_affine(tfs_img.affine, np.argwhere(tfs)), np.ones(tfs.sum())
            ]
            estimate = np.asarray(ours["registration"]["space_to_flair"])
            err = np.linalg.norm((pts @ estimate.T - pts @ space_to_flair.T)[:, :3], axis=1)
            vol = ear["volumes_roi"]
            rows.append(
                {
                    "ear": f"{prefix}_{side}",
                    "grade": ear["hydrops"]["grade"],
                    "severity": ear["hydrops"]["severity"],
                    "els_percent": float(row["els_percent"]),
                    "els_percent_truth": vol["ear"]["els_percent"],
                    "cochlea": float(row["cochlea_els_percent"]),
                    "cochlea_truth": vol["cochlea"]["els_percent"],
                    "vestibule": float(row["vestibule_els_percent"]),
                    "vestibule_truth": vol["vestibule"]["els_percent"],
                    "els_dice_slab": _dice(els_ours > 0, els_truth > 0),
                    "els_dice_roi": _dice(np.asarray(roi_ours.dataobj) > 0, truth_on_ours >= 0.5),
                    "tfs_volume_mm3": float(row["volume_mm3"]),
                    "tfs_volume_truth_mm3": vol["ear"]["tfs_mm3"],
                    "registration_mean_mm": float(err.mean()),
                    "registration_max_mm": float(err.max()),
                    "motion_deg": truth["flair"]["rotation_deg"],
                    "motion_mm": float(np.linalg.norm(truth["flair"]["translation_mm"])),
                }
            )
    return rows


def summary(rows: list[dict]) -> dict:
    def mae(a: str, b: str) -> float:
        return float(np.mean([abs(r[a] - r[b]) for r in rows]))

    def bias(a: str, b: str) -> float:
        return float(np.mean([r[a] - r[b] for r in rows]))

    severity = [r["severity"] for r in rows]
    by_grade = {
        g: float(np.mean([r["els_percent"] for r in rows if r["grade"] == g]))
        for g in GRADES
        if any(r["grade"] == g for r in rows)
    }
    return {
        "ears": len(rows),
        "els_percent_mae": mae("els_percent", "els_percent_truth"),
        "els_percent_bias": bias("els_percent", "els_percent_truth"),
        "cochlea_mae": mae("cochlea", "cochlea_truth"),
        "cochlea_bias": bias("cochlea", "cochlea_truth"),
        "vestibule_mae": mae("vestibule", "vestibule_truth"),
        "vestibule_bias": bias("vestibule", "vestibule_truth"),
        "els_dice_mean": float(np.mean([r["els_dice_slab"] for r in rows])),
        "els_dice_min": float(np.min([r["els_dice_slab"] for r in rows])),
        "els_dice_roi_mean": float(np.mean([r["els_dice_roi"] for r in rows])),
        "els_dice_roi_min": float(np.min([r["els_dice_roi"] for r in rows])),
        "tfs_volume_bias_mm3": bias("tfs_volume_mm3", "tfs_volume_truth_mm3"),
        "registration_mean_mm": float(np.mean([r["registration_mean_mm"] for r in rows])),
        "registration_worst_mean_mm": float(np.max([r["registration_mean_mm"] for r in rows])),
        "registration_worst_max_mm": float(np.max([r["registration_max_mm"] for r in rows])),
        "spearman_severity_els_percent": float(
            stats.spearmanr(severity, [r["els_percent"] for r in rows]).statistic
        ),
        "els_percent_by_grade": by_grade,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("truth_dir", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = evaluate(args.output_dir, args.truth_dir)
    if not rows:
        print("no ear with both an ELS result and hydrops truth", file=sys.stderr)
        return 1
    for r in rows:
        print(
            f"{r['ear']:<28} {r['grade']:<8} ELS% {r['els_percent']:5.1f} "
            f"(truth {r['els_percent_truth']:5.1f})  cochlea {r['cochlea']:5.1f} "
            f"({r['cochlea_truth']:5.1f})  vestibule {r['vestibule']:5.1f} "
            f"({r['vestibule_truth']:5.1f})  "
            f"Dice {r['els_dice_slab']:.3f}/{r['els_dice_roi']:.3f}  "
            f"TFS {r['tfs_volume_mm3']:5.1f} ({r['tfs_volume_truth_mm3']:5.1f})  "
            f"reg {r['registration_mean_mm']:.2f}/{r['registration_max_mm']:.2f} mm"
        )
    result = summary(rows)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"summary": result, "ears": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
