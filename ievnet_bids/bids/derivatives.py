"""The one authority for derivative names and for writing them.

Names keep the source image's entities (``sub``, ``ses``, ``acq``, ``run``, ...; its suffix is
dropped) and add ``space``/``label``/``desc``, in BIDS entity order::

    sub-01/ses-1/anat/sub-01_ses-1_acq-space_space-orig_label-TFS_desc-left_mask.nii.gz

Every write is atomic (:mod:`ievnet_bids.atomic`: a temporary dot-file, then ``os.replace``),
and :func:`publish` moves a subject's staged outputs into place only once all exist,
skipping byte-identical files, so reruns are idempotent and a failed subject leaves nothing.
"""

from __future__ import annotations

import contextlib
import csv
import filecmp
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ievnet_bids import atomic
from ievnet_bids.atomic import write_text_atomic

LOG = logging.getLogger(__name__)

BIDS_VERSION = "1.11.0"
CODE_URL = "https://github.com/ievnet/ievnet-bids"
PIPELINE_NAME = "ievnet-bids"
PIPELINE_AUTHOR = "ievnet-bids (automated inner-ear segmentation)"
ENTITY_ORDER: tuple[str, ...] = (
    "sub", "ses", "sample", "task", "tracksys", "acq", "nuc", "voi", "ce", "trc", "stain",
    "rec", "dir", "run", "mod", "echo", "flip", "inv", "mt", "part", "proc", "hemi", "space",
    "split", "recording", "chunk", "seg", "res", "den", "label", "from", "to", "mode", "desc",
)  # fmt: skip
"""BIDS entity order (BIDS 1.10 entity table; ``from``/``to``/``mode`` of transforms placed as
fMRIPrep places them: ``..._from-FLAIR_to-T2w_mode-image_desc-left_xfm.txt``)."""
DERIVATIVE_ENTITIES = frozenset({"space", "res", "den", "label", "from", "to", "mode", "desc"})
_KIND_ENTITIES = ("space", "label", "from", "to", "mode", "desc")
"""Entities of a source that are not carried over to its derivatives."""
DSEG_LABELS: tuple[tuple[int, str, str], ...] = (
    (0, "background", "BG"),
    (1, "left inner-ear total fluid space", "TFSL"),
    (2, "right inner-ear total fluid space", "TFSR"),
)
STRUCTURE_DSEG_LABELS: tuple[tuple[int, str, str], ...] = (
    (0, "background", "BG"),
    (1, "left cochlea", "COCHL"),
    (2, "left vestibule", "VESTL"),
    (3, "left semicircular canals", "SCCL"),
    (4, "right cochlea", "COCHR"),
    (5, "right vestibule", "VESTR"),
    (6, "right semicircular canals", "SCCR"),
)
BIDSIGNORE = (
    "*.html",
    "logs",
    "figures",
    "sub-*/log",
    "sub-*/figures",
    "*_volumes.tsv",
    "*_qc.json",
    "group_*.tsv",
    "*_xfm.txt",
)
_VALUE_RE = re.compile(r"^[a-zA-Z0-9]+$")


# --------------------------------------------------------------------------- names
def parse_bids_name(path: str | Path) -> tuple[dict[str, str], str, str]:
    """``(entities, suffix, extension)`` of a BIDS file name, e.g.
    ``({"sub": "01", "acq": "space"}, "T2w", ".nii.gz")``."""
    name = Path(path).name
    stem, dot, ext = name.partition(".")
    parts = stem.split("_")
    if len(parts) < 2 or not parts[0].startswith("sub-"):
        raise ValueError(f"not a BIDS file name: {name}")
    entities: dict[str, str] = {}
    for part in parts[:-1]:
        key, sep, value = part.partition("-")
        if not sep or key not in ENTITY_ORDER or not _VALUE_RE.match(value) or key in entities:
            raise ValueError(f"not a BIDS file name: {name} (bad entity {part!r})")
        entities[key] = value
    return entities, parts[-1], dot + ext


def source_entities(path: str | Path) -> dict[str, str]:
    """The entities a derivative (or a source) file name carries over from its source."""
    entities, _, _ = parse_bids_name(path)
    return {k: v for k, v in entities.items() if k not in DERIVATIVE_ENTITIES}


def source_prefix(path: str | Path) -> str:
    """``sub-01_ses-1_acq-space``: the source entities of ``path``, in BIDS order."""
    ent = source_entities(path)
    return "_".join(f"{k}-{ent[k]}" for k in ENTITY_ORDER if k in ent)


@dataclass(frozen=True)
class Kind:
    """One kind of output: its derivative entities, suffix and extension (no source entities).

    The writers and the readers (group level, reports, demo) name files through these records
    only; ``desc`` of the per-ear kinds is the side, given at each use.
    """

    suffix: str
    extension: str
    space: str | None = "orig"
    label: str | None = None
    desc: str | None = None
    datatype: str = "anat"
    transform: tuple[str, str] | None = None  # (from, to) of an image transform (mode-image)

    def entities(self, **override: Any) -> dict[str, Any]:
        """Keyword arguments of :func:`derivative_path` (``override`` e.g. ``desc=side``)."""
        return {**asdict(self), **override}

    def _tags(self, **override: Any) -> dict[str, str | None]:
        ent = self.entities(**override)
        pair = ent["transform"]
        return {
            "space": ent["space"],
            "label": ent["label"],
            "from": pair[0] if pair else None,
            "to": pair[1] if pair else None,
            "mode": "image" if pair else None,
            "desc": ent["desc"],
        }

    def pattern(self, **override: Any) -> str:
        """Glob pattern of the file names (``*`` standing for the source entities)."""
        tags = "".join(f"_{k}-{v}" for k, v in self._tags(**override).items() if v is not None)
        return f"*{tags}_{self.suffix}{self.extension}"

    def matches(self, path: str | Path, **override: Any) -> bool:
        """Whether ``path``'s name is of this kind (with ``override``), any source entities."""
        try:
            entities, suffix, ext = parse_bids_name(path)
        except ValueError:
            return False
        found = {k: entities.get(k) for k in _KIND_ENTITIES}
        return (suffix, ext) == (self.suffix, self.extension) and found == self._tags(**override)


TFS_MASK = Kind("mask", ".nii.gz", label="TFS")
"""``<source>_space-orig_label-TFS_desc-<side>_mask.nii.gz``"""
TFS_PROBSEG = Kind("probseg", ".nii.gz", label="TFS")
"""``<source>_space-orig_label-TFS_desc-<side>_probseg.nii.gz``"""
TFS_DSEG = Kind("dseg", ".nii.gz")
"""``<source>_space-orig_dseg.nii.gz`` (1 left, 2 right)"""
VOLUMES = Kind("volumes", ".tsv", space=None, desc="tfs")
"""``<source>_desc-tfs_volumes.tsv``: one row per ear"""
QC_RECORD = Kind("qc", ".json", space=None, desc="tfs")
"""``<source>_desc-tfs_qc.json``"""
ROI_SPACE = "ROI"
"""The 0.2 mm ear ROI grid the network works on (200×150×100 voxels, one per ear)."""
ROI_IMAGE = Kind("T2w", ".nii.gz", space=ROI_SPACE)
"""``<source>_space-ROI_desc-<side>_T2w.nii.gz``: the slab resampled onto the ear's ROI grid"""
ROI_MASK = Kind("mask", ".nii.gz", space=ROI_SPACE, label="TFS")
"""``<source>_space-ROI_label-TFS_desc-<side>_mask.nii.gz``"""
ROI_PROBSEG = Kind("probseg", ".nii.gz", space=ROI_SPACE, label="TFS")
"""``<source>_space-ROI_label-TFS_desc-<side>_probseg.nii.gz``"""
# hydrops (sessions with a FLAIR)
ELS_MASK = Kind("mask", ".nii.gz", label="ELS")
"""``<source>_space-orig_label-ELS_desc-<side>_mask.nii.gz``: endolymphatic space, ⊂ TFS"""
ROI_ELS_MASK = Kind("mask", ".nii.gz", space=ROI_SPACE, label="ELS")
"""``<source>_space-ROI_label-ELS_desc-<side>_mask.nii.gz``"""
STRUCTURES_DSEG = Kind("dseg", ".nii.gz", desc="structures")
"""``<source>_space-orig_desc-structures_dseg.nii.gz``: cochlea, vestibule, canals per ear"""
ROI_STRUCTURES_DSEG = Kind("dseg", ".nii.gz", space=ROI_SPACE)
"""``<source>_space-ROI_desc-<side>_dseg.nii.gz``: the structures on the ear's ROI grid"""
ROI_FLAIR = Kind("FLAIR", ".nii.gz", space=ROI_SPACE)
"""``<source>_space-ROI_desc-<side>_FLAIR.nii.gz``: the FLAIR registered onto the ROI grid"""
FLAIR_XFM = Kind("xfm", ".txt", space=None, transform=("FLAIR", "T2w"))
"""``<source>_from-FLAIR_to-T2w_mode-image_desc-<side>_xfm.txt``: ITK rigid transform"""


def find_derivatives(
    output_dir: str | Path,
    kind: Kind,
    where: Mapping[str, str | None] | None = None,
    **override: Any,
) -> list[Path]:
    """Files of ``kind`` (with ``override``, e.g. ``desc="left"``) under ``output_dir``.

    ``where``: source entities the file must have (``None``: must not have, e.g.
    ``{"sub": "01", "ses": None}``). Per subject (sorted), the session-less folder first,
    then the session folders; sorted by name within each.
    """
    output_dir, where = Path(output_dir), dict(where or {})
    subject = where.get("sub")
    subs = [output_dir / f"sub-{subject}"] if subject else sorted(output_dir.glob("sub-*/"))
    datatype = kind.entities(**override)["datatype"]
    levels = [datatype] if datatype == "figures" else [datatype, f"ses-*/{datatype}"]
    found: list[Path] = []
    for sub in subs:
        for level in levels:
            for path in sorted(sub.glob(f"{level}/sub-*")):
                if kind.matches(path, **override) and _has(path, where):
                    found.append(path)
    return found


def _has(path: Path, where: Mapping[str, str | None]) -> bool:
    ent = source_entities(path)
    return all(ent.get(k) == v for k, v in where.items())


def sibling(path: str | Path, kind: Kind, **override: Any) -> Path:
    """The derivative of ``kind`` of the same source as the derivative ``path``, beside it."""
    path = Path(path)
    name = derivative_path(path, ".", **kind.entities(**override)).name
    return path.with_name(name)


def derivative_path(
    source: str | Path,
    output_dir: str | Path,
    *,
    space: str | None = "orig",
    label: str | None = None,
    desc: str | None = None,
    suffix: str,
    extension: str,
    datatype: str = "anat",
    transform: tuple[str, str] | None = None,
) -> Path:
    """Path of a derivative of ``source`` under ``output_dir``.

    ``extension`` with or without the dot; ``space=None`` leaves ``space`` out;
    ``transform=(A, B)`` adds ``from-A_to-B_mode-image``.
    ``datatype="figures"`` puts the file in ``sub-<label>/figures/`` (no session folder).
    """
    ent = source_entities(source)
    pair = transform or (None, None)
    tags = (("space", space), ("label", label), ("from", pair[0]), ("to", pair[1]),
            ("mode", "image" if transform else None), ("desc", desc))  # fmt: skip
    for key, value in tags:
        if value is not None:
            if not _VALUE_RE.match(value):
                raise ValueError(f"{key} must be alphanumeric, not {value!r}")
            ent[key] = value
    if not _VALUE_RE.match(suffix):
        raise ValueError(f"suffix must be alphanumeric, not {suffix!r}")
    ext = extension if extension.startswith(".") else f".{extension}"
    name = "_".join(f"{k}-{ent[k]}" for k in ENTITY_ORDER if k in ent) + f"_{suffix}{ext}"
    folder = Path(output_dir) / f"sub-{ent['sub']}"
    if datatype != "figures" and "ses" in ent:
        folder /= f"ses-{ent['ses']}"
    return folder / datatype / name


def dataset_root_of(path: str | Path) -> Path:
    """The dataset root above ``path``: the parent of its ``sub-<label>`` folder."""
    path = Path(path).absolute()
    for parent in path.parents:
        if parent.name.startswith("sub-") and _VALUE_RE.match(parent.name[4:]):
            return parent.parent
    raise ValueError(f"no sub-<label> folder above {path}")


def bids_uri(path: str | Path, dataset_root: str | Path, dataset_name: str = "raw") -> str:
    """``bids:<dataset_name>:<path relative to dataset_root>`` (POSIX separators)."""
    rel = Path(path).absolute().relative_to(Path(dataset_root).absolute())
    return f"bids:{dataset_name}:{rel.as_posix()}"


# --------------------------------------------------------------------------- sidecars
def segmentation_sidecar(
    source: str | Path,
    *,
    side: str | None,
    model_name: str,
    model_sha256: str,
    centre_mm: Sequence[float] | None,
    localizer: str,
    extra_sources: Sequence[str | Path] = (),
    dataset_root: str | Path | None = None,
    dataset_name: str = "raw",
    inference: Mapping[str, Any] | None = None,
    template: str | None = None,
) -> dict[str, Any]:
    """Sidecar of a ``space-orig`` segmentation (mask, probseg, dseg) of ``source``.

    ``Sources``: BIDS URIs of ``source`` and ``extra_sources`` (e.g. the head image used for
    localization); ``SpatialReference``: ``source``'s URI. ``centre_mm``: ROI centre in
    scanner mm (``side`` given) or ``None``. ``inference``: extra provenance keys such as
    ``ProbabilityThreshold`` and ``FlipTTA``. ``template``: TemplateFlow name of the template
    the localizer registered (``LocalizationTemplate``; absent when none was used).
    """
    root = Path(dataset_root) if dataset_root is not None else dataset_root_of(source)
    src = bids_uri(source, root, dataset_name)
    out: dict[str, Any] = {
        "Description": "inner-ear total fluid space (TFS) segmented with IE-Vnet"
        + (f", {side} ear" if side else ""),
        "Sources": [src, *(bids_uri(p, root, dataset_name) for p in extra_sources)],
        "SpatialReference": src,
    }
    if side is not None:
        if side not in ("left", "right"):
            raise ValueError(f"side must be left or right, not {side!r}")
        out["Side"] = side
    out["ModelName"] = model_name
    out["ModelSHA256"] = model_sha256
    out["Localizer"] = localizer
    if template is not None:
        out["LocalizationTemplate"] = template
    out.update(inference or {})
    if centre_mm is not None:
        centre = [float(v) for v in centre_mm]
        if len(centre) != 3 or not all(math.isfinite(v) for v in centre):
            raise ValueError(f"centre_mm must be 3 finite numbers, not {centre_mm!r}")
        out["CentreMM"] = centre
    return out


def mask_sidecar(
    source: str | Path,
    *,
    side: str,
    model_name: str,
    model_sha256: str,
    centre_mm: Sequence[float],
    localizer: str,
    extra_sources: Sequence[str | Path] = (),
    dataset_root: str | Path | None = None,
    inference: Mapping[str, Any] | None = None,
    template: str | None = None,
) -> dict[str, Any]:
    """Sidecar of a ``label-TFS_desc-<side>_mask``: ``Type: "ROI"`` plus provenance."""
    return {
        "Type": "ROI",
        **segmentation_sidecar(
            source,
            side=side,
            model_name=model_name,
            model_sha256=model_sha256,
            centre_mm=centre_mm,
            localizer=localizer,
            extra_sources=extra_sources,
            dataset_root=dataset_root,
            inference=inference,
            template=template,
        ),
    }


def roi_sidecar(
    *,
    roi_affine: Any,
    roi_shape: Sequence[int],
    slab_affine: Any,
    base: Mapping[str, Any],
) -> dict[str, Any]:
    """Sidecar of a ``space-ROI`` image: ``base`` (a segmentation sidecar of the same ear)
    plus the ROI grid (``ROIGrid``) and its voxel-to-voxel transform onto the source slab.

    Both grids lie in the same scanner space (their NIfTI affines); ``RoiToSlabVoxelAffine``
    maps ROI voxel indices to slab voxel indices (``inv(slab affine) @ ROI affine``), so a
    tool working on the ROI grid can map its results back without resampling twice.
    """
    import numpy as np

    roi = np.asarray(roi_affine, dtype=float)
    to_slab = np.linalg.inv(np.asarray(slab_affine, dtype=float)) @ roi
    out = dict(base)
    out["Description"] = (
        f"{base.get('Description', 'inner-ear total fluid space (TFS)')}, on the ear's "
        "0.2 mm ROI grid (the network's own grid)"
    )
    # SpatialReference stays the slab's URI from ``base`` (BIDS wants a URI there); the ROI
    # grid and its transform onto the slab are keys of their own
    out["ROIGrid"] = {
        "Shape": [int(n) for n in roi_shape],
        "VoxelSizeMM": [round(float(v), 6) for v in np.linalg.norm(roi[:3, :3], axis=0)],
        "Affine": [[round(float(v), 6) for v in row] for row in roi],
    }
    out["RoiToSlabVoxelAffine"] = [[round(float(v), 6) for v in row] for row in to_slab]
    return out


# --------------------------------------------------------------------------- atomic writes
def write_json_atomic(obj: Any, path: str | Path) -> Path:
    """Atomic JSON write (2-space indent, trailing newline)."""
    return write_text_atomic(json.dumps(obj, indent=2) + "\n", path)


def write_nifti_atomic(img: Any, path: str | Path) -> Path:
    """Atomic ``nibabel`` image write (compressed when ``path`` ends in ``.gz``).

    A NIfTI header without spatial units gets ``mm`` (on a copy; ``img`` is unchanged).
    """
    import nibabel as nib

    path = Path(path)
    header = getattr(img, "header", None)
    if hasattr(header, "get_xyzt_units") and header.get_xyzt_units()[0] == "unknown":
        img = img.__class__(img.dataobj, img.affine, header.copy())
        img.header.set_xyzt_units(xyz="mm")
    suffix = ".nii.gz" if path.name.endswith(".gz") else ".nii"
    with atomic.staged(path, suffix=suffix) as tmp:
        nib.save(img, tmp)
    return path


def _tsv_cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = str(value)
    if "\t" in text or "\n" in text:
        raise ValueError(f"TSV cell contains a tab or newline: {text!r}")
    return text


def read_tsv(path: str | Path) -> list[dict[str, str]]:
    """Rows of a tab-separated table with a header, values as text."""
    with Path(path).open(newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def write_tsv_atomic(
    df_or_rows: Any, path: str | Path, *, columns: Sequence[str] | None = None
) -> Path:
    """Atomic TSV write of a pandas DataFrame or a sequence of row mappings.

    Missing values (``None``, NaN) become ``n/a``. Row columns: ``columns`` or the keys in
    first-seen order.
    """
    if hasattr(df_or_rows, "to_dict") and hasattr(df_or_rows, "columns"):
        cols = list(columns) if columns is not None else [str(c) for c in df_or_rows.columns]
        rows: list[Mapping[str, Any]] = df_or_rows.to_dict(orient="records")
    else:
        rows = list(df_or_rows)
        cols = list(columns) if columns is not None else []
        if columns is None:
            for row in rows:
                cols += [k for k in row if k not in cols]
    lines = ["\t".join(cols)]
    lines += ["\t".join(_tsv_cell(row.get(c)) for c in cols) for row in rows]
    return write_text_atomic("\n".join(lines) + "\n", path)


# --------------------------------------------------------------------------- dataset files
def dataset_description(
    *, version: str, container: Mapping[str, Any] | None = None, bids_dir: Path | None = None
) -> dict[str, Any]:
    """Content of the derivative ``dataset_description.json`` (deterministic)."""
    generated: dict[str, Any] = {"Name": PIPELINE_NAME, "Version": version, "CodeURL": CODE_URL}
    if container:
        generated["Container"] = dict(container)
    desc: dict[str, Any] = {
        "Name": "ievnet-bids: inner-ear total fluid space (TFS) segmentation",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated],
        "HowToAcknowledge": (
            "Cite IE-Vnet: Ahmadi et al., Front. Neurol. 2022, doi:10.3389/fneur.2022.663200"
        ),
    }
    authors: list[str] = []
    if bids_dir is not None:
        bids_dir = Path(bids_dir).absolute()
        source: dict[str, Any] = {"URL": bids_dir.as_uri()}
        try:
            raw = json.loads((bids_dir / "dataset_description.json").read_text())
        except (OSError, json.JSONDecodeError):
            raw = {}
        if isinstance(raw, dict) and raw.get("DatasetDOI"):
            source["DOI"] = raw["DatasetDOI"]
        if isinstance(raw, dict) and isinstance(raw.get("Authors"), list):
            authors = [str(a) for a in raw["Authors"] if str(a).strip()]
        desc["SourceDatasets"] = [source]
        desc["DatasetLinks"] = {"raw": bids_dir.as_uri()}
    # the source dataset's authors, then the pipeline that made these files
    desc["Authors"] = [*authors, PIPELINE_AUTHOR]
    return desc


def write_dataset_description(
    output_dir: str | Path,
    *,
    version: str,
    container: Mapping[str, Any] | None = None,
    bids_dir: str | Path | None = None,
) -> Path:
    """Write ``output_dir/dataset_description.json``; safe under concurrent writers.

    Left untouched when it already has this content; replaced (with a warning) otherwise.
    """
    path = Path(output_dir) / "dataset_description.json"
    desc = dataset_description(
        version=version,
        container=container,
        bids_dir=Path(bids_dir) if bids_dir is not None else None,
    )
    text = json.dumps(desc, indent=2) + "\n"
    try:
        if path.read_text() == text:
            return path
        LOG.warning("replacing %s (other content, e.g. another ievnet-bids version)", path)
    except FileNotFoundError:
        pass
    return write_text_atomic(text, path)


def write_bidsignore(output_dir: str | Path, extra: Sequence[str] = ()) -> Path:
    """Add the non-BIDS outputs (TSV tables, figures, logs, HTML) to ``.bidsignore``."""
    path = Path(output_dir) / ".bidsignore"
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        lines = []
    new = [p for p in (*BIDSIGNORE, *extra) if p not in lines]
    if new or not path.exists():
        write_text_atomic("\n".join([*lines, *new]) + "\n", path)
    return path


def _write_if_changed(text: str, path: Path) -> Path:
    if path.is_file() and path.read_text() == text:
        return path
    return write_text_atomic(text, path)


def _write_label_table(
    path: Path, labels: Sequence[tuple[int, str, str]], sidecar: Mapping[str, Any]
) -> Path:
    text = "index\tname\tabbreviation\n" + "".join(f"{i}\t{n}\t{a}\n" for i, n, a in labels)
    _write_if_changed(json.dumps(sidecar, indent=2) + "\n", path.with_suffix(".json"))
    return _write_if_changed(text, path)


def write_dseg_tsv(output_dir: str | Path) -> Path:
    """``output_dir/desc-tfs_dseg.tsv`` (the label table of the ``dseg`` images) and its
    ``.json`` sidecar."""
    sidecar = {
        "Description": "Labels of the *_dseg.nii.gz images: left and right inner-ear total "
        "fluid space (TFS)",
        "SpatialReference": "orig: each dseg image lies on the grid of its source slab, named "
        "in its own sidecar",
    }
    return _write_label_table(Path(output_dir) / "desc-tfs_dseg.tsv", DSEG_LABELS, sidecar)


def label_rows(labels: Sequence[tuple[int, str, str]]) -> list[dict[str, Any]]:
    """Rows of a BIDS ``dseg.tsv`` lookup table (``index``, ``name``, ``abbreviation``)."""
    return [{"index": i, "name": n, "abbreviation": a} for i, n, a in labels]


README_TEXT = """\
# ievnet-bids derivatives

Inner-ear total fluid space (TFS: cochlea, vestibule and semicircular canals) segmented in
heavily T2-weighted 3D MRI by ievnet-bids, an implementation of IE-Vnet (Ahmadi et al.,
Front. Neurol. 2022, doi:10.3389/fneur.2022.663200).

Per source slab, in `sub-<label>/[ses-<label>/]anat/`:

- `*_space-orig_label-TFS_desc-{left,right}_mask.nii.gz`: binary TFS mask of each ear on the
  slab's grid, with a JSON sidecar (model, settings, ear centre, localization);
- `*_space-orig_label-TFS_desc-{left,right}_probseg.nii.gz`: the network's TFS probability
  (float32 on a 1/65536 grid);
- `*_space-orig_dseg.nii.gz`: both ears in one label image (`desc-tfs_dseg.tsv`);
- `*_space-ROI_desc-{left,right}_T2w.nii.gz`, `*_space-ROI_label-TFS_desc-{left,right}_`
  `{probseg,mask}.nii.gz`: the network's own 0.2 mm ROI grid (200×150×100) per ear; the
  sidecars give the grid and `RoiToSlabVoxelAffine` (ROI voxel → slab voxel);
- `*_desc-tfs_volumes.tsv` and `*_desc-tfs_qc.json`: volumes and automatic QC flags per ear,
  measured on the ROI grid (`slab_volume_mm3`: the volume of the slab-grid mask).

`sub-<label>.html` is the subject report; `group_tfs.tsv`/`group_tfs.html` are written by the
group level; `logs/` holds each run's configuration. `dataset_description.json` names the
source dataset and the ievnet-bids version.
"""


def write_readme(output_dir: str | Path) -> Path:
    """``output_dir/README.md``: what the derivative dataset holds."""
    return _write_if_changed(README_TEXT, Path(output_dir) / "README.md")


# --------------------------------------------------------------------------- staging
class Staging:
    """Derivatives of one source image, written to ``stage_dir`` first.

    ``files`` maps each staged file to its destination under ``output_dir`` (BIDS name from
    :func:`derivative_path`); :func:`publish` moves them into place together.
    """

    def __init__(self, source: Path, output_dir: Path, stage_dir: Path) -> None:
        self.source, self.output_dir, self.stage_dir = Path(source), Path(output_dir), stage_dir
        self.files: dict[Path, Path] = {}
        stage_dir.mkdir(parents=True, exist_ok=True)

    def paths(self, **entities: Any) -> tuple[Path, Path]:
        """(staged file, destination) of the derivative named by ``entities``."""
        dest = derivative_path(self.source, self.output_dir, **entities)
        return self.stage_dir / dest.name, dest

    def add(self, staged: Path, dest: Path) -> Path:
        """Register a file written to ``staged`` by the caller; returns ``dest``."""
        self.files[staged] = dest
        return dest

    def nifti(self, img: Any, sidecar: Mapping[str, Any] | None = None, **entities: Any) -> Path:
        """Stage an image (and its JSON sidecar); returns the image's destination."""
        staged, dest = self.paths(**entities)
        write_nifti_atomic(img, staged)
        if sidecar is not None:
            stem = dest.name.removesuffix(".nii.gz").removesuffix(".nii")
            self.json(sidecar, dest=dest.with_name(stem + ".json"))
        return self.add(staged, dest)

    def nifti_file(
        self, source: Path, sidecar: Mapping[str, Any] | None = None, **entities: Any
    ) -> Path:
        """Stage a copy of the NIfTI file ``source`` (already in its final form: a work-folder
        image is published as written, not decoded and compressed again) and its sidecar."""
        staged, dest = self.paths(**entities)
        with atomic.staged(staged, suffix=".nii.gz") as tmp:
            shutil.copyfile(source, tmp)
        if sidecar is not None:
            stem = dest.name.removesuffix(".nii.gz").removesuffix(".nii")
            self.json(sidecar, dest=dest.with_name(stem + ".json"))
        return self.add(staged, dest)

    def json(self, obj: Any, *, dest: Path | None = None, **entities: Any) -> Path:
        """Stage a JSON file (named by ``entities`` or given as ``dest``)."""
        if dest is None:
            staged, dest = self.paths(**entities)
        else:
            staged = self.stage_dir / dest.name
        write_json_atomic(obj, staged)
        return self.add(staged, dest)

    def label_table(self, labels: Sequence[tuple[int, str, str]], **entities: Any) -> Path:
        """Stage the ``dseg.tsv`` lookup table beside the image named by ``entities``: it
        shares the image's JSON sidecar, so nothing is inherited or overridden."""
        return self.tsv(label_rows(labels), **{**entities, "extension": ".tsv"})

    def tsv(self, rows: Any, **entities: Any) -> Path:
        """Stage a TSV table (rows or a DataFrame)."""
        staged, dest = self.paths(**entities)
        write_tsv_atomic(rows, staged)
        return self.add(staged, dest)


# --------------------------------------------------------------------------- publishing
class PublishError(RuntimeError):
    """Staged outputs could not be published; nothing was moved into place."""


def publish(tmp_files: Mapping[Path, Path]) -> list[Path]:
    """Move a subject's staged outputs ``{staged file: destination}`` into place.

    First checks that every staged file exists, then copies each to a temporary file beside
    its destination, and only then renames them all onto the destinations. A destination that
    is byte-identical to its staged file is left untouched (mtime kept). On any failure
    before the renames nothing is published (:class:`PublishError`). Staged files are kept.
    Returns the destinations that were written.
    """
    items = [(Path(s), Path(d)) for s, d in tmp_files.items()]
    missing = [str(s) for s, _ in items if not s.is_file()]
    if missing:
        raise PublishError(f"staged output(s) missing, nothing published: {', '.join(missing)}")
    dests = [d for _, d in items]
    if len(set(dests)) != len(dests):
        raise PublishError("two staged outputs share a destination, nothing published")
    todo = [(s, d) for s, d in items if not (d.is_file() and filecmp.cmp(s, d, shallow=False))]
    copies: list[tuple[Path, Path]] = []
    made: list[Path] = []  # folders created here, removed again on failure
    try:
        for src, dest in todo:
            made += [p for p in (dest.parent, *dest.parent.parents) if not p.exists()][::-1]
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = atomic.temp_beside(dest)
            copies.append((tmp, dest))
            shutil.copyfile(src, tmp)
    except OSError as err:
        for tmp, _ in copies:
            tmp.unlink(missing_ok=True)
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise PublishError(f"could not stage outputs, nothing published: {err}") from err
    for tmp, dest in copies:
        os.replace(tmp, dest)
    return [d for _, d in copies]
