"""A loopback HTTP server holding a real mini-MIAS archive, built from ../shared/data/mias converted back to the
official format (``all-mias.tar.gz``: mdbNNN.pgm + Info.txt + Licence.txt at the top), for the fetch tests.

The server speaks plain HTTP/1.1 over a real socket on 127.0.0.1, answers Range requests with 206 as a real file
server does, and can cut the first `cuts` responses after `cut_after` bytes (the headers promise the whole file):
the truncated transfers a resumable download must survive. Nothing here reaches the internet."""
from __future__ import annotations

import shutil
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

__all__ = ["ArchiveServer", "build_archive", "pgm_folder", "refused_url"]

ARCHIVE_NAME = "all-mias.tar.gz"


def pgm_folder(mias_dir: Path, out: Path) -> Path:
    """The official layout of mini-MIAS in `out`: each PNG of `mias_dir`/images written back as its binary PGM."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    for png in sorted((mias_dir / "images").glob("mdb*.png")):
        with Image.open(png) as im:
            im.save(out / f"{png.stem}.pgm")  # P5, maxval 255: the original files' format
    for name in ("Info.txt", "Licence.txt"):
        shutil.copy(mias_dir / name, out / name)
    return out


def build_archive(folder: Path, dest: Path, *, corrupt: dict[str, str] | None = None) -> Path:
    """``dest`` = a gzipped tar of every file in `folder` at the archive's top level. `corrupt` {mdbNNN: how}:
    'pixel' changes one pixel of that image, 'missing' leaves it out."""
    from PIL import Image

    corrupt = corrupt or {}
    with tarfile.open(dest, "w:gz", compresslevel=1) as tar:
        for path in sorted(folder.iterdir()):
            how = corrupt.get(path.stem)
            if how == "missing":
                continue
            if how == "pixel":
                pixels = np.array(Image.open(path))
                pixels[512, 512] ^= 1
                changed = dest.parent / path.name
                Image.fromarray(pixels).save(changed)
                tar.add(changed, arcname=path.name)
                changed.unlink()
                continue
            tar.add(path, arcname=path.name)
    return dest


class ArchiveServer:
    """Serve `data` (bytes) at /all-mias.tar.gz on 127.0.0.1 in a thread; `requests` records each GET's Range."""

    def __init__(self, data: bytes, *, cut_after: int = 0, cuts: int = 0) -> None:
        self.data = data
        self.cut_after = cut_after
        self.cuts = cuts
        self.requests: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.rsplit("/", 1)[-1] != ARCHIVE_NAME:
                    self.send_error(404, "not found")
                    return
                header = self.headers.get("Range")
                server.requests.append(header)
                start = int(header.split("=", 1)[1].split("-", 1)[0]) if header else 0
                if start >= len(server.data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(server.data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = server.data[start:]
                self.send_response(206 if header else 200)
                if header:
                    self.send_header("Content-Range", f"bytes {start}-{len(server.data) - 1}/{len(server.data)}")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "application/gzip")
                self.end_headers()
                if server.cuts > 0:
                    server.cuts -= 1
                    self.wfile.write(body[: server.cut_after])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/pix/mias/{ARCHIVE_NAME}"

    def __enter__(self) -> "ArchiveServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def refused_url() -> str:
    """A loopback URL whose port was just free (nothing listens): connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/pix/mias/{ARCHIVE_NAME}"
