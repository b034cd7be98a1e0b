"""Instances as podman containers on their project's own network.

A container runs the image read-only (`--read-only`, 64 MiB tmpfs for /scratch, /tmp and
/var/tmp), as an unprivileged user (65534) with no capabilities beyond the service's
`capabilities`, no new privileges, catatonit as pid 1 (signals reach the app), and the service's
cpu/memory/pids limits (memory and pids with defaults, no swap). It is attached only to its
project's network (`project_network`): `--internal` (no route off the host) unless the service
says `egress: true`, which picks the project's second network, routed but `isolate`d from every
other podman network. Either way no other project's container can reach it. Port publishing does
not work on an internal network (conmon holds the host port, nothing forwards it), so the router
reaches each container at its address on the project's bridge, recorded as the instance's host
after `podman run`. `podman logs -f` copies its output, through the local platform's rotating
log pump, into the instance folder's `log`, so `kiln logs` and the health gate read the same
plain file as on the local platform.

Liveness is read from /proc (the container's main pid and its start time, recorded at launch), so
a reconcile pass does not call podman for every instance; podman is asked only when that is
unknown. The row is written before `podman run`, with the container's name in its handle, so a
kiln killed between the two leaves a container `sweep()` finds by its labels.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal

from kiln import logpump
from kiln.errors import NotFound, PlatformError
from kiln.platforms import instance_rows
from kiln.platforms.base import ExecResult, Image, Instance, Observed, Release
from kiln.platforms.capabilities import ImageFileReader, TamperCheck, TestinfraBackend
from kiln.platforms.instance_rows import KINDS, LIVE_STATES, from_row, get_row, list_rows, set_state
from kiln.platforms.local import environment
from kiln.platforms.local.compute import LocalCompute, describe_exit
from kiln.platforms.podman import containerfile, engine, images
from kiln.platforms.podman.handle import PodmanHandle
from kiln.platforms.podman.image_files import ContainerFiles
from kiln.spec.models import ServiceSpec
from kiln.state.lock import pid_alive, pid_start_time
from kiln.state.records import instances as instance_records
from kiln.state.store import Store

Kind = Literal["service", "test", "dev"]
USER = "65534:65534"
"""nobody:nogroup: instances never run as root unless an image says otherwise... it cannot."""
SCRATCH = "/scratch"
TMPFS = "rw,nosuid,nodev,size=64m,mode=1777"
"""/scratch, /tmp and /var/tmp: bounded (podman's own would be half the host's memory)."""
FILES_KIND = "files"
"""The kiln.kind label of the unstarted container file checks read an image through."""
FILES_GRACE = 3600.0
"""A file-check container younger than this is in use by a running `kiln test`: sweep leaves it."""
RUN_TIMEOUT = 120.0
_PODMAN_OWN = frozenset({"/etc", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/run",
                         "/run/.containerenv", "/tmp", "/var", "/var/tmp", "/dev", "/proc", "/sys",
                         SCRATCH})
"""Paths `podman diff` lists for every container (mount points podman made), never drift."""


INIT = "/run/podman-init"
"""Where `podman run --init` mounts its init (catatonit) in the container (podman-run(1))."""
_FORWARD_TRAPS = "trap exit HUP INT QUIT TERM; trap : USR1 USR2 ALRM"
"""The shell of a compound command outlives a forwarded signal until the app it waits for has
exited (a trap runs only after the foreground command, POSIX), then stops: no next command of a
list starts once the container was told to stop."""
_ASSIGNMENTS = re.compile(r"""\s*(?:[A-Za-z_]\w*=   # NAME=, then the value's words:
                            (?:[^\s'"\\]|\\.|'[^']*'|"(?:[^"\\]|\\.)*")*(?:\s+|$))*""", re.X)
_KEYWORD = re.compile(r"(if|then|for|while|until|case|function|select|time|!|\{|\[\[)(\s|$)")
_OPERATOR = frozenset("();<>|&")


def _compound(command: str) -> bool:
    """Shell syntax beyond one simple command: lists, pipes, redirections, subshells,
    substitutions (quoted text does not count: `python -c 'a; b'` is one command)."""
    if "\n" in command or "`" in command or "$(" in command:
        return True
    lexer = shlex.shlex(command, posix=False, punctuation_chars=True)
    try:
        return any(tok and set(tok) <= _OPERATOR for tok in lexer)
    except ValueError:  # an unbalanced quote: sh will say what is wrong
        return True


def exec_form(command: str) -> str | None:
    """COMMAND with `exec` before its command word when it is one simple command (leading
    assignments stay in front: `A=1 exec python app.py` exports A to the app, POSIX 2.14), so
    the app replaces sh and is the process catatonit signals; None for anything else."""
    if _compound(command):
        return None
    match = _ASSIGNMENTS.match(command)
    end = match.end() if match else 0
    head, rest = command[:end], command[end:]
    if not rest.strip() or _KEYWORD.match(rest):
        return None
    if re.match(r"exec(\s|$)", rest):
        return command
    return f"{head}exec {rest}"


def container_command(command: str) -> list[str]:
    """The container's command (after `--init`'s catatonit) for a service command.

    A simple command runs as `sh -c 'exec COMMAND'`: dash does not exec a lone command by
    itself, and catatonit must signal the app, not the shell. A compound one (`cd x && app`,
    pipes, lists) cannot be exec'd; dash does not forward SIGTERM to its children and dies of
    it, so catatonit would see its child exit and end the container under the app (SIGKILL, no
    drain). So it runs under a second catatonit with -g, which forwards every signal to the
    shell's whole process group (the shell and the app in it), while the shell waits for the
    app (`_FORWARD_TRAPS`)."""
    simple = exec_form(command)
    if simple is not None:
        return ["/bin/sh", "-c", simple]
    return [INIT, "-g", "--", "/bin/sh", "-c", f"{_FORWARD_TRAPS}\n{command}"]


class PodmanCompute(LocalCompute, TamperCheck, ImageFileReader, TestinfraBackend):
    """The Compute seam on podman. Health probing, `wait_healthy` and the bookkeeping of rows
    are the local platform's (inherited); starting, observing, stopping and exec are podman's."""

    def __init__(self, store: Store, home: Path, project: str) -> None:
        super().__init__(store, home, project, sandbox="none")
        self.scope = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:8]
        self._followers: dict[str, subprocess.Popen[bytes]] = {}
        self._networks: set[str] = set()

    def container_name(self, instance_id: str) -> str:
        return f"kiln-{self.project}-{self.scope}-{instance_id}"

    # ------------------------------------------------------------------ launch

    def _check_image(self, image: Image) -> None:
        if engine.image_id(image.ref) != image.digest:
            raise NotFound(f"image {image.name} ({image.digest[:19]}) is missing from podman's "
                           "storage", hint="run kiln bake again")
        images.ensure_intact(self.store, image, use="launch it")  # its layers' content, baked

    def _launch_one(self, service_name: str, service: ServiceSpec, release: Release,
                    image: Image, secret_env: Mapping[str, str], kind: Kind) -> Instance:
        instance_id = f"{release.id}-{secrets.token_hex(3)}"
        folder = self.folder(instance_id)
        folder.mkdir(parents=True, exist_ok=True)
        name = self.container_name(instance_id)
        host = self._insert_launching(instance_id, service_name, service, release, kind,
                                      PodmanHandle(name, workdir=str(folder)).to_map(),
                                      container=name)
        kiln = environment.kiln_vars("0.0.0.0", service.port, service_name, release.id,
                                     instance_id)
        base = {"HOME": SCRATCH, "TMPDIR": "/tmp", "PYTHONUNBUFFERED": "1",
                "PYTHONDONTWRITEBYTECODE": "1"}
        plain = environment.instance_env(base=base, image_env={}, service_env=service.env,
                                         extra_env={}, kiln=kiln)
        self.ensure_network(service.egress)
        argv = self.run_argv(name, instance_id, kind, service, host, image, plain,
                             secret_keys=sorted(secret_env))
        # Secret values reach podman through its environment (`-e NAME`), never its argv.
        proc = engine.run(argv, timeout=RUN_TIMEOUT, check=False,
                          env={**os.environ, **secret_env}, what=f"podman run of {instance_id}")
        container_id = proc.stdout.strip()[:12]
        if proc.returncode != 0:
            set_state(self.store, instance_id, "dead")
            engine.run(["rm", "-f", name], check=False)
            reason = engine.last_line(proc.stderr)
            if "address already in use" in reason:
                reason += f" (another process holds {host}:{service.port})"
            raise PlatformError(f"{instance_id}: podman could not start the container: {reason}")
        self._follow_log(name, folder / "log", service)
        pid, start = self._main_pid(name)
        # A container that already exited has no address: the health gate reports its exit.
        address = self._address(name, self.project_network(service.egress)) or host
        handle = PodmanHandle(name, container_id, pid, start, str(folder))
        with self.store.tx() as c:
            instance_rows.set_handle(c, instance_id, handle.to_map())
            instance_records.set_host(c, instance_id, address)
        return Instance(instance_id, service_name, release.id, address, service.port,
                        handle.to_map())

    # ------------------------------------------------------------------ networks

    def project_network(self, egress: bool) -> str:
        """This project's (and checkout's) network; the egress one is a second network."""
        return f"kiln-{self.project}-{self.scope}" + ("-egress" if egress else "")

    def network_create_argv(self, egress: bool) -> list[str]:
        """`podman network create` of the project's network (pure, table-tested)."""
        return ["network", "create", "--label", f"kiln.project={self.project}",
                "--label", f"kiln.scope={self.scope}",
                *(["--opt", "isolate=true"] if egress else ["--internal"]),
                self.project_network(egress)]

    def ensure_network(self, egress: bool) -> None:
        name = self.project_network(egress)
        if name in self._networks or engine.inspect("network", name) is not None:
            self._networks.add(name)
            return
        proc = engine.run(self.network_create_argv(egress), timeout=60.0, check=False)
        if proc.returncode != 0 and engine.inspect("network", name) is None:
            raise PlatformError(f"podman could not create network {name}: "
                                f"{engine.last_line(proc.stderr)}")
        self._networks.add(name)

    def remove_networks(self) -> list[str]:
        """Remove the project's networks that no container uses (podman refuses the others)."""
        removed = []
        self._networks.clear()
        for egress in (False, True):
            name = self.project_network(egress)
            if engine.inspect("network", name) is None:
                continue
            if engine.run(["network", "rm", name], timeout=60.0, check=False).returncode == 0:
                removed.append(name)
        return removed

    def _address(self, name: str, network: str) -> str | None:
        data = engine.inspect("container", name)
        nets = ((data or {}).get("NetworkSettings") or {}).get("Networks") or {}
        address = (nets.get(network) or {}).get("IPAddress")
        return str(address) if address else None

    def run_argv(self, name: str, instance_id: str, kind: str, service: ServiceSpec, host: str,
                 image: Image, env: Mapping[str, str], secret_keys: Sequence[str]) -> list[str]:
        """The `podman run` arguments of one instance (pure, so the hardening is table-tested)."""
        argv = ["run", "-d", "--name", name, "--init",
                "--label", f"kiln.project={self.project}", "--label", f"kiln.scope={self.scope}",
                "--label", f"kiln.instance={instance_id}", "--label", f"kiln.kind={kind}",
                "--read-only", "--tmpfs", f"{SCRATCH}:{TMPFS}", "--tmpfs", f"/tmp:{TMPFS}",
                "--tmpfs", f"/var/tmp:{TMPFS}",
                "--user", USER, "--cap-drop=all", "--security-opt", "no-new-privileges",
                "--network", self.project_network(service.egress),
                "--workdir", image.workdir or containerfile.ROOT, "--log-driver", "k8s-file",
                "--pull=never"]
        for cap in service.capabilities:
            argv += ["--cap-add", cap]
        if service.resources.cpus is not None:
            argv += ["--cpus", f"{service.resources.cpus:g}"]
        memory = str(service.resources.memory_limit)
        argv += ["--memory", memory, "--memory-swap", memory,  # no swap: OOM-killed at the limit
                 "--pids-limit", str(service.resources.pids_limit)]
        for key, value in env.items():
            argv += ["--env", f"{key}={value}"]
        for key in secret_keys:
            argv += ["--env", key]
        return [*argv, image.ref, *container_command(service.command)]

    def _follow_log(self, name: str, log: Path, service: ServiceSpec) -> None:
        """`podman logs -f` into the instance's log file through the rotating log pump; it ends
        when the container does."""
        proc = subprocess.Popen([sys.executable, "-I", "-S", logpump.__file__, str(log),
                                 str(service.logs.max_size), str(service.logs.keep), "-", "--",
                                 engine.binary(), "logs", "-f", name],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self._followers[name] = proc

    def _main_pid(self, name: str) -> tuple[int | None, str | None]:
        data = engine.inspect("container", name)
        state = (data or {}).get("State") or {}
        pid = int(state.get("Pid") or 0)
        if pid <= 0:
            return None, None
        return pid, pid_start_time(pid)

    # ------------------------------------------------------------------ observe

    def observe(self, instances: Sequence[Instance]) -> list[Observed]:
        self._reap_followers()
        out = []
        for inst in instances:
            handle = self._handle(inst)
            if handle.pid is not None and handle.pid_start is not None:
                alive = pid_alive(handle.pid, handle.pid_start)
            else:
                alive = bool(handle.name) and self._running(handle.name)
            out.append(Observed(inst.id, alive))
        return out

    def _handle(self, inst: Instance) -> PodmanHandle:
        handle = PodmanHandle.of(inst)
        if handle.pid is None or not handle.name:
            row = get_row(self.store, inst.id)
            if row is not None:
                handle = PodmanHandle.of(from_row(row))
        return handle

    def _running(self, name: str) -> bool:
        data = engine.inspect("container", name)
        return bool(data and (data.get("State") or {}).get("Running"))

    def _listener_is_not_ours(self, instance: Instance) -> bool:
        """podman publishes the container's port on the instance's own address (a bind another
        process cannot share): whoever answers there is the container."""
        return False

    def exit_status(self, inst: Instance) -> str:
        handle = self._handle(inst)
        data = engine.inspect("container", handle.name) if handle.name else None
        state = (data or {}).get("State") or {}
        if state and not state.get("Running"):
            how = describe_exit(int(state.get("ExitCode") or 0))
            if state.get("OOMKilled"):
                how += " (killed: out of memory)"
        else:
            how = "is not running"
        return how

    def _log_writer(self, instance: Instance) -> subprocess.Popen[bytes] | None:
        """The `podman logs -f` follower this object started for the container."""
        return self._followers.get(self._handle(instance).name)

    # ------------------------------------------------------------------ terminate

    def terminate(self, instance: Instance, timeout: float) -> None:
        """`podman stop -t` (SIGTERM, then SIGKILL after `timeout`), then remove the container
        (its output is already in the instance's log). Idempotent."""
        self.terminate_release(instance.release_id, [instance], timeout)

    def terminate_release(self, release_id: str, instances: Sequence[Instance],
                          timeout: float) -> None:
        """`terminate` for several at once: one `podman stop` (it stops them in parallel, so
        N containers take one stop time) and one `podman rm`."""
        handles = [self._handle(inst) for inst in instances]
        names = [h.name for h in handles if h.name]
        if names:
            engine.run(["stop", "-t", str(max(0, round(timeout))), *names],
                       timeout=timeout + 60.0, check=False)
            for inst, handle in zip(instances, handles, strict=True):
                if handle.name:
                    self._sync_log(inst)
            engine.run(["rm", "-f", "--volumes", *names], timeout=60.0, check=False)
        for inst, handle in zip(instances, handles, strict=True):
            if not self._others_live(inst.id):  # the last one: the networks go too
                self.remove_networks()
            self._record_stopped(inst)
            self._followers.pop(handle.name, None)

    def _others_live(self, instance_id: str) -> bool:
        return instance_records.live_count_except(self.store, instance_id) > 0

    # ------------------------------------------------------------------ sweep

    def containers(self) -> dict[str, dict[str, str]]:
        """This project's containers (by name): their instance label and state."""
        proc = engine.run(["ps", "-a", "--filter", f"label=kiln.scope={self.scope}",
                           "--format", "json"], timeout=60.0)
        out: dict[str, dict[str, str]] = {}
        for item in json.loads(proc.stdout or "[]"):
            names = item.get("Names") or []
            labels = item.get("Labels") or {}
            if names:
                out[str(names[0])] = {"instance": str(labels.get("kiln.instance", "")),
                                      "state": str(item.get("State", "")),
                                      "kind": str(labels.get("kiln.kind", "")),
                                      "created": str(item.get("Created", 0))}
        return out

    def sweep(self) -> list[str]:
        """Rows whose container is gone become 'dead'; containers of this project that no live
        row owns (kiln killed before recording, or a row marked stopped) are removed."""
        changes: list[str] = []
        rows = {r["id"]: r for r in list_rows(self.store, None, KINDS, None)}
        for row in rows.values():
            if row["state"] in LIVE_STATES:
                inst = from_row(row)
                if not self.observe([inst])[0].alive:
                    set_state(self.store, inst.id, "dead")
                    changes.append(f"{inst.id}: process is gone, marked dead")
        for name, info in self.containers().items():
            known = rows.get(info["instance"])
            if known is not None and known["state"] in LIVE_STATES and \
                    PodmanHandle.of(from_row(known)).name == name:
                continue
            if info["kind"] == FILES_KIND and _age(info["created"]) < FILES_GRACE:
                continue
            # Not owned by a live row: a dead instance's leftover (removed quietly) or, while
            # it still runs, an orphan of a kiln killed mid-launch (stopped and reported).
            engine.run(["rm", "-f", "-t", "2", name], timeout=60.0, check=False)
            if info["state"] == "running":
                changes.append(f"{info['instance'] or name}: stopped orphan container {name}")
        # Nothing lives: the networks go too, also when this sweep changed nothing (a launch
        # refused after its network was made, or containers removed by hand, left them).
        if not self._others_live(""):
            changes += [f"removed network {n}" for n in self.remove_networks()]
        return changes

    def orphans(self) -> list[tuple[str, int, str]]:
        """(instance, pid, start) of this project's running containers that no live row records
        (`kiln drift` reports them, `sweep()` removes them)."""
        found: list[tuple[str, int, str]] = []
        for name, info in self.containers().items():
            if info["state"] != "running":
                continue
            known = get_row(self.store, info["instance"])
            if known is not None and known["state"] in LIVE_STATES and \
                    PodmanHandle.of(from_row(known)).name == name:
                continue
            pid, start = self._main_pid(name)
            found.append((info["instance"] or name, pid or 0, start or ""))
        return found

    def gc_folders(self) -> list[str]:
        return instance_rows.gc_folders(self.store, self.home / "instances")

    # ------------------------------------------------------------------ exec

    def exec(self, instance: Instance, command: str, *, timeout: float,
             env: Mapping[str, str] | None = None) -> ExecResult:
        """`podman exec` as the container's user, in its workdir, with the instance's env.
        A command that outlives `timeout` is killed and reported with exit code 124."""
        handle = self._handle(instance)
        if not handle.name:
            raise NotFound(f"instance {instance.id} has no container")
        argv = [engine.binary(), "exec"]  # in the container's workdir (the image's)
        for key in sorted(env or {}):
            argv += ["--env", key]
        argv += [handle.name, "/bin/sh", "-c", command]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env={**os.environ, **(env or {})},
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            out, err = proc.communicate()
            note = f"\nkiln: command timed out after {timeout:g}s and was killed\n"
            return ExecResult(124, out.decode(errors="replace"),
                              err.decode(errors="replace") + note)
        if proc.returncode in (125, 126, 127) and b"no such container" in err.lower():
            raise NotFound(f"instance {instance.id}: container {handle.name} is gone")
        return ExecResult(proc.returncode, out.decode(errors="replace"),
                          err.decode(errors="replace"))

    def tampered(self, instance: Instance, image_digest: str) -> str | None:
        """`kiln drift`: None when the container runs the release's image unchanged; else what
        differs (another image, or files `podman diff` finds beyond podman's own mount points)."""
        handle = self._handle(instance)
        data = engine.inspect("container", handle.name) if handle.name else None
        if data is None:
            return None  # gone: the dead-instance check reports it
        image = str(data.get("Image", ""))
        if image.removeprefix("sha256:") != image_digest.removeprefix("sha256:"):
            return f"{instance.id} runs image {image[:12]}, not its release's {image_digest[:19]}"
        proc = engine.run(["diff", "--format", "json", handle.name], timeout=60.0, check=False)
        try:
            changes = json.loads(proc.stdout or "{}")
        except ValueError:
            return None
        found = sorted(f"{kind} {path}" for kind, paths in changes.items() for path in paths or []
                       if path not in _PODMAN_OWN)
        if found:
            return (f"{instance.id}: files differ from its image: {', '.join(found[:5])}"
                    + (f" and {len(found) - 5} more" if len(found) > 5 else ""))
        return None

    @contextlib.contextmanager
    def image_files(self, image: Image) -> Iterator[ContainerFiles]:
        """The image's own filesystem for file checks (read through an unstarted container)."""
        name = self.container_name(f"files-{secrets.token_hex(3)}")
        with ContainerFiles.of(image.ref, name, ["--label", f"kiln.project={self.project}",
                                                 "--label", f"kiln.scope={self.scope}",
                                                 "--label", f"kiln.kind={FILES_KIND}"]) as files:
            yield files

    def testinfra_host(self, instance: Instance) -> str:
        """testinfra's own podman backend reaches the container directly."""
        return f"podman://{self._handle(instance).name}"

    # ------------------------------------------------------------------ internals

    def _reap(self) -> None:
        self._reap_followers()

    def _reap_followers(self) -> None:
        for proc in self._followers.values():
            proc.poll()


def _age(created: str) -> float:
    """Seconds since `podman ps`'s Created (unix seconds); infinite when unknown."""
    try:
        return time.time() - float(created)
    except ValueError:
        return float("inf")
