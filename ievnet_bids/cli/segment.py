"""``ievnet-segment``: segment pre-cropped inner-ear ROI volumes (the official use case).

Each input is segmented on the model's ROI grid (200×150×100 voxels at 0.2 mm, RAS).
An input already on such a grid is used as is; any other input is resampled (cubic
spline) onto a RAS-aligned ROI grid centred on the input's centre, and the probability is
mapped back (linear) to exactly the input grid.  Outputs, written atomically beside each
other in OUTDIR: ``<name>_mask.nii.gz`` (uint8) and, with ``--save-prob``,
``<name>_prob.nii.gz`` (float32 probability before post-processing), both with the input's
grid and affine.

Exit status: 0 success, 1 bad input or model file, 2 usage error, 66 no model file.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

EXIT_OK = 0
EXIT_BAD_INPUT = 1
EXIT_NO_MODEL = 66
PROG = "ievnet-segment"
_SLAB_VOXELS = 1 << 22  # voxels evaluated per map_coordinates call (bounds memory)
_EDGE_TOL = 1e-4  # voxels


class InputError(Exception):
    """An input image that cannot be segmented (message names the file)."""


# --------------------------------------------------------------------------- geometry
def on_roi_grid(
    shape: Sequence[int], affine: np.ndarray, roi_shape: Sequence[int], spacing: float
) -> bool:
    """True when the image already is an RAS ROI grid: right shape and ``diag(spacing)``."""
    if tuple(shape) != tuple(roi_shape):
        return False
    return bool(np.allclose(np.asarray(affine)[:3, :3], np.eye(3) * spacing, atol=1e-4))


def roi_affine_for(
    affine: np.ndarray, shape: Sequence[int], roi_shape: Sequence[int], spacing: float
) -> np.ndarray:
    """Affine of an RAS-aligned ROI grid whose centre is the centre of the input grid."""
    centre_vox = np.append((np.asarray(shape, dtype=float) - 1) / 2.0, 1.0)
    centre_world = (np.asarray(affine, dtype=float) @ centre_vox)[:3]
    out = np.diag([spacing, spacing, spacing, 1.0])
    out[:3, 3] = centre_world - spacing * (np.asarray(roi_shape, dtype=float) - 1) / 2.0
    return out


def resample(
    data: np.ndarray,
    src_affine: np.ndarray,
    dst_affine: np.ndarray,
    dst_shape: Sequence[int],
    *,
    order: int,
    cval: float,
) -> np.ndarray:
    """Values of ``data`` (on ``src_affine``) at the voxel centres of the ``dst`` grid.

    ``scipy.ndimage.map_coordinates`` (spline ``order``, ``cval`` outside the source).  Only
    the part of the destination that the source covers is evaluated, in slabs; the source
    is first cropped to the footprint of the destination (plus a margin for the spline).
    """
    from scipy import ndimage

    dst_shape = tuple(int(s) for s in dst_shape)
    out = np.full(dst_shape, cval, dtype=np.float32)
    m = np.linalg.inv(np.asarray(src_affine, dtype=float)) @ np.asarray(dst_affine, dtype=float)
    src_shape = np.asarray(data.shape)

    # source crop: footprint of the destination grid in source voxels, plus a margin
    corners = _corners(dst_shape)
    src_pts = corners @ m[:3, :3].T + m[:3, 3]
    margin = 8 if order > 1 else 2
    lo = np.clip(np.floor(src_pts.min(0)).astype(int) - margin, 0, src_shape)
    hi = np.clip(np.ceil(src_pts.max(0)).astype(int) + margin + 1, 0, src_shape)
    if np.any(hi <= lo):
        return out
    src = np.ascontiguousarray(
        data[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))], dtype=np.float64
    )
    if order > 1:
        src = ndimage.spline_filter(src, order=order, output=np.float64, mode="constant")
    m_crop = m.copy()
    m_crop[:3, 3] -= lo

    # destination part covered by the source (with half a voxel of slack)
    inv = np.linalg.inv(m)
    src_box = _corners(tuple(int(s) for s in src_shape), pad=0.5)
    dst_pts = src_box @ inv[:3, :3].T + inv[:3, 3]
    dlo = np.clip(np.floor(dst_pts.min(0)).astype(int) - 1, 0, dst_shape)
    dhi = np.clip(np.ceil(dst_pts.max(0)).astype(int) + 2, 0, dst_shape)
    if np.any(dhi <= dlo):
        return out
    ny, nz = int(dhi[1] - dlo[1]), int(dhi[2] - dlo[2])
    step = max(1, _SLAB_VOXELS // max(1, ny * nz))
    jj, kk = np.meshgrid(np.arange(dlo[1], dhi[1]), np.arange(dlo[2], dhi[2]), indexing="ij")
    for i0 in range(int(dlo[0]), int(dhi[0]), step):
        i1 = min(int(dhi[0]), i0 + step)
        ii = np.arange(i0, i1, dtype=float)[:, None, None]
        vox = (ii, jj[None].astype(float), kk[None].astype(float))
        coords = np.stack(
            [
                m_crop[r, 0] * vox[0] + m_crop[r, 1] * vox[1] + m_crop[r, 2] * vox[2] + m_crop[r, 3]
                for r in range(3)
            ]
        )
        for r in range(3):  # round-off must not push a voxel on the source edge outside it
            c = coords[r]
            c[(c < 0) & (c > -_EDGE_TOL)] = 0.0
            top = src.shape[r] - 1
            c[(c > top) & (c < top + _EDGE_TOL)] = top
        out[i0:i1, dlo[1] : dhi[1], dlo[2] : dhi[2]] = ndimage.map_coordinates(
            src, coords, order=order, mode="constant", cval=cval, prefilter=False
        )
    return out


def _corners(shape: Sequence[int], pad: float = 0.0) -> np.ndarray:
    ranges = [(-pad, s - 1 + pad) for s in shape]
    return np.array(
        [[a, b, c] for a in ranges[0] for b in ranges[1] for c in ranges[2]], dtype=float
    )


# --------------------------------------------------------------------------- I/O
def input_name(path: str | os.PathLike[str]) -> str:
    """File name without ``.nii.gz`` / ``.nii``."""
    name = Path(path).name
    for ext in (".nii.gz", ".nii"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def open_input(path: str | os.PathLike[str]) -> Any:
    """Header-level check of one input: readable by nibabel and 3-D (``InputError`` otherwise)."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except Exception as exc:
        raise InputError(f"{path}: cannot read image ({_one_line(exc)})") from None
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3 or min(shape) < 2:
        raise InputError(f"{path}: expected a 3-D image, got shape {tuple(img.shape)}")
    return img


def read_volume(img: Any, path: str | os.PathLike[str]) -> np.ndarray:
    """Image data as float32 (non-finite values set to 0)."""
    try:
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:
        raise InputError(f"{path}: cannot read image data ({_one_line(exc)})") from None
    if data.ndim == 4:
        data = data[..., 0]
    if not np.all(np.isfinite(data)):
        data = np.where(np.isfinite(data), data, np.float32(0))
    return data


def write_nifti(data: np.ndarray, ref: Any, path: Path, dtype: type) -> None:
    """Write ``data`` on ``ref``'s grid and affine to ``path`` atomically (temp + replace)."""
    import nibabel as nib

    header = ref.header.copy() if isinstance(ref.header, nib.Nifti1Header) else None
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), ref.affine, header=header)
    img.set_data_dtype(dtype)
    img.header.set_slope_inter(1.0, 0.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name[: -len('.nii.gz')]}.{os.getpid()}.tmp.nii.gz")
    try:
        nib.save(img, str(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# --------------------------------------------------------------------------- segmentation
def segment_volume(data: np.ndarray, affine: np.ndarray, segmenter: Any) -> np.ndarray:
    """Probability on the input grid for one volume (resampling through the ROI grid if needed)."""
    card = segmenter.card
    spacing = float(card.roi_spacing_mm)
    if on_roi_grid(data.shape, affine, card.roi_shape, spacing):
        return segmenter.predict_proba(data)
    roi_aff = roi_affine_for(affine, data.shape, card.roi_shape, spacing)
    roi = resample(data, affine, roi_aff, card.roi_shape, order=3, cval=float(data.min()))
    prob_roi = segmenter.predict_proba(roi)
    prob = resample(prob_roi, roi_aff, affine, data.shape, order=1, cval=0.0)
    return np.clip(prob, 0.0, 1.0, out=prob)


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``ievnet-segment``."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Segment the inner-ear total fluid space (IE-Vnet) in pre-cropped ROI volumes.",
        epilog="Exit status: 0 ok, 1 bad input/model file, 2 usage, 66 no model file.",
    )
    p.add_argument("inputs", nargs="+", metavar="IN", help="NIfTI ROI volume(s) (.nii/.nii.gz)")
    p.add_argument("-o", "--output-dir", required=True, type=Path, metavar="OUTDIR")
    p.add_argument(
        "--model", type=Path, metavar="PATH", help="weights (.safetensors + card, or official .pth)"
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--save-prob", action="store_true", help="also write <name>_prob.nii.gz (float32)"
    )
    p.add_argument(
        "--tta", action="store_true", help="average with the left-right flipped prediction"
    )
    p.add_argument("--omp-nthreads", type=int, metavar="N", help="CPU threads for torch")
    p.add_argument(
        "--threshold", type=float, help="probability threshold (default: model card, 0.5)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threshold is not None and not 0.0 < args.threshold < 1.0:
        parser.error("--threshold must be in (0, 1)")
    if args.omp_nthreads is not None and args.omp_nthreads < 1:
        parser.error("--omp-nthreads must be >= 1")

    def fail(msg: str, code: int) -> int:
        print(f"{PROG}: {msg}", file=sys.stderr)
        return code

    # inputs first: a typo fails before the model is loaded
    images = []
    names: dict[str, str] = {}
    for path in args.inputs:
        try:
            img = open_input(path)
        except InputError as exc:
            return fail(str(exc), EXIT_BAD_INPUT)
        name = input_name(path)
        if name in names:
            return fail(f"{path}: same output name {name!r} as {names[name]}", EXIT_BAD_INPUT)
        names[name] = path
        images.append((path, name, img))

    from ievnet_bids.resources import default_model_path

    model_path = args.model
    if model_path is None:
        model_path = default_model_path()
        if not model_path.is_file():
            return fail(
                f"no default model shipped at {model_path}; pass --model PATH", EXIT_NO_MODEL
            )
    elif not model_path.is_file():
        return fail(f"model file not found: {model_path}", EXIT_NO_MODEL)

    from ievnet_bids.model.infer import Segmenter
    from ievnet_bids.model.weights import load_model
    from ievnet_bids.postprocess import threshold_and_clean

    try:
        model, card = load_model(model_path, device="cpu")
        segmenter = Segmenter(
            model,
            card,
            device=args.device,
            tta_flip=args.tta,
            batch_size=1,
            omp_threads=args.omp_nthreads,
        )
    except ValueError as exc:
        return fail(_one_line(exc), EXIT_BAD_INPUT)
    threshold = card.threshold if args.threshold is None else args.threshold

    status = EXIT_OK
    for path, name, img in images:
        try:
            data = read_volume(img, path)
        except InputError as exc:
            status = fail(str(exc), EXIT_BAD_INPUT)
            continue
        affine = np.asarray(img.affine, dtype=float)
        prob = segment_volume(data, affine, segmenter)
        spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        mask, info = threshold_and_clean(prob, spacing, threshold)
        out_dir: Path = args.output_dir
        mask_path = out_dir / f"{name}_mask.nii.gz"
        try:
            write_nifti(mask, img, mask_path, np.uint8)
            if args.save_prob:
                write_nifti(prob, img, out_dir / f"{name}_prob.nii.gz", np.float32)
        except OSError as exc:
            return fail(f"cannot write to {out_dir}: {_one_line(exc)}", EXIT_BAD_INPUT)
        if "warning" in info:
            print(f"{PROG}: {path}: warning: {info['warning']}", file=sys.stderr)
        vol = info["volume_mm3"]
        print(f"{name}: {vol:.1f} mm3 in {len(info['kept'])} component(s) -> {mask_path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
