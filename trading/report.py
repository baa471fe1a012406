"""A self-contained HTML report of a backtest: equity and drawdown charts, metrics, trades.

The page has no external resources and no JavaScript: the charts are inline SVG
polylines and the style is an inline ``<style>`` element. Every value taken from the
backtest (symbols, the strategy's name and parameters, numbers) is HTML-escaped. Long
curves are thinned to at most `MAX_POINTS` points per chart (each kept point is a real
point of the curve; the lowest drawdown point of each slice is kept).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from html import escape
from typing import Any

from trading.metrics import Metrics
from trading.orders import Fill

MAX_POINTS = 2000
MAX_TRADES = 5000
WIDTH, HEIGHT, PAD = 900, 220, 40

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}svg{background:#fafafa;border:1px solid #ddd}
"""


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _thin(values: Sequence[float]) -> list[tuple[int, float]]:
    """Keep at most MAX_POINTS (index, value) points: per slice its first and its lowest."""
    n = len(values)
    if n <= MAX_POINTS:
        return list(enumerate(values))
    step = n / (MAX_POINTS // 2)
    kept: list[tuple[int, float]] = []
    start = 0
    while start < n:
        stop = min(n, int(start + step) + 1)
        low = min(range(start, stop), key=values.__getitem__)
        kept.extend(sorted({(start, values[start]), (low, values[low])}))
        start = stop
    if kept[-1][0] != n - 1:
        kept.append((n - 1, values[-1]))
    return kept


def svg_chart(values: Sequence[float], *, title: str, color: str) -> str:
    """Return an inline SVG line chart of `values` (x: point index), with its min and max labelled."""
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
            f'role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>')
    if not values:
        return head + "</svg>"
    points = _thin(values)
    low, high = min(v for _, v in points), max(v for _, v in points)
    span = high - low or 1.0
    last = max(len(values) - 1, 1)
    xy = " ".join(f"{PAD + i / last * (WIDTH - 2 * PAD):.1f},"
                  f"{HEIGHT - PAD - (v - low) / span * (HEIGHT - 2 * PAD):.1f}" for i, v in points)
    return (head + f'<polyline fill="none" stroke="{escape(color)}" stroke-width="1" points="{xy}"/>'
            f'<text x="4" y="{PAD - 8}" font-size="11">{escape(_fmt(high))}</text>'
            f'<text x="4" y="{HEIGHT - PAD + 16}" font-size="11">{escape(_fmt(low))}</text></svg>')


def render_report(*, title: str, equity_curve: Sequence[tuple[datetime, Any]], fills: Sequence[Fill],
                  metrics: Metrics, params: Mapping[str, Any] | None = None) -> str:
    """Return the report as one HTML document (see the module docstring)."""
    equity = [float(v) for _, v in equity_curve]
    peak, drawdown = float("-inf"), []
    for v in equity:
        peak = max(peak, v)
        drawdown.append(v / peak - 1.0 if peak > 0 else 0.0)
    rows = "".join(f'<tr><th class="l">{escape(k)}</th><td>{escape(_fmt(v))}</td></tr>'
                   for k, v in metrics.as_dict().items())
    settings = "".join(f'<tr><th class="l">{escape(str(k))}</th><td>{escape(_fmt(v))}</td></tr>'
                       for k, v in (params or {}).items())
    shown = fills[:MAX_TRADES]
    trades = "".join(
        f"<tr><td class=\"l\">{escape(f.ts.isoformat())}</td><td class=\"l\">{escape(f.symbol)}</td>"
        f"<td class=\"l\">{escape(f.side.value)}</td><td>{escape(str(f.quantity))}</td>"
        f"<td>{escape(str(f.price))}</td><td>{escape(str(f.fee))}</td></tr>" for f in shown)
    more = (f"<p>{len(fills) - len(shown)} more trades not shown.</p>" if len(fills) > len(shown) else "")
    span = (f"{escape(equity_curve[0][0].isoformat())} to {escape(equity_curve[-1][0].isoformat())}"
            if equity_curve else "no bars")
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{escape(title)}</h1><p>{span}, {len(equity_curve)} bars, {len(fills)} trades</p>"
        f"<h2>Equity</h2>{svg_chart(equity, title='equity', color='#1f5fa8')}"
        f"<h2>Drawdown</h2>{svg_chart(drawdown, title='drawdown', color='#b22222')}"
        f"<h2>Metrics</h2><table>{rows}</table>"
        + (f"<h2>Parameters</h2><table>{settings}</table>" if settings else "")
        + "<h2>Trades</h2><table><tr><th class=\"l\">time</th><th class=\"l\">symbol</th>"
        "<th class=\"l\">side</th><th>quantity</th><th>price</th><th>fee</th></tr>"
        f"{trades}</table>{more}</body></html>")
