"""Model card: everything needed to rebuild, run and trace a segmentation model.

A card is plain JSON (no code is ever evaluated) stored beside the weights as
``<stem>.model_card.json``.  Defaults describe the published IE-Vnet (Ahmadi et al.,
Front. Neurol. 2022): a MONAI residual UNet on a 200×150×100 ROI at 0.2 mm (RAS),
zero-padded to 208×160×112, min/max intensity scaling, sigmoid, threshold 0.5; ``cleanup``
holds the mask clean-up settings (:class:`ievnet_bids.postprocess.CleanupParams`).

One default differs from the published network: ``preprocessing``. The official inference pads
the ROI with zeros first and then scales min/max over the padded volume
(``"pad_then_scale"``, set by :func:`default_card` for the official checkpoint); the models
trained here scale the ROI and then pad with zeros (``"scale_then_pad"``). Real crops have
negative minima, so the two orders give different inputs (and instance-norm statistics).
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ievnet_bids.atomic import write_text_atomic
from ievnet_bids.geometry.roi import ROI_SHAPE, ROI_SPACING_MM  # the published ROI, defined once
from ievnet_bids.postprocess import CleanupParams

PAD_SHAPE: tuple[int, int, int] = (208, 160, 112)

#: MONAI ``UNet`` keyword arguments of the published network (without in/out channels).
PUBLISHED_ARCHITECTURE: dict[str, Any] = {
    "spatial_dims": 3,
    "channels": [16, 32, 64, 128, 256],
    "strides": [2, 2, 2, 2],
    "num_res_units": 2,
    "norm": "INSTANCE",
    "act": "PRELU",
    "dropout": 0.5,
}

#: UNet keyword arguments a card may set in ``architecture``.
ARCHITECTURE_KEYS = frozenset(
    {
        "spatial_dims",
        "channels",
        "strides",
        "kernel_size",
        "up_kernel_size",
        "num_res_units",
        "act",
        "norm",
        "dropout",
        "bias",
        "adn_ordering",
    }
)
NORMALIZATIONS = ("minmax", "zscore", "none")
PREPROCESSINGS = ("scale_then_pad", "pad_then_scale")
OUTPUT_ACTIVATIONS = ("auto", "sigmoid", "softmax")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ModelCard:
    """Description of one model; validated on construction (``ValueError`` naming the field).

    ``tfs_channel`` is the output channel holding the total-fluid-space probability;
    ``output_activation`` "auto" means sigmoid for one output channel, softmax otherwise.
    ``pad_shape`` is the padded network input for an input of exactly ``roi_shape``.
    """

    name: str = "ievnet-published"
    version: str = "1.0"
    architecture: dict[str, Any] = field(
        default_factory=lambda: copy.deepcopy(PUBLISHED_ARCHITECTURE)
    )
    in_channels: int = 1
    out_channels: int = 1
    tfs_channel: int = 0
    roi_shape: tuple[int, int, int] = ROI_SHAPE
    roi_spacing_mm: float = ROI_SPACING_MM
    pad_shape: tuple[int, int, int] = PAD_SHAPE
    normalization: str = "minmax"
    preprocessing: str = "scale_then_pad"
    output_activation: str = "auto"
    threshold: float = 0.5
    cleanup: CleanupParams = field(default_factory=CleanupParams)
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    date: str = ""
    weights_sha256: str = ""

    def __post_init__(self) -> None:
        for name in ("roi_shape", "pad_shape"):
            value = getattr(self, name)
            if isinstance(value, list | tuple):
                object.__setattr__(self, name, tuple(value))
        for name in ("architecture", "training", "metrics"):
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, copy.deepcopy(value))
        if isinstance(self.cleanup, dict):
            try:
                object.__setattr__(self, "cleanup", CleanupParams.from_dict(self.cleanup))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"field 'cleanup': {exc}") from None
        self._validate()

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        def bad(field_name: str, why: str) -> ValueError:
            return ValueError(f"field {field_name!r}: {why}")

        for name in (
            "name",
            "version",
            "date",
            "normalization",
            "preprocessing",
            "output_activation",
        ):
            if not isinstance(getattr(self, name), str):
                raise bad(name, "must be a string")
        if not self.name:
            raise bad("name", "must not be empty")
        for name in ("in_channels", "out_channels", "tfs_channel"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise bad(name, f"must be a non-negative integer, got {value!r}")
        if self.in_channels < 1:
            raise bad("in_channels", "must be >= 1")
        if self.out_channels < 1:
            raise bad("out_channels", "must be >= 1")
        if self.tfs_channel >= self.out_channels:
            raise bad("tfs_channel", f"{self.tfs_channel} not < out_channels={self.out_channels}")
        for name in ("roi_shape", "pad_shape"):
            value = getattr(self, name)
            if (
                not isinstance(value, tuple)
                or len(value) != 3
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
            ):
                raise bad(name, f"must be three positive integers, got {value!r}")
        if any(p < r for p, r in zip(self.pad_shape, self.roi_shape, strict=True)):
            raise bad("pad_shape", f"{self.pad_shape} smaller than roi_shape {self.roi_shape}")
        if not _is_number(self.roi_spacing_mm) or self.roi_spacing_mm <= 0:
            raise bad("roi_spacing_mm", f"must be a positive number, got {self.roi_spacing_mm!r}")
        if self.normalization not in NORMALIZATIONS:
            raise bad("normalization", f"{self.normalization!r} not one of {NORMALIZATIONS}")
        if self.preprocessing not in PREPROCESSINGS:
            raise bad("preprocessing", f"{self.preprocessing!r} not one of {PREPROCESSINGS}")
        if self.output_activation not in OUTPUT_ACTIVATIONS:
            raise bad(
                "output_activation", f"{self.output_activation!r} not one of {OUTPUT_ACTIVATIONS}"
            )
        if self.output_activation == "softmax" and self.out_channels < 2:
            raise bad("output_activation", "softmax needs out_channels >= 2")
        if not _is_number(self.threshold) or not 0.0 < self.threshold < 1.0:
            raise bad("threshold", f"must be in (0, 1), got {self.threshold!r}")
        if not isinstance(self.cleanup, CleanupParams):
            raise bad("cleanup", "must be a JSON object of clean-up parameters")
        for name in ("training", "metrics"):
            if not isinstance(getattr(self, name), dict):
                raise bad(name, "must be a JSON object")
        if self.weights_sha256 and not _SHA256.match(str(self.weights_sha256)):
            raise bad("weights_sha256", "must be 64 lower-case hex digits or empty")
        self._validate_architecture(bad)

    def _validate_architecture(self, bad: Any) -> None:
        arch = self.architecture
        if not isinstance(arch, dict):
            raise bad("architecture", "must be a JSON object of MONAI UNet arguments")
        unknown = sorted(set(arch) - ARCHITECTURE_KEYS)
        if unknown:
            raise bad("architecture", f"unknown UNet argument(s) {unknown}")
        for key in ("spatial_dims", "channels", "strides"):
            if key not in arch:
                raise bad("architecture", f"missing {key!r}")
        if arch["spatial_dims"] != 3:
            raise bad("architecture.spatial_dims", f"must be 3, got {arch['spatial_dims']!r}")
        channels, strides = arch["channels"], arch["strides"]
        if not _int_list(channels) or len(channels) < 2:
            raise bad("architecture.channels", f"must be >= 2 positive integers, got {channels!r}")
        if not _int_list(strides) or len(strides) != len(channels) - 1:
            raise bad(
                "architecture.strides",
                f"must be {len(channels) - 1} positive integers, got {strides!r}",
            )
        if "num_res_units" in arch and not (
            isinstance(arch["num_res_units"], int) and arch["num_res_units"] >= 0
        ):
            raise bad("architecture.num_res_units", "must be a non-negative integer")
        if "dropout" in arch and arch["dropout"] is not None and not _is_number(arch["dropout"]):
            raise bad("architecture.dropout", "must be a number or null")
        div = self.divisor
        if any(p % div for p in self.pad_shape):
            raise bad("pad_shape", f"{self.pad_shape} not divisible by the network's {div}")

    # ------------------------------------------------------------------ helpers
    @property
    def divisor(self) -> int:
        """Product of the strides: spatial sizes of the network input must be multiples of it."""
        return math.prod(int(s) for s in self.architecture["strides"])

    @property
    def activation(self) -> str:
        """Resolved output activation: "sigmoid" or "softmax"."""
        if self.output_activation != "auto":
            return self.output_activation
        return "sigmoid" if self.out_channels == 1 else "softmax"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict (tuples become lists)."""
        d = asdict(self)
        d["roi_shape"] = list(self.roi_shape)
        d["pad_shape"] = list(self.pad_shape)
        d["cleanup"] = self.cleanup.to_dict()
        return d

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write the card as indented JSON, atomically; returns the path."""
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"
        write_text_atomic(text, path, fsync=True)
        return path

    @classmethod
    def from_dict(cls, data: Any, source: str = "model card") -> ModelCard:
        """Build a card from a parsed JSON object; ``ValueError`` names ``source`` and the field."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown field(s) {unknown}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: invalid model card: {exc}") from None

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> ModelCard:
        """Read and validate a card written by :meth:`to_json`."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ValueError(f"{path}: cannot read model card: {exc.strerror or exc}") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: model card is not valid JSON: {exc}") from None
        return cls.from_dict(data, source=str(path))


def default_card() -> ModelCard:
    """Card of the published IE-Vnet (used for the official ``best_metric_model.pth``)."""
    return ModelCard(
        name="ievnet-published",
        version="1.0",
        preprocessing="pad_then_scale",  # SpatialPad, then ScaleIntensity (ievnet_infer.py)
        training={
            "data": "Ahmadi et al., Front. Neurol. 2022 (official best_metric_model.pth)",
            "framework": "MONAI 0.3",
        },
    )


def card_for_weights(weights_path: str | os.PathLike[str]) -> ModelCard:
    """The card that goes with ``weights_path`` without loading the weights: the
    ``.model_card.json`` beside a ``.safetensors`` file, the published card for anything else
    (the official ``.pth``); :func:`ievnet_bids.model.weights.load_model` checks the pair."""
    path = Path(weights_path)
    if path.suffix.lower() == ".safetensors":
        return ModelCard.from_json(card_path_for(path))
    return default_card()


def card_path_for(weights_path: str | os.PathLike[str]) -> Path:
    """``dir/<stem>.model_card.json`` beside ``dir/<stem>.safetensors``."""
    weights_path = Path(weights_path)
    return weights_path.with_name(weights_path.stem + ".model_card.json")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _int_list(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
    )
