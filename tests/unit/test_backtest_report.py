"""The HTML report is self-contained and escapes what it shows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from trading.backtest import run_backtest
from trading.data import SyntheticSource
from trading.metrics import compute_metrics
from trading.report import render_report

START = datetime(2024, 1, 1, tzinfo=UTC)


def test_report_has_charts_metrics_and_trades_and_nothing_external() -> None:
    bars = list(SyntheticSource(seed=5).bars(["AAPL"], START, START + timedelta(minutes=5000)))
    result = run_backtest("sma_crossover", {"fast": 5, "slow": 20}, bars, capital=Decimal(10_000), fee_bps=5)
    metrics = compute_metrics(result.equity_curve, result.fills, capital=result.capital)
    page = render_report(title="<b>SMA & co</b>", equity_curve=result.equity_curve, fills=result.fills,
                         metrics=metrics, params={"note": '"><script>alert(1)</script>'})
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<svg") == 2 and "<polyline" in page
    assert "&lt;b&gt;SMA &amp; co&lt;/b&gt;" in page and "<b>SMA" not in page
    assert "<script" not in page.lower() and "&lt;script&gt;" in page
    for external in ("src=", "href=", "http://", "https://", "@import", "url("):
        assert external not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "sharpe" in page and "max_drawdown" in page
    assert str(result.fills[0].price) in page
    assert page.count("<tr>") >= len(result.fills)
