"""Typed per-slab records between the participant-level nodes (:mod:`ievnet_bids.records`)."""

from __future__ import annotations

import json
import math

import pytest

from ievnet_bids.records import EarResult, Localization, SegmentRecord
from ievnet_bids.segmentation import EarRoi, ear_result


def test_localization_round_trip(tmp_path):
    loc = Localization(
        localizer="template",
        head_axes=[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        initial={"left": [-40.0, 1.0, 2.0], "right": [40.0, 1.0, 2.0]},
        refined={"left": [-41.0, 1.5, 2.0], "right": [39.5, 1.0, 2.5]},
        moved_mm={"left": 1.118, "right": 0.707},
        method={"left": "matched_filter", "right": "initial"},
        score={"left": 0.61, "right": math.nan},
        seconds={"initial": 1.0, "total": 2.0},
    )
    loc.to_json(tmp_path / "centres.json")
    back = Localization.from_json(tmp_path / "centres.json")
    assert back.refined == loc.refined and back.registration is None
    assert math.isnan(back.score["right"]) and back.moved_mm == loc.moved_mm
    (tmp_path / "bad.json").write_text('{"localizer": "x", "centre": 1}')
    with pytest.raises(ValueError, match="centre"):
        Localization.from_json(tmp_path / "bad.json")


def test_ear_result_moves_once_and_round_trips(tmp_path):
    import nibabel as nib
    import numpy as np

    from ievnet_bids.geometry.roi import RoiGrid

    slab = nib.Nifti1Image(np.zeros((100, 80, 40), np.float32), np.diag([0.5, 0.5, 0.5, 1.0]))
    grid = RoiGrid.centred((25.0, 20.0, 10.0))  # 20 mm tall ROI in a 20 mm slab: at its edge
    ear = EarRoi("left", grid, np.zeros(grid.shape, np.float32))
    ear.info = {"kept": [{"label": 1}], "n_dropped": 2, "recentred_mm": 2.5,
                "roi_centre_mm": [1.0, 2.0, 3.0], "labyrinth_centre_mm": None}  # fmt: skip
    result = ear_result(ear, refinement_moved_mm=1.25, slab_img=slab)
    assert result.moved_mm == 3.75 and result.recentred_mm == 2.5
    assert result.centre_mm == [1.0, 2.0, 3.0]  # no labyrinth: the ROI's centre
    assert result.cleanup == {"kept": [{"label": 1}], "n_dropped": 2}
    assert result.touches_edge  # from the final grid, which the record carries
    np.testing.assert_array_equal(
        RoiGrid.from_json(json.dumps(result.roi_grid)).affine, grid.affine
    )
    record = SegmentRecord("m", "0" * 64, {"FlipTTA": True}, {"left": result})
    record.to_json(tmp_path / "segment.json")
    back = SegmentRecord.from_json(tmp_path / "segment.json")
    assert back == record and isinstance(back.ears["left"], EarResult)
