"""Torch rendering path: label maps → images on any device (GPU training streams).

Label maps are expensive (≈1 s on a CPU core) but rendering is cheap: a training stream can keep
a pool of label maps and re-render each of them with fresh random contrast, resolution, noise
and bias on the GPU every time it is drawn. The steps and the random parameters are those of
:func:`ievnet_bids.synth.render.render_with` (:class:`RenderParams`); only the noise is drawn
on the device.
"""

from __future__ import annotations

import numpy as np
import torch

from ievnet_bids.synth import labels as L
from ievnet_bids.synth.render import (
    RenderParams,
    acquisition_matrices,
    draw_render_params,
    lattice_matrices,
)


def _separable(volume: torch.Tensor, matrices: list[np.ndarray]) -> torch.Tensor:
    out = volume
    for axis, m in enumerate(matrices):
        mt = torch.as_tensor(m, device=volume.device, dtype=volume.dtype)
        out = torch.movedim(torch.tensordot(mt, out, dims=([1], [axis])), 0, axis)
    return out


def render_with_torch(
    labels: torch.Tensor,
    params: RenderParams,
    *,
    spacing_mm: float = 0.2,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Render one (X, Y, Z) integer label tensor with ``params`` on the label tensor's device."""
    device = labels.device
    shape = tuple(labels.shape)
    means = torch.as_tensor(params.means, device=device, dtype=torch.float32)
    image = means[labels.long()]
    lattice = torch.as_tensor(params.texture_lattice, device=device)
    texture = _separable(lattice, lattice_matrices(params.texture_lattice, shape))
    image = image * (1.0 + params.texture_amplitude * texture)
    down, up = acquisition_matrices(shape, params, spacing_mm)
    low = _separable(image, down)
    if np.isfinite(params.snr):
        sd = float(np.median(params.means[list(L.TFS_LABELS)])) / params.snr
        real = torch.randn(low.shape, device=device, generator=generator) * sd
        imag = torch.randn(low.shape, device=device, generator=generator) * sd
        low = torch.sqrt((low + real) ** 2 + imag**2)
    image = _separable(low, up)
    bias_lattice = torch.as_tensor(params.bias_lattice, device=device)
    bias = _separable(bias_lattice, lattice_matrices(params.bias_lattice, shape))
    image = torch.clamp(image * torch.exp(params.bias_amplitude * bias), min=0.0)
    flat = image.flatten()
    k = max(1, round(0.999 * (flat.numel() - 1)) + 1)
    peak = float(flat.kthvalue(k).values) or 1.0
    return (image / peak) ** params.gamma * params.scale


def render_batch_torch(
    labels: torch.Tensor,
    rng: np.random.Generator,
    *,
    contrast: str | list[str] = "space",
    spacing_mm: float = 0.2,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Render a (B, X, Y, Z) label batch, each sample with freshly drawn parameters."""
    contrasts = [contrast] * labels.shape[0] if isinstance(contrast, str) else contrast
    out = []
    for lab, con in zip(labels, contrasts, strict=True):
        params = draw_render_params(
            rng, tuple(lab.shape), contrast=con, spacing_mm=spacing_mm, draw_noise=False
        )
        out.append(render_with_torch(lab, params, spacing_mm=spacing_mm, generator=generator))
    return torch.stack(out)
