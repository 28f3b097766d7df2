"""Benchmark: does the multi-view context stage learn view presence? The shipped CDD-CESM screening recipe on the
normal set and on an artefact set (the contralateral breast of every malignant exam dropped, so that "one breast
only" predicts cancer, as in an external screening set the maintainers ran), each with the context stage with and without presence
flags (``screening.context_presence``), paired on one set of folds and patient resamples; plus the shortcut audit
(pipeline.training.audit) of each set.

    nice -n 10 .venv/bin/python benchmarks/shortcut.py stage      # the first stage's CV on both sets (slow, cached)
    nice -n 10 .venv/bin/python benchmarks/shortcut.py compare    # the context variants + audit (seconds)
    nice -n 10 .venv/bin/python benchmarks/shortcut.py proxy      # the same with a cheap proxy first stage (~1 min)
    nice -n 10 .venv/bin/python benchmarks/shortcut.py light      # ... with the plain recipe minus its CNN (minutes)

`stage` keeps each fold's first-stage outputs (training rows' inner out-of-fold probabilities, test probabilities)
and every image's tile-max block in <out>/<set>.npz: every context variant then reads the same first stage, so the
difference between them is the context stage alone.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Mapping

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.config.experiment import load_experiment  # noqa: E402
from pipeline.evaluation.splits import patient_stratified_folds  # noqa: E402
from pipeline.paths import default_cache_dir  # noqa: E402

EXPERIMENT = ROOT / "experiments" / "cdd_cesm_screening.yaml"
log = logging.getLogger("shortcut")


def artefact_rows(table: pd.DataFrame, label: np.ndarray) -> np.ndarray:
    """Positions of the rows kept in the artefact set: every exam with a malignant image loses the breast(s) without
    one (women with cancer come with one breast's views only, cancer-free women with both)."""
    from pipeline.io.exams import level_ids

    ids = level_ids(table.reset_index(drop=True))
    df = pd.DataFrame({"exam": ids["exam"], "breast": ids["breast"], "y": np.asarray(label, int)})
    exam_pos = df.groupby("exam")["y"].transform("max").to_numpy() > 0
    breast_pos = df.groupby("breast")["y"].transform("max").to_numpy() > 0
    return np.flatnonzero(~exam_pos | breast_pos)


def stage(out: Path, sets: list[str]) -> None:
    """First-stage CV of the shipped recipe on each set; fold outputs and the tile-max block to <out>/<set>.npz.
    Trained as `mammoscope train` does: every image's front features streamed once into the cache, the head
    cross-validated on the feature rows."""
    from sklearn.base import clone

    from pipeline.model.estimators import build_pipeline, final_classifier
    from pipeline.model.screening import tile_max_block
    from pipeline.training.cv import cross_validate
    from pipeline.training.train import head_pipeline, load_task_features

    cfg = load_experiment(EXPERIMENT).config
    cache = default_cache_dir()
    t0 = time.perf_counter()
    data = load_task_features(cfg, log.info, cache_dir=cache, progress_bar=True)
    log.info("features: %.0f s", time.perf_counter() - t0)
    head = head_pipeline(build_pipeline(cfg, cache), data)
    for name in sets:
        rows = np.arange(len(data.y)) if name == "normal" else artefact_rows(data.table, data.y)
        table, y, F = data.table.iloc[rows].reset_index(drop=True), data.y[rows], data.features[rows]
        groups = table["patient_id"].astype(str).to_numpy()
        folds = patient_stratified_folds(y, groups, cfg["evaluation"]["folds"], cfg["evaluation"]["seed"])
        record: dict[str, np.ndarray] = {"rows": rows, "y": y}

        def on_fold(i: int, tr: np.ndarray, te: np.ndarray, est, p: np.ndarray) -> None:
            clf = final_classifier(est)
            record.update({f"tr{i}": tr, f"te{i}": te, f"vi{i}": clf.validation_index_,
                           f"vp{i}": clf.validation_proba_[:, 1], f"p{i}": p[:, 1]})
            log.info("%s fold %d done (%.0f s)", name, i + 1, time.perf_counter() - t0)

        cross_validate(lambda: clone(head), F, y, groups, folds, route_groups=True, on_fold=on_fold)
        record["M"] = tile_max_block(cfg, features=F)
        record["n_folds"] = np.array(len(folds))
        np.savez_compressed(out / f"{name}.npz", **record)
        table.to_csv(out / f"{name}.csv", index=False)
        log.info("%s: %d images, first stage saved (%.0f s)", name, len(y), time.perf_counter() - t0)


def stage_light(out: Path) -> None:
    """The `stage` files of the normal set with the plain whole-breast recipe without its CNN as the first stage
    (224 px, CLAHE, unsharp, GLCM + histogram -> calibrated XGBoost: a trained first stage a 2-core machine fits in
    minutes), to <out>/light-normal.npz; `compare --prefix light-` derives the artefact set from it."""
    from sklearn.base import clone

    from pipeline.model.estimators import build_pipeline, final_classifier
    from pipeline.model.screening import whole_image_config
    from pipeline.samples import load_samples
    from pipeline.training.cv import cross_validate
    from pipeline.training.train import task_table

    cfg = load_experiment(EXPERIMENT, ["features.cnn.enabled=false"]).config
    table, classes, _ = task_table(cfg)
    t0 = time.perf_counter()
    X, errors = load_samples(table, "density", size=int(cfg["samples"]["size"]), n_jobs=2)
    if len(errors):
        table = table.drop(index=[int(p) for p in errors["position"]]).reset_index(drop=True)
    y = (table["screening"].astype(str) == classes[1]).to_numpy(int)
    groups = table["patient_id"].astype(str).to_numpy()
    folds = patient_stratified_folds(y, groups, cfg["evaluation"]["folds"], cfg["evaluation"]["seed"])
    pipe = build_pipeline(whole_image_config(cfg), default_cache_dir() / "shortcut-light")
    record: dict[str, np.ndarray] = {"rows": np.arange(len(y)), "y": y, "n_folds": np.array(len(folds))}

    def on_fold(i: int, tr: np.ndarray, te: np.ndarray, est, p: np.ndarray) -> None:
        clf = final_classifier(est)
        record.update({f"tr{i}": tr, f"te{i}": te, f"vi{i}": clf.validation_index_,
                       f"vp{i}": clf.validation_proba_[:, 1], f"p{i}": p[:, 1]})
        log.info("light fold %d done (%.0f s)", i + 1, time.perf_counter() - t0)

    cross_validate(lambda: clone(pipe), X, y, groups, folds, route_groups=True, on_fold=on_fold)
    np.savez_compressed(out / "light-normal.npz", **record)
    table.to_csv(out / "light-normal.csv", index=False)


def proxy_score(path: str) -> float:
    """A cheap single-image score with no training: the 99th percentile of the image's bright (breast) pixels at
    ~128 px (contrast-enhancing lesions are bright in CDD-CESM's subtracted images)."""
    from PIL import Image

    with Image.open(path) as im:
        im.draft("L", (128, 128))
        a = np.asarray(im.convert("L").reduce(max(1, im.size[0] // 128)), np.float32) / 255
    bright = a[a > 0.05]
    return float(np.clip(np.quantile(bright, 0.99) if bright.size else 0.0, 0.01, 0.99))


def stage_proxy(out: Path, sets: list[str]) -> None:
    """The `stage` files with `proxy_score` as the first stage (its inner out-of-fold probabilities: the score
    itself, as nothing is fitted), to <out>/proxy-<set>.npz: the comparison in seconds, without the CNN recipe."""
    from pipeline.training.train import task_table

    cfg = load_experiment(EXPERIMENT).config
    full, classes, _ = task_table(cfg)
    y_full = (full["screening"].astype(str) == classes[1]).to_numpy(int)
    score_full = np.array([proxy_score(p) for p in full["path"]])
    for name in sets:
        rows = np.arange(len(y_full)) if name == "normal" else artefact_rows(full, y_full)
        table, y, score = full.iloc[rows].reset_index(drop=True), y_full[rows], score_full[rows]
        groups = table["patient_id"].astype(str).to_numpy()
        folds = patient_stratified_folds(y, groups, cfg["evaluation"]["folds"], cfg["evaluation"]["seed"])
        record: dict[str, np.ndarray] = {"rows": rows, "y": y, "n_folds": np.array(len(folds))}
        for i, (tr, te) in enumerate(folds):
            record.update({f"tr{i}": tr, f"te{i}": te, f"vi{i}": np.arange(len(tr)), f"vp{i}": score[tr],
                           f"p{i}": score[te]})
        np.savez_compressed(out / f"proxy-{name}.npz", **record)
        table.to_csv(out / f"proxy-{name}.csv", index=False)
        log.info("proxy %s: %d images saved", name, len(y))


def derive_artefact(z: Mapping[str, np.ndarray], table: pd.DataFrame) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """The artefact set's stage record from the normal set's (when its own first-stage CV was not run): the kept
    rows, each fold's training / test rows and inner out-of-fold probabilities restricted to them (patients stay
    whole, so the folds stay patient-level). The first stage was then fitted on the normal set's training images;
    the context stage, where the shortcut lives, sees only the artefact set's rows."""
    y = z["y"]
    rows = artefact_rows(table, y)
    new = np.full(len(y), -1)
    new[rows] = np.arange(len(rows))
    out: dict[str, np.ndarray] = {"rows": rows, "y": y[rows], "n_folds": z["n_folds"]}
    if "M" in z:
        out["M"] = z["M"][rows]
    for i in range(int(z["n_folds"])):
        tr, te, vi = z[f"tr{i}"], z[f"te{i}"], z[f"vi{i}"]
        keep_tr, keep_te = new[tr] >= 0, new[te] >= 0
        tr_new = new[tr[keep_tr]]
        position = np.full(len(tr), -1)
        position[np.flatnonzero(keep_tr)] = np.arange(keep_tr.sum())
        keep_vi = position[vi] >= 0
        out.update({f"tr{i}": tr_new, f"te{i}": new[te[keep_te]], f"vi{i}": position[vi[keep_vi]],
                    f"vp{i}": z[f"vp{i}"][keep_vi], f"p{i}": z[f"p{i}"][keep_te]})
    return out, table.iloc[rows].reset_index(drop=True)


def _paired_auc_difference(y: np.ndarray, a: np.ndarray, b: np.ndarray, patients: np.ndarray, n: int = 1000,
                           seed: int = 0) -> tuple[float, float, float]:
    """AUC(a) - AUC(b) on the same images, with a 95% CI from patient-level bootstrap resamples (paired)."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    ids, inverse = np.unique(patients, return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(len(ids))]
    diffs = []
    for _ in range(n):
        rows = np.concatenate([members[k] for k in rng.integers(0, len(ids), len(ids))])
        if len(np.unique(y[rows])) == 2:
            diffs.append(roc_auc_score(y[rows], a[rows]) - roc_auc_score(y[rows], b[rows]))
    low, high = np.quantile(diffs, [0.025, 0.975])
    return float(roc_auc_score(y, a) - roc_auc_score(y, b)), float(low), float(high)


def compare(out: Path, sets: list[str], prefix: str = "") -> dict:
    """Per set: the first stage alone and the context stage with / without presence flags on the saved first-stage
    folds (image / breast / exam AUC [CI], spec at the in-fold 95%-sensitivity threshold), paired differences, and
    the shortcut audit; printed and written to <out>/compare.json."""
    import json

    from pipeline.training.audit import shortcut_audit
    from pipeline.training.levels import LevelTracker
    from pipeline.model.screening import asymmetry_C, context_C

    cfg = load_experiment(EXPERIMENT).config
    ev = cfg["evaluation"]
    kw = dict(n_resamples=int(ev["bootstrap_resamples"]), confidence_level=ev["confidence_level"], seed=ev["seed"],
              ece_bins=ev["ece_bins"])
    report: dict = {}
    for name in sets:
        derived = name == "artefact" and not (out / f"{prefix}{name}.npz").is_file()
        if derived:  # the normal set's first stage, restricted to the artefact set's rows
            z, table = derive_artefact(
                dict(np.load(out / f"{prefix}normal.npz")),
                pd.read_csv(out / f"{prefix}normal.csv", dtype={"patient_id": str, "sample_id": str}))
            log.info("artefact: first stage derived from the normal set's folds (its own CV was not run)")
        else:
            z = np.load(out / f"{prefix}{name}.npz")
            table = pd.read_csv(out / f"{prefix}{name}.csv", dtype={"patient_id": str, "sample_id": str})
        y, M = z["y"], (z["M"] if "M" in z else None)  # the proxy has no tile-max block: no asymmetry
        folds = [(z[f"tr{i}"], z[f"te{i}"]) for i in range(int(z["n_folds"]))]
        first = np.zeros(len(y))
        for i, (_, te) in enumerate(folds):
            first[te] = z[f"p{i}"]
        arms = {"image alone": None, "context, presence flags": True, "context, no presence flag": False}
        figures, image_p = {}, {}
        for arm, presence in arms.items():
            tracker = LevelTracker(table, y, ev["target_sensitivity"], cfg["screening"]["view_fusion"],
                                   None if presence is None else context_C(cfg), False,
                                   None if presence is None or M is None else (M, asymmetry_C(cfg)),
                                   context_presence=True if presence is None else presence)
            for i, (tr, te) in enumerate(folds):
                vp = z[f"vp{i}"]
                clf = SimpleNamespace(validation_index_=z[f"vi{i}"], validation_proba_=np.column_stack([1 - vp, vp]))
                p = z[f"p{i}"]
                tracker.on_fold(i, tr, te, SimpleNamespace(steps=[("classifier", clf)]), np.column_stack([1 - p, p]))
            figures[arm] = tracker.metrics(first, **kw)
            image_p[arm] = tracker.image_proba(first)
        patients = table["patient_id"].astype(str).to_numpy()
        diffs = {"flags - no flag": _paired_auc_difference(y, image_p["context, presence flags"],
                                                           image_p["context, no presence flag"], patients),
                 "no flag - image alone": _paired_auc_difference(y, image_p["context, no presence flag"],
                                                                 image_p["image alone"], patients),
                 "flags - image alone": _paired_auc_difference(y, image_p["context, presence flags"],
                                                               image_p["image alone"], patients)}
        audit = shortcut_audit(table, y, folds, n_resamples=int(ev["bootstrap_resamples"]), seed=int(ev["seed"]))
        report[name] = {"first_stage": "derived from the normal set's CV" if derived else "own CV",
                        "n_images": int(len(y)), "n_malignant": int(y.sum()),
                        "n_patients": int(table["patient_id"].nunique()),
                        "arms": {a: {k: float(v) for k, v in m.items()} for a, m in figures.items()},
                        "image_auc_differences": diffs, "audit": audit.to_dict()}
        print(f"\n== {prefix}{name}: {len(y)} images ({int(y.sum())} malignant), {table['patient_id'].nunique()} patients")
        for arm, m in figures.items():
            print(f"  {arm:28s} " + "  ".join(
                f"{lv} {m[f'{lv}_roc_auc']:.3f} [{m[f'{lv}_roc_auc_ci_low']:.3f}-{m[f'{lv}_roc_auc_ci_high']:.3f}]"
                f" spec {m[f'{lv}_spec_at_target']:.2f}" for lv in ("image", "breast", "exam")))
        for what, (d, lo, hi) in diffs.items():
            print(f"  image AUC {what}: {d:+.3f} [{lo:+.3f}, {hi:+.3f}] (paired, patient bootstrap)")
        print(f"  audit flagged: {audit.flagged or 'nothing'}")
    (out / f"{prefix}compare.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("step", choices=("stage", "compare", "proxy", "light"))
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "shortcut")
    ap.add_argument("--sets", nargs="+", default=["normal", "artefact"], choices=("normal", "artefact"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.step == "stage":
        stage(args.out, args.sets)
    elif args.step == "light":  # the plain recipe without its CNN as the first stage, then the comparison
        stage_light(args.out)
        compare(args.out, args.sets, prefix="light-")
    elif args.step == "proxy":  # the cheap first stage, then its comparison
        stage_proxy(args.out, args.sets)
        compare(args.out, args.sets, prefix="proxy-")
    else:
        compare(args.out, args.sets)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
