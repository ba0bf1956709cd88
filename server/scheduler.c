/* scheduler.c — one thread that claims queued runs and supervises worker processes.
 *
 * Workers are spawned with posix_spawn (no fork of the multi-threaded daemon), each with
 * OPENBLAS_NUM_THREADS = cores / workers unless the operator set it, so concurrent runs never
 * oversubscribe the cores. The thread wakes on ft_scheduler_wake() or every 500 ms. */
#include "scheduler.h"

#include "log.h"
#include "worker.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define MAX_WORKERS 64

struct slot {
    pid_t pid; /* 0 = free */
    int64_t run_id;
};

struct ft_scheduler {
    ft_store *store;
    char *exe, *data_dir, *log_level;
    int workers;
    struct slot slots[MAX_WORKERS];
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int woken, stopping;
};

void ft_scheduler_wake(void *sched)
{
    ft_scheduler *s = sched;
    pthread_mutex_lock(&s->mu);
    s->woken = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* Environment for a worker: ours plus OPENBLAS_NUM_THREADS when unset. New array; entries
 * borrowed except the one added (in buf). */
static char **worker_env(ft_scheduler *s, char *buf, size_t cap)
{
    size_t n = 0;
    while (environ[n])
        n++;
    char **env = calloc(n + 2, sizeof *env);
    if (!env)
        return NULL;
    memcpy(env, environ, n * sizeof *env);
    if (!getenv("OPENBLAS_NUM_THREADS")) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        long per = cores / s->workers;
        snprintf(buf, cap, "OPENBLAS_NUM_THREADS=%ld", per > 0 ? per : 1);
        env[n++] = buf;
    }
    return env;
}

static pid_t spawn_worker(ft_scheduler *s, int64_t run_id)
{
    char id[32], envbuf[64];
    pid_t pid = 0;
    snprintf(id, sizeof id, "%lld", (long long)run_id);
    char *argv[] = {s->exe,      "--worker",    id,           "--data-dir",
                    s->data_dir, "--log-level", s->log_level, NULL};
    char **env = worker_env(s, envbuf, sizeof envbuf);
    int rc = env ? posix_spawn(&pid, s->exe, NULL, NULL, argv, env) : ENOMEM;
    free(env);
    if (rc != 0) {
        ft_log(FT_LOG_ERROR, "scheduler", "run=%lld cannot start worker: %s", (long long)run_id,
               strerror(rc));
        return -1;
    }
    return pid;
}

/* Why a worker ended, as a sentence. */
static void death_reason(int status, char *buf, size_t cap)
{
    if (WIFSIGNALED(status))
        snprintf(buf, cap, "the worker process was killed by signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    else if (WIFEXITED(status))
        snprintf(buf, cap, "the worker process exited with code %d without finishing the run",
                 WEXITSTATUS(status));
    else
        snprintf(buf, cap, "the worker process ended unexpectedly (status %d)", status);
}

static void reap(ft_scheduler *s, struct slot *sl, int status)
{
    char why[256];
    if (WIFEXITED(status) && WEXITSTATUS(status) == FT_WORKER_INTERRUPTED) {
        ft_store_run_requeue(s->store, sl->run_id,
                             "The worker was interrupted; the run is queued again");
        ft_log(FT_LOG_INFO, "scheduler", "run=%lld interrupted; queued again",
               (long long)sl->run_id);
        sl->pid = 0;
        return;
    }
    death_reason(status, why, sizeof why);
    if (ft_store_run_finish(s->store, sl->run_id, "FAILED", why) == FT_OK) {
        char line[300];
        snprintf(line, sizeof line, "Run failed: %s", why);
        ft_store_log_append(s->store, sl->run_id, line);
        ft_log(FT_LOG_WARN, "scheduler", "run=%lld failed: %s", (long long)sl->run_id, why);
    } else {
        ft_log(FT_LOG_INFO, "scheduler", "run=%lld worker pid=%d ended", (long long)sl->run_id,
               (int)sl->pid);
    }
    sl->pid = 0;
}

static void reap_all(ft_scheduler *s, int block)
{
    for (int i = 0; i < s->workers; i++) {
        int status;
        struct slot *sl = &s->slots[i];
        if (sl->pid > 0 && waitpid(sl->pid, &status, block ? 0 : WNOHANG) == sl->pid)
            reap(s, sl, status);
    }
}

static void fill_slots(ft_scheduler *s)
{
    for (int i = 0; i < s->workers; i++) {
        int64_t id;
        struct slot *sl = &s->slots[i];
        if (sl->pid > 0)
            continue;
        if (ft_store_run_claim_next(s->store, &id, NULL) != FT_OK)
            return;
        pid_t pid = spawn_worker(s, id);
        if (pid < 0) {
            ft_store_run_finish(s->store, id, "FAILED", "could not start a worker process");
            continue;
        }
        sl->pid = pid;
        sl->run_id = id;
        ft_store_run_set_pid(s->store, id, pid);
        ft_log(FT_LOG_INFO, "scheduler", "run=%lld started in worker pid=%d", (long long)id,
               (int)pid);
    }
}

static void *loop(void *arg)
{
    ft_scheduler *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->stopping) {
        pthread_mutex_unlock(&s->mu);
        reap_all(s, 0);
        fill_slots(s);
        pthread_mutex_lock(&s->mu);
        if (s->woken || s->stopping) {
            s->woken = 0;
            continue;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 500 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&s->cv, &s->mu, &ts);
        s->woken = 0;
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

ft_scheduler *ft_scheduler_start(ft_store *store, const struct ft_scheduler_opts *opts)
{
    ft_scheduler *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->store = store;
    s->exe = strdup(opts->exe);
    s->data_dir = strdup(opts->data_dir);
    s->log_level = strdup(opts->log_level);
    s->workers = opts->workers < 1 ? 1 : opts->workers > MAX_WORKERS ? MAX_WORKERS : opts->workers;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    if (!s->exe || !s->data_dir || !s->log_level ||
        pthread_create(&s->thread, NULL, loop, s) != 0) {
        free(s->exe);
        free(s->data_dir);
        free(s->log_level);
        free(s);
        return NULL;
    }
    return s;
}

int ft_scheduler_running(ft_scheduler *s)
{
    int n = 0;
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->workers; i++)
        n += s->slots[i].pid > 0;
    pthread_mutex_unlock(&s->mu);
    return n;
}

void ft_scheduler_stop(ft_scheduler *s, int grace_s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    for (int i = 0; i < s->workers; i++)
        if (s->slots[i].pid > 0)
            kill(s->slots[i].pid, SIGTERM);
    for (int t = 0; t < grace_s * 10; t++) {
        int alive = 0;
        for (int i = 0; i < s->workers; i++) {
            int status;
            struct slot *sl = &s->slots[i];
            if (sl->pid > 0 && waitpid(sl->pid, &status, WNOHANG) == sl->pid)
                sl->pid = 0;
            alive += sl->pid > 0;
        }
        if (!alive)
            break;
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    for (int i = 0; i < s->workers; i++) {
        if (s->slots[i].pid > 0) {
            kill(s->slots[i].pid, SIGKILL);
            waitpid(s->slots[i].pid, NULL, 0);
        }
    }
    int n = ft_store_runs_requeue_started(
        s->store, "Interrupted by a daemon shutdown; the run starts again when finetunerd does");
    if (n)
        ft_log(FT_LOG_INFO, "scheduler", "requeued %d interrupted run(s)", n);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s->exe);
    free(s->data_dir);
    free(s->log_level);
    free(s);
}
