"""Find the labyrinth in the T2 slab near a first guess (or anywhere: :func:`detect_ears`).

The template landmark mapped by :mod:`.register` is only good to ~±7 mm plus the subject's
anatomy, so the ear centre is re-found in the slab itself:

1. **Matched filter** (~0.5 mm): the slab is resampled onto a head-aligned window reaching
   ``search_mm`` each way around the guess, clipped at its 99.5th percentile and z-scored. The
   labyrinth template (mean TFS of :data:`TEMPLATE_N` phantoms, mirrored for the left ear)
   becomes a zero-mean kernel: its probability on the labyrinth, a negative shell around it
   (the dark otic capsule). *Detection*: FFT cross-correlation of the high-passed window with
   the kernel; among the local maxima within 80 % of the best, the nearest to the guess wins.
   *Localisation*: the local normalised cross-correlation (NCC) maximum within 1.5 mm of it,
   sub-voxel; that NCC is the reported score.
The template's reference point is the centre of the TFS bounding box along the ROI axes
(the labyrinth's extent in the head frame), the point the segment node re-centres on too
(:func:`ievnet_bids.segmentation.segment_ears`, the one re-centring implementation).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import fft as sp_fft
from scipy import ndimage

from ievnet_bids.atomic import staged
from ievnet_bids.geometry.extract import (
    head_rotation_from_affine,
    orthonormal,
    slab_data,
    slab_grid,
    sub_grid,
)
from ievnet_bids.geometry.roi import RoiGrid, resample
from ievnet_bids.resources import PACKAGE_DIR

SIDES = ("left", "right")
TEMPLATE_SEED0 = 20_000_000
TEMPLATE_N = 32
TEMPLATE_SPACING_MM = 0.5
TEMPLATE_SHAPE: tuple[int, int, int] = (37, 37, 37)  # 18 mm cube, odd: centre = middle voxel
TEMPLATE_FILE = "labyrinth_tfs_mean.npz"
PACKAGED_TEMPLATE = PACKAGE_DIR / "data" / "localize" / TEMPLATE_FILE
MAX_PACKAGED_BYTES = 200_000
CACHE_ENV = "IEVNET_CACHE_DIR"

SEARCH_MM = 20.0
PEAK_FRACTION = 0.8  # peaks within this fraction of the best are "top" peaks
NMS_MM = 6.0  # local maxima closer than this are one peak
CLIP_PERCENTILE = 99.5
SUPPORT_LEVEL = 0.3  # kernel support: mean TFS probability ≥ this × its maximum
SHELL_MM = 2.5  # width of the kernel's negative (bone) shell
HIGHPASS_MM = 2.0  # detection: image minus its Gaussian blur (σ) removes large bright regions
FINE_MM = 1.5  # localisation: local NCC maximum within this distance of the detection peak
VAR_FLOOR = 0.25  # local variance floor (the window's variance is 1 after z-scoring)
MIN_COVERAGE = 0.6  # fraction of the template box that must lie inside the slab
MIDLINE_EXCLUSION_MM = 15.0  # detect_ears: no ear this close to the slab's mid-sagittal plane


@dataclass(frozen=True, eq=False)
class RefinedCentre:
    """A re-centred ear: ``method`` is ``matched_filter``, ``matched_filter+network``,
    ``detect`` or ``detect+network``; ``score`` the matched filter's local NCC at the peak
    (about 0.3–0.7 on a labyrinth); ``moved_mm`` = ‖refined − initial‖."""

    initial_mm: np.ndarray
    refined_mm: np.ndarray
    moved_mm: float
    score: float
    method: str
    seconds: float = 0.0
    notes: tuple[str, ...] = ()


# --------------------------------------------------------------------------- template
def build_labyrinth_template(
    n: int = TEMPLATE_N,
    seed0: int = TEMPLATE_SEED0,
    *,
    spacing_mm: float = TEMPLATE_SPACING_MM,
    shape: tuple[int, int, int] = TEMPLATE_SHAPE,
) -> np.ndarray:
    """Mean TFS probability of ``n`` right-ear phantoms (seeds ``seed0 …``), float32.

    Each phantom's TFS is anti-alias smoothed and resampled onto a ``shape`` grid at
    ``spacing_mm`` centred on its bounding-box centre (ROI axes). ~2 s per phantom.
    """
    from ievnet_bids.synth.phantom import generate_phantom

    acc = np.zeros(shape, np.float64)
    for seed in range(seed0, seed0 + n):
        ph = generate_phantom(seed, side="right", background=False, max_shift_fraction=0.0)
        tfs = ph.tfs
        idx = np.argwhere(tfs)
        centre = ph.grid.voxel_to_world(((idx.min(0) + idx.max(0)) / 2.0)[None])[0]
        sigma = 0.4 * spacing_mm / np.asarray(ph.grid.spacing)
        smooth = ndimage.gaussian_filter(tfs.astype(np.float32), sigma)
        grid = RoiGrid.centred(centre, shape=shape, spacing_mm=spacing_mm)
        acc += resample(smooth, ph.grid.affine, grid, order=1)
    return (acc / n).astype(np.float32)


def save_labyrinth_template(path: str | Path, template: np.ndarray | None = None) -> Path:
    """Write the template (built when None) as compressed float16 npz; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t = build_labyrinth_template() if template is None else template
    with staged(path, suffix=".npz") as tmp:
        np.savez_compressed(
            tmp,
            template=t.astype(np.float16),
            spacing_mm=np.float32(TEMPLATE_SPACING_MM),
            n=np.int32(TEMPLATE_N),
            seed0=np.int64(TEMPLATE_SEED0),
            side=np.str_("right"),
        )
    return path


def _cache_dir(cache_dir: str | Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "ievnet-bids"


@lru_cache(maxsize=4)
def _load_template(cache: str) -> np.ndarray:
    for path in (PACKAGED_TEMPLATE, Path(cache) / TEMPLATE_FILE):
        if path.is_file():
            with np.load(path) as z:
                return z["template"].astype(np.float32)
    path = save_labyrinth_template(Path(cache) / TEMPLATE_FILE)  # first use: build and cache
    with np.load(path) as z:
        return z["template"].astype(np.float32)


def labyrinth_template(side: str, cache_dir: str | Path | None = None) -> np.ndarray:
    """Mean TFS probability (ROI axes, :data:`TEMPLATE_SPACING_MM`) for ``side``.

    Shipped in the package data dir; otherwise built once and cached in ``cache_dir``
    (default ``$IEVNET_CACHE_DIR`` or ``~/.cache/ievnet-bids``). Left = mirror of right in x.
    """
    if side not in SIDES:
        raise ValueError(f"side must be 'left' or 'right', not {side!r}")
    t = _load_template(str(_cache_dir(cache_dir)))
    return np.ascontiguousarray(t[::-1]) if side == "left" else t.copy()


def matched_kernel(
    side: str, spacing_mm: float = TEMPLATE_SPACING_MM, cache_dir: str | Path | None = None
) -> np.ndarray:
    """Zero-mean, unit-norm matched filter for ``side`` at ``spacing_mm`` (odd shape).

    Positive on the labyrinth (the mean TFS probability where it is ≥ 30 % of its maximum),
    uniformly negative on a shell of :data:`SHELL_MM` around it (the otic capsule is dark),
    0 elsewhere: a bright blob larger than the labyrinth (CSF) does not match.
    """
    t = labyrinth_template(side, cache_dir)
    if not np.isclose(spacing_mm, TEMPLATE_SPACING_MM):
        extent = (np.asarray(t.shape) - 1) * TEMPLATE_SPACING_MM
        n = 2 * np.floor(extent / 2 / spacing_mm).astype(int) + 1
        if spacing_mm > TEMPLATE_SPACING_MM:
            t = ndimage.gaussian_filter(t, 0.4 * spacing_mm / TEMPLATE_SPACING_MM)
        src = RoiGrid.centred((0.0, 0.0, 0.0), shape=t.shape, spacing_mm=TEMPLATE_SPACING_MM)
        dst = RoiGrid.centred((0.0, 0.0, 0.0), shape=tuple(n), spacing_mm=spacing_mm)
        t = resample(t, src.affine, dst, order=1)
    support = t >= SUPPORT_LEVEL * float(t.max())
    dist = ndimage.distance_transform_edt(~support, sampling=spacing_mm)
    shell = (dist > 0) & (dist <= SHELL_MM)
    k = np.where(support, t, 0.0) - shell * (float(t[support].sum()) / max(int(shell.sum()), 1))
    return (k / np.linalg.norm(k)).astype(np.float32)


# --------------------------------------------------------------------------- search
@dataclass(frozen=True, eq=False)
class _Window:
    grid: RoiGrid
    data: np.ndarray  # clipped, z-scored slab on grid (0 outside the slab)
    valid: np.ndarray  # bool: grid voxel inside the slab


def _window(
    slab_img: nib.spatialimages.SpatialImage,
    centre: np.ndarray,
    rotation: np.ndarray,
    half_extent_mm: np.ndarray,
    spacing_mm: float,
) -> _Window | None:
    """Head-aligned grid around ``centre``, clipped to the slab's extent, with the slab on it."""
    n = 2 * np.ceil(np.asarray(half_extent_mm) / spacing_mm).astype(int) + 1
    full = RoiGrid.centred(centre, shape=tuple(n), spacing_mm=spacing_mm, rotation=rotation)
    slab = slab_grid(slab_img)
    m = np.asarray(slab.shape) - 1
    corners = np.array([[i, j, k] for i in (0, m[0]) for j in (0, m[1]) for k in (0, m[2])])
    vox = full.world_to_voxel(slab.voxel_to_world(corners))
    lo = np.maximum(np.floor(vox.min(0)).astype(int), 0)
    hi = np.minimum(np.ceil(vox.max(0)).astype(int) + 1, n)
    if np.any(hi <= lo):
        return None
    grid = sub_grid(full, tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True)))
    data = slab_data(slab_img)
    # anti-alias when the window is coarser than the slab
    ratio = spacing_mm / np.asarray(slab.spacing)
    if np.any(ratio > 1.25):
        data = ndimage.gaussian_filter(data, np.maximum(0.4 * ratio, 0.0) * (ratio > 1.25))
    img = resample(data, slab.affine, grid, order=1, cval=np.nan)
    valid = np.isfinite(img)
    if valid.sum() < 27:
        return None
    vals = img[valid]
    hi_clip = float(np.percentile(vals, CLIP_PERCENTILE))
    img = np.clip(np.where(valid, img, 0.0), 0.0, hi_clip)
    mean, sd = float(img[valid].mean()), float(img[valid].std())
    img = np.where(valid, (img - mean) / (sd if sd > 0 else 1.0), 0.0).astype(np.float32)
    return _Window(grid, img, valid)


def _correlate(data: np.ndarray, kernel: np.ndarray, threads: int = 1) -> np.ndarray:
    """``out[i] = Σ_k data[i + k − c] · kernel[k]`` ('same' size, c = kernel centre), via FFT."""
    shape = [
        sp_fft.next_fast_len(d + k - 1, real=True)
        for d, k in zip(data.shape, kernel.shape, strict=True)
    ]
    fd = sp_fft.rfftn(data, shape, workers=threads)
    fk = sp_fft.rfftn(kernel[::-1, ::-1, ::-1], shape, workers=threads)
    full = sp_fft.irfftn(fd * fk, shape, workers=threads)
    c = [k // 2 for k in kernel.shape]
    return np.ascontiguousarray(
        full[tuple(slice(ci, ci + d) for ci, d in zip(c, data.shape, strict=True))],
        dtype=np.float32,
    )


def _highpass(win: _Window, spacing_mm: float) -> np.ndarray:
    data = win.data - ndimage.gaussian_filter(win.data, HIGHPASS_MM / spacing_mm)
    return np.where(win.valid, data, 0.0).astype(np.float32)


def _ncc(data: np.ndarray, kernel: np.ndarray, threads: int = 1) -> np.ndarray:
    """Local normalised cross-correlation (variance over the kernel box, floored)."""
    num = _correlate(data, kernel, threads)
    size = kernel.shape
    m1 = ndimage.uniform_filter(data, size, mode="constant")
    m2 = ndimage.uniform_filter(data * data, size, mode="constant")
    var = np.maximum(m2 - m1 * m1, VAR_FLOOR)
    return num / np.sqrt(float(np.prod(size)) * var)


def _subvoxel(score: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """Parabolic interpolation of the peak along each axis (clamped to ±0.5 voxel)."""
    out = peak.astype(float)
    for ax in range(3):
        if 0 < peak[ax] < score.shape[ax] - 1:
            lo, hi = peak.copy(), peak.copy()
            lo[ax] -= 1
            hi[ax] += 1
            a, b, c = score[tuple(lo)], score[tuple(peak)], score[tuple(hi)]
            den = a - 2 * b + c
            if den < 0:
                out[ax] += float(np.clip(0.5 * (a - c) / den, -0.5, 0.5))
    return out


def _peaks(score: np.ndarray, allowed: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Local maxima (voxel indices, (N, 3)) inside ``allowed``, best first."""
    masked = np.where(allowed, score, -np.inf).astype(np.float32)
    size = max(3, round(NMS_MM / spacing_mm) | 1)
    is_max = (masked == ndimage.maximum_filter(masked, size, mode="constant", cval=-np.inf)) & (
        np.isfinite(masked)
    )
    idx = np.argwhere(is_max)
    order = np.argsort(-masked[tuple(idx.T)], kind="stable")
    return idx[order]


def _search(
    slab_img: nib.spatialimages.SpatialImage,
    side: str,
    centre: np.ndarray,
    rotation: np.ndarray,
    half_mm: np.ndarray,
    spacing_mm: float,
    *,
    guess: np.ndarray | None,
    exclude_midline_of: np.ndarray | None = None,
    threads: int = 1,
    cache_dir: str | Path | None = None,
) -> tuple[np.ndarray, float] | None:
    """Best labyrinth position (world mm) and its score within ``half_mm`` of ``centre``."""
    kernel = matched_kernel(side, spacing_mm, cache_dir)
    kh = np.asarray(kernel.shape) // 2
    win = _window(slab_img, centre, rotation, np.asarray(half_mm) + kh * spacing_mm, spacing_mm)
    if win is None:
        return None
    # detection: plain correlation of the high-passed window
    score = _correlate(_highpass(win, spacing_mm), kernel, threads)
    coverage = ndimage.uniform_filter(win.valid.astype(np.float32), kernel.shape, mode="constant")
    # head-frame offsets of every window voxel from ``centre`` (axes of the window grid)
    idx0 = win.grid.world_to_voxel(np.asarray(centre)[None])[0]
    off = [(np.arange(s) - c) * spacing_mm for s, c in zip(win.grid.shape, idx0, strict=True)]
    inside = (
        (np.abs(off[0])[:, None, None] <= half_mm[0] + 1e-6)
        & (np.abs(off[1])[None, :, None] <= half_mm[1] + 1e-6)
        & (np.abs(off[2])[None, None, :] <= half_mm[2] + 1e-6)
    )
    allowed = inside & win.valid & (coverage >= MIN_COVERAGE)
    if exclude_midline_of is not None:
        x_mid = float(rotation[:, 0] @ (np.asarray(exclude_midline_of) - centre))
        allowed &= (np.abs(off[0] - x_mid) >= MIDLINE_EXCLUSION_MM)[:, None, None]
    peaks = _peaks(score, allowed, spacing_mm)
    if len(peaks) == 0:
        return None
    best = float(score[tuple(peaks[0])])
    top = [p for p in peaks if score[tuple(p)] >= PEAK_FRACTION * best] if best > 0 else peaks[:1]
    if guess is not None and len(top) > 1:
        world = win.grid.voxel_to_world(np.asarray(top, dtype=float))
        top = [top[int(np.argmin(np.linalg.norm(world - guess, axis=1)))]]
    return _localise(win, kernel, np.asarray(top[0]), allowed, spacing_mm, threads)


def _localise(
    win: _Window,
    kernel: np.ndarray,
    peak: np.ndarray,
    allowed: np.ndarray,
    spacing_mm: float,
    threads: int = 1,
) -> tuple[np.ndarray, float]:
    """Local-NCC maximum (sub-voxel) within :data:`FINE_MM` of ``peak``: (world mm, NCC)."""
    r = round(FINE_MM / spacing_mm)
    kh = np.asarray(kernel.shape) // 2
    lo = np.maximum(peak - r - kh, 0)
    hi = np.minimum(peak + r + kh + 1, win.data.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    ncc = _ncc(win.data[box], kernel, threads)
    near = np.zeros(ncc.shape, bool)
    c = peak - lo
    near[tuple(slice(max(int(a) - r, 0), int(a) + r + 1) for a in c)] = True
    near &= allowed[box]
    near[tuple(c)] = True
    q = _peaks(ncc, near, spacing_mm)[0]
    pos = win.grid.voxel_to_world((_subvoxel(ncc, q) + lo)[None])[0]
    return pos, float(ncc[tuple(q)])


# --------------------------------------------------------------------------- public
def _rotation(
    slab_img: nib.spatialimages.SpatialImage, head_rotation: np.ndarray | None
) -> np.ndarray:
    if head_rotation is None:
        return head_rotation_from_affine(slab_img.affine)
    return orthonormal(head_rotation)


def refine_centre(
    slab_img: nib.spatialimages.SpatialImage,
    initial_mm: np.ndarray,
    side: str,
    *,
    head_rotation: np.ndarray | None = None,
    search_mm: float = SEARCH_MM,
    spacing_mm: float = TEMPLATE_SPACING_MM,
    threads: int = 1,
    cache_dir: str | Path | None = None,
) -> RefinedCentre:
    """Re-centre ``side``'s ear near ``initial_mm`` (world mm) in the T2 slab.

    Searches ±``search_mm`` along the head axes (``head_rotation``, default from the slab's
    affine) with the matched filter. Falls back to ``initial_mm`` (method ``initial``) when the
    window misses the slab.
    """
    t0 = time.perf_counter()
    initial = np.asarray(initial_mm, dtype=float)
    rot = _rotation(slab_img, head_rotation)
    half = np.full(3, float(search_mm))
    found = _search(
        slab_img, side, initial, rot, half, spacing_mm,
        guess=initial, threads=threads, cache_dir=cache_dir,
    )  # fmt: skip
    if found is None:
        return RefinedCentre(
            initial, initial.copy(), 0.0, float("nan"), "initial",
            time.perf_counter() - t0, ("search window outside the slab",),
        )  # fmt: skip
    centre, score = found
    return RefinedCentre(
        initial, centre, float(np.linalg.norm(centre - initial)), score, "matched_filter",
        time.perf_counter() - t0, (),
    )  # fmt: skip


def detect_ears(
    slab_img: nib.spatialimages.SpatialImage,
    *,
    head_rotation: np.ndarray | None = None,
    coarse_spacing_mm: float = 1.0,
    fine_search_mm: float = 4.0,
    spacing_mm: float = TEMPLATE_SPACING_MM,
    threads: int = 1,
    cache_dir: str | Path | None = None,
) -> dict[str, RefinedCentre]:
    """Both ears from the slab alone (no head image): the ``detect`` localizer.

    The slab is split at its centre along the head's left→right axis (``head_rotation``,
    default from the slab affine); each half is searched at ``coarse_spacing_mm`` for the
    best labyrinth peak (not within 15 mm of the mid-plane), which is then refined at
    ``spacing_mm`` within ±``fine_search_mm``.
    ``initial_mm`` of each record is the coarse peak.
    """
    rot = _rotation(slab_img, head_rotation)
    slab = slab_grid(slab_img)
    centre = slab.centre_mm
    m = np.asarray(slab.shape) - 1
    corners = np.array([[i, j, k] for i in (0, m[0]) for j in (0, m[1]) for k in (0, m[2])])
    head = (slab.voxel_to_world(corners) - centre) @ rot  # slab corners in head axes
    out: dict[str, RefinedCentre] = {}
    for side in SIDES:
        t0 = time.perf_counter()
        lo, hi = head.min(0), head.max(0)
        if side == "left":
            hi[0] = 0.0
        else:
            lo[0] = 0.0
        half_centre = centre + rot @ ((lo + hi) / 2)
        found = _search(
            slab_img, side, half_centre, rot, (hi - lo) / 2, coarse_spacing_mm,
            guess=None, exclude_midline_of=centre, threads=threads, cache_dir=cache_dir,
        )  # fmt: skip
        if found is None:
            raise ValueError(f"no {side} labyrinth candidate in the slab")
        coarse, _ = found
        fine = refine_centre(
            slab_img, coarse, side, head_rotation=rot, search_mm=fine_search_mm,
            spacing_mm=spacing_mm, threads=threads, cache_dir=cache_dir,
        )  # fmt: skip
        method = fine.method.replace("matched_filter", "detect")
        out[side] = RefinedCentre(
            coarse, fine.refined_mm, fine.moved_mm, fine.score, method,
            time.perf_counter() - t0, fine.notes,
        )  # fmt: skip
    return out
