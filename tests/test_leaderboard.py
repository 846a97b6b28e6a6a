"""The leaderboard: its frame against hand computations, its Markdown, and its HTML page in a
real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium): no console
errors, sorting and filtering work, and every number on the page equals the aggregation's."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from results_store import RUNS, WALL_S, ResultsStore, build_store

from sslbench.benchmark.errors import SSLBenchError
from sslbench.results.aggregate import load_runs
from sslbench.results.leaderboard import build_leaderboard, to_markdown_table, write_leaderboard
from sslbench.results.stats import mean_ci, order_probability


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ResultsStore:
    return build_store(tmp_path_factory.mktemp("leaderboard"))


@pytest.fixture(scope="module")
def board(store: ResultsStore) -> tuple[pd.DataFrame, list[str], str | None]:
    evals = load_runs(tracking_uri=store.uri, kind="eval")
    pretrains = load_runs(tracking_uri=store.uri, kind="pretrain")
    return build_leaderboard(evals, pretrains)


def _row(frame: pd.DataFrame, method: str, dataset: str, batch: int) -> pd.Series:
    rows = frame[(frame["method"] == method) & (frame["dataset"] == dataset) & (frame["batch_size"] == batch)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_leaderboard_frame_equals_hand_computation(board: tuple[pd.DataFrame, list[str], str | None]) -> None:
    frame, columns, primary = board
    assert columns == ["linear", "knn-k200-t0.1"] and primary == "linear"
    assert len(frame) == len({(m, d, b) for m, d, b, _ in RUNS})  # one row per configuration
    for (method, dataset, bs, protocol), seeds in RUNS.items():
        r = _row(frame, method, dataset, bs)
        ci = mean_ci(list(seeds.values()))
        assert r[f"{protocol}:mean"] == pytest.approx(ci.mean) and r[f"{protocol}:n"] == ci.n
        if ci.n > 1:
            assert (r[f"{protocol}:lo"], r[f"{protocol}:hi"]) == (pytest.approx(ci.lo), pytest.approx(ci.hi))
        assert r[f"{protocol}:values"] == list(seeds.values())
    simclr = _row(frame, "simclr", "cifar10", 256)
    # Cost: mean over the three pretraining runs of wall time (3600 + 60 s) x 1 device / 3600.
    assert simclr["device_hours"] == pytest.approx((WALL_S["simclr"] + 60.0) / 3600)
    assert simclr["images_per_s"] == pytest.approx(1001.0) and simclr["peak_memory_mb"] == pytest.approx(513.0)
    assert simclr["device"] == "cpu" and len(simclr["pretrain_run_ids"].split(",")) == 3
    assert simclr["linear:best_epoch"] == pytest.approx(91.6)  # kept beside, not as, the result
    assert simclr["linear:mean"] == pytest.approx(90.2)
    assert math.isnan(_row(frame, "byol", "cifar10", 256)["linear:best_epoch"])
    # Ranked per dataset by the linear probe; P(order) against the next row of the same dataset.
    cifar = frame[frame["dataset"] == "cifar10"]
    assert list(cifar["method"]) == ["simclr", "byol", "mocov2", "simsiam", "dino"]
    assert list(cifar["rank"]) == [1, 2, 3, 4, 5]
    assert cifar["p_order"].iloc[0] == pytest.approx(order_probability([89.6, 90.1, 90.9], [90.0, 90.1, 90.2]))
    assert math.isnan(cifar["p_order"].iloc[3])  # simsiam has one seed
    assert math.isnan(frame[frame["dataset"] == "stl10"]["p_order"].iloc[0])  # last of its dataset


def test_leaderboard_options_and_errors(store: ResultsStore) -> None:
    evals = load_runs(tracking_uri=store.uri, kind="eval")
    frame, columns, primary = build_leaderboard(evals, None, primary="knn-k200-t0.1", datasets=["stl10"])
    assert len(frame) == 1 and primary == "knn-k200-t0.1" and columns == ["knn-k200-t0.1"]
    assert math.isnan(frame["device_hours"].iloc[0])  # no pretraining runs given: no cost
    with pytest.raises(SSLBenchError, match="Cannot rank by protocol 'semisup-1pct'"):
        build_leaderboard(evals, None, primary="semisup-1pct")
    empty, cols, _ = build_leaderboard(evals.iloc[:0], None)
    assert empty.empty and cols == []


def test_leaderboard_markdown_and_files(board: tuple[pd.DataFrame, list[str], str | None], tmp_path: Path) -> None:
    frame, columns, primary = board
    md = to_markdown_table(frame, columns)
    lines = md.splitlines()
    assert lines[0].startswith("| rank | method") and "CPU-h" in lines[0] and len(lines) == 2 + len(frame)
    assert "90.2 ± 1.6 (n=3) (best epoch: 91.6)" in md and "89.8 (n=1)" in md
    paths = write_leaderboard(frame, columns, primary, tmp_path, "sqlite:///x.db")
    back = pd.read_csv(paths["csv"])
    assert back["linear:mean"].tolist() == pytest.approx(frame["linear:mean"].tolist(), nan_ok=True)
    assert back["linear:values"].iloc[0] == "89.6;90.1;90.9"
    assert "# Leaderboard" in paths["md"].read_text()


def test_leaderboard_cli(store: ResultsStore, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sslbench.benchmark.cli", "leaderboard", "--tracking-uri", store.uri,
         "--out", str(tmp_path)], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in tmp_path.iterdir()} >= {"leaderboard.html", "leaderboard.md", "leaderboard.csv"}
    empty = subprocess.run(
        [sys.executable, "-m", "sslbench.benchmark.cli", "leaderboard", "--tracking-uri",
         f"sqlite:///{tmp_path / 'none.db'}"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert empty.returncode == 2 and "No finished evaluation runs" in empty.stderr


# --- The page in a real browser ---------------------------------------------------------------------
def _browser_paths() -> tuple[str, str] | None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    found = _browser_paths()
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        found = None
    if found is None:
        if os.environ.get("SSLBENCH_REQUIRE_BROWSER") == "1":
            pytest.fail("SSLBENCH_REQUIRE_BROWSER=1 but chromium, chromedriver or selenium is missing "
                        "(apt-get install chromium chromium-driver; pip install -e '.[test]').")
        pytest.skip("needs Debian's chromium + chromium-driver and selenium")
    chromium, driver_path = found
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Selenium Manager must not try to download a driver: the Debian one is given explicitly.
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _visible_rows(driver: Any) -> list[Any]:
    from selenium.webdriver.common.by import By

    return [tr for tr in driver.find_elements(By.CSS_SELECTOR, "#leaderboard tbody tr") if tr.is_displayed()]


def _cell(tr: Any, col: str) -> Any:
    from selenium.webdriver.common.by import By

    return tr.find_element(By.CSS_SELECTOR, f'td[data-col="{col}"]')


def test_leaderboard_page_in_chromium(
    browser: Any, board: tuple[pd.DataFrame, list[str], str | None], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    frame, columns, primary = board
    paths = write_leaderboard(frame, columns, primary, tmp_path, "sqlite:///x.db")
    browser.get(paths["html"].resolve().as_uri())
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == [], errors
    rows = _visible_rows(browser)
    assert len(rows) == len(frame)
    assert browser.find_element(By.ID, "shown").text == f"{len(frame)} of {len(frame)} rows shown"

    # Every number on the page equals the aggregation's: exact in data-value, rounded in the text.
    for tr, (_, r) in zip(rows, frame.iterrows(), strict=True):
        assert _cell(tr, "method").text == r["method"]
        for col in columns:
            td = _cell(tr, col)
            if pd.isna(r[f"{col}:mean"]):
                assert td.text == "—" and td.get_attribute("data-value") is None
                continue
            assert float(td.get_attribute("data-value")) == r[f"{col}:mean"]
            assert td.text.startswith(f"{r[f'{col}:mean']:.1f}")
            assert f"(n={r[f'{col}:n']})" in td.text
        assert float(_cell(tr, "device_hours").get_attribute("data-value")) == pytest.approx(r["device_hours"])
    assert "best epoch 91.6" in _cell(rows[0], "linear").text

    # Sorting: click the kNN header (descending, missing last), again (ascending, missing last).
    def column(col: str) -> list[float | None]:
        out = []
        for tr in _visible_rows(browser):
            v = _cell(tr, col).get_attribute("data-value")
            out.append(None if v is None else float(v))
        return out

    header = browser.find_element(By.CSS_SELECTOR, 'th[data-col="knn-k200-t0.1"]')
    header.click()
    values = column("knn-k200-t0.1")
    present = [v for v in values if v is not None]
    assert present == sorted(present, reverse=True) and values[len(present):] == [None] * (len(values) - len(present))
    assert header.get_attribute("aria-sort") == "descending"
    header.click()
    values = column("knn-k200-t0.1")
    present = [v for v in values if v is not None]
    assert present == sorted(present) and values[len(present):] == [None] * (len(values) - len(present))
    browser.find_element(By.CSS_SELECTOR, 'th[data-col="method"]').click()
    names = [_cell(tr, "method").text for tr in _visible_rows(browser)]
    assert names == sorted(names, reverse=True)

    # Filtering by dataset, then by protocol (hides the other protocol columns and rows without it).
    Select(browser.find_element(By.ID, "filter-dataset")).select_by_value("stl10")
    assert [_cell(tr, "dataset").text for tr in _visible_rows(browser)] == ["stl10"]
    Select(browser.find_element(By.ID, "filter-dataset")).select_by_value("")
    Select(browser.find_element(By.ID, "filter-protocol")).select_by_value("knn-k200-t0.1")
    shown = _visible_rows(browser)
    expected = frame["knn-k200-t0.1:mean"].notna().sum()
    assert len(shown) == expected == 3
    assert not browser.find_element(By.CSS_SELECTOR, 'th[data-col="linear"]').is_displayed()
    assert not _cell(shown[0], "linear").is_displayed() and _cell(shown[0], "knn-k200-t0.1").is_displayed()
    assert browser.find_element(By.ID, "shown").text == f"3 of {len(frame)} rows shown"
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == [], errors
