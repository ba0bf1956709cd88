/* main.c — finetunerd: flags, signals, lifecycle.
 *
 * The daemon opens the store, puts runs left STARTED by a previous daemon back in the queue,
 * starts the scheduler and the HTTP server, and waits for SIGINT/SIGTERM (the handlers only
 * set a flag). With --worker ID the same binary is a training worker (server/worker.h); with
 * `token create|list|revoke` it manages the access tokens of --data-dir (server/auth.h). */
#include "api.h"
#include "auth.h"
#include "config.h"
#include "http.h"
#include "log.h"
#include "scheduler.h"
#include "store.h"
#include "worker.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop_flag;
static volatile int stopping;

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

static void install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* a write past RLIMIT_FSIZE fails with EFBIG and is reported like a full disk, instead of
     * killing the daemon (workers inherit the disposition) */
    signal(SIGXFSZ, SIG_IGN);
}

/* One daemon per data directory: an exclusive flock on <data_dir>/finetunerd.lock, held (fd
 * left open) until the process exits. Workers do not take it. Returns -1 (logged) when another
 * daemon holds it. */
static int lock_data_dir(const char *data_dir)
{
    char path[1100], pid[32];
    snprintf(path, sizeof path, "%s/finetunerd.lock", data_dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        ft_log(FT_LOG_ERROR, "main", "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        ssize_t n = read(fd, pid, sizeof pid - 1);
        pid[n > 0 ? n : 0] = '\0';
        ft_log(FT_LOG_ERROR, "main",
               "data directory %s is in use by another finetunerd (pid %s); stop it or pick "
               "another --data-dir",
               data_dir, n > 0 ? pid : "?");
        close(fd);
        return -1;
    }
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, strlen(pid), 0) < 0)
        ft_log(FT_LOG_WARN, "main", "cannot write my pid to %s", path);
    return 0;
}

/* A worker of a previous daemon (killed with -9, say) may still be training one of the runs
 * the store says STARTED: end it before its run is queued again, so no run has two workers. */
static void end_orphan_workers(ft_store *store)
{
    int64_t ids[256];
    pid_t pids[256];
    int n = ft_store_runs_started(store, ids, pids, 256);
    for (int i = 0; i < n; i++) {
        char path[64], cmd[512], want[64];
        if (pids[i] <= 0)
            continue;
        snprintf(path, sizeof path, "/proc/%d/cmdline", (int)pids[i]);
        FILE *f = fopen(path, "rb");
        size_t len = f ? fread(cmd, 1, sizeof cmd - 1, f) : 0;
        if (f)
            fclose(f);
        for (size_t k = 0; k < len; k++)
            if (cmd[k] == '\0')
                cmd[k] = ' ';
        cmd[len] = '\0';
        snprintf(want, sizeof want, "--worker %lld ", (long long)ids[i]);
        if (len && strstr(cmd, want)) {
            ft_log(FT_LOG_WARN, "main", "run=%lld ending orphaned worker pid=%d", (long long)ids[i],
                   (int)pids[i]);
            kill(pids[i], SIGKILL);
        }
    }
}

/* Tokens are what keeps strangers out: a host that is not loopback without any token is
 * refused unless the operator said --insecure-no-auth. *require_token is set for such a host
 * (so revoking the last token closes the API rather than opening it). Returns -1 (logged) to
 * refuse. */
static int check_exposure(const struct ft_config *cfg, ft_store *store, int *require_token)
{
    int64_t tokens = ft_store_token_count(store);
    *require_token = !ft_config_host_is_loopback(cfg->host) && !cfg->insecure_no_auth;
    if (*require_token && tokens <= 0) {
        ft_log(FT_LOG_ERROR, "main",
               "refusing to serve %s (not a loopback address) without access tokens: create one "
               "with `finetunerd --data-dir %s token create NAME`, or pass --insecure-no-auth",
               cfg->host, cfg->data_dir);
        return -1;
    }
    ft_log(FT_LOG_INFO, "main", "access: %lld token(s)%s", (long long)(tokens > 0 ? tokens : 0),
           tokens > 0 ? "; requests need one" : "; the API is open to whoever reaches it");
    return 0;
}

static int run_daemon(const struct ft_config *cfg)
{
    int require_token = 0;
    struct ft_error err;
    ft_store *store;
    char exe[1024];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) {
        ft_log(FT_LOG_ERROR, "main", "cannot find my own executable");
        return 1;
    }
    exe[n] = '\0';
    if (ft_store_open(cfg->data_dir, &store, &err) != FT_OK) {
        ft_log(FT_LOG_ERROR, "main", "%s", err.message);
        return 1;
    }
    if (check_exposure(cfg, store, &require_token) != 0 || lock_data_dir(cfg->data_dir) != 0) {
        ft_store_close(store);
        return 1;
    }
    end_orphan_workers(store);
    ft_store_idempotency_clear_pending(store);
    int requeued = ft_store_runs_requeue_started(
        store, "finetunerd restarted; the run starts again from the beginning");
    if (requeued)
        ft_log(FT_LOG_INFO, "main", "requeued %d run(s) left STARTED by a previous daemon",
               requeued);
    struct ft_scheduler_opts so = {exe, cfg->data_dir, cfg->log_level, cfg->workers};
    ft_scheduler *sched = ft_scheduler_start(store, &so);
    struct ft_api api = {.store = store,
                         .max_upload = (size_t)cfg->max_upload_mb << 20,
                         .max_dataset = (size_t)cfg->max_dataset_mb << 20,
                         .wake = ft_scheduler_wake,
                         .wake_ctx = sched,
                         .stopping = &stopping,
                         .require_token = require_token,
                         .max_queued_runs = cfg->max_queued_runs,
                         .max_json_depth = cfg->max_json_depth};
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned threads =
        cfg->http_threads > 0 ? (unsigned)cfg->http_threads : (unsigned)(cores > 2 ? cores : 2);
    struct ft_http_limits lim = {.max_upload = api.max_upload,
                                 .threads = threads,
                                 .max_connections = (unsigned)cfg->max_connections,
                                 .per_ip = (unsigned)cfg->max_connections_per_ip,
                                 .idle_timeout_s = (unsigned)cfg->connection_timeout,
                                 .header_timeout_s = (unsigned)cfg->header_timeout};
    ft_http_server *http = sched ? ft_http_start(&api, cfg->host, cfg->port, &lim) : NULL;
    if (!http) {
        ft_scheduler_stop(sched, 5);
        ft_store_close(store);
        return 1;
    }
    ft_log(FT_LOG_INFO, "main",
           "finetunerd listening on http://%s:%d/api/v1 data_dir=%s workers=%d", cfg->host,
           ft_http_port(http), cfg->data_dir, cfg->workers);
    while (!stop_flag) {
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    ft_log(FT_LOG_INFO, "main", "shutting down");
    stopping = 1;
    ft_http_stop(http);
    ft_scheduler_stop(sched, 10);
    ft_store_close(store);
    ft_log(FT_LOG_INFO, "main", "stopped");
    return 0;
}

int main(int argc, char **argv)
{
    struct ft_config cfg;
    struct ft_error err;
    enum ft_log_level lvl;
    ft_config_default(&cfg);
    if (ft_config_parse_args(&cfg, argc, argv, &err) != FT_OK) {
        fprintf(stderr, "finetunerd: %s\n", err.message);
        return 2;
    }
    if (cfg.help) {
        fputs(ft_config_usage(), stdout);
        return 0;
    }
    ft_log_level_parse(cfg.log_level, &lvl);
    ft_log_threshold = lvl;
    if (cfg.worker_run >= 0)
        return ft_worker_main(cfg.worker_run, cfg.data_dir);
    if (cfg.num_command > 0 && strcmp(cfg.command[0], "token") == 0)
        return ft_token_command(cfg.data_dir, cfg.num_command - 1, cfg.command + 1, stdout, stderr);
    if (cfg.num_command > 0) {
        fprintf(stderr, "finetunerd: unexpected argument '%s' (see --help)\n", cfg.command[0]);
        return 2;
    }
    install_signals();
    return run_daemon(&cfg);
}
