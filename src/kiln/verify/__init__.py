"""Prove images before they deploy: built-in checks + testinfra against a throwaway instance,
and in-toto attestations that bind the result to the image digest and the suite digest."""

from kiln.verify.attest import (
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    Attestation,
    Verdict,
    attest,
    latest_attestation,
    statement,
    verdict_for,
)
from kiln.verify.digest import suite_digest
from kiln.verify.results import CaseResult, CheckKind, CheckResult, SuiteResult
from kiln.verify.runner import run_checks

__all__ = [
    "PREDICATE_TYPE",
    "STATEMENT_TYPE",
    "Attestation",
    "CaseResult",
    "CheckKind",
    "CheckResult",
    "SuiteResult",
    "Verdict",
    "attest",
    "latest_attestation",
    "run_checks",
    "statement",
    "suite_digest",
    "verdict_for",
]
