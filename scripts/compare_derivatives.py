"""Compare two ievnet-bids output folders, e.g. the container image's and a source install's.

    python scripts/compare_derivatives.py A B [--equate PATH_A=PATH_B ...] [--dice-min 0.999]
        [--atol 1e-4] [--rtol 1e-3] [--json REPORT.json]

Every file is first compared byte for byte; files that differ are compared by kind:

* masks and segmentations (``*_mask.nii.gz``, ``*_dseg.nii.gz``): same grid (shape, affine,
  data type), then the Dice of every label, at least ``--dice-min``;
* other NIfTI images (probability maps, ROI images): same grid, largest absolute voxel
  difference at most ``--atol``;
* tables (``*.tsv``): same columns and rows; numbers within ``--rtol`` (relative), text equal;
* sidecars and other JSON: same structure; numbers within ``--rtol``, text equal; values under
  a key named ``seconds`` (durations the QC records keep, e.g. the localizer's) are not
  compared.

Outputs known to vary from run to run of the same install are named with ``--vary PATTERN``
(repeatable; matched against file paths, table columns and JSON keys, ``fnmatch`` style):
they are compared with ``--vary-dice-min`` and ``--vary-rtol`` instead and reported as
``varies``. NaN equals NaN.

Text is compared after ``--equate``: each ``PATH_A=PATH_B`` replaces PATH_A in A's files and
PATH_B in B's by one placeholder (the BIDS folder's path is recorded in
``dataset_description.json``, and it is ``/bids`` in the container). Reports (``*.html``),
logs (``logs/``, ``*.log``) and run configurations (``*.toml``) hold run times, paths and run
ids: they are counted, not compared; figures (``*.png``) are compared byte for byte but only
reported (a rendering difference is not a result difference). A file in one folder only is a
mismatch. Exit status: 0 when everything compared matches, 1 otherwise.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

NOT_COMPARED = (".html", ".log", ".toml")
TIMING_KEYS = {"seconds"}  # JSON keys holding run durations: they differ from run to run
PLACEHOLDER = "<EQUATED>"


@dataclass
class Result:
    path: str
    kind: str  # mask, image, table, json, figure, other, skipped
    status: str  # identical, close, varies, different, missing-in-a, missing-in-b, skipped
    detail: dict = field(default_factory=dict)


def kind_of(rel: Path) -> str:
    name = rel.name
    if rel.parts[0] == "logs" or name.endswith(NOT_COMPARED):
        return "skipped"
    if name.endswith((".nii.gz", ".nii")):
        return "mask" if name.endswith(("_mask.nii.gz", "_dseg.nii.gz")) else "image"
    if name.endswith(".tsv"):
        return "table"
    if name.endswith(".json"):
        return "json"
    if name.endswith((".png", ".svg")):
        return "figure"
    return "other"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def compare_nifti(a: Path, b: Path, kind: str, args: argparse.Namespace) -> tuple[bool, dict]:
    ia, ib = nib.load(a), nib.load(b)
    detail: dict = {}
    if ia.shape != ib.shape or ia.get_data_dtype() != ib.get_data_dtype():
        return False, {
            "grid": f"{ia.shape} {ia.get_data_dtype()} vs {ib.shape} {ib.get_data_dtype()}"
        }
    affine = float(np.abs(ia.affine - ib.affine).max())
    detail["affine_max_abs_diff"] = affine
    ok = affine <= 1e-6
    da, db = np.asanyarray(ia.dataobj), np.asanyarray(ib.dataobj)
    detail["voxels_different"] = int(np.count_nonzero(da != db))
    if kind == "mask":
        labels = sorted(set(np.unique(da).tolist()) | set(np.unique(db).tolist()) - {0})
        scores = {str(label): dice(da == label, db == label) for label in labels}
        detail["dice"] = scores
        dice_min = args.vary_dice_min if varies(str(a), args) else args.dice_min
        ok = ok and all(s >= dice_min for s in scores.values())
    else:
        diff = float(np.abs(da.astype(np.float64) - db.astype(np.float64)).max())
        detail["max_abs_diff"] = diff
        ok = ok and diff <= args.atol
    return ok, detail


def equate(text: str, side: int, pairs: list[tuple[str, str]]) -> str:
    for pair in pairs:
        text = text.replace(pair[side], PLACEHOLDER)
    return text


def close(x: float, y: float, rtol: float) -> bool:
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    return math.isclose(x, y, rel_tol=rtol, abs_tol=1e-9)


def varies(name: str, args: argparse.Namespace) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in args.vary)


def compare_values(x, y, args, where: str, diffs: list[str], loose: list[str]) -> None:
    """Recursive comparison of parsed JSON (or table rows); differences beyond ``--rtol`` are
    appended to ``diffs``, or to ``loose`` under a ``--vary`` key within ``--vary-rtol``."""
    if isinstance(x, bool) or isinstance(y, bool) or x is None or y is None:
        if x != y:
            diffs.append(f"{where}: {x!r} vs {y!r}")
    elif isinstance(x, int | float) and isinstance(y, int | float):
        if not close(float(x), float(y), args.rtol):
            keys = where.replace("[", ".").replace("]", "").split(".")
            loose_ok = any(varies(k, args) for k in keys if k)
            if loose_ok and close(float(x), float(y), args.vary_rtol):
                loose.append(f"{where}: {x!r} vs {y!r}")
            else:
                diffs.append(f"{where}: {x!r} vs {y!r}")
    elif isinstance(x, dict) and isinstance(y, dict):
        for key in sorted(set(x) | set(y)):
            if key in TIMING_KEYS:
                continue
            if key not in x or key not in y:
                diffs.append(f"{where}.{key}: only in {'A' if key in x else 'B'}")
            else:
                compare_values(x[key], y[key], args, f"{where}.{key}", diffs, loose)
    elif isinstance(x, list) and isinstance(y, list):
        if len(x) != len(y):
            diffs.append(f"{where}: {len(x)} vs {len(y)} items")
        for i, (u, v) in enumerate(zip(x, y, strict=False)):
            compare_values(u, v, args, f"{where}[{i}]", diffs, loose)
    elif x != y:
        diffs.append(f"{where}: {x!r} vs {y!r}")


def cell(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def compare_text(a: Path, b: Path, kind: str, args: argparse.Namespace) -> tuple[bool, dict]:
    ta = equate(a.read_text(), 0, args.equate)
    tb = equate(b.read_text(), 1, args.equate)
    if ta == tb:
        return True, {"equated": True}
    diffs: list[str] = []
    loose: list[str] = []
    if kind == "json":
        compare_values(json.loads(ta), json.loads(tb), args, "", diffs, loose)
    else:
        rows_a = list(csv.reader(ta.splitlines(), delimiter="\t"))
        rows_b = list(csv.reader(tb.splitlines(), delimiter="\t"))
        header = rows_a[0] if rows_a else []
        # rows as {column: value}, so that differences name their column
        compare_values(
            [dict(zip(header, map(cell, row), strict=False)) for row in rows_a],
            [dict(zip(header, map(cell, row), strict=False)) for row in rows_b],
            args,
            "",
            diffs,
            loose,
        )
    detail = {"differences": diffs[:20], "n_differences": len(diffs)}
    if loose:
        detail |= {"varying": loose[:20], "n_varying": len(loose)}
    return not diffs, detail


def compare(a_root: Path, b_root: Path, args: argparse.Namespace) -> list[Result]:
    files_a = {p.relative_to(a_root) for p in a_root.rglob("*") if p.is_file()}
    files_b = {p.relative_to(b_root) for p in b_root.rglob("*") if p.is_file()}
    results = []
    for rel in sorted(files_a | files_b):
        kind = kind_of(rel)
        if kind == "skipped":
            results.append(Result(str(rel), kind, "skipped"))
            continue
        if rel not in files_b or rel not in files_a:
            missing = "missing-in-b" if rel not in files_b else "missing-in-a"
            results.append(Result(str(rel), kind, missing))
            continue
        a, b = a_root / rel, b_root / rel
        if a.read_bytes() == b.read_bytes():
            results.append(Result(str(rel), kind, "identical"))
            continue
        if kind in ("mask", "image"):
            ok, detail = compare_nifti(a, b, kind, args)
        elif kind in ("table", "json"):
            ok, detail = compare_text(a, b, kind, args)
        else:  # figures and other files: byte identity only, reported but not judged
            ok, detail = kind == "figure", {"bytes": [a.stat().st_size, b.stat().st_size]}
        loose = varies(str(rel), args) or detail.get("n_varying")
        status = ("varies" if loose else "close") if ok else "different"
        results.append(Result(str(rel), kind, status, detail))
    return results


def summarize(results: list[Result]) -> list[str]:
    lines = []
    kinds = ("mask", "image", "table", "json", "figure", "other", "skipped")
    for kind in kinds:
        rows = [r for r in results if r.kind == kind]
        if not rows:
            continue
        counts: dict[str, int] = {}
        for r in rows:
            counts[r.status] = counts.get(r.status, 0) + 1
        text = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        extra = ""
        if kind == "mask":
            scores = [s for r in rows for s in r.detail.get("dice", {}).values()]
            extra = f"; lowest Dice {min(scores):.6f}" if scores else "; Dice 1 (identical)"
        if kind == "image":
            diffs = [r.detail["max_abs_diff"] for r in rows if "max_abs_diff" in r.detail]
            extra = f"; largest voxel difference {max(diffs):.3g}" if diffs else ""
        lines.append(f"{kind:8s} {len(rows):4d} files: {text}{extra}")
    for r in results:
        if r.status not in ("identical", "skipped"):
            lines.append(f"  {r.status:12s} {r.path} {json.dumps(r.detail)[:400]}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--equate", action="append", default=[], metavar="PATH_A=PATH_B")
    parser.add_argument("--dice-min", type=float, default=0.999)
    parser.add_argument("--atol", type=float, default=1e-4, help="for probabilities, images")
    parser.add_argument("--rtol", type=float, default=1e-3, help="for numbers in tables, JSON")
    parser.add_argument("--vary", action="append", default=[], metavar="PATTERN")
    parser.add_argument("--vary-dice-min", type=float, default=0.99)
    parser.add_argument("--vary-rtol", type=float, default=0.02)
    parser.add_argument("--json", type=Path, default=None, help="write the full report here")
    args = parser.parse_args(argv)
    args.equate = [tuple(pair.split("=", 1)) for pair in args.equate]
    if any(len(pair) != 2 for pair in args.equate):
        parser.error("--equate takes PATH_A=PATH_B")

    results = compare(args.a, args.b, args)
    print(f"compare_derivatives: A = {args.a}, B = {args.b}")
    print("\n".join(summarize(results)))
    bad = [r for r in results if r.status in ("different", "missing-in-a", "missing-in-b")]
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    print(f"compare_derivatives: {'MISMATCH' if bad else 'match'}"
          f" ({len(bad)} file(s) differ or are missing)")  # fmt: skip
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
