"""On platform aws (moto's server): a rollback launches the release's fleet from its own record:
the launch template's user data carries that release's command and env, and its target group
checks that release's health path, while kiln.yaml says something else."""

from __future__ import annotations

import base64
from pathlib import Path

import boto3

from aws_helpers import listener_weights, open_project, write_project
from kiln.testing.moto import REGION, MotoServer

WORDS = {1: "one", 2: "two", 3: "three"}


def write_release(folder: Path, moto: MotoServer, n: int) -> Path:
    word = WORDS[n]
    path = write_project(folder, moto)
    text = path.read_text()
    text = text.replace("    command: python3 -m app\n",
                        f"    command: python3 -m app {word}\n    env: {{MODE: {word}}}\n")
    text = text.replace("health: {path: /healthz,", f"health: {{path: /health-{word},")
    assert f"MODE: {word}" in text and f"/health-{word}" in text
    path.write_text(text)
    return path


def fleet_config(moto: MotoServer, release: str) -> tuple[str, str]:
    """(user data script, target group health check path) of a release's fleet, read from AWS."""
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=moto.url)
    elbv2 = boto3.client("elbv2", region_name=REGION, endpoint_url=moto.url)
    version = ec2.describe_launch_template_versions(
        LaunchTemplateName=f"kiln-shop-{release}", Versions=["$Latest"]
    )["LaunchTemplateVersions"][0]
    script = base64.b64decode(version["LaunchTemplateData"]["UserData"]).decode()
    paths = []
    for tg in elbv2.describe_target_groups()["TargetGroups"]:
        tags = elbv2.describe_tags(ResourceArns=[tg["TargetGroupArn"]])["TagDescriptions"][0]
        if {t["Key"]: t["Value"] for t in tags["Tags"]}.get("kiln:release") == release:
            paths.append(str(tg["HealthCheckPath"]))
    assert len(paths) == 1, paths
    return script, paths[0]


def test_rollback_launches_the_fleet_of_the_release_as_it_was_made(moto: MotoServer,
                                                                   tmp_path: Path) -> None:
    path = write_release(tmp_path, moto, 1)
    project = open_project(path)
    try:
        assert project.deploy().services[0].outcome == "promoted"
        for n in (2, 3):
            write_release(tmp_path, moto, n)
            assert open_project(path).deploy().services[0].outcome == "promoted"
        script, health = fleet_config(moto, "web-r3")
        assert "MODE=three" in script and health == "/health-three"
        # r2's fleet is gone (disposed of when r3 went live); today's kiln.yaml says r3.
        back = open_project(path).rollback("web", "web-r2")
        assert back.outcome == "promoted", back
        assert listener_weights(moto) == {"web-r2": 100}
        script, health = fleet_config(moto, "web-r2")
        assert "MODE=two" in script and "python3 -m app two" in script, script
        assert "three" not in script and health == "/health-two"
    finally:
        project.destroy()
        project.close()
