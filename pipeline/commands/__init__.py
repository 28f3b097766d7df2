"""One module per `mammoscope` subcommand (HELP, add_arguments(parser), run(args) -> int), and their shared options."""
from __future__ import annotations

import argparse

TRACKING_HELP = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the project folder)"


def add_tracking_option(parser: argparse.ArgumentParser) -> None:
    """`--tracking-uri URI`: every command that touches MLflow takes it."""
    parser.add_argument("--tracking-uri", default=None, help=TRACKING_HELP)
