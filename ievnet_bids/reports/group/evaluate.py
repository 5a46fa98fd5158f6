"""Group level, evaluation: each predicted mask against its reference mask."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ievnet_bids import metrics as M
from ievnet_bids.bids import derivatives as D
from ievnet_bids.reports.group.read import EVAL_METRICS


def index_references(reference_dir: Path) -> dict[str, Path]:
    """``{file name: path}`` of every NIfTI under ``reference_dir`` (first one wins)."""
    found: dict[str, Path] = {}
    for path in sorted(Path(reference_dir).rglob("*.nii*")):
        if path.is_file() and path.name.endswith((".nii", ".nii.gz")):
            found.setdefault(path.name, path)
    return found


def mask_name(row: Mapping[str, Any]) -> str:
    """Our mask file name of a group row (``<entities>_space-orig_label-TFS_desc-<side>_mask``)."""
    return D.sibling(row["_source"], D.TFS_MASK, desc=row["side"]).name


def evaluate_pair(pred_path: Path, ref_path: Path) -> dict[str, Any]:
    """Metrics of one predicted mask against its reference (physical mm from the header)."""
    import nibabel as nib

    pred_img, ref_img = nib.load(str(pred_path)), nib.load(str(ref_path))
    pred = np.asanyarray(pred_img.dataobj)
    ref = np.asanyarray(ref_img.dataobj)
    pred, ref = pred.reshape(pred.shape[:3]), ref.reshape(ref.shape[:3])
    if pred.shape != ref.shape:
        return {"eval_note": f"shape {pred.shape} ≠ reference {ref.shape}"}
    if not np.allclose(pred_img.affine, ref_img.affine, atol=1e-3):
        return {"eval_note": "affine differs from the reference"}
    res = M.evaluate_case(pred != 0, ref != 0, spacing=pred_img.header.get_zooms()[:3])
    return {**{k: res[k] for k in EVAL_METRICS}, "volume_ref_mm3": res["volume_ref_mm3"]}


def _evaluate_job(args: tuple[str, str]) -> dict[str, Any]:
    try:
        return evaluate_pair(Path(args[0]), Path(args[1]))
    except Exception as err:  # a broken file is reported in its row
        return {"eval_note": f"{type(err).__name__}: {err}"}


def evaluate_rows(
    frame: pd.DataFrame, output_dir: Path, reference_dir: Path, nprocs: int = 1
) -> pd.DataFrame:
    """Add Dice, HD, HD95, MSD, reference volume and ``eval_note`` to each row."""
    refs = index_references(reference_dir)
    jobs: list[tuple[int, tuple[str, str]]] = []
    notes: dict[int, dict[str, Any]] = {}
    for i, row in enumerate(frame.to_dict(orient="records")):
        name = mask_name(row)
        pred = Path(output_dir) / Path(row["_source"]).parent / name
        if name not in refs:
            notes[i] = {"eval_note": "no reference mask"}
        elif not pred.is_file():
            notes[i] = {"eval_note": "predicted mask missing"}
        else:
            jobs.append((i, (str(pred), str(refs[name]))))
    if nprocs > 1 and len(jobs) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=min(nprocs, len(jobs))) as pool:
            results = list(pool.map(_evaluate_job, [j for _, j in jobs], chunksize=4))
    else:
        results = [_evaluate_job(j) for _, j in jobs]
    for (i, _), res in zip(jobs, results, strict=True):
        notes[i] = res
    cols = [*EVAL_METRICS, "volume_ref_mm3", "eval_note"]
    extra = pd.DataFrame([notes.get(i, {}) for i in range(len(frame))], columns=cols)
    extra["eval_note"] = extra["eval_note"].fillna("")
    return pd.concat([frame.reset_index(drop=True), extra], axis=1)
