#!/bin/sh
# Every C snippet of the docs is tested code: each ```c fenced block of
# README.md and docs/*.md must appear verbatim in a source file that
# `make check` builds and runs (docs/snippets/*.c), so a snippet cannot
# drift from code that compiles, runs and frees what it made.
#
# - A block may name its file on the line before the fence,
#   `<!-- snippet: docs/snippets/gather.c -->` (any file of the source tree);
#   without one, any docs/snippets/*.c will do.
# - "Verbatim" allows one thing: the file may indent the whole block (a
#   fragment inside a function). Lines are otherwise compared exactly.
# - A line holding only `...` in a block stands for code the doc leaves
#   out: the parts around it must appear in that order in the file.
set -eu
top=${top_srcdir:-.}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

# Cut the blocks out: $tmp/blk.N, and one index line per block:
# N <tab> where (file:line) <tab> the named file, or "-".
for md in "$top/README.md" "$top"/docs/*.md; do
    [ -f "$md" ] || continue
    awk -v out="$tmp" -v name="${md#"$top"/}" '
    BEGIN { n = 0; while ((getline l < (out "/count")) > 0) n = l; close(out "/count") }
    inblk && /^[ \t]*```[ \t]*$/ { inblk = 0; close(f); next }
    inblk { sub("^" ind, ""); print > f; next }
    /^[ \t]*```c[ \t]*$/ {
        n++; inblk = 1; f = out "/blk." n
        ind = $0; sub(/```c.*/, "", ind)
        named = "-"
        if (prev ~ /^<!-- snippet: [^ ]+ -->$/) {
            named = prev; sub(/^<!-- snippet: /, "", named); sub(/ -->$/, "", named)
        }
        printf "%d\t%s:%d\t%s\n", n, name, NR, named >> (out "/index")
        printf "" > f
        next
    }
    /[^ \t]/ { prev = $0 }
    END { print n > (out "/count") }
    ' "$md"
done

# Does block $1 appear in source file $2 (see the rules above)?
in_file() {
    awk '
    FNR == NR { src[++ns] = $0; next }
    { blk[++nb] = $0 }
    function blank(s) { return s ~ /^[ \t]*$/ }
    function flush() {
        while (cur > 0 && blank(cl[nc, cur])) cur--   # trailing blank lines
        if (cur > 0) cn[nc] = cur; else nc--
    }
    END {
        nc = 1; cur = 0
        for (k = 1; k <= nb; k++) {
            if (blk[k] ~ /^[ \t]*\.\.\.[ \t]*$/) { flush(); nc++; cur = 0; continue }
            if (cur == 0 && blank(blk[k])) continue          # leading blank lines
            cl[nc, ++cur] = blk[k]
        }
        flush()
        pos = 1
        for (c = 1; c <= nc; c++) {
            found = 0
            for (i = pos; i + cn[c] - 1 <= ns && !found; i++) {
                b = cl[c, 1]; s = src[i]
                if (length(s) < length(b) || substr(s, length(s) - length(b) + 1) != b)
                    continue
                pre = substr(s, 1, length(s) - length(b))
                if (pre !~ /^[ \t]*$/)
                    continue
                ok = 1
                for (k = 2; k <= cn[c] && ok; k++) {
                    b = cl[c, k]; s = src[i + k - 1]
                    ok = blank(b) ? blank(s) : s == pre b
                }
                if (ok) { found = 1; pos = i + cn[c] }
            }
            if (!found) exit 1
        }
        exit 0
    }' "$2" "$1"
}

fails=0
total=0
touch "$tmp/index"
while IFS='	' read -r n where named; do
    total=$((total + 1))
    if [ "$named" != "-" ]; then
        files="$top/$named"
        if [ ! -f "$files" ]; then
            echo "$where: the snippet file $named does not exist" >&2
            fails=$((fails + 1))
            continue
        fi
    else
        files=$(ls "$top"/docs/snippets/*.c 2>/dev/null || true)
    fi
    label=$named
    [ "$named" != "-" ] || label="any of docs/snippets/*.c"
    found=no
    for f in $files; do
        if in_file "$tmp/blk.$n" "$f"; then found=$f; break; fi
    done
    if [ "$found" = no ]; then
        echo "$where: this C block is not, verbatim, in $label:" >&2
        sed 's/^/    | /' "$tmp/blk.$n" >&2
        fails=$((fails + 1))
    fi
done < "$tmp/index"

echo "check-snippets: $total C blocks in README.md and docs/*.md, $fails not found in tested code"
[ "$total" -gt 0 ] && [ "$fails" -eq 0 ]
