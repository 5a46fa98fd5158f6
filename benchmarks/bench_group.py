"""Group level on synthetic participant outputs: time to read, tabulate, plot and render.

    python benchmarks/bench_group.py                 # 1,000 rows (500 subjects × 1 session)
    python benchmarks/bench_group.py --subjects 5000 --sessions 2

Prints the time of each phase; nothing depends on the raw data or the model.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

from ievnet_bids.config import RunConfig
from ievnet_bids.group import GROUP_HTML, GROUP_TSV, run_group_level

TESTS_DIR = Path(__file__).resolve().parents[1] / "tests"  # holds the fake outputs (fixtures)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subjects", type=int, default=500, help="subjects (default: 500)")
    p.add_argument("--sessions", type=int, default=1, help="sessions per subject (default: 1)")
    p.add_argument("--repeats", type=int, default=3, help="timed group runs (default: 3)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(TESTS_DIR))
    from fake_outputs import write_outputs

    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "bids").mkdir()
        out = root / "out"
        t0 = time.perf_counter()
        write_outputs(out, args.subjects, sessions=args.sessions, seed=1)
        rows = 2 * args.subjects * args.sessions
        print(f"wrote {rows} synthetic rows in {time.perf_counter() - t0:.1f} s")
        config = RunConfig(bids_dir=root / "bids", output_dir=out, analysis_level="group")
        times = []
        for _ in range(args.repeats):
            t1 = time.perf_counter()
            failures = run_group_level(config)
            times.append(time.perf_counter() - t1)
            assert not failures, failures
        html = (out / GROUP_HTML).stat().st_size / 1024
        n_lines = sum(1 for _ in (out / GROUP_TSV).open()) - 1
        print(
            f"group level, {n_lines} rows: best {min(times):.2f} s, "
            f"median {sorted(times)[len(times) // 2]:.2f} s over {args.repeats} run(s); "
            f"{GROUP_HTML} {html:.0f} KiB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
