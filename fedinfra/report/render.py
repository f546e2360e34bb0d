"""Render :class:`~fedinfra.report.model.ReportData` as JSON, HTML and PDF.

* **JSON**: the model dumped with sorted keys and a fixed indent; it conforms to
  ``compliance/report.schema.json`` (JSON Schema 2020-12) and is deterministic.
* **HTML**: one Jinja2 template from ``compliance/templates`` (shipped in the wheel as
  ``fedinfra._compliance``, read with :mod:`importlib.resources`), the stylesheet inlined
  and the charts embedded as inline SVG, so the file has no external asset. Autoescaping is
  on; only the SVG that :mod:`fedinfra.report.charts` produced is inserted raw.
* **PDF**: the same HTML laid out by WeasyPrint.

Why WeasyPrint for the PDF: it renders the *same* HTML and CSS (CSS Paged Media: page
size, running footer with page numbers, repeated table headers, no row split across
pages) including inline SVG, so the PDF cannot drift from the HTML; it installs from PyPI
as pure Python over cffi and needs only Pango >= 1.44 from the system, which Debian 12
ships (``libpango-1.0-0``, already on these machines). The pure-Python alternatives fall
short: xhtml2pdf implements a small CSS 2 subset and draws SVG only through svglib and
cairo, and fpdf2 or reportlab would need a second layout written by hand - two renderings
of one report that can disagree. A missing Pango is reported as a one-line
:class:`~fedinfra.errors.ConfigError` naming the Debian package.
"""

from __future__ import annotations

import json
import warnings
from functools import lru_cache
from importlib import resources
from typing import Any

from fedinfra._optional import extra_imports
from fedinfra.errors import ConfigError
from fedinfra.report.charts import all_charts
from fedinfra.report.model import ReportData

#: Report sections in order: (HTML id, title). A test checks the HTML has them in this order.
SECTIONS: list[tuple[str, str]] = [
    ("header", "Run summary"),
    ("roles", "Roles and purposes"),
    ("participants", "Participants"),
    ("data", "Data"),
    ("controls", "Controls"),
    ("timeline", "Timeline"),
    ("findings", "Policy findings"),
    ("art30", "GDPR Art. 30 record of processing"),
    ("hipaa", "HIPAA 164.312 technical safeguards"),
    ("pci", "PCI DSS requirement 10"),
    ("evidence", "Manual-evidence register"),
    ("retention", "Retention"),
    ("verify", "How to verify"),
    ("limitations", "Limitations"),
]


#: How the task metrics (:mod:`fedinfra.task.metrics`) are named in the report.
METRIC_LABELS = {
    "loss": "loss",
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "f1": "F1",
    "roc_auc": "ROC AUC",
    "mse": "MSE",
    "mae": "MAE",
}


def applicable_sections(report: ReportData) -> list[tuple[str, str]]:
    """The sections this report has: a regulation's table only where the regulation applies."""
    skip = set()
    if report.pci is None:
        skip.add("pci")
    if not report.hipaa:
        skip.add("hipaa")
    return [(sid, title) for sid, title in SECTIONS if sid not in skip]


def _template_text(name: str) -> str:
    return (resources.files("fedinfra._compliance") / "templates" / name).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def _environment() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(_template_text),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=False,
        lstrip_blocks=False,
        keep_trailing_newline=True,
    )
    env.globals["sections"] = SECTIONS
    env.globals["titles"] = dict(SECTIONS)
    env.globals["metric_labels"] = METRIC_LABELS
    return env


def to_json(report: ReportData) -> bytes:
    """The JSON form: sorted keys, two-space indent, UTF-8, trailing newline."""
    text = json.dumps(report.model_dump(mode="json"), indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode("utf-8")


def to_html(report: ReportData) -> str:
    """The HTML form: one self-contained page (inline CSS and SVG)."""
    with extra_imports("the HTML compliance report"):  # jinja2, matplotlib
        from fedinfra.report.regulation import transport_text

        template = _environment().get_template("report.html.j2")
        sections = applicable_sections(report)
        return str(
            template.render(
                r=report,
                charts=all_charts(report),
                # Inserted unescaped: autoescaping turned its quotes into &#34;, which broke
                # every quoted CSS string - and with them the page footer's margin boxes.
                css=_template_text("report.css"),
                sections=sections,
                numbers={sid: i for i, (sid, _) in enumerate(sections, start=1)},
                transport=transport_text(report.controls),
            )
        )


def to_pdf(html: str) -> bytes:
    """The PDF form of ``html`` (WeasyPrint; no network: the page has no external assets)."""
    try:
        with warnings.catch_warnings():
            # WeasyPrint warns once at import when Debian's optional libharfbuzz-subset0 is
            # absent; fonts are then embedded whole, which is correct, only larger.
            warnings.filterwarnings("ignore", message="HarfBuzz-Subset", category=DeprecationWarning)
            with extra_imports("the PDF compliance report"):
                import weasyprint  # type: ignore[import-untyped]
    except OSError as exc:  # cffi cannot find Pango
        raise ConfigError(
            "PDF output needs the Pango library; install Debian's libpango-1.0-0 (apt-get install libpango-1.0-0) "
            "or drop pdf from --format"
        ) from exc

    # Only data: URLs (the charts' embedded rasters) may be fetched: the page is
    # self-contained, so any other URL is a defect and must not reach the network.
    fetcher = weasyprint.URLFetcher(allowed_protocols={"data"}, fail_on_errors=True)
    document = weasyprint.HTML(string=html, url_fetcher=fetcher, base_url=None)
    data = document.write_pdf()
    if not isinstance(data, bytes):  # pragma: no cover - write_pdf without a target returns bytes
        raise ConfigError("PDF renderer returned no document")
    return data
