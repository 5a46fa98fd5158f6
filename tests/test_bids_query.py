"""BIDS input queries (ievnet_bids.bids.query) on the synthetic dataset and tiny hand-made ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ievnet_bids.bids import query as Q
from ievnet_bids.bids.query import (
    InvalidBidsError,
    NoImagesError,
    SubjectInputs,
    build_layout,
    collect_inputs,
    validate_dataset,
)
from ievnet_bids.cli.parser import parse_args

pytestmark = pytest.mark.xdist_group("synth_bids")  # the session dataset is built once


def _config(bids: Path, tmp_path: Path, *extra: str):
    return parse_args([str(bids), str(tmp_path / "out"), "participant", *extra])


def _anat(bids: Path, sub: str, ses: str | None, suffix: str) -> Path:
    ses_dir = f"ses-{ses}/" if ses else ""
    ses_ent = f"_ses-{ses}" if ses else ""
    return bids / f"sub-{sub}/{ses_dir}anat/sub-{sub}{ses_ent}_{suffix}.nii.gz"


def _expected(bids: Path, units: list[tuple[str, str]]) -> list[SubjectInputs]:
    return [
        SubjectInputs(
            sub, ses, (_anat(bids, sub, ses, "acq-space_T2w"),), _anat(bids, sub, ses, "T1w")
        )
        for sub, ses in units
    ]


ALL_UNITS = [("01", "1"), ("01", "2"), ("02", "1")]


# --------------------------------------------------------------------------- synthetic dataset
def test_finds_slab_and_head_per_session(synth_bids, tmp_path):
    bids = synth_bids.resolve()
    inputs = collect_inputs(_config(bids, tmp_path))
    assert inputs == _expected(bids, ALL_UNITS)
    assert [i.name for i in inputs] == ["sub-01_ses-1", "sub-01_ses-2", "sub-02_ses-1"]
    assert all(p.is_file() for i in inputs for p in (*i.slabs, i.head))


def test_participant_and_session_selection(synth_bids, tmp_path):
    bids = synth_bids.resolve()
    cfg = _config(bids, tmp_path, "--participant-label", "sub-02")
    assert collect_inputs(cfg) == _expected(bids, [("02", "1")])
    assert build_layout(bids, participant_labels=["02"]).get_subjects() == ["02"]  # not indexed
    cfg = _config(bids, tmp_path, "--session-label", "2")
    assert collect_inputs(cfg) == _expected(bids, [("01", "2")])
    cfg = _config(bids, tmp_path, "--participant-label", "01", "02", "--session-label", "ses-1")
    assert collect_inputs(cfg) == _expected(bids, [("01", "1"), ("02", "1")])
    with pytest.raises(InvalidBidsError, match=r"session\(s\) not found .*: ses-2$"):
        collect_inputs(_config(bids, tmp_path, "--participant-label", "02", "--session-label", "2"))
    with pytest.raises(InvalidBidsError, match=r"participant\(s\) not found: sub-03$"):
        collect_inputs(_config(bids, tmp_path, "--participant-label", "01", "03"))


def test_filter_file_restricts_to_one_session(synth_bids, tmp_path):
    bids = synth_bids.resolve()
    flt = tmp_path / "filters.json"
    flt.write_text(json.dumps({"slab": {"ses": "1"}}))
    inputs = collect_inputs(_config(bids, tmp_path, "--bids-filter-file", str(flt)))
    assert inputs == _expected(bids, [("01", "1"), ("02", "1")])
    # the head filter alone: every session localizes with the ses-1 head (cross-session)
    flt.write_text(json.dumps({"head": {"session": "1"}}))
    inputs = collect_inputs(_config(bids, tmp_path, "--bids-filter-file", str(flt)))
    assert [(i.name, i.head) for i in inputs] == [
        ("sub-01_ses-1", _anat(bids, "01", "1", "T1w")),
        ("sub-01_ses-2", _anat(bids, "01", "1", "T1w")),
        ("sub-02_ses-1", _anat(bids, "02", "1", "T1w")),
    ]
    flt.write_text(json.dumps({"slab": {"acquisition": "ciss"}}))
    with pytest.raises(NoImagesError, match=r'slab filters \{"acquisition": "ciss"\}'):
        collect_inputs(_config(bids, tmp_path, "--bids-filter-file", str(flt)))


def test_deleted_slab_gives_empty_slabs(synth_bids, tmp_path, link_tree):
    bids = link_tree(synth_bids, tmp_path / "bids").resolve()
    _anat(bids, "02", "1", "acq-space_T2w").unlink()
    _anat(bids, "01", "2", "T1w").unlink()
    inputs = collect_inputs(_config(bids, tmp_path))
    assert inputs == [
        *_expected(bids, [("01", "1")]),
        # ses-2 lost its T1w: the head comes from ses-1
        SubjectInputs(
            "01", "2", (_anat(bids, "01", "2", "acq-space_T2w"),), _anat(bids, "01", "1", "T1w")
        ),
        SubjectInputs("02", "1", (), _anat(bids, "02", "1", "T1w")),
    ]
    assert _anat(synth_bids, "02", "1", "acq-space_T2w").is_file()  # the original is intact
    # a session without slab is left out while its subject has slabs elsewhere
    _anat(bids, "01", "2", "acq-space_T2w").unlink()
    names = [i.name for i in collect_inputs(_config(bids, tmp_path))]
    assert names == ["sub-01_ses-1", "sub-02_ses-1"]
    # no slab at all in the selection
    with pytest.raises(NoImagesError, match=r"no slab image selected .* for sub-02$"):
        collect_inputs(_config(bids, tmp_path, "--participant-label", "02"))


def test_database_dir_is_created_then_reused(synth_bids, tmp_path, monkeypatch):
    from bids.layout.index import BIDSLayoutIndexer

    calls = []
    original = BIDSLayoutIndexer.__call__

    def counting(self, layout):
        calls.append(layout.root)
        return original(self, layout)

    monkeypatch.setattr(BIDSLayoutIndexer, "__call__", counting)
    bids, db = synth_bids.resolve(), tmp_path / "db"
    args = ("--bids-database-dir", str(db))
    first = collect_inputs(_config(bids, tmp_path, *args))
    assert len(calls) == 1
    assert (db / "layout_index.sqlite").is_file()
    assert json.loads((db / Q.DB_STAMP).read_text())["root"] == str(bids)
    mtime = (db / "layout_index.sqlite").stat().st_mtime_ns
    second = collect_inputs(_config(bids, tmp_path, *args, "--participant-label", "02"))
    assert len(calls) == 1  # reused: not indexed again
    assert first == _expected(bids, ALL_UNITS)
    assert second == _expected(bids, [("02", "1")])
    assert (db / "layout_index.sqlite").stat().st_mtime_ns == mtime
    # a database of another dataset root is rebuilt, not trusted
    stamp = json.loads((db / Q.DB_STAMP).read_text())
    (db / Q.DB_STAMP).write_text(json.dumps({**stamp, "root": "/elsewhere"}))
    assert collect_inputs(_config(bids, tmp_path, *args)) == first
    assert len(calls) == 2


# --------------------------------------------------------------------------- tiny datasets
def test_sessionless_case_insensitive_acq_and_head_fallbacks(tmp_path, tiny_bids):
    bids = tiny_bids(
        tmp_path / "bids",
        [
            "sub-01/anat/sub-01_acq-CISS_run-1_T2w.nii.gz",
            "sub-01/anat/sub-01_acq-CISS_run-2_T2w.nii.gz",
            "sub-01/anat/sub-01_T2w.nii.gz",  # full-head T2w: the head when there is no T1w
            "sub-01/func/sub-01_task-rest_bold.nii.gz",  # not indexed
            "sub-02/anat/sub-02_acq-Space_T2w.nii.gz",
            "sub-02/anat/sub-02_acq-mprage_T1w.nii.gz",
            "sub-02/anat/sub-02_T2w.nii.gz",  # T1w wins
            "sub-03/anat/sub-03_acq-space_T2w.nii.gz",  # no head at all
        ],
    ).resolve()
    a = bids / "sub-01/anat"
    inputs = collect_inputs(_config(bids, tmp_path))
    assert inputs == [
        SubjectInputs(
            "01",
            None,
            (a / "sub-01_acq-CISS_run-1_T2w.nii.gz", a / "sub-01_acq-CISS_run-2_T2w.nii.gz"),
            a / "sub-01_T2w.nii.gz",
        ),
        SubjectInputs(
            "02",
            None,
            (bids / "sub-02/anat/sub-02_acq-Space_T2w.nii.gz",),
            bids / "sub-02/anat/sub-02_acq-mprage_T1w.nii.gz",
        ),
        SubjectInputs("03", None, (bids / "sub-03/anat/sub-03_acq-space_T2w.nii.gz",), None),
    ]
    assert inputs[0].name == "sub-01"
    assert build_layout(bids).get(datatype="func") == []
    flt = tmp_path / "f.json"
    flt.write_text(json.dumps({"slab": {"run": 2}, "head": {"suffix": "T2w"}}))
    inputs = collect_inputs(_config(bids, tmp_path, "--bids-filter-file", str(flt)))
    assert [(i.subject, i.slabs, i.head) for i in inputs] == [
        ("01", (a / "sub-01_acq-CISS_run-2_T2w.nii.gz",), a / "sub-01_T2w.nii.gz")
    ]


def test_head_from_another_session(tmp_path, tiny_bids):
    bids = tiny_bids(
        tmp_path / "bids",
        [
            "sub-01/ses-a/anat/sub-01_ses-a_acq-space_T2w.nii.gz",
            "sub-01/ses-b/anat/sub-01_ses-b_acq-space_T2w.nii.gz",
            "sub-01/ses-c/anat/sub-01_ses-c_T1w.nii.gz",
            "sub-01/ses-b/anat/sub-01_ses-b_T2w.nii.gz",
        ],
    ).resolve()
    heads = {i.session: i.head for i in collect_inputs(_config(bids, tmp_path))}
    assert heads == {
        "a": bids / "sub-01/ses-c/anat/sub-01_ses-c_T1w.nii.gz",
        "b": bids / "sub-01/ses-b/anat/sub-01_ses-b_T2w.nii.gz",  # same session first
    }


def test_light_validation(tmp_path, tiny_bids):
    bids = tiny_bids(tmp_path / "bids", ["sub-01/anat/sub-01_acq-space_T2w.nii.gz"])
    assert validate_dataset(bids)["Name"] == "tiny"
    (bids / "sub-01_x").mkdir()
    with pytest.raises(InvalidBidsError, match=r"invalid subject folder name\(s\): sub-01_x$"):
        validate_dataset(bids)
    assert validate_dataset(bids, light_validation=False)["Name"] == "tiny"
    (bids / "dataset_description.json").write_text('{"Name": "x"}')
    with pytest.raises(InvalidBidsError, match="lacks BIDSVersion"):
        validate_dataset(bids)
    (bids / "dataset_description.json").unlink()
    with pytest.raises(InvalidBidsError, match=r"dataset_description\.json is missing"):
        validate_dataset(bids, light_validation=False)


def test_flair_of_the_same_session_contrast_enhanced_first(tmp_path, tiny_bids, caplog):
    bids = tiny_bids(
        tmp_path / "bids",
        [
            "sub-01/ses-a/anat/sub-01_ses-a_acq-space_T2w.nii.gz",
            "sub-01/ses-a/anat/sub-01_ses-a_acq-inner_FLAIR.nii.gz",
            "sub-01/ses-a/anat/sub-01_ses-a_acq-inner_ce-gadolinium_FLAIR.nii.gz",
            "sub-01/ses-b/anat/sub-01_ses-b_acq-space_T2w.nii.gz",  # no FLAIR this session
            "sub-02/anat/sub-02_acq-space_T2w.nii.gz",
            "sub-02/anat/sub-02_FLAIR.nii.gz",
        ],
    ).resolve()
    anat = bids / "sub-01/ses-a/anat"
    with caplog.at_level("WARNING", logger="ievnet_bids"):
        flairs = {(i.subject, i.session): i.flair for i in collect_inputs(_config(bids, tmp_path))}
    assert flairs == {
        ("01", "a"): anat / "sub-01_ses-a_acq-inner_ce-gadolinium_FLAIR.nii.gz",
        ("01", "b"): None,
        ("02", None): bids / "sub-02/anat/sub-02_FLAIR.nii.gz",
    }
    assert "2 FLAIR images" in caplog.text and '"flair" filter' in caplog.text
    filters = tmp_path / "filters.json"
    filters.write_text('{"flair": {"ceagent": null}}')
    picked = collect_inputs(_config(bids, tmp_path, "--bids-filter-file", str(filters)))
    assert picked[0].flair == anat / "sub-01_ses-a_acq-inner_FLAIR.nii.gz"
    skipped = collect_inputs(_config(bids, tmp_path, "--no-hydrops"))
    assert all(i.flair is None for i in skipped)
