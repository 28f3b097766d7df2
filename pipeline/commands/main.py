"""`mammoscope main`: the README's main job on the default data.

Fetch mini-MIAS when the data root lacks it (download, verify, install: pipeline.io.datasets.mias_fetch), scan it,
train every task's main experiment (density, malignancy, screening: `Task.main_experiment`), register each, apply
the champion rule, print where to look next and, with --serve, start the app on the champions.
"""
from __future__ import annotations

import argparse
import time

HELP = "the README's main job: fetch mini-MIAS if absent, train every task's model, register champions"



def default_experiments() -> list[str]:
    """Each registered task's main experiment file that exists (pipeline.config.tasks `Task.main_experiment`)."""
    from pipeline.config.experiment import EXPERIMENTS_DIR
    from pipeline.config.tasks import TASKS

    return [t.main_experiment for t in TASKS.values()
            if t.in_main and (EXPERIMENTS_DIR.parent / t.main_experiment).is_file()]


def ensure_default_data(experiments: list, *, progress: bool = True) -> None:
    """Download, verify and install mini-MIAS into the data root when an experiment reads the default dataset and
    it is absent (DownloadError, exit 3, or DataIntegrityError, exit 4, when that fails)."""
    from pipeline.io.datasets.mias import find_info_file
    from pipeline.io.datasets.mias_fetch import fetch_mias
    from pipeline.paths import default_data_root, default_mias_dir

    if not any(e.config["dataset"]["path"] is None for e in experiments):
        return
    if find_info_file(default_mias_dir()) is not None:
        return
    print(f"== data: mini-MIAS is not in {default_mias_dir()}: fetching it", flush=True)
    fetch_mias(default_data_root(), progress=progress, say=lambda line: print(line, flush=True))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.commands import add_tracking_option
    from pipeline.compute import add_scheduler_option

    add_tracking_option(parser)
    add_scheduler_option(parser)
    parser.add_argument("--cache-dir", default=None, help="feature cache folder (default: compute.cache_dir)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a setting in every experiment, e.g. --set evaluation.folds=3")
    parser.add_argument("--skip-scan", action="store_true", help="do not read every image first")
    parser.add_argument("--serve", action="store_true",
                        help="then serve the Gradio app on the champions at http://127.0.0.1:7860 (Ctrl-C stops it)")


def run(args: argparse.Namespace) -> int:
    from pipeline.config.experiment import EXPERIMENTS_DIR, load_experiment
    from pipeline.paths import default_tracking_uri

    # validate every experiment before any work starts
    experiments = [load_experiment(EXPERIMENTS_DIR.parent / path, args.overrides) for path in default_experiments()]
    start = time.perf_counter()
    ensure_default_data(experiments)
    if not args.skip_scan:
        from pipeline.io.scan import scan_dataset, summary_lines
        from pipeline.paths import default_mias_dir

        print(f"== data: the default (mini-MIAS in {default_mias_dir()})", flush=True)
        for line in summary_lines(scan_dataset(None, progress=False)):
            print(line, flush=True)

    from pipeline.compute import compute_backend, resolve_compute
    from pipeline.training.train import train_experiment

    results, seconds = [], []
    for i, exp in enumerate(experiments, 1):
        compute = resolve_compute(exp.config, scheduler=args.scheduler, cache_dir=args.cache_dir)
        print(f"\n== train {i}/{len(experiments)}: {exp.name} ({exp.task})"
              + (f"; Dask scheduler {compute.scheduler}" if compute.scheduler else ""), flush=True)
        t0 = time.perf_counter()
        with compute_backend(compute.scheduler, cache_dir=compute.cache_dir):
            results.append(train_experiment(exp, args.tracking_uri, cache_dir=compute.cache_dir,
                                            progress=lambda line: print(line, flush=True), progress_bar=True))
        seconds.append(time.perf_counter() - t0)

    uri = args.tracking_uri or default_tracking_uri()
    print(f"\n== done in {time.perf_counter() - start:.0f} s; tracking store {uri}")
    for r, secs in zip(results, seconds):
        state = "champion" if r.promoted else f"champion kept ({r.promotion_reason})"
        print(f"  {r.model_name} v{r.model_version}: {state} (trained in {secs:.0f} s)")
    from pipeline.config.tasks import TASKS

    for t in (t for t in TASKS.values() if not t.in_main):
        print(f"  {t.name}: not trained by this job; train it with `mammoscope train {t.default_experiment}`")
    print("next: `mammoscope models` (versions, aliases, metrics), `mammoscope ui` (MLflow UI), "
          "`mammoscope app` (the app on the champions), `mammoscope predict FILES`")
    if args.serve:
        import gradio_app
        from app_support import server_address

        host, port = server_address()
        print(f"\n== serving the app on the champions: http://{host}:{port} (Ctrl-C stops it)", flush=True)
        gradio_app.launch(tracking_uri=args.tracking_uri)
    return 0
