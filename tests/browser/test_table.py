"""The triplet table in a real chromium (Voila): page, sort, search, click a row, export CSV.

The oracle is computed here, independently of the widget, from the same run directory: the
triplets of the last iteration in the browser's default order (u ascending, then id), re-sorted
and searched with plain pandas.
"""

from __future__ import annotations

import pandas as pd
import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.browser


def shown_keys(page) -> list[int]:
    return [
        int(k) for k in page.locator("#tspin-triplet-table tbody tr").evaluate_all("rs => rs.map(r => r.dataset.key)")
    ]


def expect_keys(page, keys: list[int]) -> None:
    rows = page.locator("#tspin-triplet-table tbody tr")
    expect(rows).to_have_count(len(keys))
    for i in (0, len(keys) // 2, len(keys) - 1):  # auto-waiting checks, then the whole page at once
        expect(rows.nth(i)).to_have_attribute("data-key", str(keys[i]))
    assert shown_keys(page) == keys


def test_triplet_table_pages_sorts_searches_and_opens_a_row(page, triplets_server, workspace, console, tmp_path):
    from tspin_kit import analysis as A
    from tspin_kit import load_run

    ex = load_run(workspace["run_dir"]).examples
    t = A.iterations_of(ex)[-1]
    base = A.triplet_table(ex, t)  # the browser's default: every triplet, u ascending
    n = len(base)
    assert n > 50, "the run must span several pages"

    page.goto(triplets_server["url"] + "/", timeout=90_000)
    table = page.locator("#tspin-triplet-table")
    expect(table).to_have_attribute("data-matched", str(n), timeout=90_000)
    expect(page.locator(".tspin-page-info")).to_contain_text(f"page 1 of {-(-n // 25)}")
    expect_keys(page, base["example_id"].head(25).tolist())

    # paging: next, next, previous, last
    page.locator(".tspin-page-next").click()
    expect(table).to_have_attribute("data-page", "1")
    expect_keys(page, base["example_id"].iloc[25:50].tolist())
    page.locator(".tspin-page-last").click()
    last = (n - 1) // 25
    expect(table).to_have_attribute("data-page", str(last))
    expect_keys(page, base["example_id"].iloc[last * 25 :].tolist())
    expect(page.locator(".tspin-page-next")).to_be_disabled()

    # sorting: a header click sorts ascending (page 1 again), a second click descending
    header = page.locator("#tspin-triplet-table th[data-key='loss']")
    header.click()
    expect(table).to_have_attribute("data-sort", "loss:asc")
    expect(table).to_have_attribute("data-page", "0")
    by_loss = base.sort_values("loss", kind="stable", na_position="last")
    expect_keys(page, by_loss["example_id"].head(25).tolist())
    header.click()
    expect(table).to_have_attribute("data-sort", "loss:desc")
    by_loss_desc = base.sort_values("loss", ascending=False, kind="stable", na_position="last")
    expect_keys(page, by_loss_desc["example_id"].head(25).tolist())
    # the browser's "sort by" control follows the header
    expect(page.locator('.widget-dropdown:has(label:text-is("sort by")) select').first).to_have_value("loss")

    # search: a prompt's text, typed as a person would
    target = base.iloc[len(base) // 2]
    query = str(target["prompt"]).strip()
    hay = (
        base["example_id"].astype(str)
        + " "
        + base["prompt"].astype(str)
        + " "
        + base["annotated"].astype(str)
        + " "
        + base["synthetic"].astype(str)
        + " "
        + base["proto"].astype(str)
    ).str.lower()
    hits = by_loss_desc[hay.loc[by_loss_desc.index].str.contains(query.lower(), regex=False)]
    assert 0 < len(hits) < n
    page.locator(".tspin-table-search").press_sequentially(query, delay=20)
    expect(table).to_have_attribute("data-query", query)
    expect(table).to_have_attribute("data-matched", str(len(hits)))
    expect_keys(page, hits["example_id"].head(25).tolist())

    # a row click opens that triplet in the detail pane
    key = int(hits["example_id"].iloc[min(2, len(hits) - 1)])
    page.locator(f"#tspin-triplet-table tbody tr[data-key='{key}']").click()
    expect(page.locator("#tspin-triplet-detail")).to_contain_text(f"example {key}, iteration {t}")
    chosen = page.locator('.widget-dropdown:has(label:text-is("triplet")) select').first.locator("option:checked")
    expect(chosen).to_contain_text(f"#{key} ")

    # export: the CSV is the table as shown (searched, sorted), downloaded by the browser
    with page.expect_download() as info:
        page.locator(".tspin-export-csv").click()
    dl = info.value
    assert dl.suggested_filename == "tspin-triplets.csv"
    csv = pd.read_csv(dl.path())
    assert csv["example_id"].tolist() == hits["example_id"].tolist()
    expect(page.locator(".tspin-export-status")).to_contain_text("saved tspin-triplets.csv")

    # export HTML: one standalone file of the view's figures that draws offline (plotly.js inlined)
    with page.expect_download() as info:
        page.locator(".tspin-export-html").click()
    dl = info.value
    assert dl.suggested_filename == "tspin-triplets.html"
    saved = tmp_path / "tspin-triplets.html"
    dl.save_as(saved)
    assert saved.read_text().startswith("<!DOCTYPE html>")
    offline = page.context.new_page()
    offline.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file:") else r.abort())
    offline.goto(saved.as_uri())
    offline.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length > 0")
    titles = offline.evaluate(
        "() => [...document.querySelectorAll('.js-plotly-plot')].map(g => g._fullLayout && g._fullLayout.title.text)"
    )
    assert titles and all(titles), titles  # every figure drew, with its title
    offline.close()

    expect(page.locator(".tspin-error")).to_have_count(0)
    errors = [m for m in console if m.startswith(("error", "pageerror")) or "Failed to initialize" in m]
    assert not errors, errors
