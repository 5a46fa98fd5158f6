"""IE-Vnet training loop: Dice loss, Adam, periodic full-ROI validation, resumable runs.

A run directory holds ``best.safetensors`` / ``last.safetensors`` (fp16, each with its
``<stem>.model_card.json``), ``state.pt`` (model, optimizer, step, RNG states: plain
tensors, lists and numbers, loaded with ``weights_only=True``), ``training_log.tsv``
(step, loss, val_dice, lr, seconds, val_dice_raw), ``training_curve.png``, ``config.json``
and ``val/`` (the cached validation phantoms).  All files are written atomically.

Determinism: for a given ``seed`` (and the same pool files, device and thread count) the
run is reproducible.  A resumed run restores the model, optimizer, step and the
torch/numpy/python RNG states; the data stream is re-seeded from (seed, resume step), so
it differs from the uninterrupted run's stream but is reproducible itself.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ievnet_bids.atomic import staged, write_bytes_atomic, write_text_atomic
from ievnet_bids.model.card import PUBLISHED_ARCHITECTURE, ModelCard
from ievnet_bids.model.net import build_network, resolve_device
from ievnet_bids.model.weights import save_model
from ievnet_bids.synth.phantom import REALISM_LEVELS
from ievnet_bids.synth.seeds import HOLDOUT_SEED_START, VAL_SEED_START
from ievnet_bids.train import data as D

LOG_COLUMNS = ("step", "loss", "val_dice", "lr", "seconds", "val_dice_raw")
STATE_FILE = "state.pt"
LOSSES = ("dice", "dicebce")


class TrainError(ValueError):
    """A training run that cannot start (bad settings, data or run folder)."""


@dataclass(frozen=True)
class TrainConfig:
    """All settings of one training run (see ``ievnet-train --help``)."""

    run_dir: Path
    # sources
    pool: Path | None = None
    pool_weight: float = 1.0
    synthetic_weight: float | None = None  # None: 1 when no pool/data is given, else 0
    data: Path | None = None
    data_weight: float = 1.0
    pool_refresh: int = 200  # steps between re-listings of the pool folder
    reuse: float = 1.0  # mean uses of each loaded phantom (per-worker reservoir)
    synthetic_realism: int = 1  # phantom version of the on-the-fly source (2: phantoms v2)
    init: Path | None = None  # weights to start from (fine-tuning; fresh optimizer)
    # model
    out_channels: int = 1
    channels: tuple[int, ...] = tuple(PUBLISHED_ARCHITECTURE["channels"])
    num_res_units: int = int(PUBLISHED_ARCHITECTURE["num_res_units"])
    dropout: float = float(PUBLISHED_ARCHITECTURE["dropout"])
    name: str = "ievnet-synth"
    version: str = "1.0"
    # augmentation and batches
    crop: tuple[int, int, int] = (96, 96, 64)
    pos_fraction: float = 2 / 3
    elastic: bool = False
    lowres_prob: float = 0.0  # coarser acquisition voxels (0.2–0.6 mm), then upsampled
    slab_prob: float = 0.0  # re-acquired on a tilted 0.35–0.65 mm slab with its noise
    aug_on_device: bool | None = None  # None: on the device when it is CUDA
    batch_size: int = 2
    workers: int = 0
    # optimisation
    steps: int = 1000
    lr: float = 3e-4
    loss: str = "dice"
    bce_weight: float = 1.0
    thin_weight: float = 0.0  # extra BCE weight on thin target parts (canals); dicebce only
    amp: bool | None = None  # bf16 autocast; None: on when CUDA supports bf16
    compile: bool = False
    # validation and bookkeeping
    val_seeds: int = 4
    val_every: int = 100
    val_batch: int = 1
    log_every: int = 10
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    time_limit_min: float | None = None
    resume: bool = False
    progress: bool | None = None  # None: a tqdm bar only on a terminal

    def __post_init__(self) -> None:
        object.__setattr__(self, "run_dir", Path(self.run_dir))
        for name in ("pool", "data", "init"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
        object.__setattr__(self, "crop", tuple(int(c) for c in self.crop))
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        self._validate()

    def _validate(self) -> None:
        def need(ok: bool, why: str) -> None:
            if not ok:
                raise TrainError(why)

        need(self.out_channels in (1, 2), f"out_channels must be 1 or 2, got {self.out_channels}")
        need(len(self.crop) == 3 and min(self.crop) > 0, f"crop must be 3 sizes, got {self.crop}")
        need(len(self.channels) >= 2, "channels: need at least two levels")
        div = 2 ** (len(self.channels) - 1)
        need(
            all(c % div == 0 for c in self.crop),
            f"crop {self.crop} must be multiples of {div} (the network's stride product)",
        )
        need(0.0 <= self.pos_fraction <= 1.0, "pos_fraction must be in [0, 1]")
        need(0.0 <= self.lowres_prob <= 1.0, "lowres_prob must be in [0, 1]")
        need(0.0 <= self.slab_prob <= 1.0, "slab_prob must be in [0, 1]")
        need(
            self.synthetic_realism in REALISM_LEVELS,
            f"synthetic_realism must be one of {REALISM_LEVELS}",
        )
        need(self.batch_size >= 1, "batch_size must be >= 1")
        need(self.workers >= 0, "workers must be >= 0")
        need(self.steps >= 1, "steps must be >= 1")
        need(self.lr > 0, "lr must be > 0")
        need(self.loss in LOSSES, f"loss must be one of {LOSSES}, got {self.loss!r}")
        need(self.bce_weight >= 0, "bce_weight must be >= 0")
        need(self.thin_weight >= 0, "thin_weight must be >= 0")
        need(self.thin_weight == 0 or self.loss == "dicebce", "thin_weight needs loss 'dicebce'")
        need(self.val_seeds >= 0, "val_seeds must be >= 0")
        need(self.val_every >= 1 and self.log_every >= 1, "val_every/log_every must be >= 1")
        need(self.val_batch >= 1, "val_batch must be >= 1")
        need(self.pool_refresh >= 1, "pool_refresh must be >= 1")
        need(self.reuse >= 1.0, "reuse must be >= 1")
        need(not (self.init and self.resume), "init and resume exclude each other")
        need(self.threads is None or self.threads >= 1, "threads must be >= 1")
        need(self.time_limit_min is None or self.time_limit_min > 0, "time limit must be positive")
        need(0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)")
        weights = [self.pool_weight, self.data_weight, self.synthetic_weight or 0.0]
        need(min(weights) >= 0, "source weights must be >= 0")
        need(self.effective_weights()[1] >= 0, "synthetic weight must be >= 0")
        need(sum(self.effective_weights()) > 0, "no training source with a positive weight")

    def effective_weights(self) -> tuple[float, float, float]:
        """(pool, synthetic, data) sampling weights after defaults."""
        pool = self.pool_weight if self.pool is not None else 0.0
        data = self.data_weight if self.data is not None else 0.0
        synth = self.synthetic_weight
        if synth is None:
            synth = 0.0 if (self.pool is not None or self.data is not None) else 1.0
        return float(pool), float(synth), float(data)

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict of the settings."""
        d = asdict(self)
        for key, value in d.items():
            if isinstance(value, Path):
                d[key] = str(value)
            elif isinstance(value, tuple):
                d[key] = list(value)
        return d

    def card(self) -> ModelCard:
        """Model card of the network trained with these settings (sigmoid per channel)."""
        arch = dict(PUBLISHED_ARCHITECTURE)
        arch["channels"] = list(self.channels)
        arch["strides"] = [2] * (len(self.channels) - 1)
        arch["num_res_units"] = self.num_res_units
        arch["dropout"] = self.dropout
        return ModelCard(
            name=self.name,
            version=self.version,
            architecture=arch,
            out_channels=self.out_channels,
            tfs_channel=0,
            output_activation="sigmoid",
        )


# --------------------------------------------------------------------------- loss
THIN_RADIUS_VOX = 3  # a 7-voxel (1.4 mm) cube fits in no canal lumen (0.8–1.2 mm at 0.2 mm)
THIN_MARGIN_VOX = 2  # the weighted band reaches 0.4 mm beyond the thin parts


class MaskedLoss(torch.nn.Module):
    """Sigmoid Dice loss per sample and channel (MONAI ``DiceLoss``), optionally +
    ``bce_weight`` × BCE, averaged with per-sample channel weights (weight 0: channel not
    annotated).

    Dice alone pulls ambiguous boundary voxels into the mask (its gradient on a voxel is
    ~1/(|P|+|G|) against BCE's 1/N); a larger BCE weight keeps the probability calibrated,
    so that the 0.5 threshold sits on the boundary.
    """

    def __init__(
        self, kind: str = "dice", bce_weight: float = 1.0, thin_weight: float = 0.0
    ) -> None:
        super().__init__()
        from monai.losses import DiceLoss

        self.kind = kind
        self.bce_weight = float(bce_weight)
        self.thin_weight = float(thin_weight)
        self.dice = DiceLoss(sigmoid=True, reduction="none")

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        per = self.dice(logits, target).reshape(weight.shape)  # (B, C)
        if self.kind == "dicebce":
            bce = torch.nn.functional.binary_cross_entropy_with_logits(
                logits, target, reduction="none"
            )
            if self.thin_weight > 0:
                # thin structures (semicircular canals) and the background around them
                # (both, so that the weight does not simply thicken them) count
                # (1 + thin_weight) times: Dice, dominated by the cochlea and vestibule,
                # barely sees a broken canal
                voxel = 1.0 + self.thin_weight * thin_band(target)
                bce = bce * voxel / voxel.flatten(2).mean(2)[..., None, None, None]
            per = per + self.bce_weight * bce.flatten(2).mean(2)
        return (per * weight).sum() / weight.sum().clamp_min(1e-6)


def thin_band(target: torch.Tensor, margin_vox: int = THIN_MARGIN_VOX) -> torch.Tensor:
    """:func:`thin_structure` grown by ``margin_vox`` voxels (a cube) into the background."""
    k = 2 * margin_vox + 1
    return torch.nn.functional.max_pool3d(thin_structure(target), k, 1, margin_vox)


def thin_structure(target: torch.Tensor, radius_vox: int = THIN_RADIUS_VOX) -> torch.Tensor:
    """Voxels of ``target`` (B, C, X, Y, Z; 0/1) outside its opening by a cube of half-width
    ``radius_vox``: parts thinner than about 2 × radius_vox + 1 voxels (canals at 0.2 mm)."""
    pool = torch.nn.functional.max_pool3d
    k, r = 2 * radius_vox + 1, radius_vox
    b, c = target.shape[:2]
    x = target.reshape(b * c, 1, *target.shape[2:])
    # erosion = -maxpool(-x); the cube is separable: one pass per axis
    eroded = -pool(-x, (k, 1, 1), 1, (r, 0, 0))
    eroded = -pool(-eroded, (1, k, 1), 1, (0, r, 0))
    eroded = -pool(-eroded, (1, 1, k), 1, (0, 0, r))
    opened = pool(eroded, (k, 1, 1), 1, (r, 0, 0))
    opened = pool(opened, (1, k, 1), 1, (0, r, 0))
    opened = pool(opened, (1, 1, k), 1, (0, 0, r))
    return (x - opened).clamp_min(0).reshape(target.shape)


# --------------------------------------------------------------------------- helpers
def git_commit() -> str:
    """``git rev-parse HEAD`` of the source tree, or "" when unavailable."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    """Tab-separated log, one row per step (empty val_dice where not validated)."""

    def fmt(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.6g}" if not math.isnan(v) else ""
        return str(v)

    lines = ["\t".join(LOG_COLUMNS)]
    lines += ["\t".join(fmt(r.get(c)) for c in LOG_COLUMNS) for r in rows]
    write_text_atomic("\n".join(lines) + "\n", path, fsync=True)


def read_log(path: Path) -> list[dict[str, Any]]:
    """Rows of a log written by :func:`write_log` (numbers parsed, empty → None)."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        return []
    header = lines[0].split("\t")
    rows = []
    for line in lines[1:]:
        values = line.split("\t")
        row: dict[str, Any] = {}
        for key, value in zip(header, values, strict=False):
            if value == "":
                row[key] = None
            elif key == "step":
                row[key] = int(value)
            else:
                row[key] = float(value)
        rows.append(row)
    return rows


def plot_curve(path: Path, rows: list[dict[str, Any]]) -> None:
    """Loss (raw and moving average) and validation Dice against the step, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    steps = np.array([r["step"] for r in rows], dtype=float)
    loss = np.array([r["loss"] for r in rows], dtype=float)
    if len(rows):
        ax.plot(steps, loss, color="tab:blue", alpha=0.3, lw=0.8, label="loss")
        k = max(1, min(50, len(loss) // 10))
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1 :], smooth, color="tab:blue", lw=1.5, label=f"loss (mean of {k})")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    val = [(r["step"], r["val_dice"]) for r in rows if r.get("val_dice") is not None]
    if val:
        ax2 = ax.twinx()
        vs, vd = zip(*val, strict=True)
        ax2.plot(vs, vd, "o-", color="tab:red", ms=3, label="val Dice (TFS, cleaned)")
        ax2.set_ylabel("validation Dice")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_bytes_atomic(buf.getvalue(), path, fsync=True)


def _rng_states(np_rng: np.random.Generator) -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_generator": json.dumps(np_rng.bit_generator.state),
        "numpy_global": _np_global_state(),
        "python": _py_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _np_global_state() -> list[Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)]


def _py_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [int(version), [int(v) for v in internal], gauss]


def _restore_rng(state: dict[str, Any], np_rng: np.random.Generator) -> None:
    torch.set_rng_state(state["torch"])
    np_rng.bit_generator.state = json.loads(state["numpy_generator"])
    name, keys, pos, has_gauss, cached = state["numpy_global"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError, ValueError):
            torch.cuda.set_rng_state_all(state["cuda"])


def _save_state(path: Path, payload: dict[str, Any]) -> None:
    with staged(path) as tmp:
        torch.save(payload, tmp)


def _cpu_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


# --------------------------------------------------------------------------- validation
def validate(
    model: torch.nn.Module,
    card: ModelCard,
    cases: list[tuple[np.ndarray, np.ndarray]],
    device: torch.device,
    batch_size: int = 1,
) -> tuple[float, float]:
    """Mean TFS Dice over ``cases`` after :func:`threshold_and_clean`, and before it."""
    from ievnet_bids.metrics import dice
    from ievnet_bids.model.infer import Segmenter
    from ievnet_bids.postprocess import threshold_and_clean

    seg = Segmenter(model, card, device, batch_size=batch_size)
    clean, raw = [], []
    for image, ref in cases:
        prob = seg.predict_proba(image)
        mask, _ = threshold_and_clean(
            prob, card.roi_spacing_mm, card.threshold, params=card.cleanup, image=image
        )
        clean.append(dice(mask, ref))
        raw.append(dice(prob >= card.threshold, ref))
    model.train()
    return float(np.mean(clean)), float(np.mean(raw))


# --------------------------------------------------------------------------- training
def _prepare_sources(config: TrainConfig) -> dict[str, Any]:
    pool_w, synth_w, data_w = config.effective_weights()
    sources: dict[str, Any] = {}
    pairs: list[tuple[Path, Path]] = []
    try:
        if config.pool is not None:
            files = D.check_pool(config.pool)
            sources["pool"] = {"path": str(config.pool), "weight": pool_w, "files": len(files)}
        if config.data is not None:
            pairs = D.find_pairs(config.data)
            D.check_pairs(pairs)
            sources["data"] = {"path": str(config.data), "weight": data_w, "pairs": len(pairs)}
    except D.DataError as exc:
        raise TrainError(str(exc)) from None
    if synth_w > 0:
        sources["synthetic"] = {
            "weight": synth_w,
            "seeds": f"[0, {HOLDOUT_SEED_START})",
            "realism": config.synthetic_realism,
        }
    return {"sources": sources, "pairs": pairs}


@dataclass
class _Run:
    """The state of one training run: built by :func:`_setup`, advanced by :func:`_step`,
    validated and saved by :func:`_validate_and_save` and :meth:`checkpoint`."""

    config: TrainConfig
    device: torch.device
    amp: bool
    aug_on_device: bool
    sources: dict[str, Any]
    val_cases: list[tuple[np.ndarray, np.ndarray]]
    np_rng: np.random.Generator
    card: ModelCard
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: MaskedLoss
    fwd: Any = None
    spatial: Any = None
    loader: Any = None
    commit: str = ""
    initialised_from: str | None = None
    step: int = 0
    best: float = -math.inf
    best_step: int = 0
    best_raw: float = math.nan
    prev_seconds: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)
    t_loop: float = 0.0

    @property
    def run_dir(self) -> Path:
        return self.config.run_dir

    def seconds(self) -> float:
        """Training time so far, earlier sessions of a resumed run included."""
        return self.prev_seconds + time.monotonic() - self.t_loop

    def training_info(self, seconds: float) -> dict[str, Any]:
        """The model card's ``training`` entry at this step."""
        config = self.config
        return {
            "data_sources": self.sources,
            "targets": ["tfs", "other_fluid"][: config.out_channels],
            "augmentations": D.augmentation_names(
                config.elastic, config.lowres_prob, config.slab_prob
            ),
            "loss": f"{config.loss} (MONAI DiceLoss sigmoid, per sample and channel)"
            + (f", BCE weight {config.bce_weight:g}" if config.loss == "dicebce" else "")
            + (
                f", BCE on thin target parts (outside an opening by a {2 * THIN_RADIUS_VOX + 1}"
                f"-voxel cube) and {THIN_MARGIN_VOX} voxels around them weighted "
                f"{1 + config.thin_weight:g}x"
                if config.thin_weight
                else ""
            ),
            "optimizer": f"Adam lr={config.lr}",
            "initialised_from": self.initialised_from,
            "seed": config.seed,
            "steps": self.step,
            "batch_size": config.batch_size,
            "crop": list(config.crop),
            "pos_fraction": config.pos_fraction,
            "device": self.device.type,
            "amp_bf16": self.amp,
            "git_commit": self.commit,
            "wall_time_s": round(seconds, 1),
            "framework": f"torch {torch.__version__}, MONAI {_monai_version()}",
        }

    def metrics(self) -> dict[str, Any]:
        """The model card's ``metrics`` entry of the best validation so far."""
        return {
            "val_dice": round(self.best, 5),
            "val_dice_raw": None if math.isnan(self.best_raw) else round(self.best_raw, 5),
            "val_best_step": self.best_step,
            "val_cases": len(self.val_cases),
            "val_seed_start": VAL_SEED_START,
        }

    def save(self, name: str, seconds: float, with_metrics: bool) -> None:
        """Weights and card (dated today) as ``run_dir/name``."""
        card = replace(
            self.card,
            date=datetime.now(UTC).strftime("%Y-%m-%d"),
            training=self.training_info(seconds),
            metrics=self.metrics() if with_metrics else {},
        )
        save_model(self.model, card, self.run_dir / name)

    def checkpoint(self, seconds: float) -> None:
        """``last.safetensors``, ``state.pt`` (for --resume), the log and the curve."""
        self.save("last.safetensors", seconds, self.best > -math.inf)
        _save_state(
            self.run_dir / STATE_FILE,
            {
                "step": self.step,
                "model": _cpu_state_dict(self.model),
                "optimizer": _to_cpu(self.optimizer.state_dict()),
                "rng": _rng_states(self.np_rng),
                "best_dice": self.best,
                "best_step": self.best_step,
                "best_dice_raw": self.best_raw,
                "seconds": seconds,
                "config": json.dumps(self.config.to_dict()),
            },
        )
        write_log(self.run_dir / "training_log.tsv", self.rows)
        plot_curve(self.run_dir / "training_curve.png", self.rows)


def _setup(config: TrainConfig) -> _Run:
    """Check the run folder and sources, seed everything, build (or resume) the model."""
    run_dir = config.run_dir
    state_path = run_dir / STATE_FILE
    if config.resume and not state_path.is_file():
        raise TrainError(f"--resume: no {STATE_FILE} in {run_dir}")
    if not config.resume and state_path.is_file():
        raise TrainError(f"{run_dir} already holds a run ({STATE_FILE}); use --resume or a new dir")
    prepared = _prepare_sources(config)
    if config.init is not None and not config.init.is_file():
        raise TrainError(f"--init: {config.init}: weights file not found")
    try:
        device = resolve_device(config.device)
    except ValueError as exc:
        raise TrainError(str(exc)) from None
    cuda = device.type == "cuda"
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    amp = (cuda and torch.cuda.is_bf16_supported()) if config.amp is None else config.amp

    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(
        json.dumps(config.to_dict(), indent=2) + "\n", run_dir / "config.json", fsync=True
    )
    val_cases = D.load_validation(D.validation_set(run_dir / "val", config.val_seeds))

    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)
    np_rng = np.random.default_rng(config.seed)
    card = config.card()
    model = build_network(card).to(device)
    run = _Run(
        config=config,
        device=device,
        amp=bool(amp and cuda),
        aug_on_device=cuda if config.aug_on_device is None else config.aug_on_device,
        sources=prepared["sources"],
        val_cases=val_cases,
        np_rng=np_rng,
        card=card,
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=config.lr),
        loss_fn=MaskedLoss(config.loss, config.bce_weight, config.thin_weight),
    )
    if config.resume:
        _resume(run, torch.load(state_path, map_location="cpu", weights_only=True))
    elif config.init is not None:
        model.load_state_dict(_init_weights(config, model))
    run.fwd = torch.compile(model) if config.compile else model
    _make_loader(run, prepared["pairs"])
    run.commit = git_commit()
    run.initialised_from = _init_description(config)
    return run


def _resume(run: _Run, state: dict[str, Any]) -> None:
    """Restore model, optimizer, RNG states, step, best and log from ``state.pt``."""
    config = run.config
    saved = json.loads(state["config"])
    for key in ("out_channels", "channels", "num_res_units"):
        if saved.get(key) != config.to_dict()[key]:
            raise TrainError(
                f"--resume: {key} {config.to_dict()[key]} differs from the run's "
                f"{saved.get(key)} ({run.run_dir})"
            )
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    for group in run.optimizer.param_groups:  # the --lr given now wins over the saved one
        group["lr"] = config.lr
    _restore_rng(state["rng"], run.np_rng)
    run.step = int(state["step"])
    if saved.get("val_seeds") == config.val_seeds:
        run.best, run.best_step = float(state["best_dice"]), int(state["best_step"])
        run.best_raw = float(state.get("best_dice_raw", math.nan))
    # else: another validation set: its Dice is not comparable, the best restarts
    run.prev_seconds = float(state["seconds"])
    run.rows = [r for r in read_log(run.run_dir / "training_log.tsv") if r["step"] <= run.step]


def _make_loader(run: _Run, pairs: list[tuple[Path, Path]]) -> None:
    """The training stream from ``run.step`` on, spatial augmentation on the device or not."""
    config, device = run.config, run.device
    run.spatial = D.SpatialAugment(
        config.crop,
        config.pos_fraction,
        config.elastic,
        device=device if run.aug_on_device else None,
    )
    pool_w, synth_w, data_w = config.effective_weights()
    stream = D.TrainStream(
        out_channels=config.out_channels,
        crop=config.crop,
        spatial=None if run.aug_on_device else run.spatial,
        seed=config.seed,
        start_step=run.step,
        pool=config.pool,
        pool_weight=pool_w,
        synthetic_weight=synth_w,
        data_pairs=pairs,
        data_weight=data_w,
        pool_refresh_samples=D.pool_refresh_samples(
            config.pool_refresh, config.batch_size, config.workers
        ),
        reuse=config.reuse,
        lowres_prob=config.lowres_prob,
        slab_prob=config.slab_prob,
        synthetic_realism=config.synthetic_realism,
    )
    if run.aug_on_device:
        run.spatial.set_random_state(
            int(np.random.default_rng([config.seed, run.step, 1 << 20]).integers(2**31))
        )
    run.loader = D.make_loader(
        stream,
        config.batch_size,
        config.workers,
        seed=config.seed + run.step,
        pin_memory=device.type == "cuda",
    )


def _step(run: _Run, batch: dict[str, torch.Tensor], autocast: Any) -> dict[str, Any]:
    """One optimizer step on ``batch``; returns (and logs) its row."""
    x = batch["image"].to(run.device, non_blocking=True)
    y = batch["target"].to(run.device, non_blocking=True).float()
    w = batch["weight"].to(run.device, non_blocking=True)
    if run.aug_on_device:
        x, y = run.spatial(x, y)
    with autocast():
        logits = run.fwd(x)
    loss = run.loss_fn(logits.float(), y, w)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    run.step += 1
    row: dict[str, Any] = {
        "step": run.step,
        "loss": float(loss.detach()),
        "val_dice": None,
        "lr": run.optimizer.param_groups[0]["lr"],
        "seconds": round(run.seconds(), 3),
        "val_dice_raw": None,
    }
    run.rows.append(row)
    return row


def _validate_and_save(run: _Run, row: dict[str, Any]) -> str:
    """Validate, keep the best weights and checkpoint; returns the progress line."""
    config = run.config
    if run.val_cases:
        vd, vr = validate(run.model, run.card, run.val_cases, run.device, config.val_batch)
        row["val_dice"], row["val_dice_raw"] = vd, vr
    else:
        vd, vr = 0.0, math.nan
    if not run.val_cases or vd > run.best:
        run.best, run.best_raw, run.best_step = vd, vr, run.step
        run.save("best.safetensors", run.seconds(), bool(run.val_cases))
    seconds = run.seconds()
    run.checkpoint(seconds)
    val_text = (
        f"val Dice {vd:.4f} (raw {vr:.4f})  best {run.best:.4f} @ {run.best_step}"
        if run.val_cases
        else "no validation set (best = last)"
    )
    return f"step {run.step}/{config.steps}  loss {row['loss']:.4f}  {val_text}  {seconds:.0f} s"


def train(config: TrainConfig) -> Path:
    """Train (or resume) a run; returns the path of ``best.safetensors``."""
    from tqdm.auto import tqdm

    t_start = time.monotonic()
    run = _setup(config)
    show = sys.stderr.isatty() if config.progress is None else config.progress
    bar = tqdm(total=config.steps, initial=run.step, disable=not show, unit="step", file=sys.stderr)
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        if run.amp
        else contextlib.nullcontext
    )
    limit_s = None if config.time_limit_min is None else config.time_limit_min * 60.0
    last_val_s = 0.0
    run.t_loop = time.monotonic()
    batches = iter(run.loader)
    run.model.train()
    try:
        while run.step < config.steps:
            row = _step(run, next(batches), autocast)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}", best=f"{max(run.best, 0.0):.4f}")
            elapsed = time.monotonic() - t_start
            out_of_time = limit_s is not None and elapsed + last_val_s >= limit_s
            if run.step % config.val_every == 0 or run.step >= config.steps or out_of_time:
                t_val = time.monotonic()
                line = _validate_and_save(run, row)
                last_val_s = time.monotonic() - t_val
                tqdm.write(line, file=sys.stderr)
                if out_of_time and run.step < config.steps:
                    tqdm.write(
                        f"time limit of {config.time_limit_min} min reached at step {run.step}",
                        file=sys.stderr,
                    )
                    break
            elif run.step % config.log_every == 0:
                write_log(run.run_dir / "training_log.tsv", run.rows)
    finally:
        bar.close()
        del batches
    best_path = config.run_dir / "best.safetensors"
    if not best_path.is_file():  # resumed at/after the final step of a finished run
        raise TrainError(f"{config.run_dir}: no best.safetensors was written")
    return best_path


def _init_weights(config: TrainConfig, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict of ``config.init`` for ``model``; :class:`TrainError` if it does not fit."""
    from ievnet_bids.model.weights import WeightsError, convert_monai03_keys, load_state_dict_file

    assert config.init is not None
    try:  # our safetensors, or a .pth such as the official checkpoint (MONAI 0.3 key names)
        state = convert_monai03_keys(
            load_state_dict_file(config.init), model.state_dict(), source=config.init
        )
    except WeightsError as exc:
        raise TrainError(f"--init: {exc}") from None
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _init_description(config: TrainConfig) -> str | None:
    """``name (sha256 prefix)`` of the --init weights, for the model card."""
    if config.init is None:
        return None
    from ievnet_bids.model.weights import sha256_file

    return f"{config.init.name} (sha256 {sha256_file(config.init)[:12]})"


def _monai_version() -> str:
    import monai

    return str(monai.__version__)
