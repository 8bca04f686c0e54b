#!/bin/sh
# Build florete-agent_VERSION_all.deb from the working tree (docs/packaging.md).
#
# Usage: packaging/debian/build-deb.sh [OUT_DIR]      (default build/; the .deb lands there)
# Env:   PYTHON             interpreter whose pip fetches the carried wheels (default python3)
#        FLORETE_DEB_VERSION  build this version instead of pyproject's (upgrade tests)
#        VENDOR_CACHE       where the checked carried wheels are kept (default OUT_DIR/vendor)
# Needs: dpkg-dev debhelper dh-python python3-pip python3-setuptools python3-wheel
#        (.ci/run installs them); PyPI for the first fetch of the carried wheels.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=$(mkdir -p "${1:-$REPO/build}" && cd "${1:-$REPO/build}" && pwd)
PYTHON=${PYTHON:-python3}
VERSION=$("$PYTHON" -c 'import sys, tomllib
print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$REPO/pyproject.toml")
DEB_VERSION=${FLORETE_DEB_VERSION:-$VERSION}
WORK=$OUT/deb
STAGE=$WORK/florete-agent-$DEB_VERSION

rm -rf "$WORK"
mkdir -p "$STAGE/vendor"
tar -C "$REPO" --exclude=./.venv --exclude=./.git --exclude=./build --exclude=__pycache__ \
    --exclude=./.mypy_cache --exclude=./.pytest_cache --exclude=./.ruff_cache \
    --exclude=./.hypothesis --exclude='*.egg-info' --exclude=./packaging/debian -cf - . |
    tar -C "$STAGE" -xf -
cp -R "$HERE" "$STAGE/debian"
rm "$STAGE/debian/build-deb.sh"
# One unit file for the package and for a hand-made install (README.md).
cp "$REPO/packaging/systemd/florete-agent.service" "$STAGE/debian/"

# The pure-Python copies (checked against their sha256, cached in VENDOR_CACHE).
"$PYTHON" "$REPO/packaging/vendor.py" fetch --into deb "${VENDOR_CACHE:-$OUT/vendor}" |
    while read -r wheel; do cp "$wheel" "$STAGE/vendor/"; done
[ -n "$(ls "$STAGE/vendor")" ]

if [ "$DEB_VERSION" != "$(dpkg-parsechangelog -l "$STAGE/debian/changelog" -S Version)" ]; then
    {
        printf 'florete-agent (%s) unstable; urgency=medium\n\n' "$DEB_VERSION"
        printf '  * Built from the working tree as version %s.\n\n' "$DEB_VERSION"
        printf ' -- Florete developers <dev@florete.io>  %s\n\n' "$(date -R)"
        cat "$STAGE/debian/changelog"
    } >"$STAGE/debian/changelog.new"
    mv "$STAGE/debian/changelog.new" "$STAGE/debian/changelog"
fi

# Debian's own python3 and tools only: a python3 of a virtualenv or pyenv first on PATH would
# build against the wrong interpreter.
(cd "$STAGE" && env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    SOURCE_DATE_EPOCH="$(dpkg-parsechangelog -S Timestamp)" \
    dpkg-buildpackage --build=binary --no-sign) >"$WORK/build.log" 2>&1 || {
    tail -n 40 "$WORK/build.log" >&2
    echo "build-deb.sh: dpkg-buildpackage failed; the whole log is $WORK/build.log" >&2
    exit 1
}
mv "$WORK/florete-agent_${DEB_VERSION}_all.deb" "$OUT/"
echo "$OUT/florete-agent_${DEB_VERSION}_all.deb"
