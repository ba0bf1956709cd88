/* nn_ref.c — double-precision reference layers (see nn_ref.h). */
#include "support/nn_ref.h"

#include <math.h>

double ref_act(enum ref_act a, double x)
{
    switch (a) {
    case REF_NONE:
        return x;
    case REF_RELU:
        return x > 0 ? x : 0;
    case REF_GELU_ERF:
        return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
    case REF_GELU_TANH:
        return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
    case REF_TANH:
        return tanh(x);
    case REF_SIGMOID:
        return 1.0 / (1.0 + exp(-x));
    }
    return NAN;
}

void ref_act_all(enum ref_act a, double *out, const double *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = ref_act(a, x[i]);
}

void ref_linear(double *out, const double *x, const double *w, const double *b, int B, int C,
                int OC)
{
    for (int i = 0; i < B; i++)
        for (int o = 0; o < OC; o++) {
            double s = b ? b[o] : 0.0;
            for (int k = 0; k < C; k++)
                s += x[(size_t)i * C + k] * w[(size_t)o * C + k];
            out[(size_t)i * OC + o] = s;
        }
}

/* One output value of the convolution. */
static double conv_at(const double *x, const double *w, const struct ft_conv2d_shape *s, int n,
                      int o, int i, int j)
{
    double acc = 0.0;
    for (int c = 0; c < s->C; c++)
        for (int kh = 0; kh < s->KH; kh++)
            for (int kw = 0; kw < s->KW; kw++) {
                int h = i * s->stride + kh - s->pad, ww = j * s->stride + kw - s->pad;
                if (h < 0 || h >= s->H || ww < 0 || ww >= s->W)
                    continue;
                acc += w[((o * s->C + c) * s->KH + kh) * s->KW + kw] *
                       x[((n * s->C + c) * s->H + h) * s->W + ww];
            }
    return acc;
}

void ref_conv2d(double *out, const double *x, const double *w, const double *b,
                const struct ft_conv2d_shape *s)
{
    int Ho = ft_conv2d_out_h(s), Wo = ft_conv2d_out_w(s);
    for (int n = 0; n < s->B; n++)
        for (int o = 0; o < s->OC; o++)
            for (int i = 0; i < Ho; i++)
                for (int j = 0; j < Wo; j++)
                    out[((n * s->OC + o) * Ho + i) * Wo + j] =
                        (b ? b[o] : 0.0) + conv_at(x, w, s, n, o, i, j);
}

void ref_batchnorm(double *out, const double *x, const double *w, const double *b, const double *rm,
                   const double *rv, int N, int C, int S, int training)
{
    for (int c = 0; c < C; c++) {
        double mu = 0.0, var = 0.0, M = (double)N * S;
        for (int n = 0; n < N; n++)
            for (int i = 0; i < S; i++)
                mu += x[(n * C + c) * S + i] / M;
        for (int n = 0; n < N; n++)
            for (int i = 0; i < S; i++)
                var += pow(x[(n * C + c) * S + i] - mu, 2) / M;
        if (!training) {
            mu = rm[c];
            var = rv[c];
        }
        for (int n = 0; n < N; n++)
            for (int i = 0; i < S; i++) {
                int k = (n * C + c) * S + i;
                out[k] = w[c] * (x[k] - mu) / sqrt(var + 1e-5) + b[c];
            }
    }
}

void ref_layernorm(double *out, const double *x, const double *w, const double *b, int B, int D)
{
    for (int i = 0; i < B; i++) {
        double mu = 0.0, var = 0.0;
        for (int k = 0; k < D; k++)
            mu += x[i * D + k] / D;
        for (int k = 0; k < D; k++)
            var += pow(x[i * D + k] - mu, 2) / D;
        for (int k = 0; k < D; k++)
            out[i * D + k] = (x[i * D + k] - mu) / sqrt(var + 1e-5) * w[k] + b[k];
    }
}

void ref_pool(double *out, const double *x, int B, int C, int H, int W, int k, int is_max)
{
    int Ho = H / k, Wo = W / k;
    for (int pl = 0; pl < B * C; pl++)
        for (int i = 0; i < Ho; i++)
            for (int j = 0; j < Wo; j++) {
                double acc = is_max ? -INFINITY : 0.0;
                for (int a = 0; a < k; a++)
                    for (int c = 0; c < k; c++) {
                        double v = x[(pl * H + i * k + a) * W + j * k + c];
                        acc = is_max ? fmax(acc, v) : acc + v / (k * k);
                    }
                out[(pl * Ho + i) * Wo + j] = acc;
            }
}

void ref_global_avgpool(double *out, const double *x, int B, int C, int S)
{
    for (int pl = 0; pl < B * C; pl++) {
        double s = 0.0;
        for (int i = 0; i < S; i++)
            s += x[pl * S + i];
        out[pl] = s / S;
    }
}

void ref_l2_normalize(double *out, const double *x, int B, int D)
{
    for (int i = 0; i < B; i++) {
        double ss = 0.0;
        for (int k = 0; k < D; k++)
            ss += x[i * D + k] * x[i * D + k];
        double n = fmax(sqrt(ss), 1e-12);
        for (int k = 0; k < D; k++)
            out[i * D + k] = x[i * D + k] / n;
    }
}

double ref_dot(const double *a, const float *b, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}
