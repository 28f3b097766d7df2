"""Scale-out benchmark: feature extraction throughput locally and on a Dask LocalCluster, in one run.

    .venv/bin/python benchmarks/scale.py [--n-images 1000] [--size 224] [--chunk-size 8]

Work per image (the same everywhere): read the mammogram from its path (mini-MIAS PNG, 1024x1024), make the
working-resolution density sample (orient, mask, pad, resize), then the handcrafted features of the default experiment
(CLAHE -> unsharp -> GLCM + intensity; settings from experiments/defaults.yaml). The 322 mini-MIAS images are cycled
to reach --n-images; no feature cache is used, so every image is computed.

Printed: images/s for local n_jobs=1, local n_jobs=2 (joblib processes) and a LocalCluster of 2 single-threaded
worker processes (pipeline.compute.map_chunks, results streamed back in chunks); the Dask/best-local ratio (target
>= 0.85); the scheduling overhead per task (no-op tasks); the client's resident memory while the images stream
through. Pool/cluster start-up and first-task imports are timed apart (warm-up), not in the throughput.
Figures are noisy on a shared machine: run it twice and compare.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.compute import compute_backend, map_chunks  # noqa: E402

TARGET_RATIO = 0.85
# Worker settings recommended in docs/scale-out.md. Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536,
# which also turns off glibc's adaptive mmap threshold, so every image-sized numpy temporary is mmap'ed and
# page-faulted anew (measured here: ~1.6-2x the CPU per image); `None` unsets it (Dask's documented override).
# The statistical profiler samples every worker thread's stack every 10 ms, holding the GIL (15-20% more CPU here).
WORKER_CONFIG = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.worker.profile.enabled": False,
}


class Featurize:
    """Dataset rows -> (n_rows, n_features) handcrafted features; each worker reads the images from their paths."""

    def __init__(self, pipeline, size: int) -> None:
        self.pipeline = pipeline
        self.size = size

    def __call__(self, rows: list[dict]) -> np.ndarray:
        from pipeline.samples import load_samples

        X, errors = load_samples(pd.DataFrame(rows), "breast", self.size, n_jobs=1)
        if len(errors):
            raise RuntimeError(f"unreadable rows: {errors['error'].tolist()}")
        return self.pipeline.transform(X)


def noop(chunk: list) -> int:
    return len(chunk)


def build_featurizer(rows: list[dict], size: int) -> Featurize:
    from features import make_handcrafted_pipeline
    from pipeline.config.experiment import resolve_config
    from pipeline.samples import load_samples

    cfg = resolve_config()
    pre, hc = cfg["preprocessing"], cfg["features"]["handcrafted"]
    n_angles = hc["glcm"]["angles"]
    pipe = make_handcrafted_pipeline(
        clip_limit=pre["clahe"]["clip_limit"], kernel_size=pre["clahe"]["kernel_size"],
        radius=pre["unsharp"]["radius"], amount=pre["unsharp"]["amount"],
        levels=hc["glcm"]["levels"], distances=tuple(hc["glcm"]["distances"]),
        angles=tuple(i * 180.0 / n_angles for i in range(n_angles)), bins=hc["intensity"]["bins"],
    )
    X, _ = load_samples(pd.DataFrame(rows[:2]), "breast", size)
    return Featurize(pipe.fit(X), size)


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its live children (joblib's or the cluster's workers)."""
    import psutil

    total = 0.0
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def run(featurize: Featurize, rows: list[dict], chunk_size: int, n_jobs: int | None,
        memory_trace: list[tuple[int, float]] | None = None) -> tuple[float, float, np.ndarray]:
    """(wall seconds, CPU ms per row over all processes, features in row order) of featurizing `rows` with
    map_chunks in the active compute backend."""
    t0 = time.perf_counter()
    cpu0 = cpu_seconds()
    parts: dict[int, np.ndarray] = {}
    done = 0
    for start, feats in map_chunks(featurize, iter(rows), chunk_size, n_jobs=n_jobs):
        parts[start] = feats
        done += len(feats)
        if memory_trace is not None:
            memory_trace.append((done, rss_mb()))
    seconds = time.perf_counter() - t0
    cpu_ms = (cpu_seconds() - cpu0) * 1e3 / max(1, len(rows))
    return seconds, cpu_ms, np.concatenate([parts[s] for s in sorted(parts)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--chunk-size", type=int, default=8)
    parser.add_argument("--overhead-tasks", type=int, default=1000)
    args = parser.parse_args(argv)

    import logging

    import distributed

    from pipeline.io.datasets import density_table, load_dataset
    from pipeline.paths import default_mias_dir

    logging.basicConfig(level=logging.WARNING)
    table = density_table(load_dataset("mias", default_mias_dir()))
    base = table.to_dict("records")
    rows = list(itertools.islice(itertools.cycle(base), args.n_images))
    featurize = build_featurizer(base, args.size)
    warm = base[: 4 * args.chunk_size]
    print(f"feature extraction: {args.n_images} images ({len(base)} distinct mini-MIAS files cycled), "
          f"sample {args.size}px, chunks of {args.chunk_size}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")

    results: dict[str, float] = {}
    cpu: dict[str, float] = {}
    reference = None
    for n_jobs in (1, 2):
        t = time.perf_counter()
        run(featurize, warm, args.chunk_size, n_jobs)  # starts (and keeps) joblib's worker processes
        startup = time.perf_counter() - t
        seconds, cpu_ms, feats = run(featurize, rows, args.chunk_size, n_jobs)
        reference = feats if reference is None else reference
        assert np.allclose(feats, reference, atol=1e-6, rtol=0), "local n_jobs=2 differs from n_jobs=1"
        results[f"local n_jobs={n_jobs}"] = args.n_images / seconds
        cpu[f"local n_jobs={n_jobs}"] = cpu_ms
        print(f"  local n_jobs={n_jobs:<2}            {args.n_images / seconds:7.2f} images/s  "
              f"({seconds:6.1f} s; {cpu_ms:4.0f} CPU ms/image; warm-up {startup:.1f} s)")

    trace: list[tuple[int, float]] = []
    per_task, report = 0.0, None
    import dask

    # the tuned cluster first: the nanny exports its pre-spawn variables into this process's environment
    for label, config in (("dask LocalCluster 2x1", WORKER_CONFIG), ("  same, Dask's default env", {})):
        t = time.perf_counter()
        with dask.config.set(config), \
                distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                         dashboard_address=None) as cluster, \
                distributed.Client(cluster, set_as_default=False) as client:
            with compute_backend(client) as session:
                client.run(featurize, warm[: args.chunk_size])  # imports on every worker, not in the timing
                trims = set(client.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_").values())
                startup = time.perf_counter() - t
                seconds, cpu_ms, feats = run(featurize, rows, args.chunk_size, None,
                                     memory_trace=None if trace else trace)
                assert np.allclose(feats, reference, atol=1e-6, rtol=0), "Dask features differ from the local ones"
                results[label] = args.n_images / seconds
                cpu[label] = cpu_ms
                print(f"  {label:<22} {args.n_images / seconds:7.2f} images/s  ({seconds:6.1f} s; "
                      f"{cpu_ms:4.0f} CPU ms/image; "
                      f"cluster start + warm-up {startup:.1f} s; workers MALLOC_TRIM_THRESHOLD_={trims})")
                if report is None:
                    n = args.overhead_tasks
                    list(map_chunks(noop, range(50), 1))
                    t = time.perf_counter()
                    assert sum(r for _, r in map_chunks(noop, range(n), 1)) == n
                    per_task = (time.perf_counter() - t) / n
            report = report or session.report
    results["dask"] = results["dask LocalCluster 2x1"]
    cpu["dask"] = cpu["dask LocalCluster 2x1"]

    best_local = max(v for k, v in results.items() if k.startswith("local"))
    ratio = results["dask"] / best_local
    n_tasks = -(-args.n_images // args.chunk_size)
    print(f"  dask / best local      {ratio:7.2f}x  (target >= {TARGET_RATIO}: "
          f"{'met' if ratio >= TARGET_RATIO else 'NOT met'})")
    print(f"  CPU per image, dask / local n_jobs=1: {cpu['dask'] / cpu['local n_jobs=1']:.2f}x "
          f"(load-independent view of the same question: what the cluster path adds per image)")
    print(f"  scheduling overhead    {per_task * 1e3:7.2f} ms per task (round trip of {args.overhead_tasks} no-op "
          f"tasks, 2 workers); the run above used {n_tasks} tasks of {args.chunk_size} images, "
          f"so overhead ~{per_task * n_tasks / (args.n_images / results['dask']) * 100:.2f}% of its wall time")
    rss = np.array([m for _, m in trace])
    tenth = max(1, len(rss) // 10)
    print(f"  client RSS while streaming: start {rss[0]:.0f} MB, after 10% {rss[tenth - 1]:.0f} MB, "
          f"peak {rss.max():.0f} MB, end {rss[-1]:.0f} MB "
          f"(growth from 10% to end {rss[-1] - rss[tenth - 1]:+.0f} MB over {len(rss)} chunks)")
    print(f"  worker failures: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
