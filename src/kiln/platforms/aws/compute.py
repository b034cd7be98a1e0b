"""Compute on AWS: a release's instances are the members of its Auto Scaling group.

`launch` raises the group's desired capacity and records the members in `instances`; members a
killed kiln had asked for but never recorded are adopted first, so a rerun never launches twice.
`healthy` is the target health of the instance in its release's target group (the ALB's own
check). `terminate` goes through the group (decrementing it), so the group deregisters the
instance from the target group and waits out the deregistration delay (the drain) before it
terminates it; the last instance of a release takes the release's ASG, target group and launch
template with it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from kiln.errors import KilnError, PlatformError
from kiln.platforms.aws import probes, ssm, throwaway
from kiln.platforms.aws.boot import REMOTE_SCHEMES, exec_lines, journal_lines, refusal
from kiln.platforms.aws.client import Aws, is_missing, translated
from kiln.platforms.aws.fleet import Fleet
from kiln.platforms.base import ExecResult, Image, Instance, Observed, Release, ReleaseImage
from kiln.platforms.capabilities import (
    ImageFileReader,
    ReleaseTerminator,
    RemoteLogs,
    Sweeper,
)
from kiln.platforms.instance_rows import from_row, insert, list_rows, set_state
from kiln.spec.models import Health, HttpCheck, ServiceSpec
from kiln.state.records import instances as instance_records
from kiln.state.store import Store
from kiln.verify.checks import FileStat, ImageFiles, Outcome

GONE_LIFECYCLE = ("Terminating", "Terminating:Wait", "Terminating:Proceed", "Terminated",
                  "Detaching", "Detached")


class AwsCompute(ImageFileReader, ReleaseTerminator, Sweeper, RemoteLogs):
    poll = 2.0
    """Seconds between SSM and EC2 polls (tests lower it)."""
    observe_every = 5.0
    """Seconds one DescribeInstances answers `observe` for: EC2 state changes take tens of
    seconds, and the ALB (whose health checks run every 5 s or more) takes a dead instance out
    of rotation itself; asking once a second only made the call count depend on how long a
    rollout's passes took (docs/decisions/aws-api-calls.md)."""
    health_every = 1.0
    """Seconds one DescribeTargetHealth answers `healthy` for a target group."""

    def __init__(self, aws: Aws, store: Store, home: Path, fleet: Fleet) -> None:
        self.aws, self.store, self.home, self.fleet = aws, store, home, fleet
        self._tests: dict[str, Instance] = {}  # image digest -> its live test instance
        self._seen: dict[str, tuple[float, str]] = {}  # instance -> (when, EC2 state)
        self._health: dict[str, tuple[float, dict[str, str]]] = {}  # group -> (when, states)
        self._disposed: set[str] = set()  # releases whose ASG this process deleted

    def launch(self, service_name: str, service: ServiceSpec, release: Release, image: Image,
               count: int, *, env: Mapping[str, str],
               kind: Literal["service", "test", "dev"] = "service") -> list[Instance]:
        for key, ref in service.secrets.items():
            if ref.partition(":")[0] not in REMOTE_SCHEMES:
                raise KilnError(refusal(service_name, key, ref))
        if kind == "dev":
            raise PlatformError("aws: dev instances (`kiln up`) are not supported on platform "
                                "aws; deploy the service and use `kiln exec` / `kiln logs`")
        if kind == "test":
            return [self._launch_test(service_name, service, release, image, env)
                    for _ in range(count)]
        self._disposed.discard(release.id)  # (a rollback relaunches a disposed release)
        group = self.fleet.ensure_asg(service_name, service, release, image, desired=count)
        name = group["AutoScalingGroupName"]
        if group.get("created"):  # asked for `count` when made: who is launched so far (the
            group = self.fleet.asg(release.id) or group  # rest are adopted on a later pass)
        tracked = set(instance_records.ids_of_release(self.store, release.id))
        members = self._members(group)
        adopt = [m for m in members if m not in tracked]
        pending = max(0, int(group["DesiredCapacity"]) - len(members))
        need = count - len(adopt) - pending
        if need > 0:
            with translated(f"scaling {name} to {int(group['DesiredCapacity']) + need}"):
                self.aws.autoscaling.set_desired_capacity(
                    AutoScalingGroupName=name, HonorCooldown=False,
                    DesiredCapacity=int(group["DesiredCapacity"]) + need)
            group = self.fleet.asg(release.id) or group
        fresh = [m for m in self._members(group) if m not in tracked]
        return self._record(service_name, service, release, fresh)

    @staticmethod
    def _members(group: Mapping[str, Any]) -> list[str]:
        return [str(i["InstanceId"]) for i in group.get("Instances", [])
                if i.get("LifecycleState") not in GONE_LIFECYCLE]

    def _record(self, service_name: str, service: ServiceSpec, release: Release,
                ids: Sequence[str]) -> list[Instance]:
        if not ids:
            return []
        out = []
        with self.store.tx() as c:
            for iid in ids:
                host = "0.0.0.0"  # its private address is recorded when it is first observed
                inst = Instance(iid, service_name, release.id, host, service.port,
                                handle={"instance": iid,
                                        "asg": self.fleet.names.asg(release.id)})
                insert(c, inst, kind="service")
                c.event("instance.launch", f"launching {iid} ({host}:{service.port}) in "
                        f"{self.fleet.names.asg(release.id)}", service=service_name,
                        data={"instance": iid, "release": release.id})
                out.append(inst)
        return out

    def _describe(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for i in range(0, len(ids), 200):
            with translated("describing instances"):
                res = self.aws.ec2.describe_instances(
                    Filters=[{"Name": "instance-id", "Values": list(ids[i:i + 200])}])
            for r in res["Reservations"]:
                for inst in r["Instances"]:
                    out[inst["InstanceId"]] = inst
        return out

    def _launch_test(self, service_name: str, service: ServiceSpec, release: Release,
                     image: Image, env: Mapping[str, str]) -> Instance:
        iid, group, host = throwaway.launch(self.aws, self.fleet.project, service_name, service,
                                            release, image, env, self.poll)
        inst = Instance(iid, service_name, release.id, host, service.port,
                        handle={"instance": iid, "group": group, "image": image.ref})
        with self.store.tx() as c:
            insert(c, inst, kind="test")
            c.event("instance.launch", f"launching test instance {iid} of {image.ref} in "
                    f"{group}", service=service_name,
                    data={"instance": iid, "release": release.id, "ami": image.ref})
        self._tests[image.digest] = inst
        return inst

    @staticmethod
    def _is_test(instance: Instance) -> bool:
        return "group" in instance.handle

    def healthy(self, instance: Instance, health: Health) -> bool:
        if self._is_test(instance):  # no target group: ask the instance itself, over SSM
            return probes.healthy(self.aws, instance.id, instance.port, health.path,
                                  health.timeout)
        tg = self.fleet.target_group(instance.release_id)
        if tg is None:
            return False
        from botocore.exceptions import ClientError

        now = time.monotonic()
        when, states = self._health.get(tg, (-1e9, {}))
        if now - when > self.health_every or instance.id not in states:
            # The whole group in one call: a pass probes every new instance of the release.
            with translated(f"target health of {instance.id}"):
                try:
                    desc = self.aws.elbv2.describe_target_health(TargetGroupArn=tg)
                except ClientError:
                    return False
            states = {d["Target"]["Id"]: d["TargetHealth"]["State"]
                      for d in desc["TargetHealthDescriptions"]}
            self._health[tg] = (now, states)
        return states.get(instance.id) == "healthy"

    def terminate(self, instance: Instance, timeout: float) -> None:
        if self._is_test(instance):
            self._terminate_test(instance)
            return
        from botocore.exceptions import ClientError

        if instance.release_id in self._disposed:  # went with its group, earlier this pass
            set_state(self.store, instance.id, "stopped")
            return
        own, others = instance_records.live_states_of_release(self.store, instance.release_id,
                                                              instance.id)
        live = others.get("starting", 0) + others.get("running", 0)
        if live == 0 and (own == "draining" or not others):
            # The release's last instance, or it and the others are retired and terminated in
            # this same pass (their drain is the release's): deleting its ASG (ForceDelete)
            # terminates every member, adopted or not, in one call instead of one each; its
            # target group and launch template go with it.
            self.fleet.dispose(instance.release_id)
            self._disposed.add(instance.release_id)
        else:
            from botocore.exceptions import BotoCoreError
            from botocore.parsers import ResponseParserError

            with translated(f"terminating {instance.id}"):
                try:
                    self.aws.autoscaling.terminate_instance_in_auto_scaling_group(
                        InstanceId=instance.id, ShouldDecrementDesiredCapacity=True)
                except (ClientError, BotoCoreError, ResponseParserError):
                    # Not (or no longer) in its group, e.g. removed by hand: AWS says
                    # ValidationError, moto fails outright. Ask, then terminate it directly.
                    member = self.aws.autoscaling.describe_auto_scaling_instances(
                        InstanceIds=[instance.id]).get("AutoScalingInstances", [])
                    if member and member[0].get("LifecycleState") not in GONE_LIFECYCLE:
                        raise
                    try:
                        self.aws.ec2.terminate_instances(InstanceIds=[instance.id])
                    except ClientError as again:
                        if not is_missing(again):
                            raise
        self._seen.pop(instance.id, None)
        set_state(self.store, instance.id, "stopped")  # after: a rerun repeats, never skips

    def terminate_release(self, release_id: str, instances: Sequence[Instance],
                          timeout: float) -> None:
        """The release's ASG, target group and launch template in three calls, whatever its
        size (one TerminateInstanceInAutoScalingGroup per instance first would change
        nothing: ForceDelete terminates every member, adopted or not)."""
        if not instances:
            return
        if release_id not in self._disposed:
            self.fleet.dispose(release_id)
            self._disposed.add(release_id)
        for inst in instances:  # after: a rerun repeats the disposal, never skips it
            self._seen.pop(inst.id, None)
            set_state(self.store, inst.id, "stopped")

    def _terminate_test(self, instance: Instance) -> None:
        self._save_log(instance)  # the failed test's log stays readable (`kiln logs --test`)
        problems = throwaway.remove(self.aws, instance.id, instance.handle.get("group"),
                                    self.poll)
        for digest, inst in list(self._tests.items()):
            if inst.id == instance.id:
                del self._tests[digest]
        if problems:
            raise PlatformError("aws: test instance cleanup left resources behind: "
                                + "; ".join(problems) + " (the next test launch retries)")
        set_state(self.store, instance.id, "stopped")

    def sweep(self) -> list[str]:
        """Test instances the state still has as live belong to a kiln that was killed (the
        caller holds the project lock, so no live run owns one): each goes with its security
        group, so a `kiln test` or `kiln deploy` SIGKILLed mid-test leaves nothing once the
        next deploy, rollback or destroy starts. No API call when the state records none;
        what a kill left before it recorded the instance, the next test launch and `kiln
        destroy` find by its tags."""
        changes = []
        for row in list_rows(self.store, None, ("test",), ("starting", "running", "draining")):
            inst = from_row(row)
            problems = throwaway.remove(self.aws, inst.id, inst.handle.get("group"), self.poll)
            if problems:
                changes.append(f"{inst.id}: test instance left by a killed kiln: "
                               + "; ".join(problems))
                continue
            set_state(self.store, inst.id, "stopped")
            changes.append(f"{inst.id}: removed the test instance (and its security group) a "
                           "killed kiln left")
        return changes

    def observe(self, instances: Sequence[Instance]) -> list[Observed]:
        """One DescribeInstances answers every live instance of the project for
        `observe_every` seconds (a rollout pass observes the new and the old release; EC2
        state changes take seconds)."""
        now = time.monotonic()
        stale = [i.id for i in instances if now - self._seen.get(i.id, (-1e9, ""))[0]
                 > self.observe_every]
        if stale:
            ids = sorted({*stale, *instance_records.live_service_ids(self.store)})
            described = self._describe(ids)
            for iid in ids:
                state = described.get(iid, {}).get("State", {}).get("Name", "missing")
                self._seen[iid] = (now, str(state))
            addresses = {iid: str(d["PrivateIpAddress"]) for iid, d in described.items()
                         if d.get("PrivateIpAddress")}
            if addresses:
                with self.store.tx() as c:
                    for iid, host in addresses.items():
                        instance_records.set_host_if_unknown(c, iid, host)
        return [Observed(i.id, self._seen[i.id][1] in ("pending", "running"))
                for i in instances]

    def exec(self, instance: Instance, command: str, *, timeout: float) -> ExecResult:
        """Over SSM, through the instance's exec script: the service's env, secrets, workdir."""
        try:
            return ssm.run(self.aws, instance.id, exec_lines(instance.service, command),
                           timeout, "exec", poll=self.poll)
        except ssm.SsmTimeout as exc:
            raise PlatformError(f"timed out after {timeout:g}s: {exc}") from exc

    def log_path(self, instance: Instance) -> Path:
        """The service's journal, fetched over SSM into kiln's instance folder while the
        instance runs (a stopped one keeps the copy made last, e.g. at its test's end)."""
        path = self.home / "instances" / instance.id / "log"
        state = instance_records.state_of(self.store, instance.id)
        if state is None or state in ("starting", "running", "draining"):
            self._save_log(instance)
        return path

    def saved_log(self, instance: Instance) -> Path:
        return self.home / "instances" / instance.id / "log"

    def read_log(self, instance: Instance, *, lines: int | None, after: str | None = None
                 ) -> tuple[list[str], str | None]:
        """The journal over SSM, nothing written: `kiln logs` is read-only. journald's cursor
        (`--show-cursor`) lets `--follow` ask only for what came since."""
        try:
            res = ssm.run(self.aws, instance.id,
                          journal_lines(instance.service, lines, after, cursor=True), 30.0,
                          "reading the journal", poll=self.poll)
        except ssm.SsmTimeout as exc:
            raise PlatformError(f"timed out: {exc}") from exc
        if res.exit_code != 0:
            raise PlatformError(f"aws: reading the journal of {instance.id} failed (exit "
                                f"{res.exit_code}): {(res.stderr or res.stdout).strip()[-300:]}")
        out = [x for x in res.stdout.splitlines() if x != "-- No entries --"]
        cursor = after
        if out and out[-1].startswith("-- cursor: "):
            cursor = out.pop().removeprefix("-- cursor: ").strip()
        return out, cursor

    def _save_log(self, instance: Instance, lines: int = 1000) -> None:
        path = self.home / "instances" / instance.id / "log"
        try:
            res = ssm.run(self.aws, instance.id, journal_lines(instance.service, lines), 30.0,
                          "reading the journal", poll=self.poll)
        except KilnError:
            return  # the instance is gone or unreachable: keep what was fetched before
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(".log.tmp")
        tmp.write_text(res.stdout)
        os.replace(tmp, path)

    # ------------------------------------------------------------ image checks (RemoteChecks)

    def check_http(self, instance: Instance, spec: HttpCheck.Spec) -> Outcome:
        return probes.check_http(self.aws, instance.id, instance.port, spec)

    def check_port(self, instance: Instance, port: int, timeout: float) -> Outcome:
        return probes.check_port(self.aws, instance.id, port, timeout)

    @contextmanager
    def image_files(self, image: Image) -> Iterator[ImageFiles]:
        """File checks read the AMI's files on a test instance of it: the suite's own when
        it has one, else one launched for them (and removed)."""
        lazy = _LazyFiles(self, image)
        try:
            yield lazy
        finally:
            lazy.close()

    def instances(self, release_id: str) -> list[Instance]:
        return [from_row(r) for r in instance_records.live_rows(self.store, release_id=release_id,
                                                                kind=None)]


class _LazyFiles:
    """ImageFiles bound to a test instance of the image, found (or launched) on first use."""

    def __init__(self, compute: AwsCompute, image: Image) -> None:
        self.compute, self.image = compute, image
        self._own: Instance | None = None

    def _files(self) -> probes.InstanceFiles:
        inst = self.compute._tests.get(self.image.digest) or self._own
        if inst is None:
            idle = ServiceSpec(image=self.image.name, command="exec sleep 2147483647",
                               listen="127.0.0.1:1")
            release = Release.of(f"{self.image.name}-files", self.image.name, 0,
                                 ReleaseImage.of(self.image), idle, "test")
            inst = self._own = self.compute._launch_test(self.image.name, idle, release,
                                                         self.image, {})
        return probes.InstanceFiles(self.compute.aws, inst.id)

    def stat(self, path: str) -> FileStat | None:
        return self._files().stat(path)

    def read(self, path: str) -> bytes:
        return self._files().read(path)

    def close(self) -> None:
        if self._own is not None:
            own, self._own = self._own, None
            self.compute.terminate(own, 10.0)
