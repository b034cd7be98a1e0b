"""FakeBuilder: deterministic digests from the spec, no files."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.errors import BakeError
from kiln.platforms.base import StepEvent
from kiln.platforms.fake.builder import FakeBuilder
from kiln.spec.models import ImageSpec


def test_fake_digest_follows_the_spec(tmp_path: Path) -> None:
    fb = FakeBuilder()
    a = ImageSpec.model_validate({"steps": [{"run": "x"}, {"env": {"K": "v"}}]})
    b = ImageSpec.model_validate({"steps": [{"run": "y"}]})
    events: list[StepEvent] = []
    one = fb.build("web", a, base_dir=tmp_path, progress=events.append)
    two = fb.build("web", a, base_dir=tmp_path, progress=events.append)
    assert one == two and one.digest.startswith("sha256:") and one.env == {"K": "v"}
    assert [e.status for e in events] == ["ran", "ran", "cached", "cached"]
    assert fb.build("web", b, base_dir=tmp_path).digest != one.digest
    assert len(fb.built) == 3


def test_fake_failure(tmp_path: Path) -> None:
    with pytest.raises(BakeError, match="exit code 1"):
        FakeBuilder(fail={"web"}).build("web", ImageSpec.model_validate({"steps": [{"run": "x"}]}),
                                        base_dir=tmp_path)
