"""``ievnet-bids`` command line → :class:`~ievnet_bids.config.RunConfig` (no side effects).

Usage errors exit 2 with one line on stderr (argparse's ``SystemExit``); an input file that
an option names but that does not exist raises :class:`MissingInputError` (exit 66 in
:mod:`ievnet_bids.cli.run`).
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from ievnet_bids import __version__
from ievnet_bids.cli.exitcodes import ExitCode
from ievnet_bids.config import (
    DEFAULT_ACQ,
    DEVICES,
    LOCALIZERS,
    PRECISION_HELP,
    PRECISIONS,
    TEMPLATE_NAME_RE,
    RunConfig,
    available_cpus,
    default_work_dir,
)
from ievnet_bids.resources import SHIPPED_TEMPLATE

PROG = "ievnet-bids"
LABEL_RE = re.compile(r"^[a-zA-Z0-9]+$")


class MissingInputError(Exception):
    """A file or folder named on the command line does not exist (exit 66)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line on stderr, exit 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def _label(prefix: str):
    def parse(text: str) -> str:
        label = text.strip().removeprefix(prefix)
        if not LABEL_RE.match(label):
            raise argparse.ArgumentTypeError(
                f"invalid label {text!r} (letters and digits only, optional {prefix!r} prefix)"
            )
        return label

    parse.__name__ = f"{prefix.rstrip('-')} label"
    return parse


def _template_name(text: str) -> str:
    name = text.strip().removeprefix("tpl-")
    if not TEMPLATE_NAME_RE.match(name):
        raise argparse.ArgumentTypeError(
            f"invalid template name {text!r} (a TemplateFlow name: letters and digits, "
            "optional 'tpl-' prefix)"
        )
    return name


def _acq_label(text: str) -> str:
    if not LABEL_RE.match(text):
        raise argparse.ArgumentTypeError(f"invalid acq label {text!r} (letters and digits only)")
    return text.lower()


def build_parser() -> argparse.ArgumentParser:
    """The ``ievnet-bids`` argument parser (BIDS-Apps positional arguments + options)."""
    codes = ", ".join(f"{int(c)} {c.name.lower().replace('_', ' ')}" for c in ExitCode)
    p = _Parser(
        prog=PROG,
        epilog=f"Exit status: {codes}.",
        description=(
            "Inner-ear total fluid space (TFS) segmentation of heavily T2-weighted MRI "
            "(3D-SPACE/CISS slabs) with IE-Vnet, as a BIDS-App."
        ),
    )
    p.add_argument("bids_dir", type=Path, help="root of the input BIDS dataset")
    p.add_argument(
        "output_dir",
        type=Path,
        help="derivatives folder (not the BIDS folder; inside it only below derivatives/)",
    )
    p.add_argument("analysis_level", choices=["participant", "group"], help="processing stage")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")

    _add_input_options(p)
    _add_model_options(p)
    _add_run_options(p)
    return p


def _add_input_options(p: argparse.ArgumentParser) -> None:
    """Options that select the input images."""
    g = p.add_argument_group("selecting inputs")
    g.add_argument(
        "--participant-label",
        "--participant_label",
        dest="participant_labels",
        nargs="+",
        action="extend",
        type=_label("sub-"),
        metavar="LABEL",
        help="participants to process ('sub-' prefix optional); default: all",
    )
    g.add_argument(
        "--session-label",
        "--session_label",
        dest="session_labels",
        nargs="+",
        action="extend",
        type=_label("ses-"),
        metavar="LABEL",
        help="sessions to process ('ses-' prefix optional); default: all",
    )
    g.add_argument(
        "--bids-filter-file",
        "--bids_filter_file",
        type=Path,
        metavar="FILE",
        help='JSON pybids filters per image role: {"slab": {...}, "head": {...}, '
        '"flair": {...}} (null = entity absent, "*" = any value)',
    )
    g.add_argument(
        "--acq",
        nargs="+",
        type=_acq_label,
        metavar="LABEL",
        help="acq- labels (case-insensitive) of the heavily T2-weighted slab images; "
        f"default: {' '.join(DEFAULT_ACQ)}",
    )
    g.add_argument(
        "--skip-bids-validation",
        "--skip_bids_validation",
        action="store_true",
        help="skip the light check of the input dataset (description and sub-* folder names)",
    )
    g.add_argument(
        "--bids-database-dir",
        "--bids_database_dir",
        type=Path,
        metavar="DIR",
        help="pybids index (SQLite) to create once and reuse; delete it after adding files",
    )


def _add_model_options(p: argparse.ArgumentParser) -> None:
    """Model, inference and localization options."""
    g = p.add_argument_group("model and localization")
    g.add_argument("--model", type=Path, metavar="PATH", help="weights; default: shipped model")
    g.add_argument(
        "--device", choices=DEVICES, default="auto", help="inference device (default: %(default)s)"
    )
    g.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help=f"{PRECISION_HELP} (default: %(default)s)",
    )
    g.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="flip test-time augmentation, on by default: average each ear's prediction with "
        "that of its left-right mirror (twice the network time, ~0.5 s per ear on 2 CPU "
        "cores); --no-tta for the plain prediction",
    )
    g.add_argument(
        "--hydrops",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="endolymphatic hydrops, on by default: where a session has a FLAIR (iMRI), "
        "register it to the slab per ear, find the ELS inside the TFS and report ELS%% for "
        "the ear, cochlea and vestibule; --no-hydrops skips it",
    )
    g.add_argument(
        "--localizer",
        choices=LOCALIZERS,
        default="auto",
        help="how the ear centres are found in each slab (default: %(default)s)",
    )
    g.add_argument(
        "--landmarks-file",
        "--landmarks_file",
        type=Path,
        metavar="TSV",
        help="ear centres: participant_id, [session_id,] side (left/right), x, y, z "
        "(scanner RAS mm); required with --localizer landmarks",
    )
    g.add_argument(
        "--template",
        type=_template_name,
        default=SHIPPED_TEMPLATE,
        metavar="NAME",
        help="full-head template of the template localizer, by TemplateFlow name: the shipped "
        "%(default)s (default) or any template in $TEMPLATEFLOW_HOME with a whole-head T1w or "
        "T2w image (its tpl-NAME_landmarks.tsv gives the ear landmarks; without one, the "
        "shipped head is registered to it once); nothing is downloaded",
    )
    g.add_argument(
        "--reference-dir",
        type=Path,
        metavar="DIR",
        help="group level: reference masks to evaluate the segmentations against",
    )


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """Performance, work folder and run-control options."""
    g = p.add_argument_group("performance and run control")
    g.add_argument(
        "-w",
        "--work-dir",
        "--work_dir",
        type=Path,
        default=default_work_dir(),
        metavar="DIR",
        help="intermediate results, never inside bids_dir (default: %(default)s)",
    )
    g.add_argument(
        "--nprocs",
        "--n_cpus",
        "--n-cpus",
        type=_positive_int,
        metavar="N",
        help="processes in parallel; default: available CPUs",
    )
    g.add_argument(
        "--omp-nthreads",
        "--omp_nthreads",
        type=_positive_int,
        metavar="N",
        help="threads per process; default: min(nprocs, 8)",
    )
    g.add_argument(
        "--mem-gb", "--mem_gb", type=_positive_float, metavar="GB", help="memory limit (GB)"
    )
    g.add_argument(
        "--stop-on-first-crash",
        action="store_true",
        help="stop at the first failure instead of processing the remaining participants",
    )
    g.add_argument(
        "--notrack",
        action="store_true",
        help="accepted for compatibility; does nothing: ievnet-bids never sends anything anywhere",
    )
    g.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv)")


def _abs(path: Path) -> Path:
    return Path(path).expanduser().resolve()


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _read_filters(path: Path, parser: argparse.ArgumentParser) -> dict[str, dict[str, Any]]:
    from ievnet_bids.bids.query import FilterError, normalize_filters

    if not path.is_file():
        raise MissingInputError(f"BIDS filter file not found: {path}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        parser.error(
            f"--bids-filter-file {path}: invalid JSON: {err.msg} "
            f"(line {err.lineno}, column {err.colno})"
        )
    except UnicodeDecodeError:
        parser.error(f"--bids-filter-file {path}: not a UTF-8 text file")
    try:
        return normalize_filters(raw, path)
    except FilterError as err:
        parser.error(f"--bids-filter-file {err}")


def _check_landmarks(path: Path, parser: argparse.ArgumentParser) -> None:
    from ievnet_bids.bids.query import LandmarksError, load_landmarks

    if not path.is_file():
        raise MissingInputError(f"landmarks file not found: {path}")
    try:
        load_landmarks(path)
    except LandmarksError as err:
        parser.error(str(err))
    except (OSError, UnicodeDecodeError) as err:
        parser.error(f"landmarks file {path}: unreadable ({err})")


def _check_template(name: str, parser: argparse.ArgumentParser) -> None:
    """Template ``name`` is shipped or cached, with a head image and readable landmarks."""
    from ievnet_bids.templates import (
        TemplateError,
        TemplateNotFoundError,
        find_template,
        read_landmark_table,
    )

    try:
        files = find_template(name)
        if files.landmarks_file is not None:
            read_landmark_table(files.landmarks_file)
    except TemplateNotFoundError as err:
        raise MissingInputError(str(err)) from None
    except TemplateError as err:
        parser.error(str(err))


def _unique(values: Sequence[str] | None) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values or ()))


def parse_args(argv: Sequence[str] | None = None) -> RunConfig:
    """Parse and check ``argv``; usage errors exit 2, missing input files raise
    :class:`MissingInputError`."""
    parser = build_parser()
    ns = parser.parse_args(argv)

    bids_dir, output_dir, work_dir = _abs(ns.bids_dir), _abs(ns.output_dir), _abs(ns.work_dir)
    if output_dir == bids_dir:
        parser.error(
            f"output_dir is the BIDS folder {bids_dir}; use e.g. <bids_dir>/derivatives/ievnet"
        )
    if _inside(output_dir, bids_dir) and not _inside(output_dir.parent, bids_dir / "derivatives"):
        parser.error(
            f"output_dir {output_dir} is inside the BIDS folder but not below derivatives/"
        )
    if _inside(work_dir, bids_dir):
        parser.error(f"--work-dir {work_dir} is inside the BIDS folder {bids_dir}")
    if work_dir == output_dir:
        parser.error(f"--work-dir {work_dir} is the output folder")

    nprocs = ns.nprocs or available_cpus()
    omp = ns.omp_nthreads or min(nprocs, 8)
    if omp > nprocs:
        parser.error(f"--omp-nthreads {omp} exceeds --nprocs {nprocs}")

    landmarks = _abs(ns.landmarks_file) if ns.landmarks_file else None
    if ns.localizer == "landmarks" and landmarks is None:
        parser.error("--localizer landmarks requires --landmarks-file")
    if landmarks is not None and ns.localizer not in ("landmarks", "auto"):
        parser.error(f"--landmarks-file is not used with --localizer {ns.localizer}")
    if ns.reference_dir and ns.analysis_level != "group":
        parser.error("--reference-dir is only used at the group level")
    if ns.template != SHIPPED_TEMPLATE and ns.localizer in ("detect", "landmarks"):
        parser.error(f"--template is not used with --localizer {ns.localizer}")

    # files named by options: missing → MissingInputError (66), unusable → usage error
    filters = _read_filters(_abs(ns.bids_filter_file), parser) if ns.bids_filter_file else {}
    if landmarks is not None:
        _check_landmarks(landmarks, parser)
    if ns.template != SHIPPED_TEMPLATE and ns.analysis_level == "participant":
        _check_template(ns.template, parser)
    model = _abs(ns.model) if ns.model else None
    if model is not None and not model.is_file():
        raise MissingInputError(f"model file not found: {model}")
    reference = _abs(ns.reference_dir) if ns.reference_dir else None
    if reference is not None and not reference.is_dir():
        raise MissingInputError(f"reference folder not found: {reference}")

    return RunConfig(
        bids_dir=bids_dir,
        output_dir=output_dir,
        analysis_level=ns.analysis_level,
        participant_labels=_unique(ns.participant_labels),
        session_labels=_unique(ns.session_labels),
        bids_filters=filters,
        work_dir=work_dir,
        nprocs=nprocs,
        omp_nthreads=omp,
        mem_gb=ns.mem_gb,
        model=model,
        device=ns.device,
        tta=ns.tta,
        hydrops=ns.hydrops,
        precision=ns.precision,
        localizer=ns.localizer,
        landmarks_file=landmarks,
        template=ns.template,
        skip_bids_validation=ns.skip_bids_validation,
        bids_database_dir=_abs(ns.bids_database_dir) if ns.bids_database_dir else None,
        stop_on_first_crash=ns.stop_on_first_crash,
        verbose=ns.verbose,
        acq_values=_unique(ns.acq) or DEFAULT_ACQ,
        reference_dir=reference,
    )
