"""`mammoscope train EXPERIMENT.yaml [--set key.path=value ...] [--tracking-uri URI]`."""
from __future__ import annotations

import argparse

HELP = "train and evaluate an experiment YAML, track it in MLflow"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", help="experiment file, e.g. experiments/mias_malignancy_fused.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override one setting (YAML value), e.g. --set features.cnn.enabled=false; repeatable")
    from pipeline.commands import add_tracking_option

    add_tracking_option(parser)
    parser.add_argument("--no-register", action="store_true",
                        help="evaluate and log the run only; do not fit, register or promote a final model")
    parser.add_argument("--cache-dir", default=None, help="feature cache folder (default: compute.cache_dir)")
    from pipeline.compute import add_scheduler_option

    add_scheduler_option(parser)


def run(args: argparse.Namespace) -> int:
    from pipeline.config.experiment import load_experiment

    exp = load_experiment(args.experiment, args.overrides)  # validated before any work starts

    from pipeline.training.train import train_experiment

    from pipeline.compute import compute_backend, resolve_compute

    compute = resolve_compute(exp.config, scheduler=args.scheduler, cache_dir=args.cache_dir)
    print(f"experiment {exp.name}: task {exp.task}"
          + (f"; Dask scheduler {compute.scheduler}" if compute.scheduler else ""), flush=True)
    with compute_backend(compute.scheduler, cache_dir=compute.cache_dir):
        result = train_experiment(exp, args.tracking_uri, register=not args.no_register, cache_dir=compute.cache_dir,
                                  progress=lambda line: print(line, flush=True), progress_bar=True)
    print(f"done in {result.seconds.get('total', 0):.0f} s; run {result.run_id}"
          + (f"; model {result.model_name} v{result.model_version}" if result.model_version else ""), flush=True)
    print("look: `mammoscope models`, `mammoscope ui`", flush=True)
    return 0
