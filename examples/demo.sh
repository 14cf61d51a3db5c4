#!/bin/sh
# `make demo`: start the flagship (examples/server.c) on a free port, with
# its own throwaway PostgreSQL unless DATABASE_URL is set, send it a handful
# of requests, print what came back and how long it took, and shut it down
# with SIGTERM. Exits non-zero if any answer is not the expected one, so
# `make check` runs it as the example's test.
set -u
SERVER=${1:-./examples/server}
command -v curl >/dev/null 2>&1 || { echo "demo: the curl command line is needed (apt-get install curl)" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/baton-demo.XXXXXX")
pid=
cleanup() {
    [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

echo "== starting $SERVER"
PORT=0 "$SERVER" >"$work/log" 2>&1 &
pid=$!
url=
i=0
while [ $i -lt 600 ]; do
    url=$(sed -n 's/^listening on \(http:[^ ]*\).*/\1/p' "$work/log" | head -n 1)
    [ -n "$url" ] && break
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "demo: the server exited before it listened:" >&2
        cat "$work/log" >&2
        pid=
        exit 1
    fi
    sleep 0.1
    i=$((i + 1))
done
[ -n "$url" ] || { echo "demo: the server did not start in 60 s" >&2; cat "$work/log" >&2; exit 1; }
sed -n '1,/^listening on/p' "$work/log"

failed=0
# req EXPECTED PATH TITLE: one request, its status, time and body.
req() {
    out=$(curl -s -S --max-time 20 -o "$work/body" -w '%{http_code} %{time_total}' "$url$2")
    code=${out% *}
    ms=$(awk -v s="${out#* }" 'BEGIN { printf "%.1f", s * 1000 }')
    printf '\n== %s: GET %s\n%s in %s ms\n' "$3" "$2" "$code" "$ms"
    cat "$work/body"; echo
    if [ "$code" != "$1" ]; then
        echo "demo: expected $1, got $code" >&2
        failed=1
    fi
}

req 200 /user/42 "a user who exists (PostgreSQL + upstream, gathered; CPU hash offloaded)"
req 404 /user/10001 "a user who does not exist"
req 400 /user/abc "an id that is not a number"

n=200
printf '\n== a burst: %d concurrent requests for random users\n' $n
ids=""
j=0
while [ $j -lt $n ]; do
    ids="$ids $(( ( $(od -An -N2 -tu2 /dev/urandom) % 10000 ) + 1 ))"
    j=$((j + 1))
done
start=$(date +%s.%N)
for id in $ids; do echo "url = \"$url/user/$id\""; echo "output = /dev/null"; done >"$work/burst.cfg"
curl -s --no-progress-meter -Z --parallel-max 64 --max-time 30 -K "$work/burst.cfg" \
    -w '%{http_code} %{time_total}\n' >"$work/burst.out" 2>"$work/burst.err"
end=$(date +%s.%N)
ok=$(grep -c '^200 ' "$work/burst.out")
sort -t ' ' -k2 -g "$work/burst.out" | awk -v n="$ok" -v start="$start" -v end="$end" '
    { t[NR] = $2 }
    END {
        wall = end - start
        p99 = int(NR * 0.99); if (p99 < 1) p99 = 1
        if (n == NR)
            printf "All %d requests were answered 200 OK, in %.3f s (%.0f requests a second through curl).\n", NR, wall, NR / wall
        else
            printf "Only %d of the %d requests were answered 200 OK, in %.3f s.\n", n, NR, wall
        printf "Time per request: min %.1f ms, median %.1f ms, p99 %.1f ms, max %.1f ms.\n",
            t[1] * 1000, t[int((NR + 1) / 2)] * 1000, t[p99] * 1000, t[NR] * 1000
    }'
[ "$ok" -eq $n ] || { echo "demo: $((n - ok)) requests of the burst failed" >&2; failed=1; }

printf '\n== what the metrics route says (GET /metrics, excerpt)\n'
if grep -q 'a route of this same process' "$work/log"; then
    echo "The upstream profile service is a route of this same process"
    echo "(GET /upstream/profile/{id}), so every /user request is counted twice:"
    echo "once as itself and once as the upstream call it makes."
fi
curl -s --max-time 10 "$url/metrics" | grep -E '^baton_http_requests_total|^baton_http_request_duration_seconds_(count|sum)|^baton_loop_lag_seconds|^baton_pool_done_total\{pool="default",lane="cpu"\}'

printf '\n== SIGTERM: graceful shutdown\n'
kill -TERM "$pid"
wait "$pid"
rc=$?
pid=
sed -n '/^shut down/,$p' "$work/log"
echo "exit status $rc"
[ $rc -eq 0 ] || failed=1
# The throwaway PostgreSQL (when DATABASE_URL was unset) is gone with it.
pgdir=$(sed -n 's/^throwaway PostgreSQL in //p' "$work/log")
if [ -n "$pgdir" ]; then
    if [ -e "$pgdir" ]; then
        echo "demo: the throwaway PostgreSQL's directory $pgdir is still there" >&2
        failed=1
    else
        echo "The throwaway PostgreSQL's directory $pgdir no longer exists."
    fi
fi
exit $failed
