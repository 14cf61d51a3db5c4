#!/bin/sh
# The quick part of the fault run, for `make check`: the request-smuggling
# cases and a slowloris against a 2 s head deadline (tests/faults/faults.c).
exec ./tests/faults/faults --quick ./examples/server
