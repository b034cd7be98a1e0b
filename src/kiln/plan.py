"""`kiln plan`: what `deploy` would do, without doing it (Terraform's plan)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kiln.errors import KilnError
from kiln.project import Project, config_digest
from kiln.rollout.executor import instances_of


def _known_bad(project: Project, name: str, digest: str, cfg: str) -> str | None:
    try:
        project.refuse_known_bad(name, digest, cfg)
    except KilnError as exc:
        return str(exc)
    return None


def plan(project: Project, services: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One item per service: create | replace | unchanged | resume | heal | refused, and why."""
    items: list[dict[str, Any]] = []
    names = list(services) if services else list(project.spec.services)
    resolve = getattr(project.builder, "resolve", None)
    resolved: dict[str, Any] = {}  # many services share an image: hash its inputs once
    for name in names:
        spec = project.service(name)
        img_spec = project.spec.images[spec.image]
        if spec.image not in resolved:
            resolved[spec.image] = resolve(spec.image, img_spec, base_dir=project.base_dir) \
                if resolve else None
        image = resolved[spec.image]
        current = project.current_release(name)
        cfg = config_digest(spec)
        open_row = project.store.one(
            "SELECT id, phase FROM rollouts WHERE service = ? AND phase NOT IN ('done') "
            "ORDER BY id DESC LIMIT 1", (name,))
        item: dict[str, Any] = {
            "service": name, "current": current.id if current else None,
            "image": spec.image, "image_digest": image.digest if image else None,
            "bake": "cached" if image else "needed", "strategy": spec.rollout.strategy,
            "replicas": spec.replicas,
        }
        if open_row is not None and open_row["phase"] != "standby":
            item.update(action="resume",
                        detail=f"rollout #{open_row['id']} was interrupted in {open_row['phase']}")
        elif current is None:
            item.update(action="create", detail=f"first release: {spec.replicas} instance(s), "
                                                f"live once healthy")
        elif image is not None and image.digest == current.image_digest \
                and cfg == current.config_digest:
            alive = sum(1 for o in project.compute.observe(instances_of(project.store, current.id))
                        if o.alive)
            if alive >= spec.replicas:
                item.update(action="unchanged", detail=f"{current.id} is up to date")
            else:
                item.update(action="heal", detail=(
                    f"{alive}/{spec.replicas} instances of {current.id} alive: launch "
                    f"{spec.replicas - alive} of the same image, health-gated, into rotation "
                    "(no new release, no canary)"))
        elif image is not None and _known_bad(project, name, image.digest, cfg):
            item.update(action="refused", detail=_known_bad(project, name, image.digest, cfg))
        else:
            why = []
            if image is None or image.digest != current.image_digest:
                why.append("image changed" if image else "image inputs changed (bake needed)")
            if cfg != current.config_digest:
                why.append("config changed")
            steps = ", ".join(f"{s.weight}%" for s in spec.rollout.steps)
            item.update(action="replace",
                        detail=f"{'; '.join(why)}: {spec.rollout.strategy} "
                               f"{current.id} -> new release"
                               + (f" via {steps}" if spec.rollout.strategy == "canary" else ""))
        items.append(item)
    return items
