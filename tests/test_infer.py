"""Segmenter: scaling, pad/crop geometry, batching, activation, flip TTA."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from ievnet_bids.model.card import ModelCard, default_card
from ievnet_bids.model.infer import Segmenter, centre_slices, padded_shape
from ievnet_bids.model.net import build_network


class Recorder(torch.nn.Module):
    """Identity 'network' that remembers its inputs: logits = scaled, padded input."""

    def __init__(self, channels: int = 1) -> None:
        super().__init__()
        self.channels = channels
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return torch.cat([x * (c + 1) for c in range(self.channels)], dim=1)


def _minmax(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.float32)
    return (v - v.min()) * np.float32(1.0 / (v.max() - v.min()))


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v.astype(np.float64)))


def test_padded_shape_rule() -> None:
    card = default_card()
    assert padded_shape((200, 150, 100), card) == (208, 160, 112)
    assert padded_shape((48, 40, 32), card) == (64, 64, 48)
    assert all(s % 16 == 0 for s in padded_shape((47, 39, 31), card))
    assert centre_slices((200, 150, 100), (208, 160, 112)) == (
        slice(4, 204),
        slice(5, 155),
        slice(6, 106),
    )


@pytest.mark.parametrize("order", ["scale_then_pad", "pad_then_scale"])
def test_full_roi_pad_crop_is_exact_voxel_for_voxel(order) -> None:
    rng = np.random.default_rng(0)
    vol = (rng.random((200, 150, 100)) * 1000 - 200).astype(np.float32)
    stub = Recorder()
    seg = Segmenter(stub, replace(default_card(), preprocessing=order), device="cpu")
    prob = seg.predict_proba(vol)
    assert prob.shape == vol.shape and prob.dtype == np.float32
    (x,) = stub.seen
    assert tuple(x.shape) == (1, 1, 208, 160, 112)
    x = x[0, 0].numpy()
    inner = (slice(4, 204), slice(5, 155), slice(6, 106))
    outside = np.ones(x.shape, bool)
    outside[inner] = False
    if order == "scale_then_pad":
        expected = _minmax(vol)
        assert not x[outside].any()  # zero padding
    else:  # the zeros of the padding take part in the min/max scaling
        lo, hi = min(float(vol.min()), 0.0), max(float(vol.max()), 0.0)
        expected = (vol - lo) / (hi - lo)
        np.testing.assert_allclose(x[outside], -lo / (hi - lo), rtol=1e-6)
    np.testing.assert_allclose(x[inner], expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(prob, _sigmoid(expected), atol=1e-6)


def test_default_batch_is_one_volume_per_pass_on_cpu() -> None:
    stub = Recorder()
    seg = Segmenter(stub, default_card(), device="cpu", tta_flip=True)
    seg.predict_proba(np.ones((2, 40, 30, 20), np.float32))
    assert [tuple(x.shape[:2]) for x in stub.seen] == [(1, 1)] * 4  # 2 ears × (plain, mirror)


def test_batches_single_volume_and_odd_shapes() -> None:
    rng = np.random.default_rng(1)
    vols = rng.normal(size=(3, 47, 39, 31)).astype(np.float32)
    vols[1] *= 50  # per-volume scaling: different ranges give the same relative result
    stub = Recorder()
    card = replace(default_card(), preprocessing="scale_then_pad")  # the project's order
    seg = Segmenter(stub, card, device="cpu", batch_size=2)
    prob = seg.predict_proba(vols)
    assert prob.shape == vols.shape
    assert [tuple(x.shape[:2]) for x in stub.seen] == [(2, 1), (1, 1)]
    for i in range(3):
        np.testing.assert_allclose(prob[i], _sigmoid(_minmax(vols[i])), atol=1e-6)
        single = seg.predict_proba(vols[i])
        assert single.shape == vols[i].shape
        np.testing.assert_array_equal(single, prob[i])
    const = seg.predict_proba(np.full((8, 8, 8), 3.0))
    np.testing.assert_allclose(const, 0.5)  # constant volume scales to 0
    with pytest.raises(ValueError, match="shape"):
        seg.predict_proba(np.zeros((4, 4)))


def test_softmax_returns_tfs_channel() -> None:
    card = ModelCard(out_channels=2, tfs_channel=1)
    seg = Segmenter(Recorder(channels=2), card, device="cpu")
    vol = np.random.default_rng(2).random((16, 16, 16)).astype(np.float32)
    x = _minmax(vol).astype(np.float64)
    expected = np.exp(2 * x) / (np.exp(x) + np.exp(2 * x))  # softmax([x, 2x])[1]
    np.testing.assert_allclose(seg.predict_proba(vol), expected, atol=1e-6)


def test_flip_tta_averages_mirror() -> None:
    vol = np.random.default_rng(3).random((20, 18, 16)).astype(np.float32)
    stub = Recorder()
    seg = Segmenter(stub, default_card(), device="cpu", tta_flip=True, batch_size=2)
    seg.predict_proba(vol)
    a, b = (x[0, 0].numpy() for x in stub.seen[0])  # both views in one batch
    np.testing.assert_array_equal(a[::-1], b)


def test_real_unet_flip_tta_symmetry_and_eval_mode() -> None:
    torch.manual_seed(0)
    model = build_network().train()  # Segmenter must switch dropout off
    seg = Segmenter(model, default_card(), device="cpu", tta_flip=True, omp_threads=2, amp=False)
    assert not seg.model.training and torch.get_num_threads() == 2
    x = np.random.default_rng(4).random((48, 40, 32)).astype(np.float32)
    p = seg.predict_proba(x)
    p_flip = seg.predict_proba(x[::-1].copy())
    np.testing.assert_allclose(p_flip, p[::-1], atol=1e-5)
    np.testing.assert_array_equal(seg.predict_proba(x), p)  # deterministic: no dropout


def test_cpu_bf16_autocast_is_native_only_and_close_to_fp32(monkeypatch) -> None:
    """By default bf16 only where the CPU computes it natively (AVX512-BF16, AMX)."""
    torch.manual_seed(0)
    model = build_network()
    dtypes: list[torch.dtype] = []
    model.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    x = np.random.default_rng(6).random((48, 40, 32)).astype(np.float32)
    for native in (False, True):
        for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
            monkeypatch.setattr(torch.cpu, probe, lambda native=native: native, raising=False)
        assert Segmenter(model, default_card(), device="cpu").amp is native
    fp32 = Segmenter(model, default_card(), device="cpu", amp=False)
    assert fp32.amp is False
    p32 = fp32.predict_proba(x)
    bf16 = Segmenter(model, default_card(), device="cpu", amp=True)
    p16 = bf16.predict_proba(x)
    assert dtypes == [torch.float32, torch.bfloat16]  # the network ran under autocast
    assert p16.dtype == np.float32
    diff = np.abs(p16 - p32)  # bf16 keeps ~3 significant digits
    assert diff.mean() < 0.005 and diff.max() < 0.05, (diff.mean(), diff.max())
    assert not np.array_equal(p16, p32)


def test_real_unet_full_roi_once() -> None:
    torch.manual_seed(0)
    seg = Segmenter(build_network(), default_card(), device="cpu", batch_size=1)
    vol = np.random.default_rng(5).random((1, 200, 150, 100)).astype(np.float32)
    prob = seg.predict_proba(vol)
    assert prob.shape == (1, 200, 150, 100) and prob.dtype == np.float32
    assert np.isfinite(prob).all() and prob.min() >= 0 and prob.max() <= 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")
def test_cuda_request_without_cuda_is_clear() -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        Segmenter(Recorder(), default_card(), device="cuda")
    assert Segmenter(Recorder(), default_card(), device="auto").device.type == "cpu"


def test_official_checkpoint_gets_the_official_preprocessing(tmp_path):
    """Official order (ievnet_infer.py): SpatialPad to 208×160×112 with zeros, then
    ScaleIntensity over the padded volume, sigmoid, centre crop; compared with MONAI's own
    transforms on a seeded random official-layout checkpoint and a crop with a negative
    minimum, as real SPACE crops have."""
    from monai.transforms import CenterSpatialCrop, ScaleIntensity, SpatialPad

    from ievnet_bids.model.weights import load_model, to_monai03_keys

    gen = torch.Generator().manual_seed(3)
    net = build_network()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    ckpt = tmp_path / "best_metric_model.pth"
    torch.save(to_monai03_keys(net.state_dict()), ckpt)
    model, card = load_model(ckpt)
    assert card.preprocessing == "pad_then_scale"

    rng = np.random.default_rng(0)
    volume = (rng.normal(0, 1, (200, 150, 100)) * 60 + 40).astype(np.float32)  # min ≈ -250
    assert volume.min() < 0
    padded = ScaleIntensity()(SpatialPad(spatial_size=[208, 160, 112])(volume[None]))
    with torch.inference_mode():
        reference = torch.sigmoid(model(torch.as_tensor(np.asarray(padded))[None]))[0]
    reference = np.asarray(CenterSpatialCrop([200, 150, 100])(reference))[0]

    ours = Segmenter(model, card, device="cpu", tta_flip=False, omp_threads=1,
                     amp=False).predict_proba(volume)  # fmt: skip
    assert np.abs(ours - reference).max() < 2e-3
    # the project's own order differs on such a crop: the card's field decides
    other = Segmenter(model, replace(card, preprocessing="scale_then_pad"), device="cpu",
                      tta_flip=False, omp_threads=1).predict_proba(volume)  # fmt: skip
    assert np.abs(other - reference).max() > 1e-2
