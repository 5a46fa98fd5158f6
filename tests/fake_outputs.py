"""Fake participant outputs (volume tables, QC records, optional small masks) for the tests
and ``benchmarks/bench_group.py``; no model, no raw data. Test code: not part of the package."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ievnet_bids import qc as Q
from ievnet_bids.bids import derivatives as D

SIDES = ("left", "right")
MASK_SHAPE = (24, 24, 24)
MASK_ZOOM_MM = 0.5


def _ball_mask(radius_vox: float, centre: Sequence[float]) -> np.ndarray:
    grid = np.indices(MASK_SHAPE, dtype=np.float32)
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)))
    return (dist <= radius_vox).astype(np.uint8)


def write_unit(
    output_dir: Path,
    subject: str,
    session: str | None,
    *,
    volumes: dict[str, float],
    rng: np.random.Generator,
    flags: dict[str, list[str]] | None = None,
    masks: bool = False,
    model_sha256: str = "0123456789abcdef" * 4,
) -> Path:
    """One slab's ``_desc-tfs_volumes.tsv`` and ``_desc-tfs_qc.json`` (and masks when asked)."""
    prefix = f"sub-{subject}" + (f"_ses-{session}" if session else "") + "_acq-space"
    folder = Path(output_dir) / f"sub-{subject}" / (f"ses-{session}" if session else "") / "anat"
    rows, ears = [], {}
    for side in SIDES:
        volume = float(volumes[side])
        names = list((flags or {}).get(side, []))
        centre = rng.normal([-50.0 if side == "left" else 50.0, 10.0, -45.0], 2.0)
        moved = float(abs(rng.normal(4.0, 2.0)))
        rows.append(
            {
                "side": side,
                "volume_mm3": round(volume, 3),
                "n_components": 1 + int("multiple_components" in names),
                "centre_x_mm": round(float(centre[0]), 3),
                "centre_y_mm": round(float(centre[1]), 3),
                "centre_z_mm": round(float(centre[2]), 3),
                "localizer": "template",
                "refinement_moved_mm": round(moved, 3),
                "qc_flags": Q.flags_cell([n for n in names if n != "missing_canal_loop"]),
                "model": "ievnet-synthetic",
                "model_sha256": model_sha256[:12],
            }
        )
        loops = 2 if "missing_canal_loop" in names else 3
        ears[side] = {
            "volume_mm3": volume,
            "topology": {
                "euler": 1 - loops,
                "components": 1,
                "cavities": 0,
                "tunnels": loops,
                "canal_loops": loops,
                "loops_by_radius": [loops] * 3,
            },
            "boundary_prob": round(float(rng.uniform(0.75, 0.9)), 4),
            "flags": [{"name": n, "reason": Q.FLAG_HELP.get(n, "")} for n in names],
        }
        if masks:
            radius = (3 * volume / (4 * np.pi)) ** (1 / 3) / MASK_ZOOM_MM
            mask = _ball_mask(min(radius, 10.0), (11.5, 11.5, 11.5))
            write_mask(folder / f"{prefix}_space-orig_label-TFS_desc-{side}_mask.nii.gz", mask)
    D.write_tsv_atomic(rows, folder / f"{prefix}_desc-tfs_volumes.tsv")
    D.write_json_atomic(
        {
            "slab": f"{prefix}_T2w.nii.gz",
            "head": None,
            "model": {"name": "ievnet-synthetic", "sha256": model_sha256},
            "ears": ears,
            "figures": {},
        },
        folder / f"{prefix}_desc-tfs_qc.json",
    )
    return folder / f"{prefix}_desc-tfs_volumes.tsv"


def write_mask(path: Path, mask: np.ndarray) -> Path:
    """A uint8 NIfTI mask with 0.5 mm voxels."""
    import nibabel as nib

    img = nib.Nifti1Image(mask.astype(np.uint8), np.diag([MASK_ZOOM_MM] * 3 + [1.0]))
    img.header.set_xyzt_units("mm", "sec")
    return D.write_nifti_atomic(img, path)


def write_outputs(
    output_dir: Path,
    n_subjects: int,
    *,
    sessions: int = 1,
    seed: int = 0,
    flag_fraction: float = 0.05,
    masks: bool = False,
) -> list[Path]:
    """``n_subjects`` × ``sessions`` synthetic participant outputs (2 rows each)."""
    rng = np.random.default_rng(seed)
    width = max(2, len(str(n_subjects)))
    out = []
    for s in range(n_subjects):
        base = rng.normal(230.0, 35.0)
        for k in range(sessions):
            vols = {side: max(20.0, base + rng.normal(0, 8.0)) for side in SIDES}
            flags: dict[str, Any] = {}
            if rng.random() < flag_fraction:
                side = str(rng.choice(SIDES))
                vols[side] *= 2.2
                flags[side] = ["volume_out_of_range", "missing_canal_loop"]
            out.append(
                write_unit(
                    output_dir,
                    f"{s + 1:0{width}d}",
                    str(k + 1) if sessions > 1 else None,
                    volumes=vols,
                    rng=rng,
                    flags=flags,
                    masks=masks,
                )
            )
    return out
