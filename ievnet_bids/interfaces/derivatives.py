"""The derivatives sink: stage every output of one slab, then publish them together."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from ievnet_bids.records import Localization, SegmentRecord


class _SinkInputSpec(BaseInterfaceInputSpec):
    slab = File(exists=True, mandatory=True)
    head = File(exists=True)
    centres = File(exists=True, mandatory=True)
    segment_record = File(exists=True, mandatory=True)
    left_prob = File(exists=True, mandatory=True)
    left_mask = File(exists=True, mandatory=True)
    right_prob = File(exists=True, mandatory=True)
    right_mask = File(exists=True, mandatory=True)
    roi_images = traits.List(File(exists=True), desc="ROI-grid images, left then right")
    roi_probs = traits.List(File(exists=True), desc="ROI-grid probabilities, left then right")
    roi_masks = traits.List(File(exists=True), desc="ROI-grid masks, left then right")
    flair = File(exists=True, desc="the session's FLAIR (hydrops inputs below given too)")
    hydrops_record = File(exists=True, desc="hydrops.json of the hydrops node")
    roi_flairs = traits.List(File(exists=True), desc="FLAIR on the ROI grids, L then R")
    roi_els = traits.List(File(exists=True), desc="ELS on the ROI grids, L then R")
    roi_structures = traits.List(File(exists=True), desc="structures on the ROI grids")
    slab_els = traits.List(File(exists=True), desc="ELS on the slab grid, L then R")
    slab_structures = traits.List(File(exists=True), desc="structures on the slab grid")
    transforms = traits.List(File(exists=True), desc="ITK from-FLAIR_to-T2w, L then R")
    output_dir = Directory(mandatory=True)


class _SinkOutputSpec(TraitedSpec):
    out_files = traits.List(File(exists=True), desc="published derivatives")
    volumes = File(exists=True, desc="the volumes table of this slab")


class SlabDerivativesSink(SimpleInterface):
    """Write masks, probsegs, dseg (+ sidecars), the ROI-grid image, probseg and mask of each
    ear, and the volumes table of one slab; with the hydrops inputs also the ELS, structure
    and FLAIR outputs.

    Always runs (cheap): a rerun re-publishes and skips byte-identical files.
    """

    input_spec = _SinkInputSpec
    output_spec = _SinkOutputSpec
    always_run = True

    def _run_interface(self, runtime):
        from ievnet_bids.bids.derivatives import publish
        from ievnet_bids.outputs import HydropsOutputs, stage_slab_outputs
        from ievnet_bids.records import HydropsRecord

        loc = Localization.from_json(self.inputs.centres)
        seg = SegmentRecord.from_json(self.inputs.segment_record)
        ears = {}
        for side in ("left", "right"):
            ears[side] = {
                "prob": getattr(self.inputs, f"{side}_prob"),
                "mask": getattr(self.inputs, f"{side}_mask"),
                "centre_mm": seg.ears[side].centre_mm,
                "moved_mm": seg.ears[side].moved_mm,
                "qc": seg.ears[side].qc,
            }
        rois = None
        if self.inputs.roi_masks:
            rois = {
                side: {
                    "image": self.inputs.roi_images[i],
                    "prob": self.inputs.roi_probs[i],
                    "mask": self.inputs.roi_masks[i],
                }
                for i, side in enumerate(("left", "right"))
            }
        hydrops = None
        if self.inputs.hydrops_record:
            from ievnet_bids.interfaces.hydrops import LIST_OUTPUTS

            hydrops = HydropsOutputs(
                record=HydropsRecord.from_json(self.inputs.hydrops_record),
                flair=Path(self.inputs.flair),
                **{k: [Path(f) for f in getattr(self.inputs, k)] for k in LIST_OUTPUTS},
            )
        staged, _ = stage_slab_outputs(
            Path(self.inputs.slab),
            ears,
            stage_dir=Path(runtime.cwd) / "staged",
            output_dir=Path(self.inputs.output_dir),
            model_name=seg.model_name,
            model_sha256=seg.model_sha256,
            localizer=loc.localizer,
            head=Path(self.inputs.head) if self.inputs.head else None,
            inference=seg.inference,
            rois=rois,
            hydrops=hydrops,
            template=(loc.template or {}).get("name"),
        )
        publish(staged)
        self._results["out_files"] = [str(d) for d in staged.values()]
        self._results["volumes"] = next(str(d) for d in staged.values() if d.name.endswith(".tsv"))
        return runtime
