"""`kiln gc` on AWS: AMIs of images no retained release needs are deregistered, with their
snapshots (a deregistered AMI's snapshots otherwise stay and cost money)."""

from __future__ import annotations

from collections.abc import Collection

from kiln.errors import PlatformError
from kiln.platforms.aws import tags as t
from kiln.platforms.aws.bake import deregister
from kiln.platforms.aws.client import Aws, translated
from kiln.platforms.base import Image
from kiln.state.store import Store


def remove_images(aws: Aws, store: Store, project: str, keep: Collection[str]) -> list[str]:
    keep_keys = {d.removeprefix("sha256:") for d in keep}
    with translated("listing the project's AMIs"):
        images = aws.ec2.describe_images(Owners=["self"], Filters=t.filters(project, role="image"))
    doomed = [i["ImageId"] for i in images["Images"]
              if t.from_list(i.get("Tags")).get(t.INPUT_KEY) not in keep_keys]
    problems = deregister(aws, doomed)
    if problems:
        raise PlatformError("aws: gc could not remove: " + "; ".join(problems))
    if doomed:
        store.event("image.deregistered", f"deregistered {len(doomed)} AMI(s) and their snapshots",
                    data={"amis": doomed})
    return doomed


def check_ami(aws: Aws, project: str, image: Image) -> str | None:
    """None when the image's AMI is available and carries its input key; else one line."""
    from botocore.exceptions import ClientError

    with translated(f"looking up {image.ref}"):
        try:
            found = aws.ec2.describe_images(ImageIds=[image.ref]).get("Images", [])
        except ClientError as exc:
            if "InvalidAMIID" not in str(exc):
                raise
            found = []
    if not found or found[0].get("State") != "available":
        return f"image {image.name} {image.digest[:19]}: AMI {image.ref} is gone"
    tags = t.from_list(found[0].get("Tags"))
    if tags.get(t.INPUT_KEY) != image.digest.removeprefix("sha256:") or tags.get(t.PROJECT) != project:
        return (f"image {image.name} {image.digest[:19]}: AMI {image.ref} is not the one kiln "
                "baked (its kiln:input-key tag differs)")
    return None
