"""The Gradio app served for real on a loopback port, driven through gradio_client with real images."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import app_support as S
from pipeline.errors import ImageReadError
from tests._app_helpers import CBIS_DICOM, MIAS_PNG, running_app

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


# -- display helpers (no server) ------------------------------------------------------------------------------------
def test_parse_and_format_roi_round_trip():
    assert S.parse_roi("") is None and S.parse_roi(None) is None
    assert S.parse_roi("700, 500, 300.4, 200") == (300, 200, 700, 500)
    assert S.parse_roi(S.format_roi((1, 2, 30, 40))) == (1, 2, 30, 40)
    with pytest.raises(ValueError, match="four numbers"):
        S.parse_roi("1, 2, 3")
    with pytest.raises(ValueError, match="empty"):
        S.parse_roi("5, 5, 6, 100")


def test_display_image_block_means_and_box_maps_back_to_original_pixels():
    image = np.zeros((4500, 2800), np.float32)
    image[1000:1100, 2000:2100] = 1.0
    display, factor = S.display_image(image, max_side=1024)
    assert factor == 5 and display.shape == (900, 560) and display.dtype == np.uint8
    assert display[200:220, 400:420].min() == 255 and display[0, 0] == 0
    box = S.box_from_corners((420, 220), (400, 200), factor, image.shape)  # corners in any order
    assert box == (2000, 1000, 2105, 1105)
    assert S.box_to_display(box, factor) == (400, 200, 421, 221)
    rgb = S.draw_box(display, S.box_to_display(box, factor))
    assert rgb.shape == (900, 560, 3) and tuple(rgb[200, 410]) == (255, 140, 0)


def test_heat_overlay_keeps_cold_regions_grey_and_colours_hot_ones():
    grey = np.full((8, 8), 0.5, np.float32)
    heat = np.zeros((8, 8), np.float32)
    heat[:2, :2] = 1.0
    out = S.heat_overlay(grey, heat)
    assert out.shape == (8, 8, 3) and tuple(out[7, 7]) == (128, 128, 128)
    assert out[0, 0, 0] > out[0, 0, 2]  # hot = red
    with pytest.raises(ValueError, match="shape"):
        S.heat_overlay(grey, heat[:4])


def test_user_message_hides_the_server_path():
    exc = ImageReadError("/tmp/gradio/abc/Mass-Test_P_00173_LEFT_CC.dcm", "not a recognised image format", "use PNG")
    msg = S.user_message(exc)
    assert "not a recognised image format" in msg and "P_00173" not in msg and "/tmp" not in msg


# -- the real app -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def champions(tiny_store):
    return tiny_store.tracking_uri, tiny_store.versions


@pytest.fixture(scope="module")
def app(champions):
    from gradio_client import Client

    uri, _ = champions
    with running_app(uri) as (url, demo):
        yield Client(url, verbose=False), demo


def _check_result(out: dict, versions: dict, tasks: tuple[str, ...] = ("density", "malignancy")) -> None:
    for task in tasks:
        res = out["results"][task]
        probs = res["probabilities"]
        assert list(probs) == res["classes"] and len(probs) >= 2
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-6)
        assert all(0.0 <= p <= 1.0 for p in probs.values())
        assert res["model"]["version"] == versions[task] and res["model"]["alias"] == "champion"
        assert res["model"]["name"] == f"mammoscope-{task}"
    if "malignancy" not in tasks:  # a whole image: the lesion model answers only for a drawn region
        assert "malignancy" not in out["results"]
        return
    mal = out["results"]["malignancy"]
    assert 0.0 <= mal["threshold"] <= 1.0
    assert mal["call"] == ("malignant" if mal["probability_malignant"] >= mal["threshold"] else "benign")


def test_png_and_dicom_through_gradio_client(app, champions):
    from gradio_client import handle_file

    import pydicom

    client, _ = app
    _, versions = champions
    png = client.predict(handle_file(str(MIAS_PNG)), "", api_name="/predict")
    _check_result(png, versions, ("density",))
    assert png["image"]["format"] == "png" and png["image"]["original_shape"] == [1024, 1024]
    assert png["roi"] is None

    boxed = client.predict(handle_file(str(MIAS_PNG)), "480, 330, 640, 490", api_name="/predict")
    _check_result(boxed, versions)
    assert boxed["roi"] == [480, 330, 640, 490] and boxed["results"]["malignancy"]["notes"] == []
    assert boxed["results"]["density"] == png["results"]["density"]  # density is always on the whole breast

    dcm = client.predict(handle_file(str(CBIS_DICOM)), "", api_name="/predict")
    _check_result(dcm, versions, ("density",))
    assert dcm["image"]["format"] == "dicom" and dcm["image"]["bits_stored"] == 16
    assert dcm["image"]["original_shape"][0] > 4000
    text = json.dumps(dcm)
    ds = pydicom.dcmread(CBIS_DICOM, stop_before_pixels=True)
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "AccessionNumber"):
        value = str(ds.get(keyword, "") or "")
        if len(value) > 3:
            assert value not in text, f"{keyword} leaked into the API answer"


def test_explain_returns_named_contributions(app):
    from gradio_client import handle_file

    client, _ = app
    out = client.predict(handle_file(str(MIAS_PNG)), "480, 330, 640, 490", api_name="/explain")
    mal = out["explanations"]["malignancy"]
    assert mal["target_class"] == "malignant" and 0 < len(mal["contributions"]) <= 8
    assert all(isinstance(c["feature"], str) and np.isfinite(c["value"]) for c in mal["contributions"])


def test_corrupt_upload_is_a_clear_error_and_the_app_keeps_serving(app, champions, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    client, _ = app
    bad = tmp_path / "scan.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(AppError, match="cannot be read") as info:
        client.predict(handle_file(str(bad)), "", api_name="/predict")
    assert str(tmp_path) not in str(info.value)
    text = tmp_path / "notes.dcm"
    text.write_text("not a DICOM at all")
    with pytest.raises(AppError, match="cannot be read"):
        client.predict(handle_file(str(text)), "", api_name="/predict")
    with pytest.raises(AppError, match="four numbers"):
        client.predict(handle_file(str(MIAS_PNG)), "1, 2", api_name="/predict")
    _check_result(client.predict(handle_file(str(MIAS_PNG)), "", api_name="/predict"), champions[1], ("density",))


def test_safe_defaults(app):
    import gradio_app

    _, demo = app
    assert demo.server_name == "127.0.0.1"
    assert demo.max_file_size is not None and demo.max_file_size <= 200 * 1024 * 1024
    assert demo.allowed_paths == [] and demo.share is False
    assert demo._queue.default_concurrency_limit == gradio_app.CONCURRENCY_LIMIT
    assert demo.analytics_enabled is False


def test_without_a_champion_the_app_starts_and_names_the_training_command(tmp_path):
    import urllib.request

    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    uri = f"sqlite:///{tmp_path / 'empty.db'}"
    with running_app(uri) as (url, _demo):
        page = json.loads(urllib.request.urlopen(url + "config", timeout=30).read())
        texts = " ".join(str(c.get("props", {}).get("value", "")) for c in page["components"])
        assert "mammoscope train" in texts  # in the About panel: how to train each missing model
        by_id = {c.get("props", {}).get("elem_id"): str(c.get("props", {}).get("value", "")) for c in page["components"]}
        calm = by_id["missing"]  # the first screen: one calm line, no command, no path
        assert "Screening is not available in this installation." in calm
        assert "mammoscope" not in calm.lower() and "sqlite" not in calm and "/" not in calm
        with pytest.raises(AppError, match="mammoscope train"):
            Client(url, verbose=False).predict(handle_file(str(MIAS_PNG)), "", api_name="/predict")
