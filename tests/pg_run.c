/* pg_run: run a command with a throwaway PostgreSQL server.
 *
 *   tests/pg_run PROGRAM [ARGS...]
 *
 * Starts a server with the test harness (pg_harness.h), runs PROGRAM with
 * DATABASE_URL (a postgresql:// URI on 127.0.0.1) and BT_PG_CONNINFO (a
 * key=value conninfo) in its environment, stops the server and exits with
 * the program's status. If the server cannot start it exits 99, which
 * Automake's test driver reports as a hard ERROR, never a skip. Used to run
 * examples/postgres from `make check`. */
#include "pg_harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s PROGRAM [ARGS...]\n", argv[0]);
        return 2;
    }
    bt_test_pg *pg = bt_test_pg_start();
    if (!pg) {
        fprintf(stderr, "pg_run: could not start PostgreSQL\n");
        return 99;
    }
    setenv("DATABASE_URL", bt_test_pg_url(pg), 1);
    setenv("BT_PG_CONNINFO", bt_test_pg_conninfo(pg), 1);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        execvp(argv[1], argv + 1);
        perror(argv[1]);
        _exit(127);
    }
    int st = 0;
    int rc = 99;
    if (pid > 0 && waitpid(pid, &st, 0) == pid)
        rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    bt_test_pg_free(pg);
    return rc;
}
