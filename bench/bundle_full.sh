#!/usr/bin/env bash
# Build the full offline bundle (default parameters: CPU torch, demo model, Linux x86_64, CPython
# 3.11) from the published wheels, then install it with no network and run the full self-test.
# Prints sizes and times. Needs a connected build machine (pip download) and unshare.
#
#   bench/bundle_full.sh [extra build_bundle.py options]
#
# Output goes to bench/out/ (git-ignored); the signing key is a throwaway one in bench/out/bundle-key
# so that this benchmark never creates or uses the real one.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=bench/out/bundle
KEYS=bench/out/bundle-key
rm -rf "$OUT" "$KEYS"
mkdir -p "$OUT" "$KEYS"
PY=.venv/bin/python

start=$(date +%s.%N)
"$PY" packaging/build_bundle.py --out "$OUT" --key "$KEYS/bench.key" "$@" | tee "$OUT/build.log"
built=$(date +%s.%N)

BUNDLE=$(find "$OUT" -mindepth 1 -maxdepth 1 -type d -name 'finetune-appliance-*' | head -1)
NETNS=(unshare -rn)
"${NETNS[@]}" true 2>/dev/null || NETNS=(unshare -n)
SYSPY=/usr/bin/python3
[ -x "$SYSPY" ] || SYSPY=$("$PY" -c 'import sys; print(sys._base_executable)')
"${NETNS[@]}" env -i PATH=/usr/bin:/bin HOME="$PWD/$OUT/home" bash "$BUNDLE/install.sh" \
    --pubkey "$KEYS/bench.pub.pem" --prefix "$PWD/$OUT/opt" --desktop-dir "$PWD/$OUT/share" \
    --python "$SYSPY" | tee "$OUT/install.log"
installed=$(date +%s.%N)

echo
echo "== full bundle =="
printf 'build:    %.1f s\n' "$(echo "$built - $start" | bc)"
printf 'install:  %.1f s (verify + venv + pip + selftest, no network)\n' \
    "$(echo "$installed - $built" | bc)"
echo "wheels:   $(find "$BUNDLE/wheelhouse" -name '*.whl' | wc -l)"
echo "bundle:   $(du -sh "$BUNDLE" | cut -f1)  tarball: $(du -sh "$BUNDLE.tar" | cut -f1)"
echo "venv:     $(du -sh "$OUT/opt/current/venv" | cut -f1)"
"$PWD/$OUT/opt/bin/appliance" --version
