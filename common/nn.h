/* nn.h — layer kernels (forward/backward pairs, llm.c style); the models are in model.h.
 *
 * Conventions: row-major; a batch of vectors is (B, C); linear weights are (OC, C) as in
 * torch.nn.Linear (out = inp w^T + b). Backward kernels *accumulate* (+=) into parameter
 * gradients (dw, db) after one ft_model_zero_grad(), and *write* (=) input gradients (dinp).
 * Tensors are row-major; feature maps NCHW.
 * Formulas and reference numbers: ../tests/fixtures/torch/README.md (PyTorch 1.13). */
#ifndef FT_NN_H
#define FT_NN_H

#include "ft_error.h"

#include <stddef.h>
#include <stdint.h>

/* out (B, OC) = inp (B, C) @ w^T (w (OC, C)) + b (OC; NULL = no bias). sgemm. */
void ft_linear_forward(float *out, const float *inp, const float *w, const float *b, int B, int C,
                       int OC);
/* dinp (B, C) = dout (B, OC) @ w (written; NULL = skip), dw (OC, C) += dout^T @ inp,
 * db (OC) += column sums of dout (NULL = no bias). */
void ft_linear_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                        const float *w, int B, int C, int OC);

/* out (N) = max(inp, 0), element-wise over N values (out may alias inp). */
void ft_relu_forward(float *out, const float *inp, size_t N);
/* dinp (N) = dout where inp > 0 else 0 (written; dinp may alias dout). */
void ft_relu_backward(float *dinp, const float *dout, const float *inp, size_t N);

/* ss (B) = the sum of squares of each row of x (B, D), in double, summed in order k = 0 .. D-1
 * (rows interleaved for speed, with AVX-512 or AVX 16 or 8 at a time, a row per vector lane;
 * the sums are bitwise those of a plain loop: s += (double)x_k * x_k, no FMA). */
void ft_sum_squares(double *ss, const float *x, int B, int D);

/* Row-wise L2 normalisation, F.normalize(p=2, dim=1, eps=1e-12):
 * out (B, D) = inp / max(||inp_i||, eps); norms (B) saves max(||inp_i||, eps) for backward.
 * ||inp_i|| is (float)sqrt of ft_sum_squares; out a float division on every path. */
void ft_l2_normalize_forward(float *out, float *norms, const float *inp, int B, int D);
/* dinp_i (B, D) = (dout_i - out_i <out_i, dout_i>) / norms_i (written; may alias dout); in
 * float as (dout - out fdot) * (1 / norms_i), fdot the dot's sequential double sum (as
 * ft_sum_squares) rounded to float, on every path. */
void ft_l2_normalize_backward(float *dinp, const float *dout, const float *out, const float *norms,
                              int B, int D);

/* ---- element-wise activations (out may alias inp; dinp may alias dout) ---- */

/* Which GELU: the exact erf form (torch's default) or the tanh approximation. */
enum ft_gelu_approx { FT_GELU_ERF, FT_GELU_TANH };

/* out (N) = gelu(inp). erf: 0.5 x (1 + erf(x / sqrt(2))) = x Phi(x); tanh: 0.5 x (1 + tanh(u)),
 * u = sqrt(2/pi) (x + 0.044715 x^3) (F.gelu(approximate='none' | 'tanh')). */
void ft_gelu_forward(float *out, const float *inp, size_t N, enum ft_gelu_approx approx);
/* dinp (N) = dout * gelu'(inp): erf: Phi(x) + x phi(x); tanh: 0.5 (1 + t) + 0.5 x (1 - t^2)
 * sqrt(2/pi) (1 + 3 * 0.044715 x^2), t = tanh(u). Needs the layer's input. */
void ft_gelu_backward(float *dinp, const float *dout, const float *inp, size_t N,
                      enum ft_gelu_approx approx);

/* out (N) = tanh(inp). */
void ft_tanh_forward(float *out, const float *inp, size_t N);
/* dinp (N) = dout (1 - out^2). Needs the layer's output. */
void ft_tanh_backward(float *dinp, const float *dout, const float *out, size_t N);

/* out (N) = 1 / (1 + exp(-inp)). */
void ft_sigmoid_forward(float *out, const float *inp, size_t N);
/* dinp (N) = dout out (1 - out). Needs the layer's output. */
void ft_sigmoid_backward(float *dinp, const float *dout, const float *out, size_t N);

/* ---- normalisation ---- */

#define FT_BN_MOMENTUM 0.1f
#define FT_NORM_EPS 1e-5f

/* Batch norm over inp (N, C, S): S = H*W for NCHW feature maps (BatchNorm2d), 1 for (N, C)
 * vectors (BatchNorm1d); statistics per channel c over the M = N*S values
 * (F.batch_norm, momentum 0.1, eps 1e-5).
 * training = 1: biased batch mean/var; out = w (x - mean) / sqrt(var + eps) + b; mean (C) and
 * rstd (C) = 1/sqrt(var + eps) saved for backward; running_mean/running_var (C; NULL = not
 * tracked) updated in place: r = 0.9 r + 0.1 stat, with var * M/(M-1) (unbiased) for
 * running_var (the biased var when M = 1).
 * training = 0: mean = running_mean, rstd = 1/sqrt(running_var + eps) (also written to mean and
 * rstd for backward); running statistics unchanged. */
void ft_batchnorm_forward(float *out, float *mean, float *rstd, float *running_mean,
                          float *running_var, const float *inp, const float *w, const float *b,
                          int N, int C, int S, int training);
/* dinp (N, C, S) written (NULL = skip); dw (C) += sum dout xhat; db (C) += sum dout;
 * xhat = (inp - mean) rstd. training = 1 (batch statistics depend on x):
 * dinp = w rstd / M (M dout - sum dout - xhat sum(dout xhat)); training = 0: dinp = dout w rstd.
 * mean and rstd as saved by the forward of the same mode. */
void ft_batchnorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                           const float *mean, const float *rstd, const float *w, int N, int C,
                           int S, int training);

/* Layer norm over the last dimension (F.layer_norm, eps 1e-5): per row of inp (B, D) the
 * biased mean and rstd = 1/sqrt(var + eps) (saved: mean (B), rstd (B));
 * out (B, D) = (x - mean) rstd w + b, w and b (D). */
void ft_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                          const float *b, int B, int D);
/* dinp (B, D) written; dw (D) += sum_rows dout xhat; db (D) += sum_rows dout;
 * dinp = rstd (g - mean(g) - xhat mean(g xhat)), g = dout w (llm.c layernorm_backward). */
void ft_layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                           const float *mean, const float *rstd, const float *w, int B, int D);

/* ---- dropout ---- */

struct ft_rng;

/* Inverted dropout (torch.nn.Dropout): training = 1 keeps each value with probability 1 - p
 * (one ft_rng_uniform draw per value, in order: kept when u >= p) and scales it by 1/(1-p):
 * mask (N) = 0 or 1/(1-p), out = inp mask. training = 0 or p = 0: out = inp, mask = 1, no
 * draws. p in [0, 1). */
void ft_dropout_forward(float *out, float *mask, const float *inp, size_t N, float p,
                        struct ft_rng *rng, int training);
/* dinp (N) = dout mask (written; may alias dout). */
void ft_dropout_backward(float *dinp, const float *dout, const float *mask, size_t N);

/* ---- convolution and pooling (NCHW) ---- */

/* One conv2d layer over a batch: inp (B, C, H, W), weight (OC, C, KH, KW), zero padding pad,
 * stride; out (B, OC, Ho, Wo) with Ho = (H + 2 pad - KH) / stride + 1 (floor). */
struct ft_conv2d_shape {
    int B, C, H, W;
    int OC, KH, KW;
    int stride, pad;
};

int ft_conv2d_out_h(const struct ft_conv2d_shape *s);
int ft_conv2d_out_w(const struct ft_conv2d_shape *s);
/* Floats of scratch the conv kernels need: im2col columns (C*KH*KW, B*Ho*Wo) plus the output
 * in (OC, B*Ho*Wo) order. */
size_t ft_conv2d_scratch_size(const struct ft_conv2d_shape *s);

/* out (B, OC, Ho, Wo) = conv2d(inp (B, C, H, W), w (OC, C, KH, KW)) + b (OC; NULL = none)
 * (F.conv2d, cross-correlation, dilation 1, groups 1). im2col of the whole batch then one
 * sgemm: (OC, CKK) @ (CKK, B*Ho*Wo), copied to NCHW. scratch: ft_conv2d_scratch_size(s). */
void ft_conv2d_forward(float *out, float *scratch, const float *inp, const float *w, const float *b,
                       const struct ft_conv2d_shape *s);
/* dinp (B, C, H, W) written (NULL = skip), dw (OC, C, KH, KW) += dout (x) im2col(inp),
 * db (OC) += sums of dout (NULL = no bias). im2col is recomputed from inp; dinp = col2im(w^T
 * dout). scratch as for forward. */
void ft_conv2d_backward(float *dinp, float *dw, float *db, float *scratch, const float *dout,
                        const float *inp, const float *w, const struct ft_conv2d_shape *s);

/* Max pooling with kernel = stride = k, padding 0, floor (F.max_pool2d(k, k)): inp
 * (B, C, H, W) -> out (B, C, H/k, W/k); argmax (B, C, H/k, W/k) = h*W + w of each window's
 * first maximum within its (H, W) plane (torch's return_indices; NaN wins). */
void ft_maxpool2d_forward(float *out, int32_t *argmax, const float *inp, int B, int C, int H, int W,
                          int k);
/* dinp (B, C, H, W) written: dout at each window's argmax, 0 elsewhere. */
void ft_maxpool2d_backward(float *dinp, const float *dout, const int32_t *argmax, int B, int C,
                           int H, int W, int k);

/* Average pooling with kernel = stride = k, padding 0, floor (F.avg_pool2d(k, k)):
 * out (B, C, H/k, W/k) = window means of inp (B, C, H, W). */
void ft_avgpool2d_forward(float *out, const float *inp, int B, int C, int H, int W, int k);
/* dinp (B, C, H, W) written: dout / k^2 over each window, 0 where no window reads. */
void ft_avgpool2d_backward(float *dinp, const float *dout, int B, int C, int H, int W, int k);

/* Global average pooling (F.adaptive_avg_pool2d(x, 1) then flatten): out (B, C) = mean over
 * the S = H*W values of each plane of inp (B, C, S). */
void ft_global_avgpool_forward(float *out, const float *inp, int B, int C, int S);
/* dinp (B, C, S) = dout (B, C) / S broadcast over each plane (written). */
void ft_global_avgpool_backward(float *dinp, const float *dout, int B, int C, int S);

/* torch.flatten(x, 1): (B, C, H, W) -> (B, C*H*W) is the same memory; these copy N floats
 * (nothing when out == inp) so a layer stack can treat flatten like any layer. */
void ft_flatten_forward(float *out, const float *inp, size_t N);
void ft_flatten_backward(float *dinp, const float *dout, size_t N);

/* ---- for tests ---- */

/* on = 1: every kernel takes its portable scalar path, not the AVX/AVX2/AVX-512 one chosen at
 * run time (the results are bitwise the same; tests compare them). Not thread-safe: set it
 * while no kernel runs. */
void ft_nn_force_scalar(int on);
/* on = 1: no AVX-512 path; those of AVX and AVX2 are still chosen (tests: the paths of machines
 * without AVX-512). Not thread-safe, as above. */
void ft_nn_force_no_avx512(int on);

#endif
