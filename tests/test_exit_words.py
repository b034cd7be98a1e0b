"""How an instance ended, in words (local and podman share the wording)."""

import pytest

from kiln.platforms.local.compute import describe_exit


@pytest.mark.parametrize(("code", "words"), [
    (0, "exited with code 0"),
    (1, "exited with code 1"),
    (-9, "was killed by SIGKILL"),
    (-15, "was killed by SIGTERM"),
    (137, "exited with code 137 (SIGKILL)"),
    (143, "exited with code 143 (SIGTERM)"),
    (128, "exited with code 128"),
    (255, "exited with code 255"),
    (-99, "was killed by signal 99"),
])
def test_describe_exit(code: int, words: str) -> None:
    assert describe_exit(code) == words
