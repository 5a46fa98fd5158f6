"""Moved to :mod:`ievnet_bids.qc` (QC is science, not reporting).

This name stays an alias of that module so that older imports keep working; new code imports
``ievnet_bids.qc``.
"""

import sys

from ievnet_bids import qc as _qc

sys.modules[__name__] = _qc
