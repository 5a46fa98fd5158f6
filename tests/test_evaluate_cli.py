"""``ievnet-eval`` end to end on small NIfTI pairs with known metrics."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ievnet_bids.cli.evaluate import infer_side, main

SPACING = (0.5, 0.6, 0.7)
AFFINE = np.diag([*SPACING, 1.0])
SHAPE = (20, 20, 20)


def box(lo: tuple[int, int, int], hi: tuple[int, int, int]) -> np.ndarray:
    mask = np.zeros(SHAPE, np.uint8)
    mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = 1
    return mask


def save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


REF = box((5, 5, 5), (15, 15, 15))  # 1000 voxels = 210 mm³
CASES = {
    # name: (pred, expected dice, expected Hausdorff mm)
    "sub-01_desc-left": (box((7, 5, 5), (17, 15, 15)), 0.8, 2 * SPACING[0]),
    "sub-01_desc-right": (REF.copy(), 1.0, 0.0),
    "sub-02_desc-left": (box((5, 5, 5), (15, 15, 10)), 2 * 500 / 1500, 5 * SPACING[2]),
}


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    for name, (data, _, _) in CASES.items():
        save(pred / f"{name}_dseg.nii.gz", data)
        save(ref / f"{name}_mask.nii", REF)
    return pred, ref


def run_eval(pred: Path, ref: Path, *extra: str) -> int:
    suffixes = ["--pred-suffix", "_dseg", "--ref-suffix", "_mask"]
    return main(["--pred", str(pred), "--ref", str(ref), *suffixes, *extra])


def test_table_has_known_numbers(dirs, tmp_path: Path, capsys) -> None:
    out = tmp_path / "results" / "nested" / "table.tsv"
    assert run_eval(*dirs, "--out", str(out)) == 0
    table = pd.read_csv(out, sep="\t").set_index("case")
    assert sorted(table.index) == sorted(CASES)
    for name, (_, dsc, hd) in CASES.items():
        row = table.loc[name]
        assert row["dice"] == pytest.approx(dsc, abs=1e-6)
        assert row["hausdorff_mm"] == pytest.approx(hd, abs=1e-6)
        assert row["volume_ref_mm3"] == pytest.approx(210.0, abs=1e-6)
        assert row["side"] == ("left" if "left" in name else "right")
    assert table.loc["sub-02_desc-left", "volume_pred_mm3"] == pytest.approx(105.0, abs=1e-6)
    assert table.loc["sub-01_desc-right", "msd_mm"] == 0.0
    assert table.loc["sub-01_desc-left", "pred_file"] == "sub-01_desc-left_dseg.nii.gz"
    assert table.loc["sub-01_desc-left", "ref_file"] == "sub-01_desc-left_mask.nii"
    # atomic write leaves no temporary file behind
    assert [p.name for p in out.parent.iterdir()] == ["table.tsv"]

    stdout = capsys.readouterr().out
    assert "all (n=3)" in stdout and "left (n=2)" in stdout and "right (n=1)" in stdout
    # left Dice 0.8 and 0.6667: mean 0.733, sample SD 0.094
    dice_line = next(line for line in stdout.splitlines() if line.startswith("dice"))
    assert "0.733 ± 0.094" in dice_line
    assert "0.822 ± 0.168" in dice_line  # all three cases


def test_identical_names_and_missing_partner(tmp_path: Path, capsys) -> None:
    pred, ref = tmp_path / "p", tmp_path / "r"
    save(pred / "ear_L.nii.gz", REF)
    save(ref / "ear_L.nii.gz", REF)
    save(pred / "orphan_R.nii.gz", REF)
    save(ref / "lonely.nii", REF)
    (pred / "notes.txt").write_text("not a mask")
    out = tmp_path / "t.tsv"
    assert main(["--pred", str(pred), "--ref", str(ref), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "orphan_R.nii.gz" in err and "lonely.nii" in err
    table = pd.read_csv(out, sep="\t", keep_default_na=False)
    assert table["case"].tolist() == ["ear_L"]
    assert table["side"].tolist() == ["left"]
    assert float(table["dice"][0]) == 1.0


def test_participants_dataset_column(dirs, tmp_path: Path, capsys) -> None:
    participants = tmp_path / "participants.tsv"
    participants.write_text("participant_id\tsite\nsub-01\tA\nsub-02\tB\n")
    out = tmp_path / "t.tsv"
    code = run_eval(
        *dirs, "--out", str(out), "--participants", str(participants), "--dataset-column", "site"
    )
    assert code == 0
    table = pd.read_csv(out, sep="\t").set_index("case")
    assert table.loc["sub-01_desc-right", "dataset"] == "A"
    assert table.loc["sub-02_desc-left", "dataset"] == "B"
    stdout = capsys.readouterr().out
    assert "dataset A (n=2)" in stdout and "dataset B (n=1)" in stdout


def test_empty_prediction_is_inf(tmp_path: Path) -> None:
    pred, ref = tmp_path / "p", tmp_path / "r"
    save(pred / "a.nii.gz", np.zeros(SHAPE, np.uint8))
    save(ref / "a.nii.gz", REF)
    out = tmp_path / "t.tsv"
    assert main(["--pred", str(pred), "--ref", str(ref), "--out", str(out)]) == 0
    row = pd.read_csv(out, sep="\t").iloc[0]
    assert row["dice"] == 0.0
    assert np.isinf(row["hausdorff_mm"]) and np.isinf(row["msd_mm"])


def test_affine_mismatch_names_file(dirs, capsys) -> None:
    pred, ref = dirs
    shifted = AFFINE.copy()
    shifted[0, 3] = 1.0
    save(pred / "sub-02_desc-left_dseg.nii.gz", CASES["sub-02_desc-left"][0], shifted)
    assert run_eval(pred, ref) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "sub-02_desc-left_dseg.nii.gz" in err and "affine" in err


def test_shape_mismatch_names_file(dirs, capsys) -> None:
    pred, ref = dirs
    save(pred / "sub-01_desc-right_dseg.nii.gz", np.zeros((20, 20, 21), np.uint8))
    assert run_eval(pred, ref) == 1
    err = capsys.readouterr().err
    assert "sub-01_desc-right_dseg.nii.gz" in err and "shape" in err


def test_no_pairs_exit_1(tmp_path: Path, capsys) -> None:
    save(tmp_path / "p" / "a.nii.gz", REF)
    save(tmp_path / "r" / "b.nii.gz", REF)
    assert main(["--pred", str(tmp_path / "p"), "--ref", str(tmp_path / "r")]) == 1
    assert "no matching mask pairs" in capsys.readouterr().err


def test_bad_directory_exit_2(dirs, tmp_path: Path, capsys) -> None:
    missing = tmp_path / "does-not-exist"
    assert main(["--pred", str(missing), "--ref", str(dirs[1])]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(missing) in err


def test_usage_error_returns_2(capsys) -> None:
    assert main(["--pred", "x"]) == 2
    assert "--ref" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "side"),
    [
        ("sub-01_desc-left_dseg", "left"),
        ("sub-01_desc-right", "right"),
        ("sub-01_hemi-L_mask", "left"),
        ("case7_R", "right"),
        ("case7_L_mask", "left"),
        ("sub-01_run-1", "n/a"),
        ("LR_case", "n/a"),
    ],
)
def test_infer_side(name: str, side: str) -> None:
    assert infer_side(name) == side
