"""Label map → MR-like image: per-label intensities, texture, acquisition simulation.

Two contrasts:

* ``"space"``: heavily T2-weighted 3D-SPACE/CISS appearance (fluid bright, brain
  intermediate, bone and air dark) with per-sample random intensities;
* ``"random"``: SynthSeg-style random mean intensity per label (Billot et al. 2023).

Both then simulate the acquisition: Gaussian point-spread blur and down-sampling to an
acquired voxel of 0.4–0.7 mm, Rician noise at that resolution, cubic up-sampling back to the
0.2 mm grid (the IE-Vnet data were acquired at 0.5 mm and up-sampled), a smooth multiplicative
bias field and a gamma curve.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ievnet_bids.synth import labels as L

# (low, high) of the mean intensity per label, relative to fluid ≈ 1 (SPACE-like).
SPACE_INTENSITY: dict[int, tuple[float, float]] = {
    L.AIR: (0.0, 0.02),
    L.COCHLEA: (0.7, 1.0),
    L.VESTIBULE: (0.75, 1.05),
    L.ANTERIOR_CANAL: (0.7, 1.0),
    L.POSTERIOR_CANAL: (0.7, 1.0),
    L.LATERAL_CANAL: (0.7, 1.0),
    L.IAC_CSF: (0.8, 1.1),
    L.CISTERN_CSF: (0.8, 1.15),
    L.GREY_MATTER: (0.3, 0.6),
    L.WHITE_MATTER: (0.2, 0.45),
    L.BONE: (0.0, 0.07),
    L.NERVE: (0.12, 0.4),
    L.VESSEL: (0.0, 1.0),  # flow void or slow bright flow
    L.SOFT_TISSUE: (0.08, 0.35),
    L.MASTOID_FLUID: (0.5, 1.0),
    L.SPIRAL_LAMINA: (0.15, 0.5),
}
# Phantoms v2 only (``detail=True``): drawn after every other random setting.
SPACE_DETAIL_INTENSITY: dict[int, tuple[float, float]] = {
    L.MARROW: (0.12, 0.45),
    L.DIM_TISSUE: (0.2, 0.55),
    L.SMALL_VESSEL: (0.45, 1.0),
}


def label_means(rng: np.random.Generator, contrast: str) -> np.ndarray:
    """Mean intensity per label value (index = label)."""
    means = np.zeros(L.N_LABELS, np.float32)
    if contrast == "space":
        for label, (lo, hi) in SPACE_INTENSITY.items():
            means[label] = rng.uniform(lo, hi)
        # the labyrinth structures share most of their brightness
        tfs_level = rng.uniform(0.8, 1.1)
        for label in (L.COCHLEA, L.VESTIBULE, L.ANTERIOR_CANAL, L.POSTERIOR_CANAL, L.LATERAL_CANAL):
            means[label] = tfs_level * rng.uniform(0.92, 1.05)
        means[L.SPIRAL_LAMINA] = tfs_level * rng.uniform(0.2, 0.6)
    elif contrast == "random":
        means[: L.N_V1_LABELS] = rng.uniform(0.0, 1.0, L.N_V1_LABELS)
        # keep the TFS structures similar to each other so the target stays one tissue
        tfs_level = rng.uniform(0.0, 1.0)
        for label in L.TFS_LABELS:
            means[label] = np.clip(tfs_level + rng.normal(0, 0.05), 0, 1)
    else:
        raise ValueError(f"unknown contrast {contrast!r}: use 'space' or 'random'")
    return means


def _linear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) linear interpolation, voxel-centre aligned (grid mode)."""
    pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), lo] += 1 - frac
    m[np.arange(n_out), hi] += frac
    return m


def _cubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) Catmull-Rom cubic interpolation (edge-clamped), voxel-centre aligned."""
    pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    base = np.floor(pos).astype(int)
    t = pos - base
    weights = [
        0.5 * (-(t**3) + 2 * t**2 - t),
        0.5 * (3 * t**3 - 5 * t**2 + 2),
        0.5 * (-3 * t**3 + 4 * t**2 + t),
        0.5 * (t**3 - t**2),
    ]
    m = np.zeros((n_out, n_in), np.float32)
    rows = np.arange(n_out)
    for k, w in zip(range(-1, 3), weights, strict=True):
        np.add.at(m, (rows, np.clip(base + k, 0, n_in - 1)), w)
    return m


def _psf_matrix(n_in: int, n_out: int, sigma_in: float) -> np.ndarray:
    """(n_out, n_in) Gaussian point-spread sampling: blur by ``sigma_in`` voxels, then sample."""
    centres = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    x = np.arange(n_in)[None, :] - centres[:, None]
    m = np.exp(-0.5 * (x / max(sigma_in, 1e-3)) ** 2).astype(np.float32)
    return m / m.sum(axis=1, keepdims=True)


def rician(rng: np.random.Generator, image: np.ndarray, sd: float) -> np.ndarray:
    """Magnitude of ``image`` plus complex Gaussian noise of ``sd`` per channel (float32 draws:
    the real part first, then the imaginary part)."""
    re = image + sd * rng.standard_normal(image.shape, dtype=np.float32)
    im = sd * rng.standard_normal(image.shape, dtype=np.float32)
    return np.sqrt(re * re + im * im)


def apply_separable(volume: np.ndarray, matrices: list[np.ndarray]) -> np.ndarray:
    """Apply one (n_out, n_in) matrix along each axis of a 3-D volume."""
    out = np.asarray(volume, dtype=np.float32)
    for axis, m in enumerate(matrices):
        out = np.moveaxis(np.tensordot(m, out, axes=(1, axis)), 0, axis)
    return np.ascontiguousarray(out)


def smooth_field(
    rng: np.random.Generator, shape: tuple[int, ...], cells: int | tuple[int, ...]
) -> np.ndarray:
    """Smooth random field on a grid of ``shape``: linear interpolation of a random lattice of
    ``cells`` points per axis (zero mean, unit SD at the lattice points)."""
    cells_t = (cells,) * len(shape) if isinstance(cells, int) else tuple(cells)
    lattice = tuple(max(2, min(c, s)) for c, s in zip(cells_t, shape, strict=True))
    small = rng.normal(0.0, 1.0, size=lattice).astype(np.float32)
    mats = [_linear_matrix(c, s) for c, s in zip(lattice, shape, strict=True)]
    return apply_separable(small, mats)


@dataclass
class RenderParams:
    """Everything random about one rendering, drawn once."""

    contrast: str
    means: np.ndarray  # mean intensity per label value
    texture_lattice: np.ndarray  # coarse random lattice of the multiplicative texture
    texture_amplitude: float
    acquired_mm: np.ndarray  # (3,) acquired voxel size
    low_shape: tuple[int, int, int]  # acquisition grid
    snr: float  # inf = no noise
    noise: tuple[np.ndarray, np.ndarray] | None  # Rician real/imaginary parts (numpy path)
    bias_amplitude: float
    bias_lattice: np.ndarray
    gamma: float
    scale: float

    def summary(self) -> dict:
        return {
            "contrast": self.contrast,
            "acquired_mm": [float(a) for a in self.acquired_mm],
            "snr": float(self.snr),
            "gamma": float(self.gamma),
        }


def draw_render_params(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    *,
    contrast: str = "space",
    spacing_mm: float = 0.2,
    acquired_mm: float | tuple[float, float, float] | None = None,
    snr: float | None = None,
    detail: bool = False,
) -> RenderParams:
    """Draw a rendering for a label map of ``shape`` (``detail=True`` for the labels of
    phantoms v2, whose intensities are drawn last so that v1 renderings are unchanged)."""
    means = label_means(rng, contrast)
    cells = int(rng.integers(6, 14))
    texture_lattice = rng.normal(0.0, 1.0, size=tuple(max(2, min(cells, s)) for s in shape))
    texture_amplitude = float(rng.uniform(0.02, 0.1))
    if acquired_mm is None:
        base = rng.uniform(0.4, 0.7)
        acquired = np.clip(base * rng.uniform(0.9, 1.15, 3), 0.35, 0.8)
    else:
        acquired = np.broadcast_to(np.asarray(acquired_mm, dtype=float), (3,)).copy()
    factors = acquired / spacing_mm
    low_shape = tuple(max(4, round(s / f)) for s, f in zip(shape, factors, strict=True))
    snr = float(rng.uniform(12.0, 45.0)) if snr is None else float(snr)
    noise = None
    if np.isfinite(snr):
        sd = float(np.median(means[list(L.TFS_LABELS)])) / snr
        noise = (
            rng.normal(0.0, sd, low_shape).astype(np.float32),
            rng.normal(0.0, sd, low_shape).astype(np.float32),
        )
    bias_amplitude = float(rng.uniform(0.05, 0.3))
    bias_lattice = rng.normal(0.0, 1.0, size=tuple(max(2, min(3, s)) for s in shape))
    gamma = float(np.exp(rng.uniform(np.log(0.75), np.log(1.35))))
    scale = float(rng.uniform(300.0, 1000.0))  # arbitrary scanner units, like the int16 crops
    if detail:
        for label, (lo, hi) in SPACE_DETAIL_INTENSITY.items():
            means[label] = rng.uniform(lo, hi) if contrast == "space" else rng.uniform(0.0, 1.0)
    return RenderParams(
        contrast,
        means,
        texture_lattice.astype(np.float32),
        texture_amplitude,
        acquired,
        low_shape,
        snr,
        noise,
        bias_amplitude,
        bias_lattice.astype(np.float32),
        gamma,
        scale,
    )


def acquisition_matrices(
    shape: tuple[int, ...], params: RenderParams, spacing_mm: float
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-axis (point-spread sampling, cubic up-sampling) matrices of one rendering."""
    factors = params.acquired_mm / spacing_mm
    down = [
        _psf_matrix(n, m, f / 2.355)
        for n, m, f in zip(shape, params.low_shape, factors, strict=True)
    ]
    up = [_cubic_matrix(m, n) for m, n in zip(params.low_shape, shape, strict=True)]
    return down, up


def lattice_matrices(lattice: np.ndarray, shape: tuple[int, ...]) -> list[np.ndarray]:
    return [_linear_matrix(c, s) for c, s in zip(lattice.shape, shape, strict=True)]


def render_with(
    labels: np.ndarray, params: RenderParams, spacing_mm: float = 0.2, *, acquire: bool = True
) -> np.ndarray:
    """Render ``labels`` with fixed ``params`` (numpy).

    ``acquire=False`` stops before the acquisition: the anatomy blurred by the point-spread
    function on the fine grid, neither sampled on the acquisition grid nor noisy, for a
    caller that samples it itself (the synthetic head slabs: sampling twice would blur thin
    structures like a coarser scan).
    """
    shape = labels.shape
    image = params.means[labels]
    lattice = params.texture_lattice
    texture = apply_separable(lattice, lattice_matrices(lattice, shape))
    image *= 1.0 + params.texture_amplitude * texture
    if acquire:
        down, up = acquisition_matrices(shape, params, spacing_mm)
        low = apply_separable(image, down)  # point-spread blur + sampling on the acquired grid
        if params.noise is not None:  # Rician noise at the acquired resolution
            low = np.sqrt((low + params.noise[0]) ** 2 + params.noise[1] ** 2)
        image = apply_separable(low, up)  # scanner-style cubic interpolation to the fine grid
    else:
        factors = params.acquired_mm / spacing_mm
        blur = [_psf_matrix(n, n, f / 2.355) for n, f in zip(shape, factors, strict=True)]
        image = apply_separable(image, blur)
    bias = apply_separable(params.bias_lattice, lattice_matrices(params.bias_lattice, shape))
    image = np.clip(image * np.exp(params.bias_amplitude * bias), 0.0, None)
    peak = float(np.percentile(image, 99.9)) or 1.0
    return ((image / peak) ** params.gamma * params.scale).astype(np.float32)


def render(
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    contrast: str = "space",
    spacing_mm: float = 0.2,
    acquired_mm: float | tuple[float, float, float] | None = None,
    snr: float | None = None,
    detail: bool = False,
    acquire: bool = True,
) -> tuple[np.ndarray, dict]:
    """Render ``labels`` to an image (float32) and return it with the drawn settings
    (``acquire``: see :func:`render_with`)."""
    params = draw_render_params(
        rng,
        labels.shape,
        contrast=contrast,
        spacing_mm=spacing_mm,
        acquired_mm=acquired_mm,
        snr=snr,
        detail=detail,
    )
    return render_with(labels, params, spacing_mm, acquire=acquire), params.summary()
