#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh Debian machine, then run it.
#   SOAP_DATA_ROOT: folder holding MNIST/raw and FashionMNIST/raw (default: ../shared/data if it
#   exists, else data/, downloaded through torchvision on first use; see tests/conftest.py)
#   SOAP_TEST_WORKERS: pytest-xdist workers (default auto: one per core; 0 runs in this process)
#   extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages: headless Chromium renders the report; PostgreSQL backs the shared-study test.
need=()
command -v chromium >/dev/null || need+=(chromium)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e '.[test,postgres,slurm]'

exec .venv/bin/python -m pytest -n "${SOAP_TEST_WORKERS:-auto}" --dist loadfile "$@"
