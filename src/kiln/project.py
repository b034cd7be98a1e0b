"""The library's front: one `Project` per kiln.yaml, with one thin method per command.

`Project` is the context (`kiln.context.Context`: spec, store, platform and its parts, lock,
warn); each command is a module of `kiln.usecases` over it. The CLI and `kiln serve` call these
methods and render what they return; progress arrives through callbacks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from kiln.context import Context, Warn
from kiln.platforms.base import Image, StepEvent
from kiln.rollout.executor import Reconciler
from kiln.rollout.release_config import config_digest
from kiln.secrets import resolve_secrets
from kiln.usecases import bake, control, deploy, logs, rollback, rollouts, teardown
from kiln.usecases.results import (
    DeployEvent,
    DeployResult,
    LogSource,
    ServiceResult,
    log_tail,
    raise_for,
)

__all__ = ["DeployEvent", "DeployResult", "LogSource", "Project", "ServiceResult", "Warn",
           "config_digest", "log_tail", "raise_for", "resolve_secrets"]

OnEvent = Callable[[DeployEvent], None]


class Project(Context):
    """A loaded kiln.yaml with its state and platform, and the commands over it."""

    # ------------------------------------------------------------ bake, images

    def bake(self, names: Sequence[str] | None = None, *, no_cache: bool = False,
             progress: Callable[[str, StepEvent], None] | None = None) -> list[Image]:
        return bake.bake(self, names, no_cache=no_cache, progress=progress)

    def list_images(self) -> list[dict[str, Any]]:
        return bake.list_images(self)

    # ------------------------------------------------------------ deploy and rollouts

    def deploy(self, services: Sequence[str] | None = None, *, skip_tests: bool = False,
               on_event: OnEvent | None = None, no_cache: bool = False,
               force: bool = False, preview: bool = False) -> DeployResult:
        return deploy.deploy(self, services, skip_tests=skip_tests, on_event=on_event,
                             no_cache=no_cache, force=force, preview=preview)

    def deploy_image(self, service: str, digest: str, *, force: bool = False,
                     on_event: OnEvent | None = None) -> ServiceResult:
        return deploy.deploy_image(self, service, digest, force=force, on_event=on_event)

    def rollout_driver(self, service: str, rollout_id: int) -> tuple[Reconciler, Any]:
        return rollouts.rollout_driver(self, service, rollout_id)

    def record_judge(self, service: str, rollout_id: int, judge: Any) -> None:
        rollouts.record_judge(self, service, rollout_id, judge)

    def write_report(self, service: str, rollout_id: int) -> str | None:
        return rollouts.write_report(self, service, rollout_id)

    def end_expired_standby(self, service: str) -> None:
        rollouts.end_expired_standby(self, service)

    # ------------------------------------------------------------ control

    def signal(self, service: str, signal: str) -> int:
        return control.signal(self, service, signal)

    def promote(self, service: str, *, full: bool = False,
                on_event: OnEvent | None = None) -> ServiceResult:
        return control.promote(self, service, full=full, on_event=on_event)

    def abort(self, service: str, on_event: OnEvent | None = None) -> ServiceResult:
        return control.abort(self, service, on_event)

    def rollback(self, service: str, to: str | None = None, on_event: OnEvent | None = None,
                 force: bool = False) -> ServiceResult:
        return rollback.rollback(self, service, to, on_event, force)

    def destroy(self, services: Sequence[str] | None = None) -> list[str]:
        return teardown.destroy(self, services)

    # ------------------------------------------------------------ reporting (read-only)

    def status(self, service: str | None = None) -> dict[str, Any]:
        """What runs, per service (kiln.readmodel). Read-only: a dead router is reported with
        what restarts it, never restarted here."""
        from kiln.readmodel import status

        return status(self, self._services([service] if service else None), self.warn)

    def judge_replay(self, rollout_id: int, settings: dict[str, Any]) -> dict[str, Any]:
        """`kiln judge replay`: the judge again over a rollout's stored evidence. Read-only."""
        from kiln.usecases.replay import judge_replay

        return judge_replay(self, rollout_id, settings)

    def sandbox_kind(self) -> str:
        """How bakes and instances are isolated: local's "bwrap", or "none" when the spec says
        `sandbox: none`; other platforms isolate their own way and are named ("podman", "aws")."""
        from kiln.readmodel import sandbox_kind

        return sandbox_kind(self.spec)

    def history(self, service: str, limit: int | None = None) -> list[dict[str, Any]]:
        """The service's rollouts, oldest first (the last `limit` of them when given)."""
        from kiln.readmodel import history

        self.service(service)
        return history(self.store, self.home, service, limit)

    def events(self, service: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        return [{"time": r["time"], "service": r["service"], "kind": r["kind"],
                 "message": r["message"], "data": json.loads(r["data_json"])}
                for r in reversed(self.store.events(service, limit))]

    def logs(self, service: str | None = None, instance: str | None = None,
             kind: str | None = None) -> list[LogSource]:
        return logs.logs(self, service, instance, kind)
