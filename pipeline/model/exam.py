"""The exam as one estimator: the image Pipeline, then the multi-view context stage (with the bilateral asymmetry
score), view fusion into breasts and exams, the operating point of each level and the map's tile scorer.

``ExamModel.fit(X, y, groups=, exams=)`` is the one fit path: a cross-validation fold and the final (served) model
both call it. It fits the image Pipeline (patient groups routed to the steps that split), then the exam stage on the
calibrated classifier's inner out-of-fold probabilities of its training rows (``validation_proba_``): the asymmetry
model cross-fitted on those rows' tile-max embeddings, the context stage on them, the stage's own patient-grouped
out-of-fold output, and per level the highest threshold reaching ``target_sensitivity`` on it. So no threshold or
exam-stage weight is chosen on rows the stage was fitted on, and no test row is seen.

Input X: what ``pipeline`` takes (samples; or, in streamed training, the frozen front's feature rows, with the fitted
``front`` that makes them from samples at scoring time). The image Pipeline's layout (pipeline.model.screening): the
``blocks`` ColumnTransformer's ``tiles`` member pools the tile matrix (the asymmetry model reads its max block), the
map's scorer reads that tile matrix.

Why our own: the exam stage routes exam metadata (breast, exam, view) beside X, which scikit-learn meta-estimators do
not model; this class keeps scikit-learn's contract (parameters in ``__init__``, fitted state with underscores).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from pipeline.evaluation.metrics import choose_threshold
from pipeline.io.exams import level_ids
from pipeline.model.estimators import disable_cache, final_classifier
from pipeline.model.levels import LEVELS, level_proba

__all__ = ["ExamModel", "ExamLevels", "STAGE_PARAMS"]

#: ExamModel parameters of the exam stage alone (`ExamModel.with_stage` refits only that stage)
STAGE_PARAMS = ("context_C", "context_auto", "context_presence", "asymmetry_C", "view_fusion", "target_sensitivity")


@dataclass
class ExamLevels:
    """Scores of a set of images at each level (columns: /work/wave/CONTRACT.md "ExamModel API")."""

    images: pd.DataFrame   # one row per input row, input order
    breasts: pd.DataFrame  # one row per breast, sorted by breast_id
    exams: pd.DataFrame    # one row per exam, sorted by exam_id


class ExamModel(ClassifierMixin, BaseEstimator):
    """Image Pipeline + multi-view context + asymmetry + view fusion + per-level operating points (+ map scorer).

    Parameters
    ----------
    pipeline : the image estimator (a Pipeline ending in a PatientCalibratedClassifier), fitted on X.
    front : a fitted, stateless Pipeline making X from samples (streamed training), prepended at scoring; or None.
    map_scorer : an unfitted tile scorer (features.tiles.TileScorer) fitted on the tile matrix; None: no map.
    context_C : C of the context stage's logistic regression; None: no context stage.
    context_auto : keep the context stage only where it ranks the training rows better (inner out-of-fold AUC).
    context_presence : the context stage reads view-presence flags (False, the default: it cannot, and scores every
        image, so view presence alone cannot move a score; pipeline.model.context).
    asymmetry_C : C of the bilateral asymmetry model (a column of the context stage); None: none.
    view_fusion : "mean" or "max" of a breast's images' probabilities; an exam is its most suspicious breast.
    target_sensitivity : the sensitivity each level's operating point reaches on the inner out-of-fold rows.
    """

    def __init__(self, pipeline: Any = None, *, front: Any = None, map_scorer: Any = None,
                 context_C: float | None = None, context_auto: bool = False, context_presence: bool = False,
                 asymmetry_C: float | None = None,
                 view_fusion: str = "mean", target_sensitivity: float = 0.95) -> None:
        self.pipeline = pipeline
        self.front = front
        self.map_scorer = map_scorer
        self.context_C = context_C
        self.context_auto = context_auto
        self.context_presence = context_presence
        self.asymmetry_C = asymmetry_C
        self.view_fusion = view_fusion
        self.target_sensitivity = target_sensitivity

    # ---------------------------------------------------------------------------------------------------- fit
    def fit(self, X: Any, y: Any, *, groups: Any = None, exams: pd.DataFrame | None = None,
            augmented: Any = None) -> "ExamModel":
        """Fit the image pipeline on (X, y) with patient `groups`, then the exam stage; `exams`: one row per X row
        (sample_id, patient_id, [exam_id], laterality, view). Without `groups` every row is a patient of its own;
        without `exams` every image is an exam of its own (no other views: the context stage has nothing to read).
        `augmented` (bool per row): training-time copies (in their patient's group, an exam of their own) that fit
        the image pipeline and the map but are never held out, so the exam stage and the operating points are
        fitted on original images alone."""
        from pipeline.model.routing import fit_with_groups

        y = check_binary(self, X, y)
        if augmented is not None and np.asarray(augmented).any() and groups is None:
            raise ValueError("augmented rows need groups: a copy must share its original's patient id, or it would "
                             "train the model that scores its original; pass groups=<patient ids>")
        groups = np.arange(len(y)).astype(str) if groups is None else np.asarray(groups)
        if exams is None:
            exams = _own_exams(len(y), groups)
        if len(exams) != len(y):
            raise ValueError(f"exams has {len(exams)} rows but X has {len(y)}; give one exam row per image")
        if self.view_fusion not in ("mean", "max"):
            raise ValueError(f"view_fusion must be 'mean' or 'max'; got {self.view_fusion!r}")
        self.pipeline_ = fit_with_groups(clone(self.pipeline), X, y, groups, augmented)
        clf = final_classifier(self.pipeline_)
        self.classes_ = np.asarray(clf.classes_)
        for name in ("n_features_in_", "feature_names_in_"):
            if hasattr(self.pipeline_, name):
                setattr(self, name, getattr(self.pipeline_, name))
        self.tile_scores_kept_ = bool(clf.kept_group_) if hasattr(clf, "kept_group_") else None
        self.heatmap_ = self._fit_map(X, y) if self.map_scorer is not None else None
        self._fit_stage(X, y, exams)
        return self

    def with_stage(self, X: Any, y: Any, exams: pd.DataFrame, **params: Any) -> "ExamModel":
        """A copy of this fitted model with another exam stage (`params`: any of STAGE_PARAMS) fitted on the same
        training rows (X, y and the exam table `fit` was given); the image pipeline and the map are shared, not refitted,
        so candidates of the exam stage cost one image fit between them (pipeline.model.exam_search)."""
        check_is_fitted(self, "pipeline_")
        unknown = sorted(set(params) - set(STAGE_PARAMS))
        if unknown:
            raise ValueError(f"with_stage sets the exam stage only ({', '.join(STAGE_PARAMS)}); got {unknown}")
        y = np.asarray(y)
        clf = final_classifier(self.pipeline_)
        if len(y) <= int(np.max(clf.validation_index_)):
            raise ValueError(f"with_stage needs the {int(np.max(clf.validation_index_)) + 1}+ training rows this "
                             f"model was fitted on; got {len(y)}")
        new = copy.copy(self)
        new.set_params(**params)
        if len(exams) != len(y):
            raise ValueError(f"exams has {len(exams)} rows but y has {len(y)}; give the exam table fit was given")
        new._fit_stage(X, y, exams)
        return new

    def _fit_stage(self, X: Any, y: np.ndarray, exams: pd.DataFrame) -> None:
        """The exam stage (asymmetry, context, each level's operating point) on the fitted image pipeline's inner
        out-of-fold probabilities of the training rows."""
        clf = final_classifier(self.pipeline_)
        rows = exams.reset_index(drop=True).iloc[clf.validation_index_]
        yy, p = (y[clf.validation_index_] == self.classes_[1]).astype(int), clf.validation_proba_[:, 1]
        self.context_ = self.asymmetry_ = self.asymmetry_columns_ = None
        self.context_used_ = False
        inner_p = p
        if self.context_C is not None:
            inner_p = self._fit_context(X, clf.validation_index_, yy, p, rows)
        ids = {k: v[clf.validation_index_] for k, v in level_ids(exams.reset_index(drop=True)).items()}
        inner = level_proba(inner_p, yy, ids, self.view_fusion)
        self.thresholds_ = {lv: float(choose_threshold(inner[lv][1], inner[lv][2], float(self.target_sensitivity)))
                            for lv in LEVELS}

    def _fit_context(self, X: Any, index: np.ndarray, yy: np.ndarray, p: np.ndarray, rows: pd.DataFrame
                     ) -> np.ndarray:
        """Fit the asymmetry model and the context stage on the inner out-of-fold rows; returns the probabilities
        the operating points are chosen on (the stage's own out-of-fold output, or `p` where no stage is kept)."""
        from pipeline.model.context import context_pays, cross_fit_context, fit_context

        groups = rows["patient_id"].astype(str).to_numpy()
        s_inner = None
        if self.asymmetry_C is not None:  # the bilateral asymmetry score: a column of the context stage
            from pipeline.model.asymmetry import cross_fit_asymmetry

            columns = self._tile_max_columns()
            M = np.asarray(self._classifier_input(_rows(X, index))[:, columns[0]:columns[1]], np.float64)
            s_inner, models = cross_fit_asymmetry(M, yy, rows, groups, float(self.asymmetry_C))
            if models:  # served by the mean of the fold models the stage's scores came from
                self.asymmetry_, self.asymmetry_columns_ = models, columns
            else:  # too few images with a contralateral breast: the stage reads no asymmetry
                s_inner = None
        presence = bool(self.context_presence)
        context = fit_context(p, yy, rows, float(self.context_C), s_inner, presence)
        inner_ctx = cross_fit_context(p, yy, rows, groups, float(self.context_C), asymmetry=s_inner,
                                      presence=presence)
        self.context_used_ = True if not self.context_auto else context_pays(yy, p, inner_ctx)
        if not self.context_used_:  # auto: the stage does not pay on these training images
            self.asymmetry_ = self.asymmetry_columns_ = None
            return p
        self.context_ = context
        if context is None:  # too few rows to fit a stage: nothing reads the asymmetry
            self.asymmetry_ = self.asymmetry_columns_ = None
        return inner_ctx

    def _fit_map(self, X: Any, y: np.ndarray) -> Pipeline:
        """The map: the front's tile embedding step, then the tile scorer fitted on every row's tile matrix."""
        i = _blocks_index(self._image)
        front = self.front if self.front is not None else self._image[:i]
        F = np.asarray(X) if self.front is not None or i == 0 else np.asarray(front.transform(X))
        T = np.asarray(F[:, self._tile_input_columns()], np.float32)
        scorer = clone(self.map_scorer).fit(T, y)
        tiles = copy.deepcopy(dict(front.named_steps["features"].transformer_list)["tiles"])
        return disable_cache(Pipeline([("embed", tiles), ("scorer", scorer)]))

    # ---------------------------------------------------------------------------------------------------- layout
    @property
    def _image(self) -> Pipeline:
        """The fitted image Pipeline (a fitted search's best one)."""
        return getattr(self.pipeline_, "best_estimator_", self.pipeline_)

    def _blocks(self) -> Any:
        return self._image.steps[_blocks_index(self._image)][1]

    def _tile_input_columns(self) -> Any:
        """The columns of the blocks step's input (the front's output) holding the tile matrix."""
        for name, _, columns in self._blocks().transformers_:
            if name == "tiles":
                return columns
        raise ValueError("the image pipeline's blocks step has no 'tiles' member")

    def _tile_max_columns(self) -> tuple[int, int]:
        """[start, stop) of the pooled tiles' max block in the classifier's input (the blocks step's output)."""
        from pipeline.model.asymmetry import tile_max_columns

        blocks = self._blocks()
        where = blocks.output_indices_["tiles"]
        pooling = blocks.named_transformers_["tiles"]
        cols = tile_max_columns(where.stop - where.start, pooling.poolings, offset=where.start)
        return int(cols.start), int(cols.stop)

    def _classifier_input(self, X: Any) -> np.ndarray:
        """X through every step but select and classifier (the blocks step's output) of the fitted image pipeline."""
        return np.asarray(self._image[:-2].transform(X))

    @property
    def served_(self) -> Pipeline:
        """The image Pipeline that scores samples: the front (when given) then the fitted image pipeline."""
        check_is_fitted(self, "pipeline_")
        if self.front is None:
            return self._image
        return Pipeline(list(self.front.steps) + list(self._image.steps))

    # Pipeline look-alikes: code reading a served model as its image Pipeline (Predictor.score, explain)
    @property
    def steps(self) -> list:
        return self.served_.steps

    @property
    def named_steps(self) -> Any:
        return self.served_.named_steps

    def __getitem__(self, ind: Any) -> Any:
        return self.served_[ind]

    def __len__(self) -> int:
        return len(self.served_)

    # ---------------------------------------------------------------------------------------------------- predict
    def predict_proba(self, X: Any) -> np.ndarray:
        """(n, 2) the image alone (the served image Pipeline's probabilities)."""
        from sklearn.utils.validation import check_array

        check_is_fitted(self, "pipeline_")
        check_array(X, dtype=None, ensure_all_finite=True, ensure_2d=True)
        return self.served_.predict_proba(X)

    def predict(self, X: Any) -> np.ndarray:
        """(n,) the more probable class of each image alone (the calls at each level's operating point:
        `predict_levels`)."""
        check_is_fitted(self, "pipeline_")
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False  # operating points and fusion are for malignant vs not
        return tags

    def image_asymmetry(self, X: Any) -> np.ndarray | None:
        """(n,) per-image asymmetry scores (the mean of the fold models), None without an asymmetry stage."""
        check_is_fitted(self, "pipeline_")
        if self.asymmetry_ is None:
            return None
        from pipeline.model.asymmetry import image_scores

        start, stop = self.asymmetry_columns_
        features = np.asarray(self.served_[:-2].transform(X))
        return image_scores(self.asymmetry_, features[:, start:stop])

    def predict_levels(self, X: Any, exams: pd.DataFrame | None = None) -> ExamLevels:
        """Per image (alone and with its exam's other views), breast and exam: probabilities, thresholds, calls
        (without `exams`: every image an exam of its own)."""
        p = self.predict_proba(X)[:, 1]
        exams = _own_exams(len(p), np.arange(len(p)).astype(str)) if exams is None else exams
        return self.score_levels(p, exams, self.image_asymmetry(X))

    def score_levels(self, p: Any, exams: pd.DataFrame, asymmetry: Any = None) -> ExamLevels:
        """ExamLevels from each image's own positive-class probability `p` (n,) and, with an asymmetry stage, its
        `image_asymmetry` score (n,); `exams` one row per image."""
        from pipeline.model.context import apply_context, context_features, has_context

        check_is_fitted(self, "pipeline_")
        exams = exams.reset_index(drop=True)
        single = np.asarray(p, float)
        if self.asymmetry_ is not None and asymmetry is None:
            raise ValueError("this exam model reads bilateral asymmetry scores: pass image_asymmetry(X)")
        a = None if asymmetry is None or self.asymmetry_ is None else np.asarray(asymmetry, float)
        pc = apply_context(self.context_, single, exams, a)
        ids = level_ids(exams)
        positive, negative = self.classes_[1], self.classes_[0]

        def calls(values: np.ndarray, t: float) -> list:
            return [positive if v >= t else negative for v in values]

        t = self.thresholds_
        side = exams["laterality"] if "laterality" in exams.columns else pd.Series([None] * len(exams))
        view = exams["view"] if "view" in exams.columns else pd.Series([None] * len(exams))
        images = pd.DataFrame({"sample_id": ids["image"], "breast_id": ids["breast"], "exam_id": ids["exam"],
                               "patient_id": exams["patient_id"].astype(str).to_numpy(),
                               "laterality": side.to_numpy(), "view": view.to_numpy(), "p_single": single, "p": pc,
                               "context_views": has_context(context_features(single, exams)),
                               "threshold": t["image"], "call": calls(pc, t["image"])})
        fused = level_proba(pc, np.zeros(len(pc), int), ids, self.view_fusion)
        frames = {}
        for lv in ("breast", "exam"):
            u, _, pp = fused[lv]
            g = images.groupby(f"{lv}_id", sort=True)
            rows = pd.DataFrame({f"{lv}_id": u})
            if lv == "breast":
                rows["exam_id"] = g["exam_id"].first().reindex(u).to_numpy()
            rows["patient_id"] = g["patient_id"].first().reindex(u).to_numpy()
            if lv == "breast":
                rows["laterality"] = g["laterality"].first().reindex(u).to_numpy()
            rows["views"] = g["view"].agg(lambda v: ",".join(sorted(map(str, v.dropna())))).reindex(u).to_numpy()
            rows["n_images"] = g.size().reindex(u).to_numpy()
            rows["p"], rows["threshold"], rows["call"] = pp, t[lv], calls(pp, t[lv])
            frames[lv] = rows
        breast_p = pd.Series(fused["breast"][2], index=fused["breast"][0])
        top = frames["breast"].assign(bp=breast_p.reindex(frames["breast"]["breast_id"]).to_numpy())
        frames["exam"]["most_suspicious_breast"] = top.sort_values("bp", ascending=False, kind="stable").groupby(
            "exam_id")["breast_id"].first().reindex(frames["exam"]["exam_id"]).to_numpy()
        return ExamLevels(images=images, breasts=frames["breast"], exams=frames["exam"])

    def decision_entries(self) -> dict[str, Any]:
        """The model card's decision entries of the exam stage: level_thresholds, view_fusion, context,
        context_asymmetry (and tile_scores_kept where the fit chose)."""
        check_is_fitted(self, "pipeline_")
        out = {"level_thresholds": dict(self.thresholds_), "view_fusion": self.view_fusion,
               "context": self.context_C is not None and self.context_used_,
               "context_asymmetry": self.asymmetry_ is not None}
        if out["context"]:  # False: the stage read no view-presence flags (pipeline.model.context)
            out["context_presence"] = bool(self.context_presence)
        if self.tile_scores_kept_ is not None:
            out["tile_scores_kept"] = self.tile_scores_kept_
        return out


def check_binary(estimator: Any, X: Any, y: Any) -> np.ndarray:
    """y as a 1-d array after scikit-learn's checks of (X, y) for a binary exam estimator (NaN / inf in X, a
    missing, 2-d or non-binary y: a clear error here)."""
    from sklearn.utils.multiclass import type_of_target
    from sklearn.utils.validation import check_array, column_or_1d

    if y is None:
        raise ValueError(f"{type(estimator).__name__} requires y to be passed, but the target y is None")
    check_array(X, dtype=None, ensure_all_finite=True, ensure_2d=True)
    y = column_or_1d(y, warn=True)
    if type_of_target(y, input_name="y", raise_unknown=True) != "binary":
        raise ValueError(f"Only binary classification is supported. The type of the target is "
                         f"{type_of_target(y)}.")
    return y


def _own_exams(n: int, groups: np.ndarray) -> pd.DataFrame:
    """An exam table in which every row is an image of unknown side of an exam of its own."""
    return pd.DataFrame({"sample_id": np.arange(n).astype(str), "patient_id": [f"{g}|{i}" for i, g in
                                                                              enumerate(np.asarray(groups))]})


def _rows(X: Any, index: np.ndarray) -> Any:
    return X.iloc[index] if hasattr(X, "iloc") else np.asarray(X)[index]


def _blocks_index(pipeline: Pipeline) -> int:
    """Position of the ``blocks`` step (0 in a head fitted on the front's output)."""
    names = [name for name, _ in pipeline.steps]
    if "blocks" not in names:
        raise ValueError(f"an exam model's image pipeline needs a 'blocks' step (pipeline.model.screening); "
                         f"it has {names}")
    return names.index("blocks")
