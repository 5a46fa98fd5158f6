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


def test_forkserver_workers_start_with_the_heavy_libraries_loaded(tmp_path) -> None:
    """After preload_in_forkserver, a worker forked by this process's forkserver already has
    torch, MONAI and ANTsPy (with ITK on one thread) imported: no per-subject import cost."""
    import subprocess
    import sys

    code = (
        "import multiprocessing, sys\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from ievnet_bids.workflows.execution import preload_in_forkserver\n"
        "def loaded():\n"
        "    import os, sys\n"
        "    names = ('torch', 'monai.networks.nets', 'ants', 'matplotlib.pyplot')\n"
        "    return [n in sys.modules for n in names], os.environ.get("
        "'ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS')\n"
        "if __name__ == '__main__':\n"
        "    preload_in_forkserver()\n"
        "    assert 'torch' not in sys.modules  # the run's own process does not import them\n"
        "    ctx = multiprocessing.get_context('forkserver')\n"
        "    with ProcessPoolExecutor(1, mp_context=ctx) as pool:\n"
        "        print(pool.submit(loaded).result())\n"
    )
    script = tmp_path / "probe.py"  # a file: the workers re-import it as __mp_main__
    script.write_text(code)
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "([True, True, True, True], '1')"
