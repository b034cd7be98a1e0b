"""The judge's correction for correlated requests (sticky canaries): effective sample size.

With `rollout.sticky` a client's requests all go to one release, so a client with a bad session
(or a slow connection) adds many correlated samples. Kish's design effect k = 1 + (m-1)ρ says how
many such requests carry the evidence of one independent one; dividing every count by k keeps
the error rate and the latency distribution and widens every bound as if the judge had seen
n / k requests. Conservative for both outcomes: a pass needs k times the requests, and a
cluster of errors from a few clients has to be k times as large to fail the canary.
"""

from __future__ import annotations

from kiln.analysis.summary import Summary


def deflate(summary: Summary, design_effect: float) -> Summary:
    """The summary an independent sample n / design_effect requests long would give."""
    if design_effect <= 1.0:
        return summary
    return Summary(requests=int(summary.requests / design_effect),
                   errors=int(summary.errors / design_effect),
                   hist=summary.hist / design_effect)
