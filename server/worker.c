/* worker.c — one run, one process (see worker.h). */
#include "worker.h"

#include "dataset.h"
#include "log.h"
#include "safetensors.h"
#include "store.h"
#include "train.h"

#include <errno.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

struct wctx {
    ft_store *store;
    int64_t run_id;
    char owner[FT_OWNER_MAX]; /* the run's: its datasets and start artifact are the owner's */
    struct timespec last_check;
    int canceled;
};

static void on_log(void *ctx, const char *line)
{
    struct wctx *w = ctx;
    ft_store_log_append(w->store, w->run_id, line);
    ft_log(FT_LOG_DEBUG, "worker", "run=%lld %s", (long long)w->run_id, line);
}

static void on_metrics(void *ctx, const char *phase, int epoch, json_t *values)
{
    struct wctx *w = ctx;
    ft_store_metrics_put(w->store, w->run_id, phase, epoch, values);
}

/* Looks at the store at most every 200 ms (it is called before every batch). */
/* SIGTERM (the daemon stopping, or the daemon gone: PR_SET_PDEATHSIG) only sets this flag; the
 * trainer stops at the next batch and the run resumes from its last epoch later. */
static volatile sig_atomic_t interrupted;

static void on_sigterm(int sig)
{
    (void)sig;
    interrupted = 1;
}

static int on_canceled(void *ctx)
{
    struct wctx *w = ctx;
    if (interrupted)
        return 1;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    double dt = (double)(now.tv_sec - w->last_check.tv_sec) +
                1e-9 * (double)(now.tv_nsec - w->last_check.tv_nsec);
    if (!w->canceled && dt >= 0.2) {
        w->last_check = now;
        w->canceled = ft_store_run_cancel_requested(w->store, w->run_id);
    }
    return w->canceled;
}

/* Load dataset name (cached in loaded[]/names[] so one file is read once). */
static enum ft_err load_dataset(struct wctx *w, const char *name, const char **names,
                                struct ft_dataset **loaded, int *count,
                                const struct ft_dataset **out, struct ft_error *err)
{
    for (int i = 0; i < *count; i++) {
        if (strcmp(names[i], name) == 0) {
            *out = loaded[i];
            return FT_OK;
        }
    }
    char *path = ft_store_dataset_path(w->store, w->owner, name);
    enum ft_err e = path ? ft_dataset_load_compact(path, &loaded[*count], err) : FT_ENOMEM;
    free(path);
    if (e != FT_OK) {
        char why[sizeof err->message];
        snprintf(why, sizeof why, "%s", err && err->message[0] ? err->message : ft_err_message(e));
        return ft_error_set(err, e, NULL, "dataset '%s' could not be loaded: %s", name, why);
    }
    names[*count] = name;
    *out = loaded[(*count)++];
    return FT_OK;
}

static enum ft_err load_inputs(struct wctx *w, const struct ft_run_config *cfg,
                               struct ft_train_inputs *in, struct ft_dataset **loaded, int *count,
                               struct ft_error *err)
{
    const char *names[2 + 2 * FT_MAX_EVAL_CALLBACKS];
    enum ft_err e = load_dataset(w, cfg->train_data, names, loaded, count, &in->train, err);
    if (e == FT_OK && cfg->eval_data[0])
        e = load_dataset(w, cfg->eval_data, names, loaded, count, &in->eval, err);
    for (int i = 0; e == FT_OK && i < cfg->callbacks.num_eval; i++) {
        const struct ft_eval_callback *cb = &cfg->callbacks.eval[i];
        e = load_dataset(w, cb->query_data, names, loaded, count, &in->query[i], err);
        if (e == FT_OK && cb->index_data[0])
            e = load_dataset(w, cb->index_data, names, loaded, count, &in->index[i], err);
    }
    return e;
}

/* The artifact file of run "EXPERIMENT/RUN" (new string in *path). */
static enum ft_err start_artifact(struct wctx *w, const char *ref, char **path,
                                  struct ft_error *err)
{
    char exp[FT_NAME_MAX];
    int64_t id;
    const char *slash = strchr(ref, '/');
    snprintf(exp, sizeof exp, "%.*s", slash ? (int)(slash - ref) : 0, ref);
    if (!slash || ft_store_run_find(w->store, w->owner, exp, slash + 1, &id, err) != FT_OK)
        return ft_error_set(err, FT_EINVAL, "config.model.artifact",
                            "the run '%s' to start from no longer exists", ref);
    *path = ft_store_artifact_path(w->store, id);
    return *path ? FT_OK : ft_error_set(err, FT_ENOMEM, NULL, "out of memory");
}

/* The epoch a resume state was written after, or -1 when it cannot be read. */
static int state_epoch(const char *path)
{
    ft_safetensors *st = NULL;
    int epoch = -1;
    if (ft_safetensors_open(path, &st, NULL) == FT_OK) {
        const char *text = json_string_value(json_object_get(ft_safetensors_metadata(st), "state"));
        json_t *state = text ? json_loads(text, 0, NULL) : NULL;
        if (state)
            epoch = (int)json_integer_value(json_object_get(state, "epoch"));
        json_decref(state);
    }
    ft_safetensors_free(st);
    return epoch;
}

/* The run keeps its training state in <dir>/resume.safetensors after every epoch. When one is
 * there the run was interrupted: go on from it, and drop the metrics of the epochs after it
 * (they are computed again); without one, start over and drop every metric. */
static enum ft_err prepare_resume(struct wctx *w, const char *dir, struct ft_train_inputs *in,
                                  char *path, size_t cap, struct ft_error *err)
{
    snprintf(path, cap, "%s/resume.safetensors", dir);
    in->resume_path = path;
    int epoch = access(path, R_OK) == 0 ? state_epoch(path) : -1;
    if (epoch >= 1)
        in->resume_from = path;
    else if (ft_store_metrics_count(w->store, w->run_id) > 0)
        ft_store_log_append(w->store, w->run_id, "Starting again from the beginning");
    if (ft_store_metrics_truncate(w->store, w->run_id, epoch) != FT_OK)
        return ft_error_set(err, FT_EDB, NULL, "cannot clear the metrics of the interrupted run");
    return FT_OK;
}

/* Train and return the terminal status (NULL when interrupted); details filled. */
static const char *run(struct wctx *w, char *details, size_t cap)
{
    struct ft_error err = {0};
    struct ft_run_config cfg = {0};
    struct ft_train_inputs in = {0};
    struct ft_train_result res;
    struct ft_dataset *loaded[2 + 2 * FT_MAX_EVAL_CALLBACKS] = {0};
    int nloaded = 0;
    char *text = NULL, *start = NULL, *dir = ft_store_run_dir(w->store, w->run_id);
    char ckpt[1200], resume[1200];
    char *artifact = ft_store_artifact_path(w->store, w->run_id);
    enum ft_err e =
        dir && artifact ? ft_store_run_config(w->store, w->run_id, &text, &err) : FT_ENOMEM;
    if (e == FT_OK)
        e = ft_store_run_owner(w->store, w->run_id, w->owner, &err);
    json_t *config = e == FT_OK ? json_loads(text, 0, NULL) : NULL;
    if (e == FT_OK)
        e = config ? ft_run_config_parse(config, &cfg, NULL, &err) : FT_EINTERNAL;
    if (e == FT_OK && mkdir(dir, 0755) != 0 && errno != EEXIST)
        e = ft_error_set(&err, FT_EIO, NULL, "cannot create %s: %s", dir, strerror(errno));
    if (e == FT_OK)
        e = load_inputs(w, &cfg, &in, loaded, &nloaded, &err);
    if (e == FT_OK && cfg.model_artifact[0])
        e = start_artifact(w, cfg.model_artifact, &start, &err);
    in.start_artifact = start;
    if (e == FT_OK)
        e = prepare_resume(w, dir, &in, resume, sizeof resume, &err);
    if (e == FT_OK && cfg.callbacks.has_training_checkpoint) {
        snprintf(ckpt, sizeof ckpt, "%s/checkpoints", dir);
        if (mkdir(ckpt, 0755) != 0 && errno != EEXIST)
            e = ft_error_set(&err, FT_EIO, NULL, "cannot create %s: %s", ckpt, strerror(errno));
        in.checkpoint_dir = ckpt;
    }
    in.config = config;
    if (e == FT_OK) {
        struct ft_train_hooks hooks = {w, on_log, on_metrics, on_canceled};
        e = ft_train(&cfg, &in, &hooks, artifact, &res, &err);
    }
    for (int i = 0; i < nloaded; i++)
        ft_dataset_free(loaded[i]);
    ft_run_config_clear(&cfg);
    json_decref(config);
    free(start);
    free(text);
    free(dir);
    free(artifact);
    if (e == FT_ECANCELED && interrupted)
        return NULL;    /* not ended: the run goes on from its resume state later */
    if (in.resume_path) /* ended: nothing to resume */
        unlink(in.resume_path);
    if (e == FT_OK) {
        snprintf(details, cap, "%s", res.details);
        return "FINISHED";
    }
    snprintf(details, cap, "%s", err.message[0] ? err.message : ft_err_message(e));
    return e == FT_ECANCELED ? "CANCELED" : "FAILED";
}

int ft_worker_main(int64_t run_id, const char *data_dir)
{
    struct ft_error err;
    struct wctx w = {0};
    char details[600], line[700];
    if (ft_store_open(data_dir, &w.store, &err) != FT_OK) {
        ft_log(FT_LOG_ERROR, "worker", "run=%lld %s", (long long)run_id, err.message);
        return 1;
    }
    w.run_id = run_id;
    clock_gettime(CLOCK_MONOTONIC, &w.last_check);
    struct sigaction sa = {0};
    sa.sa_handler = on_sigterm;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGXFSZ, SIG_IGN);         /* EFBIG fails the write, reported like a full disk */
    prctl(PR_SET_PDEATHSIG, SIGTERM); /* the daemon gone (kill -9): stop, resume later */
    if (getppid() == 1)
        interrupted = 1;
    const char *status = run(&w, details, sizeof details);
    if (!status) {
        ft_store_log_append(w.store, run_id,
                            "Interrupted; the run goes on from its last finished epoch when "
                            "finetunerd starts it again");
        ft_log(FT_LOG_INFO, "worker", "run=%lld interrupted", (long long)run_id);
        ft_store_close(w.store);
        return FT_WORKER_INTERRUPTED;
    }
    if (strcmp(status, "FAILED") == 0)
        snprintf(line, sizeof line, "Run failed: %s", details);
    else if (strcmp(status, "CANCELED") == 0)
        snprintf(line, sizeof line, "Run canceled: %s", details);
    else
        line[0] = '\0';
    if (line[0])
        ft_store_log_append(w.store, run_id, line);
    ft_store_run_finish(w.store, run_id, status, details);
    char final[16] = "";
    if (strcmp(status, "FINISHED") == 0 &&
        ft_store_run_status(w.store, run_id, final, NULL, NULL) == FT_OK &&
        strcmp(final, "CANCELED") == 0) {
        /* the cancel came as training ended (store.h): the model goes with the run */
        char *artifact = ft_store_artifact_path(w.store, run_id);
        if (artifact)
            unlink(artifact);
        free(artifact);
        ft_store_log_append(w.store, run_id, "Run canceled: the cancel came as its training ended");
        status = "CANCELED";
    }
    ft_log(FT_LOG_INFO, "worker", "run=%lld %s: %s", (long long)run_id, status, details);
    ft_store_close(w.store);
    return 0;
}
