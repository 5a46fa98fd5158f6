"""Checks made before any work starts: the model, the output folders, every selected image.

As fMRIPrep validates first, ``ievnet-bids`` opens every selected image and reads its data
once before building a workflow. A unit (participant/session) with an unusable image fails
alone, with one line naming the file and the problem; the model and the folders are checked
once, and a problem there stops the run before anything is computed.
"""

from __future__ import annotations

import gzip
import os
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ievnet_bids.bids.query import SubjectInputs

#: Smallest field of view (mm) along every axis: the short side of the ear ROI (20 mm).
MIN_FIELD_OF_VIEW_MM = 20.0
MIN_VOXELS = 8  # per axis


class CheckError(ValueError):
    """A problem found before the run, with a one-line message."""


def image_problem(path: str | os.PathLike[str]) -> str | None:
    """Why the image at ``path`` cannot be segmented (one line), or None when it can.

    The file is opened and its data read once: empty, not gzipped, truncated or unreadable
    files, images that are not 3-D, and images too small to hold an ear ROI are problems.
    """
    import nibabel as nib

    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if size == 0:
        return "empty file (0 bytes)"
    if path.name.endswith(".gz"):
        with path.open("rb") as fh:
            if fh.read(2) != b"\x1f\x8b":
                return "not gzip-compressed although named .gz (rename it or gzip it)"
    try:
        img = nib.load(path)
        shape = tuple(int(n) for n in img.shape)
        if len(shape) == 4 and shape[3] > 1:
            return (
                f"4-D image with {shape[3]} volumes: select one 3-D image with a BIDS filter "
                "(--bids-filter-file) or split it into 3-D volumes"
            )
        if len(shape) == 4:
            return "4-D image with 1 volume: save it as a 3-D image (e.g. nibabel squeeze_image)"
        if len(shape) != 3:
            return f"{len(shape)}-D image of shape {shape}: a 3-D slab is needed"
        np.asanyarray(img.dataobj)  # read every byte once
        zooms = np.asarray(img.header.get_zooms()[:3], dtype=float)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        return f"truncated or corrupt compressed data ({exc}); copy or download it again"
    except (nib.filebasedimages.ImageFileError, ValueError, OSError) as exc:
        return f"not a readable NIfTI image ({str(exc).splitlines()[0] if str(exc) else exc})"
    fov = zooms * np.asarray(shape[:3])
    if min(shape[:3]) < MIN_VOXELS or fov.min() < MIN_FIELD_OF_VIEW_MM:
        return (
            f"too small to hold an ear ROI: {'x'.join(map(str, shape[:3]))} voxels, "
            f"field of view {'x'.join(f'{f:.0f}' for f in fov)} mm "
            f"(at least {MIN_FIELD_OF_VIEW_MM:g} mm and {MIN_VOXELS} voxels per axis)"
        )
    return None


def check_units(
    units: Sequence[SubjectInputs],
) -> tuple[list[SubjectInputs], dict[str, str]]:
    """(usable units, ``{unit name: "<file name>: <problem>"}``) after :func:`image_problem`
    on each unit's slabs and localizer head image (the first problem of a unit is reported)."""
    usable: list[SubjectInputs] = []
    failed: dict[str, str] = {}
    for unit in units:
        files = [*unit.slabs, *([unit.head] if unit.head is not None else [])]
        problems = ((f, image_problem(f)) for f in files)  # stops at the first problem
        first = next(((f, p) for f, p in problems if p is not None), None)
        if first is None:
            usable.append(unit)
        else:
            failed[unit.name] = f"{first[0].name}: {first[1]}"
    return usable, failed


def check_model(path: str | os.PathLike[str] | None) -> None:
    """Load the model once (weights, card, checksum); :class:`CheckError` with one line if it
    cannot be used. ``None`` checks the shipped default model."""
    from ievnet_bids.model.weights import WeightsError, load_model
    from ievnet_bids.resources import default_model_path

    path = Path(path) if path is not None else default_model_path()
    try:
        load_model(path, device="cpu")
    except (WeightsError, ValueError, OSError, RuntimeError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckError(f"--model {path}: cannot be used: {message}") from None


def check_writable_folder(folder: Path, option: str) -> None:
    """Create ``folder`` if needed and write a test file in it; :class:`CheckError` if not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".ievnet-write-test-"):
            pass
    except (FileExistsError, NotADirectoryError):
        raise CheckError(f"{option} {folder}: a file is in the way (not a folder)") from None
    except PermissionError:
        raise CheckError(f"{option} {folder}: not writable (permission denied)") from None
    except OSError as exc:
        raise CheckError(f"{option} {folder}: cannot be created ({exc.strerror or exc})") from None
