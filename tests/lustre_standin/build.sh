#!/usr/bin/env bash
# Build the liblustreapi stand-in: OUTDIR/liblustreapi.so.1 (Lustre 2.11 level) and
# OUTDIR/legacy/liblustreapi.so.1 (2.7 level, -DSTANDIN_LEGACY).
# Silent on success; rebuilds a library only when standin.c is newer than it.
# Each library is written to a temporary name and renamed, so parallel test
# workers never load a half-written file.
set -euo pipefail

if [ $# -ne 1 ] || [ -z "$1" ]; then
	echo "usage: $0 OUTDIR" >&2
	exit 2
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="$here/standin.c"
hsm="$here/standin_hsm.c"  # included by standin.c
chlog="$here/standin_changelog.c"  # included by standin_hsm.c
outdir=$1
cflags=(-O1 -g -Wall -Wextra -Werror -shared -fPIC -Wl,-soname,liblustreapi.so.1)

build() {
	local lib=$1 tmp
	shift
	if [ -f "$lib" ] && [ ! "$src" -nt "$lib" ] && [ ! "$hsm" -nt "$lib" ] && [ ! "$chlog" -nt "$lib" ]; then
		return 0
	fi
	mkdir -p "$(dirname "$lib")"
	tmp="$lib.tmp.$$"
	if ! gcc "${cflags[@]}" "$@" -o "$tmp" "$src"; then
		rm -f "$tmp"
		return 1
	fi
	mv -f "$tmp" "$lib"
}

build "$outdir/liblustreapi.so.1"
build "$outdir/legacy/liblustreapi.so.1" -DSTANDIN_LEGACY
