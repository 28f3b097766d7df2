"""Exam identity (pipeline.io.exams): one definition of an image's patient, exam, breast and view."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.io.exams import (ExamKey, breast_ids, exam_id_of, exam_ids, exam_keys, group_by_exam, key_from_meta,
                               laterality_of, level_ids, side_and_view_from_name)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
CBIS = SHARED / "cbis_ddsm"
CESM = SHARED / "cdd_cesm"


def test_table_ids_keep_their_format():
    """The exact strings CV, the OOF files and the level files have always used (CV figures depend on them)."""
    t = pd.DataFrame({"sample_id": ["a", "b", "c", "d"], "patient_id": ["p1", "p1", "p2", "p2"],
                      "laterality": ["L", "R", np.nan, "L"], "exam_id": [np.nan, "", "e1", "e1"]})
    assert list(exam_ids(t)) == ["p1", "p1", "p2|exam:e1", "p2|exam:e1"]
    assert list(breast_ids(t)) == ["p1|L", "p1|R", "p2|exam:e1|c", "p2|exam:e1|L"]
    image, breast, exam = exam_keys(t)
    assert list(image) == list("abcd") and list(breast) == list(breast_ids(t)) and list(exam) == list(exam_ids(t))
    no_exam = t.drop(columns="exam_id")
    assert list(level_ids(no_exam)["exam"]) == ["p1", "p1", "p2", "p2"]


def test_exam_id_needs_a_patient_or_a_study():
    assert exam_id_of(" P1 ", None) == "P1" and exam_id_of(None, "1.2.3") == "1.2.3"
    assert exam_id_of("P1", "E7") == "P1|exam:E7" and exam_id_of("P1", float("nan")) == "P1"
    with pytest.raises(ValueError, match="patient_id or an exam"):
        exam_id_of("", None)


@pytest.mark.parametrize("name, side, view", [
    ("Mass-Test_P_00173_LEFT_CC.png", "L", "CC"), ("Calc-Training_P_00005_RIGHT_MLO_1.dcm", "R", "MLO"),
    ("P100_L_CM_MLO.png", "L", "MLO"), ("sfm-benign-0_1-130.dcm", None, None), ("mdb001.png", None, None)])
def test_file_name_convention(name, side, view):
    assert side_and_view_from_name(name) == (side, view)


def test_manifest_values_win_over_tags_and_names():
    from pipeline.io.imageio import ImageMeta

    meta = ImageMeta(format="dicom", original_shape=(4, 4), laterality="R", view="MLO", study_uid="1.2.3")
    key = key_from_meta(path="/d/P_1_LEFT_CC.dcm", meta=meta, patient_id="P1", exam_id="E1", laterality="l",
                        view="cc")
    assert key == ExamKey("P1", "P1|exam:E1", "L", "CC")
    assert key.breast_id("x") == "P1|exam:E1|L"
    from_tags = key_from_meta(path="/d/P_1_LEFT_CC.dcm", meta=meta)
    assert from_tags == ExamKey("1.2.3", "1.2.3", "R", "MLO")  # no manifest: the study stands for its patient
    from_name = key_from_meta(path="/d/P_1_LEFT_CC.png", meta=ImageMeta(format="png", original_shape=(4, 4)),
                              patient_id="P1")
    assert from_name == ExamKey("P1", "P1", "L", "CC")
    assert ExamKey("P1", "P1").breast_id("img7") == "P1|img7"
    with pytest.raises(ValueError):
        key_from_meta(path="/d/x.png")


@pytest.mark.skipif(not CBIS.is_dir(), reason="needs ../shared/data/cbis_ddsm")
def test_real_cbis_ddsm_dicoms_fall_back_to_laterality_and_patient_orientation():
    """The CBIS-DDSM files carry Laterality (not ImageLaterality), the view in PatientOrientation and one study per
    file: each DICOM alone is an exam of its own; a manifest's patient_id groups them."""
    from pipeline.io.imageio import read_image

    manifest = pd.read_csv(CBIS / "manifest.csv").drop_duplicates("file").head(4)
    keys = []
    for _, row in manifest.iterrows():
        _, meta = read_image(CBIS / row["file"])
        assert meta.study_uid and meta.laterality == row["laterality"] and meta.view == row["view"]
        keys.append(key_from_meta(path=row["file"], meta=meta))
        assert (keys[-1].laterality, keys[-1].view) == (row["laterality"], row["view"])
    assert len({k.exam_id for k in keys}) == 4
    patients = manifest["original_id"].str.extract(r"(P_\d+)")[0]
    grouped = [key_from_meta(path=r["file"], meta=m, patient_id=p, exam_id="screen-1")
               for (_, r), p, m in zip(manifest.iterrows(), patients, [read_image(CBIS / f)[1] for f in manifest["file"]])]
    assert len({k.exam_id for k in grouped}) == len(set(patients))
    # a manifest naming the patient alone groups them too (as a training table without exam_id does), as batch
    # predict groups its work: one study per view must not split an exam
    by_patient = [key_from_meta(path=r["file"], meta=read_image(CBIS / r["file"])[1], patient_id=p)
                  for (_, r), p in zip(manifest.iterrows(), patients)]
    assert [k.exam_id for k in by_patient] == list(patients)


def test_a_named_patient_without_exam_id_is_one_exam_whatever_the_study_uids():
    from pipeline.io.imageio import ImageMeta

    cc = ImageMeta(format="dicom", original_shape=(4, 4), study_uid="1.2.3")
    mlo = ImageMeta(format="dicom", original_shape=(4, 4), study_uid="1.2.4")
    assert {key_from_meta(meta=m, patient_id="P1").exam_id for m in (cc, mlo)} == {"P1"}
    assert {key_from_meta(meta=m).exam_id for m in (cc, mlo)} == {"1.2.3", "1.2.4"}  # no manifest: study = exam
    assert key_from_meta(meta=cc, patient_id="P1", exam_id="2024").exam_id == "P1|exam:2024"


def test_laterality_given_then_tags_then_name():
    from pipeline.io.imageio import ImageMeta

    tagged = ImageMeta(format="dicom", original_shape=(4, 4), laterality="L")
    assert laterality_of("right", tagged, "P1_L_CC.dcm") == "R"  # a manifest's value wins, any spelling
    assert laterality_of(" LEFT ", None, None) == "L"
    assert laterality_of(None, tagged, "P1_R_CC.dcm") == "L"
    assert laterality_of("", None, "/d/P263_R_CM_CC.png") == "R"
    assert laterality_of("both", None, "scan.png") is None


@pytest.mark.skipif(not CESM.is_dir(), reason="needs ../shared/data/cdd_cesm")
def test_cdd_cesm_names_agree_with_the_manifest():
    manifest = pd.read_csv(CESM / "manifest.csv")
    named = [side_and_view_from_name(f) for f in manifest["file"]]
    assert named == list(zip(manifest["laterality"], manifest["view"]))


def test_group_by_exam_keeps_first_seen_order():
    items = [("a", "e2"), ("b", "e1"), ("c", "e2")]
    assert group_by_exam(items, key=lambda it: it[1]) == {"e2": [("a", "e2"), ("c", "e2")], "e1": [("b", "e1")]}
    assert list(group_by_exam(["x", "y"], key={"x": 1, "y": 1})) == [1]
