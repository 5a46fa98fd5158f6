"""Exit statuses of ``ievnet-bids`` (imported by the parser's help and by the orchestrator)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit statuses of ``ievnet-bids``."""

    OK = 0
    SUBJECT_FAILED = 1  # any participant failed (or the run itself failed)
    USAGE = 2  # bad command line
    INVALID_BIDS = 16  # input is not a usable BIDS dataset / selected participants missing
    NO_IMAGES = 18  # participants/sessions/filters selected no slab image
    MISSING_INPUT = 66  # a file named on the command line does not exist
