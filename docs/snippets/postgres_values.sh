#!/bin/sh
# Run docs/snippets/postgres_values (the typed getters, notices and
# parameters of docs/postgres.md) against a throwaway PostgreSQL server:
# tests/pg_run starts one and sets DATABASE_URL.
set -eu
build=${top_builddir:-.}
out=$("$build/tests/pg_run" "$build/docs/snippets/postgres_values")
echo "$out"
[ "$out" = "order 1: score 4.50, paid 1, at 1704067200000000
order 2: no score, paid 0, at 1000000
WARNING 01000: stock is low
server known, TimeZone UTC" ]
