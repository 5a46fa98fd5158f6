"""Surroundings of the labyrinth: petrous bone, posterior and middle cranial fossae with brain
and CSF, the internal auditory canal (IAC) with its nerves, mastoid air cells, vessels.

The distractors matter as much as the labyrinth (``shared/docs/phantom-lessons.md``): bright
CSF with complex borders (real folia/sulci shapes from the MNI ICBM152 2009a grey/white-matter
maps shipped with nilearn, randomly posed and deformed), the bright IAC touching the labyrinth at
the fundus behind a thin bony plate, dark nerve bundles, small vessels and fluid-filled mastoid
cells.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from ievnet_bids.geometry.extract import index_box
from ievnet_bids.geometry.roi import RoiGrid
from ievnet_bids.synth import labels as L
from ievnet_bids.synth.anatomy import Labyrinth, Tube, _jitter, _segment, _unit, random_rotation
from ievnet_bids.synth.rasterize import FrameMap, GridDisplacement, paint, structure_mask
from ievnet_bids.synth.render import smooth_field

COARSE_FACTOR = 2  # background layout is computed at 2× the grid spacing, then up-sampled
BULB_GAP_MM = (1.0, 5.0)
"""Bone between the jugular bulb's dome and the posterior canal's lowest point (mm)."""
VESSEL_CLEARANCE_MM = 0.5
"""No vessel of the background comes closer to the labyrinth than this (mm), as the v2
vessel dots (:data:`ievnet_bids.synth.detail.MIN_GAP_MM`)."""


@lru_cache(maxsize=1)
def mni_tissue_maps() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(grey matter, white matter) probability maps in [0, 1] and their voxel→MNI affine.

    MNI ICBM152 2009a nonlinear symmetric, 1 mm, as shipped inside the nilearn package
    (no download).
    """
    import nilearn

    folder = Path(nilearn.__file__).parent / "datasets" / "data"
    gm = nib.load(folder / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz")
    wm = nib.load(folder / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz")
    scale = 1.0 / 255.0 if gm.get_fdata(dtype=np.float32).max() > 1.5 else 1.0
    return (
        (gm.get_fdata(dtype=np.float32) * scale),
        (wm.get_fdata(dtype=np.float32) * scale),
        gm.affine,
    )


def coarse_grid(grid: RoiGrid, factor: int = COARSE_FACTOR) -> RoiGrid:
    """A grid covering ``grid`` with ``factor``× fewer voxels per axis."""
    shape = tuple(int(np.ceil(s / factor)) for s in grid.shape)
    affine = grid.affine.copy()
    affine[:3, :3] *= factor
    # align voxel centres: coarse voxel 0 covers fine voxels 0..factor-1
    affine[:3, 3] = grid.voxel_to_world(np.full((1, 3), (factor - 1) / 2.0))[0]
    return RoiGrid(shape, affine)


def upsample(coarse: np.ndarray, shape: tuple[int, ...], factor: int = COARSE_FACTOR) -> np.ndarray:
    """Linear up-sampling by 2 of a coarse field onto the fine grid (inverse of ``coarse_grid``)."""
    if factor != 2:
        raise ValueError("only factor 2 is implemented")
    out = np.asarray(coarse, dtype=np.float32)
    for axis, n in enumerate(shape):
        a = np.moveaxis(out, axis, 0)
        prev = np.concatenate([a[:1], a[:-1]])
        nxt = np.concatenate([a[1:], a[-1:]])
        up = np.empty((2 * a.shape[0], *a.shape[1:]), np.float32)
        up[0::2] = 0.75 * a + 0.25 * prev
        up[1::2] = 0.75 * a + 0.25 * nxt
        out = np.moveaxis(up[:n], 0, axis)
    return np.ascontiguousarray(out)


def _mni_brain(rng: np.random.Generator, world: np.ndarray, side_sign: float) -> np.ndarray:
    """Grey (1) / white (2) / none (0) labels from a random posterior-fossa or temporal crop."""
    gm, wm, affine = mni_tissue_maps()
    centre = np.array(
        [side_sign * rng.uniform(15, 45), rng.uniform(-75, -20), rng.uniform(-50, -18)]
    )
    rot = random_rotation(rng, 35.0)
    scale = rng.uniform(0.8, 1.3)
    mni = (world - world.reshape(-1, 3).mean(0)) @ rot.T * scale + centre
    inv = np.linalg.inv(affine)
    vox = (mni @ inv[:3, :3].T + inv[:3, 3]).reshape(-1, 3).T
    g = ndimage.map_coordinates(gm, vox, order=1, mode="constant", cval=0.0)
    w = ndimage.map_coordinates(wm, vox, order=1, mode="constant", cval=0.0)
    thr = rng.uniform(0.35, 0.6)
    out = np.zeros(g.shape, np.uint8)
    out[(g + w) > thr] = 1
    out[(w > g) & ((g + w) > thr)] = 2
    return out.reshape(world.shape[:-1])


def build_background(
    rng: np.random.Generator,
    grid: RoiGrid,
    lab: Labyrinth,
    frame: FrameMap,
    tfs: np.ndarray,
) -> tuple[np.ndarray, dict]:
    """Label map of everything but the TFS, and a record of what was drawn.

    ``tfs`` is the already rasterized TFS mask (the IAC stops short of it at the fundus by a
    thin bony plate, and nothing overwrites it).
    """
    info: dict = {}
    lm = lab.landmarks
    coarse = coarse_grid(grid)
    world_c = coarse.world_coordinates()
    disp_c = None
    if isinstance(frame.elastic, GridDisplacement):
        disp_c = frame.elastic.values[::COARSE_FACTOR, ::COARSE_FACTOR, ::COARSE_FACTOR].reshape(
            -1, 3
        )
    local_c = frame.to_local(world_c.reshape(-1, 3), disp_c).reshape(world_c.shape)

    # --- IAC geometry first: the posterior fossa boundary passes through its porus ----------
    iac_len = rng.uniform(8.0, 12.0)
    iac_r = rng.uniform(1.75, 2.75)
    iac_dir = lm["iac_direction"]
    fundus = lm["fundus"]
    n_post = _jitter(np.array([-0.72, -0.68, 0.12]), rng, 8.0)
    d_post = float(n_post @ (fundus + iac_len * iac_dir)) - rng.uniform(0.3, 1.2)
    # keep a bony wall between the posterior fossa and the labyrinth; lengthen the IAC so that
    # its porus still opens into the cistern
    labyrinth_reach = max(float((t.points @ n_post).max()) + t.max_radius for t in lab.tubes)
    d_post = max(d_post, labyrinth_reach + rng.uniform(0.8, 2.0))
    along = float(n_post @ iac_dir)
    if along > 0.2:
        iac_len = max(iac_len, (d_post + 0.6 - float(n_post @ fundus)) / along)
    fundus + iac_len * iac_dir
    n_mid = _jitter(np.array([0.0, 0.15, 1.0]), rng, 10.0)
    d_mid = float(lm["superior_canal_top"][2]) + rng.uniform(0.8, 3.0)
    n_mast = _jitter(np.array([0.75, -0.6, -0.2]), rng, 12.0)
    d_mast = rng.uniform(4.5, 8.0)

    extent = np.asarray(grid.shape) * np.asarray(grid.spacing)
    wobble_cells = tuple(np.maximum(np.round(extent / 3.0).astype(int), 2))
    w = np.stack([smooth_field(rng, coarse.shape, wobble_cells) for _ in range(4)], axis=-1)
    s_post = local_c @ n_post - d_post + w[..., 0] * rng.uniform(0.3, 1.2)
    s_mid = local_c @ n_mid - d_mid + w[..., 1] * rng.uniform(0.2, 0.8)
    s_mast = local_c @ n_mast - d_mast + w[..., 2] * 1.0

    # --- fine-grid layout -----------------------------------------------------------------------
    shape = grid.shape
    s_post_f = upsample(s_post.astype(np.float32), shape)
    s_mid_f = upsample(s_mid.astype(np.float32), shape)
    labels = np.full(shape, L.BONE, np.uint8)

    # intracranial: posterior fossa (cerebellum, CPA cistern) and middle fossa (temporal lobe)
    brain_c = _mni_brain(rng, world_c, side_sign=1.0)
    brain_f = upsample((brain_c == 1).astype(np.float32), shape) > 0.5
    white_f = upsample((brain_c == 2).astype(np.float32), shape) > 0.5
    cistern = rng.uniform(0.6, 4.0)
    mid_csf = rng.uniform(0.3, 1.5)
    intracranial = (s_post_f > 0) | (s_mid_f > 0)
    deep = ((s_post_f > cistern) & (s_mid_f < 0)) | ((s_mid_f > mid_csf) & (s_post_f < 0))
    labels[intracranial] = L.CISTERN_CSF
    labels[intracranial & deep & brain_f] = L.GREY_MATTER
    labels[intracranial & deep & white_f] = L.WHITE_MATTER
    if rng.random() < 0.3:  # sometimes the crop holds only CSF and brain surface
        labels[intracranial & deep & ~brain_f & ~white_f & (rng.random() < 0.5)] = L.GREY_MATTER
    info["cistern_mm"] = cistern

    # mastoid air cells (posterolateral), sometimes fluid-filled (effusion)
    if rng.random() < 0.85:
        mast_f = upsample(s_mast.astype(np.float32), shape) > 0
        cell_cells = tuple(np.maximum(np.round(extent / rng.uniform(1.2, 2.5)).astype(int), 2))
        cell_f = upsample(smooth_field(rng, coarse.shape, cell_cells), shape)
        air = mast_f & ~intracranial & (cell_f > rng.uniform(-0.3, 0.4))
        labels[air] = L.AIR
        if rng.random() < 0.15:  # effusion: a few fluid-filled cells
            fluid_cells = tuple(np.maximum(np.round(extent / 4.0).astype(int), 2))
            ff = upsample(smooth_field(rng, coarse.shape, fluid_cells), shape)
            labels[air & (ff > rng.uniform(0.6, 1.6))] = L.MASTOID_FLUID
        info["mastoid"] = True

    # soft tissue below the skull base (sometimes in the ROI)
    if rng.random() < 0.5:
        z_cut = -rng.uniform(6.0, 9.5)
        soft_c = (local_c[..., 2] - z_cut + w[..., 3] * 0.8) < 0
        soft = upsample(soft_c.astype(np.float32), shape) > 0.5
        labels[soft & ~intracranial] = L.SOFT_TISSUE

    iac = _paint_iac(rng, labels, grid, frame, tfs, fundus, iac_dir, iac_len, iac_r)
    if iac is not None:
        info["iac"] = iac
    capsule = np.zeros_like(tfs)
    if tfs.any():
        reach = int(np.ceil(VESSEL_CLEARANCE_MM / min(grid.spacing))) + 1
        box = index_box(np.argwhere(tfs), reach, tfs.shape)
        distance = ndimage.distance_transform_edt(~tfs[box], sampling=grid.spacing)
        capsule[box] = distance <= VESSEL_CLEARANCE_MM
    _paint_vessels(rng, labels, grid, frame, lm, protect=capsule | (labels == L.IAC_CSF))
    return labels, info


def _paint_iac(
    rng: np.random.Generator,
    labels: np.ndarray,
    grid: RoiGrid,
    frame: FrameMap,
    tfs: np.ndarray,
    fundus: np.ndarray,
    iac_dir: np.ndarray,
    iac_len: float,
    iac_r: float,
) -> dict | None:
    """The IAC (porus funnel, a bony plate of 0–0.4 mm at the fundus) and its nerves, in
    place; returns the IAC's record (None when it misses the grid)."""
    record = None
    iac = _iac_tubes(rng, fundus, iac_dir, iac_len, iac_r)
    iac_res = structure_mask(iac, grid, frame)
    if iac_res is not None:
        box, inside = iac_res
        plate = rng.uniform(0.0, 0.4)
        if plate > 0:
            # voxels within `plate` mm of the TFS stay bone
            near = ndimage.distance_transform_edt(~tfs[box], sampling=grid.spacing) <= plate
            inside &= ~near
        inside &= ~tfs[box]
        labels[box][inside] = L.IAC_CSF
        record = {"length_mm": iac_len, "radius_mm": iac_r, "plate_mm": plate}
    nerves = _nerves(rng, fundus, iac_dir, iac_len, iac_r)
    nerve_protect = tfs | ~np.isin(labels, (L.IAC_CSF, L.CISTERN_CSF))
    paint(labels, nerves, grid, frame, protect=nerve_protect)
    return record


def _paint_vessels(
    rng: np.random.Generator,
    labels: np.ndarray,
    grid: RoiGrid,
    frame: FrameMap,
    lm: dict,
    protect: np.ndarray,
) -> None:
    """The jugular bulb below the posterior canal (60 %) and 1–5 small random vessels.

    The bulb's dome lies :data:`BULB_GAP_MM` below the posterior canal's lowest point (3–5
    ± 3 mm in the anatomy literature), and no vessel comes within :data:`VESSEL_CLEARANCE_MM`
    of the labyrinth: the otic capsule separates them. (The bulb used to be placed 4–7 mm
    below the canal's *centre*, so that in most phantoms it swallowed the lower canal arc.)
    """
    vessels: list[Tube] = []
    if rng.random() < 0.6:
        gap = rng.uniform(*BULB_GAP_MM)
        neck_r, dome_r = rng.uniform(2.0, 3.5), rng.uniform(2.5, 4.0)
        bulb = lm["posterior_canal_bottom"] - np.array([0.0, 0.0, gap + dome_r])
        vessels.append(_segment(bulb + np.array([2.0, -1.0, -3.0]), bulb, neck_r, dome_r, L.VESSEL))
    for _ in range(rng.integers(1, 6)):
        vessels.append(_random_vessel(rng, grid, frame))
    paint(labels, vessels, grid, frame, protect=protect)


def _iac_tubes(
    rng: np.random.Generator,
    fundus: np.ndarray,
    direction: np.ndarray,
    length: float,
    radius: float,
) -> Tube:
    """The IAC: narrow at the fundus, a cylinder, then a funnel at the porus."""
    n = int(length / 0.05) + 1
    t = np.linspace(0, 1, n)
    bend = _unit(np.cross(direction, rng.normal(size=3)))
    pts = (
        fundus
        + np.outer(t * length, direction)
        + np.outer(np.sin(np.pi * t), bend) * rng.uniform(0, 0.8)
    )
    profile = np.where(
        t < 0.15,
        0.55 + 0.45 * t / 0.15,
        np.where(t > 0.75, 1.0 + rng.uniform(0.2, 0.5) * (t - 0.75) / 0.25, 1.0),
    )
    # extend beyond the porus into the cistern so the canal opens widely
    return Tube(pts, radius * profile, L.IAC_CSF)


def _nerves(
    rng: np.random.Generator,
    fundus: np.ndarray,
    direction: np.ndarray,
    length: float,
    radius: float,
) -> list[Tube]:
    """Facial, cochlear, superior and inferior vestibular nerves: dark bundles in the IAC."""
    up = _unit(np.array([0.0, 0.0, 1.0]) - direction[2] * direction)
    fwd = np.cross(direction, up)
    offsets = [
        (0.45, 0.45),
        (-0.45, 0.45),
        (0.45, -0.45),
        (-0.45, -0.45),
    ]  # (up, forward) fractions
    tubes = []
    for ou, of in offsets:
        if rng.random() < 0.15:
            continue
        start = fundus + direction * 0.8 + (ou * up + of * fwd) * radius * 0.4
        end = (
            fundus
            + direction * (length + rng.uniform(1.0, 5.0))
            + (ou * up + of * fwd) * radius * rng.uniform(0.3, 0.8)
        )
        r = rng.uniform(0.3, 0.55)
        tubes.append(_segment(start, end, r * 0.8, r, L.NERVE))
    return tubes


def _random_vessel(rng: np.random.Generator, grid: RoiGrid, frame: FrameMap) -> Tube:
    """A gently curved small vessel crossing part of the ROI, away from the labyrinth centre."""
    half = np.asarray(grid.shape) * np.asarray(grid.spacing) / 2
    start = rng.uniform(-half, half)
    while np.linalg.norm(start) < 6.0:
        start = rng.uniform(-half, half)
    direction = _unit(rng.normal(size=3))
    length = rng.uniform(4.0, 15.0)
    n = int(length / 0.05) + 1
    t = np.linspace(0, 1, n)[:, None]
    bend = _unit(np.cross(direction, rng.normal(size=3))) * rng.uniform(0, 2.0)
    pts = start + t * length * direction + np.sin(np.pi * t) * bend
    r = rng.uniform(0.25, 0.9)
    return Tube(pts, np.full(n, r), L.VESSEL)
