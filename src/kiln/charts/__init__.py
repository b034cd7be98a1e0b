"""The charting library kiln ships: uPlot (MIT), vendored from npm by `scripts/vendor-uplot`,
plus kiln's own chart code. Reports inline them (one self-contained file); the dashboard serves
them from its own address. Nothing is ever loaded from a CDN."""

from __future__ import annotations

from functools import cache
from importlib import resources

ASSETS = {
    "uPlot.iife.min.js": "uplot/uPlot.iife.min.js",
    "uPlot.min.css": "uplot/uPlot.min.css",
    "kiln-charts.js": "kiln-charts.js",
    "dashboard.js": "dashboard.js",
}
"""Public name -> file under static/ (the names the dashboard serves under /static/)."""


@cache
def asset(name: str) -> str:
    """The text of one shipped asset (KeyError for an unknown name)."""
    rel = ASSETS[name]
    return (resources.files(__package__) / "static" / rel).read_text(encoding="utf-8")


def uplot_version() -> str:
    return (resources.files(__package__) / "static" / "uplot" / "VERSION").read_text().strip()


def inline_script(name: str) -> str:
    """A <script> element holding the asset, safe to embed in HTML."""
    return "<script>" + asset(name).replace("</script", "<\\/script") + "</script>"
