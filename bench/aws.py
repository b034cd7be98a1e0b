"""AWS benchmark on moto's server (loopback): what kiln's canary costs in API calls and wall time
against the same rollout written as plain boto3 calls (the floor), and a leak audit.

R1 (cost): a service of 3 instances, r1 live; a canary to r2 with 2 steps (10%, 50%, pause 0),
no judge. kiln = `Project.deploy()` with the AMI already baked (bake is measured apart), its
calls counted by botocore's before-call hook. Floor = the calls a hand-written script needs for
the same change (create TG + attribute, launch template, ASG at 3, one describe of the ASG, one
of target health, three listener changes, then delete r1's ASG, TG and launch template), run
against the same moto server. Several runs; min/median/max.
R2 (leaks), as issue 21 states it: 20 deploys, 5 failed bakes (the last step fails on the
builder), 5 failed image tests (on moto an http check sees no output: it fails, as it must), and
3 SIGKILLs of `kiln deploy`: in a bake and after routing (each followed by a rerun), and during
its image test, after which the next command (a plain deploy) must have removed the test
instance and its security group. Then `kiln destroy`: every resource tagged kiln:project is
accounted for (the live release's fleet and the retained AMIs) or gone. Leaks = tagged
resources that are neither, plus anything of the killed test left after the next command.

Run: .venv/bin/python bench/aws.py [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import boto3

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from aws_helpers import open_project, write_project  # noqa: E402
from kiln.platforms.aws.bake import SsmRunner  # noqa: E402
from kiln.platforms.aws.client import Aws  # noqa: E402
from kiln.platforms.aws.fleet import Names  # noqa: E402
from kiln.platforms.aws.inventory import count, tagged  # noqa: E402
from kiln.testing.moto import REGION, MotoServer, moto_server  # noqa: E402
from kiln.testing.project import KILN, wait_for  # noqa: E402


def fmt(xs: Sequence[float]) -> str:
    return f"{min(xs):.2f} / {statistics.median(xs):.2f} / {max(xs):.2f}"


def kiln_rollout(moto: MotoServer, folder: Path) -> tuple[int, float, Counter[str]]:
    path = write_project(folder, moto)
    with closing(open_project(path)) as first:
        first.deploy()
    write_project(folder, moto, version="2")
    project = open_project(path)
    project.bake()
    aws: Aws = project.platform.aws
    before = Counter(aws.calls)
    t0 = time.perf_counter()
    result = project.deploy()
    took = time.perf_counter() - t0
    assert result.services[0].outcome == "promoted", result
    calls = Counter(aws.calls)
    calls.subtract(before)
    project.destroy()
    project.close()
    return sum(calls.values()), took, +calls


def floor_rollout(moto: MotoServer, folder: Path) -> tuple[int, float]:
    """r1 as kiln left it, then r2 the way a short script would do it."""
    path = write_project(folder, moto)
    with closing(open_project(path)) as first:
        first.deploy()
    write_project(folder, moto, version="2")
    with closing(open_project(path)) as project:
        ami = project.bake()[0].ref
    names = Names("shop")
    session = boto3.session.Session(region_name=REGION)
    kw: dict[str, Any] = {"endpoint_url": moto.url}
    ec2, elbv2 = session.client("ec2", **kw), session.client("elbv2", **kw)
    asg = session.client("autoscaling", **kw)
    calls = Counter[str]()
    for c in (ec2, elbv2, asg):
        c.meta.events.register("before-call", lambda model, **_: calls.update([model.name]))
    lb = elbv2.describe_load_balancers(Names=[names.alb])["LoadBalancers"][0]
    listener = elbv2.describe_listeners(LoadBalancerArn=lb["LoadBalancerArn"])["Listeners"][0]
    old_tg = elbv2.describe_target_groups(Names=[names.target_group("web-r1")])["TargetGroups"][0]
    vpc = old_tg["VpcId"]
    subnets = ",".join(s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]
                       if s.get("DefaultForAz"))
    calls.clear()
    t0 = time.perf_counter()
    tg = elbv2.create_target_group(Name="floor-r2", Protocol="HTTP", Port=8000, VpcId=vpc,
                                   HealthCheckPath="/healthz")["TargetGroups"][0]["TargetGroupArn"]
    elbv2.modify_target_group_attributes(TargetGroupArn=tg, Attributes=[
        {"Key": "deregistration_delay.timeout_seconds", "Value": "0"}])
    lt = ec2.create_launch_template(LaunchTemplateName="floor-r2", LaunchTemplateData={
        "ImageId": ami, "InstanceType": "t3.micro"})["LaunchTemplate"]["LaunchTemplateId"]
    asg.create_auto_scaling_group(AutoScalingGroupName="floor-r2", MinSize=0, MaxSize=6,
                                  DesiredCapacity=3, VPCZoneIdentifier=subnets,
                                  LaunchTemplate={"LaunchTemplateId": lt, "Version": "1"},
                                  TargetGroupARNs=[tg])
    asg.describe_auto_scaling_groups(AutoScalingGroupNames=["floor-r2"])
    health = elbv2.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"]
    assert len(health) == 3 and all(h["TargetHealth"]["State"] == "healthy" for h in health)
    for weight in (10, 50, 100):
        groups = [{"TargetGroupArn": tg, "Weight": weight}]
        if weight < 100:
            groups.append({"TargetGroupArn": old_tg["TargetGroupArn"], "Weight": 100 - weight})
        elbv2.modify_listener(ListenerArn=listener["ListenerArn"], DefaultActions=[
            {"Type": "forward", "ForwardConfig": {"TargetGroups": groups}}])
    asg.delete_auto_scaling_group(AutoScalingGroupName=names.asg("web-r1"), ForceDelete=True)
    elbv2.delete_target_group(TargetGroupArn=old_tg["TargetGroupArn"])
    ec2.delete_launch_template(LaunchTemplateName=names.launch_template("web-r1"))
    took = time.perf_counter() - t0
    n = sum(calls.values())
    # Leave moto clean for the next run.
    elbv2.delete_listener(ListenerArn=listener["ListenerArn"])
    asg.delete_auto_scaling_group(AutoScalingGroupName="floor-r2", ForceDelete=True)
    elbv2.delete_target_group(TargetGroupArn=tg)
    ec2.delete_launch_template(LaunchTemplateName="floor-r2")
    return n, took  # the caller resets moto


class FailLast(SsmRunner):
    """The bake's last step fails on the builder (after it was launched and ran the others)."""

    def __init__(self, steps: int) -> None:
        self.steps, self.n = steps, 0

    def run(self, aws: Aws, instance_id: str, lines: Sequence[str], timeout: float
            ) -> tuple[bool, str]:
        self.n += 1
        return (False, "Failed: injected") if self.n == self.steps else super().run(
            aws, instance_id, lines, timeout)


def kiln_cli(folder: Path, *args: str, fault: str | None = None) -> int:
    env = {**os.environ, **({"KILN_FAULT": fault} if fault else {})}
    return subprocess.run([KILN, *args], cwd=folder, capture_output=True, text=True,
                          timeout=600, env=env).returncode


def recorded_tests(folder: Path) -> list[str]:
    """Test instances kiln's state records as live (read-only, beside a running kiln)."""
    db = folder / ".kiln" / "state.db"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return [r[0] for r in conn.execute("SELECT id FROM instances WHERE kind = 'test' AND "
                                           "state IN ('starting', 'running')")]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def test_leftovers(moto: MotoServer) -> list[str]:
    """Instances and security groups tagged kiln:role=test that still exist."""
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=moto.url)
    res = ec2.describe_instances(Filters=[
        {"Name": "tag:kiln:role", "Values": ["test"]},
        {"Name": "instance-state-name",
         "Values": ["pending", "running", "stopping", "stopped", "shutting-down"]}])
    groups = ec2.describe_security_groups(Filters=[
        {"Name": "tag:kiln:role", "Values": ["test"]}])["SecurityGroups"]
    return ([i["InstanceId"] for r in res["Reservations"] for i in r["Instances"]]
            + [g["GroupId"] for g in groups])


def failed_image_test(moto: MotoServer, folder: Path, path: Path, version: str) -> bool:
    """An image test that fails (moto's SSM prints nothing, so the http check cannot see a
    status: the honest outcome); True when it failed and left no test resource."""
    from kiln.verify.api import test_images

    write_project(folder, moto, version=version, tests=True, deadline="1s")
    with closing(open_project(path)) as project:
        project.platform.compute.poll = 0.05
        (out,) = test_images(project, ["web"])
    return not out["passed"] and not test_leftovers(moto)


def kill_during_image_test(moto: MotoServer, folder: Path, version: str) -> list[str]:
    """`kiln deploy` SIGKILLed while its image test's instance runs (after kiln recorded it:
    on moto the health probe never sees output, so the test waits). Returns what it left."""
    write_project(folder, moto, version=version, tests=True, deadline="5m")
    proc = subprocess.Popen([KILN, "deploy"], cwd=folder, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: recorded_tests(folder) and test_leftovers(moto), timeout=300,
                 what="kiln deploy's recorded test instance")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    return test_leftovers(moto)


def leak_audit(moto: MotoServer, folder: Path) -> dict[str, Any]:
    """20 deploys; 5 failed bakes (i % 4 == 1), 5 failed image tests (i % 4 == 3), 3 SIGKILLs:
    `kiln deploy` in its bake (i = 5) and after routing (i = 17), and during its image test
    (i = 10), after which the next command (that iteration's deploy) must leave no test
    instance or group."""
    from kiln.errors import BakeError
    from kiln.spec.models import ImageSpec

    path = write_project(folder, moto)
    deploys = failed = killed = failed_tests = 0
    after_test_kill: list[str] = []
    t0 = time.perf_counter()
    for i in range(20):
        version = i + 1
        if i == 10:
            left = kill_during_image_test(moto, folder, f"{version}-tested")
            assert len(left) == 2, f"the killed test left {left} (expected its instance+group)"
            killed += 1
        write_project(folder, moto, version=str(version))
        if i in (5, 17):  # SIGKILL mid-operation, then the rerun converges
            assert kiln_cli(folder, "deploy", fault={5: "bake:launched", 17: "routed"}[i]) == -9
            killed += 1
            assert kiln_cli(folder, "deploy") == 0
        else:
            with closing(open_project(path)) as project:
                assert project.deploy().services[0].outcome == "promoted"
        if i == 10:  # the next command after the kill
            after_test_kill = test_leftovers(moto)
        deploys += 1
        if i % 4 == 1:  # a failed bake of a changed image between deploys
            write_project(folder, moto, version=f"{version}-broken")
            with closing(open_project(path)) as project:
                spec: ImageSpec = project.spec.images["web"]
                project.platform.builder.runner = FailLast(len(spec.steps))
                try:
                    project.platform.builder.build("web", spec, base_dir=folder)
                except BakeError:
                    failed += 1
        if i % 4 == 3:
            failed_tests += failed_image_test(moto, folder, path, f"{version}-tested")
    write_project(folder, moto, version="20")  # the deploys' spec again
    took = time.perf_counter() - t0
    with closing(open_project(path)) as project:
        aws = project.platform.aws
        live = tagged(aws, "shop")
        current = project.current_release("web")
        assert current is not None
    expected = {"auto-scaling-group": [f"kiln-shop-{current.id}"],
                "launch-template": [f"kiln-shop-{current.id}"]}
    leaks_live = [f"{k}: {v}" for k, v in live.items() if k in expected and v != expected[k]]
    leaks_live += [f"instances: {len(live['instance'])} (expected 3)"] * (
        len(live["instance"]) != 3)
    leaks_live += [f"target groups: {len(live['target-group'])}"] * (len(live["target-group"]) != 1)
    leaks_live += [f"security groups: {len(live['security-group'])}"] * (
        len(live["security-group"]) != 2)
    leaks_live += [f"after the killed test's next command: {x}" for x in after_test_kill]
    assert kiln_cli(folder, "destroy") == 0
    left = tagged(aws, "shop")
    retained = {k: v for k, v in left.items() if k in ("image", "snapshot")}
    leaks = [f"{k}: {v}" for k, v in left.items() if v and k not in retained]
    with closing(open_project(path)) as project:
        amis_known = {r["ref"] for r in project.store.query("SELECT ref FROM images")}
    leaks += [f"untracked AMI {a}" for a in retained["image"] if a not in amis_known]
    return {"deploys": deploys, "failed_bakes": failed, "failed_tests": failed_tests,
            "sigkills": killed, "seconds": took,
            "leaks_while_live": leaks_live, "leaks_after_destroy": leaks,
            "amis_retained": len(retained["image"]), "tagged_after_destroy": count(left)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-leaks", action="store_true")
    args = parser.parse_args()
    with moto_server() as moto:
        os.environ.update(moto.env())
        k_calls: list[float] = []
        k_time: list[float] = []
        f_calls: list[float] = []
        f_time: list[float] = []
        by_op: Counter[str] = Counter()
        for _ in range(args.runs):
            moto.reset()
            with tempfile.TemporaryDirectory() as d:
                n, t, ops = kiln_rollout(moto, Path(d))
            k_calls.append(n)
            k_time.append(t)
            by_op = ops
            moto.reset()
            with tempfile.TemporaryDirectory() as d:
                n, t = floor_rollout(moto, Path(d))
            f_calls.append(n)
            f_time.append(t)
        if args.runs:
            print(f"R1 canary of 3 instances, 2 steps, on moto ({args.runs} runs, min/median/max)")
            print(f"  kiln : {fmt(k_calls)} API calls, {fmt(k_time)} s")
            print(f"  floor: {fmt(f_calls)} API calls, {fmt(f_time)} s")
            print(f"  ratio: calls x{statistics.median(k_calls) / statistics.median(f_calls):.1f}, "
                  f"wall time x{statistics.median(k_time) / statistics.median(f_time):.1f}")
            print("  kiln's calls by operation (last run):",
                  ", ".join(f"{k.split(':')[1]} {v}" for k, v in by_op.most_common()))
        if not args.skip_leaks:
            moto.reset()
            with tempfile.TemporaryDirectory() as d:
                audit = leak_audit(moto, Path(d))
            print(f"R2 {audit['deploys']} deploys, {audit['failed_bakes']} failed bakes, "
                  f"{audit['failed_tests']} failed image tests, "
                  f"{audit['sigkills']} SIGKILLs in {audit['seconds']:.0f} s: leaks while live "
                  f"{len(audit['leaks_while_live'])} {audit['leaks_while_live']}, after destroy "
                  f"{len(audit['leaks_after_destroy'])} {audit['leaks_after_destroy']}; "
                  f"{audit['amis_retained']} AMIs retained (all in the state)")


if __name__ == "__main__":
    main()
