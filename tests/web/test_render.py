"""The web's pure parts: escaping, charts, binning, the cache and the token check."""

from __future__ import annotations

import contextlib
import threading
import time
import zlib
from typing import Any

import pytest

from farm.web import auth, charts, text
from farm.web.cache import TTLCache
from farm.web.stats import param_rates, tally


def test_visible_escapes_html_and_shows_control_characters() -> None:
    shown = str(text.visible("<b>x</b> & \x1b[31mred\x1b[0m\r\nnext\x00\x7f\u202eevil"))
    assert "<b>" not in shown and "&lt;b&gt;x&lt;/b&gt; &amp; " in shown
    assert "\x1b" not in shown and '<span class="ctl">\\x1b</span>[31mred' in shown
    assert "\r" not in shown and "\nnext" in shown  # CRLF line ends are just line ends
    assert '<span class="ctl">\\x00</span>' in shown and '<span class="ctl">\\x7f</span>' in shown
    assert "\u202e" not in shown and "\\u202e" in shown  # bidi override shown, not applied
    assert str(text.visible(None)) == ""
    assert text.printable("a\x1bb\tc\rd\x9b") == "a\\x1bb\tc\\x0dd\\x9b"


def test_stored_console_reads_text_or_a_bounded_zlib_sample() -> None:
    assert text.stored_console("plain", None) == "plain"
    assert text.stored_console(None, zlib.compress("sampled ␛".encode())) == "sampled ␛"
    assert text.stored_console(None, None) == ""
    bomb = zlib.compress(b"A" * (8 << 20))
    assert len(text.stored_console(None, bomb)) == text.MAX_CONSOLE_CHARS
    assert "corrupt" in text.stored_console(None, b"not zlib")


def test_excerpt_centres_on_the_report() -> None:
    log = "\n".join(f"line {i}" for i in range(300))
    cut = text.excerpt(log, "line 150", before=2, after=3)
    assert cut.splitlines() == [
        "[... 148 lines ...]",
        "line 148",
        "line 149",
        "line 150",
        "line 151",
        "line 152",
        "[... 147 lines ...]",
    ]
    assert text.excerpt(log, "absent", before=1, after=1).splitlines()[-1] == "line 299"
    assert text.first_line("\n[   12.345678] BUG: x\nmore") == "BUG: x"


def test_charts_escape_labels_and_scale() -> None:
    svg = str(
        charts.stacked_bars(
            ["<b>", "b"],
            [("clean", [1, 2]), ("<script>", [0, 3])],
            title="t<i>",
        )
    )
    assert "<b>" not in svg and "&lt;b&gt;" in svg and "<script>" not in svg
    assert 'class="bar s-other"' in svg and 'class="bar s-clean"' in svg
    assert "style=" not in svg  # colours come from CSS classes (the CSP refuses inline styles)
    rates = str(charts.rate_bars([("0", 1, 10), ("1", 0, 0)], title="r"))
    assert rates.count("<rect") == 2 and "1/10 anomalous = 10%" in rates
    assert "no data" in str(charts.stacked_bars([], [], title="x"))
    lo, hi = charts.wilson(0, 100)
    assert lo == 0 and 0.03 < hi < 0.04
    assert charts._nice_max(7) == 10 and charts._nice_max(0.013) == pytest.approx(0.02)


def test_param_rates_bins_and_counts_only_tested_trials() -> None:
    rows = [
        ("clean", {"pages": p, "punch": "madvise", "src_node": 0, "rng_seed": p}, 0, 1.0)
        for p in range(64, 8192, 64)
    ]
    hit = {"pages": 100, "punch": "fallocate", "src_node": 0, "rng_seed": 1}
    rows += [("kernel-report", hit, 0, 1.0), ("invalid", {**hit, "rng_seed": 2}, 0, 1.0)]
    rates = {r.name: r for r in param_rates(tally(rows))}
    assert "rng_seed" not in rates and rates["src_node"].fixed == "0"
    pages = rates["pages"].bins
    assert 5 <= len(pages) <= 10  # geometric bins over a log-drawn knob
    assert sum(b.trials for b in pages) == len(range(64, 8192, 64)) + 1
    assert sum(b.anomalies for b in pages) == 1
    assert [(b.label, b.trials, b.anomalies) for b in rates["punch"].bins] == [
        ("fallocate", 1, 1),
        ("madvise", 127, 0),
    ]


def test_ttl_cache_serves_stale_values_while_refreshing() -> None:
    now = [0.0]
    refreshed = threading.Event()

    def sessions() -> contextlib.nullcontext[str]:
        return contextlib.nullcontext("background-session")

    cache = TTLCache(10, sessions=sessions, clock=lambda: now[0])  # type: ignore[arg-type]
    calls: list[str] = []

    def compute(session: Any) -> int:
        calls.append(session)
        if session == "background-session":
            refreshed.set()
        return len(calls)

    assert cache.get("k", compute, "request") == 1  # type: ignore[arg-type]
    assert cache.get("k", compute, "request") == 1  # type: ignore[arg-type]
    assert cache.computed_at("k") is not None
    now[0] = 11  # stale: the old value now, a new one computed in the background
    assert cache.get("k", compute, "request") == 1  # type: ignore[arg-type]
    assert refreshed.wait(5)
    deadline = time.monotonic() + 5
    while cache.get("k", compute, "request") != 2 and time.monotonic() < deadline:  # type: ignore[arg-type]
        time.sleep(0.01)
    assert calls == ["request", "background-session"]
    now[0] = 11 + 10 * 20  # older than max_stale: recomputed in the request
    assert cache.get("k", compute, "request") == 3  # type: ignore[arg-type]
    cache.clear()
    assert cache.get("k", compute, "request") == 4  # type: ignore[arg-type]
    cache.close()
    off = TTLCache(0)
    assert off.get("k", compute, "request") == 5 and off.get("k", compute, "request") == 6  # type: ignore[arg-type]


def test_token_check() -> None:
    auth.check("s3cret", "s3cret")
    for configured, given, status in (
        (None, "x", 403),
        ("", "x", 403),
        ("s3cret", None, 401),
        ("s3cret", "", 401),
        ("s3cret", "s3cre", 401),
        ("s3cret", "s3cret ", 401),
        ("sécret", "secret", 401),
    ):
        with pytest.raises(auth.Refused) as refused:
            auth.check(configured, given)
        assert refused.value.status == status
    with pytest.raises(auth.Refused, match="FARM_WEB_TOKEN"):
        auth.check(None, "x")
