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


class _ByMean:
    """A stand-in fitted pipeline: P(last class) grows with the sample's mean (k = 2 or 3; the rest split evenly)."""

    def __init__(self, k: int = 2, scale: float = 1.5) -> None:
        self.k, self.scale = k, scale

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        p = np.clip(np.asarray(X, float).mean(axis=1) * self.scale, 0.01, 0.99)
        if self.k == 2:
            return np.column_stack([1 - p, p])
        return np.column_stack([(1 - p) / 2, (1 - p) / 2, p])


def test_score_exam_fuses_breasts_and_exam_pools_density_and_writes_the_batch_columns():
    """An ExamModel without a context stage: each image keeps its own score; a breast is the mean of its views, the exam its most
    suspicious breast, each at its level's operating point; density per exam is the mean of the image
    probabilities, called by the density model's rule; rows() has the columns of predict's level files."""
    from pipeline.serving.exam import score_exam
    from pipeline.serving.predict import Predictor
    from tests._cards import card
    from tests._images import breast_like

    screening = card("screening", ["not_malignant", "malignant"], 0.3, size=32, scale=2.0)
    screening.decision.update(level_thresholds={"image": 0.3, "breast": 0.35, "exam": 0.4}, view_fusion="mean")
    from pipeline.model.exam import ExamModel

    exam_model = ExamModel(view_fusion="mean")  # its fitted state by hand: a stand-in image model, no context stage
    exam_model.pipeline_, exam_model.classes_ = _ByMean(), np.array([0, 1])
    exam_model.thresholds_ = {"image": 0.3, "breast": 0.35, "exam": 0.4}
    exam_model.context_ = exam_model.asymmetry_ = exam_model.asymmetry_columns_ = exam_model.heatmap_ = None
    models = {"screening": Predictor(exam_model, screening, name="m-scr", version=3),
              "density": Predictor(_ByMean(3, 1.0), card("density", ["F", "G", "D"]), name="m-den", version=1)}
    meta = ImageMeta(format="png", original_shape=(160, 128))
    views = [exam_image(breast_like(160, 128, seed=i) * (0.5 + 0.15 * i), meta, f"/up/P7_{s}_CM_{v}.png",
                        patient_id="P7") for i, (s, v) in enumerate([("L", "CC"), ("L", "MLO"), ("R", "CC"),
                                                                        ("R", "MLO")])]
    result = score_exam(models, views, maps=False)
    p = np.array([r.p_single for r in result.images])
    assert np.array_equal(p, [r.p for r in result.images])  # no context stage: each image keeps its own score
    assert all(r.context_views for r in result.images)  # though each has other views of its exam
    assert [r.call for r in result.images] == ["malignant" if v >= 0.3 else "not_malignant" for v in p]
    breasts = {b.laterality: b for b in result.breasts}
    assert breasts["L"].p == p[:2].mean() and breasts["R"].p == p[2:].mean() and breasts["L"].views == ["CC", "MLO"]
    assert result.exam.p == max(b.p for b in result.breasts) and result.exam.threshold == 0.4
    assert result.exam.most_suspicious_breast == max(result.breasts, key=lambda b: b.p).id == "P7|R"
    density = np.array([[r.outputs[f"density_p_{c}"] for c in "FGD"] for r in result.images])
    assert np.allclose(list(result.density["probabilities"].values()), density.mean(axis=0), atol=1e-12)
    assert result.density["call"] in ("F", "G", "D") and result.density["n_images"] == 4
    rows = result.rows()
    assert list(rows["breast"].columns) == ["breast_id", "patient_id", "n_images", "views", "exam_id", "laterality",
                                            "screening_p_malignant", "screening_threshold", "screening_call",
                                            "screening_model", "screening_version"]
    assert rows["exam"]["exam_id"].tolist() == ["P7"] and rows["image"]["single_image_p"].tolist() == list(p)
    assert all(r.heatmap is None for r in result.images)  # maps=False
    json = result.to_dict()
    assert json["exam"]["p"] == result.exam.p and json["images"][0]["map"] is None


def test_a_view_without_a_breast_is_named_and_the_rest_of_the_exam_scored():
    """A view that reads but holds no breast (a blank exposure) must cost that view, not the exam: scorable() names
    it with the reader's reason and keeps the others, whose samples are made once and reused by score_exam."""
    from pipeline.errors import NoBreastError
    from pipeline.serving.exam import score_exam, scorable
    from pipeline.serving.predict import Predictor
    from tests._cards import card
    from tests._images import breast_like

    density = Predictor(_ByMean(3, 1.0), card("density", ["F", "G", "D"]), name="m-den", version=1)
    meta = ImageMeta(format="png", original_shape=(160, 128))
    views = [exam_image(breast_like(160, 128, seed=1), meta, "/up/P7_L_CM_CC.png", patient_id="P7"),
             exam_image(np.zeros((160, 128), np.float32), meta, "/up/P7_L_CM_MLO.png", patient_id="P7"),
             exam_image(breast_like(160, 128, seed=2), meta, "/up/P7_R_CM_CC.png", patient_id="P7")]
    ok, failed = scorable([density], views)
    assert ok == [0, 2] and [i for i, _ in failed] == [1] and isinstance(failed[0][1], NoBreastError)
    assert all("density" in views[i].samples for i in ok)  # made once, kept for score_exam
    result = score_exam([density], [views[i] for i in ok], maps=False, errors=[str(failed[0][1])])
    assert result.density["n_images"] == 2 and len(result.errors) == 1
    # a secondary capture (e.g. Mammoscope's own map in an exported study) and raw FOR PROCESSING data are no views
    shot = ImageMeta(format="dicom", original_shape=(160, 128), modality="OT")
    raw = ImageMeta(format="dicom", original_shape=(160, 128), modality="MG", presentation_intent="FOR PROCESSING")
    extra = [exam_image(breast_like(160, 128, seed=3), m, f"/up/{n}.dcm", patient_id="P7")
             for n, m in (("map", shot), ("raw", raw))]
    ok, failed = scorable([density], [views[0], *extra])
    assert ok == [0] and ["modality is OT" in str(e) for _, e in failed] == [True, False]
    assert "FOR PROCESSING" in str(failed[1][1]) and str(failed[1][1]).startswith("/up/raw.dcm: ")
