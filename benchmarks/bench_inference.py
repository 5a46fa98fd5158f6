"""Inference speed of IE-Vnet on one full ROI (200×150×100 → padded 208×160×112).

Random weights; the timing covers ``Segmenter.predict_proba`` end to end (min/max scaling,
padding, forward, sigmoid, crop, copy back to numpy).  CPU: seconds per ear at batch 1 and
2.  CUDA (when available): ears/s at batch 1 and 8, fp32 vs bf16 autocast, with and
without ``channels_last_3d`` and ``torch.compile``.

    python benchmarks/bench_inference.py --threads 2 --iters 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ievnet_bids.model.card import default_card
from ievnet_bids.model.infer import Segmenter
from ievnet_bids.model.net import build_network


def _time(fn: Callable[[], Any], iters: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def bench_cpu(batches: list[int], iters: int, warmup: int) -> list[dict[str, Any]]:
    card = default_card()
    torch.manual_seed(0)
    model = build_network(card)
    rows = []
    for b in batches:
        seg = Segmenter(model, card, device="cpu", batch_size=b)
        vols = np.random.default_rng(0).random((b, *card.roi_shape), dtype=np.float32)
        times = _time(lambda seg=seg, vols=vols: seg.predict_proba(vols), iters, warmup)
        med = statistics.median(times)
        rows.append(
            {
                "device": "cpu",
                "threads": torch.get_num_threads(),
                "batch": b,
                "config": "fp32",
                "s_per_ear": med / b,
                "ears_per_s": b / med,
            }
        )
        print(
            f"cpu  threads={torch.get_num_threads():<3d} batch={b:<2d} fp32             "
            f"{med / b:7.3f} s/ear  ({b / med:6.2f} ears/s)",
            flush=True,
        )
    return rows


def bench_cuda(batches: list[int], iters: int, warmup: int, compile_: bool) -> list[dict[str, Any]]:
    card = default_card()
    dev = torch.device("cuda")
    configs: list[tuple[str, bool, bool, bool]] = [
        ("fp32", False, False, False),
        ("bf16", True, False, False),
        ("bf16+channels_last", True, True, False),
    ]
    if compile_:
        configs.append(("bf16+compile", True, False, True))
    rows = []
    for name, amp, cl, comp in configs:
        torch.manual_seed(0)
        model = build_network(card).to(dev).eval()
        if cl:
            model = model.to(memory_format=torch.channels_last_3d)
        if comp:
            model = torch.compile(model)
        for b in batches:
            seg = Segmenter(model, card, device="cuda", batch_size=b, amp=amp, channels_last=cl)
            vols = np.random.default_rng(0).random((b, *card.roi_shape), dtype=np.float32)
            torch.cuda.reset_peak_memory_stats()
            try:
                times = _time(
                    lambda seg=seg, vols=vols: seg.predict_proba(vols),
                    iters,
                    warmup + (2 if comp else 0),
                )
            except torch.OutOfMemoryError:
                print(f"cuda batch={b} {name}: out of memory", flush=True)
                torch.cuda.empty_cache()
                continue
            med = statistics.median(times)
            peak = torch.cuda.max_memory_allocated() / 2**30
            rows.append(
                {
                    "device": torch.cuda.get_device_name(),
                    "batch": b,
                    "config": name,
                    "s_per_ear": med / b,
                    "ears_per_s": b / med,
                    "peak_gib": peak,
                }
            )
            print(
                f"cuda batch={b:<2d} {name:<20s} {med / b:7.4f} s/ear  ({b / med:7.2f} ears/s, "
                f"peak {peak:5.1f} GiB)",
                flush=True,
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, help="torch.set_num_threads for the CPU runs")
    p.add_argument("--cpu-batches", default="1,2")
    p.add_argument("--cuda-batches", default="1,8")
    p.add_argument("--no-cpu", action="store_true")
    p.add_argument("--no-cuda", action="store_true")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}; ROI 200x150x100 padded to 208x160x112; random weights")
    rows: list[dict[str, Any]] = []
    if not args.no_cpu:
        batches = [int(b) for b in args.cpu_batches.split(",") if b]
        rows += bench_cpu(batches, args.iters, args.warmup)
    if not args.no_cuda:
        if torch.cuda.is_available():
            batches = [int(b) for b in args.cuda_batches.split(",") if b]
            rows += bench_cuda(batches, args.iters, args.warmup, not args.no_compile)
        else:
            print("cuda: not available")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
