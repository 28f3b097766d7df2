"""Where the app listens: explicit arguments win, then Gradio's own variables, then the project's older aliases.

Order for the host: ``host`` argument (``mammoscope app --host``), ``GRADIO_SERVER_NAME``, ``MAMMOSCOPE_HOST``,
127.0.0.1 (this machine only). For the port: ``port`` argument, ``GRADIO_SERVER_PORT``, ``MAMMOSCOPE_PORT``, 7860.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

from pipeline.errors import ConfigError

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "HOST_VARIABLES", "PORT_VARIABLES", "server_address"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
HOST_VARIABLES = ("GRADIO_SERVER_NAME", "MAMMOSCOPE_HOST")
PORT_VARIABLES = ("GRADIO_SERVER_PORT", "MAMMOSCOPE_PORT")


def _first(environ: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    for name in names:
        value = (environ.get(name) or "").strip()
        if value:
            return name, value
    return None


def server_address(host: str | None = None, port: int | str | None = None,
                   environ: Mapping[str, str] | None = None) -> tuple[str, int]:
    """(host, port) to serve on; ConfigError naming the variable when a port is not an integer in 1-65535."""
    environ = os.environ if environ is None else environ
    if host is None:
        found = _first(environ, HOST_VARIABLES)
        host = found[1] if found else DEFAULT_HOST
    source = "port argument"
    if port is None:
        found = _first(environ, PORT_VARIABLES)
        source, port = found if found else ("default", DEFAULT_PORT)
    try:
        number = int(port)
    except (TypeError, ValueError):
        number = -1
    if not 1 <= number <= 65535:
        raise ConfigError(f"{source}: port {port!r} is not an integer in 1-65535; set it to a free port, e.g. 7860")
    return host, number
