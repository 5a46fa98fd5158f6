"""Report figures (PNG, matplotlib Agg): localization, per-ear slice mosaics, 3-D surfaces.

All ear figures show both ears side by side in one *display frame*: the ROI grid (oriented along
the head's axes: x left→right, y posterior→anterior, z inferior→superior), with the right ear
mirrored (x → −x) so that both look like left ears: lateral is on the left of axial and coronal
slices, anterior is up in axial slices and right in sagittal slices. Left and right ears are
drawn at the same scale, so asymmetry shows directly. Every writer is deterministic (same
input, byte-identical PNG) and writes atomically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ievnet_bids.atomic import staged
from ievnet_bids.geometry.extract import index_box

SIDES = ("left", "right")
SIDE_COLOURS = {"left": "#1f77b4", "right": "#d62728"}
VIEWS = ("axial", "coronal", "sagittal")
VIEW_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}
# in-plane (horizontal, vertical) display axes and their labels (display frame = left ear)
VIEW_PLANE = {
    "axial": ((0, 1), ("lateral → medial", "posterior → anterior")),
    "coronal": ((0, 2), ("lateral → medial", "inferior → superior")),
    "sagittal": ((1, 2), ("posterior → anterior", "inferior → superior")),
}
SURFACE_VIEWS: tuple[tuple[str, float, float], ...] = (
    ("lateral", 0.0, 180.0),
    ("superior", 90.0, -90.0),
    ("anterior", 0.0, 90.0),
    ("posterolateral", 25.0, -145.0),
)
MOSAIC_ROWS, MOSAIC_COLS = 2, 4
DPI = 80
PNG_COMPRESS_LEVEL = 1
MARGIN_MM = 1.5
CONTOUR_COLOUR = "#00e5ff"
OVERLAY_COLOUR = "#ff3cf0"


@dataclass
class EarData:
    """One ear on its ROI grid: image, probability (optional) and mask; ``spacing`` in mm."""

    side: str
    image: np.ndarray
    mask: np.ndarray
    prob: np.ndarray | None = None
    spacing: tuple[float, float, float] = (0.2, 0.2, 0.2)
    overlay: np.ndarray | None = None  # a second mask, contoured in OVERLAY_COLOUR (the ELS)

    def display(self) -> EarData:
        """This ear in the display frame (the right ear mirrored left-right)."""
        if self.side != "right":
            return self

        def flip(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else np.ascontiguousarray(a[::-1])

        return EarData(
            self.side,
            flip(self.image),
            flip(self.mask),
            flip(self.prob),
            self.spacing,
            flip(self.overlay),
        )


# --------------------------------------------------------------------------- helpers
def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, out: str | Path, dpi: int = DPI) -> Path:
    """Save ``fig`` as PNG atomically (temporary file + rename; no metadata) and close it."""
    plt = _plt()
    out = Path(out)
    try:
        with staged(out, suffix=".png") as tmp:
            # zlib level 1: a quarter of the encoding time of level 6, files ~1.2x larger
            fig.savefig(
                tmp,
                dpi=dpi,
                format="png",
                metadata={"Software": None},
                pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL},
            )
    finally:
        plt.close(fig)
    return out


def _window(values: np.ndarray) -> tuple[float, float]:
    """Display range: 1st–99.5th percentile of the non-zero voxels."""
    v = values[np.isfinite(values)]
    v = v[v != 0] if np.any(v != 0) else v
    if v.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(v, [1.0, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def _mask_box(ear: EarData) -> tuple[np.ndarray, np.ndarray]:
    """(centre voxel, half extent in mm) of the mask's bounding box (ROI centre when empty)."""
    idx = np.argwhere(ear.mask > 0)
    sp = np.asarray(ear.spacing)
    if idx.size == 0:
        return (np.asarray(ear.mask.shape) - 1) / 2.0, np.full(3, 5.0)
    lo, hi = idx.min(0), idx.max(0)
    return (lo + hi) / 2.0, (hi - lo) * sp / 2.0


def _slice_positions(ear: EarData, axis: int, n: int) -> list[int]:
    """``n`` slice indices spread over the mask's extent along ``axis``."""
    idx = np.argwhere(ear.mask > 0)
    if idx.size == 0:
        c = (ear.mask.shape[axis] - 1) / 2.0
        half = 5.0 / ear.spacing[axis]
        lo, hi = c - half, c + half
    else:
        lo, hi = float(idx[:, axis].min()), float(idx[:, axis].max())
        pad = 0.08 * (hi - lo)
        lo, hi = lo + pad, hi - pad
    pos = np.linspace(lo, hi, n) if n > 1 else np.array([(lo + hi) / 2])
    return [int(np.clip(round(p), 0, ear.mask.shape[axis] - 1)) for p in pos]


# --------------------------------------------------------------------------- mosaics
def mosaic_figure(
    ears: Mapping[str, EarData], view: str, out: str | Path, heading: str | None = None
) -> Path:
    """Slices of one ``view`` through both ears: left block | right block (mirrored).

    Image in grey, the probability as a translucent overlay, the mask contour in cyan, the
    ``overlay`` mask's (if any) in magenta.
    """
    plt = _plt()
    axis = VIEW_AXIS[view]
    (h_ax, v_ax), (h_label, v_label) = VIEW_PLANE[view]
    shown = {s: ears[s].display() for s in SIDES if s in ears}
    boxes = {s: _mask_box(e) for s, e in shown.items()}
    half = np.max([b[1] for b in boxes.values()], axis=0) + MARGIN_MM
    n = MOSAIC_ROWS * MOSAIC_COLS
    panel_w = 1.75
    panel_h = panel_w * float(half[v_ax] / half[h_ax])
    height = MOSAIC_ROWS * panel_h * 1.1 + 0.75
    fig = plt.figure(figsize=(2 * MOSAIC_COLS * panel_w * 1.03 + 0.4, height))
    top = 1 - 0.6 / height
    outer = fig.add_gridspec(1, 2, wspace=0.04, left=0.01, right=0.99, top=top, bottom=0.02)
    for b, side in enumerate(SIDES):
        grid = outer[0, b].subgridspec(MOSAIC_ROWS, MOSAIC_COLS, wspace=0.03, hspace=0.06)
        title = "Left ear" if side == "left" else "Right ear (mirrored)"
        if side not in shown:
            ax = fig.add_subplot(grid[:, :])
            ax.text(0.5, 0.5, f"{title}: not available", ha="center", va="center")
            ax.axis("off")
            continue
        ear = shown[side]
        centre, _ = boxes[side]
        sp = np.asarray(ear.spacing)
        lo = np.maximum(np.floor(centre - half / sp).astype(int), 0)
        hi = np.minimum(np.ceil(centre + half / sp).astype(int) + 1, ear.mask.shape)
        crop = tuple(slice(int(a), int(c)) for a, c in zip(lo, hi, strict=True))
        vmin, vmax = _window(ear.image[crop])
        extent = [
            (lo[h_ax] - centre[h_ax]) * sp[h_ax],
            (hi[h_ax] - 1 - centre[h_ax]) * sp[h_ax],
            (lo[v_ax] - centre[v_ax]) * sp[v_ax],
            (hi[v_ax] - 1 - centre[v_ax]) * sp[v_ax],
        ]
        for k, pos in enumerate(_slice_positions(ear, axis, n)):
            ax = fig.add_subplot(grid[k // MOSAIC_COLS, k % MOSAIC_COLS])
            sel: list[Any] = list(crop)
            sel[axis] = pos
            img = ear.image[tuple(sel)].T  # rows = vertical axis
            ax.imshow(img, cmap="gray", origin="lower", vmin=vmin, vmax=vmax, extent=extent)
            if ear.prob is not None:
                prob = ear.prob[tuple(sel)].T
                overlay = np.ma.masked_less(prob, 0.1)
                ax.imshow(
                    overlay,
                    cmap="autumn",
                    origin="lower",
                    vmin=0,
                    vmax=1,
                    alpha=0.3,
                    extent=extent,
                    interpolation="nearest",
                )
            for layer, colour in ((ear.mask, CONTOUR_COLOUR), (ear.overlay, OVERLAY_COLOUR)):
                m = layer[tuple(sel)].T > 0 if layer is not None else None
                if m is not None and m.any() and not m.all():
                    xs = np.linspace(extent[0], extent[1], m.shape[1])
                    ys = np.linspace(extent[2], extent[3], m.shape[0])
                    ax.contour(xs, ys, m.astype(float), levels=[0.5], colors=colour,
                               linewidths=0.8)  # fmt: skip
            mm = (pos - centre[axis]) * sp[axis]
            ax.text(
                0.03,
                0.95,
                f"{mm:+.1f} mm",
                transform=ax.transAxes,
                color="yellow",
                fontsize=7,
                va="top",
            )
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_color(SIDE_COLOURS[side])
            if k == 0:
                ax.set_title(title, loc="left", fontsize=9, color=SIDE_COLOURS[side])
    fig.suptitle(
        heading or f"{view.capitalize()} slices (horizontal: {h_label}; vertical: {v_label})",
        fontsize=10,
    )
    return save_figure(fig, out)


# --------------------------------------------------------------------------- surfaces
def _mesh(ear: EarData, smooth_vox: float = 0.6, step: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Marching-cubes mesh (vertices in mm, centred on the mask box; faces) of a mask."""
    from scipy import ndimage
    from skimage.measure import marching_cubes

    mask = ear.mask > 0
    sub = mask[index_box(np.argwhere(mask), 3, mask.shape)].astype(np.float32)
    sub = np.pad(sub, 1)
    if smooth_vox > 0:
        sub = ndimage.gaussian_filter(sub, smooth_vox)
    verts, faces, _, _ = marching_cubes(sub, 0.5, spacing=tuple(ear.spacing), step_size=step)
    verts -= (verts.min(0) + verts.max(0)) / 2.0
    return verts, faces


def _shade(tris: np.ndarray, colour: str, elev: float, azim: float) -> np.ndarray:
    """Lambert shading of triangles lit from near the camera."""
    from matplotlib.colors import to_rgb

    normals = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
    e, a = np.deg2rad(elev), np.deg2rad(azim)
    cam = np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
    tilt = np.array([0.0, 0.0, 0.4]) if abs(elev) < 80 else np.array([0.3, 0.3, 0.0])
    light = cam + tilt
    light /= np.linalg.norm(light)
    lambert = np.abs(normals @ light)
    shade = 0.3 + 0.7 * lambert
    rgb = np.asarray(to_rgb(colour))
    base = 0.35 + 0.65 * rgb
    return np.clip(shade[:, None] * base[None, :], 0, 1)


def surface_figure(ears: Mapping[str, EarData], out: str | Path) -> Path:
    """3-D renderings of both masks from several viewpoints: left block | right (mirrored)."""
    plt = _plt()
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    shown = {s: ears[s].display() for s in SIDES if s in ears}
    meshes = {s: _mesh(e) for s, e in shown.items() if np.any(e.mask > 0)}
    half = max((float(np.abs(v).max()) for v, _ in meshes.values()), default=5.0)
    nv = len(SURFACE_VIEWS)
    fig = plt.figure(figsize=(2 * nv * 1.9, 2.9))
    for b, side in enumerate(SIDES):
        title = "Left ear" if side == "left" else "Right ear (mirrored)"
        for k, (name, elev, azim) in enumerate(SURFACE_VIEWS):
            ax = fig.add_subplot(1, 2 * nv, b * nv + k + 1, projection="3d")
            ax.set_axis_off()
            ax.set_title(
                f"{title}\n{name}" if k == 0 else f"\n{name}", fontsize=8, color=SIDE_COLOURS[side]
            )
            if side not in meshes:
                ax.text2D(0.5, 0.5, "empty mask", ha="center", transform=ax.transAxes)
                continue
            verts, faces = meshes[side]
            tris = verts[faces]
            coll = Poly3DCollection(
                tris,
                facecolors=_shade(tris, SIDE_COLOURS[side], elev, azim),
                edgecolor="none",
                linewidths=0,
            )
            ax.add_collection3d(coll)
            for setter in (ax.set_xlim, ax.set_ylim, ax.set_zlim):
                setter(-half, half)
            ax.set_box_aspect((1, 1, 1), zoom=1.45)
            ax.view_init(elev=elev, azim=azim)
            ax.set_proj_type("ortho")
    fig.subplots_adjust(left=0, right=1, top=0.86, bottom=-0.08, wspace=-0.1)
    fig.suptitle(
        "3-D surface of the TFS mask (marching cubes; same scale for both ears)", fontsize=10
    )
    return save_figure(fig, out)


# --------------------------------------------------------------------------- localization
def _box_edges(affine: np.ndarray, shape: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The 12 edges of a voxel grid's box as pairs of world points."""
    n = np.asarray(shape, dtype=float) - 1
    corners = {
        (i, j, k): affine[:3, :3] @ (np.array([i, j, k]) * n) + affine[:3, 3]
        for i in (0, 1)
        for j in (0, 1)
        for k in (0, 1)
    }
    edges = []
    for (i, j, k), p in corners.items():
        for d in range(3):
            q = [i, j, k]
            if q[d] == 0:
                q[d] = 1
                edges.append((p, corners[tuple(q)]))
    return edges


def localization_figure(
    image: Any,
    rois: Mapping[str, Any],
    out: str | Path,
    *,
    initial: Mapping[str, Sequence[float]] | None = None,
    final: Mapping[str, Sequence[float]] | None = None,
    title: str = "",
) -> Path:
    """Axial, coronal and sagittal views (one sagittal per ear) of ``image`` (a nibabel
    image: the slab or the head) with both ROI boxes (``rois[side]`` = ROI grid affine and
    shape as ``(affine, shape)``), the localizer's first guess (×) and the final centre (+)."""
    import nibabel as nib

    plt = _plt()
    can = nib.as_closest_canonical(image)
    data = np.asanyarray(can.dataobj, dtype=np.float32)
    data = data.reshape(data.shape[:3])
    zooms = np.asarray(can.header.get_zooms()[:3], dtype=float)
    inv = np.linalg.inv(can.affine)

    def to_img_mm(world: np.ndarray) -> np.ndarray:
        """World mm → canonical voxel → image mm (voxel × zoom)."""
        return (inv[:3, :3] @ np.asarray(world, float) + inv[:3, 3]) * zooms

    centres = final or {
        s: np.asarray(a)[:3, :3] @ ((np.asarray(n) - 1) / 2) + np.asarray(a)[:3, 3]
        for s, (a, n) in rois.items()
    }
    pts = {s: to_img_mm(c) for s, c in centres.items()}
    mid = np.mean(list(pts.values()), axis=0) if pts else np.asarray(data.shape) * zooms / 2
    vmin, vmax = _window(data[::2, ::2, ::2])
    panels = [("axial", 2, mid, None), ("coronal", 1, mid, None)]
    panels += [(f"sagittal ({s})", 0, pts[s], s) for s in SIDES if s in pts]
    extent_mm = np.asarray(data.shape) * zooms
    flat = extent_mm[2] < 0.45 * max(extent_mm[0], extent_mm[1])  # a slab: axial + strips
    if flat:
        fig = plt.figure(figsize=(12, 6.2))
        gs = fig.add_gridspec(
            len(panels) - 1,
            2,
            width_ratios=[1, 1.25],
            left=0.02,
            right=0.99,
            top=0.92,
            bottom=0.04,
            wspace=0.08,
            hspace=0.25,
        )
        slots = [gs[:, 0]] + [gs[p, 1] for p in range(len(panels) - 1)]
    else:  # a head: one row
        fig = plt.figure(figsize=(14, 4.4))
        gs = fig.add_gridspec(
            1, len(panels), left=0.01, right=0.99, top=0.86, bottom=0.02, wspace=0.05
        )
        slots = [gs[0, p] for p in range(len(panels))]
    for p, (name, axis, at, only) in enumerate(panels):
        ax = fig.add_subplot(slots[p])
        k = int(np.clip(round(at[axis] / zooms[axis]), 0, data.shape[axis] - 1))
        h, v = [a for a in range(3) if a != axis]
        img = np.take(data, k, axis=axis).T
        ext = [
            -zooms[h] / 2,
            (data.shape[h] - 0.5) * zooms[h],
            -zooms[v] / 2,
            (data.shape[v] - 0.5) * zooms[v],
        ]
        ax.imshow(img, cmap="gray", origin="lower", vmin=vmin, vmax=vmax, extent=ext)
        for side, (affine, shape) in rois.items():
            if only not in (None, side):
                continue
            for a, b in _box_edges(np.asarray(affine), shape):
                pa, pb = to_img_mm(a), to_img_mm(b)
                ax.plot([pa[h], pb[h]], [pa[v], pb[v]], color=SIDE_COLOURS[side], lw=1.0)
        for side in SIDES:
            if only not in (None, side):
                continue
            if initial and side in initial:
                q = to_img_mm(initial[side])
                ax.plot(q[h], q[v], "x", color="yellow", ms=7, mew=1.5)
            if side in pts:
                q = pts[side]
                ax.plot(q[h], q[v], "+", color=SIDE_COLOURS[side], ms=11, mew=1.8)
        ax.set_xlim(ext[0], ext[1])
        ax.set_ylim(ext[2], ext[3])
        ax.set_xticks([])
        ax.set_yticks([])
        lr = ("L", "R") if axis != 0 else ("P", "A")
        ax.text(0.01, 0.5, lr[0], color="white", transform=ax.transAxes, va="center")
        ax.text(0.99, 0.5, lr[1], color="white", transform=ax.transAxes, va="center", ha="right")
        ax.set_title(f"{name}, slice {k}", fontsize=9)
    fig.suptitle(
        (title + ": " if title else "")
        + "ROI boxes (blue: left ear, red: right ear); × first guess, + final centre",
        fontsize=10,
    )
    return save_figure(fig, out)
