"""Templates through TemplateFlow: the shipped head, any cached template, offline.

A small TemplateFlow cache is built here: ``tpl-posedhead`` is the shipped mean head moved by
a known rigid transform (10° about an oblique axis, 15 mm) and resampled onto its own
axis-aligned grid, without a landmark file, so its ear landmarks must come from registering
the shipped head to it; ``tpl-posedheadlm`` is the same image with its own landmark file (and
a never-fetched stub of a second resolution); ``tpl-stub`` lists a head image that was never
downloaded (0 bytes); ``tpl-brainonly`` has only a skull-stripped image.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ievnet_bids.cli.run import main
from ievnet_bids.geometry.roi import RoiGrid, resample
from ievnet_bids.localize import template_landmarks
from ievnet_bids.resources import default_model_path
from ievnet_bids.synth.head import euler_rotation
from ievnet_bids.templates import (
    HeadTemplate,
    find_template,
    load_template,
    prepare_template,
    shipped_template,
    template_head_axes,
)
from ievnet_bids.workflows.execution import versioned_work_dir

SIDES = ("left", "right")
POSE_ANGLES_DEG = (6.0, -5.0, 6.0)  # one rotation of 10.0° about an oblique axis
POSE_SHIFT_MM = (10.0, -10.0, 5.0)  # 15.0 mm


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(a.T @ b) - 1) / 2, -1.0, 1.0))))


def _pose() -> np.ndarray:
    """Shipped template world → posed template world: rotation about the head's centre + shift."""
    t1, _, _ = load_template()
    pivot = RoiGrid(t1.shape, t1.affine).centre_mm
    rot = euler_rotation(POSE_ANGLES_DEG)
    pose = np.eye(4)
    pose[:3, :3] = rot
    pose[:3, 3] = pivot + np.asarray(POSE_SHIFT_MM) - rot @ pivot
    return pose


def _moved(points: dict[str, np.ndarray], pose: np.ndarray) -> dict[str, np.ndarray]:
    return {k: pose[:3, :3] @ v + pose[:3, 3] for k, v in points.items()}


def _write_template(home: Path, name: str, images: dict[str, nib.Nifti1Image | None]) -> Path:
    """``tpl-<name>/`` with a description and ``images`` (file suffix → image; None: stub)."""
    folder = home / f"tpl-{name}"
    folder.mkdir(parents=True)
    description = {
        "Identifier": name,
        "Name": f"test template {name}",
        "TemplateFlowVersion": "1.0.0",
    }
    (folder / "template_description.json").write_text(json.dumps(description))
    for suffix, img in images.items():
        path = folder / f"tpl-{name}_{suffix}.nii.gz"
        if img is None:
            path.write_bytes(b"")  # what a TemplateFlow skeleton holds until a file is fetched
        else:
            nib.save(img, path)
    return folder


@pytest.fixture(scope="module")
def templateflow_home(tmp_path_factory) -> dict:
    """A TemplateFlow cache with the templates of the module doc, and the truth."""
    home = tmp_path_factory.mktemp("templateflow")
    t1, _, landmarks = load_template()
    pose = _pose()
    pivot = RoiGrid(t1.shape, t1.affine).centre_mm
    grid = RoiGrid.centred((pose @ [*pivot, 1])[:3], shape=(130, 162, 152), spacing_mm=1.5)
    data = resample(np.asarray(t1.dataobj, np.float32), pose @ t1.affine, grid, order=1)
    posed = nib.Nifti1Image(np.round(data).clip(0, 32767).astype(np.int16), grid.affine)
    _write_template(home, "posedhead", {"res-01_T1w": posed})
    # partly downloaded, as caches often are: res-02 listed (a stub) but never fetched
    folder = _write_template(home, "posedheadlm", {"res-01_T1w": posed, "res-02_T1w": None})
    truth = _moved(landmarks, pose)
    rows = ["name\tx\ty\tz\tuncertainty_mm"]
    for side in SIDES:
        x, y, z = truth[f"inner_ear_{side}"]
        rows.append(f"inner_ear_{side}\t{x:.3f}\t{y:.3f}\t{z:.3f}\t2.0")
    (folder / "tpl-posedheadlm_landmarks.tsv").write_text("\n".join(rows) + "\n")
    _write_template(home, "stub", {"res-01_T1w": None})
    _write_template(home, "brainonly", {"res-01_desc-brain_T1w": posed})
    return {"home": home, "pose": pose, "landmarks": truth}


# --------------------------------------------------------------------------- the shipped head
def test_shipped_template_is_a_templateflow_folder_resolved_by_templateflow():
    files = find_template("meanhead")
    assert files.head_image.name == "tpl-meanhead_res-01_T1w.nii.gz"
    assert files.contrast == "T1w"
    assert files.landmarks_file is not None
    assert files.landmarks_file.name == "tpl-meanhead_landmarks.tsv"
    assert files.landmarks_file.with_suffix(".json").is_file()  # its sidecar
    assert files.t2like_image is not None
    assert files.t2like_image.name == "tpl-meanhead_res-01_desc-T2like_T2w.nii.gz"
    description = json.loads((files.head_image.parent / "template_description.json").read_text())
    assert description["res"]["01"]["zooms"] == [1.5, 1.5, 1.5]
    assert list(nib.load(files.head_image).header.get_zooms()) == [1.5, 1.5, 1.5]

    template = shipped_template()
    assert template.landmarks_source == "file"
    assert template.landmarks["inner_ear_left"] == [-44.5, 1.4, -45.5]
    assert template.landmarks["inner_ear_right"] == [33.2, -6.3, -47.0]
    assert template.uncertainty_mm["inner_ear_left"] == 7.0
    np.testing.assert_array_equal(template.head_axes, template_head_axes(template.landmarks))
    assert HeadTemplate.from_json(template.to_json()) == template


def test_a_user_template_of_the_shipped_name_does_not_replace_it(tmp_path, monkeypatch):
    t1, _, _ = load_template()
    _write_template(tmp_path, "meanhead", {"res-01_T1w": t1})
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path))
    head = find_template("meanhead").head_image
    assert head == Path(shipped_template().head_image)
    assert tmp_path not in head.parents


# --------------------------------------------------------------------------- other templates
def test_landmarks_are_registered_onto_a_posed_head(templateflow_home, tmp_path, monkeypatch):
    """No landmark file: the shipped head is registered to the template (affine + SyN)."""
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(templateflow_home["home"]))
    template = prepare_template("posedhead", cache_dir=tmp_path)
    truth = templateflow_home["landmarks"]
    errors = {
        k: float(np.linalg.norm(np.subtract(v, truth[k]))) for k, v in template.landmarks.items()
    }
    seconds = template.derivation["seconds"]
    rounded = {k: round(v, 2) for k, v in errors.items()}
    print(f"\nregistered landmarks onto the posed head in {seconds:.1f} s, errors (mm): {rounded}")
    assert template.landmarks_source == "registered"
    assert max(errors.values()) < 1.0
    shipped = shipped_template()
    pose = templateflow_home["pose"]
    carried_axes = pose[:3, :3] @ np.asarray(shipped.head_axes)
    assert _angle_deg(np.asarray(template.head_axes), carried_axes) < 1.0
    for name in ("inner_ear_left", "inner_ear_right"):
        added = template.derivation["added_uncertainty_mm"][name]
        assert added >= template_landmarks.FLOOR_MM
        assert template.uncertainty_mm[name] == pytest.approx(np.hypot(7.0, added), abs=0.01)
        assert template.uncertainty_mm[name] > shipped.uncertainty_mm[name]

    # cached: a second call reads the work folder instead of registering again
    def no_registration(*args, **kwargs):
        raise AssertionError("registered again instead of reading the cache")

    monkeypatch.setattr(template_landmarks, "transfer_landmarks", no_registration)
    assert prepare_template("posedhead", cache_dir=tmp_path) == template
    assert len(list(tmp_path.glob("tpl-posedhead_landmarks-*.json"))) == 1


def test_a_templates_own_landmark_file_is_used(templateflow_home, monkeypatch):
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(templateflow_home["home"]))
    template = prepare_template("posedheadlm")
    assert Path(template.head_image).name == "tpl-posedheadlm_res-01_T1w.nii.gz"  # not the stub
    assert template.landmarks_source == "file"
    assert template.derivation is None
    assert template.uncertainty_mm == {"inner_ear_left": 2.0, "inner_ear_right": 2.0}
    for side in SIDES:
        name = f"inner_ear_{side}"
        np.testing.assert_allclose(
            template.landmarks[name], templateflow_home["landmarks"][name], atol=1e-3
        )


def _participant(tmp_path: Path, *options: str) -> int:
    """``ievnet-bids`` participant level into ``tmp_path/out`` (the BIDS folder need not exist:
    the command line is checked first)."""
    return main([str(tmp_path / "bids"), str(tmp_path / "out"), "participant", *options])


def test_a_missing_template_is_one_line_and_exit_66(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path / "cache"))
    assert _participant(tmp_path, "--template", "NoSuchTemplate") == 66
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0]
    assert "'NoSuchTemplate'" in errors[0]
    assert f"TEMPLATEFLOW_HOME={tmp_path / 'cache'}" in errors[0]
    assert not (tmp_path / "out").exists()


def test_unusable_templates_are_refused_before_any_work(
    templateflow_home, tmp_path, monkeypatch, caplog, capsys
):
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(templateflow_home["home"]))
    # listed but never downloaded: a missing input (66), and nothing is fetched
    assert _participant(tmp_path, "--template", "stub") == 66
    assert "empty stub (never downloaded)" in caplog.text and "never downloads" in caplog.text
    capsys.readouterr()
    # no whole-head image, or no use for a template: usage errors (2), one line each
    assert _participant(tmp_path, "--template", "tpl-brainonly") == 2
    assert _participant(tmp_path, "--template", "posedhead", "--localizer", "detect") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    assert "'brainonly'" in lines[0] and "no whole-head T1w or T2w image" in lines[0]
    assert "--template is not used with --localizer detect" in lines[1]
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- offline guard
OFFLINE_SCRIPT = r"""
import json, socket, sys

attempts = []


def blocked(*args, **kwargs):
    attempts.append(repr(args)[:120])
    raise OSError("network blocked by the test")


socket.socket.connect = blocked
socket.socket.connect_ex = blocked
socket.create_connection = blocked
socket.getaddrinfo = blocked

from ievnet_bids.templateflow_offline import TemplateNotDownloadedError, templateflow_client
from ievnet_bids.templates import find_template, prepare_template

out = {"shipped": find_template("meanhead").head_image.name}
if sys.argv[1] == "cache":
    out["cached"] = prepare_template("posedheadlm").landmarks_source
    try:
        find_template("stub")
    except TemplateNotDownloadedError as err:
        out["stub"] = str(err)
    with templateflow_client(["stub"]) as client:  # TemplateFlow's own get, stub and all
        try:
            client.get("stub", suffix="T1w")
        except Exception as err:
            out["direct_get"] = f"{type(err).__name__}: {err}"
out["attempts"] = list(attempts)
try:  # the guard itself works
    socket.create_connection(("192.0.2.1", 80), timeout=0.1)
except OSError:
    pass
out["guard_counted"] = len(attempts) == len(out["attempts"]) + 1
print(json.dumps(out))
"""


def _offline(mode: str, env: dict[str, str], cwd: Path) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPLATEFLOW", "XDG_"))}
    result = subprocess.run(
        [sys.executable, "-c", OFFLINE_SCRIPT, mode],
        env=base | env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_nothing_is_downloaded_from_a_cache_with_stubs(templateflow_home, tmp_path):
    out = _offline("cache", {"TEMPLATEFLOW_HOME": str(templateflow_home["home"])}, tmp_path)
    assert out["guard_counted"]
    assert out["attempts"] == []
    assert out["shipped"] == "tpl-meanhead_res-01_T1w.nii.gz"
    assert out["cached"] == "file"
    assert "tpl-stub_res-01_T1w.nii.gz is an empty stub" in out["stub"]
    assert "No connection adapters" in out["direct_get"]  # the offline S3 root
    assert (
        templateflow_home["home"] / "tpl-stub" / "tpl-stub_res-01_T1w.nii.gz"
    ).stat().st_size == 0


def test_no_cache_no_network_and_nothing_written(tmp_path):
    """The container's case: no TemplateFlow cache at all. Importing TemplateFlow would unpack
    its skeleton into the missing cache folder; the guard keeps it out."""
    home, cache = tmp_path / "home", tmp_path / "templateflow"
    home.mkdir()
    out = _offline("none", {"TEMPLATEFLOW_HOME": str(cache), "HOME": str(home)}, tmp_path)
    assert out["guard_counted"] and out["attempts"] == []
    assert out["shipped"] == "tpl-meanhead_res-01_T1w.nii.gz"
    assert not cache.exists()
    assert list(home.iterdir()) == []


# --------------------------------------------------------------------------- participant level
def _qc(out: Path, sub: str, ses: str) -> dict:
    name = f"{sub}_{ses}_acq-space_desc-tfs_qc.json"
    return json.loads((out / sub / ses / "anat" / name).read_text())


def _posed_landmark_truth(truth: dict, side: str) -> np.ndarray:
    pose = np.asarray(truth["head_pose_template_to_scanner"])
    landmark = np.asarray(truth["ears"][side]["template_landmark_mm"])
    return pose[:3, :3] @ landmark + pose[:3, 3]


@pytest.mark.xdist_group("participant")  # shares the synthetic dataset with test_participant
@pytest.mark.skipif(not default_model_path().is_file(), reason="no shipped model")
def test_participant_level_with_a_posed_template(
    synth_bids, templateflow_home, tmp_path, monkeypatch, caplog
):
    """``--template posedhead`` (no landmark file): the ear centres are found as with the
    shipped head, and the outputs name the template."""
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(templateflow_home["home"]))
    sub, ses = "sub-02", "ses-1"
    out, work = tmp_path / "out", tmp_path / "work"
    args = [str(synth_bids), str(out), "participant", "-w", str(work), "--nprocs", "2"]
    assert main([*args, "--participant-label", "02", "--template", "posedhead"]) == 0
    assert (
        "template posedhead (tpl-posedhead_res-01_T1w.nii.gz): ear landmarks registered"
        in caplog.text
    )

    truth_dir = synth_bids.parent / "truth"
    truth = json.loads((truth_dir / f"{sub}_{ses}_truth.json").read_text())
    qc = _qc(out, sub, ses)
    assert qc["localizer"]["localizer"] == "template"
    assert qc["localizer"]["template"]["name"] == "posedhead"
    assert qc["localizer"]["template"]["landmarks_source"] == "registered"
    table = out / sub / ses / "anat" / f"{sub}_{ses}_acq-space_desc-tfs_volumes.tsv"
    rows = {r["side"]: r for r in csv.DictReader(table.open(), delimiter="\t")}
    first, final = {}, {}
    for side in SIDES:
        first[side] = np.linalg.norm(
            np.subtract(qc["localizer"]["initial"][side], _posed_landmark_truth(truth, side))
        )
        found = np.array([float(rows[side][f"centre_{a}_mm"]) for a in "xyz"])
        final[side] = np.linalg.norm(found - truth["ears"][side]["tfs_bbox_centre_mm"])
    print(
        "\n--template posedhead: first guess vs the posed landmark (mm)",
        {k: round(float(v), 2) for k, v in first.items()},
        "final centre vs the true labyrinth centre (mm)",
        {k: round(float(v), 2) for k, v in final.items()},
    )
    assert max(first.values()) < 2.0  # the template's landmarks land where the shipped ones do
    assert max(final.values()) < 2.0

    mask = (
        out / sub / ses / "anat" / f"{sub}_{ses}_acq-space_space-orig_label-TFS_desc-left_mask.json"
    )
    assert json.loads(mask.read_text())["LocalizationTemplate"] == "posedhead"
    assert "posedhead" in (out / f"{sub}.html").read_text()
    cached = list((versioned_work_dir(work) / "templates").glob("tpl-posedhead_landmarks-*.json"))
    assert len(cached) == 1


@pytest.mark.xdist_group("participant")  # shares the synthetic dataset with test_participant
def test_localization_with_a_templates_own_landmarks(synth_bids, templateflow_home, monkeypatch):
    """``tpl-posedheadlm`` carries its landmark file: no registration onto it, the ears are
    found from its landmarks (its world +z taken as up, 10° off for this posed head)."""
    from ievnet_bids.localize.ears import localize_ears

    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(templateflow_home["home"]))
    sub, ses = "sub-02", "ses-1"
    anat = synth_bids / sub / ses / "anat"
    truth = json.loads((synth_bids.parent / "truth" / f"{sub}_{ses}_truth.json").read_text())
    found = localize_ears(
        anat / f"{sub}_{ses}_acq-space_T2w.nii.gz",
        head=anat / f"{sub}_{ses}_T1w.nii.gz",
        template=prepare_template("posedheadlm"),
    )
    assert found.template["name"] == "posedheadlm"
    assert found.template["landmarks_source"] == "file"
    for side in SIDES:
        first = np.linalg.norm(np.subtract(found.initial[side], _posed_landmark_truth(truth, side)))
        final = np.linalg.norm(
            np.subtract(found.refined[side], truth["ears"][side]["tfs_bbox_centre_mm"])
        )
        print(f"\n{side}: first guess {first:.2f} mm off, refined {final:.2f} mm off")
        assert first < 2.0
        assert final < 2.0
