"""A real Orthanc (Debian's /usr/sbin/Orthanc + DICOMweb plugin) on free loopback ports with a temporary storage
folder, for the PACS tests and benchmarks/pacs.py; `scripts/dev.sh test` installs it (root + apt-get)."""
from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")

__all__ = ["ORTHANC", "DICOMWEB_PLUGIN", "missing_reason", "Orthanc"]


def missing_reason() -> str | None:
    """Why a real Orthanc cannot start here (None when it can)."""
    if not ORTHANC.is_file():
        return f"{ORTHANC} is absent: install Debian's orthanc and orthanc-dicomweb (scripts/dev.sh test does, as root)"
    if not DICOMWEB_PLUGIN.is_file():
        return f"{DICOMWEB_PLUGIN} is absent: install Debian's orthanc-dicomweb"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Orthanc:
    """One Orthanc process; `users` ({name: password}) turns HTTP basic authentication on."""

    folder: Path
    users: dict[str, str] = field(default_factory=dict)
    http_port: int = 0
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self, timeout: float = 30.0) -> "Orthanc":
        """Start (or restart on the same storage) on fresh free ports; waits until GET /system answers."""
        import requests

        self.http_port = _free_port()
        (self.folder / "db").mkdir(parents=True, exist_ok=True)
        config = {"Name": "MAMMOSCOPE-TEST", "StorageDirectory": str(self.folder / "db"),
                  "IndexDirectory": str(self.folder / "db"), "HttpPort": self.http_port, "DicomPort": _free_port(),
                  "RemoteAccessAllowed": False, "AuthenticationEnabled": bool(self.users),
                  "RegisteredUsers": self.users, "HttpTimeout": 60, "StableAge": 1,
                  "Plugins": [str(DICOMWEB_PLUGIN)],
                  "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "Full",
                               "SeriesMetadata": "Full"}}
        path = self.folder / "config.json"
        path.write_text(json.dumps(config))
        log = open(self.folder / "orthanc.log", "ab")
        self.process = subprocess.Popen([str(ORTHANC), str(path)], stdout=log, stderr=log, cwd=self.folder,
                                        start_new_session=True)
        auth = next(iter(self.users.items()), None)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}; see {self.folder / 'orthanc.log'}")
            try:
                if requests.get(f"{self.url}/system", auth=auth, timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout} s; see {self.folder / 'orthanc.log'}")

    def stop(self) -> None:
        """Stop this Orthanc process (SIGTERM, then SIGKILL after 10 s)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def upload(self, path: str | Path) -> dict:
        """POST one DICOM file to /instances (REST); returns Orthanc's answer."""
        import requests

        auth = next(iter(self.users.items()), None)
        reply = requests.post(f"{self.url}/instances", data=Path(path).read_bytes(), auth=auth, timeout=60)
        reply.raise_for_status()
        return reply.json()

    def instances_of(self, study_uid: str) -> list[dict]:
        """Every instance of a study as Orthanc's tag summaries (REST /tools/find)."""
        import requests

        auth = next(iter(self.users.items()), None)
        reply = requests.post(f"{self.url}/tools/find", auth=auth, timeout=30,
                              json={"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}, "Expand": True})
        reply.raise_for_status()
        return reply.json()

    def clear(self) -> None:
        """Delete every study (REST), keeping the process."""
        import requests

        auth = next(iter(self.users.items()), None)
        for study in requests.get(f"{self.url}/studies", auth=auth, timeout=30).json():
            requests.delete(f"{self.url}/studies/{study}", auth=auth, timeout=30).raise_for_status()

    def remove_storage(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
