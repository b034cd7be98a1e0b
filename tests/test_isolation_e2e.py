"""A local instance cannot escape its sandbox: the probes of issue 10, each from inside a real
instance (bubblewrap, real processes), plus the guarantees the rest of kiln leans on (the app's own
loopback address, the recorded pid, terminate killing the whole tree)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.platforms.base import Image, Instance, Release, ReleaseImage
from kiln.platforms.local.compute import LocalCompute
from kiln.platforms.local.handle import LocalHandle
from kiln.platforms.local.sandbox import bwrap_works
from kiln.spec.models import Health, ServiceSpec
from kiln.state.store import Store
from kiln.testing.images import register
from kiln.testing.project import wait_for

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not bwrap_works(), reason="bubblewrap not usable here")]

HEALTH = Health(path="/healthz", timeout=1.0, deadline=15.0)
APP = r'''
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer((os.environ["HOST"], int(os.environ["PORT"])), H).serve_forever()
'''


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    ref = tmp_path_factory.mktemp("iso-image")
    root = ref / "root"
    root.mkdir()
    (root / "app.py").write_text(APP)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / ".venv")],
                   check=True, capture_output=True)
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if not path.is_symlink():
                path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    return Image("web", "sha256:" + "e" * 64, str(ref))


class Host:
    """A project home with a state.db, a secret file and instances of two services."""

    def __init__(self, tmp_path: Path, image: Image) -> None:
        self.project = tmp_path
        self.home = tmp_path / ".kiln"
        self.store = Store.open(self.home)
        self.compute = LocalCompute(self.store, self.home, f"iso-{tmp_path.name}")
        self.image = register(self.store, image)
        self.port = 28000 + os.getpid() % 1000

    def launch(self, service: str, secret: str, command: str = "python app.py",
               **spec: object) -> Instance:
        svc = ServiceSpec(image="web", command=command, port=self.port,
                          listen="127.0.0.1:9", **spec)  # type: ignore[arg-type]
        release = Release.of(f"{service}-r1", service, 1, ReleaseImage.of(self.image), svc, "c")
        (inst,) = self.compute.launch(service, svc, release, self.image, 1,
                                      env={"DB_PASSWORD": secret})
        ok, _ = self.compute.wait_healthy([inst], HEALTH)
        assert ok == [inst], self.compute.failure_reason(inst)
        return inst

    def sh(self, inst: Instance, command: str) -> subprocess.CompletedProcess[str]:
        res = self.compute.exec(inst, command, timeout=20)
        return subprocess.CompletedProcess(command, res.exit_code, res.stdout, res.stderr)


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


def pid_of(inst: Instance) -> int:
    pid = LocalHandle.of(inst).pid
    assert pid is not None
    return pid


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[2])  # effective
    raise AssertionError("no Uid line")


def _pidns_members(pid: int) -> list[int]:
    ns = os.readlink(f"/proc/{pid}/ns/pid")
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "ns" / "pid") == ns:
                    members.append(int(entry.name))
            except OSError:
                continue
    return members


def test_shadow_is_not_readable(host: Host) -> None:
    api = host.launch("api", "pw-api")
    out = host.sh(api, "head -c 60 /etc/shadow")
    assert out.returncode != 0 and "root:" not in out.stdout, out


def test_no_privilege_and_no_capabilities(host: Host) -> None:
    api = host.launch("api", "pw-api")
    assert _uid_of(pid_of(api)) != 0  # seen from the host: not root
    out = host.sh(api, "id -u; grep -E '^Cap(Eff|Prm)' /proc/self/status; "
                       "grep NoNewPrivs /proc/self/status")
    lines = out.stdout.split("\n")
    assert lines[0] != "0"
    assert "CapEff:\t0000000000000000" in out.stdout
    assert "CapPrm:\t0000000000000000" in out.stdout
    assert "NoNewPrivs:\t1" in out.stdout


def test_remount_escape_fails(host: Host) -> None:
    api = host.launch("api", "pw-api")
    mark = host.project / "MARK"
    out = host.sh(api, f"umount -l /tmp; mount -o remount,bind,rw /; echo x > {mark}")
    assert out.returncode != 0, out
    assert not mark.exists()


def test_other_instances_and_kiln_state_are_out_of_sight(host: Host) -> None:
    (host.project / "db-secret").write_text("file-secret-value")
    api = host.launch("api", "pw-api")
    other = host.launch("billing", "pw-billing")
    probes = [
        f"tr '\\0' '\\n' < /proc/{pid_of(other)}/environ",
        "cat /proc/*/environ",
        f"cat {host.home}/state.db",
        f"ls {host.home}",
        f"cat {host.compute.folder(other.id)}/instance.json",
        f"ls {host.compute.folder(other.id)}",
        f"cat {host.project}/db-secret",
        "cat /root/.bash_history /root/.ssh/id_rsa",
    ]
    for probe in probes:
        out = host.sh(api, probe + " 2>/dev/null")
        assert "pw-billing" not in out.stdout, probe
        assert "file-secret-value" not in out.stdout, probe
        assert "SQLite format" not in out.stdout, probe
    # Its own pid namespace: the other instance's app is not among its processes.
    seen = host.sh(api, "ls /proc | grep -E '^[0-9]+$' | wc -l").stdout.strip()
    assert int(seen) < 10
    # After the remount attempt nothing more is reachable either.
    out = host.sh(api, f"mount -o remount,bind,rw / 2>/dev/null; cat {host.home}/state.db")
    assert out.returncode != 0 and "SQLite" not in out.stdout


def test_terminate_kills_processes_that_left_the_session(host: Host) -> None:
    api = host.launch("api", "pw-api",
                      command="setsid sleep 300 </dev/null >/dev/null 2>&1 & exec python app.py")
    wait_for(lambda: len(_pidns_members(pid_of(api))) >= 3, 10.0, 0.02,
             what="the escaped sleeper to start")
    members = _pidns_members(pid_of(api))
    sleeper = [p for p in members
               if Path(f"/proc/{p}/cmdline").read_bytes().startswith(b"sleep")]
    assert sleeper and os.getsid(sleeper[0]) != os.getsid(pid_of(api))  # it did leave the session
    host.compute.terminate(api, timeout=5.0)
    for pid in members:
        stat_path = Path(f"/proc/{pid}/stat")
        wait_for(lambda p=stat_path: not p.exists()  # type: ignore[misc]
                 or p.read_text().rsplit(")", 1)[1].split()[0] in "ZX",
                 5.0, 0.02, what=f"process {pid} to be gone")
    assert not host.compute.observe([api])[0].alive


def test_extra_read_only_paths_from_the_spec(host: Host, tmp_path: Path) -> None:
    shared = tmp_path / "shared-data"
    shared.mkdir()
    (shared / "table.csv").write_text("a,b\n")
    shared.chmod(0o755)
    plain = host.launch("api", "pw-api")
    assert host.sh(plain, f"cat {shared}/table.csv").returncode != 0
    bound = host.launch("reports", "pw-r", read_only_paths=[str(shared)])
    out = host.sh(bound, f"cat {shared}/table.csv; touch {shared}/new")
    assert out.stdout == "a,b\n" and out.returncode != 0
    assert not (shared / "new").exists()


def test_the_recorded_pid_is_the_app_and_observed(host: Host) -> None:
    api = host.launch("api", "pw-api")
    assert Path(f"/proc/{pid_of(api)}/cmdline").read_bytes().split(b"\0")[:2] == [b"python",
                                                                              b"app.py"]
    os.kill(pid_of(api), 9)
    wait_for(lambda: not host.compute.observe([api])[0].alive, 10.0, 0.02,
             what="the killed app to be observed dead")
    started = time.monotonic()
    host.compute.terminate(api, timeout=5.0)
    assert time.monotonic() - started < 3.0


def test_a_launch_that_fails_half_way_leaves_no_process_or_live_row(
        host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    import kiln.platforms.local.compute as compute_module

    real = compute_module._write_json
    spawned: list[int] = []

    def fail_on_pidfile(path: Path, data: dict[str, object]) -> None:
        if path.name == "pid":
            spawned.append(int(str(data["pid"])))
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(compute_module, "_write_json", fail_on_pidfile)
    with pytest.raises(OSError, match="No space left"):
        host.launch("api", "pw-api")
    assert spawned
    stat_path = Path(f"/proc/{spawned[0]}/stat")
    wait_for(lambda: not stat_path.exists()
             or stat_path.read_text().rsplit(")", 1)[1].split()[0] in "ZX",
             5.0, 0.02, what="the half-launched process to be gone")
    states = {r["state"] for r in host.store.query("SELECT state FROM instances")}
    assert states == {"dead"}
