#!/usr/bin/env bash
# Verify, under qemu user emulation, that florete-agent installs and runs its main job on
# Debian bookworm armhf. Re-runnable; see packaging/armhf/README.md.
#
# Usage: packaging/armhf/check.sh [CHROOT_DIR]     (default /var/tmp/florete-armhf; run as root)
#
# Exit status: 0 every check passed; 1 a step failed (the summary says which).
set -euo pipefail

ROOT=${1:-/var/tmp/florete-armhf}
SUITE=bookworm
ARCH=armhf
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=packaging/chroot.sh
. "$HERE/../chroot.sh"
REPO=$(cd "$HERE/../.." && pwd)
VENV=/opt/florete-agent                     # inside the chroot
DEBIAN_PACKAGES=(python3 python3-venv python3-psutil python3-cryptography python3-yaml python3-cffi)
# Distributions that must come from Debian's packages (no armv7 wheels on PyPI, or, for
# cryptography, Debian's security updates; the agent runs on bookworm's 38.0.4).
DEBIAN_DISTS="psutil PyYAML cffi cryptography"
# pip installs wheels only (a board has no compiler), except these sdists: they have no armv7 wheel
# and build without a compiler (dbus-fast falls back to pure Python when Cython cannot compile).
SDIST_OK="dbus-fast"
# Inside the chroot: pip trusts the host's CA bundle (it may sit behind a TLS proxy).
CHROOT_SET_ENV="PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_CERT=/etc/florete-check/ca.crt"
CHROOT_PASS_ENV="PIP_INDEX_URL ARMHF_CHECK_TIMEOUT"

declare -a SUMMARY=() SOFT_FAILED=()
CURRENT=""
T0=$SECONDS
LOG_DIR=$ROOT.logs

die() { echo "check.sh: $*" >&2; exit 1; }

# Run "$@" as step NAME and record its duration. A failing command ends the script (set -e); the
# EXIT trap then reports CURRENT as the failed step.
step() {
  local start=$SECONDS
  CURRENT=$1
  shift
  echo
  echo "=== $CURRENT"
  "$@"
  SUMMARY+=("$(printf '%-13s ok      %4ss' "$CURRENT" $((SECONDS - start)))")
  CURRENT=""
}

# Like step, but a failure is recorded and the script goes on (exit status 1 at the end), so that
# one run reports every problem. "$@" must check its own commands: set -e is off inside it.
soft_step() {
  local name=$1 start=$SECONDS rc=0
  shift
  echo
  echo "=== $name"
  "$@" || rc=$?
  if [ "$rc" -eq 0 ]; then
    SUMMARY+=("$(printf '%-13s ok      %4ss' "$name" $((SECONDS - start)))")
  else
    SUMMARY+=("$(printf '%-13s FAILED  %4ss  (see above; the script went on)' "$name" $((SECONDS - start)))")
    SOFT_FAILED+=("$name")
  fi
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  release_chroot || rc=1
  echo
  echo "=== summary (chroot $ROOT, logs in $LOG_DIR)"
  printf '%s\n' "${SUMMARY[@]}"
  if [ -n "$CURRENT" ]; then
    printf '%-13s FAILED\n' "$CURRENT"
  fi
  if [ -s "$LOG_DIR/run.log" ]; then
    sed -n '/^\$ florete-agent get pods -o wide$/,/^\$ /{/^\$ /!s/^/  /p}' "$LOG_DIR/run.log"
  fi
  if [ -s "$LOG_DIR/figures" ]; then
    sed 's/^FIGURE /  /' "$LOG_DIR/figures"
  fi
  echo "total         $((SECONDS - T0))s"
  if [ -n "$CURRENT" ] || [ "$rc" -ne 0 ] || [ ${#SOFT_FAILED[@]} -gt 0 ]; then
    echo "RESULT: FAILED: ${CURRENT:-}${CURRENT:+ }${SOFT_FAILED[*]}"
    exit 1
  fi
  echo "RESULT: ok, florete-agent installs and runs on Debian $SUITE armhf (qemu-arm user emulation)"
}

chroot_packages() {
  # Name resolution and the CA bundle pip must trust (the host's: it may sit behind a TLS proxy).
  cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
  mkdir -p "$ROOT/etc/florete-check"
  cp -L "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" "$ROOT/etc/florete-check/ca.crt"
  local p need=0
  for p in "${DEBIAN_PACKAGES[@]}"; do
    # shellcheck disable=SC2016  # dpkg-query's own ${field} syntax
    in_chroot dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
      need=1
  done
  if [ "$need" = 1 ]; then
    in_chroot apt-get update -q
    in_chroot apt-get install -y -q --no-install-recommends "${DEBIAN_PACKAGES[@]}"
  fi
  # shellcheck disable=SC2016
  in_chroot dpkg-query -W -f='${Package} ${Version} ${Architecture}\n' "${DEBIAN_PACKAGES[@]}"
}

copy_repo() {
  rm -rf "$ROOT/src"
  mkdir -p "$ROOT/src"
  tar -C "$REPO" --exclude=./.venv --exclude=./.git --exclude=__pycache__ \
    --exclude=./.mypy_cache --exclude=./.pytest_cache --exclude=./.ruff_cache \
    --exclude=./.hypothesis --exclude='*.egg-info' --exclude=./build -cf - . |
    tar -C "$ROOT/src" -xf -
  du -sh "$ROOT/src"
}

make_venv() {
  in_chroot rm -rf "$VENV"
  in_chroot python3 -m venv --system-site-packages "$VENV"
  in_chroot "$VENV/bin/pip" --version
}

pip_install() {
  # Never build a dependency from source: armv7 has no wheels for psutil/cffi and no compiler here.
  local -a sdists=()
  # (bookworm's pip 23.0 reuses a wheel built on an earlier run only with that feature turned on)
  if [ -n "$SDIST_OK" ]; then
    sdists=(--no-binary "${SDIST_OK// /,}" --use-feature=no-binary-enable-wheel-cache)
  fi
  in_chroot "$VENV/bin/pip" install --only-binary=:all: "${sdists[@]}" /src 2>&1 |
    tee "$LOG_DIR/pip.log"
  echo "--- built from source here:"
  grep -E -o '^ *Building wheel for [^ ]+' "$LOG_DIR/pip.log" | sort -u || echo "(nothing)"
  # qemu-user lacks SIOCETHTOOL: see qemu_ethtool_shim.py (in this venv only, off unless asked).
  local site
  site=$(in_chroot "$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  cp "$HERE/qemu_ethtool_shim.py" "$ROOT$site/_florete_qemu_ethtool_shim.py"
  echo "import _florete_qemu_ethtool_shim" >"$ROOT$site/_florete_qemu_ethtool_shim.pth"
}

# Where each of the agent's dependencies came from: DEBIAN_DISTS must be Debian's
# (/usr/lib/python3/dist-packages); a pyproject range that bookworm cannot meet shows up here.
provenance() {
  local rc=0
  in_chroot "$VENV/bin/python" - "$VENV" "$DEBIAN_DISTS" <<'EOF' || rc=1
import re
import sys
from importlib import metadata

venv, debian = sys.argv[1], sys.argv[2].lower().split()
names = [re.match(r"[A-Za-z0-9._-]+", r).group(0) for r in metadata.requires("florete-agent")
         if "extra ==" not in r]
bad = []
for name in dict.fromkeys(names + sys.argv[2].split()):
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        print(f"{name:14} missing")
        bad.append(name)
        continue
    where = str(dist.locate_file(""))
    source = "venv (PyPI)" if where.startswith(venv) else "Debian" if "dist-packages" in where else where
    flag = ""
    if name.lower() in debian and source != "Debian":
        flag = "   <- want Debian's"
        bad.append(name)
    print(f"{name:14} {dist.version:12} {source}{flag}")
sys.exit(1 if bad else 0)
EOF
  in_chroot "$VENV/bin/pip" check || rc=1
  return "$rc"
}

run_agent() {
  in_chroot /bin/bash /src/packaging/armhf/in-chroot.sh run 2>&1 | tee "$LOG_DIR/run.log"
}

measure() {
  in_chroot /bin/bash /src/packaging/armhf/in-chroot.sh measure 2>&1 | tee "$LOG_DIR/measure.log"
  grep '^FIGURE ' "$LOG_DIR/measure.log" >"$LOG_DIR/figures"
}

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot and mounts need it)"
case $(readlink -m "$ROOT") in
  / | "$REPO" | "$REPO"/*) die "refusing chroot dir $ROOT (not / nor inside the repository)" ;;
esac
mkdir -p "$LOG_DIR"
: >"$LOG_DIR/figures"
rm -f "$LOG_DIR/run.log"
trap cleanup EXIT
trap 'exit 130' INT TERM

step host-tools chroot_host_tools
step debootstrap bootstrap_chroot
step mounts mount_chroot
step apt-packages chroot_packages
step copy-repo copy_repo
step venv make_venv
step pip-install pip_install
soft_step provenance provenance
step run run_agent
step measure measure
