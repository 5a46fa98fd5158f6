"""The hydrops node: FLAIR → SPACE per ear, structures, ELS, on the ROI and slab grids."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

SIDES = ("left", "right")
# The per-ear list outputs, also inputs of the derivatives sink (same names, same order)
LIST_OUTPUTS = (
    "roi_flairs", "roi_els", "roi_structures", "slab_els", "slab_structures", "transforms",
)  # fmt: skip


class _HydropsInputSpec(BaseInterfaceInputSpec):
    slab = File(exists=True, mandatory=True, desc="inner-ear T2 slab (SPACE)")
    flair = File(exists=True, mandatory=True, desc="delayed-gadolinium FLAIR of the session")
    roi_masks = traits.List(File(exists=True), mandatory=True, desc="ROI TFS masks, L then R")
    left_mask = File(exists=True, mandatory=True, desc="left TFS mask on the slab grid")
    right_mask = File(exists=True, mandatory=True, desc="right TFS mask on the slab grid")


class _HydropsOutputSpec(TraitedSpec):
    record = File(exists=True, desc="hydrops.json (HydropsRecord)")
    roi_flairs = traits.List(File(exists=True), desc="FLAIR on each ROI grid, L then R")
    roi_els = traits.List(File(exists=True), desc="ELS masks on the ROI grids, L then R")
    roi_structures = traits.List(File(exists=True), desc="structure labels on the ROI grids")
    slab_els = traits.List(File(exists=True), desc="ELS masks on the slab grid, L then R")
    slab_structures = traits.List(File(exists=True), desc="structure labels on the slab grid")
    transforms = traits.List(File(exists=True), desc="ITK from-FLAIR_to-T2w per ear, L then R")


class QuantifyHydrops(SimpleInterface):
    """Both ears of one slab: :func:`ievnet_bids.hydrops.quantify.quantify_ear`, then the ELS
    and the structures mapped onto the slab."""

    input_spec = _HydropsInputSpec
    output_spec = _HydropsOutputSpec

    def _run_interface(self, runtime):
        import nibabel as nib
        import numpy as np

        from ievnet_bids.geometry.roi import RoiGrid
        from ievnet_bids.hydrops.quantify import els_on_slab, quantify_ear, structures_on_slab
        from ievnet_bids.hydrops.register import itk_transform_text
        from ievnet_bids.records import HydropsRecord

        cwd = Path(runtime.cwd)
        slab = nib.load(self.inputs.slab)
        flair = nib.load(self.inputs.flair)
        ears = {}
        outputs: dict[str, list[str]] = {k: [] for k in LIST_OUTPUTS}
        for i, side in enumerate(SIDES):
            roi_img = nib.load(self.inputs.roi_masks[i])
            grid = RoiGrid(tuple(roi_img.shape[:3]), np.asarray(roi_img.affine, float))
            roi_tfs = np.asarray(roi_img.dataobj) > 0
            slab_tfs = np.asarray(nib.load(getattr(self.inputs, f"{side}_mask")).dataobj) > 0
            record, maps = quantify_ear(slab, flair, grid, roi_tfs, side)
            ears[side] = record
            files = {
                "roi_flairs": (maps.flair.astype(np.float32), grid.affine),
                "roi_els": (maps.els.astype(np.uint8), grid.affine),
                "roi_structures": (maps.structures, grid.affine),
                "slab_els": (
                    els_on_slab(maps.els, grid, slab, slab_tfs).astype(np.uint8),
                    slab.affine,
                ),
                "slab_structures": (
                    structures_on_slab(maps.structures, grid, slab, slab_tfs),
                    slab.affine,
                ),
            }
            for key, (data, affine) in files.items():
                path = cwd / f"{key}_{side}.nii.gz"
                nib.save(nib.Nifti1Image(data, affine), path)
                outputs[key].append(str(path))
            xfm = cwd / f"from-FLAIR_to-T2w_{side}_xfm.txt"
            xfm.write_text(itk_transform_text(np.asarray(record.registration["space_to_flair"])))
            outputs["transforms"].append(str(xfm))
        HydropsRecord(flair=str(self.inputs.flair), ears=ears).to_json(cwd / "hydrops.json")
        self._results.update(outputs)
        self._results["record"] = str(cwd / "hydrops.json")
        return runtime
