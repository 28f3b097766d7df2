"""`mammoscope models [--name N]`: registered model versions, their aliases and headline metrics."""
from __future__ import annotations

import argparse

HELP = "list registered model versions, aliases and headline metrics"

SHOWN = ["name", "version", "aliases", "task", "selection_metric", "selection_value", "created"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--name (one model) or --prefix (default mammoscope-)."""
    parser.add_argument("--name", help="only this registered model (default: every model named PREFIX*)")
    parser.add_argument("--prefix", default="mammoscope-", help="registered-model name prefix (default: %(default)s)")
    from pipeline.commands import add_tracking_option

    add_tracking_option(parser)


def run(args: argparse.Namespace) -> int:
    """Print one line per version, newest first; 0 also when nothing is registered (says how to train)."""
    from registry.champion import list_models
    from registry.models import TRAIN_HINT
    from registry.store import configure

    uri = configure(args.tracking_uri)
    table = list_models(prefix=args.prefix, name=args.name)
    if table.empty:
        what = f"model {args.name!r}" if args.name else f"models named {args.prefix}*"
        print(f"no registered {what} in {uri}; {TRAIN_HINT}")
        return 0
    metric_columns = sorted(c for c in table.columns if c.startswith("metric."))
    shown = table[[c for c in SHOWN if c in table.columns] + metric_columns].copy()
    shown["created"] = shown["created"].dt.strftime("%Y-%m-%d %H:%M")
    print(f"MLflow store: {uri}")
    print(shown.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}"))
    return 0
