"""Tags kiln puts on everything it creates, so every resource can be found, owned and swept.

`kiln:project` scopes a resource to one project; `kiln:role` says what it is for; a resource
without these tags is never modified or deleted by kiln (an ALB listener kiln does not own is
refused, not taken over).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PROJECT = "kiln:project"
ROLE = "kiln:role"  # builder | image | alb | fleet | release
SERVICE = "kiln:service"
RELEASE = "kiln:release"
IMAGE = "kiln:image"
INPUT_KEY = "kiln:input-key"
BAKE = "kiln:bake"  # the id of one bake attempt, on its temporary resources


def tags(project: str, role: str, extra: Mapping[str, str] | None = None,
         **kiln: str) -> dict[str, str]:
    """User tags first, kiln's own last (they win)."""
    out = dict(extra or {})
    out[PROJECT] = project
    out[ROLE] = role
    for key, value in kiln.items():
        out[f"kiln:{key.replace('_', '-')}"] = value
    return out


def as_list(t: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in t.items()]


def spec(resource: str, t: Mapping[str, str]) -> dict[str, Any]:
    """One TagSpecifications entry."""
    return {"ResourceType": resource, "Tags": as_list(t)}


def from_list(items: list[dict[str, str]] | None) -> dict[str, str]:
    return {i["Key"]: i["Value"] for i in items or []}


def filters(project: str, **kiln: str) -> list[dict[str, Any]]:
    """EC2 filters selecting a project's resources (and more kiln: tags when given)."""
    out = [{"Name": f"tag:{PROJECT}", "Values": [project]}]
    for key, value in kiln.items():
        out.append({"Name": f"tag:kiln:{key.replace('_', '-')}", "Values": [value]})
    return out
