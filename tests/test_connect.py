"""connect_pieces: planted canal breaks are bridged along the probability, blobs dropped."""

from __future__ import annotations

import cc3d
import numpy as np
import pytest

from ievnet_bids.connect import BridgeRule, close_loops, connect_labyrinth, connect_pieces
from ievnet_bids.metrics import dice

SPACING = 0.2
SHAPE = (80, 80, 40)


def ring(radius_mm: float = 4.0, tube_mm: float = 0.5) -> np.ndarray:
    """A torus in the z-middle plane (a semicircular-canal loop)."""
    x, y, z = np.meshgrid(*[(np.arange(n) - n / 2 + 0.5) * SPACING for n in SHAPE], indexing="ij")
    return (np.hypot(x, y) - radius_mm) ** 2 + z**2 <= tube_mm**2


def cut(mask: np.ndarray, width_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """(mask with a gap of ``width_mm`` across the ring at +x, the gap voxels)."""
    x = (np.arange(SHAPE[0]) - SHAPE[0] / 2 + 0.5) * SPACING
    y = (np.arange(SHAPE[1]) - SHAPE[1] / 2 + 0.5) * SPACING
    band = (np.abs(y)[None, :, None] <= width_mm / 2) & (x[:, None, None] > 0)
    gap = mask & band
    return mask & ~gap, gap


def pieces(mask: np.ndarray) -> int:
    return int(cc3d.connected_components(mask > 0, connectivity=26).max())


def test_a_break_is_bridged_through_lower_probability():
    full = ring()
    x = (np.arange(SHAPE[0]) - SHAPE[0] / 2 + 0.5) * SPACING
    broken = full & ~(np.abs(x)[:, None, None] <= 0.3)  # 0.6 mm gaps at both y-ends
    assert pieces(broken) == 2  # a canal fallen into two halves
    prob = np.full(SHAPE, 0.02, np.float32)
    prob[full] = 0.3  # the broken stretches are dim but present
    prob[broken] = 0.95
    out, info = connect_pieces(prob, broken, SPACING)
    assert pieces(out) == 1
    assert info["n_pieces_before"] == 2 and info["n_pieces_after"] == 1
    assert [p["action"] for p in info["pieces"]] == ["bridged"]
    assert info["pieces"][0]["bridge_mm"] <= 1.0
    # the bridge stays inside the probability that supports it and fills one gap
    assert np.all(prob[out > 0] >= BridgeRule().bridge_prob)
    assert dice(out > 0, full) > dice(broken, full)
    assert dice(out > 0, full) > 0.97


def test_an_isolated_blob_is_dropped():
    body = ring()
    x, y, z = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    blob = (x - 40) ** 2 + (y - 40) ** 2 + (z - 20) ** 2 <= 16  # centre of the loop, 2.4 mm away
    mask = body | blob
    prob = np.where(mask, 0.95, 0.02).astype(np.float32)
    out, info = connect_pieces(prob, mask, SPACING)
    np.testing.assert_array_equal(out > 0, body)
    assert info["pieces"] == [
        {"volume_mm3": pytest.approx(blob.sum() * 0.008), "action": "dropped: no bridge"}
    ]


def test_a_gap_longer_than_the_rule_is_not_bridged():
    # two bars along x, 1.6 mm apart, with dim support between them
    mask = np.zeros(SHAPE, bool)
    mask[10:30, 38:42, 18:22] = True
    mask[38:60, 38:42, 18:22] = True
    prob = np.full(SHAPE, 0.01, np.float32)
    prob[10:60, 38:42, 18:22] = 0.3
    prob[mask] = 0.95
    _, info = connect_pieces(prob, mask, SPACING, BridgeRule(max_bridge_mm=1.0))
    assert [p["action"] for p in info["pieces"]] == ["dropped: no bridge"]
    out, info = connect_pieces(prob, mask, SPACING, BridgeRule(max_bridge_mm=2.0))
    assert [p["action"] for p in info["pieces"]] == ["bridged"]
    assert info["pieces"][0]["bridge_mm"] == pytest.approx(1.8, abs=0.25)
    assert pieces(out) == 1


def test_the_bridge_follows_a_curved_corridor():
    # two bars 1.2 mm apart; the only support between them is a dim corridor at their ends
    mask = np.zeros(SHAPE, bool)
    mask[10:30, 20:24, 18:22] = True
    mask[10:30, 30:34, 18:22] = True
    prob = np.where(mask, 0.95, 0.01).astype(np.float32)
    corridor = np.zeros(SHAPE, bool)
    corridor[28:32, 24:30, 19:21] = True  # at the end of the bars, not the straight middle
    prob[corridor] = 0.25
    out, info = connect_pieces(prob, mask, SPACING, BridgeRule(widen=False))
    assert pieces(out) == 1
    added = (out > 0) & ~mask
    assert added.any() and corridor[added].all()
    assert info["pieces"][0]["bridge_mm"] == pytest.approx(1.4, abs=0.3)


def test_one_piece_is_returned_unchanged():
    body = ring()
    prob = np.where(body, 0.9, 0.2).astype(np.float32)
    out, info = connect_pieces(prob, body, SPACING)
    np.testing.assert_array_equal(out > 0, body)
    assert info["n_pieces_before"] == info["n_pieces_after"] == 1 and info["pieces"] == []


def test_a_broken_canal_loop_is_closed_ahead_of_its_tip():
    from ievnet_bids.qc import topology

    full = ring()
    open_ring, gap = cut(full, 0.8)  # a C: one piece, no loop
    assert pieces(open_ring) == 1 and topology(open_ring, SPACING).tunnels == 0
    prob = np.full(SHAPE, 0.02, np.float32)
    prob[gap] = 0.3
    prob[open_ring] = 0.95
    out, info = close_loops(prob, open_ring, SPACING)
    assert len(info["loops_closed"]) >= 1
    assert topology(out, SPACING).tunnels == 1
    assert dice(out > 0, full) > 0.98
    assert np.all(prob[out > 0] >= BridgeRule().bridge_prob)
    # without support in the probability the loop stays open, and the mask is unchanged
    dark = np.where(open_ring, 0.95, 0.02).astype(np.float32)
    same, info = connect_labyrinth(dark, open_ring, SPACING)
    np.testing.assert_array_equal(same > 0, open_ring)
    assert info["loops_closed"] == []


def test_a_tip_pointing_away_is_not_bridged_sideways():
    # a straight bar ending 0.6 mm beside a block: dim support lies sideways, not ahead
    mask = np.zeros(SHAPE, bool)
    mask[10:40, 38:42, 18:22] = True  # bar along x, tip at x = 39
    mask[10:30, 45:60, 18:22] = True  # block beside the bar's first part
    mask[10:13, 42:45, 18:22] = True  # joined at the far end (one piece, 5+ mm along)
    prob = np.where(mask, 0.95, 0.02).astype(np.float32)
    prob[20:30, 42:45, 18:22] = 0.3  # sideways support next to the bar
    out, _ = close_loops(prob, mask, SPACING)
    np.testing.assert_array_equal(out > 0, mask)


LABYRINTH_SHAPE = (100, 100, 100)


def labyrinth(cut_rings: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """A "vestibule" ball (r 1.5 mm) with four canal rings (r 3 mm, tube 0.4 mm) through
    it, in the xy (+x), xz, yz and xy (−x) planes; the rings in ``cut_rings`` are cut by
    1 mm on their far side. Returns (mask, the intact mask)."""
    axes = [(np.arange(n) - n / 2 + 0.5) * SPACING for n in LABYRINTH_SHAPE]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    ball = x**2 + y**2 + z**2 <= 1.5**2
    # (centre, in-plane distance, off-plane coordinate, the far point's half-width band)
    rings = [
        (np.hypot(x - 3, y) - 3, z, (np.abs(y) <= 0.5) & (x > 5)),
        (np.hypot(x, z - 3) - 3, y, (np.abs(x) <= 0.5) & (z > 5)),
        (np.hypot(y - 3, z) - 3, x, (np.abs(z) <= 0.5) & (y > 5)),
        (np.hypot(x + 3, y) - 3, z, (np.abs(y) <= 0.5) & (x < -5)),
    ]
    full, mask = ball.copy(), ball.copy()
    for k, (radial, off, far) in enumerate(rings):
        tube = radial**2 + off**2 <= 0.4**2
        full |= tube
        mask |= tube & ~far if k in cut_rings else tube
    return mask, full


def test_fluid_fraction_is_zero_in_bone_and_one_in_the_labyrinth():
    from ievnet_bids.connect import fluid_fraction

    full = ring()
    image = np.where(full, 300.0, 40.0).astype(np.float32)
    image[:, :, :2] = 140.0  # a brighter slice far from the ring: half way
    fraction = fluid_fraction(image, full, SPACING)
    assert np.allclose(fraction[full], 1.0) and np.allclose(fraction[40, 40, 20], 0.0)
    assert np.allclose(fraction[40, 40, 0], 100.0 / 260.0)


IMAGE_RULE = BridgeRule(image_fraction=0.5, loop_max_bridge_mm=3.0)


def test_an_open_loop_is_closed_along_the_image_where_the_model_saw_nothing():
    from ievnet_bids.qc import topology

    mask, full = labyrinth(cut_rings=(0, 1, 2, 3))
    assert topology(mask, SPACING).canal_loops == 0
    prob = np.where(mask, 0.95, 0.0).astype(np.float32)  # the model missed the stretches
    image = np.where(full, 300.0, 40.0).astype(np.float32)  # which the image shows as fluid
    out, info = close_loops(prob, mask, SPACING, IMAGE_RULE, image=image)
    assert topology(out, SPACING).canal_loops == 3  # three of the four, the labyrinth's count
    assert len(info["loops_closed"]) == 3
    assert all(c["image_voxels"] > 0 for c in info["loops_closed"])
    assert (out & ~full).sum() == 0  # the bridges stay in what the image shows
    # neither without the image nor with too dim an image (under half the fluid signal)
    same, _ = close_loops(prob, mask, SPACING, IMAGE_RULE)
    np.testing.assert_array_equal(same > 0, mask)
    dim = np.where(full & ~mask, 40.0 + 0.4 * 260.0, image).astype(np.float32)
    same, _ = close_loops(prob, mask, SPACING, IMAGE_RULE, image=dim)
    np.testing.assert_array_equal(same > 0, mask)


def test_image_bridges_never_make_more_than_three_canal_loops():
    from ievnet_bids.qc import topology

    mask, full = labyrinth(cut_rings=(3,))
    assert topology(mask, SPACING).canal_loops == 3
    prob = np.where(mask, 0.95, 0.0).astype(np.float32)
    image = np.where(full, 300.0, 40.0).astype(np.float32)
    out, info = close_loops(prob, mask, SPACING, IMAGE_RULE, image=image)
    np.testing.assert_array_equal(out > 0, mask)  # a fourth loop is never drawn
    assert info["loops_closed"] == []
