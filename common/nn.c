/* nn.c — layer kernels (linear, relu, l2_normalize) and the MLP embedding model.
 *
 * Kernels follow llm.c: <layer>_forward / <layer>_backward pairs over row-major buffers; the
 * linear kernels are OpenBLAS sgemm calls. The model owns one contiguous parameter buffer, one
 * gradient buffer of the same layout, a table of named tensors over them and one activation
 * buffer that grows to the largest batch seen. Forward copies its input and saves every
 * intermediate; backward walks the layers in reverse and accumulates parameter gradients.
 * Formulas and reference numbers: tests/fixtures/torch/README.md (PyTorch 1.13). */
#include "nn.h"

#include "rng.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define L2_EPS 1e-12f

/* ---- kernels ---- */

void ft_linear_forward(float *out, const float *inp, const float *w, const float *b, int B, int C,
                       int OC)
{
    /* out (B, OC), inp (B, C), w (OC, C), b (OC) */
    if (B <= 0 || OC <= 0)
        return;
    float beta = 0.0f;
    if (b) {
        for (int i = 0; i < B; i++)
            memcpy(out + (size_t)i * OC, b, (size_t)OC * sizeof *out);
        beta = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, OC, C, 1.0f, inp, C, w, C, beta, out,
                OC);
}

void ft_linear_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                        const float *w, int B, int C, int OC)
{
    /* dinp (B, C), dw (OC, C), db (OC), dout (B, OC), inp (B, C), w (OC, C) */
    if (B <= 0 || OC <= 0 || C <= 0)
        return;
    if (dinp)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, C, OC, 1.0f, dout, OC, w, C, 0.0f,
                    dinp, C);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, C, B, 1.0f, dout, OC, inp, C, 1.0f, dw,
                C);
    if (!db)
        return;
    for (int i = 0; i < B; i++) {
        const float *row = dout + (size_t)i * OC;
        for (int o = 0; o < OC; o++)
            db[o] += row[o];
    }
}

void ft_relu_forward(float *out, const float *inp, size_t N)
{
    for (size_t i = 0; i < N; i++)
        out[i] = inp[i] > 0.0f ? inp[i] : 0.0f;
}

void ft_relu_backward(float *dinp, const float *dout, const float *inp, size_t N)
{
    for (size_t i = 0; i < N; i++)
        dinp[i] = inp[i] > 0.0f ? dout[i] : 0.0f;
}

void ft_l2_normalize_forward(float *out, float *norms, const float *inp, int B, int D)
{
    /* out (B, D), norms (B), inp (B, D) */
    for (int i = 0; i < B; i++) {
        const float *x = inp + (size_t)i * D;
        float *o = out + (size_t)i * D;
        double ss = 0.0;
        for (int k = 0; k < D; k++)
            ss += (double)x[k] * x[k];
        float n = (float)sqrt(ss);
        if (!(n > L2_EPS))
            n = L2_EPS;
        norms[i] = n;
        for (int k = 0; k < D; k++)
            o[k] = x[k] / n;
    }
}

void ft_l2_normalize_backward(float *dinp, const float *dout, const float *out, const float *norms,
                              int B, int D)
{
    /* dinp (B, D), dout (B, D), out (B, D), norms (B) */
    for (int i = 0; i < B; i++) {
        const float *g = dout + (size_t)i * D;
        const float *o = out + (size_t)i * D;
        float *d = dinp + (size_t)i * D;
        double dot = 0.0;
        for (int k = 0; k < D; k++)
            dot += (double)o[k] * g[k];
        float fdot = (float)dot;
        float inv = 1.0f / norms[i];
        for (int k = 0; k < D; k++)
            d[k] = (g[k] - o[k] * fdot) * inv;
    }
}

/* ---- the MLP model ---- */

struct tensor_view {
    char name[32];
    int ndim;
    int64_t shape[2];
    size_t offset;
};

struct ft_model {
    struct ft_mlp_config cfg;
    int num_layers;
    int width[FT_MLP_MAX_LAYERS + 1]; /* width[0] = input, width[l+1] = layer l output */
    size_t w_off[FT_MLP_MAX_LAYERS];
    size_t b_off[FT_MLP_MAX_LAYERS]; /* meaningful when cfg.bias */
    size_t num_params;
    float *params;
    float *grads;
    int num_tensors;
    struct tensor_view tensors[2 * FT_MLP_MAX_LAYERS];
    /* activations for up to cap_B rows (one allocation) */
    int cap_B;
    float *acts;
    float *x;                       /* (B, width[0]) copy of the input */
    float *pre[FT_MLP_MAX_LAYERS];  /* (B, width[l+1]) linear outputs */
    float *post[FT_MLP_MAX_LAYERS]; /* (B, width[l+1]) after the activation (= pre when none) */
    float *out_n;                   /* (B, out_dim) normalised output (l2 only) */
    float *norms;                   /* (B) (l2 only) */
    float *dbuf[2];                 /* (B, max width) backward scratch */
};

static int has_act(const ft_model *m, int l)
{
    return m->cfg.activation == FT_ACT_RELU && l < m->num_layers - 1;
}

static int max_width(const ft_model *m)
{
    int w = 0;
    for (int l = 0; l <= m->num_layers; l++)
        w = m->width[l] > w ? m->width[l] : w;
    return w;
}

static enum ft_err check_config(const struct ft_mlp_config *cfg, struct ft_error *err)
{
    if (cfg->input_size <= 0)
        return ft_error_set(err, FT_EINVAL, "input_size", "input_size must be > 0, got %d",
                            cfg->input_size);
    if (cfg->num_hidden < 1 || cfg->num_hidden > FT_MLP_MAX_LAYERS)
        return ft_error_set(err, FT_EINVAL, "hidden_sizes",
                            "hidden_sizes must have 1 to %d entries, got %d", FT_MLP_MAX_LAYERS,
                            cfg->num_hidden);
    for (int l = 0; l < cfg->num_hidden; l++)
        if (cfg->hidden_sizes[l] <= 0)
            return ft_error_set(err, FT_EINVAL, "hidden_sizes",
                                "hidden_sizes[%d] must be > 0, got %d", l, cfg->hidden_sizes[l]);
    if (cfg->activation != FT_ACT_NONE && cfg->activation != FT_ACT_RELU)
        return ft_error_set(err, FT_EINVAL, "activation", "unknown activation");
    return FT_OK;
}

static void add_tensor(ft_model *m, int l, const char *kind, int ndim, int64_t d0, int64_t d1,
                       size_t offset)
{
    struct tensor_view *t = &m->tensors[m->num_tensors++];
    snprintf(t->name, sizeof t->name, "linear_%d.%s", l, kind);
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = d1;
    t->offset = offset;
}

/* Lay out the parameter buffer: linear_0.weight, linear_0.bias, linear_1.weight, ... */
static void layout_params(ft_model *m)
{
    size_t off = 0;
    for (int l = 0; l < m->num_layers; l++) {
        int C = m->width[l], OC = m->width[l + 1];
        m->w_off[l] = off;
        add_tensor(m, l, "weight", 2, OC, C, off);
        off += (size_t)OC * C;
        m->b_off[l] = off;
        if (m->cfg.bias) {
            add_tensor(m, l, "bias", 1, OC, 0, off);
            off += (size_t)OC;
        }
    }
    m->num_params = off;
}

/* torch.nn.Linear.reset_parameters: kaiming_uniform(a = sqrt(5)) for the weight gives
 * U(-1/sqrt(fan_in), 1/sqrt(fan_in)); the bias uses the same bound. */
static void init_params(ft_model *m, uint64_t seed)
{
    struct ft_rng rng;
    ft_rng_seed(&rng, seed);
    for (int l = 0; l < m->num_layers; l++) {
        int C = m->width[l], OC = m->width[l + 1];
        double bound = 1.0 / sqrt((double)C);
        float *w = m->params + m->w_off[l];
        for (size_t i = 0; i < (size_t)OC * C; i++)
            w[i] = (float)((2.0 * ft_rng_uniform(&rng) - 1.0) * bound);
        if (!m->cfg.bias)
            continue;
        float *b = m->params + m->b_off[l];
        for (int i = 0; i < OC; i++)
            b[i] = (float)((2.0 * ft_rng_uniform(&rng) - 1.0) * bound);
    }
}

enum ft_err ft_model_new_mlp(const struct ft_mlp_config *cfg, uint64_t seed, ft_model **out,
                             struct ft_error *err)
{
    *out = NULL;
    enum ft_err rc = check_config(cfg, err);
    if (rc != FT_OK)
        return rc;
    ft_model *m = calloc(1, sizeof *m);
    if (!m)
        return ft_error_set(err, FT_ENOMEM, NULL, "out of memory allocating the model");
    m->cfg = *cfg;
    m->num_layers = cfg->num_hidden;
    m->width[0] = cfg->input_size;
    for (int l = 0; l < m->num_layers; l++)
        m->width[l + 1] = cfg->hidden_sizes[l];
    layout_params(m);
    m->params = malloc(m->num_params * sizeof *m->params);
    m->grads = calloc(m->num_params, sizeof *m->grads);
    if (!m->params || !m->grads) {
        ft_model_free(m);
        return ft_error_set(err, FT_ENOMEM, NULL, "out of memory allocating %zu parameters",
                            m->num_params);
    }
    init_params(m, seed);
    *out = m;
    return FT_OK;
}

void ft_model_free(ft_model *m)
{
    if (!m)
        return;
    free(m->params);
    free(m->grads);
    free(m->acts);
    free(m);
}

int ft_model_input_dim(const ft_model *m)
{
    return m->width[0];
}

int ft_model_output_dim(const ft_model *m)
{
    return m->width[m->num_layers];
}

size_t ft_model_num_params(const ft_model *m)
{
    return m->num_params;
}

float *ft_model_params(ft_model *m)
{
    return m->params;
}

float *ft_model_grads(ft_model *m)
{
    return m->grads;
}

void ft_model_zero_grad(ft_model *m)
{
    memset(m->grads, 0, m->num_params * sizeof *m->grads);
}

int ft_model_num_tensors(const ft_model *m)
{
    return m->num_tensors;
}

void ft_model_tensor(const ft_model *m, int i, const char **name, int *ndim, int64_t shape[2],
                     size_t *offset)
{
    FT_ASSERT(i >= 0 && i < m->num_tensors);
    const struct tensor_view *t = &m->tensors[i];
    if (name)
        *name = t->name;
    if (ndim)
        *ndim = t->ndim;
    if (shape) {
        shape[0] = t->shape[0];
        shape[1] = t->shape[1];
    }
    if (offset)
        *offset = t->offset;
}

json_t *ft_model_config_json(const ft_model *m)
{
    json_t *hidden = json_array();
    for (int l = 0; l < m->num_layers; l++)
        json_array_append_new(hidden, json_integer(m->width[l + 1]));
    json_t *act = m->cfg.activation == FT_ACT_RELU ? json_string("relu") : json_null();
    return json_pack("{s:s, s:i, s:o, s:b, s:o, s:b}", "name", "mlp", "input_size", m->width[0],
                     "hidden_sizes", hidden, "bias", m->cfg.bias, "activation", act, "l2",
                     m->cfg.l2);
}

/* Floats of activation storage for B rows. */
static size_t acts_size(const ft_model *m, size_t B)
{
    size_t n = B * (size_t)m->width[0];
    for (int l = 0; l < m->num_layers; l++)
        n += B * (size_t)m->width[l + 1] * (has_act(m, l) ? 2 : 1);
    if (m->cfg.l2)
        n += B * (size_t)ft_model_output_dim(m) + B;
    return n + 2 * B * (size_t)max_width(m);
}

/* Point the activation views into m->acts for cap_B rows. */
static void carve_acts(ft_model *m)
{
    size_t B = (size_t)m->cap_B;
    float *p = m->acts;
    m->x = p;
    p += B * m->width[0];
    for (int l = 0; l < m->num_layers; l++) {
        m->pre[l] = p;
        p += B * m->width[l + 1];
        m->post[l] = m->pre[l];
        if (has_act(m, l)) {
            m->post[l] = p;
            p += B * m->width[l + 1];
        }
    }
    if (m->cfg.l2) {
        m->out_n = p;
        p += B * ft_model_output_dim(m);
        m->norms = p;
        p += B;
    }
    m->dbuf[0] = p;
    p += B * max_width(m);
    m->dbuf[1] = p;
}

static enum ft_err grow_acts(ft_model *m, int B)
{
    if (B <= m->cap_B)
        return FT_OK;
    float *acts = malloc(acts_size(m, (size_t)B) * sizeof *acts);
    if (!acts)
        return FT_ENOMEM;
    free(m->acts);
    m->acts = acts;
    m->cap_B = B;
    carve_acts(m);
    return FT_OK;
}

enum ft_err ft_model_forward(ft_model *m, const float *x, int B, float *out)
{
    /* x (B, width[0]), out (B, out_dim) */
    if (grow_acts(m, B) != FT_OK)
        return FT_ENOMEM;
    memcpy(m->x, x, (size_t)B * m->width[0] * sizeof *x);
    const float *inp = m->x;
    for (int l = 0; l < m->num_layers; l++) {
        const float *b = m->cfg.bias ? m->params + m->b_off[l] : NULL;
        ft_linear_forward(m->pre[l], inp, m->params + m->w_off[l], b, B, m->width[l],
                          m->width[l + 1]);
        if (has_act(m, l))
            ft_relu_forward(m->post[l], m->pre[l], (size_t)B * m->width[l + 1]);
        inp = m->post[l];
    }
    int OD = ft_model_output_dim(m);
    if (m->cfg.l2) {
        ft_l2_normalize_forward(m->out_n, m->norms, inp, B, OD);
        inp = m->out_n;
    }
    memcpy(out, inp, (size_t)B * OD * sizeof *out);
    return FT_OK;
}

void ft_model_backward(ft_model *m, const float *dout, int B)
{
    /* dout (B, out_dim) */
    FT_ASSERT(B <= m->cap_B);
    int L = m->num_layers;
    const float *d = dout;
    int cur = 0;
    if (m->cfg.l2) {
        ft_l2_normalize_backward(m->dbuf[cur], dout, m->out_n, m->norms, B, m->width[L]);
        d = m->dbuf[cur];
        cur ^= 1;
    }
    for (int l = L - 1; l >= 0; l--) {
        const float *inp = l > 0 ? m->post[l - 1] : m->x;
        float *dinp = l > 0 ? m->dbuf[cur] : NULL;
        float *db = m->cfg.bias ? m->grads + m->b_off[l] : NULL;
        ft_linear_backward(dinp, m->grads + m->w_off[l], db, d, inp, m->params + m->w_off[l], B,
                           m->width[l], m->width[l + 1]);
        if (l > 0 && has_act(m, l - 1))
            ft_relu_backward(dinp, dinp, m->pre[l - 1], (size_t)B * m->width[l]);
        d = dinp;
        cur ^= 1;
    }
}
