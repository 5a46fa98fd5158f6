"""Both ear centres of one slab: first guess (template / landmarks / detection) + refinement.

Returns a :class:`ievnet_bids.records.Localization` (``localizer``, ``head_axes`` 3×3,
``initial``/``refined`` ``{"left": [x, y, z], ...}``, ``moved_mm``, ``method``, ``score``,
``seconds``, ``registration``, ``template``), the contract between the localization node and
the rest of the workflow (``centres.json``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np

from ievnet_bids.records import Localization

if TYPE_CHECKING:
    from ievnet_bids.templates import HeadTemplate

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
    template: HeadTemplate | None = None,
    threads: int = 1,
    search_mm: float = 20.0,
) -> Localization:
    """Locate both labyrinths in ``slab`` (world mm) and refine each by a ±``search_mm`` search.

    ``template``: the full-head template of the ``template`` localizer (default: the shipped
    one, :func:`ievnet_bids.templates.shipped_template`).
    """
    from ievnet_bids.geometry.extract import head_rotation_from_affine
    from ievnet_bids.localize.refine import detect_ears, refine_centre

    used = choose_localizer(localizer, head)
    slab_img = nib.load(str(slab))
    seconds: dict[str, float] = {}
    registration: dict[str, Any] | None = None
    template_summary: dict[str, Any] | None = None
    t0 = time.perf_counter()
    head_axes = head_rotation_from_affine(slab_img.affine)
    if used == "template":
        from ievnet_bids.localize.register import register_template, template_ear_centres
        from ievnet_bids.templates import shipped_template

        template = template if template is not None else shipped_template()
        transform = register_template(nib.load(str(head)), template=template)
        if not transform.info.get("plausible", True):
            raise LocalizationError(
                f"{head}: registration of template {template.name} implausible "
                f"(scales {transform.scales})"
            )
        initial = template_ear_centres(transform, template)
        template_summary = template.summary()
        head_axes = transform.head_axes
        registration = {
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
    seconds["initial"] = time.perf_counter() - t0
    refined: dict[str, list[float]] = {}
    moved: dict[str, float] = {}
    method: dict[str, str] = {}
    score: dict[str, float] = {}
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
        refined[side] = found.refined_mm.tolist()
        moved[side] = float(found.moved_mm)
        method[side] = found.method
        score[side] = float(found.score)
        seconds[f"refine_{side}"] = time.perf_counter() - t1
    seconds["total"] = time.perf_counter() - t0
    return Localization(
        localizer=used,
        head_axes=np.asarray(head_axes).tolist(),
        initial={s: np.asarray(initial[s], dtype=float).tolist() for s in SIDES},
        refined=refined,
        moved_mm=moved,
        method=method,
        score=score,
        seconds=seconds,
        registration=registration,
        template=template_summary,
    )
