"""`kiln drift` on AWS: what runs there vs what the state says runs.

Reported: an instance running an AMI other than its release's, a release with live instances
whose Auto Scaling group is gone, an instance of an ASG that kiln never recorded. (A listener
whose weights were changed by hand is found by the generic check: `Router.verify` reads them back.)
"""

from __future__ import annotations

from typing import Any

from kiln.platforms.aws.client import Aws, translated
from kiln.platforms.aws.fleet import Fleet
from kiln.state.store import Store


def detect(aws: Aws, store: Store, fleet: Fleet) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    rows = store.query(
        "SELECT i.id, i.service, i.release_id, im.ref AS ami FROM instances i "
        "JOIN releases r ON r.id = i.release_id LEFT JOIN images im ON im.digest = r.image_digest "
        "WHERE i.kind = 'service' AND i.state IN ('starting','running','draining')")
    if not rows:
        return items
    with translated("describing instances for drift"):
        res = aws.ec2.describe_instances(
            Filters=[{"Name": "instance-id", "Values": [r["id"] for r in rows]}])
    running = {i["InstanceId"]: i for r in res["Reservations"] for i in r["Instances"]}
    for row in rows:
        inst = running.get(row["id"])
        if inst is None or inst["State"]["Name"] not in ("pending", "running"):
            continue  # the generic check reports dead instances
        if row["ami"] and inst.get("ImageId") != row["ami"]:
            items.append({"kind": "ami", "service": row["service"],
                          "detail": f"{row['id']} runs {inst.get('ImageId')}, but its release "
                                    f"{row['release_id']} is {row['ami']}"})
    for release in sorted({(r["service"], r["release_id"]) for r in rows}):
        if fleet.asg(release[1]) is None:
            items.append({"kind": "asg", "service": release[0],
                          "detail": f"Auto Scaling group {fleet.names.asg(release[1])} of "
                                    f"{release[1]} is missing"})
    return items
