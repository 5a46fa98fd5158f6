"""Loading and saving weights safely.

* ``.safetensors`` (our format, fp16) with a ``<stem>.model_card.json`` beside it;
* ``.pth``/``.pt`` (the official ``best_metric_model.pth``) read with
  ``torch.load(weights_only=True)`` only: a checkpoint carrying pickled code is refused.

The official checkpoint was saved with MONAI 0.3, whose ``Convolution`` was a
``Sequential(conv, norm, dropout, act)``; current MONAI nests the last three in an ``ADN``
block (``adn.N``, ``adn.D``, ``adn.A``, same order "NDA").  Only the names differ:
``…unit0.act.weight`` ↔ ``…unit0.adn.A.weight``, ``…norm.*`` ↔ ``…adn.N.*``,
``…dropout.*`` ↔ ``…adn.D.*`` (MONAI 0.1 called the activation ``prelu``).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path

import torch

from ievnet_bids.atomic import staged

from .card import ModelCard, card_path_for, default_card
from .net import build_network, resolve_device

TORCH_SUFFIXES = (".pth", ".pt", ".ckpt")
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network")
_STRIP_PREFIXES = ("module.", "_orig_mod.")

# MONAI 0.3 (and 0.1) → current MONAI
_TO_CURRENT = [
    (re.compile(r"\.(?:act|prelu)\.(?=[^.]+$)"), ".adn.A."),
    (re.compile(r"\.norm\.(?=[^.]+$)"), ".adn.N."),
    (re.compile(r"\.dropout\.(?=[^.]+$)"), ".adn.D."),
]
# current MONAI → MONAI 0.3
_TO_MONAI03 = [
    (re.compile(r"\.adn\.A\.(?=[^.]+$)"), ".act."),
    (re.compile(r"\.adn\.N\.(?=[^.]+$)"), ".norm."),
    (re.compile(r"\.adn\.D\.(?=[^.]+$)"), ".dropout."),
]


class WeightsError(ValueError):
    """A weights file that cannot or must not be loaded (message names the file)."""


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- reading
def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or ``.pth/.pt`` file, unwrapped, on CPU.

    Wrappers ``{"state_dict": …}``, ``{"model": …}`` and ``module.``/``_orig_mod.`` key
    prefixes (DataParallel, ``torch.compile``) are removed.  Raises :class:`WeightsError`.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: object = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from None
    elif suffix in TORCH_SUFFIXES:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
            what = f"pickled object {found.group(1)}" if found else "pickled code or corrupt data"
            raise WeightsError(
                f"{path}: refused: checkpoint contains {what}, not plain tensors "
                "(only weights_only loading is allowed)"
            ) from None
        except (RuntimeError, OSError, EOFError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({first})") from None
    else:
        raise WeightsError(f"{path}: unknown weights format (use .safetensors, .pth or .pt)")
    return _unwrap(obj, path)


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):  # nested wrappers, e.g. {"model": {"state_dict": ...}}
        if isinstance(obj, Mapping) and not _all_tensors(obj):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(f"{path}: no state dict found in the checkpoint")
    if not _all_tensors(obj):
        bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)][:3]
        raise WeightsError(f"{path}: not a state dict of tensors (e.g. entries {bad})")
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        key = str(key)
        stripped = True
        while stripped:
            stripped = False
            for prefix in _STRIP_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix) :], True
        if key in out:
            raise WeightsError(f"{path}: duplicate key {key!r} after removing prefixes")
        out[key] = value
    return out


def _all_tensors(obj: Mapping[object, object]) -> bool:
    return all(isinstance(v, torch.Tensor) for v in obj.values())


# --------------------------------------------------------------------------- key mapping
def _rename(key: str, rules: list[tuple[re.Pattern[str], str]]) -> str:
    for pattern, repl in rules:
        key = pattern.sub(repl, key)
    return key


def to_monai03_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a current-MONAI UNet state dict to MONAI 0.3 names (``adn.A`` → ``act`` …)."""
    return {_rename(k, _TO_MONAI03): v for k, v in state_dict.items()}


def convert_monai03_keys(
    state_dict: Mapping[str, torch.Tensor],
    reference_keys: Iterable[str] | Mapping[str, torch.Tensor],
    *,
    source: str | os.PathLike[str] = "checkpoint",
) -> dict[str, torch.Tensor]:
    """Rename MONAI 0.3 keys to the current names and check them against the network.

    Keys already in ``reference_keys`` are kept as they are.  If ``reference_keys`` is a
    state dict (key → tensor) the tensor shapes are checked too.  Any missing, unexpected
    or mismatched key raises :class:`WeightsError` listing a few of them and ``source``.
    """
    ref_shapes = (
        {k: tuple(v.shape) for k, v in reference_keys.items()}
        if isinstance(reference_keys, Mapping)
        else None
    )
    ref = set(ref_shapes) if ref_shapes is not None else set(reference_keys)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = key if key in ref else _rename(key, _TO_CURRENT)
        if new in out:
            raise WeightsError(f"{source}: keys {key!r} and another both map to {new!r}")
        out[new] = value
    check_state_dict(out, ref_shapes if ref_shapes is not None else ref, source=source)
    return out


def check_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    reference: Iterable[str] | Mapping[str, tuple[int, ...]],
    *,
    source: str | os.PathLike[str] = "checkpoint",
    show: int = 4,
) -> None:
    """Raise :class:`WeightsError` unless keys (and shapes, if given) match ``reference``."""
    ref_shapes = dict(reference) if isinstance(reference, Mapping) else None
    ref = set(ref_shapes) if ref_shapes is not None else set(reference)
    keys = set(state_dict)
    missing, unexpected = sorted(ref - keys), sorted(keys - ref)
    mismatched: list[str] = []
    if ref_shapes is not None:
        for k in sorted(keys & ref):
            got, want = tuple(state_dict[k].shape), tuple(ref_shapes[k])
            if got != want:
                mismatched.append(f"{k} {list(got)} != {list(want)}")
    if not (missing or unexpected or mismatched):
        return

    def few(items: list[str]) -> str:
        more = f" … (+{len(items) - show})" if len(items) > show else ""
        return ", ".join(items[:show]) + more

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing: {few(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {few(unexpected)}")
    if mismatched:
        parts.append(f"{len(mismatched)} with wrong shape: {few(mismatched)}")
    raise WeightsError(f"{source}: weights do not match the network; " + "; ".join(parts))


# --------------------------------------------------------------------------- save / load
def save_model(model: torch.nn.Module, card: ModelCard, path: str | os.PathLike[str]) -> ModelCard:
    """Write fp16 ``path`` (.safetensors) and ``<stem>.model_card.json`` beside it, atomically.

    The model must match ``card`` (same keys and shapes as ``build_network(card)``).
    Returns the card as written (with ``weights_sha256`` of the weights file).
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: save_model writes .safetensors files")
    state = {k: v.detach() for k, v in model.state_dict().items()}
    reference = {k: tuple(v.shape) for k, v in build_network(card).state_dict().items()}
    check_state_dict(state, reference, source=f"model for card {card.name!r}")
    tensors = {
        k: (v.to("cpu", torch.float16) if v.is_floating_point() else v.to("cpu")).contiguous()
        for k, v in state.items()
    }
    with staged(path) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt", "model": card.name, "dtype": "float16"})
        written = replace(card, weights_sha256=sha256_file(tmp))
    written.to_json(card_path_for(path))
    return written


def load_model(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, ModelCard]:
    """Network with weights from ``path`` in eval mode, float32, on ``device``; and its card.

    ``.safetensors`` needs its ``<stem>.model_card.json`` (sha256 checked when recorded);
    ``.pth``/``.pt`` (the official checkpoint) uses the published default card.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    digest = sha256_file(path)
    if path.suffix.lower() == ".safetensors":
        card_path = card_path_for(path)
        if not card_path.is_file():
            raise WeightsError(f"{path}: no model card beside it (expected {card_path.name})")
        card = ModelCard.from_json(card_path)
        if card.weights_sha256 and card.weights_sha256 != digest:
            raise WeightsError(
                f"{path}: sha256 {digest[:12]}… does not match its model card "
                f"({card.weights_sha256[:12]}…); weights and card do not belong together"
            )
    else:
        card = replace(default_card(), weights_sha256=digest)
    model = build_network(card)
    reference = {k: v for k, v in model.state_dict().items()}
    state = convert_monai03_keys(load_state_dict_file(path), reference, source=path)
    state = {
        k: v.to(dtype=reference[k].dtype) if v.is_floating_point() else v for k, v in state.items()
    }
    model.load_state_dict(state, strict=True)
    model = model.to(resolve_device(device)).float().eval()
    return model, card
