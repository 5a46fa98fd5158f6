"""Gadolinium-enhanced 3D-FLAIR (iMRI) rendering of a phantom's labels and endolymphatic space.

About 4 h after intravenous gadolinium the perilymph enhances and the endolymph does not
(``shared/docs/hydrops-imri.md``): perilymph (TFS minus ELS) bright, endolymph dark, CSF
suppressed by the inversion pulse, bone dark, brain intermediate, nerve and soft tissue
intermediate-dark, marrow intermediate, small vessels moderately bright. The acquisition is
simulated as for the SPACE contrast (:func:`ievnet_bids.synth.render.render_with`): point-spread
blur and sampling at ~0.5 mm, Rician noise there (perilymph SNR 8–20: FLAIR is noisier than
SPACE), cubic up-sampling to the phantom grid, a smooth bias field.
"""

from __future__ import annotations

import numpy as np

from ievnet_bids.synth import labels as L
from ievnet_bids.synth.render import RenderParams, render_with

#: Tissue index of the endolymph in the FLAIR rendering only (one past the label values).
ENDOLYMPH = L.N_LABELS
PERILYMPH_LABELS: tuple[int, ...] = (
    L.COCHLEA,
    L.VESTIBULE,
    L.ANTERIOR_CANAL,
    L.POSTERIOR_CANAL,
    L.LATERAL_CANAL,
)
# (low, high) of the mean intensity per tissue, relative to enhanced perilymph ≈ 1.
FLAIR_INTENSITY: dict[int, tuple[float, float]] = {
    L.AIR: (0.0, 0.02),
    L.IAC_CSF: (0.03, 0.1),  # nulled by the inversion pulse
    L.CISTERN_CSF: (0.03, 0.1),
    L.GREY_MATTER: (0.38, 0.5),
    L.WHITE_MATTER: (0.3, 0.4),
    L.BONE: (0.0, 0.05),
    L.NERVE: (0.2, 0.3),
    L.VESSEL: (0.1, 0.5),
    L.SOFT_TISSUE: (0.15, 0.3),
    L.MASTOID_FLUID: (0.2, 0.6),  # proteinaceous effusion: not nulled like CSF
    L.SPIRAL_LAMINA: (0.05, 0.15),
    L.MARROW: (0.3, 0.45),
    L.DIM_TISSUE: (0.2, 0.35),
    L.SMALL_VESSEL: (0.45, 0.75),  # gadolinium
    ENDOLYMPH: (0.04, 0.12),
}
FLAIR_ACQUIRED_MM = 0.5
FLAIR_SNR = (8.0, 20.0)


def flair_rng(seed: int) -> np.random.Generator:
    """The generator of the FLAIR rendering of phantom ``seed`` (independent of all others)."""
    return np.random.default_rng([seed, 14, 1])


def flair_tissue(labels: np.ndarray, els: np.ndarray) -> np.ndarray:
    """Label map with the ELS voxels set to :data:`ENDOLYMPH`."""
    tissue = np.array(labels, dtype=np.uint8, copy=True)
    tissue[np.asarray(els, dtype=bool)] = ENDOLYMPH
    return tissue


def draw_flair_params(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    *,
    spacing_mm: float = 0.2,
    acquired_mm: float | None = None,
    snr: float | None = None,
) -> RenderParams:
    """Random FLAIR rendering settings (``snr=inf`` renders without noise)."""
    means = np.zeros(L.N_LABELS + 1, np.float32)
    perilymph = rng.uniform(0.95, 1.05)
    for label in PERILYMPH_LABELS:
        means[label] = perilymph * rng.uniform(0.97, 1.03)
    for tissue, (lo, hi) in FLAIR_INTENSITY.items():
        means[tissue] = rng.uniform(lo, hi)
    cells = int(rng.integers(6, 14))
    texture_lattice = rng.normal(0.0, 1.0, size=tuple(max(2, min(cells, s)) for s in shape))
    base = FLAIR_ACQUIRED_MM if acquired_mm is None else float(acquired_mm)
    acquired = base * rng.uniform(0.95, 1.05, 3)
    low_shape = tuple(
        max(4, round(s * spacing_mm / a)) for s, a in zip(shape, acquired, strict=True)
    )
    snr = float(rng.uniform(*FLAIR_SNR)) if snr is None else float(snr)
    noise = None
    if np.isfinite(snr):
        sd = float(perilymph) / snr
        noise = (
            rng.normal(0.0, sd, low_shape).astype(np.float32),
            rng.normal(0.0, sd, low_shape).astype(np.float32),
        )
    bias_lattice = rng.normal(0.0, 1.0, size=tuple(max(2, min(3, s)) for s in shape))
    return RenderParams(
        "flair",
        means,
        texture_lattice.astype(np.float32),
        float(rng.uniform(0.02, 0.06)),
        acquired,
        low_shape,
        snr,
        noise,
        float(rng.uniform(0.05, 0.2)),
        bias_lattice.astype(np.float32),
        1.0,
        1.0,
    )


def render_flair(
    labels: np.ndarray,
    els: np.ndarray,
    rng: np.random.Generator,
    spacing_mm: float = 0.2,
    *,
    acquired_mm: float | None = None,
    snr: float | None = None,
    acquire: bool = True,
) -> tuple[np.ndarray, dict]:
    """FLAIR-iMRI image (float32, 99.9th percentile 1) of ``labels`` with endolymph ``els``,
    and the drawn settings. ``snr``: perilymph SNR at the acquired voxel (default 8–20;
    ``inf`` for none). ``acquire=False``: the point-spread-blurred image, neither sampled
    nor noisy, for a caller that samples it on its own FLAIR grid and adds the noise there
    (:func:`ievnet_bids.synth.render.render_with`)."""
    tissue = flair_tissue(labels, els)
    params = draw_flair_params(
        rng, tissue.shape, spacing_mm=spacing_mm, acquired_mm=acquired_mm, snr=snr
    )
    info = params.summary()
    info["means"] = {
        L.LABEL_NAMES.get(int(t), "endolymph"): round(float(params.means[t]), 4)
        for t in np.unique(tissue)
    }
    return render_with(tissue, params, spacing_mm, acquire=acquire), info


def perilymph_level(image: np.ndarray, labels: np.ndarray, els: np.ndarray) -> float:
    """Median intensity over the perilymph (TFS minus ELS minus spiral lamina)."""
    peri = np.isin(labels, PERILYMPH_LABELS) & ~np.asarray(els, dtype=bool)
    return float(np.median(image[peri])) if peri.any() else float(image.max())
