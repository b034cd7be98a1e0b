"""pytest plugin loaded into `kiln test`'s testinfra run (`-p kiln.verify.testinfra_plugin`).

Registers the `kiln://` backend with testinfra and offers a `kiln_instance` fixture with the
throwaway instance's address (also in KILN_INSTANCE_URL / _HOST / _PORT / _ID).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import testinfra.backend

testinfra.backend.BACKENDS.setdefault("kiln", "kiln.verify.testinfra_backend.KilnBackend")
testinfra.backend.BACKENDS.setdefault("kiln-ssm", "kiln.platforms.aws.testinfra_ssm.SsmBackend")


@dataclass(frozen=True)
class KilnInstance:
    id: str
    host: str
    port: int
    url: str


def instance_from_env() -> KilnInstance:
    return KilnInstance(
        id=os.environ.get("KILN_INSTANCE_ID", ""),
        host=os.environ.get("KILN_INSTANCE_HOST", "127.0.0.1"),
        port=int(os.environ.get("KILN_INSTANCE_PORT") or 0),
        url=os.environ.get("KILN_INSTANCE_URL", ""),
    )


@pytest.fixture(scope="session")
def kiln_instance() -> KilnInstance:
    """The instance under test: `.url`, `.host`, `.port`, `.id`."""
    return instance_from_env()
