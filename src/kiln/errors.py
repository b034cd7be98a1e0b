"""One exception tree for the whole library; the CLI maps it to exit codes."""

from __future__ import annotations


class KilnError(Exception):
    """Root of every error kiln raises on purpose. `exit_code` is what the CLI returns."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class SpecError(KilnError):
    """kiln.yaml is malformed or invalid. Carries every problem found, one per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class StateError(KilnError):
    """The state directory or database cannot be used."""


class LockHeld(KilnError):
    """Another mutating command holds the project lock."""

    exit_code = 4


class BakeError(KilnError):
    """A bake step failed or its inputs are missing."""


class ImageTampered(KilnError):
    """A sealed image's files no longer match its digest; it is refused until rebaked."""


class VerifyError(KilnError):
    """An image's checks failed or could not run."""


class PlatformError(KilnError):
    """A platform (process, router, container engine, cloud API) failed."""


class RolledBack(KilnError):
    """The rollout was rolled back by the judge or a failed health gate."""

    exit_code = 3


class NotFound(KilnError):
    """A named image, service, release or instance does not exist."""
