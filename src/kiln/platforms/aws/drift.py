"""`kiln drift` on AWS: what runs there vs what the state says runs.

Reported: an instance running an AMI other than its release's, a release with live instances
whose Auto Scaling group is gone, an instance of an ASG that kiln never recorded. (A listener
whose weights were changed by hand is found by the generic check: `Router.verify` reads them back.)
"""

from __future__ import annotations

from typing import Any

from kiln.platforms.aws.client import Aws, translated
from kiln.platforms.aws.fleet import Fleet
from kiln.state.records import instances as instance_records
from kiln.state.store import Store


def detect(aws: Aws, store: Store, fleet: Fleet) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    rows = instance_records.live_service_image_refs(store)
    if not rows:
        return items
    groups = {rel: fleet.asg(rel) for rel in sorted({r["release_id"] for r in rows})}
    ids = {r["id"] for r in rows}
    for group in groups.values():  # members kiln never recorded are checked too
        ids.update(i["InstanceId"] for i in (group or {}).get("Instances", []))
    with translated("describing instances for drift"):
        res = aws.ec2.describe_instances(Filters=[{"Name": "instance-id", "Values": sorted(ids)}])
    running = {i["InstanceId"]: i for r in res["Reservations"] for i in r["Instances"]
               if i["State"]["Name"] in ("pending", "running")}
    ami = {r["release_id"]: r["ami"] for r in rows}
    service = {r["release_id"]: r["service"] for r in rows}
    for release, group in groups.items():
        if group is None:
            items.append({"kind": "asg", "service": service[release],
                          "detail": f"Auto Scaling group {fleet.names.asg(release)} of "
                                    f"{release} is missing"})
        members = {i["InstanceId"] for i in (group or {}).get("Instances", [])}
        members |= {r["id"] for r in rows if r["release_id"] == release}
        for iid in sorted(members):
            inst = running.get(iid)
            if inst is not None and ami[release] and inst.get("ImageId") != ami[release]:
                items.append({"kind": "ami", "service": service[release],
                              "detail": f"{iid} runs {inst.get('ImageId')}, but its release "
                                        f"{release} is {ami[release]}"})
    return items
