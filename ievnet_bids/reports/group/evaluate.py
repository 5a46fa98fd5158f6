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


def els_mask_name(row: Mapping[str, Any]) -> str:
    """Our ELS mask file name of a group row (``..._label-ELS_desc-<side>_mask``)."""
    return D.sibling(row["_source"], D.ELS_MASK, desc=row["side"]).name


def evaluate_els(pred_path: Path, ref_path: Path, ref_tfs_path: Path | None) -> dict[str, Any]:
    """ELS Dice against a reference ELS mask, its volume and (with the reference TFS mask)
    the reference ELS%."""
    import nibabel as nib

    pred_img, ref_img = nib.load(str(pred_path)), nib.load(str(ref_path))
    pred = np.asanyarray(pred_img.dataobj).reshape(pred_img.shape[:3]) != 0
    ref = np.asanyarray(ref_img.dataobj).reshape(ref_img.shape[:3]) != 0
    if pred.shape != ref.shape or not np.allclose(pred_img.affine, ref_img.affine, atol=1e-3):
        return {"els_eval_note": "ELS reference on another grid"}
    voxel = float(np.prod(ref_img.header.get_zooms()[:3]))
    total = int(pred.sum() + ref.sum())
    out: dict[str, Any] = {
        "els_dice": 2.0 * int((pred & ref).sum()) / total if total else float("nan"),
        "els_volume_ref_mm3": round(float(ref.sum()) * voxel, 3),
    }
    if ref_tfs_path is not None:
        tfs = np.asanyarray(nib.load(str(ref_tfs_path)).dataobj) != 0
        if tfs.shape == ref.shape and tfs.any():
            out["els_percent_ref"] = round(100.0 * float((ref & tfs).sum()) / float(tfs.sum()), 2)
    return out


def evaluate_els_rows(frame: pd.DataFrame, output_dir: Path, reference_dir: Path) -> pd.DataFrame:
    """Add ``els_dice``, ``els_volume_ref_mm3``, ``els_percent_ref`` and ``els_eval_note`` to
    the rows that have an ELS mask (sessions with a FLAIR) and a reference ELS mask."""
    refs = index_references(reference_dir)
    results = []
    for row in frame.to_dict(orient="records"):
        name = els_mask_name(row)
        pred = Path(output_dir) / Path(row["_source"]).parent / name
        if not pred.is_file():
            results.append({})
        elif name not in refs:
            results.append({"els_eval_note": "no reference ELS mask"})
        else:
            try:
                results.append(evaluate_els(pred, refs[name], refs.get(mask_name(row))))
            except Exception as err:  # a broken file is reported in its row
                results.append({"els_eval_note": f"{type(err).__name__}: {err}"})
    cols = ["els_dice", "els_volume_ref_mm3", "els_percent_ref", "els_eval_note"]
    extra = pd.DataFrame(results, columns=cols)
    extra["els_eval_note"] = extra["els_eval_note"].fillna("")
    return pd.concat([frame.reset_index(drop=True), extra], axis=1)


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
