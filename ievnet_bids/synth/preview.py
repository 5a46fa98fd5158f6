"""Preview figure: phantom slices with the TFS contour, a 3-D view, and optionally a real crop."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ievnet_bids.synth import labels as L
from ievnet_bids.synth.phantom import Phantom


def _slices(
    volume: np.ndarray, centre: np.ndarray
) -> list[tuple[str, np.ndarray, tuple[int, int]]]:
    """Three axial slices around ``centre`` plus one coronal and one sagittal, as (title, 2-D)."""
    cx, cy, cz = (round(c) for c in centre)
    out = []
    for dz in (-12, 0, 12):
        z = int(np.clip(cz + dz, 0, volume.shape[2] - 1))
        out.append((f"axial z={z}", volume[:, :, z], (0, 1)))
    out.append((f"coronal y={cy}", volume[:, cy, :], (0, 2)))
    out.append((f"sagittal x={cx}", volume[cx, :, :], (1, 2)))
    return out


def surface_axes(ax, mask: np.ndarray, spacing: float, title: str) -> None:
    """Draw ``mask``'s surface (marching cubes) on the 3-D matplotlib axes ``ax``."""
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection
    from skimage.measure import marching_cubes

    idx = np.argwhere(mask)
    if idx.size == 0:
        ax.set_title(f"{title}: empty")
        return
    lo = np.maximum(idx.min(0) - 2, 0)
    hi = idx.max(0) + 3
    sub = mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))].astype(np.float32)
    verts, faces, _, _ = marching_cubes(sub, 0.5, spacing=(spacing,) * 3, step_size=2)
    mesh = Poly3DCollection(verts[faces], alpha=0.9, facecolor="#d62728", edgecolor="none")
    ax.add_collection3d(mesh)
    for i, setter in enumerate((ax.set_xlim, ax.set_ylim, ax.set_zlim)):
        setter(verts[:, i].min(), verts[:, i].max())
    ax.set_box_aspect(np.ptp(verts, axis=0))
    ax.view_init(elev=20, azim=-60)
    ax.set_axis_off()
    ax.set_title(title)


def draw_preview(
    phantoms: list[Phantom],
    out: str | Path,
    *,
    real: list[tuple[str, np.ndarray]] | None = None,
    dpi: int = 70,
) -> Path:
    """Write a PNG with one row per phantom (and per real crop): 5 slices + a 3-D view."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(phantoms) + len(real or [])
    fig = plt.figure(figsize=(26, 4.2 * rows))
    row = 0
    for ph in phantoms:
        tfs = L.tfs_mask(ph.labels)
        centre = ph.grid.world_to_voxel(ph.centre_mm[None])[0]
        vmax = np.percentile(ph.image, 99.7)
        for col, (title, img, _axes) in enumerate(_slices(ph.image, centre)):
            ax = fig.add_subplot(rows, 6, row * 6 + col + 1)
            ax.imshow(img.T, cmap="gray", origin="lower", vmin=0, vmax=vmax)
            m = _slices(tfs, centre)[col][1]
            if m.any():
                ax.contour(m.T, levels=[0.5], colors="r", linewidths=0.7)
            ax.set_title(f"phantom seed {ph.meta.get('seed')} {ph.side}: {title}", fontsize=9)
            ax.axis("off")
        ax3 = fig.add_subplot(rows, 6, row * 6 + 6, projection="3d")
        vol = tfs.sum() * np.prod(ph.grid.spacing)
        surface_axes(ax3, tfs, ph.grid.spacing[0], f"TFS {vol:.0f} mm³")
        row += 1
    for name, volume in real or []:
        centre = np.asarray(volume.shape) / 2
        vmax = np.percentile(volume, 99.7)
        for col, (title, img, _) in enumerate(_slices(volume, centre)):
            ax = fig.add_subplot(rows, 6, row * 6 + col + 1)
            ax.imshow(img.T, cmap="gray", origin="lower", vmin=0, vmax=vmax)
            ax.set_title(f"REAL {name}: {title}", fontsize=9)
            ax.axis("off")
        row += 1
    return _save(fig, out, dpi)


def draw_hydrops_preview(
    seed: int, severities: list[float], out: str | Path, *, realism: int = 1, dpi: int = 70
) -> Path:
    """One right ear at each hydrops severity: SPACE and gadolinium FLAIR slices through the
    vestibule and the cochlea, the endolymph outlined (cyan) and the TFS (red) on the SPACE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ievnet_bids.synth.flair import flair_rng, render_flair
    from ievnet_bids.synth.phantom import generate_phantom

    rows = len(severities)
    fig, axes = plt.subplots(rows, 4, figsize=(18, 4.4 * rows), squeeze=False)
    for row, severity in enumerate(severities):
        ph = generate_phantom(seed, hydrops=severity, realism=realism)
        flair, _ = render_flair(ph.labels, ph.els, flair_rng(seed), min(ph.grid.spacing))
        volumes = ph.meta["hydrops"]["volumes"]
        for k, (name, labels) in enumerate(
            (("vestibule", (L.VESTIBULE,)), ("cochlea", (L.COCHLEA,)))
        ):
            z = int(np.rint(np.argwhere(np.isin(ph.labels, labels))[:, 2].mean()))
            for j, (title, image) in enumerate((("SPACE", ph.image), ("FLAIR", flair))):
                ax = axes[row, 2 * k + j]
                vmax = np.percentile(image, 99.8)
                ax.imshow(image[:, :, z].T, cmap="gray", origin="lower", vmin=0, vmax=vmax)
                if j == 0:
                    ax.contour(ph.tfs[:, :, z].T, levels=[0.5], colors="r", linewidths=0.6)
                ax.contour(ph.els[:, :, z].T, levels=[0.5], colors="c", linewidths=0.6)
                pct = volumes[name]["els_percent"]
                ax.set_title(
                    f"seed {seed} hydrops {severity:.2f} ({ph.meta['hydrops']['grade']}): "
                    f"{title}, {name} z={z}, ELS {pct:.0f}%",
                    fontsize=9,
                )
                ax.axis("off")
    return _save(fig, out, dpi)


def _save(fig, out: str | Path, dpi: int) -> Path:
    """Save ``fig`` to ``out`` (tight layout; via a temporary file) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(out)
    return out
