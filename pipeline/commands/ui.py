"""`mammoscope ui [--port 5000]`: the MLflow UI on the embedded store (`mlflow ui` subprocess on loopback)."""
from __future__ import annotations

import argparse
import subprocess
import sys

HELP = "open the MLflow UI on the tracking store"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--port, --host."""
    parser.add_argument("--port", type=int, default=5000, help="port to serve on (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s, loopback)")
    from pipeline.commands import add_tracking_option

    add_tracking_option(parser)


def ui_command(tracking_uri: str, artifacts_dir: str | None, host: str, port: int) -> list[str]:
    """The `mlflow ui` command line for an embedded store (one worker; artifacts served from beside the .db)."""
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri, "--host", host,
           "--port", str(port), "--workers", "1"]
    if artifacts_dir:
        cmd += ["--artifacts-destination", artifacts_dir]
    return cmd


def run(args: argparse.Namespace) -> int:
    """Start the UI and wait until Ctrl-C; with a team server URI just print where it is."""
    from pipeline.paths import default_tracking_uri

    uri = args.tracking_uri or default_tracking_uri()
    if uri.startswith(("http://", "https://")):
        print(f"MLflow tracking server (team mode): open {uri} in a browser")
        return 0
    from registry.store import artifact_root, configure, local_db_path

    configure(uri)
    db = local_db_path(uri)
    cmd = ui_command(uri, artifact_root(uri), args.host, args.port)
    print(f"MLflow UI on {uri}: http://{args.host}:{args.port}  (Ctrl-C to stop)")
    try:
        return subprocess.call(cmd, cwd=str(db.parent) if db is not None else None)
    except KeyboardInterrupt:
        return 0
