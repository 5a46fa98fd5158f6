"""Bad input: one clear line naming the file or option, no traceback, nothing half-written.

Each failing case is built from the synthetic full-head dataset; the command runs in a fresh
process so that stderr is exactly what a user sees.
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ievnet_bids.resources import default_model_path

pytestmark = [
    pytest.mark.xdist_group("participant"),
    pytest.mark.skipif(not default_model_path().is_file(), reason="no shipped model"),
]
SLAB = "acq-space_T2w.nii.gz"


def ievnet_bids(*args: str | Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "ievnet_bids.cli.run", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )


def _slab(bids: Path, sub: str) -> Path:
    return bids / sub / "ses-1" / "anat" / f"{sub}_ses-1_{SLAB}"


def _add_subject(bids: Path, sub: str) -> Path:
    """A copy of sub-02 (hard links) named ``sub``; returns its slab path (a fresh file)."""
    src = bids / "sub-02"
    dst = bids / sub
    shutil.copytree(src, dst, copy_function=os.link)
    for path in sorted(dst.rglob("sub-02_*")):
        path.rename(path.with_name(path.name.replace("sub-02_", f"{sub}_")))
    slab = _slab(bids, sub)
    data = slab.read_bytes()
    slab.unlink()  # break the hard link before the file is changed
    slab.write_bytes(data)
    return slab


def _write_nifti(path: Path, data: np.ndarray, zoom: float = 0.5) -> None:
    path.unlink()
    nib.save(nib.Nifti1Image(data, np.diag([zoom, zoom, zoom, 1.0])), path)


BAD_SLABS = {
    # subject: (how the slab is broken, expected words in the one-line message)
    "sub-03": ("truncated", "truncated or corrupt compressed data"),
    "sub-04": ("plain bytes", "not gzip-compressed"),
    "sub-05": ("zero bytes", "empty file (0 bytes)"),
    "sub-06": ("4d", "4-D image with 2 volumes: select one 3-D image with a BIDS filter"),
    "sub-07": ("2d", "2-D image"),
    "sub-08": ("tiny", "too small to hold an ear ROI"),
}


def _break(slab: Path, how: str) -> None:
    if how == "truncated":
        data = slab.read_bytes()
        slab.write_bytes(data[: len(data) // 2])
    elif how == "plain bytes":
        slab.write_bytes(b"this is not an image" * 100)
    elif how == "zero bytes":
        slab.write_bytes(b"")
    else:
        img = nib.load(slab)
        vol = np.asanyarray(img.dataobj)
        if how == "4d":
            _write_nifti(slab, np.stack([vol, vol], axis=-1))
        elif how == "2d":
            _write_nifti(slab, vol[:, :, vol.shape[2] // 2].copy())
        else:
            _write_nifti(slab, vol[:12, :12, :12].copy())


@pytest.fixture(scope="module")
def bad_run(synth_bids: Path, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("bad_input")
    bids = root / "bids"
    shutil.copytree(synth_bids, bids, copy_function=os.link)
    shutil.rmtree(bids / "sub-01" / "ses-2")  # one good unit (sub-01 ses-1) is enough
    for sub, (how, _) in BAD_SLABS.items():
        _break(_add_subject(bids, sub), how)
    shutil.rmtree(bids / "sub-02")
    out, work = root / "out", root / "work"
    proc = ievnet_bids(bids, out, "participant", "-w", work, "--nprocs", "2")
    return {"proc": proc, "out": out, "bids": bids, "work": work}


def test_each_bad_image_fails_its_unit_with_one_line(bad_run):
    proc = bad_run["proc"]
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    for sub, (_, words) in BAD_SLABS.items():
        unit_lines = [line for line in lines if f"{sub}_ses-1:" in line]
        assert len(unit_lines) == 1, (sub, unit_lines)
        assert f"{sub}_ses-1_{SLAB}" in unit_lines[0] and words in unit_lines[0], unit_lines
    assert f"{len(BAD_SLABS)} participant/session(s) failed" in proc.stderr


def test_bad_units_leave_nothing_and_the_good_unit_is_unaffected(bad_run):
    out = bad_run["out"]
    for sub in BAD_SLABS:
        assert not (out / sub).exists()
    masks = sorted((out / "sub-01" / "ses-1" / "anat").glob("*_space-orig_*_mask.nii.gz"))
    assert [m.name.split("desc-")[1] for m in masks] == ["left_mask.nii.gz", "right_mask.nii.gz"]
    assert all(np.asanyarray(nib.load(m).dataobj).sum() > 0 for m in masks)


@pytest.fixture(scope="module")
def one_unit(synth_bids: Path, tmp_path_factory) -> Path:
    bids = tmp_path_factory.mktemp("one_unit") / "bids"
    shutil.copytree(synth_bids, bids, copy_function=os.link)
    shutil.rmtree(bids / "sub-01")
    return bids


def _bad_models(folder: Path) -> dict[str, tuple[Path, str]]:
    folder.mkdir(parents=True, exist_ok=True)
    noise = folder / "noise.safetensors"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    card = default_model_path().parent / "ievnet_default.model_card.json"
    shutil.copy(card, folder / "noise.model_card.json")
    no_card = folder / "lonely.safetensors"
    shutil.copy(default_model_path(), no_card)

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(folder / "pwned"),))

    pickled = folder / "evil.pth"
    with pickled.open("wb") as fh:
        pickle.dump({"state_dict": Payload()}, fh)
    return {
        "random bytes": (noise, "cannot be used"),
        "no model card": (no_card, "no model card beside it"),
        "pickle with code": (pickled, "cannot be used"),
    }


def test_a_bad_model_stops_the_run_before_any_work(one_unit, tmp_path):
    for case, (path, words) in _bad_models(tmp_path / "models").items():
        out, work = tmp_path / f"out-{path.stem}", tmp_path / f"work-{path.stem}"
        proc = ievnet_bids(one_unit, out, "participant", "-w", work, "--model", path)
        assert proc.returncode == 2, (case, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr, case
        errors = [line for line in proc.stderr.splitlines() if "--model" in line]
        assert len(errors) == 1 and str(path) in errors[0] and words in errors[0], (case, errors)
        # nothing ran: no subject output, no workflow folder
        assert not out.exists() and not work.exists(), case
    assert not (tmp_path / "models" / "pwned").exists()


def test_output_folder_below_a_file_is_one_line(one_unit, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    proc = ievnet_bids(one_unit, blocker / "out", "participant", "-w", tmp_path / "work")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"output_dir {blocker / 'out'}: a file is in the way" in proc.stderr


def test_gzip_check_reads_the_magic_bytes(tmp_path):
    from ievnet_bids.checks import image_problem

    good = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((50, 50, 50), np.float32), np.eye(4)), good)
    assert image_problem(good) is None
    plain = tmp_path / "plain.nii.gz"
    plain.write_bytes(gzip.decompress(good.read_bytes()))  # a valid NIfTI, just not gzipped
    assert "not gzip-compressed" in image_problem(plain)


def test_terminal_shows_stages_and_the_nipype_log_goes_to_a_file(bad_run):
    err = bad_run["proc"].stderr
    for stage in ("localize", "segment", "map_back_left", "report"):
        assert f"sub-01_ses-1: {stage} done (" in err
    assert "[Node]" not in err and "nipype.workflow" not in err
    assert not bad_run["proc"].stdout.strip()
    log = bad_run["out"] / "sub-01" / "log" / "ses-1" / "nipype.log"
    assert '[Node] Finished "segment"' in log.read_text()
    # -v: the full Nipype log on the terminal too (a cached rerun of the good unit)
    bids, out, work = bad_run["bids"], bad_run["out"], bad_run["work"]
    proc = ievnet_bids(bids, out, "participant", "-w", work, "--participant-label", "01", "-v")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[Node]" in proc.stdout + proc.stderr


def test_image_problems_by_shape(tmp_path):
    from ievnet_bids.checks import image_problem

    expected = {
        (50, 50, 50): None,
        (50, 50, 50, 1): "4-D image with 1 volume: save it as a 3-D image",
        (50, 50, 50, 3): "4-D image with 3 volumes",
        (50, 50): "2-D image",
        (50, 50, 10): "too small to hold an ear ROI",
    }
    for i, (shape, words) in enumerate(expected.items()):
        path = tmp_path / f"x{i}.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), path)
        problem = image_problem(path)
        assert (problem is None) if words is None else (words in problem), (shape, problem)
