#!/usr/bin/env bash
# The Debian package's long checks (docs/packaging.md), as root on a Debian 12 x86_64 machine:
#
#   build     make the .deb, and from it a second one of a later version for the upgrade tests
#   lintian   lintian --pedantic, failing on any tag that is not overridden with a reason
#   piuparts  install, upgrade from the previous version, purge, in a clean bookworm chroot
#   amd64     install in a clean bookworm chroot: a private install, then `florete-agent version`,
#             `run`, and an `apply` of the examples with both pods Running (packaging/armhf/in-chroot.sh);
#             while they run, packaging/check_installed.py: every dependency comes from where
#             packaging/dependencies.toml says, and each optional feature works (pairing's SPAKE2
#             and QR code, SSH, MQTT, supernode, the TUI on the agent, `florete-agent pair`)
#   systemd   that chroot as a podman container with systemd as PID 1: the unit starts and reports
#             READY, the florete group may use the socket, a killed agent is restarted and
#             re-attaches to its pod, an upgrade restarts it with the pod still running and the
#             edited conffile kept, and a purge removes state and configuration
#   armhf     the amd64 checks of the .deb in an armhf chroot under qemu-user-static, the
#             optional features too
#
# Usage: packaging/test-packaging.sh [STEP...]     (default: every step, in this order)
# Env:   PACKAGING_WORK  work directory (default /var/tmp/florete-packaging; chroots are kept
#                        there for re-runs, ~1 GB)
#        CHECK_TIMEOUT   seconds for each wait (default 300)
# Exit status: 0 every step passed; 1 a step failed (the summary says which).
# Nothing is sent on a network but to the Debian mirror and PyPI: the agents run in a network
# namespace of their own or in a container with no network.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
WORK=${PACKAGING_WORK:-/var/tmp/florete-packaging}
TIMEOUT=${CHECK_TIMEOUT:-300}
SUITE=bookworm
ARCH=amd64
ROOT=""
# shellcheck source=packaging/chroot.sh
. "$HERE/chroot.sh"

PYTHON=${PYTHON:-python3}
VERSION=$("$PYTHON" -c 'import sys, tomllib
print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$REPO/pyproject.toml")
NEXT=$VERSION+upgrade1                      # the later version of the upgrade tests
OUT=$WORK/out
DEB=$OUT/florete-agent_${VERSION}_all.deb
DEB_NEXT=$OUT/florete-agent_${NEXT}_all.deb
EXAMPLES=/usr/share/doc/florete-agent/examples
IMAGE=localhost/florete-packaging-systemd:test
CONTAINER=florete-packaging-systemd
PODMAN=(podman --root "$WORK/podman/storage" --runroot "$WORK/podman/run")

declare -a SUMMARY=()
CURRENT=""
T0=$SECONDS

die() { echo "test-packaging.sh: $*" >&2; exit 1; }

# wait_for WHAT SECONDS COMMAND...: run COMMAND once a second until it succeeds.
wait_for() {
  local what=$1 limit=$2 start=$SECONDS
  shift 2
  until "$@" >/dev/null 2>&1; do
    ((SECONDS - start < limit)) || { echo "timed out after ${limit}s waiting for $what" >&2; return 1; }
    sleep 1
  done
  echo "($what after $((SECONDS - start))s)"
}

cleanup() {
  local rc=$? arch
  trap - EXIT INT TERM
  if [ -d "$WORK/podman" ]; then
    if [ "$CURRENT" = systemd ] && "${PODMAN[@]}" container exists "$CONTAINER" 2>/dev/null; then
      echo "--- the unit's journal"
      sd journalctl -u florete-agent.service --no-pager -n 40 || true
    fi
    "${PODMAN[@]}" rm -f -t 5 "$CONTAINER" >/dev/null 2>&1 || true
    "${PODMAN[@]}" rmi -f "$IMAGE" >/dev/null 2>&1 || true
  fi
  for arch in amd64 armhf; do
    ROOT=$WORK/$arch
    release_chroot || rc=1
  done
  echo
  echo "=== summary (work dir $WORK)"
  if [ ${#SUMMARY[@]} -gt 0 ]; then printf '%s\n' "${SUMMARY[@]}"; fi
  if [ -n "$CURRENT" ]; then printf '%-9s FAILED\n' "$CURRENT"; fi
  echo "total     $((SECONDS - T0))s"
  if [ -n "$CURRENT" ] || [ "$rc" -ne 0 ]; then
    echo "RESULT: FAILED${CURRENT:+: $CURRENT}"
    exit 1
  fi
  echo "RESULT: ok"
}

step() {
  local start=$SECONDS
  CURRENT=$1
  echo
  echo "=== $CURRENT"
  "step_$1"
  SUMMARY+=("$(printf '%-9s ok %5ss' "$CURRENT" $((SECONDS - start)))")
  CURRENT=""
}

step_build() {
  # The carried wheels from the repository's cache, which `make test` (and `make deb`, `make ipk`)
  # fill: no download when they ran first.
  PYTHON=$PYTHON VENDOR_CACHE=$REPO/build/vendor "$HERE/debian/build-deb.sh" "$OUT"
  # The later version for the upgrade tests: the same package with its version raised (a
  # second dpkg-buildpackage of the same tree would make the same files, in a minute).
  local tree=$WORK/repack
  rm -rf "$tree"
  dpkg-deb -R "$DEB" "$tree"
  sed -i "s/^Version: .*/Version: $NEXT/" "$tree/DEBIAN/control"
  dpkg-deb --root-owner-group -Zgzip -b "$tree" "$DEB_NEXT" >/dev/null
  rm -rf "$tree"
  ls -l "$DEB" "$DEB_NEXT"
  dpkg-deb -f "$DEB" Installed-Size Depends
  # Every copy dependencies.toml carries into the .deb is in it, at its version.
  local listing dist
  local -a missing=()
  listing=$(dpkg-deb -c "$DEB")
  for dist in $("$PYTHON" -c 'import re, sys, tomllib
for name, entry in tomllib.load(open(sys.argv[1], "rb"))["vendor"].items():
    if "deb" in entry["into"]:
        print(re.sub(r"[-_.]+", "_", name) + "-" + entry["version"] + ".dist-info/")
' "$HERE/dependencies.toml"); do
    grep -qiF "./usr/lib/florete-agent/$dist" <<<"$listing" || missing+=("$dist")
  done
  [ ${#missing[@]} -eq 0 ] || die "not in the .deb: ${missing[*]}"
}

step_lintian() {
  # --pedantic -I: every tag, info and pedantic too. Its exit status counts the tags that a
  # lintian screen masks (M:, python/egg/metadata), so the output decides for I: and P:.
  lintian --pedantic -I --fail-on error,warning "$DEB" 2>&1 | tee "$WORK/lintian.log"
  if grep -E '^[EWIPX]: ' "$WORK/lintian.log"; then
    die "lintian: tags above are not in debian/florete-agent.lintian-overrides"
  fi
  echo "lintian: no tag outside debian/florete-agent.lintian-overrides"
}

# A pristine bookworm minbase chroot, packed once as piuparts' base tarball.
base_tarball() {
  local base=$WORK/base.tgz
  if [ ! -s "$base" ]; then
    ROOT=$WORK/base ARCH=amd64
    rm -rf "$ROOT"
    bootstrap_chroot >"$WORK/base-debootstrap.log" 2>&1
    tar -C "$ROOT" --exclude=./.florete-bootstrap-done -czf "$base.tmp" .
    mv "$base.tmp" "$base"
    rm -rf "$ROOT"
  fi
  echo "$base"
}

step_piuparts() {
  local mirror base repo=$WORK/repo
  mirror=$(detect_mirror | head -n1)
  [ -n "$mirror" ] || die "no '$SUITE' deb source in /etc/apt/sources.list{,.d}"
  base=$(base_tarball | tail -n1)
  # The earlier version in a local repository: piuparts installs it with apt, upgrades to the
  # .deb given, then purges, and checks that nothing is left behind.
  rm -rf "$repo"
  mkdir -p "$repo"
  cp "$DEB" "$repo/"
  (cd "$repo" && dpkg-scanpackages --multiversion . /dev/null >Packages 2>/dev/null)
  piuparts --distribution "$SUITE" --mirror "$mirror main" --basetgz "$base" \
    --bindmount "$repo" --extra-repo "deb [trusted=yes] file://$repo ./" \
    --warn-on-others "$DEB_NEXT" >"$WORK/piuparts.log" 2>&1 || true
  grep -E '(PASS|FAIL|ERROR):' "$WORK/piuparts.log" || true
  grep -q 'PASS: All tests.' "$WORK/piuparts.log" || die "piuparts failed: see $WORK/piuparts.log"
  # The upgrade went from the installed $VERSION to $NEXT, not from scratch.
  grep -q "Unpacking florete-agent ($NEXT) over ($VERSION)" "$WORK/piuparts.log" ||
    die "piuparts did not upgrade from $VERSION: see $WORK/piuparts.log"
}

# Bootstrap (once), mount, and install the .deb (purging an earlier install first). For amd64
# systemd too, so that the postinst enables the unit for the systemd step.
prepare_chroot() {
  ROOT=$WORK/$ARCH
  chroot_host_tools
  bootstrap_chroot
  mount_chroot >/dev/null
  cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
  in_chroot dpkg --purge florete-agent >/dev/null 2>&1 || true
  rm -rf "$ROOT/tmp/fl" "$ROOT/root/check"
  mkdir -p "$ROOT/root/check"
  cp "$DEB" "$HERE/armhf/in-chroot.sh" "$HERE/check_installed.py" "$HERE/dependencies.toml" \
    "$ROOT/root/check/"
  local -a extra=()
  if [ "$ARCH" = amd64 ]; then extra=(systemd systemd-sysv dbus); fi
  in_chroot apt-get update -q
  in_chroot apt-get install -y -q --no-install-recommends "${extra[@]}" \
    "/root/check/$(basename "$DEB")"
  # shellcheck disable=SC2016  # dpkg-query's own ${field} syntax
  in_chroot dpkg-query -W -f='${Package} ${Version} ${Architecture}\n' florete-agent python3 \
    python3-cryptography python3-psutil python3-yaml python3-h11 python3-segno \
    python3-typing-extensions
}

# Not in the shared site-packages: nothing of the package under dist-packages, and the system
# python3 cannot import the agent; the command itself runs.
check_private_install() {
  if in_chroot dpkg -L florete-agent | grep -E '/(dist|site)-packages/'; then
    die "the package installs into a shared site-packages"
  fi
  if in_chroot python3 -c 'import agent' 2>/dev/null; then
    die "the system python3 imports the agent: it is not private"
  fi
  in_chroot florete-agent --version
  in_chroot florete-agent version --client
}

# packaging/armhf/in-chroot.sh run, in a network namespace of its own (only lo, up).
smoke_in_chroot() {
  unshare --net -- /bin/sh -c 'ip link set lo up && exec "$@"' sh \
    chroot "$ROOT" /usr/bin/env -i PATH="$CHROOT_PATH" HOME=/root LANG=C.UTF-8 TERM=dumb \
    CHECK_BIN_DIR=/usr/bin CHECK_EXAMPLES="$EXAMPLES" ARMHF_CHECK_TIMEOUT="$TIMEOUT" \
    CHECK_INSTALLED=/root/check/check_installed.py \
    /bin/bash /root/check/in-chroot.sh run 2>&1 | tee "$WORK/$ARCH-run.log"
  grep -q '^every optional feature works$' "$WORK/$ARCH-run.log"
  grep -q 'agent stopped by SIGTERM: exit status 0' "$WORK/$ARCH-run.log"
}

step_amd64() {
  ARCH=amd64
  prepare_chroot
  check_private_install
  smoke_in_chroot
}

step_armhf() {
  ARCH=armhf
  prepare_chroot
  check_private_install
  # qemu-user lacks SIOCETHTOOL, which psutil.net_if_stats() uses: the emulation-only shim of
  # packaging/armhf (it acts for the daemon only, when ARMHF_CHECK_ETHTOOL_SHIM=1).
  local site=/usr/local/lib/python3.11/dist-packages
  mkdir -p "$ROOT$site"
  cp "$HERE/armhf/qemu_ethtool_shim.py" "$ROOT$site/_florete_qemu_ethtool_shim.py"
  echo "import _florete_qemu_ethtool_shim" >"$ROOT$site/_florete_qemu_ethtool_shim.pth"
  in_chroot python3 -c 'import platform; print("python3 on", platform.machine())'
  smoke_in_chroot
  rm -f "$ROOT$site/_florete_qemu_ethtool_shim.py" "$ROOT$site/_florete_qemu_ethtool_shim.pth"
}

# --- systemd as PID 1 ----------------------------------------------------------------------------

sd() { "${PODMAN[@]}" exec "$CONTAINER" "$@"; }
prop() { sd systemctl show -P "$1" florete-agent.service; }
# hello Running, READY 1/1, never restarted: the workload outlived whatever happened to the agent.
hello_untouched() { sd florete-agent get pods | awk '$1 == "hello" && $2 == "1/1" && $3 == "Running" && $4 == "0" { ok = 1 } END { exit !ok }'; }
booted() { sd systemctl is-system-running | grep -qxE 'running|degraded'; }
unit_active() { [ "$(prop ActiveState)" = active ]; }
active_with_new_pid() {  # active_with_new_pid OLD_PID
  [ "$(prop ActiveState)" = active ] && [ "$(prop MainPID)" != "$1" ] && [ "$(prop MainPID)" != 0 ]
}

step_systemd() {
  ROOT=$WORK/amd64
  ARCH=amd64
  [ -e "$ROOT/lib/systemd/system/florete-agent.service" ] || die "run the amd64 step first"
  release_chroot
  rm -rf "$ROOT/tmp/fl"
  cp "$DEB_NEXT" "$ROOT/root/check/"
  # The administrator's edit of the conffile, which the upgrade must keep: only lo.
  local conf=$ROOT/etc/florete-agent/agent.toml
  sed -i '/# edited$/d' "$conf"
  printf '[network]  # edited\ninterfaces = ["lo"]  # edited\n' >>"$conf"
  mkdir -p "$WORK/podman"
  cat >"$WORK/podman/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
EOF
  export CONTAINERS_CONF=$WORK/podman/containers.conf
  "${PODMAN[@]}" rm -f -t 5 "$CONTAINER" >/dev/null 2>&1 || true
  "${PODMAN[@]}" rmi -f "$IMAGE" >/dev/null 2>&1 || true
  tar -C "$ROOT" --exclude=./proc/* --exclude=./sys/* --exclude=./dev/* \
    --exclude=./.florete-bootstrap-done -cf - . | "${PODMAN[@]}" import - "$IMAGE" >/dev/null
  # CAP_SYS_ADMIN as PID 1 has on a real machine: otherwise systemd would add NoNewPrivileges
  # to the unit's seccomp options.
  "${PODMAN[@]}" run -d --name "$CONTAINER" --systemd=always --network=none \
    --cap-add=SYS_ADMIN "$IMAGE" /sbin/init >/dev/null

  wait_for "systemd up" "$TIMEOUT" booted
  sd systemctl is-system-running || sd systemctl --failed --no-pager
  wait_for "the unit active" 60 unit_active  # the agent is ready in about a second
  sd systemctl show -p Type,ActiveState,SubState,StatusText,NRestarts,MainPID florete-agent.service
  # Type=notify is active only after READY=1; the status line is the agent's own.
  [ "$(prop Type)" = notify ] && [[ "$(prop StatusText)" == "serving on "* ]]

  echo "--- the socket and the florete group"
  sd stat -c '%A %U:%G %n' /var/lib/florete-agent /var/lib/florete-agent/agent.sock
  [ "$(sd stat -c '%a %U:%G' /var/lib/florete-agent/agent.sock)" = "660 root:florete" ]
  sd useradd --groups florete member
  sd useradd stranger
  local sock=FLORETE_API_SOCKET=/var/lib/florete-agent/agent.sock
  sd runuser -u member -- env "$sock" florete-agent get pods
  if sd runuser -u stranger -- env "$sock" florete-agent get pods; then
    die "a user outside the florete group reached the API"
  fi

  echo "--- a pod, then kill -9 the agent"
  sd florete-agent apply -f "$EXAMPLES/hello.yaml"
  wait_for "hello Running" "$TIMEOUT" hello_untouched
  local pid
  pid=$(prop MainPID)
  sd /bin/sh -c "kill -KILL $pid"
  wait_for "the unit restarted" "$TIMEOUT" active_with_new_pid "$pid"
  [ "$(prop NRestarts)" = 1 ]
  wait_for "hello re-attached, never restarted" "$TIMEOUT" hello_untouched
  sd florete-agent get pods

  echo "--- upgrade to $NEXT"
  pid=$(prop MainPID)
  sd dpkg -i "/root/check/$(basename "$DEB_NEXT")"
  # shellcheck disable=SC2016  # dpkg-query's own ${field} syntax
  [ "$(sd dpkg-query -W -f='${Version}' florete-agent)" = "$NEXT" ]
  wait_for "the upgraded unit running" "$TIMEOUT" active_with_new_pid "$pid"
  sd grep -x 'interfaces = \["lo"\]  # edited' /etc/florete-agent/agent.toml
  wait_for "hello still untouched" "$TIMEOUT" hello_untouched

  echo "--- purge"
  sd florete-agent delete pod hello
  sd dpkg --purge florete-agent
  for path in /var/lib/florete-agent /etc/florete-agent /lib/systemd/system/florete-agent.service \
    /usr/lib/florete-agent; do
    if sd test -e "$path"; then die "$path is left after purge"; fi
  done
  sd getent passwd florete   # system accounts stay (docs/packaging.md)
  "${PODMAN[@]}" rm -f -t 5 "$CONTAINER" >/dev/null
  "${PODMAN[@]}" rmi -f "$IMAGE" >/dev/null
}

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot, mounts and podman need it)"
case $(readlink -m "$WORK") in
  / | "$REPO" | "$REPO"/*) die "refusing work dir $WORK (not / nor inside the repository)" ;;
esac
STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=(build lintian piuparts amd64 systemd armhf)
for s in "${STEPS[@]}"; do
  declare -F "step_$s" >/dev/null || die "unknown step $s (build lintian piuparts amd64 systemd armhf)"
done
mkdir -p "$WORK"
trap cleanup EXIT
trap 'exit 130' INT TERM
for s in "${STEPS[@]}"; do step "$s"; done
