"""What reading aggregates costs the judge: an access log of N lines read as per-request samples
(the anchor: what the judge read before, `read_samples`), as per-second windows (`read`, what it
reads now), and judged end to end (`LiveJudge`, one look at the end). Ratios against the anchor
in the same run; several runs, min/median/max.

    .venv/bin/python bench/judge_sources.py --lines 200000 --runs 5
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from kiln.analysis.live import LiveJudge
from kiln.platforms.local.accesslog import AccessLogSource
from kiln.rollout.decide import start
from kiln.spec.models import Analysis


def write_log(path: Path, lines: int, seconds: int, seed: int) -> float:
    """`lines` requests over `seconds`, 10% to the canary; returns the first second."""
    rng = random.Random(seed)
    t0 = int(time.time()) - seconds
    with path.open("w") as f:
        for i in range(lines):
            t = t0 + seconds * i / lines
            release = "web-r2" if rng.random() < 0.1 else "web-r1"
            status = 500 if rng.random() < 0.01 else 200
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"
            f.write(json.dumps({"ServiceName": f"kiln-{release}@file", "DownstreamStatus": status,
                                "Duration": int(rng.lognormvariate(-3.0, 0.5) * 1e9),
                                "StartUTC": stamp}) + "\n")
    return float(t0)


def timed(fn: Callable[[], object]) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--seconds", type=int, default=600)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "access.log"
        t0 = write_log(log, args.lines, args.seconds, seed=1)
        results: dict[str, list[float]] = {"samples (anchor)": [], "windows": [], "judge": []}
        for _ in range(args.runs):
            src = AccessLogSource(log, lambda addr: None)
            results["samples (anchor)"].append(
                timed(lambda src=src: src.read_samples("web", None)))
            results["windows"].append(timed(lambda src=src: src.read("web", None)))

            def judge() -> None:
                live = LiveJudge(AccessLogSource(log, lambda addr: None), "web", Analysis())
                status = start("canary", "web-r2", "web-r1", 1, t0, {"time": t0})
                status.phase = "step"
                live(status, t0 + args.seconds)

            results["judge"].append(timed(judge))
    anchor = results["samples (anchor)"]
    print(f"{args.lines} lines over {args.seconds} s, {args.runs} runs")
    print("| read | seconds min / median / max | vs anchor min / median / max |")
    print("|---|---|---|")
    for name, secs in results.items():
        ratios = [s / a for s, a in zip(secs, anchor, strict=True)]
        print(f"| {name} | {min(secs):.3f} / {statistics.median(secs):.3f} / {max(secs):.3f} | "
              f"{min(ratios):.2f}x / {statistics.median(ratios):.2f}x / {max(ratios):.2f}x |")


if __name__ == "__main__":
    main()
