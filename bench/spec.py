"""Spec loading at scale: `kiln validate` and `kiln plan` of 200 services x 5 replicas, and
`kiln validate` of a 4 MB spec, CLI start-up included; each against anchors from the same run.

Anchors: `kiln --version` (the CLI's fixed start-up cost) and ruamel.yaml's round-trip load of
the same text (what the loader used before; it alone took ~1.9 s for 200 services). Targets:
validate and plan <= 0.3 s, the 4 MB spec <= 1 s. Every figure is min / median / max of N runs.

    .venv/bin/python bench/spec.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KILN = str(Path(sys.executable).parent / "kiln")

HEAD = """\
project: big
images:
  web:
    base: python
    steps:
      - copy: app/
        to: app/
      - run: pip install -r app/requirements.txt
    tests:
      - http: {path: /healthz, status: 200}
services:
"""

SERVICE = """\
  svc-{i}:
    image: web
    command: python -m app
    port: 8000
    listen: 127.0.0.1:{port}
    replicas: 5
    env:
      GREETING: hello
      INDEX: '{i}'
    health: {{path: /healthz, interval: 1s, timeout: 1s}}
    rollout:
      strategy: canary
      steps:
        - {{weight: 10, pause: 30s}}
        - {{weight: 50, pause: 30s}}
      analysis:
        max_error_rate_increase: 0.01
        max_latency_increase: 25%
        min_requests: 100
        on_no_data: pause
"""


def spec_text(services: int) -> str:
    return HEAD + "".join(SERVICE.format(i=i, port=10000 + i % 50000) for i in range(services))


def project(folder: Path, services: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "app").mkdir()
    (folder / "app" / "requirements.txt").write_text("")
    (folder / "kiln.yaml").write_text(spec_text(services))
    return folder


CPU: dict[str, list[float]] = {}
"""CPU seconds (user + system) of each timed command: less disturbed by a busy machine."""


def timed(args: list[str], cwd: Path, label: str = "") -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    res = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)
    took = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {res.stderr.strip()[:300]}")
    if label:
        CPU.setdefault(label, []).append(after.ru_utime - before.ru_utime
                                         + after.ru_stime - before.ru_stime)
    return took


def ruamel_load(path: Path) -> float:
    code = ("import time,sys; from ruamel.yaml import YAML; t=sys.argv[1]; "
            "s=time.perf_counter(); YAML(typ='rt').load(open(t).read()); "
            "print(time.perf_counter()-s)")
    res = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, timeout=600, check=True)
    return float(res.stdout)


def spread(values: list[float]) -> str:
    return f"{min(values):.3f} / {statistics.median(values):.3f} / {max(values):.3f} s"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    env_note = "PYTHONDONTWRITEBYTECODE" in os.environ
    with tempfile.TemporaryDirectory() as tmp:
        small = project(Path(tmp) / "s200", 200)
        big = project(Path(tmp) / "s4m", 8000)
        size = (big / "kiln.yaml").stat().st_size
        # warm-up: page cache, and byte code written once (this machine sets
        # PYTHONDONTWRITEBYTECODE=1, which would recompile kiln's modules at every start)
        subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0",
                        str(Path(__file__).resolve().parents[1] / "src")], check=True,
                       capture_output=True)
        for cwd in (small, big):
            timed([KILN, "validate"], cwd)
        rows: dict[str, list[float]] = {k: [] for k in (
            "kiln --version", "kiln validate (200 x 5)", "kiln plan (200 x 5)",
            f"kiln validate ({size / 1e6:.1f} MB, 8000 services)",
            "ruamel round-trip load (200 x 5, anchor)")}
        big_name = f"kiln validate ({size / 1e6:.1f} MB, 8000 services)"
        for _ in range(args.runs):  # interleaved
            for name, argv, cwd in (("kiln --version", [KILN, "--version"], small),
                                    ("kiln validate (200 x 5)", [KILN, "validate"], small),
                                    ("kiln plan (200 x 5)", [KILN, "plan"], small),
                                    (big_name, [KILN, "validate"], big)):
                rows[name].append(timed(argv, cwd, name))
            rows["ruamel round-trip load (200 x 5, anchor)"].append(
                ruamel_load(small / "kiln.yaml"))
    print(f"Spec loading, min / median / max of {args.runs} runs, {os.cpu_count()} CPUs"
          + (" (PYTHONDONTWRITEBYTECODE set)" if env_note else "") + "\n")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}\n")
    print("| what | wall seconds | CPU seconds (user + sys) |\n|---|---|---|")
    for name, vals in rows.items():
        cpu = spread(CPU[name]) if name in CPU else "-"
        print(f"| {name} | {spread(vals)} | {cpu} |")
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"\n| ratio | value |\n|---|---|\n| validate / ruamel load alone | "
          f"{med['kiln validate (200 x 5)'] / med['ruamel round-trip load (200 x 5, anchor)']:.2f}x |"
          f"\n| validate / kiln --version | "
          f"{med['kiln validate (200 x 5)'] / med['kiln --version']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
