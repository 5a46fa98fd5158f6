"""Overlay a model's TFS masks on the two real IE-Vnet sample crops (evaluation only).

Usage: ``python scripts/real_overlays.py [--model PATH] [--out runs/real_overlays]``.
Reads ``../shared/data/ievnet-samples/vol_ie_{L,R}.nii.gz``; never trains or tunes on them.
Writes one PNG per crop (axial/coronal/sagittal mosaics with the mask contour and the
probability, plus a 3-D surface) and prints volumes and the post-processing record.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from ievnet_bids.model.infer import Segmenter
from ievnet_bids.model.weights import load_model
from ievnet_bids.postprocess import threshold_and_clean
from ievnet_bids.qc import component_volumes, significant_components, topology
from ievnet_bids.resources import default_model_path

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ievnet-samples"


def draw(volume: np.ndarray, prob: np.ndarray, mask: np.ndarray, title: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ievnet_bids.synth.preview import surface_axes

    vmax = np.percentile(volume, 99.7)
    views = [("axial", 2, z) for z in (30, 40, 50, 60, 70)]
    views += [("coronal", 1, y) for y in (55, 75, 95)] + [
        ("sagittal", 0, x) for x in (85, 100, 115)
    ]
    fig = plt.figure(figsize=(24, 10))
    for i, (name, axis, idx) in enumerate(views):
        ax = fig.add_subplot(3, 5, i + 1)
        img = np.take(volume, idx, axis=axis)
        ax.imshow(img.T, cmap="gray", origin="lower", vmin=0, vmax=vmax)
        p = np.take(prob, idx, axis=axis)
        ax.imshow(
            np.ma.masked_less(p.T, 0.2), cmap="autumn", origin="lower", alpha=0.25, vmin=0, vmax=1
        )
        m = np.take(mask, idx, axis=axis)
        if m.any():
            ax.contour(m.T, levels=[0.5], colors="r", linewidths=0.8)
        ax.set_title(f"{name} {idx}", fontsize=9)
        ax.axis("off")
    for j, (elev, azim) in enumerate(((20, -60), (20, 30), (80, -90), (0, 0))):
        ax3 = fig.add_subplot(3, 5, 12 + j, projection="3d") if j < 4 else None
        if ax3 is None:
            break
        surface_axes(ax3, mask > 0, 0.2, f"3-D view {j + 1}")
        ax3.view_init(elev=elev, azim=azim)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=60)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=default_model_path())
    parser.add_argument("--out", type=Path, default=Path("runs/real_overlays"))
    parser.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="flip TTA (default on, as ievnet-bids runs)",
    )
    args = parser.parse_args()
    model, card = load_model(args.model)
    seg = Segmenter(model, card, device="cpu", tta_flip=args.tta)
    args.out.mkdir(parents=True, exist_ok=True)
    for side in ("L", "R"):
        path = SAMPLES / f"vol_ie_{side}.nii.gz"
        img = nib.load(path)
        volume = np.asanyarray(img.dataobj, dtype=np.float32)
        prob = seg.predict_proba(volume)
        spacing = img.header.get_zooms()[:3]
        mask, info = threshold_and_clean(
            prob, spacing, card.threshold, params=card.cleanup, image=volume
        )
        raw = (prob >= card.threshold).sum() * 0.008
        pieces = significant_components(component_volumes(mask, float(np.prod(spacing))))
        loops = topology(mask, spacing).canal_loops
        title = (
            f"{path.name}: {card.name} — raw ≥0.5: {raw:.0f} mm³, "
            f"cleaned: {info['volume_mm3']:.1f} mm³, {len(pieces)} piece(s) ≥ 1 mm³, "
            f"{loops} canal loop(s)"
        )
        print(title)
        print(
            json.dumps({"kept": info["kept"], "n_dropped": len(info["dropped"])}, default=str)[:600]
        )
        draw(volume, prob, mask, title, args.out / f"real_{side}.png")
        nib.save(
            nib.Nifti1Image(mask.astype(np.uint8), img.affine),
            args.out / f"real_{side}_mask.nii.gz",
        )
    print(args.out)


if __name__ == "__main__":
    main()
