"""Preview on the ALB (issue 23): listener rules that send requests naming a release by
`X-Kiln-Release: <release>` (the header, or a cookie of that name) to its target group, whatever
the weights of the listener's default forward action. Pure: the rules kiln wants and reads back.

Two rules per previewed release, each one `http-header` condition (an ALB condition matches one
header): the header itself, exact; the Cookie header by wildcard, with the cookie last or
followed by `;`. ALB header values match case-insensitively and a `*` anywhere, so the cookie
rule also takes a cookie whose name merely ends in `X-Kiln-Release` (documented, not exact).
Priorities come from the release number, so a release's rules never collide with another's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kiln.platforms.base import PREVIEW_HEADER

COOKIE = "Cookie"


def priorities(release_id: str) -> tuple[int, int]:
    """(header rule, cookie rule) priorities of a release (`web-r12` -> 25, 26)."""
    number = int(release_id.rpartition("-r")[2])
    return 2 * number + 1, 2 * number + 2


def conditions(release_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(header rule, cookie rule) conditions that name the release."""
    cookie = f"{PREVIEW_HEADER}={release_id}"
    return ([{"Field": "http-header", "HttpHeaderConfig": {
                "HttpHeaderName": PREVIEW_HEADER, "Values": [release_id]}}],
            [{"Field": "http-header", "HttpHeaderConfig": {
                "HttpHeaderName": COOKIE, "Values": [f"*{cookie}", f"*{cookie};*"]}}])


def previewed_by(rule: Mapping[str, Any]) -> str | None:
    """The release a rule of kiln's previews (by its header or cookie condition), else None."""
    for cond in rule.get("Conditions") or []:
        cfg = cond.get("HttpHeaderConfig") or {}
        name, values = str(cfg.get("HttpHeaderName", "")), list(cfg.get("Values") or [])
        if name.lower() == PREVIEW_HEADER.lower() and len(values) == 1:
            return str(values[0])
        prefix = f"*{PREVIEW_HEADER}="
        if name.lower() == COOKIE.lower() and values and str(values[0]).startswith(prefix):
            return str(values[0])[len(prefix):]
    return None


def forwards_to(rule: Mapping[str, Any]) -> str | None:
    """The target group ARN a rule forwards to (one group), else None."""
    for action in rule.get("Actions") or []:
        if action.get("Type") != "forward":
            continue
        if action.get("TargetGroupArn"):
            return str(action["TargetGroupArn"])
        groups = (action.get("ForwardConfig") or {}).get("TargetGroups") or []
        if len(groups) == 1:
            return str(groups[0]["TargetGroupArn"])
    return None


def served(rules: Sequence[Mapping[str, Any]], groups: Mapping[str, str]) -> set[str]:
    """Releases whose header and cookie rules both forward to their own target group
    (`groups`: release -> ARN)."""
    seen: dict[str, int] = {}
    for rule in rules:
        release = previewed_by(rule)
        if release is not None and release in groups and forwards_to(rule) == groups[release]:
            seen[release] = seen.get(release, 0) + 1
    return {release for release, n in seen.items() if n == 2}
