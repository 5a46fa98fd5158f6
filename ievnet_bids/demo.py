"""``make demo``: the built-in synthetic demonstration.

Renders a phantom preview (and the real sample crops beside it when ``--real-dir`` holds
them). Later stages extend the demo to the full BIDS-App run on a synthetic dataset.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo_output"))
    parser.add_argument("--real-dir", type=Path, default=None, help="folder with vol_ie_{L,R}")
    args = parser.parse_args(argv)

    from ievnet_bids.synth.__main__ import main as synth_main

    real = []
    if args.real_dir is not None:
        real = [str(p) for p in sorted(args.real_dir.glob("vol_ie_*.nii.gz"))]
    preview = args.out / "phantom_preview.png"
    code = synth_main(
        [
            "preview",
            "--out",
            str(preview),
            "--seeds",
            "0",
            "1",
            "2",
            *(["--real", *real] if real else []),
        ]
    )
    if code:
        return code
    print(f"ievnet-bids demo: phantom preview written to {preview.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
