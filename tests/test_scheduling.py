"""How many participants/sessions the participant level runs at once."""

from __future__ import annotations

import pytest

from ievnet_bids.cli.parser import parse_args
from ievnet_bids.workflows.execution import concurrent_units


@pytest.mark.parametrize(
    ("flags", "n_units", "expected"),
    [
        (["--nprocs", "2"], 3, 1),  # --omp-nthreads defaults to min(nprocs, 8): one at a time
        (["--nprocs", "2", "--omp-nthreads", "1"], 3, 2),
        (["--nprocs", "16"], 100, 2),  # 16 CPUs in shares of 8
        (["--nprocs", "16", "--omp-nthreads", "2"], 100, 8),
        (["--nprocs", "16", "--omp-nthreads", "2"], 3, 3),  # never more than the units
        (["--nprocs", "16", "--omp-nthreads", "2", "--mem-gb", "10"], 100, 3),  # 3 GB each
        (["--nprocs", "16", "--omp-nthreads", "1", "--mem-gb", "2"], 100, 1),
    ],
)
def test_concurrent_units(tmp_path, tiny_bids, flags, n_units, expected) -> None:
    bids = tiny_bids(tmp_path / "bids", [])
    config = parse_args([str(bids), str(tmp_path / "out"), "participant", *flags])
    assert concurrent_units(config, n_units) == expected
