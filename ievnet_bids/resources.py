"""The one place that finds shipped files: templates, model weights, report templates."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SHIPPED_TEMPLATE = "meanhead"
"""TemplateFlow name of the shipped full-head template (``tpl-meanhead/``), the default."""


def templates_dir() -> Path:
    """Folder of the shipped TemplateFlow template folders (``tpl-<name>/``; top-level
    ``data/templates``), read through :mod:`ievnet_bids.templates`.

    A wheel carries it as ``ievnet_bids/_data/templates``; a source checkout or editable
    install reads it from the repository root.
    """
    for candidate in (
        PACKAGE_DIR / "_data" / "templates",
        PACKAGE_DIR.parent / "data" / "templates",
    ):
        if candidate.is_dir():
            return candidate
    looked = f"{PACKAGE_DIR / '_data' / 'templates'}, {PACKAGE_DIR.parent / 'data' / 'templates'}"
    raise FileNotFoundError(f"data/templates not found (incomplete install); looked in {looked}")


def model_dir() -> Path:
    """Folder of the shipped default model (safetensors weights + model_card.json)."""
    return PACKAGE_DIR / "data" / "model"


def default_model_path() -> Path:
    """Weights of the shipped default model."""
    return model_dir() / "ievnet_default.safetensors"
