"""Make a trained checkpoint the shipped default model, with its hold-out figures in the card.

    python scripts/ship_model.py RUN/last.safetensors runs/holdout-new [--note TEXT]

Copies the weights (fp16 safetensors) and their model card to
``ievnet_bids/data/model/ievnet_default.*``, adds ``metrics.holdout`` (all ears and per
phantom contrast) from ``HOLDOUT/holdout_structures.tsv`` (``scripts/eval_holdout.sh``) and
records the weights' sha256.  Evaluate the checkpoint *before* shipping it:
``scripts/eval_holdout.sh RUN/last.safetensors runs/holdout-new``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from ievnet_bids.atomic import staged
from ievnet_bids.bids.derivatives import read_tsv
from ievnet_bids.metrics import finite_stats
from ievnet_bids.model.weights import sha256_file
from ievnet_bids.resources import default_model_path

FIGURES = ("dice", "hd95_mm", "msd_mm")


def _stats(values: list[float]) -> dict[str, float | int | None]:
    s = finite_stats(values)
    rounded = {k: None if s[k] is None else round(float(s[k]), 4) for k in ("mean", "sd", "median")}
    return {**rounded, "n_finite": s["n_finite"], "n": s["n"]}


def holdout_metrics(holdout: Path, inference: str) -> dict:
    rows = read_tsv(holdout / "holdout_structures.tsv")
    structures = [k for k in rows[0] if k.endswith(("_recall", "_dice")) and k != "dice"]
    out: dict = {"cases": len(rows), "seed_start": 10_000_000}

    def block(group: list[dict[str, str]]) -> dict:
        b = {k: _stats([float(r[k]) for r in group]) for k in FIGURES}
        b["per_structure_mean"] = {
            k: round(float(np.mean([float(r[k]) for r in group])), 4) for k in structures
        }
        return b

    out["all"] = block(rows)
    for contrast in sorted({r["contrast"] for r in rows}):
        out[f"{contrast}_contrast"] = block([r for r in rows if r["contrast"] == contrast])
    out["tool"] = "scripts/eval_holdout.sh (ievnet-synth holdout → ievnet-segment → ievnet-eval)"
    out["inference"] = inference
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("weights", type=Path, help="RUN/last.safetensors or RUN/best.safetensors")
    p.add_argument("holdout", type=Path, help="folder evaluated by scripts/eval_holdout.sh")
    p.add_argument("--note", default=None, help="replaces training.notes in the card")
    p.add_argument(
        "--inference",
        default="flip TTA (the ievnet-segment and ievnet-bids default), threshold 0.5",
        help="how the hold-out was segmented (recorded in the card)",
    )
    p.add_argument("--version", default=None, help="replaces the card's model version")
    args = p.parse_args()
    card_src = args.weights.with_name(args.weights.stem + ".model_card.json")
    card = json.loads(card_src.read_text())
    card.setdefault("metrics", {})["holdout"] = holdout_metrics(args.holdout, args.inference)
    if args.note:
        card["training"]["notes"] = args.note
    if args.version:
        card["version"] = args.version
    dest = default_model_path()
    with staged(dest) as tmp:
        shutil.copyfile(args.weights, tmp)
        card["weights_sha256"] = sha256_file(tmp)
    card_dest = dest.with_name(dest.stem + ".model_card.json")
    card_dest.write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    print(f"shipped {args.weights} → {dest} (sha256 {card['weights_sha256'][:12]})")
    print(json.dumps(card["metrics"]["holdout"]["all"], indent=1))


if __name__ == "__main__":
    main()
