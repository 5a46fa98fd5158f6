"""Typed per-slab records passed between the participant-level nodes as JSON files.

* :class:`Localization` (``centres.json``, written by the localize node): both ear centres of
  one slab in world mm, the head axes, and how they were found;
* :class:`SegmentRecord` (``segment.json``, written by the segment node): the model, the
  inference settings and one :class:`EarResult` per ear;
* :class:`HydropsRecord` (``hydrops.json``, written by the hydrops node where a session has a
  FLAIR): one :class:`EarHydrops` per ear.

Nodes read these records through ``from_json`` instead of indexing dictionaries by key, and
the total move of each ear's centre (refinement + re-centring) is computed once, here.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ievnet_bids.atomic import write_text_atomic

SIDES = ("left", "right")


def _write(data: dict[str, Any], path: str | os.PathLike[str] | None, **kw: Any) -> str:
    text = json.dumps(data, indent=2, **kw)
    if path is not None:
        write_text_atomic(text, path)
    return text


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}")
    return data


@dataclass(frozen=True)
class Localization:
    """Where both ears of one slab are (world mm) and how they were found."""

    localizer: str
    head_axes: list[list[float]]
    initial: dict[str, list[float]]
    refined: dict[str, list[float]]
    moved_mm: dict[str, float]
    method: dict[str, str]
    score: dict[str, float]
    seconds: dict[str, float] = field(default_factory=dict)
    registration: dict[str, Any] | None = None
    # the template localizer's template: name, landmarks_source, ear_uncertainty_mm, ...
    template: dict[str, Any] | None = None

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """JSON text; also written (atomically) to ``path`` when given."""
        return _write(asdict(self), path)

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> Localization:
        """Read a record written by :meth:`to_json`."""
        return cls(**_known(cls, json.loads(Path(path).read_text())))


@dataclass(frozen=True)
class EarResult:
    """One ear after segmentation.

    ``cleanup``: the clean-up record of :func:`ievnet_bids.postprocess.threshold_and_clean`
    (kept/dropped components, volume); ``recentred_mm``: how far re-centring moved the ROI;
    ``moved_mm``: the total move from the first guess (refinement + re-centring);
    ``roi_grid``: the final ROI grid (``shape``, ``affine``; the one the mask was segmented
    on, after any re-centring) and ``touches_edge`` derived from it; ``qc``: the ear's QC
    record on that grid (:func:`ievnet_bids.qc.ear_record`), computed once and read by the
    volumes table and the QC JSON.
    """

    side: str
    roi_centre_mm: list[float]
    labyrinth_centre_mm: list[float] | None
    recentred_mm: float
    moved_mm: float
    roi_grid: dict[str, Any]
    touches_edge: bool
    cleanup: dict[str, Any] = field(default_factory=dict)
    qc: dict[str, Any] = field(default_factory=dict)

    @property
    def centre_mm(self) -> list[float]:
        """The labyrinth's centre, or the ROI's when no labyrinth was found."""
        return self.labyrinth_centre_mm or self.roi_centre_mm


@dataclass(frozen=True)
class EarHydrops:
    """The numbers of one ear (volumes in mm³ on the ROI grid; ELS% = 100 × ELS / TFS).

    ``structures[name]`` holds ``tfs_volume_mm3``, ``els_volume_mm3`` and ``els_percent`` of
    cochlea, vestibule and canals; ``registration`` the FLAIR → SPACE summary and its 4×4
    ``space_to_flair`` (RAS mm); ``template_dice`` the fit of the structure template.
    """

    side: str
    tfs_volume_mm3: float
    els_volume_mm3: float
    els_percent: float
    structures: dict[str, dict[str, float]]
    registration: dict[str, Any]
    template_dice: float
    flair_voxel_mm: float
    perilymph_level: float
    dark_level: float
    method: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HydropsRecord:
    """The hydrops node's record (``hydrops.json``): the FLAIR used and both ears."""

    flair: str
    ears: dict[str, EarHydrops]

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """JSON text; also written (atomically) to ``path`` when given."""
        return _write(asdict(self), path)

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> HydropsRecord:
        """Read a record written by :meth:`to_json`."""
        data = _known(cls, json.loads(Path(path).read_text()))
        ears = {side: EarHydrops(**_known(EarHydrops, ear)) for side, ear in data["ears"].items()}
        return cls(**{**data, "ears": ears})


@dataclass(frozen=True)
class SegmentRecord:
    """The segment node's record: model, inference provenance and both ears."""

    model_name: str
    model_sha256: str
    inference: dict[str, Any]
    ears: dict[str, EarResult]

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """JSON text; also written (atomically) to ``path`` when given."""
        return _write(asdict(self), path, default=str)

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> SegmentRecord:
        """Read a record written by :meth:`to_json`."""
        data = _known(cls, json.loads(Path(path).read_text()))
        ears = {side: EarResult(**_known(EarResult, ear)) for side, ear in data["ears"].items()}
        return cls(**{**data, "ears": ears})
