"""Archive benchmark: train on a synthetic screening archive of N unique images, streamed (pipeline.training.stream).

    .venv/bin/python benchmarks/archive.py [--n 2000 10000 50000] [--tasks density malignancy] [--side 512]
        [--jobs 1 2] [--cluster] [--set features.cnn.enabled=false ...] [--keep DIR]
    .venv/bin/python benchmarks/archive.py --experiment experiments/cdd_cesm_screening.yaml --n 300 898

With --experiment, no synthetic archive: the experiment's own images, at most N per run (dataset.max_samples,
whole patients), trained as `train` does without MLflow (screening: the streamed front, the CV with the exam stage
per fold, the final fit with the exam stage and the map's scorer); printed per N: the run's line, the CV figures of
each level as benchmarks/screening.py prints them, and the main process's peak RSS at the largest N / the smallest.

The archive: N images made from the real mini-MIAS mammograms in ../shared/data (random crop of 80-100 % of the
side, horizontal flip with the laterality swapped, rotation of up to +-5 degrees, gamma and contrast changes,
a little noise: each file unique), --side px PNGs, in a temp folder outside the repo, with a manifest CSV (density
= MIAS background tissue F/G/D; findings with a centre keep their circle ROI, moved with the image). Each archive
image is one patient.

Each (task, N, workers) run is one subprocess (so its peak RSS is its own) on the default experiment of the task
(experiments/defaults.yaml, manifest adapter, plus --set), with a fresh feature cache: stream the samples +
frozen features (compute.n_jobs = --jobs, or a 2-worker LocalCluster with --cluster), patient-level CV of the head,
final fit (started beside the CV folds when they run in worker processes, as `train` does:
pipeline.training.train.start_final). MLflow logging is not run (not part of the data path). Printed per run: wall time per stage, images/s,
worker-summed seconds per image of read / sample / features, CPU per image of the stream (main process; its
worker processes, startup included), peak RSS of the main process and of the workers;
then the ratios of the issue's targets (memory at the largest N / smallest N; 2 workers vs 1; LocalCluster vs
local), and the per-image cost extrapolated to 50,000 images.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MIAS = ROOT.parent / "shared" / "data" / "mias"
WORKER_CONFIG = {  # as benchmarks/scale.py and docs/scale-out.md recommend
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.worker.profile.enabled": False,
}


# --------------------------------------------------------------------------------------------------------------------
# The archive
# --------------------------------------------------------------------------------------------------------------------
def _sources(mias: Path = MIAS) -> list[dict]:
    man = pd.read_csv(mias / "manifest.csv", dtype=str, keep_default_na=False)
    out: dict[str, dict] = {}
    for r in man.to_dict("records"):
        src = out.setdefault(r["file"], {"file": str(mias / r["file"]), "density": r["background_tissue"],
                                         "laterality": r["laterality"], "findings": []})
        if r["pathology"] in ("benign", "malignant") and r["x"] and r["y_top_origin"] and r["radius"]:
            src["findings"].append((r["pathology"], float(r["x"]), float(r["y_top_origin"]), float(r["radius"])))
    return list(out.values())


def _augment_one(src: dict, side: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float, bool]:
    """(uint8 (side, side) image, 3x3 source->archive affine, scale, flipped) of one random variant of `src`."""
    from skimage.io import imread
    from skimage.transform import AffineTransform, warp

    image = imread(src["file"]).astype(np.float32)
    image = (image if image.ndim == 2 else image[..., 0]) / 255.0
    h, w = image.shape
    crop = rng.uniform(0.8, 1.0) * min(h, w)
    x0, y0 = rng.uniform(0, w - crop), rng.uniform(0, h - crop)
    angle = np.deg2rad(rng.uniform(-5, 5))
    flip = bool(rng.random() < 0.5)
    c, s = np.cos(angle), np.sin(angle)
    cx, cy = w / 2.0, h / 2.0
    rot = np.array([[c, -s, cx - c * cx + s * cy], [s, c, cy - s * cx - c * cy], [0, 0, 1]])
    scale = side / crop
    to_crop = np.array([[scale, 0, -x0 * scale], [0, scale, -y0 * scale], [0, 0, 1]])
    mirror = np.array([[-1, 0, side - 1], [0, 1, 0], [0, 0, 1]]) if flip else np.eye(3)
    matrix = mirror @ to_crop @ rot
    out = warp(image, AffineTransform(matrix=matrix).inverse, output_shape=(side, side), order=1, cval=0.0)
    gamma, gain = rng.uniform(0.8, 1.25), rng.uniform(0.9, 1.1)
    out = np.clip(gain * np.power(np.clip(out, 0, 1), gamma) + rng.normal(0, 0.004, out.shape), 0, 1)
    return (out * 255).round().astype(np.uint8), matrix, scale, flip


def build_archive(n: int, folder: str | Path, *, side: int = 512, seed: int = 0) -> Path:
    """Write `n` unique augmented mini-MIAS images and their manifest CSV under `folder`; returns the CSV's path."""
    from skimage.io import imsave

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    sources = _sources()
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        src = sources[i % len(sources)]
        image, matrix, scale, flip = _augment_one(src, side, rng)
        name = f"images/a{i:06d}.png"
        imsave(folder / name, image, check_contrast=False)
        side_lr = {"L": "R", "R": "L"}.get(src["laterality"], "") if flip else src["laterality"]
        base = {"file": name, "patient_id": f"P{i:06d}", "density": src["density"], "laterality": side_lr,
                "view": "MLO"}
        if not src["findings"]:
            rows.append({**base, "sample_id": f"a{i:06d}", "pathology": ""})
        for k, (pathology, x, y, r) in enumerate(src["findings"]):
            px, py, _ = matrix @ np.array([x, y, 1.0])
            rows.append({**base, "sample_id": f"a{i:06d}_{k}", "pathology": pathology,
                         "cx": round(float(px), 1), "cy": round(float(py), 1), "r": round(r * scale, 1)})
    csv = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


# --------------------------------------------------------------------------------------------------------------------
# One run (in its own process)
# --------------------------------------------------------------------------------------------------------------------
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu_seconds() -> tuple[float, float]:
    """CPU seconds (user + system) so far of this process and of its live child processes (workers, nannies):
    on a shared machine CPU per image compares the paths where wall time mostly measures the neighbours' load."""
    try:
        import psutil  # installed with dask.distributed (the [dask] extra)
    except ImportError:
        t = os.times()
        return t.user + t.system, float("nan")
    me = psutil.Process()
    times = me.cpu_times()
    children = 0.0
    for child in me.children(recursive=True):
        try:
            ct = child.cpu_times()
            children += ct.user + ct.system
        except psutil.Error:
            pass
    return times.user + times.system, children


def run_one(csv: str, task: str, jobs: int, cluster: bool, cache: str, overrides: list[str]) -> dict:
    """Stream + CV + final fit of the task's default experiment on the archive; the figures as a dict."""
    import logging

    from pipeline.compute import compute_backend
    from pipeline.config.experiment import load_experiment
    from pipeline.config.tasks import get_task
    from pipeline.training.train import evaluate_experiment, fit_final, load_task_features, start_final

    logging.basicConfig(level=logging.WARNING)
    sets = ["dataset.adapter=manifest", f"dataset.path={csv}", f"dataset.task={task}", f"compute.n_jobs={jobs}",
            f"compute.cache_dir={cache}", "evaluation.bootstrap_resamples=200", *overrides]
    if get_task(task).ordinal:  # the archive's density labels are mini-MIAS's tissue classes
        sets.append("dataset.classes=[F, G, D]")
    exp = load_experiment(ROOT / "experiments" / "defaults.yaml", sets)
    cfg = exp.config
    local_cluster = None
    if cluster:
        import dask
        from distributed import LocalCluster

        dask.config.set(WORKER_CONFIG)
        local_cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    out: dict = {"task": task, "jobs": jobs, "cluster": cluster}
    try:
        with compute_backend(local_cluster.scheduler_address if local_cluster else None, cache_dir=cache):
            t0 = t = time.perf_counter()
            cpu = _cpu_seconds()
            data = load_task_features(cfg, lambda s: None, cache_dir=cache)
            out["stream_s"] = time.perf_counter() - t
            out["stream_cpu_s"] = [b - a for a, b in zip(cpu, _cpu_seconds())]
            t = time.perf_counter()
            pending = start_final(cfg, data, cache)  # as `train` does: beside the folds when they run in workers
            metrics, _, _ = evaluate_experiment(cfg, data, cache, lambda s: None)
            out["cv_s"] = time.perf_counter() - t
            t = time.perf_counter()
            pending.result() if pending is not None else fit_final(cfg, data, cache)
            out["final_s"] = time.perf_counter() - t  # overlapped: only the wait after the folds
            out["final_overlapped"] = pending is not None
            out["job_s"] = time.perf_counter() - t0
    finally:
        if local_cluster is not None:
            local_cluster.close()
    st = data.stream
    out.update(n_images=st.n_images, n_rows=len(data.y), n_features=int(data.features.shape[1]),
               worker_read_s=st.seconds["worker_read"], worker_sample_s=st.seconds["worker_sample"],
               worker_features_s=st.seconds["worker_features"], workers=st.workers,
               worker_peak_rss_mb=st.worker_peak_rss / 2**20, main_peak_rss_mb=_peak_rss_mb(),
               headline={k: metrics[k] for k in ("cv_kappa_quadratic", "cv_roc_auc") if k in metrics})
    return out


def run_experiment(experiment: str, n: int, cache: str, overrides: list[str]) -> dict:
    """Streamed training of an experiment file on at most `n` of its images, as `train` runs it without MLflow:
    stream the front (samples + features, tile matrices), patient-level CV of the head with the exam stage per fold,
    final fit and (screening) the exam stage and map scorer; the figures as a dict, with the CV lines per level."""
    import logging

    from pipeline.config.experiment import load_experiment
    from pipeline.config.tasks import get_task
    from pipeline.training.train import evaluate_experiment, fit_final, load_task_features, start_final

    logging.basicConfig(level=logging.WARNING)
    exp = load_experiment(Path(experiment), [f"dataset.max_samples={n}", f"compute.cache_dir={cache}", *overrides])
    cfg = exp.config
    out: dict = {"task": exp.task, "experiment": exp.name, "jobs": cfg["compute"]["n_jobs"], "cluster": False}
    t0 = t = time.perf_counter()
    cpu = _cpu_seconds()
    data = load_task_features(cfg, lambda s: None, cache_dir=cache)
    out["stream_s"] = time.perf_counter() - t
    out["stream_cpu_s"] = [b - a for a, b in zip(cpu, _cpu_seconds())]
    t = time.perf_counter()
    pending = start_final(cfg, data, cache)
    metrics, _, _ = evaluate_experiment(cfg, data, cache, lambda s: None)
    out["cv_s"] = time.perf_counter() - t
    t = time.perf_counter()
    final = pending.result() if pending is not None else fit_final(cfg, data, cache)
    if get_task(exp.task).levels:  # the exam stage and the map's tile scorer, on the feature rows
        from pipeline.training.screening import finish_screening_model

        finish_screening_model(final, cfg, None, data.y, data.table, cache, features=data.features)
    out["final_s"] = time.perf_counter() - t
    out["final_overlapped"] = pending is not None
    out["job_s"] = time.perf_counter() - t0
    st = data.stream
    levels = ("image", *get_task(exp.task).levels) if get_task(exp.task).levels else ()
    out.update(n_images=st.n_images, n_rows=len(data.y), n_features=int(data.features.shape[1]),
               worker_read_s=st.seconds["worker_read"], worker_sample_s=st.seconds["worker_sample"],
               worker_features_s=st.seconds["worker_features"], workers=st.workers,
               worker_peak_rss_mb=st.worker_peak_rss / 2**20, main_peak_rss_mb=_peak_rss_mb(),
               headline={k: round(metrics[k], 4) for k in ("cv_kappa_quadratic", "cv_roc_auc") if k in metrics},
               cv_lines=[_level_line(metrics, lv) for lv in levels])
    return out


def _level_line(m: dict, level: str) -> str:
    """The CV figures of one level as benchmarks/screening.py prints them: AUC [CI], spec at the in-fold threshold
    for the target sensitivity (sens reached, n units)."""
    k = f"cv_{level}_"
    return (f"{level:>6} AUC {m[k + 'roc_auc']:.3f} [{m[k + 'roc_auc_ci_low']:.3f}-{m[k + 'roc_auc_ci_high']:.3f}]"
            f" spec {m[k + 'spec_at_target']:.2f} (sens {m[k + 'sens_at_target']:.2f}, n {int(m[k + 'n'])})")


def experiment_main(experiment: str, sizes: list[int], overrides: list[str], shared_cache: Path | None = None) -> int:
    """One subprocess per size: the experiment's streamed training on its first `n` images (patient-stratified
    subsample), peak RSS of the main process per size and their ratio. `shared_cache`: one feature cache for every
    size (a larger run reads the smaller one's images; the main process receives the same rows either way)."""
    tmp = Path(tempfile.mkdtemp(prefix="mammoscope-archive-"))
    results: dict[int, dict] = {}
    try:
        for n in sorted(sizes):
            cache = str(shared_cache) if shared_cache else tempfile.mkdtemp(prefix="cache-", dir=tmp)
            cmd = [sys.executable, __file__, "--one-experiment", experiment, str(n), cache, "--", *overrides]
            started = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            if proc.returncode:
                raise RuntimeError(proc.stderr[-3000:])
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r["wall_s"] = time.perf_counter() - started
            if not shared_cache:
                shutil.rmtree(cache, ignore_errors=True)
            results[n] = r
            print(_line(r["n_images"], r), flush=True)
            print("\n".join(f"  {r['experiment']} N={r['n_images']} CV {line}" for line in r["cv_lines"]), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if len(results) >= 2:
        lo, hi = min(results), max(results)
        a, b = results[lo], results[hi]
        print(f"{b['experiment']}: peak RSS main at N={b['n_images']} / N={a['n_images']}: "
              f"{b['main_peak_rss_mb']:.0f} / {a['main_peak_rss_mb']:.0f} MB = "
              f"{b['main_peak_rss_mb'] / a['main_peak_rss_mb']:.2f}x (target <= 1.3x)", flush=True)
    return 0


# --------------------------------------------------------------------------------------------------------------------
def _spawn(csv: Path, task: str, jobs: int, cluster: bool, overrides: list[str], tmp: Path) -> dict:
    cache = tempfile.mkdtemp(prefix="cache-", dir=tmp)
    cmd = [sys.executable, __file__, "--one", str(csv), task, str(jobs), "1" if cluster else "0", cache, "--",
           *overrides]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["wall_s"] = time.perf_counter() - started
    shutil.rmtree(cache, ignore_errors=True)
    return res


def _line(n: int, r: dict) -> str:
    where = "LocalCluster(2)" if r["cluster"] else f"n_jobs={r['jobs']}"
    per = r["n_images"]
    return (f"N={n:>6} {r['task']:<10} {where:<15} wall {r['wall_s']:7.1f} s | stream {r['stream_s']:6.1f} s "
            f"({per / r['stream_s']:6.1f} img/s) cv {r['cv_s']:6.1f} s final {r['final_s']:5.1f} s | per image "
            f"(worker s): read {r['worker_read_s'] / per:.3f} sample {r['worker_sample_s'] / per:.3f} features "
            f"{r['worker_features_s'] / per:.3f} | CPU ms per image main {1000 * r['stream_cpu_s'][0] / per:.1f} "
            f"workers {1000 * r['stream_cpu_s'][1] / per:.1f} | peak RSS main {r['main_peak_rss_mb']:.0f} MB, worker "
            f"{r['worker_peak_rss_mb']:.0f} MB | rows {r['n_rows']} x {r['n_features']} | {r['headline']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[2000, 10000, 50000])
    parser.add_argument("--tasks", nargs="+", default=["density", "malignancy"])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="local worker processes to compare")
    parser.add_argument("--cluster", action="store_true", help="also run on a 2-worker LocalCluster")
    parser.add_argument("--side", type=int, default=512, help="archive image side, px")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--ratio-n", type=int, default=None,
                        help="run the 1-worker / cluster comparisons at this N only (default: the smallest)")
    parser.add_argument("--experiment", default=None, metavar="YAML",
                        help="instead of the synthetic archive: this experiment's own images, at most --n of them "
                             "per run (e.g. experiments/cdd_cesm_screening.yaml --n 300 898: screening, CNN on)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="with --experiment: one feature cache folder for every size (kept); default a fresh one "
                             "per run")
    args = parser.parse_args(argv)
    if args.experiment:
        return experiment_main(args.experiment, args.n, args.overrides, args.cache)
    tmp = Path(tempfile.mkdtemp(prefix="mammoscope-archive-"))
    print(f"archive folder {tmp} (removed at the end); overrides {args.overrides}", flush=True)
    results: list[tuple[int, dict]] = []
    ratio_n = args.ratio_n or min(args.n)
    try:
        for n in sorted(args.n):
            t = time.perf_counter()
            csv = build_archive(n, tmp / f"n{n}", side=args.side)
            print(f"built {n} images ({args.side} px) in {time.perf_counter() - t:.0f} s", flush=True)
            for task in args.tasks:
                for jobs in sorted(args.jobs, reverse=True):
                    if jobs != max(args.jobs) and n != ratio_n:
                        continue
                    results.append((n, _spawn(csv, task, jobs, False, args.overrides, tmp)))
                    print(_line(n, results[-1][1]), flush=True)
                if args.cluster and n == ratio_n:
                    results.append((n, _spawn(csv, task, 2, True, args.overrides, tmp)))
                    print(_line(n, results[-1][1]), flush=True)
            shutil.rmtree(tmp / f"n{n}", ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    best = max(args.jobs)
    for task in args.tasks:
        local = {n: r for n, r in results if r["task"] == task and r["jobs"] == best and not r["cluster"]}
        if len(local) >= 2:
            lo, hi = min(local), max(local)
            print(f"{task}: peak RSS main at N={hi} / N={lo}: {local[hi]['main_peak_rss_mb'] / local[lo]['main_peak_rss_mb']:.2f}x "
                  f"(target <= 1.5x for 5x images); workers {local[hi]['worker_peak_rss_mb'] / local[lo]['worker_peak_rss_mb']:.2f}x")
        at = {(r["jobs"], r["cluster"]): r for n, r in results if r["task"] == task and n == ratio_n}
        if (1, False) in at and (2, False) in at:
            print(f"{task}: stream with 2 workers / 1 worker at N={ratio_n}: "
                  f"{at[(1, False)]['stream_s'] / at[(2, False)]['stream_s']:.2f}x (target >= 1.7x)")
        if (2, True) in at and (2, False) in at:
            print(f"{task}: stream LocalCluster(2) / local n_jobs=2 throughput at N={ratio_n}: "
                  f"{at[(2, False)]['stream_s'] / at[(2, True)]['stream_s']:.2f}x (target >= 0.85x); CPU per image "
                  f"local / LocalCluster {sum(at[(2, False)]['stream_cpu_s']) / sum(at[(2, True)]['stream_cpu_s']):.2f}x")
        if local:
            n = max(local)
            r = local[n]
            total = r.get("job_s", r["stream_s"] + r["cv_s"] + r["final_s"])  # stream start -> final model
            slowest = max(r["stream_s"], r["cv_s"], r["final_s"])
            print(f"{task}: whole job / slowest stage at N={n}: {total / slowest:.2f}x (target <= 1.3x; job "
                  f"{total:.1f} s, stream {r['stream_s']:.1f} s, CV {r['cv_s']:.1f} s, final "
                  f"{'wait ' if r.get('final_overlapped') else ''}{r['final_s']:.1f} s); "
                  f"extrapolated to 50,000 images at {n / r['stream_s']:.1f} img/s stream + CV scaling linearly: "
                  f"~{50000 / n * total / 60:.0f} min")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--one-experiment":
        experiment, n, cache = sys.argv[2:5]
        extra = sys.argv[6:] if len(sys.argv) > 5 and sys.argv[5] == "--" else []
        print(json.dumps(run_experiment(experiment, int(n), cache, extra)))
        sys.exit(0)
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        csv, task, jobs, cluster, cache = sys.argv[2:7]
        extra = sys.argv[8:] if len(sys.argv) > 7 and sys.argv[7] == "--" else []
        print(json.dumps(run_one(csv, task, int(jobs), cluster == "1", cache, extra)))
        sys.exit(0)
    sys.exit(main())
