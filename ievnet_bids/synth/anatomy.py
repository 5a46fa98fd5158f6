"""Randomized geometry of a right human bony labyrinth, in millimetres.

The frame is RAS with the vestibule centre at the origin (x lateral for a right ear, y anterior,
z superior). A left ear is the mirror image (x → −x). Ranges follow
``shared/docs/labyrinth-anatomy.md``: cochlea 2.57 ± 0.28 turns, basal-turn outer diameter
8–9.5 mm, height 3.5–5 mm, lumen ~2 mm tapering to ~1 mm; vestibule ~5.9 × 5.2 × 2.5 mm;
canals of lumen 0.8–1.2 mm on arcs of radius ~3.2 / 3.1 / 2.4 mm (anterior / posterior /
lateral) with ampullae and the common crus; inter-canal angles 94 ± 4° (A–P), 85 ± 6° (A–L),
92 ± 5° (L–P); lateral canal tilted 16 ± 4° from the axial plane.

Everything here is geometry (centrelines, radii, ellipsoids); rasterization lives in
:mod:`ievnet_bids.synth.rasterize`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from ievnet_bids.synth import labels as L

STEP_MM = 0.05  # centreline sampling step


@dataclass
class Tube:
    """A tube around a sampled centreline.

    The cross-section is an ellipse with half-width ``radius_r`` across the tube and half-height
    ``radius_a`` along ``flat_axis`` (circular when ``flat_axis`` is None).
    """

    points: np.ndarray  # (N, 3)
    radius_r: np.ndarray  # (N,)
    label: int
    radius_a: np.ndarray | None = None
    flat_axis: np.ndarray | None = None  # (3,)
    lamina: bool = False  # draw a spiral lamina (cochlea)
    modiolus: np.ndarray | None = None  # a point on the cochlear axis (for the lamina)
    lamina_reach: float = (
        0.1  # lamina extends from the modiolar wall to this fraction past the centre
    )
    params: dict = field(default_factory=dict)  # free-form description (canal plane normal, radius)

    @property
    def max_radius(self) -> float:
        r = float(self.radius_r.max())
        return max(r, float(self.radius_a.max())) if self.radius_a is not None else r


@dataclass
class Ellipsoid:
    centre: np.ndarray  # (3,)
    axes: np.ndarray  # (3, 3): columns are the principal directions
    semi: np.ndarray  # (3,) semi-axes in mm
    label: int


@dataclass
class Labyrinth:
    tubes: list[Tube]
    ellipsoids: list[Ellipsoid]
    landmarks: dict[str, np.ndarray]
    params: dict[str, float] = field(default_factory=dict)

    def bounds(self, margin: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned bounding box (lo, hi) of all structures, in the labyrinth frame."""
        pts = [t.points for t in self.tubes]
        los = [p.min(0) - t.max_radius for p, t in zip(pts, self.tubes, strict=True)]
        his = [p.max(0) + t.max_radius for p, t in zip(pts, self.tubes, strict=True)]
        for e in self.ellipsoids:
            reach = np.abs(e.axes) @ e.semi
            los.append(e.centre - reach)
            his.append(e.centre + reach)
        return np.min(los, axis=0) - margin, np.max(his, axis=0) + margin


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


def _rotation(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    """Rodrigues rotation matrix about ``axis``."""
    k = _unit(axis)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * kx + (1 - np.cos(angle_rad)) * kx @ kx


def random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """Rotation about a random axis by an angle uniform in ±``max_deg``."""
    return _rotation(rng.normal(size=3), np.deg2rad(rng.uniform(-max_deg, max_deg)))


def _jitter(v: np.ndarray, rng: np.random.Generator, deg: float) -> np.ndarray:
    return _rotation(rng.normal(size=3), np.deg2rad(rng.normal(0, deg))) @ _unit(v)


def _segment(a: np.ndarray, b: np.ndarray, ra: float, rb: float, label: int) -> Tube:
    n = max(2, int(np.ceil(np.linalg.norm(b - a) / STEP_MM)) + 1)
    t = np.linspace(0.0, 1.0, n)[:, None]
    return Tube(a + t * (b - a), (ra + t[:, 0] * (rb - ra)), label)


def _plane_normals(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Unit normals of the three canal planes (right ear) honouring the measured angles."""
    tilt = np.deg2rad(rng.normal(16.0, 4.0))
    n_lat = np.array([0.0, -np.sin(tilt), np.cos(tilt)])  # anterior end up
    ang_al = np.deg2rad(np.clip(rng.normal(85.0, 6.0), 72, 98))
    ang_ap = np.deg2rad(np.clip(rng.normal(94.0, 4.0), 85, 103))
    ang_lp = np.deg2rad(np.clip(rng.normal(92.0, 5.0), 81, 103))
    # anterior plane ~38° from the mid-sagittal plane, anterior part lateral:
    # its horizontal normal points posterolaterally; tilt it so that angle(n_A, n_L) = ang_al.
    az = np.deg2rad(rng.normal(38.0, 5.0))
    horiz = np.array([np.cos(az), -np.sin(az), 0.0])
    # choose n_A in span(horiz, n_lat) with the required angle to n_lat
    h = _unit(horiz - (horiz @ n_lat) * n_lat)
    n_ant = np.cos(ang_al) * n_lat + np.sin(ang_al) * h
    # n_P: unit vector with fixed angles to n_L and n_A (two solutions; take the anterolateral one)
    cross = np.cross(n_lat, n_ant)
    gram = np.array([[1.0, n_lat @ n_ant], [n_lat @ n_ant, 1.0]])
    a, b = np.linalg.solve(gram, [np.cos(ang_lp), np.cos(ang_ap)])
    base = a * n_lat + b * n_ant
    c2 = max(1e-6, 1.0 - base @ base) / (cross @ cross)
    candidates = [base + s * np.sqrt(c2) * cross for s in (1.0, -1.0)]
    n_post = max(candidates, key=lambda v: v[1] + 0.5 * v[0])
    return {"anterior": _unit(n_ant), "posterior": _unit(n_post), "lateral": n_lat}


def _canal_arc(
    normal: np.ndarray,
    outward: np.ndarray,
    radius: float,
    gap: float,
    lumen: float,
    sweep_deg: float,
    torsion: float,
    label: int,
) -> tuple[Tube, np.ndarray, np.ndarray]:
    """A canal arc in the plane ⟂ ``normal``, centred along ``outward`` from the origin.

    Returns the tube and its two end points (at −sweep/2 and +sweep/2).
    """
    u = _unit(outward - (outward @ normal) * normal)
    w = np.cross(normal, u)
    centre = (radius + gap) * u
    half = np.deg2rad(sweep_deg / 2)
    n = int(np.ceil(radius * 2 * half / STEP_MM)) + 1
    psi = np.linspace(-half, half, n)
    pts = centre + radius * (np.cos(psi)[:, None] * u + np.sin(psi)[:, None] * w)
    pts += torsion * np.sin(psi)[:, None] * normal  # canals are not planar
    # lumen narrowest mid-canal
    r = lumen * (1.0 - 0.18 * np.cos(psi * np.pi / (2 * half)))
    return Tube(pts, r, label), pts[0], pts[-1]


def _sample_canals(
    rng: np.random.Generator,
) -> tuple[list[Tube], dict[str, tuple[np.ndarray, np.ndarray, float]]]:
    normals = _plane_normals(rng)
    specs = {
        #            outward direction             radius                 label
        "anterior": (np.array([0.1, 0.15, 1.0]), rng.normal(3.25, 0.15), L.ANTERIOR_CANAL),
        "posterior": (np.array([0.05, -1.0, 0.12]), rng.normal(3.1, 0.15), L.POSTERIOR_CANAL),
        "lateral": (np.array([0.6, -0.8, 0.0]), rng.normal(2.4, 0.12), L.LATERAL_CANAL),
    }
    tubes: list[Tube] = []
    ends: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
    for name, (outward, rad, label) in specs.items():
        lumen_r = rng.uniform(0.4, 0.6)
        gap = rng.uniform(1.5, 2.0) if name != "lateral" else rng.uniform(1.6, 2.1)
        tube, a, b = _canal_arc(
            normals[name],
            _jitter(outward, rng, 6.0),
            rad,
            gap,
            lumen_r,
            rng.uniform(235, 255),
            rng.uniform(-0.3, 0.3),
            label,
        )
        tube.params = {"normal": normals[name], "radius": float(rad)}
        tubes.append(tube)
        ends[name] = (a, b, lumen_r)
    return tubes, ends


def _build_canals(
    rng: np.random.Generator, vest: Ellipsoid
) -> tuple[list[Tube], list[Ellipsoid], dict[str, tuple[np.ndarray, np.ndarray, float]]]:
    """Three canal arcs (first three tubes), their connectors, ampullae and the common crus."""
    tubes, ends = _sample_canals(rng)
    ellipsoids: list[Ellipsoid] = []
    amp_r = rng.uniform(0.8, 1.0)

    def split_ends(name: str, key) -> tuple[np.ndarray, np.ndarray]:
        a, b, _ = ends[name]
        return (a, b) if key(a) >= key(b) else (b, a)

    # ampullated ends: anterior & lateral at their anterior ends, posterior at its inferior end
    amp_a, crus_a = split_ends("anterior", lambda p: p[1])
    amp_l, simple_l = split_ends("lateral", lambda p: p[1])
    amp_p, crus_p = split_ends("posterior", lambda p: -p[2])
    for name, amp_end, label in (
        ("anterior", amp_a, L.ANTERIOR_CANAL),
        ("lateral", amp_l, L.LATERAL_CANAL),
        ("posterior", amp_p, L.POSTERIOR_CANAL),
    ):
        lumen_r = ends[name][2]
        target = _towards_vestibule(amp_end, vest)
        tubes.append(_segment(amp_end, target, lumen_r, lumen_r * 1.3, label))
        centre = amp_end + 0.45 * (target - amp_end)
        direction = _unit(target - amp_end)
        axes = np.linalg.qr(np.column_stack([direction, rng.normal(size=3), rng.normal(size=3)]))[0]
        length = min(np.linalg.norm(target - amp_end) * 0.5, 1.2 * amp_r)
        ellipsoids.append(Ellipsoid(centre, axes, np.array([length, amp_r, amp_r * 0.9]), label))
    # lateral canal's simple end
    lr = ends["lateral"][2]
    tubes.append(
        _segment(simple_l, _towards_vestibule(simple_l, vest), lr, lr * 1.2, L.LATERAL_CANAL)
    )
    # common crus: anterior and posterior non-ampullated limbs join, then enter the vestibule
    crus_lumen = max(ends["anterior"][2], ends["posterior"][2]) * 1.15
    crus_top = 0.5 * (crus_a + crus_p)
    crus_top = crus_top - 0.15 * crus_top  # slightly towards the vestibule
    tubes.append(_segment(crus_a, crus_top, ends["anterior"][2], crus_lumen, L.ANTERIOR_CANAL))
    tubes.append(_segment(crus_p, crus_top, ends["posterior"][2], crus_lumen, L.POSTERIOR_CANAL))
    crus_in = _towards_vestibule(crus_top, vest)
    tubes.append(_segment(crus_top, crus_in, crus_lumen, crus_lumen * 1.1, L.POSTERIOR_CANAL))

    return tubes, ellipsoids, ends


def _canals_clear(
    arcs: list[Tube], others: list[Tube], vest: Ellipsoid, wall_mm: float, trim_mm: float = 1.2
) -> bool:
    """True when each arc (without its ends) keeps ``wall_mm`` of bone to all other structures."""
    trim = int(trim_mm / STEP_MM)
    for i, arc in enumerate(arcs):
        pts = arc.points[trim:-trim]
        r = arc.radius_r.max()
        inflated = (pts - vest.centre) @ vest.axes / (vest.semi + r + wall_mm)
        if np.any(np.einsum("ij,ij->i", inflated, inflated) <= 1.0):
            return False
        for other in [*arcs[:i], *arcs[i + 1 :], *others]:
            if other.label == arc.label:
                continue
            d, _ = cKDTree(other.points).query(pts)
            if d.min() < r + other.max_radius + wall_mm:
                return False
    return True


def _towards_vestibule(end: np.ndarray, vest: Ellipsoid, depth: float = 0.55) -> np.ndarray:
    """A point inside the vestibule in the direction of ``end``."""
    local = vest.axes.T @ (end - vest.centre)
    scale = np.linalg.norm(local / vest.semi)
    return vest.centre + vest.axes @ (local / scale * depth)


def sample_labyrinth(rng: np.random.Generator) -> Labyrinth:
    """Draw one random right labyrinth (TFS structures only) in its own frame."""
    tubes: list[Tube] = []
    ellipsoids: list[Ellipsoid] = []

    # --- vestibule -------------------------------------------------------------------------
    vest_axes = random_rotation(rng, 12.0)
    # columns: x (LR, short), y (AP, long), z (SI)
    semi = np.array([rng.uniform(1.3, 1.6), rng.uniform(2.8, 3.2), rng.uniform(2.3, 2.8)])
    vest = Ellipsoid(np.zeros(3), vest_axes, semi, L.VESTIBULE)
    ellipsoids.append(vest)

    # --- cochlea ---------------------------------------------------------------------------
    turns = float(np.clip(rng.normal(2.57, 0.28), 2.0, 3.1))
    outer_diam = rng.uniform(8.0, 9.5)
    height = rng.uniform(3.5, 5.0)
    lumen0 = rng.uniform(2.0, 2.4)  # basal lumen (diameter)
    lumen_apex = rng.uniform(1.0, 1.3)
    axis = _jitter(np.array([0.62, 0.78, -0.10]), rng, 7.0)  # modiolus: base → apex
    base_centre = np.array([-2.0, 4.4, -1.9]) + rng.normal(0, 0.35, 3)
    to_vest = -base_centre - (-base_centre @ axis) * axis
    e1 = _unit(to_vest)  # basal turn starts towards the vestibule (round window)
    e2 = np.cross(axis, e1)  # positive rotation about the axis: clockwise base→apex (right ear)
    phi_max = 2 * np.pi * turns
    n = int(np.ceil(outer_diam * np.pi * turns / STEP_MM))
    phi = np.linspace(0.0, phi_max, n)
    frac = phi / phi_max
    r0 = outer_diam / 2 - lumen0 / 2
    r_apex = rng.uniform(0.7, 1.0)
    radius = r0 + (r_apex - r0) * frac ** rng.uniform(0.8, 1.1)
    rise = height - lumen0 / 2 - lumen_apex / 2
    h = rise * frac ** rng.uniform(1.1, 1.6)  # flat basal turn, rising apical turns
    # radial position and height profile give the centreline
    pts = (
        base_centre
        + radius[:, None] * (np.cos(phi)[:, None] * e1 + np.sin(phi)[:, None] * e2)
        + (h + lumen0 / 2)[:, None] * axis
    )
    lumen = lumen0 + (lumen_apex - lumen0) * frac
    wiggle = 1.0 + rng.uniform(0.04, 0.08) * np.sin(phi * rng.uniform(0.7, 1.6) + rng.uniform(0, 6))
    half_width = lumen / 2 * wiggle
    half_height = half_width * rng.uniform(0.85, 1.0)  # flattened along the modiolus
    tubes.append(
        Tube(
            pts,
            half_width,
            L.COCHLEA,
            half_height,
            axis,
            lamina=True,
            modiolus=base_centre,
            lamina_reach=rng.uniform(-0.2, 0.3),
            params={"phi_max": phi_max},  # centreline points are uniform in the spiral angle
        )
    )
    # hook region: basal end opens into the vestibule
    target = _towards_vestibule(pts[0], vest, 0.4)
    tubes.append(_segment(pts[0], target, half_width[0], 0.8, L.COCHLEA))

    # --- semicircular canals ----------------------------------------------------------------
    # Redraw the canals until each arc keeps a bony wall to every other structure (otherwise
    # touching tubes would add spurious loops to the TFS topology).
    cochlea_tubes = list(tubes)
    for _attempt in range(60):
        canal_tubes, canal_ellipsoids, ends = _build_canals(rng, vest)
        if _canals_clear(canal_tubes[:3], [*cochlea_tubes, *canal_tubes[3:]], vest, wall_mm=0.45):
            break
    tubes.extend(canal_tubes)
    ellipsoids.extend(canal_ellipsoids)
    canal_tubes = canal_tubes[:3]

    # --- landmarks for the surroundings ------------------------------------------------------
    # fundus of the internal auditory canal: medial to the vestibule and the cochlear base
    # (the IAC starts here, between the cochlear base and the vestibule's medial wall; the
    # background carves it back from the TFS by a thin cribriform plate)
    fundus = 0.5 * (base_centre + np.array([-semi[0], 0.0, 0.0])) + np.array([-0.6, -0.3, 0.3])
    iac_dir = _jitter(np.array([-1.0, -0.25, 0.05]), rng, 6.0)  # runs medially, slightly back
    top = max(t.points[:, 2].max() for t in tubes)
    landmarks = {
        "vestibule": vest.centre.copy(),
        "cochlea_base": base_centre,
        "cochlea_axis": axis,
        "fundus": fundus,
        "iac_direction": iac_dir,
        "superior_canal_top": np.array([0.0, 0.0, top]),
        "posterior_canal_centre": (ends["posterior"][0] + ends["posterior"][1]) / 2,
        "posterior_canal_bottom": _lowest_point([t for t in tubes if t.label == L.POSTERIOR_CANAL]),
    }
    canal = dict(zip(("anterior", "posterior", "lateral"), canal_tubes, strict=True))
    normal = {k: t.params["normal"] for k, t in canal.items()}
    params = {
        "cochlea_turns": turns,
        "cochlea_outer_diameter_mm": outer_diam,
        "cochlea_height_mm": height,
        "cochlea_lumen_base_mm": lumen0,
        "cochlea_lumen_apex_mm": lumen_apex,
        "vestibule_semi_axes_mm": semi.tolist(),
        "canal_radius_mm": {k: canal[k].params["radius"] for k in canal},
        "canal_angles_deg": {
            "anterior_lateral": _angle(normal["anterior"], normal["lateral"]),
            "anterior_posterior": _angle(normal["anterior"], normal["posterior"]),
            "lateral_posterior": _angle(normal["lateral"], normal["posterior"]),
        },
        "lateral_tilt_deg": float(np.rad2deg(np.arccos(abs(normal["lateral"][2])))),
    }
    return Labyrinth(tubes, ellipsoids, landmarks, params)


def _lowest_point(tubes: list[Tube]) -> np.ndarray:
    """The lowest point (smallest z) of the surface of ``tubes``."""
    bottoms = np.concatenate([t.points[:, 2] - t.radius_r for t in tubes])
    points = np.concatenate([t.points for t in tubes])
    i = int(np.argmin(bottoms))
    return np.array([points[i, 0], points[i, 1], bottoms[i]])


def _angle(n1: np.ndarray, n2: np.ndarray) -> float:
    """Angle between two planes given their normals, in degrees (0–180 by orientation)."""
    return float(np.rad2deg(np.arccos(np.clip(n1 @ n2, -1.0, 1.0))))
