"""Group level, plots: aggregate figures (histograms, one scatter, line collections)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ievnet_bids import qc as Q
from ievnet_bids.reports import figures as F
from ievnet_bids.reports.group.read import SIDES, numeric
from ievnet_bids.reports.group.statistics import session_key

METRIC_LABELS = {
    "dice": "Dice",
    "hausdorff_mm": "HD (mm)",
    "hd95_mm": "HD95 (mm)",
    "msd_mm": "MSD (mm)",
}
MAX_LINES = 300


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

    sessions = sorted(pairs["session_id"].unique(), key=session_key)
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
