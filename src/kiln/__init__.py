"""kiln: disposable, immutable infrastructure.

Public API. Imports are lazy so that `kiln --version` and no-op bakes start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from kiln.errors import BakeError as BakeError
    from kiln.errors import KilnError as KilnError
    from kiln.errors import LockHeld as LockHeld
    from kiln.errors import NotFound as NotFound
    from kiln.errors import PlatformError as PlatformError
    from kiln.errors import RolledBack as RolledBack
    from kiln.errors import SpecError as SpecError
    from kiln.errors import StateError as StateError
    from kiln.errors import VerifyError as VerifyError
    from kiln.project import DeployEvent as DeployEvent
    from kiln.project import DeployResult as DeployResult
    from kiln.project import Project as Project
    from kiln.project import ServiceResult as ServiceResult
    from kiln.project import raise_for as raise_for
    from kiln.serve import serve as serve

_EXPORTS = {
    "KilnError": "kiln.errors", "SpecError": "kiln.errors", "StateError": "kiln.errors",
    "LockHeld": "kiln.errors", "BakeError": "kiln.errors", "VerifyError": "kiln.errors",
    "PlatformError": "kiln.errors", "RolledBack": "kiln.errors", "NotFound": "kiln.errors",
    "Project": "kiln.project", "DeployEvent": "kiln.project", "DeployResult": "kiln.project",
    "ServiceResult": "kiln.project", "raise_for": "kiln.project", "serve": "kiln.serve",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kiln' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)  # not a capability probe: lazy export
