"""threshold_and_clean keeps the labyrinth by what it is, not by size."""

from __future__ import annotations

from dataclasses import replace

import cc3d
import numpy as np
import pytest
from scipy import ndimage

from ievnet_bids.postprocess import threshold_and_clean

SHAPE = (200, 150, 100)
SP = 0.2  # mm
VOXEL_MM3 = SP**3


def _mm_grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    centre = (np.array(SHAPE) - 1) / 2.0
    i, j, k = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    return (i - centre[0]) * SP, (j - centre[1]) * SP, (k - centre[2]) * SP


def _ball(X, Y, Z, c, r) -> np.ndarray:
    return (X - c[0]) ** 2 + (Y - c[1]) ** 2 + (Z - c[2]) ** 2 <= r**2


def _scene(slab_prob: float = 0.7) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Synthetic probability map (see test docstring for the objects)."""
    X, Y, Z = _mm_grid()
    R, r = 4.0, 1.3  # "semicircular canal" torus around z at the ROI centre
    torus = (np.sqrt(X**2 + Y**2) - R) ** 2 + Z**2 <= r**2
    vestibule = _ball(X, Y, Z, (R, 0, 0), 2.0)
    cavity = _ball(X, Y, Z, (R, 0, 0), 0.7)  # enclosed hole: must be filled
    fragment = _ball(X, Y, Z, (-(R + r + 1.1), 0, 0), 0.5)  # broken canal: 0.6 mm gap
    weak = _ball(X, Y, Z, (0, R + r + 1.1, 0), 0.6)  # low-confidence neighbour
    isolated = (
        _ball(X, Y, Z, (9, 9, 0), 0.5)
        | _ball(X, Y, Z, (-10, -8, -5), 0.5)
        | _ball(X, Y, Z, (0, -10, 5), 0.5)
    )
    slab = np.broadcast_to((X <= -14.0) & (np.abs(Z) <= 5.0), SHAPE)  # CSF at the edge
    prob = np.random.default_rng(0).uniform(0.0, 0.3, SHAPE).astype(np.float32)
    prob[torus | vestibule | fragment | isolated] = 0.95
    prob[weak] = 0.7
    prob[slab] = slab_prob
    prob[cavity] = 0.05
    labyrinth = torus | vestibule | fragment
    return prob, {"labyrinth": labyrinth, "cavity": cavity, "slab": slab, "fragment": fragment}


@pytest.fixture(scope="module")
def scene():
    return _scene()


def test_keeps_labyrinth_not_largest_component(scene) -> None:
    """Labyrinth (torus + vestibule with a cavity, 134 + ~34 mm³, prob 0.95) at the centre,
    a canal fragment 0.6 mm away, a low-confidence (0.7) neighbour 0.5 mm away, three
    isolated 0.5 mm³ blobs (0.95) 9–11 mm away, and a 1800 mm³ CSF slab (0.7) at the edge."""
    prob, obj = scene
    mask, info = threshold_and_clean(prob, SP)
    assert mask.dtype == np.uint8 and mask.shape == SHAPE
    np.testing.assert_array_equal(mask.astype(bool), obj["labyrinth"])
    assert info["n_components"] == 7
    slab_mm3 = obj["slab"].sum() * VOXEL_MM3
    assert slab_mm3 > 1700 > 10 * info["volume_mm3"]  # largest component is the CSF slab
    assert info["volume_mm3"] == pytest.approx(obj["labyrinth"].sum() * VOXEL_MM3, abs=1e-6)
    assert 130 < info["volume_mm3"] < 200
    cavity_voxels = int(obj["cavity"].sum())
    assert cavity_voxels > 100 and info["filled_voxels"] == cavity_voxels
    # the loop of the "canal" is a through-hole: never filled
    assert mask[99:101, 74:76, 49:51].sum() == 0

    main, frag = info["kept"]
    assert main["reason"] == "best labyrinth score" and main["score"] > 0.9
    assert main["centroid_dist_mm"] < 1.5
    assert frag["reason"].startswith("labyrinth fragment")
    assert 0.4 <= frag["gap_mm"] <= 1.0
    reasons = sorted(d["reason"].split(" ")[0] for d in info["dropped"])
    assert reasons == ["isolated", "isolated", "isolated", "low", "low"]
    biggest = info["dropped"][0]
    assert biggest["volume_mm3"] == pytest.approx(slab_mm3, rel=1e-6)
    assert biggest["max_prob"] == pytest.approx(0.7) and biggest["score"] < 0.3
    assert info["n_dropped"] == 5


def test_confident_csf_slab_still_dropped() -> None:
    prob, obj = _scene(slab_prob=0.97)
    mask, info = threshold_and_clean(prob, (SP, SP, SP))
    np.testing.assert_array_equal(mask.astype(bool), obj["labyrinth"])
    assert any(
        d["reason"].startswith("not labyrinth-like") and d["voxels"] == obj["slab"].sum()
        for d in info["dropped"]
    )


def test_fragment_beyond_gap_is_dropped(scene) -> None:
    prob, obj = scene
    mask, info = threshold_and_clean(prob, SP, max_gap_mm=0.3)
    assert len(info["kept"]) == 1
    np.testing.assert_array_equal(mask.astype(bool), obj["labyrinth"] & ~obj["fragment"])
    assert sum(d["reason"].startswith("isolated") for d in info["dropped"]) == 4


def test_no_labyrinth_gives_empty_mask_with_warning() -> None:
    prob, obj = _scene()
    only_slab = np.where(obj["slab"], prob, 0.1).astype(np.float32)
    mask, info = threshold_and_clean(only_slab, SP)
    assert mask.sum() == 0 and "no labyrinth-like component" in info["warning"]
    assert info["n_dropped"] == 1
    mask, info = threshold_and_clean(np.zeros((8, 8, 8), np.float32), SP)
    assert mask.sum() == 0 and info["warning"] == "no voxel above threshold"


def test_threshold_and_anisotropic_spacing() -> None:
    prob = np.zeros((40, 40, 16), np.float32)
    prob[15:25, 15:25, 6:10] = 0.6  # 10x10x4 voxels at 0.5 x 0.5 x 1.0 mm = 100 mm³
    prob[18:22, 18:22, 7:9] = 0.95
    mask, info = threshold_and_clean(prob, (0.5, 0.5, 1.0))
    assert mask.sum() == 400 and info["volume_mm3"] == pytest.approx(100.0)
    mask, _ = threshold_and_clean(prob, (0.5, 0.5, 1.0), threshold=0.7)
    assert mask.sum() == 32
    with pytest.raises(ValueError, match="spacing"):
        threshold_and_clean(prob, (0.5, 0.0, 1.0))


def test_cleanup_parameters_are_a_record_carried_by_the_model_card():
    from ievnet_bids.model.card import ModelCard
    from ievnet_bids.postprocess import CleanupParams

    params = CleanupParams(max_gap_mm=0.3)
    assert CleanupParams.from_dict(params.to_dict()) == params
    card = ModelCard.from_dict({"cleanup": {"max_gap_mm": 0.3}})
    assert card.cleanup == params and card.to_dict()["cleanup"]["max_gap_mm"] == 0.3
    assert ModelCard().cleanup == CleanupParams()  # cards without the field: the defaults
    with pytest.raises(ValueError, match="cleanup"):
        ModelCard.from_dict({"cleanup": {"gap": 1.0}})
    with pytest.raises(ValueError):
        CleanupParams(volume_range_mm3=(400.0, 100.0))
    prob = np.zeros((8, 8, 8), np.float32)
    assert threshold_and_clean(prob, SP, params=params)[1]["params"]["max_gap_mm"] == 0.3


def test_bridge_rule_rides_in_the_cleanup_record_and_connects_the_mask():
    from ievnet_bids.connect import BridgeRule
    from ievnet_bids.model.card import ModelCard
    from ievnet_bids.postprocess import CleanupParams

    params = CleanupParams(bridges=BridgeRule(max_bridge_mm=1.5))
    assert CleanupParams.from_dict(params.to_dict()) == params
    card = ModelCard.from_dict({"cleanup": {"bridges": {"bridge_prob": 0.2}}})
    assert card.cleanup.bridges == BridgeRule(bridge_prob=0.2)
    assert card.to_dict()["cleanup"]["bridges"]["bridge_prob"] == 0.2
    assert CleanupParams().bridges is None  # cards without the rule: masks as before

    # a labyrinth-like block at the centre and a canal piece 0.8 mm away, joined by a dim
    # stretch: without the rule two pieces, with it one
    prob = np.full((60, 60, 40), 0.02, np.float32)
    prob[20:40, 20:40, 15:25] = 0.97  # 4 x 4 x 2 mm body
    prob[40:44, 28:32, 18:22] = 0.3  # the dim stretch
    prob[44:56, 28:32, 18:22] = 0.95  # the canal piece
    plain, _ = threshold_and_clean(prob, 0.2, max_gap_mm=1.0, volume_range_mm3=(10.0, 400.0))
    joined, info = threshold_and_clean(
        prob, 0.2, params=CleanupParams(volume_range_mm3=(10.0, 400.0), bridges=BridgeRule())
    )
    assert cc3d.connected_components(plain > 0, connectivity=26).max() == 2
    assert cc3d.connected_components(joined > 0, connectivity=26).max() == 1
    assert info["connect"]["pieces"][0]["action"] == "bridged"
    assert info["params"]["bridges"] == BridgeRule().to_json()


def test_voxels_added_by_the_cleanup_survive_the_map_back():
    import nibabel as nib

    from ievnet_bids.segmentation import map_back_ear

    affine = np.diag([0.2, 0.2, 0.2, 1.0])
    prob = np.zeros((30, 30, 30), np.float32)
    prob[5:25, 5:25, 5:25] = 0.9
    prob[14:16, 14:16, 14:16] = 0.2  # a dim cavity, filled by the clean-up
    prob[26:28, 10:12, 10:12] = 0.95  # a dropped blob
    mask = np.zeros(prob.shape, np.uint8)
    mask[5:25, 5:25, 5:25] = 1
    slab = nib.Nifti1Image(np.zeros(prob.shape, np.float32), affine)  # the ROI grid itself
    native_prob, native_mask = map_back_ear(
        nib.Nifti1Image(prob, affine), nib.Nifti1Image(mask, affine), slab, threshold=0.5
    )
    np.testing.assert_array_equal(native_mask, mask)  # cavity kept, blob dropped
    np.testing.assert_allclose(native_prob, prob, atol=1e-6)  # the probseg is the raw one


def test_stored_probability_is_on_its_grid_and_keeps_the_mask(tmp_path) -> None:
    """Saved probabilities lie on the 2^-16 grid (within half a step of the network's), so
    ``>= 0.5`` selects the same voxels except within half a step below 0.5; an ear read from
    a file saves its image as a byte copy of that file."""
    import nibabel as nib

    from ievnet_bids.geometry.roi import RoiGrid
    from ievnet_bids.segmentation import PROB_STEP, EarRoi, roi_image, save_ear, stored_probability

    rng = np.random.default_rng(0)
    prob = rng.random((30, 20, 10)).astype(np.float32) ** 3  # many tiny values, as a sigmoid
    stored = stored_probability(prob)
    assert stored.dtype == np.float32
    np.testing.assert_array_equal(stored, np.round(stored / PROB_STEP) * PROB_STEP)
    assert np.abs(stored - prob).max() <= PROB_STEP / 2
    band = (prob < 0.5) & (prob >= 0.5 - PROB_STEP / 2)
    np.testing.assert_array_equal((stored >= 0.5) & ~band, (prob >= 0.5) & ~band)
    assert (stored == 0).mean() > (prob == 0).mean()  # the noise floor is exactly zero

    grid = RoiGrid.centred((0.0, 0.0, 0.0), shape=(30, 20, 10), spacing_mm=0.2)
    source = tmp_path / "extract" / "roi_left_image.nii.gz"
    source.parent.mkdir()
    nib.save(roi_image(prob * 100, grid), source)
    ear = EarRoi("left", grid, prob * 100, prob=prob, mask=prob >= 0.5, source=source)
    files = save_ear(ear, tmp_path / "segment")
    assert files["image"].read_bytes() == source.read_bytes()
    np.testing.assert_array_equal(np.asarray(nib.load(files["prob"]).dataobj), stored)


def _ball_fraction(
    shape: tuple[int, int, int], spacing: float, origin: float, radius: float, n: int = 5
) -> np.ndarray:
    """Volume fraction of each voxel inside a ball of ``radius`` mm at (3.9, 3.9, 3.9) mm
    (voxel centres at ``origin + spacing · index``), from n³ sub-samples per voxel."""
    centres = [origin + spacing * np.arange(s) for s in shape]
    offsets = (np.arange(n) + 0.5) / n - 0.5
    fraction = np.zeros(shape, np.float32)
    for dx in offsets:
        for dy in offsets:
            for dz in offsets:
                x, y, z = np.ix_(
                    centres[0] + dx * spacing, centres[1] + dy * spacing, centres[2] + dz * spacing
                )
                fraction += ((x - 3.9) ** 2 + (y - 3.9) ** 2 + (z - 3.9) ** 2) <= radius**2
    return fraction / n**3


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_trim_drops_the_mostly_bone_rim_of_a_too_wide_mask():
    """A 2 mm fluid ball imaged with exact partial volume (bone 100, fluid 1000) and a mask
    one voxel too wide all round (the model's bias): the trim takes off the rim voxels under
    40 % fluid, which brings the volume from +26 % to +1 % (Dice 0.88 → 0.99), never touches
    a voxel of the exact (≥ 50 % fluid) mask, and leaves that exact mask as it is."""
    from ievnet_bids.postprocess import trim_mostly_bone

    fraction = _ball_fraction((40, 40, 40), SP, 0.0, 2.0)
    image = 100.0 + 900.0 * fraction
    exact = fraction >= 0.5
    too_wide = ndimage.binary_dilation(exact)
    trimmed, record = trim_mostly_bone(too_wide.astype(np.uint8), image, SP, 0.4)
    trimmed = trimmed > 0
    assert too_wide.sum() / exact.sum() - 1 > 0.25
    assert abs(trimmed.sum() / exact.sum() - 1) < 0.02
    assert record["voxels"] == too_wide.sum() - trimmed.sum() > 0 and record["skipped"] is None
    assert not (exact & ~trimmed).any()  # no voxel of the exact mask removed
    assert fraction[too_wide & ~trimmed].max() < 0.4  # only mostly-bone voxels
    assert _dice(trimmed, exact) > 0.99 > 0.89 > _dice(too_wide, exact)
    kept, record = trim_mostly_bone(exact.astype(np.uint8), image, SP, 0.4)
    assert record["voxels"] == 0
    np.testing.assert_array_equal(kept, exact)


def test_simple_points():
    """The centre of a 3×3×3 neighbourhood is simple when its removal changes no topology."""
    from ievnet_bids.postprocess import is_simple

    line = np.zeros((3, 3, 3), bool)
    line[:, 1, 1] = True
    assert not is_simple(line)  # the middle of a line: removal splits it
    end = line.copy()
    end[0, 1, 1] = False
    assert is_simple(end)  # the end of a line
    single = np.zeros((3, 3, 3), bool)
    single[1, 1, 1] = True
    assert not is_simple(single)  # an isolated voxel: removal deletes a component
    face = np.zeros((3, 3, 3), bool)
    face[:2] = True
    assert is_simple(face)  # on the flat face of a block
    assert not is_simple(np.ones((3, 3, 3), bool))  # inside: removal opens a cavity
    plate = np.zeros((3, 3, 3), bool)
    plate[1] = True
    assert not is_simple(plate)  # the middle of a plate: removal punches a hole


def test_trim_keeps_the_topology():
    """Two fluid balls joined by a one-voxel line through bone, one of them wrapped in a
    one-voxel rim of bone on its far side: the rim goes (all 261 voxels), the line's 9
    voxels outside the balls stay (removing any would split the mask)."""
    from ievnet_bids.postprocess import trim_mostly_bone

    image = np.full((40, 40, 40), 100.0, np.float32)
    mask = np.zeros(image.shape, bool)
    i, j, k = np.ogrid[:40, :40, :40]
    balls = [(i - c) ** 2 + (j - 20) ** 2 + (k - 20) ** 2 <= 25 for c in (10, 30)]
    for ball in balls:
        mask |= ball
        image[ball] = 1000.0
    rim = ndimage.binary_dilation(balls[1]) & ~balls[1] & (i > 25)
    mask |= rim
    mask[10:31, 20, 20] = True  # the line, bone in the image
    line = mask & ~balls[0] & ~balls[1] & ~rim
    out, record = trim_mostly_bone(mask, image, SP, 0.4)
    assert line.sum() == 9 and out[line].all()
    assert not (out & rim).any() and rim.sum() == 261 == record["voxels"]
    assert record["kept_for_topology"] == 9 and record["skipped"] is None
    np.testing.assert_array_equal(out, balls[0] | balls[1] | line)


def test_the_trimmed_border_stays_off_the_mapped_back_mask():
    """The clean-up trims a probability whose 0.5 isosurface lies one voxel outside the ball;
    mapped onto a 0.5 mm slab, the trimmed mask (with its ROI image) matches the ball's own
    0.5 mm rasterisation (Dice 1.0; untrimmed 0.96, volume +8.6 %); without an image the
    cleaned probability of the trimmed voxels drops to 0."""
    import nibabel as nib

    from ievnet_bids.postprocess import CleanupParams
    from ievnet_bids.segmentation import cleaned_probability, map_back_ear

    fraction = _ball_fraction((40, 40, 40), SP, 0.0, 2.0)
    image = 100.0 + 900.0 * fraction
    distance = ndimage.distance_transform_edt(fraction < 0.5, sampling=SP)
    prob = (1.0 / (1.0 + np.exp((distance - 0.25) / 0.05))).astype(np.float32)  # 1 voxel wide
    params = CleanupParams(volume_range_mm3=(10.0, 400.0), border_fluid_fraction=0.4)
    plain, _ = threshold_and_clean(prob, SP, params=replace(params, border_fluid_fraction=None))
    trimmed, info = threshold_and_clean(prob, SP, params=params, image=image)
    assert "border_trim" not in threshold_and_clean(prob, SP, params=params)[1]  # no image
    assert info["border_trim"]["voxels"] == plain.sum() - trimmed.sum() > 0

    roi_affine = np.diag([SP, SP, SP, 1.0])
    slab_affine = np.diag([0.5, 0.5, 0.5, 1.0])
    slab_affine[:3, 3] = 0.15  # the same 8 mm field in 0.5 mm voxels
    slab = nib.Nifti1Image(np.zeros((16, 16, 16), np.float32), slab_affine)
    truth = _ball_fraction((16, 16, 16), 0.5, 0.15, 2.0) >= 0.5

    def on_slab(mask: np.ndarray, **kwargs) -> np.ndarray:
        images = (nib.Nifti1Image(prob, roi_affine), nib.Nifti1Image(mask, roi_affine))
        return map_back_ear(*images, slab, 0.5, **kwargs)[1] > 0

    before = on_slab(plain)
    after = on_slab(
        trimmed, image_roi=nib.Nifti1Image(image, roi_affine), border_fluid_fraction=0.4
    )
    assert _dice(after, truth) > 0.99 > 0.97 > _dice(before, truth)
    assert abs(after.sum() / truth.sum() - 1) < 0.01 < 0.08 < before.sum() / truth.sum() - 1
    cleaned = cleaned_probability(prob, trimmed, 0.5)
    assert cleaned[(plain > 0) & (trimmed == 0)].max() == 0.0
