#!/usr/bin/env bash
# Install lifeline on Debian / Ubuntu / Raspberry Pi OS: system servers through apt, the Python
# package (with its test tools) in ./.venv. Safe to run again; it only adds what is missing.
# chromium is for the console's end-to-end browser tests (Playwright drives the Debian package);
# postgresql for its tests with several instances on one database (each test starts its own cluster).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need=()
for pkg in mosquitto victoria-metrics python3-venv faketime chromium postgresql; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing system packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "==> creating virtual environment .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
echo "==> installing lifeline into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
echo "==> installed: $(.venv/bin/lifeline --version)"
