"""The PACS connection (#30): credentials from the environment or a file, sent only to the configured origin and
never printed; bounded retries with backoff on 5xx, refused connections and timeouts, errors naming the study.
Real loopback HTTP servers (http.server) and a real Orthanc with authentication; no mocks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from pipeline.errors import MammoscopeError
from pipeline.pacs.connection import (Credentials, Pacs, PacsError, PacsUnreachable, RetryPolicy, _ScopedAuth,
                                      load_credentials)
from pipeline.paths import PROJECT_DIR
from tests._orthanc import Orthanc, missing_reason


class _Server:
    """A loopback HTTP server whose handler answers from `plan(n, handler)`; records each request's headers."""

    def __init__(self, plan):
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.requests.append({"path": self.path, "headers": dict(self.headers)})
                plan(len(outer.requests), self)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _reply(handler, status: int, body: bytes = b"[]", headers: dict | None = None):
    handler.send_response(status)
    handler.send_header("Content-Type", "application/dicom+json")
    for k, v in (headers or {}).items():
        handler.send_header(k, v)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def test_credentials_come_from_a_file_or_the_environment_and_never_show(tmp_path):
    assert load_credentials(environ={}).header() is None
    basic = load_credentials(environ={"MAMMOSCOPE_PACS_USER": "reader", "MAMMOSCOPE_PACS_PASSWORD": "s3cret-pw"})
    assert basic.header() == "Basic cmVhZGVyOnMzY3JldC1wdw=="
    token = load_credentials(environ={"MAMMOSCOPE_PACS_TOKEN": "tok-123"})
    assert token.header() == "Bearer tok-123" and "tok-123" not in repr(token) and "s3cret" not in repr(basic)
    file = tmp_path / "pacs.json"
    file.write_text(json.dumps({"token": "from-file"}))
    assert load_credentials(environ={"MAMMOSCOPE_PACS_CREDENTIALS": str(file),
                                     "MAMMOSCOPE_PACS_TOKEN": "env"}).header() == "Bearer from-file"
    file.write_text("user:password")
    with pytest.raises(MammoscopeError, match="not JSON"):
        load_credentials(file)
    with pytest.raises(MammoscopeError, match="cannot be read"):
        load_credentials(tmp_path / "absent.json")
    with pytest.raises(MammoscopeError, match="no user name or password in the URL"):
        Pacs("http://reader:pw@127.0.0.1:1/dicom-web")


def test_the_authorization_header_goes_only_to_the_configured_origin():
    auth = _ScopedAuth("https://pacs.example.org/dicom-web", Credentials(token="tok"))
    prepared = lambda url: auth(requests.Request("GET", url).prepare()).headers  # noqa: E731
    assert prepared("https://pacs.example.org/dicom-web/studies")["Authorization"] == "Bearer tok"
    assert prepared("https://pacs.example.org:443/dicom-web/studies")["Authorization"] == "Bearer tok"
    for elsewhere in ("https://evil.example.org/dicom-web/studies", "http://pacs.example.org/dicom-web/studies",
                      "https://pacs.example.org:8443/dicom-web/studies", "https://pacs.example.org/other/x"):
        assert "Authorization" not in prepared(elsewhere), elsewhere
    assert "tok" not in repr(auth)


def test_a_redirect_elsewhere_does_not_carry_the_credentials():
    other = _Server(lambda n, h: _reply(h, 200))
    pacs_side = _Server(lambda n, h: _reply(h, 302, b"", {"Location": f"{other.url}/dicom-web/studies"}))
    try:
        pacs = Pacs(f"{pacs_side.url}/dicom-web", Credentials("reader", "s3cret-pw"), RetryPolicy(attempts=1))
        assert pacs.client.search_for_studies() == []
        assert pacs_side.requests[0]["headers"].get("Authorization", "").startswith("Basic ")
        assert other.requests and "Authorization" not in other.requests[0]["headers"]
    finally:
        other.close()
        pacs_side.close()


def test_5xx_is_retried_with_backoff_then_succeeds_and_the_bound_holds():
    server = _Server(lambda n, h: _reply(h, 503 if n <= 2 else 200))
    waits: list[float] = []
    try:
        pacs = Pacs(f"{server.url}/dicom-web", retry=RetryPolicy(attempts=4, backoff=0.5), sleep=waits.append)
        assert pacs.call("search", lambda: pacs.client.search_for_studies(), "1.2.3") == []
        assert len(server.requests) == 3 and waits == [0.5, 1.0]
        waits.clear()
    finally:
        server.close()
    always = _Server(lambda n, h: _reply(h, 500))
    try:
        pacs = Pacs(f"{always.url}/dicom-web", retry=RetryPolicy(attempts=3, backoff=0.1), sleep=waits.append)
        with pytest.raises(PacsError, match=r"study 1\.2\.840\.99: fetch: HTTP 500 after 3 tries"):
            pacs.call("fetch", lambda: pacs.client.search_for_studies(), "1.2.840.99")
        assert len(always.requests) == 3 and waits == [0.1, 0.2]
    finally:
        always.close()


def test_4xx_is_not_retried_and_says_what_to_check():
    server = _Server(lambda n, h: _reply(h, 401))
    try:
        pacs = Pacs(f"{server.url}/dicom-web", retry=RetryPolicy(attempts=3, backoff=0), sleep=lambda s: None)
        with pytest.raises(PacsError, match="HTTP 401 .*check the credentials"):
            pacs.call("search", lambda: pacs.client.search_for_studies())
        assert len(server.requests) == 1
    finally:
        server.close()


def test_refused_and_timed_out_connections_are_retried_then_reported_unreachable():
    server = _Server(lambda n, h: (time.sleep(1.0), _reply(h, 200)))
    port_closed = server.url.rsplit(":", 1)[1]
    try:
        pacs = Pacs(f"{server.url}/dicom-web", retry=RetryPolicy(attempts=2, backoff=0, timeout=0.2))
        with pytest.raises(PacsUnreachable, match="study 9.8.7: search: timed out after 2 tries"):
            pacs.call("search", lambda: pacs.client.search_for_studies(), "9.8.7")
        assert len(server.requests) == 2
    finally:
        server.close()
    pacs = Pacs(f"http://127.0.0.1:{port_closed}/dicom-web", retry=RetryPolicy(attempts=2, backoff=0))
    with pytest.raises(PacsUnreachable, match="connection failed after 2 tries"):
        pacs.call("search", lambda: pacs.client.search_for_studies())


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MAMMOSCOPE_PACS")}, **env,
           "PYTHONPATH": str(PROJECT_DIR)}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "-v", "pacs", *args], capture_output=True,
                          text=True, env=env, timeout=120)


@pytest.mark.server
def test_orthanc_with_basic_auth_takes_the_environment_s_credentials_and_never_prints_them(tmp_path):
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    server = Orthanc(tmp_path / "orthanc", users={"reader": "s3cret-pw-42"}).start()
    try:
        args = ("score", "--url", server.dicomweb, "--retries", "1")
        ok = _cli(*args, env={"MAMMOSCOPE_PACS_USER": "reader", "MAMMOSCOPE_PACS_PASSWORD": "s3cret-pw-42"})
        assert ok.returncode == 0 and "no MG studies found" in ok.stderr, ok.stderr[-1500:]
        wrong = _cli(*args, env={"MAMMOSCOPE_PACS_USER": "reader", "MAMMOSCOPE_PACS_PASSWORD": "wrong-pw-77"})
        assert wrong.returncode == 4 and "HTTP 401" in wrong.stderr and "check the credentials" in wrong.stderr
        none = _cli(*args, env={})
        assert none.returncode == 4 and "HTTP 401" in none.stderr
        for run in (ok, wrong, none):
            text = run.stdout + run.stderr
            assert "s3cret-pw-42" not in text and "wrong-pw-77" not in text and "Basic " not in text
    finally:
        server.remove_storage()


def test_an_unreachable_pacs_exits_4_naming_the_url_not_a_traceback():
    server = _Server(lambda n, h: _reply(h, 200))
    url = server.url
    server.close()
    run = _cli("score", "--url", f"{url}/dicom-web", "--retries", "2", "--backoff", "0", env={})
    assert run.returncode == 4, run.stderr[-1500:]
    assert "connection failed after 2 tries" in run.stderr and "Traceback" not in run.stderr
