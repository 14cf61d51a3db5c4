#!/bin/sh
# Every symbol a Baton library exports is a bt_ function declared with
# BT_EXPORT in a public header, and every such declaration is exported by
# exactly one library (jansson's check-exports, in shell).
set -eu
src=${top_srcdir:-.}
build=${top_builddir:-.}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The integrations' headers count only when their library was built
# (./configure --disable-curl and the like).
headers=
for h in "$src"/include/baton/*.h; do
    name=$(basename "$h" .h)
    case $name in
    curl|pq|http) [ -e "$build/.libs/libbaton-$name.so" ] || continue ;;
    esac
    headers="$headers $h"
done

cat $headers | tr '\n' ' ' | grep -oE 'BT_EXPORT[^;{]*[;{]' |
    sed -E 's/\(.*//' | grep -oE 'bt_[a-z0-9_]+ *$' | tr -d ' ' | sort > "$tmp/declared"

: > "$tmp/exported"
for lib in "$build"/.libs/libbaton*.so; do
    [ -e "$lib" ] || { echo "no shared library under $build/.libs" >&2; exit 1; }
    nm -D --defined-only "$lib" | awk '$2 ~ /^[TDBR]$/ { print $3 }' |
        grep -vE '^(_init|_fini|_edata|_end|__bss_start)$' >> "$tmp/exported"
done
sort "$tmp/exported" > "$tmp/exported.sorted"

status=0
if dups=$(uniq -d "$tmp/exported.sorted") && [ -n "$dups" ]; then
    echo "exported by more than one library:"; echo "$dups"; status=1
fi
sort -u "$tmp/exported.sorted" > "$tmp/exported"
extra=$(comm -13 "$tmp/declared" "$tmp/exported")
missing=$(comm -23 "$tmp/declared" "$tmp/exported")
[ -z "$extra" ] || { echo "exported but not declared with BT_EXPORT:"; echo "$extra"; status=1; }
[ -z "$missing" ] || { echo "declared with BT_EXPORT but not exported:"; echo "$missing"; status=1; }
n=$(wc -l < "$tmp/exported")
[ "$status" -eq 0 ] && echo "exports: $n symbols, all declared"
exit $status
