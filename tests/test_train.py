"""ievnet-train on CPU: loss goes down, resume, determinism, clear data errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from ievnet_bids.cli import train as cli
from ievnet_bids.model.weights import load_model
from ievnet_bids.synth.seeds import VAL_SEED_START, phantom_settings
from ievnet_bids.train import pool
from ievnet_bids.train.data import TrainStream
from ievnet_bids.train.loop import TrainConfig, read_log, train

TINY = {"channels": (8, 16, 32, 64), "dropout": 0.0, "threads": 1, "progress": False}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A two-phantom training pool and the one cached validation phantom."""
    root = tmp_path_factory.mktemp("phantoms")
    (root / "pool").mkdir()
    for seed in (0, 1):
        pool.write_sample(root / "pool", seed)
    (root / "val").mkdir()
    val = pool.write_sample(root / "val", VAL_SEED_START)
    return root / "pool", val


def _config(run: Path, phantoms: tuple[Path, Path], **kw: object) -> TrainConfig:
    pool_dir, val = phantoms
    (run / "val").mkdir(parents=True, exist_ok=True)
    if not (run / "val" / val.name).exists():  # reuse the cached validation phantom
        shutil.copy(val, run / "val" / val.name)
    settings: dict[str, object] = {
        "pool": pool_dir,
        "crop": (48, 48, 32),
        "batch_size": 2,
        "val_seeds": 1,
        "pos_fraction": 1.0,
        **TINY,
    }
    settings.update(kw)
    return TrainConfig(run_dir=run, **settings)  # type: ignore[arg-type]


def _losses(run: Path) -> np.ndarray:
    return np.array([r["loss"] for r in read_log(run / "training_log.tsv")])


def test_smoke_run_lowers_loss_and_writes_loadable_model(tmp_path, phantoms) -> None:
    run = tmp_path / "run"
    best = train(_config(run, phantoms, steps=40, val_every=40, lr=1e-2))
    loss = _losses(run)
    assert len(loss) == 40 and np.all(np.isfinite(loss))
    first, last = loss[:5].mean(), loss[-5:].mean()
    assert last < 0.85 * first, (first, last)
    assert best == run / "best.safetensors" and best.is_file()
    for name in ("best.model_card.json", "last.safetensors", "state.pt", "training_curve.png"):
        assert (run / name).is_file(), name
    model, card = load_model(best)
    assert card.out_channels == 1 and card.output_activation == "sigmoid"
    assert card.training["steps"] == 40 and card.training["crop"] == [48, 48, 32]
    assert card.training["seed"] == 0 and "pool" in card.training["data_sources"]
    assert 0.0 <= card.metrics["val_dice"] <= 1.0 and card.metrics["val_cases"] == 1
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 48, 48, 32)).shape == (1, 1, 48, 48, 32)


def test_resume_continues_step_count(tmp_path, phantoms) -> None:
    run = tmp_path / "run"
    kw = {"out_channels": 2, "val_every": 5, "seed": 3}
    train(_config(run, phantoms, steps=6, **kw))
    assert [r["step"] for r in read_log(run / "training_log.tsv")] == list(range(1, 7))
    state = torch.load(run / "state.pt", weights_only=True)
    assert state["step"] == 6
    with pytest.raises(ValueError, match="--resume"):
        train(_config(run, phantoms, steps=10, **kw))
    train(_config(run, phantoms, steps=10, resume=True, lr=1e-4, **kw))
    rows = read_log(run / "training_log.tsv")
    assert [r["step"] for r in rows] == list(range(1, 11))
    assert {r["lr"] for r in rows[:6]} == {3e-4} and {r["lr"] for r in rows[6:]} == {1e-4}
    assert [r["step"] for r in rows if r["val_dice"] is not None] == [5, 6, 10]
    assert torch.load(run / "state.pt", weights_only=True)["step"] == 10
    _, card = load_model(run / "last.safetensors")
    assert card.out_channels == 2 and card.training["steps"] == 10


def test_same_seed_same_losses(tmp_path, phantoms) -> None:
    kw = {"steps": 3, "val_every": 100, "seed": 7, "workers": 1, "out_channels": 2}
    train(_config(tmp_path / "a", phantoms, **kw))
    train(_config(tmp_path / "b", phantoms, **kw))
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert len(a) == 3 and np.array_equal(a, b), (a, b)


def test_stream_targets_and_weights(phantoms) -> None:
    stream = TrainStream(
        out_channels=2, crop=(48, 48, 32), spatial=None, seed=0, pool=phantoms[0], pool_weight=1
    )
    sample = next(iter(stream))
    assert sample["image"].shape == (1, 200, 150, 100)
    assert sample["target"].shape == (2, 200, 150, 100)
    assert sample["target"][0].sum() > 0 and sample["target"][1].sum() > 0
    assert not (sample["target"][0] * sample["target"][1]).any()
    assert sample["weight"].tolist() == [1.0, 1.0]


def test_stream_draws_synthetic_phantoms_of_the_asked_version(monkeypatch) -> None:
    """--synthetic-realism 2: the on-the-fly source renders phantoms v2, target from its labels."""
    from ievnet_bids.synth import phantom as synth_phantom
    from ievnet_bids.train.data import make_target

    real_generate = synth_phantom.generate_phantom
    drawn: list[tuple[int, object]] = []

    def recording_generate(seed, **kw):
        ph = real_generate(seed, **kw)
        drawn.append((seed, kw.get("realism"), ph.labels))
        return ph

    monkeypatch.setattr(synth_phantom, "generate_phantom", recording_generate)
    stream = TrainStream(
        out_channels=2, crop=(48, 48, 32), spatial=None, seed=0,
        synthetic_weight=1, synthetic_realism=2,
    )  # fmt: skip
    sample = next(iter(stream))
    assert len(drawn) == 1
    seed, realism, labels = drawn[0]
    assert realism == 2
    target = make_target(labels, 2)
    got = sample["target"].numpy()
    assert np.array_equal(got, target) or np.array_equal(got, target[:, ::-1])  # LR flip
    v1 = real_generate(seed, **phantom_settings(seed), realism=1).labels
    assert not np.array_equal(v1, labels)  # v2 adds septa: other labels than v1


def test_stream_slab_reacquisition_changes_the_image_not_the_target(phantoms) -> None:
    """--slab-prob 1: every image comes through a simulated slab; the 0.2 mm labels stay."""
    kw = {"out_channels": 1, "crop": (48, 48, 32), "spatial": None, "seed": 3,
          "pool": phantoms[0], "pool_weight": 1}  # fmt: skip
    plain = next(iter(TrainStream(**kw)))
    slab = next(iter(TrainStream(**kw, slab_prob=1.0)))
    assert torch.equal(plain["target"], slab["target"]) or torch.equal(
        plain["target"], slab["target"].flip(1)
    )
    assert not torch.allclose(plain["image"], slab["image"], atol=0.02)


def test_stream_slab_samples_are_rendered_unacquired(monkeypatch) -> None:
    """With the slab re-acquisition, a fresh phantom skips its own acquisition (the slab is
    its one acquisition, as in the synthetic heads); without it, the phantom is acquired."""
    from ievnet_bids.synth import phantom as synth_phantom

    real_generate = synth_phantom.generate_phantom
    acquired: list[bool] = []

    def recording_generate(seed, **kw):
        acquired.append(kw["acquire"])
        return real_generate(seed, **kw)

    monkeypatch.setattr(synth_phantom, "generate_phantom", recording_generate)
    kw = {"out_channels": 1, "crop": (48, 48, 32), "spatial": None, "seed": 5,
          "synthetic_weight": 1}  # fmt: skip
    next(iter(TrainStream(**kw, slab_prob=1.0)))
    next(iter(TrainStream(**kw)))
    assert acquired == [False, True]


def test_stream_reuse_loads_one_sample_per_reuse(phantoms, monkeypatch) -> None:
    """--reuse 4: about a quarter of the draws load a sample; each use is augmented anew."""
    loads = 0
    real_load = TrainStream._load

    def counting_load(self, rng, state, acquire=True):
        nonlocal loads
        loads += 1
        return real_load(self, rng, state, acquire)

    monkeypatch.setattr(TrainStream, "_load", counting_load)
    stream = TrainStream(
        out_channels=1, crop=(48, 48, 32), spatial=None, seed=0, pool=phantoms[0],
        pool_weight=1, reuse=4.0, reservoir=2,
    )  # fmt: skip
    draws = [s for _, s in zip(range(200), stream, strict=False)]
    assert 35 <= loads <= 70, loads  # 2 to fill the reservoir + Binomial(198, 1/4) ≈ 51.5
    assert draws[0]["target"].dtype == torch.uint8
    images = {hash(d["image"].numpy().tobytes()) for d in draws}
    assert len(images) > loads  # reused samples get other intensity augmentations
    with pytest.raises(ValueError, match="reuse"):
        TrainStream(out_channels=1, crop=(48, 48, 32), spatial=None, seed=0,
                    pool=phantoms[0], pool_weight=1, reuse=0.5)  # fmt: skip


def test_init_starts_from_given_weights(tmp_path, phantoms) -> None:
    """--init: step 0 is the given model (same validation Dice); a mismatch is refused."""
    first = train(_config(tmp_path / "a", phantoms, steps=20, val_every=20, lr=1e-2))
    tuned = tmp_path / "b"
    train(_config(tuned, phantoms, steps=1, val_every=1, lr=1e-12, init=first))
    _, card_a = load_model(first)
    _, card_b = load_model(tuned / "best.safetensors")
    assert card_b.training["initialised_from"].startswith("best.safetensors (sha256 ")
    assert abs(card_b.metrics["val_dice"] - card_a.metrics["val_dice"]) < 0.02
    # a .pth with MONAI 0.3 key names (the official checkpoint's layout) starts the same way
    from ievnet_bids.model.weights import load_state_dict_file, to_monai03_keys

    old_layout = tmp_path / "old_layout.pth"
    torch.save(to_monai03_keys(load_state_dict_file(first)), old_layout)
    train(_config(tmp_path / "e", phantoms, steps=1, val_every=1, lr=1e-12, init=old_layout))
    _, card_e = load_model(tmp_path / "e" / "best.safetensors")
    assert card_e.metrics["val_dice"] == card_b.metrics["val_dice"]
    with pytest.raises(ValueError, match=r"--init: .*do not match"):
        train(_config(tmp_path / "c", phantoms, steps=1, init=first, out_channels=2))
    with pytest.raises(ValueError, match=r"--init: .*not found"):
        train(_config(tmp_path / "d", phantoms, steps=1, init=tmp_path / "none.safetensors"))


def _nifti(path: Path, shape: tuple[int, ...]) -> None:
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4) * 0.2), path)


def test_cli_errors_are_one_line(tmp_path, capsys) -> None:
    data = tmp_path / "data"
    data.mkdir()
    _nifti(data / "ear1_image.nii.gz", (64, 64, 40))
    _nifti(data / "ear1_mask.nii.gz", (64, 64, 40))
    rc = cli.main(["--out", str(tmp_path / "run"), "--data", str(data), "--val-seeds", "0"])
    err = capsys.readouterr().err.strip()
    assert rc == cli.EXIT_BAD
    assert len(err.splitlines()) == 1 and "64×64×40" in err and "200×150×100" in err, err

    rc = cli.main(["--out", str(tmp_path / "run"), "--pool", str(tmp_path / "missing")])
    err = capsys.readouterr().err.strip()
    assert rc == cli.EXIT_BAD and "does not exist" in err and len(err.splitlines()) == 1

    rc = cli.main(["--out", str(tmp_path / "run"), "--crop", "50", "48", "32"])
    assert rc == cli.EXIT_USAGE and "multiples of 16" in capsys.readouterr().err


def test_masked_loss_weights_bce_and_channels() -> None:
    from ievnet_bids.train.loop import MaskedLoss

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 8, 8, 8, generator=gen)
    target = (torch.rand(2, 2, 8, 8, 8, generator=gen) > 0.7).float()
    weight = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # sample 2: channel 2 not annotated
    dice = MaskedLoss("dice")(logits, target, weight)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    bce_mean = (bce.flatten(2).mean(2) * weight).sum() / weight.sum()
    for w in (0.0, 1.0, 20.0):
        total = MaskedLoss("dicebce", bce_weight=w)(logits, target, weight)
        torch.testing.assert_close(total, dice + w * bce_mean)
    # a channel with weight 0 does not count: changing its logits changes nothing
    other = logits.clone()
    other[1, 1] = 5.0
    torch.testing.assert_close(MaskedLoss("dicebce")(other, target, weight),
                               MaskedLoss("dicebce")(logits, target, weight))  # fmt: skip


def test_thin_structure_finds_canals_not_the_vestibule() -> None:
    """A tube 5 voxels across (a 1 mm canal at 0.2 mm) is thin everywhere; a ball 20 voxels
    across (a 4 mm vestibule) only on its rim (< 5 %)."""
    from ievnet_bids.train.loop import thin_structure

    x, y, z = torch.meshgrid(torch.arange(60.0), torch.arange(40.0), torch.arange(40.0),
                             indexing="ij")  # fmt: skip
    tube = ((y - 8) ** 2 + (z - 8) ** 2) <= 2.5**2
    ball = ((x - 30) ** 2 + (y - 26) ** 2 + (z - 26) ** 2) <= 10**2
    target = (tube | ball).float()[None, None]
    thin = thin_structure(target)[0, 0] > 0
    assert thin[tube].all()
    assert 0 < thin[ball].float().mean() < 0.05
    assert not thin[~(tube | ball)].any()


def test_thin_weight_makes_a_missed_canal_cost_more() -> None:
    """--thin-weight W: missing the canal costs more BCE than missing as many vestibule voxels,
    and so does thickening it; with W = 0 both cost the same."""
    from ievnet_bids.train.loop import MaskedLoss

    x, y, z = torch.meshgrid(torch.arange(60.0), torch.arange(40.0), torch.arange(40.0),
                             indexing="ij")  # fmt: skip
    tube = ((y - 8) ** 2 + (z - 8) ** 2) <= 2.5**2
    ball = ((x - 30) ** 2 + (y - 26) ** 2 + (z - 26) ** 2) <= 10**2
    target = (tube | ball).float()[None, None]
    perfect = torch.where(target > 0, 8.0, -8.0)
    no_canal = torch.where(tube[None, None], -8.0, perfect)
    # as many voxels missed in the ball's core as the tube has
    core = torch.zeros_like(ball)
    order = ((x - 30) ** 2 + (y - 26) ** 2 + (z - 26) ** 2).flatten().argsort()
    core.view(-1)[order[: int(tube.sum())]] = True
    no_core = torch.where(core[None, None], -8.0, perfect)
    weight = torch.ones(1, 1)

    def bce_part(logits: torch.Tensor, w: float) -> float:
        total = MaskedLoss("dicebce", thin_weight=w)(logits, target, weight)
        return float(total - MaskedLoss("dice")(logits, target, weight))

    assert bce_part(no_canal, 0.0) == pytest.approx(bce_part(no_core, 0.0), rel=1e-3)
    assert bce_part(no_canal, 4.0) > 3 * bce_part(no_core, 4.0)
    # so does thickening it (the background beside the canal is weighted too), against as
    # many false positives far from it
    shell = (((y - 8) ** 2 + (z - 8) ** 2) <= 3.5**2) & ~tube
    far = torch.zeros_like(ball)
    far[:, 30:, :4] = True
    far.view(-1)[far.view(-1).nonzero()[int(shell.sum()) :, 0]] = False
    thick = torch.where(shell[None, None], 8.0, perfect)
    spots = torch.where(far[None, None], 8.0, perfect)
    assert bce_part(thick, 0.0) == pytest.approx(bce_part(spots, 0.0), rel=1e-3)
    assert bce_part(thick, 4.0) > 3 * bce_part(spots, 4.0)
    with pytest.raises(ValueError, match="thin_weight"):
        TrainConfig(run_dir=Path("x"), loss="dice", thin_weight=1.0)


def test_lowres_augmentation_blurs_the_image_only() -> None:
    """A 0.2 mm stripe pattern (period 2 voxels) averages away at coarser voxels; a slab of
    ten voxels keeps its mean; the target is untouched; prob 0 is the identity."""
    from ievnet_bids.train.data import intensity_transforms

    image = np.zeros((1, 40, 30, 20), dtype=np.float32)
    image[:, ::2] = 1.0  # finest possible detail along x
    target = np.zeros((2, 40, 30, 20), dtype=np.float32)
    target[0, 10:20] = 1.0
    d = {"image": torch.from_numpy(image.copy()), "target": torch.from_numpy(target.copy())}
    blur = intensity_transforms(lowres_prob=1.0)
    blur.transforms = [t for t in blur.transforms if "LowResolution" in type(t).__name__]
    blur.set_random_state(0)
    out = blur(d)
    got = np.asarray(out["image"])[0]
    assert np.std(got[5:35]) < 0.5 * np.std(image[0, 5:35])
    assert abs(float(got[5:35].mean()) - 0.5) < 0.05
    np.testing.assert_array_equal(np.asarray(out["target"]), target)
    names = [type(t).__name__ for t in intensity_transforms(lowres_prob=0.0).transforms]
    assert not any("LowResolution" in n for n in names)
