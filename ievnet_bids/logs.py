"""Logging set-up shared by the command line and the worker processes."""

from __future__ import annotations

import logging
import sys
from typing import Any

LOG = logging.getLogger("ievnet_bids")


class _StderrHandler(logging.StreamHandler):
    """Writes to the current ``sys.stderr`` (not the one seen when it was made)."""

    @property
    def stream(self) -> Any:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def setup_logging(verbose: int) -> None:
    """Log to stderr: ``ievnet_bids`` INFO (``-v`` DEBUG), libraries WARNING (``-vv`` DEBUG).

    Idempotent: one stderr handler on the root logger, so pytest's ``caplog`` still works.
    """
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
        )
        root.addHandler(handler)
    LOG.setLevel(logging.DEBUG if verbose >= 1 else logging.INFO)
    root.setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)
