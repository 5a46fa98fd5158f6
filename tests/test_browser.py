"""The HTML reports in a real browser (headless Chromium), on real participant outputs.

Runs the participant level (shipped model, CPU) on ``sub-01`` (two sessions) of the synthetic
BIDS dataset, plus a ``sub-02`` without a slab (a failed unit), then the group level in
evaluation mode against the phantom truth, and opens ``sub-01.html``, ``sub-02.html`` and
``group_tfs.html``: every ``src``/``href`` must resolve to a file next to the page, the page
must load no remote resource, and Chromium must report no broken image. Screenshots are kept
in the test's folder (and copied to ``$IEVNET_SCREENSHOT_DIR`` when set).

Chromium comes from ``scripts/ensure_chromium.sh`` (``make test`` runs it); without it these
tests are skipped with a message saying so.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ievnet_bids.cli.run import main
from ievnet_bids.model.card import ModelCard, card_path_for
from ievnet_bids.reports.html import local_links, missing_links
from ievnet_bids.resources import default_model_path

pytestmark = [pytest.mark.xdist_group("browser")]
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--hide-scrollbars",
)


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None and Path("/usr/bin/chromium").is_file():
        exe = "/usr/bin/chromium"
    if exe is None:
        pytest.skip(
            "headless Chromium not installed (run scripts/ensure_chromium.sh; it needs apt-get "
            "and root or password-less sudo): browser tests skipped"
        )
    return exe


def _browse(page: Path, tmp: Path, *flags: str) -> subprocess.CompletedProcess:
    profile = tmp / f"chromium-profile-{page.stem}"
    return subprocess.run(
        [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *flags, page.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
    )


def _check_in_browser(page: Path, tmp: Path, height: int = 3000) -> tuple[str, Path]:
    """Dump the DOM after load and take a screenshot; returns (DOM, screenshot)."""
    assert page.is_file(), page
    assert missing_links(page) == [], missing_links(page)
    dom = _browse(page, tmp, "--virtual-time-budget=10000", "--dump-dom").stdout
    assert "<body" in dom, dom[:500]
    n_img = len(re.findall(r"<img\b", page.read_text()))
    match = re.search(r'data-images="(\d+)"', dom)
    assert match, "the page's load handler did not run"
    assert int(match.group(1)) == n_img
    assert 'data-broken-images="0"' in dom, re.findall(r"<img[^>]*data-broken[^>]*>", dom)
    shot = tmp / f"{page.stem}.png"
    _browse(page, tmp, f"--screenshot={shot}", f"--window-size=1400,{height}")
    assert shot.is_file() and shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 20_000
    keep = os.environ.get("IEVNET_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy2(shot, Path(keep) / shot.name)
    return dom, shot


@pytest.fixture(scope="module")
def reports(synth_bids: Path, tmp_path_factory) -> dict[str, Path]:
    if not default_model_path().is_file():
        pytest.skip("no shipped model")
    _chromium()
    root = tmp_path_factory.mktemp("browser")
    bids = root / "bids"
    shutil.copytree(synth_bids, bids, copy_function=os.link)
    for slab in (bids / "sub-02").rglob("*_acq-space_T2w.nii.gz"):
        slab.unlink()  # sub-02 fails: no slab
    out, work = root / "out", root / "work"
    code = main([str(bids), str(out), "participant", "-w", str(work), "--nprocs", "2"])
    assert code == 1  # sub-02 failed, sub-01 ran
    refs = root / "refs"
    refs.mkdir()
    truth = synth_bids.parent / "truth"
    for mask in truth.glob("sub-01_ses-*_desc-*_tfs.nii.gz"):
        slab_truth = re.fullmatch(r"(sub-01_ses-\d+)_desc-(left|right)_tfs\.nii\.gz", mask.name)
        if slab_truth is None:  # the phantoms' ROI-grid truth
            continue
        prefix, side = slab_truth.groups()
        name = f"{prefix}_acq-space_space-orig_label-TFS_desc-{side}_mask.nii.gz"
        shutil.copy2(mask, refs / name)
    code = main([str(bids), str(out), "group", "--reference-dir", str(refs)])
    assert code == 0
    return {"out": out, "tmp": root}


def test_subject_report_in_chromium(reports):
    out = reports["out"]
    page = out / "sub-01.html"
    dom, _ = _check_in_browser(page, reports["tmp"], height=4200)
    html = page.read_text()
    links = local_links(page)
    figures = [link for link in links if link.startswith("sub-01/figures/")]
    assert len(figures) == 2 * 6  # two sessions × (localization ×2, 3 mosaics, surface)
    for text in (
        "ses-1_acq-space",
        "ses-2_acq-space",
        ModelCard.from_json(card_path_for(default_model_path())).name,  # the shipped model
        "threshold 0.5; flip TTA on",
        "template",
        "QC flags",
        "Volumes",
        "No errors",
    ):
        assert text in html, text
    assert "Errors" in dom


def test_failed_subject_report_in_chromium(reports):
    page = reports["out"] / "sub-02.html"
    _check_in_browser(page, reports["tmp"], height=1400)
    assert "no inner-ear slab" in page.read_text()


def test_group_report_in_chromium(reports):
    out = reports["out"]
    page = out / "group_tfs.html"
    _check_in_browser(page, reports["tmp"], height=3600)
    html = page.read_text()
    assert 'href="sub-01.html"' in html or "No outlier" in html
    assert "Evaluation against reference masks" in html
    with (out / "group_tfs.tsv").open() as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert {(r["participant_id"], r["session_id"]) for r in rows} == {
        ("sub-01", "ses-1"),
        ("sub-01", "ses-2"),
    }
    assert all(0.0 <= float(r["dice"]) <= 1.0 and r["eval_note"] == "" for r in rows)
    # the group table repeats the per-slab volume tables verbatim
    for table in out.glob("sub-01/ses-*/anat/*_desc-tfs_volumes.tsv"):
        ses = table.parent.parent.name
        with table.open() as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                g = next(r for r in rows if r["session_id"] == ses and r["side"] == row["side"])
                for column in ("volume_mm3", "n_components", "centre_x_mm", "model_sha256"):
                    assert g[column] == row[column]
