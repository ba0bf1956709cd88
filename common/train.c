/* train.c — one run's training loop (see train.h for the order of events).
 *
 * Owns, for the duration of ft_train: the model, the optimizer, the samplers, the batch
 * buffers, the best epoch's parameter copy and, with val_split, the split datasets. Everything
 * the caller sees goes through the hooks (log lines, metrics) and the artifact file.
 * A training step allocates nothing: the batch rows are gathered (from floats or the dataset's
 * compact bytes) straight into the model's input buffer, and the model's activations and the
 * loss's scratch are sized for the batch before the first step. */
#include "train.h"

#include "evaluation.h"
#include "metrics.h"
#include "model.h"
#include "rng.h"
#include "safetensors.h"
#include "sampler.h"
#include "schedule.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct trainer {
    const struct ft_run_config *cfg;
    const struct ft_train_hooks *hooks;
    const struct ft_dataset *train, *eval;
    struct ft_dataset *own_train, *own_eval; /* val_split results (owned) */
    const struct ft_dataset *query[FT_MAX_EVAL_CALLBACKS], *index[FT_MAX_EVAL_CALLBACKS];
    ft_model *model;
    ft_optim *optim;
    ft_loss *loss;        /* the metric-learning loss (owned) */
    ft_optim *loss_optim; /* for the loss's own parameters (ArcFaceLoss), else NULL */
    int32_t *eval_labels; /* eval labels in the training label space (-1: absent there) */
    int eval_unmapped;    /* eval rows whose label training lacks */
    size_t head_offset;   /* first trained parameter (0 unless freeze) */
    int in_dim, out_dim;
    int B;          /* batch size (resolved when the config says auto) */
    int epoch;      /* current epoch, 1-based */
    double last_lr; /* the learning rate of the last optimizer step */
    struct ft_schedule sched;
    /* batch buffers, B rows (the inputs go straight into the model's input buffer) */
    int64_t *idx;
    int32_t *yb;
    float *emb, *demb;
    /* the best epoch's params then buffers (num_params + num_buffers) */
    float *best_params;
    const char *start_artifact; /* model.artifact's file (borrowed), NULL = fresh model */
    const char *checkpoint_dir; /* TrainingCheckpoint's directory (borrowed) */
    const char *resume_path;    /* where to keep the resume state (borrowed; NULL = nowhere) */
    const char *resume_from;    /* a resume state to go on from (borrowed; NULL = start) */
    json_t *config;             /* normalised run config (borrowed) */
    float *start_params;        /* WiSE-FT: the starting params then buffers (owned) */
    ft_evaluation *evals[FT_MAX_EVAL_CALLBACKS];        /* one per EvaluationCallback (owned) */
    struct ft_metrics_result mr[FT_MAX_EVAL_CALLBACKS]; /* their latest results */
    int64_t step;                                       /* optimizer steps taken (batches) */
    int bad_gradient; /* the last FT_ENUMERIC came from the gradient, not the loss */
};

static void tlog(struct trainer *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tlog(struct trainer *t, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    if (!t->hooks || !t->hooks->log)
        return;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    t->hooks->log(t->hooks->ctx, line);
}

static int canceled(struct trainer *t)
{
    return t->hooks && t->hooks->canceled && t->hooks->canceled(t->hooks->ctx);
}

static void emit_metrics(struct trainer *t, const char *phase, int epoch, json_t *values)
{
    if (t->hooks && t->hooks->metrics)
        t->hooks->metrics(t->hooks->ctx, phase, epoch, values);
}

/* ---- setup ---- */

static enum ft_err split_train(struct trainer *t, const struct ft_dataset *train,
                               struct ft_error *err)
{
    int64_t n = train->n, nval = (int64_t)floor((double)n * t->cfg->val_split);
    if (nval < 1 || nval >= n)
        return ft_error_set(err, FT_EINVAL, "config.data.val_split",
                            "val_split %g of %lld rows leaves no validation or no training rows",
                            t->cfg->val_split, (long long)n);
    int64_t *perm = malloc((size_t)n * sizeof *perm);
    if (!perm)
        return ft_error_set(err, FT_ENOMEM, NULL, "out of memory");
    struct ft_rng rng;
    ft_rng_seed(&rng, t->cfg->seed + 2);
    for (int64_t i = 0; i < n; i++)
        perm[i] = i;
    ft_rng_shuffle(&rng, perm, n);
    t->own_eval = ft_dataset_subset(train, perm, nval);
    t->own_train = ft_dataset_subset(train, perm + nval, n - nval);
    free(perm);
    if (!t->own_eval || !t->own_train)
        return ft_error_set(err, FT_ENOMEM, NULL, "out of memory");
    t->train = t->own_train;
    t->eval = t->own_eval;
    return FT_OK;
}

/* Finetuner picks a batch size when none is given: 128, or less for small data (at most half
 * the rows, so an epoch has two batches), a multiple of num_items_per_class, at least 2 rows. */
static int auto_batch_size(const struct ft_run_config *c, int64_t n)
{
    int k = strcmp(c->sampler, "random") == 0 ? 1 : c->num_items_per_class;
    int64_t b = n / 2 < 128 ? n / 2 : 128;
    b -= b % k;
    return (int)(b >= 2 * k ? b : 2 * k);
}

/* The loss (with its own optimizer when it has parameters) and, for losses that need class ids
 * (ArcFaceLoss), the eval labels mapped into the training label space. */
static enum ft_err build_loss(struct trainer *t, struct ft_error *err)
{
    const struct ft_run_config *c = t->cfg;
    json_t *mo = json_is_null(c->miner_options) ? NULL : c->miner_options;
    enum ft_err e = ft_loss_new(c->loss, c->loss_options, c->miner[0] ? c->miner : NULL, mo,
                                t->out_dim, t->train->num_labels, c->seed + 4, &t->loss, err);
    if (e == FT_OK && ft_loss_num_params(t->loss))
        e = ft_optim_new(&c->loss_optim, ft_loss_num_params(t->loss), &t->loss_optim, err);
    if (e != FT_OK || !t->eval)
        return e;
    int32_t *map = malloc(((size_t)t->eval->num_labels + 1) * sizeof *map);
    t->eval_labels = malloc(((size_t)t->eval->n + 1) * sizeof *t->eval_labels);
    if (!map || !t->eval_labels) {
        free(map);
        return ft_error_set(err, FT_ENOMEM, NULL, "out of memory");
    }
    ft_dataset_map_labels(t->train, t->eval, map);
    for (int64_t i = 0; i < t->eval->n; i++) {
        t->eval_labels[i] = map[t->eval->labels[i]];
        t->eval_unmapped += t->eval_labels[i] < 0;
    }
    free(map);
    if (ft_loss_num_params(t->loss) && t->eval_unmapped)
        tlog(t,
             "val_loss is not computed: %d eval rows have labels train_data lacks, and %s "
             "scores against the training classes",
             t->eval_unmapped, c->loss);
    return FT_OK;
}

/* model.artifact: the architecture and weights of an earlier run; WiSE-FT keeps a copy. */
static enum ft_err load_start_model(struct trainer *t, struct ft_error *err)
{
    ft_safetensors *st = NULL;
    enum ft_err e = ft_safetensors_open(t->start_artifact, &st, err);
    if (e == FT_OK)
        e = ft_model_from_safetensors(st, &t->model, err);
    ft_safetensors_free(st);
    if (e != FT_OK)
        return ft_error_set(err, e, "config.model.artifact",
                            "cannot start from the artifact of '%s': %s", t->cfg->model_artifact,
                            err ? err->message : ft_err_message(e));
    if (ft_model_input_dim(t->model) != t->train->dim)
        return ft_error_set(err, FT_EINVAL, "config.model.artifact",
                            "the artifact of '%s' takes %d inputs, train_data has %d columns",
                            t->cfg->model_artifact, ft_model_input_dim(t->model), t->train->dim);
    tlog(t, "Starting from the model of run '%s'", t->cfg->model_artifact);
    if (!t->cfg->callbacks.has_wiseft)
        return FT_OK;
    size_t np = ft_model_num_params(t->model), nb = ft_model_num_buffers(t->model);
    t->start_params = malloc((np + nb + 1) * sizeof *t->start_params);
    if (!t->start_params)
        return ft_error_set(err, FT_ENOMEM, NULL, "out of memory");
    memcpy(t->start_params, ft_model_params(t->model), np * sizeof(float));
    memcpy(t->start_params + np, ft_model_buffers(t->model), nb * sizeof(float));
    return FT_OK;
}

/* WiSEFTCallback (Wortsman et al. 2022): weights = (1 - alpha) start + alpha finetuned. */
static void wise_ft(struct trainer *t)
{
    double a = t->cfg->callbacks.wiseft.alpha;
    size_t np = ft_model_num_params(t->model), nb = ft_model_num_buffers(t->model);
    float *p = ft_model_params(t->model), *b = ft_model_buffers(t->model);
    for (size_t i = 0; i < np; i++)
        p[i] = (float)((1 - a) * t->start_params[i] + a * p[i]);
    for (size_t i = 0; i < nb; i++)
        b[i] = (float)((1 - a) * t->start_params[np + i] + a * b[i]);
    tlog(t, "WiSE-FT: the artifact is %.3g x the starting model + %.3g x the finetuned one", 1 - a,
         a);
}

static enum ft_err build_model(struct trainer *t, struct ft_error *err)
{
    const struct ft_run_config *c = t->cfg;
    const int *is = t->train->image_shape; /* C, H, W of image data (cnn), else 0s */
    int shape[3] = {1, 1, t->train->dim};
    if (is[0] > 0 && (long)is[0] * is[1] * is[2] == t->train->dim)
        memcpy(shape, is, sizeof shape);
    enum ft_err e;
    if (t->start_artifact) {
        e = load_start_model(t, err);
    } else {
        json_t *mc =
            json_pack("{s:s, s:O?, s:o}", "name", c->model_name, "options", c->model_options,
                      "output_dim", c->output_dim ? json_integer(c->output_dim) : json_null());
        e = mc ? ft_model_new(mc, shape, c->seed, &t->model, err)
               : ft_error_set(err, FT_ENOMEM, NULL, "out of memory");
        json_decref(mc);
    }
    if (e != FT_OK)
        return e;
    t->in_dim = ft_model_input_dim(t->model);
    t->out_dim = ft_model_output_dim(t->model);
    if (c->freeze) /* train only the projection head */
        t->head_offset = ft_model_head_offset(t->model);
    e = ft_optim_new(&c->optim, ft_model_num_params(t->model) - t->head_offset, &t->optim, err);
    if (e == FT_OK)
        e = build_loss(t, err);
    return e;
}

/* Size the loss's scratch now, with one throwaway batch of zero embeddings, so that no training
 * step allocates. Best effort: a loss that refuses these labels (CLIPLoss wants pairs) sizes
 * it in its first step instead. The loss keeps no state from it (its gradient is zeroed). */
static void reserve_loss(struct trainer *t)
{
    float loss;
    int classes = t->train->num_labels > 0 ? t->train->num_labels : 1;
    memset(t->emb, 0, (size_t)t->B * (size_t)t->out_dim * sizeof *t->emb);
    for (int i = 0; i < t->B; i++)
        t->yb[i] = i / 2 % classes;
    ft_loss_compute(t->loss, t->emb, t->yb, t->B, t->out_dim, &loss, t->demb, NULL);
    ft_loss_zero_grad(t->loss);
}

static enum ft_err alloc_buffers(struct trainer *t, struct ft_error *err)
{
    size_t B = (size_t)t->B;
    t->idx = malloc(B * sizeof *t->idx);
    t->yb = malloc(B * sizeof *t->yb);
    t->emb = malloc(B * (size_t)t->out_dim * sizeof *t->emb);
    t->demb = malloc(B * (size_t)t->out_dim * sizeof *t->demb);
    t->best_params = malloc((ft_model_num_params(t->model) + ft_model_num_buffers(t->model)) *
                            sizeof *t->best_params);
    if (!t->idx || !t->yb || !t->emb || !t->demb || !t->best_params ||
        !ft_model_input(t->model, t->B))
        return ft_error_set(err, FT_ENOMEM, NULL, "out of memory");
    reserve_loss(t);
    return FT_OK;
}

static void trainer_free(struct trainer *t)
{
    ft_model_free(t->model);
    ft_optim_free(t->optim);
    ft_loss_free(t->loss);
    ft_optim_free(t->loss_optim);
    free(t->eval_labels);
    ft_dataset_free(t->own_train);
    ft_dataset_free(t->own_eval);
    free(t->idx);
    free(t->yb);
    free(t->emb);
    free(t->demb);
    free(t->best_params);
    free(t->start_params);
    for (int i = 0; i < FT_MAX_EVAL_CALLBACKS; i++)
        ft_evaluation_free(t->evals[i]);
}

/* ---- batches, losses ---- */

/* dst (dim) = row of ds (from its floats or its compact bytes), standardised when the config
 * says so. */
static void load_row(const struct trainer *t, const struct ft_dataset *ds, int64_t row, float *dst)
{
    ft_dataset_row(ds, row, dst);
    if (!t->cfg->standardize)
        return;
    float mean = (float)t->cfg->standardize_mean, inv = (float)(1.0 / t->cfg->standardize_std);
    int k = 0;
    for (; k + 8 <= ds->dim; k += 8) {
        float v[8];
        memcpy(v, dst + k, sizeof v);
#pragma GCC unroll 8
        for (int u = 0; u < 8; u++)
            v[u] = (v[u] - mean) * inv;
        memcpy(dst + k, v, sizeof v);
    }
    for (; k < ds->dim; k++)
        dst[k] = (dst[k] - mean) * inv;
}

/* Rows ahead of the one being converted that gather asks the memory for. */
enum { PREFETCH_ROWS = 4 };

/* Start loading row of ds (its bytes or its floats) into the cache: a batch's rows are random,
 * which the hardware prefetcher cannot follow. */
static void prefetch_row(const struct ft_dataset *ds, int64_t row)
{
    size_t dim = (size_t)ds->dim;
    const char *p = ds->x8 ? (const char *)(ds->x8 + (size_t)row * dim)
                           : (const char *)(ds->x + (size_t)row * dim);
    size_t bytes = ds->x8 ? dim : dim * sizeof *ds->x;
    for (size_t o = 0; o < bytes; o += 64)
        __builtin_prefetch(p + o);
}

/* Rows t->idx of ds into the model's input buffer (sized by alloc_buffers for B <= t->B) and
 * their labels into t->yb; returns the buffer. */
static float *gather(struct trainer *t, const struct ft_dataset *ds, int B)
{
    float *xb = ft_model_input(t->model, B);
    for (int i = 0; i < B && i < PREFETCH_ROWS; i++)
        prefetch_row(ds, t->idx[i]);
    for (int i = 0; i < B; i++) {
        if (i + PREFETCH_ROWS < B)
            prefetch_row(ds, t->idx[i + PREFETCH_ROWS]);
        load_row(t, ds, t->idx[i], xb + (size_t)i * t->in_dim);
        t->yb[i] = ds->labels[t->idx[i]];
    }
    return xb;
}

#if defined(__x86_64__) && defined(__SSE2__)
#include <emmintrin.h>

/* Whether some of x[0 .. n - n % 8) has every exponent bit set (NaN or infinity); SSE2 with
 * the flags in registers. */
static int any_nonfinite8(const float *x, size_t n)
{
    const __m128i e = _mm_set1_epi32(0x7f800000);
    __m128i a = _mm_setzero_si128(), b = _mm_setzero_si128();
    for (size_t i = 0; i + 8 <= n; i += 8) {
        __m128i u = _mm_and_si128(_mm_loadu_si128((const __m128i *)(x + i)), e);
        __m128i v = _mm_and_si128(_mm_loadu_si128((const __m128i *)(x + i + 4)), e);
        a = _mm_or_si128(a, _mm_cmpeq_epi32(u, e));
        b = _mm_or_si128(b, _mm_cmpeq_epi32(v, e));
    }
    return _mm_movemask_epi8(_mm_or_si128(a, b)) != 0;
}
#else
static int any_nonfinite8(const float *x, size_t n)
{
    uint32_t bad = 0;
    for (size_t i = 0; i < n - n % 8; i++) {
        uint32_t u;
        memcpy(&u, x + i, sizeof u);
        bad |= (u & 0x7f800000u) == 0x7f800000u;
    }
    return bad != 0;
}
#endif

/* No NaN or infinity in x (n). */
static int all_finite(const float *x, size_t n)
{
    if (any_nonfinite8(x, n))
        return 0;
    for (size_t i = n - n % 8; i < n; i++)
        if (!isfinite(x[i]))
            return 0;
    return 1;
}

/* One training step on the batch in t->idx; *loss set. */
static enum ft_err train_step(struct trainer *t, int B, float *loss, struct ft_error *err)
{
    float *xb = gather(t, t->train, B);
    enum ft_err e = ft_model_forward(t->model, xb, B, t->emb, 1);
    ft_loss_zero_grad(t->loss);
    if (e == FT_OK)
        e = ft_loss_compute(t->loss, t->emb, t->yb, B, t->out_dim, loss, t->demb, NULL);
    if (e != FT_OK)
        return ft_error_set(err, e, NULL, "training step failed: %s", ft_err_message(e));
    if (!isfinite(*loss) || !all_finite(t->emb, (size_t)B * (size_t)t->out_dim))
        return FT_ENUMERIC;
    ft_model_zero_grad(t->model);
    ft_model_backward(t->model, t->demb, B);
    /* optimizer step s + 1 uses lr(s) (Hugging Face schedulers): s counts batches or epochs */
    int64_t s = t->sched.step_per_batch ? ft_optim_steps(t->optim) : t->epoch - 1;
    t->last_lr = ft_schedule_lr(&t->sched, t->cfg->learning_rate, s);
    int finite = ft_optim_step(t->optim, ft_model_params(t->model) + t->head_offset,
                               ft_model_grads(t->model) + t->head_offset, t->last_lr);
    if (finite && t->loss_optim)
        finite = ft_optim_step(t->loss_optim, ft_loss_params(t->loss), ft_loss_grads(t->loss),
                               t->last_lr);
    t->bad_gradient = !finite; /* the run fails: this step's params are never used */
    return finite ? FT_OK : FT_ENUMERIC;
}

/* Mean triplet loss over class-balanced batches of the eval set, the same batches every
 * epoch (a fixed seed). *has = 0 when there is no eval set. */
static enum ft_err val_loss(struct trainer *t, double *out, int *has, struct ft_error *err)
{
    ft_sampler *s = NULL;
    *has = 0;
    if (!t->eval)
        return FT_OK;
    if (ft_loss_num_params(t->loss) && t->eval_unmapped) /* class ids needed (ArcFaceLoss) */
        return FT_OK;
    enum ft_err e =
        ft_loss_items_per_class(t->loss)
            ? ft_sampler_new_distinct(t->eval->labels, t->eval->n, t->B,
                                      t->cfg->num_items_per_class, t->cfg->seed + 3, &s, err)
            : ft_sampler_new(t->eval->labels, t->eval->n, t->B, t->cfg->num_items_per_class,
                             t->cfg->seed + 3, &s, err);
    if (e != FT_OK) {
        if (err)
            snprintf(err->param, sizeof err->param, "config.data.eval_data");
        return e;
    }
    double sum = 0;
    int64_t nb = 0;
    while (e == FT_OK && ft_sampler_next(s, t->idx)) {
        float loss;
        float *xb = gather(t, t->eval, t->B);
        for (int i = 0; ft_loss_num_params(t->loss) && i < t->B; i++) /* training class ids */
            t->yb[i] = t->eval_labels[t->idx[i]];
        e = ft_model_forward(t->model, xb, t->B, t->emb, 0);
        if (e == FT_OK)
            e = ft_loss_compute(t->loss, t->emb, t->yb, t->B, t->out_dim, &loss, NULL, NULL);
        if (e == FT_OK) {
            sum += loss;
            nb++;
        }
    }
    ft_sampler_free(s);
    if (e != FT_OK)
        return ft_error_set(err, e, NULL, "validation failed: %s", ft_err_message(e));
    *out = nb ? sum / (double)nb : NAN;
    *has = nb > 0;
    return FT_OK;
}

/* ---- evaluation ---- */

/* Embeddings of every row of ds: new (n, out_dim) array or NULL. The rows go straight into the
 * model's input buffer, batch rows at a time. */
static float *embed(struct trainer *t, const struct ft_dataset *ds, int batch)
{
    float *out = malloc((size_t)ds->n * (size_t)t->out_dim * sizeof *out);
    int ok = out != NULL;
    for (int64_t i = 0; ok && i < ds->n; i += batch) {
        int b = (int)(ds->n - i < batch ? ds->n - i : batch);
        float *xb = ft_model_input(t->model, b);
        for (int r = 0; xb && r < b; r++)
            load_row(t, ds, i + r, xb + (size_t)r * ds->dim);
        ok = xb && ft_model_forward(t->model, xb, b, out + (size_t)i * t->out_dim, 0) == FT_OK;
    }
    if (!ok) {
        free(out);
        return NULL;
    }
    return out;
}

static float *embed_cb(void *ctx, const struct ft_dataset *ds, int batch)
{
    return embed(ctx, ds, batch);
}

static enum ft_err prepare_evaluations(struct trainer *t, struct ft_error *err)
{
    for (int c = 0; c < t->cfg->callbacks.num_eval; c++) {
        enum ft_err e = ft_evaluation_new(&t->cfg->callbacks.eval[c], t->query[c], t->index[c],
                                          t->cfg->model_name, t->cfg->seed + 10 + (uint64_t)c,
                                          &t->evals[c], err);
        if (e != FT_OK)
            return e;
    }
    return FT_OK;
}

/* Log evaluation c's metrics as Finetuner does. */
static void log_metrics(struct trainer *t, int c)
{
    const struct ft_metrics_result *r = &t->mr[c];
    for (int m = 0; m < FT_NUM_METRICS; m++) {
        const char *key = ft_evaluation_key(t->evals[c], m);
        if (r->evaluated > 0)
            tlog(t, "Metric: '%s' Value: %.5f", key, r->value[m]);
        else
            tlog(t, "Metric: '%s' Value: null (no query has a relevant document)", key);
    }
}

/* Run evaluation c; its metrics go into values (and t->mr[c]); examples, when gathered, are
 * appended to the examples array (may be NULL). */
static enum ft_err evaluate_one(struct trainer *t, int c, json_t *values, json_t *examples,
                                struct ft_error *err)
{
    struct ft_embedder emb = {t, embed_cb, t->out_dim};
    json_t *ex = NULL;
    enum ft_err e =
        ft_evaluation_run(t->evals[c], &emb, values, &t->mr[c], examples ? &ex : NULL, err);
    if (e != FT_OK)
        return e;
    log_metrics(t, c);
    if (ex)
        json_array_append_new(examples, ex);
    return FT_OK;
}

/* Run every EvaluationCallback (before, after an epoch, after training). */
static enum ft_err evaluate(struct trainer *t, json_t *values, json_t *examples,
                            struct ft_error *err)
{
    for (int c = 0; c < t->cfg->callbacks.num_eval; c++) {
        enum ft_err e = evaluate_one(t, c, values, examples, err);
        if (e != FT_OK)
            return e;
    }
    return FT_OK;
}

/* steps_per_interval: evaluations due after optimizer step t->step, stored as phase "step". */
static enum ft_err evaluate_interval(struct trainer *t, struct ft_error *err)
{
    json_t *values = NULL;
    enum ft_err e = FT_OK;
    for (int c = 0; e == FT_OK && c < t->cfg->callbacks.num_eval; c++) {
        int every = t->cfg->callbacks.eval[c].steps_per_interval;
        if (every <= 0 || t->step % every != 0)
            continue;
        if (!values) {
            values = json_pack("{s:I, s:i}", "step", (json_int_t)t->step, "epoch", t->epoch);
            tlog(t, "Evaluating at step %lld (epoch %d)", (long long)t->step, t->epoch);
        }
        e = evaluate_one(t, c, values, NULL, err);
    }
    if (values && e == FT_OK)
        emit_metrics(t, "step", (int)t->step, values);
    json_decref(values);
    return e;
}

/* ---- callbacks ---- */

/* The value of a monitored series this epoch; 0 when missing. */
static int monitor_value(enum ft_monitor_kind kind, int metric, double train_loss, int has_val,
                         double vloss, const struct ft_metrics_result *mr, double *out)
{
    /* mr: the results of the EvaluationCallback the monitor reads */
    switch (kind) {
    case FT_MON_TRAIN_LOSS:
        *out = train_loss;
        return 1;
    case FT_MON_VAL_LOSS:
        *out = vloss;
        return has_val;
    case FT_MON_METRIC:
        *out = mr->evaluated > 0 ? mr->value[metric] : NAN;
        return mr->evaluated > 0;
    }
    return 0;
}

/* Copy the model's parameters and buffers (batch-norm running statistics) to best_params
 * (save = 1) or back (save = 0). */
static void copy_weights(struct trainer *t, int save)
{
    size_t np = ft_model_num_params(t->model), nb = ft_model_num_buffers(t->model);
    float *p = ft_model_params(t->model), *b = ft_model_buffers(t->model);
    memcpy(save ? t->best_params : p, save ? p : t->best_params, np * sizeof *p);
    memcpy(save ? t->best_params + np : b, save ? b : t->best_params + np, nb * sizeof *b);
}

static void checkpoint_epoch(struct trainer *t, struct ft_best_checkpoint *b, int epoch, int has,
                             double v)
{
    double before = b->best_epoch ? b->best_value : (b->mode == FT_MODE_MIN ? INFINITY : -INFINITY);
    if (ft_best_checkpoint_update(b, epoch, has, v)) {
        copy_weights(t, 1);
        tlog(t, "Model improved from %.3f to %.3f!", before, v);
    } else {
        tlog(t, "Model did not improve");
    }
}

static int early_stop_epoch(struct trainer *t, struct ft_early_stopping *es, int epoch, int has,
                            double v)
{
    int improved = 0;
    int stop = ft_early_stopping_update(es, has, v, &improved);
    if (!has)
        tlog(t, "EarlyStopping: '%s' has no value at epoch %d; not counted", es->monitor, epoch);
    else if (!improved)
        tlog(t, "EarlyStopping: '%s' did not improve for %d epoch%s (patience %d)", es->monitor,
             es->wait, es->wait == 1 ? "" : "s", es->patience);
    return stop;
}

/* ---- the loop ---- */

static enum ft_err train_epoch(struct trainer *t, ft_sampler *s, int epoch, double *mean,
                               struct ft_error *err)
{
    int64_t nb = ft_sampler_num_batches(s), b = 0, every = nb / 10 > 0 ? nb / 10 : 1;
    double sum = 0;
    while (ft_sampler_next(s, t->idx)) {
        float loss;
        if (canceled(t))
            return ft_error_set(err, FT_ECANCELED, NULL, "canceled at epoch %d, batch %lld", epoch,
                                (long long)b + 1);
        enum ft_err e = train_step(t, t->B, &loss, err);
        if (e == FT_ENUMERIC)
            return ft_error_set(err, FT_ENUMERIC, NULL,
                                "the %s became %s at epoch %d, batch %lld: lower the "
                                "learning_rate or check the data for NaN/inf",
                                t->bad_gradient  ? "gradient"
                                : isfinite(loss) ? "model output"
                                                 : "loss",
                                isfinite(loss) || isnan(loss) ? "NaN" : "infinite", epoch,
                                (long long)b + 1);
        if (e != FT_OK)
            return e;
        sum += loss;
        b++;
        t->step++;
        if (b % every == 0 || b == nb)
            tlog(t, "Training [%d/%d] %lld/%lld batches loss: %.3f", epoch, t->cfg->epochs,
                 (long long)b, (long long)nb, sum / (double)b);
        e = evaluate_interval(t, err);
        if (e != FT_OK)
            return e;
    }
    *mean = b ? sum / (double)b : NAN;
    return FT_OK;
}

static void log_duration(struct trainer *t, double secs)
{
    long s = (long)secs;
    tlog(t, "Finetuning took %ld days, %ld hours %ld minutes and %ld seconds", s / 86400,
         (s / 3600) % 24, (s / 60) % 60, s % 60);
}

static enum ft_err write_artifact(struct trainer *t, json_t *config, json_t *after, int best_epoch,
                                  const char *path, struct ft_error *err)
{
    int nt = ft_model_num_tensors(t->model);
    struct ft_tensor_view *views = calloc((size_t)nt, sizeof *views);
    if (!views)
        return ft_error_set(err, FT_ENOMEM, NULL, "out of memory");
    for (int i = 0; i < nt; i++) { /* parameters and buffers (batch-norm statistics) */
        int64_t shape[4];
        float *data;
        ft_model_tensor(t->model, i, &views[i].name, &views[i].ndim, shape, &data, NULL);
        views[i].dtype = "F32";
        for (int k = 0; k < 4; k++)
            views[i].shape[k] = shape[k];
        views[i].data = data;
    }
    json_t *mc = ft_model_config_json(t->model);
    char *mc_s = json_dumps(mc, JSON_COMPACT | JSON_SORT_KEYS);
    char *cfg_s = config ? json_dumps(config, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    char *met_s = json_dumps(after, JSON_COMPACT | JSON_SORT_KEYS);
    char be[32];
    snprintf(be, sizeof be, "%d", best_epoch);
    json_t *meta = json_pack("{s:s, s:s}", "format", "finetunerd", "best_epoch", be);
    if (meta && mc_s)
        json_object_set_new(meta, "model_config", json_string(mc_s));
    if (meta && cfg_s)
        json_object_set_new(meta, "run_config", json_string(cfg_s));
    if (meta && met_s)
        json_object_set_new(meta, "metrics", json_string(met_s));
    enum ft_err e = meta ? ft_safetensors_write(path, views, nt, meta, err)
                         : ft_error_set(err, FT_ENOMEM, NULL, "out of memory");
    json_decref(meta);
    json_decref(mc);
    free(mc_s);
    free(cfg_s);
    free(met_s);
    free(views);
    return e;
}

/* ---- TrainingCheckpoint ---- */

/* Append a tensor view (name copied into names[i], at most 64 bytes). */
static void add_view(struct ft_tensor_view *v, char (*names)[96], int *n, const char *name,
                     const char *dtype, int64_t count, const void *data)
{
    snprintf(names[*n], sizeof names[*n], "%s", name);
    v[*n] = (struct ft_tensor_view){names[*n], dtype, 1, {count}, data};
    (*n)++;
}

/* Everything training needs to go on after epoch: the model, the best epoch's weights, the
 * optimizers' moments, the loss's parameters, the sampler's order and generators. */
static int checkpoint_tensors(struct trainer *t, ft_sampler *s, struct ft_tensor_view *v,
                              char (*names)[96])
{
    int n = 0;
    size_t np = ft_model_num_params(t->model), nb = ft_model_num_buffers(t->model);
    float *m, *vv;
    int64_t *order;
    uint64_t *rng;
    add_view(v, names, &n, "model.params", "F32", (int64_t)np, ft_model_params(t->model));
    if (nb)
        add_view(v, names, &n, "model.buffers", "F32", (int64_t)nb, ft_model_buffers(t->model));
    add_view(v, names, &n, "model.rng", "I64", 4, ft_model_rng_state(t->model));
    add_view(v, names, &n, "best.weights", "F32", (int64_t)(np + nb), t->best_params);
    if (t->start_params)
        add_view(v, names, &n, "start.weights", "F32", (int64_t)(np + nb), t->start_params);
    ft_optim_state(t->optim, &m, &vv);
    size_t no = np - t->head_offset;
    if (m)
        add_view(v, names, &n, "optim.m", "F32", (int64_t)no, m);
    if (vv)
        add_view(v, names, &n, "optim.v", "F32", (int64_t)no, vv);
    if (t->loss_optim) {
        size_t nl = ft_loss_num_params(t->loss);
        add_view(v, names, &n, "loss.params", "F32", (int64_t)nl, ft_loss_params(t->loss));
        ft_optim_state(t->loss_optim, &m, &vv);
        if (m)
            add_view(v, names, &n, "loss_optim.m", "F32", (int64_t)nl, m);
        if (vv)
            add_view(v, names, &n, "loss_optim.v", "F32", (int64_t)nl, vv);
    }
    int64_t rows = ft_sampler_state(s, &order, &rng);
    add_view(v, names, &n, "sampler.order", "I64", rows, order);
    add_view(v, names, &n, "sampler.rng", "I64", 4, rng);
    return n;
}

static json_t *checkpoint_meta(struct trainer *t, const struct ft_early_stopping *es,
                               const struct ft_best_checkpoint *bc, int epoch)
{
    char *cfg = t->config ? json_dumps(t->config, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_t *state = json_pack(
        "{s:i, s:I, s:I, s:I, s:{s:b, s:f, s:i}, s:{s:i, s:f}}", "epoch", epoch, "step",
        (json_int_t)t->step, "optim_steps", (json_int_t)ft_optim_steps(t->optim),
        "loss_optim_steps", (json_int_t)(t->loss_optim ? ft_optim_steps(t->loss_optim) : 0),
        "early_stopping", "has_ref", es->has_ref, "ref", isfinite(es->ref) ? es->ref : 0.0, "wait",
        es->wait, "best_checkpoint", "best_epoch", bc->best_epoch, "best_value",
        isfinite(bc->best_value) ? bc->best_value : 0.0);
    char *st = json_dumps(state, JSON_COMPACT | JSON_SORT_KEYS);
    json_t *meta =
        json_pack("{s:s, s:s}", "format", "finetunerd-checkpoint", "state", st ? st : "{}");
    if (meta && cfg)
        json_object_set_new(meta, "run_config", json_string(cfg));
    json_decref(state);
    free(st);
    free(cfg);
    return meta;
}

/* Write the training state after epoch to path (atomically). */
static enum ft_err write_state(struct trainer *t, ft_sampler *s, const struct ft_early_stopping *es,
                               const struct ft_best_checkpoint *bc, int epoch, const char *path,
                               struct ft_error *err)
{
    struct ft_tensor_view views[16];
    char names[16][96];
    int n = checkpoint_tensors(t, s, views, names);
    json_t *meta = checkpoint_meta(t, es, bc, epoch);
    enum ft_err e = meta ? ft_safetensors_write(path, views, n, meta, err)
                         : ft_error_set(err, FT_ENOMEM, NULL, "out of memory");
    json_decref(meta);
    return e;
}

/* After each epoch: the resume state (when the worker asked for one) and TrainingCheckpoint's
 * <checkpoint_dir>/epoch-<e>.safetensors, removing the one last_k_epochs before it. */
static enum ft_err save_checkpoint(struct trainer *t, ft_sampler *s,
                                   const struct ft_early_stopping *es,
                                   const struct ft_best_checkpoint *bc, int epoch,
                                   struct ft_error *err)
{
    const struct ft_run_config *c = t->cfg;
    char path[1100];
    enum ft_err e = FT_OK;
    if (t->resume_path)
        e = write_state(t, s, es, bc, epoch, t->resume_path, err);
    if (e != FT_OK || !c->callbacks.has_training_checkpoint || !t->checkpoint_dir)
        return e;
    snprintf(path, sizeof path, "%s/epoch-%d.safetensors", t->checkpoint_dir, epoch);
    e = write_state(t, s, es, bc, epoch, path, err);
    if (e != FT_OK)
        return e;
    tlog(t, "TrainingCheckpoint: saved epoch %d", epoch);
    int old = epoch - c->callbacks.training_checkpoint.last_k_epochs;
    if (old >= 1) {
        snprintf(path, sizeof path, "%s/epoch-%d.safetensors", t->checkpoint_dir, old);
        unlink(path);
    }
    return FT_OK;
}

/* ---- resume ---- */

/* Copy tensor name of st (count elements of elem bytes) into dst; -1 when absent or of
 * another size. */
static int restore_tensor(const ft_safetensors *st, const char *name, void *dst, size_t count,
                          size_t elem)
{
    struct ft_tensor_view v;
    if (ft_safetensors_get(st, name, &v) != 0 || v.ndim != 1 || (size_t)v.shape[0] != count)
        return -1;
    memcpy(dst, v.data, count * elem);
    return 0;
}

static int restore_optim(const ft_safetensors *st, ft_optim *o, const char *prefix, size_t n,
                         int64_t steps)
{
    float *m, *v;
    char name[64];
    ft_optim_state(o, &m, &v);
    snprintf(name, sizeof name, "%s.m", prefix);
    if (m && restore_tensor(st, name, m, n, sizeof *m) != 0)
        return -1;
    snprintf(name, sizeof name, "%s.v", prefix);
    if (v && restore_tensor(st, name, v, n, sizeof *v) != 0)
        return -1;
    ft_optim_set_steps(o, steps);
    return 0;
}

/* Every tensor of a state written by write_state back into t and s; -1 on a mismatch. */
static int restore_tensors(struct trainer *t, ft_sampler *s, const ft_safetensors *st,
                           json_t *state)
{
    size_t np = ft_model_num_params(t->model), nb = ft_model_num_buffers(t->model);
    int64_t *order;
    uint64_t *rng;
    int64_t rows = ft_sampler_state(s, &order, &rng);
    int bad = restore_tensor(st, "model.params", ft_model_params(t->model), np, sizeof(float));
    bad |= nb && restore_tensor(st, "model.buffers", ft_model_buffers(t->model), nb, 4);
    bad |= restore_tensor(st, "model.rng", ft_model_rng_state(t->model), 4, 8);
    bad |= restore_tensor(st, "best.weights", t->best_params, np + nb, sizeof(float));
    bad |= t->start_params && restore_tensor(st, "start.weights", t->start_params, np + nb, 4);
    bad |= restore_tensor(st, "sampler.order", order, (size_t)rows, sizeof *order);
    bad |= restore_tensor(st, "sampler.rng", rng, 4, 8);
    bad |= restore_optim(st, t->optim, "optim", np - t->head_offset,
                         json_integer_value(json_object_get(state, "optim_steps")));
    if (t->loss_optim) {
        size_t nl = ft_loss_num_params(t->loss);
        bad |= restore_tensor(st, "loss.params", ft_loss_params(t->loss), nl, sizeof(float));
        bad |= restore_optim(st, t->loss_optim, "loss_optim", nl,
                             json_integer_value(json_object_get(state, "loss_optim_steps")));
    }
    return bad ? -1 : 0;
}

/* Load the resume state into t, s and the callbacks; *epoch = the last completed epoch. */
static enum ft_err resume(struct trainer *t, ft_sampler *s, struct ft_early_stopping *es,
                          struct ft_best_checkpoint *bc, int *epoch, struct ft_error *err)
{
    ft_safetensors *st = NULL;
    enum ft_err e = ft_safetensors_open(t->resume_from, &st, err);
    const char *text =
        e == FT_OK ? json_string_value(json_object_get(ft_safetensors_metadata(st), "state"))
                   : NULL;
    json_t *state = text ? json_loads(text, 0, NULL) : NULL;
    if (!state || restore_tensors(t, s, st, state) != 0) {
        json_decref(state);
        ft_safetensors_free(st);
        return ft_error_set(err, FT_EINVAL, NULL,
                            "the checkpoint %s does not fit this run; cannot resume",
                            t->resume_from);
    }
    json_t *jes = json_object_get(state, "early_stopping");
    json_t *jbc = json_object_get(state, "best_checkpoint");
    *epoch = (int)json_integer_value(json_object_get(state, "epoch"));
    t->step = json_integer_value(json_object_get(state, "step"));
    es->has_ref = json_is_true(json_object_get(jes, "has_ref"));
    es->ref = json_number_value(json_object_get(jes, "ref"));
    es->wait = (int)json_integer_value(json_object_get(jes, "wait"));
    bc->best_epoch = (int)json_integer_value(json_object_get(jbc, "best_epoch"));
    bc->best_value = json_number_value(json_object_get(jbc, "best_value"));
    json_decref(state);
    ft_safetensors_free(st);
    tlog(t, "Resuming from the checkpoint of epoch %d", *epoch);
    return FT_OK;
}

static enum ft_err run_epochs(struct trainer *t, ft_sampler *s, struct ft_train_result *res,
                              struct ft_error *err)
{
    const struct ft_run_config *c = t->cfg;
    struct ft_early_stopping es = c->callbacks.early_stopping;
    struct ft_best_checkpoint bc = c->callbacks.best_checkpoint;
    int done = 0;
    if (t->resume_from) {
        enum ft_err e = resume(t, s, &es, &bc, &done, err);
        if (e != FT_OK)
            return e;
        res->epochs_completed = done;
    }
    for (int epoch = done + 1; epoch <= c->epochs; epoch++) {
        double tl = NAN, vl = NAN;
        int has_val;
        t->epoch = epoch;
        enum ft_err e = train_epoch(t, s, epoch, &tl, err);
        if (e == FT_OK)
            e = val_loss(t, &vl, &has_val, err);
        if (e != FT_OK)
            return e;
        json_t *values =
            json_pack("{s:i, s:f, s:o, s:f}", "epoch", epoch, "train_loss", tl, "val_loss",
                      has_val ? json_real(vl) : json_null(), "learning_rate", t->last_lr);
        if (has_val)
            tlog(t, "Epoch %d/%d: train_loss %.5f val_loss %.5f learning_rate %.6g", epoch,
                 c->epochs, tl, vl, t->last_lr);
        else
            tlog(t, "Epoch %d/%d: train_loss %.5f learning_rate %.6g", epoch, c->epochs, tl,
                 t->last_lr);
        e = evaluate(t, values, NULL, err);
        if (e == FT_OK)
            emit_metrics(t, "epoch", epoch, values);
        json_decref(values);
        if (e != FT_OK)
            return e;
        res->epochs_completed = epoch;
        double v = NAN;
        if (c->callbacks.has_best_checkpoint) {
            int has = monitor_value(bc.kind, bc.metric, tl, has_val, vl, &t->mr[bc.eval_index], &v);
            checkpoint_epoch(t, &bc, epoch, has, v);
        }
        int stop = 0;
        if (c->callbacks.has_early_stopping) {
            int has = monitor_value(es.kind, es.metric, tl, has_val, vl, &t->mr[es.eval_index], &v);
            stop = early_stop_epoch(t, &es, epoch, has, v) && epoch < c->epochs;
        }
        e = save_checkpoint(t, s, &es, &bc, epoch, err);
        if (e != FT_OK)
            return e;
        if (stop) {
            res->stopped_early = 1;
            tlog(t, "Early stopping after epoch %d: '%s' did not improve for %d epochs", epoch,
                 es.monitor, es.wait);
            break;
        }
    }
    res->best_epoch = bc.best_epoch;
    if (bc.best_epoch) /* the artifact is the best epoch's model */
        copy_weights(t, 0);
    if (t->start_params)
        wise_ft(t);
    return FT_OK;
}

static enum ft_err train_all(struct trainer *t, const struct ft_train_inputs *in,
                             const char *artifact_path, struct ft_train_result *res,
                             struct ft_error *err)
{
    const struct ft_run_config *c = t->cfg;
    ft_sampler *s = NULL;
    int random = strcmp(c->sampler, "random") == 0;
    int distinct = ft_loss_items_per_class(t->loss) > 0; /* CLIPLoss: pairs */
    enum ft_err e = random ? ft_sampler_new_random(t->train->n, t->B, c->seed + 1, &s, err)
                    : distinct
                        ? ft_sampler_new_distinct(t->train->labels, t->train->n, t->B,
                                                  c->num_items_per_class, c->seed + 1, &s, err)
                        : ft_sampler_new(t->train->labels, t->train->n, t->B,
                                         c->num_items_per_class, c->seed + 1, &s, err);
    if (e != FT_OK) {
        if (err && strcmp(err->param, "batch_size") == 0)
            snprintf(err->param, sizeof err->param, "config.hyper_parameters.batch_size");
        return e;
    }
    e = ft_schedule_init(&t->sched, c->scheduler[0] ? c->scheduler : NULL, c->scheduler_options,
                         c->epochs, ft_sampler_num_batches(s), c->learning_rate, err);
    if (e != FT_OK) {
        ft_sampler_free(s);
        return e;
    }
    tlog(t,
         "Model: %s, %zu parameters; %lld training rows in %lld batches of %d (%s sampler); "
         "loss %s; optimizer %s (lr %g%s%s)",
         c->model_name, ft_model_num_params(t->model), (long long)t->train->n,
         (long long)ft_sampler_num_batches(s), t->B, random ? "random" : "class", c->loss,
         c->optimizer, c->learning_rate, c->scheduler[0] ? ", scheduler " : "", c->scheduler);
    json_t *before = json_object(), *examples = json_array();
    if (c->callbacks.num_eval && !t->resume_from)
        tlog(t, "Evaluating before training");
    e = prepare_evaluations(t, err);
    if (e == FT_OK && !t->resume_from) /* a resumed run has its "before" already */
        e = evaluate(t, before, examples, err);
    if (e == FT_OK && !t->resume_from)
        emit_metrics(t, "before", 0, before);
    if (e == FT_OK && json_array_size(examples))
        emit_metrics(t, "examples_before", 0, examples);
    json_decref(before);
    json_decref(examples);
    if (e == FT_OK)
        e = run_epochs(t, s, res, err);
    ft_sampler_free(s);
    if (e != FT_OK)
        return e;
    json_t *after = json_object();
    examples = json_array();
    if (c->callbacks.num_eval)
        tlog(t, "Evaluating the %s model", res->best_epoch ? "best" : "final");
    e = evaluate(t, after, examples, err);
    if (e == FT_OK)
        emit_metrics(t, "after", res->epochs_completed, after);
    if (e == FT_OK && json_array_size(examples))
        emit_metrics(t, "examples_after", 0, examples);
    json_decref(examples);
    if (e == FT_OK)
        e = write_artifact(t, in->config, after, res->best_epoch, artifact_path, err);
    json_decref(after);
    return e;
}

static void describe(struct ft_train_result *res, const struct ft_run_config *c)
{
    if (res->stopped_early)
        snprintf(res->details, sizeof res->details,
                 "stopped early after epoch %d of %d by EarlyStopping on '%s'",
                 res->epochs_completed, c->epochs, c->callbacks.early_stopping.monitor);
    else
        snprintf(res->details, sizeof res->details, "trained %d epoch%s", res->epochs_completed,
                 res->epochs_completed == 1 ? "" : "s");
    if (res->best_epoch) {
        size_t len = strlen(res->details);
        snprintf(res->details + len, sizeof res->details - len, "; artifact from epoch %d",
                 res->best_epoch);
    }
}

enum ft_err ft_train(const struct ft_run_config *cfg, const struct ft_train_inputs *in,
                     const struct ft_train_hooks *hooks, const char *artifact_path,
                     struct ft_train_result *res, struct ft_error *err)
{
    struct trainer t = {0};
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    memset(res, 0, sizeof *res);
    t.cfg = cfg;
    t.hooks = hooks;
    t.train = in->train;
    t.eval = in->eval;
    t.start_artifact = in->start_artifact;
    t.checkpoint_dir = in->checkpoint_dir;
    t.resume_path = in->resume_path;
    t.resume_from = in->resume_from;
    t.config = in->config;
    memcpy(t.query, in->query, sizeof t.query);
    memcpy(t.index, in->index, sizeof t.index);
    enum ft_err e = FT_OK;
    if (cfg->val_split > 0 && !in->eval)
        e = split_train(&t, in->train, err);
    if (e == FT_OK && t.eval && t.eval->dim != t.train->dim)
        e = ft_error_set(err, FT_EINVAL, "config.data.eval_data",
                         "eval_data has %d columns, train_data %d", t.eval->dim, t.train->dim);
    for (int i = 0; e == FT_OK && i < cfg->callbacks.num_eval; i++)
        if (t.query[i]->dim != t.train->dim || (t.index[i] && t.index[i]->dim != t.train->dim))
            e = ft_error_set(err, FT_EINVAL, "config.callbacks",
                             "EvaluationCallback data has other columns than train_data");
    if (e == FT_OK)
        e = build_model(&t, err);
    t.B = cfg->batch_size ? cfg->batch_size : auto_batch_size(cfg, t.train->n);
    if (e == FT_OK)
        e = alloc_buffers(&t, err);
    if (e == FT_OK)
        e = train_all(&t, in, artifact_path, res, err);
    trainer_free(&t);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (e == FT_OK) {
        describe(res, cfg);
        log_duration(&t,
                     (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
        tlog(&t, "Done");
    }
    return e;
}
