"""The `puppet` step: `puppet apply` inside the image being built.

The manifest's folder and each module folder are bind-mounted read-only into a buildah working
container, so they never land in a layer. Puppet comes from the image when the base asked for it
(`packages: [puppet]`); otherwise the step installs it from the Debian archive and purges it again
(with what it alone pulled in, its state and the package lists it fetched) before the commit, so
the image holds what the manifest made and nothing of Puppet itself.

`puppet apply --detailed-exitcodes` exits 0 (nothing to change), 2 (changes applied), 4
(failures), 6 (changes and failures) or 1 (the catalog did not compile): `outcome` maps them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kiln.bake.provisioners.inputs import Tree, project_path, trees_hash
from kiln.bake.provisioners.process import OnLine
from kiln.bake.provisioners.workcontainer import WorkContainer
from kiln.errors import BakeError
from kiln.spec.models import PuppetStep

MOUNT = "/kiln/puppet"
VARDIR = "/tmp/.kiln-puppet"
INSTALL_TIMEOUT = 900.0

# Install puppet (Debian: puppet-agent from bookworm on, puppet before) unless it is there, and
# note the packages it added. Exit 10: no apt-get in the image. Prints 'installed <pkg>
# <lists-fetched>' when it installed.
_INSTALL = r"""
command -v puppet >/dev/null 2>&1 && exit 0
command -v apt-get >/dev/null 2>&1 || exit 10
export DEBIAN_FRONTEND=noninteractive
fetched=0
if [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e '^lock$' -e '^partial$')" ]; then
  apt-get update -q || exit 11
  fetched=1
fi
pkg=puppet
apt-cache show puppet-agent >/dev/null 2>&1 && pkg=puppet-agent
dpkg-query -W -f '${Package}\n' | sort > /tmp/.kiln-puppet-before
apt-get install -y -q --no-install-recommends "$pkg" || exit 12
dpkg-query -W -f '${Package}\n' | sort | comm -13 /tmp/.kiln-puppet-before - > /tmp/.kiln-puppet-added
rm -f /tmp/.kiln-puppet-before
echo "installed $pkg $fetched"
"""

# Purge what the install added; a package the manifest's own packages now need stays (the
# simulated purge would take more than puppet brought).
_REMOVE = r"""
export DEBIAN_FRONTEND=noninteractive
added=/tmp/.kiln-puppet-added
apt-get purge -y -q --autoremove "$1" >/dev/null || exit 1
left=$(dpkg-query -W -f '${Package}\n' | sort | comm -12 "$added" -)
if [ -n "$left" ]; then
  extra=$(apt-get -s purge $left | awk '/^Purg /{print $2}' | sort | comm -23 - "$added")
  [ -z "$extra" ] && { apt-get purge -y -q $left >/dev/null || exit 1; }
fi
apt-get clean
[ "$2" = 1 ] && rm -rf /var/lib/apt/lists/*
rm -rf "$added" /var/cache/puppet /var/lib/puppet /etc/puppet /etc/puppetlabs /opt/puppetlabs
exit 0
"""

Outcome = Literal["unchanged", "changed", "failed"]


def outcome(code: int) -> Outcome:
    """Map `puppet apply --detailed-exitcodes`: 0 unchanged, 2 changed, anything else failed."""
    if code == 0:
        return "unchanged"
    if code == 2:
        return "changed"
    return "failed"


def describe_failure(code: int) -> str:
    return {1: "the catalog did not compile or apply could not run",
            4: "some resources failed", 6: "some resources failed (others changed)"}.get(
                code, f"puppet apply exited with code {code}")


@dataclass(frozen=True)
class Plan:
    step: PuppetStep
    manifest: Path
    mounts: list[tuple[Path, str, str]]
    """(host folder, mount point in the container, the user's name for it)."""
    inputs: str

    @property
    def manifest_in_container(self) -> str:
        root, target, _ = self.mounts[0]
        return f"{target}/{self.manifest.relative_to(root).as_posix()}".rstrip("/.")

    @property
    def modulepath(self) -> str:
        return ":".join(target for _, target, _ in self.mounts[1:])


def prepare(step: PuppetStep, base_dir: Path, where: str) -> Plan:
    """Check the step's files and hash its inputs (no container, no puppet run)."""
    spec = step.puppet
    manifest = (base_dir / spec.manifest).resolve()
    is_dir = manifest.is_dir()
    manifest = project_path(base_dir, spec.manifest, "manifest", where, folder=is_dir)
    folder = manifest if is_dir else manifest.parent
    base = base_dir.resolve()
    mounts = [(folder, f"{MOUNT}/manifests", _label(folder, base))]
    for i, rel in enumerate(spec.modulepath):
        path = project_path(base_dir, rel, "modulepath", where, folder=True)
        mounts.append((path, f"{MOUNT}/modules{i}", _label(path, base)))
    trees = [Tree(path, f"{target}={label}") for path, target, label in mounts]
    return Plan(step, manifest, mounts, trees_hash(trees))


def _label(path: Path, base: Path) -> str:
    return path.relative_to(base).as_posix() if path != base else "."


def apply(plan: Plan, wc: WorkContainer, *, on_line: OnLine, where: str) -> None:
    """Install puppet if needed, apply the manifest, remove what the step installed."""
    installed = _install(wc, on_line, where)
    argv = ["puppet", "apply", "--detailed-exitcodes", "--color=false", "--vardir",
            f"{VARDIR}/var", "--logdir", f"{VARDIR}/log", "--rundir", f"{VARDIR}/run"]
    if plan.modulepath:
        argv += ["--modulepath", plan.modulepath]
    argv.append(plan.manifest_in_container)
    volumes = [(path, target) for path, target, _ in plan.mounts]

    def line(text: str) -> None:
        if not _RUNTIME.search(text):  # buildah's note of exit 2, which is success here
            on_line(to_project_paths(text, plan.mounts))

    done = wc.run(argv, volumes=volumes, timeout=plan.step.puppet.timeout, on_line=line)
    wc.shell(f"rm -rf {VARDIR}", timeout=60)
    if done.code is None:
        raise BakeError(f"{where} timed out after {plan.step.puppet.timeout:g}s")
    if outcome(done.code) == "failed":
        error = first_error(done.tail, plan.mounts)
        raise BakeError(f"{where} failed: {error or describe_failure(done.code)} "
                        f"(puppet apply exit code {done.code})")
    if installed is not None:
        package, fetched = installed
        removed = wc.run(["/bin/sh", "-c", _REMOVE, "remove", package, fetched],
                         timeout=INSTALL_TIMEOUT, on_line=on_line)
        if removed.code != 0:
            raise BakeError(f"{where}: cannot remove the {package} it installed: "
                            + (removed.tail[-1] if removed.tail else f"exit {removed.code}"))


def _install(wc: WorkContainer, on_line: OnLine, where: str) -> tuple[str, str] | None:
    """(package, lists fetched '1'/'0') when the step installed puppet, None when it was there."""
    done = wc.run(["/bin/sh", "-c", _INSTALL], timeout=INSTALL_TIMEOUT, on_line=on_line)
    if done.code == 10:
        raise BakeError(f"{where}: puppet is not in the image and the image has no apt-get "
                        "to install it", hint="add puppet to the base's packages")
    if done.code != 0:
        last = next((t.strip() for t in reversed(done.tail) if t.strip()), "")
        raise BakeError(f"{where}: cannot install puppet from the Debian archive"
                        + (f": {last}" if last else f" (exit code {done.code})"),
                        hint="add puppet to the base's packages")
    for text in reversed(done.tail):
        parts = text.split()
        if len(parts) == 3 and parts[0] == "installed":
            return parts[1], parts[2]
    return None


# ---------------------------------------------------------------- output (pure)


def to_project_paths(line: str, mounts: list[tuple[Path, str, str]]) -> str:
    """Rewrite container paths of the mounted folders to the project's own names."""
    for _, target, label in mounts:
        line = line.replace(target + "/", ("" if label == "." else label + "/"))
    return line


_RUNTIME = re.compile(r"^(?:Error: )?while running runtime: exit status \d+$")
_NOT_PUPPETS = ("Failed to apply catalog", "while running runtime")
"""'Error:' lines that only repeat the failure (puppet's summary, buildah's exit status)."""
_ERROR = re.compile(r"^(?:\x1b\[[0-9;]*m)?Error:\s*(.*?)(?:\x1b\[0m)?$")


def first_error(lines: list[str], mounts: list[tuple[Path, str, str]]) -> str | None:
    """The first 'Error: ...' line of puppet's output, in the project's paths."""
    for line in lines:
        m = _ERROR.match(line.strip())
        if m and m.group(1) and not m.group(1).startswith(_NOT_PUPPETS):
            text = re.sub(r"\s+on node \S+$", "", m.group(1))
            return to_project_paths(text, mounts)
    return None
