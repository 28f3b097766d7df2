"""`mammoscope app`: start the Gradio app on the registry's champions (127.0.0.1 unless --host says otherwise)."""
from __future__ import annotations

import argparse

HELP = "start the Gradio app on the registry's champions"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `mammoscope app`."""
    parser.add_argument("--host", default=None,
                        help="interface to bind (default: $GRADIO_SERVER_NAME, else 127.0.0.1: this machine only; "
                        "0.0.0.0 exposes it to the network)")
    parser.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT, else 7860)")
    from pipeline.commands import add_tracking_option

    add_tracking_option(parser)
    parser.add_argument("--alias", default="champion", help="registry alias of the models to serve (default champion)")


def run(args: argparse.Namespace) -> int:
    """Build and serve the app until interrupted; returns 0."""
    import gradio_app

    gradio_app.launch(host=args.host, port=args.port, tracking_uri=args.tracking_uri, alias=args.alias)
    return 0
