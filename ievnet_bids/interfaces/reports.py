"""Report nodes of the per-slab graph: QC + figures (cached), then publishing (always runs)."""

from __future__ import annotations

import json
from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from ievnet_bids.records import HydropsRecord, Localization, SegmentRecord


class _ReportSlabInputSpec(BaseInterfaceInputSpec):
    slab = File(exists=True, mandatory=True, desc="inner-ear T2 slab")
    head = File(exists=True, desc="full-head image used for localization")
    centres = File(exists=True, mandatory=True, desc="JSON localization record")
    segment_record = File(exists=True, mandatory=True, desc="JSON segmentation record")
    roi_probs = traits.List(File(exists=True), mandatory=True, desc="ROI probabilities (L, R)")
    roi_masks = traits.List(File(exists=True), mandatory=True, desc="ROI masks (L, R)")
    left_mask = File(exists=True, mandatory=True, desc="native-grid mask, left ear")
    right_mask = File(exists=True, mandatory=True, desc="native-grid mask, right ear")
    volumes = File(exists=True, desc="published volumes table (orders this node after it)")
    hydrops_record = File(exists=True, desc="hydrops.json (sessions with a FLAIR)")
    roi_flairs = traits.List(File(exists=True), desc="FLAIR on the ROI grids (L, R)")
    roi_els = traits.List(File(exists=True), desc="ELS on the ROI grids (L, R)")
    output_dir = Directory(mandatory=True)


class _ReportSlabOutputSpec(TraitedSpec):
    staged = File(exists=True, desc="JSON {staged file: destination}")
    qc = File(exists=True, desc="the slab's QC record (staged copy)")


class ReportSlab(SimpleInterface):
    """QC record (``..._desc-tfs_qc.json``) and report figures of one slab, staged in cwd."""

    input_spec = _ReportSlabInputSpec
    output_spec = _ReportSlabOutputSpec

    def _run_interface(self, runtime):
        from ievnet_bids.reports.participant import stage_slab_report

        inputs = self.inputs
        hydrops = None
        if inputs.hydrops_record:
            hydrops = (
                HydropsRecord.from_json(inputs.hydrops_record),
                [Path(p) for p in inputs.roi_flairs],
                [Path(p) for p in inputs.roi_els],
            )
        staged, qc_path = stage_slab_report(
            slab=Path(inputs.slab),
            head=Path(inputs.head) if inputs.head else None,
            localization=Localization.from_json(inputs.centres),
            segment=SegmentRecord.from_json(inputs.segment_record),
            roi_probs=[Path(p) for p in inputs.roi_probs],
            roi_masks=[Path(p) for p in inputs.roi_masks],
            native_masks={"left": Path(inputs.left_mask), "right": Path(inputs.right_mask)},
            stage_dir=Path(runtime.cwd) / "staged",
            output_dir=Path(inputs.output_dir),
            hydrops=hydrops,
        )
        out = Path(runtime.cwd) / "staged.json"
        out.write_text(json.dumps({str(k): str(v) for k, v in staged.items()}, indent=2))
        self._results["staged"] = str(out)
        self._results["qc"] = str(qc_path)
        return runtime


class _PublishInputSpec(BaseInterfaceInputSpec):
    staged = File(exists=True, mandatory=True, desc="JSON {staged file: destination}")


class _PublishOutputSpec(TraitedSpec):
    out_files = traits.List(File(exists=True), desc="published files")


class PublishReportlets(SimpleInterface):
    """Publish staged report files; always runs (cheap), byte-identical files are skipped."""

    input_spec = _PublishInputSpec
    output_spec = _PublishOutputSpec
    always_run = True

    def _run_interface(self, runtime):
        from ievnet_bids.bids.derivatives import publish

        mapping = json.loads(Path(self.inputs.staged).read_text())
        staged = {Path(k): Path(v) for k, v in mapping.items()}
        publish(staged)
        self._results["out_files"] = [str(v) for v in staged.values()]
        return runtime
