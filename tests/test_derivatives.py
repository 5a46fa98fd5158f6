"""Derivative names and writers (ievnet_bids.bids.derivatives)."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ievnet_bids.bids import derivatives as D
from ievnet_bids.bids.derivatives import (
    PublishError,
    bids_uri,
    dataset_description,
    derivative_path,
    mask_sidecar,
    publish,
    write_bidsignore,
    write_dataset_description,
    write_dseg_tsv,
    write_json_atomic,
    write_nifti_atomic,
    write_tsv_atomic,
)

SES_SLAB = "sub-01/ses-1/anat/sub-01_ses-1_acq-space_T2w.nii.gz"
SLAB = "sub-02/anat/sub-02_acq-ciss_run-2_T2w.nii.gz"
HEAD = "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz"


# --------------------------------------------------------------------------- names
def test_paths_sessioned_source():
    src, out = Path("/data/bids") / SES_SLAB, Path("/out")
    anat = "/out/sub-01/ses-1/anat/sub-01_ses-1_acq-space"
    assert str(
        derivative_path(src, out, label="TFS", desc="left", suffix="mask", extension=".nii.gz")
    ) == (f"{anat}_space-orig_label-TFS_desc-left_mask.nii.gz")
    assert str(
        derivative_path(src, out, label="TFS", desc="right", suffix="probseg", extension="nii.gz")
    ) == (f"{anat}_space-orig_label-TFS_desc-right_probseg.nii.gz")
    assert str(derivative_path(src, out, suffix="dseg", extension=".nii.gz")) == (
        f"{anat}_space-orig_dseg.nii.gz"
    )
    assert str(
        derivative_path(src, out, space=None, desc="tfs", suffix="volumes", extension=".tsv")
    ) == (f"{anat}_desc-tfs_volumes.tsv")
    assert str(
        derivative_path(
            src, out, desc="left", suffix="overlay", extension=".svg", datatype="figures"
        )
    ) == ("/out/sub-01/figures/sub-01_ses-1_acq-space_space-orig_desc-left_overlay.svg")


def test_paths_sessionless_source_and_entity_order():
    out = Path("/out")
    path = derivative_path(
        Path("/b") / SLAB, out, label="TFS", desc="left", suffix="mask", extension=".json"
    )
    assert str(path) == (
        "/out/sub-02/anat/sub-02_acq-ciss_run-2_space-orig_label-TFS_desc-left_mask.json"
    )
    # source entities keep BIDS order; the source's own space/desc are replaced
    src = "sub-3/ses-b/anat/sub-3_ses-b_acq-space_ce-gad_rec-norm_run-1_echo-2_desc-x_T2w.nii"
    assert derivative_path(src, out, desc="tfs", suffix="dseg", extension=".nii.gz") == Path(
        "/out/sub-3/ses-b/anat/"
        "sub-3_ses-b_acq-space_ce-gad_rec-norm_run-1_echo-2_space-orig_desc-tfs_dseg.nii.gz"
    )
    with pytest.raises(ValueError, match="desc must be alphanumeric"):
        derivative_path(SLAB, out, desc="left-ear", suffix="mask", extension=".nii.gz")
    with pytest.raises(ValueError, match="not a BIDS file name"):
        derivative_path("/b/T2w.nii.gz", out, suffix="mask", extension=".nii.gz")
    with pytest.raises(ValueError, match="bad entity 'foo-1'"):
        derivative_path("sub-1_foo-1_T2w.nii.gz", out, suffix="mask", extension=".nii.gz")


def test_bids_uri_and_mask_sidecar(tmp_path):
    bids = tmp_path / "bids"
    assert bids_uri(bids / SES_SLAB, bids) == f"bids:raw:{SES_SLAB}"
    assert bids_uri(bids / SES_SLAB, bids, dataset_name="") == f"bids::{SES_SLAB}"
    with pytest.raises(ValueError):
        bids_uri(tmp_path / "elsewhere.nii", bids)
    side = mask_sidecar(
        bids / SES_SLAB,
        side="left",
        model_name="ievnet_default",
        model_sha256="ab" * 32,
        centre_mm=np.array([-41.25, -20.0, -30.5]),
        localizer="template",
        extra_sources=[bids / HEAD],
        inference={"ProbabilityThreshold": 0.5, "FlipTTA": True},
    )
    assert side == {
        "Type": "ROI",
        "Description": "inner-ear total fluid space (TFS) segmented with IE-Vnet, left ear",
        "Sources": [f"bids:raw:{SES_SLAB}", f"bids:raw:{HEAD}"],
        "SpatialReference": f"bids:raw:{SES_SLAB}",
        "Side": "left",
        "ModelName": "ievnet_default",
        "ModelSHA256": "ab" * 32,
        "Localizer": "template",
        "ProbabilityThreshold": 0.5,
        "FlipTTA": True,
        "CentreMM": [-41.25, -20.0, -30.5],
    }
    json.dumps(side)  # plain JSON types
    with pytest.raises(ValueError, match="side must be left or right"):
        mask_sidecar(bids / SLAB, side="both", model_name="m", model_sha256="0",
                     centre_mm=[0, 0, 0], localizer="template")  # fmt: skip
    with pytest.raises(ValueError, match="centre_mm must be 3 finite numbers"):
        mask_sidecar(bids / SLAB, side="left", model_name="m", model_sha256="0",
                     centre_mm=[0, float("nan"), 0], localizer="template")  # fmt: skip


# --------------------------------------------------------------------------- dataset files
def test_dataset_description_content(tmp_path):
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text(
        '{"Name": "raw", "DatasetDOI": "10.1/x", "Authors": ["A. Author", "B. Author"]}'
    )
    path = write_dataset_description(
        tmp_path / "out", version="1.2.3", container={"Type": "docker", "Tag": "ievnet:1.2.3"},
        bids_dir=bids,
    )  # fmt: skip
    desc = json.loads(path.read_text())
    assert desc == {
        "Name": "ievnet-bids: inner-ear total fluid space (TFS) segmentation",
        "BIDSVersion": "1.11.0",
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "ievnet-bids",
                "Version": "1.2.3",
                "CodeURL": "https://github.com/ievnet/ievnet-bids",
                "Container": {"Type": "docker", "Tag": "ievnet:1.2.3"},
            }
        ],
        "HowToAcknowledge": desc["HowToAcknowledge"],
        "SourceDatasets": [{"URL": bids.as_uri(), "DOI": "10.1/x"}],
        "DatasetLinks": {"raw": bids.as_uri()},
        # the source's authors, then the pipeline
        "Authors": ["A. Author", "B. Author", D.PIPELINE_AUTHOR],
    }
    assert "doi:10.3389/fneur.2022.663200" in desc["HowToAcknowledge"]
    # identical content: left alone (mtime kept); other content: replaced
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    write_dataset_description(tmp_path / "out", version="1.2.3", bids_dir=bids,
                              container={"Type": "docker", "Tag": "ievnet:1.2.3"})  # fmt: skip
    assert path.stat().st_mtime_ns == 1_000_000_000
    write_dataset_description(tmp_path / "out", version="1.2.4")
    assert json.loads(path.read_text())["GeneratedBy"] == [
        {"Name": "ievnet-bids", "Version": "1.2.4", "CodeURL": D.CODE_URL}
    ]
    assert "SourceDatasets" not in json.loads(path.read_text())
    assert json.loads(path.read_text())["Authors"] == [D.PIPELINE_AUTHOR]


def _write_description(out: str, version: str, barrier) -> None:
    barrier.wait()
    for _ in range(20):
        write_dataset_description(out, version=version)


@pytest.mark.parametrize("versions", [["0.1.0"] * 8, ["0.1.0", "0.2.0"] * 4])
def test_concurrent_dataset_description(tmp_path, versions):
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(len(versions))
    procs = [
        ctx.Process(target=_write_description, args=(str(tmp_path), v, barrier)) for v in versions
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * len(versions)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["dataset_description.json"]  # no temps
    desc = json.loads((tmp_path / "dataset_description.json").read_text())
    assert desc in [dataset_description(version=v) for v in set(versions)]


def test_bidsignore_and_dseg_tsv(tmp_path):
    (tmp_path / ".bidsignore").write_text("extra/\n*.html\n")
    path = write_bidsignore(tmp_path, extra=["*_roi.json"])
    lines = path.read_text().splitlines()
    assert lines[:2] == ["extra/", "*.html"]
    assert set(lines) == {"extra/", *D.BIDSIGNORE, "*_roi.json"} and len(lines) == len(set(lines))
    before = path.read_text()
    write_bidsignore(tmp_path, extra=["*_roi.json"])
    assert path.read_text() == before
    assert write_dseg_tsv(tmp_path).read_text() == (
        "index\tname\tabbreviation\n"
        "0\tbackground\tBG\n"
        "1\tleft inner-ear total fluid space\tTFSL\n"
        "2\tright inner-ear total fluid space\tTFSR\n"
    )
    assert write_dseg_tsv(tmp_path).name == "desc-tfs_dseg.tsv"


def test_atomic_writers(tmp_path):
    import pandas as pd

    rows = [{"side": "left", "volume_mm3": 171.5}, {"side": "right", "volume_mm3": None, "n": 2}]
    text = write_tsv_atomic(rows, tmp_path / "a.tsv").read_text()
    assert text == "side\tvolume_mm3\tn\nleft\t171.5\tn/a\nright\tn/a\t2\n"
    df = pd.DataFrame({"side": ["left", "right"], "volume_mm3": [171.5, float("nan")]})
    assert write_tsv_atomic(df, tmp_path / "b.tsv").read_text() == (
        "side\tvolume_mm3\nleft\t171.5\nright\tn/a\n"
    )
    with pytest.raises(ValueError, match="tab or newline"):
        write_tsv_atomic([{"a": "x\ty"}], tmp_path / "c.tsv")
    assert not (tmp_path / "c.tsv").exists()
    write_json_atomic({"a": [1, 2]}, tmp_path / "d" / "e.json")
    assert json.loads((tmp_path / "d" / "e.json").read_text()) == {"a": [1, 2]}
    data = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    img = nib.Nifti1Image(data, np.diag([0.5, 0.5, 0.5, 1]))
    path = write_nifti_atomic(img, tmp_path / "m.nii.gz")
    back = nib.load(path)
    assert np.array_equal(back.get_fdata(), data) and back.get_data_dtype() == np.uint8
    assert back.header.get_xyzt_units()[0] == "mm" and img.header.get_xyzt_units()[0] == "unknown"
    assert path.read_bytes()[:2] == b"\x1f\x8b"  # gzip
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# --------------------------------------------------------------------------- publish
def _stage(tmp_path: Path, n: int = 3) -> dict[Path, Path]:
    stage = tmp_path / "work"
    stage.mkdir(exist_ok=True)
    out = tmp_path / "out" / "sub-01" / "anat"
    staged = {}
    for i in range(n):
        src = stage / f"f{i}.json"
        src.write_text(json.dumps({"i": i}))
        staged[src] = out / f"sub-01_desc-{i}_mask.json"
    return staged


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_publish_all_or_nothing(tmp_path, monkeypatch):
    staged = _stage(tmp_path)
    missing = tmp_path / "work" / "missing.nii.gz"
    with pytest.raises(PublishError, match=r"missing\.nii\.gz"):
        publish({**staged, missing: tmp_path / "out" / "x.nii.gz"})
    assert _files(tmp_path / "out") == []

    calls = []
    real_copy = shutil.copyfile

    def failing_copy(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_copy(src, dst)

    monkeypatch.setattr(D.shutil, "copyfile", failing_copy)
    with pytest.raises(PublishError, match="No space left"):
        publish(staged)
    assert len(calls) == 2
    assert _files(tmp_path / "out") == []  # no files, no temporaries, no new folders
    assert all(s.is_file() for s in staged)  # staged outputs are kept


def test_publish_skips_identical_files(tmp_path):
    staged = _stage(tmp_path)
    assert publish(staged) == list(staged.values())
    assert [json.loads(d.read_text()) for d in staged.values()] == [{"i": i} for i in range(3)]
    old = 1_000_000_000
    for d in staged.values():
        os.utime(d, ns=(old, old))
    assert publish(staged) == []  # rerun: nothing rewritten
    assert [d.stat().st_mtime_ns for d in staged.values()] == [old] * 3
    first = next(iter(staged))
    first.write_text(json.dumps({"i": 99}))
    assert publish(staged) == [staged[first]]
    assert json.loads(staged[first].read_text()) == {"i": 99}
    assert [d.stat().st_mtime_ns == old for d in staged.values()] == [False, True, True]
    assert not [p for p in (tmp_path / "out").rglob(".*")]


# --------------------------------------------------------------------------- BIDS validator
def _validator() -> str | None:
    local = Path(sys.executable).parent / "bids-validator-deno"
    return str(local) if local.is_file() else shutil.which("bids-validator-deno")


@pytest.mark.skipif(
    _validator() is None,
    reason="bids-validator-deno is not installed (pip install bids-validator-deno)",
)
def test_derivative_tree_validates(tmp_path, tiny_bids):
    bids = tiny_bids(tmp_path / "bids", [SES_SLAB, HEAD, SLAB])
    out = tmp_path / "deriv"
    write_dataset_description(out, version="0.1.0", bids_dir=bids)
    write_bidsignore(out)
    write_dseg_tsv(out)
    staged: dict[Path, Path] = {}
    work = tmp_path / "work"
    work.mkdir()
    for rel in (SES_SLAB, SLAB):
        src = bids / rel
        affine = nib.load(src).affine
        for side in ("left", "right"):
            for suffix, dtype in (("mask", np.uint8), ("probseg", np.float32)):
                dest = derivative_path(
                    src, out, label="TFS", desc=side, suffix=suffix, extension=".nii.gz"
                )
                tmp = work / dest.name
                write_nifti_atomic(nib.Nifti1Image(np.zeros((2, 2, 2), dtype), affine), tmp)
                staged[tmp] = dest
                meta = mask_sidecar(src, side=side, model_name="m", model_sha256="0" * 64,
                                    centre_mm=[1, 2, 3], localizer="template")  # fmt: skip
                if suffix == "probseg":
                    meta.pop("Type")
                js = work / dest.name.replace(".nii.gz", ".json")
                write_json_atomic(meta, js)
                staged[js] = dest.with_name(js.name)
        dseg = derivative_path(src, out, suffix="dseg", extension=".nii.gz")
        tmp = work / dseg.name
        write_nifti_atomic(nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), affine), tmp)
        staged[tmp] = dseg
        meta = D.segmentation_sidecar(src, side=None, model_name="m", model_sha256="0" * 64,
                                      centre_mm=None, localizer="template")  # fmt: skip
        js = work / dseg.name.replace(".nii.gz", ".json")
        write_json_atomic(meta, js)
        staged[js] = dseg.with_name(js.name)  # space-orig needs SpatialReference
        volumes = derivative_path(src, out, space=None, desc="tfs", suffix="volumes",
                                  extension=".tsv")  # fmt: skip
        write_tsv_atomic([{"side": "left", "volume_mm3": 170.0}], work / "v.tsv")
        staged[work / "v.tsv"] = volumes
        publish(staged)
        staged.clear()
    run = subprocess.run(
        [_validator(), str(out), "--format", "json"], capture_output=True, text=True, timeout=120
    )
    report = json.loads(run.stdout)
    errors = [i for i in report["issues"]["issues"] if i["severity"] == "error"]
    assert errors == []
    assert sorted(report["summary"]["subjects"]) == ["01", "02"]
    assert report["summary"]["dataProcessed"] is True
    assert len(list(out.rglob("*.nii.gz"))) == 10


def test_staging_names_and_publishes_together(tmp_path, tiny_bids):
    bids = tiny_bids(tmp_path / "bids", [SES_SLAB])
    out, stage = tmp_path / "deriv", tmp_path / "stage"
    staging = D.Staging(bids / SES_SLAB, out, stage)
    img = nib.Nifti1Image(np.ones((2, 2, 2), np.uint8), np.eye(4))
    mask = staging.nifti(img, {"Type": "ROI"}, label="TFS", desc="left", suffix="mask",
                         extension=".nii.gz")  # fmt: skip
    table = staging.tsv([{"side": "left", "volume_mm3": 1.5}], space=None, desc="tfs",
                        suffix="volumes", extension=".tsv")  # fmt: skip
    prefix = out / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_acq-space_"
    assert mask == Path(f"{prefix}space-orig_label-TFS_desc-left_mask.nii.gz")
    assert table == Path(f"{prefix}desc-tfs_volumes.tsv")
    assert (
        sorted(p.name for p in staging.files) == sorted(p.name for p in stage.iterdir())
        and len(staging.files) == 3
    )  # image, sidecar, table
    assert not out.exists()  # nothing in place before publish
    publish(staging.files)
    assert json.loads(mask.with_name(mask.name.replace(".nii.gz", ".json")).read_text()) == {
        "Type": "ROI"
    }
    assert table.read_text() == "side\tvolume_mm3\nleft\t1.5\n"


def test_lookup_by_entities_finds_what_the_writer_named(tmp_path):
    out = tmp_path / "out"
    written = []
    for src in ("sub-01_acq-space_T2w.nii.gz", "sub-02_ses-1_acq-space_T2w.nii.gz"):
        for kind, extra in ((D.VOLUMES, {}), (D.TFS_MASK, {"desc": "left"})):
            path = D.derivative_path(src, out, **kind.entities(**extra))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            written.append(path)
    (out / "sub-01" / "anat" / "notes.txt").touch()  # not a BIDS name: ignored
    assert D.find_derivatives(out, D.VOLUMES) == [written[0], written[2]]
    assert D.find_derivatives(out, D.TFS_MASK, {"sub": "02"}, desc="left") == [written[3]]
    assert D.find_derivatives(out, D.TFS_MASK, {"sub": "01", "ses": None}, desc="right") == []
    assert D.find_derivatives(out, D.VOLUMES, {"ses": "1"}) == [written[2]]
    assert D.sibling(written[2], D.TFS_MASK, desc="left") == written[3]
    assert D.source_prefix(written[3]) == "sub-02_ses-1_acq-space"
    assert D.source_entities(written[3]) == {"sub": "02", "ses": "1", "acq": "space"}
    assert D.VOLUMES.pattern() == "*_desc-tfs_volumes.tsv"
    assert written[1].match(D.TFS_MASK.pattern(desc="left"))


def test_atomic_writes_get_the_mode_of_an_ordinary_new_file(tmp_path):
    from ievnet_bids.atomic import write_text_atomic

    old = os.umask(0o022)
    try:
        path = write_text_atomic("x", tmp_path / "a.txt")
        assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
        os.umask(0o077)
        assert write_text_atomic("y", tmp_path / "b.txt").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
