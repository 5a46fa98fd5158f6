"""Heavy imports done once in the forkserver, so that every Nipype worker forked from it
starts with them loaded (:func:`ievnet_bids.workflows.execution.preload_in_forkserver`;
importing this module *is* the preload: the run's own process never imports it).

Each participant/session runs its graph on a fresh worker pool; without this, every worker
imported torch, MONAI, ANTsPy and matplotlib again for every subject (about 4–5 s of the
two cores per subject). Importing them starts no threads, so forking afterwards is safe
(the reason for ``forkserver`` is that a process whose torch/OpenMP threads already *ran*
must not fork). ANTsPy is loaded the way :func:`ievnet_bids.localize.register._ants` loads it
(ITK on one thread), matplotlib with the Agg backend.
"""

from __future__ import annotations

import cc3d  # noqa: F401
import monai.networks.nets  # noqa: F401
import nibabel  # noqa: F401
import scipy.ndimage  # noqa: F401
import skimage.measure  # noqa: F401
import torch  # noqa: F401

import ievnet_bids.reports.figures as _figures
from ievnet_bids.localize.register import _ants

_ants()
_figures._plt()
