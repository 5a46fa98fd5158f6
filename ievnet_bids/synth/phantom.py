"""One synthetic inner-ear ROI: label map + image with known ground truth.

>>> ph = generate_phantom(3, side="left")
>>> ph.image.shape, ph.labels.shape
((200, 150, 100), (200, 150, 100))
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ievnet_bids.geometry.roi import ROI_SHAPE, ROI_SPACING_MM, RoiGrid
from ievnet_bids.synth import labels as L
from ievnet_bids.synth.anatomy import Labyrinth, random_rotation, sample_labyrinth
from ievnet_bids.synth.background import build_background
from ievnet_bids.synth.detail import add_detail, carve_septa, detail_rng
from ievnet_bids.synth.endolymph import (
    els_rng,
    els_volumes,
    hydrops_grade,
    rasterize_els,
    sample_endolymph,
)
from ievnet_bids.synth.rasterize import FrameMap, GridDisplacement, paint
from ievnet_bids.synth.render import render

EXPECTED_EULER_VESTIBULAR = -2  # vestibule + 3 canal loops: one component, three tunnels
MAX_TOPOLOGY_TRIES = 8
REALISM_LEVELS = (1, 2)  # 1: the first phantoms; 2: phantoms v2 (fine detail of real crops)


@dataclass
class Phantom:
    """A rendered phantom on ``grid``; ``labels`` use :mod:`ievnet_bids.synth.labels`."""

    image: np.ndarray
    labels: np.ndarray
    grid: RoiGrid
    side: str
    centre_mm: np.ndarray  # ear centre (labyrinth bounding-box centre) in world mm
    meta: dict = field(default_factory=dict)
    els: np.ndarray | None = None  # endolymphatic space (bool, ⊂ TFS) when drawn with hydrops

    @property
    def tfs(self) -> np.ndarray:
        return L.tfs_mask(self.labels)

    @property
    def affine(self) -> np.ndarray:
        return self.grid.affine


def default_grid() -> RoiGrid:
    """The IE-Vnet ROI: 200×150×100 voxels at 0.2 mm, RAS, centred on the world origin."""
    return RoiGrid.centred((0.0, 0.0, 0.0), shape=ROI_SHAPE, spacing_mm=ROI_SPACING_MM)


def sample_pose(
    rng: np.random.Generator,
    grid: RoiGrid,
    lab: Labyrinth,
    *,
    max_rotation_deg: float = 20.0,
    max_shift_fraction: float = 0.15,
    elastic_mm: float = 0.35,
    margin_mm: float = 0.6,
) -> FrameMap:
    """Random pose of ``lab`` in ``grid``: rotation, shift, subject scale, elastic field.

    The labyrinth's bounding-box centre goes to the grid centre plus a shift of up to
    ``max_shift_fraction`` of the grid extent, clamped so that the whole labyrinth stays
    inside the grid with ``margin_mm`` to spare (ground truth is never cut by the ROI).
    """
    extent = np.asarray(grid.shape) * np.asarray(grid.spacing)
    rotation = random_rotation(rng, max_rotation_deg)
    scale = float(np.clip(rng.normal(1.0, 0.06), 0.85, 1.15))
    lo, hi = lab.bounds(margin=0.0)
    corners = np.array(
        [[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    )
    mid = (lo + hi) / 2
    half_reach = np.abs((corners - mid) * scale @ rotation.T).max(0) + elastic_mm * 3
    room = np.maximum(extent / 2 - half_reach - margin_mm, 0.0)
    limit = np.minimum(max_shift_fraction * extent, room)
    shift = rng.uniform(-1.0, 1.0, 3) * limit
    translation = grid.centre_mm + shift - rotation @ (scale * mid)
    elastic = None
    if elastic_mm > 0:
        elastic = GridDisplacement(rng, grid, spacing_mm=6.0, amplitude=elastic_mm)
    return FrameMap(rotation, translation, scale, elastic)


def rasterize_tfs(lab: Labyrinth, grid: RoiGrid, frame: FrameMap) -> np.ndarray:
    """TFS sub-label map (0 elsewhere) of ``lab`` posed by ``frame`` on ``grid``."""
    out = np.zeros(grid.shape, np.uint8)
    vestibule, *ampullae = lab.ellipsoids
    # tubes and ampullae first, the vestibule last so canal connectors end inside it
    paint(out, [*lab.tubes, *ampullae, vestibule], grid, frame, lamina_label=L.SPIRAL_LAMINA)
    return out


def vestibular_euler(tfs_labels: np.ndarray) -> int:
    """Euler characteristic (26-connectivity) of vestibule + canals, cropped to their box."""
    from skimage.measure import euler_number

    mask = np.isin(tfs_labels, (L.VESTIBULE, L.ANTERIOR_CANAL, L.POSTERIOR_CANAL, L.LATERAL_CANAL))
    idx = np.argwhere(mask)
    if idx.size == 0:
        return 1
    lo, hi = idx.min(0), idx.max(0) + 1
    return int(euler_number(mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))], 26))


def generate_phantom(
    seed: int,
    *,
    side: str = "right",
    grid: RoiGrid | None = None,
    contrast: str = "space",
    background: bool = True,
    max_rotation_deg: float = 20.0,
    max_shift_fraction: float = 0.15,
    elastic_mm: float = 0.35,
    realism: int = 1,
    hydrops: float | None = None,
    acquire: bool = True,
) -> Phantom:
    """Draw one phantom, deterministic for ``seed``.

    ``realism=2`` draws phantoms v2 (:mod:`ievnet_bids.synth.detail`): interscalar septa,
    marrow, dim tissue at the labyrinth, vessel dots and fundus nerves, from a random stream
    of their own, so ``realism=1`` phantoms are unchanged.

    ``side="left"`` is the exact mirror image (x → −x about the grid centre) of the right
    phantom of the same seed. ``grid`` defaults to the IE-Vnet ROI; its first axis must be
    left-right for the mirror to be anatomical.

    ``acquire=False`` leaves the image unacquired: the anatomy blurred by the point-spread
    function, not sampled on the acquisition grid and without noise, for a caller that samples
    it itself (:func:`ievnet_bids.synth.head.write_bids_dataset` samples it on the slab).
    Everything else, random draws included, is that of ``acquire=True``.

    ``hydrops`` ∈ [0, 1] (severity, 0 none … 1 severe) also draws the endolymphatic space
    (:mod:`ievnet_bids.synth.endolymph`) into ``Phantom.els``, from a random stream of its own:
    image and labels are those of ``hydrops=None`` (in T2-weighted images endo- and perilymph
    look alike); ``meta["hydrops"]`` records severity, grade and volumes.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', not {side!r}")
    if realism not in REALISM_LEVELS:
        raise ValueError(f"realism must be one of {REALISM_LEVELS}, not {realism!r}")
    grade = None if hydrops is None else hydrops_grade(float(hydrops))
    grid = grid or default_grid()
    rng = np.random.default_rng(seed)
    attempts = 0
    while attempts < MAX_TOPOLOGY_TRIES:
        attempts += 1
        lab = sample_labyrinth(rng)
        frame = sample_pose(
            rng,
            grid,
            lab,
            max_rotation_deg=max_rotation_deg,
            max_shift_fraction=max_shift_fraction,
            elastic_mm=elastic_mm,
        )
        tfs_labels = rasterize_tfs(lab, grid, frame)
        if vestibular_euler(tfs_labels) == EXPECTED_EULER_VESTIBULAR:
            break
    detail_info: dict = {}
    if realism >= 2:
        rng_detail = detail_rng(seed)
        septum_vox = int(rng_detail.choice((1, 2), p=(0.6, 0.4)))
        cochlea, hook = lab.tubes[0], lab.tubes[1]
        detail_info["septa"] = {
            "thickness_vox": septum_vox,
            "voxels": carve_septa(tfs_labels, cochlea, grid, frame, septum_vox, hook),
        }
    tfs = tfs_labels > 0
    if background:
        labels, bg_info = build_background(rng, grid, lab, frame, tfs)
    else:
        labels, bg_info = np.full(grid.shape, L.BONE, np.uint8), {}
    labels[tfs] = tfs_labels[tfs]
    if realism >= 2:
        detail_info.update(add_detail(rng_detail, labels, lab, grid, frame))
    image, render_info = render(
        labels,
        rng,
        contrast=contrast,
        spacing_mm=min(grid.spacing),
        detail=realism >= 2,
        acquire=acquire,
    )
    els = None
    if hydrops is not None:
        geometry = sample_endolymph(els_rng(seed), lab)
        els = rasterize_els(geometry, float(hydrops), labels, grid, frame)
    lo, hi = lab.bounds(margin=0.0)
    centre = frame.to_world(((lo + hi) / 2)[None])[0]
    if side == "left":
        image = np.ascontiguousarray(image[::-1])
        labels = np.ascontiguousarray(labels[::-1])
        els = None if els is None else np.ascontiguousarray(els[::-1])
        mirror = grid.centre_mm.copy()
        centre = centre.copy()
        centre[0] = 2 * mirror[0] - centre[0]
    meta = {
        "seed": int(seed),
        "side": side,
        "topology_attempts": attempts,
        "anatomy": lab.params,
        "pose": {
            "rotation": frame.rotation.tolist(),
            "translation_mm": frame.translation.tolist(),
            "scale": frame.scale,
        },
        "background": bg_info,
        "render": render_info,
    }
    if realism >= 2:
        meta["realism"] = realism
        meta["detail"] = detail_info
    if els is not None:
        meta["hydrops"] = {
            "severity": float(hydrops),
            "grade": grade,
            "volumes": els_volumes(labels, els, float(np.prod(grid.spacing))),
        }
    return Phantom(image, labels, grid, side, centre, meta, els)
