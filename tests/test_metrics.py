"""Metrics against analytic answers and MONAI; statistics against scipy."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy import ndimage, stats

from ievnet_bids import metrics as m


def sphere(shape: tuple[int, ...], centre_mm, radius_mm: float, spacing) -> np.ndarray:
    """Voxels whose centre lies within ``radius_mm`` of ``centre_mm``."""
    grids = np.meshgrid(
        *(np.arange(n) * s for n, s in zip(shape, spacing, strict=True)), indexing="ij"
    )
    dist2 = sum((g - c) ** 2 for g, c in zip(grids, centre_mm, strict=True))
    return dist2 <= radius_mm**2


def blob(shape: tuple[int, ...], seed: int, sigma: float = 2.5, keep: float = 0.25) -> np.ndarray:
    """Random smooth blobby mask covering ``keep`` of the volume."""
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), sigma)
    return noise > np.quantile(noise, 1 - keep)


def cube(shape, lo, size) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[tuple(slice(a, a + size) for a in lo)] = True
    return mask


# --------------------------------------------------------------------------- analytic


def test_spheres_dice_and_hausdorff_match_geometry() -> None:
    spacing = (0.5, 0.5, 0.5)
    r1, r2, d = 7.0, 5.0, 3.0  # mm; partial overlap because d + r2 > r1
    c = np.array([12.0, 12.0, 12.0])
    a = sphere((48, 48, 48), c, r1, spacing)
    b = sphere((48, 48, 48), c + np.array([d, 0.0, 0.0]), r2, spacing)

    # analytic lens (intersection) volume of two spheres
    lens = math.pi * (r1 + r2 - d) ** 2 * (d**2 + 2 * d * (r1 + r2) - 3 * (r1 - r2) ** 2) / (12 * d)
    v1, v2 = 4 / 3 * math.pi * r1**3, 4 / 3 * math.pi * r2**3
    assert m.dice(a, b) == pytest.approx(2 * lens / (v1 + v2), rel=0.02)
    # and exactly the voxel-count definition
    assert m.dice(a, b) == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()), abs=1e-12)

    diag = math.sqrt(3) * 0.5
    assert m.hausdorff(a, b, spacing) == pytest.approx(abs(r1 - r2) + d, abs=diag)
    assert m.volume_mm3(a, spacing) == pytest.approx(v1, rel=0.02)
    assert m.volume_mm3(a, spacing) == a.sum() * 0.125


def test_concentric_spheres_surface_distance() -> None:
    spacing = (1.0, 1.0, 1.0)
    c = (20.0, 20.0, 20.0)
    a = sphere((41, 41, 41), c, 15.0, spacing)
    b = sphere((41, 41, 41), c, 10.0, spacing)
    # every surface point is ~5 mm from the other surface
    for value in (m.hausdorff(a, b), m.hd95(a, b), m.mean_surface_distance(a, b)):
        assert value == pytest.approx(5.0, abs=math.sqrt(3))
    assert m.mean_surface_distance(a, b) == pytest.approx(5.0, abs=0.5)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3])
def test_shifted_cube_on_anisotropic_grid(axis: int, k: int) -> None:
    spacing = (0.2, 0.5, 1.0)
    shape = (30, 30, 30)
    a = cube(shape, (10, 10, 10), 10)
    lo = [10, 10, 10]
    lo[axis] += k
    b = cube(shape, lo, 10)

    assert m.hausdorff(a, b, spacing) == pytest.approx(k * spacing[axis], abs=1e-12)
    assert m.volume_mm3(a, spacing) == pytest.approx(1000 * 0.1, abs=1e-9)
    assert m.volume_mm3(b, spacing) == pytest.approx(100.0, abs=1e-9)
    assert m.dice(a, b) == pytest.approx((10 - k) / 10, abs=1e-12)
    d_ab, d_ba = m.surface_distances(a, b, spacing)
    assert d_ab.max() == pytest.approx(k * spacing[axis])
    assert d_ba.max() == pytest.approx(k * spacing[axis])
    # the shift is symmetric, so both directed distance sets are identical multisets
    np.testing.assert_allclose(np.sort(d_ab), np.sort(d_ba))


def test_identical_masks_are_perfect() -> None:
    a = blob((20, 24, 18), seed=3)
    res = m.evaluate_case(a, a, (0.3, 0.4, 0.5))
    assert res["dice"] == 1.0
    assert res["hausdorff_mm"] == res["hd95_mm"] == res["msd_mm"] == 0.0
    assert res["volume_pred_mm3"] == res["volume_ref_mm3"] == pytest.approx(a.sum() * 0.06)


def test_surface_is_mask_minus_face_connected_erosion() -> None:
    a = cube((7, 7, 7), (1, 1, 1), 5)
    d_ab, d_ba = m.surface_distances(a, a)
    # 5³ cube minus its 3³ interior
    assert d_ab.size == d_ba.size == 125 - 27


def test_crop_does_not_change_results_and_is_fast() -> None:
    small_a = blob((24, 20, 16), seed=4)
    small_b = blob((24, 20, 16), seed=5)
    spacing = (0.4, 0.6, 1.1)
    big_a = np.zeros((200, 150, 100), bool)
    big_b = np.zeros_like(big_a)
    # embed so that the blobs' former array border is now interior: pad the small case
    # with one background voxel first so both see the same (background) outside
    pa, pb = np.pad(small_a, 1), np.pad(small_b, 1)
    big_a[90:116, 60:82, 40:58] = pa
    big_b[90:116, 60:82, 40:58] = pb
    expected = m.evaluate_case(pa, pb, spacing)
    m.evaluate_case(big_a, big_b, spacing)  # warm-up
    t0 = time.perf_counter()
    got = m.evaluate_case(big_a, big_b, spacing)
    elapsed = time.perf_counter() - t0
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12), key
    assert elapsed < 1.0  # ~0.05 s normally; generous for a loaded CI machine


# --------------------------------------------------------------------------- empty masks


def test_both_empty() -> None:
    z = np.zeros((8, 8, 8), bool)
    assert m.dice(z, z) == 1.0
    assert m.hausdorff(z, z, (1, 2, 3)) == 0.0
    assert m.hd95(z, z) == 0.0
    assert m.mean_surface_distance(z, z) == 0.0
    d_ab, d_ba = m.surface_distances(z, z)
    assert d_ab.size == d_ba.size == 0
    res = m.evaluate_case(z, z, (1, 1, 1))
    assert res == {
        "dice": 1.0,
        "hausdorff_mm": 0.0,
        "hd95_mm": 0.0,
        "msd_mm": 0.0,
        "volume_pred_mm3": 0.0,
        "volume_ref_mm3": 0.0,
    }


@pytest.mark.parametrize("empty", ["pred", "ref"])
def test_one_empty(empty: str) -> None:
    z = np.zeros((8, 8, 8), bool)
    a = cube((8, 8, 8), (2, 2, 2), 3)
    pred, ref = (z, a) if empty == "pred" else (a, z)
    assert m.dice(pred, ref) == 0.0
    assert m.hausdorff(pred, ref) == math.inf
    assert m.hd95(pred, ref) == math.inf
    assert m.mean_surface_distance(pred, ref) == math.inf
    res = m.evaluate_case(pred, ref, (0.5, 0.5, 0.5))
    assert res["dice"] == 0.0
    assert res["hausdorff_mm"] == res["hd95_mm"] == res["msd_mm"] == math.inf
    assert res["volume_pred_mm3" if empty == "ref" else "volume_ref_mm3"] == 27 * 0.125
    d_ab, d_ba = m.surface_distances(pred, ref)
    nonempty = d_ab if empty == "ref" else d_ba
    assert nonempty.size == 26 and np.all(np.isinf(nonempty))


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(4, 4, 4\).*\(4, 4, 5\)"):
        m.dice(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)))
    with pytest.raises(ValueError, match=r"\(4, 4, 4\).*\(4, 4, 5\)"):
        m.hausdorff(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        m.hausdorff(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), (1, 1))


def test_per_structure_dice() -> None:
    ref = np.zeros((10, 10, 10), np.uint8)
    ref[:5] = 1  # cochlea: 500 voxels
    ref[5:] = 2  # vestibule: 500 voxels
    pred = ref.copy()
    pred[4] = 2  # 100 cochlea voxels relabelled as vestibule
    out = m.per_structure_dice(pred, ref, {"cochlea": 1, "vestibule": 2, "absent": 3})
    assert out["cochlea"] == pytest.approx(2 * 400 / 900)
    assert out["vestibule"] == pytest.approx(2 * 500 / 1100)
    assert out["absent"] == 1.0


# --------------------------------------------------------------------------- MONAI


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    ("seed", "spacing"),
    [(0, (1.0, 1.0, 1.0)), (1, (0.4, 0.7, 1.3)), (2, (1.5, 0.3, 0.6)), (3, (0.2, 0.5, 1.0))],
)
def test_agrees_with_monai(seed: int, spacing: tuple[float, float, float]) -> None:
    torch = pytest.importorskip("torch")
    mm = pytest.importorskip("monai.metrics")
    shape = (28, 24, 20)
    pred = blob(shape, seed=100 + seed)
    ref = blob(shape, seed=200 + seed) | blob(shape, seed=100 + seed, sigma=3.0)

    def t(mask: np.ndarray):
        return torch.from_numpy(mask[None, None].astype(np.float32))

    kw = {"include_background": True, "spacing": spacing}
    monai = {
        "dice": mm.compute_dice(t(pred), t(ref), include_background=True).item(),
        "hausdorff_mm": mm.compute_hausdorff_distance(t(pred), t(ref), **kw).item(),
        "hd95_mm": mm.compute_hausdorff_distance(t(pred), t(ref), percentile=95, **kw).item(),
        "msd_mm": mm.compute_average_surface_distance(t(pred), t(ref), symmetric=True, **kw).item(),
    }
    ours = m.evaluate_case(pred, ref, spacing)
    assert 0.05 < ours["dice"] < 0.95  # a non-trivial case
    for key, value in monai.items():
        assert ours[key] == pytest.approx(value, rel=1e-5, abs=1e-5), key
    assert m.hd95(pred, ref, spacing) == ours["hd95_mm"]
    assert m.mean_surface_distance(pred, ref, spacing) == ours["msd_mm"]


# --------------------------------------------------------------------------- statistics

# Dice per case of three datasets (fixed, no ties) and paired left/right ears.
TABLE = {
    "A": [0.912, 0.884, 0.931, 0.902, 0.874, 0.921, 0.895, 0.909],
    "B": [0.861, 0.879, 0.843, 0.888, 0.852, 0.871, 0.866, 0.857],
    "C": [0.905, 0.918, 0.889, 0.927, 0.899, 0.913, 0.941, 0.883],
}
LEFT = [0.912, 0.884, 0.931, 0.902, 0.874, 0.921, 0.895, 0.909, 0.887, 0.915]
# differences L - R: 0.007 -0.008 0.014 0.019 0.006 -0.004 0.016 0.013 0.021 0.011 (distinct |d|)
RIGHT = [0.905, 0.892, 0.917, 0.883, 0.868, 0.925, 0.879, 0.896, 0.866, 0.904]


def test_benjamini_hochberg_known_values() -> None:
    np.testing.assert_allclose(m.benjamini_hochberg([0.01, 0.02, 0.03, 0.04, 0.05]), [0.05] * 5)
    np.testing.assert_allclose(m.benjamini_hochberg([0.5, 0.01, 0.9]), [0.75, 0.03, 0.9])
    np.testing.assert_allclose(m.benjamini_hochberg([1.0, 0.9]), [1.0, 1.0])
    assert m.benjamini_hochberg([]).size == 0


@pytest.mark.parametrize("seed", range(5))
def test_benjamini_hochberg_matches_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.uniform(0, 0.05, 7), rng.uniform(0, 1, 13), [0.02, 0.02]])
    rng.shuffle(p)
    np.testing.assert_allclose(m.benjamini_hochberg(p), stats.false_discovery_control(p))


def test_shapiro_wilk() -> None:
    ref = stats.shapiro(TABLE["A"])
    res = m.shapiro_wilk(TABLE["A"])
    assert (res.statistic, res.pvalue) == pytest.approx((ref.statistic, ref.pvalue))
    assert 0 < res.statistic <= 1
    with pytest.raises(ValueError, match="at least 3"):
        m.shapiro_wilk([1.0, 2.0])


def test_wilcoxon_paired() -> None:
    res = m.wilcoxon_paired(LEFT, RIGHT)
    diff = np.subtract(LEFT, RIGHT)
    ranks = stats.rankdata(np.abs(diff))
    w_plus, w_minus = ranks[diff > 0].sum(), ranks[diff < 0].sum()
    # negative differences have ranks 1 (|0.004|) and 4 (|0.008|)
    assert res.statistic == min(w_plus, w_minus) == 5.0
    # exact null: 10 of the 2**10 sign patterns have W <= 5, two-sided
    assert res.pvalue == pytest.approx(2 * 10 / 2**10)
    assert res.pvalue == pytest.approx(stats.wilcoxon(LEFT, RIGHT).pvalue)
    with pytest.raises(ValueError, match="length"):
        m.wilcoxon_paired(LEFT, RIGHT[:-1])


def test_kruskal_wallis() -> None:
    res = m.kruskal_wallis(TABLE)
    # H by hand (no ties): 12 / (N (N+1)) Σ R_i² / n_i − 3 (N+1)
    values = np.concatenate(list(TABLE.values()))
    ranks = stats.rankdata(values).reshape(3, 8)
    n = values.size
    h = 12 / (n * (n + 1)) * sum(r.sum() ** 2 / r.size for r in ranks) - 3 * (n + 1)
    assert res.statistic == pytest.approx(h)
    assert res.statistic == pytest.approx(13.68)
    assert res.pvalue == pytest.approx(stats.chi2.sf(h, df=2))
    assert res.pvalue == pytest.approx(stats.kruskal(*TABLE.values()).pvalue)
    with pytest.raises(ValueError, match="2 groups"):
        m.kruskal_wallis({"A": TABLE["A"]})


def test_mann_whitney_pairwise() -> None:
    frame = m.mann_whitney_pairwise(TABLE, alpha=0.05)
    assert list(frame.columns) == ["group_a", "group_b", "u", "p", "p_fdr", "significant"]
    assert list(zip(frame["group_a"], frame["group_b"], strict=True)) == [
        ("A", "B"),
        ("A", "C"),
        ("B", "C"),
    ]
    for row in frame.itertuples():
        a, b = np.array(TABLE[row.group_a]), np.array(TABLE[row.group_b])
        u = float((a[:, None] > b[None, :]).sum())  # no ties: U counts wins of group_a
        assert row.u == u
        assert row.p == pytest.approx(stats.mannwhitneyu(a, b).pvalue)
    np.testing.assert_allclose(frame["p_fdr"], stats.false_discovery_control(frame["p"]))
    assert frame["significant"].tolist() == (frame["p_fdr"] < 0.05).tolist()
    assert frame["u"].tolist() == [61.0, 27.0, 1.0]
    # B differs from A and C after correction, A and C do not differ
    assert frame["significant"].tolist() == [True, False, True]
    # BH by hand: sorted p (B-C, A-B, A-C) times 3 / rank, no monotonicity fix needed here
    p = frame["p"].to_numpy()
    np.testing.assert_allclose(frame["p_fdr"], [p[0] * 3 / 2, p[1], p[2] * 3])
