"""One connected labyrinth with its canal loops: bridge a cleaned TFS mask along the probability.

Thin canals imaged at 0.5 mm fall below the threshold over short stretches, so a cleaned mask
(:func:`ievnet_bids.postprocess.threshold_and_clean`) can hold the labyrinth body plus canal
pieces, and a canal can be open (a loop broken into a dangling arm). Both are repaired by
bridges: the cheapest path through voxels whose probability stays at or above ``bridge_prob``
(hysteresis, with a geodesic path instead of the whole low-probability region, so the mask
does not grow a halo) that crosses at most ``max_bridge_mm`` outside the mask, widened by one
voxel wherever the probability allows it.

1. :func:`connect_pieces`: the total fluid space is one connected organ. Each extra piece is
   joined to the body by a bridge; a piece the probability does not connect is dropped (a
   labyrinth fragment is reached through a bridge, a stray blob is not).
2. :func:`close_loops`: from each tip of the mask's skeleton, a bridge to a part of the mask
   that is far along the mask (≥ ``min_loop_mm``) and lies ahead of the tip (within
   ``max_turn_deg`` of the direction the skeleton arrives in) closes a broken canal loop.
   With the ROI image and ``image_fraction`` set, a loop bridge may also cross voxels the
   *image* shows as fluid (at least ``image_fraction`` of the labyrinth's signal above the
   bone around it, :func:`fluid_fraction`), for at most ``loop_max_bridge_mm``: the model can
   give a stretch of visible canal almost no probability (on synthetic 0.5 mm slabs, the
   canal voxels it missed had a median image fraction of 0.5–0.6 and probability ≤ 0.07).

Pure numpy/scipy/scikit-image; no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import cc3d
import numpy as np
from scipy import ndimage

from ievnet_bids.geometry.distance import distance_outside
from ievnet_bids.geometry.extract import index_box


@dataclass(frozen=True)
class BridgeRule:
    """Parameters of :func:`connect_pieces` (recorded in the model card and sidecars)."""

    bridge_prob: float = 0.1  # a bridge never passes below this probability
    max_bridge_mm: float = 2.0  # longest stretch outside the mask that a bridge may cross
    widen: bool = True  # grow the bridge by one voxel where prob >= bridge_prob
    min_loop_mm: float = 4.0  # a loop bridge joins parts at least this far apart along the mask
    max_turn_deg: float = 60.0  # … that lie ahead of the skeleton tip it starts from
    tip_mm: float = 1.0  # skeleton length that gives a tip's direction
    image_fraction: float | None = None  # loop bridges may cross image fluid ≥ this (module doc)
    loop_max_bridge_mm: float | None = None  # loop bridges' max_bridge_mm (None: the same)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _bridge(
    prob: np.ndarray,
    mask: np.ndarray,
    starts: np.ndarray,
    targets: np.ndarray,
    spacing: np.ndarray,
    rule: BridgeRule,
    free: np.ndarray | None = None,
) -> tuple[np.ndarray, float, np.ndarray] | None:
    """Cheapest path from ``starts`` (voxel indices) to ``targets`` through
    ``prob >= rule.bridge_prob`` outside ``mask``; inside ``mask`` only ``free`` and
    ``targets`` voxels may be crossed (at no cost). All arrays share one (cropped) shape.

    Returns (new voxels outside the mask, bridge length mm, end voxel), or None when no path
    crosses at most ``rule.max_bridge_mm`` outside the mask."""
    from skimage.graph import MCP_Geometric

    free = np.zeros_like(mask) if free is None else free
    inside = free | targets
    costs = np.where(prob >= rule.bridge_prob, 1.05 - np.clip(prob, 0.0, 1.0), np.inf)
    costs[mask & ~inside] = np.inf
    costs[inside] = 1e-3  # moving through the start zone and the target is free
    ends = np.argwhere(targets)
    if len(starts) == 0 or len(ends) == 0:
        return None
    mcp = MCP_Geometric(costs, sampling=tuple(spacing))
    cumulative, _ = mcp.find_costs(starts, ends, find_all_ends=False)
    reached = cumulative[targets]
    if not np.isfinite(reached).any():
        return None
    end = ends[int(np.argmin(reached))]
    path = np.asarray(mcp.traceback(tuple(end)))
    outside = ~mask[tuple(path.T)]
    steps = np.linalg.norm(np.diff(path, axis=0) * spacing, axis=1)
    length = float(steps[outside[1:] | outside[:-1]].sum()) if len(steps) else 0.0
    if length > rule.max_bridge_mm:
        return None
    gap = np.zeros(mask.shape, dtype=bool)
    gap[tuple(path[outside].T)] = True
    if rule.widen and gap.any():
        grown = ndimage.binary_dilation(gap, iterations=1) & (prob >= rule.bridge_prob)
        gap |= grown & ~mask
    return gap, length, end


def connect_pieces(
    prob: np.ndarray,
    mask: np.ndarray,
    spacing_mm: float | Sequence[float],
    rule: BridgeRule | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Join the pieces of ``mask`` into one 26-connected labyrinth, or drop them.

    The largest piece is the body. Other pieces, nearest first, are joined by a bridge
    (:func:`_bridge`) to the body grown so far; a piece without a bridge is removed.
    Returns ``(mask uint8, info)``: ``info`` lists each piece's volume, whether it was
    bridged or dropped, and the bridge length.
    """
    rule = rule or BridgeRule()
    spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=float), (3,)).copy()
    voxel_mm3 = float(np.prod(spacing))
    mask = np.asarray(mask) > 0
    info: dict[str, Any] = {"rule": rule.to_json(), "pieces": [], "bridged_voxels": 0}
    labels, n = cc3d.connected_components(mask, connectivity=26, return_N=True)
    info["n_pieces_before"] = int(n)
    if n <= 1:
        info["n_pieces_after"] = int(n)
        return mask.astype(np.uint8), info
    stats = cc3d.statistics(labels)  # one pass: voxel counts and centroids of every piece
    counts = np.asarray(stats["voxel_counts"], dtype=np.int64)[1:]
    body_label = int(np.argmax(counts)) + 1
    body = labels == body_label
    centroids = np.asarray(stats["centroids"], dtype=float)[1:]
    body_centre = np.asarray(centroids[body_label - 1])
    others = sorted(
        (i for i in range(1, n + 1) if i != body_label),
        key=lambda i: float(np.linalg.norm((np.asarray(centroids[i - 1]) - body_centre) * spacing)),
    )
    out = body.copy()
    margin = np.ceil(rule.max_bridge_mm / spacing).astype(int) + 2
    for i in others:
        piece = labels == i
        idx = np.argwhere(piece)
        box = index_box(idx, margin, mask.shape)
        p = piece[box]
        found = _bridge(prob[box], mask[box] | out[box], np.argwhere(p), out[box], spacing, rule, p)
        record = {"volume_mm3": round(float(counts[i - 1]) * voxel_mm3, 3)}
        if found is None:
            record["action"] = "dropped: no bridge"
        else:
            gap, length, _ = found
            view = out[box]
            info["bridged_voxels"] += int((gap & ~view).sum())
            view |= gap | p
            record.update(action="bridged", bridge_mm=round(length, 3))
        info["pieces"].append(record)
    info["n_pieces_after"] = int(cc3d.connected_components(out, connectivity=26).max())
    return out.astype(np.uint8), info


IMAGE_SUPPORT_WEIGHT = 0.5
"""A voxel the image alone supports counts as this fraction of its fluid fraction (so a
bridge prefers the model's probability where there is any)."""


def fluid_fraction(
    image: np.ndarray, mask: np.ndarray, spacing_mm: float | Sequence[float]
) -> np.ndarray:
    """Where ``image`` lies between the bone around ``mask`` (median 1–2 mm outside it: 0)
    and the labyrinth's fluid (median of the mask away from its border: 1), clipped to
    [0, 1.5]. Float32, ``image``'s shape."""
    spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=float), (3,))
    image = np.asarray(image, dtype=np.float32)
    mask = np.asarray(mask) > 0
    if not mask.any():
        return np.zeros(image.shape, np.float32)
    core = ndimage.binary_erosion(mask)
    fluid = float(np.median(image[core if core.any() else mask]))
    outside = distance_outside(mask, spacing)
    shell = (outside >= 1.0) & (outside <= 2.0)
    bone = float(np.median(image[shell])) if shell.any() else float(image.min())
    return np.clip((image - bone) / max(fluid - bone, 1e-6), 0.0, 1.5).astype(np.float32)


def _image_support(
    prob: np.ndarray, mask: np.ndarray, spacing: np.ndarray, rule: BridgeRule, image: np.ndarray
) -> np.ndarray:
    """The larger of the probability and the image's weighted fluid fraction where that
    reaches ``rule.image_fraction`` (module doc)."""
    fraction = fluid_fraction(image, mask, spacing)
    seen = np.where(fraction >= rule.image_fraction, IMAGE_SUPPORT_WEIGHT * fraction, 0.0)
    return np.maximum(prob, seen).astype(np.float32)


def _tips(skeleton: np.ndarray) -> np.ndarray:
    """Voxel indices of the skeleton's end points (one 26-neighbour)."""
    neighbours = ndimage.convolve(skeleton.astype(np.uint8), np.ones((3, 3, 3), np.uint8))
    return np.argwhere(skeleton & (neighbours == 2))


def close_loops(
    prob: np.ndarray,
    mask: np.ndarray,
    spacing_mm: float | Sequence[float],
    rule: BridgeRule | None = None,
    image: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Close broken canal loops: bridge skeleton tips to far parts of the mask ahead of them.

    For each tip of the skeleton (:func:`skimage.morphology.skeletonize`) the geodesic
    distance along the mask is measured around it; the mask within ``tip_mm`` of the tip is
    its start zone, the mask more than ``min_loop_mm`` away along the mask (or not reached
    within the search box) is the target. A bridge (:func:`_bridge`) through the probability
    is added when its end lies within ``max_turn_deg`` of the tip's direction.

    Then, with ``image`` (the ROI image) and ``rule.image_fraction``, while the mask has fewer
    canal loops than a labyrinth (:data:`ievnet_bids.qc.EXPECTED_CANAL_LOOPS`), tips are
    bridged again through what the image shows as fluid (module doc), for at most
    ``loop_max_bridge_mm``; such a bridge is kept only if it adds a canal loop
    (:func:`ievnet_bids.qc.topology`), never beyond three: image brightness alone also
    joins the labyrinth to dim tissue beside it. Returns ``(mask uint8, info)``; each closed
    loop records its tip, end, length, added voxels and ``image_voxels`` (those below
    ``bridge_prob``).
    """
    from ievnet_bids.qc import EXPECTED_CANAL_LOOPS, topology

    rule = rule or BridgeRule()
    spacing = np.broadcast_to(np.asarray(spacing_mm, dtype=float), (3,)).copy()
    out = np.asarray(mask) > 0
    info: dict[str, Any] = {"loops_closed": [], "tips": 0}
    if not out.any():
        return out.astype(np.uint8), info
    info["tips"] = _close_from_tips(prob, prob, out, spacing, rule, info["loops_closed"])
    if image is None or rule.image_fraction is None:
        return out.astype(np.uint8), info
    loops = topology(out, spacing).canal_loops
    if loops >= EXPECTED_CANAL_LOOPS:
        return out.astype(np.uint8), info
    image_rule = rule
    if rule.loop_max_bridge_mm is not None:
        image_rule = replace(rule, max_bridge_mm=rule.loop_max_bridge_mm)
    support = _image_support(prob, out, spacing, rule, image)

    def adds_a_loop(candidate: np.ndarray) -> bool:
        nonlocal loops
        after = topology(candidate, spacing).canal_loops
        if loops < after <= EXPECTED_CANAL_LOOPS:
            loops = after
            return True
        return False

    _close_from_tips(
        support, prob, out, spacing, image_rule, info["loops_closed"], accept=adds_a_loop
    )
    return out.astype(np.uint8), info


def _close_from_tips(
    support: np.ndarray,
    prob: np.ndarray,
    out: np.ndarray,
    spacing: np.ndarray,
    rule: BridgeRule,
    closed: list[dict[str, Any]],
    accept: Callable[[np.ndarray], bool] | None = None,
) -> int:
    """One pass of :func:`close_loops` over the skeleton tips of ``out`` (changed in place)
    with bridges through ``support``; ``accept(candidate mask)`` may refuse a bridge.
    Appends each closed loop's record to ``closed``; returns the number of tips."""
    from skimage.graph import MCP_Geometric
    from skimage.morphology import skeletonize

    reach = np.ceil((rule.max_bridge_mm + rule.tip_mm) / spacing).astype(int) + 2
    outer = index_box(np.argwhere(out), reach, out.shape)
    skeleton = np.zeros(out.shape, dtype=bool)
    skeleton[outer] = skeletonize(out[outer]) > 0
    # the skeleton lies inside ``outer`` (a margin of ≥ 2 voxels): count neighbours there only
    tips = _tips(skeleton[outer]) + np.array([sl.start for sl in outer])
    search = np.ceil((rule.max_bridge_mm + rule.min_loop_mm) / spacing).astype(int)
    cos_max = float(np.cos(np.deg2rad(rule.max_turn_deg)))
    for tip in tips:
        box = index_box(tip[None], search, out.shape)
        local_tip = tip - np.array([sl.start for sl in box])
        m = out[box]
        along = MCP_Geometric(np.where(m, 1.0, np.inf), sampling=tuple(spacing))
        geodesic, _ = along.find_costs([tuple(local_tip)])
        start_zone = m & (geodesic <= rule.tip_mm)
        targets = m & ~(geodesic <= rule.min_loop_mm)
        if not targets.any():
            continue
        arm = np.argwhere(skeleton[box] & start_zone)
        heading = (local_tip - arm.mean(0)) * spacing
        if np.linalg.norm(heading) < 1e-6:
            continue
        heading /= np.linalg.norm(heading)
        ahead = np.argwhere(targets)
        offsets = (ahead - local_tip) * spacing
        cosine = offsets @ heading / (np.linalg.norm(offsets, axis=1) + 1e-9)
        in_front = np.zeros_like(targets)
        in_front[tuple(ahead[cosine >= cos_max].T)] = True
        found = _bridge(support[box], m, local_tip[None], in_front, spacing, rule, start_zone)
        if found is None:
            continue
        gap, length, end = found
        if accept is not None:
            candidate = out.copy()
            candidate[box] |= gap
            if not accept(candidate):
                continue
        out[box] |= gap
        closed.append(
            {
                "tip_voxel": [int(v) for v in tip],
                "end_voxel": [int(v) for v in end + [sl.start for sl in box]],
                "bridge_mm": round(length, 3),
                "added_voxels": int(gap.sum()),
                "image_voxels": int((gap & (prob[box] < rule.bridge_prob)).sum()),
            }
        )
    return len(tips)


def connect_labyrinth(
    prob: np.ndarray,
    mask: np.ndarray,
    spacing_mm: float | Sequence[float],
    rule: BridgeRule | None = None,
    image: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """:func:`connect_pieces`, then :func:`close_loops`: one connected labyrinth whose broken
    canal loops are closed where the probability (or, by the rule, the image) supports it."""
    joined, pieces = connect_pieces(prob, mask, spacing_mm, rule)
    closed, loops = close_loops(prob, joined, spacing_mm, rule, image)
    return closed, {**pieces, **loops}
