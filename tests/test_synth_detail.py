"""Phantoms v2 (``realism=2``): septa, marrow, vessel dots, dim tissue, fundus nerves."""

from __future__ import annotations

import cc3d
import numpy as np
import pytest
from scipy import ndimage

from ievnet_bids.qc import topology
from ievnet_bids.synth import labels as L
from ievnet_bids.synth.detail import _segment_mask
from ievnet_bids.synth.phantom import (
    EXPECTED_EULER_VESTIBULAR,
    generate_phantom,
    vestibular_euler,
)

SEEDS = (3, 4, 7)
VOXEL_MM3 = 0.2**3


@pytest.fixture(scope="module")
def pairs():
    """(v1, v2) phantoms of the same seeds."""
    return {s: (generate_phantom(s), generate_phantom(s, realism=2)) for s in SEEDS}


def test_v1_is_untouched_by_the_detail_stream(pairs):
    # the same seed draws the same labyrinth and background: outside the septa and the
    # painted detail, v1 and v2 label maps agree voxel for voxel
    for v1, v2 in pairs.values():
        painted = np.isin(v2.labels, (L.MARROW, L.DIM_TISSUE, L.SMALL_VESSEL, L.NERVE))
        septa = v1.tfs & ~v2.tfs
        same = v1.labels == v2.labels
        assert same[~painted & ~septa].all()
        np.testing.assert_allclose(v1.centre_mm, v2.centre_mm)


def test_septa_only_remove_cochlea_and_keep_the_topology(pairs):
    for v1, v2 in pairs.values():
        assert not (v2.tfs & ~v1.tfs).any()  # nothing added to the TFS
        carved = v1.tfs & ~v2.tfs
        assert carved.sum() == v2.meta["detail"]["septa"]["voxels"] > 0
        assert np.isin(v1.labels[carved], (L.COCHLEA, L.SPIRAL_LAMINA)).all()
        # a few per cent of the labyrinth, not a different organ
        assert 0.01 < carved.sum() / v1.tfs.sum() < 0.15
        assert cc3d.connected_components(v2.tfs, connectivity=26).max() == 1
        assert vestibular_euler(v2.labels * v2.tfs) == EXPECTED_EULER_VESTIBULAR
        # the turns touch only along the spiral: the cochlea has no handle, and the whole
        # labyrinth has exactly the three canal tunnels (v1's fused turns add handles)
        cochlea = np.isin(v2.labels, (L.COCHLEA, L.SPIRAL_LAMINA))
        assert topology(cochlea, 0.2).tunnels == 0
        assert topology(v2.tfs, 0.2).tunnels == 3 == topology(v2.tfs, 0.2).canal_loops


def test_septa_separate_neighbouring_turns(pairs):
    # without septa the overlapping turns of the spiral merge into one blob; with them a
    # 6-connected path from one turn to the next must go along the spiral, so the cochlea
    # cut by a plane through the modiolus falls into more pieces
    for v1, v2 in pairs.values():

        def pieces(ph) -> int:
            coch = np.isin(ph.labels, (L.COCHLEA, L.SPIRAL_LAMINA))
            centre = np.round(np.argwhere(coch).mean(0)).astype(int)
            return max(
                ndimage.label(np.take(coch, centre[axis], axis=axis))[1] for axis in range(3)
            )

        assert pieces(v2) > pieces(v1)


def test_detail_is_present_and_never_touches_the_tfs(pairs):
    for _, v2 in pairs.values():
        detail = v2.meta["detail"]
        counts = np.bincount(v2.labels.ravel(), minlength=L.N_LABELS)
        assert counts[L.MARROW] > 0 and detail["marrow_fraction_of_bone"] > 0
        assert counts[L.SMALL_VESSEL] > 0 and detail["vessel_dots"] >= 12
        tfs_ring = ndimage.binary_dilation(v2.tfs, iterations=1) & ~v2.tfs
        # vessel dots and marrow keep at least a voxel of bone to the labyrinth
        assert not np.isin(v2.labels[tfs_ring], (L.SMALL_VESSEL, L.MARROW)).any()
        if detail["dim_tissue_blobs"]:
            # dim tissue sits against the labyrinth (the false-positive risk)
            assert (v2.labels[tfs_ring] == L.DIM_TISSUE).any()


def test_fundus_nerves_lie_in_the_iac():
    v1, v2 = generate_phantom(3), generate_phantom(3, realism=2)
    added = (v2.labels == L.NERVE) & (v1.labels != L.NERVE)
    assert added.any()
    assert np.isin(v1.labels[added], (L.IAC_CSF, L.CISTERN_CSF)).all()


def test_v2_intensities_space_contrast(pairs):
    for _, v2 in pairs.values():
        image = v2.image / np.percentile(v2.image[v2.tfs], 50)
        bone = ndimage.binary_erosion(v2.labels == L.BONE, iterations=3)
        marrow = ndimage.binary_erosion(v2.labels == L.MARROW, iterations=1)
        if marrow.sum() > 50:
            # marrow is intermediate: brighter than bone, darker than fluid
            assert np.median(image[bone]) < np.median(image[marrow]) < 0.8


def test_segment_mask_is_a_capsule():
    spacing = np.array([0.2, 0.2, 0.2])
    a, b = np.array([10.0, 10.0, 10.0]), np.array([20.0, 10.0, 10.0])
    box, inside = _segment_mask((40, 40, 40), spacing, a, b, 0.4)
    full = np.zeros((40, 40, 40), bool)
    full[box] = inside
    # cylinder of radius 2 voxels and length 10 voxels plus two half-balls
    expected = np.pi * 0.4**2 * 2.0 + 4 / 3 * np.pi * 0.4**3
    assert full.sum() * 0.008 == pytest.approx(expected, rel=0.25)
    assert full[15, 10, 10] and full[15, 12, 10] and not full[15, 13, 10]
    assert not full[23, 10, 10]


def test_realism_is_validated():
    with pytest.raises(ValueError, match="realism"):
        generate_phantom(0, realism=3)


def test_roi_cli_writes_v2_labels(tmp_path):
    import nibabel as nib

    from ievnet_bids.synth.__main__ import main

    assert main(["roi", "--out-dir", str(tmp_path), "--seeds", "3", "--realism", "2"]) == 0
    labels = np.asanyarray(nib.load(tmp_path / "phantom-00003_right_labels.nii.gz").dataobj)
    np.testing.assert_array_equal(labels, generate_phantom(3, realism=2).labels)
    assert (labels == L.MARROW).any()
