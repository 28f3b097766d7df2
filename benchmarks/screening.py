"""Benchmark of screening mode against the plain whole-image recipe, patient-level 5-fold CV (seed 0), same folds.

Prints for each dataset (CDD-CESM malignant vs not, mini-MIAS malignant images vs the rest), at image, breast
(views fused by the experiment's view_fusion) and exam (most suspicious breast) level: ROC AUC [95% CI] and the
specificity at the threshold chosen inside the training folds for 95% sensitivity, with the sensitivity reached;
for the screening recipe also the training time from an empty feature cache (samples + every image's features,
streamed on worker processes as `train` does, + the final fit and exam stage on the feature rows), the time to score
one image from its file (2 threads, no cache) and the peak memory of this process.

Plain recipe: pad to square, 224 px, CLAHE, unsharp mask, GLCM (64 levels) + 32-bin histogram + first-order
statistics, frozen EfficientNet-Lite0, XGBoost with sigmoid calibration (experiments/defaults.yaml, density-style
whole-breast sample, binary labels).

Run: nohup .venv/bin/python benchmarks/screening.py > screening.log 2>&1 &   (--datasets mias for the short one,
--max-images 60 for a smoke run). Timings are wall-clock on a shared machine: treat them as noisy.
"""
from __future__ import annotations

import argparse
import logging
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.base import clone

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config.experiment import load_experiment  # noqa: E402
from pipeline.evaluation.metrics import binary_metrics  # noqa: E402
from pipeline.evaluation.splits import patient_stratified_folds  # noqa: E402
from pipeline.io.imageio import read_image  # noqa: E402
from pipeline.paths import default_cache_dir  # noqa: E402
from pipeline.samples import highres_sample, load_samples, sample_side  # noqa: E402
from pipeline.model.levels import LEVELS  # noqa: E402
from pipeline.training.levels import cross_validate_levels  # noqa: E402
from pipeline.model.estimators import build_pipeline, disable_cache  # noqa: E402
from pipeline.model.screening import (asymmetry_C, context_auto, context_C, context_presence,  # noqa: E402
                                      whole_image_config)
from pipeline.training.train import fit_final, head_pipeline, load_task_features  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = {"cdd": ROOT / "experiments" / "cdd_cesm_screening.yaml", "mias": ROOT / "experiments" / "mias_screening.yaml"}


def peak_mib() -> float:
    """Peak resident memory of this process so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def line(name: str, m: dict) -> str:
    """One printed row: per level AUC [CI] and spec @ in-fold 95%-sens threshold (sens reached)."""
    cells = [f"{lv:>6} AUC {m[f'{lv}_roc_auc']:.3f} [{m[f'{lv}_roc_auc_ci_low']:.3f}-{m[f'{lv}_roc_auc_ci_high']:.3f}]"
             f" spec {m[f'{lv}_spec_at_target']:.2f} (sens {m[f'{lv}_sens_at_target']:.2f}, n {int(m[f'{lv}_n'])})"
             for lv in LEVELS]
    return f"{name:<10}" + " | ".join(cells)


def density_lines(name: str, cv, data, ev: dict) -> list[str]:
    """Image-level AUC [CI] and spec @ in-fold 95%-sens threshold (sens reached) within dense and non-dense images
    (the experiment's dataset.dense_classes; images of unknown density left out); none without density."""
    dense_classes = {str(d) for d in (data.dense_classes or [])}
    density = pd.Series(list(data.density), dtype=object)
    known = (density.notna() & (density.astype(str) != "")).to_numpy()
    if not dense_classes or not known.any():
        return []
    is_dense = density.astype(str).isin(dense_classes).to_numpy()
    oof = cv.oof
    call = np.array([cv.calls["image"][k] for k in oof["sample_id"]])
    scored = oof["p_context"] if "p_context" in oof else oof["p"]  # what the image level is scored on (and called)
    kw = dict(n_resamples=ev["bootstrap_resamples"], confidence_level=ev["confidence_level"], seed=ev["seed"])
    out = []
    for group, sel in (("dense", known & is_dense), ("non-dense", known & ~is_dense)):
        y, p = oof["y"].to_numpy()[sel], scored.to_numpy()[sel]
        m = binary_metrics(y, p, call[sel], **kw)
        out.append(f"{name:<10}{group:>9} n {int(m['n'])} ({int(m['n_positive'])} malignant): AUC {m['roc_auc']:.3f} "
                   f"[{m['roc_auc_ci_low']:.3f}-{m['roc_auc_ci_high']:.3f}] spec {m['spec_at_target']:.2f} "
                   f"[{m['spec_at_target_ci_low']:.2f}-{m['spec_at_target_ci_high']:.2f}] "
                   f"(sens {m['sens_at_target']:.2f} [{m['sens_at_target_ci_low']:.2f}-{m['sens_at_target_ci_high']:.2f}])")
    return out


def score_time(pipe, table, side: int, n: int, aspect: float = 1.0) -> float:
    """Seconds to score one image from its file: read, screening sample, features, classifier (no cache)."""
    fitted = disable_cache(pipe)
    rows = table.head(n + 1)
    t0 = time.perf_counter()
    for i, r in enumerate(rows.itertuples()):
        if i == 1:  # the first image warms the networks up: not timed
            t0 = time.perf_counter()
        image, meta = read_image(r.path)
        lat = r.laterality if isinstance(r.laterality, str) else meta.laterality
        sample, _ = highres_sample(image, lat, side, r.path, aspect=aspect)
        fitted.predict_proba(sample.reshape(1, -1))
    return (time.perf_counter() - t0) / max(len(rows) - 1, 1)


def compare_with_plain(name: str, config: dict, data, folds: list, scr, cache: Path) -> None:
    """The plain whole-image recipe's CV on the same images and folds, printed beside the screening CV `scr`."""
    ev, how = config["evaluation"], config["screening"]["view_fusion"]
    plain_cfg = whole_image_config(config)
    X224, errors = load_samples(data.table, "density", size=int(config["samples"]["size"]))
    assert errors.empty, errors.head()
    plain_pipe = build_pipeline(plain_cfg, cache / "plain")
    plain = cross_validate_levels(lambda: clone(plain_pipe), X224, data.y, data.table, ev, how, folds, progress=print)
    del X224

    print(f"\n## {name}: patient-level {ev['folds']}-fold CV, seed {ev['seed']}, 95% bootstrap CIs, "
          f"breast = views fused by {how}, exam = most suspicious breast")
    print(line("plain", plain.metrics))
    print(line("screening", scr.metrics))
    for lv in LEVELS:
        half = (plain.metrics[f"{lv}_roc_auc_ci_high"] - plain.metrics[f"{lv}_roc_auc_ci_low"]) / 2
        gain = scr.metrics[f"{lv}_roc_auc"] - plain.metrics[f"{lv}_roc_auc"]
        print(f"{lv}: AUC gain {gain:+.3f} vs plain CI half-width {half:.3f} -> {'beats' if gain >= half else 'does not beat'}")
    dens = density_lines("plain", plain, data, ev) + density_lines("screening", scr, data, ev)
    if dens:
        print(f"image level by density (dense = {', '.join(map(str, data.dense_classes))}; spec and sens at the "
              "same in-fold image threshold as above):")
        print("\n".join(dens))


def run(name: str, args: argparse.Namespace) -> None:
    overrides = {"compute": {"n_jobs": 2}}
    if args.max_images:
        overrides["dataset"] = {"max_samples": args.max_images}
    config = load_experiment(EXPERIMENTS[name], overrides).config
    ev, how = config["evaluation"], config["screening"]["view_fusion"]
    cold = args.screening_cache or Path(tempfile.mkdtemp(prefix="screening_cold_", dir=args.cache))
    print(f"== {name}: {config['name']} ({'given' if args.screening_cache else 'cold'} cache {cold})", flush=True)
    # screening training as `train` runs it: samples + whole-breast features + tile matrices streamed on worker
    # processes into the cache, the final fit and the exam stage on the feature rows
    t0 = time.perf_counter()
    data = load_task_features(config, progress=print, cache_dir=cold)
    side = sample_side(config["samples"]["size"], config["screening"]["scale"])
    stages = {"samples + features (streamed)": time.perf_counter() - t0}
    groups = data.groups
    folds = patient_stratified_folds(data.y, groups, ev["folds"], ev["seed"])
    print(f"{len(data.y)} images, {data.y.sum()} malignant, {len(set(groups))} patients; {side} px samples, "
          f"features {data.features.shape}", flush=True)
    t = time.perf_counter()
    final = fit_final(config, data, cold)  # the ExamModel: image head, context stage, map scorer, thresholds
    stages["final fit (ExamModel)"] = time.perf_counter() - t
    t_train = sum(stages.values())
    print(f"screening: trained on all images from an empty cache in {t_train:.0f} s ({t_train / 60:.1f} min): "
          + ", ".join(f"{k} {v:.0f} s" for k, v in stages.items())
          + f"; peak memory {peak_mib():.0f} MiB", flush=True)
    head = head_pipeline(build_pipeline(config, cold), data)
    scr = cross_validate_levels(lambda: clone(head), data.features, data.y, data.table, ev, how, folds,
                                progress=print, context_C=context_C(config), context_auto=context_auto(config),
                                asymmetry_C=asymmetry_C(config), context_presence=context_presence(config))
    kept = {k: v for k, v in scr.metrics.items() if k.startswith("folds_")}
    if kept:
        print(f"screening: folds whose fit kept an optional stage: {kept}", flush=True)
    print(line("screening", scr.metrics), flush=True)  # printed at once: the plain recipe takes a while
    torch.set_num_threads(2)
    per_image = score_time(final, data.table, side, args.time_images,
                           float(config["screening"].get("aspect", 1.0)))
    print(f"screening: {per_image:.2f} s per image (2 threads, from the file, no cache)", flush=True)

    if not args.skip_plain:
        compare_with_plain(name, config, data, folds, scr, args.cache)
    else:
        dens = density_lines("screening", scr, data, ev)
        if dens:
            print("image level by density (spec and sens at the in-fold image threshold):\n" + "\n".join(dens))
    print(f"screening cost: {per_image:.2f} s per image (2 threads, from the file, no cache); training from an "
          f"empty cache {t_train / 60:.1f} min; peak memory {peak_mib():.0f} MiB\n", flush=True)
    if not args.keep_cold and not args.screening_cache:
        shutil.rmtree(cold, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="cdd,mias", help="comma-separated: mias, cdd")
    parser.add_argument("--max-images", type=int, default=None, help="at most this many images (smoke run)")
    parser.add_argument("--time-images", type=int, default=8, help="images timed for the per-image score")
    parser.add_argument("--cache", type=Path, default=default_cache_dir(), help="feature cache folder")
    parser.add_argument("--skip-plain", action="store_true",
                        help="screening recipe only (cost and its CV; benchmarks/quality.py holds the plain comparison)")
    parser.add_argument("--keep-cold", action="store_true", help="keep the screening cache (re-runs reuse nothing)")
    parser.add_argument("--screening-cache", type=Path, default=None,
                        help="reuse this screening feature cache (a kept cold cache): the training time printed is "
                             "then not from an empty cache")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    for name in args.datasets.split(","):
        run(name.strip(), args)


if __name__ == "__main__":
    main()
