"""Segmentation metrics and the statistics of the IE-Vnet paper (numpy/scipy only).

Geometry
--------
All distances are in physical millimetres: ``spacing`` is the voxel size along each array
axis (e.g. the NIfTI header zooms), so anisotropic grids are handled exactly. A mask's
*surface* is the mask minus its binary erosion with the connectivity-1 (face-neighbour)
structuring element; voxels on the array border count as surface (erosion treats the
outside as background). Surface distances are exact Euclidean distances between surface
voxel centres (``scipy.ndimage.distance_transform_edt`` with ``sampling=spacing`` on a
bounding-box crop around both masks), the same edges and distances MONAI uses, so

* :func:`hausdorff` equals ``monai.metrics.compute_hausdorff_distance``;
* :func:`hd95` equals ``compute_hausdorff_distance(percentile=95)``: the **maximum of the
  two directed 95th percentiles** (linear interpolation), not the percentile of the pooled
  distances;
* :func:`mean_surface_distance` equals ``compute_average_surface_distance(symmetric=True)``:
  the average symmetric surface distance, i.e. the mean over the union (concatenation) of
  both directed distance sets, so each surface is weighted by its number of voxels.

Empty masks
-----------
Every function follows one convention:

* both masks empty: Dice 1.0 and every distance 0.0 (perfect agreement on "nothing");
* exactly one mask empty: Dice 0.0 and every distance ``inf``;
* masks of different shapes raise ``ValueError`` naming both shapes.

Statistics
----------
Shapiro-Wilk normality, paired Wilcoxon signed-rank, Kruskal-Wallis across groups and
pairwise Mann-Whitney U with Benjamini-Hochberg FDR correction, all two-sided (scipy.stats).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage, stats

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "StatResult",
    "benjamini_hochberg",
    "dice",
    "evaluate_case",
    "hausdorff",
    "hd95",
    "kruskal_wallis",
    "mann_whitney_pairwise",
    "mean_surface_distance",
    "per_structure_dice",
    "shapiro_wilk",
    "surface_distances",
    "volume_mm3",
    "wilcoxon_paired",
]

Spacing = float | Sequence[float] | np.ndarray | None

#: Voxels of margin kept around the union of both masks before distance transforms.
CROP_MARGIN = 2


# --------------------------------------------------------------------------- helpers


def _as_bool(mask: np.ndarray) -> np.ndarray:
    """Foreground = non-zero voxels."""
    arr = np.asarray(mask)
    return arr if arr.dtype == bool else arr != 0


def _pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, r = _as_bool(pred), _as_bool(ref)
    if p.shape != r.shape:
        raise ValueError(f"shape mismatch: pred has shape {p.shape}, ref has shape {r.shape}")
    return p, r


def _spacing(spacing: Spacing, ndim: int) -> tuple[float, ...]:
    """Spacing as one positive float per axis (``None`` means 1 mm isotropic)."""
    if spacing is None:
        return (1.0,) * ndim
    sp = np.atleast_1d(np.asarray(spacing, dtype=float))
    if sp.size == 1:
        sp = np.repeat(sp, ndim)
    if sp.size != ndim:
        raise ValueError(f"spacing has {sp.size} values but the masks have {ndim} dimensions")
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing must be finite and positive, got {tuple(sp.tolist())}")
    return tuple(float(s) for s in sp)


def _crop(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of their union plus ``CROP_MARGIN`` voxels."""
    union = pred | ref
    slices = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        idx = np.flatnonzero(union.any(axis=other))
        lo = max(int(idx[0]) - CROP_MARGIN, 0)
        hi = min(int(idx[-1]) + 1 + CROP_MARGIN, union.shape[axis])
        slices.append(slice(lo, hi))
    sl = tuple(slices)
    return pred[sl], ref[sl]


def _surface(mask: np.ndarray) -> np.ndarray:
    """Mask minus its erosion (connectivity-1 structuring element, outside = background)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


# --------------------------------------------------------------------------- overlap


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice similarity coefficient 2|P∩R| / (|P| + |R|); 1.0 when both masks are empty."""
    p, r = _pair(pred, ref)
    total = int(np.count_nonzero(p)) + int(np.count_nonzero(r))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(p & r)) / total


def per_structure_dice(
    pred_labels: np.ndarray, ref_labels: np.ndarray, labels: Mapping[str, int]
) -> dict[str, float]:
    """Dice of each labelled structure (``{name: label value}``) of two label maps."""
    p, r = np.asarray(pred_labels), np.asarray(ref_labels)
    if p.shape != r.shape:
        raise ValueError(f"shape mismatch: pred has shape {p.shape}, ref has shape {r.shape}")
    return {name: dice(p == value, r == value) for name, value in labels.items()}


def volume_mm3(mask: np.ndarray, spacing: Spacing = None) -> float:
    """Foreground volume in mm³ (voxel count × voxel volume)."""
    m = _as_bool(mask)
    return float(np.count_nonzero(m)) * float(np.prod(_spacing(spacing, m.ndim)))


# --------------------------------------------------------------------------- distances


def surface_distances(
    pred: np.ndarray, ref: np.ndarray, spacing: Spacing = None
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm: (pred surface → ref surface, ref → pred).

    Each array holds, for every surface voxel of the first mask, the distance to the
    nearest surface voxel of the other. Both masks empty: two empty arrays. One mask
    empty: the non-empty mask's surface voxels are all at distance ``inf`` and the other
    array is empty.
    """
    p, r = _pair(pred, ref)
    sp = _spacing(spacing, p.ndim)
    p_any, r_any = bool(p.any()), bool(r.any())
    if not (p_any or r_any):
        return np.zeros(0), np.zeros(0)
    p, r = _crop(p, r)
    sp_, sr = _surface(p), _surface(r)
    if not r_any:
        return np.full(int(np.count_nonzero(sp_)), np.inf), np.zeros(0)
    if not p_any:
        return np.zeros(0), np.full(int(np.count_nonzero(sr)), np.inf)
    to_ref = ndimage.distance_transform_edt(~sr, sampling=sp)
    to_pred = ndimage.distance_transform_edt(~sp_, sampling=sp)
    return np.asarray(to_ref[sp_], dtype=float), np.asarray(to_pred[sr], dtype=float)


def _hd_from(d_pr: np.ndarray, d_rp: np.ndarray, percentile: float | None) -> float:
    """Symmetric (percentile) Hausdorff distance from two directed distance sets."""
    if d_pr.size == 0 and d_rp.size == 0:
        return 0.0
    if d_pr.size == 0 or d_rp.size == 0:
        return float("inf")
    if percentile is None:
        return float(max(d_pr.max(), d_rp.max()))
    return float(max(np.percentile(d_pr, percentile), np.percentile(d_rp, percentile)))


def _msd_from(d_pr: np.ndarray, d_rp: np.ndarray) -> float:
    if d_pr.size == 0 and d_rp.size == 0:
        return 0.0
    if d_pr.size == 0 or d_rp.size == 0:
        return float("inf")
    return float(np.concatenate([d_pr, d_rp]).mean())


def hausdorff(pred: np.ndarray, ref: np.ndarray, spacing: Spacing = None) -> float:
    """Symmetric Hausdorff distance in mm: max of both directed maximum surface distances."""
    return _hd_from(*surface_distances(pred, ref, spacing), None)


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Spacing = None) -> float:
    """95th-percentile Hausdorff distance in mm: max of the two directed 95th percentiles.

    Matches ``monai.metrics.compute_hausdorff_distance(percentile=95)``.
    """
    return _hd_from(*surface_distances(pred, ref, spacing), 95.0)


def mean_surface_distance(pred: np.ndarray, ref: np.ndarray, spacing: Spacing = None) -> float:
    """Average symmetric surface distance in mm: mean over both directed distance sets pooled.

    Matches ``monai.metrics.compute_average_surface_distance(symmetric=True)``.
    """
    return _msd_from(*surface_distances(pred, ref, spacing))


def evaluate_case(pred: np.ndarray, ref: np.ndarray, spacing: Spacing = None) -> dict[str, float]:
    """All metrics of one case (surface distances computed once).

    Keys: ``dice``, ``hausdorff_mm``, ``hd95_mm``, ``msd_mm``, ``volume_pred_mm3``,
    ``volume_ref_mm3``.
    """
    p, r = _pair(pred, ref)
    d_pr, d_rp = surface_distances(p, r, spacing)
    return {
        "dice": dice(p, r),
        "hausdorff_mm": _hd_from(d_pr, d_rp, None),
        "hd95_mm": _hd_from(d_pr, d_rp, 95.0),
        "msd_mm": _msd_from(d_pr, d_rp),
        "volume_pred_mm3": volume_mm3(p, spacing),
        "volume_ref_mm3": volume_mm3(r, spacing),
    }


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class StatResult:
    """A test statistic and its two-sided p-value."""

    statistic: float
    pvalue: float


def finite_stats(values: Sequence[float]) -> dict[str, float | int | None]:
    """Mean, SD, median and minimum of the finite values; ``n_finite`` of ``n``."""
    v = np.array([x for x in values if math.isfinite(x)])
    summary: dict[str, float | int | None] = {"mean": None, "sd": None, "median": None, "min": None}
    if v.size:
        summary = {
            "mean": float(v.mean()),
            "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "median": float(np.median(v)),
            "min": float(v.min()),
        }
    return {**summary, "n_finite": int(v.size), "n": len(values)}


def _values(x: Sequence[float] | np.ndarray, name: str = "sample") -> np.ndarray:
    arr = np.asarray(x, dtype=float).ravel()
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values")
    return arr


def shapiro_wilk(x: Sequence[float] | np.ndarray) -> StatResult:
    """Shapiro-Wilk normality test (W, p); needs at least 3 values."""
    arr = _values(x)
    if arr.size < 3:
        raise ValueError(f"Shapiro-Wilk needs at least 3 values, got {arr.size}")
    res = stats.shapiro(arr)
    return StatResult(float(res.statistic), float(res.pvalue))


def wilcoxon_paired(
    left: Sequence[float] | np.ndarray, right: Sequence[float] | np.ndarray
) -> StatResult:
    """Two-sided Wilcoxon signed-rank test of paired samples (e.g. left vs right ears)."""
    a, b = _values(left, "left"), _values(right, "right")
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} and {b.size}")
    res = stats.wilcoxon(a, b)
    return StatResult(float(res.statistic), float(res.pvalue))


def kruskal_wallis(groups: Mapping[str, Sequence[float]]) -> StatResult:
    """Kruskal-Wallis H test across two or more independent groups."""
    if len(groups) < 2:
        raise ValueError(f"Kruskal-Wallis needs at least 2 groups, got {len(groups)}")
    res = stats.kruskal(*(_values(v, k) for k, v in groups.items()))
    return StatResult(float(res.statistic), float(res.pvalue))


def benjamini_hochberg(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (same order as the input).

    Sorted p(i) · m / i, then the cumulative minimum from the largest rank down, clipped to 1.
    """
    p = _values(pvalues, "p-values")
    m = p.size
    if m == 0:
        return p
    if np.any((p < 0) | (p > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    order = np.argsort(p)
    scaled = p[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.clip(adjusted, 0.0, 1.0)
    return out


def mann_whitney_pairwise(
    groups: Mapping[str, Sequence[float]], alpha: float = 0.05
) -> pd.DataFrame:
    """Two-sided Mann-Whitney U test for every pair of groups, BH-FDR corrected.

    Returns a DataFrame with columns ``group_a``, ``group_b``, ``u`` (U of ``group_a``),
    ``p``, ``p_fdr`` and ``significant`` (``p_fdr < alpha``), one row per pair in the
    order of ``itertools.combinations(groups)``.
    """
    import pandas as pd

    rows = []
    for a, b in itertools.combinations(groups, 2):
        res = stats.mannwhitneyu(_values(groups[a], a), _values(groups[b], b))
        rows.append({"group_a": a, "group_b": b, "u": float(res.statistic), "p": float(res.pvalue)})
    frame = pd.DataFrame(rows, columns=["group_a", "group_b", "u", "p"])
    frame["p_fdr"] = benjamini_hochberg(frame["p"].to_numpy(dtype=float))
    frame["significant"] = frame["p_fdr"] < alpha
    return frame
