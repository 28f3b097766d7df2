"""One scikit-learn Pipeline per experiment: preprocessing -> FeatureUnion(handcrafted, CNN) -> calibrated XGBoost.

    Pipeline([
        ("preprocess", CachedTransformer([BreastMask (density) ->] CLAHE -> UnsharpMask)),  # CNN input "raw":
                                                                                    # CLAHE -> unsharp open the handcrafted branch
        ("features",   FeatureUnion([("handcrafted", CachedTransformer(GLCM | intensity)),
                                     ("cnn",         CachedTransformer(CNNEmbedder) | FineTunedEmbedder)])),
        ("select",     MutualInfoSelector(k) | "passthrough"),
        ("classifier", PatientCalibratedClassifier(WeightedXGBClassifier(...))),
    ])

Stateless steps are cached per image (content hash of the row + the step's parameters) under the cache folder, so
features are computed once per image across folds and experiments. The classifier holds out calibration data inside
whatever it is fitted on (inner patient-level folds, or one patient-level split) and picks its operating point
(`threshold_`) there: the test fold of an outer cross-validation is never seen by calibration or the threshold.
"""
from __future__ import annotations

import hashlib
import inspect
import logging
import os
import sys
import types
from pathlib import Path
from typing import Any, Mapping

import joblib
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, MetaEstimatorMixin, TransformerMixin, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.feature_selection import SelectorMixin, mutual_info_classif
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils import get_tags
from sklearn.utils.validation import check_is_fitted, validate_data

from pipeline.errors import ConfigError
from pipeline.evaluation.metrics import choose_threshold
from pipeline.evaluation.splits import patient_stratified_folds, train_only_folds, train_only_mask

__all__ = [
    "CachedTransformer",
    "WeightedXGBClassifier",
    "PatientCalibratedClassifier",
    "build_pipeline",
    "cnn_input_size",
    "final_classifier",
    "CenterCrop",
    "MutualInfoSelector",
    "disable_cache",
    "enhanced_view",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------------
def _module_digest(name: str) -> str:
    """BLAKE2 digest of a module's source (re-read when its file changes); '' when it has no readable source."""
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None)
    try:
        stat = os.stat(path) if path else None
    except OSError:
        stat = None
    key = (name, path, stat.st_mtime_ns if stat else None, stat.st_size if stat else None)
    if key not in _SOURCE_DIGESTS:
        try:
            source = inspect.getsource(module) if module is not None else ""
        except (OSError, TypeError):
            source = ""
        _SOURCE_DIGESTS[key] = hashlib.blake2b(source.encode(), digest_size=8).hexdigest()
    return _SOURCE_DIGESTS[key]


_SOURCE_DIGESTS: dict[tuple, str] = {}


def code_version(estimator: Any) -> str:
    """The code an estimator's output depends on: the source digest of the module of its class and of every
    sub-estimator's class (deep get_params), plus the modules they import from the project's feature packages."""
    modules = {type(estimator).__module__}
    if hasattr(estimator, "get_params"):
        for value in estimator.get_params(deep=True).values():
            if hasattr(value, "get_params"):
                modules.add(type(value).__module__)
    for name in list(modules):  # helpers of the project's own feature code (features/_base.py, ...)
        for dep in _project_imports(name):
            modules.add(dep)
    return "-".join(f"{m}:{_module_digest(m)}" for m in sorted(modules))


def _project_imports(name: str) -> list[str]:
    """Modules of the project's feature packages that module `name` holds references to."""
    module = sys.modules.get(name)
    if module is None or name.split(".")[0] not in ("features", "cnn"):
        return []
    out = []
    for value in vars(module).values():
        mod = getattr(value, "__module__", None) if not isinstance(value, types.ModuleType) else value.__name__
        if isinstance(mod, str) and mod != name and mod.split(".")[0] in ("features", "cnn"):
            out.append(mod)
    return sorted(set(out))


def cnn_input_size(cnn_config: Mapping[str, Any], size: int) -> int:
    """Side (px) the CNN resizes a `size`-px sample or tile to: `size` itself, or the backbone's native ImageNet
    input (Lite1 240, Lite2 260) where ``features.cnn.input_size`` is ``native``."""
    if cnn_config.get("input_size", "sample") != "native":
        return int(size)
    from cnn.backbones import BACKBONES

    name = cnn_config["backbone"]
    if name not in BACKBONES:
        raise ConfigError(f"features.cnn.input_size: native needs a built-in backbone ({', '.join(BACKBONES)}); "
                          f"{name!r} has no native input size. Use input_size: sample.")
    return int(BACKBONES[name][1])


# --------------------------------------------------------------------------------------------------------------------
_NOT_IDENTITY = ("n_jobs", "memory", "n_threads")  # how a step runs, not what it computes


def _identity(value: Any) -> Any:
    """A parameter value as it names a cached step's output: a nested estimator by its class only (its own
    parameters are listed flat by get_params(deep=True), where n_jobs / n_threads are dropped), lists and tuples
    element-wise (a Pipeline's steps, a FeatureUnion's transformer_list)."""
    if hasattr(value, "get_params") and not isinstance(value, type):
        return type(value).__qualname__
    if isinstance(value, (list, tuple)):
        return type(value)(_identity(v) for v in value)
    return value


class CachedTransformer(TransformerMixin, BaseEstimator):
    """Per-row disk cache around a stateless transformer: X (n, d) -> transformer's output (n, m).

    Each row's output is stored as `<cache_dir>/<step key>/<row hash>.npy`, where the step key hashes the
    transformer's class and parameters (n_jobs / n_threads / memory excluded, also inside nested steps) and a code
    version (`code_version`: the source of every module defining the transformer or one of its sub-estimators, so
    editing a feature invalidates its rows),
    and the row hash is the BLAKE2 digest of the row's float32 bytes. Only rows not yet in the cache are computed. `cache_dir=None` disables caching. Use it only for
    transformers whose output for a row does not depend on the data they were fitted on.
    """

    def __init__(self, transformer: Any = None, cache_dir: str | None = None) -> None:
        self.transformer = transformer
        self.cache_dir = cache_dir

    def fit(self, X: Any, y: Any = None) -> "CachedTransformer":
        """Fit a clone of the transformer (it learns only shapes); returns self."""
        X = validate_data(self, X, reset=True, dtype=np.float32)
        self.transformer_ = clone(self.transformer).fit(X[: min(len(X), 2)])
        return self

    def _step_key(self) -> str:
        params = {k: _identity(v) for k, v in self.transformer.get_params(deep=True).items()
                  if k.rsplit("__", 1)[-1] not in _NOT_IDENTITY}
        code = code_version(self.transformer)
        return (f"{type(self.transformer).__name__}-"
                f"{joblib.hash((type(self.transformer).__qualname__, params, code))[:16]}")

    def transform(self, X: Any) -> np.ndarray:
        """The transformer's output for each row, computed only for rows not in the cache."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float32)
        if not self.cache_dir:
            return np.asarray(self.transformer_.transform(X))
        folder = Path(self.cache_dir) / self._step_key()
        folder.mkdir(parents=True, exist_ok=True)
        keys = [hashlib.blake2b(np.ascontiguousarray(row).tobytes(), digest_size=16).hexdigest() for row in X]
        out: list[np.ndarray | None] = []
        missing = []
        for i, key in enumerate(keys):
            path = folder / f"{key}.npy"
            try:
                out.append(np.load(path))
            except (OSError, ValueError):
                out.append(None)
                missing.append(i)
        if missing:
            computed = np.asarray(self.transformer_.transform(X[missing]))
            for i, row in zip(missing, computed):
                out[i] = row
                tmp = folder / f".{keys[i]}.{os.getpid()}.tmp.npy"
                np.save(tmp, row)
                os.replace(tmp, folder / f"{keys[i]}.npy")
            log.debug("%s: computed %d rows, %d from cache", folder.name, len(missing), len(X) - len(missing))
        return np.stack(out) if out else np.zeros((0, 0), np.float32)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self)
        return np.asarray(self.transformer_.get_feature_names_out(), dtype=object)


# --------------------------------------------------------------------------------------------------------------------
class CenterCrop(TransformerMixin, BaseEstimator):
    """Central part of each image: X (n, H*W) -> (n, h*w), h = max(min(8, H), round(fraction * H)) (w likewise).

    Images are square (S = isqrt(n_features)) unless `image_shape` (H, W) is given; a row that is not a square
    image is one image row (1, n_features). Several CenterCrops in a FeatureUnion give multi-scale texture around a
    lesion centred in its sample (the lesion core vs the lesion with its surroundings). Keeps float32/float64.
    """

    def __init__(self, fraction: float = 0.5, image_shape: tuple[int, int] | None = None) -> None:
        self.fraction = fraction
        self.image_shape = image_shape

    def fit(self, X: Any, y: Any = None) -> "CenterCrop":
        """Learn the image shape and the crop; returns self."""
        from features._base import infer_image_shape

        if isinstance(self.fraction, bool) or not isinstance(self.fraction, (int, float)) or \
                not 0 < float(self.fraction) <= 1:
            raise ValueError(f"The 'fraction' parameter of CenterCrop must be a float in (0, 1]. "
                             f"Got {self.fraction!r} instead.")
        X = validate_data(self, X, reset=True, dtype=[np.float32, np.float64])
        self.image_shape_ = infer_image_shape(X.shape[1], self.image_shape)
        self.crop_shape_ = tuple(max(min(8, n), int(round(float(self.fraction) * n))) for n in self.image_shape_)
        return self

    def transform(self, X: Any) -> np.ndarray:
        """The central crop of each row's image, flattened."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float32, np.float64])
        (H, W), (h, w) = self.image_shape_, self.crop_shape_
        top, left = (H - h) // 2, (W - w) // 2
        return np.ascontiguousarray(X.reshape(-1, H, W)[:, top:top + h, left:left + w].reshape(len(X), h * w))

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self)
        return np.asarray([f"px{i}" for i in range(self.crop_shape_[0] * self.crop_shape_[1])], dtype=object)


# --------------------------------------------------------------------------------------------------------------------
class WeightedXGBClassifier(ClassifierMixin, BaseEstimator):
    """XGBoost classifier on any labels, class-weighted through sample_weight.

    `class_weight` has scikit-learn's meaning: None (no weights), "balanced" (inverse class frequency) or a dict
    {label: weight} (labels absent from it weigh 1). The former spelling "none" still means None, with a
    FutureWarning. Missing values (NaN) are XGBoost's own missing-value handling. `max_bin`: XGBoost's histogram
    bins per feature (its default 256; a tree's cost grows with bins x columns).
    """

    def __init__(self, n_estimators: int = 300, max_depth: int = 3, learning_rate: float = 0.05,
                 subsample: float = 0.8, colsample_bytree: float = 0.5, min_child_weight: float = 1.0,
                 reg_lambda: float = 1.0, class_weight: str | dict | None = "balanced", n_jobs: int = 1,
                 random_state: int = 0, max_bin: int = 256) -> None:
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.min_child_weight = min_child_weight
        self.reg_lambda = reg_lambda
        self.class_weight = class_weight
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.max_bin = max_bin

    def fit(self, X: Any, y: Any) -> "WeightedXGBClassifier":
        """Fit on (X, y); labels are encoded to 0..k-1; returns self."""
        import warnings

        from sklearn.utils.multiclass import check_classification_targets
        from xgboost import XGBClassifier

        X, y = validate_data(self, X, y, reset=True, ensure_all_finite="allow-nan")
        check_classification_targets(y)
        class_weight = self.class_weight
        if isinstance(class_weight, str) and class_weight == "none":
            warnings.warn("class_weight='none' is deprecated; pass None (scikit-learn's meaning: no weights)",
                          FutureWarning, stacklevel=2)
            class_weight = None
        if not (class_weight is None or isinstance(class_weight, dict)
                or (isinstance(class_weight, str) and class_weight == "balanced")):
            raise ValueError(f"The 'class_weight' parameter of WeightedXGBClassifier must be 'balanced', a dict "
                             f"{{label: weight}} or None. Got {self.class_weight!r} instead.")
        self.label_encoder_ = LabelEncoder().fit(y)
        self.classes_ = self.label_encoder_.classes_
        y_enc = self.label_encoder_.transform(y)
        if len(self.classes_) < 2:
            self.model_ = None
            return self
        weight = compute_sample_weight(class_weight, y) if class_weight is not None else None
        self.model_ = XGBClassifier(
            n_estimators=self.n_estimators, max_depth=self.max_depth, learning_rate=self.learning_rate,
            subsample=self.subsample, colsample_bytree=self.colsample_bytree, min_child_weight=self.min_child_weight,
            reg_lambda=self.reg_lambda, n_jobs=self.n_jobs, random_state=self.random_state, tree_method="hist",
            max_bin=int(self.max_bin),
            eval_metric="logloss" if len(self.classes_) == 2 else "mlogloss",
        )
        self.model_.fit(X, y_enc, sample_weight=weight)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """(n, k) class probabilities in `classes_` order."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, ensure_all_finite="allow-nan")
        if self.model_ is None:
            return np.ones((X.shape[0], 1))
        return self.model_.predict_proba(X)

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each row."""
        check_is_fitted(self)
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags

    def contributions(self, X: Any) -> np.ndarray:
        """XGBoost pred_contribs (SHAP values) in log-odds: (n, d + 1) binary or (n, k, d + 1) multiclass."""
        from xgboost import DMatrix

        check_is_fitted(self)
        X = validate_data(self, X, reset=False, ensure_all_finite="allow-nan")
        return self.model_.get_booster().predict(DMatrix(X), pred_contribs=True)


# --------------------------------------------------------------------------------------------------------------------
def _aligned_proba(estimator: Any, X: np.ndarray, k: int) -> np.ndarray:
    """(n, k) predict_proba of a classifier fitted on encoded labels 0..k-1, zero columns for classes it never saw."""
    out = np.zeros((len(X), k))
    out[:, np.asarray(estimator.classes_, dtype=int)] = estimator.predict_proba(X)
    return out


class _Scores(ClassifierMixin, BaseEstimator):
    """Passes stored class scores through as probabilities: the input a calibrator sees in ensemble=False mode.

    CalibratedClassifierCV calibrates an estimator's outputs on the rows it is fitted on; over FrozenEstimator of
    this, those outputs are the inner out-of-fold scores themselves (sklearn has no public "calibrate these scores").
    """

    def fit(self, X: Any, y: Any) -> "_Scores":
        """Remember the classes (the score columns, in order); returns self."""
        self.classes_ = np.unique(y)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """The scores themselves, (n, k)."""
        return np.asarray(X, dtype=float)

    def predict(self, X: Any) -> np.ndarray:
        """The class of the highest score (sklearn's calibration requires a predict)."""
        return self.classes_[np.argmax(np.asarray(X, dtype=float), axis=1)]


class PatientCalibratedClassifier(MetaEstimatorMixin, ClassifierMixin, BaseEstimator):
    """Calibrated classifier whose calibration data and operating point come from inside its own training data.

    holdout="cv", ensemble=True (the default): `CalibratedClassifierCV(estimator, cv=<inner patient-level stratified
    folds>, ensemble=True)`, a new row scored by the mean of the inner members; the operating point is chosen on the
    inner out-of-fold calibrated probabilities (each inner fold scored by the member fitted without it).
    holdout="cv", ensemble=False: the estimator is fitted on all rows and scores new rows; a calibrator
    (`CalibratedClassifierCV` over `FrozenEstimator` of the scores) is fitted on the inner out-of-fold scores, and
    the operating point on those calibrated scores, each from one model as a new row's is (not the default:
    docs/screening.md). holdout="split": the estimator is fitted on
    (1 - fraction) of the patients and calibrated, with `FrozenEstimator`, on the rest; the threshold is chosen on
    that calibration split.
    `fit(X, y, groups=None, augmented=None)`: groups are patient ids (None = one patient per row); `augmented` (bool
    per row) marks rows that only train (a training-time copy of an image, in its patient's group): they fit the
    models but are never held out, so calibration, `validation_index_` and every operating point come from original
    images alone. For binary problems `threshold_`
    is the highest threshold on the positive-class probability reaching `target_sensitivity` on that validation
    data; `validation_index_` lists the rows it was chosen on and `validation_proba_` their held-out probabilities.
    For multiclass problems with decision="ordinal" (classes ordered as given), `cutpoints_` are the cut-points on
    the expected class index that maximise quadratic kappa on that same validation data
    (pipeline.evaluation.ordinal), among those under which the lowest and the highest class keep
    `ordinal_min_recall` of their rows there (None: kappa alone); `cutpoints_min_recall_` is that floor where the
    cut-points keep it, else None (no floor asked, or none possible: fit_cutpoints warns). decision="argmax" (or
    binary) leaves them None.
    """

    def __init__(self, estimator: Any = None, method: str = "sigmoid", holdout: str = "cv", inner_folds: int = 3,
                 fraction: float = 0.25, target_sensitivity: float = 0.95, random_state: int = 0,
                 decision: str = "argmax", ensemble: bool = True, ordinal_min_recall: float | None = None) -> None:
        self.estimator = estimator
        self.method = method
        self.holdout = holdout
        self.inner_folds = inner_folds
        self.fraction = fraction
        self.target_sensitivity = target_sensitivity
        self.random_state = random_state
        self.decision = decision
        self.ensemble = ensemble
        self.ordinal_min_recall = ordinal_min_recall

    def fit(self, X: Any, y: Any, groups: Any = None, augmented: Any = None) -> "PatientCalibratedClassifier":
        """Fit, calibrate and choose the operating point on held-out patients of (X, y) (never on `augmented`
        rows); returns self."""
        if self.method not in ("sigmoid", "isotonic"):
            raise ValueError(f"The 'method' parameter of PatientCalibratedClassifier must be 'sigmoid' or "
                             f"'isotonic'. Got {self.method!r} instead.")
        if self.holdout not in ("cv", "split"):
            raise ValueError(f"The 'holdout' parameter of PatientCalibratedClassifier must be 'cv' or 'split'. "
                             f"Got {self.holdout!r} instead.")
        if self.decision not in ("argmax", "ordinal"):
            raise ValueError(f"The 'decision' parameter of PatientCalibratedClassifier must be 'argmax' or "
                             f"'ordinal'. Got {self.decision!r} instead.")
        from pipeline.evaluation.ordinal import check_min_recall

        check_min_recall(self.ordinal_min_recall, "The 'ordinal_min_recall' parameter of PatientCalibratedClassifier")
        from sklearn.utils.multiclass import check_classification_targets

        X, y = validate_data(self, X, y, reset=True, ensure_all_finite="allow-nan")
        check_classification_targets(y)
        if len(y) < 2:
            raise ValueError(f"PatientCalibratedClassifier needs at least 2 samples to hold out calibration data; "
                             f"got {len(y)} sample.")
        base = self.estimator if self.estimator is not None else WeightedXGBClassifier()
        self.label_encoder_ = LabelEncoder().fit(y)
        self.classes_ = self.label_encoder_.classes_
        y_enc = self.label_encoder_.transform(y)
        groups_given = groups
        groups = np.arange(len(y)) if groups is None else np.asarray(groups)
        if len(groups) != len(y):
            raise ValueError(f"groups has {len(groups)} entries but X has {len(y)} rows.")
        k = len(self.classes_)
        self.scorer_ = None
        copies = train_only_mask(augmented, len(y))
        if copies.any() and groups_given is None:
            raise ValueError("augmented rows need groups: a copy must share its original's patient id, or it would "
                             "train the model that scores its original; pass groups=<patient ids>")

        def folds(n_splits: int) -> list[tuple[np.ndarray, np.ndarray]]:
            if copies.any():
                return train_only_folds(y_enc, groups, copies, n_splits, self.random_state)
            return patient_stratified_folds(y_enc, groups, n_splits, self.random_state)

        if self.holdout == "cv" and not self.ensemble:
            splits = folds(self.inner_folds)
            val = np.concatenate([va for _, va in splits])
            raw = np.zeros((len(y), k))
            for tr, va in splits:
                member = clone(base).fit(X[tr], y_enc[tr])
                raw[np.ix_(va, np.asarray(member.classes_, dtype=int))] = member.predict_proba(X[va])
            self.scorer_ = clone(base).fit(X, y_enc)
            # one "fold" holding every row: a frozen scorer needs no folds (sklearn's default of 5 would demand
            # five rows of each class and only repeat the same scores)
            every = np.arange(len(val))
            cal = CalibratedClassifierCV(FrozenEstimator(_Scores().fit(raw, y_enc)), method=self.method,
                                         cv=[(every, every)])
            cal.fit(raw[val], y_enc[val])
            oof = np.zeros((len(y), k))
            oof[val] = cal.predict_proba(raw[val])
        elif self.holdout == "cv":
            splits = folds(self.inner_folds)
            cal = CalibratedClassifierCV(clone(base), method=self.method, cv=splits, ensemble=True)
            cal.fit(X, y_enc)
            val = np.concatenate([va for _, va in splits])
            oof = np.zeros((len(y), k))
            for (_, va), member in zip(splits, cal.calibrated_classifiers_):
                oof[va] = member.predict_proba(X[va])
        else:
            n_splits = max(2, int(round(1.0 / self.fraction)))
            tr, val = folds(n_splits)[0]
            fitted = clone(base).fit(X[tr], y_enc[tr])
            cal = CalibratedClassifierCV(FrozenEstimator(fitted), method=self.method)
            cal.fit(X[val], y_enc[val])
            oof = np.zeros((len(y), k))
            oof[val] = cal.predict_proba(X[val])
        self.calibrated_ = cal
        self.validation_index_ = np.sort(val)
        self.validation_proba_ = oof[self.validation_index_]  # held-out patients' probabilities (conformal,
        # per-density-group thresholds, screening's per-breast/per-exam thresholds)
        if k == 2:
            self.threshold_ = choose_threshold(y_enc[val], oof[val, 1], self.target_sensitivity)
        else:
            self.threshold_ = float("nan")
        self.cutpoints_ = self.cutpoints_min_recall_ = None
        if k > 2 and self.decision == "ordinal":
            from pipeline.evaluation.ordinal import fit_cutpoints, keeps_min_recall

            floor = self.ordinal_min_recall
            self.cutpoints_ = fit_cutpoints(y_enc[val], oof[val], min_recall=floor)
            if floor is not None and keeps_min_recall(y_enc[val], oof[val], self.cutpoints_, floor):
                self.cutpoints_min_recall_ = float(floor)  # the floor the cut-points keep (None: not kept)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """(n, k) calibrated probabilities in `classes_` order (rows sum to 1)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, ensure_all_finite="allow-nan")
        scorer = getattr(self, "scorer_", None)  # absent in models saved before ensemble=False existed
        if scorer is not None:
            X = _aligned_proba(scorer, X, len(self.classes_))
        p = np.asarray(self.calibrated_.predict_proba(X), dtype=float)
        return p / np.clip(p.sum(axis=1, keepdims=True), 1e-12, None)

    def decide(self, proba: np.ndarray) -> np.ndarray:
        """Class index of each row of (n, k) probabilities: binary, positive when p >= threshold_; multiclass,
        cut-points on the expected class (decision="ordinal") or the most probable class."""
        check_is_fitted(self)
        p = np.asarray(proba, dtype=float)
        if len(self.classes_) == 2:
            return (p[:, 1] >= self.threshold_).astype(int)
        if getattr(self, "cutpoints_", None) is not None:
            from pipeline.evaluation.ordinal import apply_cutpoints

            return apply_cutpoints(p, self.cutpoints_)
        return np.argmax(p, axis=1)

    def predict(self, X: Any) -> np.ndarray:
        """The class `decide` calls from the calibrated probabilities."""
        calls = self.decide(self.predict_proba(X))  # first: predict_proba raises NotFittedError before classes_
        return self.classes_[calls]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        base = self.estimator if self.estimator is not None else WeightedXGBClassifier()
        tags.input_tags.allow_nan = get_tags(base).input_tags.allow_nan
        return tags

    def base_estimators(self) -> list[Any]:
        """The fitted base estimators (one per inner fold, or one) behind the calibrators."""
        check_is_fitted(self)
        if getattr(self, "scorer_", None) is not None:
            return [self.scorer_]
        out = []
        for member in self.calibrated_.calibrated_classifiers_:
            est = member.estimator
            out.append(est.estimator if isinstance(est, FrozenEstimator) else est)
        return out


# --------------------------------------------------------------------------------------------------------------------
def _angles(n: int) -> list[float]:
    return [round(i * 180.0 / n, 4) for i in range(n)]


def build_pipeline(config: Mapping[str, Any], cache_dir: str | Path | None = None) -> Pipeline:
    """The experiment's Pipeline from a resolved config (pipeline.config.experiment.resolve_config).

    Feature cache: `cache_dir`, else the experiment's compute.cache_dir, else none (pipeline.compute.resolve_compute).
    The steps that split their training data (calibration's inner folds, fine-tuning's early-stopping split) request
    the patient `groups` by metadata routing: fit it with pipeline.model.routing.fit_with_groups.
    """
    from features.clahe import CLAHE
    from features.handcrafted import handcrafted_union
    from features.masking import BreastMask
    from features.unsharp import UnsharpMask

    pre, feats, mdl = config["preprocessing"], config["features"], config["model"]
    from pipeline.compute import resolve_compute
    from pipeline.model.routing import request_groups
    from pipeline.config.tasks import get_task

    builder = get_task(config["dataset"]["task"]).pipeline_builder
    if builder != "standard":  # a task with its own Pipeline (screening: whole breast + tiles at high resolution)
        return _pipeline_builder(builder)(config, cache_dir)

    cal, ev = config["calibration"], config["evaluation"]
    compute = resolve_compute(config, cache_dir=cache_dir, default_cache=False)
    cache = str(compute.cache_dir) if compute.cache_dir else None
    mask = bool(pre.get("breast_mask", True))

    enhance: list[tuple[str, Any]] = []
    if pre["clahe"]["enabled"]:
        enhance.append(("clahe", CLAHE(clip_limit=pre["clahe"]["clip_limit"], kernel_size=pre["clahe"]["kernel_size"],
                                       keep_zero=mask)))
    if pre["unsharp"]["enabled"]:
        enhance.append(("unsharp", UnsharpMask(radius=pre["unsharp"]["radius"], amount=pre["unsharp"]["amount"],
                                               keep_zero=mask)))
    cn = feats["cnn"]
    # CNN input "raw": the shared step only masks; the enhancement moves into the handcrafted branch, so the CNN
    # embeds the sample with its natural contrast while the texture features still measure the enhanced image
    own_enhancement = bool(enhance) and cn["enabled"] and cn.get("input", "enhanced") == "raw"
    # the whole-breast mask is re-estimated on density samples only: a lesion crop is not a whole breast (Otsu on a
    # crop zeroes darker tissue inside it); its background is already zero from the full-image mask (pipeline.samples)
    whole_breast = get_task(config["dataset"]["task"]).whole_breast
    steps: list[tuple[str, Any]] = [("mask", BreastMask())] if mask and whole_breast else []
    if not own_enhancement:
        steps += enhance
    preprocess = CachedTransformer(Pipeline(steps), cache) if steps else "passthrough"

    union_steps: list[tuple[str, Any]] = []
    hc = feats["handcrafted"]
    if hc["enabled"]:
        glcm = hc["glcm"]

        def union() -> FeatureUnion:
            return handcrafted_union(
                distances=tuple(glcm["distances"]), angles=tuple(_angles(glcm["angles"])), levels=glcm["levels"],
                bins=hc["intensity"]["bins"], mask="nonzero" if mask else None)

        scales = [float(v) for v in hc["scales"]]
        if scales == [1.0]:
            branch: Any = union()
        else:
            branch = FeatureUnion([(f"s{int(round(100 * f))}", union() if f == 1.0 else
                                    Pipeline([("crop", CenterCrop(f)), ("features", union())])) for f in scales])
        front = [("enhance", Pipeline(enhance))] if own_enhancement else []
        if hc.get("exclude_pectoral", False):  # zero the MLO pectoral muscle: GLCM/intensity measure the breast only
            from features.pectoral import PectoralMask

            front.insert(0, ("pectoral", PectoralMask()))
        if front:
            branch = Pipeline(front + [("features", branch)])
        union_steps.append(("handcrafted", CachedTransformer(branch, cache)))
    dn = feats.get("density", {})
    if dn.get("enabled", False):  # percent-density features (features.density) of the sample the union receives
        from features.density import DensityFeatures

        union_steps.append(("density", CachedTransformer(DensityFeatures(
            relative_thresholds=tuple(dn["relative_thresholds"]), offsets=tuple(dn["offsets"]),
            fat_percentile=dn["fat_percentile"], core_fraction=dn["core_fraction"],
            exclude_pectoral=dn["exclude_pectoral"]), cache)))
    if cn["enabled"]:
        size = cnn_input_size(cn, int(config["samples"]["size"]))
        if cn["finetune"]["enabled"]:
            from cnn.finetune import FineTunedEmbedder

            union_steps.append(("cnn", request_groups(FineTunedEmbedder(
                backbone=cn["backbone"], weights=cn["weights"], pooling=cn["pooling"], input_size=size,
                batch_size=cn["batch_size"], epochs=cn["finetune"]["epochs"], lr=cn["finetune"]["learning_rate"],
                patience=cn["finetune"]["patience"], finetune_batch_size=cn["finetune"]["batch_size"],
                trainable_stages=cn["finetune"]["trainable_stages"], device=cn["finetune"]["device"],
                random_state=ev["seed"]))))
        else:
            from cnn.embedder import CNNEmbedder

            embed: Any = CNNEmbedder(backbone=cn["backbone"], weights=cn["weights"], pooling=cn["pooling"],
                                     input_size=size, batch_size=cn["batch_size"])
            if cn.get("exclude_pectoral", False):  # the CNN sees the breast without its MLO pectoral muscle
                from features.pectoral import PectoralMask

                embed = Pipeline([("pectoral", PectoralMask()), ("embed", embed)])
            union_steps.append(("cnn", CachedTransformer(embed, cache)))
    k_best = feats["selection"]["k_best"]
    select: Any = MutualInfoSelector(k=k_best, random_state=ev["seed"]) if k_best else "passthrough"
    clf = PatientCalibratedClassifier(
        WeightedXGBClassifier(
            n_estimators=mdl["n_estimators"], max_depth=mdl["max_depth"], learning_rate=mdl["learning_rate"],
            subsample=mdl["subsample"], colsample_bytree=mdl["colsample_bytree"],
            min_child_weight=mdl["min_child_weight"], reg_lambda=mdl["reg_lambda"],
            class_weight=None if mdl["class_weight"] == "none" else mdl["class_weight"], n_jobs=compute.n_jobs,
            random_state=ev["seed"], max_bin=mdl["max_bin"]),
        method=cal["method"], holdout=cal["holdout"], inner_folds=cal["inner_folds"], fraction=cal["fraction"],
        ensemble=cal["ensemble"], target_sensitivity=ev["target_sensitivity"], random_state=ev["seed"],
        decision=get_task(config["dataset"]["task"]).classifier_decision(config),
        ordinal_min_recall=ev.get("ordinal_min_recall"))
    return Pipeline([("preprocess", preprocess), ("features", FeatureUnion(union_steps)), ("select", select),
                     ("classifier", request_groups(clf))])


def _pipeline_builder(name: str) -> Any:
    """The `build(config, cache_dir) -> Pipeline` function a Task's `pipeline_builder` names (imported lazily)."""
    if name == "tiles":
        from pipeline.model.screening import build_screening_pipeline

        return build_screening_pipeline
    raise ValueError(f"unknown pipeline builder {name!r}; known: standard, tiles")


class MutualInfoSelector(SelectorMixin, BaseEstimator):
    """Keep the k features with the highest mutual information with y (fitted on the training fold only)."""

    def __init__(self, k: int = 100, random_state: int = 0) -> None:
        self.k = k
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> "MutualInfoSelector":
        """Score each feature's mutual information with y (NaN counted as 0); returns self."""
        X, y = validate_data(self, X, y, reset=True, ensure_all_finite="allow-nan")
        if len(y) < 2:
            raise ValueError(f"MutualInfoSelector needs at least 2 samples to estimate mutual information; got "
                             f"{len(y)} sample.")
        self.scores_ = mutual_info_classif(np.nan_to_num(X), y, random_state=self.random_state)
        return self

    def _get_support_mask(self) -> np.ndarray:
        check_is_fitted(self)
        k = min(int(self.k), len(self.scores_))
        mask = np.zeros(len(self.scores_), dtype=bool)
        mask[np.argsort(-self.scores_, kind="stable")[:k]] = True
        return mask

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.target_tags.required = True
        return tags


def enhanced_view(pipeline: Pipeline, X: np.ndarray) -> np.ndarray:
    """What a fitted model's texture features measure for X (n, S*S): its shared preprocessing, then the handcrafted
    branch's own enhancement where it has one (CNN input "raw"); float32 (n, S*S)."""
    pre = pipeline.named_steps.get("preprocess", "passthrough")
    out = np.asarray(pre.transform(X) if pre not in (None, "passthrough") else X, dtype=np.float32)
    branch = dict(pipeline.named_steps["features"].transformer_list).get("handcrafted")
    inner = getattr(branch, "transformer_", branch)
    enhance = getattr(inner, "named_steps", {}).get("enhance")
    return np.asarray(enhance.transform(out), dtype=np.float32) if enhance is not None else out


def final_classifier(pipeline: Any) -> PatientCalibratedClassifier:
    """The calibrated classifier at the end of a fitted Pipeline (of a fitted search: of its best pipeline)."""
    pipeline = getattr(pipeline, "best_estimator_", pipeline)
    return pipeline.steps[-1][1]


def disable_cache(pipeline: Pipeline) -> Pipeline:
    """Turn off every CachedTransformer's disk cache (for a model that leaves this machine); returns it."""
    for _, est in _walk(pipeline):
        if isinstance(est, CachedTransformer):
            est.cache_dir = None
    return pipeline


def _walk(est: Any, name: str = ""):
    yield name, est
    for attr in ("steps", "transformer_list"):
        for sub_name, sub in getattr(est, attr, []) or []:
            yield from _walk(sub, f"{name}__{sub_name}" if name else sub_name)
    inner = getattr(est, "transformer_", None)
    if inner is not None:
        yield from _walk(inner, f"{name}__transformer_")
