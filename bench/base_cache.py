"""Bench: a project's first `kiln bake` with an empty vs a warm shared base-environment cache.

The base environment (a venv from the Python running kiln, with pip) is the slow part of a first
bake. kiln keeps it in a cache shared between projects ($KILN_CACHE, else ~/.cache/kiln), keyed by
the interpreter, so a second project's first bake clones it instead of making it again (issue 11).
Each run uses a fresh, empty KILN_CACHE: project A's first bake is the cold one (the anchor),
then project B's (another folder, another name, its own empty .kiln) is the warm one. Both run
through the real console script. Results: a markdown table (min / median / max).

    .venv/bin/python bench/base_cache.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KILN = REPO / ".venv" / "bin" / "kiln"

SPEC = """project: {name}
images:
  web:
    steps:
      - copy: app.py
      - run: python -c "import app"
"""


def first_bake(folder: Path, name: str, cache: Path) -> float:
    folder.mkdir(parents=True)
    (folder / "kiln.yaml").write_text(SPEC.format(name=name))
    (folder / "app.py").write_text(f"NAME = {name!r}\n")
    env = {**os.environ, "KILN_CACHE": str(cache)}
    start = time.perf_counter()
    out = subprocess.run([str(KILN), "bake"], cwd=folder, env=env, capture_output=True,
                         text=True, check=False, timeout=600)
    took = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"kiln bake in {folder} failed: {(out.stderr or out.stdout)[-800:]}")
    return took


def spread(xs: list[float], unit: str = "s", digits: int = 2) -> str:
    return " / ".join(f"{x:.{digits}f}{unit}" for x in (min(xs), statistics.median(xs), max(xs)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    cold: list[float] = []
    warm: list[float] = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="kiln-bench-cache-") as tmp:
            work, cache = Path(tmp), Path(tmp) / "cache"
            cold.append(first_bake(work / "a", "bench-a", cache))
            warm.append(first_bake(work / "b", "bench-b", cache))
    ratios = [w / c for w, c in zip(warm, cold, strict=True)]
    print(f"runs: {args.runs}; min / median / max")
    print("| first bake of a project | time | vs empty cache |")
    print("|---|---|---|")
    print(f"| empty shared cache (anchor) | {spread(cold)} | 1.00x |")
    print(f"| warm shared cache (another project made it) | {spread(warm)} | "
          f"{spread(ratios, 'x')} |")


if __name__ == "__main__":
    main()
