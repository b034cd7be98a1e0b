"""`ansible` and `puppet` steps on an AWS builder: their trees travel to the builder inside the
step's SSM command (base64 tar chunks, as copy steps do: no bucket to create, own, or leak) and
run there against the builder itself (`ansible-playbook -c local`, `puppet apply
--detailed-exitcodes`), then the trees are deleted. The step's cache key hashes the same trees
as on podman (the playbook's folder and role folders; the manifest's folder and module folders),
so a changed role file rebakes and an unchanged tree reuses the AMI.

The builder must have ansible-playbook / puppet installed (a `run:` step before, or the base
AMI): kiln does not install configuration-management tools on the image it bakes.
"""

from __future__ import annotations

import base64
import io
import json
import shlex
import tarfile
from dataclasses import dataclass
from pathlib import Path

from kiln.bake import steps
from kiln.bake.hashing import iter_files
from kiln.bake.provisioners import puppet
from kiln.bake.provisioners.inputs import Tree, project_path, trees_hash
from kiln.spec.models import AnsibleStep, PuppetStep

CHUNK = 48_000


@dataclass(frozen=True)
class Provision:
    step: AnsibleStep | PuppetStep
    trees: tuple[tuple[Path, str], ...]
    """(local folder, its folder name on the builder under the step's work folder)."""
    entry: str
    """The playbook or manifest, relative to the first tree."""
    inputs: str


def prepare(step: AnsibleStep | PuppetStep, base_dir: Path, where: str) -> Provision:
    """Check the step's files (inside the project) and hash them, as podman's builder does."""
    if isinstance(step, PuppetStep):
        plan = puppet.prepare(step, base_dir, where)
        trees = [(path, "manifests" if i == 0 else f"modules{i - 1}")
                 for i, (path, _, _) in enumerate(plan.mounts)]
        folder = plan.mounts[0][0]
        entry = plan.manifest.relative_to(folder).as_posix() if plan.manifest != folder else "."
        return Provision(step, tuple(trees), entry, plan.inputs)
    spec = step.ansible
    playbook = project_path(base_dir, spec.playbook, "playbook", where, folder=False)
    roles = [project_path(base_dir, rel, "roles_path", where, folder=True)
             for rel in spec.roles_path]
    labelled = [Tree(playbook.parent, "playbook-dir"),
                *(Tree(p, f"roles:{rel}") for p, rel in zip(roles, spec.roles_path, strict=True))]
    trees = [(playbook.parent, "playbook"), *((p, f"roles{i}") for i, p in enumerate(roles))]
    return Provision(step, tuple(trees), playbook.name, trees_hash(labelled))


def _tar(folder: Path) -> str:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for rel, path in iter_files(folder, steps.skip_name):
            tar.add(path, arcname=rel, recursive=False)
    return base64.b64encode(buf.getvalue()).decode()


def commands(index: int, p: Provision, env: dict[str, str]) -> list[str]:
    """The SSM command lines of the step: unpack the trees, run, clean up (also on failure)."""
    work = f"/tmp/kiln-prov-{index}"
    lines = ["set -e", f"rm -rf {work}", f"mkdir -p {work}",
             f"trap 'rm -rf {work}' EXIT"]
    for folder, name in p.trees:
        data = _tar(folder)
        b64 = f"{work}/{name}.b64"
        lines += [f"printf %s {shlex.quote(data[i:i + CHUNK])} >> {b64}"
                  for i in range(0, len(data), CHUNK)]
        lines += [f"mkdir -p {work}/{name}", f"base64 -d {b64} | tar -xzf - -C {work}/{name}",
                  f"rm -f {b64}"]
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    prefix = f"env {exports} " if exports else ""
    if isinstance(p.step, AnsibleStep):
        spec = p.step.ansible
        roles = ":".join([f"{work}/playbook/roles",
                          *(f"{work}/{name}" for _, name in p.trees[1:])])
        argv = ["ansible-playbook", "-i", "localhost,", "-c", "local"]
        if spec.extra_vars:
            vars_b64 = base64.b64encode(json.dumps(spec.extra_vars).encode()).decode()
            lines.append(f"printf %s {vars_b64} | base64 -d > {work}/extra-vars.json")
            argv += ["-e", f"@{work}/extra-vars.json"]
        argv.append(p.entry)
        lines += [_need("ansible-playbook"), f"cd {work}/playbook",
                  f"{prefix}ANSIBLE_ROLES_PATH={shlex.quote(roles)} ANSIBLE_NOCOLOR=1 "
                  f"ANSIBLE_RETRY_FILES_ENABLED=0 {shlex.join(argv)}"]
        return lines
    modules = ":".join(f"{work}/{name}" for _, name in p.trees[1:])
    manifest = f"{work}/manifests" + ("" if p.entry == "." else f"/{p.entry}")
    argv = ["puppet", "apply", "--detailed-exitcodes", "--color=false"]
    if modules:
        argv += ["--modulepath", modules]
    argv.append(manifest)
    # --detailed-exitcodes: 0 nothing changed, 2 changes applied; 4 and 6 mean failures.
    lines += [_need("puppet"), "set +e", f"{prefix}{shlex.join(argv)}", "rc=$?", "set -e",
              'if [ "$rc" -eq 0 ] || [ "$rc" -eq 2 ]; then exit 0; fi',
              'echo "puppet apply failed (detailed exit code $rc)" >&2', 'exit "$rc"']
    return lines


def _need(tool: str) -> str:
    return (f"command -v {tool} >/dev/null || {{ echo '{tool} is not installed on the builder "
            f"(install it in a run: step before this one, or use a base AMI that has it)' >&2; "
            "exit 127; }")
