"""Group level: ``ievnet-bids bids_dir output_dir group [--reference-dir DIR]``.

Reads the participant outputs in ``output_dir`` (never the raw data) and writes

* ``group_tfs.tsv``: one row per subject/session/slab/side: the volume-table values verbatim
  (volume, components, centres, refinement move, localizer, model hash), the ROI-grid QC
  measurements (canal loops, Euler characteristic, tunnels, boundary probability), the complete
  QC flags, the dataset (``participants.tsv`` column ``dataset``) and the subject's report; in
  evaluation mode also Dice, HD, HD95, MSD and the reference volume;
* ``group_tfs.html`` with its figures in ``figures/``: volume distributions per side, left vs
  right with the identity line, asymmetry index, per-session lines (when sessions repeat), the
  outlier table linking to each ``sub-XX.html``, the paired Wilcoxon of left vs right and, in
  evaluation mode, the Table-2 summary per dataset with Kruskal–Wallis, pairwise Mann–Whitney U
  (BH-FDR) and left-vs-right Wilcoxon tests. Statistics: :mod:`ievnet_bids.reports.group`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ievnet_bids import qc as Q
from ievnet_bids.bids import derivatives as D
from ievnet_bids.config import RunConfig
from ievnet_bids.reports import group as G
from ievnet_bids.reports.participant import REPORT_BIDSIGNORE

LOG = logging.getLogger("ievnet_bids")
GROUP_TSV = "group_tfs.tsv"
GROUP_HTML = "group_tfs.html"
FIGURE_DIR = "figures"


def _side_summary(frame: pd.DataFrame) -> list[dict[str, Any]]:
    rows = []
    vol = G.numeric(frame, "volume_mm3")
    for side in G.SIDES:
        v = vol[frame["side"] == side].dropna().to_numpy()
        if v.size == 0:
            continue
        q1, med, q3 = np.percentile(v, [25, 50, 75])
        rows.append(
            {
                "side": side,
                "n": int(v.size),
                "mean": float(v.mean()),
                "sd": float(v.std(ddof=1)) if v.size > 1 else None,
                "median": float(med),
                "q1": float(q1),
                "q3": float(q3),
                "min": float(v.min()),
                "max": float(v.max()),
            }
        )
    return rows


def _session_summary(pairs: pd.DataFrame) -> list[dict[str, Any]]:
    if pairs.empty or pairs["session_id"].nunique() < 2:
        return []
    rows = []
    for ses, part in sorted(pairs.groupby("session_id"), key=lambda kv: G.session_key(kv[0])):
        rows.append(
            {
                "session": ses,
                "n": len(part),
                "left": G.clean(part["left"].median()),
                "right": G.clean(part["right"].median()),
                "ai": G.clean(part["ai_percent"].median()),
            }
        )
    return rows


def _outlier_rows(frame: pd.DataFrame, output_dir: Path) -> tuple[list[dict[str, Any]], int]:
    table = G.outliers(frame)
    total = len(table)
    rows = []
    for rec in table.head(G.MAX_TABLE_ROWS).to_dict(orient="records"):
        report = rec["report"]
        rows.append(
            {
                "participant_id": rec["participant_id"],
                "session_id": rec["session_id"],
                "slab": rec["slab"],
                "side": rec["side"],
                "volume": G.clean(rec["volume"]),
                "ai": G.clean(rec["ai_percent"]),
                "reasons": rec["reasons"],
                "report": report if (output_dir / report).is_file() else None,
            }
        )
    return rows, total


def _els_evaluation(frame: pd.DataFrame) -> dict[str, Any] | None:
    """ELS Dice and ELS% error against the reference masks (when any were evaluated)."""
    if "els_dice" not in frame:
        return None
    dice = G.numeric(frame, "els_dice").dropna()
    err = (G.numeric(frame, "els_percent") - G.numeric(frame, "els_percent_ref")).dropna()
    return {
        "n": int(dice.size),
        "dice_mean": G.clean(dice.mean()),
        "dice_min": G.clean(dice.min()),
        "percent_mae": G.clean(err.abs().mean()),
        "percent_bias": G.clean(err.mean()),
        "n_percent": int(err.size),
    }


def write_group_outputs(config: RunConfig, frame: pd.DataFrame, seconds_read: float) -> Path:
    """``group_tfs.tsv``, the figures and ``group_tfs.html`` from the gathered rows."""
    from ievnet_bids.reports.html import render
    from ievnet_bids.reports.participant import versions

    out = config.output_dir
    t0 = time.perf_counter()
    D.write_bidsignore(out, extra=REPORT_BIDSIGNORE)
    columns = [c for c in frame.columns if not c.startswith("_")]
    D.write_tsv_atomic(frame, out / GROUP_TSV, columns=columns)
    pairs = G.paired_volumes(frame)
    flagged = {
        (r.participant_id, r.session_id, r.slab)
        for r in frame.itertuples(index=False)
        if r.qc_flags not in ("n/a", "")
    }
    figdir = out / FIGURE_DIR
    figures: dict[str, str] = {}
    for name, draw in (
        ("volumes", lambda p: G.plot_volumes(frame, pairs, p)),
        ("leftright", lambda p: G.plot_left_right(pairs, flagged, p)),
        ("longitudinal", lambda p: G.plot_longitudinal(pairs, p)),
        ("evaluation", lambda p: G.plot_evaluation(frame, p)),
    ):
        path = figdir / f"group_tfs_{name}.png"
        if draw(path) is not None:
            figures[name] = path.relative_to(out).as_posix()
        else:
            path.unlink(missing_ok=True)
    baseline = G.first_per_subject(pairs)
    wilcoxon = G.wilcoxon_left_right(baseline["left"], baseline["right"])
    ai = pairs["ai_percent"].dropna()
    outlier_rows, n_outliers = _outlier_rows(frame, out)
    flags = frame["qc_flags"].str.split(",").explode()
    flag_counts = flags[flags != "n/a"].value_counts().to_dict()
    evaluation = None
    if "dice" in frame:
        evaluation = {
            "summary": G.evaluation_summary(frame),
            "tests": G.evaluation_tests(frame),
            "n_missing": int(frame["dice"].isna().sum()),
            "notes": frame.loc[frame["eval_note"] != "", "eval_note"].value_counts().to_dict(),
            "reference_dir": str(config.reference_dir),
        }
    html = render(
        "group.html.j2",
        n_rows=len(frame),
        n_subjects=int(frame["participant_id"].nunique()),
        n_sessions=int(frame[["participant_id", "session_id"]].drop_duplicates().shape[0]),
        datasets=sorted(frame["dataset"].unique()),
        models=sorted(frame.get("model_sha256", pd.Series(dtype=str)).dropna().unique()),
        side_summary=_side_summary(frame),
        session_summary=_session_summary(pairs),
        ai={
            "n": int(ai.size),
            "mean": G.clean(ai.mean()),
            "sd": G.clean(ai.std(ddof=1)),
            "median": G.clean(ai.median()),
        },
        wilcoxon=wilcoxon,
        n_baseline=len(baseline),
        figures=figures,
        outliers=outlier_rows,
        n_outliers=n_outliers,
        flag_counts=flag_counts,
        flag_help=Q.FLAG_HELP,
        evaluation=evaluation,
        hydrops=G.hydrops_summary(frame),
        els_evaluation=_els_evaluation(frame),
        metric_labels=G.METRIC_LABELS,
        tsv=GROUP_TSV,
        versions=versions(),
        generated=time.strftime("%Y-%m-%d %H:%M:%S"),
        seconds={"read": round(seconds_read, 2), "write": round(time.perf_counter() - t0, 2)},
    )
    return D.write_text_atomic(html, out / GROUP_HTML)


def run_group_level(config: RunConfig) -> dict[str, str]:
    """Gather, evaluate (with ``config.reference_dir``), test and report; returns failures."""
    t0 = time.perf_counter()
    out = config.output_dir
    tables = G.find_volume_tables(out, config.participant_labels, config.session_labels)
    failures: dict[str, str] = {}
    seen = {D.source_entities(p)["sub"] for p in tables}
    for label in config.participant_labels:
        if label not in seen:
            failures[f"sub-{label}"] = f"no participant outputs in {out / f'sub-{label}'}"
    if not tables:
        failures["group"] = (
            f"no participant outputs ({D.VOLUMES.pattern()}) in {out}: "
            "run the participant level first"
        )
        return failures
    frame = G.read_participant_rows(tables, out, G.load_datasets(config.bids_dir))
    LOG.info("group: %d rows from %d volume tables", len(frame), len(tables))
    if config.reference_dir is not None:
        frame = G.evaluate_rows(frame, out, config.reference_dir, nprocs=config.nprocs)
        n_eval = int(frame["dice"].notna().sum())
        LOG.info("group: %d of %d ears evaluated against %s", n_eval, len(frame),
                 config.reference_dir)  # fmt: skip
        if n_eval == 0:
            LOG.warning("group: no reference mask matched (names like %s)", G.mask_name(
                frame.iloc[0].to_dict()))  # fmt: skip
        if G.numeric(frame, "els_percent").notna().any():
            frame = G.evaluate_els_rows(frame, out, config.reference_dir)
    html = write_group_outputs(config, frame, time.perf_counter() - t0)
    LOG.info("group: %s and %s written in %.1f s", out / GROUP_TSV, html, time.perf_counter() - t0)
    return failures
