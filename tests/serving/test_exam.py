"""Exam identity at serving time without a model: keys from what is given, then the file's tags, then its name; files
the reader refuses are reported by name and the rest is kept."""
from __future__ import annotations

import numpy as np

from pipeline.io.imageio import ImageMeta
from pipeline.serving.exam import SINGLE_EXAM, exam_image, one_exam, read_exam_images


def test_keys_come_from_arguments_then_tags_then_the_file_name():
    meta = ImageMeta(format="png", original_shape=(8, 8))
    im = exam_image(np.zeros((8, 8)), meta, "/up/P12_R_CM_MLO.png")
    assert (im.key.patient_id, im.key.exam_id, im.key.laterality, im.key.view) == (SINGLE_EXAM, SINGLE_EXAM, "R", "MLO")
    assert im.meta.laterality == "R" and im.image.dtype == np.float32  # the sample is mirrored by it
    tagged = exam_image(np.zeros((8, 8)), ImageMeta(format="dicom", original_shape=(8, 8), laterality="L", view="CC"),
                        "/up/x_R_MLO.dcm", patient_id="P1", exam_id="S9")
    assert (tagged.key.patient_id, tagged.key.exam_id, tagged.key.laterality, tagged.key.view) == ("P1", "P1|exam:S9", "L", "CC")
    given = exam_image(np.zeros((8, 8)), meta, "/up/CALCIFICATION.png", laterality="left")
    assert given.key.laterality == "L" and given.key.view is None  # no view in "CALCIFICATION"


def test_read_exam_images_keeps_the_readable_files_and_names_the_refused(tmp_path, tmp_images):
    good = tmp_images(2)
    bad = tmp_path / "broken_L_CC.png"
    bad.write_bytes(b"not an image")
    images, errors = read_exam_images([good[0], bad, good[1]])
    assert [im.path for im in images] == [str(good[0]), str(good[1])]
    assert len(errors) == 1 and str(bad) in errors[0]
    assert {im.key.exam_id for im in images} == {SINGLE_EXAM}  # files given together are one exam


def test_files_uploaded_together_are_one_exam_even_when_each_names_its_own_study():
    views = [exam_image(np.zeros((8, 8)), ImageMeta(format="dicom", original_shape=(8, 8), study_uid=f"1.2.{i}"),
                        f"/up/Mass_P_1_{side}_{view}.dcm") for i, (side, view) in enumerate([("LEFT", "CC"),
                                                                                              ("RIGHT", "MLO")])]
    assert {im.key.exam_id for im in views} == {"1.2.0", "1.2.1"}  # one study per view, as CBIS-DDSM's files
    together = one_exam(views)
    assert {(im.key.patient_id, im.key.exam_id) for im in together} == {(SINGLE_EXAM, SINGLE_EXAM)}
    assert [(im.key.laterality, im.key.view) for im in together] == [("L", "CC"), ("R", "MLO")]
    assert one_exam(together) == together
