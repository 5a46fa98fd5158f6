"""Full-head templates and their inner-ear landmarks, found through TemplateFlow.

The shipped template ``meanhead`` (pydeface mean head, MIT; ``data/templates/tpl-meanhead/``,
a TemplateFlow folder) and any template of the user's TemplateFlow cache that has a whole-head
T1w or T2w image are resolved offline (:mod:`ievnet_bids.templateflow_offline`).

A template's ear landmarks come from its own ``tpl-<name>[_desc-<label>]_landmarks.tsv``
(columns ``name x y z [uncertainty_mm]``, world RAS mm; rows ``inner_ear_left`` and
``inner_ear_right`` at least); its head's up direction is then taken as its world +z, as in
every TemplateFlow volume template. Without a landmark file, the shipped head is registered
to the template once (affine + SyN, :mod:`ievnet_bids.localize.template_landmarks`), which
carries the shipped landmarks and head frame over and adds its own uncertainty; the result is
cached (``cache_dir``).

>>> t1, t2like, landmarks = load_template()
>>> sorted(k for k in landmarks if k.startswith("inner_ear"))
['inner_ear_left', 'inner_ear_right']
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ievnet_bids.atomic import write_text_atomic
from ievnet_bids.resources import SHIPPED_TEMPLATE
from ievnet_bids.templateflow_offline import (
    TemplateError,
    TemplateNotFoundError,
    local_files,
    template_folder,
    templateflow_client,
)

__all__ = [
    "SHIPPED_TEMPLATE",
    "HeadTemplate",
    "TemplateError",
    "TemplateFiles",
    "TemplateNotFoundError",
    "find_template",
    "load_template",
    "prepare_template",
    "read_landmarks",
    "shipped_template",
]

HEAD_CONTRASTS = ("T1w", "T2w")  # in order of preference
EAR_LANDMARKS = ("inner_ear_left", "inner_ear_right")
NIFTI = [".nii.gz", ".nii"]
MAX_HEAD_VOXEL_MM = 2.0  # the coarsest resolution up to this voxel size is registered
DERIVATION_VERSION = "1"  # part of the cache key of derived landmarks: bump when they change


def read_landmarks(path: str | Path) -> dict[str, np.ndarray]:
    """``name → (x, y, z)`` world mm from a landmarks TSV (columns name, x, y, z, ...)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return {r["name"]: np.array([float(r["x"]), float(r["y"]), float(r["z"])]) for r in rows}


def read_landmark_table(path: Path) -> tuple[dict[str, list[float]], dict[str, float | None]]:
    """(``name → [x, y, z]``, ``name → uncertainty_mm`` or None) of a template's landmark file.

    Raises :class:`TemplateError` (one line naming the file) when it cannot be read or lacks
    finite ``inner_ear_left``/``inner_ear_right`` coordinates.
    """
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
    except (OSError, UnicodeDecodeError) as err:
        raise TemplateError(f"{path}: unreadable landmark file ({err})") from err
    missing = {"name", "x", "y", "z"} - set(rows[0] if rows else {})
    if missing:
        raise TemplateError(f"{path}: landmark file without column(s) {sorted(missing)}")
    points: dict[str, list[float]] = {}
    uncertainty: dict[str, float | None] = {}
    for row in rows:
        try:
            xyz = [float(row[a]) for a in "xyz"]
            unc = row.get("uncertainty_mm")
            uncertainty[row["name"]] = float(unc) if unc not in (None, "", "n/a") else None
        except (TypeError, ValueError) as err:
            raise TemplateError(f"{path}: row {row['name']!r}: not a number ({err})") from err
        if not all(math.isfinite(v) for v in xyz):
            raise TemplateError(f"{path}: row {row['name']!r}: coordinates must be finite")
        points[row["name"]] = xyz
    absent = [name for name in EAR_LANDMARKS if name not in points]
    if absent:
        raise TemplateError(f"{path}: no row(s) {absent} (ear landmarks, world mm)")
    return points, uncertainty


def template_head_axes(landmarks: dict[str, Any]) -> np.ndarray:
    """3×3 head frame (columns) of an upright template: x = horizontal left→right ear axis,
    y = posterior→anterior, z = the template's world up."""
    ex = np.asarray(landmarks["inner_ear_right"], float) - np.asarray(
        landmarks["inner_ear_left"], float
    )
    ex[2] = 0.0
    ex /= np.linalg.norm(ex)
    ez = np.array([0.0, 0.0, 1.0])
    return np.stack([ex, np.cross(ez, ex), ez], axis=1)


# --------------------------------------------------------------------------- finding files
@dataclass(frozen=True)
class TemplateFiles:
    """The files of one template that ievnet-bids uses (real paths)."""

    name: str
    head_image: Path
    contrast: str  # "T1w" or "T2w"
    landmarks_file: Path | None
    t2like_image: Path | None = None  # the shipped template's synthetic T2-like contrast


def _voxel_mm(path: Path) -> float:
    try:
        header = nib.load(str(path)).header
    except Exception as err:
        raise TemplateError(f"{path}: not a readable NIfTI image ({err})") from err
    return float(np.mean(header.get_zooms()[:3]))


def _pick_resolution(paths: list[Path]) -> Path:
    """The coarsest image with voxels up to :data:`MAX_HEAD_VOXEL_MM`, else the finest."""
    sizes = {p: _voxel_mm(p) for p in paths}
    fine_enough = [p for p in paths if sizes[p] <= MAX_HEAD_VOXEL_MM + 1e-6]
    if fine_enough:
        return max(fine_enough, key=lambda p: (sizes[p], str(p)))
    return min(paths, key=lambda p: (sizes[p], str(p)))


def _pick_landmarks(paths: list[Path]) -> Path | None:
    """The landmark TSV without a ``desc-`` entity, else the first one."""
    if not paths:
        return None
    plain = [p for p in paths if "_desc-" not in p.name]
    return (plain or paths)[0]


def find_template(name: str) -> TemplateFiles:
    """Resolve template ``name`` through TemplateFlow (offline; shipped or in the user's cache).

    Raises :class:`TemplateNotFoundError` when there is no such template (or only stubs of it)
    and :class:`TemplateError` when it has no whole-head T1w/T2w image.
    """
    with templateflow_client([name]) as client:
        head, contrast = None, ""
        for contrast in HEAD_CONTRASTS:
            # whole head: no desc- (desc-brain is skull-stripped), no cohort
            heads = local_files(
                client, name, suffix=contrast, desc=None, cohort=None, extension=NIFTI
            )
            if heads:
                head = _pick_resolution(heads)
                break
        if head is None:
            raise TemplateError(
                f"template {name!r} ({template_folder(name)}): no whole-head T1w or T2w image "
                f"(tpl-{name}[_res-<label>]_T1w.nii.gz or _T2w, without desc- or cohort-)"
            )
        landmarks = _pick_landmarks(local_files(client, name, suffix="landmarks", extension=".tsv"))
        t2like = local_files(client, name, suffix="T2w", desc="T2like", extension=NIFTI)
    return TemplateFiles(name, head, contrast, landmarks, t2like[0] if t2like else None)


# --------------------------------------------------------------------------- ready to use
@dataclass(frozen=True)
class HeadTemplate:
    """A template ready for the localizer (world RAS mm of the template).

    ``landmarks``: at least ``inner_ear_left/right``; ``uncertainty_mm``: their radius of
    uncertainty (the landmark file's, or the shipped one combined with what the registration
    adds; None when the file gives none); ``head_axes``: the head frame (columns: left→right,
    posterior→anterior, up); ``landmarks_source``: ``"file"`` or ``"registered"`` (from the
    shipped template); ``derivation``: the registration's record when registered.
    """

    name: str
    head_image: str
    contrast: str
    landmarks: dict[str, list[float]]
    uncertainty_mm: dict[str, float | None]
    head_axes: list[list[float]]
    landmarks_source: str
    landmarks_file: str | None = None
    derivation: dict[str, Any] | None = None

    def landmark_arrays(self) -> dict[str, np.ndarray]:
        """``name → (x, y, z)`` arrays."""
        return {k: np.asarray(v, dtype=float) for k, v in self.landmarks.items()}

    def summary(self) -> dict[str, Any]:
        """What the records and the report name: the template and its ear landmarks' origin."""
        return {
            "name": self.name,
            "landmarks_source": self.landmarks_source,
            "ear_uncertainty_mm": {
                side: self.uncertainty_mm.get(f"inner_ear_{side}") for side in ("left", "right")
            },
            "registration_added_mm": (self.derivation or {}).get("added_uncertainty_mm"),
        }

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """JSON text; also written (atomically) to ``path`` when given."""
        text = json.dumps(asdict(self), indent=2)
        if path is not None:
            write_text_atomic(text, path)
        return text

    @classmethod
    def from_json(cls, text: str) -> HeadTemplate:
        """Inverse of :meth:`to_json` (the text, not a path)."""
        return cls(**json.loads(text))


def _check_inside(files: TemplateFiles, landmarks: dict[str, list[float]]) -> None:
    """The ear landmarks must lie inside the head image's field of view."""
    img = nib.load(str(files.head_image))
    inv = np.linalg.inv(img.affine)
    for name in EAR_LANDMARKS:
        ijk = inv[:3, :3] @ landmarks[name] + inv[:3, 3]
        if np.any(ijk < -0.5) or np.any(ijk > np.asarray(img.shape[:3]) - 0.5):
            raise TemplateError(
                f"template {files.name!r}: {name} {np.round(landmarks[name], 1).tolist()} mm "
                f"lies outside {files.head_image.name} (does it cover the whole head?)"
            )


def _from_landmark_file(files: TemplateFiles, path: Path) -> HeadTemplate:
    points, uncertainty = read_landmark_table(path)
    _check_inside(files, points)
    return HeadTemplate(
        name=files.name,
        head_image=str(files.head_image),
        contrast=files.contrast,
        landmarks=points,
        uncertainty_mm=uncertainty,
        head_axes=template_head_axes(points).tolist(),
        landmarks_source="file",
        landmarks_file=str(path),
    )


def _sha256(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def _registered_from_shipped(files: TemplateFiles, cache_dir: Path | None) -> HeadTemplate:
    """Landmarks of ``files`` by registering the shipped head to it (cached in ``cache_dir``)."""
    shipped = shipped_template()
    key = _sha256(files.head_image, Path(shipped.head_image), Path(shipped.landmarks_file or ""))
    cached = None
    if cache_dir is not None:
        stem = f"tpl-{files.name}_landmarks-v{DERIVATION_VERSION}_{key[:16]}"
        cached = Path(cache_dir) / f"{stem}.json"
        if cached.is_file():
            try:  # same contents (the key); the file may have moved since
                found = HeadTemplate.from_json(cached.read_text())
                return replace(found, head_image=str(files.head_image))
            except (ValueError, TypeError):
                pass  # a damaged cache entry: compute again
    from ievnet_bids.localize.template_landmarks import transfer_landmarks

    moved = transfer_landmarks(
        nib.load(shipped.head_image),
        shipped.landmark_arrays(),
        np.asarray(shipped.head_axes),
        nib.load(str(files.head_image)),
    )
    if not moved.plausible:
        raise TemplateError(
            f"template {files.name!r}: registering the shipped head to {files.head_image.name} "
            f"failed (affine scales {np.round(moved.scales, 2).tolist()}); give the template a "
            f"tpl-{files.name}_landmarks.tsv"
        )
    landmarks = {k: v.tolist() for k, v in moved.landmarks.items()}
    _check_inside(files, landmarks)
    uncertainty: dict[str, float | None] = {}
    for k in landmarks:
        base = shipped.uncertainty_mm.get(k)
        added = moved.added_uncertainty_mm[k]
        uncertainty[k] = round(math.hypot(base, added), 2) if base is not None else None
    template = HeadTemplate(
        name=files.name,
        head_image=str(files.head_image),
        contrast=files.contrast,
        landmarks=landmarks,
        uncertainty_mm=uncertainty,
        head_axes=moved.head_axes.tolist(),
        landmarks_source="registered",
        derivation={
            "from_template": shipped.name,
            "stages": list(moved.stages),
            "seconds": round(moved.seconds, 2),
            "affine_scales": [round(s, 4) for s in moved.scales],
            "added_uncertainty_mm": {k: round(v, 2) for k, v in moved.added_uncertainty_mm.items()},
            "syn_moved_mm": {k: round(v, 2) for k, v in moved.syn_moved_mm.items()},
        },
    )
    if cached is not None:
        template.to_json(cached)
    return template


def prepare_template(name: str = SHIPPED_TEMPLATE, cache_dir: Path | None = None) -> HeadTemplate:
    """Template ``name`` with its ear landmarks (module doc); ``cache_dir`` keeps registered
    landmarks between runs. Raises :class:`TemplateNotFoundError` / :class:`TemplateError`."""
    files = find_template(name)
    if files.landmarks_file is not None:
        return _from_landmark_file(files, files.landmarks_file)
    if name == SHIPPED_TEMPLATE:
        raise TemplateError(f"the shipped template has no landmark file: {files.head_image}")
    return _registered_from_shipped(files, cache_dir)


@lru_cache(maxsize=1)
def shipped_template() -> HeadTemplate:
    """The shipped template with its landmark file (read once per process)."""
    return prepare_template(SHIPPED_TEMPLATE)


@lru_cache(maxsize=1)
def _load_shipped_images() -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    files = find_template(SHIPPED_TEMPLATE)
    if files.t2like_image is None:
        raise TemplateError(f"the shipped template has no desc-T2like_T2w image: {files.name}")
    return nib.load(str(files.head_image)), nib.load(str(files.t2like_image))


def load_template() -> tuple[nib.Nifti1Image, nib.Nifti1Image, dict[str, np.ndarray]]:
    """(T1w image, heavily-T2-like image, landmarks ``name → xyz`` in template world mm) of the
    shipped template.

    Landmarks: ``inner_ear_left/right`` (labyrinth centre, ±7 mm), ``eac_left/right``
    (external auditory canal lumen) and ``midsagittal`` (a mid-sagittal point at ear level).
    """
    t1, t2 = _load_shipped_images()
    return t1, t2, shipped_template().landmark_arrays()
