"""From a TFS probability map to a clean labyrinth mask (pure numpy/scipy, no torch)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import cc3d
import numpy as np
from scipy import ndimage

MAX_LISTED = 50  # components listed individually in ``info["dropped"]``


def threshold_and_clean(
    prob: np.ndarray,
    spacing_mm: float | Sequence[float],
    threshold: float = 0.5,
    *,
    core_prob: float = 0.9,
    core_fraction_full: float = 0.3,
    volume_range_mm3: tuple[float, float] = (100.0, 400.0),
    max_total_volume_mm3: float = 800.0,
    centre_sigma_mm: float = 6.0,
    centre_vox: Sequence[float] | None = None,
    max_gap_mm: float = 1.5,
    min_score: float = 0.5,
    fill_holes: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Threshold ``prob`` and keep the connected component(s) that look like the labyrinth.

    The ROI is centred on one inner ear, so the labyrinth is recognised by *what it is*,
    never as simply the largest component (on a real crop the largest one can be CSF of
    the internal auditory canal or posterior fossa):

    1. ``mask = prob >= threshold``; 26-connected components (cc3d).
    2. Each component gets a score in [0, 1],
       ``0.4·centre + 0.3·core + 0.3·volume``:

       * centre: ``exp(-d²/2σ²)``, d = distance (mm) of its centroid to the ROI centre
         (``centre_vox``, default the array centre), σ = ``centre_sigma_mm``;
       * core: the model is confident inside the labyrinth: fraction of its voxels with
         ``prob >= core_prob`` divided by ``core_fraction_full`` (capped at 1); 0 when its
         maximum probability is below ``core_prob``;
       * volume: 1 inside ``volume_range_mm3`` (TFS of one ear ≈ 100–400 mm³), falling
         off as a Gaussian of log2 of the ratio to the nearest bound (×2 or ÷2 → 0.61).
    3. The best-scoring component is kept if its score ≥ ``min_score``; otherwise the
       mask is empty and ``info["warning"]`` says why.
    4. Thin canals can break into pieces (0.5 mm acquisitions), so any other component
       whose gap (empty space, mm) to the kept set is ≤ ``max_gap_mm`` is added, repeatedly,
       if it is labyrinth-like itself: maximum probability ≥ ``core_prob`` and a fragment
       score ≥ ``min_score`` (as above, but small volumes are not penalised), and the kept
       total stays ≤ ``max_total_volume_mm3``.  Everything else (isolated blobs, CSF,
       low-confidence neighbours) is dropped.
    5. Internal cavities of each kept component are filled (``binary_fill_holes``);
       through-holes such as the loops of the semicircular canals stay open.

    Returns ``(mask, info)``: ``mask`` uint8 (0/1) of ``prob``'s shape; ``info`` holds the
    parameters, ``kept`` and ``dropped`` components (volume, centroid distance, maximum
    probability, core fraction, score, gap, reason), ``filled_voxels`` and ``volume_mm3``.
    """
    prob = np.asarray(prob)
    if prob.ndim != 3:
        raise ValueError(f"prob must be 3-D, got shape {prob.shape}")
    spacing = _spacing3(spacing_mm)
    voxel_mm3 = float(np.prod(spacing))
    centre = (
        np.array([(n - 1) / 2.0 for n in prob.shape])
        if centre_vox is None
        else np.asarray(centre_vox, dtype=float)
    )
    info: dict[str, Any] = {
        "threshold": float(threshold),
        "spacing_mm": [float(s) for s in spacing],
        "params": {
            "core_prob": core_prob,
            "volume_range_mm3": list(volume_range_mm3),
            "max_total_volume_mm3": max_total_volume_mm3,
            "centre_sigma_mm": centre_sigma_mm,
            "max_gap_mm": max_gap_mm,
            "min_score": min_score,
        },
        "n_components": 0,
        "kept": [],
        "dropped": [],
        "n_dropped": 0,
        "filled_voxels": 0,
        "volume_mm3": 0.0,
    }
    fg = np.asarray(prob >= threshold)
    mask = np.zeros(prob.shape, dtype=np.uint8)
    if not fg.any():
        info["warning"] = "no voxel above threshold"
        return mask, info

    labels, n = cc3d.connected_components(fg, connectivity=26, return_N=True)
    info["n_components"] = int(n)
    stats = cc3d.statistics(labels)
    counts = np.asarray(stats["voxel_counts"], dtype=np.int64)[1:]
    centroids = np.asarray(stats["centroids"], dtype=float)[1:]
    bboxes = stats["bounding_boxes"][1:]
    index = np.arange(1, n + 1)
    pf = prob.astype(np.float32, copy=False)
    maxp = np.asarray(ndimage.maximum(pf, labels, index), dtype=float).reshape(-1)
    cores = np.bincount(labels[pf >= core_prob].ravel(), minlength=n + 1)[1:].astype(float)

    vol = counts * voxel_mm3
    dist = np.linalg.norm((centroids - centre) * spacing, axis=1)
    t_centre = np.exp(-0.5 * (dist / centre_sigma_mm) ** 2)
    core_frac = cores / counts
    t_core = np.where(maxp >= core_prob, np.minimum(1.0, core_frac / core_fraction_full), 0.0)
    lo, hi = volume_range_mm3
    t_vol = _volume_term(vol, lo, hi)
    t_vol_fragment = _volume_term(vol, 0.0, hi)
    score = 0.4 * t_centre + 0.3 * t_core + 0.3 * t_vol
    frag_score = 0.4 * t_centre + 0.3 * t_core + 0.3 * t_vol_fragment

    def record(i: int, reason: str, gap: float | None = None) -> dict[str, Any]:
        return {
            "label": i + 1,
            "voxels": int(counts[i]),
            "volume_mm3": round(float(vol[i]), 3),
            "centroid_dist_mm": round(float(dist[i]), 3),
            "max_prob": round(float(maxp[i]), 4),
            "core_fraction": round(float(core_frac[i]), 4),
            "score": round(float(score[i]), 4),
            "fragment_score": round(float(frag_score[i]), 4),
            "gap_mm": None if gap is None else round(float(gap), 3),
            "reason": reason,
        }

    best = int(np.argmax(score))
    if score[best] < min_score:
        info["warning"] = (
            f"no labyrinth-like component: best score {score[best]:.2f} < {min_score} "
            f"({vol[best]:.0f} mm³, {dist[best]:.1f} mm from centre, max prob {maxp[best]:.2f})"
        )
        dropped = [record(i, "no labyrinth-like component") for i in range(n)]
        _store_dropped(info, dropped)
        return mask, info

    kept = [best]
    kept_rec = [record(best, "best labyrinth score")]
    total = float(vol[best])
    decided = {best}
    likeness = (maxp >= core_prob) & (frag_score >= min_score)
    candidates = [i for i in range(n) if i != best and likeness[i]]
    gaps: dict[int, float] = {}
    while candidates:
        gap = _gaps_to(labels, kept, bboxes, candidates, spacing, max_gap_mm)
        gaps.update(gap)
        near = sorted((i for i in candidates if gap[i] <= max_gap_mm), key=lambda i: gap[i])
        added = False
        for i in near:
            if total + vol[i] > max_total_volume_mm3:
                continue
            kept.append(i)
            kept_rec.append(record(i, "labyrinth fragment near kept component", gap[i]))
            total += float(vol[i])
            decided.add(i)
            added = True
        candidates = [i for i in candidates if i not in decided]
        if not added:
            break

    dropped = []
    for i in range(n):
        if i in decided:
            continue
        g = gaps.get(i)
        if maxp[i] < core_prob:
            reason = f"low confidence (max prob {maxp[i]:.2f} < {core_prob})"
        elif not likeness[i]:
            reason = f"not labyrinth-like (fragment score {frag_score[i]:.2f} < {min_score})"
        elif g is not None and g <= max_gap_mm:
            reason = f"would exceed {max_total_volume_mm3:.0f} mm³ in total"
        else:
            reason = f"isolated (gap > {max_gap_mm} mm)"
        dropped.append(record(i, reason, g if g is not None and math.isfinite(g) else None))

    filled = 0
    for i in kept:
        sl = _expand(bboxes[i], 1, prob.shape)
        comp = labels[sl] == i + 1
        if fill_holes:
            full = ndimage.binary_fill_holes(comp)
            filled += int(full.sum() - comp.sum())
            comp = full
        mask[sl][comp] = 1
    info["kept"] = kept_rec
    _store_dropped(info, dropped)
    info["filled_voxels"] = filled
    info["volume_mm3"] = round(float(mask.sum(dtype=np.int64)) * voxel_mm3, 3)
    return mask, info


def _spacing3(spacing_mm: float | Sequence[float]) -> np.ndarray:
    sp = np.broadcast_to(np.asarray(spacing_mm, dtype=float), (3,)).copy()
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing_mm must be positive, got {spacing_mm!r}")
    return sp


def _volume_term(vol: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """1 inside [lo, hi]; Gaussian in log2(ratio to the nearest bound) outside."""
    v = np.maximum(vol, 1e-9)
    ratio = np.where(v < lo, lo / v, np.where(v > hi, v / hi, 1.0))
    return np.exp(-0.5 * np.log2(ratio) ** 2)


def _expand(bbox: tuple[slice, ...], margin: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(
        slice(max(0, s.start - margin), min(n, s.stop + margin))
        for s, n in zip(bbox, shape, strict=True)
    )


def _gaps_to(
    labels: np.ndarray,
    kept: list[int],
    bboxes: list[tuple[slice, ...]],
    candidates: list[int],
    spacing: np.ndarray,
    max_gap_mm: float,
) -> dict[int, float]:
    """Gap (mm of empty space between surfaces) from each candidate to the kept components.

    Computed with a Euclidean distance transform in a box around the kept set, widened by
    ``max_gap_mm``; candidates outside the box get ``inf``.
    """
    margin = math.ceil(max_gap_mm / float(spacing.min())) + 2
    lo = np.min([[s.start for s in bboxes[i]] for i in kept], axis=0)
    hi = np.max([[s.stop for s in bboxes[i]] for i in kept], axis=0)
    box = tuple(
        slice(max(0, int(a) - margin), min(n, int(b) + margin))
        for a, b, n in zip(lo, hi, labels.shape, strict=True)
    )
    lab = labels[box]
    kept_mask = np.isin(lab, np.asarray(kept) + 1)
    edt = ndimage.distance_transform_edt(~kept_mask, sampling=spacing)
    present = np.unique(lab)
    out: dict[int, float] = {}
    for i in candidates:
        if i + 1 in present:
            d = float(ndimage.minimum(edt, lab, i + 1))
            # nearest centres one voxel apart would touch: subtract one voxel to get the gap
            out[i] = max(0.0, d - float(spacing.min()))
        else:
            out[i] = math.inf
    return out


def _store_dropped(info: dict[str, Any], dropped: list[dict[str, Any]]) -> None:
    info["n_dropped"] = len(dropped)
    dropped.sort(key=lambda r: -r["volume_mm3"])
    info["dropped"] = dropped[:MAX_LISTED]
    info["dropped_volume_mm3"] = round(sum(r["volume_mm3"] for r in dropped), 3)
