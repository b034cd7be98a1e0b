"""Configuration-management steps (`ansible`, `puppet`) for builders of OS images.

A builder uses them in two moves, like any cached step:
- `prepare(step, base_dir, where)` checks the step's files and hashes what it reads; its
  `inputs` go into the step's cache key (with `definition(step)`), so an unchanged tree reuses the
  layer and a changed role file reruns this step and the ones after it;
- `provision(prepared, image=..., tag=...)` applies it to `image` in a buildah working container
  and commits the result as `tag`, returning the new image's id.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from kiln.bake import steps
from kiln.bake.provisioners import ansible, puppet
from kiln.bake.provisioners.process import OnLine
from kiln.bake.provisioners.workcontainer import WorkContainer
from kiln.spec.models import AnsibleStep, PuppetStep

ProvisionerStep = AnsibleStep | PuppetStep


def is_provisioner(step: object) -> TypeGuard[ProvisionerStep]:
    return isinstance(step, AnsibleStep | PuppetStep)


def describe(step: ProvisionerStep) -> str:
    return steps.describe(step)


def definition(step: ProvisionerStep) -> dict[str, Any]:
    """What shapes the step's output: its settings and variables, not its timeout."""
    data: dict[str, Any] = step.model_dump(mode="json", by_alias=True)
    for spec in data.values():
        spec.pop("timeout", None)
    data["kind"] = type(step).__name__
    return data


@dataclass(frozen=True)
class Prepared:
    plan: ansible.Plan | puppet.Plan
    where: str

    @property
    def inputs(self) -> str:
        """Hash of every file the step reads (goes into its cache key)."""
        return self.plan.inputs


def prepare(step: ProvisionerStep, base_dir: Path, where: str) -> Prepared:
    """Check that the step's files exist inside the project and hash them."""
    if isinstance(step, AnsibleStep):
        return Prepared(ansible.prepare(step, base_dir, where), where)
    return Prepared(puppet.prepare(step, base_dir, where), where)


def provision(prepared: Prepared, *, image: str, tag: str, on_line: OnLine | None = None) -> str:
    """Apply the step to `image`, commit the result as `tag`; the new image's id.

    Raises BakeError (one line: the failed task or resource, where, and its message); the
    working container is removed either way.
    """
    emit = on_line or (lambda _l: None)
    with WorkContainer.open(image) as wc:
        if isinstance(prepared.plan, ansible.Plan):
            ansible.apply(prepared.plan, wc, on_line=emit, where=prepared.where)
        else:
            puppet.apply(prepared.plan, wc, on_line=emit, where=prepared.where)
        return wc.commit(tag)


__all__ = ["Prepared", "ProvisionerStep", "definition", "describe", "is_provisioner", "prepare",
           "provision"]
