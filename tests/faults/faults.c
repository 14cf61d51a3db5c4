/* tests/faults/faults.c: `make faults`, the flagship under the faults an
 * operator meets (issue 13), run so that anyone can repeat it.
 *
 *   tests/faults/faults [--quick] [--only NAME[,NAME...]] [SERVER]
 *
 * It starts a throwaway PostgreSQL (tests/pg_harness.h) and the flagship
 * (SERVER, default ./examples/server) against it, on 127.0.0.1 only, and
 * runs each fault in turn, bounded in time (the whole run takes about three
 * minutes, never more than five). Each fault prints one line:
 *
 *   fault NAME key=value ... verdict=ok
 *   fault NAME key=value ... verdict=FAIL (what regressed)
 *
 * and the program exits 1 when one fails, 0 when all hold, 99 when it could
 * not set up (no PostgreSQL, no server: a hard error, never a skip). The
 * thresholds are the goals of issue 13, each written beside its check with
 * its reason. --quick runs only the fast faults (the framing cases and a
 * short slowloris) for `make check`.
 *
 * DESIGN. The program is plain blocking POSIX code, no Baton: it plays the
 * clients, the operator and the upstream. Loads are threads, each doing one
 * request at a time on a fresh connection (Connection: close), with its own
 * deadline, and recording (start, end, status) into one array under a
 * mutex; a status of 0 means no answer before the client's deadline (a hung
 * request), -1 a connection that failed before any answer. Slowloris and
 * the idle connections are one thread polling many sockets. The endless
 * upstream is an accept thread plus one thread per connection. Faults on
 * PostgreSQL signal its processes directly: the postmaster's pid is the
 * first line of data/postmaster.pid, the backends are its children in
 * /proc. Whatever happens, PostgreSQL is sent SIGCONT before the harness
 * stops it at exit, and every server this program starts dies with it
 * (PR_SET_PDEATHSIG). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "pg_harness.h"

/* ---- Thresholds: the goals of issue 13, with their reasons ------------- */

/* The flagship's own settings (examples/server.c): its handlers give up
 * at 10 s (504) and its shutdown lets requests run 5 s. */
#define HANDLER_TIMEOUT_S 10.0
#define SHUTDOWN_DEADLINE_S 5.0
/* A request that has no answer this long after it was sent is hung: the
 * handler timeout plus 10 s of slack for a loaded machine. */
#define HUNG_AFTER_S (HANDLER_TIMEOUT_S + 10.0)
/* After PostgreSQL comes back (SIGCONT, or a restart after SIGKILL), the
 * pool serves again within this long. Issue 13 measured 0.6 to 1.1 s after
 * a restart; 10 s leaves room for a machine at load 12. */
#define RECOVERY_MAX_S 10.0
/* Shutdown ends within its deadline plus a small bound, whatever
 * PostgreSQL does (issue 13: "blocking jobs still running then are
 * abandoned"). The bound is 5 s, for the loops' own teardown on a loaded
 * machine; issue 13 measured 28 to 31 s on main. */
#define EXIT_BOUND_S (SHUTDOWN_DEADLINE_S + 5.0)
/* The server's default head deadline is 10 to 20 s (issue 13); every
 * slowloris connection must be closed by the server within the longest
 * default plus 10 s of slack. --quick starts the server with a 2 s head
 * deadline (HEAD_TIMEOUT_MS) and allows 2 + 8 s. */
#define HEAD_DEADLINE_S 20.0
#define QUICK_HEAD_DEADLINE_S 2.0
#define HEAD_SLACK_S 10.0
#define QUICK_HEAD_SLACK_S 8.0
/* fd exhaustion: a listener that pauses on EMFILE costs next to no CPU and
 * logs one line per interval. Issue 13 saw 35 to 100% of a core and 2.1
 * million lines in 20 s. 25% of a core and 60 lines in the 10 s window
 * leave room for the idle connections' own work and any interval of 1 s
 * or more. */
#define FD_WINDOW_S 10.0
#define FD_CPU_MAX_PCT 25.0
#define FD_LOG_LINES_MAX 60
/* An endless upstream body: the flagship caps an upstream response at
 * 64 KiB, so 16 such calls at once cost about 1 MiB; 64 MiB above the
 * idle RSS is far from the 702 MB issue 13 saw and far above the cap. */
#define ENDLESS_CALLS 16
#define RSS_GROWTH_MAX_MB 64.0

/* ---- Small helpers ------------------------------------------------------- */

static bool quick;
static int failures;
static bt_test_pg *pg;
static const char *server_bin = "./examples/server";

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void nap(double s)
{
    if (s <= 0)
        return;
    struct timespec ts = { (time_t)s, (long)((s - (double)(time_t)s) * 1e9) };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Print one fault's line: its figures, then its verdict. why is NULL when
 * the fault held. */
static void report(const char *name, const char *why, const char *fmt, ...)
{
    char figures[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(figures, sizeof figures, fmt, ap);
    va_end(ap);
    if (why == NULL)
        printf("fault %s %s verdict=ok\n", name, figures);
    else {
        printf("fault %s %s verdict=FAIL (%s)\n", name, figures, why);
        failures++;
    }
    fflush(stdout);
}

static void note(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "faults: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

/* ---- PostgreSQL's processes ------------------------------------------------ */

static pid_t postmaster_pid(void)
{
    char path[512];
    snprintf(path, sizeof path, "%s/data/postmaster.pid", bt_test_pg_dir(pg));
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    long pid = -1;
    if (fscanf(f, "%ld", &pid) != 1)
        pid = -1;
    fclose(f);
    return (pid_t)pid;
}

/* The children of parent (the backends and helpers of a postmaster), at
 * most max; returns how many. */
static int children_of(pid_t parent, pid_t *out, int max)
{
    int n = 0;
    DIR *d = opendir("/proc");
    if (d == NULL)
        return 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && n < max) {
        if (!isdigit((unsigned char)e->d_name[0]))
            continue;
        char path[300], buf[512];
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        FILE *f = fopen(path, "r");
        if (f == NULL)
            continue;
        size_t len = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[len] = '\0';
        char *p = strrchr(buf, ')'); /* the name may hold spaces */
        long ppid = 0;
        char state;
        if (p != NULL && sscanf(p + 1, " %c %ld", &state, &ppid) == 2 && ppid == parent)
            out[n++] = (pid_t)atol(e->d_name);
    }
    closedir(d);
    return n;
}

static pid_t pg_pm = -1; /* the postmaster we last signalled */
static atomic_bool pg_stopped;

/* Signal the postmaster and, unless postmaster_only, all its children. */
static int pg_signal(int sig, bool postmaster_only)
{
    pid_t pm = postmaster_pid();
    if (pm <= 0) {
        note("no postmaster.pid in %s", bt_test_pg_dir(pg));
        return -1;
    }
    pg_pm = pm;
    pid_t kids[256];
    int n = postmaster_only ? 0 : children_of(pm, kids, 256);
    if (sig == SIGKILL || sig == SIGSTOP)
        kill(pm, sig); /* first, so that it starts no new backend meanwhile */
    for (int i = 0; i < n; i++)
        kill(kids[i], sig);
    if (sig != SIGKILL && sig != SIGSTOP)
        kill(pm, sig);
    atomic_store(&pg_stopped, sig == SIGSTOP);
    return 0;
}

/* Never leave PostgreSQL stopped: the harness's exit handler would wait
 * for it forever. */
static void pg_continue_all(void)
{
    if (pg_pm > 0) {
        pid_t kids[256];
        int n = children_of(pg_pm, kids, 256);
        kill(pg_pm, SIGCONT);
        for (int i = 0; i < n; i++)
            kill(kids[i], SIGCONT);
    }
    atomic_store(&pg_stopped, false);
}

static void on_fatal_signal(int sig)
{
    pg_continue_all();
    signal(sig, SIG_DFL);
    raise(sig);
}

/* ---- The flagship as a child process -------------------------------------- */

typedef struct {
    pid_t pid;
    int port;
    char log[256];
} server;

/* Start the server with PORT=0 and wait (60 s at most) until it listens.
 * upstream: UPSTREAM_URL or NULL; nofile: RLIMIT_NOFILE or 0. */
static int server_start(server *s, const char *tag, const char *upstream, long nofile)
{
    memset(s, 0, sizeof *s);
    snprintf(s->log, sizeof s->log, "%s/faults-%s-%d.log", bt_test_pg_dir(pg), tag, (int)getpid());
    unlink(s->log);
    fflush(NULL);
    s->pid = fork();
    if (s->pid < 0)
        return -1;
    if (s->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int fd = open(s->log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd < 0)
            _exit(126);
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
        setenv("DATABASE_URL", bt_test_pg_conninfo(pg), 1);
        setenv("PORT", "0", 1);
        setenv("HOST", "127.0.0.1", 1);
        setenv("LOOPS", "2", 1);
        if (quick) {
            /* The server's head deadline, when the flagship can set one. */
            char v[32];
            snprintf(v, sizeof v, "%d", (int)(QUICK_HEAD_DEADLINE_S * 1000));
            setenv("HEAD_TIMEOUT_MS", v, 1);
        }
        if (upstream != NULL)
            setenv("UPSTREAM_URL", upstream, 1);
        else
            unsetenv("UPSTREAM_URL");
        /* In an ASan build, freed blocks wait in a quarantine of 256 MiB
         * before reuse, which the RSS figures would count as growth: keep
         * it small, so they measure the program. Ignored by other builds. */
        const char *asan = getenv("ASAN_OPTIONS");
        char opts[512];
        snprintf(opts, sizeof opts, "%s%squarantine_size_mb=8", asan != NULL ? asan : "",
                 asan != NULL && *asan != '\0' ? ":" : "");
        setenv("ASAN_OPTIONS", opts, 1);
        if (nofile > 0) {
            struct rlimit rl = { (rlim_t)nofile, (rlim_t)nofile };
            setrlimit(RLIMIT_NOFILE, &rl);
        }
        execl(server_bin, server_bin, (char *)NULL);
        perror(server_bin);
        _exit(127);
    }
    for (int i = 0; i < 600; i++) {
        FILE *f = fopen(s->log, "r");
        if (f != NULL) {
            char line[512];
            while (fgets(line, sizeof line, f) != NULL)
                if (sscanf(line, "listening on http://127.0.0.1:%d", &s->port) == 1)
                    break;
            fclose(f);
        }
        if (s->port > 0)
            return 0;
        int st;
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
            note("the server exited before it listened; its log is %s", s->log);
            s->pid = 0;
            return -1;
        }
        nap(0.1);
    }
    note("the server did not listen within 60 s; its log is %s", s->log);
    return -1;
}

/* SIGTERM and wait at most bound seconds; then SIGKILL. Returns the
 * seconds it took to exit, or -1 if it had to be killed. *status gets
 * the wait status. */
static double server_stop(server *s, double bound, int *status)
{
    if (s->pid <= 0)
        return -1;
    double t0 = now();
    kill(s->pid, SIGTERM);
    int st = 0;
    while (now() - t0 < bound) {
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
            s->pid = 0;
            if (status != NULL)
                *status = st;
            return now() - t0;
        }
        nap(0.05);
    }
    kill(s->pid, SIGKILL);
    waitpid(s->pid, &st, 0);
    s->pid = 0;
    if (status != NULL)
        *status = st;
    return -1;
}

static double rss_mb(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    double kb = -1;
    while (fgets(line, sizeof line, f) != NULL)
        if (sscanf(line, "VmRSS: %lf kB", &kb) == 1)
            break;
    fclose(f);
    return kb / 1024.0;
}

/* User plus system CPU time of a process, in seconds. */
static double cpu_s(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t len = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[len] = '\0';
    char *p = strrchr(buf, ')');
    unsigned long ut = 0, st = 0;
    if (p == NULL ||
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* Lines in a file from byte offset `from` on. */
static long count_lines(const char *path, long from)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    fseek(f, from, SEEK_SET);
    long n = 0;
    char buf[65536];
    size_t len;
    while ((len = fread(buf, 1, sizeof buf, f)) > 0)
        for (size_t i = 0; i < len; i++)
            n += buf[i] == '\n';
    fclose(f);
    return n;
}

static long file_size(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 ? (long)sb.st_size : 0;
}

/* ---- Sockets ------------------------------------------------------------- */

/* A connected socket to 127.0.0.1:port, or -1. Blocking. */
static int dial(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static bool send_all(int fd, const char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n <= 0)
            return false;
        p += n;
        len -= (size_t)n;
    }
    return true;
}

/* Read what the server sends until it closes, or until nothing came for
 * idle_s, or until the deadline. Returns the bytes read (NUL-terminated,
 * truncated to cap) and sets *closed when the server closed the
 * connection. */
static size_t read_until(int fd, char *buf, size_t cap, double idle_s, double deadline,
                         bool *closed)
{
    size_t len = 0;
    *closed = false;
    for (;;) {
        double left = deadline - now();
        if (left > idle_s)
            left = idle_s;
        if (left <= 0)
            break;
        struct pollfd p = { fd, POLLIN, 0 };
        int r = poll(&p, 1, (int)(left * 1000) + 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        char tmp[4096];
        ssize_t n = recv(fd, tmp, sizeof tmp, 0);
        if (n <= 0) {
            *closed = true;
            break;
        }
        size_t take = (size_t)n < cap - 1 - len ? (size_t)n : cap - 1 - len;
        memcpy(buf + len, tmp, take);
        len += take;
    }
    buf[len] = '\0';
    return len;
}

/* The statuses of the responses in buf ("HTTP/1.x NNN" at a line start),
 * at most max; returns how many. */
static int statuses(const char *buf, int *out, int max)
{
    int n = 0;
    for (const char *p = buf; (p = strstr(p, "HTTP/1.")) != NULL && n < max; p += 7)
        if ((p == buf || p[-1] == '\n') && strlen(p) >= 12)
            out[n++] = atoi(p + 9);
    return n;
}

/* One GET with Connection: close. Returns the status, 0 when no answer
 * came within timeout_s (hung, or the client gave up), -1 when the
 * connection failed before any answer. */
static int http_get(int port, const char *path, double timeout_s)
{
    int fd = dial(port);
    if (fd < 0)
        return -1;
    char req[512];
    int len = snprintf(req, sizeof req,
                       "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", path);
    if (!send_all(fd, req, (size_t)len)) {
        close(fd);
        return -1;
    }
    char buf[512];
    size_t got = 0;
    double deadline = now() + timeout_s;
    int status = 0;
    while (got < 12) {
        double left = deadline - now();
        if (left <= 0)
            break;
        struct pollfd p = { fd, POLLIN, 0 };
        int r = poll(&p, 1, (int)(left * 1000) + 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        ssize_t n = recv(fd, buf + got, sizeof buf - 1 - got, 0);
        if (n <= 0) {
            status = -1;
            break;
        }
        got += (size_t)n;
    }
    buf[got] = '\0';
    if (got >= 12 && strncmp(buf, "HTTP/1.", 7) == 0)
        status = atoi(buf + 9);
    close(fd);
    return status;
}

/* ---- Load: threads of one-at-a-time requests -------------------------------- */

typedef struct {
    double start, end;
    int status;
} sample;

typedef struct {
    int port;
    double timeout_s;
    atomic_bool stop;
    pthread_mutex_t mu;
    sample *s;
    size_t n, cap;
    pthread_t threads[64];
    int nthreads;
} load;

static void *load_thread(void *arg)
{
    load *l = arg;
    unsigned seed = (unsigned)(uintptr_t)pthread_self() ^ (unsigned)getpid();
    while (!atomic_load(&l->stop)) {
        char path[64];
        snprintf(path, sizeof path, "/user/%d", (int)(rand_r(&seed) % 10000) + 1);
        double t0 = now();
        int st = http_get(l->port, path, l->timeout_s);
        double t1 = now();
        pthread_mutex_lock(&l->mu);
        if (l->n == l->cap) {
            l->cap = l->cap ? l->cap * 2 : 1024;
            l->s = realloc(l->s, l->cap * sizeof *l->s);
        }
        if (l->s != NULL)
            l->s[l->n++] = (sample){ t0, t1, st };
        pthread_mutex_unlock(&l->mu);
        if (st < 0)
            nap(0.02); /* refused: do not spin */
    }
    return NULL;
}

static void load_start(load *l, int port, int threads, double timeout_s)
{
    memset(l, 0, sizeof *l);
    l->port = port;
    l->timeout_s = timeout_s;
    pthread_mutex_init(&l->mu, NULL);
    l->nthreads = threads;
    for (int i = 0; i < threads; i++)
        pthread_create(&l->threads[i], NULL, load_thread, l);
}

/* Stop starting requests and wait for the ones in flight (each ends by
 * its own deadline). */
static void load_stop(load *l)
{
    atomic_store(&l->stop, true);
    for (int i = 0; i < l->nthreads; i++)
        pthread_join(l->threads[i], NULL);
}

static void load_free(load *l)
{
    free(l->s);
    pthread_mutex_destroy(&l->mu);
}

typedef struct {
    int requests, ok, s5xx, s503, s504, other, hung, refused;
} tally;

/* Count the requests that started in [from, to). */
static tally load_tally(const load *l, double from, double to)
{
    tally t = { 0 };
    for (size_t i = 0; i < l->n; i++) {
        const sample *s = &l->s[i];
        if (s->start < from || s->start >= to)
            continue;
        t.requests++;
        if (s->status == 200)
            t.ok++;
        else if (s->status == 0)
            t.hung++;
        else if (s->status < 0)
            t.refused++;
        else if (s->status >= 500) {
            t.s5xx++;
            t.s503 += s->status == 503;
            t.s504 += s->status == 504;
        } else
            t.other++;
    }
    return t;
}

/* Seconds from `since` to the end of the first request answered 200 that
 * started after `since`, or -1 if none. */
static double load_recovery(const load *l, double since)
{
    double best = -1;
    for (size_t i = 0; i < l->n; i++)
        if (l->s[i].status == 200 && l->s[i].start >= since && (best < 0 || l->s[i].end < best))
            best = l->s[i].end;
    return best < 0 ? -1 : best - since;
}

#define TALLY_FMT "requests=%d ok200=%d s504=%d s503=%d other5xx=%d other=%d hung=%d refused=%d"
#define TALLY_ARGS(t)                                                                              \
    (t).requests, (t).ok, (t).s504, (t).s503, (t).s5xx - (t).s503 - (t).s504, (t).other, (t).hung, \
        (t).refused

/* Stop a server that should be healthy, and check that it exits 0 within
 * its shutdown deadline plus the bound (a sanitizer's report or a crash
 * shows here too: its log's tail goes to stderr). */
static void stop_and_check(server *s, const char *tag)
{
    int st = 0;
    double took = server_stop(s, 30, &st);
    bool ok = took >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0;
    char name[64];
    snprintf(name, sizeof name, "clean_exit_%s", tag);
    report(name, ok ? NULL : "did not exit 0 in time", "exit_s=%.2f status=%d", took,
           WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    if (!ok) {
        /* The log lives in PostgreSQL's directory, removed at exit: keep
         * a copy where it can be read. */
        const char *tmp = getenv("TMPDIR");
        char keep[300], cmd[1024];
        snprintf(keep, sizeof keep, "%s/baton-faults-%s-%d.log", tmp != NULL ? tmp : "/tmp", tag,
                 (int)getpid());
        snprintf(cmd, sizeof cmd, "cp '%s' '%s' && tail -n 20 '%s' >&2", s->log, keep, keep);
        if (system(cmd) == 0)
            note("the server's log is kept in %s", keep);
        else
            note("no log at %s", s->log);
    }
}

/* ---- The faults ------------------------------------------------------------ */

/* PostgreSQL SIGSTOPped for 10 s under load: requests get 504 at the
 * handler timeout, none hangs, and the pool serves again soon after
 * SIGCONT. (Held on main, issue 13: a regression guard.) */
static void fault_pg_sigstop(server *s)
{
    load l;
    load_start(&l, s->port, 8, HUNG_AFTER_S);
    double t0 = now();
    nap(2);
    pg_signal(SIGSTOP, false);
    nap(10);
    pg_continue_all();
    double t_cont = now();
    nap(6);
    load_stop(&l);
    tally t = load_tally(&l, t0, now());
    double rec = load_recovery(&l, t_cont);
    const char *why = NULL;
    if (t.hung > 0)
        why = "requests hung past the handler timeout";
    else if (rec < 0 || rec > RECOVERY_MAX_S)
        why = "no 200 soon after SIGCONT";
    report("pg_sigstop_10s", why, TALLY_FMT " recovery_s=%.2f", TALLY_ARGS(t), rec);
    load_free(&l);
}

/* PostgreSQL SIGKILLed (the postmaster and every backend) and restarted
 * under load: nothing hangs, and the pool serves again soon after the new
 * server accepts connections. */
static void fault_pg_sigkill(server *s)
{
    load l;
    load_start(&l, s->port, 8, HUNG_AFTER_S);
    double t0 = now();
    nap(2);
    pid_t pm = postmaster_pid();
    pg_signal(SIGKILL, false);
    double t_kill = now();
    for (int i = 0; i < 100 && kill(pm, 0) == 0; i++)
        nap(0.1);
    nap(1); /* the clients meet a dead database for a moment */
    int rc = bt_test_pg_resume(pg);
    double t_up = now();
    nap(6);
    load_stop(&l);
    tally t = load_tally(&l, t0, now());
    double rec = load_recovery(&l, t_up);
    const char *why = NULL;
    if (rc != 0)
        why = "PostgreSQL did not restart";
    else if (t.hung > 0)
        why = "requests hung";
    else if (rec < 0 || rec > RECOVERY_MAX_S)
        why = "the pool did not serve again soon after the restart";
    report("pg_sigkill_restart", why, TALLY_FMT " down_s=%.2f recovery_s=%.2f", TALLY_ARGS(t),
           t_up - t_kill, rec);
    load_free(&l);
}

typedef struct {
    int port;
    int status;
} one_get;

static void *one_get_thread(void *arg)
{
    one_get *g = arg;
    g->status = http_get(g->port, "/user/77", 1.0);
    return NULL;
}

/* Issue 13 point 1: a wedged postmaster. A transaction holds the users
 * table locked, so queries wait; the postmaster alone is SIGSTOPped
 * (backends live); 20 clients give up after 1 s, so their handlers are
 * cancelled and the pool sends cancel requests, which need the postmaster
 * and hang; then the lock is released and the service is loaded for 12 s
 * with the postmaster still stopped, then SIGCONT.
 *
 * What is required: nothing hangs (every request has its answer by the
 * handler timeout) and the service is back soon after SIGCONT. What is
 * reported besides: the 200s answered while the postmaster was stopped.
 * A pool that closes and replaces a connection whose cancel timed out
 * (the fix issue 13 asks for) cannot open the replacement while the
 * postmaster is stopped either, so that figure is for the record, not a
 * threshold. The shutdown half of the same bug (a process that cannot
 * exit while cancels hang) is fault sigterm_pg_stopped. */
static void fault_wedged_postmaster(server *s)
{
    PGconn *lock = PQconnectdb(bt_test_pg_conninfo(pg));
    PGresult *r = PQexec(lock, "BEGIN; LOCK TABLE baton_demo_users IN ACCESS EXCLUSIVE MODE");
    bool locked = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (!locked) {
        report("wedged_postmaster", "could not take the lock", "error=\"%s\"",
               PQerrorMessage(lock));
        PQfinish(lock);
        return;
    }
    pg_signal(SIGSTOP, true);
    enum { GIVE_UP = 20 };
    one_get g[GIVE_UP];
    pthread_t th[GIVE_UP];
    for (int i = 0; i < GIVE_UP; i++) {
        g[i] = (one_get){ s->port, 0 };
        pthread_create(&th[i], NULL, one_get_thread, &g[i]);
    }
    int gave_up = 0;
    for (int i = 0; i < GIVE_UP; i++) {
        pthread_join(th[i], NULL);
        gave_up += g[i].status == 0;
    }
    nap(0.5);
    r = PQexec(lock, "COMMIT");
    PQclear(r);
    PQfinish(lock);
    double t_release = now();
    load l;
    load_start(&l, s->port, 4, HUNG_AFTER_S);
    nap(12);
    pg_continue_all();
    double t_cont = now();
    nap(5);
    load_stop(&l);
    tally w = load_tally(&l, t_release, t_cont);
    tally a = load_tally(&l, t_cont, now());
    int ok_while_wedged = 0;
    for (size_t i = 0; i < l.n; i++)
        ok_while_wedged += l.s[i].status == 200 && l.s[i].end < t_cont;
    double rec = load_recovery(&l, t_cont);
    const char *why = NULL;
    if (w.hung + a.hung > 0)
        why = "requests hung";
    else if (rec < 0 || rec > RECOVERY_MAX_S)
        why = "no 200 soon after SIGCONT";
    report("wedged_postmaster", why,
           "gave_up=%d/%d wedged_s=%.0f wedged_requests=%d wedged_s504=%d wedged_hung=%d"
           " answered_200_while_wedged=%d after_cont_requests=%d after_cont_ok200=%d"
           " recovery_s=%.2f",
           gave_up, GIVE_UP, t_cont - t_release, w.requests, w.s504, w.hung, ok_while_wedged,
           a.requests, a.ok, rec);
    load_free(&l);
}

/* Issue 13 point 5: request smuggling. Each case is a request whose
 * framing RFC 9112 section 6.3 says to reject: the server answers 400 and
 * closes, and never answers a second request hidden in the body. */
static void fault_smuggling(server *s)
{
    static const struct {
        const char *name, *bytes;
    } cases[] = {
        { "smuggle_two_content_lengths",
          "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n"
          "abcde" },
        { "smuggle_content_length_plus",
          "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: +4\r\n\r\nabcd" },
        { "smuggle_te_identity_chunked_with_cl",
          "GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity, chunked\r\n"
          "Content-Length: 5\r\n\r\n0\r\n\r\n" },
        { "smuggle_obs_fold", "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n" },
        { "smuggle_cl4_cl40_hidden_request",
          "GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\n"
          "abcdGET /nope HTTP/1.1\r\nHost: x\r\n\r\n" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int fd = dial(s->port);
        if (fd < 0) {
            report(cases[i].name, "could not connect", "responses=0");
            continue;
        }
        send_all(fd, cases[i].bytes, strlen(cases[i].bytes));
        char buf[8192];
        bool closed;
        read_until(fd, buf, sizeof buf, 1.5, now() + 10, &closed);
        close(fd);
        int st[8];
        int n = statuses(buf, st, 8);
        char list[64] = "none";
        for (int k = 0, off = 0; k < n; k++)
            off += snprintf(list + off, sizeof list - (size_t)off, "%s%d", k ? "," : "", st[k]);
        const char *why = NULL;
        if (n > 1)
            why = "a second response: the body was read as a request";
        else if (n == 0 || st[0] != 400)
            why = "not rejected with 400";
        else if (!closed)
            why = "400 but the connection stayed open";
        report(cases[i].name, why, "responses=%d statuses=%s closed_by_server=%s", n, list,
               closed ? "yes" : "no");
    }
}

/* Issue 13 point 3: slowloris. conns connections send a request head one
 * byte a second; the server must close each at its head deadline, however
 * regularly bytes arrive. The run is bounded: after the threshold plus a
 * little, the connections still open are counted and closed. */
static void fault_slowloris(server *s, int conns, double deadline_s, double slack_s)
{
    int *fd = calloc((size_t)conns, sizeof *fd);
    double *closed_at = calloc((size_t)conns, sizeof *closed_at);
    if (fd == NULL || closed_at == NULL) {
        free(fd);
        free(closed_at);
        report("slowloris", "out of memory", "conns=%d", conns);
        return;
    }
    const char *head = "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    double t0 = now();
    int opened = 0;
    for (int i = 0; i < conns; i++) {
        fd[i] = dial(s->port);
        if (fd[i] >= 0 && send_all(fd[i], head, 1)) /* "G": the head has begun */
            opened++;
        else if (fd[i] >= 0) {
            close(fd[i]);
            fd[i] = -1;
        }
        closed_at[i] = fd[i] < 0 ? -1 : 0;
    }
    size_t sent = 1;
    size_t head_len = strlen(head);
    double bound = deadline_s + slack_s + 2;
    int still_open = opened;
    while (still_open > 0 && now() - t0 < bound) {
        nap(1.0);
        double t = now() - t0;
        for (int i = 0; i < conns; i++) {
            if (fd[i] < 0 || closed_at[i] > 0)
                continue;
            char c = sent < head_len ? head[sent] : 'a';
            char tmp[512];
            ssize_t n = recv(fd[i], tmp, sizeof tmp, MSG_DONTWAIT);
            /* A close, or an answer to the unfinished head (a 408, say,
             * before the close): either way the server ended it. */
            bool gone = n >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK);
            if (!gone && send(fd[i], &c, 1, MSG_NOSIGNAL) != 1)
                gone = true;
            if (gone) {
                closed_at[i] = t;
                still_open--;
            }
        }
        sent++;
    }
    int by_server = 0;
    double max_open = 0;
    for (int i = 0; i < conns; i++) {
        if (fd[i] < 0)
            continue;
        if (closed_at[i] > 0) {
            by_server++;
            if (closed_at[i] > max_open)
                max_open = closed_at[i];
        } else
            max_open = now() - t0;
        close(fd[i]);
    }
    int health = http_get(s->port, "/healthz", 10);
    const char *why = NULL;
    if (opened < conns)
        why = "could not open every connection";
    else if (by_server < opened)
        why = "connections outlived the head deadline";
    else if (max_open > deadline_s + slack_s)
        why = "closed, but later than the head deadline plus slack";
    else if (health != 200)
        why = "the server did not answer afterwards";
    report("slowloris", why,
           "conns=%d closed_by_server=%d max_open_s=%.1f limit_s=%.0f healthz_after=%d", opened,
           by_server, max_open, deadline_s + slack_s, health);
    free(fd);
    free(closed_at);
}

/* Issue 13 point 4: fd exhaustion. A server limited to 256 descriptors
 * gets 400 idle connections; for FD_WINDOW_S it must neither spin on
 * accept() nor flood its log, and it serves again once they are gone. */
static void fault_fd_exhaustion(void)
{
    server s;
    if (server_start(&s, "fd", NULL, 256) != 0) {
        report("fd_exhaustion", "the server did not start", "ulimit_n=256");
        return;
    }
    enum { IDLE = 400 };
    int fd[IDLE];
    int opened = 0;
    for (int i = 0; i < IDLE; i++) {
        fd[i] = dial(s.port); /* the kernel's backlog accepts them all */
        opened += fd[i] >= 0;
    }
    nap(1);
    long log0 = file_size(s.log);
    double c0 = cpu_s(s.pid), t0 = now();
    nap(FD_WINDOW_S);
    double c1 = cpu_s(s.pid), t1 = now();
    long lines = count_lines(s.log, log0);
    double pct = 100.0 * (c1 - c0) / (t1 - t0);
    for (int i = 0; i < IDLE; i++)
        if (fd[i] >= 0)
            close(fd[i]);
    /* Once they are gone the listener works again (the bound is a guard:
     * a paused listener retries at its interval). */
    int health = -1;
    double t_free = now();
    while (now() - t_free < 15 && (health = http_get(s.port, "/healthz", 5)) != 200)
        nap(0.2);
    double back_s = now() - t_free;
    double rss = rss_mb(s.pid);
    const char *why = NULL;
    if (pct > FD_CPU_MAX_PCT)
        why = "the server spins while out of descriptors";
    else if (lines > FD_LOG_LINES_MAX)
        why = "the log is flooded";
    else if (health != 200)
        why = "no service after the idle connections left";
    report("fd_exhaustion", why,
           "ulimit_n=256 idle_conns=%d window_s=%.0f cpu_pct=%.1f log_lines=%ld"
           " healthz_after=%d back_s=%.2f rss_mb=%.1f",
           opened, FD_WINDOW_S, pct, lines, health, back_s, rss);
    stop_and_check(&s, "fd");
}

/* The endless upstream: answers every request with a chunked body that
 * never ends, as fast as the reader takes it. */
static atomic_bool upstream_stop;
static atomic_llong upstream_bytes;
/* One 64 KiB chunk, made before the first connection and only read. */
static char endless_chunk[65536 + 16];
static size_t endless_chunk_len;

static void *endless_conn(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char req[4096];
    size_t got = 0;
    while (got < sizeof req - 1 && memmem(req, got, "\r\n\r\n", 4) == NULL) {
        ssize_t n = recv(fd, req + got, sizeof req - 1 - got, 0);
        if (n <= 0)
            goto out;
        got += (size_t)n;
    }
    const char *head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                       "Transfer-Encoding: chunked\r\n\r\n";
    if (!send_all(fd, head, strlen(head)))
        goto out;
    while (!atomic_load(&upstream_stop) && send_all(fd, endless_chunk, endless_chunk_len))
        atomic_fetch_add(&upstream_bytes, (long long)endless_chunk_len);
out:
    close(fd);
    return NULL;
}

static void *endless_accept(void *arg)
{
    int lfd = (int)(intptr_t)arg;
    while (!atomic_load(&upstream_stop)) {
        struct pollfd p = { lfd, POLLIN, 0 };
        if (poll(&p, 1, 200) <= 0)
            continue;
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        struct timeval tv = { 5, 0 }; /* a stalled reader ends the thread */
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        pthread_t t;
        if (pthread_create(&t, NULL, endless_conn, (void *)(intptr_t)fd) == 0)
            pthread_detach(t);
        else
            close(fd);
    }
    return NULL;
}

/* Issue 13 point 6: an upstream whose body never ends, 16 calls at once
 * for 10 s. The flagship's RSS stays bounded and every request gets an
 * answer (502). */
static void fault_endless_upstream(void)
{
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(lfd, 128) != 0 ||
        getsockname(lfd, (struct sockaddr *)&sa, &sl) != 0) {
        report("endless_upstream", "could not listen", "calls=0");
        if (lfd >= 0)
            close(lfd);
        return;
    }
    int off = snprintf(endless_chunk, 16, "%x\r\n", 65536);
    memset(endless_chunk + off, ' ', 65536);
    memcpy(endless_chunk + off + 65536, "\r\n", 2);
    endless_chunk_len = (size_t)off + 65536 + 2;
    atomic_store(&upstream_stop, false);
    pthread_t acc;
    pthread_create(&acc, NULL, endless_accept, (void *)(intptr_t)lfd);
    char up[64];
    snprintf(up, sizeof up, "http://127.0.0.1:%d", ntohs(sa.sin_port));
    server s;
    if (server_start(&s, "endless", up, 0) != 0) {
        atomic_store(&upstream_stop, true);
        pthread_join(acc, NULL);
        close(lfd);
        report("endless_upstream", "the server did not start", "calls=0");
        return;
    }
    http_get(s.port, "/healthz", 5);
    double base = rss_mb(s.pid), peak = base;
    load l;
    load_start(&l, s.port, ENDLESS_CALLS, HUNG_AFTER_S);
    double t0 = now();
    bool runaway = false;
    while (now() - t0 < 10) {
        nap(0.1);
        double r = rss_mb(s.pid);
        if (r > peak)
            peak = r;
        if (r > base + 4096) { /* a guard for the machine, far past any threshold */
            runaway = true;
            kill(s.pid, SIGKILL);
            break;
        }
    }
    load_stop(&l);
    tally t = load_tally(&l, t0, now());
    atomic_store(&upstream_stop, true);
    pthread_join(acc, NULL);
    close(lfd);
    const char *why = NULL;
    if (runaway || peak - base > RSS_GROWTH_MAX_MB)
        why = "memory grows with what the upstream sends";
    else if (t.hung > 0)
        why = "requests hung";
    report("endless_upstream", why,
           "calls=%d " TALLY_FMT " upstream_mb_sent=%.0f rss_base_mb=%.1f rss_peak_mb=%.1f",
           ENDLESS_CALLS, TALLY_ARGS(t), (double)atomic_load(&upstream_bytes) / 1048576.0, base,
           peak);
    load_free(&l);
    if (!runaway)
        stop_and_check(&s, "endless");
}

/* Issue 13 point 2: SIGTERM while PostgreSQL is stopped, with requests
 * waiting on it. The clients get 503 at the shutdown deadline and the
 * process exits within the deadline plus a small bound. Ends the server. */
static void fault_sigterm_pg_stopped(server *s)
{
    pg_signal(SIGSTOP, false);
    load l;
    load_start(&l, s->port, 8, 40);
    nap(1.5);
    int st = 0;
    double t_term = now();
    /* Wait well past the threshold, to report how long it really took. */
    double exit_s = server_stop(s, 40, &st);
    atomic_store(&l.stop, true);
    double waited = now() - t_term;
    load_stop(&l);
    pg_continue_all();
    tally t = load_tally(&l, 0, t_term);
    char how[32];
    if (exit_s < 0)
        snprintf(how, sizeof how, "killed");
    else if (WIFEXITED(st))
        snprintf(how, sizeof how, "%d", WEXITSTATUS(st));
    else
        snprintf(how, sizeof how, "signal%d", WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    const char *why = NULL;
    if (exit_s < 0 || exit_s > EXIT_BOUND_S)
        why = "the process outlived its shutdown deadline";
    else if (t.hung > 0)
        why = "clients got no answer";
    report("sigterm_pg_stopped", why,
           "shutdown_deadline_s=%.0f exit_s=%.2f exit_status=%s limit_s=%.0f " TALLY_FMT,
           SHUTDOWN_DEADLINE_S, exit_s < 0 ? waited : exit_s, how, EXIT_BOUND_S, TALLY_ARGS(t));
}

/* ---- main ------------------------------------------------------------------ */

static bool wanted(const char *only, const char *name)
{
    if (only == NULL)
        return true;
    size_t n = strlen(name);
    for (const char *p = only; (p = strstr(p, name)) != NULL; p += n)
        if ((p == only || p[-1] == ',') && (p[n] == ',' || p[n] == '\0'))
            return true;
    return false;
}

int main(int argc, char **argv)
{
    const char *only = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0)
            quick = true;
        else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc)
            only = argv[++i];
        else if (argv[i][0] == '-') {
            fprintf(stderr,
                    "usage: %s [--quick] [--only pg_sigstop,pg_sigkill,wedged,smuggling,"
                    "slowloris,sigterm,fd,endless] [SERVER]\n",
                    argv[0]);
            return 2;
        } else
            server_bin = argv[i];
    }
    /* The idle connections and slowloris need more descriptors than a
     * default 1024 soft limit leaves after the threads' own. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 4096) {
        rl.rlim_cur = rl.rlim_max < 4096 ? rl.rlim_max : 4096;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_fatal_signal);
    signal(SIGTERM, on_fatal_signal);
    double t_begin = now();
    pg = bt_test_pg_start();
    if (pg == NULL) {
        note("could not start PostgreSQL");
        return 99;
    }
    atexit(pg_continue_all); /* registered after the harness's: runs before it */
    server s;
    if (server_start(&s, "main", NULL, 0) != 0) {
        bt_test_pg_free(pg);
        return 99;
    }
    note("server %s pid %d on 127.0.0.1:%d, PostgreSQL in %s%s", server_bin, (int)s.pid, s.port,
         bt_test_pg_dir(pg), quick ? " (quick)" : "");
    if (quick) {
        fault_smuggling(&s);
        fault_slowloris(&s, 50, QUICK_HEAD_DEADLINE_S, QUICK_HEAD_SLACK_S);
        stop_and_check(&s, "main");
    } else {
        if (wanted(only, "pg_sigstop"))
            fault_pg_sigstop(&s);
        if (wanted(only, "pg_sigkill"))
            fault_pg_sigkill(&s);
        if (wanted(only, "wedged"))
            fault_wedged_postmaster(&s);
        if (wanted(only, "smuggling"))
            fault_smuggling(&s);
        if (wanted(only, "slowloris"))
            fault_slowloris(&s, 200, HEAD_DEADLINE_S, HEAD_SLACK_S);
        if (wanted(only, "sigterm"))
            fault_sigterm_pg_stopped(&s);
        else
            stop_and_check(&s, "main");
        if (wanted(only, "fd"))
            fault_fd_exhaustion();
        if (wanted(only, "endless"))
            fault_endless_upstream();
    }
    printf("faults: %d failed, %.0f s in all\n", failures, now() - t_begin);
    fflush(stdout);
    pg_continue_all();
    bt_test_pg_free(pg);
    return failures == 0 ? 0 : 1;
}
