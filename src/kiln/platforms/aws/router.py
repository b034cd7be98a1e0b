"""The router on AWS: one ALB per project, one listener per service (its `listen:` port), whose
forward action lists the releases' target groups with their weights (ForwardConfig). Canary,
blue-green and rolling are weight changes of that one action; `verify` reads them back.

A listener, load balancer or security group without the project's `kiln:project` tag is never
changed: kiln refuses with one line instead of taking over someone else's routing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from kiln.errors import PlatformError
from kiln.platforms.aws import preview_rules
from kiln.platforms.aws import tags as t
from kiln.platforms.aws.bake import sweep_role
from kiln.platforms.aws.client import Aws, error_code, is_missing, translated
from kiln.platforms.aws.fleet import Fleet
from kiln.platforms.base import Backend, RequestCounts
from kiln.platforms.capabilities import OpenRequests
from kiln.spec.models import ServiceSpec
from kiln.state.records import instances as instance_records
from kiln.state.store import Store


def listen_port(listen: str) -> int:
    return int(listen.rpartition(":")[2])


def forward_weights(listener: dict[str, Any]) -> dict[str, int]:
    """target group ARN -> weight of a listener's default forward action."""
    arns: dict[str, int] = {}
    for action in listener.get("DefaultActions", []):
        for g in action.get("ForwardConfig", {}).get("TargetGroups", []):
            arns[g["TargetGroupArn"]] = int(g.get("Weight", 1))
        if action.get("TargetGroupArn") and not action.get("ForwardConfig"):
            arns[action["TargetGroupArn"]] = 1
    return arns


class AlbRouter(OpenRequests):
    poll = 1.0
    """Seconds between read-backs of a listener that does not serve the new weights yet."""
    settle_timeout = 120.0
    reuse_for = 5.0
    """Seconds a read-back of a listener answers `verify` (the rollout confirms every change
    right after `set_backends` read it back; asking AWS again at once would change nothing)."""

    def __init__(self, aws: Aws, store: Store, project: str, fleet: Fleet) -> None:
        self.aws, self.store, self.project, self.fleet = aws, store, project, fleet
        self._serving: dict[str, dict[str, int]] = {}  # service -> ARN -> weight, read back
        self._arn: dict[str, tuple[str, int]] = {}  # service -> its listener's ARN and port
        self._checked: set[tuple[str, int]] = set()  # (service, port) without a listener yet
        self._read: dict[str, float] = {}  # service -> when its listener was last read back

    def ensure_running(self) -> None:
        self.fleet.alb()

    # ------------------------------------------------------------ listeners

    def _listeners(self) -> list[dict[str, Any]]:
        """The ALB's listeners with their tags (none when there is no ALB)."""
        lb = self.fleet.find_alb(listeners=True)
        return [] if lb is None else list(lb["kiln_listeners"])

    def _listener(self, service_name: str, port: int | None) -> dict[str, Any] | None:
        """The service's listener; refuses a listener on its port that kiln does not own."""
        found = None
        for x in self._listeners():
            tags = x["kiln_tags"]
            mine = tags.get(t.PROJECT) == self.project and tags.get(t.SERVICE) == service_name
            if mine:
                found = x
            elif port is not None and x["Port"] == port:
                owner = (f"service {tags[t.SERVICE]}" if tags.get(t.PROJECT) == self.project
                         else "not kiln's: no kiln:project tag" if t.PROJECT not in tags
                         else f"project {tags[t.PROJECT]}")
                raise PlatformError(f"aws: the listener on port {port} of {self.fleet.names.alb} "
                                    f"belongs to {owner}; refusing to change it")
        if found is not None and port is not None:
            # Checked: this process addresses it by ARN from now on, and knows what it serves.
            self._arn[service_name] = (str(found["ListenerArn"]), port)
            self._read_back(service_name, forward_weights(found))
        elif port is not None:
            self._checked.add((service_name, port))  # none yet: set_backends creates it
        return found

    def check_listen(self, service_name: str, listen: str) -> None:
        port = listen_port(listen)
        if self._arn.get(service_name, ("", -1))[1] == port or (service_name, port) in self._checked:
            return
        self._listener(service_name, port)

    def set_backends(self, service_name: str, service: ServiceSpec,
                     backends: Sequence[Backend]) -> None:
        port = listen_port(service.listen)
        lb = self.fleet.alb()
        groups = lb.get("SecurityGroups") or []
        if groups:
            self.fleet.allow(groups[0], port)
        targets: list[dict[str, Any]] = []
        for b in backends:
            arn = self.fleet.target_group(b.release_id)
            if arn is None:
                raise PlatformError(f"aws: release {b.release_id} has no target group")
            targets.append({"TargetGroupArn": arn, "Weight": b.weight})
        live = [x for x in targets if x["Weight"] > 0] or targets
        action = [{"Type": "forward", "ForwardConfig": {
            "TargetGroups": live, "TargetGroupStickinessConfig": {"Enabled": False}}}]
        want = {x["TargetGroupArn"]: int(x["Weight"]) for x in live}
        known = self._arn.get(service_name)
        if known is not None and known[1] == port and self._serving.get(service_name) == want:
            self._sync_previews(service_name, known[0], backends)
            self._deregister_draining(backends)  # the ALB serves this already (read back)
            return
        # The listener's owner is checked once per process; then it is addressed by ARN.
        if known is not None and known[1] == port:
            listener: dict[str, Any] | None = {"ListenerArn": known[0]}
        elif (service_name, port) in self._checked:
            listener = None
        else:
            listener = self._listener(service_name, port)
        with translated(f"routing {service_name} on port {port}"):
            if listener is None:
                out = self.aws.elbv2.create_listener(
                    LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=port,
                    DefaultActions=action,
                    Tags=t.as_list(t.tags(self.project, "listener", self.aws.settings.tags,
                                          service=service_name)))
                arn = str(out["Listeners"][0]["ListenerArn"])
            else:
                arn = str(listener["ListenerArn"])
                self.aws.elbv2.modify_listener(ListenerArn=arn, Port=port,
                                               DefaultActions=action)
        self._arn[service_name] = (arn, port)
        self._checked.discard((service_name, port))
        self._read.pop(service_name, None)  # written: older read-backs say nothing any more
        self._wait_weights(service_name, arn, want)
        self._sync_previews(service_name, arn, backends)
        self._deregister_draining(backends)

    def _sync_previews(self, service_name: str, listener_arn: str,
                       backends: Sequence[Backend]) -> None:
        """The listener's preview rules become exactly the previewed releases' (rules of a
        release no longer previewed go first), then are read back."""
        want: dict[str, str] = {}
        for b in backends:
            if b.preview:
                arn = self.fleet.target_group(b.release_id)
                if arn is None:
                    raise PlatformError(f"aws: release {b.release_id} has no target group")
                want[b.release_id] = arn
        elbv2 = self.aws.elbv2
        with translated(f"the preview rules of {service_name}"):
            rules = elbv2.describe_rules(ListenerArn=listener_arn)["Rules"]
            ok = preview_rules.served(rules, want)
            for rule in rules:
                release = preview_rules.previewed_by(rule)
                if release is not None and not rule.get("IsDefault") and release not in ok:
                    elbv2.delete_rule(RuleArn=rule["RuleArn"])
            for release, arn in sorted(want.items()):
                if release in ok:
                    continue
                for priority, conds in zip(preview_rules.priorities(release),
                                           preview_rules.conditions(release), strict=True):
                    elbv2.create_rule(
                        ListenerArn=listener_arn, Priority=priority, Conditions=conds,
                        Actions=[{"Type": "forward", "TargetGroupArn": arn}],
                        Tags=t.as_list(t.tags(self.project, "preview-rule",
                                              self.aws.settings.tags, service=service_name)))
            if want and preview_rules.served(
                    elbv2.describe_rules(ListenerArn=listener_arn)["Rules"], want) != set(want):
                raise PlatformError(f"aws: the listener of {service_name} does not read back "
                                    f"the preview rules of {', '.join(sorted(want))}")

    def previews(self, service_name: str) -> set[str]:
        """Releases the listener sends their `X-Kiln-Release` requests to (rules read back)."""
        listener = self._listener(service_name, None)
        if listener is None:
            return set()
        with translated(f"reading the rules of {service_name}"):
            rules = self.aws.elbv2.describe_rules(ListenerArn=listener["ListenerArn"])["Rules"]
        groups: dict[str, str] = {}
        for rule in rules:
            release = preview_rules.previewed_by(rule)
            arn = self.fleet.target_group(release) if release else None
            if release and arn:
                groups[release] = arn
        return preview_rules.served(rules, groups)

    def _wait_weights(self, service_name: str, listener_arn: str, want: dict[str, int]) -> None:
        """Read the listener back until it serves `want`: a weight change is not done until
        the ALB says so (nothing is terminated on the strength of a request AWS accepted)."""
        deadline = time.monotonic() + self.settle_timeout
        while True:
            with translated(f"reading back the listener of {service_name}"):
                found = self.aws.elbv2.describe_listeners(
                    ListenerArns=[listener_arn])["Listeners"]
            got = forward_weights(found[0]) if found else {}
            if got == want:
                self._read_back(service_name, got)
                return
            if time.monotonic() > deadline:
                raise PlatformError(
                    f"aws: the listener of {service_name} still serves {self._names(got)} "
                    f"{self.settle_timeout:g}s after kiln set {self._names(want)}")
            time.sleep(self.poll)

    def _read_back(self, service_name: str, weights: dict[str, int]) -> None:
        """What the listener serves, as AWS just answered."""
        self._serving[service_name] = weights
        self._read[service_name] = time.monotonic()
        self.fleet.learn_target_groups(weights)

    def _names(self, weights: dict[str, int]) -> str:
        by_arn = {arn: rel for rel, arn in self.fleet._tg.items()}
        return ", ".join(f"{by_arn.get(a, a)}={w}" for a, w in sorted(weights.items())) or "none"

    def open_requests(self, release_id: str) -> int:
        """Targets of the release still draining (ALB deregistration delay, which the spec's
        drain_timeout sets). A release the listener no longer routes to has its remaining
        targets deregistered here first: that starts the ALB's drain of in-flight requests.
        The executor terminates the release's fleet only once this is 0 (or the drain times
        out)."""
        if self._drain_timeout(release_id) == 0:
            return 0  # no deregistration delay: the ASG's deletion deregisters at once
        arn = self.fleet.target_group(release_id)
        if arn is None:
            return 0
        service = release_id.rpartition("-")[0]
        with translated(f"target health of {release_id}"):
            health = self.aws.elbv2.describe_target_health(
                TargetGroupArn=arn)["TargetHealthDescriptions"]
        draining = [h for h in health if h["TargetHealth"]["State"] == "draining"]
        serving = self._serving.get(service)
        if serving is None:
            serving = self.verify_arns(service)
        if arn not in serving:  # out of the listener: every target leaves (and drains)
            rest = [h["Target"] for h in health
                    if h["TargetHealth"]["State"] not in ("draining", "unused")]
            if rest:
                with translated(f"deregistering the targets of {release_id}"):
                    self.aws.elbv2.deregister_targets(TargetGroupArn=arn, Targets=rest)
                return len(draining) + len(rest)
        return len(draining)

    def _deregister_draining(self, backends: Sequence[Backend]) -> None:
        """Instances kiln retired leave their target group: the deregistration delay drains
        them (the ALB stops sending new requests and lets in-flight ones finish)."""
        for b in backends:
            rows = instance_records.draining_of_release(self.store, b.release_id)
            arn = self.fleet.target_group(b.release_id)
            if rows and arn:
                with translated(f"draining {b.release_id}"):
                    self.aws.elbv2.deregister_targets(
                        TargetGroupArn=arn, Targets=[{"Id": r["id"], "Port": r["port"]}
                                                     for r in rows])

    def _drain_timeout(self, release_id: str) -> float | None:
        """The release's recorded rollout.drain_timeout (its target group's delay)."""
        from kiln.errors import StateError
        from kiln.rollout.release_config import release_spec

        try:
            spec = release_spec(self.store, release_id)
        except StateError:
            return None
        return spec.rollout.drain_timeout if spec is not None else None

    def remove_service(self, service_name: str) -> None:
        self._serving.pop(service_name, None)
        self._read.pop(service_name, None)
        self._arn.pop(service_name, None)
        self._checked = {c for c in self._checked if c[0] != service_name}
        listener = self._listener(service_name, None)
        if listener is not None:
            with translated(f"removing the listener of {service_name}"):
                self.aws.elbv2.delete_listener(ListenerArn=listener["ListenerArn"])

    def verify_arns(self, service_name: str) -> dict[str, int]:
        """target group ARN -> weight, read from the listener (a read-back this process made
        less than `reuse_for` seconds ago, after its last change, answers instead)."""
        when = self._read.get(service_name)
        if when is not None and time.monotonic() - when <= self.reuse_for:
            return dict(self._serving[service_name])
        known = self._arn.get(service_name)
        if known is not None:  # checked once by this process: addressed by its ARN
            from botocore.exceptions import ClientError

            with translated(f"reading back the listener of {service_name}"):
                try:
                    found = self.aws.elbv2.describe_listeners(
                        ListenerArns=[known[0]])["Listeners"]
                except ClientError as exc:
                    if not is_missing(exc):
                        raise
                    found = []
            if found:
                self._read_back(service_name, forward_weights(found[0]))
                return dict(self._serving[service_name])
            self._arn.pop(service_name, None)  # deleted behind kiln's back: look again
        listener = self._listener(service_name, None)
        if listener is None:
            return {}
        weights = forward_weights(listener)
        self._read_back(service_name, weights)
        return weights

    def verify(self, service_name: str) -> dict[str, int]:
        """release_id -> weight, read back from the listener's forward action. Target groups
        are named after their release (Names.target_group), so only a group of another name
        (put there by hand) costs a DescribeTags."""
        arns = self.verify_arns(service_name)
        out: dict[str, int] = {}
        prefix = self.fleet.names.target_group(f"{service_name}-")
        unknown = []
        for arn, weight in arns.items():
            parts = arn.split(":")[-1].split("/")
            name = parts[1] if len(parts) == 3 and parts[0] == "targetgroup" else ""
            if name.startswith(prefix) and len(name) < 32:
                out[f"{service_name}-{name.removeprefix(prefix)}"] = weight
            else:
                unknown.append(arn)
        if unknown:
            with translated("reading target group tags"):
                desc = self.aws.elbv2.describe_tags(ResourceArns=unknown)["TagDescriptions"]
            for d in desc:
                release = t.from_list(d.get("Tags")).get(t.RELEASE, d["ResourceArn"])
                out[release] = arns[d["ResourceArn"]]
        return out

    def request_counts(self) -> RequestCounts | None:
        """None: the ALB's only counts are CloudWatch's, which the AWS judge reads already
        (one source, nothing to cross-check against)."""
        return None

    # ------------------------------------------------------------ teardown

    def stop(self) -> None:
        """Nothing runs any more: delete the project's listeners, ALB, groups and leftovers."""
        from botocore.exceptions import ClientError

        self._serving.clear()
        self._read.clear()
        self._arn.clear()
        self._checked.clear()

        from kiln.platforms.aws.inventory import tagged

        lb = self.fleet.find_alb(listeners=True)
        with translated("deleting the load balancer"):
            if lb is not None:
                for x in lb["kiln_listeners"]:
                    self.aws.elbv2.delete_listener(ListenerArn=x["ListenerArn"])
                self.aws.elbv2.delete_load_balancer(LoadBalancerArn=lb["LoadBalancerArn"])
                self.fleet.forget()
            inv = tagged(self.aws, self.project)
            for name in inv["auto-scaling-group"]:
                self.fleet.dispose(name.removeprefix(f"kiln-{self.project}-"))
            for arn in inv["target-group"]:
                try:
                    self.aws.elbv2.delete_target_group(TargetGroupArn=arn)
                except ClientError as exc:
                    if not is_missing(exc):
                        raise
            for lt in inv["launch-template"]:
                self.aws.ec2.delete_launch_template(LaunchTemplateName=lt)
            for role in ("test", "builder"):  # what a killed `kiln test` / bake left
                sweep_role(self.aws, self.project, role, 2.0)
            groups = self.aws.ec2.describe_security_groups(
                Filters=[*t.filters(self.project), {"Name": f"tag:{t.ROLE}",
                                                    "Values": ["alb", "fleet"]}])["SecurityGroups"]
            # The fleet group refers to the ALB's: drop the rules, then the groups.
            for g in groups:
                if g.get("IpPermissions"):
                    self.aws.ec2.revoke_security_group_ingress(GroupId=g["GroupId"],
                                                               IpPermissions=g["IpPermissions"])
            for g in groups:
                deadline = time.monotonic() + 300.0
                while True:
                    try:
                        self.aws.ec2.delete_security_group(GroupId=g["GroupId"])
                        break
                    except ClientError as exc:
                        if is_missing(exc):
                            break
                        if (error_code(exc) != "DependencyViolation"
                                or time.monotonic() > deadline):
                            raise
                        time.sleep(2.0)
