"""What a unit's run prints: one line per stage on the terminal, Nipype's log in a file.

Nipype logs several lines per node (setting up, executing, finished) and, on a crash, the
whole traceback. For each unit (participant/session) that log goes to
``OUT/sub-XX/log/[ses-YY/]nipype.log``; the terminal gets one line per finished stage
(``sub-01_ses-1: segment done (5.8 s)``) and the unit's own summary lines. With ``-v`` the
full Nipype log is shown on the terminal as well. Nodes run in this process (one CPU) or in
the worker processes of :class:`UnitMultiProc`, which set up the same logging before the
first node they run.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from nipype.pipeline.plugins.multiproc import MultiProcPlugin, run_node

LOG = logging.getLogger("ievnet_bids")
NIPYPE_LOGGERS = ("nipype.workflow", "nipype.interface", "nipype.utils", "nipype.filemanip")
LOG_NAME = "nipype.log"
_FINISHED = re.compile(r'\[Node\] Finished "([^"]+)", elapsed time ([\d.]+)s')
_CONFIGURED: dict[str, Any] = {}  # per process: the unit whose logging is set up


class _StageLines(logging.Handler):
    """Turns Nipype's "[Node] Finished" records into one terminal line per stage."""

    def __init__(self, unit: str) -> None:
        super().__init__(logging.INFO)
        self.unit = unit

    def emit(self, record: logging.LogRecord) -> None:
        match = _FINISHED.search(record.getMessage())
        if match:
            LOG.info("%s: %s done (%.1f s)", self.unit, match[1], float(match[2]))


def configure_unit_logging(unit: str, log_file: Path, verbose: int) -> None:
    """Send Nipype's records to ``log_file`` (all of them), stage lines to the terminal, and
    Nipype's own stdout handler only with ``verbose`` ≥ 1. Idempotent per process and unit."""
    if _CONFIGURED.get("unit") == (unit, str(log_file)):
        return
    for handler in _CONFIGURED.get("handlers", ()):
        for name in NIPYPE_LOGGERS:
            logging.getLogger(name).removeHandler(handler)
        handler.close()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(log_file, encoding="utf-8")
    to_file.setFormatter(
        logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s", "%H:%M:%S")
    )
    handlers: list[logging.Handler] = [to_file, _StageLines(unit)]
    nipype_root = logging.getLogger("nipype")
    nipype_root.propagate = False  # never through the root logger's terminal handler
    for handler in nipype_root.handlers:  # nipype's own stream handler (stdout), nothing else
        if type(handler) is logging.StreamHandler:
            handler.setLevel(logging.DEBUG if verbose >= 1 else logging.CRITICAL + 1)
    for name in NIPYPE_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
        for handler in handlers:
            logger.addHandler(handler)
    _CONFIGURED.update(unit=(unit, str(log_file)), handlers=handlers)


def _run_node_logged(node: Any, updatehash: bool, taskid: int, log: tuple) -> dict:
    """Nipype's ``run_node`` in a worker process, after setting up the unit's logging."""
    from ievnet_bids.logs import setup_logging

    unit, log_file, verbose = log
    setup_logging(verbose)
    configure_unit_logging(unit, Path(log_file), verbose)
    return run_node(node, updatehash, taskid)


class UnitMultiProc(MultiProcPlugin):
    """Nipype's MultiProc whose workers log like the unit's own process
    (:func:`configure_unit_logging`); ``plugin_args["unit_log"] = (unit, log_file, verbose)``."""

    def _submit_job(self, node: Any, updatehash: bool = False) -> int:
        self._taskid += 1
        if getattr(node.interface, "terminal_output", "") == "stream":
            node.interface.terminal_output = "allatonce"
        log = self.plugin_args["unit_log"]
        future = self.pool.submit(_run_node_logged, node, updatehash, self._taskid, log)
        future.add_done_callback(self._async_callback)
        self._task_obj[self._taskid] = future
        return self._taskid


def log_file_for(crash_folder: Path) -> Path:
    """The unit's Nipype log, beside its crash files."""
    return crash_folder / LOG_NAME
