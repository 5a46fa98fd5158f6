"""Full-head BIDS phantoms (ievnet_bids.synth.head) and the shipped template."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from ievnet_bids.synth.head import write_bids_dataset
from ievnet_bids.templates import load_template

pytestmark = pytest.mark.xdist_group("synth_head")  # module fixtures are built once

SEED = 3
ANAT = re.compile(
    r"^sub-(?P<sub>[A-Za-z0-9]+)/(?:ses-(?P<ses>[A-Za-z0-9]+)/)?anat/"
    r"sub-(?P=sub)(?:_ses-(?P=ses))?(?:_acq-[A-Za-z0-9]+)?_(?:T1w|T2w)\.(?:nii\.gz|json)$"
)
TOP_LEVEL = {"dataset_description.json", "participants.tsv", "participants.json", "README"}
TRUTH = re.compile(
    r"^sub-[A-Za-z0-9]+(?:_ses-[A-Za-z0-9]+)?_"
    r"(?:(?:space-ROI_)?desc-(?:left|right)_tfs\.nii\.gz|truth\.json)$"
)


def _build(root: Path, **kwargs) -> tuple[dict, Path, Path]:
    out, truth = root / "bids", root / "truth"
    return write_bids_dataset(out, truth, seed=SEED, **kwargs), out, truth


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("single"), n_subjects=1)


@pytest.fixture(scope="module")
def two_sessions(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("sessions"), n_subjects=1, sessions=[2])


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _world_to_voxel(affine: np.ndarray, xyz) -> np.ndarray:
    inv = np.linalg.inv(affine)
    return inv[:3, :3] @ np.asarray(xyz, dtype=float) + inv[:3, 3]


def test_bids_layout(single):
    summary, out, truth = single
    files = _files(out)
    assert set(files) >= TOP_LEVEL
    anat = [f for f in files if f not in TOP_LEVEL]
    assert all(ANAT.match(f) for f in anat), anat
    assert set(anat) == {
        "sub-01/anat/sub-01_T1w.nii.gz",
        "sub-01/anat/sub-01_T1w.json",
        "sub-01/anat/sub-01_acq-space_T2w.nii.gz",
        "sub-01/anat/sub-01_acq-space_T2w.json",
    }
    assert not any(n.startswith(".") for f in files for n in Path(f).parts)  # no temp leftovers
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["BIDSVersion"] == "1.10.0" and desc["DatasetType"] == "raw" and desc["Name"]
    rows = (out / "participants.tsv").read_text().splitlines()
    assert rows[0].split("\t")[0] == "participant_id" and rows[1].startswith("sub-01\t")
    side = json.loads((out / "sub-01/anat/sub-01_acq-space_T2w.json").read_text())
    assert side["PulseSequenceType"] == "SPACE" and side["MagneticFieldStrength"] == 3
    assert side["MRAcquisitionType"] == "3D" and 0 < side["EchoTime"] < side["RepetitionTime"]
    truth_files = _files(truth)
    assert len(truth_files) == 5 and all(TRUTH.match(f) for f in truth_files), truth_files
    assert len(summary["images"]) == 1


def test_session_layout(two_sessions):
    summary, out, truth = two_sessions
    anat = [f for f in _files(out) if f not in TOP_LEVEL]
    assert all(ANAT.match(f) for f in anat)
    for ses in ("1", "2"):
        assert f"sub-01/ses-{ses}/anat/sub-01_ses-{ses}_acq-space_T2w.nii.gz" in anat
        assert (truth / f"sub-01_ses-{ses}_desc-left_tfs.nii.gz").is_file()
    assert [i["session"] for i in summary["images"]] == ["1", "2"]


def test_image_geometry(single):
    _, out, _ = single
    t2 = nib.load(out / "sub-01/anat/sub-01_acq-space_T2w.nii.gz")
    assert t2.shape == (384, 384, 56)
    assert np.allclose(t2.header.get_zooms(), 0.5, atol=1e-4)
    assert t2.get_data_dtype() == np.int16
    t1 = nib.load(out / "sub-01/anat/sub-01_T1w.nii.gz")
    assert np.allclose(t1.header.get_zooms(), 1.0, atol=1e-4)
    assert min(t1.shape) >= 170


@pytest.mark.parametrize("fixture", ["single", "two_sessions"])
def test_ears_inside_slab_and_masks_line_up(fixture, request):
    summary, _, _ = request.getfixturevalue(fixture)
    for item in summary["images"]:
        t2 = nib.load(item["t2w"])
        image = np.asarray(t2.dataobj, dtype=np.float32)
        truth = json.loads(Path(item["truth"]).read_text())
        centres = {}
        for side, ear in truth["ears"].items():
            centre = np.asarray(ear["centre_mm"])
            centres[side] = centre
            vox = _world_to_voxel(t2.affine, centre)
            assert np.all(vox >= 0) and np.all(vox <= np.asarray(t2.shape) - 1), (side, vox)

            mask_img = nib.load(item["masks"][side])
            assert np.allclose(mask_img.affine, t2.affine) and mask_img.shape == t2.shape
            mask = np.asarray(mask_img.dataobj) > 0
            # the mask sits on the bright labyrinth of the written image
            shell = ndimage.binary_dilation(mask, iterations=2) & ~mask  # 1 mm at 0.5 mm
            assert image[mask].mean() > 2.0 * image[shell].mean(), side
            # world-axis bounding-box centre of the mask = that of the ROI-grid TFS
            idx = np.argwhere(mask)
            world = idx @ t2.affine[:3, :3].T + t2.affine[:3, 3]
            bbox_centre = (world.min(0) + world.max(0)) / 2
            assert np.linalg.norm(bbox_centre - ear["tfs_bbox_centre_mm"]) < 1.5, side
            # ... and near the labyrinth's own box centre (rotated box: up to ~2 mm apart)
            assert np.linalg.norm(bbox_centre - centre) < 3.5, side
            vol = mask.sum() * 0.5**3
            assert vol == pytest.approx(ear["tfs_volume_mm3_slab"])
            assert abs(vol / ear["tfs_volume_mm3_roi"] - 1) < 0.15, side
        distance = np.linalg.norm(centres["left"] - centres["right"])
        assert 60 < distance < 100
        # "left" is the subject's left: further along −x of the head axes
        head_x = np.asarray(truth["head_axes_scanner"])[:, 0]
        assert (centres["right"] - centres["left"]) @ head_x > 50


def test_deterministic_and_sessions_consistent(single, two_sessions):
    """Same seed → identical arrays; session 1 equals the session-less image."""
    (a, *_), (b, *_) = single, two_sessions
    img_a, img_b = a["images"][0], b["images"][0]
    for key in ("t1w", "t2w"):
        assert np.array_equal(
            np.asarray(nib.load(img_a[key]).dataobj), np.asarray(nib.load(img_b[key]).dataobj)
        )
    for side in ("left", "right"):
        ma = np.asarray(nib.load(img_a["masks"][side]).dataobj)
        mb = np.asarray(nib.load(img_b["masks"][side]).dataobj)
        assert np.array_equal(ma, mb)
    ta, tb = (json.loads(Path(i["truth"]).read_text()) for i in (img_a, img_b))

    def anatomy(ears: dict) -> dict:  # the truth file names carry the session
        return {side: {k: v for k, v in e.items() if k != "roi_truth"} for side, e in ears.items()}

    assert anatomy(ta["ears"]) == anatomy(tb["ears"])
    assert ta["head_pose_template_to_scanner"] == tb["head_pose_template_to_scanner"]
    # the second session: same anatomy (labyrinth volume, seeds), a different pose
    t2nd = json.loads(Path(b["images"][1]["truth"]).read_text())
    assert t2nd["head_pose_template_to_scanner"] != tb["head_pose_template_to_scanner"]
    for side in ("left", "right"):
        assert t2nd["ears"][side]["phantom_seed"] == tb["ears"][side]["phantom_seed"]
        assert t2nd["ears"][side]["tfs_volume_mm3_roi"] == tb["ears"][side]["tfs_volume_mm3_roi"]
    pose = np.asarray(t2nd["head_pose_template_to_scanner"])
    assert np.allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3), atol=1e-9)


def test_bad_sessions_rejected(tmp_path):
    with pytest.raises(ValueError, match="sessions"):
        write_bids_dataset(tmp_path / "b", tmp_path / "t", n_subjects=2, sessions=[1])


def test_template_landmarks():
    t1, t2, lm = load_template()
    assert t1.shape == t2.shape and np.allclose(t1.affine, t2.affine)
    assert np.allclose(t1.header.get_zooms(), 1.5)
    for name in ("inner_ear_left", "inner_ear_right", "eac_left", "eac_right", "midsagittal"):
        vox = _world_to_voxel(t1.affine, lm[name])
        assert np.all(vox >= 0) and np.all(vox <= np.asarray(t1.shape) - 1), name
    left, right, mid = lm["inner_ear_left"], lm["inner_ear_right"], lm["midsagittal"]
    assert left[0] < mid[0] < right[0]
    # symmetric about the template's mid-sagittal plane (x ≈ −5.5 mm, see README) ...
    assert abs((left[0] + right[0]) / 2 - mid[0]) < 5.0
    # ... which is itself close to x = 0
    assert abs(left[0] + right[0]) < 15.0
    assert 60 < np.linalg.norm(left - right) < 100
    for side, ear in (("left", left), ("right", right)):
        assert 30 < abs(ear[0] - mid[0]) < 50  # 35–45 mm from the midline, with slack
        assert np.linalg.norm(ear - lm[f"eac_{side}"]) < 35
    # the labyrinth sits in (dark) petrous bone on T1
    t1_data = np.asarray(t1.dataobj, dtype=np.float32)
    for ear in (left, right):
        i, j, k = np.round(_world_to_voxel(t1.affine, ear)).astype(int)
        assert t1_data[i, j, k] < 0.5 * np.percentile(t1_data[t1_data > 50], 50)


def test_roi_grid_truth_is_the_phantom_tfs_at_0p2_mm(single):
    """The ROI-grid truth: 200×150×100 at 0.2 mm on the recorded grid, the recorded volume,
    all three canal loops, and on the slab the same labyrinth as the slab truth."""
    from ievnet_bids.geometry.roi import RoiGrid, resample
    from ievnet_bids.qc import topology

    summary, _, truth = single
    record = json.loads(Path(summary["images"][0]["truth"]).read_text())
    for side, ear in record["ears"].items():
        roi = nib.load(truth / ear["roi_truth"])
        assert roi.shape == (200, 150, 100)
        assert np.allclose(roi.affine, ear["roi_grid"]["affine"])
        tfs = np.asarray(roi.dataobj) > 0
        assert tfs.sum() * 0.008 == pytest.approx(ear["tfs_volume_mm3_roi"], rel=1e-6)
        assert topology(tfs, 0.2).canal_loops >= 3, side  # septa may add thin loops
        slab_img = nib.load(summary["images"][0]["masks"][side])
        slab_grid = RoiGrid(slab_img.shape, slab_img.affine)
        on_slab = resample(tfs.astype(np.float32), roi.affine, slab_grid, order=1)
        slab_tfs = np.asarray(slab_img.dataobj) > 0
        agree = 2 * (slab_tfs & (on_slab >= 0.5)).sum() / (slab_tfs.sum() + (on_slab >= 0.5).sum())
        assert agree > 0.97, (side, agree)
