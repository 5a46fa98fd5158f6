"""The whole participant level on a synthetic full-head BIDS dataset (CPU, shipped model).

Ground truth comes from the phantom generator: native-grid TFS masks and ear centres.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ievnet_bids.cli.run import main
from ievnet_bids.metrics import dice
from ievnet_bids.resources import default_model_path
from ievnet_bids.workflows.execution import versioned_work_dir

pytestmark = [
    pytest.mark.xdist_group("participant"),
    pytest.mark.skipif(not default_model_path().is_file(), reason="no shipped model"),
]
SIDES = ("left", "right")
# On this dataset (0.5 mm slabs, flip TTA, phantoms with the jugular bulb clear of the
# posterior canal) the shipped model scores 0.909-0.935 per ear (mean 0.924;
# scripts/eval_participant.py, 2026-12-01). The small left labyrinths of sub-01 (93-94 mm³)
# are the closest to the 0.9 target.
TARGET_DICE = 0.9


def _run(bids: Path, out: Path, work: Path, *extra: str) -> int:
    return main([str(bids), str(out), "participant", "-w", str(work), "--nprocs", "2", *extra])


def _units(bids: Path) -> list[tuple[str, str | None]]:
    units = []
    for slab in sorted(bids.glob("sub-*/**/anat/*_acq-space_T2w.nii.gz")):
        parts = slab.name.split("_")
        ses = parts[1] if parts[1].startswith("ses-") else None
        units.append((parts[0], ses))
    return units


def _prefix(sub: str, ses: str | None) -> str:
    return f"{sub}_{ses}" if ses else sub


def _mask(out: Path, sub: str, ses: str | None, side: str) -> nib.Nifti1Image:
    folder = out / sub / (ses or "") / "anat"
    name = f"{_prefix(sub, ses)}_acq-space_space-orig_label-TFS_desc-{side}_mask.nii.gz"
    return nib.load(folder / name)


def _truth_mask(truth: Path, sub: str, ses: str | None, side: str) -> nib.Nifti1Image:
    return nib.load(truth / f"{_prefix(sub, ses)}_desc-{side}_tfs.nii.gz")


def _bbox_centre_in_frame(img: nib.Nifti1Image, axes: np.ndarray) -> np.ndarray:
    """World centre of the mask's bounding box measured along ``axes`` (columns)."""
    idx = np.argwhere(np.asanyarray(img.dataobj) > 0)
    world = idx @ img.affine[:3, :3].T + img.affine[:3, 3]
    local = world @ axes
    return ((local.min(0) + local.max(0)) / 2) @ axes.T


def _volumes(out: Path, sub: str, ses: str | None) -> dict[str, dict[str, str]]:
    folder = out / sub / (ses or "") / "anat"
    path = folder / f"{_prefix(sub, ses)}_acq-space_desc-tfs_volumes.tsv"
    with path.open() as fh:
        return {row["side"]: row for row in csv.DictReader(fh, delimiter="\t")}


@pytest.fixture(scope="module")
def run(synth_bids: Path, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("participant")
    out, work = root / "out", root / "work"
    assert _run(synth_bids, out, work) == 0
    return {"bids": synth_bids, "truth": synth_bids.parent / "truth", "out": out, "work": work}


def test_every_ear_matches_ground_truth(run):
    units = _units(run["bids"])
    assert len(units) == 3
    for sub, ses in units:
        for side in SIDES:
            pred = np.asanyarray(_mask(run["out"], sub, ses, side).dataobj) > 0
            ref = np.asanyarray(_truth_mask(run["truth"], sub, ses, side).dataobj) > 0
            assert pred.shape == ref.shape
            assert dice(pred, ref) >= TARGET_DICE, (sub, ses, side, dice(pred, ref))


def test_ear_centres_within_2mm_of_truth(run):
    for sub, ses in _units(run["bids"]):
        truth = json.loads((run["truth"] / f"{_prefix(sub, ses)}_truth.json").read_text())
        axes = np.asarray(truth["head_axes_scanner"])
        rows = _volumes(run["out"], sub, ses)
        for side in SIDES:
            found = np.array([float(rows[side][f"centre_{a}_mm"]) for a in "xyz"])
            expected = _bbox_centre_in_frame(_truth_mask(run["truth"], sub, ses, side), axes)
            assert np.linalg.norm(found - expected) <= 2.0, (sub, ses, side, found, expected)


def test_masks_overlay_the_source_grid_exactly(run):
    import torch

    from ievnet_bids.model.infer import native_bf16

    cpu_default = "bf16" if native_bf16(torch.device("cpu")) else "fp32"
    for sub, ses in _units(run["bids"]):
        slab = next((run["bids"] / sub / (ses or "") / "anat").glob("*_acq-space_T2w.nii.gz"))
        src = nib.load(slab)
        for side in SIDES:
            mask = _mask(run["out"], sub, ses, side)
            assert mask.shape == src.shape and mask.get_data_dtype() == np.uint8
            np.testing.assert_allclose(mask.affine, src.affine, atol=1e-5)
            sidecar = json.loads(
                Path(str(mask.get_filename()).replace(".nii.gz", ".json")).read_text()
            )
            assert sidecar["Type"] == "ROI" and sidecar["Side"] == side
            assert sidecar["SpatialReference"].startswith("bids:raw:")
            assert sidecar["FlipTTA"] is True and sidecar["ProbabilityThreshold"] == 0.5
            assert sidecar["NetworkPrecision"] == cpu_default  # bf16 where native
            assert sidecar["Localizer"] == "template"
            assert sidecar["LocalizationTemplate"] == "meanhead"  # the default, shipped


def test_outputs_pass_the_bids_validator(run, bids_validator):
    # no errors and no warnings (README, Authors, sidecar fields are all written)
    issues = bids_validator(run["out"])
    assert not issues, issues[:5]


def test_rerun_reuses_cache_and_writes_identical_files(run):
    files = sorted(
        p for p in run["out"].rglob("sub-*/**/*") if p.is_file() and "log" not in p.parts
    )
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}
    assert _run(run["bids"], run["out"], run["work"]) == 0
    # the cache of this release line only: another version's nodes are never reused
    assert [p.name for p in run["work"].iterdir()] == [versioned_work_dir(run["work"]).name]
    for p, (content, mtime) in before.items():
        assert p.read_bytes() == content, p
        assert p.stat().st_mtime_ns == mtime, p  # identical files are not rewritten


def test_missing_slab_fails_that_subject_alone(run, link_tree, tmp_path, caplog):
    bids = link_tree(run["bids"], tmp_path / "bids")
    for slab in (bids / "sub-02").rglob("*_acq-space_T2w.nii.gz"):
        slab.unlink()
    out = tmp_path / "out"
    assert _run(bids, out, run["work"]) == 1
    assert "sub-02" in caplog.text and "no inner-ear slab" in caplog.text
    assert not (out / "sub-02").exists()  # no partial derivatives
    # two sessions, two ears: on the slab grid and on each ear's ROI grid
    assert len(list((out / "sub-01").rglob("*_space-orig_*_mask.nii.gz"))) == 4
    assert len(list((out / "sub-01").rglob("*_space-ROI_*_mask.nii.gz"))) == 4


def test_units_run_concurrently_with_the_same_results(run, tmp_path, caplog):
    """--nprocs 2 --omp-nthreads 1: two sessions at a time in worker processes."""
    out = tmp_path / "out"
    assert _run(run["bids"], out, tmp_path / "work", "--omp-nthreads", "1") == 0
    assert "2 participant/session(s) at a time, 1 CPU(s) each" in caplog.text
    for sub, ses in _units(run["bids"]):
        assert _volumes(out, sub, ses).keys() == set(SIDES)
        for side in SIDES:
            m0 = np.asanyarray(_mask(run["out"], sub, ses, side).dataobj) > 0
            m1 = np.asanyarray(_mask(out, sub, ses, side).dataobj) > 0
            assert dice(m0, m1) >= 0.99, (sub, ses, side)  # only the thread count differs
    statuses = [json.loads(p.read_text()) for p in (out / "logs").glob("*_status.json")]
    assert sorted(s["status"] for s in statuses) == ["ok"] * 3


def _moved(img: nib.Nifti1Image, transform: np.ndarray) -> nib.Nifti1Image:
    return nib.Nifti1Image(np.asanyarray(img.dataobj), transform @ img.affine, img.header)


def test_rigid_motion_moves_centres_and_masks_equivariantly(run, tmp_path):
    """Same voxels, world moved by a known rigid transform → centres move the same way."""
    sub, ses = "sub-02", "ses-1"
    angle = np.deg2rad(8.0)
    transform = np.eye(4)
    transform[:3, :3] = [
        [np.cos(angle), -np.sin(angle), 0],
        [np.sin(angle), np.cos(angle), 0],
        [0, 0, 1],
    ]
    transform[:3, 3] = [6.0, -4.0, 3.0]
    bids = tmp_path / "bids"
    shutil.copytree(run["bids"], bids, ignore=shutil.ignore_patterns("sub-01"))
    for path in (bids / sub / ses / "anat").glob("*.nii.gz"):
        nib.save(_moved(nib.load(path), transform), path)
    out = tmp_path / "out"
    assert _run(bids, out, tmp_path / "work", "--participant-label", "02") == 0
    before, after = _volumes(run["out"], sub, ses), _volumes(out, sub, ses)
    for side in SIDES:
        c0 = np.array([float(before[side][f"centre_{a}_mm"]) for a in "xyz"])
        c1 = np.array([float(after[side][f"centre_{a}_mm"]) for a in "xyz"])
        assert np.linalg.norm(transform[:3, :3] @ c0 + transform[:3, 3] - c1) <= 1.0
        m0 = np.asanyarray(_mask(run["out"], sub, ses, side).dataobj) > 0
        m1 = np.asanyarray(_mask(out, sub, ses, side).dataobj) > 0
        assert dice(m0, m1) >= 0.95


def test_landmark_error_of_12mm_is_recovered(run, tmp_path):
    """Ear centres given 12 mm off (``--localizer landmarks``): refinement still finds them."""
    rng = np.random.default_rng(0)
    sub, ses = "sub-02", "ses-1"
    truth = json.loads((run["truth"] / f"{sub}_{ses}_truth.json").read_text())
    rows = ["participant_id\tsession_id\tside\tx\ty\tz"]
    for side in SIDES:
        direction = rng.normal(size=3)
        guess = np.asarray(truth["ears"][side]["centre_mm"]) + 12.0 * direction / np.linalg.norm(
            direction
        )
        rows.append(f"{sub}\t{ses}\t{side}\t" + "\t".join(f"{v:.3f}" for v in guess))
    landmarks = tmp_path / "landmarks.tsv"
    landmarks.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    args = ["--participant-label", "02", "--localizer", "landmarks", "--landmarks-file"]
    assert _run(run["bids"], out, tmp_path / "work", *args, str(landmarks)) == 0
    for side in SIDES:
        pred = np.asanyarray(_mask(out, sub, ses, side).dataobj) > 0
        ref = np.asanyarray(_truth_mask(run["truth"], sub, ses, side).dataobj) > 0
        assert dice(pred, ref) >= 0.9, (side, dice(pred, ref))


def test_roi_grid_outputs_match_the_table_and_map_onto_the_slab(run):
    """The network's own 0.2 mm outputs: the table's volume is the ROI-grid mask's, and the
    sidecar's RoiToSlabVoxelAffine carries the ROI mask onto the published slab mask."""
    for sub, ses in _units(run["bids"]):
        folder = run["out"] / sub / (ses or "") / "anat"
        table = _volumes(run["out"], sub, ses)
        for side in SIDES:
            stem = f"{_prefix(sub, ses)}_acq-space_space-ROI"
            img = nib.load(folder / f"{stem}_desc-{side}_T2w.nii.gz")
            mask_img = nib.load(folder / f"{stem}_label-TFS_desc-{side}_mask.nii.gz")
            prob = nib.load(folder / f"{stem}_label-TFS_desc-{side}_probseg.nii.gz")
            assert img.shape == mask_img.shape == prob.shape == (200, 150, 100)
            np.testing.assert_allclose(mask_img.header.get_zooms(), (0.2, 0.2, 0.2), atol=1e-5)
            mask = np.asanyarray(mask_img.dataobj) > 0
            assert float(table[side]["volume_mm3"]) == pytest.approx(mask.sum() * 0.008, abs=1e-3)
            sidecar = json.loads((folder / f"{stem}_label-TFS_desc-{side}_mask.json").read_text())
            assert sidecar["ROIGrid"]["Shape"] == [200, 150, 100]
            to_slab = np.asarray(sidecar["RoiToSlabVoxelAffine"])
            slab_mask = np.asanyarray(_mask(run["out"], sub, ses, side).dataobj) > 0
            centre_roi = np.append(np.argwhere(mask).mean(0), 1.0)
            centre_slab = np.argwhere(slab_mask).mean(0)
            assert np.abs((to_slab @ centre_roi)[:3] - centre_slab).max() < 1.0  # slab voxels
