"""Image tests on platform aws: every check kind runs on a throwaway instance of the candidate
AMI through SSM. moto's SSM runs nothing, so these tests give SSM a local stand-in of each
instance (tests/aws_standin.py): the app really starts from the baked files, the checks really
run, and cleanup is proven by the stand-in's processes dying with their instances."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from aws_helpers import listener_weights, open_project, subnets
from aws_standin import StandIns
from kiln.errors import VerifyError
from kiln.platforms.aws.compute import AwsCompute
from kiln.platforms.aws.inventory import tagged
from kiln.testing.moto import REGION, MotoServer
from kiln.testing.project import KILN, free_port, wait_for

APP = """\
import http.server, os
VERSION = {version!r}

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("shop " + VERSION).encode()
        self.send_response(200 if self.path in ("/", "/healthz") else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        print("request", self.path, flush=True)

print("starting on", os.environ["PORT"], flush=True)
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""

TESTINFRA = """\
def test_app_is_in_the_image(host):
    assert host.file("app/__main__.py").exists

def test_secret_reaches_the_service_env(host):
    assert host.run("printenv DB_PASSWORD").stdout.strip() == "s3cret-" + "value"
"""

SPEC = """\
project: shop
platform: aws
aws:
  region: {region}
  subnets: [{subnets}]
  instance_type: t3.micro
  base_ami: {{owner: "099720109477", name: "ubuntu/images/hvm-ssd/ubuntu-*"}}
  instance_profile: kiln-instance
images:
  web:
    steps:
      - copy: app/
        to: app/
    tests:
      - http: {{path: /healthz, status: 200, body_contains: "shop {version}"}}
      - command: test "$(printf %s "$DB_PASSWORD" | sha256sum | cut -c1-16)" = {secret_hash}
      - port: {port}
      - file: {{path: app/__main__.py, contains: "VERSION"}}
      - testinfra: image_tests/
services:
  web:
    image: web
    command: python3 -m app
    port: {port}
    listen: 80
    replicas: 2
    secrets: {{DB_PASSWORD: "ssm:/shop/db-password"}}
    health: {{path: /healthz, deadline: {deadline}}}
    rollout:
      steps: [{{weight: 50, pause: 0s}}]
      drain_timeout: 0s
"""


def instance_profile(moto: MotoServer) -> None:
    """What a real account has before kiln runs: the instances' profile (docs/aws.md)."""
    iam = boto3.client("iam", region_name=REGION, endpoint_url=moto.url)
    iam.create_instance_profile(InstanceProfileName="kiln-instance")


def write(folder: Path, moto: MotoServer, port: int, *, version: str = "1",
          expect: str | None = None, deadline: str = "20s") -> Path:
    (folder / "app").mkdir(parents=True, exist_ok=True)
    (folder / "app" / "__main__.py").write_text(APP.format(version=version))
    (folder / "image_tests").mkdir(exist_ok=True)
    (folder / "image_tests" / "test_app.py").write_text(TESTINFRA)
    import contextlib

    from botocore.exceptions import ClientError

    with contextlib.suppress(ClientError):  # already there
        instance_profile(moto)
    text = SPEC.format(region=REGION, subnets=", ".join(subnets(moto)), port=port,
                       version=expect or version, deadline=deadline,
                       secret_hash=hashlib.sha256(b"s3cret-value").hexdigest()[:16])
    (folder / "kiln.yaml").write_text(text)
    return folder / "kiln.yaml"


@pytest.fixture
def standins(moto: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
             ) -> Iterator[StandIns]:
    s = StandIns(tmp_path / "instances", moto)
    s.install(monkeypatch)
    monkeypatch.setattr(AwsCompute, "poll", 0.05)
    boto3.client("ssm", region_name=REGION, endpoint_url=moto.url).put_parameter(
        Name="/shop/db-password", Value="s3cret-value", Type="SecureString")
    try:
        yield s
    finally:
        s.stop_all()


def leftovers(ec2: Any) -> tuple[list[str], list[str]]:
    """(instances, security groups) tagged kiln:role=test that still exist."""
    res = ec2.describe_instances(Filters=[
        {"Name": "tag:kiln:role", "Values": ["test"]},
        {"Name": "instance-state-name",
         "Values": ["pending", "running", "stopping", "stopped", "shutting-down"]}])
    groups = ec2.describe_security_groups(Filters=[
        {"Name": "tag:kiln:role", "Values": ["test"]}])["SecurityGroups"]
    return ([i["InstanceId"] for r in res["Reservations"] for i in r["Instances"]],
            [g["GroupId"] for g in groups])


def role_of(ec2: Any, iid: str) -> str:
    inst = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    return {t["Key"]: t["Value"] for t in inst.get("Tags", [])}.get("kiln:role", "")


@pytest.mark.e2e
def test_every_check_kind_passes_on_a_throwaway_instance(
        moto: MotoServer, standins: StandIns, tmp_path: Path) -> None:
    port = free_port()
    path = write(tmp_path, moto, port)
    project = open_project(path)
    try:
        result = project.deploy()
        assert [s.outcome for s in result.services] == ["promoted"], result.services
        ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=moto.url)
        # The test instance and its group are gone; its service process died with it.
        assert leftovers(ec2) == ([], [])
        tested = [i for i in standins.roots if role_of(ec2, i) == "test"]
        assert len(tested) == 1
        standins.reap()
        assert not standins.alive(tested[0])
        # Every check ran there: the app answered, the secret was resolved on the instance.
        att = project.store.one("SELECT document FROM attestations ORDER BY id DESC")
        assert att is not None
        doc = json.loads(att["document"])
        image = project.image(project.current_release("web").image_digest)  # type: ignore[union-attr]
        assert doc["predicate"]["passed"] is True
        assert doc["predicate"]["image_ref"] == image.ref  # the AMI id
        assert doc["predicate"]["test_instance"] == tested[0]
        assert doc["subject"][0]["digest"]["sha256"] == image.digest.removeprefix("sha256:")
        kinds = {c["kind"]: c for c in doc["predicate"]["checks"]}
        assert set(kinds) == {"http", "command", "port", "file", "testinfra"}
        assert all(c["passed"] for c in kinds.values()), kinds
        assert "status 200" in kinds["http"]["detail"]
        assert "2 passed" in kinds["testinfra"]["detail"]
        # The secret is a reference everywhere kiln or AWS stores anything.
        assert_secret_nowhere(moto, tmp_path, "s3cret-value")
        assert listener_weights(moto) == {"web-r1": 100}
    finally:
        project.destroy()
        project.close()


def assert_secret_nowhere(moto: MotoServer, folder: Path, secret: str) -> None:
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=moto.url)
    import base64

    for lt in ec2.describe_launch_templates()["LaunchTemplates"]:
        data = ec2.describe_launch_template_versions(
            LaunchTemplateId=lt["LaunchTemplateId"])["LaunchTemplateVersions"][0]
        user_data = base64.b64decode(data["LaunchTemplateData"]["UserData"]).decode()
        assert "ssm get-parameter" in user_data and "/shop/db-password" in user_data
        assert secret not in user_data
    for r in ec2.describe_instances()["Reservations"]:
        for i in r["Instances"]:
            value = ec2.describe_instance_attribute(InstanceId=i["InstanceId"],
                                                    Attribute="userData")
            raw = value.get("UserData", {}).get("Value", "")
            assert secret not in base64.b64decode(raw).decode(errors="replace") if raw else True
    db = sqlite3.connect(folder / ".kiln" / "state.db")
    try:
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            for row in db.execute(f"SELECT * FROM {table}"):
                assert secret not in repr(row), table
    finally:
        db.close()


@pytest.mark.e2e
def test_a_failing_check_keeps_the_ami_out_of_every_release(
        moto: MotoServer, standins: StandIns, tmp_path: Path) -> None:
    port = free_port()
    path = write(tmp_path, moto, port)
    project = open_project(path)
    try:
        assert project.deploy().services[0].outcome == "promoted"
        write(tmp_path, moto, port, version="2", expect="3")  # the http check wants "shop 3"
        with pytest.raises(VerifyError) as info:
            open_project(path).deploy()
        assert "http GET /healthz" in str(info.value) and "shop 3" in str(info.value)
        again = open_project(path)
        # Not deployed, and not deployable later either: the attestation says failed.
        with pytest.raises(VerifyError):
            again.deploy()
        assert listener_weights(moto) == {"web-r1": 100}
        rels = again.store.query("SELECT id FROM releases")
        assert [r["id"] for r in rels] == ["web-r1"]
        ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=moto.url)
        assert leftovers(ec2) == ([], [])
        standins.reap()
        assert not any(standins.alive(i) for i in standins.roots
                       if i not in tagged(again.platform.aws, "shop")["instance"])
        # The failed instance's log was kept: `kiln logs --test` reads it.
        (log,) = again.logs("web", kind="test")
        assert "starting on" in log.path.read_text()
    finally:
        project.destroy()
        project.close()


@pytest.mark.e2e
def test_on_moto_without_a_stand_in_checks_that_need_output_fail(
        moto: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """moto's SSM says exit 0 with no output: kiln reports that, it does not pass."""
    monkeypatch.setattr(AwsCompute, "poll", 0.05)
    port = free_port()
    path = write(tmp_path, moto, port, deadline="2s")
    project = open_project(path)
    try:
        from kiln.verify.api import test_images

        (out,) = test_images(project, ["web"])
        assert out["passed"] is False
        checks = {c["kind"]: c for c in out["checks"]}
        assert "ssm returned no output" in checks["http"]["detail"]
        assert "expected the HTTP status curl prints" in checks["http"]["detail"]
        assert "ssm returned no output" in checks["file"]["detail"]
        ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=moto.url)
        assert leftovers(ec2) == ([], [])
    finally:
        project.close()


@pytest.mark.e2e
def test_ctrl_c_during_a_test_removes_the_instance(
        moto: MotoServer, standins: StandIns, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, moto, free_port())

    def interrupted(self: AwsCompute, *_: object) -> bool:
        raise KeyboardInterrupt

    monkeypatch.setattr(AwsCompute, "healthy", interrupted)
    project = open_project(path)
    try:
        with pytest.raises(KeyboardInterrupt):
            project.deploy()
        ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=moto.url)
        assert leftovers(ec2) == ([], [])
        standins.reap()
        assert not any(standins.alive(i) for i in standins.roots)
    finally:
        project.close()


@pytest.mark.e2e
def test_sigkill_during_a_test_is_swept_by_the_next_run(
        moto: MotoServer, standins: StandIns, tmp_path: Path) -> None:
    """`kiln test` killed while its instance waits to be healthy (no stand-in in the child:
    moto's SSM never reports a status, so it waits): the next run removes what it left."""
    path = write(tmp_path, moto, free_port(), deadline="5m")
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=moto.url)
    with contextlib.closing(open_project(path)) as baker:
        baker.bake()  # here, so that the stand-in has the AMI's files for the rerun
    proc = subprocess.Popen([KILN, "test"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ),
                            start_new_session=True)
    try:
        wait_for(lambda: leftovers(ec2)[0], timeout=120, what="a test instance")
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    left = leftovers(ec2)
    assert len(left[0]) == 1 and len(left[1]) == 1  # SIGKILL runs no finally
    project = open_project(path)
    try:
        from kiln.verify.api import test_images

        (out,) = test_images(project, ["web"])
        assert out["passed"] is True, out["checks"]
        assert leftovers(ec2) == ([], [])
    finally:
        project.close()


@pytest.mark.e2e
def test_sigkill_of_deploy_during_its_image_test_is_cleaned_by_the_next_command(
        moto: MotoServer, tmp_path: Path) -> None:
    """`kiln deploy` killed while its image test's instance runs (moto's SSM never reports the
    health probe's output, so the test waits for it): the next command that takes the project
    lock removes the instance and its security group first, even one that launches no test
    instance itself (`deploy --skip-tests`): the state says a test instance is live, and only a
    killed kiln leaves one so."""
    write(tmp_path, moto, free_port(), deadline="5m")
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=moto.url)

    def recorded() -> list[str]:  # the kill comes after kiln recorded its test instance
        db = tmp_path / ".kiln" / "state.db"
        if not db.exists():
            return []
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return [r[0] for r in conn.execute(
                "SELECT id FROM instances WHERE kind = 'test' AND state IN "
                "('starting', 'running')")]
        except sqlite3.OperationalError:  # no schema yet
            return []
        finally:
            conn.close()

    proc = subprocess.Popen([KILN, "deploy"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ),
                            start_new_session=True)
    try:
        wait_for(lambda: recorded() and leftovers(ec2)[0], timeout=180,
                 what="a recorded test instance")
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    (iid,) = recorded()
    left = leftovers(ec2)
    assert left[0] == [iid] and len(left[1]) == 1, left  # SIGKILL runs no finally
    try:
        res = subprocess.run([KILN, "deploy", "--skip-tests"], cwd=tmp_path, text=True,
                             capture_output=True, timeout=300, env=dict(os.environ))
        assert res.returncode == 0, res.stdout + res.stderr
        assert leftovers(ec2) == ([], [])
        assert recorded() == []
        assert listener_weights(moto) == {"web-r1": 100}
    finally:
        subprocess.run([KILN, "destroy"], cwd=tmp_path, capture_output=True, timeout=300,
                       env=dict(os.environ))


def test_env_and_file_secrets_are_refused_on_aws(moto: MotoServer, tmp_path: Path) -> None:
    from kiln.errors import SpecError
    from kiln.spec.loader import load_spec

    path = write(tmp_path, moto, 8000)
    path.write_text(path.read_text().replace('"ssm:/shop/db-password"', "env:DB_PASSWORD"))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    text = str(info.value)
    assert "services.web.secrets.DB_PASSWORD: env: secrets are not supported on platform aws" \
        in text and "use ssm:/parameter/name or secretsmanager:ARN" in text, text


@pytest.mark.e2e
def test_exec_and_logs_of_service_instances_go_through_ssm(
        moto: MotoServer, standins: StandIns, tmp_path: Path) -> None:
    from kiln.dev import dev_exec

    path = write(tmp_path, moto, free_port())
    project = open_project(path)
    try:
        assert project.deploy(skip_tests=True).services[0].outcome == "promoted"
        # `kiln exec`: the service's environment, its secret resolved on the instance.
        out = dev_exec(project, "web", "printenv DB_PASSWORD; pwd; test -f app/__main__.py")
        assert out.exit_code == 0, out
        assert out.stdout.splitlines()[0] == "s3cret-value"
        assert out.stdout.splitlines()[1].endswith("/opt/kiln/root")
        assert dev_exec(project, "web", "exit 3").exit_code == 3
        # The same over testinfra's kiln-ssm backend (for suites run outside kiln).
        import testinfra

        import kiln.verify.testinfra_plugin  # noqa: F401 - registers kiln-ssm://

        iid = project.compute.instances("web-r1")[0].id
        host = testinfra.get_host(f"kiln-ssm://{iid}?container=web")
        host.backend._client = project.platform.aws.ssm  # the stand-in's SSM (see fixture)
        assert host.run("printenv DB_PASSWORD").stdout.strip() == "s3cret-value"
        assert host.file("app/__main__.py").exists
        assert host.run("exit 4").rc == 4
        # `kiln logs`: each running instance's journal, read over SSM (tests/test_aws_logs.py:
        # nothing written, --follow).
        sources = project.logs("web")
        assert len(sources) == 2
        by_id = {i.id: i for i in project.compute.instances("web-r1")}
        assert {s.instance for s in sources} == set(by_id)
        compute = project.compute
        assert isinstance(compute, AwsCompute)
        for source in sources:
            assert source.remote is not None and source.remote.id == source.instance
            # Each call reads the journal again (the app prints as it starts).
            lines = wait_for(lambda s=source.remote: compute.read_log(s, lines=50)[0],  # type: ignore[misc]
                             timeout=30, what="the service's journal")
            assert lines[0].startswith("starting on")
    finally:
        project.destroy()
        project.close()
