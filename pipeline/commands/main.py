"""`mammoscope main`: the README's main job on the embedded default data.

Scan the default dataset, train the default density and malignancy experiments (fused features), register both,
apply the champion rule, print where to look next and, with --serve, start the app on the champions.
"""
from __future__ import annotations

import argparse
import time

HELP = "the README's main job: scan, train both default models, register champions"



def default_experiments() -> list[str]:
    """Each registered task's default experiment file that exists (pipeline.config.tasks: experiments/mias_<task>_fused)."""
    from pipeline.config.experiment import EXPERIMENTS_DIR
    from pipeline.config.tasks import TASKS

    return [t.default_experiment for t in TASKS.values()
            if t.in_main and (EXPERIMENTS_DIR.parent / t.default_experiment).is_file()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipeline.commands import add_tracking_option
    from pipeline.compute import add_scheduler_option

    add_tracking_option(parser)
    add_scheduler_option(parser)
    parser.add_argument("--cache-dir", default=None, help="feature cache folder (default: compute.cache_dir)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a setting in both experiments, e.g. --set evaluation.folds=3")
    parser.add_argument("--skip-scan", action="store_true", help="do not read every image first")
    parser.add_argument("--serve", action="store_true",
                        help="then serve the Gradio app on the champions at http://127.0.0.1:7860 (Ctrl-C stops it)")


def run(args: argparse.Namespace) -> int:
    from pipeline.config.experiment import EXPERIMENTS_DIR, load_experiment
    from pipeline.paths import default_tracking_uri

    # validate both experiments before any work starts
    experiments = [load_experiment(EXPERIMENTS_DIR.parent / path, args.overrides) for path in default_experiments()]
    start = time.perf_counter()
    if not args.skip_scan:
        from pipeline.io.scan import scan_dataset, summary_lines

        print("== data: the embedded default (mini-MIAS)", flush=True)
        for line in summary_lines(scan_dataset(None, progress=False)):
            print(line, flush=True)

    from pipeline.compute import compute_backend, resolve_compute
    from pipeline.training.train import train_experiment

    results = []
    for exp in experiments:
        compute = resolve_compute(exp.config, scheduler=args.scheduler, cache_dir=args.cache_dir)
        print(f"\n== train {exp.name} ({exp.task})"
              + (f"; Dask scheduler {compute.scheduler}" if compute.scheduler else ""), flush=True)
        with compute_backend(compute.scheduler, cache_dir=compute.cache_dir):
            results.append(train_experiment(exp, args.tracking_uri, cache_dir=compute.cache_dir,
                                            progress=lambda line: print(line, flush=True), progress_bar=True))

    uri = args.tracking_uri or default_tracking_uri()
    print(f"\n== done in {time.perf_counter() - start:.0f} s; tracking store {uri}")
    for r in results:
        state = "champion" if r.promoted else f"champion kept ({r.promotion_reason})"
        print(f"  {r.model_name} v{r.model_version}: {state}")
    from pipeline.config.tasks import TASKS

    for t in (t for t in TASKS.values() if not t.in_main):
        print(f"  {t.name}: not trained here (too long for this job); train it with "
              f"`mammoscope train {t.default_experiment}`")
    print("next: `mammoscope models` (versions, aliases, metrics), `mammoscope ui` (MLflow UI), "
          "`mammoscope app` (the app on the champions), `mammoscope predict FILES`")
    if args.serve:
        import gradio_app

        print("\n== serving the app on the champions: http://127.0.0.1:7860 (Ctrl-C stops it)", flush=True)
        gradio_app.launch(tracking_uri=args.tracking_uri)
    return 0
