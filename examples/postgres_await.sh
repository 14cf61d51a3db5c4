#!/bin/sh
# Run examples/postgres_await against a throwaway PostgreSQL server (tests/pg_run
# starts one and sets DATABASE_URL), and check what it printed.
set -eu
build=${top_builddir:-.}
out=$("$build/tests/pg_run" "$build/examples/postgres_await")
echo "$out"
[ "$out" = "{'id': 1, 'name': 'Ada Lovelace', 'email': 'ada@example.com'}" ]
