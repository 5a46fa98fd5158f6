"""ROI grids: the one geometry record that crop and map-back both derive from.

An :class:`RoiGrid` is a voxel grid (shape + 4×4 voxel-to-world affine, RAS mm). The IE-Vnet
ROI is 200×150×100 voxels at 0.2 mm: 40 mm left-right, 30 mm posterior-anterior, 20 mm
inferior-superior, centred on the inner ear.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

ROI_SHAPE: tuple[int, int, int] = (200, 150, 100)
ROI_SPACING_MM: float = 0.2


SNAP_VOX = 1e-6  # resample(): affine entries this close to an integer are snapped


@dataclass(frozen=True)
class RoiGrid:
    """A voxel grid in world space: ``world = affine @ [i, j, k, 1]``."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @classmethod
    def centred(
        cls,
        centre_mm: np.ndarray | tuple[float, float, float],
        *,
        shape: tuple[int, int, int] = ROI_SHAPE,
        spacing_mm: float = ROI_SPACING_MM,
        rotation: np.ndarray | None = None,
    ) -> RoiGrid:
        """Grid of ``shape`` at ``spacing_mm`` whose centre lies at ``centre_mm``.

        ``rotation`` (3×3, columns = grid axes in world) orients the grid; identity = RAS.
        """
        rot = np.eye(3) if rotation is None else np.asarray(rotation, dtype=float)
        affine = np.eye(4)
        affine[:3, :3] = rot * spacing_mm
        half = (np.asarray(shape, dtype=float) - 1.0) / 2.0
        affine[:3, 3] = np.asarray(centre_mm, dtype=float) - affine[:3, :3] @ half
        return cls(tuple(int(s) for s in shape), affine)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def centre_mm(self) -> np.ndarray:
        half = (np.asarray(self.shape, dtype=float) - 1.0) / 2.0
        return self.affine[:3, :3] @ half + self.affine[:3, 3]

    def voxel_to_world(self, ijk: np.ndarray) -> np.ndarray:
        """(N, 3) voxel indices → (N, 3) world mm."""
        return np.asarray(ijk, dtype=float) @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_to_voxel(self, xyz: np.ndarray) -> np.ndarray:
        """(N, 3) world mm → (N, 3) continuous voxel indices."""
        inv = np.linalg.inv(self.affine)
        return np.asarray(xyz, dtype=float) @ inv[:3, :3].T + inv[:3, 3]

    def world_coordinates(self, dtype: type = np.float32) -> np.ndarray:
        """World coordinates of every voxel centre, shape (*shape, 3)."""
        idx = np.indices(self.shape, dtype=dtype)
        a = self.affine.astype(dtype)
        return np.einsum("ij,j...->...i", a[:3, :3], idx) + a[:3, 3]

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps({"shape": list(self.shape), "affine": self.affine.tolist()}, indent=2)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, source: str | Path) -> RoiGrid:
        text = Path(source).read_text() if Path(str(source)).exists() else str(source)
        data = json.loads(text)
        return cls(tuple(int(s) for s in data["shape"]), np.asarray(data["affine"], dtype=float))


def resample(
    data: np.ndarray,
    source_affine: np.ndarray,
    target: RoiGrid,
    *,
    order: int = 3,
    cval: float = 0.0,
    mode: str = "constant",
) -> np.ndarray:
    """Resample ``data`` (on ``source_affine``) onto ``target`` by world coordinates.

    ``order`` 3 is cubic B-spline (images), 1 linear (probabilities), 0 nearest (labels).
    Outside ``data``: ``cval`` (``mode`` "constant"), or any :func:`scipy.ndimage.affine_transform`
    mode, e.g. "nearest" to extend the edge.
    """
    # voxel(target) → world → voxel(source), as one affine; entries within 1e-6 of an
    # integer are snapped to it, so that grids sharing voxel centres (e.g. a flip) map
    # exactly and round-off cannot push a voxel on the source's edge outside it
    matrix = np.linalg.inv(source_affine) @ target.affine
    nearest = np.round(matrix)
    matrix = np.where(np.abs(matrix - nearest) < SNAP_VOX, nearest, matrix)
    out = ndimage.affine_transform(
        np.asarray(data, dtype=np.float32 if order > 0 else data.dtype),
        matrix[:3, :3],
        offset=matrix[:3, 3],
        output_shape=target.shape,
        order=order,
        mode=mode,
        cval=cval,
        prefilter=order > 1,
    )
    return out
