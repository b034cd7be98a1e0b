"""End to end: gc and retention, a taken listen port, drift and tamper detection, logs."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import urllib.request
from pathlib import Path

import pytest

from json_contract import conforms
from kiln.platforms.local.traefik_process import read_pidfile
from kiln.testing.load import Load
from kiln.testing.project import KILN, Proj, kill_and_settle, wait_for

pytestmark = pytest.mark.e2e


def deploy_ok(p: Proj, *args: str) -> None:
    res = p.kiln("deploy", *args)
    assert res.returncode == 0, res.stdout + res.stderr


def images(p: Proj) -> list[str]:
    res = p.kiln("images", "--json")
    assert res.returncode == 0, res.stderr
    return [i["digest"] for i in json.loads(res.stdout)]


def test_gc_keeps_recent_releases_and_rollback_to_a_collected_one_is_refused(proj: Proj) -> None:
    proj.write(replicas=1)
    for version in ("1", "2", "3"):
        proj.behave(version=version)
        deploy_ok(proj)
    assert len(images(proj)) == 3
    res = proj.kiln("gc", "--keep", "1", "--json")
    assert res.returncode == 0, res.stderr
    removed = conforms("gc", res.stdout)
    # --keep 1 still keeps the previous live release: the rollback target.
    assert len(removed["images"]) == 1
    assert removed["kept"]["web"] == {"web-r3": "current", "web-r2": "previous (rollback target)"}
    assert len(images(proj)) == 2
    assert removed["instances"], "folders of stopped instances are removed"
    # The running release is untouched.
    assert proj.weights() == {"web-r3": 100} and proj.alive_instances() == 1
    res = proj.kiln("rollback", "web", "--to", "web-r1")
    assert res.returncode == 1
    assert "Traceback" not in res.stderr and "web-r1" not in res.stdout
    line = res.stderr.strip()
    assert "the image of web-r1" in line and "removed by `kiln gc`" in line, line
    assert "web-r2" in line and "kiln rollback web --to" in line, line
    assert "kiln bake" not in line
    assert proj.weights() == {"web-r3": 100}


def abort_a_canary(proj: Proj, version: str) -> None:
    """Deploy `version` as a canary that waits for `kiln promote`, then `kiln abort` it."""
    proj.behave(version=version)
    deploy = subprocess.Popen([KILN, "deploy"], cwd=proj.dir, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: "kiln promote" in proj.kiln("status").stdout, timeout=60)
        res = proj.kiln("abort", "web", "--json")
        assert res.returncode == 0, res.stdout + res.stderr
        result = conforms("result", res.stdout)
        assert result["release"] and result["rollout_id"], result
        out, err = deploy.communicate(timeout=60)
        assert deploy.returncode == 3, out + err
    finally:
        if deploy.poll() is None:
            deploy.kill()
            deploy.wait()


def test_aborted_releases_never_push_the_rollback_target_out(proj: Proj) -> None:
    """Issue 11: two aborted releases + the default --keep 3 removed the previous stable image."""
    proj.write(replicas=1)
    for version in ("1", "2"):
        proj.behave(version=version)
        deploy_ok(proj)
    proj.write(replicas=1, rollout="      strategy: canary\n      steps:\n        - {weight: 10}\n")
    abort_a_canary(proj, "3")
    abort_a_canary(proj, "4")
    by_release = {r["release"]: r for r in json.loads(proj.kiln("history", "web", "--json").stdout
                                                      )["rollouts"]}
    assert [by_release[f"web-r{n}"]["outcome"] for n in (1, 2, 3, 4)] == [
        "promoted", "promoted", "aborted", "aborted"]
    res = proj.kiln("gc", "--json")
    assert res.returncode == 0, res.stderr
    collected = json.loads(res.stdout)
    # r3 was never live and is not the newest bake: its image goes; r1 (rollback target) stays.
    assert collected["images"] == [by_release["web-r3"]["image"]]
    assert {"web-r1", "web-r2"} <= set(collected["kept"]["web"])
    res = proj.kiln("rollback", "web")
    assert res.returncode == 0, res.stdout + res.stderr
    assert proj.weights() == {"web-r1": 100}


def test_listen_port_taken_is_refused_and_nothing_is_started(proj: Proj) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", proj.port))
        s.listen()
        res = proj.kiln("deploy")
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"127.0.0.1:{proj.port}" in res.stderr and "Traceback" not in res.stderr
    assert proj.alive_instances() == 0


def test_drift_sees_a_dead_instance_and_a_tampered_image(proj: Proj) -> None:
    deploy_ok(proj)
    res = proj.kiln("drift", "--json")
    assert res.returncode == 0 and json.loads(res.stdout) == []
    pid = proj.live_pids()[0]
    os.kill(pid, signal.SIGKILL)
    # Tamper with the image a running release uses (as root, read-only bits don't stop us).
    digest = images(proj)[0].removeprefix("sha256:")
    target = proj.dir / ".kiln" / "images" / digest / "root" / "app" / "behaviour.json"
    target.chmod(target.stat().st_mode | stat.S_IWUSR)
    target.write_text('{"version": "evil"}')
    res = proj.kiln("drift", "--json")
    assert res.returncode == 1
    kinds = {item["kind"] for item in json.loads(res.stdout)}
    assert kinds >= {"dead-instance", "tampered-image"}, res.stdout


def test_logs_show_instance_output(proj: Proj) -> None:
    deploy_ok(proj)
    res = proj.kiln("logs", "web", "-n", "100")  # probes that time out on a busy machine log tracebacks
    assert res.returncode == 0, res.stderr
    assert "listening on" in res.stdout
    assert res.stdout.count(" | ") >= 3  # one line from each of the 3 instances
    res = proj.kiln("logs", "nosuch")
    assert res.returncode == 1 and "Traceback" not in res.stderr


def test_destroy_stops_everything(proj: Proj) -> None:
    deploy_ok(proj)
    res = proj.kiln("destroy", "--json")
    assert res.returncode == 0, res.stderr
    assert len(conforms("destroy", res.stdout)["stopped"]) == 3
    assert proj.alive_instances() == 0
    # status and plan say the service is gone, not that web-r1 is current.
    assert "destroyed, nothing runs" in proj.kiln("status").stdout
    svc = proj.status()["services"][0]
    assert svc["destroyed"] and svc["current"] is None
    res = proj.kiln("plan")
    assert "create" in res.stdout and "destroyed earlier" in res.stdout, res.stdout
    pidfile = proj.dir / ".kiln" / "router" / "traefik.pid"
    assert not pidfile.exists() or not _alive(pidfile)


def _alive(pidfile: Path) -> bool:
    text = pidfile.read_text()
    try:
        pid = int(json.loads(text)["pid"]) if text.startswith("{") else int(text.split()[0])
    except (ValueError, KeyError, IndexError):
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


BLUE_GREEN = "      strategy: blue-green\n      scale_down_delay: {delay}\n      drain_timeout: 2s\n"


def test_blue_green_standby_makes_rollback_instant_and_gc_ends_it(proj: Proj) -> None:
    proj.write(rollout=BLUE_GREEN.format(delay="60s"))
    deploy_ok(proj)
    v1_pids = set(proj.live_pids())
    proj.behave(version="2")
    deploy_ok(proj)
    assert proj.weights() == {"web-r2": 100, "web-r1": 0}
    assert v1_pids <= set(proj.live_pids()), "the old set stays on standby"
    res = proj.kiln("rollback", "web")
    assert res.returncode == 0, res.stdout + res.stderr
    assert proj.weights() == {"web-r1": 100}
    # The standby instances took the traffic back: nothing new was launched for web-r1.
    assert set(proj.live_pids()) == v1_pids

    proj.write(rollout=BLUE_GREEN.format(delay="1s"))
    proj.behave(version="3")
    deploy_ok(proj)
    assert len(proj.live_pids()) == 6
    wait_for(lambda: proj.kiln("gc").returncode == 0 and len(proj.live_pids()) == 3, timeout=30,
             interval=0.5)
    assert proj.weights() == {"web-r3": 100}


def test_status_reports_a_dead_router_and_deploy_restarts_it_with_its_routing(proj: Proj) -> None:
    deploy_ok(proj)
    pidfile = proj.dir / ".kiln" / "router" / "traefik.pid"
    pid = int(json.loads(pidfile.read_text())["pid"])
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not _alive(pidfile), timeout=10)
    res = proj.kiln("status")
    assert res.returncode == 0 and "router is not running" in res.stderr, res.stderr
    assert "`kiln deploy`" in res.stderr
    assert proj.status()["router"] == {"needed": True, "running": False}  # read-only
    assert not _alive(pidfile)
    res = proj.kiln("deploy")
    assert res.returncode == 0, res.stdout + res.stderr
    assert proj.status()["router"] == {"needed": True, "running": True}
    with Load(proj.listen, rate=50, max_seconds=3, keep_body=40) as load:
        load.wait()
    assert load.stats.failed == 0 and load.stats.sent > 100, load.stats.summary()
    assert all("version 1" in body for body in load.stats.bodies)


PIDFILES = {"traefik": Path("router") / "traefik.pid", "haproxy": Path("haproxy") / "haproxy.pid"}


@pytest.mark.parametrize(("proj", "to"), [("haproxy", "traefik"), ("traefik", "haproxy")],
                         indirect=["proj"])
def test_a_router_switch_is_made_by_deploy_never_by_a_read(proj: Proj, to: str) -> None:
    """`status`, `plan` and `drift` once stopped the serving router when kiln.yaml named the
    other one (an outage from a read), and the deploy then served the new router's stale
    routing (503s). Now reads report the pending switch, and the deploy routes the new router
    from the state before the old one goes."""
    deploy_ok(proj)
    old = read_pidfile(proj.dir / ".kiln" / PIDFILES[proj.router])
    assert old is not None and old.alive()
    came_from, proj.router = proj.router, to
    proj.write()
    status = proj.kiln("status")
    assert status.returncode == 0, status.stderr
    assert f"{came_from} (pid {old.pid}) still serves the traffic" in status.stderr
    assert "`kiln deploy`" in status.stderr
    assert proj.kiln("plan").returncode == 0
    drift = proj.kiln("drift")
    assert drift.returncode == 1 and "router-switch:" in drift.stdout, drift.stdout
    assert "router serves" not in drift.stdout  # the new router's routing is not compared yet
    assert old.alive()  # three reads later, the old router still serves
    with Load(proj.listen, rate=50, max_seconds=2, keep_body=40) as load:
        load.wait()
    assert load.stats.failed == 0 and load.stats.sent > 50, load.stats.summary()

    deploy_ok(proj)
    assert not old.alive()
    new = read_pidfile(proj.dir / ".kiln" / PIDFILES[to])
    assert new is not None and new.alive()
    with Load(proj.listen, rate=50, max_seconds=2, keep_body=40) as load:
        load.wait()
    assert load.stats.failed == 0 and load.stats.sent > 50, load.stats.summary()
    assert all("version 1" in body for body in load.stats.bodies)
    assert proj.kiln("drift").returncode == 0


def test_rollback_to_a_release_whose_instance_once_died(proj: Proj) -> None:
    deploy_ok(proj)
    kill_and_settle(proj.live_pids()[0])
    proj.behave(version="2")
    deploy_ok(proj)  # sweeps: the dead web-r1 instance is recorded as dead
    res = proj.kiln("rollback", "web")
    assert res.returncode == 0, res.stdout + res.stderr
    assert proj.weights() == {"web-r1": 100} and proj.alive_instances() == 3


def test_a_dead_instance_is_healed_with_the_same_image_and_no_new_release(proj: Proj) -> None:
    proj.write(replicas=2)
    deploy_ok(proj)
    before = set(proj.live_pids())
    os.kill(sorted(before)[0], signal.SIGKILL)
    wait_for(lambda: proj.alive_instances() == 1, timeout=10)
    res = proj.kiln("plan")
    assert res.returncode == 0, res.stderr
    assert "heal" in res.stdout and "1/2 instances of web-r1 alive" in res.stdout, res.stdout
    assert "no new release" in res.stdout, res.stdout
    conforms("plan", proj.kiln("plan", "--json").stdout)
    res = proj.kiln("deploy", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    (svc,) = conforms("deploy", res.stdout)
    assert svc["outcome"] == "healed" and svc["release"] == "web-r1", svc
    assert proj.alive_instances() == 2 and sorted(before)[1] in proj.live_pids()
    status = conforms("status", proj.kiln("status", "--json").stdout)["services"][0]
    assert status["current"] == "web-r1"
    (rel,) = status["releases"]
    assert rel["weight"] == 100 and len(rel["instances"]) == 2
    assert all(i["healthy"] for i in rel["instances"])
    rollouts = conforms("history", proj.kiln("history", "--json").stdout)["rollouts"]
    assert [r["release"] for r in rollouts] == ["web-r1"], "no new release, no canary"
    assert rollouts[0]["report"] and Path(rollouts[0]["report"]).exists()
    # The router serves both instances: requests reach the new one too.
    ids = {i["id"] for i in rel["instances"]}
    seen: set[str] = set()
    for _ in range(60):
        with urllib.request.urlopen(f"http://{proj.listen}/version", timeout=5) as resp:
            seen.add(json.loads(resp.read())["instance"])
        if seen == ids:
            break
    assert seen == ids
    assert "up to date" in proj.kiln("plan").stdout
    assert proj.kiln("plan", "--detailed-exitcode").returncode == 0
    # plan names what changed: spec keys, and the files of copy steps.
    proj.write(replicas=3)
    (proj.dir / "app" / "server.py").write_text((proj.dir / "app" / "server.py").read_text()
                                                 + "\n# changed\n")
    res = proj.kiln("plan", "--detailed-exitcode")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "replicas: 2 -> 3" in res.stdout and "app/server.py" in res.stdout, res.stdout


def test_a_failing_image_test_shows_the_instance_log_and_kiln_logs_reaches_it(proj: Proj) -> None:
    (proj.dir / "app" / "behaviour.json").write_text("{broken")
    res = proj.kiln("test")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "log of test instance" in res.stdout, res.stdout
    assert "JSONDecodeError" in res.stdout, "the traceback's cause is shown, not only its last line"
    res = proj.kiln("test", "--json")
    (result,) = conforms("test", res.stdout)
    assert any("JSONDecodeError" in line for line in result["log_tail"])
    # deploy: the gate refuses, says where the log is, and shows it.
    res = proj.kiln("deploy")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "JSONDecodeError" in res.stdout and "kiln logs web --test" in res.stderr, res.stderr
    # kiln logs: nothing runs, so the newest instance (the failed test's) is shown.
    for args in (["logs"], ["logs", "web", "--test"]):
        res = proj.kiln(*args)
        assert res.returncode == 0, res.stderr
        assert "JSONDecodeError" in res.stdout and "web-test-" in res.stdout, res.stdout
    res = proj.kiln("logs", "--json", "-n", "3")
    (src,) = conforms("logs", res.stdout)
    assert src["kind"] == "test" and len(src["lines"]) == 3


def test_a_failed_health_gate_shows_the_dying_instance_log(proj: Proj) -> None:
    proj.write(replicas=1)
    deploy_ok(proj)
    # Passes the image test (one instance, http check) but the release's instances crash:
    # the service gets a command the test instance does not run.
    (proj.dir / "kiln.yaml").write_text((proj.dir / "kiln.yaml").read_text().replace(
        "command: python -m app", "command: python -c 'import app.nosuchmodule'"))
    res = proj.kiln("deploy", "--skip-tests")
    assert res.returncode == 3, res.stdout + res.stderr
    assert "ModuleNotFoundError" in res.stdout, res.stdout
