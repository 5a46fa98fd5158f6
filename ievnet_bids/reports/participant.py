"""The participant report: per-slab QC record + figures (workflow node) and ``sub-XX.html``.

Per slab, :func:`stage_slab_report` (run by the ``report`` node) writes

* ``sub-XX/[ses-YY/]anat/<slab entities>_desc-tfs_qc.json``: inputs, localization, model,
  per-ear measurements (native volume and components; topology and boundary probability on
  the ROI grid the model worked on) and every QC flag with its reason;
* ``sub-XX/figures/<slab entities>_desc-<name>_<suffix>.png``: ``localization`` (and
  ``headlocalization``), ``axial``/``coronal``/``sagittal`` mosaics and ``surface``.

After each participant/session, :func:`write_unit_status` records how it went
(``logs/<unit>_status.json``) and :func:`write_subject_report` assembles ``sub-XX.html`` from
what is on disk (all sessions of the subject, crash files in ``sub-XX/log/``). The page links
its figures relatively and needs nothing online.
"""

from __future__ import annotations

import json
import logging
import platform
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ievnet_bids import qc as Q
from ievnet_bids.bids import derivatives as D
from ievnet_bids.records import HydropsRecord, Localization, SegmentRecord
from ievnet_bids.reports import figures as F

LOG = logging.getLogger("ievnet_bids")
SIDES = ("left", "right")
FIGURES = (
    "localization", "headlocalization", "axial", "coronal", "sagittal", "surface",
    "hydropsaxial", "hydropscoronal",
)  # fmt: skip
HYDROPS_TITLE = {
    view: f"FLAIR (iMRI) registered to the slab, {view} slices: TFS contour cyan, ELS magenta"
    for view in ("axial", "coronal")
}
VERSION_PACKAGES = ("numpy", "scipy", "nibabel", "nipype", "torch", "monai", "matplotlib")
MAX_CRASH_CHARS = 20000
REPORT_BIDSIGNORE = ("sub-*/figures", "sub-*/log", "figures")
"""``.bidsignore`` lines for the report outputs. Without a trailing slash: bids-validator 2
flags the folder itself (NOT_INCLUDED) for a pattern like ``sub-*/figures/``."""


# --------------------------------------------------------------------------- per slab (node)
def _roi_image(prob_path: Path, side: str, slab_img: Any) -> np.ndarray:
    """The ROI image beside the probability (``roi_<side>_image.nii.gz``), else resampled."""
    sibling = prob_path.with_name(f"roi_{side}_image.nii.gz")
    if sibling.is_file():
        return nib.load(str(sibling)).get_fdata(dtype=np.float32)
    from ievnet_bids.geometry.extract import extract_roi
    from ievnet_bids.segmentation import grid_of

    return extract_roi(slab_img, grid_of(nib.load(str(prob_path))), order=1)


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def stage_slab_report(
    *,
    slab: Path,
    head: Path | None,
    localization: Localization,
    segment: SegmentRecord,
    roi_probs: Sequence[Path],
    roi_masks: Sequence[Path],
    native_masks: Mapping[str, Path],
    stage_dir: Path,
    output_dir: Path,
    hydrops: tuple[HydropsRecord, Sequence[Path], Sequence[Path]] | None = None,
) -> tuple[dict[Path, Path], Path]:
    """Stage the QC record and the figures of one slab; returns ``({staged: dest}, qc)``.

    ``hydrops`` (sessions with a FLAIR): the record and each ear's ROI-grid FLAIR and ELS,
    drawn as FLAIR mosaics with the TFS and ELS contours, the numbers in the QC record."""
    staging = D.Staging(slab, output_dir, stage_dir)
    slab_img = nib.load(str(slab))
    _, suffix, _ = D.parse_bids_name(slab)
    ears: dict[str, F.EarData] = {}
    records: dict[str, dict[str, Any]] = {}
    rois: dict[str, tuple[np.ndarray, tuple[int, ...]]] = {}
    for i, side in enumerate(SIDES):
        prob_img = nib.load(str(roi_probs[i]))
        prob = prob_img.get_fdata(dtype=np.float32)
        mask = np.asanyarray(nib.load(str(roi_masks[i])).dataobj) > 0
        spacing = tuple(float(z) for z in prob_img.header.get_zooms()[:3])
        ears[side] = F.EarData(
            side, _roi_image(Path(roi_probs[i]), side, slab_img), mask, prob, spacing
        )
        rois[side] = (np.asarray(prob_img.affine), tuple(prob.shape))
        native = nib.load(str(native_masks[side]))
        ear = segment.ears[side]
        records[side] = dict(ear.qc)  # computed once, on the ROI grid, by the segment node
        records[side]["slab_volume_mm3"] = round(
            float(np.count_nonzero(np.asanyarray(native.dataobj)))
            * float(np.prod(native.header.get_zooms()[:3])),
            3,
        )
        records[side]["roi_centre_mm"] = ear.roi_centre_mm
        records[side]["labyrinth_centre_mm"] = ear.labyrinth_centre_mm
        records[side]["recentred_mm"] = ear.recentred_mm
        records[side]["components_kept"] = len(ear.cleanup.get("kept", []))
        records[side]["components_dropped"] = ear.cleanup.get(
            "n_dropped", len(ear.cleanup.get("dropped", []))
        )

    figures: dict[str, str] = {}
    figure_errors: dict[str, str] = {}

    def stage_png(name: str, draw: Any) -> None:
        """Draw one figure; a drawing error is recorded (and shown), not raised."""
        tmp, dest = staging.paths(
            space=None, desc=name, suffix=suffix, extension=".png", datatype="figures"
        )
        try:
            draw(tmp)
        except Exception as err:
            LOG.warning("%s: figure %s failed", slab.name, name, exc_info=True)
            figure_errors[name] = f"{type(err).__name__}: {err}"
            return
        staging.add(tmp, dest)
        figures[name] = _rel(dest, output_dir)

    final = {s: records[s]["labyrinth_centre_mm"] or records[s]["roi_centre_mm"] for s in SIDES}
    final = {s: c for s, c in final.items() if c is not None}
    initial = localization.initial
    stage_png(
        "localization",
        lambda p: F.localization_figure(
            slab_img, rois, p, initial=initial, final=final, title=f"{slab.name}"
        ),
    )
    if head is not None:
        stage_png(
            "headlocalization",
            lambda p: F.localization_figure(
                nib.load(str(head)), rois, p, initial=initial, final=final, title=head.name
            ),
        )
    for view in F.VIEWS:
        stage_png(view, lambda p, v=view: F.mosaic_figure(ears, v, p))
    stage_png("surface", lambda p: F.surface_figure(ears, p))
    if hydrops is not None:
        flair_ears = _flair_ears(ears, *hydrops[1:])
        for view in ("axial", "coronal"):
            stage_png(
                f"hydrops{view}",
                lambda p, v=view: F.mosaic_figure(flair_ears, v, p, heading=HYDROPS_TITLE[v]),
            )

    record = {
        "slab": slab.name,
        "head": head.name if head is not None else None,
        "localizer": {
            key: getattr(localization, key)
            for key in (
                "localizer",
                "initial",
                "refined",
                "moved_mm",
                "method",
                "score",
                "seconds",
                "template",
            )
        },
        "model": {
            "name": segment.model_name,
            "sha256": segment.model_sha256,
            "threshold": segment.inference.get("ProbabilityThreshold"),
            "tta_flip": segment.inference.get("FlipTTA"),
        },
        "thresholds": Q.thresholds(),
        "ears": records,
        "figures": figures,
        "figure_errors": figure_errors,
    }
    if hydrops is not None:
        record["hydrops"] = {
            "flair": Path(hydrops[0].flair).name,
            "ears": {side: asdict(ear) for side, ear in hydrops[0].ears.items()},
        }
    qc_tmp, qc_dest = staging.paths(**D.QC_RECORD.entities())
    D.write_json_atomic(record, qc_tmp)
    staging.add(qc_tmp, qc_dest)
    return staging.files, qc_tmp


def _flair_ears(
    ears: Mapping[str, F.EarData], flairs: Sequence[Path], els: Sequence[Path]
) -> dict[str, F.EarData]:
    """Each ear's registered FLAIR with its TFS mask and, as the overlay, its ELS."""
    out = {}
    for i, side in enumerate(SIDES):
        flair = nib.load(str(flairs[i])).get_fdata(dtype=np.float32)
        overlay = np.asanyarray(nib.load(str(els[i])).dataobj) > 0
        out[side] = F.EarData(side, flair, ears[side].mask, None, ears[side].spacing, overlay)
    return out


# --------------------------------------------------------------------------- unit status
def status_path(output_dir: Path, unit_name: str) -> Path:
    """``output_dir/logs/<unit>_status.json``."""
    return Path(output_dir) / "logs" / f"{unit_name}_status.json"


def write_unit_status(
    output_dir: Path,
    *,
    unit_name: str,
    subject: str,
    session: str | None,
    slabs: Sequence[Path],
    head: Path | None,
    status: str,
    reason: str = "",
    started: float,
    seconds: float,
    run_id: str = "",
) -> Path:
    """Record how one participant/session went (``status``: ``ok`` or ``failed``)."""
    return D.write_json_atomic(
        {
            "unit": unit_name,
            "subject": subject,
            "session": session,
            "slabs": [str(p) for p in slabs],
            "head": str(head) if head is not None else None,
            "status": status,
            "reason": reason,
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
            "started_epoch": started,
            "seconds": round(seconds, 1),
            "run_id": run_id,
        },
        status_path(output_dir, unit_name),
    )


# --------------------------------------------------------------------------- sub-XX.html
def versions() -> dict[str, str]:
    """Versions of ievnet-bids, Python and the main libraries (installed metadata)."""
    from ievnet_bids import __version__

    out = {"ievnet-bids": __version__, "python": platform.python_version()}
    for pkg in VERSION_PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def _num(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if np.isnan(out) else out


def asymmetry_index(left: float | None, right: float | None) -> float | None:
    """``100 · (L − R) / ((L + R) / 2)`` in percent (``None`` when undefined)."""
    if left is None or right is None or left + right <= 0:
        return None
    return 100.0 * (left - right) / ((left + right) / 2.0)


def _session_of(key: str) -> str | None:
    match = re.search(r"_ses-([A-Za-z0-9]+)", key)
    return match.group(1) if match else None


def _session_sort(ses: str | None) -> tuple[int, int, str]:
    if ses is None:
        return (0, 0, "")
    return (1, int(ses), ses) if ses.isdigit() else (1, 1 << 30, ses)


def _crash_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.glob("crash-*") if p.is_file()), key=lambda p: p.name)


def _read_crash(path: Path) -> str:
    text = path.read_text(errors="replace")
    if len(text) > MAX_CRASH_CHARS:
        text = "… (truncated)\n" + text[-MAX_CRASH_CHARS:]
    return text


def collect_subject(output_dir: Path, subject: str) -> dict[str, Any]:
    """Everything ``sub-<subject>.html`` shows, read from the output folder."""
    output_dir = Path(output_dir)
    sub_dir = output_dir / f"sub-{subject}"
    where = {"sub": subject}
    tsvs = {D.source_prefix(p): p for p in D.find_derivatives(output_dir, D.VOLUMES, where)}
    qcs = {D.source_prefix(p): p for p in D.find_derivatives(output_dir, D.QC_RECORD, where)}
    slabs = []
    for key in sorted(set(tsvs) | set(qcs), key=lambda k: (_session_sort(_session_of(k)), k)):
        rows = {r["side"]: r for r in D.read_tsv(tsvs[key])} if key in tsvs else {}
        qc = json.loads(qcs[key].read_text()) if key in qcs else {}
        ears = {}
        for side in SIDES:
            row = rows.get(side, {})
            rec = qc.get("ears", {}).get(side, {})
            flags = rec.get("flags")
            if flags is None:
                names = Q.flag_names(row.get("qc_flags"))
                flags = [{"name": n, "reason": ""} for n in names]
            centre = [_num(row.get(f"centre_{a}_mm")) for a in "xyz"]
            hydrops_ear = qc.get("hydrops", {}).get("ears", {}).get(side)
            ears[side] = {
                "hydrops": _hydrops_cells(hydrops_ear) if hydrops_ear else None,
                "volume_mm3": _num(row.get("volume_mm3", rec.get("volume_mm3"))),
                "n_components": row.get("n_components", "n/a"),
                "centre_mm": centre if None not in centre else rec.get("labyrinth_centre_mm"),
                "moved_mm": _num(row.get("refinement_moved_mm", rec.get("moved_mm"))),
                "topology": rec.get("topology", {}),
                "boundary_prob": rec.get("boundary_prob"),
                "component_volumes_mm3": rec.get("component_volumes_mm3", []),
                "flags": flags,
            }
        first = next(iter(rows.values()), {})
        loc = qc.get("localizer", {})
        entities = D.parse_bids_name(key + "_x.nii.gz")[0]
        slabs.append(
            {
                "key": key,
                "anchor": re.sub(r"[^A-Za-z0-9_-]", "_", key),
                "session": entities.get("ses"),
                "label": key.removeprefix(f"sub-{subject}").strip("_") or key,
                "slab": qc.get("slab") or f"{key}_T2w",
                "head": qc.get("head"),
                "localizer": loc.get("localizer") or first.get("localizer"),
                "initial": loc.get("initial") or {},
                "refined": loc.get("refined") or {},
                "method": loc.get("method") or {},
                "loc_seconds": (loc.get("seconds") or {}).get("total"),
                "template": loc.get("template"),
                "model": qc.get("model")
                or {"name": first.get("model"), "sha256": first.get("model_sha256")},
                "ears": ears,
                "asymmetry": asymmetry_index(
                    ears["left"]["volume_mm3"], ears["right"]["volume_mm3"]
                ),
                "flair": (qc.get("hydrops") or {}).get("flair"),
                "figures": {k: v for k, v in qc.get("figures", {}).items() if k in FIGURES},
                "figure_errors": qc.get("figure_errors", {}),
                "figure_exists": {
                    k: (output_dir / v).is_file() for k, v in qc.get("figures", {}).items()
                },
            }
        )
    units = []
    for path in sorted((output_dir / "logs").glob(f"sub-{subject}_*status.json")):
        try:
            units.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    units.sort(key=lambda u: _session_sort(u.get("session")))
    errors = []
    log_dir = sub_dir / "log"
    folders = [log_dir]
    if log_dir.is_dir():
        folders += sorted(p for p in log_dir.iterdir() if p.is_dir())
    by_unit = {u["unit"]: u for u in units}
    for folder in folders:
        session = folder.name.removeprefix("ses-") if folder != log_dir else None
        unit_name = f"sub-{subject}" + (f"_ses-{session}" if session else "")
        unit = by_unit.get(unit_name, {})
        since = float(unit.get("started_epoch", 0.0)) - 1.0
        for crash in _crash_files(folder):
            errors.append(
                {
                    "unit": unit_name,
                    "file": _rel(crash, output_dir),
                    "name": crash.name,
                    "node": _crash_node(crash),
                    "current": crash.stat().st_mtime >= since,
                    "text": _read_crash(crash),
                }
            )
    failed = [u for u in units if u.get("status") != "ok"]
    flags = [
        {"slab": s["label"], "side": side, **flag}
        for s in slabs
        for side in SIDES
        for flag in s["ears"][side]["flags"]
    ]
    return {
        "subject": subject,
        "slabs": slabs,
        "units": units,
        "failed": failed,
        "errors": errors,
        "flags": flags,
        "seconds": sum(float(u.get("seconds") or 0.0) for u in units),
    }


def _hydrops_cells(ear: Mapping[str, Any]) -> dict[str, Any]:
    """The report's ELS numbers of one ear (from the QC record's ``hydrops`` entry)."""
    parts = ear.get("structures", {})
    reg = ear.get("registration", {})
    return {
        "els_volume_mm3": _num(ear.get("els_volume_mm3")),
        "els_percent": _num(ear.get("els_percent")),
        **{f"{k}_els_percent": _num(parts.get(k, {}).get("els_percent")) for k in parts},
        **{f"{k}_volume_mm3": _num(parts.get(k, {}).get("tfs_volume_mm3")) for k in parts},
        "registration_deg": _num(reg.get("rotation_deg")),
        "registration_mm": _num(reg.get("translation_mm")),
        "template_dice": _num(ear.get("template_dice")),
    }


def _crash_node(path: Path) -> str:
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("Node:"):
            return line.removeprefix("Node:").strip()
    return "?"


def write_subject_report(output_dir: Path, subject: str) -> Path:
    """Assemble ``output_dir/sub-<subject>.html`` from the subject's outputs and logs."""
    from ievnet_bids.reports.html import render

    D.write_bidsignore(output_dir, extra=REPORT_BIDSIGNORE)
    data = collect_subject(Path(output_dir), subject)
    text = render(
        "participant.html.j2",
        **data,
        versions=versions(),
        thresholds=Q.thresholds(),
        flag_help=Q.FLAG_HELP,
        generated=time.strftime("%Y-%m-%d %H:%M:%S"),
        sides=SIDES,
    )
    return D.write_text_atomic(text, Path(output_dir) / f"sub-{subject}.html")
