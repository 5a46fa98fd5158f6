"""The shipped full-head template (pydeface mean head, MIT) and its ear landmarks.

>>> t1, t2like, landmarks = load_template()
>>> sorted(k for k in landmarks if k.startswith("inner_ear"))
['inner_ear_left', 'inner_ear_right']
"""

from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np

from ievnet_bids.resources import templates_dir

T1_NAME = "tpl-meanhead_res-1p5_T1w.nii.gz"
T2LIKE_NAME = "tpl-meanhead_res-1p5_desc-T2like.nii.gz"
LANDMARKS_NAME = "tpl-meanhead_landmarks.tsv"


def read_landmarks(path: str | Path) -> dict[str, np.ndarray]:
    """``name → (x, y, z)`` world mm from a landmarks TSV (columns name, x, y, z, ...)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return {r["name"]: np.array([float(r["x"]), float(r["y"]), float(r["z"])]) for r in rows}


@lru_cache(maxsize=1)
def _load(folder: str) -> tuple[nib.Nifti1Image, nib.Nifti1Image, dict[str, np.ndarray]]:
    d = Path(folder)
    t1 = nib.load(d / T1_NAME)
    t2 = nib.load(d / T2LIKE_NAME)
    return t1, t2, read_landmarks(d / LANDMARKS_NAME)


def load_template() -> tuple[nib.Nifti1Image, nib.Nifti1Image, dict[str, np.ndarray]]:
    """(T1w image, heavily-T2-like image, landmarks ``name → xyz`` in template world mm).

    Landmarks: ``inner_ear_left/right`` (labyrinth centre, ±7 mm), ``eac_left/right``
    (external auditory canal lumen) and ``midsagittal`` (a mid-sagittal point at ear level).
    """
    t1, t2, lm = _load(str(templates_dir()))
    return t1, t2, {k: v.copy() for k, v in lm.items()}
