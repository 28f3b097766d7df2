"""Helpers of the app tests: the tiny density + malignancy champions (tests/_tiny_store.py), and a live app server."""
from __future__ import annotations

import socket
from contextlib import contextmanager
from typing import Iterator

from pipeline.paths import default_data_root
from tests._tiny_store import tiny_store

MIAS_PNG = default_data_root() / "mias" / "images" / "mdb001.png"
CBIS_DICOM = default_data_root() / "cbis_ddsm" / "dicom" / "sfm-benign-0_1-130.dcm"


def tiny_champions() -> tuple[str, dict[str, int]]:
    """(tracking URI, {task: registered version}) of the tiny mammoscope-density/-malignancy champions: the
    process-wide store of tests/_tiny_store.py (the `tiny_store` fixture's), trained on first use."""
    store = tiny_store()
    return store.tracking_uri, dict(store.versions)


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_app(tracking_uri: str, **build: object) -> Iterator[tuple[str, object]]:
    """(url, demo) of the real app served on a free loopback port for the block; closed afterwards."""
    import gradio_app

    port = free_port()
    demo = gradio_app.launch(gradio_app.DEFAULT_HOST, port, tracking_uri, prevent_thread_lock=True, quiet=True,
                             **build)
    try:
        yield f"http://127.0.0.1:{port}/", demo
    finally:
        demo.close()
