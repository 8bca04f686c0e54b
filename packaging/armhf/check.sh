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
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
VENV=/opt/florete-agent                     # inside the chroot
DEBIAN_PACKAGES=(python3 python3-venv python3-psutil python3-cryptography python3-yaml python3-cffi)
# Distributions that must come from Debian's packages (no armv7 wheels on PyPI). cryptography
# is not one: the agent needs >= 42 (bookworm has 38.0.4) and PyPI has an armv7 wheel (46.0.0,
# the last that builds against Debian's cffi 1.15).
DEBIAN_DISTS="psutil PyYAML cffi"
# pip installs wheels only (a board has no compiler), except these sdists: they have no armv7 wheel
# and build without a compiler (dbus-fast falls back to pure Python when Cython cannot compile).
SDIST_OK="dbus-fast"
CHROOT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

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

# A command inside the chroot with a clean environment (the host's PIP_* settings stay outside).
in_chroot() {
  local -a env=(PATH="$CHROOT_PATH" HOME=/root LANG=C.UTF-8 TERM=dumb
    DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
    PIP_CERT=/etc/florete-check/ca.crt)
  local var
  for var in http_proxy https_proxy no_proxy PIP_INDEX_URL ARMHF_CHECK_TIMEOUT; do
    if [ -n "${!var:-}" ]; then env+=("$var=${!var}"); fi
  done
  chroot "$ROOT" /usr/bin/env -i "${env[@]}" "$@"
}

# The Debian mirror apt already uses for $SUITE (deb822 .sources first, then one-line .list).
detect_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v suite="$SUITE" '
      function flush() { if (deb && hit && uri != "") { print uri; found = 1; exit } deb = hit = 0; uri = "" }
      /^[[:space:]]*$/ { flush(); next }
      /^Types:/  { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
      /^URIs:/   { uri = $2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) hit = 1 }
      END { if (!found) flush() }' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk -v suite="$SUITE" '$1 == "deb" {
        i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
        if ($(i + 1) == suite) print $i }' "$f"
  done
}

# Mount points under $ROOT, deepest last (from /proc/self/mounts, so leftovers of a killed run too).
chroot_mounts() {
  local root
  root=$(readlink -f "$ROOT")
  awk -v root="$root" '$2 == root || index($2, root "/") == 1 { print $2 }' /proc/self/mounts
}

cleanup() {
  local rc=$? pid root mnt
  trap - EXIT INT TERM
  # Processes left running inside the chroot (pods after a failed run): ours, ended by PID.
  if [ -d "$ROOT" ]; then
    root=$(readlink -f "$ROOT")
    for pid in /proc/[0-9]*; do
      if [ "$(readlink "$pid/root" 2>/dev/null)" = "$root" ]; then
        echo "cleanup: killing leftover process ${pid#/proc/}: $(tr '\0' ' ' <"$pid/cmdline" 2>/dev/null)"
        kill -KILL "${pid#/proc/}" 2>/dev/null || true
      fi
    done
  fi
  while read -r mnt; do
    umount "$mnt" 2>/dev/null || umount -l "$mnt" || echo "cleanup: could not unmount $mnt" >&2
  done < <(chroot_mounts | tac)
  if [ -n "$(chroot_mounts)" ]; then
    echo "cleanup: still mounted under $ROOT: $(chroot_mounts | tr '\n' ' ')" >&2
    rc=1
  fi
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

host_tools() {
  local missing=() p
  for p in qemu-user-static binfmt-support debootstrap; do
    # shellcheck disable=SC2016
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
  fi
  if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  fi
  update-binfmts --enable qemu-arm 2>/dev/null || true
  grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-arm
  # The F flag: the kernel holds qemu open, so the chroot needs no copy of it.
  grep '^flags:' /proc/sys/fs/binfmt_misc/qemu-arm
}

bootstrap() {
  if [ -e "$ROOT/.florete-bootstrap-done" ]; then
    echo "$ROOT is complete: skipping debootstrap"
    return 0
  fi
  local mirror
  mirror=$(detect_mirror | head -n1)
  [ -n "$mirror" ] || die "no '$SUITE' deb source in /etc/apt/sources.list{,.d}"
  echo "mirror: $mirror"
  if [ ! -x "$ROOT/debootstrap/debootstrap" ]; then
    [ ! -e "$ROOT/usr/bin/dpkg" ] ||
      die "$ROOT holds an unfinished chroot that debootstrap cannot resume: remove it and rerun"
    debootstrap --arch=armhf --foreign --variant=minbase "$SUITE" "$ROOT" "$mirror"
  fi
  chroot "$ROOT" /usr/bin/env -i PATH="$CHROOT_PATH" /debootstrap/debootstrap --second-stage
  [ -x "$ROOT/usr/bin/dpkg" ] && [ ! -e "$ROOT/debootstrap" ]
  touch "$ROOT/.florete-bootstrap-done"
}

# mount_one TARGET MOUNT-ARGS...: mount unless a previous run left it mounted. Bind mounts become
# slaves, so that mounting and unmounting under them never propagates to the host's own mounts.
mount_one() {
  local target=$ROOT$1
  shift
  mkdir -p "$target"
  if ! mountpoint -q "$target"; then
    mount "$@" "$target"
    case " $* " in
      *" --bind "* | *" --rbind "*) mount --make-rslave "$target" ;;
    esac
  fi
}

mounts() {
  mount_one /proc -t proc proc
  mount_one /sys -t sysfs sysfs
  if [ -d /sys/fs/cgroup ]; then    # the cgroup hierarchies, for resources.limits
    mount_one /sys/fs/cgroup --rbind /sys/fs/cgroup
  fi
  mount_one /dev --bind /dev
  mount_one /dev/pts --bind /dev/pts
  chroot_mounts
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

step host-tools host_tools
step debootstrap bootstrap
step mounts mounts
step apt-packages chroot_packages
step copy-repo copy_repo
step venv make_venv
step pip-install pip_install
soft_step provenance provenance
step run run_agent
step measure measure
