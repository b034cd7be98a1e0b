"""Platform aws: AMIs baked from a builder instance, a fleet per release (launch template, Auto
Scaling group, target group) behind one ALB whose listener weights are the rollout, CloudWatch
as the judge's metric source. Each part is built on first use; boto3 is imported only then.
See docs/aws.md."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiln.platforms.capabilities import OwnDrift
from kiln.spec.aws import AwsSettings
from kiln.state.store import Store

if TYPE_CHECKING:
    from kiln.platforms.aws.bake import AmiBuilder
    from kiln.platforms.aws.client import Aws
    from kiln.platforms.aws.compute import AwsCompute
    from kiln.platforms.aws.fleet import Fleet
    from kiln.platforms.aws.metrics import CloudWatchSource
    from kiln.platforms.aws.router import AlbRouter
    from kiln.platforms.base import Image


class AwsPlatform(OwnDrift):
    def __init__(self, store: Store, home: Path, project: str, *,
                 settings: AwsSettings | None = None) -> None:
        if settings is None:
            from kiln.errors import KilnError

            raise KilnError("platform aws needs an aws: block (region, subnets, base_ami)")
        self.store, self.home, self.project, self.settings = store, home, project, settings

    @cached_property
    def aws(self) -> Aws:
        from kiln.platforms.aws.client import Aws

        return Aws(self.settings)

    @cached_property
    def fleet(self) -> Fleet:
        from kiln.platforms.aws.fleet import Fleet

        return Fleet(self.aws, self.project)

    @cached_property
    def builder(self) -> AmiBuilder:
        from kiln.platforms.aws.bake import AmiBuilder

        return AmiBuilder(self.aws, self.store, self.project)

    @cached_property
    def compute(self) -> AwsCompute:
        from kiln.platforms.aws.compute import AwsCompute

        return AwsCompute(self.aws, self.store, self.home, self.fleet)

    @cached_property
    def router(self) -> AlbRouter:
        from kiln.platforms.aws.router import AlbRouter

        return AlbRouter(self.aws, self.store, self.project, self.fleet)

    @cached_property
    def metrics(self) -> CloudWatchSource:
        """The judge's source: each release's target-group periods in CloudWatch."""
        from kiln.platforms.aws.metrics import CloudWatchSource

        return CloudWatchSource(self.aws, self.fleet, period=self.settings.metrics_period)

    def drift(self) -> list[dict[str, Any]]:
        from kiln.platforms.aws.drift import detect

        return detect(self.aws, self.store, self.fleet)

    def image(self, digest: str) -> Image:
        from kiln.bake.imagestore import get_image

        return get_image(self.store, digest)

    def verify_image(self, digest: str) -> str | None:
        """An AMI cannot be changed once created: check it still exists and is kiln's."""
        from kiln.platforms.aws.gc import check_ami

        return check_ami(self.aws, self.project, self.image(digest))

    def remove_images(self, keep: set[str]) -> list[str]:
        """Deregister the AMIs (and delete the snapshots) of images not in `keep`, then forget
        them in the state."""
        from kiln.bake.imagestore import remove_images as forget
        from kiln.platforms.aws.gc import remove_images

        remove_images(self.aws, self.store, self.project, keep)
        return forget(self.store, self.home, keep)

    def remove_build_cache(self) -> list[str]:
        """An AMI bake keeps no intermediate images."""
        return []
