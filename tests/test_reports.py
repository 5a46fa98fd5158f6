"""QC checks on planted defects, report figures, and the assembled ``sub-XX.html``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from fake_outputs import write_unit
from scipy import ndimage

from ievnet_bids import qc as Q
from ievnet_bids.reports import figures as F
from ievnet_bids.reports.html import missing_links
from ievnet_bids.reports.participant import write_subject_report, write_unit_status
from ievnet_bids.synth import labels as L

SP = 0.2  # ROI voxel size (mm)
VOXEL = SP**3


# --------------------------------------------------------------------------- geometric model
def _tube_ring(shape, centre, radius, tube, normal, keep=None) -> np.ndarray:
    """Voxels within ``tube`` mm of a circle (``radius`` mm about ``centre``, plane ⟂ normal).

    ``keep(point)`` keeps only parts of the ring (to break it)."""
    n = np.asarray(normal, float) / np.linalg.norm(normal)
    u = np.cross(n, [1.0, 0, 0] if abs(n[0]) < 0.9 else [0, 1.0, 0])
    u /= np.linalg.norm(u)
    w = np.cross(n, u)
    out = np.zeros(shape, bool)
    for a in np.linspace(0, 2 * np.pi, 720, endpoint=False):
        point = np.asarray(centre) + radius * (np.cos(a) * u + np.sin(a) * w)
        if keep is not None and not keep(point):
            continue
        p = point / SP
        lo = np.maximum(np.floor(p - tube / SP - 1).astype(int), 0)
        hi = np.minimum(np.ceil(p + tube / SP + 2).astype(int), shape)
        idx = np.indices(hi - lo).reshape(3, -1).T + lo
        d = np.linalg.norm((idx - p) * SP, axis=1)
        sel = idx[d <= tube]
        out[tuple(sel.T)] = True
    return out


def _ball(shape, centre, radius) -> np.ndarray:
    idx = np.indices(shape, dtype=np.float32) * SP
    return sum((g - c) ** 2 for g, c in zip(idx, centre, strict=True)) <= radius**2


SHAPE = (90, 90, 90)
C = np.array([9.0, 9.0, 9.0])
RINGS = [
    (C + np.array([0, 0, 3.4]), (1, 0, 0)),
    (C + np.array([0, -3.4, 0]), (0, 0, 1)),
    (C + np.array([3.4, 0, 0]), (0, 1, 0)),
]


def _model(broken: int | None = None, fused_handle: bool = False) -> np.ndarray:
    """A 'vestibule' ball (r 2.2 mm) with three thin canal loops (r 3 mm, lumen 0.9 mm);
    ``broken`` cuts one loop; ``fused_handle`` adds a thick torus (a fused cochlear turn)."""
    mask = _ball(SHAPE, C, 2.2)
    for i, (centre, normal) in enumerate(RINGS):
        keep = (lambda p: np.linalg.norm(p - C) < 6.0) if i == broken else None
        mask |= _tube_ring(SHAPE, centre, 3.0, 0.45, normal, keep)
    if fused_handle:
        mask |= _tube_ring(SHAPE, C + np.array([-3.2, 0, -1.5]), 1.9, 1.05, (0, 0, 1))
    return mask


def test_three_canal_loops_through_a_vestibule():
    topo = Q.topology(_model(), SP)
    assert topo.components == 1 and topo.canal_loops == 3
    assert topo.euler == -2 and topo.tunnels == 3


def test_a_broken_canal_loses_one_loop():
    for i in range(3):
        assert Q.topology(_model(broken=i), SP).canal_loops == 2


def test_handles_in_thick_tissue_do_not_count():
    """A fused 'cochlear' handle adds a tunnel (Euler −3) but no canal loop, so a broken canal
    plus a fused turn is still caught, where the plain tunnel count (3) would miss it."""
    topo = Q.topology(_model(fused_handle=True), SP)
    assert topo.tunnels == 4 and topo.canal_loops == 3
    broken = Q.topology(_model(broken=1, fused_handle=True), SP)
    assert broken.tunnels == 3 and broken.canal_loops == 2


# --------------------------------------------------------------------------- phantoms
@pytest.fixture(scope="module")
def phantoms() -> list[np.ndarray]:
    """Label maps of two phantom labyrinths (no background), cropped."""
    from ievnet_bids.synth.phantom import generate_phantom

    out = []
    for seed in (1, 2):
        lab = generate_phantom(seed, background=False).labels
        idx = np.argwhere(lab > 0)
        lo, hi = np.maximum(idx.min(0) - 12, 0), idx.max(0) + 13
        out.append(lab[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))])
    return out


def _tfs(labels: np.ndarray) -> np.ndarray:
    return ndimage.binary_fill_holes(L.tfs_mask(labels))


def _cut_canal(labels: np.ndarray, label: int, radius_vox: float = 6.0) -> np.ndarray:
    """Remove a 2.4 mm piece of canal ``label`` at its point farthest from the vestibule."""
    lab = labels.copy()
    idx = np.argwhere(lab == label)
    far = idx[np.linalg.norm(idx - np.argwhere(lab == L.VESTIBULE).mean(0), axis=1).argmax()]
    lab[tuple(idx[np.linalg.norm(idx - far, axis=1) < radius_vox].T)] = 0
    return _tfs(lab)


def _flags(mask: np.ndarray, prob: np.ndarray | None = None, **kw) -> dict[str, str]:
    prob = np.where(mask, 0.97, 0.0) if prob is None else prob
    rec = Q.ear_record(roi_mask=mask, roi_prob=prob, roi_spacing=SP, **kw)
    return {f["name"]: f["reason"] for f in rec["flags"]}


def test_intact_phantoms_raise_no_flag(phantoms):
    for labels in phantoms:
        mask = _tfs(labels)
        assert Q.topology(mask, SP).canal_loops == 3
        assert _flags(mask) == {}


@pytest.mark.parametrize(
    "canal", [L.ANTERIOR_CANAL, L.POSTERIOR_CANAL, L.LATERAL_CANAL], ids=["ant", "post", "lat"]
)
def test_broken_canal_is_flagged(phantoms, canal):
    for labels in phantoms:
        flags = _flags(_cut_canal(labels, canal))
        assert "missing_canal_loop" in flags, flags
        assert "2 canal loop(s)" in flags["missing_canal_loop"]


def test_fused_cochlear_turns_keep_three_loops(phantoms):
    for labels in phantoms:
        cochlea = np.isin(labels, (L.COCHLEA, L.SPIRAL_LAMINA))
        fused = _tfs(labels) | ndimage.binary_dilation(cochlea, iterations=2)
        assert Q.topology(fused, SP).canal_loops == 3


def test_stray_blob_is_flagged(phantoms):
    mask = _tfs(phantoms[0])
    blob = np.zeros_like(mask)
    blob[3:12, 3:12, 3:12] = True  # 5.8 mm³, away from the labyrinth
    assert not (blob & ndimage.binary_dilation(mask, iterations=3)).any()
    flags = _flags(mask | blob)
    assert set(flags) == {"multiple_components"}
    assert "2 components" in flags["multiple_components"]
    speck = np.zeros_like(mask)
    speck[4, 4, 4] = True  # a single voxel (0.008 mm³) is not a component worth a flag
    assert _flags(mask | speck) == {}


def test_oversized_and_empty_masks_are_flagged(phantoms):
    mask = _tfs(phantoms[0])
    big = ndimage.binary_dilation(mask, iterations=5)
    flags = _flags(big)
    assert (
        "volume_out_of_range" in flags
        and "mm³ outside the expected" in flags["volume_out_of_range"]
    )
    assert set(_flags(np.zeros_like(mask))) == {"empty_mask"}


def test_low_boundary_probability_move_and_edge_are_flagged(phantoms):
    mask = _tfs(phantoms[0])
    unsure = np.where(mask, 0.55, 0.05).astype(np.float32)
    assert set(_flags(mask, unsure)) == {"low_boundary_probability"}
    assert Q.boundary_probability(unsure, mask) == pytest.approx(0.55, abs=1e-6)
    flags = _flags(mask, moved_mm=15.0, touches_edge=True)
    assert set(flags) == {"large_refinement_move", "roi_touches_slab_edge"}


# --------------------------------------------------------------------------- figures
@pytest.fixture(scope="module")
def ears(phantoms) -> dict[str, F.EarData]:
    labels = phantoms[0]
    mask = _tfs(labels)
    image = np.where(mask, 1000.0, 120.0).astype(np.float32)
    image += np.random.default_rng(0).normal(0, 30, image.shape).astype(np.float32)
    prob = ndimage.gaussian_filter(mask.astype(np.float32), 1.0)
    return {
        "left": F.EarData("left", image[::-1].copy(), mask[::-1].copy(), prob[::-1].copy()),
        "right": F.EarData("right", image, mask, prob),
    }


def test_right_ear_is_mirrored_for_display(ears):
    shown = ears["right"].display()
    np.testing.assert_array_equal(shown.mask, ears["right"].mask[::-1])
    # the two phantoms are mirror images: in the display frame they coincide
    np.testing.assert_array_equal(shown.mask, ears["left"].display().mask)


def test_figures_are_written_and_deterministic(ears, tmp_path):
    import nibabel as nib

    a = F.mosaic_figure(ears, "axial", tmp_path / "a.png")
    b = F.mosaic_figure(ears, "axial", tmp_path / "b.png")
    assert a.read_bytes() == b.read_bytes() and a.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    s = F.surface_figure(ears, tmp_path / "s.png")
    assert s.stat().st_size > 10_000
    slab = nib.Nifti1Image(
        np.random.default_rng(1).random((60, 50, 20), np.float32), np.diag([0.5, 0.5, 0.5, 1.0])
    )
    roi = np.diag([0.2, 0.2, 0.2, 1.0])
    roi[:3, 3] = [2.0, 5.0, 2.0]
    loc = F.localization_figure(
        slab, {"left": (roi, (40, 30, 20))}, tmp_path / "l.png", initial={"left": [6.0, 8.0, 4.0]}
    )
    assert loc.stat().st_size > 5_000
    assert not list(tmp_path.glob(".*"))  # atomic writes leave no temporary files


# --------------------------------------------------------------------------- sub-XX.html
def test_subject_report_lists_flags_volumes_and_errors(tmp_path):
    out = tmp_path / "out"
    rng = np.random.default_rng(0)
    for ses in ("1", "2"):
        write_unit(
            out,
            "07",
            ses,
            volumes={"left": 240.0, "right": 231.5},
            rng=rng,
            flags={"right": ["missing_canal_loop"]} if ses == "2" else None,
        )
    start = time.time()
    for ses, status in (("1", "ok"), ("2", "ok"), ("3", "failed")):
        write_unit_status(
            out,
            unit_name=f"sub-07_ses-{ses}",
            subject="07",
            session=ses,
            slabs=[],
            head=None,
            status=status,
            reason="localize: LocalizationError: no ear found" if ses == "3" else "",
            started=start,
            seconds=12.5,
        )
    crash_dir = out / "sub-07" / "log" / "ses-3"
    crash_dir.mkdir(parents=True)
    (crash_dir / "crash-20260101-000000-user-localize-abc.txt").write_text(
        "Node: sub_07_ses_3_wf.slab0_wf.localize\nTraceback (most recent call last):\n"
        "ievnet_bids.localize.ears.LocalizationError: no ear found <b>here</b>\n"
    )
    page = write_subject_report(out, "07")
    html = page.read_text()
    assert page.name == "sub-07.html"
    for text in (
        "ses-1_acq-space",
        "ses-2_acq-space",
        "missing_canal_loop",
        "240.0",
        "231.5",
        "sub-07_ses-3 failed",
        "LocalizationError: no ear found &lt;b&gt;here",
        "sub_07_ses_3_wf.slab0_wf.localize",
        "ievnet-bids",
    ):
        assert text in html, text
    assert "<b>here</b>" not in html  # crash text is escaped
    assert missing_links(page) == []
    assert "http://" not in html and "https://" not in html  # self-contained


def test_subject_report_without_outputs_shows_the_failure(tmp_path):
    out = tmp_path / "out"
    write_unit_status(
        out,
        unit_name="sub-03",
        subject="03",
        session=None,
        slabs=[],
        head=None,
        status="failed",
        reason="no inner-ear slab",
        started=time.time(),
        seconds=0.0,
    )
    html = write_subject_report(out, "03").read_text()
    assert "no inner-ear slab" in html and "No outputs" in html
    assert json.loads((out / "logs" / "sub-03_status.json").read_text())["status"] == "failed"
    assert not (out / "sub-03").exists()


def test_report_figures_recorded_in_qc_json_resolve(tmp_path):
    """A QC record pointing at figures: the page shows them with relative links."""
    out = tmp_path / "out"
    write_unit(
        out, "01", None, volumes={"left": 200.0, "right": 210.0}, rng=np.random.default_rng(1)
    )
    qc_path = out / "sub-01" / "anat" / "sub-01_acq-space_desc-tfs_qc.json"
    record = json.loads(qc_path.read_text())
    fig = out / "sub-01" / "figures" / "sub-01_acq-space_desc-axial_T2w.png"
    fig.parent.mkdir(parents=True)
    fig.write_bytes(Path(F.__file__).read_bytes()[:0] + b"\x89PNG\r\n\x1a\n")
    record["figures"] = {"axial": fig.relative_to(out).as_posix()}
    qc_path.write_text(json.dumps(record))
    page = write_subject_report(out, "01")
    assert 'src="sub-01/figures/sub-01_acq-space_desc-axial_T2w.png"' in page.read_text()
    assert missing_links(page) == []


@pytest.mark.slow
def test_canal_loop_check_on_many_phantoms():
    """No normal variant flagged; nearly every broken canal flagged (the documented sweep)."""
    from ievnet_bids.synth.phantom import generate_phantom

    false_alarms, missed, n = [], [], 0
    for seed in range(20, 32):
        labels = generate_phantom(seed, background=False).labels
        idx = np.argwhere(labels > 0)
        lo, hi = np.maximum(idx.min(0) - 6, 0), idx.max(0) + 7
        labels = labels[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
        tfs = _tfs(labels)
        cochlea = np.isin(labels, (L.COCHLEA, L.SPIRAL_LAMINA))
        normal = {
            "as drawn": tfs,
            "fused turns": tfs | ndimage.binary_dilation(cochlea, iterations=2),
            "fatter": ndimage.binary_dilation(tfs),
            "blurred": ndimage.gaussian_filter(tfs.astype(np.float32), 1.0) > 0.5,
        }
        for name, mask in normal.items():
            if Q.topology(mask, SP).canal_loops < 3:
                false_alarms.append((seed, name))
        for canal in (L.ANTERIOR_CANAL, L.POSTERIOR_CANAL, L.LATERAL_CANAL):
            n += 1
            if Q.topology(_cut_canal(labels, canal), SP).canal_loops >= 3:
                missed.append((seed, canal))
    assert false_alarms == []
    assert len(missed) <= 0.1 * n, missed
