/* nn_ref.h — double-precision reference layers for gradient checks (tests only).
 *
 * Plain loops written from the formulas of tests/fixtures/torch/README.md, independent of the
 * float kernels in common/nn.c; finite differences of these (in double) are what the analytic
 * float gradients are compared with. Shapes as in nn.h (row-major, NCHW). */
#ifndef FT_TEST_NN_REF_H
#define FT_TEST_NN_REF_H

#include "nn.h"

enum ref_act { REF_NONE, REF_RELU, REF_GELU_ERF, REF_GELU_TANH, REF_TANH, REF_SIGMOID };

double ref_act(enum ref_act a, double x);
/* out (n) = act(x) element-wise (out may alias x). */
void ref_act_all(enum ref_act a, double *out, const double *x, size_t n);
/* out (B, OC) = x (B, C) w^T + b (NULL = none). */
void ref_linear(double *out, const double *x, const double *w, const double *b, int B, int C,
                int OC);
/* out (B, OC, Ho, Wo) = conv2d(x, w) + b (NULL = none). */
void ref_conv2d(double *out, const double *x, const double *w, const double *b,
                const struct ft_conv2d_shape *s);
/* Batch norm of x (N, C, S): batch statistics when training, else rm/rv; eps 1e-5. */
void ref_batchnorm(double *out, const double *x, const double *w, const double *b, const double *rm,
                   const double *rv, int N, int C, int S, int training);
/* Layer norm over the last dim D of x (B, D), eps 1e-5. */
void ref_layernorm(double *out, const double *x, const double *w, const double *b, int B, int D);
/* Max (is_max = 1) or average pooling, kernel = stride = k, floor: (B, C, H, W) -> H/k, W/k. */
void ref_pool(double *out, const double *x, int B, int C, int H, int W, int k, int is_max);
/* out (B, C) = mean over the S values of each plane of x (B, C, S). */
void ref_global_avgpool(double *out, const double *x, int B, int C, int S);
/* Row-wise x / max(||x||, 1e-12) of x (B, D). */
void ref_l2_normalize(double *out, const double *x, int B, int D);
/* sum_i a[i] b[i]. */
double ref_dot(const double *a, const float *b, size_t n);

#endif
