"""Model card, network, weights loading/saving and MONAI 0.3 key mapping."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from monai.networks.layers import Act, Norm
from monai.networks.nets import UNet

from ievnet_bids.model.card import ModelCard, card_path_for, default_card
from ievnet_bids.model.net import build_network
from ievnet_bids.model.weights import (
    WeightsError,
    convert_monai03_keys,
    load_model,
    load_state_dict_file,
    save_model,
    sha256_file,
    to_monai03_keys,
)

TINY_ARCH = {
    "spatial_dims": 3,
    "channels": [4, 8],
    "strides": [2],
    "num_res_units": 1,
    "norm": "INSTANCE",
    "act": "PRELU",
    "dropout": 0.5,
}


class PickledPayload:
    """Object whose unpickling runs code: a checkpoint containing it must be refused."""

    def __reduce__(self):
        return (print, ("code ran",))


class PlainObject:
    """Any class instance in a checkpoint is refused by weights_only loading."""


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def published() -> torch.nn.Module:
    return _randomize(build_network())


@pytest.fixture(scope="module")
def x_small() -> torch.Tensor:
    return torch.rand((1, 1, 32, 32, 32), generator=torch.Generator().manual_seed(1))


# ----------------------------------------------------------------------------- card
def test_default_network_is_the_published_unet() -> None:
    ref = UNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        channels=(16, 32, 64, 128, 256),
        strides=(2, 2, 2, 2),
        num_res_units=2,
        norm=Norm.INSTANCE,
        act=Act.PRELU,
        dropout=0.5,
    )
    net = build_network()
    assert repr(net) == repr(ref)
    assert {k: v.shape for k, v in net.state_dict().items()} == {
        k: v.shape for k, v in ref.state_dict().items()
    }
    card = default_card()
    assert card.roi_shape == (200, 150, 100)
    assert card.pad_shape == (208, 160, 112)
    assert card.roi_spacing_mm == 0.2
    assert card.normalization == "minmax" and card.threshold == 0.5
    assert card.activation == "sigmoid" and card.divisor == 16


def test_card_json_round_trip(tmp_path) -> None:
    card = ModelCard(
        name="two-class",
        out_channels=2,
        tfs_channel=1,
        training={"seed": 3, "steps": 10, "git_commit": "abc"},
        metrics={"dice": 0.9},
        date="2025-01-01",
    )
    path = card.to_json(tmp_path / "c.model_card.json")
    data = json.loads(path.read_text())
    assert data["roi_shape"] == [200, 150, 100]
    back = ModelCard.from_json(path)
    assert back == card
    assert back.activation == "softmax"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tfs_channel", 1),
        ("threshold", 1.5),
        ("pad_shape", [208, 160]),
        ("pad_shape", [200, 150, 100]),  # not divisible by 16
        ("normalization", "eval('x')"),
        ("architecture", {"spatial_dims": 3, "channels": [4, 8], "strides": [2, 2]}),
        ("architecture", {"spatial_dims": 3, "channels": [4, 8], "strides": [2], "x": 1}),
        ("weights_sha256", "abc"),
    ],
)
def test_card_validation_names_file_and_field(tmp_path, field, value) -> None:
    data = default_card().to_dict()
    data[field] = value
    path = tmp_path / "bad.model_card.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=field) as err:
        ModelCard.from_json(path)
    assert "bad.model_card.json" in str(err.value)


def test_card_rejects_unknown_field_and_bad_json(tmp_path) -> None:
    data = default_card().to_dict() | {"__class__": "os.system"}
    p = tmp_path / "u.json"
    p.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"u\.json.*unknown field"):
        ModelCard.from_json(p)
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ModelCard.from_json(p)


# ----------------------------------------------------------------------------- key mapping
def test_monai03_key_names_round_trip(published) -> None:
    sd = published.state_dict()
    old = to_monai03_keys(sd)
    assert "model.0.conv.unit0.act.weight" in old
    assert not any(".adn." in k for k in old)
    assert list(convert_monai03_keys(old, sd)) == list(sd)
    # keys already current are left alone
    assert list(convert_monai03_keys(sd, sd.keys())) == list(sd)


def test_official_style_pth_loads_with_identical_outputs(tmp_path, published, x_small) -> None:
    ckpt = tmp_path / "best_metric_model.pth"
    torch.save(to_monai03_keys(published.state_dict()), ckpt)
    model, card = load_model(ckpt)
    assert not model.training
    assert card.name == "ievnet-published" and card.weights_sha256 == sha256_file(ckpt)
    with torch.inference_mode():
        assert torch.equal(model(x_small), published(x_small))


def test_wrapped_and_dataparallel_checkpoint(tmp_path, published) -> None:
    sd = {"module." + k: v for k, v in to_monai03_keys(published.state_dict()).items()}
    ckpt = tmp_path / "wrapped.pt"
    torch.save({"epoch": 3, "state_dict": sd}, ckpt)
    loaded = load_state_dict_file(ckpt)
    assert "model.0.conv.unit0.act.weight" in loaded
    load_model(ckpt)


def test_refuses_mismatched_shapes_and_missing_keys(tmp_path, published) -> None:
    sd = to_monai03_keys(published.state_dict())
    bad = dict(sd)
    bad["model.0.conv.unit0.conv.weight"] = torch.zeros(8, 1, 3, 3, 3)
    p = tmp_path / "shape.pth"
    torch.save(bad, p)
    with pytest.raises(ValueError, match=r"shape\.pth.*1 with wrong shape.*unit0\.conv\.weight"):
        load_model(p)
    missing = {k: v for k, v in sd.items() if not k.startswith("model.2.")}
    missing["extra.weight"] = torch.zeros(1)
    p = tmp_path / "missing.pth"
    torch.save(missing, p)
    with pytest.raises(ValueError, match=r"missing\.pth.*missing: model\.2\..*1 unexpected: extra"):
        load_model(p)


@pytest.mark.parametrize(
    ("payload", "name"), [(PickledPayload(), "print"), (PlainObject(), "PlainObject")]
)
def test_refuses_pickled_code(tmp_path, capsys, payload, name) -> None:
    p = tmp_path / "evil.pth"
    torch.save({"x": payload, "w": torch.zeros(1)}, p)
    with pytest.raises(WeightsError, match=rf"evil\.pth: refused.*{name}") as err:
        load_state_dict_file(p)
    assert "\n" not in str(err.value)
    assert "code ran" not in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"evil\.pth"):
        load_model(p)


def test_refuses_garbage_and_unknown_format(tmp_path) -> None:
    p = tmp_path / "junk.safetensors"
    p.write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsError, match=r"junk\.safetensors"):
        load_state_dict_file(p)
    q = tmp_path / "w.bin"
    q.write_bytes(b"x")
    with pytest.raises(WeightsError, match="unknown weights format"):
        load_state_dict_file(q)


# ----------------------------------------------------------------------------- safetensors
def test_safetensors_round_trip_with_card(tmp_path, published, x_small) -> None:
    path = tmp_path / "m.safetensors"
    card = replace(default_card(), name="unit-test", metrics={"dice": 0.5})
    written = save_model(published, card, path)
    card_file = card_path_for(path)
    assert card_file.name == "m.model_card.json" and card_file.is_file()
    assert written.weights_sha256 == sha256_file(path)
    assert not list(tmp_path.glob(".*tmp"))  # no temp files left
    raw = load_state_dict_file(path)
    assert all(v.dtype == torch.float16 for v in raw.values())
    model, loaded = load_model(path)
    assert loaded == written
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with torch.inference_mode():
        a, b = published(x_small), model(x_small)
    assert float((a - b).abs().max()) < 2e-2 * float(a.abs().max()) + 1e-3
    assert float((torch.sigmoid(a) - torch.sigmoid(b)).abs().max()) < 5e-3


def test_safetensors_checks_card_and_hash(tmp_path) -> None:
    card = ModelCard(name="tiny", architecture=TINY_ARCH, pad_shape=(208, 160, 112))
    net = _randomize(build_network(card))
    path = tmp_path / "tiny.safetensors"
    save_model(net, card, path)
    other = tmp_path / "other.safetensors"
    save_model(_randomize(build_network(card), seed=5), card, other)
    path.write_bytes(other.read_bytes())  # weights no longer match the card's sha256
    with pytest.raises(ValueError, match="sha256"):
        load_model(path)
    card_path_for(path).unlink()
    with pytest.raises(ValueError, match="no model card"):
        load_model(path)
    with pytest.raises(ValueError, match=r"wrong shape|missing"):
        save_model(net, default_card(), tmp_path / "mismatch.safetensors")


def test_card_for_weights_without_loading_them(tmp_path) -> None:
    from ievnet_bids.model.card import card_for_weights

    weights = tmp_path / "m.safetensors"
    weights.write_bytes(b"not read")
    replace(default_card(), name="small-roi", roi_shape=(100, 80, 60)).to_json(
        card_path_for(weights)
    )
    assert card_for_weights(weights).roi_shape == (100, 80, 60)
    assert card_for_weights(tmp_path / "best_metric_model.pth") == default_card()
