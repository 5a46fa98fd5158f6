"""ievnet-segment end to end with a small random model."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from ievnet_bids.cli import segment
from ievnet_bids.geometry.extract import extract_roi, map_back
from ievnet_bids.model.card import ModelCard
from ievnet_bids.model.infer import Segmenter
from ievnet_bids.model.net import build_network
from ievnet_bids.model.weights import load_model, save_model
from ievnet_bids.postprocess import threshold_and_clean

TINY_ARCH = {
    "spatial_dims": 3,
    "channels": [4, 8],
    "strides": [2],
    "num_res_units": 1,
    "norm": "INSTANCE",
    "act": "PRELU",
    "dropout": 0.5,
}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    torch.manual_seed(0)
    card = ModelCard(name="tiny-random", architecture=TINY_ARCH)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_model(build_network(card), card, path)
    return path


def _save(path, data, affine, **header) -> None:
    img = nib.Nifti1Image(data, affine)
    for key, value in header.items():
        img.header[key] = value
    nib.save(img, str(path))


def test_on_grid_input_with_prob(tmp_path, model_path, capsys) -> None:
    data = np.random.default_rng(0).random((200, 150, 100)).astype(np.float32)
    affine = np.diag([0.2, 0.2, 0.2, 1.0])
    affine[:3, 3] = [10.0, -20.0, 5.0]
    src = tmp_path / "sub-01_ear-L.nii.gz"
    _save(src, data, affine)
    out = tmp_path / "out"
    rc = segment.main([str(src), "-o", str(out), "--model", str(model_path), "--save-prob"])
    assert rc == 0
    assert "sub-01_ear-L:" in capsys.readouterr().out
    mask_img = nib.load(out / "sub-01_ear-L_mask.nii.gz")
    prob_img = nib.load(out / "sub-01_ear-L_prob.nii.gz")
    for img in (mask_img, prob_img):
        assert img.shape == data.shape
        np.testing.assert_array_equal(img.affine, nib.load(src).affine)
    assert mask_img.get_data_dtype() == np.uint8
    assert prob_img.get_data_dtype() == np.float32
    prob = prob_img.get_fdata(dtype=np.float32)
    # raw probability of the model, no resampling on an ROI grid
    model, card = load_model(model_path)
    segmenter = Segmenter(model, card, device="cpu", tta_flip=True)  # the default
    np.testing.assert_allclose(prob, segmenter.predict_proba(data))
    expected, _ = threshold_and_clean(prob, 0.2, card.threshold)
    np.testing.assert_array_equal(np.asarray(mask_img.dataobj), expected)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temp files


def test_off_grid_input_maps_back_to_input_grid(tmp_path, model_path) -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(0, 3000, size=(48, 40, 32)).astype(np.int16)
    theta = np.deg2rad(20)
    rot = np.array(
        [[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-0.5, 0.45, 0.6])  # oblique, LAS-like, anisotropic
    affine[:3, 3] = [30.0, -12.5, 7.25]
    src = tmp_path / "crop.nii"
    _save(src, data, affine, scl_slope=2.0, scl_inter=0.0)
    out = tmp_path / "o"
    opts = ["--save-prob", "--tta", "--omp-nthreads", "2", "--threshold", "0.6"]
    rc = segment.main([str(src), "-o", str(out), "--model", str(model_path), *opts])
    assert rc == 0
    ref = nib.load(src)
    for suffix, dtype in (("mask", np.uint8), ("prob", np.float32)):
        img = nib.load(out / f"crop_{suffix}.nii.gz")
        assert img.shape == ref.shape and img.get_data_dtype() == dtype
        np.testing.assert_array_equal(img.affine, ref.affine)
        assert img.header.get_sform(coded=True)[1] == ref.header.get_sform(coded=True)[1]
        assert img.header.get_qform(coded=True)[1] == ref.header.get_qform(coded=True)[1]
    mask = np.asarray(nib.load(out / "crop_mask.nii.gz").dataobj)
    prob = nib.load(out / "crop_prob.nii.gz").get_fdata()
    assert set(np.unique(mask)) <= {0, 1}
    assert prob.min() >= 0 and prob.max() <= 1 and prob.std() > 0
    assert not mask[prob < 0.6].any()


def test_roi_grid_geometry_helpers() -> None:
    affine = np.diag([-0.5, -0.5, 0.5, 1.0])
    affine[:3, 3] = [12.0, 8.0, -3.0]
    grid = segment.input_roi_grid(affine, (48, 40, 32), (200, 150, 100), 0.2)
    centre_in = affine @ [23.5, 19.5, 15.5, 1.0]
    centre_roi = grid.affine @ [99.5, 74.5, 49.5, 1.0]
    np.testing.assert_allclose(centre_roi, centre_in)
    np.testing.assert_allclose(grid.affine[:3, :3], np.eye(3) * 0.2)
    assert segment.on_roi_grid((200, 150, 100), grid.affine, (200, 150, 100), 0.2)
    assert not segment.on_roi_grid((200, 150, 100), affine, (200, 150, 100), 0.2)
    # an LPS image on an ROI-sized grid resamples to its exact mirror, and back
    data = np.random.default_rng(2).random((20, 15, 10)).astype(np.float32)
    lps = np.diag([-0.2, -0.2, 0.2, 1.0])
    image = nib.Nifti1Image(data, lps)
    ras = segment.input_roi_grid(lps, data.shape, data.shape, 0.2)
    there = extract_roi(image, ras, order=3)
    np.testing.assert_allclose(there, data[::-1, ::-1], atol=1e-6)
    back = map_back(there, ras, image)
    np.testing.assert_allclose(back, data, atol=1e-6)


def test_error_exits(tmp_path, model_path, monkeypatch, capsys) -> None:
    good = tmp_path / "good.nii.gz"
    _save(good, np.zeros((10, 10, 10), np.float32), np.eye(4))
    out = str(tmp_path / "o")

    missing = tmp_path / "missing.nii.gz"
    assert segment.main([str(missing), "-o", out, "--model", str(model_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert "missing.nii.gz" in err and "\n" not in err

    flat = tmp_path / "flat.nii.gz"
    _save(flat, np.zeros((10, 10, 3, 2), np.float32), np.eye(4))
    assert segment.main([str(flat), "-o", out, "--model", str(model_path)]) == 1
    assert "flat.nii.gz: expected a 3-D image" in capsys.readouterr().err

    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not a nifti")
    assert segment.main([str(junk), "-o", out, "--model", str(model_path)]) == 1
    assert "junk.nii.gz" in capsys.readouterr().err

    nowhere = tmp_path / "none" / "ievnet_default.safetensors"
    monkeypatch.setattr("ievnet_bids.resources.default_model_path", lambda: nowhere)
    assert segment.main([str(good), "-o", out]) == 66
    err = capsys.readouterr().err.strip()
    assert err == f"ievnet-segment: no default model shipped at {nowhere}; pass --model PATH"

    assert segment.main([str(good), "-o", out, "--model", str(tmp_path / "x.pth")]) == 66
    bad_model = tmp_path / "bad.pth"
    bad_model.write_bytes(b"garbage")
    assert segment.main([str(good), "-o", out, "--model", str(bad_model)]) == 1
    assert "bad.pth" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exc:
        segment.main([str(good), "-o", out, "--threshold", "1.5"])
    assert exc.value.code == 2
