"""What a reader reads (no server): each call's cost from the model card, bars in the card's class order with the
threshold mark, the prediction set and density words, warnings against the card, an out-of-range box, the report."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

import app_support as S

CARD = {"task": "screening", "classes": ["not_malignant", "malignant"],
        "decision": {"rule": "threshold", "threshold": 0.3},
        "dataset": {"adapter": "cdd_cesm", "views": {"CC": 10, "MLO": 12}},
        "metrics": {"cv_sens_at_target": {"value": 0.95, "low": 0.88, "high": 0.99},
                    "cv_spec_at_target": {"value": 0.38, "low": 0.30, "high": 0.45},
                    "cv_image_sens_at_target": {"value": 0.90, "low": 0.80, "high": 0.97},
                    "cv_image_spec_at_target": {"value": 0.50, "low": 0.40, "high": 0.61},
                    "cv_exam_sens_at_target": {"value": 0.97, "low": 0.9, "high": 1.0},
                    "cv_exam_spec_at_target": {"value": 0.20, "low": 0.1, "high": 0.3}}}


def test_cost_sentence_reads_the_level_figures_and_turns_specificity_into_false_alarms():
    image = S.cost_sentence(CARD, "image")  # the image level with its exam's other views comes first
    assert "found 90 of 100 cancers (95% CI 80-97)" in image
    assert "flagged 50 of 100 cancer-free images (95% CI 39-60) in cross-validation" in image
    exam = S.cost_sentence(CARD, "exam")
    assert "found 97 of 100" in exam and "flagged 80 of 100 cancer-free exams (95% CI 70-90)" in exam
    assert "no cross-validated" in S.cost_sentence(CARD, "breast")  # said, never invented
    region = S.cost_sentence({"metrics": CARD["metrics"], "decision": {}}, "region")
    assert "95 of 100 malignant findings" in region and "62 of 100 benign findings" in region
    # per-density-group thresholds on the card: a region call (the rule it used) reads their figures; the screening
    # levels keep their own (the page calls them at the exam model's level thresholds, as the PACS report says)
    grouped = {**CARD, "decision": {"rule": "group_threshold", "group_thresholds": {"pooled": 0.3}},
               "metrics": {**CARD["metrics"], "cv_groupthr_sens": {"value": 0.94}, "cv_groupthr_spec": {"value": 0.03}}}
    assert "found 94 of 100 malignant findings" in S.cost_sentence(grouped, "region")
    assert "found 97 of 100 cancers" in S.cost_sentence(grouped, "exam")
    assert "found 90 of 100 cancers" in S.cost_sentence(grouped, "image")


def test_bars_keep_the_card_order_and_draw_the_threshold_on_the_positive_bar():
    html = S.bar_html({"malignant": 0.7, "not_malignant": 0.3}, ["not_malignant", "malignant"], 0.264)
    assert html.index("not_malignant") < html.index(">malignant<")
    assert "left:26.4%" in html and html.count("class='thr'") == 1
    block = S.call_html("Exam", "exam", 0.7, 0.264, "malignant", CARD, CARD["classes"], "Prediction set {x}")
    assert "called <b class='word'>suspicious</b>" in block and "0.70 ≥ threshold 0.26" in block
    assert "of 100 cancers" in block and "Prediction set" in block


def test_set_line_and_density_legend():
    assert "cannot tell these apart at 90% confidence" in S.set_line(["F", "G"], 0.9, 3)
    assert "one class at 90%" in S.set_line(["G"], 0.9, 3) and S.set_line(None, 0.9, 3) == ""
    mias = S.density_legend(["F", "G", "D"], "mias")
    assert "not BI-RADS" in mias and "G fatty-glandular" in mias
    birads = S.density_legend(["B", "C"], "cbis_ddsm")
    assert birads.startswith("BI-RADS") and "C heterogeneously dense" in birads


def test_card_warnings_name_a_view_and_an_image_kind_the_model_never_saw():
    from pipeline.io.imageio import ImageMeta

    mias_card = {"dataset": {"adapter": "mias", "views": {"MLO": 300}}}
    cc = ImageMeta(format="dicom", original_shape=(10, 10), view="CC", modality="MG")
    assert any("CC view" in w for w in S.card_warnings(cc, "x.dcm", mias_card, "density"))
    assert S.card_warnings(cc, "x.dcm", {"dataset": {"adapter": "mias", "views": {"CC": 1}}}, "density") == []
    png = ImageMeta(format="png", original_shape=(10, 10))
    assert any("contrast-enhanced" in w for w in S.card_warnings(png, "/tmp/a/P2_L_CM_MLO.png", mias_card, "density"))
    assert any("standard mammogram" in w for w in S.card_warnings(cc, "y.dcm", CARD, "screening"))


def test_out_of_range_box_and_a_region_off_the_breast():
    assert "outside the image, which is 1024 x 800 pixels" in S.box_problem((900, 10, 1100, 200), (800, 1024))
    assert S.box_problem((0, 0, 1024, 800), (800, 1024)) is None
    image = np.zeros((100, 100), np.float32)
    image[:, :50] = 0.6
    assert S.region_warnings(image, (60, 10, 90, 40)) and not S.region_warnings(image, (10, 10, 40, 40))


def test_report_zip_holds_the_page_its_json_and_the_cards(tmp_path):
    payload = {"created": "2026-01-01T00:00:00+00:00", "code_version": "mammoscope test", "note": "not a diagnosis",
               "question": "whole exam", "calls": [{"what": "Exam", "task": "screening", "p": 0.7, "threshold": 0.3,
                                                    "call": "malignant", "cost": "found 9 of 10", "set_line": ""}],
               "warnings": ["image is inverted </script>"], "models": [
                   {"task": "screening", "name": "m", "version": 1, "card_file": "cards/m-v1.html"}]}
    rgb = np.zeros((2000, 1000, 3), np.uint8)
    out = S.write_report(tmp_path, payload, {"image 1": S.figure_bytes(rgb)}, {"cards/m-v1.html": "<html>card</html>"})
    with zipfile.ZipFile(out) as z:
        assert sorted(z.namelist()) == ["cards/m-v1.html", "report.html", "report.json"]
        page = z.read("report.html").decode()
        assert json.loads(z.read("report.json")) == payload
    assert "suspicious" in page and "found 9 of 10" in page and "href='cards/m-v1.html'" in page
    assert "data:image/jpeg;base64," in page and "<\\/script>" in page  # the embedded JSON cannot close its tag


def test_heat_overlay_colours_as_the_batch_maps_do():
    from pipeline.serving.screening import overlay_rgb

    rng = np.random.default_rng(0)
    grey, heat = rng.random((64, 48), dtype=np.float32), rng.random((64, 48), dtype=np.float32)
    assert np.abs(S.heat_overlay(grey, heat).astype(int) - overlay_rgb(grey, heat).astype(int)).max() <= 1


def test_a_zipped_study_is_unpacked_flat_without_dicomdir_hidden_or_mac_files(tmp_path):
    import gradio_app

    study = tmp_path / "study.zip"
    with zipfile.ZipFile(study, "w") as z:
        z.writestr("STUDY/SERIES1/IM1", b"one")
        z.writestr("STUDY/SERIES2/IM2", b"two")
        z.writestr("DICOMDIR", b"index")
        z.writestr("__MACOSX/._IM1", b"fork")
        z.writestr("../escape.dcm", b"three")  # a name outside the folder is written inside it, flat
    plain = tmp_path / "mdb001.png"
    plain.write_bytes(b"png")
    bad = tmp_path / "broken.zip"
    bad.write_bytes(b"PK\x03\x04 not really")
    files, errors = gradio_app._unpack([str(plain), str(study), str(bad)])
    assert not errors and files[0] == str(plain) and files[-1] == str(bad)  # not a zip: read (and refused) as a file
    unpacked = files[1:-1]
    assert sorted(open(f, "rb").read() for f in unpacked) == [b"one", b"three", b"two"]
    assert all(Path(f).parent == Path(unpacked[0]).parent and ".." not in f for f in unpacked)


def test_a_drawn_region_without_a_lesion_model_is_not_said_to_be_answered_by_one():
    from types import SimpleNamespace

    from gradio_app import _Exam, _Handlers

    exam = _Exam([None], [None], ["image 1"], [])
    page = SimpleNamespace(_calls=lambda *a: [], _model=lambda task: None)
    text = _Handlers._verdict(page, exam, None, (10, 10, 40, 40), None, None)
    assert "not available in this installation" in text and "Answered by the malignancy model" not in text


def test_an_unpacked_study_and_old_reports_do_not_stay_on_the_server(tmp_path, monkeypatch):
    """A zip is read into memory and its unpacked copy deleted; report folders beyond REPORTS_KEPT are deleted."""
    import tempfile

    import gradio_app
    from app_support import ImageCache

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "server-tmp"))
    (tmp_path / "server-tmp").mkdir()
    study = tmp_path / "study.zip"
    with zipfile.ZipFile(study, "w") as z:
        z.writestr("IM1.png", b"not an image")  # refused by the reader: the folder still goes
    exam = gradio_app._read_exam([str(study)], ImageCache())
    assert len(exam.errors) == 1 and not list((tmp_path / "server-tmp").glob("mammoscope-zip-*"))
    folders = [Path(tempfile.mkdtemp(prefix="mammoscope-report-")) for _ in range(gradio_app.REPORTS_KEPT + 3)]
    kept: list[Path] = []
    for f in folders:  # what each page event's report does
        kept = gradio_app._keep_newest(kept, f)
    assert kept == folders[3:]
    assert sorted(p.name for p in (tmp_path / "server-tmp").iterdir()) == sorted(f.name for f in folders[3:])
