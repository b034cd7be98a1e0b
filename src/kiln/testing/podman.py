"""Podman for tests, benchmarks and demos: is it usable here, the shared Debian base (built once
per machine, found by its tag afterwards), a throwaway copy of the podman-shop example, and a
teardown that removes every container a project left behind."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path

from kiln.platforms.podman import debian_base, images
from kiln.spec.podman import DebianBase
from kiln.testing.project import ROOT, Proj, free_port, teardown

EXAMPLE = ROOT / "examples" / "podman-shop"
BASE = DebianBase(debian="bookworm", packages=["python3", "python-is-python3"])
"""The base of the podman-shop example; tests and benchmarks use the same one (one build)."""


def unusable() -> str | None:
    """Why podman cannot run containers here, or None when it can."""
    podman = shutil.which("podman")
    if podman is None:
        return "podman is not installed (./scripts/setup installs it)"
    try:
        proc = subprocess.run([podman, "info", "--format", "{{.Host.OCIRuntime.Name}}"],
                              capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "podman info did not answer within 60s"
    if proc.returncode != 0:
        return f"podman info failed: {proc.stderr.strip()[-200:]}"
    return None


def ensure_base(work: Path) -> str:
    """The id of the shared Debian base image (mmdebstrap + podman import the first time)."""
    return debian_base.ensure(BASE, work)


def remove_containers(name_prefix: str) -> None:
    """`podman rm -f` every container whose name starts with `name_prefix`."""
    podman = shutil.which("podman")
    if podman is None:
        return
    proc = subprocess.run([podman, "ps", "-a", "--format", "{{.Names}}"], capture_output=True,
                          text=True, timeout=60)
    names = [n for n in proc.stdout.split() if n.startswith(name_prefix)]
    if names:
        subprocess.run([podman, "rm", "-f", "-t", "0", *names], capture_output=True, timeout=120)


def remove_images(project: str, name: str) -> None:
    """Take the project's image `name` out of podman's storage: every tag the podman builder
    gave it (bakes and step cache), then the untagged bakes a --no-cache rebuild left (its label).
    By tag and without --force, so an image another name or a container still uses stays.

    The untagged layers under them are podman's to reclaim: `podman rmi` deletes a parent that
    is left dangling with no other child, and only then. Never by id here: podman 4 deletes an
    untagged parent by id even when another image is built on it, and the layers above the
    shared base (`FROM base` + `WORKDIR`) are shared by every project baked from it, so that
    broke another project's layer cache (a concurrent test's rebake reran its cached steps)."""
    podman = shutil.which("podman")
    if podman is None:
        return
    repos = {images.image_repository(project, name), images.step_repository(project, name)}
    proc = subprocess.run([podman, "images", "-a", "--format", "json"], capture_output=True,
                          text=True, timeout=120)
    listing = json.loads(proc.stdout or "[]") if proc.returncode == 0 else []
    by_id = {str(i["Id"]): i for i in listing if isinstance(i, dict) and "Id" in i}
    tags = [str(n) for i in by_id.values() for n in i.get("Names") or []
            if str(n).rpartition(":")[0] in repos]
    parents = {str(i.get("ParentId") or "") for i in by_id.values()}
    untagged = [ident for ident, i in by_id.items()
                if not i.get("Names") and ident not in parents
                and (i.get("Labels") or {}).get("kiln.image") == name]
    if tags:
        subprocess.run([podman, "rmi", *tags], capture_output=True, timeout=120)
    for ident in untagged:
        subprocess.run([podman, "rmi", ident], capture_output=True, timeout=120)


def make_project(parent: Path, *, rollout: str | None = None, replicas: int = 3) -> Proj:
    """A copy of examples/podman-shop under `parent` on a free listen port; `rollout` replaces
    the example's rollout block (YAML indented for `services.web.rollout`)."""
    folder = parent / "podman-shop"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns(".kiln", "__pycache__"))
    p = Proj(folder, free_port())
    text = (folder / "kiln.yaml").read_text()
    text = re.sub(r"listen: 127\.0\.0\.1:\d+", f"listen: {p.listen}", text)
    text = re.sub(r"replicas: \d+", f"replicas: {replicas}", text)
    # Unique per call: podman's containers, networks and images are machine-wide and named
    # after the project, and two runs (or xdist workers) may hold tests of the same name.
    stem = parent.name[:13].lower().replace("_", "-").rstrip("-")
    text = text.replace("project: podman-shop", f"project: {stem}-{uuid.uuid4().hex[:6]}")
    if rollout is not None:
        text = text[:text.index("    rollout:\n")] + "    rollout:\n" + rollout
    (folder / "kiln.yaml").write_text(text)
    return p


def teardown_project(p: Proj) -> None:
    """`kiln destroy`, then remove whatever containers of the project are left."""
    teardown(p)
    with contextlib.suppress(Exception):
        remove_containers(f"kiln-{project_name(p)}-")


def project_networks(p: Proj) -> list[str]:
    """The podman networks still named after the project (none once it is destroyed)."""
    podman = shutil.which("podman")
    if podman is None:
        return []
    proc = subprocess.run([podman, "network", "ls", "--format", "{{.Name}}"],
                          capture_output=True, text=True, timeout=60)
    return [n for n in proc.stdout.split() if n.startswith(f"kiln-{project_name(p)}-")]


def project_name(p: Proj) -> str:
    m = re.search(r"^project: (\S+)", (p.dir / "kiln.yaml").read_text(), re.M)
    return m.group(1) if m else ""
