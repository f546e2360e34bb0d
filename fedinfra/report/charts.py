"""Report charts as inline SVG: epsilon against caps, participation grid, loss and accuracy.

Drawn with matplotlib's object API (``Figure`` + the Agg/SVG canvases, never pyplot, so no
global figure state and no display is needed). Output is deterministic: the SVG id salt is
fixed and the date metadata dropped, so the same report data gives the same bytes.
"""

from __future__ import annotations

import io
from typing import Any

from fedinfra.report.model import ReportData

#: Participation states, drawn in this order and colour (colour-blind-safe Okabe-Ito hues).
GRID_STATES: dict[str, str] = {
    "admitted": "#009E73",
    "dropped": "#E69F00",
    "rejected": "#D55E00",
    "not-sampled": "#E5E5E5",
}
_RC = {
    "svg.hashsalt": "fedinfra-report",
    "svg.fonttype": "path",
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
_MAX_LEGEND = 12


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight")
    text = buf.getvalue()
    start = text.find("<svg")
    return text[start:] if start >= 0 else text


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _series_groups(budgets: list[Any]) -> list[tuple[list[str], list[int], list[float]]]:
    """Sites whose cumulative-epsilon series are identical, grouped (one line each group)."""
    groups: dict[tuple[tuple[int, float], ...], list[str]] = {}
    for b in budgets:
        key = tuple((p.round, round(p.cumulative, 9)) for p in b.points)
        groups.setdefault(key, []).append(b.site)
    return [([*sites], [r for r, _ in key], [e for _, e in key]) for key, sites in groups.items()]


def _label(sites: list[str]) -> str:
    if len(sites) == 1:
        return sites[0]
    shown = ", ".join(sites[:3]) + (f" +{len(sites) - 3}" if len(sites) > 3 else "")
    return f"{shown} (identical)"


def epsilon_chart(report: ReportData) -> str | None:
    """Cumulative epsilon per site over rounds, against the sites' run and lifetime caps and the target.

    Sites with identical series are one line (four lines drawn on top of each other read as
    one site); beyond :data:`_MAX_LEGEND` distinct series the chart draws the min-max band
    and the median instead. Every reference line is labelled on the chart.
    """
    import matplotlib
    import numpy as np

    budgets = [b for b in report.controls.budgets if b.points]
    if not budgets:
        return None
    groups = _series_groups(budgets)
    with matplotlib.rc_context(_RC):
        fig = _figure(7.0, 3.0)
        ax = fig.add_subplot()
        if len(groups) <= _MAX_LEGEND:
            for i, (sites, xs, ys) in enumerate(groups):
                ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.4, label=_label(sites), gid=f"epsilon-series-{i}")
        else:
            rounds = sorted({p.round for b in budgets for p in b.points})
            table = np.array(
                [[next((p.cumulative for p in b.points if p.round == n), np.nan) for n in rounds] for b in budgets]
            )
            ax.fill_between(rounds, np.nanmin(table, axis=0), np.nanmax(table, axis=0), color="#56B4E9", alpha=0.35,
                            label=f"{len(budgets)} sites: min-max")
            ax.plot(rounds, np.nanmedian(table, axis=0), color="#0072B2", linewidth=1.4, label="median")
        top = max(b.total for b in budgets)
        run_caps = sorted({b.cap_run for b in budgets if b.cap_run is not None})
        life_caps = sorted({b.cap_lifetime for b in budgets if b.cap_lifetime is not None})
        target = report.controls.epsilon_target
        shown = [*run_caps, *([target] if target is not None else [])]
        ceiling = max([top, *shown]) * 1.15
        lines = [(cap, f"run cap {cap:g}", "--", "#D55E00", "run-cap") for cap in run_caps]
        lines += [
            (cap, f"lifetime cap {cap:g}", "-.", "#CC79A7", "lifetime-cap") for cap in life_caps if cap <= ceiling * 1.5
        ]
        if target is not None:
            lines.append((target, f"target ε {target:g}", ":", "#555555", "target"))
        for value, text, style, colour, gid in lines:
            ax.axhline(value, color=colour, linestyle=style, linewidth=1, gid=f"{gid}-{value:g}")
            ax.annotate(text, xy=(1, value), xycoords=("axes fraction", "data"), xytext=(-4, 3),
                        textcoords="offset points", ha="right", fontsize=8, color=colour)
        for cap in (c for c in life_caps if c > ceiling * 1.5):  # in the legend: on the axis it would flatten
            ax.plot([], [], color="#CC79A7", linestyle="-.", linewidth=1, label=f"lifetime cap {cap:g} (above)",
                    gid=f"lifetime-cap-{cap:g}")
        ax.set_xlabel("round")
        ax.set_ylabel("cumulative ε")
        ax.set_ylim(bottom=0, top=max([ceiling, *(v * 1.1 for v, *_ in lines)]))
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(axis="y", color="#DDDDDD", linewidth=0.6)
        ax.legend(loc="upper left", fontsize=8, frameon=False, ncols=2)
        return _svg(fig)


def participation_chart(report: ReportData) -> str | None:
    """Site x round grid coloured by admitted / dropped / rejected / not sampled."""
    import matplotlib
    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    sites = sorted(report.participation)
    rounds = report.round_numbers
    if not sites or not rounds:
        return None
    states = list(GRID_STATES)
    grid = np.array([[states.index(s) for s in report.participation[site]] for site in sites], dtype=float)
    with matplotlib.rc_context(_RC):
        fig = _figure(7.0, min(8.0, 1.0 + 0.28 * len(sites)))
        ax = fig.add_subplot()
        ax.imshow(
            grid,
            cmap=ListedColormap(list(GRID_STATES.values())),
            vmin=0,
            vmax=len(states) - 1,
            aspect="auto",
            interpolation="nearest",
        )
        ax.set_xlabel("round")
        step = max(1, len(rounds) // 20)
        ax.set_xticks(range(0, len(rounds), step), [str(r) for r in rounds[::step]])
        if len(sites) <= 40:
            ax.set_yticks(range(len(sites)), sites)
        else:
            ax.set_yticks([])
            ax.set_ylabel(f"{len(sites)} sites")
        for side in ("top", "right", "left", "bottom"):
            ax.spines[side].set_visible(False)
        ax.tick_params(length=0)
        handles = [Patch(color=c, label=s) for s, c in GRID_STATES.items()]
        ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=4, frameon=False, fontsize=8)
        return _svg(fig)


def accuracy_range(values: list[float]) -> tuple[float, float]:
    """The accuracy axis' own range: the data with a margin, never a fixed 0-1 that flattens it."""
    low, high = min(values), max(values)
    pad = max(0.01, (high - low) * 0.15)
    return max(0.0, low - pad), min(1.0, high + pad) + 0.002


def metrics_chart(report: ReportData) -> str | None:
    """Test loss (left axis) and accuracy (right axis) of the global model after each round."""
    import matplotlib

    pts = [m for m in report.metrics if m.test_loss is not None or m.test_accuracy is not None]
    if not pts:
        return None
    with matplotlib.rc_context(_RC):
        fig = _figure(7.0, 2.8)
        ax = fig.add_subplot()
        loss = [(m.round, m.test_loss) for m in pts if m.test_loss is not None]
        acc = [(m.round, m.test_accuracy) for m in pts if m.test_accuracy is not None]
        lines = []
        if loss:
            lines += ax.plot(*zip(*loss, strict=True), color="#0072B2", marker="o", markersize=3, label="test loss")
        ax.set_xlabel("round")
        ax.set_ylabel("loss")
        ax.xaxis.get_major_locator().set_params(integer=True)
        if acc:
            ax2 = ax.twinx()
            ax2.spines["right"].set_visible(True)
            ax2.spines["top"].set_visible(False)
            lines += ax2.plot(*zip(*acc, strict=True), color="#009E73", marker="s", markersize=3, label="test accuracy")
            ax2.set_ylabel("accuracy")
            # Its own range: on a fixed 0-1 axis a model moving from 0.91 to 0.95 looks flat.
            ax2.set_ylim(*accuracy_range([v for _, v in acc]))
        ax.legend(handles=lines, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2, frameon=False, fontsize=8)
        return _svg(fig)


def all_charts(report: ReportData) -> dict[str, str | None]:
    """Every chart by name (``epsilon``, ``participation``, ``metrics``); ``None`` when no data."""
    return {
        "epsilon": epsilon_chart(report),
        "participation": participation_chart(report),
        "metrics": metrics_chart(report),
    }
