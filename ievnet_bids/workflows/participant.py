"""Participant level: one Nipype graph per participant/session.

``init_participant_wf`` → one ``init_slab_wf`` per inner-ear slab::

    inputnode → localize → extract_left ─┐
                         → extract_right ─┴→ segment (both ears, one batch)
                                             → map_back_left ─┐
                                             → map_back_right ┴→ ds_slab (stage + publish)
                                                                  → report → ds_report
                 (with a FLAIR: segment + map_back → hydrops → ds_slab, report)

``report`` computes the QC record and the figures of the slab (cached); ``ds_report``
publishes them (``..._desc-tfs_qc.json``, ``sub-XX/figures/*.png``). After each
participant/session ``sub-XX.html`` is (re)assembled, for failed units too (errors section).

This module only builds the graphs; :mod:`ievnet_bids.workflows.execution` runs them
(scheduling, crash parsing, report assembly).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ievnet_bids.bids.query import SubjectInputs
from ievnet_bids.config import RunConfig
from ievnet_bids.interfaces.derivatives import SlabDerivativesSink
from ievnet_bids.interfaces.ears import ExtractEar, LocalizeEars, MapBackEar, SegmentEars
from ievnet_bids.interfaces.hydrops import LIST_OUTPUTS, QuantifyHydrops
from ievnet_bids.interfaces.reports import PublishReportlets, ReportSlab

if TYPE_CHECKING:
    from ievnet_bids.templates import HeadTemplate

SIDES = ("left", "right")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", text)


def init_slab_wf(
    *,
    output_dir: Path,
    model: Path,
    localizer: str = "auto",
    landmarks: Mapping[str, Sequence[float]] | None = None,
    template: HeadTemplate | None = None,
    device: str = "auto",
    tta: bool = True,
    precision: str = "auto",
    omp_nthreads: int = 1,
    hydrops: bool = False,
    name: str = "slab_wf",
) -> pe.Workflow:
    """Segment both ears of one slab and write its derivatives.

    Inputs (``inputnode``): ``slab``, ``head`` (optional full-head image), ``flair`` (the
    session's FLAIR; used when ``hydrops``: a ``hydrops`` node then quantifies the ELS of
    both ears after segmentation and its outputs join the derivatives). ``template``: the
    template localizer's template (None: the shipped one).
    Outputs (``outputnode``): ``out_files``, ``volumes``.

    >>> wf = init_slab_wf(output_dir=Path("/tmp/out"), model=Path("m.safetensors"))
    >>> sorted(wf.list_node_names())[:3]
    ['ds_report', 'ds_slab', 'extract_left']
    """
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["slab", "head", "flair"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["out_files", "volumes"]), name="outputnode")
    localize = pe.Node(
        LocalizeEars(
            localizer=localizer,
            landmarks=json.dumps({k: list(v) for k, v in landmarks.items()}) if landmarks else "",
            template=template.to_json() if template is not None else "",
            threads=omp_nthreads,
        ),
        name="localize",
        mem_gb=1.5,
        n_procs=omp_nthreads,
    )
    segment = pe.Node(
        SegmentEars(
            model=str(model),
            device=device,
            tta=tta,
            precision=precision,
            omp_nthreads=omp_nthreads,
        ),
        name="segment",
        mem_gb=3.0,
        n_procs=omp_nthreads,
    )
    merge_rois = pe.Node(niu.Merge(2), name="merge_rois", run_without_submitting=True)
    ds_slab = pe.Node(SlabDerivativesSink(output_dir=str(output_dir)), name="ds_slab", mem_gb=1.0)
    report = pe.Node(ReportSlab(output_dir=str(output_dir)), name="report", mem_gb=1.5)
    ds_report = pe.Node(PublishReportlets(), name="ds_report", run_without_submitting=True)
    wf.connect([
        (inputnode, localize, [("slab", "slab"), ("head", "head")]),
        (inputnode, segment, [("slab", "slab")]),
        (localize, segment, [("centres", "centres")]),
        (merge_rois, segment, [("out", "rois")]),
        (inputnode, ds_slab, [("slab", "slab"), ("head", "head")]),
        (localize, ds_slab, [("centres", "centres")]),
        (segment, ds_slab, [("record", "segment_record"), ("images", "roi_images"),
                            ("probs", "roi_probs"), ("masks", "roi_masks")]),
        (ds_slab, outputnode, [("out_files", "out_files"), ("volumes", "volumes")]),
        (inputnode, report, [("slab", "slab"), ("head", "head")]),
        (localize, report, [("centres", "centres")]),
        (segment, report, [("record", "segment_record"), ("probs", "roi_probs"),
                           ("masks", "roi_masks")]),
        (ds_slab, report, [("volumes", "volumes")]),
        (report, ds_report, [("staged", "staged")]),
    ])  # fmt: skip
    for i, side in enumerate(SIDES, start=1):
        extract = pe.Node(
            ExtractEar(side=side, model=str(model)), name=f"extract_{side}", mem_gb=1.0
        )
        map_back = pe.Node(MapBackEar(side=side), name=f"map_back_{side}", mem_gb=1.5)
        wf.connect([
            (inputnode, extract, [("slab", "slab")]),
            (localize, extract, [("centres", "centres")]),
            (extract, merge_rois, [("roi", f"in{i}")]),
            (inputnode, map_back, [("slab", "slab")]),
            (segment, map_back, [("probs", "probs"), ("masks", "masks"), ("images", "images"),
                                 ("threshold", "threshold"),
                                 ("border_fluid_fraction", "border_fluid_fraction")]),
            (map_back, ds_slab, [("prob", f"{side}_prob"), ("mask", f"{side}_mask")]),
            (map_back, report, [("mask", f"{side}_mask")]),
        ])  # fmt: skip
    if hydrops:
        _add_hydrops(wf, inputnode, segment, ds_slab, report)
    return wf


def _add_hydrops(
    wf: pe.Workflow,
    inputnode: pe.Node,
    segment: pe.Node,
    ds_slab: pe.Node,
    report: pe.Node,
) -> None:
    """The hydrops branch: segment (+ slab masks) → hydrops → ds_slab and report."""
    hydrops = pe.Node(QuantifyHydrops(), name="hydrops", mem_gb=2.0)
    wf.connect([
        (inputnode, hydrops, [("slab", "slab"), ("flair", "flair")]),
        (segment, hydrops, [("masks", "roi_masks")]),
        (inputnode, ds_slab, [("flair", "flair")]),
        (hydrops, ds_slab, [("record", "hydrops_record"), *((k, k) for k in LIST_OUTPUTS)]),
        (hydrops, report, [("record", "hydrops_record"), ("roi_flairs", "roi_flairs"),
                           ("roi_els", "roi_els")]),
    ])  # fmt: skip
    for side in SIDES:
        wf.connect(wf.get_node(f"map_back_{side}"), "mask", hydrops, f"{side}_mask")


def init_participant_wf(
    *,
    unit: SubjectInputs,
    config: RunConfig,
    landmarks: Mapping[str, Sequence[float]] | None = None,
    template: HeadTemplate | None = None,
    name: str | None = None,
) -> pe.Workflow:
    """All slabs of one participant/session (``unit``), one ``init_slab_wf`` each;
    ``template``: the prepared ``config.template`` (None: the shipped one)."""
    wf = pe.Workflow(name=name or f"{_safe(unit.name)}_wf")
    for k, slab in enumerate(unit.slabs):
        slab_wf = init_slab_wf(
            output_dir=config.output_dir,
            model=config.model_path(),
            localizer=config.localizer,
            landmarks=landmarks,
            template=template,
            device=config.device,
            tta=config.tta,
            precision=config.precision,
            omp_nthreads=config.omp_nthreads,
            hydrops=config.hydrops and unit.flair is not None,
            name=f"slab{k}_{_safe(Path(slab).name.split('.')[0])}_wf",
        )
        slab_wf.inputs.inputnode.slab = str(slab)
        if unit.head is not None:
            slab_wf.inputs.inputnode.head = str(unit.head)
        if config.hydrops and unit.flair is not None:
            slab_wf.inputs.inputnode.flair = str(unit.flair)
        wf.add_nodes([slab_wf])
    return wf
