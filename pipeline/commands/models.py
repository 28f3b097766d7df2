"""`mammoscope models [--name N]`: registered model versions, their aliases and headline metrics;
`mammoscope models --card NAME@ALIAS` (or NAME/VERSION): print that version's model card (Markdown, or --html)."""
from __future__ import annotations

import argparse

HELP = "list registered model versions, aliases and headline metrics"

SHOWN = ["name", "version", "aliases", "task", "selection_metric", "selection_value", "created"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--name (one model) or --prefix (default mammoscope-)."""
    parser.add_argument("--name", help="only this registered model (default: every model named PREFIX*)")
    parser.add_argument("--prefix", default="mammoscope-", help="registered-model name prefix (default: %(default)s)")
    parser.add_argument("--card", metavar="NAME@ALIAS", help="print the model card of NAME@ALIAS or NAME/VERSION")
    parser.add_argument("--html", action="store_true", help="with --card: the self-contained HTML page instead")
    from pipeline.commands import add_tracking_option

    add_tracking_option(parser)


def run(args: argparse.Namespace) -> int:
    """Print one line per version, newest first; 0 also when nothing is registered (says how to train)."""
    from registry.champion import list_models
    from registry.models import TRAIN_HINT
    from registry.store import configure

    uri = configure(args.tracking_uri)
    if args.card:
        return _print_card(args.card, args.html)
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


def _print_card(spec: str, as_html: bool) -> int:
    """Render and print the card of NAME@ALIAS / NAME/VERSION / NAME (= @champion); 1 with the reason if absent."""
    from pipeline.config.card import ModelCard
    from pipeline.config.card_render import render_html, render_markdown
    from pipeline.errors import MammoscopeError
    from registry.cards import load_card

    name, sep, alias = spec.partition("@")
    version = None
    if not sep and "/" in spec:
        name, _, version = spec.rpartition("/")
    try:
        card = load_card(name, alias or "champion", version=version, read_card=ModelCard.from_dict).to_dict()
    except MammoscopeError as exc:
        print(f"error: {exc}")
        return 1
    print(render_html(card) if as_html else render_markdown(card), end="")
    return 0
