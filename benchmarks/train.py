"""Benchmark: time the main job (scan + every task's main experiment: density, malignancy, screening; cold and warm
feature cache) and score handcrafted / CNN / fused on mini-MIAS with patient-level 5-fold CV and 95% bootstrap CIs.

    .venv/bin/python benchmarks/train.py                  # everything (tens of minutes on 2 shared cores)
    .venv/bin/python benchmarks/train.py --skip-timing    # the quality table only
    .venv/bin/python benchmarks/train.py --set evaluation.folds=3   # overrides for every experiment

Timing runs what `mammoscope main` runs (the scan, then `train_experiment` on each task's main experiment: CV +
final model + registry) into a temporary SQLite store and a temporary feature cache: first cold, then again with
the cache warm; it prints each step's wall and CPU seconds and share (the CPU seconds say what the job costs when
other work shares the cores: on 2 idle cores the wall time lies between CPU/2 and CPU). The quality
table re-runs the cross-validation of each variant (features from the same cache). Figures on a shared machine
are noisy; the CIs are sample-level percentile bootstrap intervals (scipy.stats.bootstrap, paired).
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.config.tasks import TASKS, get_task  # noqa: E402

VARIANTS = ("handcrafted", "cnn", "fused")
# the tasks with mini-MIAS experiments (mias_<task>_<variant>.yaml), malignancy first as before
DEFAULT_TASKS = [t for t in reversed(TASKS) if (ROOT / "experiments" / f"mias_{t}_fused.yaml").is_file()]


def _fmt(m: dict, key: str) -> str:
    if key not in m:
        return "n/a"
    lo, hi = m.get(f"{key}_ci_low"), m.get(f"{key}_ci_high")
    ci = f" [{lo:.2f}-{hi:.2f}]" if lo is not None and hi is not None and lo == lo else ""
    return f"{m[key]:.2f}{ci}"


def _cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and its finished children (the worker processes, once reaped)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _stop_workers() -> None:
    """Shut joblib's reusable worker processes down so that their CPU time is counted (RUSAGE_CHILDREN)."""
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)


def timing(overrides: list[str], cache: Path, store: Path) -> None:
    """The main job (`mammoscope main`: scan + every task's main experiment) from an empty feature cache, then
    again warm; wall and CPU seconds per step and each step's share of the job."""
    import os

    from pipeline.commands.main import default_experiments
    from pipeline.config.experiment import EXPERIMENTS_DIR, load_experiment
    from pipeline.io.scan import scan_dataset
    from pipeline.training.train import train_experiment

    uri = f"sqlite:///{store / 'mlflow.db'}"
    paths = default_experiments()
    for label in ("cold", "warm"):
        load = os.getloadavg()[0]
        steps: list[tuple[str, float, float]] = []
        t0, c0 = time.perf_counter(), _cpu_seconds()
        scan_dataset(None, progress=False)
        _stop_workers()
        steps.append(("scan (read every image)", time.perf_counter() - t0, _cpu_seconds() - c0))
        for path in paths:
            exp = load_experiment(EXPERIMENTS_DIR.parent / path, overrides)
            t0, c0 = time.perf_counter(), _cpu_seconds()
            r = train_experiment(exp, uri, cache_dir=cache, progress=lambda s: None)
            _stop_workers()
            steps.append((f"{exp.task} ({exp.name})", time.perf_counter() - t0, _cpu_seconds() - c0))
            print(f"  {label:4s} {exp.name:24s} {steps[-1][1]:6.1f} s  (samples {r.seconds['samples']:.0f} s,"
                  f" CV {r.seconds['cv']:.0f} s, final+register {r.seconds.get('final', 0):.0f} s) "
                  f"v{r.model_version} champion {'moved' if r.promoted else 'kept'}", flush=True)
        wall, cpu = sum(s[1] for s in steps), sum(s[2] for s in steps)
        print(f"  {label} cache: the main job in {wall:.0f} s = {wall / 60:.1f} min wall, {cpu:.0f} s CPU "
              f"(load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, {os.cpu_count()} cores)",
              flush=True)
        for name, secs, cpu_s in steps:
            print(f"    {name:40s} {secs:6.0f} s wall ({100 * secs / wall:4.1f} %)  {cpu_s:6.0f} s CPU "
                  f"({100 * cpu_s / max(cpu, 1e-9):4.1f} %)", flush=True)


def quality(overrides: list[str], cache: Path, tasks: list[str], variants: list[str]) -> None:
    from pipeline.config.experiment import EXPERIMENTS_DIR, load_experiment
    from pipeline.training.train import evaluate_experiment, load_task_data

    for task in tasks:
        data = None
        print(f"\n{task}: patient-level 5-fold CV, 95% CIs", flush=True)
        for variant in variants:
            exp = load_experiment(EXPERIMENTS_DIR / f"mias_{task}_{variant}.yaml", overrides)
            if data is None:
                data = load_task_data(exp.config, lambda s: None)
                counts = {c: int((data.y == i).sum()) for i, c in enumerate(data.classes)}
                print(f"  {len(data.y)} samples, {len(set(data.groups))} patients, {counts}", flush=True)
            t0 = time.perf_counter()
            m, cv, _ = evaluate_experiment(exp.config, data, cache, lambda s: None)
            secs = time.perf_counter() - t0
            if get_task(task).uses_threshold:
                thr = ", ".join(f"{t:.2f}" for t in cv.fold_thresholds)
                print(f"  {variant:11s} ROC AUC {_fmt(m, 'cv_roc_auc')}  PR AUC {_fmt(m, 'cv_pr_auc')}  "
                      f"Brier {m['cv_brier']:.3f}  ECE {m['cv_ece']:.3f}  ({secs:.0f} s)", flush=True)
                print(f"  {'':11s} at the operating point (target sens {exp.config['evaluation']['target_sensitivity']}"
                      f", fold thresholds {thr}):", flush=True)
                for group, prefix in (("all", "cv_"), ("dense", "dense_"), ("non-dense", "nondense_")):
                    print(f"  {'':13s}{group:9s} sens {_fmt(m, prefix + 'sens_at_target')}  "
                          f"spec {_fmt(m, prefix + 'spec_at_target')}  (n={int(m.get(prefix + 'n', 0))})",
                          flush=True)
            else:
                recalls = "  ".join(f"{c} {m[f'cv_recall_{c}']:.2f}" for c in data.classes)
                print(f"  {variant:11s} kappa_w {_fmt(m, 'cv_kappa_quadratic')}  accuracy {_fmt(m, 'cv_accuracy')}  "
                      f"recall {recalls}  Brier {m['cv_brier']:.3f}  ECE {m['cv_ece']:.3f}  ({secs:.0f} s)",
                      flush=True)
                print(f"  {'':11s} dense accuracy {_fmt(m, 'dense_accuracy')}  non-dense accuracy "
                      f"{_fmt(m, 'nondense_accuracy')}", flush=True)
                if "cv_exam_kappa_quadratic" in m:
                    print(f"  {'':11s} per exam (views averaged, n={int(m['cv_exam_n'])}): kappa_w "
                          f"{_fmt(m, 'cv_exam_kappa_quadratic')}  accuracy {_fmt(m, 'cv_exam_accuracy')}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS, choices=list(TASKS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--cache-dir", type=Path, default=None, help="feature cache (default: a fresh temp folder)")
    parser.add_argument("--store", type=Path, default=None,
                        help="folder for the MLflow store the timed runs register into, kept afterwards (default: a "
                             "temp folder): its champions serve benchmarks/app.py --tracking-uri "
                             "sqlite:///<store>/mlflow.db")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="mammoscope-bench-") as tmp:
        cache = args.cache_dir or Path(tmp) / "cache"
        if not args.skip_timing:
            print("timing: the main job (scan + every task's main experiment, final model, register)", flush=True)
            if args.store:
                args.store.mkdir(parents=True, exist_ok=True)
            timing(args.overrides, cache, args.store or Path(tmp))
        if not args.skip_quality:
            quality(args.overrides, cache, args.tasks, args.variants)
    return 0


if __name__ == "__main__":
    sys.exit(main())
