"""The seed partition of the synthetic phantoms, shared by every tool that draws them.

* training (pool files and on-the-fly phantoms): seeds in ``[0, HOLDOUT_SEED_START)``;
* the held-out evaluation set (``ievnet-synth holdout``): from :data:`HOLDOUT_SEED_START`;
* validation during training: from :data:`VAL_SEED_START` (never reached by the hold-out set
  for fewer than 500 000 cases).

:func:`phantom_settings` gives each seed its side and contrast, so a seed names one phantom
wherever it is drawn.
"""

from __future__ import annotations

import numpy as np

HOLDOUT_SEED_START = 10_000_000
VAL_SEED_START = HOLDOUT_SEED_START + 500_000
RANDOM_CONTRAST_FRACTION = 0.3


def phantom_settings(seed: int) -> dict[str, str]:
    """Side and contrast of the phantom for ``seed`` (deterministic)."""
    rng = np.random.default_rng([seed, 7])
    return {
        "side": "left" if seed % 2 else "right",
        "contrast": "random" if rng.random() < RANDOM_CONTRAST_FRACTION else "space",
    }
