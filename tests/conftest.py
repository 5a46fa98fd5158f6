"""Shared fixtures."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_SAMPLES = REPO.parent / "shared" / "data" / "ievnet-samples"


@pytest.fixture(scope="session")
def real_samples() -> Path:
    """The two real IE-Vnet sample crops (evaluation only); skip when ../shared is absent."""
    if not (SHARED_SAMPLES / "vol_ie_R.nii.gz").is_file():
        pytest.skip(f"real sample crops not found in {SHARED_SAMPLES}")
    return SHARED_SAMPLES


SYNTH_BIDS_SEED = 11


@pytest.fixture(scope="session")
def synth_bids(tmp_path_factory) -> Path:
    """Synthetic full-head BIDS dataset, built once per session (about 30 s).

    ``sub-01`` with ``ses-1`` and ``ses-2``, ``sub-02`` with ``ses-1``; each session holds
    ``sub-XX_ses-Y_T1w.nii.gz`` and ``sub-XX_ses-Y_acq-space_T2w.nii.gz``. Read-only: copy it
    (the ``link_tree`` fixture) before changing anything.
    """
    from ievnet_bids.synth.head import write_bids_dataset

    root = tmp_path_factory.mktemp("synth_bids")
    write_bids_dataset(
        root / "bids", root / "truth", n_subjects=2, sessions=[2, 1], seed=SYNTH_BIDS_SEED
    )
    return root / "bids"


def _link_tree(src: Path, dst: Path) -> Path:
    """Copy a folder tree with hard links (cheap); deleting a file in ``dst`` keeps ``src``."""
    import os
    import shutil

    shutil.copytree(src, dst, copy_function=os.link)
    return dst


def _write_tiny_bids(root: Path, files: list[str]) -> Path:
    """A minimal BIDS dataset: ``dataset_description.json`` plus ``files`` (relative paths;
    ``.nii.gz`` files are 40×40×40 NIfTI images of zeros with 0.5 mm voxels, just large enough
    for the input check, others are ``{}``)."""
    import json

    import nibabel as nib
    import numpy as np

    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "tiny", "BIDSVersion": "1.10.0", "DatasetType": "raw"})
    )
    for rel in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".nii.gz"):
            img = nib.Nifti1Image(np.zeros((40, 40, 40), np.uint8), np.diag([0.5, 0.5, 0.5, 1]))
            img.header.set_xyzt_units("mm", "sec")
            nib.save(img, path)
        else:
            path.write_text("{}\n")
    return root


@pytest.fixture
def link_tree():
    """``link_tree(src, dst)``: hard-linked copy of a folder tree."""
    return _link_tree


@pytest.fixture
def tiny_bids():
    """``tiny_bids(root, files)``: a minimal BIDS dataset with the given files."""
    return _write_tiny_bids


@pytest.fixture(scope="session")
def bids_validator():
    """``validate(folder)`` → the bids-validator's issues (errors and warnings) for ``folder``;
    skips the test when ``bids-validator-deno`` is not installed."""
    exe = shutil.which("bids-validator-deno") or str(
        Path(__file__).resolve().parents[1] / ".venv" / "bin" / "bids-validator-deno"
    )
    if not Path(exe).exists():
        pytest.skip("bids-validator-deno is not installed")

    def validate(folder: Path) -> list[tuple[str, str, str]]:
        proc = subprocess.run(
            [exe, str(folder), "--json"], capture_output=True, text=True, timeout=300
        )
        issues = json.loads(proc.stdout)["issues"]["issues"]
        return [(i.get("severity"), i.get("code"), i.get("location")) for i in issues]

    return validate
