"""`base: {debian: SUITE, packages: [...]}`: a minbase root file system from the Debian archive.

mmdebstrap builds it (through the machine's apt sources: no registry needed) into a tarball that
`podman import` turns into an image tagged by the hash of its inputs, so it is built once per
machine and every later bake finds it by tag.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from kiln.errors import BakeError
from kiln.platforms.podman import engine
from kiln.spec.podman import DebianBase

REPO = "localhost/kiln-base/debian"
VARIANT = "minbase"
TIMEOUT = 1800.0


def inputs(base: DebianBase) -> dict[str, object]:
    """What the root file system is made of (the archive's content on the day aside)."""
    return {"suite": base.debian, "variant": VARIANT, "packages": sorted(set(base.packages))}


def tag(base: DebianBase) -> str:
    blob = json.dumps(inputs(base), sort_keys=True).encode()
    return f"{REPO}:{base.debian}-{hashlib.sha256(blob).hexdigest()[:16]}"


def ensure(base: DebianBase, work: Path, say: Callable[[str], None] | None = None) -> str:
    """The image id of the base, building and importing it first if podman does not have it."""
    ref = tag(base)
    found = engine.image_id(ref)
    if found is not None:
        return found
    tool = shutil.which("mmdebstrap")
    if tool is None:
        raise BakeError("base: {debian: ...} needs mmdebstrap, which is not installed",
                        hint="apt-get install mmdebstrap (./scripts/setup does it)")
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="debian-", dir=work) as tmp:
        tarball = Path(tmp) / "rootfs.tar"
        argv = [tool, f"--variant={VARIANT}", "--quiet"]
        if base.packages:
            argv.append("--include=" + ",".join(sorted(set(base.packages))))
        argv += [base.debian, str(tarball)]
        if say:
            say(f"building Debian {base.debian} ({VARIANT}"
                + (f" + {', '.join(sorted(set(base.packages)))}" if base.packages else "")
                + ") with mmdebstrap")
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise BakeError(f"base debian {base.debian}: mmdebstrap did not finish within "
                            f"{TIMEOUT:g}s") from exc
        if proc.returncode != 0:
            raise BakeError(f"base debian {base.debian}: mmdebstrap failed: "
                            f"{_reason(proc.stderr)}",
                            hint="check the suite name, the package names and the machine's "
                                 "apt sources")
        engine.run(["import", "--change", f"LABEL kiln.base={json.dumps(inputs(base))}",
                    "--change", 'CMD ["/bin/sh"]', str(tarball), ref],
                   timeout=600.0, what=f"podman import of Debian {base.debian}")
    found = engine.image_id(ref)
    if found is None:
        raise BakeError(f"base debian {base.debian}: podman import left no image {ref}")
    return found


def _reason(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("E:", "mmdebstrap:", "Error"))]
    return (errors or lines or ["no message"])[-1][:300]
