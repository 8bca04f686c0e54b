# shellcheck shell=bash disable=SC2153  # ROOT, SUITE and ARCH come from the sourcing script
# Debian chroots for the packaging checks: sourced by packaging/armhf/check.sh and
# packaging/test-packaging.sh (bash, as root). Every function reads:
#   ROOT     the chroot directory
#   SUITE    the Debian suite (bookworm)
#   ARCH     the Debian architecture (amd64, armhf); a foreign one runs under qemu-user-static
# Nothing here sends traffic anywhere but to the Debian mirror apt already uses.

CHROOT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

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

# A command inside the chroot with a clean environment (the host's PIP_* settings stay outside).
# Also set: CHROOT_SET_ENV (NAME=VALUE words) and, if set on the host, proxies and the variables
# named in CHROOT_PASS_ENV.
in_chroot() {
  local -a env=(PATH="$CHROOT_PATH" HOME=/root LANG=C.UTF-8 TERM=dumb
    DEBIAN_FRONTEND=noninteractive)
  local var
  # shellcheck disable=SC2206  # NAME=VALUE words, split on purpose
  env+=(${CHROOT_SET_ENV:-})
  for var in http_proxy https_proxy no_proxy ${CHROOT_PASS_ENV:-}; do
    if [ -n "${!var:-}" ]; then env+=("$var=${!var}"); fi
  done
  chroot "$ROOT" /usr/bin/env -i "${env[@]}" "$@"
}

# Mount points under $ROOT, deepest last (from /proc/self/mounts, so leftovers of a killed run too).
chroot_mounts() {
  local root
  root=$(readlink -f "$ROOT")
  awk -v root="$root" '$2 == root || index($2, root "/") == 1 { print $2 }' /proc/self/mounts
}

# Kill, by PID, every process whose root is the chroot (pods left by a failed run), then unmount
# everything under it. Returns 1 if something stays mounted.
release_chroot() {
  local pid root mnt
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
    return 1
  fi
}

# qemu-user-static and binfmt_misc for a foreign ARCH; debootstrap in any case.
chroot_host_tools() {
  local missing=() p
  local -a want=(debootstrap)
  if [ "$ARCH" != "$(dpkg --print-architecture)" ]; then want+=(qemu-user-static binfmt-support); fi
  for p in "${want[@]}"; do
    # shellcheck disable=SC2016  # dpkg-query's own ${field} syntax
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
  fi
  if [ "$ARCH" = "$(dpkg --print-architecture)" ]; then return 0; fi
  if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  fi
  local qemu=qemu-arm
  if [ "$ARCH" = arm64 ]; then qemu="qemu-aarch64"; fi
  update-binfmts --enable "$qemu" 2>/dev/null || true
  grep -qx enabled "/proc/sys/fs/binfmt_misc/$qemu"
  # The F flag: the kernel holds qemu open, so the chroot needs no copy of it.
  grep '^flags:' "/proc/sys/fs/binfmt_misc/$qemu"
}

# debootstrap --variant=minbase (two stages, so foreign architectures work too). Skipped once the
# chroot is complete (marker ROOT/.florete-bootstrap-done).
bootstrap_chroot() {
  if [ -e "$ROOT/.florete-bootstrap-done" ]; then
    echo "$ROOT is complete: skipping debootstrap"
    return 0
  fi
  local mirror
  mirror=$(detect_mirror | head -n1)
  [ -n "$mirror" ] || { echo "no '$SUITE' deb source in /etc/apt/sources.list{,.d}" >&2; return 1; }
  echo "mirror: $mirror"
  if [ ! -x "$ROOT/debootstrap/debootstrap" ]; then
    if [ -e "$ROOT/usr/bin/dpkg" ]; then
      echo "$ROOT holds an unfinished chroot that debootstrap cannot resume: remove it" >&2
      return 1
    fi
    debootstrap --arch="$ARCH" --foreign --variant=minbase "$SUITE" "$ROOT" "$mirror"
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

# /proc, /sys, the cgroup hierarchies (for resources.limits), /dev and /dev/pts.
mount_chroot() {
  mount_one /proc -t proc proc
  mount_one /sys -t sysfs sysfs
  if [ -d /sys/fs/cgroup ]; then
    mount_one /sys/fs/cgroup --rbind /sys/fs/cgroup
  fi
  mount_one /dev --bind /dev
  mount_one /dev/pts --bind /dev/pts
  chroot_mounts
}
