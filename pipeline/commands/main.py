"""`mammoscope main`: the README's main job on the embedded default data.

Scan the default dataset, train the default density and malignancy experiments (fused features), register both,
apply the champion rule, print where to look next and, with --serve, start the app on the champions.
"""
from __future__ import annotations

import argparse
import time

HELP = "the README's main job: scan, train both default models, register champions"

DEFAULT_EXPERIMENTS = ("experiments/mias_density_fused.yaml", "experiments/mias_malignancy_fused.yaml")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a setting in both experiments, e.g. --set evaluation.folds=3")
    parser.add_argument("--skip-scan", action="store_true", help="do not read every image first")
    parser.add_argument("--serve", action="store_true",
                        help="then serve the Gradio app on the champions at http://127.0.0.1:7860 (Ctrl-C stops it)")


def run(args: argparse.Namespace) -> int:
    from pipeline.experiment import EXPERIMENTS_DIR, load_experiment
    from pipeline.paths import default_tracking_uri

    # validate both experiments before any work starts
    experiments = [load_experiment(EXPERIMENTS_DIR.parent / path, args.overrides) for path in DEFAULT_EXPERIMENTS]
    start = time.perf_counter()
    if not args.skip_scan:
        from pipeline.scan import scan_dataset, summary_lines

        print("== data: the embedded default (mini-MIAS)", flush=True)
        for line in summary_lines(scan_dataset(None, progress=False)):
            print(line, flush=True)

    from pipeline.train import train_experiment

    results = []
    for exp in experiments:
        print(f"\n== train {exp.name} ({exp.task})", flush=True)
        results.append(train_experiment(exp, args.tracking_uri, progress=lambda line: print(line, flush=True),
                                        progress_bar=True))

    uri = args.tracking_uri or default_tracking_uri()
    print(f"\n== done in {time.perf_counter() - start:.0f} s; tracking store {uri}")
    for r in results:
        state = "champion" if r.promoted else f"champion kept ({r.promotion_reason})"
        print(f"  {r.model_name} v{r.model_version}: {state}")
    print("next: `mammoscope models` (versions, aliases, metrics), `mammoscope ui` (MLflow UI), "
          "`mammoscope app` (the app on the champions), `mammoscope predict FILES`")
    if args.serve:
        import gradio_app

        print("\n== serving the app on the champions: http://127.0.0.1:7860 (Ctrl-C stops it)", flush=True)
        gradio_app.launch(tracking_uri=args.tracking_uri)
    return 0
