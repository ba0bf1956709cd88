/* optim.c — SGD (momentum, Nesterov, weight decay) and Adam (L2 weight decay) over one
 * contiguous parameter buffer.
 *
 * Follows torch 1.13's single-tensor code (torch/optim/sgd.py, adam.py) operation by operation,
 * in float with the scalar coefficients computed in double as Python does:
 *   SGD:  d = g + wd p; buf = d (first step) | buf = momentum buf + d;
 *         p += -lr (nesterov ? d + momentum buf : buf)   (p += -lr d without momentum)
 *   Adam: g' = g + wd p; m = b1 m + (1-b1) g'; v = b2 v + (1-b2) g' g';
 *         p += -(lr / (1-b1^t)) m / (sqrt(v) / sqrt(1-b2^t) + eps)
 * The optimizer owns its moment buffers (n floats each; SGD keeps one only with momentum). */
#include "optim.h"

#include <math.h>
#include <stdlib.h>

struct ft_optim {
    struct ft_optim_opts opts;
    size_t n;
    int64_t t;
    float *m; /* SGD momentum buffer or Adam exp_avg (NULL for plain SGD) */
    float *v; /* Adam exp_avg_sq */
};

void ft_optim_opts_default(struct ft_optim_opts *opts, enum ft_optim_kind kind)
{
    opts->kind = kind;
    opts->beta1 = 0.9;
    opts->beta2 = 0.999;
    opts->eps = 1e-8;
    opts->weight_decay = 0.0;
    opts->momentum = 0.0;
    opts->nesterov = 0;
}

static enum ft_err check_opts(const struct ft_optim_opts *o, struct ft_error *err)
{
    if (o->kind != FT_OPTIM_SGD && o->kind != FT_OPTIM_ADAM)
        return ft_error_set(err, FT_EINVAL, "optimizer", "unknown optimizer");
    if (!(o->weight_decay >= 0.0))
        return ft_error_set(err, FT_EINVAL, "weight_decay", "weight_decay must be >= 0");
    if (o->kind == FT_OPTIM_SGD) {
        if (!(o->momentum >= 0.0))
            return ft_error_set(err, FT_EINVAL, "momentum", "momentum must be >= 0");
        if (o->nesterov && !(o->momentum > 0.0))
            return ft_error_set(err, FT_EINVAL, "nesterov", "nesterov requires momentum > 0");
        return FT_OK;
    }
    if (!(o->beta1 >= 0.0 && o->beta1 < 1.0) || !(o->beta2 >= 0.0 && o->beta2 < 1.0))
        return ft_error_set(err, FT_EINVAL, "betas", "betas must be in [0, 1)");
    if (!(o->eps >= 0.0))
        return ft_error_set(err, FT_EINVAL, "eps", "eps must be >= 0");
    return FT_OK;
}

enum ft_err ft_optim_new(const struct ft_optim_opts *opts, size_t n, ft_optim **out,
                         struct ft_error *err)
{
    *out = NULL;
    enum ft_err rc = check_opts(opts, err);
    if (rc != FT_OK)
        return rc;
    ft_optim *o = calloc(1, sizeof *o);
    if (!o)
        return ft_error_set(err, FT_ENOMEM, NULL, "out of memory allocating the optimizer");
    o->opts = *opts;
    o->n = n;
    int need_m = opts->kind == FT_OPTIM_ADAM || opts->momentum > 0.0;
    int need_v = opts->kind == FT_OPTIM_ADAM;
    o->m = need_m ? calloc(n ? n : 1, sizeof *o->m) : NULL;
    o->v = need_v ? calloc(n ? n : 1, sizeof *o->v) : NULL;
    if ((need_m && !o->m) || (need_v && !o->v)) {
        ft_optim_free(o);
        return ft_error_set(err, FT_ENOMEM, NULL, "out of memory allocating optimizer state");
    }
    *out = o;
    return FT_OK;
}

static void sgd_step(ft_optim *o, float *p, const float *g, double lr)
{
    const float wd = (float)o->opts.weight_decay;
    const float mom = (float)o->opts.momentum;
    const float neg_lr = (float)-lr;
    const int first = o->t == 1;
    for (size_t i = 0; i < o->n; i++) {
        float d = wd != 0.0f ? g[i] + wd * p[i] : g[i];
        if (o->m) {
            o->m[i] = first ? d : o->m[i] * mom + d;
            d = o->opts.nesterov ? d + mom * o->m[i] : o->m[i];
        }
        p[i] += neg_lr * d;
    }
}

static void adam_step(ft_optim *o, float *p, const float *g, double lr)
{
    const struct ft_optim_opts *op = &o->opts;
    const float wd = (float)op->weight_decay;
    const float b1 = (float)op->beta1, one_minus_b1 = (float)(1.0 - op->beta1);
    const float b2 = (float)op->beta2, one_minus_b2 = (float)(1.0 - op->beta2);
    const double bc1 = 1.0 - pow(op->beta1, (double)o->t);
    const double bc2 = 1.0 - pow(op->beta2, (double)o->t);
    const float neg_step = (float)(-(lr / bc1));
    const float bc2_sqrt = (float)sqrt(bc2);
    const float eps = (float)op->eps;
    for (size_t i = 0; i < o->n; i++) {
        float gi = wd != 0.0f ? g[i] + wd * p[i] : g[i];
        o->m[i] = o->m[i] * b1 + one_minus_b1 * gi;
        o->v[i] = o->v[i] * b2 + one_minus_b2 * (gi * gi);
        float denom = sqrtf(o->v[i]) / bc2_sqrt + eps;
        p[i] += neg_step * (o->m[i] / denom);
    }
}

void ft_optim_step(ft_optim *o, float *params, const float *grads, double lr)
{
    o->t++;
    if (o->opts.kind == FT_OPTIM_ADAM)
        adam_step(o, params, grads, lr);
    else
        sgd_step(o, params, grads, lr);
}

int64_t ft_optim_steps(const ft_optim *o)
{
    return o->t;
}

void ft_optim_free(ft_optim *o)
{
    if (!o)
        return;
    free(o->m);
    free(o->v);
    free(o);
}

void ft_optim_state(ft_optim *o, float **m, float **v)
{
    if (m)
        *m = o->m;
    if (v)
        *v = o->v;
}
