"""Label values of the synthetic phantoms (uint8)."""

from __future__ import annotations

import numpy as np

AIR = 0
COCHLEA = 1
VESTIBULE = 2
ANTERIOR_CANAL = 3
POSTERIOR_CANAL = 4
LATERAL_CANAL = 5
IAC_CSF = 6
CISTERN_CSF = 7
GREY_MATTER = 8
WHITE_MATTER = 9
BONE = 10
NERVE = 11
VESSEL = 12
SOFT_TISSUE = 13
MASTOID_FLUID = 14
SPIRAL_LAMINA = 15  # thin dark shelf inside the cochlear lumen: part of the TFS
# Phantoms v2 (``realism=2``) only:
MARROW = 16  # intermediate-signal marrow patches with a speckled texture in the petrous bone
DIM_TISSUE = 17  # intermediate-signal soft tissue touching the labyrinth
SMALL_VESSEL = 18  # small bright (slow-flow) vessel dots in and around the temporal bone

LABEL_NAMES: dict[int, str] = {
    AIR: "air",
    COCHLEA: "cochlea",
    VESTIBULE: "vestibule",
    ANTERIOR_CANAL: "anterior_canal",
    POSTERIOR_CANAL: "posterior_canal",
    LATERAL_CANAL: "lateral_canal",
    IAC_CSF: "iac_csf",
    CISTERN_CSF: "cistern_csf",
    GREY_MATTER: "grey_matter",
    WHITE_MATTER: "white_matter",
    BONE: "bone",
    NERVE: "nerve",
    VESSEL: "vessel",
    SOFT_TISSUE: "soft_tissue",
    MASTOID_FLUID: "mastoid_fluid",
    SPIRAL_LAMINA: "spiral_lamina",
    MARROW: "marrow",
    DIM_TISSUE: "dim_tissue",
    SMALL_VESSEL: "small_vessel",
}
N_LABELS = len(LABEL_NAMES)
#: Labels of the first phantom version: the random-contrast draw covers these (so v1 phantoms
#: stay byte-identical); the v2 labels' intensities are drawn after all others.
N_V1_LABELS = SPIRAL_LAMINA + 1

TFS_LABELS: tuple[int, ...] = (
    COCHLEA,
    VESTIBULE,
    ANTERIOR_CANAL,
    POSTERIOR_CANAL,
    LATERAL_CANAL,
    SPIRAL_LAMINA,
)
# Bright in heavily T2-weighted images but not part of the TFS: the distractors.
OTHER_FLUID_LABELS: tuple[int, ...] = (IAC_CSF, CISTERN_CSF, MASTOID_FLUID)

# Sub-structures for per-structure Dice (the lamina counts as cochlea).
STRUCTURES: dict[str, tuple[int, ...]] = {
    "cochlea": (COCHLEA, SPIRAL_LAMINA),
    "vestibule": (VESTIBULE,),
    "anterior_canal": (ANTERIOR_CANAL,),
    "posterior_canal": (POSTERIOR_CANAL,),
    "lateral_canal": (LATERAL_CANAL,),
}


def tfs_mask(labels: np.ndarray) -> np.ndarray:
    """Boolean total-fluid-space mask of a label map."""
    return np.isin(labels, TFS_LABELS)


def other_fluid_mask(labels: np.ndarray) -> np.ndarray:
    """Boolean mask of bright fluid that is not TFS (IAC, cisterns, mastoid effusion)."""
    return np.isin(labels, OTHER_FLUID_LABELS)
