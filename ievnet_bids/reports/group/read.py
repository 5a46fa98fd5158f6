"""Group level, reading: the participant outputs (volume tables and QC records) as one table."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ievnet_bids import qc as Q
from ievnet_bids.bids import derivatives as D
from ievnet_bids.outputs import HYDROPS_COLUMNS

SIDES = ("left", "right")
EVAL_METRICS = ("dice", "hausdorff_mm", "hd95_mm", "msd_mm")
GROUP_COLUMNS = (
    "participant_id",
    "session_id",
    "slab",
    "dataset",
    "side",
    "volume_mm3",
    "slab_volume_mm3",
    "n_components",
    "canal_loops",
    "euler",
    "tunnels",
    "boundary_prob",
    "centre_x_mm",
    "centre_y_mm",
    "centre_z_mm",
    "localizer",
    "refinement_moved_mm",
    "qc_flags",
    *HYDROPS_COLUMNS,
    "model",
    "model_sha256",
    "report",
)
MAX_TABLE_ROWS = 300


def find_volume_tables(
    output_dir: Path, participants: Sequence[str] = (), sessions: Sequence[str] = ()
) -> list[Path]:
    """The per-slab volume tables under ``output_dir`` (optionally only some labels)."""
    found: list[Path] = []
    for label in participants or [None]:
        found += D.find_derivatives(output_dir, D.VOLUMES, {"sub": label} if label else None)
    if sessions:
        keep = set(sessions)
        found = [p for p in found if D.source_entities(p).get("ses") in keep]
    return found


def _flag_names(flags: Iterable[str]) -> str:
    order = {name: i for i, name in enumerate(Q.FLAG_NAMES)}
    unique = sorted(set(flags), key=lambda f: (order.get(f, len(order)), f))
    return ",".join(unique) or "n/a"


def read_participant_rows(
    tables: Sequence[Path], output_dir: Path, datasets: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """One row per subject/session/slab/side, the volume-table values kept verbatim (text).

    Adds ``participant_id``, ``session_id``, ``slab`` (the other entities, e.g. ``acq-space``),
    ``dataset``, the ROI-grid QC measurements of the QC record (``canal_loops``, ``euler``,
    ``tunnels``, ``boundary_prob``) and ``report`` (the subject's HTML page). ``qc_flags`` is
    the complete set: the table's flags plus those of the QC record. The hydrops columns are
    ``n/a`` for sessions without a FLAIR.
    """
    rows: list[dict[str, Any]] = []
    for path in tables:
        ent = D.source_entities(path)
        sub = f"sub-{ent['sub']}"
        slab = "_".join(f"{k}-{v}" for k, v in ent.items() if k not in ("sub", "ses")) or "n/a"
        qc_path = D.sibling(path, D.QC_RECORD)
        try:
            qc = json.loads(qc_path.read_text())
        except (OSError, json.JSONDecodeError):
            qc = {}
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                ear = qc.get("ears", {}).get(row.get("side"), {})
                topo = ear.get("topology") or {}
                flags = Q.flag_names(row.get("qc_flags"))
                flags += [f["name"] for f in ear.get("flags", [])]
                out = {
                    "participant_id": sub,
                    "session_id": f"ses-{ent['ses']}" if "ses" in ent else "n/a",
                    "slab": slab,
                    "dataset": (datasets or {}).get(sub, "n/a"),
                    **row,
                    "canal_loops": topo.get("canal_loops"),
                    "euler": topo.get("euler"),
                    "tunnels": topo.get("tunnels"),
                    "boundary_prob": ear.get("boundary_prob"),
                    "qc_flags": _flag_names(flags),
                    "report": f"{sub}.html",
                    "_source": str(path.relative_to(output_dir)),
                }
                rows.append(out)
    frame = pd.DataFrame(rows, dtype=object)  # object: integers stay integers next to n/a
    if frame.empty:
        return pd.DataFrame(columns=[*GROUP_COLUMNS, "_source"])
    for column in HYDROPS_COLUMNS:  # sessions without a FLAIR: n/a
        frame[column] = frame[column].fillna("n/a") if column in frame else "n/a"
    extra = [c for c in frame.columns if c not in GROUP_COLUMNS]
    return frame[[c for c in GROUP_COLUMNS if c in frame.columns] + extra]


def load_datasets(bids_dir: Path | None, column: str = "dataset") -> dict[str, str]:
    """``{participant_id: dataset}`` from ``participants.tsv`` (empty without the column)."""
    if bids_dir is None:
        return {}
    path = Path(bids_dir) / "participants.tsv"
    if not path.is_file():
        return {}
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        if not reader.fieldnames or column not in reader.fieldnames:
            return {}
        return {r["participant_id"]: r[column] or "n/a" for r in reader if r.get("participant_id")}


def numeric(frame: pd.DataFrame, column: str) -> pd.Series:
    """A column as floats (``n/a`` and text → NaN)."""
    if column not in frame:
        return pd.Series(np.nan, index=frame.index)
    return pd.to_numeric(frame[column], errors="coerce")


def clean(value: Any) -> Any:
    """JSON/HTML-friendly value: NaN → None, numpy scalars → Python."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
