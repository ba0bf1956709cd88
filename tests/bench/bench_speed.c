/* bench_speed.c — issue 5's speed benchmark: training and evaluation against an sgemm floor
 * measured in the same process and run, and the daemon under load.
 *
 *   build/bench_speed [all|train|cnn|eval|daemon]      (make bench runs "all")
 *
 * Every workload runs in a fresh child process (this binary re-executed with --child NAME), so
 * its peak RSS is its own; the child alternates a repetition of the workload with a repetition
 * of its floor and reports each pair, and the parent prints the median ratio with min and max.
 * $BENCH_REPS sets the repetitions (default 5). Output: one table on stdout; build/bench.json
 * holds its rows and every measurement behind them.
 *
 *  - train (mlp) / cnn: one epoch of Fashion-MNIST train (60,000 rows; the cnn, its default
 *    options on 1x28x28, the first 5,000) through ft_train (common/train.h) with a run config
 *    like the daemon's: TripletMarginLoss + BatchHardMiner, Adam, batch 128, class sampler, no
 *    callbacks; the pixels kept as bytes (ft_dataset_compact). Timed from the trainer's "Model:"
 *    log line (just before the first batch) to its last "Training [...] nb/nb" line (just after
 *    the last step), so setup and the artifact write are outside. Floor: cblas_sgemm on buffers
 *    of every forward and backward GEMM shape of a step (model layers, convolutions as one
 *    im2col GEMM over the batch, the loss's Gram matrix and its backward), called as many times
 *    as the epoch has batches. Also: samples/s, the peak RSS of the training (VmHWM reset after
 *    the data is loaded), the allocations inside the epoch's steps (malloc & co. are counted by
 *    the wrappers below, split by caller: finetunerd's code or a library) and the process's
 *    threads (OpenBLAS's plus the main one).
 *  - eval: ft_evaluation_run (the EvaluationCallback code) on 10,000 random 128-d embeddings
 *    with 10 labels, query = index, cosine, limit 20; floor one sgemm 10,000 x 10,000 x 128.
 *    Memory: the peak RSS delta of the evaluation (a full score matrix would be 381 MiB).
 *  - daemon: build/finetunerd on a free 127.0.0.1 port with a temporary data directory: time
 *    from exec to the first answered /health (over $BENCH_REPS starts), idle RSS, then
 *    Fashion-MNIST uploaded and a run training; while it trains, wrk -t2 -c64 --latency on its
 *    GET .../status (requests/s, p99), as fast as the daemon answers and then paced to
 *    a rate above the goal of 20,000 requests/s (write_paced_script), then submissions per
 * second (POST runs of a small config, queued behind the training run, then canceled), and the
 * worker's peak RSS (VmHWM) against 1.5 x the float32 size of the datasets it loads + 64 MiB. */
#define _XOPEN_SOURCE 700 /* nftw */
#include "dataset.h"
#include "evaluation.h"
#include "metrics.h"
#include "runspec.h"
#include "train.h"

#include <arpa/inet.h>
#include <cblas.h>
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <jansson.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define FM "/usr/share/datasets/fashion-mnist/"
#define MAX_REPS 32
#define MIB (1024.0 * 1024.0)

/* ---- allocation counter: the executable's malloc & co. win over libc's for every caller ---- */

extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t n);
extern void *__libc_memalign(size_t align, size_t n);
extern void __libc_free(void *p);

static atomic_long n_allocs, n_lib_allocs; /* from this executable's code (finetunerd's) / libs */
static atomic_int counting;
extern char __executable_start, etext; /* this executable's code (the linker's symbols) */

static void count_alloc(const void *caller)
{
    if (!atomic_load_explicit(&counting, memory_order_relaxed))
        return;
    const char *c = caller;
    if (c >= &__executable_start && c < &etext)
        atomic_fetch_add_explicit(&n_allocs, 1, memory_order_relaxed);
    else
        atomic_fetch_add_explicit(&n_lib_allocs, 1, memory_order_relaxed);
}

#define CALLER __builtin_return_address(0)

void *malloc(size_t n)
{
    count_alloc(CALLER);
    return __libc_malloc(n);
}

void *calloc(size_t n, size_t size)
{
    count_alloc(CALLER);
    return __libc_calloc(n, size);
}

void *realloc(void *p, size_t n)
{
    count_alloc(CALLER);
    return __libc_realloc(p, n);
}

void *aligned_alloc(size_t align, size_t n)
{
    count_alloc(CALLER);
    return __libc_memalign(align, n);
}

int posix_memalign(void **out, size_t align, size_t n)
{
    count_alloc(CALLER);
    *out = __libc_memalign(align, n);
    return *out ? 0 : ENOMEM;
}

void free(void *p)
{
    __libc_free(p);
}

/* ---- small helpers ---- */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* A "Key:   123 kB" field of /proc/<pid>/status in bytes (pid 0 = self); -1 when absent. */
static double proc_status(int pid, const char *key)
{
    char path[64], line[256];
    if (pid)
        snprintf(path, sizeof path, "/proc/%d/status", pid);
    else
        snprintf(path, sizeof path, "/proc/self/status");
    FILE *f = fopen(path, "r");
    double v = -1;
    size_t kl = strlen(key);
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, key, kl) == 0 && line[kl] == ':')
            v = strtod(line + kl + 1, NULL) * (strcmp(key, "Threads") ? 1024.0 : 1.0);
    if (f)
        fclose(f);
    return v;
}

/* Reset this process's VmHWM to its current RSS (Linux >= 4.0). */
static void reset_peak_rss(void)
{
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (f) {
        fputs("5", f);
        fclose(f);
    }
}

static int bench_reps(void)
{
    const char *s = getenv("BENCH_REPS");
    long r = s ? strtol(s, NULL, 10) : 5;
    return r < 1 ? 1 : r > MAX_REPS ? MAX_REPS : (int)r;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

struct stat3 {
    double med, min, max;
};

static struct stat3 stats_of(const double *v, int n)
{
    double s[MAX_REPS];
    struct stat3 r = {NAN, NAN, NAN};
    if (n <= 0)
        return r;
    memcpy(s, v, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, cmp_double);
    r.med = n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
    r.min = s[0];
    r.max = s[n - 1];
    return r;
}

static json_t *json_doubles(const double *v, int n)
{
    json_t *a = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(a, json_real(v[i]));
    return a;
}

/* ---- the sgemm floor ---- */

/* One GEMM of a step: C (M, N) = op(A) op(B), op(A) (M, K), op(B) (K, N); t = 1: transposed;
 * loss = 1: the loss's, not the model's. */
struct gemm {
    int ta, tb, M, N, K, loss;
};

struct floor {
    const struct gemm *g;
    int ng;
    float *a[16], *b[16], *c[16];
};

static float *random_floats(size_t n, unsigned seed)
{
    float *v = malloc(n * sizeof *v);
    for (size_t i = 0; v && i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        v[i] = (float)(seed >> 8) / 16777216.0f - 0.5f;
    }
    return v;
}

static int floor_init(struct floor *f, const struct gemm *g, int ng)
{
    memset(f, 0, sizeof *f);
    f->g = g;
    f->ng = ng;
    for (int i = 0; i < ng && i < 16; i++) {
        f->a[i] = random_floats((size_t)g[i].M * g[i].K, 1u + (unsigned)i);
        f->b[i] = random_floats((size_t)g[i].K * g[i].N, 101u + (unsigned)i);
        f->c[i] = random_floats((size_t)g[i].M * g[i].N, 201u + (unsigned)i);
        if (!f->a[i] || !f->b[i] || !f->c[i])
            return -1;
    }
    return 0;
}

static void floor_free(struct floor *f)
{
    for (int i = 0; i < f->ng && i < 16; i++) {
        free(f->a[i]);
        free(f->b[i]);
        free(f->c[i]);
    }
}

/* Seconds for batches x every GEMM of the step; *model (when non-NULL) = the seconds of the
 * model's GEMMs among them (each call timed). */
static double floor_run(struct floor *f, int64_t batches, double *model)
{
    double t0 = now(), m = 0.0;
    for (int64_t s = 0; s < batches; s++)
        for (int i = 0; i < f->ng; i++) {
            const struct gemm *g = &f->g[i];
            double c0 = now();
            cblas_sgemm(CblasRowMajor, g->ta ? CblasTrans : CblasNoTrans,
                        g->tb ? CblasTrans : CblasNoTrans, g->M, g->N, g->K, 1.0f, f->a[i],
                        g->ta ? g->M : g->K, f->b[i], g->tb ? g->K : g->N, 0.0f, f->c[i], g->N);
            if (!g->loss)
                m += now() - c0;
        }
    if (model)
        *model = m;
    return now() - t0;
}

/* ---- training ---- */

enum { BATCH = 128 };

/* mlp 784 -> 256 -> 128: forward, the loss (Gram matrix, its backward: what PyTorch's
 * cdist and its backward run; finetunerd computes these distances directly and applies
 * BatchHardMiner's sparse gradient pair by pair, so the model's GEMMs alone are reported too),
 * backward (no input gradient for the first layer). */
static const struct gemm MLP_GEMMS[] = {
    {0, 1, BATCH, 256, 784, 0},   /* linear_0 forward: x w0^T */
    {0, 1, BATCH, 128, 256, 0},   /* linear_1 forward */
    {0, 1, BATCH, BATCH, 128, 1}, /* loss: Gram matrix of the embeddings */
    {0, 0, BATCH, 128, BATCH, 1}, /* loss backward: S x */
    {0, 0, BATCH, 256, 128, 0},   /* linear_1 input gradient */
    {1, 0, 128, 256, BATCH, 0},   /* linear_1 weight gradient */
    {1, 0, 256, 784, BATCH, 0},   /* linear_0 weight gradient */
};

/* cnn defaults on 1x28x28 (channels [32, 64], 3x3, pooling 2x2, GAP, proj 128): convolutions
 * as one im2col GEMM over the whole batch. */
static const struct gemm CNN_GEMMS[] = {
    {0, 0, 32, BATCH * 784, 9, 0},   /* conv_0 forward */
    {0, 0, 64, BATCH * 196, 288, 0}, /* conv_1 forward */
    {0, 1, BATCH, 128, 64, 0},       /* proj forward */
    {0, 1, BATCH, BATCH, 128, 1},    /* loss Gram */
    {0, 0, BATCH, 128, BATCH, 1},    /* loss backward */
    {0, 0, BATCH, 64, 128, 0},       /* proj input gradient */
    {1, 0, 128, 64, BATCH, 0},       /* proj weight gradient */
    {0, 1, 64, 288, BATCH * 196, 0}, /* conv_1 weight gradient */
    {1, 0, 288, BATCH * 196, 64, 0}, /* conv_1 column gradient */
    {0, 1, 32, 9, BATCH * 784, 0},   /* conv_0 weight gradient */
};

static const char *const MLP_CONFIG =
    "{\"model\": {\"name\": \"mlp\", \"options\": {\"hidden_sizes\": [256, 128], \"l2\": true}},"
    " \"data\": {\"train_data\": \"train\"},"
    " \"hyper_parameters\": {\"loss\": \"TripletMarginLoss\", \"loss_options\": {\"margin\": 0.2},"
    " \"miner\": \"BatchHardMiner\", \"optimizer\": \"Adam\", \"learning_rate\": 0.001,"
    " \"epochs\": 1, \"batch_size\": 128}, \"seed\": 42}";

static const char *const CNN_CONFIG =
    "{\"model\": {\"name\": \"cnn\"}, \"data\": {\"train_data\": \"train\"},"
    " \"hyper_parameters\": {\"loss\": \"TripletMarginLoss\", \"loss_options\": {\"margin\": 0.2},"
    " \"miner\": \"BatchHardMiner\", \"optimizer\": \"Adam\", \"learning_rate\": 0.001,"
    " \"epochs\": 1, \"batch_size\": 128}, \"seed\": 42}";

/* What the trainer's hooks saw during one ft_train. */
struct probe {
    double t_start, t_end;
    long allocs, lib_allocs; /* during the epoch: by finetunerd's code / by libraries */
    int64_t batches;
    double threads;
};

static void probe_log(void *ctx, const char *line)
{
    struct probe *p = ctx;
    long long b, nb;
    if (strncmp(line, "Model: ", 7) == 0) {
        atomic_store(&n_allocs, 0);
        atomic_store(&n_lib_allocs, 0);
        atomic_store(&counting, 1);
        p->t_start = now();
        return;
    }
    if (sscanf(line, "Training [%*d/%*d] %lld/%lld", &b, &nb) == 2 && b == nb) {
        p->t_end = now();
        atomic_store(&counting, 0);
        p->allocs = atomic_load(&n_allocs);
        p->lib_allocs = atomic_load(&n_lib_allocs);
        p->batches = nb;
        p->threads = proc_status(0, "Threads");
    }
}

/* One ft_train of config_text on train; *p filled. */
static int train_once(const char *config_text, const struct ft_dataset *train, struct probe *p)
{
    struct ft_run_config cfg;
    struct ft_error err = {0};
    struct ft_train_result res;
    json_t *config = json_loads(config_text, 0, NULL);
    if (!config || ft_run_config_parse(config, &cfg, NULL, &err) != FT_OK) {
        fprintf(stderr, "bench_speed: bad config: %s\n", err.message);
        json_decref(config);
        return -1;
    }
    struct ft_train_inputs in = {.train = train, .config = config};
    struct ft_train_hooks hooks = {p, probe_log, NULL, NULL};
    char artifact[64];
    snprintf(artifact, sizeof artifact, "/tmp/bench_speed_%d.safetensors", (int)getpid());
    memset(p, 0, sizeof *p);
    enum ft_err e = ft_train(&cfg, &in, &hooks, artifact, &res, &err);
    unlink(artifact);
    ft_run_config_clear(&cfg);
    json_decref(config);
    if (e != FT_OK || p->batches == 0) {
        fprintf(stderr, "bench_speed: training failed: %s\n", err.message);
        return -1;
    }
    return 0;
}

/* The first n rows of ds (all when n >= ds->n). New. */
static struct ft_dataset *first_rows(const struct ft_dataset *ds, int64_t n)
{
    n = n < ds->n ? n : ds->n;
    int64_t *idx = malloc((size_t)n * sizeof *idx);
    for (int64_t i = 0; idx && i < n; i++)
        idx[i] = i;
    struct ft_dataset *out = idx ? ft_dataset_subset(ds, idx, n) : NULL;
    free(idx);
    return out;
}

static int child_train(int cnn, int reps, json_t *out)
{
    struct ft_dataset *all = NULL, *train;
    struct ft_error err;
    if (ft_dataset_load_idx_files(FM "train-images-idx3-ubyte.gz", FM "train-labels-idx1-ubyte.gz",
                                  &all, &err) != FT_OK) {
        fprintf(stderr, "bench_speed: Fashion-MNIST: %s (apt-get install dataset-fashion-mnist)\n",
                err.message);
        return -1;
    }
    int compact = ft_dataset_compact(all);     /* pixels stay bytes until a batch is built */
    train = cnn ? first_rows(all, 5000) : all; /* the cnn: a 5k-row epoch (seconds) */
    if (cnn)
        ft_dataset_free(all);
    const char *config = cnn ? CNN_CONFIG : MLP_CONFIG;
    struct floor fl;
    double t[MAX_REPS], f[MAX_REPS], r[MAX_REPS], fm[MAX_REPS], rm[MAX_REPS], peak = 0;
    struct probe p = {0};
    int rc = floor_init(&fl, cnn ? CNN_GEMMS : MLP_GEMMS,
                        cnn ? (int)(sizeof CNN_GEMMS / sizeof *CNN_GEMMS)
                            : (int)(sizeof MLP_GEMMS / sizeof *MLP_GEMMS));
    double base = proc_status(0, "VmRSS");
    reset_peak_rss();
    if (rc == 0)
        rc = train_once(config, train, &p); /* warm-up; its peak RSS is the training's */
    if (rc == 0)
        floor_run(&fl, 1, NULL);
    peak = proc_status(0, "VmHWM");
    for (int i = 0; rc == 0 && i < reps; i++) {
        f[i] = floor_run(&fl, p.batches, &fm[i]);
        rc = train_once(config, train, &p);
        t[i] = p.t_end - p.t_start;
        r[i] = t[i] / f[i];
        rm[i] = t[i] / fm[i];
    }
    if (rc == 0) {
        json_object_set_new(out, "ratio", json_doubles(r, reps));
        json_object_set_new(out, "ratio_model_gemms", json_doubles(rm, reps));
        json_object_set_new(out, "time", json_doubles(t, reps));
        json_object_set_new(out, "floor", json_doubles(f, reps));
        json_object_set_new(out, "rows", json_integer((json_int_t)train->n));
        json_object_set_new(out, "batches", json_integer((json_int_t)p.batches));
        json_object_set_new(out, "allocs_per_step", json_real((double)p.allocs / p.batches));
        json_object_set_new(out, "lib_allocs_per_step",
                            json_real((double)p.lib_allocs / p.batches));
        json_object_set_new(out, "threads", json_real(p.threads));
        json_object_set_new(out, "openblas_threads", json_integer(openblas_get_num_threads()));
        json_object_set_new(out, "peak_rss_mib", json_real(peak / MIB));
        json_object_set_new(out, "rss_before_mib", json_real(base / MIB));
        json_object_set_new(out, "dataset_f32_mib",
                            json_real((double)train->n * train->dim * 4 / MIB));
        json_object_set_new(out, "store", json_string(compact ? "uint8" : "float32"));
    }
    floor_free(&fl);
    ft_dataset_free(train);
    return rc;
}

/* ---- evaluation ---- */

enum { EVAL_N = 10000, EVAL_DIM = 128, EVAL_LABELS = 10 };

/* The identity "model": the rows are the embeddings (a new copy, as a real embed returns). */
static float *embed_rows(void *ctx, const struct ft_dataset *ds, int batch)
{
    (void)ctx;
    (void)batch;
    float *out = malloc((size_t)ds->n * (size_t)ds->dim * sizeof *out);
    if (out)
        memcpy(out, ds->x, (size_t)ds->n * (size_t)ds->dim * sizeof *out);
    return out;
}

static struct ft_dataset *random_embeddings(void)
{
    struct ft_dataset *ds = calloc(1, sizeof *ds);
    ds->n = EVAL_N;
    ds->dim = EVAL_DIM;
    ds->x = random_floats((size_t)EVAL_N * EVAL_DIM, 7u);
    ds->labels = malloc(EVAL_N * sizeof *ds->labels);
    ds->num_labels = EVAL_LABELS;
    ds->label_names = calloc(EVAL_LABELS, sizeof *ds->label_names);
    unsigned s = 99;
    for (int i = 0; i < EVAL_N; i++) {
        s = s * 1664525u + 1013904223u;
        ds->labels[i] = (int32_t)((s >> 16) % EVAL_LABELS);
    }
    for (int c = 0; c < EVAL_LABELS; c++) {
        char name[8];
        snprintf(name, sizeof name, "%d", c);
        ds->label_names[c] = strdup(name);
    }
    return ds;
}

static double eval_once(ft_evaluation *ev, struct ft_metrics_result *res)
{
    struct ft_embedder emb = {NULL, embed_rows, EVAL_DIM};
    struct ft_error err = {0};
    json_t *values = json_object();
    double t0 = now();
    enum ft_err e = ft_evaluation_run(ev, &emb, values, res, NULL, &err);
    double t = now() - t0;
    json_decref(values);
    if (e != FT_OK) {
        fprintf(stderr, "bench_speed: evaluation failed: %s\n", err.message);
        return -1;
    }
    return t;
}

static int child_eval(int reps, json_t *out)
{
    struct ft_dataset *ds = random_embeddings();
    struct ft_eval_callback cb = {.limit = 20,
                                  .distance = FT_SCORE_COSINE,
                                  .exclude_self = 1,
                                  .batch_size = 8,
                                  .num_example_queries = 5};
    ft_evaluation *ev = NULL;
    struct ft_metrics_result res;
    struct ft_error err;
    if (ft_evaluation_new(&cb, ds, NULL, "bench", 42, &ev, &err) != FT_OK) {
        fprintf(stderr, "bench_speed: %s\n", err.message);
        return -1;
    }
    double base = proc_status(0, "VmRSS");
    reset_peak_rss();
    int rc = eval_once(ev, &res) < 0 ? -1 : 0; /* warm-up; its peak is the evaluation's */
    double delta = proc_status(0, "VmHWM") - base;
    float *c = malloc((size_t)EVAL_N * EVAL_N * sizeof *c);
    rc = c ? rc : -1;
    if (c) { /* touched, and OpenBLAS warmed up, before the timed calls */
        memset(c, 0, (size_t)EVAL_N * EVAL_N * sizeof *c);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, EVAL_N, EVAL_N, EVAL_DIM, 1.0f, ds->x,
                    EVAL_DIM, ds->x, EVAL_DIM, 0.0f, c, EVAL_N);
    }
    double t[MAX_REPS], f[MAX_REPS], r[MAX_REPS];
    for (int i = 0; rc == 0 && i < reps; i++) {
        double t0 = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, EVAL_N, EVAL_N, EVAL_DIM, 1.0f, ds->x,
                    EVAL_DIM, ds->x, EVAL_DIM, 0.0f, c, EVAL_N);
        f[i] = now() - t0;
        t[i] = eval_once(ev, &res);
        rc = t[i] < 0 ? -1 : 0;
        r[i] = t[i] / f[i];
    }
    if (rc == 0) {
        json_object_set_new(out, "ratio", json_doubles(r, reps));
        json_object_set_new(out, "time", json_doubles(t, reps));
        json_object_set_new(out, "floor", json_doubles(f, reps));
        json_object_set_new(out, "peak_rss_delta_mib", json_real(delta / MIB));
        json_object_set_new(out, "full_matrix_mib",
                            json_real((double)EVAL_N * EVAL_N * sizeof(float) / MIB));
        json_object_set_new(out, "evaluated", json_integer((json_int_t)res.evaluated));
        json_object_set_new(out, "precision_at_k", json_real(res.value[FT_METRIC_PRECISION_AT_K]));
    }
    free(c);
    ft_evaluation_free(ev);
    ft_dataset_free(ds);
    return rc;
}

/* ---- loopback HTTP (one request per connection) ---- */

static int free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0), port = 0;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (s >= 0 && bind(s, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(s, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (s >= 0)
        close(s);
    return port;
}

static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

/* method path on 127.0.0.1:port with an optional body; returns the HTTP status or -1. *resp
 * (when non-NULL) is the whole response, new and NUL-terminated. */
static int http(int port, const char *method, const char *path, const char *ctype, const void *body,
                size_t len, char **resp)
{
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (resp)
        *resp = NULL;
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) != 0) {
        if (s >= 0)
            close(s);
        return -1;
    }
    char head[512];
    int hl = snprintf(head, sizeof head,
                      "%s /api/v1%s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                      "Content-Type: %s\r\nContent-Length: %zu\r\n\r\n",
                      method, path, ctype ? ctype : "application/json", len);
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    int ok = buf && write_all(s, head, (size_t)hl) == 0 && (!len || write_all(s, body, len) == 0);
    while (ok) {
        if (n + 1 >= cap) {
            char *nb = realloc(buf, cap * 2);
            ok = nb != NULL;
            buf = nb ? nb : buf;
            cap *= 2;
            continue;
        }
        ssize_t r = read(s, buf + n, cap - n - 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    close(s);
    int status = -1;
    if (ok && n > 12 && strncmp(buf, "HTTP/1.", 7) == 0)
        status = (int)strtol(buf + 9, NULL, 10);
    if (buf)
        buf[n] = '\0';
    if (resp)
        *resp = buf;
    else
        free(buf);
    return status;
}

static char *read_whole(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    long size = -1;
    if (f && fseek(f, 0, SEEK_END) == 0)
        size = ftell(f);
    if (size >= 0 && fseek(f, 0, SEEK_SET) == 0)
        buf = malloc((size_t)size + 1);
    if (buf && fread(buf, 1, (size_t)size, f) != (size_t)size) {
        free(buf);
        buf = NULL;
    }
    if (f)
        fclose(f);
    *len = buf ? (size_t)size : 0;
    return buf;
}

/* PUT /datasets/name as multipart images + labels (IDX files); returns the status. */
static int upload_idx(int port, const char *name, const char *images, const char *labels)
{
    size_t il, ll;
    char *ib = read_whole(images, &il), *lb = read_whole(labels, &ll);
    const char *bnd = "ftbenchboundary7d1e";
    char h1[256], h2[256], tail[64], path[128], ctype[96];
    int n1 = snprintf(h1, sizeof h1,
                      "--%s\r\nContent-Disposition: form-data; name=\"images\"; "
                      "filename=\"i.gz\"\r\nContent-Type: application/octet-stream\r\n\r\n",
                      bnd);
    int n2 = snprintf(h2, sizeof h2,
                      "\r\n--%s\r\nContent-Disposition: form-data; name=\"labels\"; "
                      "filename=\"l.gz\"\r\nContent-Type: application/octet-stream\r\n\r\n",
                      bnd);
    int n3 = snprintf(tail, sizeof tail, "\r\n--%s--\r\n", bnd);
    size_t total = (size_t)n1 + il + (size_t)n2 + ll + (size_t)n3;
    char *body = ib && lb ? malloc(total) : NULL;
    int status = -1;
    if (body) {
        char *p = body;
        memcpy(p, h1, (size_t)n1), p += n1;
        memcpy(p, ib, il), p += il;
        memcpy(p, h2, (size_t)n2), p += n2;
        memcpy(p, lb, ll), p += ll;
        memcpy(p, tail, (size_t)n3);
        snprintf(path, sizeof path, "/datasets/%s", name);
        snprintf(ctype, sizeof ctype, "multipart/form-data; boundary=%s", bnd);
        status = http(port, "PUT", path, ctype, body, total, NULL);
    }
    free(body);
    free(ib);
    free(lb);
    return status;
}

/* The "status" of run exp/run ("" when unknown) into out. */
static void run_status(int port, const char *exp, const char *run, char *out, size_t cap)
{
    char path[256], *resp = NULL;
    snprintf(path, sizeof path, "/experiments/%s/runs/%s/status", exp, run);
    out[0] = '\0';
    if (http(port, "GET", path, NULL, NULL, 0, &resp) == 200) {
        const char *s = strstr(resp, "\"status\"");
        const char *q = s ? strchr(s + 8, '"') : NULL;
        const char *e = q ? strchr(q + 1, '"') : NULL;
        if (e)
            snprintf(out, cap, "%.*s", (int)(e - q - 1), q + 1);
    }
    free(resp);
}

/* ---- the daemon ---- */

struct daemon {
    int pid, port;
    char dir[320];
};

static const char *finetunerd_path(void)
{
    static char path[4096];
    ssize_t n = readlink("/proc/self/exe", path, sizeof path - 32);
    if (n <= 0)
        return "build/finetunerd";
    path[n] = '\0';
    char *slash = strrchr(path, '/');
    snprintf(slash ? slash + 1 : path, 32, "finetunerd");
    return path;
}

/* Start finetunerd on a free port; *secs = exec to the first 200 on /health. */
static int daemon_start(struct daemon *d, const char *dir, double *secs)
{
    char port[16];
    d->port = free_port();
    snprintf(d->dir, sizeof d->dir, "%s", dir);
    snprintf(port, sizeof port, "%d", d->port);
    double t0 = now();
    d->pid = fork();
    if (d->pid == 0) {
        const char *exe = finetunerd_path();
        execl(exe, exe, "--host", "127.0.0.1", "--port", port, "--data-dir", dir, "--log-level",
              "warn", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; d->pid > 0 && i < 20000; i++) {
        if (http(d->port, "GET", "/health", NULL, NULL, 0, NULL) == 200) {
            *secs = now() - t0;
            return 0;
        }
        usleep(500);
    }
    fprintf(stderr, "bench_speed: finetunerd did not answer /health\n");
    return -1;
}

static void daemon_stop(struct daemon *d)
{
    if (d->pid <= 0)
        return;
    kill(d->pid, SIGTERM);
    waitpid(d->pid, NULL, 0);
    d->pid = 0;
}

/* The pid of a child process of parent (the worker), or 0. */
static int child_of(int parent)
{
    DIR *dir = opendir("/proc");
    struct dirent *e;
    int found = 0;
    while (dir && !found && (e = readdir(dir))) {
        char path[300], line[256];
        long pid = strtol(e->d_name, NULL, 10);
        if (pid <= 0)
            continue;
        snprintf(path, sizeof path, "/proc/%ld/status", pid);
        FILE *f = fopen(path, "r");
        while (f && fgets(line, sizeof line, f))
            if (strncmp(line, "PPid:", 5) == 0 && strtol(line + 5, NULL, 10) == parent)
                found = (int)pid;
        if (f)
            fclose(f);
    }
    if (dir)
        closedir(dir);
    return found;
}

static const char *const DAEMON_RUN =
    "{\"name\": \"train\", \"config\": {"
    "\"model\": {\"name\": \"mlp\", \"options\": {\"hidden_sizes\": [256, 128], \"l2\": true}},"
    " \"data\": {\"train_data\": \"fmnist-train\", \"eval_data\": \"fmnist-test\"},"
    " \"hyper_parameters\": {\"loss\": \"TripletMarginLoss\", \"loss_options\": {\"margin\": 0.2},"
    " \"miner\": \"BatchHardMiner\", \"epochs\": 50, \"batch_size\": 128},"
    " \"callbacks\": [{\"name\": \"EvaluationCallback\", \"options\": {\"query_data\": "
    "\"fmnist-test\"}}]}}";

/* A wrk duration ("1.23ms", "850.00us", "1.01s") in milliseconds. */
static double wrk_ms(const char *s)
{
    char *end;
    double v = strtod(s, &end);
    if (strncmp(end, "us", 2) == 0)
        return v / 1000.0;
    if (strncmp(end, "ms", 2) == 0)
        return v;
    if (*end == 's')
        return v * 1000.0;
    if (*end == 'm')
        return v * 60000.0;
    return NAN;
}

/* wrk -t2 -c64 --latency on url: requests/s and the p99 latency (ms). script: NULL (as fast
 * as the daemon answers) or a wrk Lua script (the paced one). */
static int run_wrk(const char *url, int secs, const char *script, double *rps, double *p99)
{
    char cmd[768], line[512];
    snprintf(cmd, sizeof cmd, "wrk -t2 -c64 -d%ds --latency %s%s %s 2>&1", secs,
             script ? "-s " : "", script ? script : "", url);
    FILE *f = popen(cmd, "r");
    *rps = *p99 = NAN;
    while (f && fgets(line, sizeof line, f)) {
        char *p = line + strspn(line, " \t");
        if (strncmp(p, "Requests/sec:", 13) == 0)
            *rps = strtod(p + 13, NULL);
        if (strncmp(p, "99%", 3) == 0)
            *p99 = wrk_ms(p + 3 + strspn(p + 3, " \t"));
        if (strstr(p, "Non-2xx") || strstr(p, "Socket errors"))
            fprintf(stderr, "bench_speed: wrk: %s", p);
    }
    int rc = f ? pclose(f) : -1;
    return rc == 0 && !isnan(*rps) && !isnan(*p99) ? 0 : -1;
}

/* The paced load: each of wrk's 64 connections waits PACE_MS after each answer before its
 * next request, so they offer at most 64 / 2 ms = 32,000 requests/s (wrk's delay() counts whole
 * milliseconds; with the answer times about 23,000 are sent), above the goal of 20,000,
 * instead of as many as the daemon can answer. wrk times
 * a request from when it is written, so the wait is not counted; as a closed loop it does not
 * correct for coordinated omission (a stalled connection sends fewer requests meanwhile). */
enum { PACE_MS = 2 };

static int write_paced_script(const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fprintf(f, "function delay()\n  return %d\nend\n", PACE_MS);
    return fclose(f) == 0 ? 0 : -1;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Wait until run exp/run has status want (at most secs); 0 when it does. */
static int wait_status(int port, const char *run, const char *want, double secs)
{
    char st[32];
    for (double t0 = now(); now() - t0 < secs; usleep(20000)) {
        run_status(port, "bench", run, st, sizeof st);
        if (strcmp(st, want) == 0)
            return 0;
    }
    return -1;
}

/* Submissions: n POSTs of a small config queued behind the training run, then canceled. */
static double submissions(int port, int n)
{
    char body[256], path[128];
    double t0 = now();
    int ok = 0;
    for (int i = 0; i < n; i++) {
        snprintf(body, sizeof body,
                 "{\"name\": \"q%d\", \"config\": {\"model\": {\"name\": \"mlp\"}, \"data\": "
                 "{\"train_data\": \"fmnist-test\"}}}",
                 i);
        ok += http(port, "POST", "/experiments/bench/runs", NULL, body, strlen(body), NULL) == 201;
    }
    double rate = ok / (now() - t0);
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "/experiments/bench/runs/q%d/cancel", i);
        http(port, "POST", path, NULL, "", 0, NULL);
    }
    if (ok != n)
        fprintf(stderr, "bench_speed: %d of %d submissions accepted\n", ok, n);
    return rate;
}

static int bench_daemon(int reps, json_t *out)
{
    char root[] = "/tmp/ftbench.XXXXXX", dir[300];
    struct daemon d = {0};
    double start[MAX_REPS];
    if (!mkdtemp(root))
        return -1;
    int rc = 0;
    for (int i = 0; rc == 0 && i < reps; i++) {
        snprintf(dir, sizeof dir, "%s/d%d", root, i);
        rc = daemon_start(&d, dir, &start[i]);
        if (i + 1 < reps)
            daemon_stop(&d);
    }
    usleep(300000);
    double idle = rc == 0 ? proc_status(d.pid, "VmRSS") : NAN;
    double t0 = now();
    if (rc == 0 && (upload_idx(d.port, "fmnist-train", FM "train-images-idx3-ubyte.gz",
                               FM "train-labels-idx1-ubyte.gz") != 201 ||
                    upload_idx(d.port, "fmnist-test", FM "t10k-images-idx3-ubyte.gz",
                               FM "t10k-labels-idx1-ubyte.gz") != 201)) {
        fprintf(stderr, "bench_speed: dataset upload failed\n");
        rc = -1;
    }
    double upload = now() - t0;
    if (rc == 0 && http(d.port, "POST", "/experiments/bench/runs", NULL, DAEMON_RUN,
                        strlen(DAEMON_RUN), NULL) != 201)
        rc = -1;
    if (rc == 0)
        rc = wait_status(d.port, "train", "STARTED", 30);
    int worker = 0;
    for (int i = 0; rc == 0 && !worker && i < 200; i++, usleep(10000))
        worker = child_of(d.pid);
    sleep(3); /* the worker loads its data and evaluates before the first batch */
    char url[256], st[32], script[320];
    double rps = NAN, p99 = NAN, subs = NAN, whwm;
    snprintf(url, sizeof url, "http://127.0.0.1:%d/api/v1/experiments/bench/runs/train/status",
             d.port);
    if (rc == 0 && run_wrk(url, 5, NULL, &rps, &p99) != 0) {
        fprintf(stderr, "bench_speed: wrk failed (apt-get install wrk)\n");
        rc = -1;
    }
    double paced_rps = NAN, paced_p99 = NAN;
    snprintf(script, sizeof script, "%s/paced.lua", root);
    if (rc == 0 &&
        (write_paced_script(script) != 0 || run_wrk(url, 5, script, &paced_rps, &paced_p99) != 0)) {
        fprintf(stderr, "bench_speed: paced wrk failed\n");
        rc = -1;
    }
    run_status(d.port, "bench", "train", st, sizeof st);
    int trained = strcmp(st, "STARTED") == 0;
    if (rc == 0)
        subs = submissions(d.port, 90); /* under the daemon's default --max-queued-runs */
    whwm = worker ? proc_status(worker, "VmHWM") : NAN;
    http(d.port, "POST", "/experiments/bench/runs/train/cancel", NULL, "", 0, NULL);
    wait_status(d.port, "train", "CANCELED", 30);
    daemon_stop(&d);
    nftw(root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    if (rc != 0)
        return rc;
    double ds_f32 = (60000.0 + 10000.0) * 784 * 4;
    json_object_set_new(out, "startup_s", json_doubles(start, reps));
    json_object_set_new(out, "idle_rss_mib", json_real(idle / MIB));
    json_object_set_new(out, "upload_s", json_real(upload));
    json_object_set_new(out, "status_rps", json_real(rps));
    json_object_set_new(out, "status_p99_ms", json_real(p99));
    json_object_set_new(out, "status_paced_rps", json_real(paced_rps));
    json_object_set_new(out, "status_paced_p99_ms", json_real(paced_p99));
    json_object_set_new(out, "status_during_training", json_boolean(trained));
    json_object_set_new(out, "submissions_per_s", json_real(subs));
    json_object_set_new(out, "worker_peak_rss_mib", json_real(whwm / MIB));
    json_object_set_new(out, "worker_goal_mib", json_real((1.5 * ds_f32 + 64 * MIB) / MIB));
    json_object_set_new(out, "datasets_f32_mib", json_real(ds_f32 / MIB));
    return 0;
}

/* ---- the parent: children, table, JSON ---- */

/* Run this binary with --child name; its stdout is one JSON object. New or NULL. */
static json_t *spawn_child(const char *name)
{
    int fds[2];
    if (pipe(fds) != 0)
        return NULL;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        execl("/proc/self/exe", "bench_speed", "--child", name, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    FILE *f = fdopen(fds[0], "r");
    json_t *j = f ? json_loadf(f, JSON_DISABLE_EOF_CHECK, NULL) : NULL;
    if (f)
        fclose(f);
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        json_decref(j);
        return NULL;
    }
    return j;
}

static int child_main(const char *name)
{
    json_t *out = json_object();
    int reps = bench_reps(), rc = -1;
    if (strcmp(name, "train") == 0)
        rc = child_train(0, reps, out);
    else if (strcmp(name, "cnn") == 0)
        rc = child_train(1, reps, out);
    else if (strcmp(name, "eval") == 0)
        rc = child_eval(reps, out);
    if (rc == 0) {
        json_dumpf(out, stdout, JSON_COMPACT);
        fflush(stdout);
    }
    json_decref(out);
    return rc == 0 ? 0 : 1;
}

static struct stat3 stat_of(json_t *o, const char *key)
{
    double v[MAX_REPS];
    json_t *a = json_object_get(o, key);
    int n = 0;
    for (size_t i = 0; i < json_array_size(a) && n < MAX_REPS; i++)
        v[n++] = json_number_value(json_array_get(a, i));
    return stats_of(v, n);
}

static double num(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return v ? json_number_value(v) : NAN;
}

/* One table row (printed and appended to rows as JSON). */
static void row(json_t *rows, const char *workload, const char *figure, struct stat3 s,
                const char *goal, const char *notes)
{
    char range[64] = "";
    if (!isnan(s.min) && s.min != s.max)
        snprintf(range, sizeof range, "(%.4g .. %.4g)", s.min, s.max);
    printf("| %-34s | %-18s | %9.4g %-20s | %-12s | %s |\n", workload, figure, s.med, range, goal,
           notes);
    json_array_append_new(rows, json_pack("{s:s, s:s, s:f, s:f, s:f, s:s, s:s}", "workload",
                                          workload, "figure", figure, "median", s.med, "min", s.min,
                                          "max", s.max, "goal", goal, "notes", notes));
}

static struct stat3 one(double v)
{
    return (struct stat3){v, v, v};
}

static void train_rows(json_t *rows, json_t *o, const char *name, const char *goal)
{
    char notes[256], label[96];
    struct stat3 t = stat_of(o, "time"), f = stat_of(o, "floor");
    snprintf(notes, sizeof notes, "%.3f s vs floor %.3f s; %lld rows, %lld batches", t.med, f.med,
             (long long)num(o, "rows"), (long long)num(o, "batches"));
    row(rows, name, "time / sgemm floor", stat_of(o, "ratio"), goal, notes);
    row(rows, "  vs the model's GEMMs alone", "time / sgemm", stat_of(o, "ratio_model_gemms"), "",
        "the floor without the loss's two B x B GEMMs");
    snprintf(label, sizeof label, "%s", "  samples/s");
    row(rows, label, "samples/s", one(num(o, "batches") * BATCH / t.med), "", "");
    snprintf(notes, sizeof notes,
             "rows stored as %s (float32: %.0f MiB); allocations per step: %.2f by finetunerd, "
             "%.2f by libraries (OpenBLAS's threaded sgemm); %g threads",
             json_string_value(json_object_get(o, "store")), num(o, "dataset_f32_mib"),
             num(o, "allocs_per_step"), num(o, "lib_allocs_per_step"), num(o, "threads"));
    row(rows, "  peak RSS", "MiB", one(num(o, "peak_rss_mib")), "", notes);
}

static void daemon_rows(json_t *rows, json_t *o)
{
    char notes[256], goal[64];
    row(rows, "daemon: exec to first /health", "ms",
        (struct stat3){stat_of(o, "startup_s").med * 1e3, stat_of(o, "startup_s").min * 1e3,
                       stat_of(o, "startup_s").max * 1e3},
        "", "fresh data directory each start");
    row(rows, "daemon: idle RSS", "MiB", one(num(o, "idle_rss_mib")), "", "");
    snprintf(notes, sizeof notes, "wrk -t2 -c64 -d5s, %s",
             json_is_true(json_object_get(o, "status_during_training")) ? "a run training meanwhile"
                                                                        : "the run had ended");
    row(rows, "daemon: GET run status", "requests/s", one(num(o, "status_rps")), "", notes);
    row(rows, "daemon: GET run status", "p99 ms", one(num(o, "status_p99_ms")), "", notes);
    snprintf(notes, sizeof notes, "paced: each of 64 connections waits %d ms between requests, %s",
             PACE_MS,
             json_is_true(json_object_get(o, "status_during_training")) ? "a run training meanwhile"
                                                                        : "the run had ended");
    row(rows, "daemon: GET run status, paced", "requests/s", one(num(o, "status_paced_rps")),
        ">= 20000", notes);
    row(rows, "daemon: GET run status, paced", "p99 ms", one(num(o, "status_paced_p99_ms")), "< 5",
        notes);
    row(rows, "daemon: POST runs (SQLite queue)", "runs/s", one(num(o, "submissions_per_s")), "",
        "90 sequential submissions (queued), then canceled");
    snprintf(goal, sizeof goal, "< %.0f", num(o, "worker_goal_mib"));
    snprintf(notes, sizeof notes, "train + eval data %.0f MiB as float32",
             num(o, "datasets_f32_mib"));
    row(rows, "daemon: worker peak RSS", "MiB", one(num(o, "worker_peak_rss_mib")), goal, notes);
}

static int wanted(const char *which, const char *name)
{
    return strcmp(which, "all") == 0 || strcmp(which, name) == 0;
}

static void print_header(void)
{
    printf("bench_speed: %d repetitions, median (min .. max) of time / floor, each floor "
           "measured in the same process\n\n",
           bench_reps());
    printf("| %-34s | %-18s | %-30s | %-12s | %s |\n", "workload", "figure", "median (min .. max)",
           "goal", "notes");
    printf("|%s|%s|%s|%s|%s|\n", "------------------------------------", "--------------------",
           "--------------------------------", "--------------", "------");
    fflush(stdout);
}

static void eval_rows(json_t *rows, json_t *o)
{
    char notes[256];
    snprintf(notes, sizeof notes,
             "%.3f s vs floor %.3f s; peak RSS +%.1f MiB (a full matrix: %.0f MiB)",
             stat_of(o, "time").med, stat_of(o, "floor").med, num(o, "peak_rss_delta_mib"),
             num(o, "full_matrix_mib"));
    row(rows, "eval kNN 10k x 10k x 128, top 20", "time / sgemm floor", stat_of(o, "ratio"),
        "<= 1.25", notes);
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--child") == 0)
        return child_main(argv[2]);
    const char *which = argc > 1 ? argv[1] : "all";
    static const char *const children[] = {"train", "cnn", "eval"};
    json_t *rows = json_array(), *raw = json_object(), *o;
    int failed = 0;
    print_header();
    for (size_t i = 0; i < sizeof children / sizeof *children; i++) {
        if (!wanted(which, children[i]))
            continue;
        o = spawn_child(children[i]);
        failed |= !o;
        if (o && i == 0)
            train_rows(rows, o, "train mlp, 1 epoch Fashion-MNIST", "<= 1.3");
        if (o && i == 1)
            train_rows(rows, o, "train cnn, 1 epoch of 5k rows", "");
        if (o && i == 2)
            eval_rows(rows, o);
        if (o)
            json_object_set_new(raw, children[i], o);
    }
    if (wanted(which, "daemon")) {
        o = json_object();
        if (bench_daemon(bench_reps(), o) == 0)
            daemon_rows(rows, o);
        else
            failed = 1;
        json_object_set_new(raw, "daemon", o);
    }
    /* the table's rows, then every measurement behind them (per repetition) */
    json_t *doc = json_pack("{s:i, s:o, s:o}", "repetitions", bench_reps(), "rows", rows,
                            "measurements", raw);
    json_dump_file(doc, "build/bench.json", JSON_INDENT(2));
    json_decref(doc);
    return failed;
}
