"""Phantoms v2: the fine detail of real 3D-SPACE crops that the first phantoms lack.

Looking at the real IE-Vnet crops beside v1 phantoms (issue 11) showed what fooled the model
on real scans: crisp interscalar septa between the cochlear turns, speckled intermediate-signal
marrow patches in the petrous bone, many small bright vessel dots in and around the temporal
bone, intermediate-signal tissue touching the labyrinth, and fine nerve bundles in the fundus
of the internal auditory canal (IAC). Each function here adds one of them to a label map.

All randomness comes from a generator of its own (``detail_rng``), so that a v1 phantom of
the same seed is unchanged by this module's existence.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from ievnet_bids.geometry.roi import RoiGrid
from ievnet_bids.synth import labels as L
from ievnet_bids.synth.anatomy import Labyrinth, Tube
from ievnet_bids.synth.rasterize import FrameMap, local_points, structure_box
from ievnet_bids.synth.render import smooth_field

#: Labels the v2 detail may be painted over (never the TFS, CSF, brain or air).
HOST_TISSUE = (L.BONE, L.MARROW, L.SOFT_TISSUE)
#: Vessel dots keep at least this block distance (mm) from the labyrinth: one 2×2×2 block
#: of bone, i.e. ≥ 1 fine voxel, so they never touch the ground-truth TFS.
MIN_GAP_MM = 0.5


def detail_rng(seed: int) -> np.random.Generator:
    """The generator of the v2 detail of phantom ``seed`` (independent of the v1 stream)."""
    return np.random.default_rng([seed, 11])


def _spiral_angle(cochlea: Tube, hook: Tube | None) -> tuple[np.ndarray, np.ndarray]:
    """(centreline points, spiral angle of each): the spiral's points are uniform in angle
    from 0 to ``phi_max``; the hook (basal end towards the vestibule) continues below 0."""
    n = len(cochlea.points)
    phi = np.linspace(0.0, 1.0, n) * cochlea.params["phi_max"]
    if hook is None:
        return cochlea.points, phi
    step = phi[1] - phi[0]
    hook_phi = -step * np.arange(1, len(hook.points) + 1)
    return np.concatenate([cochlea.points, hook.points]), np.concatenate([phi, hook_phi])


#: The 13 offsets of half a 26-neighbourhood (each neighbour pair is seen once).
_HALF_NEIGHBOURS = [
    (i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1) if (i, j, k) > (0, 0, 0)
]


def _pair_views(shape: tuple[int, ...], offset: tuple[int, int, int]):
    """Slices (a, b) such that ``x[b]`` is the neighbour of ``x[a]`` at ``offset``."""
    a = tuple(slice(max(0, -o), n - max(0, o)) for o, n in zip(offset, shape, strict=True))
    b = tuple(slice(max(0, o), n - max(0, -o)) for o, n in zip(offset, shape, strict=True))
    return a, b


def carve_septa(
    tfs_labels: np.ndarray,
    cochlea: Tube,
    grid: RoiGrid,
    frame: FrameMap,
    thickness_vox: int,
    hook: Tube | None = None,
) -> int:
    """Turn the bony interscalar septa between neighbouring cochlear turns into bone (0).

    Each cochlear voxel takes the spiral angle of its nearest centreline point. Wherever two
    26-neighbouring cochlear voxels lie on different turns (angles more than half a turn
    apart), the one on the higher turn becomes septum, so afterwards the turns touch only
    along the spiral: no handle is left between them. ``thickness_vox`` > 1 thickens the
    septa by dilation inside the cochlea. Returns the number of carved voxels.
    """
    box = structure_box(cochlea, grid, frame)
    if box is None:
        return 0
    view = tfs_labels[box]
    inside = np.isin(view, (L.COCHLEA, L.SPIRAL_LAMINA))
    if not inside.any():
        return 0
    points, angle = _spiral_angle(cochlea, hook)
    phi = np.full(inside.shape, np.nan, dtype=np.float32)
    phi[inside] = angle[cKDTree(points).query(local_points(grid, frame, box)[inside])[1]]
    septum = np.zeros_like(inside)
    for offset in _HALF_NEIGHBOURS:
        a, b = _pair_views(inside.shape, offset)
        both = inside[a] & inside[b]
        jump = both & (np.abs(phi[a] - phi[b]) > np.pi)
        higher_a = jump & (phi[a] > phi[b])
        septum[a] |= higher_a
        septum[b] |= jump & ~higher_a
    if thickness_vox > 1:
        septum = ndimage.binary_dilation(septum, iterations=thickness_vox - 1) & inside
    view[septum] = 0
    return int(septum.sum())


def _coarse_distance_mm(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Distance (mm) to ``mask`` computed on 2×2×2 blocks (fast): 0 in a block that holds a
    mask voxel, else the distance between block centres (underestimates by ≤ 1 fine voxel)."""
    padded = np.pad(mask, [(0, n % 2) for n in mask.shape])
    blocks = padded.reshape(
        padded.shape[0] // 2, 2, padded.shape[1] // 2, 2, padded.shape[2] // 2, 2
    ).any(axis=(1, 3, 5))
    dist = ndimage.distance_transform_edt(~blocks, sampling=2 * spacing)
    full = dist.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    return full[: mask.shape[0], : mask.shape[1], : mask.shape[2]]


def add_marrow(
    rng: np.random.Generator, labels: np.ndarray, tfs_distance_mm: np.ndarray, grid: RoiGrid
) -> float:
    """Speckled intermediate-signal marrow patches in the bone away from the otic capsule.

    Returns the fraction of bone voxels turned into marrow."""
    spacing = np.asarray(grid.spacing, dtype=float)
    extent = np.asarray(labels.shape) * spacing
    patch_cells = tuple(np.maximum(np.round(extent / rng.uniform(2.5, 6.0)).astype(int), 2))
    speckle_cells = tuple(np.maximum(np.round(extent / rng.uniform(0.4, 0.8)).astype(int), 2))
    patches = smooth_field(rng, labels.shape, patch_cells) > rng.uniform(0.2, 1.2)
    speckle = smooth_field(rng, labels.shape, speckle_cells) > rng.uniform(-0.6, 0.4)
    capsule_mm = rng.uniform(1.0, 2.5)  # the dense otic capsule around the labyrinth
    bone = labels == L.BONE
    marrow = bone & patches & speckle & (tfs_distance_mm > capsule_mm)
    labels[marrow] = L.MARROW
    return float(marrow.sum() / max(int(bone.sum()), 1))


def _segment_mask(
    shape: tuple[int, ...], spacing: np.ndarray, a: np.ndarray, b: np.ndarray, radius_mm: float
) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """(box, inside) of the voxels within ``radius_mm`` of the segment a–b (voxel coords)."""
    reach = radius_mm / spacing + 1
    lo = np.maximum(np.floor(np.minimum(a, b) - reach).astype(int), 0)
    hi = np.minimum(np.ceil(np.maximum(a, b) + reach).astype(int) + 1, shape)
    if np.any(hi <= lo):
        return None
    box = tuple(slice(int(x), int(y)) for x, y in zip(lo, hi, strict=True))
    idx = np.stack(
        np.meshgrid(*[np.arange(x, y) for x, y in zip(lo, hi, strict=True)], indexing="ij"), axis=-1
    ).astype(np.float32)
    ab = (b - a) * spacing
    rel = (idx - a) * spacing
    t = np.clip(rel @ ab / max(float(ab @ ab), 1e-9), 0.0, 1.0)
    d = np.linalg.norm(rel - t[..., None] * ab, axis=-1)
    return box, d <= radius_mm


def add_vessel_dots(
    rng: np.random.Generator, labels: np.ndarray, tfs_distance_mm: np.ndarray, grid: RoiGrid
) -> int:
    """Many short small vessels: bright dots in the bone and soft tissue (half of them within
    4 mm of the labyrinth), dark dots in the CSF. Returns how many were drawn."""
    spacing = np.asarray(grid.spacing, dtype=float)
    host = np.isin(labels, HOST_TISSUE) & (tfs_distance_mm > MIN_GAP_MM)
    near = host & (tfs_distance_mm < 4.0)
    csf = np.isin(labels, (L.IAC_CSF, L.CISTERN_CSF))
    pools = [np.argwhere(near), np.argwhere(host), np.argwhere(csf)]
    count = int(rng.integers(12, 45))
    drawn = 0
    for _ in range(count):
        kind = rng.choice(3, p=(0.45, 0.35, 0.2))
        pool = pools[kind]
        if len(pool) == 0:
            continue
        centre = pool[rng.integers(len(pool))].astype(float)
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        half = rng.uniform(0.2, 1.4) / spacing * direction
        res = _segment_mask(
            labels.shape, spacing, centre - half, centre + half, rng.uniform(0.12, 0.35)
        )
        if res is None:
            continue
        box, inside = res
        allowed = csf[box] if kind == 2 else host[box]
        labels[box][inside & allowed] = L.NERVE if kind == 2 else L.SMALL_VESSEL
        drawn += 1
    return drawn


def add_dim_tissue(
    rng: np.random.Generator, labels: np.ndarray, tfs: np.ndarray, grid: RoiGrid
) -> int:
    """0–3 blobs of intermediate-signal tissue touching the outside of the labyrinth."""
    spacing = np.asarray(grid.spacing, dtype=float)
    surface = np.argwhere(tfs & ~ndimage.binary_erosion(tfs))
    if len(surface) == 0:
        return 0
    centroid = np.argwhere(tfs).mean(0)
    count = int(rng.integers(0, 4))
    for _ in range(count):
        point = surface[rng.integers(len(surface))].astype(float)
        outward = (point - centroid) * spacing
        outward /= np.linalg.norm(outward) + 1e-9
        semi = rng.uniform(0.5, 1.8, 3)
        centre = point + outward * semi.mean() * rng.uniform(0.5, 0.9) / spacing
        axes = np.linalg.qr(rng.normal(size=(3, 3)))[0]
        reach = semi.max() / spacing + 1
        lo = np.maximum(np.floor(centre - reach).astype(int), 0)
        hi = np.minimum(np.ceil(centre + reach).astype(int) + 1, labels.shape)
        if np.any(hi <= lo):
            continue
        box = tuple(slice(int(x), int(y)) for x, y in zip(lo, hi, strict=True))
        idx = np.stack(
            np.meshgrid(*[np.arange(x, y) for x, y in zip(lo, hi, strict=True)], indexing="ij"),
            axis=-1,
        )
        local = ((idx - centre) * spacing) @ axes / semi
        inside = np.einsum("...i,...i->...", local, local) <= 1.0
        labels[box][inside & np.isin(labels[box], HOST_TISSUE)] = L.DIM_TISSUE
    return count


def add_fundus_nerves(
    rng: np.random.Generator, labels: np.ndarray, lab: Labyrinth, grid: RoiGrid, frame: FrameMap
) -> int:
    """2–5 fine nerve bundles (0.1–0.25 mm) in the CSF of the IAC fundus, reaching towards the
    cochlear base and the vestibule. Returns how many were drawn."""
    spacing = np.asarray(grid.spacing, dtype=float)
    lm = lab.landmarks
    fundus, direction = lm["fundus"], lm["iac_direction"]
    targets = (lm["cochlea_base"], lm["vestibule"])
    iac = labels == L.IAC_CSF
    count = int(rng.integers(2, 6))
    for k in range(count):
        towards = targets[k % 2] - fundus
        start = fundus + 0.25 * towards + rng.normal(0, 0.3, 3)
        end = fundus + direction * rng.uniform(2.0, 6.0) + rng.normal(0, 0.6, 3)
        a, b = (grid.world_to_voxel(frame.to_world(p[None]))[0] for p in (start, end))
        res = _segment_mask(labels.shape, spacing, a, b, rng.uniform(0.1, 0.25))
        if res is not None:
            box, inside = res
            labels[box][inside & iac[box]] = L.NERVE
    return count


def add_detail(
    rng: np.random.Generator,
    labels: np.ndarray,
    lab: Labyrinth,
    grid: RoiGrid,
    frame: FrameMap,
) -> dict:
    """Marrow, dim tissue, vessel dots and fundus nerves, painted into ``labels`` in place
    (never over the TFS); returns a record of what was drawn."""
    tfs = L.tfs_mask(labels)
    distance = _coarse_distance_mm(tfs, np.asarray(grid.spacing, dtype=float))
    return {
        "marrow_fraction_of_bone": add_marrow(rng, labels, distance, grid),
        "dim_tissue_blobs": add_dim_tissue(rng, labels, tfs, grid),
        "vessel_dots": add_vessel_dots(rng, labels, distance, grid),
        "fundus_nerves": add_fundus_nerves(rng, labels, lab, grid, frame),
    }
