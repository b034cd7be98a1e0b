"""Local instances are limited (issue 20, item 5): a fork bomb stops at the pids limit, memory
beyond the limit gets the instance OOM-killed, a log is capped and rotated, and no cgroup folder is
left behind by terminate or by a crash that sweep cleans up. Real processes, real cgroups."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln import logpump
from kiln.platforms.base import Image, Instance, Release, ReleaseImage
from kiln.platforms.local import cgroups
from kiln.platforms.local.compute import LocalCompute
from kiln.platforms.local.handle import LocalHandle
from kiln.spec.models import Health, ServiceSpec
from kiln.state.store import Store
from kiln.testing.images import register
from kiln.testing.project import wait_for

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(os.geteuid() != 0 or cgroups.host_hierarchy() is None,
                                 reason="needs root and a cgroup hierarchy with memory and pids")]

HEALTH = Health(path="/", timeout=1.0, deadline=30.0)
SERVE = r'''
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a): pass
def serve():
    http.server.ThreadingHTTPServer((os.environ["HOST"], int(os.environ["PORT"])), H).serve_forever()
'''
FORK_BOMB = SERVE + r'''
import subprocess, sys
started = refused = 0
procs = []
for _ in range(2000):
    try:
        procs.append(subprocess.Popen(["sleep", "600"]))
        started += 1
    except OSError:
        refused += 1
print(f"started={started} refused={refused}", flush=True)
for p in procs[-50:]:  # room for the server's threads
    p.kill(); p.wait()
serve()
'''
EAT = r'''
import sys
chunks = []
for i in range(64):  # 16 MiB a step, each page touched: up to 1 GiB
    chunks.append(bytearray(b"x" * (16 << 20)))
    print(f"holding {(i + 1) * 16} MiB", flush=True)
print("survived", flush=True)
'''
FLOOD = SERVE + r'''
import sys, time
line = b"x" * 1023 + b"\n"
t0 = time.monotonic()
for _ in range(30 * 1024):  # 30 MiB
    sys.stdout.buffer.write(line)
sys.stdout.buffer.write(b"FLOOD-DONE\n")
sys.stdout.flush()
print(f"wrote 30 MiB in {time.monotonic() - t0:.2f}s", flush=True)
serve()
'''


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    ref = tmp_path_factory.mktemp("limits-image")
    root = ref / "root"
    root.mkdir()
    for name, text in (("bomb.py", FORK_BOMB), ("eat.py", EAT), ("flood.py", FLOOD),
                       ("serve.py", SERVE + "serve()\n")):
        (root / name).write_text(text)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / ".venv")],
                   check=True, capture_output=True)
    return Image("web", "sha256:" + "d" * 64, str(ref))


class Host:
    def __init__(self, tmp_path: Path, image: Image) -> None:
        self.home = tmp_path / ".kiln"
        self.store = Store.open(self.home)
        self.compute = LocalCompute(self.store, self.home, f"limits-{tmp_path.name}")
        self.image = register(self.store, image)  # as a bake would: launches verify it
        self.port = 29000 + os.getpid() % 1000

    def launch(self, command: str, **spec: object) -> Instance:
        svc = ServiceSpec(image="web", command=command, port=self.port,
                          listen="127.0.0.1:9", **spec)
        release = Release.of("web-r1", "web", 1, ReleaseImage.of(self.image), svc, "c")
        (inst,) = self.compute.launch("web", svc, release, self.image, 1, env={})
        return inst

    def healthy(self, inst: Instance) -> None:
        ok, _ = self.compute.wait_healthy([inst], HEALTH)
        assert ok == [inst], self.compute.failure_reason(inst)

    def cgroup(self, inst: Instance) -> cgroups.Cgroup:
        cg = cgroups.recorded(self.compute.folder(inst.id))
        assert cg is not None and cg.exists()
        return cg


@pytest.fixture
def host(tmp_path: Path, image: Image) -> Iterator[Host]:
    h = Host(tmp_path, image)
    try:
        yield h
    finally:
        for inst in h.compute.list_instances(kinds=("service", "test", "dev"), live_only=False):
            h.compute.terminate(inst, timeout=2.0)
        h.compute.sweep()
        h.store.close()


def _read(path: str, name: str) -> str:
    return Path(path, name).read_text().strip()


def test_a_fork_bomb_stops_at_the_default_pids_limit(host: Host) -> None:
    inst = host.launch("python bomb.py")
    host.healthy(inst)
    cg = host.cgroup(inst)
    pids_dir = next(p for p in cg.paths if "pids" in p or cg.version == 2)
    assert _read(pids_dir, "pids.max") == "512"
    line = next(ln for ln in host.compute.log_tail(inst).splitlines() if ln.startswith("started="))
    started, refused = (int(part.split("=")[1]) for part in line.split())
    assert started < 512 and refused > 1400, line
    assert len(cg.pids()) <= 512
    sleeps = [p for p in cg.pids() if Path(f"/proc/{p}/comm").read_text().strip() == "sleep"]
    assert len(sleeps) == started - 50
    events = Path(pids_dir, "pids.events")
    if events.exists():  # the kernel's own count of refused forks
        assert int(events.read_text().split()[1]) >= refused
    host.compute.terminate(inst, timeout=5.0)
    assert not cg.exists(), "terminate leaves no cgroup folder"
    assert all(_gone(p) for p in sleeps)


def test_memory_beyond_the_limit_gets_the_instance_oom_killed(host: Host) -> None:
    inst = host.launch("python eat.py", resources={"memory": "64M"})
    cg = host.cgroup(inst)
    mem_dir = next(p for p in cg.paths if "memory" in p or cg.version == 2)
    limit_file = "memory.max" if cg.version == 2 else "memory.limit_in_bytes"
    assert int(_read(mem_dir, limit_file)) == 64 << 20
    wait_for(lambda: not host.compute.observe([inst])[0].alive, timeout=30.0,
             what="the instance to be OOM-killed")
    _ok, failed = host.compute.wait_healthy([inst], HEALTH)
    assert failed == [inst]
    reason = host.compute.failure_reason(inst)
    assert "OOM killer" in reason, reason
    assert "survived" not in host.compute.log_tail(inst, 200)
    assert f"{inst.id}: process is gone, marked dead" in host.compute.sweep()
    host.compute.terminate(inst, timeout=2.0)
    assert not cg.exists()


def test_the_default_memory_limit_applies(host: Host) -> None:
    inst = host.launch("python serve.py")
    host.healthy(inst)
    cg = host.cgroup(inst)
    mem_dir = next(p for p in cg.paths if "memory" in p or cg.version == 2)
    limit_file = "memory.max" if cg.version == 2 else "memory.limit_in_bytes"
    assert int(_read(mem_dir, limit_file)) == 512 << 20
    res = host.compute.exec(inst, "cat /proc/self/cgroup", timeout=20)
    assert res.exit_code == 0, res
    assert all(inst.id in line for line in res.stdout.splitlines()
               if line.split(":")[1] in ("memory", "pids")), res.stdout


def test_a_flooding_log_is_capped_and_rotated(host: Host) -> None:
    inst = host.launch("python flood.py", logs={"max_size": "1M", "keep": 2})
    host.healthy(inst)
    log = host.compute.log_path(inst)
    wait_for(lambda: b"wrote 30 MiB" in logpump.tail(str(log), 4096), timeout=30.0,
             what="the flood to finish")
    files = sorted(p.name for p in log.parent.iterdir() if p.name.startswith("log"))
    assert files == ["log", "log.1", "log.2"]
    total = sum((log.parent / f).stat().st_size for f in files)
    assert total <= 3 << 20, total
    tail = host.compute.log_tail(inst, 3)
    assert "FLOOD-DONE" in tail and "wrote 30 MiB" in tail, tail
    print(tail.splitlines()[-1])


def test_sweep_kills_what_is_left_in_the_cgroup_of_a_dead_instance(host: Host) -> None:
    # Without bubblewrap there is no pid namespace: a process that left the session outlives
    # its process group. Its cgroup still holds it, and sweep finds it there.
    host.compute = LocalCompute(host.store, host.home, host.compute.project, sandbox="none")
    inst = host.launch("setsid sleep 600 & exec python serve.py")
    host.healthy(inst)
    cg = host.cgroup(inst)
    pid = LocalHandle.of(inst).pid
    assert pid is not None
    os.killpg(os.getpgid(pid), signal.SIGKILL)  # the instance dies with nobody to clean up
    wait_for(lambda: not host.compute.observe([inst])[0].alive, timeout=10.0,
             what="the instance to die")
    (stray,) = cg.pids()
    assert Path(f"/proc/{stray}/comm").read_text().strip() == "sleep"
    host.compute._procs.clear()  # a new kiln process: it knows only the state and the folders
    changes = host.compute.sweep()
    assert f"{inst.id}: process is gone, marked dead" in changes
    assert f"{inst.id}: killed 1 process(es) left in its cgroup" in changes, changes
    assert not cg.exists()
    assert _gone(stray)


def _gone(pid: int) -> bool:
    """Not running: no such process, or a zombie its new parent has not reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2] in "ZX"
