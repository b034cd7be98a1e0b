"""Dev instances (Vagrant's role): one instance of the exact baked image, on a free address."""

from __future__ import annotations

import time
from pathlib import Path

from kiln.errors import KilnError
from kiln.platforms.base import ExecResult, Instance, Release, ReleaseImage
from kiln.platforms.instance_rows import from_row
from kiln.project import Project, config_digest
from kiln.rollout.executor import instances_of
from kiln.secrets import resolve_secrets
from kiln.state.records import instances as instance_records


def dev_up(project: Project, service: str | None) -> tuple[Instance, Path]:
    name = project.only_service(service)
    spec = project.service(name)
    with project.locked(f"up {name}"):
        image = project.builder.build(spec.image, project.spec.images[spec.image],
                                      base_dir=project.base_dir)
        cfg = config_digest(spec)
        # The release id names the image and config, so `kiln up` again finds its instance.
        # A dev instance runs today's kiln.yaml: its release is made from it here.
        release = Release.of(f"{name}-dev-{image.digest[7:15]}{cfg[7:11]}", name, 0,
                             ReleaseImage.of(image), spec, cfg)
        compute = project.compute
        mine = [i for i in dev_instances(project) if i.service == name]
        running = {i.id for i, o in zip(mine, compute.observe(mine), strict=True) if o.alive}
        for old in mine:
            if old.release_id == release.id and old.id in running:
                return old, compute.log_path(old)  # already up: no second instance
            compute.terminate(old, spec.stop_timeout)  # an older image or config: replaced
        launch = compute.launch
        (inst,) = launch(name, spec, release, image, 1,
                         env=resolve_secrets(name, spec, project.base_dir), kind="dev")
        deadline = time.monotonic() + spec.health.deadline
        while not compute.healthy(inst, spec.health):
            alive = compute.observe([inst])[0].alive
            if not alive or time.monotonic() > deadline:
                compute.terminate(inst, spec.stop_timeout)
                raise KilnError(f"dev instance of {name} did not become healthy "
                                f"({'exited' if not alive else 'deadline passed'}); "
                                f"log: {compute.log_path(inst)}")
            time.sleep(0.1)
        project.store.event("dev.up", f"{inst.id} at {inst.url}", service=name)
        return inst, compute.log_path(inst)


def dev_instances(project: Project) -> list[Instance]:
    return [from_row(r) for r in instance_records.dev_alive(project.store)]


def dev_down(project: Project) -> list[str]:
    stopped = []
    with project.locked("down"):
        for inst in dev_instances(project):
            project.compute.terminate(inst, project.service(inst.service).stop_timeout
                                      if inst.service in project.spec.services else 10.0)
            stopped.append(inst.id)
    return stopped


def dev_exec(project: Project, service: str, command: str, timeout: float = 600.0) -> ExecResult:
    """Run a command in the environment of a running instance of the service."""
    project.service(service)
    current = project.current_release(service)
    candidates = instances_of(project.store, current.id) if current else []
    candidates += [i for i in dev_instances(project) if i.service == service]
    alive = [i for i, o in zip(candidates, project.compute.observe(candidates), strict=True)
             if o.alive]
    if not alive:
        raise KilnError(f"no running instance of {service}; start one with `kiln up {service}` "
                        f"or `kiln deploy {service}`")
    return project.compute.exec(alive[0], command, timeout=timeout)
