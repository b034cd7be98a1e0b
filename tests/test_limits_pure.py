"""Pure logic of instance limits: which cgroup hierarchy a host has, what is written where, the
spec's defaults, and the log pump's rotation and tail (a real pump process on a small cap)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kiln import logpump
from kiln.platforms.local import cgroups
from kiln.spec.podman import DEFAULT_MEMORY, DEFAULT_PIDS, Logs, Resources

V1_MOUNTS = """\
30 24 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
34 30 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
35 30 0:31 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
"""
V1_SELF = "9:pids:/user.slice\n4:memory:/process_api/abc\n2:cpu,cpuacct:/\n0::/\n"


def test_v1_nests_each_controller_under_the_cgroup_kiln_runs_in() -> None:
    # the v2 mount here has no controllers (its cgroup.controllers cannot be read): v1 wins
    h = cgroups.detect(V1_MOUNTS, V1_SELF)
    assert h is not None and h.version == 1
    assert h.parents == {"memory": "/sys/fs/cgroup/memory/process_api/abc",
                         "pids": "/sys/fs/cgroup/pids/user.slice",
                         "cpu": "/sys/fs/cgroup/cpu,cpuacct"}


def test_v2_with_memory_and_pids_is_preferred(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    mounts = f"31 30 0:27 / {tmp_path} rw - cgroup2 cgroup2 rw\n" + V1_MOUNTS
    h = cgroups.detect(mounts, V1_SELF)
    assert h is not None and h.version == 2
    assert h.parents == {"unified": str(tmp_path / "kiln")} and h.root == str(tmp_path)


@pytest.mark.parametrize("mounts", [
    "", "30 24 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n",  # no pids
])
def test_no_usable_hierarchy(mounts: str) -> None:
    assert cgroups.detect(mounts, V1_SELF) is None


@pytest.mark.parametrize(("version", "ctrl", "limits", "expected"), [
    (1, "memory", cgroups.Limits(64 << 20, 100),
     [("memory.limit_in_bytes", "67108864"), ("memory.memsw.limit_in_bytes", "67108864")]),
    (1, "pids", cgroups.Limits(64 << 20, 100), [("pids.max", "100")]),
    (1, "cpu", cgroups.Limits(64 << 20, 100), []),
    (1, "cpu", cgroups.Limits(64 << 20, 100, 0.5),
     [("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", "50000")]),
    (2, "unified", cgroups.Limits(1 << 30, 512, 2.0),
     [("memory.max", "1073741824"), ("memory.swap.max", "0"), ("memory.oom.group", "1"),
      ("pids.max", "512"), ("cpu.max", "200000 100000")]),
])
def test_limit_files(version: int, ctrl: str, limits: cgroups.Limits,
                     expected: list[tuple[str, str]]) -> None:
    assert cgroups.limit_files(version, ctrl, limits) == expected


def test_join_argv_writes_its_own_pid_before_exec(tmp_path: Path) -> None:
    procs = [tmp_path / "a" / "cgroup.procs", tmp_path / "b" / "cgroup.procs"]
    for p in procs:
        p.parent.mkdir()
        p.write_text("")
    cg = cgroups.Cgroup(1, tuple(str(p.parent) for p in procs))
    out = subprocess.run([*cgroups.join_argv(cg), "/bin/sh", "-c", "echo $$"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert [p.read_text().strip() for p in procs] == [out, out]  # same pid: exec, not fork
    assert cgroups.join_argv(None) == []


def test_record_round_trip(tmp_path: Path) -> None:
    cg = cgroups.Cgroup(1, ("/sys/fs/cgroup/memory/kiln-x", "/sys/fs/cgroup/pids/kiln-x"))
    cgroups.record(tmp_path, cg)
    assert cgroups.recorded(tmp_path) == cg
    (tmp_path / cgroups.RECORD).write_text("{not json")
    assert cgroups.recorded(tmp_path) is None


def test_spec_defaults_apply_when_unset() -> None:
    res = Resources()
    assert (res.memory_limit, res.pids_limit, res.cpus) == (DEFAULT_MEMORY, DEFAULT_PIDS, None)
    assert DEFAULT_MEMORY == 512 << 20 and DEFAULT_PIDS == 512
    assert Resources.model_validate({"memory": "64M", "pids": 100}).memory_limit == 64 << 20
    assert Logs.model_validate({"max_size": "1M", "keep": 3}).max_size == 1 << 20
    for bad in ({"pids": 0}, {"pids": "many"}):
        with pytest.raises(ValueError):
            Resources.model_validate(bad)
    with pytest.raises(ValueError):
        Logs.model_validate({"max_size": "1K"})


def test_rotation_keeps_keep_files_and_tail_reads_across(tmp_path: Path) -> None:
    log = str(tmp_path / "log")
    for i in range(5):
        Path(log).write_text(f"generation {i}\n")
        logpump.rotate(log, 2)
    Path(log).write_text("")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log", "log.1", "log.2"]
    assert logpump.tail(log, 1000) == b"generation 3\ngeneration 4\n"
    assert logpump.tail(log, 5) == b"on 4\n"


def test_the_pump_caps_a_flood_and_exits_with_the_commands_status(tmp_path: Path) -> None:
    log = tmp_path / "log"
    flood = "import sys\nfor i in range(20000): print(f'line {i:05d} ' + 'x' * 40)\nsys.exit(3)"
    proc = subprocess.run([sys.executable, "-I", "-S", logpump.__file__, str(log), str(64 << 10),
                           "1", "-", "--", sys.executable, "-c", flood], timeout=60, check=False)
    assert proc.returncode == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log", "log.1"]
    assert all(p.stat().st_size <= 64 << 10 for p in tmp_path.iterdir())
    assert logpump.tail(str(log), 100).splitlines()[-1].startswith(b"line 19999 ")


def test_kiln_logs_shows_lines_from_before_the_rotation(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kiln_cli.render import show_logs

    (tmp_path / "log.1").write_text("".join(f"old {i}\n" for i in range(5)))
    (tmp_path / "log").write_text("new 0\n")
    show_logs([("web-r1-abc", tmp_path / "log")], follow=False, lines=3)
    assert capsys.readouterr().out.splitlines() == [
        "web-r1-abc | old 3", "web-r1-abc | old 4", "web-r1-abc | new 0"]
