#!/bin/sh
# Run docs/snippets/postgres (the docs' PostgreSQL snippets) against a
# throwaway PostgreSQL server: tests/pg_run starts one and sets DATABASE_URL.
set -eu
build=${top_builddir:-.}
out=$("$build/tests/pg_run" "$build/docs/snippets/postgres")
echo "$out"
[ "$out" = "Ada
grace@example.com" ]
