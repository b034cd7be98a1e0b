"""Bench: Ansible and Puppet steps on podman, cached like any step.

1. No-op rebake of an image with an `ansible` and a `puppet` step vs a shell-only image of the
   same size (same base, same number of steps, the same files written), same run, interleaved:
   the ratio says what a provisioner step costs once cached (the goal: as fast as any step).
2. Cold bake (`kiln bake --no-cache`: every step reruns; the shared Debian base is built once per
   machine and not counted) of each example, examples/ansible-greeter and examples/puppet-greeter.

Everything goes through the real console script (.venv/bin/kiln) on the shared Debian base of
the podman tests. Results: bench/results/provision-<time>.json and a markdown table.

    .venv/bin/python bench/provision.py [--runs 7] [--cold-runs 1]
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
BASE = "{debian: bookworm, packages: [python3, python-is-python3]}"
"""The podman tests' shared base (kiln.testing.podman.BASE): built once per machine."""

PROVISIONED = """\
project: bench-prov
platform: podman
images:
  img:
    base: BASE
    steps:
      - copy: app/
        to: app/
      - ansible: {playbook: bake/site.yml, extra_vars: {word: ansible}}
      - puppet: {manifest: bake/site.pp}
      - run: cat /etc/bench-ansible /etc/bench-puppet
"""
SHELL_ONLY = """\
project: bench-shell
platform: podman
images:
  img:
    base: BASE
    steps:
      - copy: app/
        to: app/
      - run: printf 'ansible\\n' > /etc/bench-ansible && chmod 0640 /etc/bench-ansible
      - run: printf 'puppet\\n' > /etc/bench-puppet && chmod 0640 /etc/bench-puppet
      - run: cat /etc/bench-ansible /etc/bench-puppet
"""
PLAYBOOK = """\
- hosts: all
  gather_facts: false
  tasks:
    - name: one file
      ansible.builtin.copy: {dest: /etc/bench-ansible, content: "{{ word }}\\n", mode: "0640"}
"""
MANIFEST = "file { '/etc/bench-puppet': ensure => file, mode => '0640', content => \"puppet\\n\" }\n"


def make(folder: Path, spec: str) -> Path:
    (folder / "app").mkdir(parents=True)
    for i in range(20):
        (folder / "app" / f"f{i}.txt").write_text(f"file {i}\n" * 100)
    (folder / "bake").mkdir()
    (folder / "bake" / "site.yml").write_text(PLAYBOOK)
    (folder / "bake" / "site.pp").write_text(MANIFEST)
    (folder / "kiln.yaml").write_text(spec.replace("BASE", BASE))
    return folder


def timed(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    out = subprocess.run([str(KILN), *args], cwd=cwd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"kiln {' '.join(args)} in {cwd} failed ({out.returncode}): "
                           f"{(out.stderr or out.stdout).strip()[-800:]}")
    return elapsed


def example(work: Path, name: str) -> Path:
    folder = work / name
    shutil.copytree(REPO / "examples" / name, folder,
                    ignore=shutil.ignore_patterns(".kiln", "__pycache__"))
    return folder


def spread(samples: list[float]) -> str:
    return (f"{statistics.median(samples):.3f} "
            f"({min(samples):.3f}-{max(samples):.3f})")


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--cold-runs", type=int, default=1)
    args = ap.parse_args()
    if not KILN.exists() or shutil.which("podman") is None:
        print("needs .venv/bin/kiln and podman: run ./scripts/setup as root", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="kiln-bench-provision-"))
    projects: list[Path] = []
    try:
        prov = make(work / "provisioned", PROVISIONED)
        shell = make(work / "shell", SHELL_ONLY)
        projects += [prov, shell]
        first = {"provisioned": timed(["bake"], prov), "shell": timed(["bake"], shell)}
        timed(["bake"], prov)  # warm-up of the no-op path
        timed(["bake"], shell)
        noop: dict[str, list[float]] = {"provisioned": [], "shell": []}
        for _ in range(args.runs):  # interleaved: both see the same machine load
            noop["provisioned"].append(timed(["bake"], prov))
            noop["shell"].append(timed(["bake"], shell))
        cold: dict[str, list[float]] = {}
        for name in ("ansible-greeter", "puppet-greeter"):
            folder = example(work, name)
            projects.append(folder)
            cold[name] = [timed(["bake", "--no-cache"], folder) for _ in range(args.cold_runs)]
        med = statistics.median
        ratio = med(noop["provisioned"]) / med(noop["shell"])
        result = {
            "runs": args.runs, "cold_runs": args.cold_runs,
            "noop_provisioned_s": med(noop["provisioned"]), "noop_shell_s": med(noop["shell"]),
            "ratio_provisioned_over_shell": ratio,
            "first_bake_s": first,
            "cold_bake_s": {k: med(v) for k, v in cold.items()},
            "samples": {"noop": noop, "cold": cold},
            "load_avg": os.getloadavg(), "time": time.time(),
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"provision-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"| what (median, min-max of {args.runs} no-op runs) | seconds |")
        print("|---|---|")
        print(f"| no-op `kiln bake`, 4 steps incl. `ansible` + `puppet` | "
              f"{spread(noop['provisioned'])} |")
        print(f"| no-op `kiln bake`, 4 shell steps writing the same files | "
              f"{spread(noop['shell'])} |")
        print(f"| ratio provisioned / shell-only | {ratio:.2f} |")
        for name, samples in cold.items():
            print(f"| cold `kiln bake --no-cache` of examples/{name} "
                  f"({args.cold_runs} run{'s' if args.cold_runs > 1 else ''}) | "
                  f"{spread(samples)} |")
        print(f"\nfirst bakes: provisioned {first['provisioned']:.1f}s, "
              f"shell-only {first['shell']:.1f}s; load {os.getloadavg()[0]:.2f}; {out}")
        return 0
    finally:
        for folder in projects:
            subprocess.run([str(KILN), "destroy"], cwd=folder, capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
