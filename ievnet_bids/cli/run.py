"""``ievnet-bids bids_dir output_dir {participant,group}``: the orchestrator.

parse → check the BIDS input → query → check the model, the folders and every selected image
(:mod:`ievnet_bids.checks`) → hand over to the level's runner → exit status.
The runners are ``ievnet_bids.workflows.execution.run_participant_level(config, inputs)`` and
``ievnet_bids.group.run_group_level(config)``, imported when used (:func:`run_level`); each
returns a mapping ``{unit name: one-line reason}`` of the participants (or sessions) that
failed, empty on success.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ievnet_bids.cli.exitcodes import ExitCode
from ievnet_bids.logs import setup_logging

if TYPE_CHECKING:
    from ievnet_bids.bids.query import SubjectInputs
    from ievnet_bids.config import RunConfig

__all__ = ["ExitCode", "main", "run_level"]

LOG = logging.getLogger("ievnet_bids")


def run_level(config: RunConfig, inputs: Sequence[SubjectInputs] = ()) -> Mapping[str, str]:
    """Hand over to the level's runner, imported only here (the participant level loads Nipype)."""
    if config.analysis_level == "participant":
        from ievnet_bids.workflows.execution import run_participant_level

        return run_participant_level(config, inputs)
    from ievnet_bids.group import run_group_level

    return run_group_level(config)


def _run_level(
    config: RunConfig, inputs: Sequence[SubjectInputs] = (), n_unusable: int = 0
) -> ExitCode:
    """Run the level; ``n_unusable`` units already failed the input check (and said why)."""
    from ievnet_bids.templateflow_offline import TemplateError, TemplateNotFoundError

    try:
        failures = run_level(config, inputs) if inputs or n_unusable == 0 else {}
    except TemplateNotFoundError as err:  # --template: gone since the command line was read
        LOG.error("required input missing: %s", err)
        return ExitCode.MISSING_INPUT
    except TemplateError as err:  # --template: its landmarks cannot be found or derived
        LOG.error("--template %s: %s", config.template, err)
        return ExitCode.USAGE
    except Exception:
        LOG.exception("the run failed")
        return ExitCode.SUBJECT_FAILED
    for name, reason in sorted(failures.items()):
        LOG.error("%s failed: %s", name, reason)
    n_failed = len(failures) + n_unusable
    if n_failed:
        LOG.error("%d participant/session(s) failed", n_failed)
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

    if config.analysis_level == "participant":
        from ievnet_bids.checks import CheckError, check_model, check_units, check_writable_folder

        try:
            check_model(config.model)  # first: a bad model leaves no folder behind
            check_writable_folder(config.output_dir, "output_dir")
            check_writable_folder(config.work_dir, "--work-dir")
        except CheckError as err:
            LOG.error("%s", err)
            return ExitCode.USAGE
        inputs, unusable = check_units(inputs)
        for name, problem in sorted(unusable.items()):
            LOG.error("%s: %s", name, problem)
        n_slabs = sum(len(i.slabs) for i in inputs)
        LOG.info("%d participant/session(s), %d slab image(s)", len(inputs), n_slabs)
        return int(_run_level(config, inputs, len(unusable)))
    return int(_run_level(config))


if __name__ == "__main__":
    sys.exit(main())
