"""Automatic QC of one ear's segmentation: each flag comes with a one-line reason.

Checks (thresholds are module constants):

``empty_mask`` / ``volume_out_of_range``
    TFS volume outside :data:`EXPECTED_VOLUME_MM3` (one adult ear: about 150–350 mm³).
``multiple_components``
    more than one 26-connected component of at least :data:`MIN_COMPONENT_MM3` (single-voxel
    specks left by resampling onto a coarse slab grid are not counted).
``missing_canal_loop``
    fewer than :data:`EXPECTED_CANAL_LOOPS` loops through canal-calibre tissue, see
    :func:`topology`.
``large_refinement_move``
    the ear centre moved more than :data:`MAX_REFINEMENT_MOVE_MM` between the localizer's first
    guess and the final ROI (refinement + re-centring): the first guess was probably wrong.
``low_boundary_probability``
    mean probability on the mask's inner boundary below :data:`MIN_BOUNDARY_PROB`: the model
    is unsure where the labyrinth ends (blur, motion, unusual contrast).
``roi_touches_slab_edge``
    the ROI box leaves the slab: part of the labyrinth may be cut off.

The canal-loop check
--------------------
A normal TFS (vestibule + three semicircular canals + cochlea) has three independent loops:
the lateral canal, and the anterior and posterior canals which share the common crus (graph
with two nodes, vestibule and crus top, and four edges: 4 − 2 + 1 = 3). For the vestibular part
the Euler characteristic is therefore χ = 1 − 3 = −2. The number of tunnels of the whole mask,
``b1 = components + cavities − χ``, is *not* a robust check: fused cochlear turns (partial
volume between turns at 0.2–0.5 mm) add handles, so a mask with a broken canal and one fused
turn still has three tunnels, and stray blobs change χ too.

:func:`topology` counts only the loops that run through *thin* tissue. A morphological
opening with a ball of radius r splits the mask into a thick *core* (vestibule, the basal and
middle cochlear turns, ampullae: lumen ≥ 2r) and the thin remainder (canals, lumen 0.8–1.2 mm,
the narrow cochlear apex, rims). Each core component is contracted to a point; the loops left
are the cycles of the graph whose nodes are the core and thin components and whose edges are
their contact patches::

    loops(r) = contact patches − (core parts + thin parts) + graph components

Each canal loop runs through the vestibule (core), so it is a cycle of that graph. Handles
*inside* thick tissue (fused cochlear turns, a lumpy vestibule, holes in a spiral lamina) vanish
with the contraction; tunnels inside thin parts are not counted either (in the phantoms they
come from the cochlear lamina, never from a canal); a stray blob adds a node and a graph
component but no cycle; a canal broken anywhere along its arc loses its loop. One radius can
be unlucky (a fat canal partly joining the core, a cochlear handle thin enough to stay), so
``canal_loops`` is the median of loops(r) over r ∈ :data:`CORE_RADII_MM` (0.7, 0.8, 0.9 mm).
A normal ear gives 3; the flag fires below 3.

Validation on 60 phantom labyrinths (0.2 mm; four normal variants each: as drawn, cochlear
turns fused by a 0.4 mm dilation, the whole mask 0.2 mm fatter, a 0.2 mm Gaussian blur; four
defects each: every canal cut by 2.4 mm in turn, and a cut in the fatter mask): no normal
variant was flagged (0/240) and 230/240 defects were. The misses are two phantoms whose
cochlea keeps a thin handle at two of the three radii, and cuts in the fattened mask, where
the dilation bridges a canal to a neighbour. ``tests/test_reports.py`` checks a geometric
model and two phantoms (and, marked slow, a 12-phantom version of this sweep).
Limitations: a bridge between two *thin* structures (apical cochlea touching a canal) adds a
loop and can hide one missing canal; a mask so coarse that the canals are thicker than 1.4 mm
makes them core and gives fewer loops (flagged: such a mask deserves a look).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import cc3d
import numpy as np
from scipy import ndimage

EXPECTED_VOLUME_MM3: tuple[float, float] = (100.0, 450.0)
MAX_REFINEMENT_MOVE_MM = 12.0
MIN_COMPONENT_MM3 = 1.0
EXPECTED_CANAL_LOOPS = 3
CORE_RADII_MM: tuple[float, ...] = (0.7, 0.8, 0.9)
SKIN_MM = 0.3
MIN_BOUNDARY_PROB = 0.65
FLAG_HELP: dict[str, str] = {
    "empty_mask": "nothing was segmented",
    "volume_out_of_range": "TFS volume outside the expected range for one adult ear",
    "multiple_components": "the mask is in several pieces (stray blob or broken structure)",
    "missing_canal_loop": "fewer than three semicircular-canal loops (broken or missing canal)",
    "large_refinement_move": "the ear centre moved far from the localizer's first guess",
    "low_boundary_probability": "the model is unsure where the labyrinth ends",
    "roi_touches_slab_edge": "the ROI box leaves the slab: the labyrinth may be cut off",
}
FLAG_NAMES: tuple[str, ...] = tuple(FLAG_HELP)


@dataclass(frozen=True)
class Flag:
    """One QC flag: a name from :data:`FLAG_NAMES` and why it fired."""

    name: str
    reason: str


@dataclass(frozen=True)
class Topology:
    """Topology of a binary mask (26-connected foreground, 6-connected background).

    ``euler`` = components − tunnels + cavities; ``tunnels`` counts every handle (b1);
    ``canal_loops`` only those through thin tissue: the median of ``loops_by_radius`` (one
    count per opening radius in :data:`CORE_RADII_MM`), see the module docstring.
    """

    euler: int
    components: int
    cavities: int
    tunnels: int
    canal_loops: int
    loops_by_radius: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["loops_by_radius"] = list(self.loops_by_radius)
        return out


# --------------------------------------------------------------------------- measurements
def _spacing3(spacing: float | Sequence[float]) -> tuple[float, float, float]:
    sp = np.broadcast_to(np.asarray(spacing, dtype=float), (3,))
    return (float(sp[0]), float(sp[1]), float(sp[2]))


def _crop(mask: np.ndarray, margin: int = 2) -> np.ndarray:
    """``mask`` cropped to its bounding box, padded with ``margin`` background voxels."""
    idx = np.argwhere(mask)
    lo, hi = idx.min(0), idx.max(0) + 1
    sub = mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
    return np.pad(sub, margin)


def _cavities(mask: np.ndarray) -> int:
    """Background components (6-connected) enclosed by ``mask`` (a padded crop)."""
    labels, n = ndimage.label(~mask)
    if n <= 1:
        return 0
    faces = (labels[[0, -1]], labels[:, [0, -1]], labels[..., [0, -1]])
    border = np.unique(np.concatenate([f.ravel() for f in faces]))
    return int(n - np.count_nonzero(border > 0))


def _euler(mask: np.ndarray) -> int:
    from skimage.measure import euler_number

    return int(euler_number(mask, connectivity=3))


def thin_tissue_loops(
    mask: np.ndarray,
    spacing: tuple[float, float, float],
    core_radius_mm: float,
    *,
    skin_mm: float = SKIN_MM,
    depth: np.ndarray | None = None,
) -> int:
    """Independent loops of ``mask`` through thin tissue, thick parts contracted to points.

    Core = opening with a ball of radius ``core_radius_mm`` (grown by ``skin_mm`` to swallow
    the discretisation rim); loops = cycles of the graph of core and thin components joined by
    their contact patches: ``contacts − nodes + graph components``.
    """
    if depth is None:
        depth = ndimage.distance_transform_edt(mask, sampling=spacing)
    seeds = depth > core_radius_mm
    if seeds.any():
        reach = ndimage.distance_transform_edt(~seeds, sampling=spacing)
        core = mask & (reach <= core_radius_mm + skin_mm)
    else:
        core = np.zeros_like(mask)
    thin = mask & ~core
    core_lab, n_core = cc3d.connected_components(core, connectivity=26, return_N=True)
    thin_lab, n_thin = cc3d.connected_components(thin, connectivity=26, return_N=True)
    near = ndimage.grey_dilation(core_lab, size=(3, 3, 3))  # core label 26-adjacent to a voxel
    patch_lab, n_patch = cc3d.connected_components(
        thin & (near > 0), connectivity=26, return_N=True
    )
    parent = np.arange(n_thin + n_core + 1)

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = int(parent[a])
        return a

    n_edges = 0
    if n_patch:
        idx = np.flatnonzero(patch_lab)
        triples = np.unique(
            np.stack([patch_lab.ravel()[idx], thin_lab.ravel()[idx], near.ravel()[idx]], 1), axis=0
        )
        # one edge per patch (a patch touching two core parts, the larger label, is rare)
        _, first = np.unique(triples[:, 0], return_index=True)
        for _, t, c in triples[first]:
            parent[find(int(t))] = find(int(n_thin + c))
        n_edges = len(first)
    n_nodes = n_thin + n_core
    n_graph = len({find(a) for a in range(1, n_nodes + 1)})
    return int(n_edges - n_nodes + n_graph)


def topology(
    mask: np.ndarray,
    spacing: float | Sequence[float],
    *,
    radii_mm: Sequence[float] = CORE_RADII_MM,
) -> Topology:
    """Euler characteristic, tunnels and canal loops of ``mask`` (voxel size ``spacing`` mm)."""
    mask = np.asarray(mask) > 0
    if not mask.any():
        return Topology(0, 0, 0, 0, 0, tuple(0 for _ in radii_mm))
    sp = _spacing3(spacing)
    m = _crop(mask)
    euler = _euler(m)
    n_comp = int(cc3d.connected_components(m, connectivity=26, return_N=True)[1])
    cavities = _cavities(m)
    depth = ndimage.distance_transform_edt(m, sampling=sp)
    loops = tuple(thin_tissue_loops(m, sp, r, depth=depth) for r in radii_mm)
    return Topology(
        euler=euler,
        components=n_comp,
        cavities=cavities,
        tunnels=n_comp + cavities - euler,
        canal_loops=int(np.median(loops)) if loops else 0,
        loops_by_radius=loops,
    )


def component_volumes(mask: np.ndarray, voxel_mm3: float) -> list[float]:
    """Volumes (mm³) of the 26-connected components of ``mask``, largest first."""
    mask = np.asarray(mask) > 0
    if not mask.any():
        return []
    labels = cc3d.connected_components(_crop(mask, margin=1), connectivity=26)
    counts = np.bincount(labels.ravel())[1:]
    return sorted((float(c) * voxel_mm3 for c in counts if c), reverse=True)


def flags_cell(names: Sequence[str]) -> str:
    """Flag names as one cell of the volumes table: comma-separated, ``n/a`` when none."""
    return ",".join(names) or "n/a"


def flag_names(cell: str | None) -> list[str]:
    """The flag names of a volumes-table cell (:func:`flags_cell` read back)."""
    return [f for f in (cell or "n/a").split(",") if f and f != "n/a"]


def significant_components(component_volumes_mm3: Sequence[float]) -> list[float]:
    """The component volumes of at least :data:`MIN_COMPONENT_MM3` (specks left out)."""
    return [v for v in component_volumes_mm3 if v >= MIN_COMPONENT_MM3]


def boundary_probability(prob: np.ndarray, mask: np.ndarray) -> float | None:
    """Mean probability on the inner boundary of ``mask`` (mask minus its 6-erosion)."""
    mask = np.asarray(mask) > 0
    if not mask.any():
        return None
    edge = mask & ~ndimage.binary_erosion(mask, border_value=0)
    return float(np.asarray(prob, dtype=np.float64)[edge].mean())


# --------------------------------------------------------------------------- flags
def qc_checks(
    *,
    volume_mm3: float,
    component_volumes_mm3: Sequence[float] | None = None,
    moved_mm: float = 0.0,
    touches_edge: bool = False,
    canal_loops: int | None = None,
    boundary_prob: float | None = None,
) -> list[Flag]:
    """All flags of one ear; a check whose measurement is ``None`` is skipped.

    ``component_volumes_mm3``: components under :data:`MIN_COMPONENT_MM3` are not counted.
    """
    flags: list[Flag] = []
    lo, hi = EXPECTED_VOLUME_MM3
    if volume_mm3 <= 0:
        flags.append(Flag("empty_mask", "no voxel segmented"))
    elif not lo <= volume_mm3 <= hi:
        flags.append(
            Flag(
                "volume_out_of_range",
                f"volume {volume_mm3:.0f} mm³ outside the expected {lo:.0f}–{hi:.0f} mm³",
            )
        )
    if component_volumes_mm3 is not None:
        big = significant_components(component_volumes_mm3)
        if len(big) > 1:
            listed = ", ".join(f"{v:.1f}" for v in big[:5]) + (", …" if len(big) > 5 else "")
            flags.append(
                Flag(
                    "multiple_components",
                    f"{len(big)} components ≥ {MIN_COMPONENT_MM3:g} mm³ ({listed} mm³)",
                )
            )
    if canal_loops is not None and volume_mm3 > 0 and canal_loops < EXPECTED_CANAL_LOOPS:
        flags.append(
            Flag(
                "missing_canal_loop",
                f"{canal_loops} canal loop(s), expected {EXPECTED_CANAL_LOOPS}: "
                "a semicircular canal is broken or missing",
            )
        )
    if moved_mm > MAX_REFINEMENT_MOVE_MM:
        flags.append(
            Flag(
                "large_refinement_move",
                f"ear centre moved {moved_mm:.1f} mm from the localizer's guess "
                f"(> {MAX_REFINEMENT_MOVE_MM:g} mm)",
            )
        )
    if boundary_prob is not None and boundary_prob < MIN_BOUNDARY_PROB:
        flags.append(
            Flag(
                "low_boundary_probability",
                f"mean probability on the mask boundary {boundary_prob:.2f} "
                f"< {MIN_BOUNDARY_PROB:g}",
            )
        )
    if touches_edge:
        flags.append(Flag("roi_touches_slab_edge", "the ROI box extends beyond the slab"))
    return flags


def thresholds() -> dict[str, Any]:
    """The QC thresholds in force (recorded with every QC record)."""
    return {
        "expected_volume_mm3": list(EXPECTED_VOLUME_MM3),
        "min_component_mm3": MIN_COMPONENT_MM3,
        "expected_canal_loops": EXPECTED_CANAL_LOOPS,
        "core_radii_mm": list(CORE_RADII_MM),
        "max_refinement_move_mm": MAX_REFINEMENT_MOVE_MM,
        "min_boundary_prob": MIN_BOUNDARY_PROB,
    }


def ear_record(
    *,
    roi_mask: np.ndarray,
    roi_prob: np.ndarray | None,
    roi_spacing: float | Sequence[float] = 0.2,
    moved_mm: float = 0.0,
    touches_edge: bool = False,
) -> dict[str, Any]:
    """Measurements and flags of one ear, all on the 0.2 mm ROI grid the model worked on.

    Volume, components, canal loops and boundary probability are measured on the ROI-grid
    mask, where thin canals are resolved (on a 0.5 mm slab they break, and partial-volume
    specks appear). This record is computed once, by the segment node; the volumes table and
    the QC JSON are both written from it. Returns ``{"volume_mm3", "component_volumes_mm3",
    "topology", "boundary_prob", "moved_mm", "touches_edge", "flags"}``.
    """
    roi = np.asarray(roi_mask) > 0
    sp = _spacing3(roi_spacing)
    voxel_mm3 = float(np.prod(sp))
    volume = float(np.count_nonzero(roi)) * voxel_mm3
    comps = component_volumes(roi, voxel_mm3)
    topo = topology(roi, sp)
    bprob = boundary_probability(roi_prob, roi) if roi_prob is not None else None
    flags = qc_checks(
        volume_mm3=volume,
        component_volumes_mm3=comps,
        moved_mm=moved_mm,
        touches_edge=touches_edge,
        canal_loops=topo.canal_loops,
        boundary_prob=bprob,
    )
    return {
        "volume_mm3": round(volume, 3),
        "component_volumes_mm3": [round(v, 3) for v in comps[:20]],
        "topology": topo.to_dict(),
        "boundary_prob": None if bprob is None else round(bprob, 4),
        "moved_mm": round(float(moved_mm), 3),
        "touches_edge": bool(touches_edge),
        "flags": [asdict(f) for f in flags],
    }
