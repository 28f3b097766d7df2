#!/usr/bin/env bash
# One entry point for a fresh clone: `bash scripts/dev.sh run` (the main job) or `bash scripts/dev.sh test`.
# Both create or reuse the virtual environment .venv in the project folder and install the project into it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MAMMOSCOPE_VENV:-.venv}"
PY="${PYTHON:-python3}"

setup_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating virtual environment $VENV"
    "$PY" -m venv "$VENV"
  fi
  # Installs are cheap when nothing changed: pip only checks what is there.
  "$VENV/bin/python" -m pip install -q --upgrade pip
  echo "== installing mammoscope and its test extras into $VENV (first time: a few minutes)"
  "$VENV/bin/python" -m pip install -q -e ".[test]"
}

install_browser() {
  # The browser test drives Debian's chromium; playwright's own browser download is not used.
  if [ -x /usr/bin/chromium ]; then return 0; fi
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "== installing Debian chromium for the browser test"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "!! chromium could not be installed: the browser test will be skipped with that reason"
  else
    echo "!! chromium missing and apt-get unavailable (not root): the browser test will be skipped"
  fi
}

install_pacs() {
  # The PACS tests start Debian's Orthanc with its DICOMweb plugin on loopback (tests/_orthanc.py).
  if [ -x /usr/sbin/Orthanc ] && [ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then return 0; fi
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "== installing Debian orthanc and orthanc-dicomweb for the PACS tests"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb >/dev/null) \
      || echo "!! orthanc could not be installed: the PACS tests will be skipped with that reason"
  else
    echo "!! orthanc missing and apt-get unavailable (not root): the PACS tests will be skipped"
  fi
}

cmd="${1:-}"; shift || true
case "$cmd" in
  run)
    setup_venv
    # Fetch mini-MIAS when absent (docs/data.md), train + register every task's model (champions), serve the app.
    exec "$VENV/bin/mammoscope" main --serve "$@"
    ;;
  test)
    setup_venv
    install_browser
    install_pacs
    export GRADIO_ANALYTICS_ENABLED=False MPLBACKEND=Agg
    set +e
    "$VENV/bin/python" -m pytest "$@"
    rc=$?
    set -e
    if [ "$rc" = 5 ]; then echo "!! pytest collected no tests: failing"; exit 1; fi
    exit "$rc"
    ;;
  *)
    echo "usage: bash scripts/dev.sh run|test [args...]" >&2
    exit 2
    ;;
esac
