"""Group level, statistics: left/right pairs, robust outliers, Wilcoxon, evaluation summaries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ievnet_bids import metrics as M
from ievnet_bids.reports.group.read import EVAL_METRICS, SIDES, clean, numeric

OUTLIER_Z = 3.5


def paired_volumes(frame: pd.DataFrame, column: str = "volume_mm3") -> pd.DataFrame:
    """Left and right ``column`` (the volume) side by side, one row per subject/session/slab,
    with the asymmetry index."""
    if frame.empty:
        return pd.DataFrame(
            columns=["participant_id", "session_id", "slab", "left", "right", "ai_percent"]
        )
    keys = ["participant_id", "session_id", "slab"]
    vol = frame.assign(volume=numeric(frame, column))
    vol[keys] = vol[keys].fillna("n/a")
    wide = vol.pivot_table(
        index=["participant_id", "session_id", "slab"],
        columns="side",
        values="volume",
        aggfunc="first",
    )
    wide = wide.reindex(columns=list(SIDES)).reset_index()
    wide.columns.name = None
    mean = (wide["left"] + wide["right"]) / 2.0
    wide["ai_percent"] = np.where(mean > 0, 100.0 * (wide["left"] - wide["right"]) / mean, np.nan)
    return wide


def first_per_subject(pairs: pd.DataFrame) -> pd.DataFrame:
    """The first session (and slab) of every subject."""
    if pairs.empty:
        return pairs
    key = pairs["session_id"].map(session_key)
    return (
        pairs.assign(_k=key)
        .sort_values(["participant_id", "_k", "slab"])
        .drop_duplicates("participant_id")
        .drop(columns="_k")
    )


def session_key(ses: str) -> tuple[int, float, str]:
    """Sort key of a ``ses-<label>`` value: n/a, then numeric labels in order, then the rest."""
    label = str(ses).removeprefix("ses-")
    if label == "n/a":
        return (0, 0.0, "")
    return (1, float(label), label) if label.isdigit() else (2, 0.0, label)


def wilcoxon_left_right(left: Sequence[float], right: Sequence[float]) -> dict[str, Any]:
    """Paired Wilcoxon of finite pairs; ``{"n", "statistic", "pvalue", "note"}``."""
    a, b = np.asarray(left, float), np.asarray(right, float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    out: dict[str, Any] = {"n": int(a.size), "statistic": None, "pvalue": None, "note": ""}
    if a.size < 2:
        out["note"] = f"needs at least 2 pairs (have {a.size})"
        return out
    if np.all(a == b):
        out["note"] = "all differences are zero"
        return out
    res = M.wilcoxon_paired(a, b)
    out["statistic"], out["pvalue"] = res.statistic, res.pvalue
    return out


def robust_z(values: pd.Series) -> pd.Series:
    """(x − median) / (1.4826 · MAD); 0 where the MAD is 0."""
    med = values.median()
    mad = 1.4826 * (values - med).abs().median()
    if not np.isfinite(mad) or mad == 0:
        return pd.Series(0.0, index=values.index)
    return (values - med) / mad


def outliers(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows with a QC flag or a volume / asymmetry more than 3.5 robust SDs from the median."""
    if frame.empty:
        return frame.assign(reasons=[])
    vol = numeric(frame, "volume_mm3")
    z = pd.Series(0.0, index=frame.index)
    for side in SIDES:
        sel = frame["side"] == side
        if sel.sum() >= 5:
            z[sel] = robust_z(vol[sel])
    pairs = paired_volumes(frame)
    ai_z = robust_z(pairs["ai_percent"]) if len(pairs) >= 5 else pairs["ai_percent"] * 0
    key = ["participant_id", "session_id", "slab"]
    ai = frame[key].merge(pairs[[*key, "ai_percent"]].assign(ai_z=ai_z.to_numpy()), how="left")
    flag_text = frame["qc_flags"].astype(str).str.replace(",", ", ").to_numpy()
    z_values = z.to_numpy(dtype=float)
    ai_z_values = ai["ai_z"].to_numpy(dtype=float)
    reasons = []
    for flag, zv, av in zip(flag_text, z_values, ai_z_values, strict=True):
        why = [] if flag in ("n/a", "") else [flag]
        if abs(zv) > OUTLIER_Z:
            why.append(f"volume robust z = {zv:+.1f}")
        if abs(av) > OUTLIER_Z:
            why.append(f"asymmetry robust z = {av:+.1f}")
        reasons.append("; ".join(why))
    out = frame.assign(
        reasons=reasons,
        volume=vol,
        ai_percent=ai["ai_percent"].to_numpy(),
        severity=np.abs(z.to_numpy()) + np.abs(ai["ai_z"].fillna(0).to_numpy()),
    )
    out = out[out["reasons"] != ""]
    out = out.assign(n_flags=out["qc_flags"].map(lambda f: 0 if f == "n/a" else f.count(",") + 1))
    return out.sort_values(["n_flags", "severity"], ascending=False)


def _mean_sd(values: pd.Series) -> dict[str, Any]:
    v = values.to_numpy(dtype=float)
    finite = v[np.isfinite(v)]
    return {
        "n": int(finite.size),
        "n_inf": int(np.count_nonzero(np.isinf(v))),
        "mean": float(finite.mean()) if finite.size else None,
        "sd": float(finite.std(ddof=1)) if finite.size > 1 else None,
    }


def evaluation_summary(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Table 2: per dataset (and ``all``) and side (and ``both``), mean ± SD of each metric."""
    rows = []
    data = frame[frame["dice"].notna()] if "dice" in frame else frame.iloc[0:0]
    datasets = sorted(data["dataset"].unique()) if not data.empty else []
    for ds in [*datasets, "all"] if len(datasets) > 1 else datasets:
        sub = data if ds == "all" else data[data["dataset"] == ds]
        for side in (*SIDES, "both"):
            part = sub if side == "both" else sub[sub["side"] == side]
            if part.empty:
                continue
            rows.append(
                {
                    "dataset": ds,
                    "side": side,
                    "n": len(part),
                    **{m: _mean_sd(part[m].astype(float)) for m in EVAL_METRICS},
                }
            )
    return rows


def evaluation_tests(frame: pd.DataFrame) -> dict[str, Any]:
    """Kruskal–Wallis and pairwise Mann–Whitney U (BH-FDR) across datasets per metric, and
    the paired Wilcoxon of left vs right Dice."""
    data = frame[frame["dice"].notna()] if "dice" in frame else frame.iloc[0:0]
    out: dict[str, Any] = {"kruskal": [], "mannwhitney": [], "wilcoxon": None, "notes": []}
    groups_per_metric: dict[str, dict[str, np.ndarray]] = {}
    for metric in EVAL_METRICS:
        groups = {}
        for ds, part in data.groupby("dataset", sort=True):
            v = part[metric].to_numpy(dtype=float)
            v = v[np.isfinite(v)]
            if v.size:
                groups[str(ds)] = v
        groups_per_metric[metric] = groups
    for metric, groups in groups_per_metric.items():
        if len(groups) < 2:
            continue
        try:
            kw = M.kruskal_wallis(groups)
            out["kruskal"].append(
                {"metric": metric, "k": len(groups), "h": kw.statistic, "p": kw.pvalue}
            )
        except ValueError as err:
            out["notes"].append(f"Kruskal–Wallis {metric}: {err}")
            continue
        pairs = M.mann_whitney_pairwise(groups)
        for rec in pairs.to_dict(orient="records"):
            out["mannwhitney"].append({"metric": metric, **rec})
    if len(groups_per_metric["dice"]) < 2:
        out["notes"].append("one dataset only: no between-dataset tests")
    if not data.empty:
        wide = data.pivot_table(
            index=["participant_id", "session_id", "slab"],
            columns="side",
            values="dice",
            aggfunc="first",
        ).reindex(columns=list(SIDES))
        out["wilcoxon"] = wilcoxon_left_right(wide["left"], wide["right"])
    return out


HYDROPS_MEASURES: tuple[tuple[str, str], ...] = (
    ("els_percent", "whole ear"),
    ("cochlea_els_percent", "cochlea"),
    ("vestibule_els_percent", "vestibule"),
)


def hydrops_summary(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """ELS% per structure: mean ± SD and median per side, and left vs right over subjects
    (first session and slab each): mean difference L − R in percentage points and the paired
    Wilcoxon. Empty when no ear has an ELS% (no FLAIR in the dataset)."""
    rows: list[dict[str, Any]] = []
    for column, name in HYDROPS_MEASURES:
        if column not in frame:
            continue
        values = numeric(frame, column)
        if not values.notna().any():
            continue
        row: dict[str, Any] = {"structure": name}
        for side in SIDES:
            v = values[frame["side"] == side].dropna()
            row[side] = {
                "n": int(v.size),
                "mean": clean(v.mean()),
                "sd": clean(v.std(ddof=1)) if v.size > 1 else None,
                "median": clean(v.median()),
            }
        pairs = first_per_subject(paired_volumes(frame, column)).dropna(subset=list(SIDES))
        diff = pairs["left"] - pairs["right"]
        row["difference"] = {
            "n": int(diff.size),
            "mean": clean(diff.mean()),
            "sd": clean(diff.std(ddof=1)) if diff.size > 1 else None,
        }
        row["wilcoxon"] = wilcoxon_left_right(pairs["left"], pairs["right"])
        rows.append(row)
    return rows
