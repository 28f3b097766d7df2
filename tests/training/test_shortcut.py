"""Issue 31's shortcut, rebuilt on a development set: CDD-CESM with the contralateral breast of every malignant exam
dropped (women with cancer come with one breast's views, cancer-free women with both, as in the external set). The
shortcut audit names the view count, the context stage with presence flags turns it into a jump in image AUC, and
the context stage without them (screening.context_presence: false) stays with the single image. First stage: a
cheap proxy score read from each image (the 99th percentile of its breast pixels at 128 px), no CNN."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.pipeline import Pipeline

from pipeline.model.context import (FEATURES, PRESENCE, apply_context, context_features, fit_context,
                                       stage_layout)
from tests.training.test_context import ScoreColumn, _exams

EV = {"folds": 5, "seed": 0, "target_sensitivity": 0.95, "bootstrap_resamples": 0, "confidence_level": 0.95,
      "ece_bins": 10}


def _proxy(path: str) -> float:
    """The 99th percentile of the image's bright (breast) pixels at 128 px: contrast-enhancing lesions are bright."""
    from PIL import Image

    with Image.open(path) as im:
        im.draft("L", (128, 128))
        a = np.asarray(im.convert("L").reduce(max(1, im.size[0] // 128)), np.float32) / 255
    bright = a[a > 0.05]
    return float(np.quantile(bright, 0.99)) if bright.size else 0.0


@pytest.fixture(scope="module")
def artefact(cdd_dir):
    from benchmarks.shortcut import artefact_rows
    from pipeline.io.datasets import load_dataset
    from pipeline.io.datasets.screening import screening_table

    table = screening_table(load_dataset("manifest", cdd_dir / "manifest.csv"))
    y = (table["screening"] == "malignant").to_numpy(int)
    rows = artefact_rows(table, y)
    table, y = table.iloc[rows].reset_index(drop=True), y[rows]
    score = np.clip([_proxy(p) for p in table["path"]], 0.01, 0.99)
    return table, y, score


def test_the_audit_names_the_artefact_and_the_stage_without_presence_flags_does_not_learn_it(artefact):
    from pipeline.evaluation.splits import patient_stratified_folds
    from pipeline.training.audit import shortcut_audit
    from pipeline.training.levels import cross_validate_levels

    table, y, score = artefact
    groups = table["patient_id"].astype(str).to_numpy()
    audit = shortcut_audit(table, y, patient_stratified_folds(y, groups, 5, 0), n_resamples=200)
    assert "images_per_exam" in audit.flagged and "breasts_per_exam" in audit.flagged
    make = lambda: Pipeline([("classifier", ScoreColumn())])  # noqa: E731
    alone = cross_validate_levels(make, score[:, None], y, table, EV).metrics["image_roc_auc"]
    flags = cross_validate_levels(make, score[:, None], y, table, EV, context_C=1.0,
                                  context_presence=True).metrics["image_roc_auc"]
    free = cross_validate_levels(make, score[:, None], y, table, EV, context_C=1.0,
                                 context_presence=False).metrics["image_roc_auc"]
    assert 0.6 < alone < 0.8  # the proxy: a weak single-image score, as on the external set
    assert flags > alone + 0.15  # the presence flags read the artefact (the external set: 0.618 -> 0.975)
    assert abs(free - alone) < 0.03  # without them the stage has nothing to read it from


def test_an_image_whose_other_views_score_as_it_does_gets_its_score_alone():
    """Without presence flags a missing view counts as one that looks like this image, so the number of views
    alone cannot move the output: exactly (the features are equal), not approximately."""
    t, y, p = _exams(60, seed=7)
    model = fit_context(p, y, t, presence=False)
    assert stage_layout(model) == (False, False) and model.n_features_in_ == len(FEATURES) - len(PRESENCE)
    exam = t[t["patient_id"] == "p3"]  # two breasts x two views
    same = np.full(len(exam), 0.3)
    alone = apply_context(model, same[:1], exam.iloc[:1])[0]
    assert np.all(apply_context(model, same, exam) == alone)  # four views, all scoring 0.3
    assert np.all(apply_context(model, same[:2], exam.iloc[:2]) == alone)  # one breast's two views
    assert alone != 0.3  # the stage scores every image, those alone included
    f = context_features(same, exam, presence=False)
    assert f.shape == (4, len(FEATURES) - len(PRESENCE)) and np.all(f[:, 1:] == 0)
    # a view that does differ still counts: a lower contralateral breast raises this image's probability
    lower = np.array([0.3, 0.3, 0.1, 0.1])
    assert apply_context(model, lower, exam)[0] != alone


def test_the_switch_reaches_the_final_model_and_old_stages_still_apply():
    t, y, p = _exams(60, seed=8)
    flags = fit_context(p, y, t)
    assert stage_layout(flags) == (True, False)
    alone = t.iloc[[0]]
    assert apply_context(flags, p[:1], alone)[0] == p[0]  # with flags a lone image keeps its own score
    free = fit_context(p, y, t, asymmetry=np.zeros(len(p)), presence=False)
    assert stage_layout(free) == (False, True)
    with pytest.raises(ValueError, match="asymmetry"):
        apply_context(free, p[:4], t.iloc[:4])
    assert apply_context(free, p[:4], t.iloc[:4], np.zeros(4)).shape == (4,)


def test_the_experiment_switch_is_validated():
    from pipeline.config.experiment import load_experiment
    from pipeline.errors import ConfigError
    from pipeline.paths import PROJECT_DIR
    from pipeline.model.screening import context_presence

    path = PROJECT_DIR / "experiments" / "cdd_cesm_screening.yaml"
    assert context_presence(load_experiment(path).config) is False  # shipped: no view-presence flags
    assert context_presence(load_experiment(path, ["screening.context_presence=true"]).config) is True
    with pytest.raises(ConfigError, match="context_presence"):
        load_experiment(path, ["screening.context_presence=sometimes"])
