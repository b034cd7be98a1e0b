"""`kiln plan`: what `deploy` would do, without doing it (Terraform's plan)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kiln.bake.hashing import iter_files
from kiln.bake.steps import skip_name
from kiln.errors import KilnError
from kiln.project import Project, config_digest
from kiln.rollout.executor import instances_of
from kiln.rollout.release_config import same_config
from kiln.spec.models import CopyStep, ServiceSpec


def _known_bad(project: Project, name: str, digest: str, cfg: str) -> str | None:
    try:
        project.refuse_known_bad(name, digest, cfg)
    except KilnError as exc:
        return str(exc)
    return None


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): data}


def changed_keys(project: Project, release_id: str, spec: ServiceSpec) -> list[str]:
    """Spec keys that differ from the running release's (`replicas: 2 -> 3`, `env.GREETING`).
    Secret values are never shown, only their names."""
    row = project.store.one("SELECT config_json FROM releases WHERE id = ?", (release_id,))
    if row is None:
        return []
    old = _flat({k: v for k, v in json.loads(row["config_json"]).items() if k != "rollout"})
    new = _flat(spec.model_dump(mode="json", by_alias=True, exclude={"rollout"}))
    out = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            short = len(repr(old.get(key))) + len(repr(new.get(key))) < 60
            out.append(f"{key}: {old.get(key, '-')} -> {new.get(key, '-')}"
                       if short and not key.startswith(("env.", "secrets.")) else key)
    return out


def changed_files(project: Project, image_name: str, digest: str, limit: int = 50) -> list[str]:
    """Files of the image's copy steps that differ from the running image's (+ new, - gone)."""
    try:
        root = Path(project.image(digest).ref) / "root"
    except KilnError:
        return []
    if not root.is_dir():
        return []
    out: list[str] = []
    for step in project.spec.images[image_name].steps:
        if not isinstance(step, CopyStep):
            continue
        src = (project.base_dir / step.source).resolve()
        dest = root / step.to.strip("/")
        pairs = [(step.source, src, dest)] if src.is_file() else [
            (str(Path(step.source) / rel), path, dest / rel)
            for rel, path in iter_files(src, skip_name) if path.is_file()] if src.is_dir() else []
        for shown, path, there in pairs:
            if not there.is_file():
                out.append(f"+{shown}")
            elif path.read_bytes() != there.read_bytes():
                out.append(shown)
        if src.is_dir() and dest.is_dir():
            mine = {rel for rel, _ in iter_files(src, skip_name)}
            for rel, path in iter_files(dest, skip_name):
                if rel not in mine and path.is_file():
                    out.append(f"-{Path(step.source) / rel}")
        if len(out) >= limit:
            break
    return out[:limit]


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
            gone = "destroyed earlier; " if project.destroyed(name) else ""
            item.update(action="create", detail=f"{gone}first release: {spec.replicas} "
                                                f"instance(s), live once healthy")
        elif image is not None and image.digest == current.image_digest \
                and same_config(project.store, current, cfg):
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
                files = changed_files(project, spec.image, current.image_digest)
                item["files"] = files
                what = f" ({', '.join(files[:5])}{', …' if len(files) > 5 else ''})" \
                    if files else ""
                why.append(("image changed" if image else "image inputs changed (bake needed)")
                           + what)
            if not same_config(project.store, current, cfg):
                keys = changed_keys(project, current.id, spec)
                item["keys"] = keys
                why.append("config changed" + (f" ({'; '.join(keys)})" if keys else ""))
            steps = ", ".join(f"{s.weight}%" for s in spec.rollout.steps)
            item.update(action="replace",
                        detail=f"{'; '.join(why)}: {spec.rollout.strategy} "
                               f"{current.id} -> new release"
                               + (f" via {steps}" if spec.rollout.strategy == "canary" else ""))
        items.append(item)
    return items
