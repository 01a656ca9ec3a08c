#!/bin/sh
# Split a linked binary the way Debian's dh_strip does (debhelper 13, dbgsym packages):
#   objcopy --only-keep-debug --compress-debug-sections   -> DEBUG_ROOT/.build-id/xx/rest.debug
#   strip --remove-section=.comment --remove-section=.note [--strip-unneeded for a library]
#   objcopy --add-gnu-debuglink=<that debug file>
# dh_strip strips in place; here the unstripped link stays for tests that want its symbols.
#
#   dh-strip.sh library|executable UNSTRIPPED STRIPPED DEBUG_ROOT
set -eu
kind=$1 unstripped=$2 stripped=$3 debug_root=$4
: "${STRIP:=strip}" "${OBJCOPY:=objcopy}"

build_id=$(LC_ALL=C readelf -n "$unstripped" | sed -n 's/^ *Build ID: *\([0-9a-f]*\)$/\1/p')
if [ -z "$build_id" ]; then
    echo "dh-strip.sh: $unstripped has no build-id" >&2
    exit 1
fi
rest=${build_id#??}
debug=$debug_root/.build-id/${build_id%"$rest"}/$rest.debug
mkdir -p "$(dirname "$debug")"
"$OBJCOPY" --only-keep-debug --compress-debug-sections "$unstripped" "$debug.tmp"
chmod 0644 "$debug.tmp"
mv -f "$debug.tmp" "$debug"

case $kind in
    library) unneeded=--strip-unneeded ;;
    executable) unneeded= ;;
    *) echo "dh-strip.sh: kind is library or executable, not $kind" >&2; exit 2 ;;
esac
# shellcheck disable=SC2086 # $unneeded is one option or none
"$STRIP" --remove-section=.comment --remove-section=.note $unneeded -o "$stripped.tmp" "$unstripped"
"$OBJCOPY" --add-gnu-debuglink="$debug" "$stripped.tmp"
mv -f "$stripped.tmp" "$stripped"
