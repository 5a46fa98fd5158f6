"""ievnet-bids command line: parse_args → RunConfig, usage errors and run.main exit codes."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from ievnet_bids.cli.exitcodes import ExitCode
from ievnet_bids.cli.parser import MissingInputError, build_parser, parse_args
from ievnet_bids.cli.run import main
from ievnet_bids.config import DEFAULT_ACQ, RunConfig

SLAB = "sub-01/anat/sub-01_acq-space_T2w.nii.gz"
HEAD = "sub-01/anat/sub-01_T1w.nii.gz"


@pytest.fixture
def dirs(tmp_path) -> tuple[Path, Path]:
    bids = tmp_path / "bids"
    bids.mkdir()
    return bids, tmp_path / "out"


def _args(dirs, *extra: str, level: str = "participant") -> list[str]:
    return [str(dirs[0]), str(dirs[1]), level, *extra]


def _usage_error(capsys, argv: list[str]) -> str:
    """Run parse_args, expect exit 2, return the single stderr line."""
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("ievnet-bids: error: ")
    return err


# --------------------------------------------------------------------------- parse_args
def test_defaults(dirs):
    cfg = parse_args(_args(dirs))
    assert cfg.bids_dir == dirs[0].resolve()
    assert cfg.output_dir == dirs[1].resolve()
    assert cfg.analysis_level == "participant"
    assert cfg.participant_labels == () and cfg.session_labels == ()
    assert cfg.work_dir == (Path(tempfile.gettempdir()) / "ievnet_work").resolve()
    assert cfg.acq_values == DEFAULT_ACQ
    assert (cfg.device, cfg.localizer, cfg.model, cfg.verbose) == ("auto", "auto", None, 0)
    assert 1 <= cfg.omp_nthreads <= min(cfg.nprocs, 8)
    assert cfg.tta is True


def test_precision(dirs, capsys):
    assert parse_args(_args(dirs)).precision == "auto"
    assert parse_args(_args(dirs, "--precision", "bf16")).precision == "bf16"
    assert "--precision" in _usage_error(capsys, _args(dirs, "--precision", "fp16"))


def test_no_tta(dirs):
    assert parse_args(_args(dirs, "--no-tta")).tta is False
    assert RunConfig.from_dict(parse_args(_args(dirs, "--no-tta")).to_dict()).tta is False


def test_participant_and_session_labels(dirs):
    cfg = parse_args(
        _args(
            dirs,
            "--participant-label",
            "sub-01",
            "02",
            "--participant_label",
            "sub-AB3",
            "01",
            "--session-label",
            "ses-1",
            "2",
        )
    )
    assert cfg.participant_labels == ("01", "02", "AB3")
    assert cfg.session_labels == ("1", "2")


@pytest.mark.parametrize("bad", ["sub-0_1", "sub-", "0-1", "a b", "sub-01/"])
def test_invalid_participant_label(dirs, capsys, bad):
    err = _usage_error(capsys, _args(dirs, "--participant-label", bad))
    assert "invalid label" in err and repr(bad) in err


def test_output_dir_rules(dirs, capsys):
    bids, _ = dirs
    err = _usage_error(capsys, [str(bids), str(bids), "participant"])
    assert "output_dir is the BIDS folder" in err
    err = _usage_error(capsys, [str(bids), str(bids / "results"), "participant"])
    assert "inside the BIDS folder" in err
    err = _usage_error(capsys, [str(bids), str(bids / "derivatives"), "participant"])
    assert "not below derivatives/" in err
    ok = parse_args([str(bids), str(bids / "derivatives" / "ievnet"), "participant"])
    assert ok.output_dir == (bids / "derivatives" / "ievnet").resolve()


def test_work_dir_rules(dirs, capsys):
    bids, out = dirs
    err = _usage_error(capsys, _args(dirs, "-w", str(bids / "work")))
    assert "--work-dir" in err and "inside the BIDS folder" in err
    err = _usage_error(capsys, _args(dirs, "--work_dir", str(bids)))
    assert "inside the BIDS folder" in err
    err = _usage_error(capsys, _args(dirs, "--work-dir", str(out)))
    assert "is the output folder" in err
    cfg = parse_args(_args(dirs, "--work-dir", str(out.parent / "w")))
    assert cfg.work_dir == (out.parent / "w").resolve()


def test_resources_and_flags(dirs, capsys):
    cfg = parse_args(
        _args(
            dirs,
            "--n_cpus",
            "4",
            "--omp-nthreads",
            "2",
            "--mem_gb",
            "7.5",
            "--device",
            "cpu",
            "--localizer",
            "template",
            "--acq",
            "CISS",
            "space",
            "ciss",
            "--notrack",
            "--stop-on-first-crash",
            "--skip_bids_validation",
            "-vv",
        )
    )
    assert (cfg.nprocs, cfg.omp_nthreads, cfg.mem_gb) == (4, 2, 7.5)
    assert (cfg.device, cfg.localizer) == ("cpu", "template")
    assert cfg.acq_values == ("ciss", "space")
    assert cfg.stop_on_first_crash and cfg.skip_bids_validation and cfg.verbose == 2
    assert parse_args(_args(dirs, "--n-cpus", "3")).nprocs == 3
    assert parse_args(_args(dirs, "--nprocs", "12")).omp_nthreads == 8
    assert "exceeds --nprocs 2" in _usage_error(
        capsys, _args(dirs, "--nprocs", "2", "--omp-nthreads", "3")
    )
    assert "must be >= 1" in _usage_error(capsys, _args(dirs, "--nprocs", "0"))
    assert "positive" in _usage_error(capsys, _args(dirs, "--mem-gb", "-1"))
    assert "invalid choice" in _usage_error(capsys, _args(dirs, "--device", "tpu"))


def test_help_says_notrack_is_a_no_op():
    text = " ".join(build_parser().format_help().split())
    assert "--notrack" in text and "never sends anything anywhere" in text


def test_model_and_reference_dir(dirs, tmp_path, capsys):
    with pytest.raises(MissingInputError, match="model file not found"):
        parse_args(_args(dirs, "--model", str(tmp_path / "nope.safetensors")))
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    assert parse_args(_args(dirs, "--model", str(weights))).model == weights.resolve()
    assert "only used at the group level" in _usage_error(
        capsys, _args(dirs, "--reference-dir", str(tmp_path))
    )
    with pytest.raises(MissingInputError, match="reference folder not found"):
        parse_args(_args(dirs, "--reference-dir", str(tmp_path / "nope"), level="group"))
    cfg = parse_args(_args(dirs, "--reference-dir", str(tmp_path), level="group"))
    assert cfg.reference_dir == tmp_path.resolve()


# --------------------------------------------------------------------------- filter file
def test_filter_file(dirs, tmp_path):
    flt = tmp_path / "filters.json"
    flt.write_text(json.dumps({"slab": {"acq": "space", "ses": ["1", "2"]}, "head": {"run": None}}))
    cfg = parse_args(_args(dirs, "--bids-filter-file", str(flt)))
    assert cfg.bids_filters == {
        "slab": {"acquisition": "space", "session": ["1", "2"]},
        "head": {"run": None},
    }
    assert cfg.filters_for("head") == {"run": None}
    assert cfg.filters_for("slab") is not cfg.bids_filters["slab"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"slab": {"session": "1"},}', "invalid JSON: Expecting property name"),
        ('{"slab": {"session": "1"}', "(line 1, column"),
        ('["slab"]', "expected a JSON object"),
        ('{"t2w": {}}', "unknown image role(s) t2w"),
        ('{"slab": {"colour": "red"}}', "unknown BIDS entity 'colour'"),
        ('{"head": {"run": {"a": 1}}}', "'run' must be a string"),
        ('{"head": []}', "filters of 'head' must be a JSON object"),
    ],
)
def test_filter_file_errors_name_the_file(dirs, tmp_path, capsys, text, expected):
    flt = tmp_path / "bad_filters.json"
    flt.write_text(text)
    err = _usage_error(capsys, _args(dirs, "--bids_filter_file", str(flt)))
    assert str(flt) in err and expected in err


def test_missing_filter_file(dirs, tmp_path):
    with pytest.raises(MissingInputError, match="BIDS filter file not found"):
        parse_args(_args(dirs, "--bids-filter-file", str(tmp_path / "none.json")))


# --------------------------------------------------------------------------- landmarks
def test_landmarks_file(dirs, tmp_path, capsys):
    from ievnet_bids.bids.query import landmarks_for, load_landmarks

    assert "requires --landmarks-file" in _usage_error(
        capsys, _args(dirs, "--localizer", "landmarks")
    )
    good = tmp_path / "ears.tsv"
    good.write_text(
        "participant_id\tsession_id\tside\tx\ty\tz\n"
        "sub-01\tn/a\tleft\t-40.5\t-20\t-30\n"
        "01\t\tright\t41\t-19.5\t-31\n"
        "sub-02\tses-2\tLeft\t-39\t-21\t-29\n"
    )
    cfg = parse_args(_args(dirs, "--localizer", "landmarks", "--landmarks-file", str(good)))
    assert cfg.landmarks_file == good.resolve()
    table = load_landmarks(good)
    assert landmarks_for(table, "01", "3") == {
        "left": (-40.5, -20.0, -30.0),
        "right": (41.0, -19.5, -31.0),
    }
    assert landmarks_for(table, "02", "2") == {"left": (-39.0, -21.0, -29.0)}
    assert landmarks_for(table, "02", "1") == {}
    err = _usage_error(capsys, _args(dirs, "--localizer", "detect", "--landmarks_file", str(good)))
    assert "not used with --localizer detect" in err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("participant_id\tside\tx\ty\n01\tleft\t1\t2\n", "missing column(s) z"),
        ("participant_id,side,x,y,z\n01,left,1,2,3\n", "not tab-separated"),
        ("participant_id\tside\tx\ty\tz\n01\tL\t1\t2\t3\n", "line 2: side must be left or right"),
        ("participant_id\tside\tx\ty\tz\n01\tleft\t1\ta\t3\n", "line 2: x, y, z must be numbers"),
        ("participant_id\tside\tx\ty\tz\n01\tleft\t1\tnan\t3\n", "must be finite"),
        ("participant_id\tside\tx\ty\tz\nsub-0_1\tleft\t1\t2\t3\n", "invalid participant_id"),
        ("participant_id\tside\tx\ty\tz\n01\tleft\t1\t2\t3\n01\tleft\t1\t2\t3\n", "line 3: dup"),
        ("participant_id\tside\tx\ty\tz\n", "no rows"),
    ],
)
def test_landmarks_file_errors(dirs, tmp_path, capsys, text, expected):
    tsv = tmp_path / "ears.tsv"
    tsv.write_text(text)
    err = _usage_error(
        capsys, _args(dirs, "--localizer", "landmarks", "--landmarks-file", str(tsv))
    )
    assert f"landmarks file {tsv.resolve()}" in err and expected in err


# --------------------------------------------------------------------------- config
def test_config_roundtrip(dirs, tmp_path):
    flt = tmp_path / "f.json"
    flt.write_text(json.dumps({"slab": {"run": [1, None], "reconstruction": None}}))
    cfg = parse_args(
        _args(dirs, "--bids-filter-file", str(flt), "--participant-label", "01", "--mem-gb", "3")
    )
    assert RunConfig.from_toml(cfg.to_toml(tmp_path / "c.toml")) == cfg
    assert RunConfig.read(tmp_path / "c.toml") == cfg
    assert RunConfig.from_json(cfg.to_json(tmp_path / "c.json")) == cfg
    assert RunConfig.read(tmp_path / "c.json").bids_filters == {
        "slab": {"run": [1, None], "reconstruction": None}
    }
    with pytest.raises(ValueError, match="unknown RunConfig field"):
        RunConfig.from_dict({**cfg.to_dict(), "colour": 1})
    with pytest.raises(ValueError, match="needs landmarks_file"):
        RunConfig(bids_dir=Path("/b"), output_dir=Path("/o"), analysis_level="participant",
                  localizer="landmarks")  # fmt: skip


# --------------------------------------------------------------------------- run.main
def test_exit_codes_table():
    assert {e.name: int(e) for e in ExitCode} == {
        "OK": 0,
        "SUBJECT_FAILED": 1,
        "USAGE": 2,
        "INVALID_BIDS": 16,
        "NO_IMAGES": 18,
        "MISSING_INPUT": 66,
    }


def test_main_usage_and_version(dirs, capsys):
    assert main(["--version"]) == 0
    assert "ievnet-bids" in capsys.readouterr().out
    assert main([str(dirs[0])]) == 2
    assert main(_args(dirs, "--participant-label", "sub-x_1")) == 2


def test_main_missing_bids_dir(tmp_path, capsys):
    assert main([str(tmp_path / "none"), str(tmp_path / "out"), "participant"]) == 16
    err = capsys.readouterr().err
    assert f"invalid BIDS input: {(tmp_path / 'none').resolve()}: does not exist" in err


def test_main_invalid_bids_input(tmp_path, tiny_bids, capsys):
    bids = tmp_path / "bids"
    bids.mkdir()
    assert main([str(bids), str(tmp_path / "out"), "participant"]) == 16
    assert "dataset_description.json is missing" in capsys.readouterr().err
    tiny_bids(bids, [SLAB, HEAD])
    code = main([str(bids), str(tmp_path / "o"), "participant", "--participant-label", "07", "9"])
    assert code == 16
    assert "participant(s) not found: sub-07, sub-9" in capsys.readouterr().err
    (bids / "sub-0_2").mkdir()
    assert main([str(bids), str(tmp_path / "out"), "group"]) == 16
    assert "invalid subject folder name(s): sub-0_2" in capsys.readouterr().err


def test_main_no_images(tmp_path, tiny_bids, capsys):
    bids = tiny_bids(tmp_path / "bids", [HEAD, "sub-01/anat/sub-01_T2w.nii.gz"])
    assert main([str(bids), str(tmp_path / "out"), "participant"]) == 18
    assert "no slab image selected" in capsys.readouterr().err
    bids = tiny_bids(tmp_path / "bids2", [SLAB, HEAD])
    assert main([str(bids), str(tmp_path / "out"), "participant", "--acq", "ciss"]) == 18


def test_main_missing_landmarks_file(tmp_path, tiny_bids, capsys):
    bids = tiny_bids(tmp_path / "bids", [SLAB, HEAD])
    argv = [str(bids), str(tmp_path / "out"), "participant", "--localizer", "landmarks"]
    assert main([*argv, "--landmarks-file", str(tmp_path / "ears.tsv")]) == 66
    assert f"landmarks file not found: {(tmp_path / 'ears.tsv').resolve()}" in (
        capsys.readouterr().err
    )
    # usage errors are reported before missing files
    assert main([*argv, "--bids-filter-file", str(tmp_path / "f.json")]) == 2
    argv[-1] = "auto"
    assert main([*argv, "--bids-filter-file", str(tmp_path / "f.json")]) == 66


def test_main_hands_over_to_participant_level(tmp_path, tiny_bids, capsys, monkeypatch):
    from ievnet_bids.cli import run

    bids = tiny_bids(tmp_path / "bids", [SLAB, HEAD]).resolve()
    argv = [str(bids), str(tmp_path / "out"), "participant"]

    seen = {}

    def runner(config, inputs):
        seen["inputs"] = inputs
        return {} if config.verbose == 0 else {"sub-01": "no ear found"}

    monkeypatch.setattr(run, "run_level", runner)
    assert main(argv) == 0
    assert [(i.subject, i.session, i.slabs, i.head) for i in seen["inputs"]] == [
        ("01", None, (bids / SLAB,), bids / HEAD)
    ]
    assert main([*argv, "-v"]) == 1
    assert "sub-01 failed: no ear found" in capsys.readouterr().err
