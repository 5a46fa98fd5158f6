"""Group level on synthetic participant outputs: table, statistics, evaluation mode, CLI."""

from __future__ import annotations

import csv
import itertools
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fake_outputs import write_mask, write_outputs, write_unit
from scipy import stats

from ievnet_bids import metrics as M
from ievnet_bids.cli.run import main
from ievnet_bids.config import RunConfig
from ievnet_bids.group import GROUP_HTML, GROUP_TSV, run_group_level
from ievnet_bids.reports import group as G
from ievnet_bids.reports.html import missing_links


def _config(out: Path, bids: Path | None = None, **kw) -> RunConfig:
    return RunConfig(
        bids_dir=bids or out.parent / "bids", output_dir=out, analysis_level="group", **kw
    )


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


@pytest.fixture
def outputs(tmp_path) -> Path:
    """sub-01 (2 sessions, a flag in ses-2), sub-02 and sub-03 (no session)."""
    out = tmp_path / "out"
    rng = np.random.default_rng(3)
    write_unit(out, "01", "1", volumes={"left": 250.5, "right": 240.25}, rng=rng)
    write_unit(
        out,
        "01",
        "2",
        volumes={"left": 252.0, "right": 610.0},
        rng=rng,
        flags={"right": ["volume_out_of_range", "missing_canal_loop"]},
    )
    write_unit(out, "02", None, volumes={"left": 199.0, "right": 205.5}, rng=rng)
    write_unit(out, "03", None, volumes={"left": 301.0, "right": 280.0}, rng=rng)
    return out


def test_group_tsv_values_equal_the_participant_tables(outputs):
    assert run_group_level(_config(outputs)) == {}
    group = _read(outputs / GROUP_TSV)
    tables = sorted(outputs.glob("sub-*/**/anat/*_desc-tfs_volumes.tsv"))
    assert len(group) == 2 * len(tables) == 8
    by_key = {(r["participant_id"], r["session_id"], r["side"]): r for r in group}
    for table in tables:
        sub = table.name.split("_")[0]
        ses = next((p for p in table.name.split("_") if p.startswith("ses-")), "n/a")
        for row in _read(table):
            g = by_key[(sub, ses, row["side"])]
            for column, value in row.items():
                if column == "qc_flags":  # group flags = table flags + ROI-grid flags
                    assert set(value.split(",")) - {"n/a"} <= set(g[column].split(","))
                else:
                    assert g[column] == value, (table.name, column)
    flagged = by_key[("sub-01", "ses-2", "right")]
    assert flagged["qc_flags"] == "volume_out_of_range,missing_canal_loop"
    assert flagged["canal_loops"] == "2" and flagged["report"] == "sub-01.html"
    html = (outputs / GROUP_HTML).read_text()
    assert "Sessions" in html and "Outliers (1)" in html
    assert missing_links(outputs / GROUP_HTML) == []  # sub-01.html not written here: no link


def test_paired_volumes_asymmetry_and_wilcoxon(outputs):
    run_group_level(_config(outputs))
    frame = pd.read_csv(outputs / GROUP_TSV, sep="\t", dtype=str, keep_default_na=False)
    pairs = G.paired_volumes(frame)
    row = pairs[(pairs["participant_id"] == "sub-02")].iloc[0]
    assert row["ai_percent"] == pytest.approx(100 * (199.0 - 205.5) / 202.25)
    base = G.first_per_subject(pairs)
    assert list(base["session_id"]) == ["ses-1", "n/a", "n/a"]
    res = G.wilcoxon_left_right(base["left"], base["right"])
    ref = stats.wilcoxon(base["left"], base["right"])
    assert res["n"] == 3 and res["pvalue"] == pytest.approx(ref.pvalue)


def test_one_subject_and_participant_filter(outputs):
    assert run_group_level(_config(outputs, participant_labels=("02",))) == {}
    group = _read(outputs / GROUP_TSV)
    assert {r["participant_id"] for r in group} == {"sub-02"}
    html = (outputs / GROUP_HTML).read_text()
    assert "needs at least 2 pairs" in html
    failures = run_group_level(_config(outputs, participant_labels=("02", "09")))
    assert list(failures) == ["sub-09"]


def test_no_participant_outputs_is_a_failure(tmp_path):
    failures = run_group_level(_config(tmp_path / "empty"))
    assert "run the participant level first" in failures["group"]


def test_evaluation_statistics_match_scipy():
    """A known table: Table-2 means, Kruskal–Wallis, Mann–Whitney U + BH, Wilcoxon L/R."""
    rng = np.random.default_rng(7)
    rows = []
    for ds, shift in (("A", 0.0), ("B", -0.03), ("C", -0.08)):
        for s in range(8):
            for side in G.SIDES:
                dice = 0.9 + shift + rng.normal(0, 0.02) + (0.01 if side == "left" else 0)
                rows.append(
                    {
                        "dataset": ds,
                        "participant_id": f"sub-{ds}{s}",
                        "session_id": "n/a",
                        "slab": "acq-space",
                        "side": side,
                        "dice": dice,
                        "hausdorff_mm": rng.uniform(0.5, 3),
                        "hd95_mm": rng.uniform(0.2, 1.0),
                        "msd_mm": rng.uniform(0.05, 0.3),
                    }
                )
    frame = pd.DataFrame(rows)
    frame.loc[0, "hausdorff_mm"] = np.inf  # an empty prediction: counted, not averaged
    summary = {(r["dataset"], r["side"]): r for r in G.evaluation_summary(frame)}
    a_left = frame[(frame["dataset"] == "A") & (frame["side"] == "left")]
    assert summary[("A", "left")]["dice"]["mean"] == pytest.approx(a_left["dice"].mean())
    assert summary[("A", "left")]["dice"]["sd"] == pytest.approx(a_left["dice"].std(ddof=1))
    assert summary[("A", "left")]["hausdorff_mm"]["n_inf"] == 1
    assert summary[("all", "both")]["n"] == len(frame)
    tests = G.evaluation_tests(frame)
    groups = {ds: part["dice"].to_numpy() for ds, part in frame.groupby("dataset")}
    kw = next(r for r in tests["kruskal"] if r["metric"] == "dice")
    ref = stats.kruskal(*groups.values())
    assert kw["h"] == pytest.approx(ref.statistic) and kw["p"] == pytest.approx(ref.pvalue)
    mw = [r for r in tests["mannwhitney"] if r["metric"] == "dice"]
    raw = [stats.mannwhitneyu(groups[a], groups[b]) for a, b in itertools.combinations("ABC", 2)]
    assert [r["u"] for r in mw] == pytest.approx([r.statistic for r in raw])
    p = np.array([r.pvalue for r in raw])
    order = np.argsort(p)
    bh = np.minimum.accumulate((p[order] * 3 / np.arange(1, 4))[::-1])[::-1]
    expected = np.empty(3)
    expected[order] = np.minimum(bh, 1)
    assert [r["p_fdr"] for r in mw] == pytest.approx(expected)
    left = frame[frame["side"] == "left"]["dice"].to_numpy()
    right = frame[frame["side"] == "right"]["dice"].to_numpy()
    assert tests["wilcoxon"]["pvalue"] == pytest.approx(stats.wilcoxon(left, right).pvalue)
    assert tests["wilcoxon"]["n"] == 24


def test_evaluation_mode_end_to_end(tmp_path, tiny_bids):
    """--reference-dir: Dice/HD per ear equal ievnet_bids.metrics; datasets from participants."""
    bids = tiny_bids(
        tmp_path / "bids",
        [
            "sub-01/anat/sub-01_T1w.nii.gz",
            "sub-02/anat/sub-02_T1w.nii.gz",
            "sub-03/anat/sub-03_T1w.nii.gz",
        ],
    )
    (bids / "participants.tsv").write_text(
        "participant_id\tdataset\nsub-01\tsiteA\nsub-02\tsiteA\nsub-03\tsiteB\n"
    )
    out = tmp_path / "out"
    write_outputs(out, 3, masks=True, seed=5, flag_fraction=0.0)
    refs = tmp_path / "refs"
    for pred in sorted(out.rglob("*_mask.nii.gz")):
        import nibabel as nib

        data = np.asanyarray(nib.load(pred).dataobj)
        write_mask(refs / "nested" / pred.name, np.roll(data, 1, axis=0))
    missing = next(refs.rglob("sub-03_acq-space_space-orig_label-TFS_desc-right_mask.nii.gz"))
    missing.unlink()
    code = main([str(bids), str(out), "group", "--reference-dir", str(refs)])
    assert code == 0
    group = {(r["participant_id"], r["side"]): r for r in _read(out / GROUP_TSV)}
    assert group[("sub-01", "left")]["dataset"] == "siteA"
    assert group[("sub-03", "right")]["dice"] == "n/a"
    assert group[("sub-03", "right")]["eval_note"] == "no reference mask"
    import nibabel as nib

    pred_path = out / "sub-02/anat/sub-02_acq-space_space-orig_label-TFS_desc-left_mask.nii.gz"
    pred = np.asanyarray(nib.load(pred_path).dataobj) > 0
    ref = np.roll(pred, 1, axis=0)
    row = group[("sub-02", "left")]
    assert float(row["dice"]) == pytest.approx(M.dice(pred, ref))
    assert float(row["hd95_mm"]) == pytest.approx(M.hd95(pred, ref, 0.5))
    assert float(row["msd_mm"]) == pytest.approx(M.mean_surface_distance(pred, ref, 0.5))
    html = (out / GROUP_HTML).read_text()
    assert "Evaluation against reference masks" in html and "Kruskal" in html
    assert "no reference mask (1)" in html
    assert missing_links(out / GROUP_HTML) == []


def test_cli_group_level(tmp_path, tiny_bids, outputs):
    bids = tiny_bids(tmp_path / "bids", ["sub-01/anat/sub-01_T1w.nii.gz"])
    assert main([str(bids), str(outputs), "group", "--participant-label", "01"]) == 0
    assert {r["participant_id"] for r in _read(outputs / GROUP_TSV)} == {"sub-01"}


def test_thousand_rows_in_seconds(tmp_path):
    out = tmp_path / "out"
    write_outputs(out, 500, seed=2)
    start = time.perf_counter()
    assert run_group_level(_config(out)) == {}
    seconds = time.perf_counter() - start
    assert len(_read(out / GROUP_TSV)) == 1000
    assert seconds < 60, seconds
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == ["group_tfs_leftright.png", "group_tfs_volumes.png"]  # aggregate plots
