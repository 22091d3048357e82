"""report.html in a real headless Chromium: it loads without errors or network, shows the report's tables
with their numbers, sorts a table by the clicked column and decodes every embedded plot.

Needs Chromium (``apt-get install -y chromium``; CI's ``.ci/run`` installs it) and the ``playwright``
package (the ``test`` extra), which drives the system browser: no browser download.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from lukv_bench.report.render import render_report

pytestmark = pytest.mark.slow  # starts a browser: not part of tests/unit

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]
# per policy and budget, the scores of samples s0..s5 (FullKV scores 1.0 on every sample)
SCORES = {
    "snapkv": {0.2: [0.5, 0.5, 1.0, 0.5, 0.5, 1.0], 0.5: [1.0] * 6},
    "pyramidkv": {0.2: [0.0, 0.5, 0.0, 0.5, 0.0, 0.5], 0.5: [0.5, 1.0, 1.0, 1.0, 0.5, 1.0]},
    "streaming": {0.2: [1.0, 1.0, 0.5, 1.0, 1.0, 0.5], 0.5: [0.0, 0.0, 0.5, 0.0, 0.5, 0.0]},
}


def _record(sid: str, policy: str, budget: float, score: float) -> dict:
    return {"model": "tiny", "task": "qa", "sample_id": sid, "policy": policy, "budget": budget,
            "budget_ratio": budget, "score": score, "metric": "substring", "data_source": "synthetic test data",
            "kv_bytes": int(1000 * budget), "kv_bytes_full": 1000, "prefill_s": 0.5, "compress_s": 0.01,
            "decode_s": 0.2, "kl_mean": None if policy == "full" else 1 - budget,
            "greedy_agreement": None if policy == "full" else budget, "layer_budgets": [int(100 * budget)] * 4,
            "context_tokens": 100, "meta": {}}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("html")
    recs = [_record(f"s{i}", "full", 1.0, 1.0) for i in range(6)]
    recs += [_record(f"s{i}", p, b, v) for p, by in SCORES.items() for b, vs in by.items() for i, v in enumerate(vs)]
    (out / "results.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    md = render_report(out).read_text()
    return out / "report.html", md


@pytest.fixture(scope="module")
def page(report, tmp_path_factory):
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"Chromium not found at {CHROMIUM}: install it (apt-get install -y chromium) to check report.html")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package drives Chromium: "
                                   "pip install -e '.[test]'")
    html, _ = report
    with sync_api.sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            tmp_path_factory.mktemp("chromium-profile"), executable_path=CHROMIUM, headless=True,
            chromium_sandbox=False, args=FLAGS)
        pg = ctx.new_page()
        pg.errors, pg.requests = [], []
        pg.on("pageerror", lambda e: pg.errors.append(str(e)))
        pg.on("console", lambda m: pg.errors.append(m.text) if m.type == "error" else None)
        pg.on("request", lambda r: pg.requests.append(r.url))
        pg.goto(html.as_uri())
        pg.wait_for_load_state("load")
        yield pg
        ctx.close()


def _table(page, section: str) -> list[list[str]]:
    """The body rows (cell texts) of the table whose data-section is ``section``."""
    return page.evaluate(
        """s => Array.from(document.querySelector(`table[data-section="${s}"]`).tBodies[0].rows)
                .map(r => Array.from(r.cells).map(c => c.textContent))""", section)


def test_page_loads_self_contained_without_errors(page, report):
    html, _ = report
    assert page.errors == []
    assert [u for u in page.requests if not u.startswith("data:")] == [html.as_uri()]
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html.read_text())
    assert page.title() == f"lukv-bench report: {html.parent.name}"


def test_tables_show_the_reports_numbers(page):
    rows = {r[0]: r[1:] for r in _table(page, "Task qa / Mean score")}
    # snapkv @ 0.2: mean of 0.5, 0.5, 1, 0.5, 0.5, 1 = 0.667; streaming @ 0.5: 1/6 = 0.167
    assert rows["snapkv"][0].startswith("0.667 [")
    assert rows["streaming"][1].startswith("0.167 [")
    assert rows["FullKV (reference)"] == ["1.000", "1.000"]  # every score 1: no interval
    cost = {r[0]: r[1:] for r in _table(page, "Task qa / Cost relative to FullKV (KV memory / latency)")}
    assert cost["pyramidkv"] == ["0.200 / 1.050", "0.500 / 1.050"]  # (0.01 + 0.2) / 0.2


def _first_column(page, section: str) -> list[str]:
    return [r[0] for r in _table(page, section)]


def test_clicking_a_header_sorts_the_rows(page):
    section = "Task qa / Mean score"
    header = page.locator(f'table[data-section="{section}"] th', has_text="0.2")
    header.click()
    assert _first_column(page, section) == ["pyramidkv", "snapkv", "streaming", "FullKV (reference)"]
    assert header.get_attribute("aria-sort") == "ascending"
    header.click()
    assert _first_column(page, section) == ["FullKV (reference)", "streaming", "snapkv", "pyramidkv"]
    page.locator(f'table[data-section="{section}"] th', has_text="policy").click()
    assert _first_column(page, section) == ["FullKV (reference)", "pyramidkv", "snapkv", "streaming"]
    # signed numbers sort as numbers (as text "-0.167" < "-0.333" < "-0.750", the table's own order)
    paired = "Task qa / Paired difference to FullKV (same samples)"
    assert _first_column(page, paired) == ["streaming", "snapkv", "pyramidkv"]
    page.locator(f'table[data-section="{paired}"] th', has_text="0.2").click()
    assert [r[1].split(" ")[0] for r in _table(page, paired)] == ["-0.750", "-0.333", "-0.167"]
    assert page.errors == []


def test_every_plot_is_embedded_and_decodes(page, report):
    _, md = report
    # decoded to the last row: matplotlib's PNGs are opaque, rows a truncated file lacks stay transparent
    images = page.evaluate("""() => Promise.all(Array.from(document.images).map(async img => {
        await img.decode();
        const c = document.createElement("canvas");
        c.width = img.naturalWidth;
        c.height = img.naturalHeight;
        const g = c.getContext("2d");
        g.drawImage(img, 0, 0);
        const last = g.getImageData(0, c.height - 1, c.width, 1).data;
        let opaque = 0;
        for (let i = 3; i < last.length; i += 4) opaque += last[i] === 255;
        return [img.naturalWidth, opaque / img.naturalWidth, img.src.slice(0, 22)];
    }))""")
    assert len(images) == md.count("\n![") > 0
    assert all(width > 0 and opaque == 1 and src == "data:image/png;base64," for width, opaque, src in images), images
