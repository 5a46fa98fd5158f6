"""Interfaces of the per-slab graph: localize → extract (per ear) → segment → map back."""

from __future__ import annotations

import json
from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from ievnet_bids.config import PRECISIONS, autocast_setting
from ievnet_bids.records import Localization, SegmentRecord

SIDES = ("left", "right")


class _LocalizeInputSpec(BaseInterfaceInputSpec):
    slab = File(exists=True, mandatory=True, desc="inner-ear T2 slab")
    head = File(exists=True, desc="full-head image for template registration")
    localizer = traits.Enum("auto", "template", "detect", "landmarks", usedefault=True)
    landmarks = traits.Str("", usedefault=True, desc="JSON {left: [x,y,z], right: [x,y,z]}")
    template = traits.Str(
        "", usedefault=True, desc="JSON HeadTemplate of the template localizer; empty: shipped"
    )
    threads = traits.Int(1, usedefault=True)


class _LocalizeOutputSpec(TraitedSpec):
    centres = File(exists=True, desc="JSON localization record")


class LocalizeEars(SimpleInterface):
    """First guess of both ear centres, refined by a ±20 mm labyrinth search."""

    input_spec = _LocalizeInputSpec
    output_spec = _LocalizeOutputSpec

    def _run_interface(self, runtime):
        from ievnet_bids.localize.ears import localize_ears
        from ievnet_bids.templates import HeadTemplate

        template = self.inputs.template
        localization = localize_ears(
            Path(self.inputs.slab),
            head=Path(self.inputs.head) if self.inputs.head else None,
            localizer=self.inputs.localizer,
            landmarks=json.loads(self.inputs.landmarks) if self.inputs.landmarks else None,
            template=HeadTemplate.from_json(template) if template else None,
            threads=self.inputs.threads,
        )
        out = Path(runtime.cwd) / "centres.json"
        localization.to_json(out)
        self._results["centres"] = str(out)
        return runtime


class _ExtractInputSpec(BaseInterfaceInputSpec):
    slab = File(exists=True, mandatory=True)
    centres = File(exists=True, mandatory=True)
    side = traits.Enum(*SIDES, mandatory=True)
    model = File(exists=True, desc="model weights: the ROI shape and spacing of their card")


class _ExtractOutputSpec(TraitedSpec):
    roi = File(exists=True, desc="ROI image (the card's, 200×150×100 at 0.2 mm) on its own grid")


class ExtractEar(SimpleInterface):
    """Cubic-resample one ear's ROI from the slab, oriented along the head's axes, with the
    shape and spacing of the model's card (the published ROI without a model)."""

    input_spec = _ExtractInputSpec
    output_spec = _ExtractOutputSpec

    def _run_interface(self, runtime):
        import nibabel as nib
        import numpy as np

        from ievnet_bids.model.card import card_for_weights, default_card
        from ievnet_bids.segmentation import extract_ear, save_ear

        loc = Localization.from_json(self.inputs.centres)
        side = self.inputs.side
        slab = nib.load(self.inputs.slab)
        card = card_for_weights(self.inputs.model) if self.inputs.model else default_card()
        ear = extract_ear(
            slab, side, np.asarray(loc.refined[side]), np.asarray(loc.head_axes),
            shape=card.roi_shape, spacing_mm=card.roi_spacing_mm,
        )  # fmt: skip
        self._results["roi"] = str(save_ear(ear, Path(runtime.cwd))["image"])
        return runtime


class _SegmentInputSpec(BaseInterfaceInputSpec):
    slab = File(exists=True, mandatory=True)
    centres = File(exists=True, mandatory=True)
    rois = InputMultiObject(File(exists=True), mandatory=True, desc="left and right ROI")
    model = File(exists=True, mandatory=True, desc="model weights (safetensors or .pth)")
    device = traits.Enum("auto", "cpu", "cuda", usedefault=True)
    omp_nthreads = traits.Int(1, usedefault=True)
    tta = traits.Bool(True, usedefault=True, desc="average with the left-right flipped input")
    precision = traits.Enum(*PRECISIONS, usedefault=True, desc="network arithmetic")


class _SegmentOutputSpec(TraitedSpec):
    images = traits.List(File(exists=True), desc="final ROI images, left then right")
    probs = traits.List(File(exists=True), desc="ROI probabilities, left then right")
    masks = traits.List(File(exists=True), desc="cleaned ROI masks, left then right")
    threshold = traits.Float(desc="the model card's probability threshold")
    border_fluid_fraction = traits.Float(
        desc="the card's clean-up border_fluid_fraction (0: no border trim)"
    )
    record = File(exists=True, desc="JSON: per ear clean-up, centres, re-centring; model")


class SegmentEars(SimpleInterface):
    """Run IE-Vnet on both ears in one batch; re-centre on the found labyrinth if needed."""

    input_spec = _SegmentInputSpec
    output_spec = _SegmentOutputSpec

    def _run_interface(self, runtime):
        import nibabel as nib
        import numpy as np

        from ievnet_bids.model.infer import Segmenter
        from ievnet_bids.model.weights import load_model, sha256_file
        from ievnet_bids.segmentation import EarRoi, ear_result, grid_of, save_ear, segment_ears

        loc = Localization.from_json(self.inputs.centres)
        model, card = load_model(self.inputs.model)
        segmenter = Segmenter(
            model,
            card,
            device=self.inputs.device,
            tta_flip=self.inputs.tta,
            omp_threads=self.inputs.omp_nthreads,
            amp=autocast_setting(self.inputs.precision),
        )
        ears = []
        for side, path in zip(SIDES, self.inputs.rois, strict=True):
            img = nib.load(path)
            data = np.asanyarray(img.dataobj, dtype=np.float32)
            ears.append(EarRoi(side, grid_of(img), data, source=Path(path)))
        slab = nib.load(self.inputs.slab)
        ears = segment_ears(
            ears,
            segmenter,
            slab_img=slab,
            head_axes=np.asarray(loc.head_axes),
            threshold=card.threshold,
            cleanup=card.cleanup,
        )
        cwd = Path(runtime.cwd)
        files = [save_ear(ear, cwd) for ear in ears]
        SegmentRecord(
            model_name=card.name,
            model_sha256=card.weights_sha256 or sha256_file(self.inputs.model),
            # provenance of the masks, as the derivative sidecars carry it
            inference={
                "ProbabilityThreshold": card.threshold,
                "FlipTTA": bool(self.inputs.tta),
                "NetworkPrecision": "bf16" if segmenter.amp else "fp32",
            },
            ears={ear.side: ear_result(ear, loc.moved_mm[ear.side], slab) for ear in ears},
        ).to_json(cwd / "segment.json")
        self._results["images"] = [str(f["image"]) for f in files]
        self._results["probs"] = [str(f["prob"]) for f in files]
        self._results["masks"] = [str(f["mask"]) for f in files]
        self._results["record"] = str(cwd / "segment.json")
        self._results["threshold"] = float(card.threshold)
        self._results["border_fluid_fraction"] = float(card.cleanup.border_fluid_fraction or 0.0)
        return runtime


class _MapBackInputSpec(BaseInterfaceInputSpec):
    slab = File(exists=True, mandatory=True)
    probs = traits.List(File(exists=True), mandatory=True)
    masks = traits.List(File(exists=True), mandatory=True)
    side = traits.Enum(*SIDES, mandatory=True)
    threshold = traits.Float(0.5, usedefault=True, desc="probability threshold of the mask")
    images = traits.List(File(exists=True), desc="ROI images, left then right (border trim)")
    border_fluid_fraction = traits.Float(
        0.0, usedefault=True, desc="the card's clean-up border_fluid_fraction (0: none)"
    )


class _MapBackOutputSpec(TraitedSpec):
    prob = File(exists=True, desc="probability on the slab's native grid")
    mask = File(exists=True, desc="mask on the slab's native grid")


class MapBackEar(SimpleInterface):
    """Linear interpolation of one ear's probability onto the slab, then threshold."""

    input_spec = _MapBackInputSpec
    output_spec = _MapBackOutputSpec

    def _run_interface(self, runtime):
        import nibabel as nib
        import numpy as np

        from ievnet_bids.geometry.extract import image_like
        from ievnet_bids.segmentation import map_back_ear, stored_probability

        i = SIDES.index(self.inputs.side)
        slab = nib.load(self.inputs.slab)
        prob, mask = map_back_ear(
            nib.load(self.inputs.probs[i]),
            nib.load(self.inputs.masks[i]),
            slab,
            threshold=self.inputs.threshold,
            image_roi=nib.load(self.inputs.images[i]) if self.inputs.images else None,
            border_fluid_fraction=self.inputs.border_fluid_fraction or None,
        )
        cwd = Path(runtime.cwd)
        for key, data, dtype in (
            ("prob", stored_probability(prob), np.float32),
            ("mask", mask, np.uint8),
        ):
            path = cwd / f"native_{self.inputs.side}_{key}.nii.gz"
            nib.save(image_like(data, slab, dtype), path)  # as published (a file copy)
            self._results[key] = str(path)
        return runtime
