"""Benchmark of `mammoscope predict` over many 1024 x 1024 mammograms (the mini-MIAS images repeated).

Prints:
* each stage alone on the first --stage-images images: read (worker pool), read+prepare (worker pool), features
  (the model's feature steps, main process, batches) and model (its final classifier on those features), in images/s;
* the end-to-end `mammoscope predict` run (a real subprocess) over --n-images images: images/s and its ratio to the
  slowest stage alone (target >= 0.8);
* peak resident memory (main process + reader workers, high-water marks) when 500 rows were written and at the end;
* a second run killed (SIGKILL) at about 50% and resumed: every image scored exactly once.

Model: --model URI (default: models:/mammoscope-density@champion, the fused default champion of `mammoscope main`).
With --train-if-missing, trains --experiment (default experiments/mias_density_fused.yaml) when that is absent.

Run: .venv/bin/python benchmarks/predict.py [--n-images 2000] [--model URI] [--tracking-uri URI]
Timings are wall-clock on a shared machine: treat them as noisy.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.serving.batch import TaskModel, iter_prepared, resolve_n_jobs  # noqa: E402
from pipeline.io.batchio import discover_inputs  # noqa: E402
from pipeline.paths import PROJECT_DIR, default_mias_dir  # noqa: E402


def _link_images(folder: Path, n: int) -> None:
    sources = sorted((default_mias_dir() / "images").glob("mdb*.png"))
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        os.symlink(sources[i % len(sources)], folder / f"img{i:05d}.png")


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def _load(model_uri: str, tracking_uri: str | None) -> TaskModel:
    from pipeline.serving.predict import load_predictor

    return load_predictor(model_uri, tracking_uri=tracking_uri)


def stage_rates(folder: Path, model: TaskModel, n: int, n_jobs: int, batch_size: int) -> dict[str, float]:
    """images/s of each stage alone on the first `n` images."""
    items = discover_inputs([folder])[:n]
    specs = [(model.task, model.sample_params)]
    rates = {}
    list(iter_prepared(items[: 4 * n_jobs], specs, n_jobs=n_jobs))  # start workers, import lazily, outside timings
    t = time.perf_counter()
    for _ in iter_prepared(items, [], n_jobs=n_jobs):
        pass
    rates["read (pool)"] = _rate(len(items), time.perf_counter() - t)
    t = time.perf_counter()
    prepared = list(iter_prepared(items, specs, n_jobs=n_jobs))
    rates["read+prepare (pool)"] = _rate(len(items), time.perf_counter() - t)
    X = np.stack([p.samples[model.task].row for p in prepared])  # Sample objects (array + geometry)
    features, final = model.pipeline[:-1], model.pipeline[-1]
    features.transform(X[:batch_size])  # warm-up (lazy torch import, weights)
    t = time.perf_counter()
    Z = np.concatenate([features.transform(X[i : i + batch_size]) for i in range(0, len(X), batch_size)])
    rates["features"] = _rate(len(X), time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(0, len(Z), batch_size):
        final.predict_proba(Z[i : i + batch_size])
    rates["model"] = _rate(len(Z), time.perf_counter() - t)
    return rates


def _tree_peak_mb(proc) -> float:
    """Sum of the high-water resident memory (VmHWM) of a process and its children, in MB."""
    import psutil

    total = 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return float("nan")
    for p in procs:
        try:
            with open(f"/proc/{p.pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def _rows(out: Path) -> int:
    try:
        with open(out, "rb") as fh:
            return max(0, fh.read().count(b"\n") - 1)
    except FileNotFoundError:
        return 0


def run_predict(cmd: list[str], out: Path, marks: tuple[int, ...] = (), kill_at: int | None = None) -> dict:
    """Run `mammoscope predict`; peak memory when the output reaches each mark; optionally SIGKILL at `kill_at` rows."""
    import psutil

    env = {**os.environ, "PYTHONPATH": str(PROJECT_DIR), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    ps = psutil.Process(proc.pid)
    peaks: dict[int, float] = {}
    first_row_at = None
    last_peak = 0.0
    while proc.poll() is None:
        rows = _rows(out)
        last_peak = max(last_peak, _tree_peak_mb(ps) if proc.poll() is None else last_peak)
        if rows and first_row_at is None:
            first_row_at = (time.perf_counter(), rows)
        for mark in marks:
            if mark not in peaks and rows >= mark:
                peaks[mark] = last_peak
        if kill_at is not None and rows >= kill_at:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return {"killed_at": rows, "seconds": time.perf_counter() - start}
        time.sleep(0.05)
    stderr = proc.stderr.read() if proc.stderr else ""
    end = time.perf_counter()
    rows = _rows(out)
    for mark in marks:
        peaks.setdefault(mark, last_peak)
    steady = None
    if first_row_at is not None and rows > first_row_at[1]:
        steady = (rows - first_row_at[1]) / (end - first_row_at[0])
    return {"rc": proc.returncode, "rows": rows, "seconds": end - start, "steady_rate": steady, "peaks": peaks,
            "stderr": stderr}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-images", type=int, default=2000)
    parser.add_argument("--stage-images", type=int, default=64)
    parser.add_argument("--model", default="models:/mammoscope-density@champion")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--n-jobs", type=int, default=None)
    parser.add_argument("--train-if-missing", action="store_true")
    parser.add_argument("--experiment", default="experiments/mias_density_fused.yaml")
    args = parser.parse_args()
    n_jobs = resolve_n_jobs(args.n_jobs)

    from pipeline.errors import ModelNotFoundError

    try:
        model = _load(args.model, args.tracking_uri)
    except ModelNotFoundError:
        if not args.train_if_missing:
            raise
        from pipeline.config.experiment import load_experiment
        from pipeline.training.train import train_experiment

        print(f"no model at {args.model}: training {args.experiment}", flush=True)
        train_experiment(load_experiment(PROJECT_DIR / args.experiment), args.tracking_uri, progress=print)
        model = _load(args.model, args.tracking_uri)
    print(f"model {model.name} v{model.version} ({model.task}, sample {model.sample_params.get('size')} px); "
          f"{args.n_images} images of 1024x1024; batch {args.batch_size}; {n_jobs} reader processes; "
          f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}", flush=True)

    with tempfile.TemporaryDirectory(prefix="mammoscope-bench-") as tmp:
        folder = Path(tmp) / "images"
        _link_images(folder, args.n_images)
        rates = stage_rates(folder, model, min(args.stage_images, args.n_images), n_jobs, args.batch_size)
        for stage, rate in rates.items():
            print(f"stage alone  {stage:22s} {rate:8.1f} images/s", flush=True)
        slowest = min(rates, key=rates.get)

        out = Path(tmp) / "results.csv"
        base = [sys.executable, "-m", "pipeline.cli", "predict", str(folder), "--model", args.model, "--out", str(out),
                "--batch-size", str(args.batch_size), "--n-jobs", str(n_jobs), "--no-progress"]
        if args.tracking_uri:
            base += ["--tracking-uri", args.tracking_uri]
        marks = tuple(m for m in (500, args.n_images) if m <= args.n_images)
        full = run_predict(base + ["--overwrite"], out, marks=marks)
        table = pd.read_csv(out)
        print(f"end to end   {full['rows']} rows in {full['seconds']:.1f} s (exit {full['rc']}, "
              f"{int(table['error'].notna().sum())} errors) = {_rate(full['rows'], full['seconds']):.1f} images/s "
              f"including start-up; {full['steady_rate']:.1f} images/s from the first written row on", flush=True)
        print(f"ratio to the slowest stage alone ({slowest}, {rates[slowest]:.1f} images/s): "
              f"{full['steady_rate'] / rates[slowest]:.2f} (target >= 0.8)", flush=True)
        for mark, peak in full["peaks"].items():
            print(f"peak memory (main + readers) at {mark:5d} rows: {peak:7.0f} MB", flush=True)

        out.unlink()
        killed = run_predict(base + ["--overwrite"], out, kill_at=args.n_images // 2)
        partial = pd.read_csv(out)
        resumed = run_predict(base, out)
        final = pd.read_csv(out)
        expected = sorted(str(p) for p in folder.iterdir())
        once = sorted(final["path"]) == expected
        print(f"kill at ~50%: SIGKILL after {killed['killed_at']} rows (file holds {len(partial)}); resume exit "
              f"{resumed['rc']}: {len(final)} rows, every image exactly once: {once}", flush=True)
    return 0 if once else 1


if __name__ == "__main__":
    sys.exit(main())
