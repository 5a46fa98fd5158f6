"""``ievnet-eval``: score predicted masks against reference masks (Table 2 of the IE-Vnet paper).

Masks are paired by file name, each pair is scored with
:func:`ievnet_bids.metrics.evaluate_case` in physical millimetres (header zooms), a per-case
TSV is written and a mean ± SD summary per metric, per side (and per dataset) is printed.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ievnet_bids.atomic import staged

if TYPE_CHECKING:
    import nibabel as nib
    import pandas as pd

PROG = "ievnet-eval"
NIFTI_SUFFIXES = (".nii.gz", ".nii")
METRICS = ("dice", "hausdorff_mm", "hd95_mm", "msd_mm", "volume_pred_mm3", "volume_ref_mm3")
AFFINE_ATOL = 1e-4
NA = "n/a"

_SIDE_PATTERNS = (
    (re.compile(r"(?:^|_)(?:desc|hemi)-(left|l)(?=_|$)", re.IGNORECASE), "left"),
    (re.compile(r"(?:^|_)(?:desc|hemi)-(right|r)(?=_|$)", re.IGNORECASE), "right"),
    (re.compile(r"_L(?=_|$)"), "left"),
    (re.compile(r"_R(?=_|$)"), "right"),
)
_SUBJECT = re.compile(r"(?:^|_)sub-([A-Za-z0-9]+)")


class EvalError(Exception):
    """A one-line user-facing error with its exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``ievnet-eval``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Evaluate inner-ear segmentations: pair predicted and reference NIfTI masks "
            "(*.nii, *.nii.gz) by file name, compute Dice, Hausdorff distance, HD95, average "
            "symmetric surface distance (mm, from the header voxel size) and volumes (mm³), "
            "write one row per case and print mean ± SD per metric, per side (left/right, "
            "from desc-left/desc-right/_L/_R in the name) and per dataset, like Table 2 of "
            "the IE-Vnet paper. Non-zero voxels are foreground. Empty masks: both empty "
            "gives Dice 1 and distances 0; one empty gives Dice 0 and distances inf (the "
            "summary averages finite values and reports how many were inf)."
        ),
        epilog=(
            "Exit status: 0 success, 1 evaluation error (no pairs, shape/affine mismatch, "
            "unreadable file), 2 usage error (bad directory or file)."
        ),
    )
    parser.add_argument(
        "--pred", required=True, type=Path, metavar="DIR", help="folder of predicted masks"
    )
    parser.add_argument(
        "--ref", required=True, type=Path, metavar="DIR", help="folder of reference (manual) masks"
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="TSV",
        help="per-case table to write (tab-separated); omitted: summary only",
    )
    parser.add_argument(
        "--pred-suffix",
        default="",
        metavar="S",
        help="suffix stripped from predicted file stems before pairing (e.g. _dseg)",
    )
    parser.add_argument(
        "--ref-suffix",
        default="",
        metavar="S",
        help="suffix stripped from reference file stems before pairing (e.g. _mask)",
    )
    parser.add_argument(
        "--participants",
        type=Path,
        metavar="TSV",
        help="table giving each case's dataset: a 'case' column (file stem "
        "after suffix stripping) or a BIDS 'participant_id' column matched to "
        "sub-<label> in the file name",
    )
    parser.add_argument(
        "--dataset-column",
        default="dataset",
        metavar="COL",
        help="column of --participants holding the dataset name (default: %(default)s)",
    )
    return parser


# --------------------------------------------------------------------------- pairing


def _stem(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _strip(stem: str, suffix: str) -> str:
    return stem[: -len(suffix)] if suffix and stem.endswith(suffix) and stem != suffix else stem


def collect(folder: Path, suffix: str, role: str) -> dict[str, Path]:
    """NIfTI files of ``folder`` keyed by stem with ``suffix`` removed."""
    if not folder.is_dir():
        raise EvalError(f"--{role} {folder}: not a directory", code=2)
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not (path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES)):
            continue
        key = _strip(_stem(path), suffix)
        if key in found:
            raise EvalError(f"--{role}: {found[key].name} and {path.name} both map to case {key!r}")
        found[key] = path
    return found


def infer_side(name: str) -> str:
    """``left``/``right`` from desc-left/desc-right/hemi-L/_L/_R in a file stem, else ``n/a``."""
    for pattern, side in _SIDE_PATTERNS:
        if pattern.search(name):
            return side
    return NA


# --------------------------------------------------------------------------- datasets


def load_datasets(path: Path, column: str) -> dict[str, str]:
    """Map case keys (``case`` column) and subject labels (``participant_id``) to datasets."""
    import pandas as pd

    if not path.is_file():
        raise EvalError(f"--participants {path}: no such file", code=2)
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except Exception as exc:  # a malformed table is a usage error
        raise EvalError(f"--participants {path}: cannot read ({exc})", code=2) from exc
    keys = [c for c in ("case", "participant_id") if c in table.columns]
    if column not in table.columns or not keys:
        raise EvalError(
            f"--participants {path}: needs a {column!r} column and a 'case' or "
            f"'participant_id' column (has {', '.join(table.columns)})",
            code=2,
        )
    mapping: dict[str, str] = {}
    for _, row in table.iterrows():
        if "case" in keys and row["case"]:
            mapping[f"case:{row['case']}"] = row[column]
        if "participant_id" in keys and row["participant_id"]:
            mapping[f"sub:{row['participant_id'].removeprefix('sub-')}"] = row[column]
    return mapping


def dataset_of(case: str, mapping: dict[str, str]) -> str:
    """Dataset of a case: by case key first, then by its ``sub-<label>`` entity."""
    if f"case:{case}" in mapping:
        return mapping[f"case:{case}"]
    match = _SUBJECT.search(case)
    if match and f"sub:{match.group(1)}" in mapping:
        return mapping[f"sub:{match.group(1)}"]
    return NA


# --------------------------------------------------------------------------- scoring


def _load(path: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise EvalError(f"{path}: cannot read NIfTI ({exc})") from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    return img, data != 0


def score_pair(case: str, pred_path: Path, ref_path: Path) -> dict[str, object]:
    """Metrics of one pair after checking shape and affine agreement."""
    from ievnet_bids.metrics import evaluate_case

    pred_img, pred = _load(pred_path)
    ref_img, ref = _load(ref_path)
    if pred.shape != ref.shape:
        raise EvalError(
            f"{pred_path}: shape {pred.shape} differs from reference {ref_path.name} {ref.shape}"
        )
    if not np.allclose(pred_img.affine, ref_img.affine, atol=AFFINE_ATOL, rtol=0):
        raise EvalError(f"{pred_path}: affine differs from reference {ref_path.name}")
    # zooms are stored as float32: take the shortest decimal that round-trips (0.6, not
    # 0.6000000238) so that volumes of e.g. 0.5 x 0.6 x 0.7 mm voxels come out exact
    zooms = ref_img.header.get_zooms()[: ref.ndim]
    spacing = tuple(float(str(np.float32(z))) for z in zooms)
    row: dict[str, object] = {
        "case": case,
        "side": infer_side(case),
        "pred_file": pred_path.name,
        "ref_file": ref_path.name,
    }
    row.update(evaluate_case(pred, ref, spacing))
    return row


# --------------------------------------------------------------------------- output


def write_tsv_atomic(frame: pd.DataFrame, path: Path) -> None:
    """Write a DataFrame as TSV via a temporary file in the same folder and ``os.replace``."""
    with staged(path, fsync=True) as tmp, tmp.open("w", encoding="utf-8", newline="") as handle:
        frame.to_csv(handle, sep="\t", index=False, na_rep=NA, float_format="%.6f")


def _cell(values: Iterable[float], digits: int) -> str:
    arr = np.asarray(list(values), dtype=float)
    finite = arr[np.isfinite(arr)]
    n_bad = arr.size - finite.size
    if finite.size == 0:
        text = NA
    elif finite.size == 1:
        text = f"{finite[0]:.{digits}f}"
    else:
        text = f"{finite.mean():.{digits}f} ± {finite.std(ddof=1):.{digits}f}"
    return f"{text} ({n_bad} inf)" if n_bad else text


def summary_table(frame: pd.DataFrame) -> str:
    """Mean ± SD (sample SD, finite values) of each metric for all cases, sides, datasets."""
    groups: list[tuple[str, pd.DataFrame]] = [("all", frame)]
    for side in ("left", "right"):
        part = frame[frame["side"] == side]
        if len(part):
            groups.append((side, part))
    if "dataset" in frame.columns:
        for name in sorted(set(frame["dataset"])):
            groups.append((f"dataset {name}", frame[frame["dataset"] == name]))
    digits = {"dice": 3, "volume_pred_mm3": 1, "volume_ref_mm3": 1}
    header = ["metric"] + [f"{name} (n={len(part)})" for name, part in groups]
    body = [
        [metric] + [_cell(part[metric], digits.get(metric, 2)) for _, part in groups]
        for metric in METRICS
    ]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(r) for r in body)])


# --------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> int:
    """Evaluate and report; raises :class:`EvalError` on user-facing failures."""
    import pandas as pd

    preds = collect(args.pred, args.pred_suffix, "pred")
    refs = collect(args.ref, args.ref_suffix, "ref")
    datasets = load_datasets(args.participants, args.dataset_column) if args.participants else None

    only_pred = sorted(set(preds) - set(refs))
    only_ref = sorted(set(refs) - set(preds))
    if only_pred:
        print(
            f"{PROG}: warning: {len(only_pred)} prediction(s) without reference: "
            + ", ".join(preds[k].name for k in only_pred),
            file=sys.stderr,
        )
    if only_ref:
        print(
            f"{PROG}: warning: {len(only_ref)} reference(s) without prediction: "
            + ", ".join(refs[k].name for k in only_ref),
            file=sys.stderr,
        )
    cases = sorted(set(preds) & set(refs))
    if not cases:
        raise EvalError(f"no matching mask pairs between {args.pred} and {args.ref}")

    rows = []
    for case in cases:
        row = score_pair(case, preds[case], refs[case])
        if datasets is not None:
            row["dataset"] = dataset_of(case, datasets)
        rows.append(row)
    columns = [
        "case",
        "side",
        *(["dataset"] if datasets is not None else []),
        "pred_file",
        "ref_file",
        *METRICS,
    ]
    frame = pd.DataFrame(rows, columns=columns)

    if args.out is not None:
        write_tsv_atomic(frame, args.out)
    print(summary_table(frame))
    if args.out is not None:
        print(f"\nper-case table: {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``ievnet-eval``; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help or a usage error already reported by argparse
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return run(args)
    except EvalError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.code
    except OSError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
