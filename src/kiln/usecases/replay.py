"""`kiln judge replay ROLLOUT`: the judge again over a rollout's stored evidence, under other
settings, next to what it decided. Read-only: it writes nothing (not even an event).

`--max-error-rate-increase` is the 5xx margin only, as `max_error_rate_increase` is in the spec;
each `analysis.metrics` entry's own margin is changed by name with `--max-increase NAME=X`
(docs/decisions/replay-margin.md says why not one flag for every count)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from kiln.analysis.recording import Recording
from kiln.analysis.replay import replay
from kiln.context import Context
from kiln.errors import KilnError, NotFound
from kiln.rollout.release_config import find_release
from kiln.spec.models import Analysis, Metric
from kiln.state.records import evidence as evidence_records
from kiln.state.records import rollouts as rollout_records

#: The settings a replay may change, by their command-line option.
OPTIONS = {"alpha": "--alpha", "confidence": "--confidence",
           "max_error_rate_increase": "--max-error-rate-increase",
           "max_latency_increase": "--max-latency-increase"}


class BadSetting(KilnError):
    """A replay setting that the spec would refuse too."""

    exit_code = 2


METRIC_OPTION = "--max-increase"


def _metric_margins(recorded: Analysis, given: Sequence[str]) -> list[dict[str, Any]]:
    """`analysis.metrics` with `--max-increase NAME=X` applied (each NAME at most once)."""
    metrics = {m.name: m.model_dump() for m in recorded.metrics}
    seen: set[str] = set()
    for item in given:
        name, eq, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not eq or not name or not value:
            raise BadSetting(f"{METRIC_OPTION}: expected NAME=X like checkout_failures=50%, "
                             f"got {item!r}")
        if name not in metrics:
            known = ", ".join(sorted(metrics)) or "none"
            raise BadSetting(f"{METRIC_OPTION}: no metric {name!r} in this rollout's "
                             f"analysis.metrics (it has: {known}); 5xx and latency take "
                             "--max-error-rate-increase and --max-latency-increase")
        if name in seen:
            raise BadSetting(f"{METRIC_OPTION}: {name} given twice")
        seen.add(name)
        try:
            metrics[name] = Metric.model_validate({**metrics[name], "max_increase": value}
                                                  ).model_dump()
        except ValidationError as exc:
            msg = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
            raise BadSetting(f"{METRIC_OPTION} {name}: {msg}"
                             + ("" if "got" in msg else f" (got {value!r})")) from None
    return list(metrics.values())


def settings(recorded: Analysis, overrides: Mapping[str, Any]) -> Analysis:
    """The recorded analysis with the given settings changed, checked as the spec checks them.
    `max_increase`: `NAME=X` strings, each an `analysis.metrics` entry's own margin."""
    given = {k: v for k, v in overrides.items() if v is not None and k in OPTIONS}
    metric_margins = list(overrides.get("max_increase") or [])
    try:
        return Analysis.model_validate({**recorded.model_dump(), **given,
                                        "metrics": _metric_margins(recorded, metric_margins)})
    except ValidationError as exc:
        err = exc.errors()[0]
        key = str(err["loc"][0]) if err["loc"] else ""
        seen = given.get(key)
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise BadSetting(f"{OPTIONS.get(key, key)}: {msg}"
                         + (f" (got {seen!r})" if seen is not None and "got" not in msg
                            else "")) from None


def judge_replay(ctx: Context, rollout_id: int, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The replay as `kiln judge replay --json` prints it (docs/json/replay.schema.json)."""
    store = ctx.store
    raw = rollout_records.status_json(store, rollout_id)
    if raw is None:
        raise NotFound(f"rollout #{rollout_id} not found in state",
                       hint="`kiln history` lists the rollouts")
    blob = evidence_records.load(store, rollout_id)
    if blob is None:
        raise NotFound(f"rollout #{rollout_id} has no stored judge evidence: it was not judged "
                       "(a first release, no rollout.analysis), its judge saw no requests, "
                       "or gc removed it")
    rec = Recording.from_blob(blob)
    release = find_release(store, rec.canary)
    recorded = release.spec.rollout.analysis if release is not None else None
    base = recorded or Analysis()
    analysis = settings(base, overrides)
    return replay_json(rollout_id, rollout_records.service_of(store, rollout_id), rec,
                       json.loads(raw), base, analysis)


def replay_json(rollout_id: int, service: str | None, rec: Recording, status: Mapping[str, Any],
                base: Analysis, analysis: Analysis) -> dict[str, Any]:
    """The replay of a rollout (its recorded `status` and evidence) under `analysis`, next to
    its recorded settings `base`, as `--json` prints it."""
    decisions = [d for d in status.get("decisions") or [] if isinstance(d, dict)]
    result = replay(rec, analysis, decisions)
    return {
        "rollout_id": rollout_id, "service": service,
        "canary": rec.canary, "baseline": rec.baseline, "source": rec.source,
        "recorded_outcome": status.get("outcome"), "recorded_reason": status.get("reason"),
        "settings": settings_json(analysis), "recorded_settings": settings_json(base),
        "outcome": result.outcome, "summary": result.summary(),
        "steps": [s.to_json() for s in result.steps]}


def settings_json(analysis: Analysis) -> dict[str, Any]:
    """The settings a replay may change, as `--json` shows them (`metrics`: each
    `analysis.metrics` entry's margin, by name)."""
    return {**analysis.model_dump(include=set(OPTIONS)),
            "metrics": [{"name": m.name, "max_increase": m.max_increase}
                        for m in analysis.metrics]}
