"""Group level helpers: gather the participant outputs, evaluate, test, plot.

Everything is read from the participant outputs (``*_desc-tfs_volumes.tsv`` and the QC records
``*_desc-tfs_qc.json``), never from the raw data. Plots aggregate (histograms, one scatter,
line collections), so 1 or 5,000 subjects give the same handful of figures.

Statistics (all two-sided, from :mod:`ievnet_bids.metrics`):

* left vs right volume: paired Wilcoxon signed-rank over subjects, one pair per subject (its
  first session and slab, so repeated sessions do not count twice);
* evaluation mode (reference masks): per dataset and side mean ± SD of Dice, HD, HD95 and MSD
  (Table 2 style; infinite distances are counted, not averaged); Kruskal–Wallis across datasets
  and pairwise Mann–Whitney U with Benjamini–Hochberg FDR on per-ear values; paired Wilcoxon
  left vs right Dice over subjects/sessions/slabs with both ears.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ievnet_bids import metrics as M
from ievnet_bids.bids import derivatives as D
from ievnet_bids.reports import figures as F
from ievnet_bids.reports import qc as Q

SIDES = ("left", "right")
EVAL_METRICS = ("dice", "hausdorff_mm", "hd95_mm", "msd_mm")
METRIC_LABELS = {
    "dice": "Dice",
    "hausdorff_mm": "HD (mm)",
    "hd95_mm": "HD95 (mm)",
    "msd_mm": "MSD (mm)",
}
GROUP_COLUMNS = (
    "participant_id",
    "session_id",
    "slab",
    "dataset",
    "side",
    "volume_mm3",
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
    "model",
    "model_sha256",
    "report",
)
OUTLIER_Z = 3.5
MAX_LINES = 300
MAX_TABLE_ROWS = 300


# --------------------------------------------------------------------------- gathering
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
    the complete set: the table's flags plus those of the QC record.
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


# --------------------------------------------------------------------------- per-pair views
def paired_volumes(frame: pd.DataFrame) -> pd.DataFrame:
    """Left and right volume side by side, one row per subject/session/slab, with the AI."""
    if frame.empty:
        return pd.DataFrame(
            columns=["participant_id", "session_id", "slab", "left", "right", "ai_percent"]
        )
    keys = ["participant_id", "session_id", "slab"]
    vol = frame.assign(volume=numeric(frame, "volume_mm3"))
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
    key = pairs["session_id"].map(_session_key)
    return (
        pairs.assign(_k=key)
        .sort_values(["participant_id", "_k", "slab"])
        .drop_duplicates("participant_id")
        .drop(columns="_k")
    )


def _session_key(ses: str) -> tuple[int, float, str]:
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


# --------------------------------------------------------------------------- evaluation
def index_references(reference_dir: Path) -> dict[str, Path]:
    """``{file name: path}`` of every NIfTI under ``reference_dir`` (first one wins)."""
    found: dict[str, Path] = {}
    for path in sorted(Path(reference_dir).rglob("*.nii*")):
        if path.is_file() and path.name.endswith((".nii", ".nii.gz")):
            found.setdefault(path.name, path)
    return found


def mask_name(row: Mapping[str, Any]) -> str:
    """Our mask file name of a group row (``<entities>_space-orig_label-TFS_desc-<side>_mask``)."""
    return D.sibling(row["_source"], D.TFS_MASK, desc=row["side"]).name


def evaluate_pair(pred_path: Path, ref_path: Path) -> dict[str, Any]:
    """Metrics of one predicted mask against its reference (physical mm from the header)."""
    import nibabel as nib

    pred_img, ref_img = nib.load(str(pred_path)), nib.load(str(ref_path))
    pred = np.asanyarray(pred_img.dataobj)
    ref = np.asanyarray(ref_img.dataobj)
    pred, ref = pred.reshape(pred.shape[:3]), ref.reshape(ref.shape[:3])
    if pred.shape != ref.shape:
        return {"eval_note": f"shape {pred.shape} ≠ reference {ref.shape}"}
    if not np.allclose(pred_img.affine, ref_img.affine, atol=1e-3):
        return {"eval_note": "affine differs from the reference"}
    res = M.evaluate_case(pred != 0, ref != 0, spacing=pred_img.header.get_zooms()[:3])
    return {**{k: res[k] for k in EVAL_METRICS}, "volume_ref_mm3": res["volume_ref_mm3"]}


def _evaluate_job(args: tuple[str, str]) -> dict[str, Any]:
    try:
        return evaluate_pair(Path(args[0]), Path(args[1]))
    except Exception as err:  # a broken file is reported in its row
        return {"eval_note": f"{type(err).__name__}: {err}"}


def evaluate_rows(
    frame: pd.DataFrame, output_dir: Path, reference_dir: Path, nprocs: int = 1
) -> pd.DataFrame:
    """Add Dice, HD, HD95, MSD, reference volume and ``eval_note`` to each row."""
    refs = index_references(reference_dir)
    jobs: list[tuple[int, tuple[str, str]]] = []
    notes: dict[int, dict[str, Any]] = {}
    for i, row in enumerate(frame.to_dict(orient="records")):
        name = mask_name(row)
        pred = Path(output_dir) / Path(row["_source"]).parent / name
        if name not in refs:
            notes[i] = {"eval_note": "no reference mask"}
        elif not pred.is_file():
            notes[i] = {"eval_note": "predicted mask missing"}
        else:
            jobs.append((i, (str(pred), str(refs[name]))))
    if nprocs > 1 and len(jobs) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=min(nprocs, len(jobs))) as pool:
            results = list(pool.map(_evaluate_job, [j for _, j in jobs], chunksize=4))
    else:
        results = [_evaluate_job(j) for _, j in jobs]
    for (i, _), res in zip(jobs, results, strict=True):
        notes[i] = res
    cols = [*EVAL_METRICS, "volume_ref_mm3", "eval_note"]
    extra = pd.DataFrame([notes.get(i, {}) for i in range(len(frame))], columns=cols)
    extra["eval_note"] = extra["eval_note"].fillna("")
    return pd.concat([frame.reset_index(drop=True), extra], axis=1)


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


# --------------------------------------------------------------------------- plots
def _hist_bins(values: np.ndarray, n: int = 30) -> np.ndarray:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return np.linspace(0, 1, 2)
    lo, hi = float(v.min()), float(v.max())
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1
    return np.linspace(lo, hi, min(n, max(5, int(np.sqrt(v.size)) + 1)) + 1)


def plot_volumes(frame: pd.DataFrame, pairs: pd.DataFrame, out: Path) -> Path:
    """Volume distribution per side (histogram + box plot) and the asymmetry index."""
    plt = F._plt()
    vol = numeric(frame, "volume_mm3")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.0), gridspec_kw={"width_ratios": [2, 1, 1.6]})
    data = {s: vol[frame["side"] == s].dropna().to_numpy() for s in SIDES}
    bins = _hist_bins(np.concatenate(list(data.values())) if data else np.array([]))
    for side in SIDES:
        axes[0].hist(
            data[side],
            bins=bins,
            alpha=0.55,
            color=F.SIDE_COLOURS[side],
            label=f"{side} (n={data[side].size})",
        )
    lo, hi = Q.EXPECTED_VOLUME_MM3
    for x in (lo, hi):
        axes[0].axvline(x, color="grey", ls=":", lw=1)
    axes[0].set_xlabel("TFS volume (mm³)")
    axes[0].set_ylabel("ears")
    axes[0].legend(frameon=False)
    axes[0].set_title("Volume per side (dotted: expected range)", fontsize=10)
    present = [s for s in SIDES if data[s].size]
    if present:
        box = axes[1].boxplot(
            [data[s] for s in present],
            tick_labels=present,
            patch_artist=True,
            widths=0.55,
            showfliers=max(v.size for v in data.values()) <= 500,
        )
        for patch, side in zip(box["boxes"], present, strict=True):
            patch.set_facecolor(F.SIDE_COLOURS[side])
            patch.set_alpha(0.5)
    axes[1].set_ylabel("TFS volume (mm³)")
    axes[1].set_title("Box plot", fontsize=10)
    ai = pairs["ai_percent"].dropna().to_numpy() if not pairs.empty else np.array([])
    axes[2].hist(ai, bins=_hist_bins(ai), color="#555", alpha=0.7)
    axes[2].axvline(0, color="k", lw=0.8)
    axes[2].set_xlabel("asymmetry index 100·(L−R)/mean (%)")
    axes[2].set_title(f"Asymmetry (n={ai.size})", fontsize=10)
    fig.tight_layout()
    return F.save_figure(fig, out, dpi=80)


def plot_left_right(pairs: pd.DataFrame, flagged: set[tuple[str, str, str]], out: Path) -> Path:
    """Left vs right volume, identity line; flagged pairs in orange. Hexbin above 3,000."""
    plt = F._plt()
    fig, ax = plt.subplots(figsize=(5.6, 5.2))
    ok = pairs.dropna(subset=list(SIDES)) if not pairs.empty else pairs
    x = ok["left"].to_numpy(dtype=float) if not ok.empty else np.array([])
    y = ok["right"].to_numpy(dtype=float) if not ok.empty else np.array([])
    lim = [0.0, 1.0]
    if x.size:
        lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        pad = 0.05 * (hi - lo) + 1.0
        lim = [lo - pad, hi + pad]
    if x.size > 3000:
        hb = ax.hexbin(x, y, gridsize=60, cmap="viridis", mincnt=1, extent=(*lim, *lim))
        fig.colorbar(hb, ax=ax, label="pairs")
    elif x.size:
        keys = list(zip(ok["participant_id"], ok["session_id"], ok["slab"], strict=True))
        bad = np.array([k in flagged for k in keys])
        ax.scatter(x[~bad], y[~bad], s=14, alpha=0.7, color="#37474f", label="no flag")
        if bad.any():
            ax.scatter(x[bad], y[bad], s=18, alpha=0.8, color="#ef6c00", label="QC flag")
        ax.legend(frameon=False, loc="upper left")
    ax.plot(lim, lim, color="k", lw=0.8, ls="--")
    ax.set_xlim(lim)
    ax.set_ylim(lim)
    ax.set_aspect("equal")
    ax.set_xlabel("left TFS volume (mm³)")
    ax.set_ylabel("right TFS volume (mm³)")
    ax.set_title(f"Left vs right (n={x.size}; dashed: identity)", fontsize=10)
    fig.tight_layout()
    return F.save_figure(fig, out, dpi=80)


def plot_longitudinal(pairs: pd.DataFrame, out: Path) -> Path | None:
    """Volume per session, one line per subject and side (only when sessions repeat)."""
    if pairs.empty:
        return None
    counts = pairs.groupby("participant_id")["session_id"].nunique()
    multi = counts[counts > 1].index
    if len(multi) == 0:
        return None
    plt = F._plt()
    from matplotlib.collections import LineCollection

    sessions = sorted(pairs["session_id"].unique(), key=_session_key)
    pos = {s: i for i, s in enumerate(sessions)}
    shown = multi
    if len(multi) > MAX_LINES:  # a fixed random sample keeps the plot readable
        pick = np.random.default_rng(0).choice(len(multi), MAX_LINES, replace=False)
        shown = multi[np.sort(pick)]
    everyone = pairs[pairs["participant_id"].isin(multi)]
    data = pairs[pairs["participant_id"].isin(shown)]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.0), sharey=True)
    alpha = float(np.clip(8.0 / np.sqrt(len(shown)), 0.08, 0.9))
    data = data.assign(_x=data["session_id"].map(pos)).sort_values(["participant_id", "slab", "_x"])
    x = data["_x"].to_numpy(dtype=float)
    group = (data["participant_id"].astype(str) + "|" + data["slab"].astype(str)).to_numpy()
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    bounds = list(zip(starts, [*starts[1:], len(group)], strict=True))
    for ax, side in zip(axes, SIDES, strict=True):
        y = data[side].to_numpy(dtype=float)
        segs = []
        for a, b in bounds:
            ok = np.isfinite(y[a:b])
            if ok.sum() > 1:
                segs.append(np.column_stack([x[a:b][ok], y[a:b][ok]]))
        ax.add_collection(LineCollection(segs, colors=F.SIDE_COLOURS[side], alpha=alpha, lw=1))
        quart = everyone.groupby("session_id")[side].quantile([0.25, 0.5, 0.75]).unstack()
        xs = np.asarray([pos[s] for s in quart.index], dtype=float)
        order = np.argsort(xs)
        q = quart.to_numpy()[order]
        ax.fill_between(xs[order], q[:, 0], q[:, 2], color="k", alpha=0.12, lw=0, label="IQR")
        ax.plot(xs[order], q[:, 1], "k-o", lw=2, ms=4, label="median")
        ax.set_xticks(range(len(sessions)), sessions, rotation=45 if len(sessions) > 8 else 0)
        ax.set_xlim(-0.3, len(sessions) - 0.7)
        sample = f" ({len(shown)} of {len(multi)} drawn)" if len(shown) < len(multi) else ""
        ax.set_title(f"{side} ear: subjects with several sessions{sample}", fontsize=10)
        ax.set_xlabel("session")
        ax.legend(frameon=False)
        ax.autoscale_view(scalex=False)
    axes[0].set_ylabel("TFS volume (mm³)")
    fig.tight_layout()
    return F.save_figure(fig, out, dpi=80)


def plot_evaluation(frame: pd.DataFrame, out: Path) -> Path | None:
    """Dice and HD95 per dataset and side (box plots)."""
    data = frame[frame["dice"].notna()] if "dice" in frame else frame.iloc[0:0]
    if data.empty:
        return None
    plt = F._plt()
    datasets = sorted(data["dataset"].unique())
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    for ax, metric in zip(axes, ("dice", "hd95_mm"), strict=True):
        vals, labels, colours = [], [], []
        for ds in datasets:
            for side in SIDES:
                v = data[(data["dataset"] == ds) & (data["side"] == side)][metric].to_numpy(float)
                v = v[np.isfinite(v)]
                vals.append(v)
                labels.append(f"{ds}\n{side}" if len(datasets) > 1 else side)
                colours.append(F.SIDE_COLOURS[side])
        box = ax.boxplot(vals, tick_labels=labels, patch_artist=True, widths=0.6)
        for patch, colour in zip(box["boxes"], colours, strict=True):
            patch.set_facecolor(colour)
            patch.set_alpha(0.5)
        ax.set_title(METRIC_LABELS[metric], fontsize=10)
    fig.tight_layout()
    return F.save_figure(fig, out, dpi=80)


def clean(value: Any) -> Any:
    """JSON/HTML-friendly value: NaN → None, numpy scalars → Python."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
