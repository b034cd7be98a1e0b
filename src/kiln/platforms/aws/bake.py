"""Bake on AWS, Packer's amazon-ebs role: a builder instance from the base AMI runs the image's
steps through SSM Run Command, then becomes an AMI tagged with kiln's input key.

Every temporary resource (the builder instance, its security group) carries the tags of one bake
attempt and is deleted in a `finally`, so a failed step, an API error and Ctrl-C all clean up;
a bake killed outright (SIGKILL) leaves resources that the next bake of the project sweeps first
(the project lock guarantees no other bake owns them). An AMI whose `kiln:input-key` tag equals
the plan's key is reused: that is the bake cache, and it survives a lost `.kiln/` folder.
Why SSM rather than SSH: docs/decisions/aws-bake-ssm.md.
"""

from __future__ import annotations

import base64
import io
import shlex
import tarfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from kiln.bake import provisioners, steps
from kiln.bake.hashing import iter_files, step_key
from kiln.errors import BakeError, KilnError, PlatformError
from kiln.platforms.aws import provision, ssm
from kiln.platforms.aws import tags as t
from kiln.platforms.aws.boot import ROOT
from kiln.platforms.aws.client import Aws, error_code, is_missing, translated
from kiln.platforms.aws.preflight import Network, base_ami, network
from kiln.platforms.base import Image, StepEvent
from kiln.platforms.capabilities import Resolver
from kiln.rollout.executor import env_fault
from kiln.spec.models import (
    AnsibleStep,
    CopyStep,
    EnvStep,
    ImageSpec,
    PuppetStep,
    RunStep,
    Step,
    WorkdirStep,
)
from kiln.state.store import Store

CHUNK = 48_000  # base64 characters per SSM command line (a document's parameters cap at 64 KB)
Progress = Callable[[StepEvent], None]


@dataclass(frozen=True)
class PlannedStep:
    index: int
    step: Step
    description: str
    key: str
    source: Path | None = None
    provision: provision.Provision | None = None


@dataclass(frozen=True)
class BakePlan:
    base_ami: str
    steps: tuple[PlannedStep, ...]
    key: str
    """The input key: base AMI, instance type and every step with its inputs' hash."""

    @property
    def digest(self) -> str:
        return "sha256:" + self.key


def plan(spec: ImageSpec, base_dir: Path, base: str, instance_type: str) -> BakePlan:
    """Pure apart from hashing inputs (copy sources, ansible/puppet trees): the keys that
    decide reuse, chained as on the other platforms (a step's key covers all before it)."""
    base_def = {"platform": "aws", "ami": base, "instance_type": instance_type, "root": ROOT}
    key = step_key("", base_def, {"kind": "base"})
    out = []
    total = len(spec.steps)
    for i, step in enumerate(spec.steps, start=1):
        desc = steps.describe(step)
        where = f"step {i}/{total} ({desc})"
        source, inputs, prov = None, "", None
        definition = steps.definition(step)
        if isinstance(step, CopyStep):
            source = steps.copy_source(step, base_dir, where)
            steps.inside(Path("/"), step.to, "copy destination", where)
            inputs = steps.copy_inputs_hash(source)
        elif isinstance(step, AnsibleStep | PuppetStep):
            prov = provision.prepare(step, base_dir, where)
            inputs, definition = prov.inputs, provisioners.definition(step)
        key = step_key(key, base_def, definition, inputs)
        out.append(PlannedStep(i, step, desc, key, source, prov))
    return BakePlan(base, tuple(out), key)


def _tarball(source: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        if source.is_dir():
            for rel, path in iter_files(source, steps.skip_name):
                tar.add(path, arcname=rel, recursive=False)
        else:
            tar.add(source, arcname=source.name, recursive=False)
    return buf.getvalue()


def step_commands(p: PlannedStep, env: dict[str, str], cwd: str) -> list[str]:
    """The shell lines one step runs on the builder (as root, under `set -e`)."""
    step = p.step
    if isinstance(step, CopyStep):
        assert p.source is not None
        dest = f"{ROOT}/{step.to.strip('/')}".rstrip("/") or ROOT
        if p.source.is_file() and not (step.to.endswith("/")):
            dest = str(Path(dest).parent)
        data = base64.b64encode(_tarball(p.source)).decode()
        tmp = f"/tmp/kiln-copy-{p.index}.b64"
        lines = ["set -e", f"rm -f {tmp}"]
        lines += [f"printf %s {shlex.quote(data[i:i + CHUNK])} >> {tmp}"
                  for i in range(0, len(data), CHUNK)]
        lines += [f"mkdir -p {shlex.quote(dest)}",
                  f"base64 -d {tmp} | tar -xzf - -C {shlex.quote(dest)}", f"rm -f {tmp}"]
        return lines
    if isinstance(step, RunStep):
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
        return ["set -e", f"mkdir -p {shlex.quote(cwd)}", f"cd {shlex.quote(cwd)}",
                f"env {exports} sh -ec {shlex.quote(step.run)}"]
    if isinstance(step, EnvStep):  # recorded into /opt/kiln/env for instances
        lines = ["set -e", "mkdir -p /opt/kiln"]
        lines += [f"printf '%s=%s\\n' {shlex.quote(k)} {shlex.quote(v)} >> /opt/kiln/env"
                  for k, v in sorted(step.env.items())]
        return lines
    if isinstance(step, AnsibleStep | PuppetStep):
        assert p.provision is not None
        return provision.commands(p.index, p.provision, env)
    assert isinstance(step, WorkdirStep)
    return ["set -e", f"mkdir -p {shlex.quote(cwd)}"]


class StepRunner(Protocol):
    """Runs shell lines on the builder; returns (succeeded, output tail)."""

    def run(self, aws: Aws, instance_id: str, lines: Sequence[str], timeout: float
            ) -> tuple[bool, str]: ...


class SsmRunner:
    """SSM Run Command (AWS-RunShellScript); see kiln.platforms.aws.ssm."""

    poll = 2.0

    def run(self, aws: Aws, instance_id: str, lines: Sequence[str], timeout: float
            ) -> tuple[bool, str]:
        try:
            res = ssm.run(aws, instance_id, lines, timeout, "bake step", poll=self.poll)
        except ssm.SsmTimeout:
            return False, f"no result within {timeout:.0f}s"
        if res.exit_code == 0:
            return True, res.stdout
        out = res.stderr or res.stdout
        return False, f"exit code {res.exit_code}: {out.strip()[-2000:]}"


@dataclass
class _Temporary:
    """What one bake attempt created and must delete."""

    instance: str | None = None
    group: str | None = None
    image: str | None = None  # an AMI not yet complete: deregistered on failure


class AmiBuilder(Resolver):
    """The `Builder` of platform aws."""

    def __init__(self, aws: Aws, store: Store, project: str,
                 runner: StepRunner | None = None, poll: float = 2.0) -> None:
        self.aws, self.store, self.project = aws, store, project
        self.runner: StepRunner = runner or SsmRunner()
        self.poll = poll
        self._network: Network | None = None
        self._found: dict[str, dict[str, Any]] = {}  # input key -> its available AMI

    @property
    def net(self) -> Network:
        if self._network is None:
            self._network = network(self.aws)
        return self._network

    def _tags(self, role: str, **kiln: str) -> dict[str, str]:
        return t.tags(self.project, role, self.aws.settings.tags, **kiln)

    # ------------------------------------------------------------ cache

    def find(self, key: str) -> dict[str, Any] | None:
        """An AMI of this project tagged with `key`, available (or still pending: waited for)."""
        if key in self._found:  # found or baked by this process already
            return self._found[key]
        with translated("looking up baked AMIs"):
            images = self.aws.ec2.describe_images(
                Owners=["self"], Filters=[*t.filters(self.project), {
                    "Name": f"tag:{t.INPUT_KEY}", "Values": [key]}]).get("Images", [])
        usable: list[dict[str, Any]] = [i for i in images
                                        if i.get("State") in ("available", "pending")]
        if not usable:
            return None
        found = max(usable, key=lambda i: str(i.get("CreationDate", "")))
        if found.get("State") == "available":
            self._found[key] = found
        return found

    def resolve(self, name: str, spec: ImageSpec, *, base_dir: Path) -> Image | None:
        """The AMI a bake would return if it is already baked (for `kiln plan`); no launch."""
        p = plan(spec, base_dir, base_ami(self.aws), self.aws.settings.instance_type)
        found = self.find(p.key)
        if found is None:
            return None
        env = steps.image_env(spec.steps)
        return Image(name=name, digest=p.digest, ref=str(found["ImageId"]), env=env,
                     workdir=steps.final_workdir(spec.steps, name))

    def build(self, name: str, spec: ImageSpec, *, base_dir: Path, no_cache: bool = False,
              progress: Progress | None = None) -> Image:
        emit = progress or (lambda _e: None)
        settings = self.aws.settings
        _ = self.net  # region and subnets first: bad input fails before anything is created
        p = plan(spec, base_dir, base_ami(self.aws), settings.instance_type)
        env = steps.image_env(spec.steps)
        total = len(p.steps)
        found = None if no_cache else self.find(p.key)
        if found is not None:
            ami = str(found["ImageId"])
            if found.get("State") == "pending":
                self._wait_image(ami, settings.builder_timeout)
            for s in p.steps:
                emit(StepEvent(s.index, total, s.description, "cached", 0.0, s.key))
        else:
            self.sweep()
            ami = self._bake(name, p, emit)
        self._found[p.key] = {"ImageId": ami, "State": "available"}
        from kiln.bake.imagestore import record_image

        return record_image(self.store, name=name, digest=p.digest, ref=ami, key=p.key, env=env,
                            size=0, workdir=steps.final_workdir(spec.steps, name))

    # ------------------------------------------------------------ the bake

    def _bake(self, name: str, p: BakePlan, emit: Progress) -> str:
        attempt = uuid.uuid4().hex[:12]
        tmp = _Temporary()
        ok = False
        try:
            tmp.group = self._group(attempt)
            tmp.instance = self._launch(p, tmp.group, attempt)
            env_fault()("bake:launched")  # test-only SIGKILL point (KILN_FAULT)
            self._wait_state(tmp.instance, "running")
            self._steps(tmp.instance, p, emit)
            tmp.image = self._image(name, p, tmp.instance)
            self._wait_image(tmp.image, self.aws.settings.builder_timeout)
            ok = True
            return tmp.image
        finally:
            # Also on KeyboardInterrupt: Packer's long-standing leak is exactly this path.
            self._cleanup(tmp, keep_image=ok)

    def _group(self, attempt: str) -> str:
        with translated("creating the builder's security group"):
            out = self.aws.ec2.create_security_group(
                GroupName=f"kiln-{self.project}-bake-{attempt}", VpcId=self.net.vpc_id,
                Description="kiln bake builder (temporary; no inbound rules: steps run over SSM)",
                TagSpecifications=[t.spec("security-group",
                                          self._tags("builder", bake=attempt))])
        return str(out["GroupId"])

    def _launch(self, p: BakePlan, group: str, attempt: str) -> str:
        s = self.aws.settings
        args: dict[str, Any] = {
            "ImageId": p.base_ami, "InstanceType": s.instance_type, "MinCount": 1,
            "MaxCount": 1, "SubnetId": self.net.subnets[0], "SecurityGroupIds": [group],
            "UserData": f"#!/bin/sh\nmkdir -p {ROOT}\n",
            "InstanceInitiatedShutdownBehavior": "terminate",
            "TagSpecifications": [
                t.spec("instance", self._tags("builder", bake=attempt,
                                              input_key=p.key) | {"Name": f"kiln-bake-{attempt}"}),
                t.spec("volume", self._tags("builder", bake=attempt))],
        }
        if s.instance_profile:
            args["IamInstanceProfile"] = {"Name": s.instance_profile}
        if s.key_name:
            args["KeyName"] = s.key_name
        with translated("launching the builder instance"):
            out = self.aws.ec2.run_instances(**args)
        return str(out["Instances"][0]["InstanceId"])

    def _steps(self, instance: str, p: BakePlan, emit: Progress) -> None:
        env: dict[str, str] = {}
        cwd = ROOT
        total = len(p.steps)
        for s in p.steps:
            if isinstance(s.step, EnvStep):
                env.update(s.step.env)
            elif isinstance(s.step, WorkdirStep):
                cwd = str(steps.inside(Path(ROOT), s.step.workdir, "workdir", s.description))
            emit(StepEvent(s.index, total, s.description, "running", 0.0, s.key))
            began = time.monotonic()
            timeout = s.step.timeout if isinstance(s.step, RunStep) else 600.0
            if isinstance(s.step, AnsibleStep):
                timeout = s.step.ansible.timeout
            elif isinstance(s.step, PuppetStep):
                timeout = s.step.puppet.timeout
            ok, out = self.runner.run(self.aws, instance, step_commands(s, env, cwd), timeout)
            took = time.monotonic() - began
            if isinstance(s.step, AnsibleStep | PuppetStep):
                # SSM returns a command's output when it ends: stream it then, line by line.
                for line in out.splitlines():
                    if line.strip():
                        emit(StepEvent(s.index, total, s.description, "running", took, s.key,
                                       line))
            if not ok:
                emit(StepEvent(s.index, total, s.description, "failed", took, s.key))
                raise BakeError(f"step {s.index}/{total} ({s.description}) failed on the "
                                f"builder {instance}: {out}")
            emit(StepEvent(s.index, total, s.description, "ran", took, s.key))

    def _image(self, name: str, p: BakePlan, instance: str) -> str:
        tagged = self._tags("image", image=name, input_key=p.key, base_ami=p.base_ami)
        with translated("creating the AMI"):
            out = self.aws.ec2.create_image(
                InstanceId=instance, Name=f"kiln-{self.project}-{name}-{p.key[:16]}",
                Description=f"kiln image {name} {p.digest[:19]}",
                TagSpecifications=[t.spec("image", tagged)])
            ami = str(out["ImageId"])
            # Snapshots are tagged separately (moto rejects snapshot TagSpecifications here).
            images = self.aws.ec2.describe_images(ImageIds=[ami]).get("Images", [])
            snaps = [m["Ebs"]["SnapshotId"] for i in images for m in i.get("BlockDeviceMappings", [])
                     if m.get("Ebs", {}).get("SnapshotId")]
            if snaps:
                self.aws.ec2.create_tags(Resources=snaps, Tags=t.as_list(tagged))
        return ami

    # ------------------------------------------------------------ waiting

    def _wait_state(self, instance: str, state: str) -> None:
        deadline = time.monotonic() + self.aws.settings.builder_timeout
        while True:
            with translated(f"waiting for the builder {instance}"):
                res = self.aws.ec2.describe_instances(InstanceIds=[instance])
            now = [i["State"]["Name"] for r in res["Reservations"] for i in r["Instances"]]
            if state in now:
                return
            if any(s in ("terminated", "shutting-down") for s in now) and state == "running":
                raise PlatformError(f"aws: the builder {instance} stopped before it ran")
            if time.monotonic() > deadline:
                raise PlatformError(f"aws: the builder {instance} is not {state} within "
                                    f"{self.aws.settings.builder_timeout:.0f}s")
            time.sleep(self.poll)

    def _wait_image(self, ami: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with translated(f"waiting for the AMI {ami}"):
                images = self.aws.ec2.describe_images(ImageIds=[ami]).get("Images", [])
            state = images[0]["State"] if images else "missing"
            if state == "available":
                return
            if state in ("failed", "error", "missing", "deregistered"):
                raise PlatformError(f"aws: AMI {ami} is {state}")
            if time.monotonic() > deadline:
                raise PlatformError(f"aws: AMI {ami} not available within {timeout:.0f}s")
            time.sleep(self.poll)

    # ------------------------------------------------------------ cleanup

    def _cleanup(self, tmp: _Temporary, keep_image: bool) -> None:
        """Delete what the attempt created; report (not hide) what could not be deleted."""
        problems: list[str] = []
        if tmp.image and not keep_image:
            problems += deregister(self.aws, [tmp.image])
        if tmp.instance:
            problems += self._terminate([tmp.instance])
        if tmp.group:
            problems += self._delete_groups([tmp.group])
        if problems:
            raise PlatformError("aws: bake cleanup left resources behind: " + "; ".join(problems)
                                + " (the next bake retries; see docs/aws.md)")

    def _terminate(self, ids: list[str]) -> list[str]:
        return terminate_and_wait(self.aws, ids, self.poll)

    def _delete_groups(self, groups: list[str]) -> list[str]:
        return delete_groups(self.aws, groups, self.poll)

    def sweep(self) -> list[str]:
        """Delete builders and builder groups of this project that an earlier, killed bake left.
        Safe because bakes hold the project lock: none of these belongs to a running bake."""
        return sweep_role(self.aws, self.project, "builder", self.poll)


def deregister(aws: Aws, amis: Sequence[str]) -> list[str]:
    """Deregister AMIs and delete their snapshots; returns problems (empty when all went)."""
    from botocore.exceptions import BotoCoreError, ClientError

    problems = []
    for ami in amis:
        try:
            images = aws.ec2.describe_images(ImageIds=[ami]).get("Images", [])
            snaps = [m["Ebs"]["SnapshotId"] for i in images
                     for m in i.get("BlockDeviceMappings", []) if m.get("Ebs", {}).get("SnapshotId")]
            if images:
                aws.ec2.deregister_image(ImageId=ami)
            for snap in snaps:
                try:
                    aws.ec2.delete_snapshot(SnapshotId=snap)
                except ClientError as exc:
                    if not is_missing(exc):
                        raise
        except (BotoCoreError, ClientError) as exc:
            if not is_missing(exc):
                problems.append(f"AMI {ami}: {exc}")
        except KilnError as exc:
            problems.append(f"AMI {ami}: {exc}")
    return problems


def terminate_and_wait(aws: Aws, ids: list[str], poll: float) -> list[str]:
    """Terminate instances and wait until they are; returns problems (empty when all went)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        aws.ec2.terminate_instances(InstanceIds=ids)
    except (BotoCoreError, ClientError) as exc:
        if not is_missing(exc):
            return [f"instance(s) {', '.join(ids)}: {exc}"]
    deadline = time.monotonic() + 600.0
    while time.monotonic() < deadline:
        try:
            res = aws.ec2.describe_instances(InstanceIds=ids)
        except (BotoCoreError, ClientError) as exc:
            if is_missing(exc):
                return []
            return [f"instance(s) {', '.join(ids)}: {exc}"]
        states = [i["State"]["Name"] for r in res["Reservations"] for i in r["Instances"]]
        if all(s == "terminated" for s in states):
            return []
        time.sleep(poll)
    return [f"instance(s) {', '.join(ids)} not terminated within 600s"]


def delete_groups(aws: Aws, groups: list[str], poll: float) -> list[str]:
    """A group stays 'in use' until its instance is gone: retry DependencyViolation."""
    from botocore.exceptions import BotoCoreError, ClientError

    left = []
    for group in groups:
        deadline = time.monotonic() + 300.0
        while True:
            try:
                aws.ec2.delete_security_group(GroupId=group)
                break
            except (BotoCoreError, ClientError) as exc:
                if is_missing(exc):
                    break
                if error_code(exc) == "DependencyViolation" and time.monotonic() < deadline:
                    time.sleep(poll)
                    continue
                left.append(f"security group {group}: {exc}")
                break
    return left


def sweep_role(aws: Aws, project: str, role: str, poll: float) -> list[str]:
    """Delete the project's instances and security groups of a temporary role (builder, test)
    that a killed kiln left. Callers hold the project lock: none belongs to a live operation."""
    with translated(f"looking for leftover {role} instances"):
        res = aws.ec2.describe_instances(Filters=[
            *t.filters(project, role=role),
            {"Name": "instance-state-name",
             "Values": ["pending", "running", "stopping", "stopped", "shutting-down"]}])
        groups = aws.ec2.describe_security_groups(
            Filters=t.filters(project, role=role)).get("SecurityGroups", [])
    ids = [i["InstanceId"] for r in res["Reservations"] for i in r["Instances"]]
    problems = terminate_and_wait(aws, ids, poll) if ids else []
    problems += delete_groups(aws, [g["GroupId"] for g in groups], poll)
    if problems:
        raise PlatformError(f"aws: cannot remove a killed kiln's {role} resources: "
                            + "; ".join(problems))
    return ids + [g["GroupId"] for g in groups]
