"""Bench: `podman stop` of a service whose app drains for 0.5 s on SIGTERM, by how kiln runs its
command, each against the anchor measured in the same run (a simple command, exec'd).

1. simple:   `python3 -c APP` as `sh -c 'exec ...'` (the anchor: catatonit signals the app)
2. as-written: `cd /tmp && python3 -c APP` as plain `sh -c` (kiln before the fix: dash dies of
   SIGTERM, catatonit ends the container, the app is SIGKILLed without draining)
3. group:    the same compound command as kiln runs it now (`container_command`: a second
   catatonit with -g signals the shell's process group)

Interleaved, N runs each, `podman stop -t 10`; min/median/max seconds, the ratio of medians to
the anchor, and how many runs the app drained (its last log line).

    .venv/bin/python bench/podman_stop.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from kiln.platforms.podman.compute import container_command
from kiln.testing.podman import ensure_base, unusable
from kiln.testing.project import wait_for

APP = ("import signal, sys, time\n"
       "def term(*_):\n"
       "    time.sleep(0.5); print('drained', flush=True); sys.exit(0)\n"
       "signal.signal(signal.SIGTERM, term)\n"
       "print('up', flush=True)\n"
       "time.sleep(3600)\n")
VARIANTS = {
    "simple": ["/bin/sh", "-c", 'exec python3 -c "$APP"'],
    "as-written": ["/bin/sh", "-c", 'cd /tmp && python3 -c "$APP"'],
    "group": container_command('cd /tmp && python3 -c "$APP"'),
}


def podman(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=120)


def one(base: str, argv: list[str]) -> tuple[float, bool]:
    """Seconds `podman stop -t 10` took, and whether the app drained."""
    name = f"kiln-bench-stop-{uuid.uuid4().hex[:8]}"
    try:
        podman("run", "-d", "--name", name, "--init", "--user", "65534:65534", "--read-only",
               "--log-driver", "k8s-file", "-e", f"APP={APP}", base, *argv).check_returncode()
        wait_for(lambda: "up" in podman("logs", name).stdout, timeout=30,
                 what=f"{name} started")
        began = time.monotonic()
        podman("stop", "-t", "10", name).check_returncode()
        took = time.monotonic() - began
        return took, "drained" in podman("logs", name).stdout
    finally:
        podman("rm", "-f", "-t", "0", name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    reason = unusable()
    if reason:
        print(f"skipped: {reason}")
        return 0
    base = ensure_base(Path(tempfile.mkdtemp(prefix="kiln-bench-")))
    times: dict[str, list[float]] = {k: [] for k in VARIANTS}
    drained = dict.fromkeys(VARIANTS, 0)
    for _ in range(args.runs):
        for key, argv in VARIANTS.items():
            took, ok = one(base, argv)
            times[key].append(took)
            drained[key] += ok
    anchor = statistics.median(times["simple"])
    print("| command | stop s median (min-max) | vs simple | drained |")
    print("|---|---|---|---|")
    for key, xs in times.items():
        med = statistics.median(xs)
        print(f"| {key} | {med:.2f} ({min(xs):.2f}-{max(xs):.2f}) | {med / anchor:.2f}x "
              f"| {drained[key]}/{args.runs} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
