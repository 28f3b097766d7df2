"""One PACS over DICOMweb: the URL, the credentials, timeouts and bounded retries around `dicomweb-client`.

Credentials (HTTP basic or a bearer token) come from the environment or a file, never from the command line or the
URL (both end up in shell history and process lists). They are attached by a `requests` auth hook that adds the
``Authorization`` header only to requests whose scheme, host and port are the configured URL's, so a redirect or a
BulkDataURI pointing elsewhere never receives them; they are never logged (dicomweb-client logs request headers at
DEBUG level, which is why the header is not passed as a client header and its logger is kept at WARNING).

Own code (the retry loop) because dicomweb-client's built-in retry covers HTTP status codes only, not refused
connections, timeouts or an unreadable reply; ours covers all four with one bound and one backoff.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import urlsplit

from pipeline.errors import MammoscopeError

__all__ = ["PacsError", "PacsUnreachable", "Credentials", "RetryPolicy", "Pacs", "load_credentials",
           "ENV_USER", "ENV_PASSWORD", "ENV_TOKEN", "ENV_CREDENTIALS_FILE"]

log = logging.getLogger(__name__)
T = TypeVar("T")

ENV_USER, ENV_PASSWORD, ENV_TOKEN = "MAMMOSCOPE_PACS_USER", "MAMMOSCOPE_PACS_PASSWORD", "MAMMOSCOPE_PACS_TOKEN"
ENV_CREDENTIALS_FILE = "MAMMOSCOPE_PACS_CREDENTIALS"
for _noisy in ("dicomweb_client", "urllib3"):  # their DEBUG lines carry request headers and bodies
    logging.getLogger(_noisy).setLevel(logging.WARNING)


class PacsError(MammoscopeError):
    """A PACS request that failed after its retries (the message names the study, never the patient)."""


class PacsUnreachable(PacsError):
    """The PACS did not answer at all (refused, reset, timed out) after the retries."""


@dataclass(frozen=True)
class Credentials:
    """HTTP basic (username, password) or a bearer token; repr never shows the secret."""

    username: str | None = None
    password: str | None = None
    token: str | None = None

    def __repr__(self) -> str:
        kind = "bearer" if self.token else "basic" if self.username else "none"
        return f"Credentials({kind})"

    def header(self) -> str | None:
        """The Authorization header value, None without credentials."""
        if self.token:
            return f"Bearer {self.token}"
        if self.username is not None:
            import base64

            raw = f"{self.username}:{self.password or ''}".encode()
            return "Basic " + base64.b64encode(raw).decode("ascii")
        return None


def load_credentials(path: str | Path | None = None, environ: dict[str, str] | None = None) -> Credentials:
    """Credentials from `path` (else $MAMMOSCOPE_PACS_CREDENTIALS), a JSON file {"username", "password"} or
    {"token"}; else from $MAMMOSCOPE_PACS_TOKEN or $MAMMOSCOPE_PACS_USER / $MAMMOSCOPE_PACS_PASSWORD; else none."""
    env = os.environ if environ is None else environ
    path = path or env.get(ENV_CREDENTIALS_FILE)
    if path:
        file = Path(path)
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise MammoscopeError(f"credentials file {file}: cannot be read ({exc.strerror or exc}); check the path "
                                  "and that this user may read it") from None
        except ValueError:
            raise MammoscopeError(f"credentials file {file}: not JSON; write {{\"username\": ..., \"password\": ...}} "
                                  "or {\"token\": ...}") from None
        if not isinstance(data, dict) or not (data.get("token") or data.get("username")):
            raise MammoscopeError(f"credentials file {file}: give \"username\" and \"password\", or \"token\"")
        return Credentials(data.get("username"), data.get("password"), data.get("token"))
    if env.get(ENV_TOKEN):
        return Credentials(token=env[ENV_TOKEN])
    if env.get(ENV_USER):
        return Credentials(env[ENV_USER], env.get(ENV_PASSWORD, ""))
    return Credentials()


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


class _ScopedAuth:
    """requests auth hook: the Authorization header only for requests to the configured origin (and path root)."""

    def __init__(self, base_url: str, credentials: Credentials) -> None:
        self._origin, self._root = _origin(base_url), urlsplit(base_url).path.rstrip("/")
        self._header = credentials.header()

    def __repr__(self) -> str:
        return "_ScopedAuth(***)"

    def __call__(self, request: Any) -> Any:
        if self._header and _origin(request.url) == self._origin and \
                urlsplit(request.url).path.startswith(self._root):
            request.headers["Authorization"] = self._header
        else:
            request.headers.pop("Authorization", None)
        return request


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries: `attempts` tries in all, waiting backoff * 2**k seconds (at most `max_wait`) between them."""

    attempts: int = 4
    backoff: float = 1.0
    max_wait: float = 30.0
    timeout: float = 60.0  # seconds per HTTP request (connect and each read)


class Pacs:
    """A DICOMweb endpoint (QIDO-RS, WADO-RS, STOW-RS under one root) with scoped credentials and retries."""

    def __init__(self, url: str, credentials: Credentials | None = None, retry: RetryPolicy | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        import requests
        from dicomweb_client.api import DICOMwebClient

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise MammoscopeError(f"--url {url!r}: give the DICOMweb root, e.g. https://pacs.example.org/dicom-web")
        if parts.username or parts.password:
            raise MammoscopeError("--url: put no user name or password in the URL (it would show in process lists "
                                  f"and logs); use ${ENV_USER}/${ENV_PASSWORD}, ${ENV_TOKEN} or a credentials file")
        self.url = url.rstrip("/")
        self.credentials = credentials or Credentials()
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        if self.credentials.header() and parts.scheme == "http" and parts.hostname not in ("localhost", "127.0.0.1",
                                                                                           "::1"):
            log.warning("sending PACS credentials over plain http to %s; use https outside a trusted network",
                        parts.hostname)
        session = requests.Session()
        session.trust_env = False  # no ~/.netrc credentials or proxy from the environment: only what we configure
        session.auth = _ScopedAuth(self.url, self.credentials)
        self.client = DICOMwebClient(self.url, session=session, timeout=self.retry.timeout)
        self.client.set_http_retry_params(retry=False)  # our loop retries (also refused connections and timeouts)

    def __repr__(self) -> str:
        return f"Pacs({self.url!r})"

    def call(self, what: str, fn: Callable[[], T], study: str | None = None) -> T:
        """fn() with bounded retries on refused connections, timeouts, HTTP 5xx/429 and unreadable replies;
        PacsError (PacsUnreachable when the PACS never answered) naming `what` and the study UID after the last."""
        import requests

        last: BaseException | None = None
        where = f"study {study}: " if study else ""
        for attempt in range(self.retry.attempts):
            try:
                return fn()
            except requests.HTTPError as exc:
                status = getattr(exc.response, "status_code", None)
                if status is not None and status < 500 and status != 429:
                    raise PacsError(f"{where}{what}: the PACS answered HTTP {status}"
                                    f"{_hint(status)}") from None
                last = exc
                reason = f"HTTP {status}"
            except (requests.ConnectionError, requests.Timeout) as exc:
                last = exc
                reason = "timed out" if isinstance(exc, requests.Timeout) else "connection failed"
            except (ValueError, KeyError, IndexError, TypeError, EOFError) as exc:  # malformed reply / instance
                last = exc
                reason = f"unreadable reply ({type(exc).__name__})"
            if attempt + 1 < self.retry.attempts:
                wait = min(self.retry.max_wait, self.retry.backoff * 2 ** attempt)
                log.info("%s%s: %s; retry %d of %d in %.1f s", where, what, reason, attempt + 1,
                         self.retry.attempts - 1, wait)
                self._sleep(wait)
        import requests as _r

        unreachable = isinstance(last, (_r.ConnectionError, _r.Timeout))
        kind = PacsUnreachable if unreachable else PacsError
        raise kind(f"{where}{what}: {reason} after {self.retry.attempts} tries ({self.url}); check that the PACS is up "
                   "and reachable, then run again: scored studies are skipped") from None


def _hint(status: int) -> str:
    return {401: " (unauthorised: check the credentials)", 403: " (forbidden: this account may not do this)",
            404: " (not found: check --url, e.g. it should end in /dicom-web)",
            413: " (request too large for the PACS)"}.get(status, "")
