"""`kiln judge replay`: what keeping a rollout's evidence costs (bytes in the state) and how long
a replay takes, anchored on judging the same evidence live (a Judge fed the same windows with a
look each second, what the rollout itself paid at 1 look/s), same run.

    .venv/bin/python bench/replay.py --minutes 10 --runs 5
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

from kiln.analysis.judge import Judge
from kiln.analysis.recording import Recording
from kiln.analysis.replay import replay
from kiln.analysis.summary import aggregate
from kiln.platforms.base import Sample
from kiln.spec.models import Analysis

T0 = 1_700_000_000.0


def traffic(seconds: int, canary: int, baseline: int, seed: int) -> list[Sample]:
    rng = random.Random(seed)
    out = []
    for sec in range(seconds):
        for rel, n in (("web-r2", canary), ("web-r1", baseline)):
            for i in range(n):
                bad = rng.random() < 0.01
                out.append(Sample(rel, T0 + sec + i / n, 500 if bad else 200,
                                  rng.lognormvariate(-3.0, 0.5), bad))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=int, default=10)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--canary", type=int, default=20, help="canary requests a second")
    ap.add_argument("--baseline", type=int, default=180, help="baseline requests a second")
    args = ap.parse_args()
    seconds = args.minutes * 60
    windows = aggregate(traffic(seconds, args.canary, args.baseline, 1))
    rec = Recording("web-r2", "web-r1", "bench")
    rec.add_windows(windows)
    blob = rec.to_blob()
    raw = len(json.dumps(rec.to_json(), separators=(",", ":")))
    half = T0 + seconds / 2
    decisions = [{"time": half, "step": 0, "weight": 10, "outcome": "pass", "reason": ""},
                 {"time": T0 + seconds + 0.5, "step": 1, "weight": 50, "outcome": "pass",
                  "reason": ""}]
    by_sec: dict[int, list] = {}
    for w in windows:
        by_sec.setdefault(int(w.start), []).append(w)
    live_t, replay_t = [], []
    for _ in range(args.runs):
        t = time.perf_counter()
        j = Judge(Analysis(), "web-r2", "web-r1")
        for sec in sorted(by_sec):
            j.add_windows(by_sec[sec])
            j.verdict(sec + 1.0)
        live_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        r = replay(Recording.from_blob(blob), Analysis(max_error_rate_increase=0.5), decisions)
        replay_t.append(time.perf_counter() - t)
        assert r.outcome == "pass"

    def mmm(xs: list[float]) -> str:
        return f"{min(xs):.3f} / {statistics.median(xs):.3f} / {max(xs):.3f} s"

    ratios = [r / a for r, a in zip(replay_t, live_t, strict=True)]
    print(f"| {args.minutes}-min rollout, {args.canary}+{args.baseline} req/s, {args.runs} runs"
          " | min / median / max |\n|---|---|")
    print(f"| judging it live at 1 look/s (anchor) | {mmm(live_t)} |")
    print(f"| `replay` from the stored blob | {mmm(replay_t)} |")
    print(f"| ratio replay / anchor | {min(ratios):.2f} / {statistics.median(ratios):.2f} / "
          f"{max(ratios):.2f} |")
    print(f"| evidence: windows, JSON, zlib blob | {len(rec.windows)}, {raw / 1e3:.0f} KB, "
          f"{len(blob) / 1e3:.0f} KB |")


if __name__ == "__main__":
    main()
