#!/usr/bin/env bash
# The README's test command: installs everything the tests need on a fresh
# Debian machine (system packages when run as root, a venv with the Python
# dependencies), then runs lint, type checks and the whole test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k e2e
set -euo pipefail
cd "$(dirname "$0")/.."

debian_packages=()
command -v promtool >/dev/null || debian_packages+=(prometheus)
command -v prometheus-blackbox-exporter >/dev/null || debian_packages+=(prometheus-blackbox-exporter)
command -v prometheus-alertmanager >/dev/null || debian_packages+=(prometheus-alertmanager)
command -v chromium >/dev/null || debian_packages+=(chromium)
command -v nft >/dev/null || debian_packages+=(nftables)
command -v victoria-metrics >/dev/null || debian_packages+=(victoria-metrics)
command -v ip >/dev/null || debian_packages+=(iproute2)
command -v nghttpd >/dev/null || debian_packages+=(nghttp2-server)
command -v faketime >/dev/null || debian_packages+=(faketime)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || debian_packages+=(postgresql)
if ((${#debian_packages[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian packages: ${debian_packages[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${debian_packages[@]}" >/dev/null
  else
    echo "missing Debian packages (tests needing them will skip): ${debian_packages[*]}" >&2
  fi
fi
# Debian packages start services (prometheus, alertmanager, victoria-metrics, nghttpx, the
# postgresql cluster) we do not want competing for ports; the tests start their own instances.
if [ "$(id -u)" = 0 ] && command -v systemctl >/dev/null; then
  systemctl stop prometheus prometheus-blackbox-exporter prometheus-node-exporter \
    prometheus-alertmanager victoria-metrics nghttpx postgresql >/dev/null 2>&1 || true
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy probemesh
# Two workers, each taking whole test files: most of the suite waits on probe
# intervals, restarts and timeouts, so two files at a time finish in about half
# the time (docs/benchmarks.md, Test suite time). `-n 0` runs it in one process.
exec .venv/bin/python -m pytest -n 2 --dist loadfile "$@"
