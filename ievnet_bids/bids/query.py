"""Find the inputs of each participant: inner-ear slab(s) and a full-head reference image.

* **slab** (segmentation target): ``anat/*_T2w`` whose ``acq-`` label is one of
  ``RunConfig.acq_values`` (case-insensitive), e.g. ``sub-01_acq-space_T2w.nii.gz``;
* **head** (localization reference): a full-head ``T1w`` of the same session, else a non-slab
  ``T2w`` of the same session, else the same from the subject's session-less images, else from
  its other sessions.

``--bids-filter-file`` filters (pybids entity names or their short keys, ``null`` = entity
absent, ``"*"`` = any value) are merged per role. A filter giving ``acquisition`` for the slab
replaces the ``acq_values`` rule. pybids is imported lazily: the CLI parser stays light.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bids import BIDSLayout

    from ievnet_bids.config import RunConfig

LOG = logging.getLogger(__name__)
LABEL_RE = re.compile(r"^[a-zA-Z0-9]+$")
NIFTI_EXTENSIONS = [".nii", ".nii.gz"]
SIDES = ("left", "right")
DB_STAMP = "ievnet_index.json"
# Only anat/ is read; other datatype folders of large datasets are not indexed.
_NON_ANAT = re.compile(r"^/sub-[^/]+/(?:ses-[^/]+/)?(?!anat(?:/|$))(?!ses-)[^/]+(?:/|$)")
_IGNORE_DIRS = re.compile(r"^/(?:code|models|sourcedata|stimuli|derivatives)(?:/|$)")


class InvalidBidsError(Exception):
    """The BIDS input cannot be used (exit 16); ``str()`` is a one-line message."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"invalid BIDS input: {path}: {reason}")
        self.path = Path(path)
        self.reason = reason


class NoImagesError(Exception):
    """The selection (participants, sessions, filters) matched no slab at all (exit 18)."""


class FilterError(ValueError):
    """A ``--bids-filter-file`` that cannot be used; the message names the file."""


class LandmarksError(ValueError):
    """A ``--landmarks-file`` that cannot be used; the message names the file."""


@dataclass(frozen=True)
class SubjectInputs:
    """Inputs of one participant (and session): ``slabs=()`` when it has no slab; ``flair``:
    the session's delayed-gadolinium FLAIR (hydrops), if any."""

    subject: str
    session: str | None
    slabs: tuple[Path, ...]
    head: Path | None
    flair: Path | None = None

    @property
    def name(self) -> str:
        """``sub-<label>[_ses-<label>]``."""
        return f"sub-{self.subject}" + (f"_ses-{self.session}" if self.session else "")


# --------------------------------------------------------------------------- validation
def validate_dataset(bids_dir: Path, *, light_validation: bool = True) -> dict[str, Any]:
    """Check the dataset root; returns ``dataset_description.json``'s content.

    Always: a directory holding ``dataset_description.json``. With ``light_validation``
    also: the description is a JSON object with ``Name`` and ``BIDSVersion``, and there are
    ``sub-<label>`` folders, all with alphanumeric labels. Raises :class:`InvalidBidsError`.
    """
    bids_dir = Path(bids_dir)
    if not bids_dir.exists():
        raise InvalidBidsError(bids_dir, "does not exist")
    if not bids_dir.is_dir():
        raise InvalidBidsError(bids_dir, "not a directory")
    desc_file = bids_dir / "dataset_description.json"
    if not desc_file.is_file():
        raise InvalidBidsError(bids_dir, "dataset_description.json is missing")
    try:
        description = json.loads(desc_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        if not light_validation:
            return {}
        raise InvalidBidsError(
            bids_dir, f"dataset_description.json is not valid JSON ({err})"
        ) from None
    if not light_validation:
        return description if isinstance(description, dict) else {}
    if not isinstance(description, dict):
        raise InvalidBidsError(bids_dir, "dataset_description.json is not a JSON object")
    missing = [k for k in ("Name", "BIDSVersion") if k not in description]
    if missing:
        raise InvalidBidsError(bids_dir, f"dataset_description.json lacks {', '.join(missing)}")
    sub_dirs = [p.name for p in bids_dir.iterdir() if p.is_dir() and p.name.startswith("sub-")]
    if not sub_dirs:
        raise InvalidBidsError(bids_dir, "no sub-<label> folders")
    bad = sorted(d for d in sub_dirs if not LABEL_RE.match(d[4:]))
    if bad:
        raise InvalidBidsError(bids_dir, f"invalid subject folder name(s): {', '.join(bad)}")
    return description


def check_participants(bids_dir: Path, labels: Sequence[str]) -> None:
    """Raise :class:`InvalidBidsError` naming every ``sub-<label>`` folder that is missing."""
    missing = [f"sub-{lab}" for lab in labels if not (Path(bids_dir) / f"sub-{lab}").is_dir()]
    if missing:
        raise InvalidBidsError(bids_dir, f"participant(s) not found: {', '.join(missing)}")


# --------------------------------------------------------------------------- filters
@cache
def _entity_names() -> dict[str, str]:
    """pybids entity name for each accepted filter key (full names and short keys)."""
    from importlib.resources import files

    config = json.loads((files("bids.layout") / "config" / "bids.json").read_text())
    names: dict[str, str] = {}
    for entity in config["entities"]:
        names[entity["name"]] = entity["name"]
        short = re.search(r"([a-zA-Z]+)-\(", entity.get("pattern", ""))
        if short:
            names.setdefault(short.group(1), entity["name"])
    return names


def normalize_filters(raw: Any, source: str | Path) -> dict[str, dict[str, Any]]:
    """Check a parsed filter file ``{"slab": {...}, "head": {...}}``; map short keys.

    Values stay JSON (str, int, list of them, ``None``); errors name ``source``.
    """
    from ievnet_bids.config import ROLES

    if not isinstance(raw, dict):
        raise FilterError(f"{source}: expected a JSON object with keys {', '.join(ROLES)}")
    unknown = sorted(set(raw) - set(ROLES))
    if unknown:
        raise FilterError(
            f"{source}: unknown image role(s) {', '.join(unknown)}; expected {', '.join(ROLES)}"
        )
    names = _entity_names()
    out: dict[str, dict[str, Any]] = {}
    for role, flt in raw.items():
        if not isinstance(flt, dict):
            raise FilterError(f"{source}: filters of {role!r} must be a JSON object")
        clean: dict[str, Any] = {}
        for key, value in flt.items():
            if key not in names:
                raise FilterError(f"{source}: {role!r}: unknown BIDS entity {key!r}")
            values = value if isinstance(value, list) else [value]
            if not values or not all(
                v is None or (isinstance(v, str | int) and not isinstance(v, bool)) for v in values
            ):
                raise FilterError(
                    f"{source}: {role!r}: {key!r} must be a string, integer, null or a list"
                )
            clean[names[key]] = value
        out[role] = clean
    return out


def _pybids_filters(flt: Mapping[str, Any]) -> dict[str, Any]:
    """JSON filter values → pybids (``None`` → ``Query.NONE``, ``"*"`` → ``Query.ANY``)."""
    from bids.layout import Query

    def conv(v: Any) -> Any:
        if isinstance(v, list):
            return [conv(x) for x in v]
        return Query.NONE if v is None else (Query.ANY if v == "*" else v)

    return {k: conv(v) for k, v in flt.items()}


# --------------------------------------------------------------------------- layout
def build_layout(
    bids_dir: Path,
    *,
    participant_labels: Sequence[str] = (),
    database_dir: Path | None = None,
) -> BIDSLayout:
    """Index ``anat/`` of ``bids_dir`` (no validation, no metadata).

    Without ``database_dir`` only the selected participants' folders are indexed. With it,
    the whole dataset is indexed once into ``database_dir`` and reused by later runs (new
    files are then not seen: delete the folder to re-index). A database made for another
    dataset root or with other index settings is rebuilt.
    """
    from bids import BIDSLayout
    from bids.layout import BIDSLayoutIndexer

    bids_dir = Path(bids_dir).absolute()
    ignore: list[Any] = [_IGNORE_DIRS, _NON_ANAT]
    if participant_labels and database_dir is None:
        keep = "|".join(re.escape(lab) for lab in participant_labels)
        ignore.append(re.compile(rf"^/sub-(?!(?:{keep})(?:/|$))"))
    indexer = BIDSLayoutIndexer(validate=False, index_metadata=False, ignore=ignore)
    if database_dir is None:
        return BIDSLayout(bids_dir, validate=False, indexer=indexer)

    database_dir = Path(database_dir).absolute()
    stamp = {
        "root": str(bids_dir),
        "ignore": [p.pattern for p in ignore],
        "index_metadata": False,
    }
    stamp_file = database_dir / DB_STAMP
    reuse = False
    if stamp_file.is_file():
        try:
            reuse = json.loads(stamp_file.read_text()) == stamp
        except json.JSONDecodeError:
            reuse = False
        if not reuse:
            LOG.warning("BIDS database %s was made for other settings; re-indexing", database_dir)
    if reuse:
        LOG.info("reusing BIDS database %s", database_dir)
    database_dir.mkdir(parents=True, exist_ok=True)
    layout = BIDSLayout(
        bids_dir,
        validate=False,
        indexer=indexer,
        database_path=database_dir,
        reset_database=not reuse,
    )
    if not reuse:
        stamp_file.write_text(json.dumps(stamp, indent=2) + "\n")
    return layout


# --------------------------------------------------------------------------- query
def collect_inputs(config: RunConfig, layout: BIDSLayout | None = None) -> list[SubjectInputs]:
    """One :class:`SubjectInputs` per selected participant/session, sorted.

    Sessions without a slab are left out, except that a participant with no slab in any
    selected session gets entries with ``slabs=()`` (so that the workflow fails it alone).
    Participants with no images in the selected sessions, or whose slabs the filter file
    excludes, are left out (with a log message).
    Raises :class:`InvalidBidsError` for unknown participants or sessions and
    :class:`NoImagesError` when no slab at all is selected.
    """
    bids_dir = Path(config.bids_dir)
    check_participants(bids_dir, config.participant_labels)
    if layout is None:
        layout = build_layout(
            bids_dir,
            participant_labels=config.participant_labels,
            database_dir=config.bids_database_dir,
        )
    subjects = list(config.participant_labels) or sorted(layout.get_subjects())
    if not subjects:
        raise InvalidBidsError(bids_dir, "no participants found")
    sessions = list(config.session_labels)
    if sessions:
        known = set(layout.get_sessions(subject=subjects))
        unknown = [s for s in sessions if s not in known]
        if unknown:
            raise InvalidBidsError(
                bids_dir,
                "session(s) not found for the selected participants: "
                + ", ".join(f"ses-{s}" for s in unknown),
            )

    acq_values = {a.lower() for a in config.acq_values}
    acq_text = "|".join(config.acq_values)
    slab_filter = config.filters_for("slab")
    head_filter = config.filters_for("head")
    selection: dict[str, Any] = {"subject": subjects}
    if sessions:
        selection["session"] = sessions

    def is_slab_acq(acq: str | None) -> bool:
        return acq is not None and acq.lower() in acq_values

    # slabs
    slab_query = {"datatype": "anat", "suffix": "T2w", "extension": NIFTI_EXTENSIONS}
    slab_query |= _pybids_filters(slab_filter) | selection
    slab_files = layout.get(**slab_query)
    if "acquisition" not in slab_filter:
        slab_files = [f for f in slab_files if is_slab_acq(f.entities.get("acquisition"))]
    slabs: dict[tuple[str, str | None], list[Path]] = defaultdict(list)
    for f in slab_files:
        slabs[(f.entities["subject"], f.entities.get("session"))].append(Path(f.path))
    if not slabs:
        raise NoImagesError(
            f"no slab image selected in {bids_dir}: anat T2w with acq-<{acq_text}> "
            f"for {_describe(subjects, sessions)}"
            + (f", slab filters {json.dumps(slab_filter)}" if slab_filter else "")
        )

    # heads (any session of the selected subjects: other sessions are a fallback)
    head_query: dict[str, Any] = {"datatype": "anat", "extension": NIFTI_EXTENSIONS}
    head_query |= {"suffix": ["T1w", "T2w"]} | _pybids_filters(head_filter)
    head_query["subject"] = subjects
    heads: dict[str, list[tuple[str | None, int, Path]]] = defaultdict(list)
    for f in layout.get(**head_query):
        ent = f.entities
        if "suffix" not in head_filter and ent["suffix"] == "T2w":
            if is_slab_acq(ent.get("acquisition")):
                continue
            rank = 1
        else:
            rank = 0
        heads[ent["subject"]].append((ent.get("session"), rank, Path(f.path)))

    flairs = _flairs(layout, config, selection) if config.hydrops else {}

    # participant/session units; "natural" slabs ignore the filter file
    anat_sessions: dict[str, set[str | None]] = defaultdict(set)
    natural: set[str] = set()
    for f in layout.get(subject=subjects, datatype="anat", extension=NIFTI_EXTENSIONS):
        ent = f.entities
        if sessions and ent.get("session") not in sessions:
            continue
        anat_sessions[ent["subject"]].add(ent.get("session"))
        if ent["suffix"] == "T2w" and is_slab_acq(ent.get("acquisition")):
            natural.add(ent["subject"])
    out: list[SubjectInputs] = []
    for sub in subjects:
        units = sorted((ses for (s, ses) in slabs if s == sub), key=_session_key)
        if not units:
            if sub in natural:
                LOG.warning("sub-%s: skipped, the filter file excludes all its slabs", sub)
                continue
            if sessions and not anat_sessions[sub]:
                LOG.info("sub-%s: skipped, no images in the selected session(s)", sub)
                continue
            units = sorted(anat_sessions[sub], key=_session_key) or [None]
            LOG.warning("sub-%s: no slab image (T2w with acq-<%s>)", sub, acq_text)
        for ses in units:
            head = _pick_head(heads[sub], ses)
            unit_slabs = tuple(sorted(slabs.get((sub, ses), ())))
            out.append(SubjectInputs(sub, ses, unit_slabs, head, flairs.get((sub, ses))))
            LOG.debug("%s", out[-1])
    return out


def _flairs(
    layout: BIDSLayout, config: RunConfig, selection: Mapping[str, Any]
) -> dict[tuple[str, str | None], Path]:
    """The FLAIR of each participant/session (same session as the slab only: the head is
    re-positioned between sessions). Several: those with a ``ce-`` entity first (contrast
    enhanced), then by name; a warning says which was taken (``flair`` filter to choose)."""
    flt = config.filters_for("flair")
    query = {"datatype": "anat", "suffix": "FLAIR", "extension": NIFTI_EXTENSIONS}
    query |= _pybids_filters(flt) | dict(selection)
    found: dict[tuple[str, str | None], list[Any]] = defaultdict(list)
    for f in layout.get(**query):
        found[(f.entities["subject"], f.entities.get("session"))].append(f)
    picked = {}
    for key, files in found.items():
        files.sort(key=lambda f: ("ceagent" not in f.entities, f.path))
        picked[key] = Path(files[0].path)
        if len(files) > 1:
            LOG.warning(
                'sub-%s%s: %d FLAIR images, using %s (choose with a "flair" filter)',
                key[0],
                f"_ses-{key[1]}" if key[1] else "",
                len(files),
                picked[key].name,
            )
    return picked


def _session_key(ses: str | None) -> tuple[int, str]:
    return (0, "") if ses is None else (1, ses)


def _pick_head(candidates: Iterable[tuple[str | None, int, Path]], ses: str | None) -> Path | None:
    """Same session first, then session-less, then other sessions (T1w before T2w)."""

    def key(c: tuple[str | None, int, Path]) -> tuple[int, tuple[int, str], int, str]:
        c_ses, rank, path = c
        where = 0 if c_ses == ses else (1 if c_ses is None else 2)
        return (where, rank, _session_key(c_ses), str(path))

    ranked = sorted(candidates, key=key)
    return ranked[0][2] if ranked else None


def _describe(subjects: Sequence[str], sessions: Sequence[str]) -> str:
    shown = ", ".join(f"sub-{s}" for s in subjects[:5]) + (" ..." if len(subjects) > 5 else "")
    if sessions:
        shown += " (" + ", ".join(f"ses-{s}" for s in sessions) + ")"
    return shown


# --------------------------------------------------------------------------- landmarks
Landmarks = dict[tuple[str, str | None], dict[str, tuple[float, float, float]]]
"""``{(subject, session or None): {"left"|"right": (x, y, z)}}`` in scanner RAS+ mm."""


def load_landmarks(path: str | Path) -> Landmarks:
    """Read an ear-centre TSV: ``participant_id [session_id] side x y z``.

    ``participant_id``/``session_id`` with or without ``sub-``/``ses-`` (``n/a`` or empty
    session = any session); ``side`` is ``left`` or ``right``; ``x y z`` are the ear centre in
    the scanner (NIfTI world, RAS+) mm of that session's images. Raises
    :class:`FileNotFoundError` or :class:`LandmarksError` (one line naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"landmarks file not found: {path}")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        columns = [c.strip() for c in reader.fieldnames or []]
        if len(columns) == 1 and "," in columns[0]:
            raise LandmarksError(f"landmarks file {path}: not tab-separated (commas found)")
        missing = [c for c in ("participant_id", "side", "x", "y", "z") if c not in columns]
        if missing:
            raise LandmarksError(
                f"landmarks file {path}: missing column(s) {', '.join(missing)} "
                "(expected participant_id, [session_id,] side, x, y, z; tab-separated)"
            )
        table: Landmarks = {}
        for lineno, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            where = f"landmarks file {path}: line {lineno}"
            sub = row["participant_id"].removeprefix("sub-")
            if not LABEL_RE.match(sub):
                raise LandmarksError(f"{where}: invalid participant_id {row['participant_id']!r}")
            ses_raw = row.get("session_id", "")
            ses = None if ses_raw in ("", "n/a") else ses_raw.removeprefix("ses-")
            if ses is not None and not LABEL_RE.match(ses):
                raise LandmarksError(f"{where}: invalid session_id {ses_raw!r}")
            side = row["side"].lower()
            if side not in SIDES:
                raise LandmarksError(f"{where}: side must be left or right, not {row['side']!r}")
            try:
                xyz = tuple(float(row[c]) for c in ("x", "y", "z"))
            except ValueError:
                raise LandmarksError(f"{where}: x, y, z must be numbers") from None
            if not all(math.isfinite(v) for v in xyz):
                raise LandmarksError(f"{where}: x, y, z must be finite")
            ears = table.setdefault((sub, ses), {})
            if side in ears:
                raise LandmarksError(f"{where}: duplicate {side} ear for sub-{sub}")
            ears[side] = (xyz[0], xyz[1], xyz[2])
    if not table:
        raise LandmarksError(f"landmarks file {path}: no rows")
    return table


def landmarks_for(
    table: Landmarks, subject: str, session: str | None
) -> dict[str, tuple[float, float, float]]:
    """Ear centres of one participant/session (a session-less row applies to every session)."""
    return dict(table.get((subject, session)) or table.get((subject, None)) or {})
