"""Rendering: the report's data and PNGs to one self-contained HTML page and a Markdown summary.

Images are embedded as base64 ``data:image/png`` URIs and the CSS is inline, so
the page opens from a file, an MLflow artifact view or an e-mail with no network.
"""

from __future__ import annotations

import base64
import datetime as _dt
import math
from typing import Any

import yaml

from bpexp.report.data import ReportData
from bpexp.report.records import COMPLETE, FAIL, PRUNED, RUNNING, WAITING

_STATE_ORDER = (COMPLETE, PRUNED, FAIL, RUNNING, WAITING)


def data_uri(png: bytes) -> str:
    """A ``data:image/png;base64,...`` URI of PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def spec_yaml(config: dict[str, Any], header: str = "") -> str:
    """A config as a commented YAML spec, in section order (name, seed, data, model, optim, schedule, train)."""
    lines = "".join(f"# {line}\n" for line in header.splitlines()) if header else ""
    return lines + yaml.safe_dump(config, sort_keys=False, allow_unicode=True, default_flow_style=False)


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}" if math.isfinite(value) else str(value)
    return str(value)


def _threshold(level: Any, binned: bool) -> str:
    """A stop level's label: ``none``, its value, or its bin ``lo–hi``."""
    if level.stop_loss is None:
        return "none"
    if binned:
        return f"{level.lo:.3g}–{level.hi:.3g}"
    return f"{level.stop_loss:.3g}"


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _env(autoescape: bool):
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("bpexp.report", "templates"),
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined,
        trim_blocks=False,
        keep_trailing_newline=True,
    )
    from bpexp.report.figures import color_of

    env.globals.update(fmt=_fmt, color=color_of, md=_md_cell, threshold=_threshold)
    return env


def _states(report: ReportData) -> list[tuple[str, int]]:
    return [(s, report.counts[s]) for s in _STATE_ORDER if report.counts.get(s)]


def _context(report: ReportData, *, spec_name: str, spec_text: str, parent_run_id: str | None) -> dict[str, Any]:
    return {
        "r": report,
        "states": _states(report),
        "spec_name": spec_name,
        "spec_yaml": spec_text,
        "parent_run_id": parent_run_id,
        "written": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }


def render_html(
    report: ReportData,
    images: dict[str, bytes],
    *,
    spec_name: str = "best.yaml",
    spec_text: str = "",
    parent_run_id: str | None = None,
) -> str:
    """The report as one HTML page with every image inlined.

    Args:
        report: the data of every section.
        images: PNG bytes by section (landscape, range_test, curves, stop, schedules, history, importances).
        spec_name: the recommended spec's file name, linked from the page.
        spec_text: the recommended spec's YAML, shown on the page.
        parent_run_id: the sweep's MLflow parent run, named in the header.
    """
    context = _context(report, spec_name=spec_name, spec_text=spec_text, parent_run_id=parent_run_id)
    context["images"] = {key: data_uri(png) for key, png in images.items()}
    return _env(True).get_template("report.html.j2").render(**context)


def render_markdown(
    report: ReportData,
    *,
    html_name: str = "report.html",
    spec_name: str = "best.yaml",
    spec_text: str = "",
    parent_run_id: str | None = None,
) -> str:
    """The report's sentences and tables as Markdown (no images: they live in ``html_name``)."""
    context = _context(report, spec_name=spec_name, spec_text=spec_text, parent_run_id=parent_run_id)
    context["html_name"] = html_name
    return _env(False).get_template("report.md.j2").render(**context)
