"""The endolymphatic space (ELS) inside the TFS, from a FLAIR-iMRI on the ROI grid.

Method (volumetric local thresholding with a partial-volume model, in the family of VOLT,
Gerb et al. 2020; the rule and its parameters are ours and are documented here):

In delayed-gadolinium FLAIR the perilymph is bright, the endolymph and the bone dark. Seen at
the FLAIR's resolution, a voxel's signal is ``F = D + (P − D) · (PSF ⊗ perilymph)``, with ``P``
the perilymph level, ``D`` the dark level and ``PSF`` the acquisition's blur. So

1. ``B`` is the signal fraction an all-perilymph labyrinth would give. With the SPACE on the
   same grid (the pipeline's case), ``B`` is the fluid fraction the SPACE shows inside the
   TFS (0 at the bone around it, 1 at the labyrinth's fluid; both fluids are bright there),
   blurred by the resolution the FLAIR lacks beside the SPACE (a Gaussian of σ =
   √(σ_FLAIR² − σ_SPACE²), σ = ``psf_sigma_voxels`` × the voxel size): the partial volume
   is read off the image, so a TFS mask one voxel too wide (half-fluid voxels at its
   border) does not read that border as ELS. Without the SPACE, ``B = PSF ⊗ TFS`` (the
   mask blurred by σ_FLAIR), which assumes the mask's border is the labyrinth's;
2. ``P(x)`` is the *local* perilymph level: a Gaussian-weighted mean (σ = ``local_mm``) of
   the bright TFS voxels (deep inside the TFS, ``B ≥ core_b``, and above an Otsu split of
   ``F / B`` there), so that coil bias and uneven enhancement between cochlea and vestibule
   cancel; ``D`` is the median of a bony shell around the TFS;
3. ``r = (F − D) / (P − D)`` is the observed perilymph fraction, and a TFS voxel is ELS when
   ``r < t · B``: darker than a fraction ``t`` of what perilymph would give *at that
   position*, which keeps the partial-volumed TFS border (bright perilymph next to dark bone)
   from being read as ELS. ``t`` is the threshold of the voxel's structure (cochlea 0.65,
   vestibule 0.675, canals 0.8: the thinner the structure, the more of its ELS is
   partial-volumed into the perilymph and the shallower the dip it leaves), and at most
   ``border_threshold`` 0.45 in the TFS's outermost voxel layer, where ``B`` is least certain
   (blur, interpolation and residual misalignment all act on the border: at 0.6 the border
   layer read 30–37 % ELS where the truth had 13–21 %). Without structure labels one
   ``threshold`` (0.6) holds inside. Chosen on 60 synthetic ears (seeds 7, 4242, 5151; the
   README gives the figures).

The ELS is a subset of the TFS by construction. Structures thinner than about two FLAIR voxels
(the canal ducts, a normal cochlear duct at 0.5 mm) stay below the resolution: their ELS is
partial-volumed away and not found.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from ievnet_bids.connect import fluid_fraction
from ievnet_bids.geometry.distance import distance_outside
from ievnet_bids.hydrops.structures import STRUCTURE_LABELS

MIN_LOCAL_WEIGHT = 0.05  # below: too few bright voxels near (a vestibule filled by ELS)


@dataclass(frozen=True)
class ElsParams:
    """Parameters of :func:`segment_els` (module doc). ``threshold`` holds where no structure
    labels are given (and for voxels without one); with them, each structure has its own."""

    threshold: float = 0.6
    cochlea_threshold: float = 0.65
    vestibule_threshold: float = 0.675
    canals_threshold: float = 0.8
    border_threshold: float | None = 0.45
    border_mm: float = 0.2
    psf_sigma_voxels: float = 0.5  # of the FLAIR's voxel size
    local_mm: float = 2.0
    core_b: float = 0.8
    shell_mm: tuple[float, float] = (0.6, 1.4)
    els_clearance_mm: float = 0.6

    def summary(self) -> dict:
        return asdict(self)

    def threshold_map(
        self, tfs: np.ndarray, spacing_mm: float, structures: np.ndarray | None = None
    ) -> np.ndarray:
        """The threshold of each voxel: by its structure label
        (:data:`~ievnet_bids.hydrops.structures.STRUCTURE_LABELS`; 0 takes :attr:`threshold`)
        where ``structures`` is given, else :attr:`threshold`; at most
        :attr:`border_threshold` within :attr:`border_mm` of the TFS's edge."""
        if structures is None:
            thresholds = np.full(tfs.shape, self.threshold, np.float32)
        else:
            thresholds = self._structure_thresholds(np.asarray(structures), tfs.shape)
        if self.border_threshold is not None:
            border = tfs & (distance_outside(~tfs, spacing_mm) <= self.border_mm)
            thresholds[border] = np.minimum(thresholds[border], self.border_threshold)
        return thresholds

    def _structure_thresholds(self, structures: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        if structures.shape != tuple(shape):
            raise ValueError(f"structure labels {structures.shape} differ from the TFS's {shape}")
        lookup = np.full(max(STRUCTURE_LABELS) + 1, self.threshold, np.float32)
        for value, name in STRUCTURE_LABELS.items():
            lookup[value] = getattr(self, f"{name}_threshold")
        unknown = np.setdiff1d(np.unique(structures), np.arange(lookup.size))
        if unknown.size:
            raise ValueError(f"structure labels {unknown.tolist()} are not {STRUCTURE_LABELS}")
        return lookup[structures.astype(np.intp)]


@dataclass(frozen=True)
class ElsResult:
    """``mask``: ELS (bool, ⊂ TFS); ``fraction``: ``B − r`` clipped to [0, 1] (the blurred
    ELS estimate); ``perilymph_level``/``dark_level``: medians of ``P`` and ``D``."""

    mask: np.ndarray
    fraction: np.ndarray
    perilymph_level: float
    dark_level: float


def _otsu(values: np.ndarray, bins: int = 128) -> float:
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(np.argmax(between))])


def _shell(tfs: np.ndarray, spacing_mm: float, inner_mm: float, outer_mm: float) -> np.ndarray:
    outside = distance_outside(tfs, spacing_mm)
    return (outside >= inner_mm) & (outside <= outer_mm)


def _local_level(
    flair: np.ndarray, tfs: np.ndarray, bright: np.ndarray, spacing_mm: float, p: ElsParams
) -> np.ndarray:
    """``P(x)``: Gaussian-weighted mean of the bright voxels (the ear's mean where few)."""
    local_vox = p.local_mm / spacing_mm
    weight = ndimage.gaussian_filter(bright.astype(np.float32), local_vox)
    level = ndimage.gaussian_filter(np.where(bright, flair, 0.0).astype(np.float32), local_vox)
    global_level = float(np.mean(flair[bright])) if bright.any() else float(flair[tfs].max())
    return np.where(
        weight > MIN_LOCAL_WEIGHT, level / np.maximum(weight, 1e-6), global_level
    ).astype(np.float32)


def _threshold(
    flair: np.ndarray,
    tfs: np.ndarray,
    all_perilymph: np.ndarray,
    bright: np.ndarray,
    dark: float,
    spacing_mm: float,
    p: ElsParams,
    thresholds: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ELS mask, ``P``, observed perilymph fraction ``r``) for the references ``bright``
    and the per-voxel ``thresholds``."""
    perilymph = _local_level(flair, tfs, bright, spacing_mm, p)
    observed = (flair - dark) / np.maximum(perilymph - dark, 1e-6)
    return tfs & (observed < thresholds * all_perilymph), perilymph, observed


@dataclass(frozen=True)
class SpaceView:
    """The SPACE on the ELS grid: its image and its voxel size (mm), for ``B`` (module doc)."""

    image: np.ndarray
    voxel_mm: float

    def crop(self, box: tuple[slice, ...]) -> SpaceView:
        return SpaceView(self.image[box], self.voxel_mm)


def all_perilymph_fraction(
    tfs: np.ndarray,
    *,
    spacing_mm: float,
    flair_voxel_mm: float,
    params: ElsParams,
    space: SpaceView | None = None,
) -> np.ndarray:
    """``B``: the FLAIR signal fraction of an all-perilymph labyrinth (module doc, step 1)."""
    sigma_flair = params.psf_sigma_voxels * flair_voxel_mm
    if space is None:
        return ndimage.gaussian_filter(tfs.astype(np.float32), sigma_flair / spacing_mm)
    if space.image.shape != tfs.shape:
        raise ValueError(f"SPACE shape {space.image.shape} differs from the TFS mask's {tfs.shape}")
    seen = np.where(tfs, np.clip(fluid_fraction(space.image, tfs, spacing_mm), 0.0, 1.0), 0.0)
    sigma_space = params.psf_sigma_voxels * space.voxel_mm
    extra = np.sqrt(max(sigma_flair**2 - sigma_space**2, 0.0)) / spacing_mm
    seen = seen.astype(np.float32)
    return ndimage.gaussian_filter(seen, extra) if extra > 0 else seen


def segment_els(
    flair: np.ndarray,
    tfs: np.ndarray,
    *,
    spacing_mm: float,
    flair_voxel_mm: float,
    params: ElsParams | None = None,
    space: SpaceView | None = None,
    structures: np.ndarray | None = None,
) -> ElsResult:
    """ELS mask inside ``tfs`` from ``flair`` (both on the same ROI grid, like ``space``
    and the structure labels ``structures`` when given; module doc)."""
    p = params or ElsParams()
    flair = np.asarray(flair, dtype=np.float32)
    tfs = np.asarray(tfs, dtype=bool)
    if flair.shape != tfs.shape:
        raise ValueError(f"FLAIR shape {flair.shape} differs from the TFS mask's {tfs.shape}")
    empty = np.zeros(tfs.shape, bool)
    if not tfs.any():
        return ElsResult(empty, np.zeros(tfs.shape, np.float32), float("nan"), float("nan"))
    thresholds = p.threshold_map(tfs, spacing_mm, structures)
    all_perilymph = all_perilymph_fraction(
        tfs, spacing_mm=spacing_mm, flair_voxel_mm=flair_voxel_mm, params=p, space=space
    )
    shell = _shell(tfs, spacing_mm, *p.shell_mm)
    dark = float(np.median(flair[shell])) if shell.any() else 0.0

    core = tfs & (all_perilymph >= p.core_b)
    if core.sum() < 10:
        core = tfs
    ratio = (flair[core] - dark) / np.maximum(all_perilymph[core], 1e-3)
    bright = np.zeros(tfs.shape, bool)
    bright[core] = ratio > _otsu(ratio)
    mask, perilymph, observed = _threshold(
        flair, tfs, all_perilymph, bright, dark, spacing_mm, p, thresholds
    )
    # second pass: perilymph references away from the first ELS (its blurred rim is darker)
    away = distance_outside(mask, spacing_mm) > p.els_clearance_mm
    if np.count_nonzero(bright & away) >= 10:
        mask, perilymph, observed = _threshold(
            flair, tfs, all_perilymph, bright & away, dark, spacing_mm, p, thresholds
        )
    fraction = np.clip(all_perilymph - observed, 0.0, 1.0).astype(np.float32)
    return ElsResult(
        mask=mask,
        fraction=fraction,
        perilymph_level=float(np.median(perilymph[tfs])),
        dark_level=dark,
    )


def els_percent(els: np.ndarray, tfs: np.ndarray, region: np.ndarray | None = None) -> float:
    """100 × |ELS ∩ region| / |TFS ∩ region| (NaN for an empty region)."""
    if region is not None:
        els, tfs = els & region, tfs & region
    n = int(np.count_nonzero(tfs))
    return float("nan") if n == 0 else 100.0 * int(np.count_nonzero(els & tfs)) / n
