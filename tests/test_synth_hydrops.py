"""Endolymphatic hydrops phantoms (synth/endolymph.py), FLAIR-iMRI rendering (synth/flair.py)
and hydrops BIDS datasets (``write_bids_dataset(hydrops=True)``)."""

from __future__ import annotations

import itertools
import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from ievnet_bids.synth import labels as L
from ievnet_bids.synth.endolymph import grade_range, hydrops_grade, structure_map
from ievnet_bids.synth.flair import PERILYMPH_LABELS, flair_rng, render_flair
from ievnet_bids.synth.head import MAX_MOTION_DEG, MAX_MOTION_MM, write_bids_dataset
from ievnet_bids.synth.phantom import generate_phantom

pytestmark = pytest.mark.xdist_group("synth_hydrops")  # module fixtures are built once

SEEDS = (0, 1, 2, 3, 4)
BIDS_SEED = 3
FLAIR = "acq-inner_ce-gadolinium_FLAIR"


@pytest.fixture(scope="module")
def extremes():
    """``{seed: (phantom at hydrops 0, phantom at hydrops 1)}`` (no background: faster)."""
    return {
        s: tuple(generate_phantom(s, hydrops=h, background=False) for h in (0.0, 1.0))
        for s in SEEDS
    }


def _percent(ph, structure: str) -> float:
    return ph.meta["hydrops"]["volumes"][structure]["els_percent"]


def test_els_is_inside_the_tfs_and_never_the_lamina(extremes):
    for pair in extremes.values():
        for ph in pair:
            assert ph.els.dtype == bool and ph.els.shape == ph.labels.shape
            assert ph.els.any()
            assert not (ph.els & ~ph.tfs).any()
            assert not (ph.els & (ph.labels == L.SPIRAL_LAMINA)).any()


def test_els_percent_in_the_documented_ranges(extremes):
    # measured over seeds 0-4: vestibule 25-31 % at none, 68-78 % at severe; cochlea 11-13 %
    # → 45-48 %; canals 10-24 %; the whole ear lies below the vestibule
    for none, severe in extremes.values():
        assert 22 <= _percent(none, "vestibule") <= 36
        assert 60 <= _percent(severe, "vestibule") <= 85
        assert 9 <= _percent(none, "cochlea") <= 16
        assert 40 <= _percent(severe, "cochlea") <= 55
        for ph in (none, severe):
            assert _percent(ph, "canals") < 30
            assert _percent(ph, "ear") < _percent(ph, "vestibule")
    mean_none = np.mean([_percent(n, "vestibule") for n, _ in extremes.values()])
    assert 26 <= mean_none <= 32


def test_volumes_add_up_on_the_roi_grid(extremes):
    ph = extremes[0][1]
    vol = ph.meta["hydrops"]["volumes"]
    voxel = 0.2**3
    assert vol["ear"]["els_mm3"] == pytest.approx(ph.els.sum() * voxel)
    assert vol["ear"]["tfs_mm3"] == pytest.approx(ph.tfs.sum() * voxel)
    parts = ("cochlea", "vestibule", "canals")
    assert sum(vol[p]["els_mm3"] for p in parts) == pytest.approx(vol["ear"]["els_mm3"])
    structures = structure_map(ph.labels)
    assert ((structures > 0) == ph.tfs).all()
    assert set(np.unique(structures)) == {0, 1, 2, 3}


def test_els_grows_monotonically_with_hydrops():
    previous = None
    volumes = []
    for h in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        ph = generate_phantom(5, hydrops=h, background=False)
        if previous is not None:
            assert not (previous & ~ph.els).any()  # nested: nothing is lost
        previous = ph.els
        volumes.append({k: v["els_mm3"] for k, v in ph.meta["hydrops"]["volumes"].items()})
    for key in ("ear", "cochlea", "vestibule"):
        series = [v[key] for v in volumes]
        assert all(b > a for a, b in itertools.pairwise(series)), (key, series)


def test_image_and_labels_do_not_depend_on_hydrops():
    for seed, side, realism in ((0, "right", 1), (7, "left", 2)):
        plain = generate_phantom(seed, side=side, realism=realism)
        hydropic = generate_phantom(seed, side=side, realism=realism, hydrops=0.6)
        assert plain.els is None and "hydrops" not in plain.meta
        assert plain.image.tobytes() == hydropic.image.tobytes()
        assert plain.labels.tobytes() == hydropic.labels.tobytes()
        assert hydropic.meta["hydrops"]["grade"] == "moderate"


def test_left_els_is_the_mirror_of_the_right():
    right = generate_phantom(2, hydrops=0.3, background=False)
    left = generate_phantom(2, side="left", hydrops=0.3, background=False)
    assert (left.els == right.els[::-1]).all()


def test_grades():
    assert [hydrops_grade(h) for h in (0.0, 0.24, 0.25, 0.5, 0.74, 0.75, 1.0)] == [
        "none", "none", "mild", "moderate", "moderate", "severe", "severe",
    ]  # fmt: skip
    assert grade_range("mild") == (0.25, 0.5)
    assert grade_range("severe") == (0.75, 1.0)
    with pytest.raises(ValueError, match="hydrops"):
        hydrops_grade(1.2)
    with pytest.raises(ValueError, match="hydrops"):
        generate_phantom(0, hydrops=-0.1, background=False)


def test_flair_contrast_ordering():
    ph = generate_phantom(2, hydrops=0.5, realism=2)
    image, info = render_flair(ph.labels, ph.els, flair_rng(2), 0.2)
    assert image.dtype == np.float32 and image.shape == ph.labels.shape
    assert 8 <= info["snr"] <= 20 and info["acquired_mm"][0] == pytest.approx(0.5, abs=0.03)

    def core(mask, iterations=2):  # away from partial volume with neighbours
        return image[ndimage.binary_erosion(mask, iterations=iterations)].mean()

    perilymph = core(np.isin(ph.labels, PERILYMPH_LABELS) & ~ph.els, 1)
    brain = core(np.isin(ph.labels, (L.GREY_MATTER, L.WHITE_MATTER)))
    els = core(ph.els)
    bone = core(ph.labels == L.BONE)
    csf = core(np.isin(ph.labels, (L.IAC_CSF, L.CISTERN_CSF)))
    assert perilymph > 1.8 * brain
    assert brain > 2.5 * els
    assert abs(els - bone) < 0.1 * perilymph
    assert csf < 0.4 * brain


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """(summary, bids, truth) of one subject with hydrops and of the same seed without."""
    out = {}
    for name, hydrops in (("plain", False), ("hydrops", True)):
        root = tmp_path_factory.mktemp(name)
        summary = write_bids_dataset(
            root / "bids", root / "truth", n_subjects=1, seed=BIDS_SEED, hydrops=hydrops
        )
        out[name] = (summary, root / "bids", root / "truth")
    return out


def _load(path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(path)
    return np.asanyarray(img.dataobj), img.affine


def test_hydrops_dataset_keeps_the_space_and_truth_files(datasets):
    _, plain, plain_truth = datasets["plain"]
    summary, bids, truth = datasets["hydrops"]
    for rel in ("sub-01/anat/sub-01_T1w.nii.gz", "sub-01/anat/sub-01_acq-space_T2w.nii.gz"):
        assert (bids / rel).read_bytes() == (plain / rel).read_bytes()
    for side in ("left", "right"):
        name = f"sub-01_desc-{side}_tfs.nii.gz"
        assert (truth / name).read_bytes() == (plain_truth / name).read_bytes()
    flair = bids / "sub-01" / "anat" / f"sub-01_{FLAIR}.nii.gz"
    assert summary["images"][0]["flair"] == str(flair)
    sidecar = json.loads(flair.with_name(f"sub-01_{FLAIR}.json").read_text())
    assert sidecar["InversionTime"] == 2.24 and sidecar["RepetitionTime"] == 6.0
    assert sidecar["EchoTime"] == 0.134 and sidecar["ContrastBolusIngredient"] == "GADOLINIUM"
    img = nib.load(flair)
    assert img.shape == (320, 320, 48) and img.header.get_zooms() == (0.5, 0.5, 0.5)
    assert not list(plain.rglob("*FLAIR*")) and not list(plain_truth.glob("*els*"))


def test_hydrops_truth_masks_and_volumes(datasets):
    _, _, truth = datasets["hydrops"]
    record = json.loads((truth / "sub-01_truth.json").read_text())
    grades = []
    for side in ("left", "right"):
        ear = record["ears"][side]
        tfs, affine = _load(truth / f"sub-01_desc-{side}_tfs.nii.gz")
        els, els_affine = _load(truth / f"sub-01_desc-{side}_els.nii.gz")
        structures, _ = _load(truth / f"sub-01_desc-{side}_structures.nii.gz")
        np.testing.assert_allclose(els_affine, affine)
        assert els.any() and not (els.astype(bool) & ~tfs.astype(bool)).any()
        assert ((structures > 0) == (tfs > 0)).all()
        assert set(np.unique(structures)) == {0, 1, 2, 3}
        assert ear["els_volume_mm3_slab"] == pytest.approx(els.sum() * 0.125)
        roi_els, roi_affine = _load(truth / f"sub-01_space-ROI_desc-{side}_els.nii.gz")
        roi_structures, _ = _load(truth / f"sub-01_space-ROI_desc-{side}_structures.nii.gz")
        assert roi_els.shape == (200, 150, 100)
        np.testing.assert_allclose(roi_affine, ear["roi_grid"]["affine"])
        volumes = ear["volumes_roi"]
        assert volumes["ear"]["els_mm3"] == pytest.approx(roi_els.sum() * 0.008)
        assert volumes["ear"]["tfs_mm3"] == pytest.approx(ear["tfs_volume_mm3_roi"])
        assert volumes["vestibule"]["tfs_mm3"] == pytest.approx((roi_structures == 2).sum() * 0.008)
        # the slab masks agree with the exact ROI volumes to within partial volume
        assert ear["els_volume_mm3_slab"] == pytest.approx(volumes["ear"]["els_mm3"], rel=0.15)
        severity = ear["hydrops"]["severity"]
        assert 0 <= severity <= 1 and ear["hydrops"]["grade"] == hydrops_grade(severity)
        grades.append(ear["hydrops"]["grade"])
    assert grades[0] != grades[1]  # the two ears of a subject take neighbouring grades


def test_flair_motion_matches_the_truth(datasets):
    _summary, bids, truth = datasets["hydrops"]
    record = json.loads((truth / "sub-01_truth.json").read_text())
    motion = record["flair"]
    assert motion["path"] == f"sub-01/anat/sub-01_{FLAIR}.nii.gz"
    flair_to_space = np.array(motion["flair_to_space_world"])
    rotation = flair_to_space[:3, :3]
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-9)
    angle = np.rad2deg(np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1, 1)))
    assert angle == pytest.approx(motion["rotation_deg"], abs=1e-6)
    assert motion["rotation_deg"] <= MAX_MOTION_DEG
    assert np.linalg.norm(motion["head_centre_shift_mm"]) <= MAX_MOTION_MM
    np.testing.assert_allclose(motion["translation_mm"], flair_to_space[:3, 3])
    to_flair = np.linalg.inv(flair_to_space)
    np.testing.assert_allclose(motion["space_to_flair_world"], to_flair, atol=1e-12)
    flair, flair_affine = _load(bids / motion["path"])
    np.testing.assert_allclose(flair_affine, motion["slab"]["affine"], atol=1e-6)
    flair = flair.astype(np.float32)
    for side in ("left", "right"):
        centre_space = np.array(record["ears"][side]["centre_mm"])
        centre_flair = np.array(motion["ears"][side]["centre_mm"])
        np.testing.assert_allclose(to_flair[:3, :3] @ centre_space + to_flair[:3, 3], centre_flair)
        # the perilymph lies where the motion puts the SPACE truth: bright there, dark around
        tfs, affine = _load(truth / f"sub-01_desc-{side}_tfs.nii.gz")
        els, _ = _load(truth / f"sub-01_desc-{side}_els.nii.gz")
        perilymph = (tfs > 0) & (els == 0)
        shell = ndimage.binary_dilation(tfs > 0, iterations=4) & ~ndimage.binary_dilation(
            tfs > 0, iterations=2
        )
        space_to_flair_voxel = np.linalg.inv(flair_affine) @ to_flair @ affine

        def mean_at(mask, matrix=space_to_flair_voxel):
            ijk = np.argwhere(mask).T
            xyz = matrix[:3, :3] @ ijk + matrix[:3, 3:4]
            return ndimage.map_coordinates(flair, xyz, order=1).mean()

        assert mean_at(perilymph) > 2.5 * mean_at(shell)
        assert mean_at(perilymph) > 1.3 * mean_at(els > 0)
        # ... and not where the SPACE grid would put it without the motion
        if motion["rotation_deg"] > 1.0 or np.linalg.norm(motion["translation_mm"]) > 1.0:
            unmoved = np.linalg.inv(flair_affine) @ affine
            assert mean_at(perilymph) > mean_at(perilymph, unmoved)


def test_cli_hydrops_options(tmp_path):
    from ievnet_bids.synth.__main__ import build_parser, main

    args = build_parser().parse_args(
        ["bids", "--out-dir", "b", "--truth-dir", "t", "--hydrops", "--hydrops-subjects", "1"]
    )
    assert args.hydrops and args.hydrops_subjects == [1]
    assert not build_parser().parse_args(["bids", "--out-dir", "b", "--truth-dir", "t"]).hydrops
    out = tmp_path / "hydrops.png"
    assert main(["preview", "--out", str(out), "--seeds", "1", "--hydrops", "0.8"]) == 0
    assert out.stat().st_size > 10_000
