"""The Compute contract, run against the in-memory fake and the real local platform; then the
local platform's own promises (sandbox, crash safety, secrets never stored)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from kiln.errors import NotFound
from kiln.platforms import capabilities as caps
from kiln.platforms.aws.compute import AwsCompute
from kiln.platforms.base import Image, Instance, Release, ReleaseImage
from kiln.platforms.fake.compute import FakeCompute
from kiln.platforms.local import cgroups
from kiln.platforms.local.addresses import address_for
from kiln.platforms.local.compute import LocalCompute
from kiln.platforms.local.handle import LocalHandle
from kiln.platforms.local.sandbox import bwrap_works
from kiln.platforms.podman import engine
from kiln.platforms.podman.builder import PodmanBuilder
from kiln.platforms.podman.compute import PodmanCompute
from kiln.platforms.podman.handle import PodmanHandle
from kiln.spec.models import Health, ImageSpec, ServiceSpec
from kiln.state.store import Store
from kiln.testing.images import register
from kiln.testing.podman import BASE, remove_containers
from kiln.testing.project import wait_for

PORT = 28080
HEALTH = Health(path="/healthz", timeout=1.0, deadline=10.0)

APP = r'''
import http.server, json, os, signal, sys
mode = sys.argv[1] if len(sys.argv) > 1 else "ok"

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/env":
            body, code = json.dumps(dict(os.environ)).encode(), 200
        elif self.path == "/healthz":
            body, code = b"ok", 500 if mode == "unhealthy" else 200
        else:
            body, code = b"hello", 200
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

def on_term(*_):
    with open(os.path.join(os.environ["HOME"], "terminated"), "w") as fh:
        fh.write("SIGTERM")
    print("terminated by SIGTERM", flush=True)
    sys.exit(0)

signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "ignore-term" else on_term)
print("listening on", os.environ["HOST"], os.environ["PORT"], flush=True)
http.server.ThreadingHTTPServer((os.environ["HOST"], int(os.environ["PORT"])),
                                Handler).serve_forever()
'''

COMMANDS = {
    "ok": "python app.py ok",
    "unhealthy": "python app.py unhealthy",
    "ignore-term": "python app.py ignore-term",
    "exits": "echo boom: cannot start >&2; exit 3",
    "exits-on-cue": 'mkfifo "$HOME/go" && cat "$HOME/go" >/dev/null; echo boom-late >&2; exit 4',
}


def pid_of(inst: Instance) -> int:
    pid = LocalHandle.of(inst).pid
    assert pid is not None
    return pid


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fake baked image: <ref>/root with app.py and its own venv, all read-only."""
    ref = tmp_path_factory.mktemp("image")
    root = ref / "root"
    root.mkdir()
    (root / "app.py").write_text(APP)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / ".venv")],
                   check=True, capture_output=True)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            if not path.is_symlink():
                path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    root.chmod(0o555)
    return ref


def _service(mode: str) -> ServiceSpec:
    return ServiceSpec(image="web", command=COMMANDS[mode], port=PORT, listen="127.0.0.1:9",
                       env={"GREETING": "hello", "SHARED": "service"})


class _Base:
    store: Store
    compute: LocalCompute | FakeCompute | PodmanCompute
    image: Image

    def launch(self, n: int, mode: str = "ok", **kw: object) -> list[Instance]:
        release = Release.of(f"web-{mode}", "web", 1, ReleaseImage.of(self.image),
                             _service(mode), "c")
        return self.compute.launch("web", release.spec, release, self.image, n,
                                   env={"SECRET_TOKEN": "s3cr3t-value", "SHARED": "secret"},
                                   **kw)  # type: ignore[arg-type]

    def kill(self, inst: Instance) -> None:
        raise NotImplementedError

    def got_sigterm(self, inst: Instance) -> bool:
        raise NotImplementedError

    def reused(self, inst: Instance) -> Instance:
        """The same instance as if its process id now named another process."""
        raise NotImplementedError

    def bind_host(self, inst: Instance) -> str:
        """The HOST the app is told to bind."""
        return inst.host

    def env_of(self, inst: Instance) -> dict[str, str]:
        raise NotImplementedError

    def cleanup(self) -> None:
        for inst in self.compute.list_instances(kinds=("service", "test", "dev"),
                                                live_only=False):
            self.compute.terminate(inst, timeout=1.0)
        self.compute.sweep()


class FakeHarness(_Base):
    def __init__(self, tmp_path: Path) -> None:
        self.store = Store.open(tmp_path / "home")
        self.image = Image("web", "sha256:" + "a" * 64, str(tmp_path / "img"),
                           env={"IMAGE_VAR": "1", "SHARED": "image"})
        fake = FakeCompute(self.store, "ctest")
        fake.unhealthy_releases.add("web-unhealthy")
        fake.exit_releases.add("web-exits")
        fake.ignore_sigterm_releases.add("web-ignore-term")
        self.compute = self.fake = fake

    def kill(self, inst: Instance) -> None:
        self.fake.die(inst)

    def reused(self, inst: Instance) -> Instance:
        return self.fake.with_wrong_start(inst)

    def got_sigterm(self, inst: Instance) -> bool:
        return self.fake.stop_signal(inst) == "sigterm"

    def env_of(self, inst: Instance) -> dict[str, str]:
        return self.fake.env_of(inst)


class PodmanHarness(_Base):
    def __init__(self, tmp_path: Path, image: Image) -> None:
        self.home = tmp_path / "home"
        self.store = Store.open(self.home)
        self.image = register(self.store, image)  # baked into another store
        self.podman = PodmanCompute(self.store, self.home, f"ct-{tmp_path.name[-12:]}")
        self.compute = self.podman

    def kill(self, inst: Instance) -> None:
        subprocess.run(["podman", "kill", PodmanHandle.of(inst).name], capture_output=True,
                       check=True, timeout=60)

    def reused(self, inst: Instance) -> Instance:
        return replace(inst, handle={**inst.handle, "pid_start": "1"})

    def got_sigterm(self, inst: Instance) -> bool:
        return "terminated by SIGTERM" in self.podman.log_path(inst).read_text()

    def env_of(self, inst: Instance) -> dict[str, str]:
        return LocalHarness.env_of(self, inst)  # type: ignore[arg-type]

    def bind_host(self, inst: Instance) -> str:
        return "0.0.0.0"  # inside the container; inst.host is its address on the project network

    def cleanup(self) -> None:
        super().cleanup()
        remove_containers(self.podman.container_name(""))
        self.podman.remove_networks()


class LocalHarness(_Base):
    def __init__(self, tmp_path: Path, image_dir: Path, sandbox: str = "auto") -> None:
        self.home = tmp_path / "home"
        self.store = Store.open(self.home)
        self.image = register(self.store, Image("web", "sha256:" + "b" * 64, str(image_dir),
                                                env={"IMAGE_VAR": "1", "SHARED": "image"}))
        self.local = LocalCompute(self.store, self.home, f"ct-{tmp_path.name}",
                                  sandbox=sandbox)  # type: ignore[arg-type]
        self.compute = self.local

    def kill(self, inst: Instance) -> None:
        """SIGKILL the instance's process and wait for the kernel to take the rest of its
        sandbox down: under load that lags, and a sweep run before then also (rightly) reports
        the leftovers it kills in the instance's cgroup."""
        os.kill(pid_of(inst), 9)
        cgroup = cgroups.recorded(self.local.folder(inst.id))
        if cgroup is not None:
            wait_for(lambda: not cgroup.pids(), 30.0, 0.02,
                     what=f"the processes of killed {inst.id} to be gone")

    def reused(self, inst: Instance) -> Instance:
        return replace(inst, handle={**inst.handle, "pid_start": "1"})

    def got_sigterm(self, inst: Instance) -> bool:
        return (self.local.scratch(inst) / "terminated").exists()

    def env_of(self, inst: Instance) -> dict[str, str]:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(inst.url + "/env", timeout=5) as resp:
            env: dict[str, str] = json.loads(resp.read())
        return env


@pytest.fixture(scope="session")
def podman_image(tmp_path_factory: pytest.TempPathFactory, podman_base: str) -> Image:
    """APP baked by the podman builder on the shared Debian base (`python` is python3)."""
    folder = tmp_path_factory.mktemp("podman-app")
    (folder / "app.py").write_text(APP)
    home = folder / ".kiln"
    store = Store.open(home)
    try:
        spec = ImageSpec.model_validate({"base": BASE.model_dump(), "steps": [
            {"copy": "app.py"}, {"env": {"IMAGE_VAR": "1", "SHARED": "image"}}]})
        return PodmanBuilder(store, home, "ctest").build("web", spec, base_dir=folder)
    finally:
        store.close()


@pytest.fixture(params=["fake", pytest.param("local", marks=pytest.mark.e2e),
                        pytest.param("podman", marks=pytest.mark.e2e)])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[_Base]:
    h: _Base
    if request.param == "fake":
        h = FakeHarness(tmp_path)
    elif request.param == "podman":
        h = PodmanHarness(tmp_path, request.getfixturevalue("podman_image"))
    else:
        h = LocalHarness(tmp_path, request.getfixturevalue("image_dir"))
    try:
        yield h
    finally:
        h.cleanup()
        h.store.close()


@pytest.fixture
def local(tmp_path: Path, image_dir: Path) -> Iterator[LocalHarness]:
    h = LocalHarness(tmp_path, image_dir)
    try:
        yield h
    finally:
        h.cleanup()
        h.store.close()


# ---------------------------------------------------------------------- the contract


def test_launch_n_gets_n_distinct_addresses(harness: _Base) -> None:
    insts = harness.launch(3)
    assert len({i.host for i in insts}) == 3
    assert len({i.id for i in insts}) == 3
    if isinstance(harness, PodmanHarness):  # its address on the project's own network
        net = engine.inspect("network", harness.podman.project_network(False)) or {}
        subnet = ipaddress.ip_network(net["subnets"][0]["subnet"])
        assert all(ipaddress.ip_address(i.host) in subnet for i in insts), (subnet, insts)
    else:
        assert all(i.host.startswith("127.") and i.host != "127.0.0.1" for i in insts)
    assert all(i.port == PORT for i in insts)
    listed = {i.id: i.host for i in harness.compute.list_instances("web")}
    assert listed == {i.id: i.host for i in insts}


def test_healthy_after_start(harness: _Base) -> None:
    insts = harness.launch(2)
    ok, failed = harness.compute.wait_healthy(insts, HEALTH)
    assert (len(ok), failed) == (2, [])
    assert all(harness.compute.healthy(i, HEALTH) for i in insts)
    states = {r["state"] for r in harness.store.query("SELECT state FROM instances")}
    assert states == {"running"}


def test_terminate_stops_and_is_idempotent(harness: _Base) -> None:
    (inst,) = harness.launch(1)
    harness.compute.wait_healthy([inst], HEALTH)
    harness.compute.terminate(inst, timeout=5.0)
    assert [o.alive for o in harness.compute.observe([inst])] == [False]
    harness.compute.terminate(inst, timeout=5.0)  # already gone: fine
    row = harness.store.one("SELECT state FROM instances WHERE id = ?", (inst.id,))
    assert row is not None and row["state"] == "stopped"
    assert harness.compute.list_instances("web") == []


def test_observe_sees_a_killed_process_as_dead(harness: _Base) -> None:
    a, b = harness.launch(2)
    harness.compute.wait_healthy([a, b], HEALTH)
    harness.kill(a)
    wait_for(lambda: not harness.compute.observe([a])[0].alive, what="the killed instance dead")
    assert harness.compute.observe([b])[0].alive
    assert harness.compute.sweep() == [f"{a.id}: process is gone, marked dead"]


def test_a_reused_pid_is_not_ours(harness: _Base) -> None:
    (inst,) = harness.launch(1)
    assert harness.compute.observe([inst])[0].alive
    reused = harness.reused(inst)  # same pid, another process's start time
    assert harness.compute.observe([reused])[0].alive is False


def test_env_has_kiln_vars_and_layers_in_order(harness: _Base) -> None:
    (inst,) = harness.launch(1)
    harness.compute.wait_healthy([inst], HEALTH)
    env = harness.env_of(inst)
    assert env["HOST"] == harness.bind_host(inst) and env["PORT"] == str(PORT)
    assert env["KILN_SERVICE"] == "web"
    assert env["KILN_RELEASE"] == "web-ok"
    assert env["KILN_INSTANCE"] == inst.id
    assert env["GREETING"] == "hello" and env["IMAGE_VAR"] == "1"
    assert env["SECRET_TOKEN"] == "s3cr3t-value"
    assert env["SHARED"] == "secret"  # image < service < secrets
    result = harness.compute.exec(inst, "env", timeout=10)
    assert result.exit_code == 0
    assert f"KILN_INSTANCE={inst.id}" in result.stdout
    assert f"HOST={harness.bind_host(inst)}" in result.stdout


def test_a_command_that_exits_at_once_is_reported_quickly(harness: _Base) -> None:
    insts = harness.launch(2, "exits")
    started = time.monotonic()
    ok, failed = harness.compute.wait_healthy(insts, HEALTH, deadline=20.0)
    assert ok == [] and len(failed) == 2
    assert time.monotonic() - started < (5.0 if isinstance(harness, PodmanHarness) else 2.0)
    reason = harness.compute.failure_reason(failed[0])
    assert "exited with code" in reason
    if not isinstance(harness, FakeHarness):
        assert "exited with code 3" in reason and "boom: cannot start" in reason


def test_an_unhealthy_app_fails_at_the_deadline(harness: _Base) -> None:
    (inst,) = harness.launch(1, "unhealthy")
    ok, failed = harness.compute.wait_healthy([inst], HEALTH, deadline=0.5)
    assert ok == [] and failed == [inst]
    assert "not healthy within" in harness.compute.failure_reason(inst)
    assert harness.compute.observe([inst])[0].alive  # failing health does not kill it


def test_terminate_is_graceful(harness: _Base) -> None:
    (inst,) = harness.launch(1)
    harness.compute.wait_healthy([inst], HEALTH)
    harness.compute.terminate(inst, timeout=5.0)
    assert harness.got_sigterm(inst)


def test_terminate_kills_an_app_that_ignores_sigterm(harness: _Base) -> None:
    (inst,) = harness.launch(1, "ignore-term")
    harness.compute.wait_healthy([inst], HEALTH)
    started = time.monotonic()
    harness.compute.terminate(inst, timeout=0.3)
    assert not harness.compute.observe([inst])[0].alive
    assert not harness.got_sigterm(inst)
    if isinstance(harness, LocalHarness):
        assert 0.3 <= time.monotonic() - started < 3.0
    elif isinstance(harness, PodmanHarness):
        assert time.monotonic() - started < 15.0
    else:
        assert isinstance(harness, FakeHarness)
        assert harness.fake.stop_signal(inst) == "sigkill"


@pytest.mark.e2e
def test_a_release_stops_in_one_stop_time_not_one_per_instance(local: LocalHarness) -> None:
    """Destroy and a rollout's end stop a whole release: every instance gets SIGTERM before
    the first wait, so three that ignore it take one 1 s timeout (one by one: at least 3 s)."""
    insts = local.launch(3, "ignore-term")
    local.compute.wait_healthy(insts, HEALTH)
    started = time.monotonic()
    local.local.terminate_release("web-ignore-term", insts, timeout=1.0)
    took = time.monotonic() - started
    assert not any(o.alive for o in local.compute.observe(insts))
    assert {local.local.state_of(i) for i in insts} == {"stopped"}
    assert 1.0 <= took < 2.5, took


def test_kinds_are_recorded_and_filtered(harness: _Base) -> None:
    (svc,) = harness.launch(1)
    (tst,) = harness.launch(1, kind="test")
    assert [i.id for i in harness.compute.list_instances("web")] == [svc.id]
    assert [i.id for i in harness.compute.list_instances("web", kinds=("test",))] == [tst.id]


# ---------------------------------------------------------------------- local only


@pytest.mark.e2e
@pytest.mark.skipif(not bwrap_works(), reason="bubblewrap not usable here")
def test_the_image_is_read_only_to_the_instance(local: LocalHarness, image_dir: Path) -> None:
    (inst,) = local.launch(1)
    root = image_dir / "root"
    result = local.compute.exec(inst, "pwd; touch app.py; echo rc=$?; touch new-file; "
                                "echo rc=$?; touch $HOME/ok && echo scratch-ok", timeout=10)
    lines = result.stdout.split()
    assert lines[0] == str(root)
    assert lines[1:] == ["rc=1", "rc=1", "scratch-ok"], result
    assert "Read-only file system" in result.stderr
    assert not (root / "new-file").exists()
    assert (local.local.scratch(inst) / "ok").exists()


@pytest.mark.e2e
def test_the_recorded_pid_is_the_app_itself(local: LocalHarness, image_dir: Path) -> None:
    (inst,) = local.launch(1)
    pid = pid_of(inst)
    cmdline = Path(f"/proc/{pid}/cmdline")
    # bwrap reports the pid before the sandboxed child has exec'd bash, then the app:
    wait_for(lambda: cmdline.read_bytes().split(b"\0")[:2] == [b"python", b"app.py"],
             interval=0.01, what="the app's own command line")
    exe = os.readlink(f"/proc/{pid}/exe")
    assert Path(exe).resolve() == (image_dir / "root/.venv/bin/python").resolve()
    assert os.getpgid(pid) != os.getpgid(0)  # own session: outlives kiln's ^C


@pytest.mark.e2e
def test_an_exited_instances_log_holds_its_last_line(local: LocalHarness) -> None:
    """The app's exit is seen before its log pump copies the last output; the log path is
    handed out only after the pump did (CI once read an empty log here)."""
    (inst,) = local.launch(1, "exits-on-cue")
    cue = local.local.scratch(inst) / "go"
    wait_for(cue.exists, 10.0, 0.01, what="the app's fifo")
    pump = json.loads((local.local.folder(inst.id) / "pid").read_text())["pgid"]
    os.kill(pump, signal.SIGSTOP)  # the pump is held while the app writes its line and exits
    try:
        with cue.open("w"):
            pass
        wait_for(lambda: not local.compute.observe([inst])[0].alive, 10.0, 0.01,
                 what="the app to exit")
        assert b"boom-late" not in local.local.folder(inst.id).joinpath("log").read_bytes()
        threading.Timer(0.2, os.kill, (pump, signal.SIGCONT)).start()
        assert "boom-late" in local.compute.log_path(inst).read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):  # gone already when the test passed
            os.kill(pump, signal.SIGCONT)


@pytest.mark.e2e
def test_plain_process_fallback_without_bwrap(tmp_path: Path, image_dir: Path) -> None:
    h = LocalHarness(tmp_path, image_dir, sandbox="none")
    try:
        insts = h.launch(2)
        ok, _ = h.compute.wait_healthy(insts, HEALTH)
        assert len(ok) == 2
        h.compute.terminate(insts[0], timeout=5.0)
        assert h.got_sigterm(insts[0])
    finally:
        h.cleanup()
        h.store.close()


@pytest.mark.e2e
def test_crash_before_the_pid_is_recorded_leaves_no_orphan(local: LocalHarness) -> None:
    (inst,) = local.launch(1)
    pid = pid_of(inst)
    # As if kiln was SIGKILLed between spawning and recording the pid:
    with local.store.tx() as c:
        c.execute("UPDATE instances SET handle_json = '{}' WHERE id = ?", (inst.id,))
    from_state = local.compute.list_instances("web")[0]
    assert local.compute.observe([from_state])[0].alive is False
    changes = local.compute.sweep()
    assert f"{inst.id}: stopped orphan process {pid}" in changes
    wait_for(lambda: not Path(f"/proc/{pid}").exists()
             or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3],
             what="the orphan process gone")
    assert local.compute.list_instances("web") == []


@pytest.mark.e2e
def test_secrets_are_never_stored(local: LocalHarness) -> None:
    (inst,) = local.launch(1)
    local.compute.wait_healthy([inst], HEALTH)
    local.store.conn.execute("PRAGMA wal_checkpoint(FULL)")
    for path in local.home.rglob("*"):
        if path.is_file() and path.name != "log":
            assert b"s3cr3t-value" not in path.read_bytes(), path
    record = json.loads((local.local.folder(inst.id) / "instance.json").read_text())
    assert record["secret_keys"] == ["SECRET_TOKEN", "SHARED"]
    # exec gets secrets only when the caller passes them again
    out = local.compute.exec(inst, "echo ${SECRET_TOKEN:-none}", timeout=10)
    assert out.stdout.strip() == "none"
    again = local.local.exec(inst, "echo $SECRET_TOKEN", timeout=10,
                             env={"SECRET_TOKEN": "s3cr3t-value"})
    assert again.stdout.strip() == "s3cr3t-value"


@pytest.mark.e2e
def test_a_taken_port_moves_the_instance_to_another_address(local: LocalHarness) -> None:
    # The address its launch tries first: the range is keyed by project and folder, and the
    # counter is the instances table's row count (0 in a fresh project).
    first = address_for(f"{local.local.project}@{local.local.home.resolve()}", 0)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((first, PORT))
        squatter.listen()
        (inst,) = local.launch(1)
    assert inst.host != first
    ok, _ = local.compute.wait_healthy([inst], HEALTH)
    assert ok == [inst]


@pytest.mark.e2e
def test_exec_timeout_kills_the_command(local: LocalHarness) -> None:
    (inst,) = local.launch(1)
    started = time.monotonic()
    result = local.compute.exec(inst, "sleep 30", timeout=0.3)
    assert result.exit_code == 124 and "timed out" in result.stderr
    assert time.monotonic() - started < 5.0


def test_a_missing_image_is_a_clear_error(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "home")
    compute = LocalCompute(store, tmp_path / "home", "ctest", sandbox="none")
    image = Image("web", "sha256:" + "c" * 64, str(tmp_path / "gone"))
    release = Release.of("web-r1", "web", 1, ReleaseImage.of(image), _service("ok"), "c")
    with pytest.raises(NotFound, match="missing from the store"):
        compute.launch("web", _service("ok"), release, image, 1, env={})
    assert store.query("SELECT * FROM instances") == []
    store.close()


LAUNCHER = """
import json, sys
from pathlib import Path
from kiln.platforms.base import Image, Release, ReleaseImage
from kiln.platforms.local.compute import LocalCompute
from kiln.platforms.local.handle import LocalHandle
from kiln.platforms.podman.builder import PodmanBuilder
from kiln.platforms.podman import engine
from kiln.platforms.podman.compute import PodmanCompute
from kiln.platforms.podman.handle import PodmanHandle
from kiln.testing.images import register
from kiln.testing.podman import BASE, remove_containers
from kiln.spec.models import ServiceSpec
from kiln.state.store import Store
home, ref, project, port = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
store = Store.open(home)
svc = ServiceSpec(image="web", command="python app.py ok", port=port, listen="127.0.0.1:9")
image = Image("web", "sha256:" + "b" * 64, ref)
register(store, image)
(inst,) = LocalCompute(store, home, project).launch(
    "web", svc, Release.of("web-r9", "web", 9, ReleaseImage.of(image), svc, "c"), image, 1,
    env={})
print(json.dumps(inst.id))
"""


@pytest.mark.e2e
def test_instances_outlive_the_command_that_launched_them(local: LocalHarness,
                                                          image_dir: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", LAUNCHER, str(local.home), str(image_dir), local.local.project,
         str(PORT)], capture_output=True, text=True, timeout=60, check=True)
    instance_id = json.loads(done.stdout)
    (inst,) = local.compute.list_instances("web")
    assert inst.id == instance_id
    ok, _ = local.compute.wait_healthy([inst], HEALTH)  # its launcher has exited
    assert ok == [inst]
    local.compute.terminate(inst, timeout=5.0)  # from another process: no Popen to lean on
    assert local.got_sigterm(inst)
    assert not local.compute.observe([inst])[0].alive


@pytest.mark.e2e
def test_gc_removes_only_folders_of_stopped_instances(local: LocalHarness) -> None:
    keep, drop = local.launch(2)
    local.compute.terminate(drop, timeout=5.0)
    assert local.local.gc_folders() == [drop.id]
    assert local.local.folder(keep.id).is_dir()
    assert not local.local.folder(drop.id).exists()


@pytest.mark.e2e
def test_a_container_is_locked_down_as_launched(tmp_path: Path, podman_image: Image) -> None:
    h = PodmanHarness(tmp_path, podman_image)
    try:
        svc = ServiceSpec.model_validate({**_service("ok").model_dump(by_alias=True),
                                          "resources": {"cpus": 0.5, "memory": "96M"}})
        release = Release.of("web-ok", "web", 1, ReleaseImage.of(podman_image), svc, "c")
        (inst,) = h.podman.launch("web", svc, release, podman_image, 1, env={"TOKEN": "t0k"})
        h.podman.wait_healthy([inst], HEALTH)
        out = subprocess.run(["podman", "inspect", PodmanHandle.of(inst).name],
                             capture_output=True, text=True, check=True, timeout=60).stdout
        data = json.loads(out)[0]
        host = data["HostConfig"]
        assert host["ReadonlyRootfs"] is True
        assert host["Memory"] == 96 * 1024 * 1024 and host["NanoCpus"] == 500_000_000
        assert data["Config"]["User"] == "65534:65534"
        assert data["EffectiveCaps"] in (None, [])
        assert not host.get("PortBindings")  # reached on the project network, not published
        networks = data["NetworkSettings"]["Networks"]
        assert list(networks) == [h.podman.project_network(False)]
        assert networks[h.podman.project_network(False)]["IPAddress"] == inst.host
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert "t0k" not in ps  # secrets never on a command line
        assert h.env_of(inst)["TOKEN"] == "t0k"
        result = h.podman.exec(inst, "touch /app/x", timeout=10)
        assert result.exit_code != 0 and "Read-only file system" in result.stderr
    finally:
        h.cleanup()
        h.store.close()


@pytest.mark.e2e
def test_a_container_no_live_row_records_is_an_orphan(tmp_path: Path,
                                                      podman_image: Image) -> None:
    h = PodmanHarness(tmp_path, podman_image)
    try:
        (inst,) = h.launch(1)
        assert h.podman.orphans() == []
        with h.store.tx() as c:  # as if the state had lost it
            c.execute("UPDATE instances SET state = 'stopped' WHERE id = ?", (inst.id,))
        (orphan,) = h.podman.orphans()
        assert orphan[0] == inst.id and orphan[1] > 0
        name = PodmanHandle.of(inst).name
        assert f"{inst.id}: stopped orphan container {name}" in h.podman.sweep()
        assert h.podman.orphans() == [] and not h.compute.observe([inst])[0].alive
    finally:
        h.cleanup()
        h.store.close()


@pytest.mark.e2e
def test_a_compound_command_drains_on_sigterm_in_a_container(tmp_path: Path,
                                                             podman_image: Image) -> None:
    """`podman stop` reaches the app of `cd x && A=1 app` (dash would die of SIGTERM and take
    the container down under the app), and a simple command with assignments is exec'd."""
    h = PodmanHarness(tmp_path, podman_image)
    try:
        compound = _service("ok").model_copy(update={
            "command": "cd /app && MARK=compound python app.py ok", "stop_timeout": 30.0})
        release = Release.of("web-ok", "web", 1, ReleaseImage.of(podman_image), compound, "c")
        (inst,) = h.podman.launch("web", compound, release, podman_image, 1, env={})
        ok, _ = h.podman.wait_healthy([inst], HEALTH)
        assert ok == [inst] and h.env_of(inst)["MARK"] == "compound"
        began = time.monotonic()
        h.podman.terminate(inst, timeout=30.0)
        assert time.monotonic() - began < 10.0  # the app exited on SIGTERM, no SIGKILL at 30 s
        assert h.got_sigterm(inst)
        simple = _service("ok").model_copy(update={"command": "MARK='a b' python app.py ok"})
        (inst,) = h.podman.launch("web", simple, release, podman_image, 1, env={})
        h.podman.wait_healthy([inst], HEALTH)
        assert h.env_of(inst)["MARK"] == "a b"
        top = subprocess.run(["podman", "top", PodmanHandle.of(inst).name, "args"],
                             capture_output=True, text=True, check=True, timeout=60).stdout
        assert [ln.split()[0] for ln in top.splitlines()[1:]] == ["/run/podman-init", "python"]
    finally:
        h.cleanup()
        h.store.close()


@pytest.mark.e2e
def test_the_file_check_container_is_swept_only_once_stale(tmp_path: Path, podman_image: Image,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """An unstarted container file checks read the image through belongs to a `kiln test` still
    running until it is an hour old; then `sweep()` removes it (a killed kiln left it)."""
    from kiln.platforms.podman import compute as podman_compute

    h = PodmanHarness(tmp_path, podman_image)
    try:
        with h.podman.image_files(podman_image) as files:
            assert files.stat("app.py") is not None and b"SIGTERM" in files.read("app.py")
            assert h.podman.sweep() == [] and files.container in h.podman.containers()
            monkeypatch.setattr(podman_compute, "FILES_GRACE", 0.0)
            h.podman.sweep()
            assert files.container not in h.podman.containers()
    finally:
        h.cleanup()
        h.store.close()


@pytest.mark.parametrize(("part", "capabilities"), [
    (FakeCompute, {"Sweeper"}),
    (LocalCompute, {"Sweeper", "OrphanFinder", "ExitStatus", "ReleaseTerminator"}),
    (PodmanCompute, {"Sweeper", "OrphanFinder", "TamperCheck", "ImageFileReader",
                     "TestinfraBackend", "ExitStatus", "ReleaseTerminator"}),
    # File checks on a test instance; a release goes with its ASG; a killed run's test
    # instance is swept; logs are read from the instances; an ASG heals itself.
    (AwsCompute, {"ImageFileReader", "ReleaseTerminator", "Sweeper", "RemoteLogs"}),
])
def test_declares_its_capabilities(part: type, capabilities: set[str]) -> None:
    """Each compute names its optional capabilities, and the core's `isinstance` finds exactly
    those (no method matching one by chance, none declared but missing)."""
    assert caps.declared(part, caps.COMPUTE) == capabilities
    assert caps.answered(part, caps.COMPUTE) == capabilities
    assert caps.declared(part, caps.ROUTER + caps.BUILDER + caps.PLATFORM) == set()
