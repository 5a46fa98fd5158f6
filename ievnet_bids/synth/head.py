"""Full-head phantoms as a small BIDS dataset, with ground truth kept outside the BIDS tree.

Each subject is the shipped mean-head template (:mod:`ievnet_bids.templates`) in a random
rigid head pose. Per subject/session the dataset holds

* ``anat/sub-XX[_ses-YY]_T1w.nii.gz``: the template T1w on an axis-aligned 1 mm scanner grid
  (linear interpolation of the 1.5 mm template), intensity scale, smooth bias, Rician noise;
* ``anat/sub-XX[_ses-YY]_acq-space_T2w.nii.gz``: a 0.5 mm axial slab (384×384×56 voxels,
  192×192×28 mm) through both ears, oriented like the head (the pose rotation is part of its
  affine, as a scanner aligns slices to the head). Its background is the template's
  heavily-T2-like contrast; one ROI phantom (:func:`generate_phantom`) per ear, intensity-matched
  (phantom fluid level = template CSF level), is resampled (cubic) into it and blended in. The
  blend weight fades over the outer 3 mm of the ROI box and, so that no rectangular outline
  shows, is also tapered towards the box's inscribed ellipsoid; within 1.5 mm of the labyrinth
  it is always 1 (the labyrinth is never faded, even near a box face).

The truth folder holds per image the left/right TFS masks on the slab grid
(``sub-XX[_ses-YY]_desc-{left,right}_tfs.nii.gz``) and ``sub-XX[_ses-YY]_truth.json`` (true ear
centres, head pose, phantom seeds, TFS volumes). A subject's anatomy (ear offsets, phantom
seeds, labyrinth) is the same in all its sessions; only pose, scaling and noise change. Session
1 of a subject is identical to the session-less image of the same subject and seed.

With ``hydrops=True`` each ear also gets an endolymphatic space (:mod:`.endolymph`) of its own
severity, and each image a gadolinium FLAIR (``anat/*_acq-inner_ce-gadolinium_FLAIR.nii.gz``,
0.5 mm, 320×320×48) through both ears, acquired after the head moved rigidly (≤ 3°, ≤ 2 mm)
from its SPACE pose; its background is the template T1w with the CSF darkened, and per ear the
phantom's FLAIR rendering (:mod:`.flair`) is blended in like the SPACE phantom. The truth folder
then also holds ``*_desc-{side}_els.nii.gz`` and ``*_desc-{side}_structures.nii.gz`` (SPACE slab
grid; structures 1 cochlea incl. spiral lamina, 2 vestibule, 3 canals), the same two on the
ear's 0.2 mm ROI grid (``*_space-ROI_desc-{side}_{els,structures}.nii.gz``) and, in the truth
JSON, severities, ELS/TFS volumes and the FLAIR → SPACE motion. Everything the FLAIR adds comes
from random streams of its own: the SPACE, T1w and TFS files are those of ``hydrops=False``.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from ievnet_bids.atomic import staged, write_text_atomic
from ievnet_bids.geometry.extract import box_around, sub_grid
from ievnet_bids.geometry.roi import RoiGrid, resample
from ievnet_bids.synth import labels as L
from ievnet_bids.synth.endolymph import HYDROPS_GRADES, STRUCTURE_VALUES, grade_range, structure_map
from ievnet_bids.synth.flair import flair_rng, perilymph_level, render_flair
from ievnet_bids.synth.phantom import Phantom, generate_phantom
from ievnet_bids.synth.render import rician, smooth_field
from ievnet_bids.templates import load_template

BIDS_VERSION = "1.10.0"
T1_SHAPE: tuple[int, int, int] = (180, 228, 224)  # 1 mm, axis-aligned scanner grid
T1_SPACING_MM = 1.0
SLAB_SHAPE: tuple[int, int, int] = (384, 384, 56)  # 0.5 mm: 192 × 192 × 28 mm
SLAB_SPACING_MM = 0.5
FADE_MM = 3.0  # phantom blend weight ramps from 0 to 1 over the outer FADE_MM of the ROI box
ELLIPSOID_CORE = 0.55  # ... times an ellipsoidal taper: 1 within 0.55 of the inscribed ellipsoid
MAX_ROTATION_DEG = 10.0
MAX_TRANSLATION_MM = 10.0
SESSION_ROTATION_DEG = 2.0
SESSION_TRANSLATION_MM = 3.0
MAX_EAR_OFFSET_MM = 3.0
T2LIKE_FLUID = 1000.0  # CSF level of the T2-like template
SIDES = ("left", "right")
# FLAIR-iMRI (hydrops datasets)
FLAIR_SHAPE: tuple[int, int, int] = (320, 320, 48)  # 0.5 mm: 160 × 160 × 24 mm
FLAIR_SPACING_MM = 0.5
MAX_MOTION_DEG = 3.0  # head motion between the SPACE and the FLAIR
MAX_MOTION_MM = 2.0
FLAIR_BRAIN = 0.4  # brain level / perilymph level
T1_BRAIN = 300.0  # brain level of the template T1w
T1_CSF_RAMP = (120.0, 250.0)  # template T1w values ramped from suppressed (CSF) to tissue
FLAIR_SUFFIX = "acq-inner_ce-gadolinium_FLAIR"

T1_SIDECAR = {
    "MagneticFieldStrength": 3,
    "MRAcquisitionType": "3D",
    "PulseSequenceType": "MPRAGE",
    "RepetitionTime": 2.3,
    "EchoTime": 0.00226,
    "InversionTime": 0.9,
    "FlipAngle": 8,
    "SliceThickness": 1.0,
    "Manufacturer": "ievnet-bids synthetic phantom",
}
T2_SIDECAR = {
    "MagneticFieldStrength": 3,
    "MRAcquisitionType": "3D",
    "PulseSequenceType": "SPACE",
    "ScanningSequence": "SE",
    "SequenceVariant": "SK_SP",
    "RepetitionTime": 1.4,
    "EchoTime": 0.179,
    "EchoTrainLength": 80,
    "FlipAngle": 120,
    "SliceThickness": SLAB_SPACING_MM,
    "Manufacturer": "ievnet-bids synthetic phantom",
}
FLAIR_SIDECAR = {
    "MagneticFieldStrength": 3,
    "MRAcquisitionType": "3D",
    "PulseSequenceType": "3D-FLAIR",
    "ScanningSequence": ["SE", "IR"],
    "SequenceVariant": ["SK", "SP", "MP"],
    "RepetitionTime": 6.0,
    "EchoTime": 0.134,
    "InversionTime": 2.24,
    "FlipAngle": 120,
    "SliceThickness": FLAIR_SPACING_MM,
    "ContrastBolusIngredient": "GADOLINIUM",
    "Manufacturer": "ievnet-bids synthetic phantom",
}


@dataclass
class HeadPose:
    """Rigid template → scanner map ``scanner = rotation @ template + translation``."""

    rotation: np.ndarray
    translation: np.ndarray

    @property
    def matrix(self) -> np.ndarray:
        m = np.eye(4)
        m[:3, :3] = self.rotation
        m[:3, 3] = self.translation
        return m

    def apply(self, xyz: np.ndarray) -> np.ndarray:
        return np.asarray(xyz, dtype=float) @ self.rotation.T + self.translation


def euler_rotation(angles_deg: np.ndarray) -> np.ndarray:
    """Rotation ``Rz @ Ry @ Rx`` from angles (degrees) about x, y, z."""
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, dtype=float))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def template_head_frame(landmarks: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(3×3 head axes in template world, head centre): x = left→right ear axis (horizontal)."""
    left, right = landmarks["inner_ear_left"], landmarks["inner_ear_right"]
    ex = right - left
    ex[2] = 0.0
    ex /= np.linalg.norm(ex)
    ez = np.array([0.0, 0.0, 1.0])
    ey = np.cross(ez, ex)
    return np.stack([ex, ey, ez], axis=1), (left + right) / 2


def sample_pose(
    rng: np.random.Generator,
    centre: np.ndarray,
    *,
    max_rotation_deg: float,
    max_translation_mm: float,
    base: HeadPose | None = None,
) -> tuple[HeadPose, np.ndarray]:
    """Random rotation about ``centre`` plus translation, composed after ``base``."""
    angles = rng.uniform(-max_rotation_deg, max_rotation_deg, 3)
    rot = euler_rotation(angles)
    shift = rng.uniform(-max_translation_mm, max_translation_mm, 3)
    if base is None:
        return HeadPose(rot, centre + shift - rot @ centre), angles
    pivot = base.apply(centre)
    r = rot @ base.rotation
    return HeadPose(r, rot @ (base.translation - pivot) + pivot + shift), angles


def save_nifti(data: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    """Atomic NIfTI write (temporary file in the same folder + ``os.replace``)."""
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    with staged(path, suffix=".nii.gz") as tmp:
        nib.save(img, tmp)
    return path


def write_json(path: Path, obj: dict) -> Path:
    return write_text_atomic(json.dumps(obj, indent=2) + "\n", path)


def _bias(rng: np.random.Generator, shape: tuple[int, ...], strength: float) -> np.ndarray:
    return np.exp(strength * smooth_field(rng, shape, 3)).astype(np.float32)


def _resample_linear(data: np.ndarray, source_affine: np.ndarray, grid: RoiGrid) -> np.ndarray:
    return resample(np.asarray(data, dtype=np.float32), source_affine, grid, order=1)


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def fade_weight(
    target: RoiGrid, roi: RoiGrid, fade_mm: float = FADE_MM, core: float = ELLIPSOID_CORE
) -> np.ndarray:
    """Blend weight on ``target`` for content of the ROI box.

    The product of a ramp over the outer ``fade_mm`` of the box and an ellipsoidal taper
    (1 inside ``core`` of the box's inscribed ellipsoid, 0 on it), so the pasted ROI shows no
    rectangular outline.
    """
    m = np.linalg.inv(roi.affine) @ target.affine
    idx = np.indices(target.shape, dtype=np.float32).reshape(3, -1)
    c = (m[:3, :3].astype(np.float32) @ idx).T + m[:3, 3].astype(np.float32)
    n = np.asarray(roi.shape, dtype=np.float32) - 1
    dist = np.minimum(c, n - c) * np.asarray(roi.spacing, dtype=np.float32)  # mm to each face
    box = _smoothstep(dist.min(axis=1) / fade_mm)
    r = np.sqrt((((c - n / 2) / (n / 2)) ** 2).sum(axis=1))
    ellipsoid = _smoothstep((1.0 - r) / (1.0 - core))
    return (box * ellipsoid).reshape(target.shape)


def near_weight(
    mask: np.ndarray, spacing_mm: float, inner_mm: float = 1.5, outer_mm: float = 3.5
) -> np.ndarray:
    """1 within ``inner_mm`` of ``mask``, smooth ramp to 0 at ``outer_mm``."""
    if not mask.any():
        return np.zeros(mask.shape, np.float32)
    d = ndimage.distance_transform_edt(~mask) * spacing_mm
    return _smoothstep((outer_mm - d) / (outer_mm - inner_mm)).astype(np.float32)


def phantom_fluid_level(ph: Phantom) -> float:
    """Median phantom intensity over fluid (TFS, IAC and cistern CSF)."""
    fluid = np.isin(ph.labels, (*L.TFS_LABELS, L.IAC_CSF, L.CISTERN_CSF))
    return float(np.median(ph.image[fluid])) if fluid.any() else float(ph.image.max())


def _entity(sub: str, ses: str | None) -> str:
    return f"sub-{sub}" + (f"_ses-{ses}" if ses else "")


@dataclass
class _Template:
    t1: np.ndarray
    t2like: np.ndarray
    affine: np.ndarray
    landmarks: dict[str, np.ndarray]
    head_axes: np.ndarray  # 3×3, head left→right / posterior→anterior / up, template world
    head_centre: np.ndarray
    fov_centre: np.ndarray

    @classmethod
    def load(cls) -> _Template:
        t1, t2, landmarks = load_template()
        axes, centre = template_head_frame(landmarks)
        return cls(
            np.asarray(t1.dataobj, dtype=np.float32),
            np.asarray(t2.dataobj, dtype=np.float32),
            t1.affine.copy(),
            landmarks,
            axes,
            centre,
            RoiGrid(t1.shape, t1.affine).centre_mm,
        )


def _make_t1(
    rng: np.random.Generator, tpl: _Template, pose: HeadPose
) -> tuple[np.ndarray, RoiGrid]:
    centre = pose.apply(tpl.fov_centre)
    grid = RoiGrid.centred(centre, shape=T1_SHAPE, spacing_mm=T1_SPACING_MM)
    # the template voxels sit in the scanner frame at pose · template affine
    img = _resample_linear(tpl.t1, pose.matrix @ tpl.affine, grid)
    scale = rng.uniform(0.8, 1.6)
    img *= scale * _bias(rng, grid.shape, rng.uniform(0.03, 0.12))
    img = rician(rng, img, rng.uniform(0.01, 0.03) * 390.0 * scale)
    return np.round(img).clip(0, 32767).astype(np.int16), grid


def _slab_grid(rotation: np.ndarray, centre: np.ndarray) -> RoiGrid:
    return RoiGrid.centred(centre, shape=SLAB_SHAPE, spacing_mm=SLAB_SPACING_MM, rotation=rotation)


def _moved_centre(ph: Phantom, grid: RoiGrid) -> np.ndarray:
    """The phantom's ear centre when its arrays are rigidly moved onto ``grid`` (same shape)."""
    return grid.voxel_to_world(ph.grid.world_to_voxel(ph.centre_mm[None]))[0]


def sample_ear_hydrops(rng: np.random.Generator, subject_index: int) -> dict[str, float]:
    """Hydrops severity per ear: the ears of subject ``i`` take the grades ``k + 2i`` and
    ``k + 2i + 1`` (mod 4, random ``k``), so any two subjects span none … severe."""
    offset = int(rng.integers(len(HYDROPS_GRADES)))
    out = {}
    for j, side in enumerate(SIDES):
        name = HYDROPS_GRADES[(offset + 2 * subject_index + j) % len(HYDROPS_GRADES)][0]
        low, high = grade_range(name)
        out[side] = round(float(rng.uniform(low, high)), 3)
    return out


def sample_motion(rng: np.random.Generator, pivot: np.ndarray) -> tuple[np.ndarray, dict]:
    """Head motion between two scans: ``(flair_to_space, info)``.

    The head turns by up to :data:`MAX_MOTION_DEG` about a random axis through ``pivot`` (head
    centre, SPACE scanner mm) and shifts by up to :data:`MAX_MOTION_MM`. ``flair_to_space`` is
    the 4×4 world matrix with ``x_space = flair_to_space @ x_flair``: the scanner coordinates
    (mm) in the SPACE of the tissue point at ``x_flair`` in the FLAIR.
    """
    angle = float(rng.uniform(0.0, MAX_MOTION_DEG))
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    shift = rng.normal(size=3)
    shift *= rng.uniform(0.0, MAX_MOTION_MM) / np.linalg.norm(shift)
    rot = Rotation.from_rotvec(np.deg2rad(angle) * axis).as_matrix()
    space_to_flair = np.eye(4)
    space_to_flair[:3, :3] = rot
    space_to_flair[:3, 3] = pivot + shift - rot @ pivot
    flair_to_space = np.linalg.inv(space_to_flair)
    info = {
        "rotation_deg": angle,
        "rotation_axis": [float(v) for v in axis],
        "translation_mm": [float(v) for v in flair_to_space[:3, 3]],
        "head_centre_shift_mm": [float(v) for v in shift],
    }
    return flair_to_space, info


def write_bids_dataset(
    out_dir: str | Path,
    truth_dir: str | Path,
    *,
    n_subjects: int = 2,
    sessions: list[int] | None = None,
    seed: int = 0,
    hydrops: bool = False,
    hydrops_subjects: Collection[int] | None = None,
) -> dict:
    """Write a synthetic BIDS dataset of full-head phantoms and its ground truth.

    ``sessions``: sessions per subject (e.g. ``[1, 2, 1]``; None → no ``ses-`` entity).
    ``hydrops``: also draw endolymphatic hydrops and write a gadolinium FLAIR per image, for
    the subjects numbered in ``hydrops_subjects`` (1-based; None → all).
    Returns a summary: ``{"out_dir", "truth_dir", "images": [{"subject", "session", "t1w",
    "t2w", "truth", "masks": {side: path}}, ...]}``, with hydrops also ``"flair"`` and
    ``"els_masks": {side: path}``. Deterministic for ``seed``.
    """
    out, truth = Path(out_dir), Path(truth_dir)
    if sessions is not None:
        sessions = [int(s) for s in sessions]
        if len(sessions) != n_subjects:
            raise ValueError(f"sessions has {len(sessions)} entries for {n_subjects} subjects")
        if any(s < 1 for s in sessions):
            raise ValueError("every subject needs at least one session")
    if n_subjects < 1:
        raise ValueError("n_subjects must be >= 1")
    out.mkdir(parents=True, exist_ok=True)
    truth.mkdir(parents=True, exist_ok=True)

    tpl = _Template.load()
    width = max(2, len(str(n_subjects)))

    images: list[dict] = []
    participants: list[tuple[str, str, str]] = []
    for s in range(n_subjects):
        sub = f"{s + 1:0{width}d}"
        rng = np.random.default_rng([seed, s])
        age = int(rng.integers(20, 80))
        sex = str(rng.choice(["F", "M"]))
        participants.append((f"sub-{sub}", str(age), sex))
        base_pose, base_angles = sample_pose(
            rng,
            tpl.head_centre,
            max_rotation_deg=MAX_ROTATION_DEG,
            max_translation_mm=MAX_TRANSLATION_MM,
        )
        ears = {}
        for side in SIDES:
            ears[side] = {
                "offset": rng.uniform(-MAX_EAR_OFFSET_MM, MAX_EAR_OFFSET_MM, 3),
                "seed": int(rng.integers(0, 2**31 - 1)),
            }
        with_flair = hydrops and (hydrops_subjects is None or s + 1 in hydrops_subjects)
        if with_flair:
            severity = sample_ear_hydrops(np.random.default_rng([seed, s, 14]), s)
            for side in SIDES:
                ears[side]["hydrops"] = severity[side]
        first_phantoms: dict[str, Phantom] = {}
        flair_rois: dict[str, np.ndarray] = {}
        n_ses = 1 if sessions is None else sessions[s]
        for k in range(n_ses):
            ses = None if sessions is None else str(k + 1)
            srng = np.random.default_rng([seed, s, k])
            pose, ses_angles = sample_pose(
                srng,
                tpl.head_centre,
                max_rotation_deg=SESSION_ROTATION_DEG,
                max_translation_mm=SESSION_TRANSLATION_MM,
                base=base_pose,
            )
            images.append(
                _write_image(
                    out,
                    truth,
                    sub,
                    ses,
                    srng,
                    pose,
                    {"subject_deg": base_angles, "session_deg": ses_angles},
                    tpl,
                    ears,
                    first_phantoms,
                    np.random.default_rng([seed, s, k, 14]) if with_flair else None,
                    flair_rois,
                )
            )

    _write_metadata(out, participants, seed, sessions, hydrops)
    return {"out_dir": str(out), "truth_dir": str(truth), "images": images}


def _write_image(
    out: Path,
    truth: Path,
    sub: str,
    ses: str | None,
    rng: np.random.Generator,
    pose: HeadPose,
    angles: dict[str, np.ndarray],
    tpl: _Template,
    ears: dict[str, dict],
    first_phantoms: dict[str, Phantom],
    flair_rng_: np.random.Generator | None = None,
    flair_rois: dict[str, np.ndarray] | None = None,
) -> dict:
    """One subject/session: T1w, SPACE slab and TFS truth (and, with ``flair_rng_``, the
    FLAIR, ELS and structure truth); ``first_phantoms``/``flair_rois`` cache the ears."""
    ent = _entity(sub, ses)
    anat = out / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    rotation = pose.rotation @ tpl.head_axes  # head axes in the scanner frame

    # --- T1w, axis-aligned full head
    t1, t1_grid = _make_t1(rng, tpl, pose)
    t1_path = save_nifti(t1, t1_grid.affine, anat / f"{ent}_T1w.nii.gz")
    write_json(anat / f"{ent}_T1w.json", T1_SIDECAR)

    # --- ear ROIs and phantoms
    phantoms: dict[str, tuple[Phantom, RoiGrid, np.ndarray]] = {}
    for side in SIDES:
        landmark = tpl.landmarks[f"inner_ear_{side}"]
        roi_centre = pose.apply(landmark) + rotation @ ears[side]["offset"]
        grid = RoiGrid.centred(roi_centre, rotation=rotation)
        if side not in first_phantoms:
            # unacquired: the slab below is the one acquisition (sampling, noise)
            first_phantoms[side] = generate_phantom(
                ears[side]["seed"],
                side=side,
                grid=grid,
                hydrops=ears[side].get("hydrops"),
                acquire=False,
            )
        ph = first_phantoms[side]
        phantoms[side] = (ph, grid, _moved_centre(ph, grid))

    # --- slab: centred between the ear ROIs (+ operator jitter), oriented like the head
    mid = (phantoms["left"][1].centre_mm + phantoms["right"][1].centre_mm) / 2
    jitter = rng.uniform(-1.0, 1.0, 3) * np.array([2.0, 2.0, 1.0])
    slab = _slab_grid(rotation, mid + rotation @ jitter)
    background = _resample_linear(tpl.t2like, pose.matrix @ tpl.affine, slab)
    scale = rng.uniform(0.5, 1.2)  # scanner units: fluid ≈ 500–1200
    fluid_level = T2LIKE_FLUID * scale
    image = background * scale
    masks: dict[str, np.ndarray] = {}
    ear_truth: dict[str, dict] = {}
    for side in SIDES:
        ph, grid, centre = phantoms[side]
        mask = np.zeros(slab.shape, np.uint8)
        box = box_around(grid, slab)
        vol_slab = 0.0
        if box is not None:
            sub_target = sub_grid(slab, box)
            local = resample(ph.image, grid.affine, sub_target, order=3)
            local *= fluid_level / max(phantom_fluid_level(ph), 1e-6)
            tfs = resample(ph.tfs.astype(np.float32), grid.affine, sub_target, order=1) >= 0.5
            # the labyrinth and its surroundings always come from the phantom
            w = np.maximum(fade_weight(sub_target, grid), near_weight(tfs, SLAB_SPACING_MM))
            image[box] = w * np.clip(local, 0, None) + (1 - w) * image[box]
            mask[box] = tfs
            vol_slab = float(mask.sum()) * SLAB_SPACING_MM**3
        masks[side] = mask
        tfs_world = grid.voxel_to_world(np.argwhere(ph.tfs))
        ear_truth[side] = {
            "centre_mm": [float(v) for v in centre],
            # world-axis bounding-box centre of the TFS voxels (differs from centre_mm, the
            # labyrinth's own bounding-box centre, by up to ~2 mm when it is rotated)
            "tfs_bbox_centre_mm": [float(v) for v in (tfs_world.min(0) + tfs_world.max(0)) / 2],
            "roi_centre_mm": [float(v) for v in grid.centre_mm],
            "anatomical_offset_mm": [float(v) for v in ears[side]["offset"]],
            "template_landmark_mm": [float(v) for v in tpl.landmarks[f"inner_ear_{side}"]],
            "phantom_seed": ears[side]["seed"],
            "roi_grid": {"shape": list(grid.shape), "affine": grid.affine.tolist()},
            "tfs_volume_mm3_slab": vol_slab,
            "tfs_volume_mm3_roi": round(float(ph.tfs.sum()) * float(np.prod(grid.spacing)), 6),
        }
    image *= _bias(rng, slab.shape, rng.uniform(0.03, 0.1))
    snr = rng.uniform(20.0, 40.0)
    image = rician(rng, image, fluid_level / snr)
    t2 = np.round(image).clip(0, 32767).astype(np.int16)
    t2_path = save_nifti(t2, slab.affine, anat / f"{ent}_acq-space_T2w.nii.gz")
    write_json(anat / f"{ent}_acq-space_T2w.json", T2_SIDECAR)

    mask_paths = {}
    for side in SIDES:
        p = truth / f"{ent}_desc-{side}_tfs.nii.gz"
        mask_paths[side] = str(save_nifti(masks[side], slab.affine, p))
        # the phantom's own 0.2 mm TFS on its ROI grid: the reference for ROI-grid scores
        # and topology (on the 0.5 mm slab grid thin canals break or merge)
        ph, grid, _ = phantoms[side]
        p = truth / f"{ent}_space-ROI_desc-{side}_tfs.nii.gz"
        ear_truth[side]["roi_truth"] = save_nifti(ph.tfs.astype(np.uint8), grid.affine, p).name
    record = {
        "subject": sub,
        "session": ses,
        "t1w": str(t1_path.relative_to(out)),
        "t2w": str(t2_path.relative_to(out)),
        "head_pose_template_to_scanner": pose.matrix.tolist(),
        "head_rotation_deg": {k: [float(a) for a in v] for k, v in angles.items()},
        "head_axes_scanner": rotation.tolist(),
        "slab": {"shape": list(slab.shape), "affine": slab.affine.tolist()},
        "t1w_grid": {"shape": list(t1_grid.shape), "affine": t1_grid.affine.tolist()},
        "fluid_level": fluid_level,
        "snr": float(snr),
        "ears": ear_truth,
    }
    summary = {
        "subject": sub,
        "session": ses,
        "t1w": str(t1_path),
        "t2w": str(t2_path),
        "masks": mask_paths,
    }
    if flair_rng_ is not None and flair_rois is not None:
        summary["els_masks"] = _write_els_truth(truth, ent, slab, phantoms, masks, ear_truth)
        for side in SIDES:
            ph = phantoms[side][0]
            if side not in flair_rois:
                flair_rois[side] = render_flair(
                    ph.labels,
                    ph.els,
                    flair_rng(ears[side]["seed"]),
                    min(ph.grid.spacing),
                    snr=float("inf"),
                    acquire=False,  # the FLAIR slab is the one acquisition
                )[0]
        record["flair"] = _write_flair(
            anat, ent, flair_rng_, pose, tpl, rotation, mid, phantoms, flair_rois
        )
        record["flair"]["path"] = str((anat / f"{ent}_{FLAIR_SUFFIX}.nii.gz").relative_to(out))
        summary["flair"] = str(anat / f"{ent}_{FLAIR_SUFFIX}.nii.gz")
    summary["truth"] = str(write_json(truth / f"{ent}_truth.json", record))
    return summary


def _write_els_truth(
    truth: Path,
    ent: str,
    slab: RoiGrid,
    phantoms: dict[str, tuple[Phantom, RoiGrid, np.ndarray]],
    tfs_masks: dict[str, np.ndarray],
    ear_truth: dict[str, dict],
) -> dict[str, str]:
    """ELS and structure truth per ear on the slab grid (linear interpolation ≥ 0.5, as the
    TFS mask, so ELS ⊂ TFS there too) and on the ear's ROI grid; volumes into ``ear_truth``."""
    paths = {}
    for side in SIDES:
        ph, grid, _ = phantoms[side]
        els = np.zeros(slab.shape, np.uint8)
        structures = np.zeros(slab.shape, np.uint8)
        roi_structures = structure_map(ph.labels)
        box = box_around(grid, slab)
        if box is not None:
            sub_target = sub_grid(slab, box)
            els[box] = resample(ph.els.astype(np.float32), grid.affine, sub_target, order=1) >= 0.5
            fractions = [
                resample((roi_structures == v).astype(np.float32), grid.affine, sub_target, order=1)
                for v in STRUCTURE_VALUES.values()
            ]
            best = np.argmax(np.stack(fractions), axis=0).astype(np.uint8) + 1
            structures[box] = np.where(tfs_masks[side][box] > 0, best, 0)
        stem = truth / f"{ent}_desc-{side}"
        paths[side] = str(save_nifti(els, slab.affine, Path(f"{stem}_els.nii.gz")))
        save_nifti(structures, slab.affine, Path(f"{stem}_structures.nii.gz"))
        roi_stem = truth / f"{ent}_space-ROI_desc-{side}"
        save_nifti(ph.els.astype(np.uint8), grid.affine, Path(f"{roi_stem}_els.nii.gz"))
        save_nifti(roi_structures, grid.affine, Path(f"{roi_stem}_structures.nii.gz"))
        info = ph.meta["hydrops"]
        ear_truth[side]["hydrops"] = {"severity": info["severity"], "grade": info["grade"]}
        ear_truth[side]["volumes_roi"] = info["volumes"]
        ear_truth[side]["els_volume_mm3_slab"] = float(els.sum()) * SLAB_SPACING_MM**3
    return paths


def flair_background(t1: np.ndarray) -> np.ndarray:
    """FLAIR-like background from the template T1w: CSF suppressed, brain at
    :data:`FLAIR_BRAIN` (relative to the perilymph level 1)."""
    lo, hi = T1_CSF_RAMP
    return (t1 * _smoothstep((t1 - lo) / (hi - lo)) * (FLAIR_BRAIN / T1_BRAIN)).astype(np.float32)


def _write_flair(
    anat: Path,
    ent: str,
    rng: np.random.Generator,
    pose: HeadPose,
    tpl: _Template,
    rotation: np.ndarray,
    slab_mid: np.ndarray,
    phantoms: dict[str, tuple[Phantom, RoiGrid, np.ndarray]],
    flair_rois: dict[str, np.ndarray],
) -> dict:
    """The FLAIR of one image after a small head motion; returns its truth record."""
    flair_to_space, motion = sample_motion(rng, pose.apply(tpl.head_centre))
    to_flair = np.linalg.inv(flair_to_space)
    flair_pose = HeadPose(
        to_flair[:3, :3] @ pose.rotation, to_flair[:3, :3] @ pose.translation + to_flair[:3, 3]
    )
    head_axes = to_flair[:3, :3] @ rotation
    jitter = rng.uniform(-1.0, 1.0, 3) * np.array([2.0, 2.0, 1.0])
    centre = to_flair[:3, :3] @ slab_mid + to_flair[:3, 3] + head_axes @ jitter
    slab = RoiGrid.centred(
        centre, shape=FLAIR_SHAPE, spacing_mm=FLAIR_SPACING_MM, rotation=head_axes
    )
    level = rng.uniform(400.0, 900.0)  # perilymph, scanner units
    t1 = _resample_linear(tpl.t1, flair_pose.matrix @ tpl.affine, slab)
    image = flair_background(t1) * level
    ears = {}
    for side in SIDES:
        ph, grid, centre_space = phantoms[side]
        roi = RoiGrid(grid.shape, to_flair @ grid.affine)
        box = box_around(roi, slab)
        tfs_mm3 = 0.0
        if box is not None:
            sub_target = sub_grid(slab, box)
            roi_flair = flair_rois[side]
            local = resample(roi_flair, roi.affine, sub_target, order=3)
            local *= level / max(perilymph_level(roi_flair, ph.labels, ph.els), 1e-6)
            tfs = resample(ph.tfs.astype(np.float32), roi.affine, sub_target, order=1) >= 0.5
            w = np.maximum(fade_weight(sub_target, roi), near_weight(tfs, FLAIR_SPACING_MM))
            image[box] = w * np.clip(local, 0, None) + (1 - w) * image[box]
            tfs_mm3 = float(tfs.sum()) * FLAIR_SPACING_MM**3
        ears[side] = {
            "centre_mm": [float(v) for v in to_flair[:3, :3] @ centre_space + to_flair[:3, 3]],
            "tfs_volume_mm3_slab": tfs_mm3,
        }
    image *= _bias(rng, slab.shape, rng.uniform(0.03, 0.1))
    snr = rng.uniform(8.0, 20.0)
    image = rician(rng, image, level / snr)
    flair = np.round(image).clip(0, 32767).astype(np.int16)
    save_nifti(flair, slab.affine, anat / f"{ent}_{FLAIR_SUFFIX}.nii.gz")
    write_json(anat / f"{ent}_{FLAIR_SUFFIX}.json", FLAIR_SIDECAR)
    return {
        "flair_to_space_world": flair_to_space.tolist(),
        "space_to_flair_world": to_flair.tolist(),
        "convention": "x_space = flair_to_space_world @ [x_flair, 1]: scanner mm (RAS) of the "
        "same tissue point in the SPACE and in the FLAIR acquisition; space_to_flair_world is "
        "its inverse",
        **motion,
        "slab": {"shape": list(slab.shape), "affine": slab.affine.tolist()},
        "head_pose_template_to_scanner": flair_pose.matrix.tolist(),
        "perilymph_level": float(level),
        "snr": float(snr),
        "ears": ears,
    }


def _write_metadata(
    out: Path,
    participants: list[tuple[str, str, str]],
    seed: int,
    sessions: list[int] | None,
    hydrops: bool = False,
) -> None:
    write_json(
        out / "dataset_description.json",
        {
            "Name": "ievnet-bids synthetic full-head inner-ear phantoms",
            "BIDSVersion": BIDS_VERSION,
            "DatasetType": "raw",
            "License": "CC0",
            "Authors": ["ievnet-bids developers"],
            "GeneratedBy": [
                {
                    "Name": "ievnet-synth bids",
                    "Description": "ievnet_bids.synth.head.write_bids_dataset("
                    + f"seed={seed}{', hydrops=True' if hydrops else ''})",
                }
            ],
        },
    )
    lines = ["participant_id\tage\tsex", *("\t".join(p) for p in participants)]
    write_text_atomic("\n".join(lines) + "\n", out / "participants.tsv")
    write_json(
        out / "participants.json",
        {
            "participant_id": {"Description": "synthetic subject label"},
            "age": {"Description": "age drawn at random (synthetic)", "Units": "year"},
            "sex": {
                "Description": "sex drawn at random (synthetic)",
                "Levels": {"F": "female", "M": "male"},
            },
        },
    )
    ses_note = (
        "no sessions"
        if sessions is None
        else f"sessions per subject: {', '.join(str(s) for s in sessions)}"
    )
    readme = f"""Synthetic full-head phantoms for inner-ear TFS segmentation (ievnet-bids)
=====================================================================

Generated by `ievnet-synth bids` (ievnet_bids.synth.head), seed {seed}, {ses_note}.
NOT patient data: every head is the pydeface mean head template (MIT licence) in a random
rigid pose; each ear holds a procedural inner-ear phantom.

Per subject/session:
- anat/*_T1w.nii.gz: 1 mm full head, axis-aligned scanner grid.
- anat/*_acq-space_T2w.nii.gz: heavily T2-weighted 0.5 mm slab through both ears
  (384 x 384 x 56 voxels), oriented like the head.
{FLAIR_README if hydrops else ""}
Ground truth (TFS masks, ear centres, head pose) is written OUTSIDE this dataset.
"""
    write_text_atomic(readme, out / "README")


FLAIR_README = """- anat/*_acq-inner_ce-gadolinium_FLAIR.nii.gz (hydrops subjects): gadolinium
  3D-FLAIR (iMRI), 0.5 mm slab (320 x 320 x 48) through both ears after a small head motion:
  perilymph bright, endolymph dark; each ear with its own hydrops severity.
"""
