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
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ievnet_bids.atomic import staged
from ievnet_bids.config import PRECISION_HELP, PRECISIONS, autocast_setting
from ievnet_bids.geometry.extract import extract_roi, map_back, roi_grid_for
from ievnet_bids.geometry.roi import RoiGrid

EXIT_OK = 0
EXIT_BAD_INPUT = 1
EXIT_NO_MODEL = 66
PROG = "ievnet-segment"


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


def input_roi_grid(
    affine: np.ndarray, shape: Sequence[int], roi_shape: Sequence[int], spacing: float
) -> RoiGrid:
    """RAS-aligned ROI grid centred on the centre of the input grid."""
    centre_vox = np.append((np.asarray(shape, dtype=float) - 1) / 2.0, 1.0)
    centre_world = (np.asarray(affine, dtype=float) @ centre_vox)[:3]
    return roi_grid_for(centre_world, None, shape=tuple(roi_shape), spacing_mm=spacing)


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
    with staged(path, suffix=".nii.gz") as tmp:
        nib.save(img, str(tmp))


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
    grid = input_roi_grid(affine, data.shape, card.roi_shape, spacing)
    image = nib.Nifti1Image(data, affine)
    roi = extract_roi(image, grid, order=3, fill=float(data.min()))
    prob = map_back(segmenter.predict_proba(roi), grid, image)
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
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="average with the left-right flipped prediction (as ievnet-bids does); "
        "--no-tta: one pass, as the published IE-Vnet",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help=PRECISION_HELP,
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
            amp=autocast_setting(args.precision),
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
        mask, info = threshold_and_clean(prob, spacing, threshold, params=card.cleanup, image=data)
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
        pieces = info.get("connect", {}).get("n_pieces_after", len(info["kept"]))
        print(f"{name}: {vol:.1f} mm3 in {pieces} component(s) -> {mask_path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
