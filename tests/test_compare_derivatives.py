"""scripts/compare_derivatives.py (used by `make image-test`) on small made-up output folders."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_derivatives.py"


@pytest.fixture(scope="module")
def compare_derivatives():
    spec = importlib.util.spec_from_file_location("compare_derivatives", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _outputs(root: Path, bids: str, mask: np.ndarray, prob: np.ndarray, volume: float) -> Path:
    anat = root / "sub-01" / "anat"
    anat.mkdir(parents=True)
    affine = np.diag([0.2, 0.2, 0.2, 1.0])
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), anat / "sub-01_mask.nii.gz")
    nib.save(nib.Nifti1Image(prob.astype(np.float32), affine), anat / "sub-01_probseg.nii.gz")
    (anat / "sub-01_volumes.tsv").write_text(f"side\tvolume_mm3\nleft\t{volume}\n")
    description = {"Name": "x", "SourceDatasets": [{"URL": f"file://{bids}"}]}
    (root / "dataset_description.json").write_text(json.dumps(description))
    qc = {"volume_mm3": volume, "localizer": {"seconds": {"total": len(bids)}}}
    (anat / "sub-01_qc.json").write_text(json.dumps(qc))  # durations: not compared
    (root / "logs").mkdir()
    (root / "logs" / "status.json").write_text(json.dumps({"started": str(root)}))
    (root / "sub-01.html").write_text(f"<p>{root}</p>")
    return root


def _mask(extra: int = 0) -> np.ndarray:
    mask = np.zeros((20, 20, 20), bool)
    mask[5:15, 5:15, 5:15] = True  # 1000 voxels
    mask.flat[:extra] = True  # voxels added far from the block
    return mask


def test_identical_runs_match_with_the_bids_path_equated(tmp_path, compare_derivatives, capsys):
    prob = _mask() * 0.9
    a = _outputs(tmp_path / "a", "/bids", _mask(), prob, 8.0)
    b = _outputs(tmp_path / "b", "/data/bids", _mask(), prob, 8.0)
    args = [str(a), str(b), "--json", str(tmp_path / "r.json")]
    assert compare_derivatives.main(args) == 1  # the recorded BIDS path differs
    assert compare_derivatives.main([*args, "--equate", "/bids=/data/bids"]) == 0
    report = {r["path"]: r for r in json.loads((tmp_path / "r.json").read_text())}
    assert report["sub-01/anat/sub-01_mask.nii.gz"]["status"] == "identical"
    assert report["dataset_description.json"]["status"] == "close"  # equal once equated
    assert report["sub-01/anat/sub-01_qc.json"]["status"] == "close"  # only durations differ
    assert report["logs/status.json"]["status"] == report["sub-01.html"]["status"] == "skipped"
    assert "match (0 file(s)" in capsys.readouterr().out


def test_dice_threshold_tolerance_and_missing_files(tmp_path, compare_derivatives):
    a = _outputs(tmp_path / "a", "/bids", _mask(), _mask() * 0.9, 8.0)
    b = _outputs(tmp_path / "b", "/bids", _mask(extra=1), _mask() * 0.9 + 1e-6, 8.0001)
    report = tmp_path / "r.json"
    assert compare_derivatives.main([str(a), str(b), "--json", str(report)]) == 0
    rows = {r["path"]: r for r in json.loads(report.read_text())}
    mask = rows["sub-01/anat/sub-01_mask.nii.gz"]
    assert mask["status"] == "close"
    assert mask["detail"]["dice"]["1"] == pytest.approx(2000 / 2001)  # >= 0.999
    assert rows["sub-01/anat/sub-01_probseg.nii.gz"]["status"] == "close"
    assert rows["sub-01/anat/sub-01_volumes.tsv"]["status"] == "close"  # within 1e-3

    assert compare_derivatives.main([str(a), str(b), "--dice-min", "0.9999"]) == 1
    assert compare_derivatives.main([str(a), str(b), "--atol", "1e-8"]) == 1
    (b / "sub-01" / "anat" / "sub-01_volumes.tsv").write_text("side\tvolume_mm3\nleft\t9.0\n")
    assert compare_derivatives.main([str(a), str(b)]) == 1
    (b / "sub-01" / "anat" / "sub-01_volumes.tsv").unlink()
    assert compare_derivatives.main([str(a), str(b)]) == 1  # missing in B


def test_outputs_that_vary_run_to_run_get_the_looser_tolerances(tmp_path, compare_derivatives):
    a = _outputs(tmp_path / "a", "/bids", _mask(), _mask() * 0.9, 8.0)
    b = _outputs(tmp_path / "b", "/bids", _mask(extra=5), _mask() * 0.9, 8.0)
    for root, value in ((a, 10.0), (b, 10.1)):  # 1 % apart; NaN equals NaN
        table = f"side\tcochlea_volume_mm3\tfit\nleft\t{value}\tnan\n"
        (root / "sub-01" / "anat" / "sub-01_structures.tsv").write_text(table)
    args = [str(a), str(b), "--json", str(tmp_path / "r.json")]
    assert compare_derivatives.main(args) == 1  # Dice 2000/2005 < 0.999, 1 % > 0.1 %
    loose = ["--vary", "*_mask.nii.gz", "--vary", "cochlea_*"]
    assert compare_derivatives.main([*args, *loose]) == 0
    rows = {r["path"]: r for r in json.loads((tmp_path / "r.json").read_text())}
    assert rows["sub-01/anat/sub-01_mask.nii.gz"]["status"] == "varies"
    assert rows["sub-01/anat/sub-01_structures.tsv"]["status"] == "varies"
    assert compare_derivatives.main([*args, *loose, "--vary-rtol", "0.001"]) == 1
