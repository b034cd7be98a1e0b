"""`kiln plan` and `kiln deploy` make one decision: `decide` (pure) says what deploy does for a
service from what is observed (kiln.readmodel) and what would be rolled out; `kiln plan`
prints it, `kiln deploy` acts on it (Terraform's plan, without a second implementation).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from kiln.bake.hashing import iter_files
from kiln.bake.steps import skip_name
from kiln.errors import KilnError
from kiln.plan_evidence import estimate, recent_rate
from kiln.platforms.capabilities import Resolver
from kiln.readmodel import Context as ReadContext
from kiln.readmodel import ServiceView, observe_service
from kiln.rollout.release_config import config_digest, same_config
from kiln.spec.models import CopyStep, ServiceSpec
from kiln.state.records import releases as release_records
from kiln.state.records import rollouts as rollout_records

if TYPE_CHECKING:
    from kiln.platforms.base import Builder, Image
    from kiln.state.store import Store


class Context(ReadContext, Protocol):
    """What a plan reads through (a `kiln.project.Project`)."""

    @property
    def base_dir(self) -> Path: ...
    @property
    def builder(self) -> Builder: ...
    def image(self, digest: str, use: str = ...) -> Image: ...

ACTIONS = ("resume", "create", "unchanged", "heal", "refused", "replace")


@dataclass(frozen=True)
class Facts:
    """Everything the decision depends on, observed beforehand (no I/O in `decide`)."""

    current: str | None = None  # the current release
    current_image: str | None = None
    destroyed: bool = False
    resume: tuple[int, str] | None = None  # an interrupted rollout: (id, phase)
    standby: bool = False  # a blue-green standby is open
    image: str | None = None  # the digest deploy rolls out (None: unknown before a bake)
    same_config: bool = True  # today's service config is the current release's
    alive: int = 0  # alive instances of the current release
    routed: int = 0  # of those, in rotation
    replicas: int = 1
    known_bad: str | None = None  # why this image+config is refused (it was just rolled back)
    strategy: str = "canary"
    steps: tuple[int, ...] = ()
    mirrors: tuple[int, ...] = ()  # per step: the share a mirror step copies (0: weighted)
    why: tuple[str, ...] = ()  # what changed, in words (files, keys), for the detail


@dataclass(frozen=True)
class Decision:
    action: str  # one of ACTIONS
    detail: str

    @property
    def changes(self) -> bool:
        return self.action != "unchanged"


def decide(f: Facts) -> Decision:
    """What deploy does for one service. Deploy asks again after a resumed rollout settled
    and after baking (when `image` becomes known): the same function, more facts."""
    if f.resume is not None:
        rid, phase = f.resume
        return Decision("resume", f"rollout #{rid} was interrupted in {phase}")
    if f.current is None:
        if f.known_bad:
            return Decision("refused", f.known_bad)
        gone = "destroyed earlier; " if f.destroyed else ""
        return Decision("create", f"{gone}first release: {f.replicas} instance(s), live once "
                                  "healthy")
    if f.image is not None and f.image == f.current_image and f.same_config:
        if f.alive >= f.replicas and f.routed >= f.alive:
            return Decision("unchanged", f"{f.current} is up to date")
        if not f.standby:
            return Decision("heal", (
                f"{f.alive}/{f.replicas} instances of {f.current} alive"
                + (f" ({f.routed} in rotation)" if f.routed < f.alive else "")
                + f": launch {max(f.replicas - f.alive, 0)} of the same image, health-gated, "
                  "into rotation (no new release, no canary)"))
    if f.known_bad:
        return Decision("refused", f.known_bad)
    why = list(f.why)
    if not why:
        if f.image is None:
            why.append("image inputs changed (bake needed)")
        elif f.image != f.current_image:
            why.append("image changed")
        if not f.same_config:
            why.append("config changed")
        if not why:
            why.append("blue-green standby open and instances missing")
    shares = [f"mirror {m}%" if m else f"{w}%"
              for w, m in zip(f.steps, f.mirrors or (0,) * len(f.steps), strict=True)]
    via = f" via {', '.join(shares)}" if f.strategy == "canary" else ""
    return Decision("replace", f"{'; '.join(why)}: {f.strategy} {f.current} -> new release{via}")


def known_bad(store: Store, name: str, image_digest: str, cfg: str) -> str | None:
    """Why this image and config is refused: it is what the service's last settled rollout
    rolled back (or failed); None when it is not."""
    row = rollout_records.last_settled_with_release(store, name)
    if row is None or row["outcome"] not in ("rolled_back", "failed"):
        return None
    if row["image_digest"] == image_digest and row["config_digest"] == cfg:
        return (f"{name}: this image and config ({row['to_release']}) was {row['outcome']} by "
                f"rollout #{row['id']}: {row['reason']}")
    return None


def facts(ctx: Context, view: ServiceView, spec: ServiceSpec, image: str | None, *,
          force: bool = False, why: Sequence[str] = ()) -> Facts:
    """The facts of one service from its read model and the image deploy would roll out."""
    cfg = config_digest(spec)
    cur = view.current
    same = cur is None or same_config(ctx.store, cur, cfg)
    bad = None if force or image is None else known_bad(ctx.store, view.name, image, cfg)
    res = view.resumable
    return Facts(
        current=cur.id if cur else None, current_image=cur.image_digest if cur else None,
        destroyed=view.destroyed,
        resume=(int(res["id"]), str(res["phase"])) if res is not None else None,
        standby=view.standby, image=image, same_config=same, alive=view.alive,
        routed=view.routed, replicas=spec.replicas, known_bad=bad,
        strategy=spec.rollout.strategy, steps=tuple(s.weight for s in spec.rollout.steps),
        mirrors=tuple(s.mirror or 0 for s in spec.rollout.steps),
        why=tuple(why))


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): data}


def changed_keys(ctx: Context, release_id: str, spec: ServiceSpec) -> list[str]:
    """Spec keys that differ from the running release's (`replicas: 2 -> 3`, `env.GREETING`).
    Secret values are never shown, only their names."""
    recorded = release_records.config_json(ctx.store, release_id)
    if recorded is None:
        return []
    old = _flat({k: v for k, v in json.loads(recorded).items() if k != "rollout"})
    new = _flat(spec.model_dump(mode="json", by_alias=True, exclude={"rollout"}))
    out = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            short = len(repr(old.get(key))) + len(repr(new.get(key))) < 60
            out.append(f"{key}: {old.get(key, '-')} -> {new.get(key, '-')}"
                       if short and not key.startswith(("env.", "secrets.")) else key)
    return out


def changed_files(ctx: Context, image_name: str, digest: str, limit: int = 50) -> list[str]:
    """Files of the image's copy steps that differ from the running image's (+ new, - gone)."""
    try:
        root = Path(ctx.image(digest).ref) / "root"
    except KilnError:
        return []
    if not root.is_dir():
        return []
    out: list[str] = []
    for step in ctx.spec.images[image_name].steps:
        if not isinstance(step, CopyStep):
            continue
        src = (ctx.base_dir / step.source).resolve()
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


def _why(ctx: Context, view: ServiceView, spec: ServiceSpec, image: str | None
         ) -> tuple[list[str], list[str] | None, list[str] | None]:
    """What changed against the current release, in words, with the files and keys."""
    cur = view.current
    if cur is None:
        return [], None, None
    same = same_config(ctx.store, cur, config_digest(spec))
    if image == cur.image_digest and same:
        return [], None, None
    why: list[str] = []
    files = keys = None
    if image is None or image != cur.image_digest:
        files = changed_files(ctx, spec.image, cur.image_digest)
        what = f" ({', '.join(files[:5])}{', …' if len(files) > 5 else ''})" if files else ""
        why.append(("image changed" if image else "image inputs changed (bake needed)") + what)
    if not same:
        keys = changed_keys(ctx, cur.id, spec)
        why.append("config changed" + (f" ({'; '.join(keys)})" if keys else ""))
    return why, files, keys


def plan(ctx: Context, services: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One item per service: what `deploy` would do (`decide`) and why. Reads only."""
    items: list[dict[str, Any]] = []
    names = list(services) if services else list(ctx.spec.services)
    builder = ctx.builder
    resolved: dict[str, Any] = {}  # many services share an image: hash its inputs once
    for name in names:
        spec = ctx.service(name)
        img_spec = ctx.spec.images[spec.image]
        if spec.image not in resolved:
            resolved[spec.image] = builder.resolve(spec.image, img_spec, base_dir=ctx.base_dir) \
                if isinstance(builder, Resolver) else None
        image = resolved[spec.image]
        digest = image.digest if image else None
        view = observe_service(ctx, name)
        why, files, keys = _why(ctx, view, spec, digest)
        decision = decide(facts(ctx, view, spec, digest, why=why))
        item: dict[str, Any] = {
            "service": name, "current": view.current.id if view.current else None,
            "image": spec.image, "image_digest": digest,
            "bake": "cached" if image else "needed", "strategy": spec.rollout.strategy,
            "replicas": spec.replicas, "action": decision.action, "detail": decision.detail,
        }
        if decision.action == "replace":
            if files is not None:
                item["files"] = files
            if keys is not None:
                item["keys"] = keys
            if spec.rollout.analysis is not None and spec.rollout.strategy == "canary" \
                    and view.current is not None:
                rate = recent_rate(ctx.router.request_counts, [view.current.id])
                evidence = estimate(name, spec, rate) if rate is not None else None
                if evidence is not None:
                    item["evidence"] = evidence
        items.append(item)
    return items
