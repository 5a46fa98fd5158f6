"""Training data for IE-Vnet: sources, targets, the paper's augmentations, validation set.

Targets (float32, channels first): channel 0 is the total fluid space (TFS); with two
output channels, channel 1 is the *other* bright fluid (IAC and cistern CSF, mastoid
effusion; :func:`ievnet_bids.synth.labels.other_fluid_mask`), which teaches the network
what is not labyrinth.  Each sample also carries a per-channel loss ``weight``: real data
has no "other fluid" annotation, so its channel 1 is excluded from the loss.

Sources, mixed by weights (each sample draws its source independently):

* ``pool``: ``phantom-*.npz`` files of :mod:`ievnet_bids.train.pool`, re-read from disk each
  time; the file list is refreshed about every ``pool_refresh`` steps, so phantoms written
  while training runs are picked up (held-out seeds are never used);
* ``synthetic``: :func:`ievnet_bids.synth.phantom.generate_phantom` on the fly, seeds drawn
  from the stream's generator in ``[0, HOLDOUT_SEED_START)``;
* ``data``: real ``*_image.nii.gz``/``*_mask.nii.gz`` pairs (or ``images/`` + ``labels/``
  with equal names) already on the 200×150×100 ROI grid.

Augmentations (MONAI dictionary transforms, image and target together), after min-max
scaling of the whole ROI to [0, 1] (as :func:`ievnet_bids.model.infer.normalize` does at
inference): gamma contrast, Gaussian noise, left-right flip, optional affine + elastic,
zero-padding to at least the crop size, and a random crop centred on a TFS voxel for a
fraction ``pos_fraction`` of the samples (else anywhere).  The spatial part (affine +
elastic, then crop) can run in the loader workers or, on a GPU, on the training device
(:class:`SpatialAugment`).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Hashable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import (
    Compose,
    MapTransform,
    Rand3DElastic,
    Rand3DElasticd,
    RandAdjustContrastd,
    RandFlipd,
    RandGaussianNoised,
    Randomizable,
    RandomizableTransform,
    RandSimulateLowResolutiond,
    SpatialPadd,
)
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ievnet_bids.model.card import ROI_SHAPE
from ievnet_bids.model.infer import normalize
from ievnet_bids.synth.acquisition import (
    MAX_TILT_DEG,
    SNR_RANGE,
    VOXEL_RANGE_MM,
    reacquire,
    sample_acquisition,
)
from ievnet_bids.synth.labels import other_fluid_mask, tfs_mask
from ievnet_bids.synth.seeds import HOLDOUT_SEED_START, VAL_SEED_START, phantom_settings
from ievnet_bids.train.pool import load_sample, write_sample

KEYS = ("image", "target")
SOURCES = ("pool", "synthetic", "data")
_POOL_NAME = re.compile(r"^phantom-(\d+)\.npz$")
_NIFTI_SUFFIXES = (".nii.gz", ".nii")

# The paper's augmentation parameters.
GAMMA = (0.3, 1.5)
GAMMA_PROB = 0.9
NOISE_PROB = 0.5
FLIP_PROB = 0.5
# Acquisition voxel size: the ROI is area-averaged to 0.2/zoom mm and trilinearly brought
# back, as a 0.4–0.6 mm SPACE slab looks after the pipeline's upsampling to 0.2 mm.
LOWRES_ZOOM = (0.33, 1.0)
SPATIAL_PROB = 0.75
ROTATE_RAD = 0.35  # 20°
TRANSLATE_FRACTION = 0.15  # of the ROI size
SCALE = 0.15
ELASTIC_SIGMA = (5.0, 8.0)
ELASTIC_MAGNITUDE = (5.0, 100.0)


class DataError(ValueError):
    """Unusable training data (message names the folder or file)."""


# --------------------------------------------------------------------------- targets
def make_target(labels: np.ndarray, out_channels: int) -> np.ndarray:
    """(C, X, Y, Z) float32 target of a phantom label map: TFS [, other bright fluid]."""
    if out_channels not in (1, 2):
        raise ValueError(f"out_channels must be 1 or 2, got {out_channels}")
    chans = [tfs_mask(labels)]
    if out_channels == 2:
        chans.append(other_fluid_mask(labels))
    return np.stack(chans).astype(np.float32)


def mask_target(mask: np.ndarray, out_channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Target and loss weights of a real TFS mask (channel 1, if any, is unknown: weight 0)."""
    target = np.zeros((out_channels, *mask.shape), dtype=np.float32)
    target[0] = mask > 0
    weight = np.zeros(out_channels, dtype=np.float32)
    weight[0] = 1.0
    return target, weight


# --------------------------------------------------------------------------- pool
def pool_seed(path: Path) -> int | None:
    """Seed of a pool file name ``phantom-<seed>.npz``; None for other names."""
    m = _POOL_NAME.match(path.name)
    return int(m.group(1)) if m else None


def list_pool(folder: Path) -> list[Path]:
    """Sorted training phantoms of a pool folder (temporary and held-out files excluded)."""
    out = []
    for path in folder.glob("phantom-*.npz"):
        seed = pool_seed(path)
        if seed is not None and seed < HOLDOUT_SEED_START:
            out.append(path)
    return sorted(out)


def check_pool(folder: Path) -> list[Path]:
    """Files of a pool folder; :class:`DataError` if it is missing or holds none."""
    if not folder.is_dir():
        raise DataError(f"pool folder {folder} does not exist")
    files = list_pool(folder)
    if not files:
        raise DataError(f"pool folder {folder} holds no phantom-*.npz training samples")
    return files


# --------------------------------------------------------------------------- real data
def _strip_nifti(name: str) -> str | None:
    for suffix in _NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def find_pairs(folder: Path) -> list[tuple[Path, Path]]:
    """(image, mask) pairs of ``folder``: ``X_image.nii[.gz]`` + ``X_mask.nii[.gz]``, or
    ``images/NAME`` + ``labels/NAME``.  :class:`DataError` if none or a mask is missing."""
    if not folder.is_dir():
        raise DataError(f"data folder {folder} does not exist")
    pairs: list[tuple[Path, Path]] = []
    if (folder / "images").is_dir() and (folder / "labels").is_dir():
        for image in sorted((folder / "images").iterdir()):
            if _strip_nifti(image.name) is None:
                continue
            mask = folder / "labels" / image.name
            if not mask.is_file():
                raise DataError(f"{image}: no mask {mask} with the same name")
            pairs.append((image, mask))
    else:
        for image in sorted(folder.iterdir()):
            stem = _strip_nifti(image.name)
            if stem is None or not stem.endswith("_image"):
                continue
            base = stem[: -len("_image")]
            masks = [folder / f"{base}_mask{s}" for s in _NIFTI_SUFFIXES]
            mask = next((m for m in masks if m.is_file()), None)
            if mask is None:
                raise DataError(f"{image}: no mask {masks[0].name} beside it")
            pairs.append((image, mask))
    if not pairs:
        raise DataError(
            f"data folder {folder} holds no image/mask pairs "
            "(expected *_image.nii.gz + *_mask.nii.gz, or images/ + labels/ with equal names)"
        )
    return pairs


def check_pairs(pairs: Sequence[tuple[Path, Path]], roi_shape: Sequence[int] = ROI_SHAPE) -> None:
    """:class:`DataError` unless every image and mask is a 3-D volume of ``roi_shape``."""
    import nibabel as nib

    want = tuple(int(s) for s in roi_shape)
    for pair in pairs:
        for path in pair:
            try:
                shape = tuple(int(s) for s in nib.load(path).shape)
            except Exception as exc:
                raise DataError(f"{path}: cannot read NIfTI header ({exc})") from None
            if shape != want:
                raise DataError(
                    f"{path}: shape {'×'.join(map(str, shape))}, expected the "
                    f"{'×'.join(map(str, want))} inner-ear ROI at 0.2 mm (crop/resample first)"
                )


def load_pair(image: Path, mask: Path) -> tuple[np.ndarray, np.ndarray]:
    """(image float32, mask bool) of a real pair."""
    import nibabel as nib

    img = np.asarray(nib.load(image).dataobj, dtype=np.float32)
    msk = np.asarray(nib.load(mask).dataobj) > 0
    return img, msk


# --------------------------------------------------------------------------- transforms
class RandCropTFSd(Randomizable, MapTransform):
    """Random crop of ``spatial_size`` (inputs at least that large), the same for all keys.

    With probability ``pos_fraction`` the crop is centred on a random foreground voxel of
    channel 0 of ``label_key`` (the TFS), shifted to stay inside; otherwise its centre is
    uniform.  Works on numpy arrays and torch tensors on any device.
    """

    def __init__(
        self,
        keys: Sequence[str],
        label_key: str,
        spatial_size: Sequence[int],
        pos_fraction: float = 2 / 3,
    ) -> None:
        MapTransform.__init__(self, keys)
        self.label_key = label_key
        self.spatial_size = tuple(int(s) for s in spatial_size)
        self.pos_fraction = float(pos_fraction)

    def randomize(self, data: Any = None) -> None:  # draws happen in __call__
        pass

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        label = d[self.label_key]
        shape = tuple(int(s) for s in label.shape[1:])
        if any(s < c for s, c in zip(shape, self.spatial_size, strict=True)):
            raise ValueError(f"crop {self.spatial_size} larger than the volume {shape}")
        centre = None
        if self.R.rand() < self.pos_fraction:
            idx = (torch.as_tensor(label[0]).reshape(-1) > 0).nonzero().reshape(-1)
            if idx.numel():
                flat = int(idx[self.R.randint(idx.numel())])
                centre = np.unravel_index(flat, shape)
        if centre is None:
            centre = tuple(self.R.randint(s) for s in shape)
        starts = [
            min(max(int(c) - k // 2, 0), s - k)
            for c, k, s in zip(centre, self.spatial_size, shape, strict=True)
        ]
        sizes = self.spatial_size
        sl = (slice(None), *(slice(a, a + k) for a, k in zip(starts, sizes, strict=True)))
        for key in self.key_iterator(d):
            d[key] = d[key][sl]
        return d


def _plain(x: Any) -> torch.Tensor:
    """Plain contiguous float32 tensor (MONAI's MetaTensor unwrapped)."""
    t = x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)
    return t.float().contiguous()


def intensity_transforms(lowres_prob: float = 0.0) -> Compose:
    """Gamma contrast, Gaussian noise, coarser acquisition voxels (``lowres_prob``),
    left-right flip (image on [0, 1] already)."""
    steps: list[Any] = [
        RandAdjustContrastd("image", gamma=GAMMA, prob=GAMMA_PROB),
        RandGaussianNoised("image", prob=NOISE_PROB),
    ]
    if lowres_prob > 0:
        steps.append(
            RandSimulateLowResolutiond(
                "image",
                prob=lowres_prob,
                downsample_mode="area",
                upsample_mode="trilinear",
                zoom_range=LOWRES_ZOOM,
            )
        )
    steps.append(RandFlipd(list(KEYS), spatial_axis=0, prob=FLIP_PROB))
    return Compose(steps)


class _TorchOffsetElastic(Rand3DElastic):
    """``Rand3DElastic`` drawing its random offset field with torch on its own device.

    MONAI draws the 3×X×Y×Z field with numpy on the CPU (~0.1 s per full ROI, then copied),
    which dominates a GPU step; here it is drawn in place from a generator seeded by ``R``,
    so runs stay deterministic for a given random state.
    """

    def randomize(self, grid_size: Sequence[int]) -> None:
        RandomizableTransform.randomize(self, None)
        if not self._do_transform:
            return
        device = self.device or torch.device("cpu")
        gen = torch.Generator(device=device)
        gen.manual_seed(int(self.R.randint(2**31)))
        offset = torch.rand((3, *grid_size), generator=gen, device=device)
        self.rand_offset = offset.mul_(2.0).sub_(1.0)
        self.magnitude = self.R.uniform(self.magnitude_range[0], self.magnitude_range[1])
        self.sigma = self.R.uniform(self.sigma_range[0], self.sigma_range[1])
        self.rand_affine_grid.randomize()


def spatial_transform(
    roi_shape: Sequence[int] = ROI_SHAPE, device: torch.device | None = None
) -> Rand3DElasticd:
    """Affine (rotation 20°, translation 15 % of the ROI, scaling ±15 %) + elastic deformation
    in one resampling, probability 0.75; bilinear for the image, nearest for the target."""
    t = Rand3DElasticd(
        list(KEYS),
        sigma_range=ELASTIC_SIGMA,
        magnitude_range=ELASTIC_MAGNITUDE,
        prob=SPATIAL_PROB,
        rotate_range=(ROTATE_RAD,) * 3,
        translate_range=tuple(TRANSLATE_FRACTION * s for s in roi_shape),
        scale_range=(SCALE,) * 3,
        mode=("bilinear", "nearest"),
        padding_mode="zeros",
        device=device,
    )
    t.rand_3d_elastic.__class__ = _TorchOffsetElastic  # same state, faster offset draw
    return t


def augmentation_names(
    spatial: bool, lowres_prob: float = 0.0, slab_prob: float = 0.0
) -> list[str]:
    """Human-readable list of the augmentations (for the model card)."""
    names = ["minmax [0,1] of the full ROI"]
    if slab_prob > 0:
        names.append(
            "slab re-acquisition (synth.acquisition.reacquire: cubic to a "
            f"{VOXEL_RANGE_MM[0]:g}-{VOXEL_RANGE_MM[1]:g} mm grid tilted <= {MAX_TILT_DEG:g} deg, "
            f"Rician SNR {SNR_RANGE[0]:g}-{SNR_RANGE[1]:g}, cubic back, minmax; prob={slab_prob}; "
            "fresh phantoms rendered unacquired, so the slab is their one acquisition)"
        )
    names += [
        f"RandAdjustContrastd(gamma={GAMMA}, prob={GAMMA_PROB})",
        f"RandGaussianNoised(std=0.1, prob={NOISE_PROB})",
    ]
    if lowres_prob > 0:
        names.append(
            f"RandSimulateLowResolutiond(area down, trilinear up, zoom={LOWRES_ZOOM}, "
            f"prob={lowres_prob})"
        )
    names.append(f"RandFlipd(spatial_axis=0, prob={FLIP_PROB})")
    if spatial:
        names.append(
            f"Rand3DElasticd(prob={SPATIAL_PROB}, rotate={ROTATE_RAD} rad, translate="
            f"{TRANSLATE_FRACTION:.0%} of ROI, scale=±{SCALE:.0%}, sigma={ELASTIC_SIGMA}, "
            f"magnitude={ELASTIC_MAGNITUDE})"
        )
    names.append("SpatialPadd + RandCropTFSd (TFS-centred fraction)")
    return names


class SpatialAugment:
    """Optional affine + elastic, then the random crop, applied sample by sample.

    Used inside the loader workers (CPU) or in the training process on the training device
    (``__call__`` on a batch), where the elastic resampling of a full ROI is fast.
    """

    def __init__(
        self,
        crop: Sequence[int],
        pos_fraction: float,
        elastic: bool,
        roi_shape: Sequence[int] = ROI_SHAPE,
        device: torch.device | None = None,
    ) -> None:
        steps: list[Any] = [spatial_transform(roi_shape, device)] if elastic else []
        steps.append(RandCropTFSd(list(KEYS), "target", crop, pos_fraction))
        self.transform = Compose(steps)

    def set_random_state(self, seed: int) -> None:
        self.transform.set_random_state(seed=seed)

    def sample(self, d: dict[str, Any]) -> dict[str, Any]:
        out = self.transform(d)
        return {**out, "image": _plain(out["image"]), "target": _plain(out["target"])}

    def __call__(
        self, image: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, …) image and (B, C, …) target batches → augmented, cropped batches."""
        outs = [self.sample({"image": i, "target": t}) for i, t in zip(image, target, strict=True)]
        return (
            torch.stack([o["image"] for o in outs]),
            torch.stack([o["target"] for o in outs]),
        )


# --------------------------------------------------------------------------- stream
class TrainStream(IterableDataset):
    """Endless stream of augmented training samples ``{"image", "target", "weight"}``.

    Deterministic for (``seed``, ``start_step``, loader worker) given the same pool files.
    With ``spatial`` None the samples are padded full ROIs (spatial augmentation and the
    crop are then applied on the training device).  ``reuse`` > 1 keeps up to ``reservoir``
    loaded samples per worker and uses each about ``reuse`` times (augmented anew each time),
    for a GPU that trains faster than the workers render phantoms.
    """

    def __init__(
        self,
        *,
        out_channels: int,
        crop: Sequence[int],
        spatial: SpatialAugment | None,
        seed: int,
        start_step: int = 0,
        pool: Path | None = None,
        pool_weight: float = 0.0,
        synthetic_weight: float = 0.0,
        data_pairs: Sequence[tuple[Path, Path]] = (),
        data_weight: float = 0.0,
        pool_refresh_samples: int = 400,
        roi_shape: Sequence[int] = ROI_SHAPE,
        reuse: float = 1.0,
        reservoir: int = 6,
        lowres_prob: float = 0.0,
        slab_prob: float = 0.0,
        synthetic_realism: int = 1,
    ) -> None:
        super().__init__()
        weights = np.array([pool_weight, synthetic_weight, data_weight], dtype=float)
        if pool is None:
            weights[0] = 0.0
        if not data_pairs:
            weights[2] = 0.0
        if np.any(weights < 0) or weights.sum() <= 0:
            raise DataError("no training source with a positive weight")
        self.probs = weights / weights.sum()
        self.out_channels = int(out_channels)
        self.roi_shape = tuple(int(s) for s in roi_shape)
        pad = tuple(max(int(c), r) for c, r in zip(crop, self.roi_shape, strict=True))
        self.pre = Compose([intensity_transforms(lowres_prob), SpatialPadd(list(KEYS), pad)])
        self.spatial = spatial
        self.seed = int(seed)
        self.start_step = int(start_step)
        self.pool = pool
        self.data_pairs = list(data_pairs)
        self.pool_refresh_samples = max(1, int(pool_refresh_samples))
        if reuse < 1.0:
            raise DataError(f"reuse must be >= 1, got {reuse}")
        self.reuse = float(reuse)
        self.reservoir = max(1, int(reservoir))
        self.synthetic_realism = int(synthetic_realism)
        self.slab_prob = float(slab_prob)

    def _load(
        self, rng: np.random.Generator, state: dict[str, Any], acquire: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image, target, weight) of one untransformed sample; ``acquire=False`` renders a
        synthetic phantom without its own acquisition (for the slab re-acquisition)."""
        source = SOURCES[int(rng.choice(3, p=self.probs))]
        ones = np.ones(self.out_channels, dtype=np.float32)
        if source == "pool":
            assert self.pool is not None
            if state["drawn"] % self.pool_refresh_samples == 0 or not state["files"]:
                state["files"] = list_pool(self.pool) or state["files"]
            state["drawn"] += 1
            files = state["files"]
            if not files:
                raise DataError(f"pool folder {self.pool} holds no training samples")
            path = files[int(rng.integers(len(files)))]
            try:
                image, labels = load_sample(path)
            except (OSError, ValueError, KeyError) as exc:  # vanished or unreadable file
                state["files"] = []
                raise _RetryError(f"{path}: {exc}") from None
            return image, make_target(labels, self.out_channels), ones
        if source == "synthetic":
            from ievnet_bids.synth.phantom import generate_phantom

            seed = int(rng.integers(0, HOLDOUT_SEED_START))
            ph = generate_phantom(
                seed, **phantom_settings(seed), realism=self.synthetic_realism, acquire=acquire
            )
            return ph.image, make_target(ph.labels, self.out_channels), ones
        image_path, mask_path = self.data_pairs[int(rng.integers(len(self.data_pairs)))]
        image, mask = load_pair(image_path, mask_path)
        if image.shape != self.roi_shape or mask.shape != self.roi_shape:
            raise DataError(f"{image_path}: shape {image.shape}, expected {self.roi_shape}")
        target, weight = mask_target(mask, self.out_channels)
        return image, target, weight

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        rng = np.random.default_rng([self.seed, self.start_step, worker])
        self.pre.set_random_state(seed=int(rng.integers(2**31)))
        spatial = self.spatial
        if spatial is not None:
            spatial.set_random_state(int(rng.integers(2**31)))
        state: dict[str, Any] = {"files": [], "drawn": 0}
        kept: list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]] = []
        retries = 0
        while True:
            # With reuse > 1 a loaded sample joins a small reservoir and each draw takes a
            # new sample with probability 1/reuse (always while the reservoir fills), else
            # a kept one: every sample is used ``reuse`` times on average.
            if self.reuse > 1.0 and len(kept) >= self.reservoir and rng.random() >= 1 / self.reuse:
                image, target, weight, slab = kept[int(rng.integers(len(kept)))]
            else:
                # a slab sample's phantom is rendered unacquired: the slab is its one
                # acquisition, as in the synthetic heads (pool files are already acquired)
                slab = self.slab_prob > 0 and rng.random() < self.slab_prob
                try:
                    image, target, weight = self._load(rng, state, acquire=not slab)
                except _RetryError:
                    retries += 1
                    if retries > 20:
                        raise
                    continue
                retries = 0
                if self.reuse > 1.0:
                    if len(kept) < self.reservoir:
                        kept.append((image, target, weight, slab))
                    else:
                        kept[int(rng.integers(len(kept)))] = (image, target, weight, slab)
            image = normalize(image, "minmax")
            if slab:
                # as the pipeline extracts it from a 0.35–0.65 mm slab
                image = normalize(reacquire(image, sample_acquisition(rng), rng), "minmax")
            d: dict[str, Any] = {
                "image": torch.from_numpy(image[None]),
                "target": torch.from_numpy(target),
            }
            d = self.pre(d)
            if spatial is not None:
                d = spatial.sample(d)
            yield {
                "image": _plain(d["image"]),
                # 0/1 as uint8: a quarter of the bytes through the loader's shared memory
                "target": _plain(d["target"]).to(torch.uint8),
                "weight": torch.from_numpy(weight),
            }


class _RetryError(RuntimeError):
    """A pool file vanished or could not be read: draw another sample."""


def worker_init_fn(worker_id: int) -> None:
    """Seed python, numpy and torch in a loader worker from the loader's per-worker seed."""
    info = get_worker_info()
    base = info.seed if info is not None else worker_id
    random.seed(base)
    np.random.seed(base % 2**32)
    torch.manual_seed(base)
    torch.set_num_threads(1)
    # One BLAS thread per worker too: the phantom renderer's separable resampling is BLAS
    # work, and N workers × one BLAS thread per core oversubscribe the machine (on a 16-core
    # GPU node, 15 workers without this limit delivered one phantom per ~9 s each, against
    # ~1 s for a lone process on a 2-core machine).
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: BLAS keeps its default thread count
        return
    threadpool_limits(1)


def make_loader(
    stream: TrainStream, batch_size: int, workers: int, seed: int, pin_memory: bool = False
) -> DataLoader:
    """Batches of ``stream`` (each worker builds whole batches)."""
    generator = torch.Generator().manual_seed(int(seed))
    return DataLoader(
        stream,
        batch_size=batch_size,
        num_workers=workers,
        worker_init_fn=worker_init_fn,
        generator=generator,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=2 if workers > 0 else None,
    )


def pool_refresh_samples(refresh_steps: int, batch_size: int, workers: int) -> int:
    """Samples per worker between pool re-listings for a refresh about every N steps."""
    return max(1, math.ceil(refresh_steps * batch_size / max(1, workers)))


# --------------------------------------------------------------------------- validation
def validation_set(folder: Path, count: int, start: int = VAL_SEED_START) -> list[Path]:
    """Paths of ``count`` validation phantoms (seeds ``start``…), generated once in ``folder``."""
    if count <= 0:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    return [write_sample(folder, seed) for seed in range(start, start + count)]


def load_validation(paths: Sequence[Path]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, TFS mask) of each validation phantom."""
    out = []
    for path in paths:
        image, labels = load_sample(path)
        out.append((image, tfs_mask(labels)))
    return out
