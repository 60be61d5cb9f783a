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
    run = _imported_run(tmp_path)
    report = Report(
        source_data=str(tmp_path / "source.npz"), target_data=str(tmp_path / "target.npz")
    ).build(RunStore(run))
    html = report.path_.read_text()
    assert report.path_ == run / "report" / "index.html"
    assert HOSTILE not in html and "<b>bold</b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html.lower()
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
    assert "40 used" in html and "imported results" in html
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
    assert "pass --target-data" in html and "Not checked: no images" in html
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
    assert out.splitlines()[0] == "example,example_id,target_class,influence,stderr"
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
        assert browser.execute_script("return document.scripts.length;") == 0
        assert HOSTILE in browser.execute_script("return document.body.innerText;")
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
    finally:
        browser.quit()


@pytest.mark.skipif(not FIXTURE.is_file(), reason=f"needs the shared fixture in {SHARED}")
@pytest.mark.slow
def test_report_of_the_fixture_with_the_reference_images(tmp_path, cli):
    run = tmp_path / "fixture"
    assert cli("record", run, "--from", FIXTURE, "--target", "cifar10")[0] == 0
    code, out, err = cli(
        "report", run, "--quiet",
        "--source-data", SHARED / "datasets" / "cifar100",
        "--target-data", SHARED / "datasets" / "cifar10",
    )  # fmt: skip
    assert code == 0, err
    html = (run / "report" / "index.html").read_text()
    assert "149 used" in html and "62.5%" in html
    assert "<b>Estimator</b>regression on all groups (least squares)" in html
    # Overall, 2 classes help more and 1 less than average at q <= 0.05; pickup_truck is
    # flagged on automobiles.
    assert "2 class(es) help more and 1 less than the average class" in html
    assert "pickup_truck *" in html
    projection = pd.read_csv(run / "report" / "tables" / "projection.csv")
    # pickup_truck is the most helpful class, and the images it helps most are automobiles.
    first = projection[projection["source"] == "pickup_truck"]
    assert (first["target_class"] == "automobile").mean() >= 0.75
