"""Bench: no-op rebuild of a cached 10-step image, `kiln bake` vs `podman build`, same run.

Both tools get the same 10 steps (5 copies of small folders, 5 cheap shell commands), are warmed
once, then timed N times (median). kiln runs through its real console script (.venv/bin/kiln);
podman builds FROM a base image imported from a tiny rootfs tarball (dash + libc: no registry is
reachable here). Also timed: `kiln --version` (the CLI's fixed start-up cost) and the builder
alone in-process (no CLI). Results: bench/results/bake-<time>.json and a markdown table.

    .venv/bin/python bench/bake.py [--runs 7]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KILN = REPO / ".venv" / "bin" / "kiln"
RESULTS = REPO / "bench" / "results"
BASE_TAG = "localhost/kiln-bench-base:latest"
STEPS = 10


def write_part(folder: Path, i: int) -> None:
    """folder/part<i>: the 20 files (50 lines each) one copy step of the bench image copies."""
    src = folder / f"part{i}"
    src.mkdir(parents=True)
    for j in range(20):
        (src / f"f{j}.txt").write_text(f"part {i} file {j}\n" * 50)


def make_project(folder: Path) -> None:
    """kiln.yaml and the equivalent Containerfile over the same files."""
    yaml = ["project: benchbake", "images:", "  bench:", "    steps:"]
    containerfile = [f"FROM {BASE_TAG}", "WORKDIR /app"]
    for i in range(STEPS // 2):
        write_part(folder, i)
        yaml += [f"      - copy: part{i}/", f"        to: part{i}/",
                 f"      - run: echo step{i} > step{i}.txt"]
        containerfile += [f"COPY part{i}/ part{i}/", f"RUN echo step{i} > step{i}.txt"]
    (folder / "kiln.yaml").write_text("\n".join(yaml) + "\n")
    (folder / "Containerfile").write_text("\n".join(containerfile) + "\n")


def timed(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): "
                           f"{(out.stderr or out.stdout).strip()[-800:]}")
    return elapsed


def podman_base(work: Path) -> str | None:
    """Import a tiny rootfs (dash, echo via the shell, libc) as BASE_TAG; None if impossible."""
    if shutil.which("podman") is None:
        return "podman is not installed (run ./scripts/setup as root)"
    rootfs = work / "rootfs"
    files = ["/bin/dash"]
    libs = subprocess.run(["ldd", "/bin/dash"], capture_output=True, text=True, check=False)
    for line in libs.stdout.splitlines():
        parts = line.split()
        path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
        if path.startswith("/"):
            files.append(path)
    for f in files:
        real = Path(os.path.realpath(f))
        dest = rootfs / f.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(real, dest)
    (rootfs / "bin" / "sh").symlink_to("dash")
    for d in ("tmp", "app", "etc", "proc", "sys", "dev"):
        (rootfs / d).mkdir(exist_ok=True)
    tar = work / "rootfs.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(rootfs, arcname=".")
    try:
        timed(["podman", "import", str(tar), BASE_TAG], work)
    except RuntimeError as exc:
        return f"podman import failed: {exc}"
    return None


def in_process_noop(project: Path, home: Path) -> float:
    """The builder's own no-op time, without the CLI (a fresh interpreter, import excluded)."""
    code = (
        "import sys, time\nfrom pathlib import Path\n"
        "from kiln.platforms.local.builder import LocalBuilder\nfrom kiln.spec.loader import parse_spec\n"
        "from kiln.state.store import Store\n"
        "p = Path(sys.argv[1]); home = Path(sys.argv[2])\n"
        "spec = parse_spec((p / 'kiln.yaml').read_text())\nstore = Store.open(home)\n"
        "t = time.perf_counter()\n"
        "LocalBuilder(store, home).build('bench', spec.images['bench'], base_dir=p)\n"
        "print(time.perf_counter() - t)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(project), str(home)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip()[-800:])
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    if not KILN.exists():
        print(f"missing {KILN}: run the setup first", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="kiln-bench-bake-"))
    try:
        project = work / "project"
        make_project(project)
        home = project / ".kiln"
        env = {**os.environ, "KILN_HOME": str(home)}
        # This machine sets PYTHONDONTWRITEBYTECODE=1, so every CLI start compiles kiln and its
        # dependencies from source; a user's install has byte code. Time both.
        env_pyc = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
        t_cold = timed([str(KILN), "bake"], project, env)
        timed([str(KILN), "bake"], project, env_pyc)  # warm-up: writes the byte code
        why_not = podman_base(work)
        tag = "localhost/kiln-bench-image:latest"
        podman_cmd = ["podman", "build", "-q", "-t", tag, "-f", "Containerfile", "."]
        p_cold = None
        if why_not is None:
            try:
                p_cold = timed(podman_cmd, project)
            except RuntimeError as exc:
                why_not = str(exc)
        kiln_t, podman_t, version_t, inproc_t, pyc_t, pyc_version_t = [], [], [], [], [], []
        for _ in range(args.runs):  # interleaved so both see the same machine load
            kiln_t.append(timed([str(KILN), "bake"], project, env))
            version_t.append(timed([str(KILN), "--version"], project, env))
            inproc_t.append(in_process_noop(project, home))
            pyc_t.append(timed([str(KILN), "bake"], project, env_pyc))
            pyc_version_t.append(timed([str(KILN), "--version"], project, env_pyc))
            if why_not is None:
                podman_t.append(timed(podman_cmd, project))
        if why_not is None:
            subprocess.run(["podman", "rmi", "-f", tag], capture_output=True, check=False)
        med = statistics.median
        result = {
            "runs": args.runs, "steps": STEPS,
            "kiln_bake_noop_s": med(kiln_t), "kiln_version_s": med(version_t),
            "builder_noop_in_process_s": med(inproc_t), "kiln_bake_cold_s": t_cold,
            "kiln_bake_noop_with_bytecode_s": med(pyc_t),
            "kiln_version_with_bytecode_s": med(pyc_version_t),
            "pythondontwritebytecode": os.environ.get("PYTHONDONTWRITEBYTECODE"),
            "podman_build_noop_s": med(podman_t) if podman_t else None,
            "podman_build_cold_s": p_cold, "podman_unavailable": why_not,
            "ratio_podman_over_kiln": med(podman_t) / med(kiln_t) if podman_t else None,
            "ratio_podman_over_kiln_bytecode": med(podman_t) / med(pyc_t) if podman_t else None,
            "samples": {"kiln": kiln_t, "podman": podman_t, "version": version_t,
                        "in_process": inproc_t, "kiln_bytecode": pyc_t},
            "load_avg": os.getloadavg(), "time": time.time(),
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"bake-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"| no-op rebuild, {STEPS} cached steps (median of {args.runs}) | seconds |")
        print("|---|---|")
        print(f"| `kiln bake` (console script) | {med(kiln_t):.3f} |")
        print(f"| `kiln --version` (CLI start-up alone) | {med(version_t):.3f} |")
        print(f"| `kiln bake`, byte code cached | {med(pyc_t):.3f} |")
        print(f"| `kiln --version`, byte code cached | {med(pyc_version_t):.3f} |")
        print(f"| LocalBuilder.build in-process (no CLI, no import) | {med(inproc_t):.4f} |")
        if podman_t:
            print(f"| `podman build` (all layers cached) | {med(podman_t):.3f} |")
            print(f"| ratio podman / kiln | {med(podman_t) / med(kiln_t):.1f}x |")
            print(f"| ratio podman / kiln, byte code cached | {med(podman_t) / med(pyc_t):.1f}x |")
        else:
            print(f"| `podman build` | unavailable: {why_not} |")
        print(f"\ncold: kiln bake {t_cold:.1f}s"
              + (f", podman build {p_cold:.1f}s" if p_cold is not None else "")
              + f"; load average {os.getloadavg()[0]:.1f}; written to {out}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
