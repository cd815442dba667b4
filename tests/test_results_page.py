"""The results page (`report` writes results/index.html and a page per setting), opened in a real
browser: Debian's headless Chromium through Selenium clicks column headers and the rows must come
in the order the leaderboard's own numbers give; the page fetches nothing; a screenshot is saved
(to $MMCL_TEST_ARTIFACTS when set, else the test's tmp dir). Without Chromium the browser test
skips, except under CI (CI=true), where it fails: .ci/browser.sh installs it."""
import json
import math
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bench.report import write_report
from fake_runs import leaderboard_runs, write_run

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
METHODS = ("finetune", "ewc", "adapter", "multitask", "er")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("page") / "results"
    leaderboard_runs(out, seeds=(0, 1), methods=METHODS)
    leaderboard_runs(out, seeds=(0,), methods=("finetune", "adapter"), sequence="climb_order2", downstream=())
    # a run with a jsonl log, and a failed one
    log_run = next((out / "runs").glob("default-ewc-s0-*"))
    (log_run / "log.jsonl").write_text(json.dumps({"event": "step", "step": 1, "loss": 2.5, "lr": 1e-4}) + "\n")
    (out / "runs" / "default-lwf-s0-broken").mkdir()
    (out / "runs" / "default-lwf-s0-broken" / "FAILED").write_text("non-finite loss while training task digits\n")
    # a method whose forgetting is undefined in every seed stays last in both directions
    for seed in (0, 1):
        write_run(out, "zz_one_task", seed, [[70.0 + seed]])
    report = write_report(out)
    return out, report


def test_report_writes_self_contained_pages_per_setting(results):
    out, report = results
    assert report["page"] == out / "index.html"
    index = (out / "index.html").read_text()
    pages = sorted(p.name for p in (out / "pages").glob("*.html"))
    assert pages == ["climb_order2-default.html", "default-default.html"]
    for html in [index] + [(out / "pages" / p).read_text() for p in pages]:
        assert "http://" not in html and "https://" not in html and "<link" not in html
    assert index.count("data:image/png;base64,") == 4  # forgetting, downstream, score vs params, vs compute
    assert "non-finite loss while training task digits" in index and "Downstream (CLiMB phase II)" in index
    # runs made before per-example scores: no CIs, no claim judged, and claims.md says why
    claims = (out / "claims.md").read_text()
    assert claims.count("No claim judged: no run has per-example scores.") == 2 and "`default-ewc-s0-fake`" in claims
    assert "[" not in (out / "leaderboard.md").read_text().split("Failed runs")[0]
    page = (out / "pages" / "default-default.html").read_text()
    for method in METHODS:
        assert f"<h3>{method} <span" in page  # its score matrix
    assert '"step": 1, "loss": 2.5' in page.replace("&#34;", '"')  # the run's log
    ewc = json.loads(next((out / "runs").glob("default-ewc-s0-*/metrics.json")).read_text())
    assert f"<code>{ewc['run_id']}</code>" in page and "&#34;git&#34;: &#34;abc&#34;" in page


def check_order(driver, out: Path, key: str, descending: bool) -> None:
    """The rows shown are every method of the default setting, with their `key` values (from
    leaderboard.csv) in sorted order and undefined ones last (ties may come in either order)."""
    table = pd.read_csv(out / "leaderboard.csv")
    table = table[table["sequence"] == "default"].set_index("method")[key]
    shown = methods_shown(driver)
    assert sorted(shown) == sorted(table.index)
    values = [table[m] for m in shown]
    defined = [v for v in values if not pd.isna(v)]
    assert defined == sorted(defined, reverse=descending)
    assert values[len(defined):] == [v for v in values if pd.isna(v)] and len(defined) > 3


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        reason = "Debian's chromium and chromium-driver are not installed (bash .ci/browser.sh installs them)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (requirements-loggers.txt)")
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def methods_shown(driver) -> list[str]:
    table = driver.find_element("id", "leaderboard-default-default")
    return [row.find_elements("tag name", "td")[0].text for row in table.find_elements("css selector", "tbody tr")]


def click(driver, label: str):
    table = driver.find_element("id", "leaderboard-default-default")
    (th,) = [th for th in table.find_elements("css selector", "thead tr:last-child th") if th.text.rstrip(" ▲▼") == label]
    th.click()
    return th


def test_sorting_by_clicking_a_column_header(results, browser, tmp_path):
    out, _ = results
    browser.get((out / "index.html").as_uri())
    check_order(browser, out, "final_avg_mean", descending=True)  # as written
    th = click(browser, "Forgetting")  # lower is better: ascending first
    assert th.get_attribute("aria-sort") == "ascending"
    check_order(browser, out, "forgetting_mean", descending=False)
    assert methods_shown(browser)[-1] == "zz_one_task"
    click(browser, "Forgetting")
    check_order(browser, out, "forgetting_mean", descending=True)
    assert methods_shown(browser)[-1] == "zz_one_task"
    click(browser, "Stored")
    check_order(browser, out, "stored", descending=False)
    click(browser, "DS imdb")  # a downstream column
    check_order(browser, out, "down:imdb_mean", descending=True)
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(not name.startswith(("http:", "https:")) for name in fetched), fetched
    shots = Path(os.environ.get("MMCL_TEST_ARTIFACTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shots / "results_page.png"))
    assert (shots / "results_page.png").stat().st_size > 10_000
    print(f"screenshot: {shots / 'results_page.png'}")


def test_setting_page_runs_table_sorts_too(results, browser):
    out, _ = results
    browser.get((out / "pages" / "default-default.html").as_uri())
    table = browser.find_element("id", "runs-default-default")
    (th,) = [th for th in table.find_elements("css selector", "thead th") if th.text.startswith("Final avg")]
    th.click()
    finals = [row.find_elements("tag name", "td")[3].text for row in table.find_elements("css selector", "tbody tr")]
    values = [float(v) for v in finals if v != "–"]
    assert values == sorted(values, reverse=True) and len(values) == len(finals) and not any(map(math.isnan, values))
