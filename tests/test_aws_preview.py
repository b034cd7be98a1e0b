"""Preview on the ALB (issue 23), on moto: `kiln deploy --preview` gives the new release listener
rules that match `X-Kiln-Release: <release>` (header, or the cookie) and forward to its target
group, while the default action keeps 100 % on the old release; `kiln promote` removes them and
starts the weighted steps."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import boto3

from aws_helpers import REGION, listener_weights, open_project, write_project
from kiln.platforms.aws import preview_rules
from kiln.platforms.base import PREVIEW_HEADER
from kiln.project import DeployResult
from kiln.testing.moto import MotoServer
from kiln.testing.project import wait_for


def rules(moto: MotoServer) -> list[dict[str, Any]]:
    """The non-default rules of every listener, read straight from the ALB (not through kiln),
    each with its target group's release."""
    elbv2 = boto3.client("elbv2", region_name=REGION, endpoint_url=moto.url)
    out = []
    for lb in elbv2.describe_load_balancers()["LoadBalancers"]:
        for listener in elbv2.describe_listeners(LoadBalancerArn=lb["LoadBalancerArn"])["Listeners"]:
            for rule in elbv2.describe_rules(ListenerArn=listener["ListenerArn"])["Rules"]:
                if rule["IsDefault"]:
                    continue
                arn = preview_rules.forwards_to(rule)
                tags = elbv2.describe_tags(ResourceArns=[arn])["TagDescriptions"][0]["Tags"]
                rule["release"] = {x["Key"]: x["Value"] for x in tags}["kiln:release"]
                out.append(rule)
    return out


def test_preview_rules_on_the_alb_then_promote(moto: MotoServer, tmp_path: Path) -> None:
    path = write_project(tmp_path, moto)
    project = open_project(path)
    try:
        project.deploy()
        write_project(tmp_path, moto, version="2")
        second = open_project(path)
        done: list[DeployResult] = []
        thread = threading.Thread(target=lambda: done.append(second.deploy(preview=True)),
                                  daemon=True)
        thread.start()
        # Both rules (they are made one after the other), then what they say.
        found = wait_for(lambda: (lambda got: got if len(got) >= 2 else None)(rules(moto)),
                         timeout=60, what="the two preview rules on the listener")
        assert listener_weights(moto) == {"web-r1": 100}     # 0 % of ordinary traffic
        assert sorted(r["Priority"] for r in found) == ["5", "6"]
        assert {r["release"] for r in found} == {"web-r2"}
        headers = {c["HttpHeaderConfig"]["HttpHeaderName"]: c["HttpHeaderConfig"]["Values"]
                   for r in found for c in r["Conditions"]}
        assert headers == {PREVIEW_HEADER: ["web-r2"],
                           "Cookie": ["*X-Kiln-Release=web-r2", "*X-Kiln-Release=web-r2;*"]}
        assert project.platform.router.previews("web") == {"web-r2"}  # type: ignore[attr-defined]
        signaller = open_project(path)
        signaller.signal("web", "promote")   # what `kiln promote` does while a deploy drives
        signaller.close()
        thread.join(timeout=120)
        assert not thread.is_alive() and done, "deploy did not finish after promote"
        assert done[0].services[0].outcome == "promoted", done[0].services
        assert rules(moto) == [] and listener_weights(moto) == {"web-r2": 100}
        second.close()
    finally:
        project.destroy()
        project.close()


def test_preview_rules_match_the_release_only() -> None:
    header, cookie = preview_rules.conditions("web-r7")
    assert preview_rules.priorities("web-r7") == (15, 16)
    rule = {"Conditions": header, "Actions": [{"Type": "forward", "TargetGroupArn": "arn:7"}]}
    both = [rule, {"Conditions": cookie, "Actions": [{"Type": "forward", "ForwardConfig": {
        "TargetGroups": [{"TargetGroupArn": "arn:7", "Weight": 1}]}}]}]
    assert preview_rules.previewed_by(rule) == "web-r7"
    assert preview_rules.served(both, {"web-r7": "arn:7"}) == {"web-r7"}
    assert preview_rules.served(both[:1], {"web-r7": "arn:7"}) == set()     # half a preview
    assert preview_rules.served(both, {"web-r7": "arn:other"}) == set()     # wrong group
    assert preview_rules.previewed_by({"Conditions": [{"Field": "path-pattern"}]}) is None
