"""``ievnet-bids bids_dir output_dir {participant,group}``: the orchestrator.

parse → check the BIDS input → query → hand over to the level's runner → exit status.
The runners live in ``ievnet_bids.workflows.participant.run_participant_level(config,
inputs)`` and ``ievnet_bids.workflows.group.run_group_level(config)``; each returns a mapping
``{unit name: one-line reason}`` of the participants (or sessions) that failed, empty on
success.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from enum import IntEnum
from typing import Any

from ievnet_bids.logs import setup_logging

LOG = logging.getLogger("ievnet_bids")


class ExitCode(IntEnum):
    """Exit statuses of ``ievnet-bids``."""

    OK = 0
    SUBJECT_FAILED = 1  # any participant failed (or the level is not available)
    USAGE = 2  # bad command line
    INVALID_BIDS = 16  # input is not a usable BIDS dataset / selected participants missing
    NO_IMAGES = 18  # participants/sessions/filters selected no slab image
    MISSING_INPUT = 66  # a file named on the command line does not exist


RUNNERS: dict[str, tuple[str, str]] = {
    "participant": ("ievnet_bids.workflows.participant", "run_participant_level"),
    "group": ("ievnet_bids.workflows.group", "run_group_level"),
}


def load_runner(level: str) -> Callable[..., Mapping[str, str]] | None:
    """The runner of ``level``, or ``None`` while its module does not exist yet."""
    module_name, func_name = RUNNERS[level]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            return None
        raise  # a dependency of an existing module is missing: not "not implemented"
    return getattr(module, func_name)


def _run_level(runner: Callable[..., Mapping[str, str]], *args: Any) -> ExitCode:
    try:
        failures = runner(*args)
    except Exception:
        LOG.exception("the run failed")
        return ExitCode.SUBJECT_FAILED
    for name, reason in sorted(failures.items()):
        LOG.error("%s failed: %s", name, reason)
    if failures:
        LOG.error("%d participant/session(s) failed", len(failures))
        return ExitCode.SUBJECT_FAILED
    return ExitCode.OK


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (:class:`ExitCode`)."""
    from ievnet_bids.bids.query import (
        InvalidBidsError,
        NoImagesError,
        check_participants,
        collect_inputs,
        validate_dataset,
    )
    from ievnet_bids.cli.parser import MissingInputError, parse_args

    try:
        config = parse_args(argv)
    except SystemExit as exc:  # usage error (2), --help or --version (0)
        return exc.code if isinstance(exc.code, int) else ExitCode.USAGE
    except MissingInputError as err:
        setup_logging(0)
        LOG.error("required input missing: %s", err)
        return ExitCode.MISSING_INPUT
    setup_logging(config.verbose)
    LOG.debug("configuration:\n%s", config.to_toml())

    try:
        validate_dataset(config.bids_dir, light_validation=not config.skip_bids_validation)
        if config.analysis_level == "participant":
            inputs = collect_inputs(config)
        else:
            check_participants(config.bids_dir, config.participant_labels)
    except InvalidBidsError as err:
        LOG.error("%s", err)
        return ExitCode.INVALID_BIDS
    except NoImagesError as err:
        LOG.error("%s", err)
        return ExitCode.NO_IMAGES

    runner = load_runner(config.analysis_level)
    if config.analysis_level == "participant":
        n_slabs = sum(len(i.slabs) for i in inputs)
        LOG.info("%d participant/session(s), %d slab image(s)", len(inputs), n_slabs)
        if runner is None:
            LOG.error(
                "participant workflow not implemented yet (%s); inputs found: %s",
                RUNNERS["participant"][0],
                ", ".join(i.name for i in inputs),
            )
            return ExitCode.SUBJECT_FAILED
        return int(_run_level(runner, config, inputs))
    if runner is None:
        LOG.error("group level not implemented yet (%s)", RUNNERS["group"][0])
        return ExitCode.SUBJECT_FAILED
    return int(_run_level(runner, config))


if __name__ == "__main__":
    sys.exit(main())
