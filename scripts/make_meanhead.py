"""Rebuild the shipped mean-head templates and ear landmarks (maintainers only; needs network once).

    pip download --no-deps pydeface==2.1.0 -d /tmp/pyd
    python -m zipfile -e /tmp/pyd/pydeface-2.1.0-py3-none-any.whl /tmp/pyd/x
    python scripts/make_meanhead.py /tmp/pyd/x/pydeface/data/mean_reg2mean.nii.gz

Writes into ``data/templates/``: the TemplateFlow folder ``tpl-meanhead/`` (its
``tpl-meanhead_res-01_T1w.nii.gz``, ``tpl-meanhead_res-01_desc-T2like_T2w.nii.gz`` and
``tpl-meanhead_landmarks.tsv``; ``template_description.json``, the landmarks' sidecar and the
licence are kept by hand) and ``figures/landmarks_*.png``. See data/templates/README.md for
the method. Not imported by the package.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from ievnet_bids.atomic import staged, write_text_atomic

HERE = Path(__file__).resolve().parents[1] / "data" / "templates"
TEMPLATE = HERE / "tpl-meanhead"  # a TemplateFlow folder: res-01 is the 1.5 mm grid
SPACING = 1.5  # mm
PAD_MM = 5.0

# T1 tissue levels of the mean head's cerebrum (read off its histogram / slices)
T1_GM, T1_WM = 290.0, 390.0
# intracranial map: T1 / local tissue mean → heavily-T2-like level (fluid = 1000)
RATIO_KNOTS = (0.0, 0.5, 0.85, 1.15, 2.0)
RATIO_T2 = (1000.0, 1000.0, 360.0, 230.0, 200.0)
# extracranial piecewise-linear map T1 → T2-like: bone/air dark, muscle low, fat/scalp moderate
EXTRA_T1 = (0.0, 60.0, 150.0, 250.0, 400.0, 700.0)
EXTRA_T2 = (0.0, 30.0, 90.0, 150.0, 340.0, 420.0)

# Seeds (world mm, by eye in sagittal slices) of the lumen of each external auditory canal,
# and the lateral (x) range over which the lumen is visible as a dark disc.
EAC_SEEDS = {"right": ((53.0, 62.0), (-5.0, -52.0)), "left": ((-73.0, -64.0), (6.5, -50.5))}
# Labyrinth centre relative to the EAC lumen centre, in the head frame (see README.md)
LABYRINTH_FROM_MIDLINE_MM = 39.0
LABYRINTH_POSTERIOR_MM = 3.0
LABYRINTH_SUPERIOR_MM = 6.0
LANDMARK_UNCERTAINTY_MM = {"inner_ear": 7.0, "eac": 3.0, "midsagittal": 2.0}


def axis_aligned_resample(img: nib.Nifti1Image, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Cubic resampling onto an axis-aligned RAS grid covering the whole field of view."""
    data = np.asanyarray(img.dataobj).astype(np.float32)
    sh = np.asarray(data.shape) - 1
    corners = np.array([[i, j, k, 1.0] for i in (0, sh[0]) for j in (0, sh[1]) for k in (0, sh[2])])
    world = corners @ img.affine.T
    lo = np.floor(world[:, :3].min(0) / spacing) * spacing
    hi = np.ceil(world[:, :3].max(0) / spacing) * spacing
    shape = tuple(round(v) + 1 for v in (hi - lo) / spacing)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = lo
    m = np.linalg.inv(img.affine) @ affine
    out = ndimage.affine_transform(data, m[:3, :3], m[:3, 3], output_shape=shape, order=3)
    return np.clip(out, 0, None), affine


def largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = ndimage.sum(mask, lab, range(1, n + 1))
    return lab == (1 + int(np.argmax(sizes)))


def head_mask(t1: np.ndarray) -> np.ndarray:
    m = ndimage.gaussian_filter(t1, 1.0) > 50
    m = largest_component(m)
    m = ndimage.binary_closing(m, iterations=3, border_value=0)
    return ndimage.binary_fill_holes(m)


def crop_to_mask(
    data: np.ndarray, affine: np.ndarray, mask: np.ndarray, pad_vox: int
) -> tuple[tuple[slice, ...], np.ndarray]:
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - pad_vox, 0)
    hi = np.minimum(idx.max(0) + 1 + pad_vox, data.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    new = affine.copy()
    new[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    return sl, new


def intracranial_mask(t1: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Rough intracranial volume: brain tissue, opened off the scalp, closed and filled."""
    brain = (ndimage.gaussian_filter(t1, 0.7) > 0.8 * T1_GM) & head
    ball = ndimage.generate_binary_structure(3, 1)
    core = largest_component(ndimage.binary_erosion(brain, ball, iterations=3))
    icv = ndimage.binary_dilation(core, ball, iterations=4) & head
    icv = ndimage.binary_closing(icv, ball, iterations=3)
    return ndimage.binary_fill_holes(icv)


def t2like(t1: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Heavily-T2-like contrast: CSF bright, brain intermediate, fat moderate, bone/air dark.

    Inside the intracranial mask the T1 is divided by a local brain-tissue reference (a
    normalised 9 mm Gaussian mean over tissue voxels), which removes the mean head's
    cerebellum/cerebrum brightness difference; the ratio then maps piecewise-linearly: low
    (CSF) → fluid level, grey-matter-like → intermediate, white-matter-like → darker.
    """
    icv = intracranial_mask(t1, head)
    w_icv = ndimage.gaussian_filter(icv.astype(np.float32), 1.0)  # no hard mask edge
    t = ndimage.gaussian_filter(t1, 0.5)
    tissue = (icv & (t > 0.6 * T1_GM)).astype(np.float32)
    sigma = 9.0 / SPACING
    num = ndimage.gaussian_filter(t * tissue, sigma)
    den = ndimage.gaussian_filter(tissue, sigma)
    ref = np.where(den > 0.05, num / np.maximum(den, 1e-6), 0.5 * (T1_GM + T1_WM))
    ratio = t / np.maximum(ref, 1.0)
    intra = np.interp(ratio, RATIO_KNOTS, RATIO_T2)
    extra = np.interp(t, EXTRA_T1, EXTRA_T2)
    out = w_icv * intra + (1.0 - w_icv) * extra
    return np.where(head, out, 0.0).astype(np.float32)


def save_int16(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(np.round(data).clip(-32768, 32767).astype(np.int16), affine)
    img.set_qform(affine, code=2)
    img.set_sform(affine, code=2)
    img.header["descrip"] = b"ievnet-bids meanhead (pydeface MIT)"
    with staged(path, suffix=".nii.gz") as tmp:
        nib.save(img, tmp)


def midsagittal_plane(t1: np.ndarray, affine: np.ndarray) -> tuple[float, float]:
    """Mirror plane maximising left-right self-correlation: returns (x at y=0, yaw in degrees).

    The plane is ``cos(a)·x + sin(a)·y = x0·cos(a)``, i.e. normal rotated by ``a`` about z.
    """
    inv = np.linalg.inv(affine)

    def score(x0: float, yaw: float) -> float:
        a = np.deg2rad(yaw)
        n = np.array([np.cos(a), np.sin(a), 0.0])
        h = np.eye(4)
        h[:3, :3] -= 2 * np.outer(n, n)
        h[:3, 3] = 2 * x0 * n[0] * n
        m = inv @ h @ affine
        r = ndimage.affine_transform(t1, m[:3, :3], m[:3, 3], order=1)
        return float(np.corrcoef(t1.ravel(), r.ravel())[0, 1])

    best = max((score(x, y), x, y) for x in np.arange(-10, 10.1, 2.0) for y in range(-8, 9, 2))
    _, x0, y0 = best
    best = max(
        (score(x, y), x, y)
        for x in np.arange(x0 - 1.5, x0 + 1.51, 0.5)
        for y in np.arange(y0 - 1.5, y0 + 1.51, 0.5)
    )
    return float(best[1]), float(best[2])


def eac_centre(t1: np.ndarray, affine: np.ndarray, side: str) -> np.ndarray:
    """Mean centre of the dark EAC lumen over the sagittal slices where it is visible."""
    (xa, xb), (ys, zs) = EAC_SEEDS[side]
    sm = ndimage.gaussian_filter(t1, 0.7)
    inv = np.linalg.inv(affine)
    pts = []
    for x in np.arange(xa, xb + 0.01, SPACING):
        i = round((inv @ [x, 0, 0, 1])[0])
        sl = sm[i]
        jj, kk = np.meshgrid(np.arange(sl.shape[0]), np.arange(sl.shape[1]), indexing="ij")
        y = affine[1, 1] * jj + affine[1, 3]
        z = affine[2, 2] * kk + affine[2, 3]
        near = (y - ys) ** 2 + (z - zs) ** 2 < 8.0**2
        ring = near & ((y - ys) ** 2 + (z - zs) ** 2 > 5.0**2)
        # lumen: darker than half-way between the darkest voxel and the surrounding ring
        thr = 0.5 * (sl[near].min() + np.median(sl[ring]))
        lumen = near & (sl < thr)
        w = np.clip(thr - sl, 0, None) * lumen
        pts.append([x, float((w * y).sum() / w.sum()), float((w * z).sum() / w.sum())])
    return np.asarray(pts).mean(0)


def landmarks(t1: np.ndarray, affine: np.ndarray) -> dict[str, np.ndarray]:
    x0, yaw = midsagittal_plane(t1, affine)
    a = np.deg2rad(yaw)
    lr = np.array([np.cos(a), np.sin(a), 0.0])  # head left→right axis (normal of the plane)
    ap = np.array([-np.sin(a), np.cos(a), 0.0])  # head posterior→anterior axis
    out: dict[str, np.ndarray] = {}
    for side, sign in (("left", -1.0), ("right", 1.0)):
        eac = eac_centre(t1, affine, side)
        out[f"eac_{side}"] = eac
        lateral = float((eac - np.array([x0, 0.0, 0.0])) @ lr) * sign  # distance to midline
        ear = (
            eac
            - sign * (lateral - LABYRINTH_FROM_MIDLINE_MM) * lr
            - LABYRINTH_POSTERIOR_MM * ap
            + LABYRINTH_SUPERIOR_MM * np.array([0.0, 0.0, 1.0])
        )
        out[f"inner_ear_{side}"] = ear
    mid = 0.5 * (out["eac_left"] + out["eac_right"])
    mid = mid - ((mid - np.array([x0, 0.0, 0.0])) @ lr) * lr  # project onto the plane
    out["midsagittal"] = mid
    out["_yaw_deg"] = np.array([yaw, 0.0, 0.0])
    return out


def write_landmarks(lm: dict[str, np.ndarray], path: Path) -> None:
    rows = ["name\tx\ty\tz\tuncertainty_mm"]
    for name in ("inner_ear_left", "inner_ear_right", "eac_left", "eac_right", "midsagittal"):
        unc = LANDMARK_UNCERTAINTY_MM[name.removesuffix("_left").removesuffix("_right")]
        x, y, z = lm[name]
        rows.append(f"{name}\t{x:.1f}\t{y:.1f}\t{z:.1f}\t{unc:.1f}")
    write_text_atomic("\n".join(rows) + "\n", path)


def draw_figures(
    t1: np.ndarray, t2: np.ndarray, affine: np.ndarray, lm: dict[str, np.ndarray], out: Path
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    inv = np.linalg.inv(affine)
    sp = SPACING
    paths = []
    for side in ("left", "right"):
        p = lm[f"inner_ear_{side}"]
        eac = lm[f"eac_{side}"]
        views = [(p, 2, "axial"), (p, 1, "coronal"), (p, 0, "sagittal"), (eac, 0, "EAC sagittal")]
        fig, axs = plt.subplots(2, 4, figsize=(15, 7.5))
        for row, (vol, name) in enumerate(((t1, "T1w"), (t2, "T2like"))):
            vmax = float(np.percentile(vol, 99.5))
            for col, (q, axis, title) in enumerate(views):
                ax = axs[row, col]
                ijk = np.round(inv[:3, :3] @ q + inv[:3, 3]).astype(int)
                h, v = [k for k in range(3) if k != axis]
                sl = np.take(vol, ijk[axis], axis=axis)
                ext = [
                    affine[h, 3],
                    affine[h, 3] + sp * (vol.shape[h] - 1),
                    affine[v, 3],
                    affine[v, 3] + sp * (vol.shape[v] - 1),
                ]
                ax.imshow(sl.T, origin="lower", cmap="gray", vmin=0, vmax=vmax, extent=ext)
                c = (p[h], p[v])
                ax.add_patch(plt.Circle(c, 7.0, fill=False, color="r", lw=1))
                ax.plot(*c, "r+", ms=12)
                ax.plot(eac[h], eac[v], "cx", ms=8)
                ax.set_xlim(q[h] - 40, q[h] + 40)
                ax.set_ylim(q[v] - 32, q[v] + 32)
                ax.set_title(f"{name} {title} {'xyz'[axis]}={q[axis]:.1f}", fontsize=9)
                ax.tick_params(labelsize=7)
        fig.suptitle(
            f"inner_ear_{side} ({p[0]:.1f}, {p[1]:.1f}, {p[2]:.1f}) mm: red + (circle 7 mm = "
            f"uncertainty); cyan x: EAC lumen centre",
            fontsize=10,
        )
        fig.tight_layout()
        path = out / f"landmarks_{side}.png"
        fig.savefig(path, dpi=60)
        plt.close(fig)
        paths.append(path)
    return paths


def main(source: str) -> None:
    img = nib.load(source)
    t1, affine = axis_aligned_resample(img, SPACING)
    head = head_mask(t1)
    sl, affine = crop_to_mask(t1, affine, head, int(np.ceil(PAD_MM / SPACING)))
    t1, head = t1[sl], head[sl]
    t1 = np.round(t1)  # what the int16 file holds
    t2 = t2like(t1, head)
    save_int16(t1, affine, TEMPLATE / "tpl-meanhead_res-01_T1w.nii.gz")
    save_int16(t2, affine, TEMPLATE / "tpl-meanhead_res-01_desc-T2like_T2w.nii.gz")
    lm = landmarks(t1, affine)
    print("mid-sagittal yaw (deg):", lm["_yaw_deg"][0])
    write_landmarks(lm, TEMPLATE / "tpl-meanhead_landmarks.tsv")
    for p in draw_figures(t1, np.round(t2), affine, lm, HERE / "figures"):
        print(p, p.stat().st_size)
    for k, v in lm.items():
        print(k, np.round(v, 1))
    print("shape", t1.shape, "affine", affine.tolist())


if __name__ == "__main__":
    main(sys.argv[1])
