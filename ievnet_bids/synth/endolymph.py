"""Endolymphatic compartments of a phantom and their distension by endolymphatic hydrops.

The endolymphatic space (ELS) is drawn from the labyrinth geometry
(:class:`~ievnet_bids.synth.anatomy.Labyrinth`) on the phantom's grid and pose, only on TFS
voxels, so it is always a subset of the total fluid space (TFS). Compartments
(``shared/docs/hydrops-imri.md``, ``shared/docs/labyrinth-anatomy.md``):

* cochlear duct (scala media): a thin duct along the cochlear turns on the outer wall of the
  lumen, on the apex side of the spiral lamina (between scala vestibuli and tympani);
* saccule (anterior-inferior vestibule, ≈ 2.4 mm³) and utricle (posterior-superior, ≈ 10.7 mm³)
  as ellipsoids in the vestibule's own axes;
* semicircular ducts (≈ 0.3 mm wide) on the outer wall of the canal arcs, along the canal
  limbs, and membranous ampullae.

``hydrops`` ∈ [0, 1] (0 none … 1 severe) distends the saccule and cochlear duct first, the
utricle later, the canal ducts little. Every compartment grows as a nested family (a shape at a
higher severity contains the shape at a lower one), so for a fixed seed the ELS mask grows
monotonically with ``hydrops``. Measured on phantoms (README): vestibular ELS% ≈ 30 % at none,
> 60 % at severe; cochlear ELS% ≈ 12 % → ≈ 50 %.

The severity grades here (:func:`hydrops_grade`) are ranges of the phantom parameter, not a
clinical scheme (Nakashima 2009, Baráth 2014, Bernaerts 2019 grade real images).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from ievnet_bids.geometry.roi import RoiGrid
from ievnet_bids.synth import labels as L
from ievnet_bids.synth.anatomy import Ellipsoid, Labyrinth, Tube
from ievnet_bids.synth.rasterize import FrameMap, GridDisplacement

#: Phantom severity grades: (name, lowest ``hydrops`` of the grade).
HYDROPS_GRADES: tuple[tuple[str, float], ...] = (
    ("none", 0.0),
    ("mild", 0.25),
    ("moderate", 0.5),
    ("severe", 0.75),
)
#: Structures of the per-structure truth (value in the structures map → TFS labels).
STRUCTURE_LABELS: dict[str, tuple[int, ...]] = {
    "cochlea": (L.COCHLEA, L.SPIRAL_LAMINA),
    "vestibule": (L.VESTIBULE,),
    "canals": (L.ANTERIOR_CANAL, L.POSTERIOR_CANAL, L.LATERAL_CANAL),
}
STRUCTURE_VALUES: dict[str, int] = {"cochlea": 1, "vestibule": 2, "canals": 3}
CANAL_LABELS = STRUCTURE_LABELS["canals"]

# Growth of each compartment with severity h: relative growth g(h) = GAIN * h ** POWER.
SACCULE_GROWTH = (1.0, 0.8)  # distends first and most
COCHLEAR_DUCT_GROWTH = (1.5, 0.9)
UTRICLE_GROWTH = (0.3, 2.0)  # later
CANAL_DUCT_GROWTH = (0.2, 1.5)  # little


def els_rng(seed: int) -> np.random.Generator:
    """The generator of the ELS of phantom ``seed`` (independent of all other streams)."""
    return np.random.default_rng([seed, 14])


def hydrops_grade(hydrops: float) -> str:
    """Phantom severity grade of ``hydrops`` (see :data:`HYDROPS_GRADES`)."""
    if not 0.0 <= hydrops <= 1.0:
        raise ValueError(f"hydrops must lie in [0, 1], not {hydrops!r}")
    return [name for name, low in HYDROPS_GRADES if hydrops >= low][-1]


def grade_range(grade: str) -> tuple[float, float]:
    """``(low, high)`` of ``hydrops`` for a grade name (high is exclusive except for severe)."""
    names = [n for n, _ in HYDROPS_GRADES]
    i = names.index(grade)
    high = HYDROPS_GRADES[i + 1][1] if i + 1 < len(HYDROPS_GRADES) else 1.0
    return HYDROPS_GRADES[i][1], high


def _growth(h: float, gain_power: tuple[float, float]) -> float:
    gain, power = gain_power
    return gain * h**power


@dataclass
class BallChain:
    """Union of balls (a duct with varying radius): centres (N, 3), radii (N,)."""

    centres: np.ndarray
    radii: np.ndarray

    def inside(self, q: np.ndarray) -> np.ndarray:
        """Boolean: points ``q`` (M, 3) inside any ball (exact, via a pair search)."""
        out = np.zeros(len(q), dtype=bool)
        if len(q) == 0 or len(self.centres) == 0:
            return out
        pairs = cKDTree(self.centres).sparse_distance_matrix(
            cKDTree(q), float(self.radii.max()), output_type="ndarray"
        )
        hit = pairs["v"] <= self.radii[pairs["i"]]
        out[pairs["j"][hit]] = True
        return out


def _grown_chain(base: np.ndarray, radius: np.ndarray, toward: np.ndarray, g: float) -> BallChain:
    """Balls of radius ``radius·(1+g)`` whose centres move by ``g·radius`` along ``toward``
    (unit vectors): each ball contains the ball of any smaller ``g`` (nested growth)."""
    return BallChain(base + (g * radius)[:, None] * toward, radius * (1.0 + g))


def _grown_ellipsoid(ell: Ellipsoid, toward: np.ndarray, g: float) -> Ellipsoid:
    """``ell`` with semi-axes ×(1+g), centre moved by ``g·min(semi)`` along unit ``toward``:
    nested in ``g`` (a shift of at most ``g·min(semi)`` keeps the smaller one inside)."""
    return Ellipsoid(
        ell.centre + g * float(ell.semi.min()) * toward, ell.axes, ell.semi * (1.0 + g), ell.label
    )


def _unit_rows(v: np.ndarray) -> np.ndarray:
    return v / (np.linalg.norm(v, axis=-1, keepdims=True) + 1e-12)


@dataclass
class EndolymphGeometry:
    """The compartments at ``hydrops = 0`` plus their growth directions (labyrinth frame)."""

    duct_base: np.ndarray  # cochlear duct ball centres (N, 3)
    duct_radius: np.ndarray  # (N,)
    duct_toward: np.ndarray  # (N, 3) growth direction: into the scala vestibuli
    saccule: Ellipsoid
    saccule_toward: np.ndarray
    utricle: Ellipsoid
    utricle_toward: np.ndarray
    canal_ducts: list[BallChain]
    ampullae: list[Ellipsoid]

    def compartments(self, hydrops: float) -> dict[str, list]:
        """Shapes at severity ``hydrops``, keyed by the structure that hosts them."""
        g_duct = _growth(hydrops, COCHLEAR_DUCT_GROWTH)
        g_sac = _growth(hydrops, SACCULE_GROWTH)
        g_utr = _growth(hydrops, UTRICLE_GROWTH)
        g_can = _growth(hydrops, CANAL_DUCT_GROWTH)
        duct = _grown_chain(self.duct_base, self.duct_radius, self.duct_toward, g_duct)
        canals: list = [BallChain(c.centres, c.radii * (1.0 + g_can)) for c in self.canal_ducts]
        canals += [
            Ellipsoid(a.centre, a.axes, a.semi * (1.0 + g_can), a.label) for a in self.ampullae
        ]
        return {
            "cochlea": [duct],
            "vestibule": [
                _grown_ellipsoid(self.saccule, self.saccule_toward, g_sac),
                _grown_ellipsoid(self.utricle, self.utricle_toward, g_utr),
            ],
            "canals": canals,
        }


def _cochlear_duct(rng: np.random.Generator, cochlea: Tube) -> tuple[np.ndarray, ...]:
    """(ball centres, radii, growth directions) of the cochlear duct at no hydrops."""
    axis = cochlea.flat_axis if cochlea.flat_axis is not None else np.array([0.0, 0.0, 1.0])
    radial = cochlea.points - (cochlea.modiolus if cochlea.modiolus is not None else 0.0)
    radial = _unit_rows(radial - np.outer(radial @ axis, axis))  # away from the modiolus
    half_width = cochlea.radius_r
    half_height = cochlea.radius_a if cochlea.radius_a is not None else half_width
    outward = rng.uniform(0.5, 0.6)  # towards the outer wall (stria vascularis)
    apexward = rng.uniform(0.12, 0.2)  # above the spiral lamina / basilar membrane
    size = rng.uniform(0.27, 0.31)  # duct radius / lumen half-width
    base = (
        cochlea.points
        + (outward * half_width)[:, None] * radial
        + (apexward * half_height)[:, None] * axis
    )
    # hydrops bulges Reissner's membrane into the scala vestibuli: apexward and inward
    toward = _unit_rows(np.outer(np.ones(len(base)), axis) - 0.6 * radial)
    return base, size * half_width, toward


def _vestibular_sacs(
    rng: np.random.Generator, vest: Ellipsoid
) -> tuple[Ellipsoid, np.ndarray, Ellipsoid, np.ndarray]:
    """Saccule (anterior-inferior, slightly medial) and utricle (posterior-superior) inside the
    vestibule, in its axes (columns: lateral, anterior, superior), with growth directions."""
    jitter = rng.uniform(0.92, 1.08, 2)
    sac_pos = np.array([-0.15, 0.5, -0.4]) + rng.normal(0, 0.04, 3)
    sac_semi = vest.semi * np.array([0.45, 0.33, 0.35]) * jitter[0]
    utr_pos = np.array([0.05, -0.22, 0.32]) + rng.normal(0, 0.04, 3)
    utr_semi = vest.semi * np.array([0.64, 0.64, 0.56]) * jitter[1]
    sac_centre = vest.centre + vest.axes @ (vest.semi * sac_pos)
    utr_centre = vest.centre + vest.axes @ (vest.semi * utr_pos)
    saccule = Ellipsoid(sac_centre, vest.axes, sac_semi, L.VESTIBULE)
    utricle = Ellipsoid(utr_centre, vest.axes, utr_semi, L.VESTIBULE)
    # both swell towards the vestibule's centre (the saccule also up, towards the utricle)
    sac_toward = _unit_rows(vest.centre - sac_centre + 0.3 * vest.axes[:, 2])
    utr_toward = _unit_rows(vest.centre - utr_centre)
    return saccule, sac_toward, utricle, utr_toward


def _canal_ducts(rng: np.random.Generator, lab: Labyrinth) -> tuple[list[BallChain], list]:
    """Semicircular ducts: on the outer wall of each canal arc (``lab.tubes[2:5]``), centred in
    the limbs (the later tubes);
    membranous ampullae at about half the bony ampulla's size."""
    radius = rng.uniform(0.14, 0.17)  # ≈ 0.3 mm wide
    ducts: list[BallChain] = []
    for k, tube in enumerate(lab.tubes[2:]):
        pts = tube.points
        if k < 3:  # the three arcs (anatomy.py order): the duct runs along the outer wall
            bend = np.gradient(np.gradient(pts, axis=0), axis=0)  # points to the arc centre
            wall = np.maximum(tube.radius_r - radius * 1.2, 0.0)
            pts = pts - _unit_rows(bend) * wall[:, None]
        ducts.append(BallChain(pts, np.full(len(pts), radius)))
    ampullae = [
        Ellipsoid(e.centre, e.axes, e.semi * rng.uniform(0.4, 0.48), e.label)
        for e in lab.ellipsoids[1:]
        if e.label in CANAL_LABELS
    ]
    return ducts, ampullae


def sample_endolymph(rng: np.random.Generator, lab: Labyrinth) -> EndolymphGeometry:
    """Draw the endolymphatic compartments of ``lab`` (labyrinth frame) at no hydrops."""
    duct_base, duct_radius, duct_toward = _cochlear_duct(rng, lab.tubes[0])
    saccule, sac_toward, utricle, utr_toward = _vestibular_sacs(rng, lab.ellipsoids[0])
    ducts, ampullae = _canal_ducts(rng, lab)
    return EndolymphGeometry(
        duct_base,
        duct_radius,
        duct_toward,
        saccule,
        sac_toward,
        utricle,
        utr_toward,
        ducts,
        ampullae,
    )


def _voxel_local_points(grid: RoiGrid, frame: FrameMap, idx: np.ndarray) -> np.ndarray:
    """Labyrinth-frame coordinates of the voxels ``idx`` (M, 3), as the TFS raster sees them."""
    world = grid.voxel_to_world(idx)
    disp = None
    if isinstance(frame.elastic, GridDisplacement) and frame.elastic.grid is grid:
        disp = frame.elastic.values[tuple(idx.T)]
    return frame.to_local(world, disp)


def _inside(shape: BallChain | Ellipsoid, q: np.ndarray) -> np.ndarray:
    if isinstance(shape, BallChain):
        return shape.inside(q)
    local = (q - shape.centre) @ shape.axes / shape.semi
    return np.einsum("ij,ij->i", local, local) <= 1.0


def rasterize_els(
    geometry: EndolymphGeometry,
    hydrops: float,
    labels: np.ndarray,
    grid: RoiGrid,
    frame: FrameMap,
) -> np.ndarray:
    """Boolean ELS mask on ``grid``: each compartment only on the TFS voxels of its host
    structure in ``labels`` (so ELS ⊂ TFS; the spiral lamina is never ELS)."""
    els = np.zeros(labels.shape, dtype=bool)
    for structure, shapes in geometry.compartments(hydrops).items():
        host = [lab for lab in STRUCTURE_LABELS[structure] if lab != L.SPIRAL_LAMINA]
        idx = np.argwhere(np.isin(labels, host))
        if len(idx) == 0:
            continue
        q = _voxel_local_points(grid, frame, idx).astype(np.float64)
        hit = np.zeros(len(idx), dtype=bool)
        for shape in shapes:
            hit |= _inside(shape, q)
        els[tuple(idx[hit].T)] = True
    return els


def structure_map(labels: np.ndarray) -> np.ndarray:
    """uint8 map of the TFS structures: 1 cochlea (incl. spiral lamina), 2 vestibule, 3 canals."""
    out = np.zeros(labels.shape, np.uint8)
    for name, labs in STRUCTURE_LABELS.items():
        out[np.isin(labels, labs)] = STRUCTURE_VALUES[name]
    return out


def els_volumes(labels: np.ndarray, els: np.ndarray, voxel_mm3: float) -> dict:
    """ELS and TFS volumes (mm³) and ELS% for the whole ear and per structure."""
    structures = structure_map(labels)
    out: dict[str, dict[str, float]] = {}
    for name, value in (("ear", None), *STRUCTURE_VALUES.items()):
        tfs = structures > 0 if value is None else structures == value
        tfs_mm3 = float(tfs.sum()) * voxel_mm3
        els_mm3 = float((els & tfs).sum()) * voxel_mm3
        out[name] = {
            "tfs_mm3": round(tfs_mm3, 6),
            "els_mm3": round(els_mm3, 6),
            "els_percent": round(100.0 * els_mm3 / tfs_mm3, 4) if tfs_mm3 > 0 else 0.0,
        }
    return out
