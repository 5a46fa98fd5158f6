"""Rasterize tubes and ellipsoids onto a voxel grid, each restricted to its bounding box.

Structures are defined in a local frame (mm). A :class:`FrameMap` maps world points to that
frame (pose, scale, smooth elastic displacement) and back. Only voxels inside each structure's
bounding box are visited: rasterizing over the whole grid was ~100× slower
(``shared/docs/phantom-lessons.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from ievnet_bids.geometry.roi import RoiGrid
from ievnet_bids.synth.anatomy import Ellipsoid, Tube


class GridDisplacement:
    """Smooth random displacement field (mm) stored on the voxels of ``grid``.

    Built by separable linear interpolation of a coarse random lattice (``spacing_mm``), so a
    voxel's displacement is a lookup; other points interpolate the stored volume.
    """

    def __init__(
        self, rng: np.random.Generator, grid: RoiGrid, *, spacing_mm: float, amplitude: float
    ) -> None:
        from ievnet_bids.synth.render import smooth_field

        extent = np.asarray(grid.shape) * np.asarray(grid.spacing)
        cells = np.maximum(np.round(extent / spacing_mm).astype(int) + 1, 2)
        self.grid = grid
        self.values = np.stack(
            [smooth_field(rng, grid.shape, tuple(cells)) * amplitude for _ in range(3)], axis=-1
        )

    def at_box(self, box: tuple[slice, ...]) -> np.ndarray:
        return self.values[box]

    def __call__(self, points: np.ndarray) -> np.ndarray:
        idx = self.grid.world_to_voxel(np.asarray(points).reshape(-1, 3)).T
        out = [
            ndimage.map_coordinates(
                self.values[..., c], idx, order=1, mode="nearest", prefilter=False
            )
            for c in range(3)
        ]
        return np.stack(out, axis=-1).reshape(np.shape(points))


@dataclass
class FrameMap:
    """World ↔ structure frame: ``world = rotation @ (scale * local) + translation``.

    ``elastic`` (optional) displaces world points before the inverse rigid map, so the same
    field deforms every structure consistently.
    """

    rotation: np.ndarray
    translation: np.ndarray
    scale: float = 1.0
    elastic: Callable[[np.ndarray], np.ndarray] | None = None

    def to_local(self, world: np.ndarray, displacement: np.ndarray | None = None) -> np.ndarray:
        """World → local; ``displacement`` (same shape) skips evaluating the elastic field."""
        pts = np.asarray(world, dtype=np.float32)
        if displacement is not None:
            pts = pts + displacement
        elif self.elastic is not None:
            pts = pts + self.elastic(pts)
        return ((pts - self.translation) @ self.rotation) / self.scale

    def to_world(self, local: np.ndarray) -> np.ndarray:
        return (np.asarray(local, dtype=float) * self.scale) @ self.rotation.T + self.translation


def _voxel_box(
    grid: RoiGrid, frame: FrameMap, lo: np.ndarray, hi: np.ndarray, margin_mm: float
) -> tuple[slice, ...] | None:
    corners = np.array(
        [[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    )
    vox = grid.world_to_voxel(frame.to_world(corners))
    pad = margin_mm / min(grid.spacing)
    start = np.maximum(np.floor(vox.min(0) - pad).astype(int), 0)
    stop = np.minimum(np.ceil(vox.max(0) + pad).astype(int) + 1, grid.shape)
    if np.any(stop <= start):
        return None
    return tuple(slice(a, b) for a, b in zip(start, stop, strict=True))


def local_points(grid: RoiGrid, frame: FrameMap, box: tuple[slice, ...]) -> np.ndarray:
    """Local-frame coordinates of the voxels in ``box``: (*box shape, 3)."""
    idx = np.stack(np.meshgrid(*[np.arange(s.start, s.stop) for s in box], indexing="ij"), axis=-1)
    shape = idx.shape[:-1]
    world = grid.voxel_to_world(idx.reshape(-1, 3))
    disp = None
    if isinstance(frame.elastic, GridDisplacement) and frame.elastic.grid is grid:
        disp = frame.elastic.at_box(box).reshape(-1, 3)
    return frame.to_local(world, disp).reshape(*shape, 3)


def structure_box(
    s: Tube | Ellipsoid, grid: RoiGrid, frame: FrameMap, margin_mm: float = 1.0
) -> tuple[slice, ...] | None:
    """Voxel bounding box of a structure on ``grid`` (None when outside)."""
    if isinstance(s, Tube):
        r = s.max_radius
        return _voxel_box(grid, frame, s.points.min(0) - r, s.points.max(0) + r, margin_mm)
    reach = np.abs(s.axes) @ s.semi
    return _voxel_box(grid, frame, s.centre - reach, s.centre + reach, margin_mm)


def tube_inside(tube: Tube, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inside, lamina) boolean arrays for local points ``q`` of shape (..., 3)."""
    shape = q.shape[:-1]
    q = q.reshape(-1, 3)
    r = tube.max_radius
    dist, idx = cKDTree(tube.points).query(q, distance_upper_bound=r + 0.1)
    valid = idx < len(tube.points)
    inside = np.zeros(len(q), dtype=bool)
    lamina = np.zeros(len(q), dtype=bool)
    iv = idx[valid]
    off = q[valid] - tube.points[iv]
    rr = tube.radius_r[iv]
    if tube.flat_axis is not None and tube.radius_a is not None:
        da = off @ tube.flat_axis
        dr2 = np.einsum("ij,ij->i", off, off) - da**2
        ra = tube.radius_a[iv]
        inside_v = dr2 / rr**2 + da**2 / ra**2 <= 1.0
        if tube.lamina and tube.modiolus is not None:
            radial = tube.points[iv] - tube.modiolus
            radial -= np.outer(radial @ tube.flat_axis, tube.flat_axis)
            radial /= np.linalg.norm(radial, axis=1, keepdims=True) + 1e-9
            outward = np.einsum("ij,ij->i", off, radial)
            lamina_v = inside_v & (np.abs(da) < 0.08) & (outward < tube.lamina_reach * rr)
            lamina[np.flatnonzero(valid)] = lamina_v
    else:
        inside_v = dist[valid] <= rr
    inside[np.flatnonzero(valid)] = inside_v
    return inside.reshape(shape), lamina.reshape(shape)


def ellipsoid_inside(ell: Ellipsoid, q: np.ndarray) -> np.ndarray:
    """Boolean array: local points ``q`` (..., 3) inside ``ell``."""
    local = (q - ell.centre) @ ell.axes / ell.semi
    return np.einsum("...i,...i->...", local, local) <= 1.0


def structure_mask(
    s: Tube | Ellipsoid, grid: RoiGrid, frame: FrameMap
) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """(box, inside-mask in box) of one structure, or None when it misses the grid."""
    box = structure_box(s, grid, frame)
    if box is None:
        return None
    q = local_points(grid, frame, box)
    inside = tube_inside(s, q)[0] if isinstance(s, Tube) else ellipsoid_inside(s, q)
    return box, inside


def paint(
    labels: np.ndarray,
    structures: list[Tube | Ellipsoid],
    grid: RoiGrid,
    frame: FrameMap,
    *,
    lamina_label: int | None = None,
    protect: np.ndarray | None = None,
) -> None:
    """Paint structures in order into ``labels`` (in place); later ones overwrite earlier ones.

    World → local coordinates are computed once on the union of the structures' boxes.
    Voxels where ``protect`` is True are left untouched.
    """
    boxes = [structure_box(s, grid, frame) for s in structures]
    present = [b for b in boxes if b is not None]
    if not present:
        return
    lo = np.min([[sl.start for sl in b] for b in present], axis=0)
    hi = np.max([[sl.stop for sl in b] for b in present], axis=0)
    union = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    # one shared coordinate block pays off only when the boxes overlap a lot
    shared = np.prod(hi - lo) < 2 * sum(np.prod([sl.stop - sl.start for sl in b]) for b in present)
    local = local_points(grid, frame, union) if shared else None
    for s, box in zip(structures, boxes, strict=True):
        if box is None:
            continue
        if local is not None:
            rel = tuple(
                slice(b.start - u.start, b.stop - u.start) for b, u in zip(box, union, strict=True)
            )
            q = local[rel]
        else:
            q = local_points(grid, frame, box)
        lamina = None
        if isinstance(s, Tube):
            inside, lamina = tube_inside(s, q)
        else:
            inside = ellipsoid_inside(s, q)
        view = labels[box]
        keep = ~protect[box] if protect is not None else None
        if keep is not None:
            inside &= keep
        view[inside] = s.label
        if lamina is not None and lamina_label is not None:
            if keep is not None:
                lamina &= keep
            view[lamina] = lamina_label
