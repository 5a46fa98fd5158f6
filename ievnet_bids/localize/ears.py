"""Both ear centres of one slab: first guess (template / landmarks / detection) + refinement.

Returns a JSON-able record, the contract between the localization node and the rest of the
workflow::

    {"localizer": "template", "head_axes": 3×3, "initial": {"left": [x, y, z], ...},
     "refined": {...}, "moved_mm": {...}, "method": {...}, "score": {...}, "seconds": {...}}
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

SIDES = ("left", "right")


class LocalizationError(RuntimeError):
    """The ears could not be localized (the message names the file and the reason)."""


def choose_localizer(requested: str, head: Path | None) -> str:
    """``auto`` → ``template`` when a head image exists, else ``detect``."""
    if requested == "auto":
        return "template" if head is not None else "detect"
    if requested == "template" and head is None:
        raise LocalizationError("--localizer template needs a full-head T1w/T2w image; none found")
    return requested


def localize_ears(
    slab: Path,
    *,
    head: Path | None = None,
    localizer: str = "auto",
    landmarks: dict[str, tuple[float, float, float]] | None = None,
    threads: int = 1,
    search_mm: float = 20.0,
) -> dict[str, Any]:
    """Locate both labyrinths in ``slab`` (world mm) and refine each by a ±``search_mm`` search."""
    from ievnet_bids.geometry.extract import head_rotation_from_affine
    from ievnet_bids.localize.refine import detect_ears, refine_centre

    used = choose_localizer(localizer, head)
    slab_img = nib.load(str(slab))
    record: dict[str, Any] = {"localizer": used, "seconds": {}}
    t0 = time.perf_counter()
    head_axes = head_rotation_from_affine(slab_img.affine)
    if used == "template":
        from ievnet_bids.localize.register import register_template, template_ear_centres

        transform = register_template(nib.load(str(head)))
        if not transform.info.get("plausible", True):
            raise LocalizationError(
                f"{head}: template registration implausible (scales {transform.scales})"
            )
        initial = template_ear_centres(transform)
        head_axes = transform.head_axes
        record["registration"] = {
            "affine": transform.affine.tolist(),
            "scales": list(transform.scales),
            "seconds": transform.seconds,
            "single_threaded": transform.info["single_threaded"],
        }
    elif used == "landmarks":
        if not landmarks or set(landmarks) != set(SIDES):
            raise LocalizationError(f"{slab}: the landmarks file has no left/right ear centres")
        initial = {side: np.asarray(landmarks[side], dtype=float) for side in SIDES}
    elif used == "detect":
        found = detect_ears(slab_img, threads=threads)
        initial = {side: found[side].refined_mm for side in SIDES}
    else:
        raise LocalizationError(f"unknown localizer {localizer!r}")
    record["seconds"]["initial"] = time.perf_counter() - t0
    record["head_axes"] = np.asarray(head_axes).tolist()
    record["initial"] = {s: np.asarray(initial[s], dtype=float).tolist() for s in SIDES}
    record["refined"], record["moved_mm"], record["method"], record["score"] = {}, {}, {}, {}
    for side in SIDES:
        t1 = time.perf_counter()
        found = refine_centre(
            slab_img,
            np.asarray(initial[side], dtype=float),
            side,
            head_rotation=np.asarray(head_axes),
            search_mm=search_mm,
            threads=threads,
        )
        record["refined"][side] = found.refined_mm.tolist()
        record["moved_mm"][side] = float(found.moved_mm)
        record["method"][side] = found.method
        record["score"][side] = float(found.score)
        record["seconds"][f"refine_{side}"] = time.perf_counter() - t1
    record["seconds"]["total"] = time.perf_counter() - t0
    return record
