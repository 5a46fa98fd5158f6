"""Running the participant level: one Nipype graph per participant/session.

Each participant/session runs as its own graph (:func:`ievnet_bids.workflows.participant.
init_participant_wf`, MultiProc over its CPUs), so a crash fails that unit alone; when
``--nprocs`` holds several ``--omp-nthreads`` shares, several units run at once in worker
processes. Crash files are written as text to ``sub-XX/log/`` (beside Nipype's log of the
unit, :mod:`ievnet_bids.workflows.unit_log`) and parsed into a one-line reason; after each
unit its status and ``sub-XX.html`` are (re)written. Node results are
cached in the work directory, so a rerun reuses them.
"""

from __future__ import annotations

import logging
import multiprocessing
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ievnet_bids.bids.query import SubjectInputs
from ievnet_bids.config import RunConfig
from ievnet_bids.workflows.participant import SIDES, init_participant_wf
from ievnet_bids.workflows.unit_log import UnitMultiProc, configure_unit_logging, log_file_for

if TYPE_CHECKING:
    from nipype.pipeline import engine as pe

    from ievnet_bids.templates import HeadTemplate

LOG = logging.getLogger("ievnet_bids")


def crash_dir(config: RunConfig, unit: SubjectInputs) -> Path:
    folder = config.output_dir / f"sub-{unit.subject}" / "log"
    return folder / f"ses-{unit.session}" if unit.session else folder


def _crash_reason(folder: Path, since: float) -> str:
    """Last line of the newest crash file written after ``since`` ("" when there is none)."""
    crashes = sorted(
        (p for p in folder.glob("crash-*") if p.stat().st_mtime >= since - 1),
        key=lambda p: p.stat().st_mtime,
    )
    if not crashes:
        return ""
    text = crashes[-1].read_text(errors="replace")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    message = next((ln for ln in reversed(lines) if re.match(r"^[\w.]*(Error|Exception)", ln)), "")
    node = next((ln for ln in lines if ln.startswith("Node:")), "Node: ?")
    return f"{node.removeprefix('Node: ')}: {message or lines[-1]} (see {crashes[-1]})"


def prepare_output_dir(config: RunConfig) -> None:
    """dataset_description.json, .bidsignore, dseg.tsv and the run's configuration copy."""
    from ievnet_bids.bids import derivatives as D

    config.output_dir.mkdir(parents=True, exist_ok=True)
    D.write_dataset_description(config.output_dir, version=config.version, bids_dir=config.bids_dir)
    D.write_bidsignore(config.output_dir)
    D.write_dseg_tsv(config.output_dir)
    D.write_readme(config.output_dir)
    logs = config.output_dir / "logs"
    logs.mkdir(exist_ok=True)
    D.write_text_atomic(config.to_toml(), logs / f"config-{config.run_id}.toml")


UNIT_MEM_GB = 3.0  # peak memory of one participant/session (segmentation ≈ 1.4–1.6 GB)


def concurrent_units(config: RunConfig, n_units: int) -> int:
    """How many participants/sessions run at once.

    ``--nprocs`` is split into shares of ``--omp-nthreads`` CPUs (and ``--mem-gb`` into
    shares of :data:`UNIT_MEM_GB`); each unit then runs its own graph on its share.
    """
    n = config.nprocs // max(1, config.omp_nthreads)
    if config.mem_gb:
        n = min(n, int(config.mem_gb // UNIT_MEM_GB))
    return max(1, min(n, n_units))


def run_participant_level(config: RunConfig, inputs: Sequence[SubjectInputs]) -> dict[str, str]:
    """Run every participant/session; returns ``{unit: one-line reason}`` for the failures.

    Units run one after another, each on all of ``--nprocs``, or, when ``--nprocs`` holds
    several ``--omp-nthreads`` shares, several at once in worker processes
    (:func:`concurrent_units`); either way a failing unit fails alone.
    """
    from ievnet_bids.bids.query import load_landmarks

    configure_nipype_logging(config.verbose)
    template = prepare_run_template(config, inputs)  # before any output: a bad one stops here
    prepare_output_dir(config)
    table = load_landmarks(config.landmarks_file) if config.localizer == "landmarks" else None
    n_parallel = concurrent_units(config, len(inputs))
    failures: dict[str, str] = {}

    def stopped(unit: SubjectInputs) -> bool:
        if failures and config.stop_on_first_crash:
            failures[unit.name] = "not run (--stop-on-first-crash)"
            _report_unit(config, unit, time.time(), failures[unit.name])
            return True
        return False

    def runnable() -> Iterator[tuple[SubjectInputs, Mapping[str, Sequence[float]] | None]]:
        """(unit, landmarks) of the units to run; the others are failed and reported here.

        Lazy, so that --stop-on-first-crash sees the failures of the units run so far.
        """
        for unit in inputs:
            if stopped(unit):
                continue
            reason, landmarks = _unit_problem(config, unit, table)
            if reason is None:
                yield unit, landmarks
            else:
                failures[unit.name] = reason
                _report_unit(config, unit, time.time(), reason)

    if n_parallel == 1:
        for unit, landmarks in runnable():
            reason = run_unit(config, unit, landmarks, config.nprocs, config.mem_gb, template)
            if reason is not None:
                failures[unit.name] = reason
        return failures

    share = config.nprocs // n_parallel
    mem_share = config.mem_gb / n_parallel if config.mem_gb else None
    LOG.info("%d participant/session(s) at a time, %d CPU(s) each", n_parallel, share)
    context = multiprocessing.get_context("forkserver")  # see _plugin_args
    preload_in_forkserver()
    with ProcessPoolExecutor(
        n_parallel, mp_context=context, initializer=_init_worker, initargs=(config.verbose,)
    ) as pool:
        futures: dict[Future[str | None], SubjectInputs] = {
            pool.submit(run_unit, config, unit, landmarks, share, mem_share, template): unit
            for unit, landmarks in runnable()
        }
        for future in as_completed(futures):
            unit = futures[future]
            if future.cancelled():
                continue
            try:
                reason = future.result()
            except Exception as err:  # the worker process itself died (e.g. out of memory)
                reason = f"worker process failed: {type(err).__name__}: {err}"
                _report_unit(config, unit, time.time(), reason)
            if reason is None:
                continue
            failures[unit.name] = reason
            if config.stop_on_first_crash:
                for other, other_unit in futures.items():
                    if other.cancel():
                        stopped(other_unit)
    return failures


def _unit_problem(
    config: RunConfig, unit: SubjectInputs, table: Any
) -> tuple[str | None, Mapping[str, Sequence[float]] | None]:
    """(why the unit cannot run or None, its landmarks for ``--localizer landmarks``)."""
    from ievnet_bids.bids.query import landmarks_for

    if not unit.slabs:
        acq = "/".join(config.acq_values)
        return f"no inner-ear slab (T2w with acq-{acq}) in {config.bids_dir}", None
    model = config.model_path()
    if not Path(model).is_file():
        return f"model file not found: {model}", None
    if table is None:
        return None, None
    landmarks = landmarks_for(table, unit.subject, unit.session)
    if set(landmarks) != set(SIDES):
        return f"no left and right ear centres in {config.landmarks_file}", None
    return None, landmarks


def versioned_work_dir(work_dir: Path, version: str | None = None) -> Path:
    """``WORK/ievnet_bids_<major>_<minor>_wf``: the cache of this release line, so another
    release never reuses nodes computed by different code (``version``: the package's)."""
    if version is None:
        from ievnet_bids import __version__ as version
    major, minor = [*re.findall(r"\d+", version), "0", "0"][:2]
    return Path(work_dir) / f"ievnet_bids_{major}_{minor}_wf"


def template_cache_dir(config: RunConfig) -> Path:
    """Where the ear landmarks registered onto a template are kept between runs."""
    return versioned_work_dir(config.work_dir) / "templates"


def prepare_run_template(config: RunConfig, inputs: Sequence[SubjectInputs]) -> HeadTemplate | None:
    """``config.template`` with its ear landmarks, when a unit may use it (the ``template`` or
    ``auto`` localizer and a head image); raises :class:`ievnet_bids.templates.TemplateError`.
    """
    if config.localizer not in ("auto", "template") or not any(u.head for u in inputs):
        return None
    from ievnet_bids.templates import prepare_template

    template = prepare_template(config.template, template_cache_dir(config))
    ears = template.summary()["ear_uncertainty_mm"]
    spread = "/".join("n/a" if v is None else f"{v:.1f}" for v in ears.values())
    if template.derivation is None:
        origin = f"from {Path(template.landmarks_file or '').name}"
    else:
        added_mm = template.derivation["added_uncertainty_mm"]
        added = "/".join(f"{added_mm[f'inner_ear_{side}']:.1f}" for side in SIDES)
        origin = (
            f"registered from {template.derivation['from_template']} "
            f"({template.derivation['seconds']:.1f} s; the registration adds {added} mm)"
        )
    LOG.info(
        "template %s (%s): ear landmarks %s, uncertainty left/right %s mm",
        template.name,
        Path(template.head_image).name,
        origin,
        spread,
    )
    return template


def run_unit(
    config: RunConfig,
    unit: SubjectInputs,
    landmarks: Mapping[str, Sequence[float]] | None,
    nprocs: int,
    mem_gb: float | None,
    template: HeadTemplate | None = None,
) -> str | None:
    """Build and run one participant/session's graph; returns the failure reason or None.

    ``template``: the prepared ``config.template`` (:func:`prepare_run_template`). Writes the
    unit's status and report in any case.
    """
    start = time.time()
    wf = init_participant_wf(unit=unit, config=config, landmarks=landmarks, template=template)
    wf.base_dir = str(versioned_work_dir(config.work_dir))
    _cap_memory(wf, mem_gb)
    crashes = crash_dir(config, unit)
    crashes.mkdir(parents=True, exist_ok=True)
    wf.config["execution"] = {
        "crashdump_dir": str(crashes),
        "crashfile_format": "txt",
        "stop_on_first_crash": "true" if config.stop_on_first_crash else "false",
        "remove_unnecessary_outputs": "false",
        "poll_sleep_duration": "0.2",
    }
    unit_log = (unit.name, str(log_file_for(crashes)), config.verbose)
    configure_unit_logging(unit.name, log_file_for(crashes), config.verbose)
    LOG.info("%s: running %d slab(s)", unit.name, len(unit.slabs))
    try:
        if nprocs > 1:
            plugin_args = {**_plugin_args(nprocs, mem_gb), "unit_log": unit_log}
            wf.run(plugin=UnitMultiProc(plugin_args=plugin_args))
        else:  # one CPU: run the nodes in this process, no worker pool to start
            wf.run(plugin="Linear")
    except Exception as err:  # nipype raises RuntimeError naming the crashed nodes
        lines = str(err).strip().splitlines() or [type(err).__name__]
        reason = _crash_reason(crashes, start) or f"workflow failed (no crash file): {lines[0]}"
        _report_unit(config, unit, start, reason)
        return reason
    LOG.info("%s: done in %.1f s", unit.name, time.time() - start)
    _report_unit(config, unit, start, None)
    return None


def configure_nipype_logging(verbose: int) -> None:
    """Text crash files; nipype's own log quiet unless asked (``-vv``)."""
    from nipype import config as nipype_config

    nipype_config.set("execution", "crashfile_format", "txt")
    nipype_config.set("execution", "remove_unnecessary_outputs", "false")
    nipype_config.set("monitoring", "enabled", "false")
    nipype_logger = logging.getLogger("nipype")
    nipype_logger.propagate = False
    if verbose < 2:
        for name in ("nipype.workflow", "nipype.interface", "nipype.utils"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _init_worker(verbose: int) -> None:
    from ievnet_bids.logs import setup_logging

    setup_logging(verbose)
    configure_nipype_logging(verbose)


def _report_unit(config: RunConfig, unit: SubjectInputs, start: float, reason: str | None) -> None:
    """Record the unit's status and (re)write ``sub-XX.html``; never fails the run."""
    from ievnet_bids.reports.participant import write_subject_report, write_unit_status

    try:
        write_unit_status(
            config.output_dir,
            unit_name=unit.name,
            subject=unit.subject,
            session=unit.session,
            slabs=unit.slabs,
            head=unit.head,
            status="ok" if reason is None else "failed",
            reason=reason or "",
            started=start,
            seconds=time.time() - start,
            run_id=config.run_id,
        )
        path = write_subject_report(config.output_dir, unit.subject)
        LOG.info("%s: report %s", unit.name, path)
    except Exception:  # a report problem must not fail the segmentation
        LOG.warning("%s: could not write the report", unit.name, exc_info=True)


def preload_in_forkserver() -> None:
    """Have this process's forkserver import :mod:`ievnet_bids.workflows.preload` (torch,
    MONAI, ANTsPy, matplotlib) before it forks any worker; no effect once it runs."""
    multiprocessing.set_forkserver_preload(["ievnet_bids.workflows.preload"])


def _plugin_args(nprocs: int, mem_gb: float | None) -> dict[str, float | str]:
    # forkserver: forking a process whose torch/OpenMP threads already ran can deadlock;
    # the forkserver imports the heavy libraries once for all the pools of this process
    preload_in_forkserver()
    args: dict[str, float | str] = {"n_procs": nprocs, "mp_context": "forkserver"}
    if mem_gb:
        args["memory_gb"] = float(mem_gb)
    return args


def _cap_memory(wf: pe.Workflow, mem_gb: float | None) -> None:
    """Lower per-node memory estimates to ``--mem-gb`` so nipype never refuses to schedule."""
    if not mem_gb:
        return
    for node in wf._get_all_nodes():
        if node.mem_gb > mem_gb:
            LOG.debug("%s: memory estimate capped to --mem-gb %.1f", node, mem_gb)
            node._mem_gb = float(mem_gb)
