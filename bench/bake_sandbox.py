"""Bench: a sandboxed local bake of the bundled example vs the same bake unsandboxed, same run.

The anchor is the path kiln keeps for hosts without user namespaces: the same kiln.yaml with
`sandbox: none` at the top (steps as plain processes). Both bake examples/shop (base venv, a
copy step, `pip install -r`, byte compilation) with `kiln bake --no-cache` through the real console
script, so every step runs (no step cache, no shared base); the two variants alternate, run by
run, so load on the shared machine hits both alike. Also timed: a no-op bake (all cached), which
never starts the sandbox. Results: bench/results/bake_sandbox-<time>.json and a markdown table.

    .venv/bin/python bench/bake_sandbox.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KILN = REPO / ".venv" / "bin" / "kiln"
RESULTS = REPO / "bench" / "results"
EXAMPLE = REPO / "examples" / "shop"


def make_project(folder: Path, unsandboxed: bool) -> None:
    shutil.copytree(EXAMPLE, folder)
    spec = folder / "kiln.yaml"
    text = spec.read_text().replace("project: shop", f"project: bakebox-bench-{folder.name}")
    spec.write_text(("sandbox: none\n" if unsandboxed else "") + text)


def bake(folder: Path, env: dict[str, str], *extra: str) -> float:
    start = time.perf_counter()
    out = subprocess.run([str(KILN), "bake", *extra], cwd=folder, env=env, capture_output=True,
                         text=True, check=False, timeout=600)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"kiln bake failed in {folder}: {(out.stderr or out.stdout)[-800:]}")
    return elapsed


def spread(values: list[float]) -> list[float]:
    return [min(values), statistics.median(values), max(values)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if not KILN.exists():
        print(f"missing {KILN}: run ./scripts/setup first", file=sys.stderr)
        return 2
    times: dict[str, list[float]] = {"sandboxed": [], "unsandboxed": []}
    noop: dict[str, list[float]] = {"sandboxed": [], "unsandboxed": []}
    with tempfile.TemporaryDirectory(prefix="kiln-bench-sandbox-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "KILN_CACHE": str(work / "cache")}
        folders = {"sandboxed": work / "boxed", "unsandboxed": work / "plain"}
        for mode, folder in folders.items():
            make_project(folder, unsandboxed=mode == "unsandboxed")
            bake(folder, env, "--no-cache")  # warm: page cache, pip's own byte code
        for i in range(args.runs):
            order = list(folders) if i % 2 == 0 else list(reversed(folders))
            for mode in order:
                times[mode].append(bake(folders[mode], env, "--no-cache"))
                noop[mode].append(bake(folders[mode], env))
    ratios = [b / p for b, p in zip(times["sandboxed"], times["unsandboxed"], strict=True)]
    result = {"runs": args.runs, "bake_no_cache": times, "bake_noop": noop,
              "ratio_per_run": ratios, "load": os.getloadavg()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"bake_sandbox-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    fmt = " / ".join
    print(f"| examples/shop, {args.runs} runs | min / median / max | vs unsandboxed |")
    print("|---|---|---|")
    for mode in ("unsandboxed", "sandboxed"):
        s = spread(times[mode])
        rel = spread([t / statistics.median(times["unsandboxed"]) for t in times[mode]])
        print(f"| `kiln bake --no-cache`, {mode} | {fmt(f'{v:.2f}' for v in s)} s | "
              f"{fmt(f'{v:.2f}x' for v in rel)} |")
    print(f"| ratio sandboxed / unsandboxed, run by run | "
          f"{fmt(f'{v:.2f}x' for v in spread(ratios))} | |")
    for mode in ("unsandboxed", "sandboxed"):
        s = spread(noop[mode])
        print(f"| `kiln bake` (all cached), {mode} | {fmt(f'{v:.3f}' for v in s)} s | |")
    print(f"\nload average {os.getloadavg()[0]:.1f}; results in {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
