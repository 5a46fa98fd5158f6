"""The slab workflow's wiring (no execution): model options reach the nodes that use them."""

from __future__ import annotations

from pathlib import Path

from ievnet_bids.resources import default_model_path
from ievnet_bids.workflows.execution import versioned_work_dir
from ievnet_bids.workflows.participant import init_slab_wf

MODEL = default_model_path()  # must exist: the node checks the file


def _edges(wf, src: str, dst: str) -> list[tuple[str, str]]:
    graph = wf._graph  # nipype keeps the connections on the graph's edge data
    nodes = {n.name: n for n in graph.nodes()}
    return list(graph.get_edge_data(nodes[src], nodes[dst])["connect"])


def test_map_back_thresholds_at_the_model_cards_threshold(tmp_path: Path) -> None:
    wf = init_slab_wf(output_dir=tmp_path, model=MODEL)
    for side in ("left", "right"):
        assert ("threshold", "threshold") in _edges(wf, "segment", f"map_back_{side}")


def test_tta_option_reaches_the_segment_node(tmp_path: Path) -> None:
    for tta in (False, True):
        wf = init_slab_wf(output_dir=tmp_path, model=MODEL, tta=tta)
        assert wf.get_node("segment").inputs.tta is tta


def test_precision_reaches_the_segment_node(tmp_path: Path) -> None:
    wf = init_slab_wf(output_dir=tmp_path, model=MODEL, precision="bf16")
    assert wf.get_node("segment").inputs.precision == "bf16"


def test_work_dir_is_scoped_to_the_release_line(tmp_path: Path) -> None:
    assert versioned_work_dir(tmp_path, "1.12.3rc1") == tmp_path / "ievnet_bids_1_12_wf"
    assert versioned_work_dir(tmp_path, "2") == tmp_path / "ievnet_bids_2_0_wf"
    assert versioned_work_dir(tmp_path, "1.12.0") != versioned_work_dir(tmp_path, "1.13.0")
