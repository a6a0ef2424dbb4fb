#!/usr/bin/env bash
# Install lifeline on Debian / Ubuntu / Raspberry Pi OS. Safe to run again; it only adds what is
# missing (and rebuilds lifeline itself).
#
#   bash deploy/install.sh                  developer set-up in this clone (README, CI): Mosquitto,
#                                           VictoriaMetrics, faketime, Chromium (the console's
#                                           browser tests) and PostgreSQL (its multi-instance
#                                           tests) from apt; ./.venv with lifeline editable plus
#                                           the test extras, tests/ and benchmarks/ importable;
#                                           kernels compiled ahead.
#   sudo bash deploy/install.sh --production
#                                           a cabinet or the centre: only what production needs.
#                                           lifeline built as a wheel into /opt/lifeline/.venv, the
#                                           system user `lifeline`, /etc/lifeline (sample configs
#                                           if none), /var/lib/lifeline, /var/cache/lifeline,
#                                           systemd units (installed, not enabled), kernels
#                                           compiled ahead as the service user.
#
# Options (with --production): --with-tests (the test extras and their servers too, to run the
# suite on the target), --with-servers (Mosquitto and VictoriaMetrics from apt, for the centre or
# the demo), --prefix DIR (instead of /opt/lifeline), --root DIR (stage everything under DIR: no
# apt, no user, no systemctl; for packaging and the tests). Any mode: --no-precompile.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC="$PWD"

MODE=develop WITH_TESTS=0 WITH_SERVERS=0 PRECOMPILE=1 PREFIX=/opt/lifeline ROOT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --production) MODE=production ;;
    --with-tests) WITH_TESTS=1 ;;
    --with-servers) WITH_SERVERS=1 ;;
    --no-precompile) PRECOMPILE=0 ;;
    --prefix) PREFIX="$2"; shift ;;
    --root) ROOT="$(realpath -m "$2")"; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$MODE" = develop ]; then WITH_TESTS=1 WITH_SERVERS=1; fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

apt_install() {
  local need=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg"); done
  if [ ${#need[@]} -gt 0 ]; then
    echo "==> installing system packages: ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

packages=(python3-venv)
if [ "$WITH_SERVERS" = 1 ]; then packages+=(mosquitto victoria-metrics); fi
if [ "$WITH_TESTS" = 1 ]; then packages+=(faketime chromium postgresql); fi
if [ -z "$ROOT" ]; then apt_install "${packages[@]}"; fi

PYTHON="${PYTHON:-python3}"
pip_quiet=(-q --disable-pip-version-check)
extras=""
if [ "$WITH_TESTS" = 1 ]; then extras="[test]"; fi

make_venv() {  # make_venv DIR
  if [ ! -x "$1/bin/python" ]; then
    echo "==> creating virtual environment $1 with $($PYTHON --version)"
    "$PYTHON" -m venv "$1"
  fi
  "$1/bin/python" -m pip install "${pip_quiet[@]}" --upgrade pip >/dev/null
}

precompile() {  # precompile VENV [USER CACHE_DIR]: fill the kernel cache the agent will read
  if [ "$PRECOMPILE" = 0 ]; then return; fi
  echo "==> compiling the detection kernels ahead (once per install or upgrade)"
  if [ -n "${2:-}" ]; then
    runuser -u "$2" -- env NUMBA_CACHE_DIR="$3" "$1/bin/lifeline" precompile
  elif [ -n "${3:-}" ]; then
    env NUMBA_CACHE_DIR="$3" "$1/bin/lifeline" precompile
  else
    "$1/bin/lifeline" precompile
  fi
}

if [ "$MODE" = develop ]; then
  make_venv .venv
  echo "==> installing lifeline into .venv (editable, with the test extras)"
  .venv/bin/python -m pip install "${pip_quiet[@]}" -e ".$extras"
  # The wheel holds the product only; in a clone, tests/ and benchmarks/ come from the tree.
  purelib="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "$SRC" > "$purelib/lifeline-source-tree.pth"
  precompile .venv
  echo "==> installed: $(.venv/bin/lifeline --version)"
  exit 0
fi

# ---------------------------------------------------------------- production
if [ -z "$ROOT" ] && [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: --production sets up users, /etc and systemd: run it as root (sudo)" >&2
  exit 1
fi
VENV="$ROOT$PREFIX/.venv"
ETC="$ROOT/etc/lifeline" STATE="$ROOT/var/lib/lifeline" CACHE="$ROOT/var/cache/lifeline"
UNITS="$ROOT/etc/systemd/system"
SERVICE_USER=lifeline
owner=()
if [ -z "$ROOT" ]; then
  if ! id "$SERVICE_USER" >/dev/null 2>&1; then
    echo "==> creating the system user $SERVICE_USER"
    useradd --system --home /var/lib/lifeline --shell /usr/sbin/nologin --groups dialout "$SERVICE_USER"
  fi
  owner=(-o "$SERVICE_USER" -g "$SERVICE_USER")
fi
install -d -m 0755 "$ROOT$PREFIX" "$ROOT$PREFIX/docs" "$UNITS"
install -d -m 0750 "${owner[@]}" "$ETC" "$STATE" "$CACHE" "$CACHE/numba"

make_venv "$VENV"
build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT
echo "==> building the lifeline wheel"
cp -r pyproject.toml README.md lifeline edge_agent gateway firmware_stubs simulators "$build/"
"$VENV/bin/python" -m pip wheel "${pip_quiet[@]}" --no-deps -w "$build/dist" "$build"
wheel="$(ls "$build"/dist/lifeline-*.whl)"
echo "==> installing $(basename "$wheel")$extras into $VENV"
"$VENV/bin/python" -m pip install "${pip_quiet[@]}" --force-reinstall --no-deps "$wheel"
"$VENV/bin/python" -m pip install "${pip_quiet[@]}" "$wheel$extras"
cp docs/*.md "$ROOT$PREFIX/docs/"

for sample in agent gateway; do
  if [ ! -e "$ETC/$sample.toml" ]; then
    install -m 0640 "${owner[@]}" "deploy/$sample.sample.toml" "$ETC/$sample.toml"
    echo "==> wrote $ETC/$sample.toml from the sample: edit ids, sensors and brokers"
  fi
done
for unit in deploy/systemd/*.service; do
  sed -e "s#/opt/lifeline/.venv#$PREFIX/.venv#g" -e "s#/opt/lifeline/docs#$PREFIX/docs#g" \
    "$unit" > "$UNITS/$(basename "$unit")"
done
if [ -z "$ROOT" ]; then
  precompile "$VENV" "$SERVICE_USER" /var/cache/lifeline/numba
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
else
  precompile "$VENV" "" "$CACHE/numba"
fi
echo "==> installed: $("$VENV/bin/lifeline" --version) in $VENV"
echo "    next: edit $ETC/agent.toml, then: systemctl enable --now lifeline-agent (docs/deployment.md)"
