"""The app in headless Chromium (Debian's /usr/bin/chromium via playwright): upload, draw a region, see results."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests._app_helpers import CBIS_DICOM, MIAS_PNG, running_app

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: install Debian's chromium "
                       "(`apt-get install chromium`, as scripts/dev.sh test does) to run the browser test"),
]

SUMMARY_HAS = "(t) => document.querySelector('#summary') && document.querySelector('#summary').innerText.includes(t)"


def _clear_upload(page) -> None:
    page.click("#upload button[aria-label='Clear']")
    page.wait_for_selector("#upload input[type=file]", state="attached", timeout=30_000)


def test_upload_crop_and_results_appear_without_a_predict_button(tiny_store, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    uri, versions = tiny_store.tracking_uri, tiny_store.versions
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with running_app(uri) as (url, _demo), sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            page.goto(url)
            assert "not a diagnosis" in page.inner_text("#note")
            assert page.get_by_role("button", name="Predict").count() == 0

            page.set_input_files("#upload input[type=file]", str(MIAS_PNG))
            page.wait_for_function(SUMMARY_HAS, arg="Region: whole image", timeout=60_000)
            assert f"version {versions['density']}@champion" in page.inner_text("#summary")
            assert "%" in page.inner_text("#density")
            # #17: the density prediction set at its coverage, and the model card behind "About this model"
            page.wait_for_function(SUMMARY_HAS, arg="prediction set", timeout=60_000)
            assert "coverage" in page.inner_text("#summary")
            page.click("#about button, #about .label-wrap")
            page.wait_for_function("() => document.querySelector('#model-card') && "
                                   "document.querySelector('#model-card').innerText.includes('Intended use')",
                                   timeout=30_000)
            card = page.inner_text("#model-card")
            assert "Model card" in card and "Not for" in card

            image = page.locator("#view img")
            box = image.bounding_box()
            image.click(position={"x": box["width"] * 0.40, "y": box["height"] * 0.30})
            page.wait_for_timeout(500)
            image.click(position={"x": box["width"] * 0.62, "y": box["height"] * 0.50})
            page.wait_for_function(SUMMARY_HAS, arg="(pixels of the original image)", timeout=60_000)
            roi = [int(v) for v in page.input_value("#roi textarea").split(",")]
            assert 380 <= roi[0] <= 440 and 280 <= roi[1] <= 330 and 600 <= roi[2] <= 660 and 490 <= roi[3] <= 540
            assert "P(malignant)" in page.inner_text("#summary") and "operating point" in page.inner_text("#summary")
            page.wait_for_function("() => document.querySelector('#contributions').innerText.includes('feature')",
                                   timeout=60_000)
            page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
            assert (tmp_path / "app.png").stat().st_size > 10_000

            _clear_upload(page)
            page.set_input_files("#upload input[type=file]", str(bad))
            page.wait_for_function("() => document.querySelector('#status').innerText.includes('cannot be read')",
                                   timeout=60_000)
            _clear_upload(page)
            page.set_input_files("#upload input[type=file]", str(CBIS_DICOM))
            page.wait_for_function("() => !document.querySelector('#status').innerText.includes('cannot be read')",
                                   timeout=60_000)
            page.wait_for_function(SUMMARY_HAS, arg="Region: whole image", timeout=60_000)
            page.screenshot(path=str(tmp_path / "app_dicom.png"), full_page=True)
        finally:
            browser.close()
