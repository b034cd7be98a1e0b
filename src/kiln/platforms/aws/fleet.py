"""Per-release resources (launch template, Auto Scaling group, target group) and the project's
shared ones (ALB and its security groups), each found by a deterministic name so that a rerun
after a crash finds what the killed run created instead of creating it twice.

Why a launch template per release (not one template with a version per release): a release is
disposed of in one `delete_launch_template` call, and moto lacks DeleteLaunchTemplateVersions;
see docs/decisions/aws-fleet-per-release.md.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kiln.errors import PlatformError
from kiln.platforms.aws import tags as t
from kiln.platforms.aws.boot import encoded, user_data
from kiln.platforms.aws.client import Aws, error_code, is_missing, translated
from kiln.platforms.aws.preflight import Network, network
from kiln.platforms.base import Image, Release
from kiln.spec.models import ServiceSpec


def _short(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Names:
    """AWS names of one project's resources (target group and ALB names cap at 32 characters)."""

    project: str

    @property
    def alb(self) -> str:
        return f"kiln-{self.project[:18]}-{_short(self.project)}"

    @property
    def alb_group(self) -> str:
        return f"kiln-{self.project}-alb"

    @property
    def fleet_group(self) -> str:
        return f"kiln-{self.project}-fleet"

    def target_group(self, release_id: str) -> str:
        service, _, number = release_id.rpartition("-")
        return f"kiln-{_short(self.project, service)}-{number}"[:32]

    def asg(self, release_id: str) -> str:
        return f"kiln-{self.project}-{release_id}"

    def launch_template(self, release_id: str) -> str:
        return f"kiln-{self.project}-{release_id}"


class Fleet:
    """Creates, finds and deletes the project's resources. Every method is idempotent."""

    def __init__(self, aws: Aws, project: str) -> None:
        self.aws, self.project = aws, project
        self.names = Names(project)
        self._network: Network | None = None
        self._tg: dict[str, str] = {}
        self._alb: dict[str, Any] | None = None  # found once per process (kiln holds the lock)
        self._allowed: set[tuple[str, int, str | None]] = set()
        self._groups: dict[str, dict[str, Any]] | None = None  # name -> description
        self._tg_names: dict[str, str] = {}  # target group name -> ARN, seen on a listener
        self._asgs: set[str] = set()  # releases whose ASG this process created or found
        self._fresh: set[str] = set()  # releases whose target group this process created

    @property
    def net(self) -> Network:
        if self._network is None:
            self._network = network(self.aws)
        return self._network

    def _tags(self, role: str, **kiln: str) -> dict[str, str]:
        return t.tags(self.project, role, self.aws.settings.tags, **kiln)

    # ------------------------------------------------------------ security groups

    def _known_groups(self) -> None:
        """Both project groups (ALB's, fleet's) and their rules in one call, once."""
        if self._groups is not None:
            return
        with translated("looking up the project's security groups"):
            found = self.aws.ec2.describe_security_groups(Filters=[
                {"Name": "group-name", "Values": [self.names.alb_group, self.names.fleet_group]},
                {"Name": "vpc-id", "Values": [self.net.vpc_id]}])["SecurityGroups"]
        self._groups = {str(g["GroupName"]): g for g in found}
        for g in found:  # rules that exist need no AuthorizeSecurityGroupIngress
            for perm in g.get("IpPermissions", []):
                for pair in perm.get("UserIdGroupPairs", []) or [{"GroupId": None}]:
                    if perm.get("FromPort") is not None:
                        self._allowed.add((str(g["GroupId"]), int(perm["FromPort"]),
                                           pair.get("GroupId")))

    def group(self, name: str, role: str, description: str) -> str:
        self._known_groups()
        assert self._groups is not None
        with translated(f"security group {name}"):
            found = [self._groups[name]] if name in self._groups else []
            if found:
                if t.from_list(found[0].get("Tags")).get(t.PROJECT) != self.project:
                    raise PlatformError(f"aws: security group {name} ({found[0]['GroupId']}) "
                                        f"exists but is not kiln's (no {t.PROJECT}={self.project} "
                                        "tag); refusing to use it")
                return str(found[0]["GroupId"])
            out = self.aws.ec2.create_security_group(
                GroupName=name, VpcId=self.net.vpc_id, Description=description,
                TagSpecifications=[t.spec("security-group", self._tags(role))])
        self._groups[name] = {"GroupId": out["GroupId"], "GroupName": name,
                              "Tags": t.as_list(self._tags(role))}
        return str(out["GroupId"])

    def allow(self, group: str, port: int, source_group: str | None = None) -> None:
        perm: dict[str, Any] = {"IpProtocol": "tcp", "FromPort": port, "ToPort": port}
        if source_group:
            perm["UserIdGroupPairs"] = [{"GroupId": source_group}]
        else:
            perm["IpRanges"] = [{"CidrIp": "0.0.0.0/0"}]
        if (group, port, source_group) in self._allowed:
            return
        from botocore.exceptions import ClientError

        with translated(f"opening port {port} on {group}"):
            try:
                self.aws.ec2.authorize_security_group_ingress(GroupId=group,
                                                              IpPermissions=[perm])
            except ClientError as exc:
                if error_code(exc) != "InvalidPermission.Duplicate":
                    raise
        self._allowed.add((group, port, source_group))

    def fleet_group(self) -> str:
        return self.group(self.names.fleet_group, "fleet",
                          "kiln instances: reachable from the project's ALB only")

    def alb_group(self) -> str:
        return self.group(self.names.alb_group, "alb", "kiln ALB listeners")

    # ------------------------------------------------------------ the ALB

    def find_alb(self, listeners: bool = False) -> dict[str, Any] | None:
        """The project's ALB (None when there is none). With `listeners`, its listeners come
        along under "kiln_listeners", each with its tags under "kiln_tags": the ALB's owner
        tag and theirs in one DescribeTags."""
        if self._alb is not None and not listeners:
            return self._alb
        from botocore.exceptions import ClientError

        with translated("looking up the load balancer"):
            if self._alb is not None:
                lb: dict[str, Any] = self._alb
            else:
                try:
                    lbs = self.aws.elbv2.describe_load_balancers(Names=[self.names.alb])
                except ClientError as exc:
                    if error_code(exc) == "LoadBalancerNotFound":
                        return None
                    raise
                lb = lbs["LoadBalancers"][0]
            arn = str(lb["LoadBalancerArn"])
            found: list[dict[str, Any]] = []
            if listeners:
                found = list(self.aws.elbv2.describe_listeners(LoadBalancerArn=arn)["Listeners"])
            arns = [x["ListenerArn"] for x in found] + ([arn] if self._alb is None else [])
            tags = self.elbv2_tags_of(arns)
        if self._alb is None:
            owner = tags.get(arn, {}).get(t.PROJECT)
            if owner != self.project:
                raise PlatformError(f"aws: load balancer {self.names.alb} exists but is not "
                                    f"kiln's (no {t.PROJECT}={self.project} tag); refusing to "
                                    "change it")
            self._alb = lb
        for x in found:
            x["kiln_tags"] = tags.get(x["ListenerArn"], {})
        return {**lb, "kiln_listeners": found} if listeners else lb

    def elbv2_tags_of(self, arns: list[str]) -> dict[str, dict[str, str]]:
        """ARN -> its tags, for any number of ELB resources (DescribeTags takes 20 at a time)."""
        out: dict[str, dict[str, str]] = {}
        for i in range(0, len(arns), 20):
            with translated("reading tags"):
                desc = self.aws.elbv2.describe_tags(ResourceArns=arns[i:i + 20])
            for d in desc["TagDescriptions"]:
                out[str(d["ResourceArn"])] = t.from_list(d.get("Tags"))
        return out

    def alb(self) -> dict[str, Any]:
        found = self.find_alb()
        if found is not None:
            return found
        group = self.alb_group()
        with translated("creating the load balancer"):
            out = self.aws.elbv2.create_load_balancer(
                Name=self.names.alb, Subnets=list(self.net.subnets), SecurityGroups=[group],
                Scheme="internet-facing", Type="application", IpAddressType="ipv4",
                Tags=t.as_list(self._tags("alb")))
        lb: dict[str, Any] = out["LoadBalancers"][0]
        self._alb = lb
        return lb

    def forget(self) -> None:
        """Drop what this process remembers (after the ALB is deleted)."""
        self._alb, self._tg, self._allowed, self._groups = None, {}, set(), None
        self._tg_names = {}

    # ------------------------------------------------------------ per release

    def target_group(self, release_id: str, service_name: str | None = None,
                     service: ServiceSpec | None = None) -> str | None:
        """The release's target group ARN; created when `service` is given and it is missing."""
        if release_id in self._tg:
            return self._tg[release_id]
        name = self.names.target_group(release_id)
        if service is None and name in self._tg_names:
            self._tg[release_id] = self._tg_names[name]
            return self._tg[release_id]
        from botocore.exceptions import ClientError

        with translated(f"target group {name}"):
            found = []
            if service is None:  # a lookup; creating is idempotent (same name and settings)
                try:
                    found = self.aws.elbv2.describe_target_groups(Names=[name])["TargetGroups"]
                except ClientError as exc:
                    if error_code(exc) != "TargetGroupNotFound":
                        raise
            if found:
                arn = str(found[0]["TargetGroupArn"])
            elif service is None or service_name is None:
                return None
            else:
                h = service.health
                try:
                    out = self.aws.elbv2.create_target_group(
                        Name=name, Protocol="HTTP", Port=service.port, VpcId=self.net.vpc_id,
                        TargetType="instance", HealthCheckProtocol="HTTP",
                        HealthCheckPath=h.path,
                        HealthCheckIntervalSeconds=max(5, min(300, int(h.interval))),
                        HealthCheckTimeoutSeconds=max(2, min(120, int(h.timeout))),
                        HealthyThresholdCount=2, UnhealthyThresholdCount=2,
                        Matcher={"HttpCode": "200-399"},
                        Tags=t.as_list(self._tags("release", service=service_name,
                                                  release=release_id)))
                    self._fresh.add(release_id)  # (AWS also answers so when it exists)
                except ClientError as exc:  # a killed run made it (AWS answers so when a
                    if error_code(exc) != "DuplicateTargetGroupName":  # setting differs)
                        raise
                    out = self.aws.elbv2.describe_target_groups(Names=[name])
                arn = str(out["TargetGroups"][0]["TargetGroupArn"])
                # Draining is the deregistration delay: ALB finishes in-flight requests first.
                self.aws.elbv2.modify_target_group_attributes(TargetGroupArn=arn, Attributes=[{
                    "Key": "deregistration_delay.timeout_seconds",
                    "Value": str(int(service.rollout.drain_timeout))}])
        self._tg[release_id] = arn
        return arn

    def learn_target_groups(self, arns: Iterable[str]) -> None:
        """Target group ARNs seen elsewhere (a listener's forward action): their names are
        kiln's, so `target_group` finds them by name without asking AWS."""
        for arn in arns:  # arn:aws:elasticloadbalancing:<region>:<acct>:targetgroup/<name>/<id>
            parts = arn.split(":")[-1].split("/")
            if len(parts) == 3 and parts[0] == "targetgroup":
                self._tg_names[parts[1]] = arn

    def launch_template(self, service_name: str, service: ServiceSpec, release: Release,
                        image: Image) -> str:
        name = self.names.launch_template(release.id)
        from botocore.exceptions import ClientError

        with translated(f"launch template {name}"):
            s = self.aws.settings
            kiln_tags = self._tags("release", service=service_name, release=release.id,
                                   image=image.digest[7:23])
            data: dict[str, Any] = {
                "ImageId": image.ref, "InstanceType": s.instance_type,
                "SecurityGroupIds": [self.fleet_group(), *s.security_groups],
                "UserData": encoded(user_data(service_name, service,
                                              {**image.env, **service.env}, image.workdir,
                                              s.region)),
                "TagSpecifications": [t.spec("instance", kiln_tags | {
                    "Name": f"kiln-{self.project}-{release.id}"}), t.spec("volume", kiln_tags)],
            }
            if s.instance_profile:
                data["IamInstanceProfile"] = {"Name": s.instance_profile}
            if s.key_name:
                data["KeyName"] = s.key_name
            try:
                out = self.aws.ec2.create_launch_template(
                    LaunchTemplateName=name, VersionDescription=release.id,
                    LaunchTemplateData=data,
                    TagSpecifications=[t.spec("launch-template", kiln_tags)])
            except ClientError as exc:  # a killed run made it: a release's template is immutable
                if "AlreadyExists" not in error_code(exc):
                    raise
                found = self.aws.ec2.describe_launch_templates(
                    LaunchTemplateNames=[name])["LaunchTemplates"]
                return str(found[0]["LaunchTemplateId"])
        return str(out["LaunchTemplate"]["LaunchTemplateId"])

    def asg(self, release_id: str) -> dict[str, Any] | None:
        with translated("looking up the Auto Scaling group"):
            groups = self.aws.autoscaling.describe_auto_scaling_groups(
                AutoScalingGroupNames=[self.names.asg(release_id)])["AutoScalingGroups"]
        return dict(groups[0]) if groups else None

    def ensure_asg(self, service_name: str, service: ServiceSpec, release: Release,
                   image: Image, desired: int = 0) -> dict[str, Any]:
        """The release's ASG; a new one is created asking for `desired` instances at once.
        Idempotent: an existing one (a killed run made it) is found and adopted."""
        tg = self.target_group(release.id, service_name, service)
        assert tg is not None  # created when missing
        # Its ASG is made after its target group: a group that was not just created may have
        # one (moto replaces an ASG created twice instead of refusing, so look first).
        if release.id in self._asgs or release.id not in self._fresh:
            found = self.asg(release.id)
            if found is not None:
                self._asgs.add(release.id)
                return found
        lt = self.launch_template(service_name, service, release, image)
        fleet = self.fleet_group()
        lb = self.alb()
        self.allow(fleet, service.port, source_group=(lb.get("SecurityGroups") or [None])[0])
        kiln_tags = self._tags("release", service=service_name, release=release.id)
        name = self.names.asg(release.id)
        from botocore.exceptions import ClientError

        with translated(f"creating the Auto Scaling group {name}"):
            try:
                self._create_asg(name, lt, tg, service, kiln_tags, desired)
            except ClientError as exc:
                if error_code(exc) != "AlreadyExists":
                    raise
                self._asgs.add(release.id)  # a killed run made it: adopt what it launched
                found = self.asg(release.id)
                assert found is not None
                return found
        self._asgs.add(release.id)
        return {"AutoScalingGroupName": name, "DesiredCapacity": desired, "Instances": [],
                "created": True}

    def _create_asg(self, name: str, lt: str, tg: str, service: ServiceSpec,
                    kiln_tags: dict[str, str], desired: int) -> None:
        self.aws.autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=name,
            LaunchTemplate={"LaunchTemplateId": lt, "Version": "1"},
            MinSize=0, MaxSize=64, DesiredCapacity=desired,
            VPCZoneIdentifier=",".join(self.net.subnets), TargetGroupARNs=[tg],
            HealthCheckType="ELB", HealthCheckGracePeriod=int(service.health.deadline),
            Tags=[{"Key": k, "Value": v, "PropagateAtLaunch": False,
                   "ResourceId": name, "ResourceType": "auto-scaling-group"}
                  for k, v in kiln_tags.items()])

    def dispose(self, release_id: str) -> None:
        """Delete the release's ASG (and its instances), target group and launch template."""
        from botocore.exceptions import ClientError

        name = self.names.asg(release_id)
        with translated(f"deleting {name}"):
            try:
                self.aws.autoscaling.delete_auto_scaling_group(AutoScalingGroupName=name,
                                                               ForceDelete=True)
            except ClientError as exc:
                if not is_missing(exc):
                    raise
            tg = self.target_group(release_id)
            if tg is not None:
                self._delete_target_group(tg, timeout=0.0)
            self._tg.pop(release_id, None)
            self._fresh.discard(release_id)
            self._asgs.discard(release_id)
            self._tg_names.pop(self.names.target_group(release_id), None)
            try:
                self.aws.ec2.delete_launch_template(
                    LaunchTemplateName=self.names.launch_template(release_id))
            except ClientError as exc:
                if "NotFound" not in error_code(exc) and not is_missing(exc):
                    raise

    def _delete_target_group(self, arn: str, timeout: float = 120.0) -> None:
        """A target group in a listener's action is 'in use' until the router drops it."""
        from botocore.exceptions import ClientError

        deadline = time.monotonic() + timeout
        while True:
            try:
                self.aws.elbv2.delete_target_group(TargetGroupArn=arn)
                return
            except ClientError as exc:
                if is_missing(exc):
                    return
                if error_code(exc) != "ResourceInUse":
                    raise
                if time.monotonic() > deadline:
                    return  # still routed to (not by kiln: kiln routes away first); left for stop

            time.sleep(1.0)
