"""The IE-Vnet network (MONAI residual UNet) built from a :class:`ModelCard`."""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.nets import UNet

from .card import ModelCard, default_card


def unet_kwargs(card: ModelCard | None = None) -> dict[str, Any]:
    """Keyword arguments for ``monai.networks.nets.UNet`` described by ``card``.

    JSON lists become tuples (``channels``, ``strides``, ``("instance", {...})`` layer specs).
    """
    card = card or default_card()
    kwargs: dict[str, Any] = {}
    for key, value in card.architecture.items():
        kwargs[key] = tuple(value) if isinstance(value, list) else value
    kwargs["in_channels"] = card.in_channels
    kwargs["out_channels"] = card.out_channels
    return kwargs


def build_network(card: ModelCard | None = None) -> torch.nn.Module:
    """Untrained network for ``card``; by default exactly the published IE-Vnet.

    Default: ``UNet(spatial_dims=3, in_channels=1, out_channels=1,
    channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2,
    norm=Norm.INSTANCE, act=Act.PRELU, dropout=0.5)``.
    """
    return UNet(**unet_kwargs(card))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available else CPU; ``"cuda"`` without CUDA → ``ValueError``."""
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(f"unknown device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available (use --device cpu)")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r} (use auto, cpu or cuda)")
    return dev
