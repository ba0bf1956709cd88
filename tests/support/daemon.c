/* daemon.c — fork/exec a finetunerd for the end-to-end tests (see daemon.h).
 *
 * The port is found by binding 127.0.0.1:0 and closing the socket; another process may take it
 * before the daemon binds, so start() retries a few times when the daemon exits early. */
#define _XOPEN_SOURCE 700 /* nftw */
#include "support/daemon.h"

#include "support/http_client.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_ARGS 32

void td_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

double td_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* A port that was free a moment ago, or 0. */
static int free_port(void)
{
    struct sockaddr_in a = {0};
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int port = 0;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static void binary_path(char *buf, size_t cap)
{
    const char *dir = getenv("FT_BIN_DIR");
    if (!dir || !*dir)
        dir = getenv("BUILD");
    if (!dir || !*dir)
        dir = "build";
    snprintf(buf, cap, "%s/finetunerd", dir);
}

/* fork + exec the daemon on d->port, with RLIMIT_FSIZE = fsize when > 0; the child never
 * returns. */
static pid_t spawn(const struct td_daemon *d, const char *exe, const char *const *extra, long fsize)
{
    char port[16];
    const char *argv[MAX_ARGS];
    int n = 0;
    snprintf(port, sizeof port, "%d", d->port);
    argv[n++] = exe;
    argv[n++] = "--host";
    argv[n++] = "127.0.0.1";
    argv[n++] = "--port";
    argv[n++] = port;
    argv[n++] = "--data-dir";
    argv[n++] = d->data_dir;
    argv[n++] = "--log-level";
    argv[n++] = "warn";
    for (int i = 0; extra && extra[i] && n < MAX_ARGS - 1; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        struct rlimit lim;
        if (fsize > 0 && getrlimit(RLIMIT_FSIZE, &lim) == 0) {
            lim.rlim_cur = (rlim_t)fsize;
            if (setrlimit(RLIMIT_FSIZE, &lim) != 0)
                _exit(126);
        }
        execv(exe, (char *const *)argv);
        _exit(127);
    }
    return pid;
}

/* Wait until /health answers 200 (1) or the daemon exited (0) or 10 s passed (0). */
static int wait_healthy(struct td_daemon *d)
{
    for (int i = 0; i < 200; i++) {
        struct th_response r;
        int status;
        if (waitpid(d->pid, &status, WNOHANG) == d->pid) {
            d->pid = 0;
            return 0;
        }
        int ok =
            th_request("GET", td_url(d, "/health"), NULL, NULL, 0, 2, &r) == 0 && r.status == 200;
        th_response_free(&r);
        if (ok)
            return 1;
        td_sleep_ms(50);
    }
    return 0;
}

static void start(struct td_daemon *d, const char *const *extra_args, long fsize)
{
    char exe[512];
    memset(d, 0, sizeof *d);
    binary_path(exe, sizeof exe);
    cr_assert(access(exe, X_OK) == 0, "%s is missing: run `make build/finetunerd` first", exe);
    snprintf(d->data_dir, sizeof d->data_dir, "/tmp/ft-test-daemon-XXXXXX");
    cr_assert_not_null(mkdtemp(d->data_dir), "mkdtemp: %s", strerror(errno));
    for (int attempt = 0; attempt < 5; attempt++) {
        d->port = free_port();
        cr_assert(d->port > 0, "no free port");
        snprintf(d->base_url, sizeof d->base_url, "http://127.0.0.1:%d/api/v1", d->port);
        d->pid = spawn(d, exe, extra_args, fsize);
        cr_assert(d->pid > 0, "fork: %s", strerror(errno));
        if (wait_healthy(d))
            return;
        if (d->pid > 0) {
            kill(d->pid, SIGKILL);
            waitpid(d->pid, NULL, 0);
            d->pid = 0;
        }
    }
    td_remove_tree(d->data_dir);
    cr_assert_fail("finetunerd (%s) did not answer GET /health", exe);
}

void td_daemon_start(struct td_daemon *d, const char *const *extra_args)
{
    start(d, extra_args, 0);
}

void td_daemon_start_fsize(struct td_daemon *d, const char *const *extra_args, long fsize)
{
    start(d, extra_args, fsize);
}

int td_daemon_stop(struct td_daemon *d)
{
    int status = -1;
    if (d->pid > 0) {
        kill(d->pid, SIGTERM);
        int waited = 0;
        for (; waited < 400 && waitpid(d->pid, &status, WNOHANG) == 0; waited++)
            td_sleep_ms(50);
        if (waited == 400) {
            pid_t kids[16];
            int n = td_daemon_children(d, kids, 16);
            for (int i = 0; i < n; i++)
                kill(kids[i], SIGKILL);
            kill(d->pid, SIGKILL);
            waitpid(d->pid, &status, 0);
        }
        d->pid = 0;
    }
    if (d->data_dir[0]) {
        td_remove_tree(d->data_dir);
        d->data_dir[0] = '\0';
    }
    return status;
}

const char *td_url(const struct td_daemon *d, const char *path)
{
    static char bufs[8][512];
    static int next;
    char *b = bufs[next];
    next = (next + 1) % 8;
    snprintf(b, sizeof bufs[0], "%s%s", d->base_url, path);
    return b;
}

/* Append the pids listed in file (space-separated) to pids. */
static int read_children(const char *file, pid_t *pids, int n, int cap)
{
    FILE *f = fopen(file, "r");
    long v;
    if (!f)
        return n;
    while (n < cap && fscanf(f, "%ld", &v) == 1)
        pids[n++] = (pid_t)v;
    fclose(f);
    return n;
}

int td_daemon_children(const struct td_daemon *d, pid_t *pids, int cap)
{
    char dir[64];
    int n = 0;
    if (d->pid <= 0)
        return 0;
    snprintf(dir, sizeof dir, "/proc/%d/task", (int)d->pid);
    DIR *dp = opendir(dir);
    if (!dp)
        return 0;
    struct dirent *e;
    while ((e = readdir(dp)) != NULL) {
        char file[384];
        if (e->d_name[0] == '.')
            continue;
        snprintf(file, sizeof file, "%s/%s/children", dir, e->d_name);
        n = read_children(file, pids, n, cap);
    }
    closedir(dp);
    return n;
}

int td_token(const char *data_dir, const char *sub, const char *name, char *out, size_t cap)
{
    char exe[512], cmd[1500], line[256] = "";
    binary_path(exe, sizeof exe);
    snprintf(cmd, sizeof cmd, "%s --log-level error --data-dir '%s' token %s %s 2>/dev/null", exe,
             data_dir, sub, name ? name : "");
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    if (fgets(line, sizeof line, p))
        line[strcspn(line, "\n")] = '\0';
    while (fgetc(p) != EOF)
        ;
    int st = pclose(p);
    if (out)
        snprintf(out, cap, "%s", line);
    return st >= 0 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

int td_remove_tree(const char *path)
{
    return nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}
