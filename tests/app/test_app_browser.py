"""The app in headless Chromium (Debian's /usr/bin/chromium via playwright), a real server and the tiny density,
malignancy and screening champions (tests/_tiny_store.py), on real mini-MIAS, CDD-CESM and CBIS-DDSM files.

One server and one browser for the module; each scenario opens a fresh page (a new session)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.paths import default_data_root
from tests._app_helpers import CBIS_DICOM, running_app

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DATA = default_data_root()
MDB028 = DATA / "mias" / "images" / "mdb028.png"
CDD_EXAM = [DATA / "cdd_cesm" / "images" / f"P100_{side}_CM_{view}.png" for side in "LR" for view in ("CC", "MLO")]
SCREENSHOT = ROOT / "docs" / "app.png"
# what must never reach a reader's first screen: file paths, store URIs, shell commands
DEVELOPER_TEXT = re.compile(r"(?:^|[\s(`'\"])/(?:[\w.-]+/)+[\w.-]*|sqlite:|mlflow\.db|\bmammoscope (?:train|main|"
                            r"predict|app|data)\b|`|\$ |--[a-z]")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: install Debian's chromium "
                       "(`apt-get install chromium`, as scripts/dev.sh test does) to run the browser test"),
    pytest.mark.skipif(not all(p.is_file() for p in [MDB028, CBIS_DICOM, *CDD_EXAM]),
                       reason="mini-MIAS, CDD-CESM or CBIS-DDSM files are not in shared/data"),
]


@pytest.fixture(scope="module")
def store(tiny_store):
    from tests._tiny_store import tiny_screening

    return tiny_screening(tiny_store)


@pytest.fixture(scope="module")
def browser_app(store):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with running_app(store.tracking_uri) as (url, _demo), sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield url, browser
        finally:
            browser.close()


def _page(browser_app, width: int = 1366, height: int = 768):
    url, browser = browser_app
    page = browser.new_page(viewport={"width": width, "height": height}, accept_downloads=True)
    page.goto(url)
    page.wait_for_selector("#upload input[type=file]", state="attached", timeout=30_000)
    return page


def _upload(page, *paths: Path, wait_for: str = "#verdict .call") -> None:
    page.set_input_files("#upload input[type=file]", [str(p) for p in paths])
    page.wait_for_selector(wait_for, timeout=60_000)
    page.wait_for_function("() => { const b = document.querySelector('#report'); return b && !b.disabled; }",
                           timeout=60_000)  # the map step has run: the report is ready


def _report(page, tmp_path: Path, name: str) -> tuple[dict, str]:
    with page.expect_download(timeout=30_000) as info:
        page.click("#report")
    target = tmp_path / f"{name}.zip"
    info.value.save_as(target)
    with zipfile.ZipFile(target) as z:
        return json.loads(z.read("report.json")), z.read("report.html").decode()


def _calls(page) -> list[dict]:
    return page.eval_on_selector_all("#verdict .call", "els => els.map(e => ({level: e.dataset.level, "
                                     "call: e.dataset.call, text: e.innerText}))")


def test_whole_mdb028_is_screened_with_its_map_in_the_breast_and_a_box_switches_to_malignancy(browser_app, store,
                                                                                             tmp_path):
    from scipy import ndimage

    from features.breast import breast_mask
    from pipeline.io.imageio import read_image
    from tests._tiny_store import TINY_SCREENING

    page = _page(browser_app)
    _upload(page, MDB028)
    calls = _calls(page)
    assert [c["level"] for c in calls] == ["image"]
    assert "screening model" in page.inner_text("#verdict")
    for c in calls:  # the cost beside each call, from the card
        assert re.search(r"found \d+ of 100 cancers .* flagged \d+ of 100 cancer-free images", c["text"]), c
    assert page.locator("#verdict .thr").count() == 1  # the threshold drawn on the bar
    density = page.inner_text("#density-box")
    assert "not BI-RADS" in density and "of 100" in density
    # verdict, map and calls on a 1366 x 768 screen without scrolling
    for selector in ("#view img", "#verdict .call", "#density-box .call"):
        box = page.locator(selector).first.bounding_box()
        assert box and box["y"] >= 0 and box["y"] + box["height"] <= 768, (selector, box)
    text = page.evaluate("() => document.body.innerText")
    assert not DEVELOPER_TEXT.search(text), DEVELOPER_TEXT.search(text).group(0)
    _screenshot(page)

    report, html = _report(page, tmp_path, "mdb028")
    assert [c["task"] for c in report["calls"]] == ["screening"] and "of 100 cancers" in html
    x, y = report["images"][0]["map_peak_xy"]
    image, _ = read_image(MDB028)
    # the map is masked to the breast at its sample's resolution: one sample pixel is the tolerance at the skin line
    side = TINY_SCREENING["samples"]["size"] * TINY_SCREENING["screening"]["scale"]
    distance = ndimage.distance_transform_edt(~breast_mask(image))
    assert distance[y, x] <= max(image.shape) / side, f"the map's hottest point {x, y} lies off the breast"

    page.click("#about button, #about .label-wrap")  # the model cards' HTML pages, reachable from the app
    with page.expect_download(timeout=30_000) as info:
        page.click("#card-screening")
    card = Path(info.value.path()).read_text(encoding="utf-8")
    assert "Model card: mammoscope-screening" in card and "Intended use" in card
    page.click("#about button, #about .label-wrap")

    image_el = page.locator("#view img")
    box = image_el.bounding_box()
    image_el.click(position={"x": box["width"] * 0.40, "y": box["height"] * 0.30})
    page.wait_for_timeout(300)
    image_el.click(position={"x": box["width"] * 0.62, "y": box["height"] * 0.50})
    page.wait_for_selector("#verdict .call[data-level=region]", timeout=60_000)
    calls = _calls(page)
    assert [c["level"] for c in calls] == ["region"] and "malignancy model" in page.inner_text("#verdict")
    assert re.search(r"found \d+ of 100 malignant findings", calls[0]["text"])
    roi = [int(v) for v in page.input_value("#roi input, #roi textarea").split(",")]
    assert 380 <= roi[0] <= 440 and 280 <= roi[1] <= 330

    page.fill("#roi input, #roi textarea", "900, 100, 1300, 400")  # off the image: one message, no stale call
    page.click("#density-box")  # leaving the field applies it, as Enter does
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('outside the image')",
                           timeout=30_000)
    assert page.inner_text("#status").count("outside the image") == 1
    assert page.locator("#verdict .call").count() == 0
    page.close()


def _screenshot(page) -> None:
    """docs/app.png: the page at 1366 x 768 as a palette PNG of at most 200 KB."""
    from PIL import Image

    raw = SCREENSHOT.with_suffix(".raw.png")
    page.screenshot(path=str(raw))
    im = Image.open(raw).convert("RGB")
    for width in (1366, 1100, 900):
        small = im.resize((width, round(im.height * width / im.width)), Image.LANCZOS) if width != im.width else im
        small.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(SCREENSHOT, optimize=True)
        if SCREENSHOT.stat().st_size <= 200_000:
            break
    raw.unlink()
    assert SCREENSHOT.stat().st_size <= 200_000


def test_four_view_exam_at_once_equals_mammoscope_predict(browser_app, store, tmp_path):
    import pandas as pd

    page = _page(browser_app)
    _upload(page, *CDD_EXAM)
    levels = [c["level"] for c in _calls(page)]
    assert levels == ["exam", "breast", "breast", "image", "image", "image", "image"]
    report, _ = _report(page, tmp_path, "exam")
    page.close()

    # `mammoscope predict` on a manifest naming the patient, laterality and views of the same four files
    manifest, out = tmp_path / "exam.csv", tmp_path / "batch.csv"
    table = pd.read_csv(DATA / "cdd_cesm" / "manifest.csv")
    table = table[table["file"].isin([f"images/{p.name}" for p in CDD_EXAM])].assign(
        path=lambda t: [str(DATA / "cdd_cesm" / f) for f in t["file"]])
    table[["path", "patient_id", "laterality", "view"]].to_csv(manifest, index=False)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "predict", str(manifest), "--out", str(out),
                           "--tracking-uri", store.tracking_uri, "--n-jobs", "1", "--no-progress"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {lv: pd.read_csv(out.with_name(f"batch.screening.{lv}s.csv")) for lv in ("image", "breast", "exam")}
    column = "screening_p_malignant"
    by_level = {lv: [c for c in report["calls"] if c["level"] == lv] for lv in ("image", "breast", "exam")}
    assert [(c["p"], c["threshold"], c["call"]) for c in by_level["exam"]] == list(
        rows["exam"][[column, "screening_threshold", "screening_call"]].itertuples(index=False, name=None))
    assert [(c["p"], c["threshold"], c["call"]) for c in by_level["breast"]] == list(
        rows["breast"][[column, "screening_threshold", "screening_call"]].itertuples(index=False, name=None))
    images = rows["image"].set_index(rows["image"]["sample_id"].map(lambda s: Path(s).name)).loc[
        [p.name for p in CDD_EXAM]]
    assert [(c["p"], c["threshold"], c["call"]) for c in by_level["image"]] == list(
        images[[column, "screening_threshold", "screening_call"]].itertuples(index=False, name=None))


def test_inversion_warning_stays_and_the_dicom_report_holds_calls_but_no_patient_value(browser_app, tmp_path):
    import pydicom
    from PIL import Image

    inverted = tmp_path / "inverted.png"
    Image.fromarray(255 - np.asarray(Image.open(MDB028).convert("L"))).save(inverted)
    page = _page(browser_app)
    _upload(page, inverted)
    assert "inverted" in page.inner_text("#warnings")
    time.sleep(5)
    assert "inverted" in page.inner_text("#warnings")  # still beside the result 5 s later
    page.close()

    page = _page(browser_app)
    _upload(page, CBIS_DICOM)
    assert "CC view" in page.inner_text("#warnings")  # the tiny screening card saw CC and MLO; density MLO only
    text = page.evaluate("() => document.body.innerText")
    report, html = _report(page, tmp_path, "dicom")
    page.close()
    assert report["calls"] and "suspicious" in html
    ds = pydicom.dcmread(CBIS_DICOM, stop_before_pixels=True)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate"):
        value = str(ds.get(keyword, "") or "").strip()
        if value:
            for part in {value, *value.replace("^", " ").split()}:
                if len(part) > 3:
                    assert part not in html and part not in json.dumps(report) and part not in text, keyword
