#!/usr/bin/env bash
# Tools the deploy/ops tests run besides Python: promtool + a Prometheus server (Debian's
# package), kubectl (its built-in kustomize), chromium (the report test) and checkov (in its own venv: its pins clash with
# Lethe's). Idempotent and quick once done; `make test` runs it (the demo needs none of them).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${LETHE_VENV:-.venv}

apt_install() {
    if [ "$(id -u)" != 0 ]; then
        echo "tools: $* missing; install the Debian package(s) as root: apt-get install $*" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends "$@" >/dev/null; }
}

command -v promtool >/dev/null && command -v prometheus >/dev/null || apt_install prometheus
command -v kubectl >/dev/null || apt_install kubectl
# the report test opens a deletion's page in it (playwright drives it; never downloads a browser)
command -v chromium >/dev/null || apt_install chromium

CHECKOV="$VENV/tools/checkov"
STAMP="$CHECKOV/.installed-$(sha256sum requirements/checkov.lock | cut -c1-16)"
if [ ! -f "$STAMP" ]; then
    rm -rf "$CHECKOV"
    python3.11 -m venv "$CHECKOV"
    "$CHECKOV/bin/python" -m pip --disable-pip-version-check -q install -r requirements/checkov.lock
    touch "$STAMP"
fi
