"""Ear localisation: template registration and labyrinth search (ievnet_bids.localize)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from ievnet_bids.geometry.roi import RoiGrid, resample
from ievnet_bids.localize import refine as R
from ievnet_bids.localize.register import (
    LPS,
    register_template,
    template_ear_centres,
    to_ants,
)
from ievnet_bids.synth.head import euler_rotation, write_bids_dataset
from ievnet_bids.templates import load_template

pytestmark = pytest.mark.xdist_group("localize")  # the dataset fixture is built once

SEED = 5
SIDES = ("left", "right")


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(a.T @ b) - 1) / 2, -1.0, 1.0))))


@pytest.fixture(scope="session")
def subject(tmp_path_factory) -> dict:
    """One synthetic subject: T1w and T2 slab images, truth record."""
    root = tmp_path_factory.mktemp("localize")
    summary = write_bids_dataset(root / "bids", root / "truth", n_subjects=1, seed=SEED)
    rec = summary["images"][0]
    truth = json.loads(Path(rec["truth"]).read_text())
    return {
        "t1w": nib.load(rec["t1w"]),
        "t2w": nib.load(rec["t2w"]),
        "paths": {"t1w": rec["t1w"], "t2w": rec["t2w"]},
        "truth": truth,
        "centres": {s: np.array(truth["ears"][s]["tfs_bbox_centre_mm"]) for s in SIDES},
    }


@pytest.fixture(scope="session")
def registered(subject):
    return register_template(subject["t1w"])


# --------------------------------------------------------------------------- registration
def test_ants_image_is_in_lps():
    affine = np.array(
        [[-0.9, 0.1, 0.0, 30.0], [0.0, 1.1, 0.2, -12.0], [0.1, 0.0, 1.4, 7.0], [0, 0, 0, 1]]
    )
    import ants

    img = to_ants(np.zeros((6, 7, 8), np.float32), affine)
    for ijk in [(0, 0, 0), (1, 2, 3), (5, 6, 7)]:
        lps = ants.transform_index_to_physical_point(img, ijk)
        np.testing.assert_allclose(lps, (LPS @ affine @ [*ijk, 1])[:3], atol=1e-5)


def test_registration_recovers_a_known_transform_of_the_template():
    t1, _, landmarks = load_template()
    tpl_grid = RoiGrid(t1.shape, t1.affine)
    pivot = tpl_grid.centre_mm
    rot = euler_rotation((8.0, -6.0, 12.0))
    pose = np.eye(4)
    pose[:3, :3] = rot
    pose[:3, 3] = pivot + np.array([6.0, -9.0, 4.0]) - rot @ pivot
    # subject grid: 1.5 mm, x voxel axis flipped (radiological storage), around the moved head
    flip = np.diag([-1.0, 1.0, 1.0])
    grid = RoiGrid.centred(
        (pose @ [*pivot, 1])[:3], shape=(130, 165, 150), spacing_mm=1.5, rotation=flip
    )
    data = resample(np.asarray(t1.dataobj, np.float32), pose @ t1.affine, grid, order=1)
    head = nib.Nifti1Image(data, grid.affine)

    tx = register_template(head)
    print(f"\nknown-transform registration: {tx.seconds:.2f} s, scales {np.round(tx.scales, 3)}")
    pts = np.array([*landmarks.values(), *(pivot + 40 * np.eye(3)), *(pivot - 40 * np.eye(3))])
    err = np.linalg.norm(tx.apply(pts) - (pts @ rot.T + pose[:3, 3]), axis=1)
    print(f"point errors (mm): {np.round(err, 2)}")
    assert err.max() < 2.0
    assert _angle_deg(tx.rotation, rot) < 2.0
    np.testing.assert_allclose(tx.rotation.T @ tx.rotation, np.eye(3), atol=1e-9)
    assert np.linalg.det(tx.rotation) == pytest.approx(1.0)


def test_registration_maps_ear_landmarks_near_the_ears(subject, registered):
    ears = template_ear_centres(registered)
    truth = subject["truth"]
    pose = np.array(truth["head_pose_template_to_scanner"])
    for side in SIDES:
        err = np.linalg.norm(ears[side] - subject["centres"][side])
        landmark = np.array(truth["ears"][side]["template_landmark_mm"])
        err_pose = np.linalg.norm(ears[side] - (pose[:3, :3] @ landmark + pose[:3, 3]))
        print(f"\n{side}: landmark → true ear {err:.2f} mm, → posed landmark {err_pose:.2f} mm")
        assert err < 10.0
        assert err_pose < 2.0  # the pose itself is recovered
    assert _angle_deg(registered.rotation, pose[:3, :3]) < 2.0
    assert _angle_deg(registered.head_axes, np.array(truth["head_axes_scanner"])) < 2.0
    print(f"registration: {registered.seconds:.2f} s")


# --------------------------------------------------------------------------- template
def test_labyrinth_template_is_small_centred_and_mirrored():
    assert R.PACKAGED_TEMPLATE.is_file()
    assert R.PACKAGED_TEMPLATE.stat().st_size < R.MAX_PACKAGED_BYTES
    right, left = R.labyrinth_template("right"), R.labyrinth_template("left")
    assert right.shape == R.TEMPLATE_SHAPE and all(s % 2 == 1 for s in right.shape)
    np.testing.assert_array_equal(left, right[::-1])
    assert 0.9 < right.max() <= 1.0
    assert right[tuple(np.asarray(right.shape) // 2)] > 0.2  # the centre is in the labyrinth
    for spacing in (0.5, 1.0):
        k = R.matched_kernel("left", spacing)
        assert all(s % 2 == 1 for s in k.shape)
        assert abs(float(k.sum())) < 1e-3 and float(np.linalg.norm(k)) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        R.labyrinth_template("middle")


def test_template_builder_centres_each_phantom():
    t = R.build_labyrinth_template(n=1)
    idx = np.argwhere(t > 0.5)
    centre = (idx.min(0) + idx.max(0)) / 2
    assert np.all(np.abs(centre - (np.asarray(t.shape) - 1) / 2) <= 1.0)


def test_fft_correlation_matches_direct_correlation():
    rng = np.random.default_rng(0)
    data = rng.standard_normal((20, 17, 12)).astype(np.float32)
    kernel = rng.standard_normal((5, 7, 3)).astype(np.float32)
    direct = ndimage.correlate(data, kernel, mode="constant")
    np.testing.assert_allclose(R._correlate(data, kernel), direct, atol=1e-4)


# --------------------------------------------------------------------------- refinement
def test_refine_from_a_12mm_perturbed_guess(subject):
    rng = np.random.default_rng(12)
    for side in SIDES:
        true = subject["centres"][side]
        d = rng.standard_normal(3)
        guess = true + 12.0 * d / np.linalg.norm(d)
        r = R.refine_centre(subject["t2w"], guess, side)
        err = np.linalg.norm(r.refined_mm - true)
        print(f"\n{side}: refine error {err:.2f} mm, score {r.score:.2f}, {r.seconds:.2f} s")
        assert err < 2.0
        assert r.method == "matched_filter"
        assert r.moved_mm == pytest.approx(np.linalg.norm(r.refined_mm - guess))
        np.testing.assert_array_equal(r.initial_mm, guess)


def test_registration_then_refinement(subject, registered):
    guesses = template_ear_centres(registered)
    for side in SIDES:
        r = R.refine_centre(subject["t2w"], guesses[side], side, head_rotation=registered.head_axes)
        err = np.linalg.norm(r.refined_mm - subject["centres"][side])
        print(f"\n{side}: registration {r.moved_mm:.2f} mm off → refined error {err:.2f} mm")
        assert err < 2.0


def _in_fresh_process(code: str, *args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_localization_is_identical_at_any_thread_count(subject):
    """ITK is loaded on one thread, so the whole localization (registration + refinement)
    gives the same centres and axes to the bit at 1 and 2 threads (with 2 ITK threads, two
    runs differed by up to 0.1 mm)."""
    code = (
        "import json, sys; from pathlib import Path\n"
        "from ievnet_bids.localize.ears import localize_ears\n"
        "r = localize_ears(Path(sys.argv[1]), head=Path(sys.argv[2]), threads=int(sys.argv[3]))\n"
        "print(json.dumps([r.refined, r.head_axes, r.registration['single_threaded']]))"
    )
    paths = subject["paths"]
    env = {**os.environ, "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "2"}  # a user's setting
    one, two = (
        _in_fresh_process(code, str(paths["t2w"]), str(paths["t1w"]), str(t), env=env)
        for t in (1, 2)
    )
    assert json.loads(one)[2] is True
    assert one == two


def test_itk_loaded_elsewhere_with_threads_is_reported():
    code = (
        "import os; os.environ.pop('ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS', None)\n"
        "import ants\n"
        "from ievnet_bids.localize.register import itk_single_threaded\n"
        "print(itk_single_threaded())"
    )
    assert _in_fresh_process(code).strip() == "False"


def test_detect_ears_from_the_slab_alone(subject):
    found = R.detect_ears(subject["t2w"])
    assert set(found) == set(SIDES)
    for side in SIDES:
        err = np.linalg.norm(found[side].refined_mm - subject["centres"][side])
        print(f"\n{side}: detect error {err:.2f} mm, {found[side].seconds:.2f} s")
        assert err < 3.0
        assert found[side].method == "detect"


def test_detection_is_equivariant_under_a_rigid_move(subject):
    slab = subject["t2w"]
    move = np.eye(4)
    move[:3, :3] = euler_rotation((6.0, -9.0, 14.0))
    move[:3, 3] = [7.0, -5.0, 3.0]
    data = np.asarray(slab.dataobj)
    before = R.detect_ears(nib.Nifti1Image(data, slab.affine))
    after = R.detect_ears(nib.Nifti1Image(data, move @ slab.affine))
    for side in SIDES:
        expected = (move @ [*before[side].refined_mm, 1])[:3]
        diff = np.linalg.norm(after[side].refined_mm - expected)
        print(f"\n{side}: equivariance error {diff:.3f} mm")
        assert diff <= 1.0


def test_refine_outside_the_slab_keeps_the_guess(subject):
    far = subject["t2w"].affine[:3, 3] + np.array([0.0, 0.0, 500.0])
    r = R.refine_centre(subject["t2w"], far, "left")
    assert r.method == "initial" and r.moved_mm == 0.0
    np.testing.assert_array_equal(r.refined_mm, far)
