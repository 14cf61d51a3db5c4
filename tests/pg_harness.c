/* A throwaway PostgreSQL server: see pg_harness.h. */
#define _GNU_SOURCE
#include "pg_harness.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <libpq-fe.h>
#include <limits.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

struct bt_test_pg {
    pid_t owner; /* the process that started it */
    char bindir[PATH_MAX];
    char dir[PATH_MAX]; /* temp dir: data/, socket, logs */
    char data[PATH_MAX + 8];
    char log[PATH_MAX + 16];    /* server log (pg_ctl -l) */
    char cmdlog[PATH_MAX + 16]; /* output of initdb / pg_ctl */
    int port;
    bool running;
    bool drop; /* run commands as run_uid/run_gid */
    uid_t run_uid;
    gid_t run_gid;
    char user[64];
    char conninfo[PATH_MAX + 128];
    char sockinfo[PATH_MAX + 128];
    char url[128];
    char pwinfo[PATH_MAX + 160]; /* the password role's conninfo */
    pid_t watchdog;              /* see start_watchdog; 0 if none */
    int watchdog_fd;             /* our end of its pipe, -1 if none */
    struct bt_test_pg *next_live;
};

static bt_test_pg *live; /* servers to stop at exit */
static bool atexit_done;

static void complain(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("pg_harness: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void dump_file(const char *label, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    /* The last 4 KiB is where the reason is. */
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, size > 4096 ? size - 4096 : 0, SEEK_SET);
    fprintf(stderr, "---- %s (%s) ----\n", label, path);
    char buf[512];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        fwrite(buf, 1, n, stderr);
    fprintf(stderr, "---- end of %s ----\n", label);
    fclose(f);
}

static void dump_logs(const bt_test_pg *pg)
{
    dump_file("command output", pg->cmdlog);
    dump_file("server log", pg->log);
}

static bool is_exec(const char *dir, const char *name)
{
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return access(p, X_OK) == 0;
}

static bool good_bindir(const char *dir)
{
    return is_exec(dir, "initdb") && is_exec(dir, "pg_ctl") && is_exec(dir, "postgres");
}

/* Find initdb, pg_ctl and postgres in one directory (see the header). */
static bool find_bindir(char *out, size_t len)
{
    const char *env = getenv("PG_BINDIR");
    if (env && *env) {
        if (good_bindir(env)) {
            snprintf(out, len, "%s", env);
            return true;
        }
        complain("PG_BINDIR=%s has no initdb/pg_ctl/postgres", env);
        return false;
    }
    /* initdb on PATH; resolve symlinks so pg_ctl finds its own postgres. */
    const char *path = getenv("PATH");
    if (path) {
        char *copy = strdup(path), *save = NULL;
        for (char *d = strtok_r(copy, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
            char p[PATH_MAX], real[PATH_MAX];
            snprintf(p, sizeof p, "%s/initdb", d);
            if (access(p, X_OK) == 0 && realpath(p, real)) {
                char *slash = strrchr(real, '/');
                *slash = '\0';
                if (good_bindir(real)) {
                    snprintf(out, len, "%s", real);
                    free(copy);
                    return true;
                }
            }
        }
        free(copy);
    }
    FILE *pc = popen("pg_config --bindir 2>/dev/null", "r");
    if (pc) {
        char line[PATH_MAX] = "";
        if (fgets(line, sizeof line, pc))
            line[strcspn(line, "\n")] = '\0';
        pclose(pc);
        if (*line && good_bindir(line)) {
            snprintf(out, len, "%s", line);
            return true;
        }
    }
    int best = -1;
    DIR *d = opendir("/usr/lib/postgresql");
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            int v = atoi(e->d_name);
            char p[PATH_MAX];
            snprintf(p, sizeof p, "/usr/lib/postgresql/%s/bin", e->d_name);
            if (v > best && good_bindir(p)) {
                best = v;
                snprintf(out, len, "%s", p);
            }
        }
        closedir(d);
    }
    if (best >= 0)
        return true;
    if (good_bindir("/usr/local/pgsql/bin")) {
        snprintf(out, len, "/usr/local/pgsql/bin");
        return true;
    }
    complain("no PostgreSQL server binaries found (initdb, pg_ctl, postgres); "
             "install postgresql or set PG_BINDIR");
    return false;
}

/* Run bindir/argv[0] with argv, as the server user, output appended to
 * cmdlog. Returns the exit status, or -1 if it could not run. */
static int run(const bt_test_pg *pg, char *const argv[])
{
    char prog[PATH_MAX + 64];
    snprintf(prog, sizeof prog, "%s/%s", pg->bindir, argv[0]);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        complain("fork: %s", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        int fd = open(pg->cmdlog, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        int nul = open("/dev/null", O_RDONLY);
        if (nul >= 0) {
            dup2(nul, 0);
            close(nul);
        }
        if (pg->drop) {
            /* What runuser -u postgres -- does, without needing runuser. */
            if (setgroups(0, NULL) != 0 || setgid(pg->run_gid) != 0 || setuid(pg->run_uid) != 0) {
                fprintf(stderr, "pg_harness: cannot become %s: %s\n", pg->user, strerror(errno));
                _exit(126);
            }
        }
        /* The server must not inherit a locale or PGxxx settings that
         * change what tests see. */
        unsetenv("PGHOST");
        unsetenv("PGPORT");
        unsetenv("PGDATABASE");
        unsetenv("PGUSER");
        unsetenv("PGOPTIONS");
        setenv("LC_ALL", "C", 1);
        /* The server's user may not be able to enter our working directory
         * (a checkout under /root), and argv[0] must be a full path: initdb
         * and pg_ctl find their sibling programs from it, and the bin
         * directory need not be on PATH (it is not on Debian). */
        if (chdir(pg->dir) != 0)
            _exit(126);
        char *args[24];
        int n = 0;
        args[n++] = prog;
        for (int i = 1; argv[i] && n < 23; i++)
            args[n++] = argv[i];
        args[n] = NULL;
        execv(prog, args);
        fprintf(stderr, "pg_harness: exec %s: %s\n", prog, strerror(errno));
        _exit(127);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return -1;
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    return -1;
}

int bt_test_pg_closed_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = { .sin_family = AF_INET };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    socklen_t len = sizeof a;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd); /* bound but never listening: the port is closed */
    return port;
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static void rm_tree(const char *dir)
{
    if (*dir)
        nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static int write_conf(bt_test_pg *pg)
{
    char conf[PATH_MAX + 32];
    snprintf(conf, sizeof conf, "%s/postgresql.conf", pg->data);
    FILE *f = fopen(conf, "a");
    if (!f) {
        complain("open %s: %s", conf, strerror(errno));
        return -1;
    }
    /* Appended settings win over earlier ones. Durability is off: the data
     * is thrown away, and tests and benchmarks should measure Baton. */
    fprintf(f,
            "\n# pg_harness\n"
            "listen_addresses = '127.0.0.1'\n"
            "port = %d\n"
            "unix_socket_directories = '%s'\n"
            "max_connections = 200\n"
            "shared_buffers = 32MB\n"
            "fsync = off\n"
            "synchronous_commit = off\n"
            "full_page_writes = off\n"
            "log_min_messages = warning\n",
            pg->port, pg->dir);
    fclose(f);
    return 0;
}

/* Put a scram-sha-256 line for the password role (PG_HARNESS_PW_ROLE)
 * in front of initdb's "trust" lines: pg_hba.conf takes the first line
 * that matches, so that role alone must give its password. */
#define PW_ROLE "baton_pw"
#define PW_SECRET "baton-secret"
static int write_hba(bt_test_pg *pg)
{
    char path[PATH_MAX + 32], tmp[PATH_MAX + 40];
    snprintf(path, sizeof path, "%s/pg_hba.conf", pg->data);
    snprintf(tmp, sizeof tmp, "%s.new", path);
    FILE *in = fopen(path, "r"), *out = fopen(tmp, "w");
    if (!in || !out) {
        complain("rewrite %s: %s", path, strerror(errno));
        if (in)
            fclose(in);
        if (out)
            fclose(out);
        return -1;
    }
    fprintf(out, "# pg_harness: this role must give its password\n"
                 "local all " PW_ROLE " scram-sha-256\n"
                 "host all " PW_ROLE " 127.0.0.1/32 scram-sha-256\n");
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        fwrite(buf, 1, n, out);
    fclose(in);
    if (fclose(out) != 0 || rename(tmp, path) != 0) {
        complain("rewrite %s: %s", path, strerror(errno));
        return -1;
    }
    if (pg->drop && chown(path, pg->run_uid, pg->run_gid) != 0) {
        complain("chown %s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* The postmaster's pid, from the first line of data/postmaster.pid, or
 * -1 when the server is not running. */
static pid_t read_postmaster_pid(const bt_test_pg *pg)
{
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/postmaster.pid", pg->data);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long pid = -1;
    if (fscanf(f, "%ld", &pid) != 1)
        pid = -1;
    fclose(f);
    return pid > 0 ? (pid_t)pid : -1;
}

/* Send sig to the postmaster's children (the backends and the server's
 * own processes), found by their parent in /proc. Returns how many. */
static int signal_children(pid_t pm, int sig)
{
    DIR *d = opendir("/proc");
    if (!d)
        return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        pid_t pid = (pid_t)atol(e->d_name);
        if (pid <= 0)
            continue;
        char path[64], line[512];
        snprintf(path, sizeof path, "/proc/%ld/stat", (long)pid);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        size_t len = fread(line, 1, sizeof line - 1, f);
        fclose(f);
        line[len] = '\0';
        /* "pid (comm) state ppid ...": comm may hold spaces or ')', so
         * read from the last ')'. */
        char *close = strrchr(line, ')');
        char state;
        long ppid;
        if (close && sscanf(close + 1, " %c %ld", &state, &ppid) == 2 && ppid == pm &&
            kill(pid, sig) == 0)
            n++;
    }
    closedir(d);
    return n;
}

/* Resume whatever bt_test_pg_freeze stopped: a stopped postmaster would
 * never act on pg_ctl stop. Harmless when nothing is stopped. */
static void thaw(const bt_test_pg *pg)
{
    pid_t pm = read_postmaster_pid(pg);
    if (pm > 0) {
        signal_children(pm, SIGCONT);
        kill(pm, SIGCONT);
    }
}

static int ctl_start(bt_test_pg *pg)
{
    char *argv[] = { "pg_ctl", "-D", pg->data, "-l", pg->log, "-w", "-t", "60", "start", NULL };
    if (run(pg, argv) != 0)
        return -1;
    pg->running = true;
    return 0;
}

static void stop_at_exit(void)
{
    for (bt_test_pg *pg = live; pg; pg = pg->next_live) {
        if (pg->owner != getpid())
            continue; /* a forked child exiting: the server is its parent's */
        if (pg->running) {
            char *argv[] = { "pg_ctl", "-D", pg->data, "-w", "-m", "immediate", "stop", NULL };
            thaw(pg);
            run(pg, argv);
            pg->running = false;
        }
        rm_tree(pg->dir);
        pg->dir[0] = '\0';
    }
}

/* A small process that stops the server and removes its directory if we
 * die without doing it (killed, interrupted by ^C, crashed): it waits for
 * end-of-file on a pipe whose write end only this process and its forks
 * hold (close-on-exec, so no server or program started later keeps it
 * open). After a normal bt_test_pg_free or exit it finds nothing left to
 * clean and just exits. */
static void start_watchdog(bt_test_pg *pg)
{
    pg->watchdog = 0;
    pg->watchdog_fd = -1;
    int fds[2];
    if (pipe(fds) != 0)
        return;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return;
    }
    if (pid == 0) {
        /* Keep no other descriptor open (another server's watchdog pipe
         * would never see its end-of-file). */
        for (int fd = 3; fd < 1024; fd++)
            if (fd != fds[0])
                close(fd);
        signal(SIGINT, SIG_IGN);
        signal(SIGTERM, SIG_IGN);
        signal(SIGHUP, SIG_IGN);
        char b;
        for (;;) {
            ssize_t n = read(fds[0], &b, 1);
            if (n == 0 || (n < 0 && errno != EINTR))
                break;
        }
        if (access(pg->data, F_OK) == 0) {
            char *argv[] = { "pg_ctl", "-D", pg->data, "-w", "-m", "immediate", "stop", NULL };
            thaw(pg);
            run(pg, argv);
            rm_tree(pg->dir);
        }
        _exit(0);
    }
    close(fds[0]);
    fcntl(fds[1], F_SETFD, FD_CLOEXEC);
    pg->watchdog = pid;
    pg->watchdog_fd = fds[1];
}

static void stop_watchdog(bt_test_pg *pg)
{
    if (pg->watchdog_fd >= 0) {
        close(pg->watchdog_fd);
        pg->watchdog_fd = -1;
    }
    if (pg->watchdog > 0) {
        waitpid(pg->watchdog, NULL, 0);
        pg->watchdog = 0;
    }
}

static void set_strings(bt_test_pg *pg)
{
    snprintf(pg->conninfo, sizeof pg->conninfo,
             "host=127.0.0.1 port=%d dbname=postgres user=postgres", pg->port);
    snprintf(pg->sockinfo, sizeof pg->sockinfo, "host=%s port=%d dbname=postgres user=postgres",
             pg->dir, pg->port);
    snprintf(pg->url, sizeof pg->url, "postgresql://postgres@127.0.0.1:%d/postgres", pg->port);
    snprintf(pg->pwinfo, sizeof pg->pwinfo,
             "host=127.0.0.1 port=%d dbname=postgres user=" PW_ROLE " password=" PW_SECRET,
             pg->port);
}

/* A new cluster: initdb, or, given a primary, pg_basebackup -R from it
 * (a hot standby that streams from the primary's socket). */
static bt_test_pg *start_cluster(const bt_test_pg *primary)
{
    bt_test_pg *pg = calloc(1, sizeof *pg);
    if (!pg)
        return NULL;
    pg->owner = getpid();
    if (!find_bindir(pg->bindir, sizeof pg->bindir))
        goto fail;

    /* The server's user must reach the directory, and the socket path must
     * fit in sun_path (107 bytes): as root, or with a long TMPDIR, use /tmp
     * (PG_HARNESS_DIR overrides both). */
    const char *tmp = getenv("PG_HARNESS_DIR");
    if (!tmp || !*tmp) {
        tmp = getenv("TMPDIR");
        if (!tmp || !*tmp || geteuid() == 0 || strlen(tmp) > 60)
            tmp = "/tmp";
    }
    snprintf(pg->dir, sizeof pg->dir, "%s/baton-pg-XXXXXX", tmp);
    if (!mkdtemp(pg->dir)) {
        complain("mkdtemp %s: %s", pg->dir, strerror(errno));
        pg->dir[0] = '\0';
        goto fail;
    }
    chmod(pg->dir, 0755);
    snprintf(pg->data, sizeof pg->data, "%s/data", pg->dir);
    snprintf(pg->log, sizeof pg->log, "%s/server.log", pg->dir);
    snprintf(pg->cmdlog, sizeof pg->cmdlog, "%s/commands.log", pg->dir);

    if (geteuid() == 0) {
        /* initdb refuses root: run everything as the postgres user. */
        const char *u = getenv("PG_HARNESS_USER");
        snprintf(pg->user, sizeof pg->user, "%s", u && *u ? u : "postgres");
        struct passwd *pw = getpwnam(pg->user);
        if (!pw) {
            complain("running as root and there is no user '%s' to run the server as "
                     "(set PG_HARNESS_USER)",
                     pg->user);
            goto fail;
        }
        pg->drop = true;
        pg->run_uid = pw->pw_uid;
        pg->run_gid = pw->pw_gid;
        if (chown(pg->dir, pg->run_uid, pg->run_gid) != 0) {
            complain("chown %s: %s", pg->dir, strerror(errno));
            goto fail;
        }
    }

    if (primary != NULL) {
        /* initdb's pg_hba.conf trusts local replication connections. */
        char port[16];
        snprintf(port, sizeof port, "%d", primary->port);
        char *basebackup[] = { "pg_basebackup",
                               "-D",
                               pg->data,
                               "-h",
                               (char *)primary->dir,
                               "-p",
                               port,
                               "-U",
                               "postgres",
                               "-R",
                               "-X",
                               "stream",
                               "-c",
                               "fast",
                               "--no-sync",
                               NULL };
        if (run(pg, basebackup) != 0) {
            complain("pg_basebackup from %s failed", primary->dir);
            dump_logs(pg);
            goto fail;
        }
    } else {
        char *initdb[] = { "initdb", "-D", pg->data, "-U",         "postgres",  "-A",
                           "trust",  "-E", "UTF8",   "--locale=C", "--no-sync", NULL };
        if (run(pg, initdb) != 0) {
            complain("initdb failed in %s", pg->dir);
            dump_logs(pg);
            goto fail;
        }
        if (write_hba(pg) != 0)
            goto fail;
    }

    /* A free port may be taken between our check and the server's bind;
     * try a few. */
    for (int attempt = 0; attempt < 5; attempt++) {
        pg->port = bt_test_pg_closed_port();
        if (pg->port < 0) {
            complain("no free loopback port");
            goto fail;
        }
        if (write_conf(pg) != 0)
            goto fail;
        if (ctl_start(pg) == 0)
            break;
    }
    if (!pg->running) {
        complain("the server did not start (pg_ctl start failed 5 times)");
        dump_logs(pg);
        goto fail;
    }
    set_strings(pg);
    start_watchdog(pg);
    if (primary == NULL &&
        bt_test_pg_exec(pg, "SET password_encryption = 'scram-sha-256'; "
                            "CREATE ROLE " PW_ROLE " LOGIN PASSWORD '" PW_SECRET "'") != 0) {
        complain("could not create the password role");
        dump_logs(pg);
    }
    pg->next_live = live;
    live = pg;
    if (!atexit_done) {
        atexit(stop_at_exit);
        atexit_done = true;
    }
    return pg;

fail:
    if (pg->dir[0])
        rm_tree(pg->dir);
    free(pg);
    return NULL;
}

bt_test_pg *bt_test_pg_start(void)
{
    return start_cluster(NULL);
}

bt_test_pg *bt_test_pg_start_standby(const bt_test_pg *primary)
{
    if (primary == NULL || !primary->running) {
        complain("a standby needs a running primary");
        return NULL;
    }
    return start_cluster(primary);
}

void bt_test_pg_free(bt_test_pg *pg)
{
    if (!pg)
        return;
    for (bt_test_pg **pp = &live; *pp; pp = &(*pp)->next_live)
        if (*pp == pg) {
            *pp = pg->next_live;
            break;
        }
    if (pg->owner == getpid()) {
        if (pg->running) {
            char *argv[] = { "pg_ctl", "-D", pg->data, "-w", "-m", "immediate", "stop", NULL };
            thaw(pg);
            run(pg, argv);
        }
        rm_tree(pg->dir);
        stop_watchdog(pg);
    }
    free(pg);
}

const char *bt_test_pg_conninfo(const bt_test_pg *pg)
{
    return pg->conninfo;
}
const char *bt_test_pg_socket_conninfo(const bt_test_pg *pg)
{
    return pg->sockinfo;
}
const char *bt_test_pg_url(const bt_test_pg *pg)
{
    return pg->url;
}
int bt_test_pg_port(const bt_test_pg *pg)
{
    return pg->port;
}
const char *bt_test_pg_dir(const bt_test_pg *pg)
{
    return pg->dir;
}
bool bt_test_pg_running(const bt_test_pg *pg)
{
    return pg->running;
}

int bt_test_pg_restart(bt_test_pg *pg, const char *mode)
{
    char m[32];
    snprintf(m, sizeof m, "%s", mode ? mode : "fast");
    char *argv[] = { "pg_ctl", "-D", pg->data, "-l", pg->log,   "-w",
                     "-t",     "60", "-m",     m,    "restart", NULL };
    thaw(pg);
    if (run(pg, argv) != 0) {
        complain("pg_ctl restart -m %s failed", m);
        dump_logs(pg);
        return -1;
    }
    pg->running = true;
    return 0;
}

int bt_test_pg_stop(bt_test_pg *pg, const char *mode)
{
    char m[32];
    snprintf(m, sizeof m, "%s", mode ? mode : "fast");
    char *argv[] = { "pg_ctl", "-D", pg->data, "-w", "-t", "60", "-m", m, "stop", NULL };
    thaw(pg);
    if (run(pg, argv) != 0) {
        complain("pg_ctl stop -m %s failed", m);
        dump_logs(pg);
        return -1;
    }
    pg->running = false;
    return 0;
}

int bt_test_pg_resume(bt_test_pg *pg)
{
    if (ctl_start(pg) != 0) {
        complain("pg_ctl start failed");
        dump_logs(pg);
        return -1;
    }
    return 0;
}

int bt_test_pg_postmaster_pid(const bt_test_pg *pg)
{
    return pg->running ? (int)read_postmaster_pid(pg) : -1;
}

int bt_test_pg_freeze(bt_test_pg *pg, bool whole_server)
{
    pid_t pm = read_postmaster_pid(pg);
    if (pm <= 0) {
        complain("freeze: the server is not running");
        return -1;
    }
    /* The children first: a stopped postmaster cannot start new ones
     * while we look, and a backend that was being born is stopped on the
     * next round by the caller's thaw/freeze pair. */
    if (whole_server)
        signal_children(pm, SIGSTOP);
    if (kill(pm, SIGSTOP) != 0) {
        complain("freeze: kill(%ld, SIGSTOP): %s", (long)pm, strerror(errno));
        return -1;
    }
    return 0;
}

int bt_test_pg_thaw(bt_test_pg *pg)
{
    if (read_postmaster_pid(pg) <= 0) {
        complain("thaw: the server is not running");
        return -1;
    }
    thaw(pg);
    return 0;
}

const char *bt_test_pg_password_conninfo(const bt_test_pg *pg)
{
    return pg->pwinfo;
}

int bt_test_pg_exec(const bt_test_pg *pg, const char *sql)
{
    PGconn *c = PQconnectdb(pg->conninfo);
    if (PQstatus(c) != CONNECTION_OK) {
        complain("connect %s: %s", pg->conninfo, PQerrorMessage(c));
        PQfinish(c);
        return -1;
    }
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    int rc = (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) ? 0 : -1;
    if (rc != 0)
        complain("%s: %s", sql, PQerrorMessage(c));
    PQclear(r);
    PQfinish(c);
    return rc;
}

char *bt_test_pg_scalar(const bt_test_pg *pg, const char *sql)
{
    PGconn *c = PQconnectdb(pg->conninfo);
    if (PQstatus(c) != CONNECTION_OK) {
        complain("connect %s: %s", pg->conninfo, PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    char *out = NULL;
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) > 0 && !PQgetisnull(r, 0, 0))
        out = strdup(PQgetvalue(r, 0, 0));
    else if (PQresultStatus(r) != PGRES_TUPLES_OK)
        complain("%s: %s", sql, PQerrorMessage(c));
    PQclear(r);
    PQfinish(c);
    return out;
}

/* ---- PgBouncer in front of a server ---------------------------------------- */

struct bt_test_pgbouncer {
    pid_t owner; /* the process that started it */
    pid_t pid;   /* pgbouncer, a child of owner */
    const bt_test_pg *pg;
    char dir[PATH_MAX];
    char log[PATH_MAX + 16];
    int port;
    char conninfo[160];
    struct bt_test_pgbouncer *next_live;
};

static struct bt_test_pgbouncer *live_bouncers;

/* pgbouncer from $PGBOUNCER, else on PATH, else in /usr/sbin (Debian's
 * package puts it there, off a normal user's PATH). */
static bool find_pgbouncer(char *out, size_t len)
{
    const char *env = getenv("PGBOUNCER");
    if (env && *env) {
        snprintf(out, len, "%s", env);
        return access(out, X_OK) == 0;
    }
    const char *path = getenv("PATH");
    char *copy = strdup(path ? path : ""), *save = NULL;
    bool found = false;
    for (char *d = strtok_r(copy, ":", &save); d && !found; d = strtok_r(NULL, ":", &save)) {
        snprintf(out, len, "%s/pgbouncer", d);
        found = access(out, X_OK) == 0;
    }
    free(copy);
    if (!found) {
        snprintf(out, len, "/usr/sbin/pgbouncer");
        found = access(out, X_OK) == 0;
    }
    return found;
}

static void bouncer_kill(struct bt_test_pgbouncer *b)
{
    if (b->pid > 0 && b->owner == getpid()) {
        kill(b->pid, SIGTERM); /* immediate shutdown */
        waitpid(b->pid, NULL, 0);
    }
    b->pid = 0;
}

static void bouncers_at_exit(void)
{
    for (struct bt_test_pgbouncer *b = live_bouncers; b; b = b->next_live)
        if (b->owner == getpid()) {
            bouncer_kill(b);
            rm_tree(b->dir);
            b->dir[0] = '\0';
        }
}

/* Write pgbouncer.ini and userlist.txt for a pool in front of pg on port. */
static int write_bouncer_conf(const struct bt_test_pgbouncer *b, const char *pool_mode,
                              int pool_size)
{
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/userlist.txt", b->dir);
    FILE *f = fopen(path, "w");
    if (!f) {
        complain("open %s: %s", path, strerror(errno));
        return -1;
    }
    /* auth_type trust still wants the user listed. */
    fprintf(f, "\"postgres\" \"\"\n");
    fclose(f);
    snprintf(path, sizeof path, "%s/pgbouncer.ini", b->dir);
    f = fopen(path, "w");
    if (!f) {
        complain("open %s: %s", path, strerror(errno));
        return -1;
    }
    fprintf(f,
            "[databases]\n"
            "postgres = host=127.0.0.1 port=%d dbname=postgres\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            "listen_port = %d\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            "auth_file = %s/userlist.txt\n"
            "pool_mode = %s\n"
            "default_pool_size = %d\n"
            "max_client_conn = 500\n"
            "pidfile = %s/pgbouncer.pid\n"
            "logfile = %s/pgbouncer.log\n"
            "ignore_startup_parameters = extra_float_digits\n",
            b->pg->port, b->port, b->dir, pool_mode, pool_size, b->dir, b->dir);
    fclose(f);
    return 0;
}

bt_test_pgbouncer *bt_test_pgbouncer_start(const bt_test_pg *pg, const char *pool_mode,
                                           int pool_size)
{
    char prog[PATH_MAX];
    if (pg == NULL || !pg->running) {
        complain("pgbouncer needs a running server");
        return NULL;
    }
    if (!find_pgbouncer(prog, sizeof prog)) {
        complain("no pgbouncer found (install the pgbouncer package or set PGBOUNCER)");
        return NULL;
    }
    struct bt_test_pgbouncer *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->owner = getpid();
    b->pg = pg;
    /* Beside the server's directory: the same parent, reachable by its
     * user. */
    char *slash = strrchr(pg->dir, '/');
    snprintf(b->dir, sizeof b->dir, "%.*s/baton-pgb-XXXXXX", (int)(slash - pg->dir), pg->dir);
    if (!mkdtemp(b->dir)) {
        complain("mkdtemp %s: %s", b->dir, strerror(errno));
        free(b);
        return NULL;
    }
    chmod(b->dir, 0755);
    if (pg->drop && chown(b->dir, pg->run_uid, pg->run_gid) != 0) {
        complain("chown %s: %s", b->dir, strerror(errno));
        goto fail;
    }
    snprintf(b->log, sizeof b->log, "%s/pgbouncer.log", b->dir);
    char out[PATH_MAX + 16], ini[PATH_MAX + 16];
    snprintf(out, sizeof out, "%s/pgbouncer.out", b->dir);
    snprintf(ini, sizeof ini, "%s/pgbouncer.ini", b->dir);
    /* A free port may be taken before pgbouncer binds it: try a few. */
    for (int attempt = 0; attempt < 5 && b->pid == 0; attempt++) {
        b->port = bt_test_pg_closed_port();
        if (b->port < 0 || write_bouncer_conf(b, pool_mode ? pool_mode : "transaction",
                                              pool_size > 0 ? pool_size : 2) != 0)
            goto fail;
        fflush(NULL);
        pid_t pid = fork();
        if (pid < 0) {
            complain("fork: %s", strerror(errno));
            goto fail;
        }
        if (pid == 0) {
            int fd = open(out, O_WRONLY | O_CREAT | O_APPEND, 0644);
            if (fd >= 0) {
                dup2(fd, 1);
                dup2(fd, 2);
                close(fd);
            }
            /* pgbouncer refuses to run as root. */
            if (pg->drop &&
                (setgroups(0, NULL) != 0 || setgid(pg->run_gid) != 0 || setuid(pg->run_uid) != 0))
                _exit(126);
            /* If the test process dies, so does its pgbouncer (set after
             * the change of user, which clears it). */
            prctl(PR_SET_PDEATHSIG, SIGTERM);
            if (chdir(b->dir) != 0)
                _exit(126);
            execl(prog, prog, ini, (char *)NULL);
            fprintf(stderr, "pg_harness: exec %s: %s\n", prog, strerror(errno));
            _exit(127);
        }
        b->pid = pid;
        snprintf(b->conninfo, sizeof b->conninfo,
                 "host=127.0.0.1 port=%d dbname=postgres user=postgres", b->port);
        /* Up when it answers a connection (up to 20 s); gone if it exited
         * (a port taken, a bad setting). */
        bool up = false;
        for (int i = 0; i < 400 && !up; i++) {
            if (waitpid(pid, NULL, WNOHANG) == pid) {
                b->pid = 0;
                break;
            }
            up = PQping(b->conninfo) == PQPING_OK;
            if (!up)
                usleep(50000);
        }
        if (!up && b->pid != 0) {
            bouncer_kill(b);
            break;
        }
    }
    if (b->pid == 0) {
        complain("pgbouncer did not start in %s", b->dir);
        dump_file("pgbouncer output", out);
        dump_file("pgbouncer log", b->log);
        goto fail;
    }
    b->next_live = live_bouncers;
    live_bouncers = b;
    static bool registered;
    if (!registered) {
        atexit(bouncers_at_exit);
        registered = true;
    }
    return b;

fail:
    rm_tree(b->dir);
    free(b);
    return NULL;
}

void bt_test_pgbouncer_free(bt_test_pgbouncer *b)
{
    if (!b)
        return;
    for (struct bt_test_pgbouncer **pp = &live_bouncers; *pp; pp = &(*pp)->next_live)
        if (*pp == b) {
            *pp = b->next_live;
            break;
        }
    if (b->owner == getpid()) {
        bouncer_kill(b);
        rm_tree(b->dir);
    }
    free(b);
}

const char *bt_test_pgbouncer_conninfo(const bt_test_pgbouncer *b)
{
    return b->conninfo;
}

int bt_test_pgbouncer_port(const bt_test_pgbouncer *b)
{
    return b->port;
}
