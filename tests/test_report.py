"""The visual report: files, escaping, images, the CLI, and a real browser."""

import base64
import io
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import FIXTURE, SHARED, tiny_builtin_config
from transfer_influence import RunStore, record_arrays
from transfer_influence.report import Report

HOSTILE = "<script>alert(1)</script>"
GROUPS = [HOSTILE, "$x^2$ & co", *[f"class{k:02d}" for k in range(10)]]
TARGET_CLASSES = ["<b>bold</b>", "plain", "third"]


def _imported_run(tmp_path, models=40, n=90):
    """An imported run whose source and target images are known, with hostile class names."""
    rng = np.random.default_rng(0)
    labels = np.arange(n) % len(TARGET_CLASSES)
    masks = np.zeros((models, len(GROUPS)), bool)
    for i in range(models):
        masks[i, rng.choice(len(GROUPS), len(GROUPS) // 2, replace=False)] = True
    p_correct = np.clip(0.5 + 0.1 * masks[:, [0]] - 0.1 * masks[:, [1]], 0, 1) + rng.normal(
        0, 0.02, (models, n)
    )
    record_arrays(
        tmp_path / "run",
        {
            "masks": masks,
            "p_correct": p_correct.astype(np.float32),
            "labels": labels,
            "source_classes": np.array(GROUPS),
            "target_classes": np.array(TARGET_CLASSES),
        },
        target="tgt",
    )
    np.savez(
        tmp_path / "source.npz",
        train_images=rng.integers(0, 256, (len(GROUPS) * 5, 32, 32, 3), dtype=np.uint8),
        train_labels=np.repeat(np.arange(len(GROUPS)), 5),
        class_names=np.array(GROUPS),
    )
    np.savez(
        tmp_path / "target.npz",
        test_images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
        test_labels=labels,
        class_names=np.array(TARGET_CLASSES),
    )
    return tmp_path / "run"


def _image_sources(html):
    return re.findall(r'<img[^>]* src="([^"]*)"', html)


def test_report_writes_html_figures_and_tables_with_every_name_escaped(tmp_path):
    run = _imported_run(tmp_path, models=60)  # half of them fit the regression: auto takes it
    report = Report(
        source_data=str(tmp_path / "source.npz"), target_data=str(tmp_path / "target.npz")
    ).build(RunStore(run))
    html = report.path_.read_text()
    assert report.path_ == run / "report" / "index.html"
    assert HOSTILE not in html and "<b>bold</b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    # One script: the class table's, written by the package; the hostile name stays text.
    assert html.lower().count("<script") == 1 and "<script>\n/* Sorting and filtering" in html
    table = html.split('id="class-table"')[1].split("</table>")[0]
    assert table.count("<tr>") == len(GROUPS) + 1  # the heading and every class
    assert "<td>&lt;script&gt;alert(1)&lt;/script&gt;</td>" in table
    sources = _image_sources(html)
    assert len(sources) > 20
    for source in sources:  # every image is embedded and is a real PNG
        assert source.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))).verify()
    for name in ("bars", "heatmap"):
        Image.open(run / "report" / "figures" / f"{name}.png").verify()
    classes = pd.read_csv(run / "report" / "tables" / "classes.csv")
    assert classes["group"].iloc[0] == HOSTILE  # the planted helpful class ranks first
    assert classes["group"].iloc[-1] == "$x^2$ & co"
    for table in ("per_target_class", "class_matrix", "projection", "failure_modes", "most_hurt"):
        assert len(pd.read_csv(run / "report" / "tables" / f"{table}.csv")) > 0
    assert "60 used" in html and "imported results" in html
    assert "<b>Estimator</b>regression on all groups (least squares)" in html
    assert "Differences between models explained by their subsets" in html
    assert "of how models differ in their mean output" in html
    # The answer comes first; cards with nothing to say are left out.
    assert html.index('id="answer"') < html.index('class="facts"')
    assert "distinguishable from the average class" in html or "help more" in html
    assert "not recorded" not in html and "Untrained backbone" not in html


def test_report_without_images_says_where_to_give_them(tmp_path, cli):
    run = _imported_run(tmp_path)
    code, out, _ = cli("report", run, "--quiet")
    assert code == 0 and "wrote" in out
    html = (run / "report" / "index.html").read_text()
    # Sections that cannot be built are left out with one line that says how to get them.
    assert 'id="projection"' not in html and 'id="leakage"' not in html
    assert "show target images (no target images: the run&#39;s config names none" in html
    assert "(give target_data)" in html and "--target-data" not in html  # the API's words
    # ... and the console says it too, in the command's words.
    assert "left out: target images and the leakage check (no target images" in out
    assert "(give --target-data)" in out and "(give --source-data)" in out
    assert (run / "report" / "tables" / "projection.csv").is_file()
    assert all(s.startswith("data:image/png;base64,") for s in _image_sources(html))


def test_report_and_top_commands(tmp_path, cli):
    run = _imported_run(tmp_path)
    data = ["--source-data", tmp_path / "source.npz", "--target-data", tmp_path / "target.npz"]
    code, out, _ = cli("report", run, *data, "--out", tmp_path / "r", "--top", "3", "--quiet")
    assert code == 0 and (tmp_path / "r" / "index.html").is_file()
    code, out, _ = cli("top", run, "-n", "2")
    assert code == 0 and HOSTILE in out.splitlines()[2]
    code, out, _ = cli("top", run, "--bottom", "-n", "1", "--csv")
    assert code == 0 and out.splitlines()[1].startswith("12,$x^2$ & co,-")
    code, out, _ = cli("top", run, "--target-class", "plain", "-n", "3", "--csv")
    assert code == 0 and len(out.splitlines()) == 4
    code, out, _ = cli("top", run, "--source-class", HOSTILE, "-n", "4", "--csv")
    assert code == 0 and len(out.splitlines()) == 5
    assert out.splitlines()[0] == "example,example_id,target_class,influence,stderr,unit"
    code, out, _ = cli("top", run, "--most-hurt", "-n", "3", "--csv")
    assert code == 0 and len(out.splitlines()) == 4 and "$x^2$ & co" in out
    for bad, message in (
        (["--target-class", "kitten"], "unknown target class 'kitten'"),
        (["--source-class", "ostrich"], "unknown source group 'ostrich'"),
        (["-n", "0"], "argument -n/--top: must be at least 1, got 0"),
    ):
        code, _, err = cli("top", run, *bad)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("report", run, "--target-data", tmp_path / "missing.npz")
    assert code == 2 and "dataset not found" in err


@pytest.mark.slow
def test_report_of_a_builtin_run_finds_its_images_and_control(tmp_path, cli, tiny_data):
    data = tiny_data(["<img src=x onerror=alert(1)>", "b", "c", "d", "e", "f"])
    config = tiny_builtin_config(tmp_path / "tiny.toml", data)
    run = tmp_path / "run"
    assert cli("run", config, "--run-dir", run, "--quiet")[0] == 0
    assert (run / "control.json").is_file()
    code, out, err = cli("report", run, "--quiet")
    assert code == 0, err
    html = (run / "report" / "index.html").read_text()
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    control = re.search(r"Untrained backbone, same head</b>([^<]*)<", html).group(1)
    assert control.strip().endswith("%")
    assert "folder: " in html and "8 used" in html


def _browser():
    selenium = pytest.importorskip("selenium", reason="browser test needs selenium")
    del selenium
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("browser test needs Debian's chromium and chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path):
    run = _imported_run(tmp_path)
    Report(
        source_data=str(tmp_path / "source.npz"), target_data=str(tmp_path / "target.npz")
    ).build(RunStore(run))
    browser = _browser()
    try:
        browser.get((run / "report" / "index.html").as_uri())
        images = browser.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth]);"
        )
        assert len(images) > 20
        assert all(complete and width > 0 for complete, width in images)
        # One script, inline: the class table's sorting and filtering; nothing is loaded.
        assert browser.execute_script("return Array.from(document.scripts).map(s => s.src);") == [
            ""
        ]
        assert HOSTILE in browser.execute_script("return document.body.innerText;")
        _check_class_table(browser, GROUPS)
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
    finally:
        browser.quit()


def _class_column(browser):
    return browser.execute_script(
        "return Array.from(document.querySelectorAll('#class-table tbody tr'))"
        ".filter(r => !r.hidden).map(r => r.cells[1].textContent);"
    )


def _check_class_table(browser, groups):
    """Every class is in the table; typing filters it; a click on a heading sorts it."""
    from selenium.webdriver.common.by import By

    assert sorted(_class_column(browser)) == sorted(groups)
    search = browser.find_element(By.ID, "class-filter")
    search.send_keys("class0")
    shown = _class_column(browser)
    assert shown and all("class0" in name for name in shown)
    assert len(shown) == sum("class0" in g for g in groups)
    count = browser.find_element(By.ID, "class-count").text
    assert count == f"{len(shown)} of {len(groups)} classes"
    search.clear()
    search.send_keys(" ")  # an input event with an empty filter shows every class again
    assert len(_class_column(browser)) == len(groups)
    heading = browser.find_element(By.CSS_SELECTOR, "#class-table th:nth-child(3)")
    heading.click()  # influence, ascending: the reverse of the page's most-helpful-first order
    ascending = _class_column(browser)
    heading.click()
    assert _class_column(browser) == ascending[::-1]
    ranks = browser.execute_script(
        "return Array.from(document.querySelectorAll('#class-table tbody tr'))"
        ".map(r => parseFloat(r.cells[2].getAttribute('data-v')));"
    )
    finite = [r for r in ranks if r == r]
    assert finite == sorted(finite, reverse=True)


def _check_layout(browser, page, width, shot):
    """At ``width`` px: the answer paragraph is above the fold and nothing sticks out."""
    browser.set_window_size(width, 900)
    browser.get(page.as_uri())
    browser.save_screenshot(str(shot))
    answer_bottom, fold = browser.execute_script(
        "return [document.getElementById('answer').getBoundingClientRect().bottom,"
        " window.innerHeight];"
    )
    assert 0 < answer_bottom <= fold, (width, answer_bottom, fold)
    sticking_out = browser.execute_script(
        "const edge = document.documentElement.clientWidth;"
        "return Array.from(document.body.querySelectorAll('*'))"
        ".filter(e => !e.closest('.scroll') && e.getBoundingClientRect().right > edge + 1)"
        ".map(e => e.tagName + (e.id ? '#' + e.id : '') + ' ' + e.className);"
    )
    assert sticking_out == [], (width, sticking_out[:5])
    assert browser.execute_script(
        "return document.documentElement.scrollWidth <= document.documentElement.clientWidth;"
    )
    assert shot.stat().st_size > 10_000  # a real rendering, kept beside the report


@pytest.fixture(scope="module")
def fixture_report(tmp_path_factory):
    """The report of the shared fixture (149 models) with the reference images."""
    if not FIXTURE.is_file():
        pytest.skip(f"needs the shared fixture in {SHARED}")
    from conftest import run_subprocess

    run = tmp_path_factory.mktemp("fixture") / "fixture"
    done = run_subprocess("record", run, "--from", FIXTURE, "--target", "cifar10")
    assert done.returncode == 0, done.stderr
    done = run_subprocess(
        "report", run, "--quiet",
        "--source-data", SHARED / "datasets" / "cifar100",
        "--target-data", SHARED / "datasets" / "cifar10",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return run


@pytest.mark.slow
def test_report_of_the_fixture_with_the_reference_images(fixture_report):
    run = fixture_report
    html = (run / "report" / "index.html").read_text()
    assert "149 used" in html and "62.5%" in html
    assert "imported from cifar100-to-cifar10-149-models.npz — 100 groups" in html
    # The answer names the flagged classes with their figures and says what the bottom needs.
    answer = html.split('<p class="answer">')[1].split("</p>")[0]
    assert answer.startswith("Compared with the average source class, pickup_truck (+")
    assert "The bottom of the list is not yet stable: an independent run of 149 models" in answer
    assert "models would give 8 of 10" in answer
    # Images picked as extremes come with where chance alone would put the most extreme.
    assert (
        "These are the 16 most extreme of 1,000,000 (class, image) pairs: with no real effects "
        "the most extreme would lie 4.8 standard errors from zero" in html
    )
    assert "most extreme of 10,000: with no real effects the most extreme would lie 3.8" in html
    # auto keeps the difference in means here: half of 149 models cannot fit 100 classes.
    assert "<b>Estimator</b>difference in means (the paper&#39;s)" in html
    # Overall, 2 classes help more and none less than average at q <= 0.05; pickup_truck is
    # flagged on automobiles, over the whole per-target-class table.
    assert "2 class(es) help more and 0 less than the average class" in html
    assert "pickup_truck *" in html
    projection = pd.read_csv(run / "report" / "tables" / "projection.csv")
    # pickup_truck is the most helpful class, and the images it helps most are automobiles.
    first = projection[projection["source"] == "pickup_truck"]
    assert (first["target_class"] == "automobile").mean() >= 0.75
    assert set(projection["unit"]) == {"points of p(correct class)"}
    matrix = pd.read_csv(run / "report" / "tables" / "class_matrix.csv")
    assert set(matrix["unit"]) == {"points of p(correct class)"}  # the heat map's numbers too


@pytest.mark.slow
def test_the_fixtures_report_as_a_person_sees_it_at_two_widths(fixture_report, tmp_path):
    """Screenshots at a desktop and a narrow width: the answer above the fold, every one of the
    100 classes in the table, nothing wider than the page."""
    run = fixture_report
    groups = pd.read_csv(run / "report" / "tables" / "classes.csv")["group"].tolist()
    browser = _browser()
    try:
        for width in (1400, 800):
            _check_layout(browser, run / "report" / "index.html", width, tmp_path / f"{width}.png")
            assert sorted(_class_column(browser)) == sorted(groups) and len(groups) == 100
    finally:
        browser.quit()
