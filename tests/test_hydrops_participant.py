"""Hydrops through the whole app: a synthetic dataset whose sub-01 has a gadolinium FLAIR
(phantom ELS truth) and whose sub-02 has none."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ievnet_bids.bids import derivatives as D
from ievnet_bids.cli.run import main
from ievnet_bids.hydrops.register import read_itk_transform
from ievnet_bids.metrics import dice
from ievnet_bids.outputs import HYDROPS_COLUMNS
from ievnet_bids.resources import default_model_path

pytestmark = [
    pytest.mark.xdist_group("hydrops"),
    pytest.mark.skipif(not default_model_path().is_file(), reason="no shipped model"),
]
SIDES = ("left", "right")
SEED = 33


def _run(bids: Path, out: Path, work: Path, level: str = "participant", *extra: str) -> int:
    return main([str(bids), str(out), level, "-w", str(work), "--nprocs", "2", *extra])


def _anat(out: Path, sub: str) -> Path:
    return out / f"sub-{sub}" / "anat"


def _slab(bids: Path, sub: str) -> Path:
    return bids / f"sub-{sub}" / "anat" / f"sub-{sub}_acq-space_T2w.nii.gz"


def _derivative(run: dict, sub: str, kind: D.Kind, **entities: str) -> Path:
    return D.derivative_path(_slab(run["bids"], sub), run["out"], **kind.entities(**entities))


def _data(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(path).dataobj)


def _table(path: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    with path.open() as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        rows = {r["side"]: r for r in reader}
        return list(reader.fieldnames or []), rows


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    from ievnet_bids.synth.head import write_bids_dataset

    root = tmp_path_factory.mktemp("hydrops")
    write_bids_dataset(
        root / "bids", root / "truth", n_subjects=2, seed=SEED, hydrops=True, hydrops_subjects=[1]
    )
    out, work = root / "out", root / "work"
    assert _run(root / "bids", out, work) == 0
    return {"bids": root / "bids", "truth": root / "truth", "out": out, "work": work}


def test_hydrops_outputs_pass_the_bids_validator(run, bids_validator) -> None:
    """ELS masks, structure dsegs, ROI FLAIRs and transforms: no error and no warning."""
    issues = bids_validator(run["out"])
    assert not issues, issues[:5]


def test_els_outputs_lie_inside_the_tfs_and_match_the_truth(run) -> None:
    truth = json.loads((run["truth"] / "sub-01_truth.json").read_text())
    _, rows = _table(_derivative(run, "01", D.VOLUMES))
    space_to_flair = np.asarray(truth["flair"]["space_to_flair_world"])
    for side in SIDES:
        tfs = _data(_derivative(run, "01", D.TFS_MASK, desc=side)) > 0
        els = _data(_derivative(run, "01", D.ELS_MASK, desc=side)) > 0
        assert els.any() and not np.any(els & ~tfs)
        roi_tfs = _data(_derivative(run, "01", D.ROI_MASK, desc=side)) > 0
        roi_els = _data(_derivative(run, "01", D.ROI_ELS_MASK, desc=side)) > 0
        assert not np.any(roi_els & ~roi_tfs)
        # the table's ELS% is the ROI-grid count
        voxel = 0.2**3
        assert float(rows[side]["els_volume_mm3"]) == pytest.approx(roi_els.sum() * voxel, 1e-3)
        assert float(rows[side]["els_percent"]) == pytest.approx(
            100 * roi_els.sum() / roi_tfs.sum(), abs=0.01
        )
        # against the phantom: ELS% of the whole ear, registration over the truth TFS. The
        # ELS% is only as good as the TFS: a mask that spills into bone (dark in the FLAIR)
        # reads it as ELS (README, hydrops limits). On this dataset the right ear, small and
        # severe, has a mask 15 % too large (one voxel all round, ROI Dice 0.91): it reads
        # +5.5 points (left / right 36.9 / 52.2 % against 34.0 / 46.7 %; with one threshold
        # of 0.6, before 8d56288, +2.7; with the expectation taken from the mask's border
        # instead of the SPACE's partial volume, before d354aec, +9.2).
        ear_truth = truth["ears"][side]["volumes_roi"]["ear"]["els_percent"]
        true_tfs = _data(run["truth"] / f"sub-01_desc-{side}_tfs.nii.gz") > 0
        if dice(tfs, true_tfs) >= 0.9:
            assert abs(float(rows[side]["els_percent"]) - ear_truth) < 8.0, side
        else:
            assert float(rows[side]["els_percent"]) >= ear_truth - 8.0, side  # spills add ELS
        xfm = _derivative(run, "01", D.FLAIR_XFM, desc=side)
        estimate = read_itk_transform(xfm.read_text())
        tfs_img = nib.load(run["truth"] / f"sub-01_desc-{side}_tfs.nii.gz")
        idx = np.argwhere(np.asanyarray(tfs_img.dataobj) > 0)
        pts = np.c_[nib.affines.apply_affine(tfs_img.affine, idx), np.ones(len(idx))]
        error = np.linalg.norm((pts @ estimate.T - pts @ space_to_flair.T)[:, :3], axis=1)
        assert error.mean() < 0.4, side


def test_structures_tile_the_tfs_of_each_ear(run) -> None:
    dseg = _data(_derivative(run, "01", D.STRUCTURES_DSEG))
    for side, labels in (("left", (1, 2, 3)), ("right", (4, 5, 6))):
        tfs = _data(_derivative(run, "01", D.TFS_MASK, desc=side)) > 0
        assert set(np.unique(dseg[tfs])) == set(labels)
        roi = _data(_derivative(run, "01", D.ROI_STRUCTURES_DSEG, desc=side))
        roi_tfs = _data(_derivative(run, "01", D.ROI_MASK, desc=side)) > 0
        assert np.array_equal(roi > 0, roi_tfs)
    # each structure dseg has its lookup table beside it (sharing the image's sidecar)
    slab_table = _derivative(run, "01", D.STRUCTURES_DSEG, extension=".tsv")
    assert slab_table.read_text().splitlines()[1:] == [
        f"{i}\t{n}\t{a}" for i, n, a in D.STRUCTURE_DSEG_LABELS
    ]
    for side, first in (("left", 1), ("right", 4)):
        table = _derivative(run, "01", D.ROI_STRUCTURES_DSEG, desc=side, extension=".tsv")
        rows = [line.split("\t") for line in table.read_text().splitlines()[1:]]
        assert [int(r[0]) for r in rows] == [0, first, first + 1, first + 2]
        assert all(side in r[1] for r in rows[1:])
    _, rows = _table(_derivative(run, "01", D.VOLUMES))
    for side in SIDES:
        parts = sum(
            float(rows[side][f"{k}_volume_mm3"]) for k in ("cochlea", "vestibule", "canals")
        )
        assert parts == pytest.approx(float(rows[side]["volume_mm3"]), abs=0.01)


def test_a_session_without_flair_gets_only_the_tfs_outputs(run) -> None:
    columns, _ = _table(_derivative(run, "02", D.VOLUMES))
    assert not set(HYDROPS_COLUMNS) & set(columns)
    names = {p.name for p in _anat(run["out"], "02").iterdir()}
    assert not [n for n in names if "ELS" in n or "FLAIR" in n or "structures" in n]
    # per ear: ELS mask on slab and ROI grid, ROI dseg + its table, ROI FLAIR (each with a
    # sidecar but the tables), transform; per slab: the structure dseg, sidecar and table
    hydrops_files = 2 * (2 + 2 + 3 + 2 + 1) + 3
    assert len(names) == len({p.name for p in _anat(run["out"], "01").iterdir()}) - hydrops_files


def test_no_hydrops_leaves_the_tfs_masks_byte_identical(run, tmp_path) -> None:
    out = tmp_path / "out"
    assert _run(run["bids"], out, run["work"], "participant", "--no-hydrops") == 0
    ours = {p.name for p in _anat(out, "01").iterdir()}
    assert not [n for n in ours if "ELS" in n or "FLAIR" in n]
    for name in ours:
        if name.endswith(".nii.gz"):
            a = (_anat(out, "01") / name).read_bytes()
            b = (_anat(run["out"], "01") / name).read_bytes()
            assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest(), name


def test_group_level_reports_els_and_evaluates_it(run, tmp_path) -> None:
    ref = tmp_path / "ref"
    ref.mkdir()
    for side in SIDES:  # the truth under our names
        for kind, truth_name in ((D.ELS_MASK, "els"), (D.TFS_MASK, "tfs")):
            name = _derivative(run, "01", kind, desc=side).name
            shutil.copy(run["truth"] / f"sub-01_desc-{side}_{truth_name}.nii.gz", ref / name)
    out = tmp_path / "group"
    shutil.copytree(run["out"], out)
    assert _run(run["bids"], out, run["work"], "group", "--reference-dir", str(ref)) == 0
    with (out / "group_tfs.tsv").open() as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert set(HYDROPS_COLUMNS) <= set(rows[0])
    for row in rows:
        if row["participant_id"] == "sub-02":
            assert row["els_percent"] == "n/a" and row["els_dice"] in ("", "n/a")
        else:
            assert float(row["els_dice"]) > 0.6
            truth_img = ref / _derivative(run, "01", D.ELS_MASK, desc=row["side"]).name
            tfs_img = ref / _derivative(run, "01", D.TFS_MASK, desc=row["side"]).name
            expected = 100 * (_data(truth_img) > 0).sum() / (_data(tfs_img) > 0).sum()
            assert float(row["els_percent_ref"]) == pytest.approx(expected, abs=0.01)
    html = (out / "group_tfs.html").read_text()
    assert "Endolymphatic space" in html and "ELS Dice mean" in html
    with_flair, without = (out / "sub-01.html").read_text(), (out / "sub-02.html").read_text()
    assert "Endolymphatic space" in with_flair and 'href="#hydrops"' in with_flair
    assert "Endolymphatic space" not in without and 'href="#hydrops"' not in without
