/* nn.c — layer kernels: linear, relu, gelu, tanh, sigmoid, l2_normalize, batch norm, layer
 * norm, dropout, conv2d, max/avg/global pooling, flatten.
 *
 * Kernels follow llm.c: <layer>_forward / <layer>_backward pairs over row-major buffers they
 * do not own; nothing here allocates. Linear and conv2d are OpenBLAS sgemm calls (conv2d:
 * im2col of the whole batch, one sgemm, col2im for the input gradient); reductions (batch and
 * layer norm statistics, pooling means, bias sums) accumulate in double. Element-wise loops
 * work in unrolled blocks of 8 that the compiler vectorises, and row reductions interleave four
 * rows; each value and each sum is computed exactly as the plain loop would.
 * On x86-64 the hot loops of the cnn (batch norm, 2x2 max pooling) also have AVX2 paths, and
 * those of every mlp step (relu, l2 normalisation with its per-row double sums, the linear bias
 * gradient) AVX-512F paths (the row sums also an AVX one), chosen at run time (the build
 * targets baseline x86-64); the scalar code stays as the fallback and the reference. The SIMD
 * paths repeat its operations lane by lane: no FMA, a double accumulator a[k] of the scalar
 * code (or row k's sum) is lane k of a vector; so every value is bitwise that of the scalar
 * path (tests/common/test_layers.c compares them through ft_nn_force_scalar and
 * ft_nn_force_no_avx512), up to which NaN comes out where two different NaNs meet.
 * Formulas and reference numbers: tests/fixtures/torch/README.md (PyTorch 1.13). */
#include "nn.h"

#include "rng.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define NN_X86 1
#endif

/* AVX-512F has FMA instructions: the AVX-512 paths keep a product and an add two roundings
 * because ISO C mode (-std=c11) turns GCC's contraction off and clang does not contract across
 * intrinsics; in other modes they are left out (as adam_avx512 in optim.c). */
#if defined(NN_X86) && (defined(__STRICT_ANSI__) || defined(__clang__))
#define NN_AVX512 1
#endif

#define L2_EPS 1e-12f

/* ---- run-time dispatch ---- */

/* Set by ft_nn_force_scalar (tests): every kernel takes its portable scalar path; by
 * ft_nn_force_no_avx512: no AVX-512 path (those of AVX and AVX2 are still chosen). */
static int force_scalar, no_avx512;

void ft_nn_force_scalar(int on)
{
    force_scalar = on;
}

void ft_nn_force_no_avx512(int on)
{
    no_avx512 = on;
}

#ifdef NN_X86
static int have_avx2(void)
{
    return !force_scalar && __builtin_cpu_supports("avx2");
}
#endif

#ifdef NN_AVX512
static int have_avx512(void)
{
    return !force_scalar && !no_avx512 && __builtin_cpu_supports("avx512f");
}
#else
static int have_avx512(void)
{
    return 0;
}
#endif

/* ---- AVX-512F paths of the kernels of every mlp step ----
 * Each repeats its scalar path's IEEE operations lane by lane (no FMA, the same order), so the
 * bits are those of the scalar path; tails are masked loads and stores (nothing past the end is
 * read or written). */

#ifdef NN_AVX512
/* All ones in the lanes below n (n >= 16: all sixteen). */
static inline __mmask16 mask_below(size_t n)
{
    return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
}

/* acc[0 .. 16 U) += rows of x (row stride n), row by row; the last of the U <= 16 vectors is
 * masked by last. U independent chains: one alone waits on every add's latency. */
__attribute__((target("avx512f"), always_inline)) static inline void
add_cols_avx512(float *acc, const float *x, int rows, int n, int U, __mmask16 last)
{
    __m512 a[16];
#pragma GCC unroll 16
    for (int u = 0; u < U; u++)
        a[u] = _mm512_maskz_loadu_ps(u == U - 1 ? last : 0xffff, acc + 16 * u);
    for (int i = 0; i < rows; i++)
#pragma GCC unroll 16
        for (int u = 0; u < U; u++)
            a[u] = _mm512_add_ps(a[u], _mm512_maskz_loadu_ps(u == U - 1 ? last : 0xffff,
                                                             x + (size_t)i * n + 16 * u));
#pragma GCC unroll 16
    for (int u = 0; u < U; u++)
        _mm512_mask_storeu_ps(acc + 16 * u, u == U - 1 ? last : 0xffff, a[u]);
}

/* add_rows: 256 columns at a time (16 chains; a block reads whole 1 KiB rows, which streams
 * faster than narrower column blocks), then 128, 32, then 16 or fewer. */
__attribute__((target("avx512f"))) static void add_rows_avx512(float *acc, const float *x, int rows,
                                                               int n)
{
    int o = 0;
    for (; o + 256 <= n; o += 256)
        add_cols_avx512(acc + o, x + o, rows, n, 16, 0xffff);
    for (; o + 128 <= n; o += 128)
        add_cols_avx512(acc + o, x + o, rows, n, 8, 0xffff);
    for (; o + 32 <= n; o += 32)
        add_cols_avx512(acc + o, x + o, rows, n, 2, 0xffff);
    for (; o < n; o += 16)
        add_cols_avx512(acc + o, x + o, rows, n, 1, mask_below((size_t)(n - o)));
}

/* relu forward: kept where !(x <= 0), i.e. x > 0 or NaN; else +0 (-0 and +0 give +0). */
__attribute__((target("avx512f"))) static inline __m512 relu16(__m512 x)
{
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_NLE_UQ), x);
}

__attribute__((target("avx512f"))) static void relu_forward_avx512(float *out, const float *inp,
                                                                   size_t N)
{
    size_t i = 0;
    for (; i + 32 <= N; i += 32) {
        __m512 a = _mm512_loadu_ps(inp + i), b = _mm512_loadu_ps(inp + i + 16);
        _mm512_storeu_ps(out + i, relu16(a));
        _mm512_storeu_ps(out + i + 16, relu16(b));
    }
    for (; i < N; i += 16) {
        __mmask16 m = mask_below(N - i);
        _mm512_mask_storeu_ps(out + i, m, relu16(_mm512_maskz_loadu_ps(m, inp + i)));
    }
}

/* relu backward: d where x > 0 (ordered), else +0. */
__attribute__((target("avx512f"))) static inline __m512 relu_grad16(__m512 d, __m512 x)
{
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GT_OQ), d);
}

__attribute__((target("avx512f"))) static void relu_backward_avx512(float *dinp, const float *dout,
                                                                    const float *inp, size_t N)
{
    size_t i = 0;
    for (; i + 16 <= N; i += 16)
        _mm512_storeu_ps(dinp + i,
                         relu_grad16(_mm512_loadu_ps(dout + i), _mm512_loadu_ps(inp + i)));
    if (i < N) {
        __mmask16 m = mask_below(N - i);
        __m512 d = _mm512_maskz_loadu_ps(m, dout + i), x = _mm512_maskz_loadu_ps(m, inp + i);
        _mm512_mask_storeu_ps(dinp + i, m, relu_grad16(d, x));
    }
}

/* The eight columns in double of the 8 x 8 block of floats at p (row stride ld): c[j] lane r =
 * p[r ld + j] (rows in the lanes). Rows q and q + 4 share a vector (a 128-bit load and an
 * inserted one), then 16 in-lane shuffles and an exact widening. */
__attribute__((target("avx512f"), always_inline)) static inline void
cols8_pd(const float *p, size_t ld, __m512d c[8])
{
    __m256 v[8]; /* v[q] = (row q | row q + 4) columns 0..3, v[q + 4] the same of columns 4..7 */
#pragma GCC unroll 4
    for (int q = 0; q < 4; q++) {
        const float *lo = p + q * ld, *hi = p + (q + 4) * ld;
        v[q] = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(lo)), _mm_loadu_ps(hi), 1);
        v[q + 4] = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(lo + 4)),
                                        _mm_loadu_ps(hi + 4), 1);
    }
#pragma GCC unroll 2
    for (int h = 0; h < 8; h += 4) {
        __m256 t0 = _mm256_unpacklo_ps(v[h], v[h + 1]), t1 = _mm256_unpackhi_ps(v[h], v[h + 1]);
        __m256 t2 = _mm256_unpacklo_ps(v[h + 2], v[h + 3]);
        __m256 t3 = _mm256_unpackhi_ps(v[h + 2], v[h + 3]);
        c[h] = _mm512_cvtps_pd(_mm256_shuffle_ps(t0, t2, 0x44));
        c[h + 1] = _mm512_cvtps_pd(_mm256_shuffle_ps(t0, t2, 0xee));
        c[h + 2] = _mm512_cvtps_pd(_mm256_shuffle_ps(t1, t3, 0x44));
        c[h + 3] = _mm512_cvtps_pd(_mm256_shuffle_ps(t1, t3, 0xee));
    }
}

/* The 8 x 8 block of doubles r (a row each) transposed in place, r[j] lane q = old r[q] lane j:
 * unpacks (pairs of rows), then two rounds of 128-bit shuffles. */
__attribute__((target("avx512f"), always_inline)) static inline void transpose8_pd(__m512d r[8])
{
    __m512d t[8], u[8];
#pragma GCC unroll 4
    for (int q = 0; q < 8; q += 2) { /* t[q]: columns 0 2 4 6 of rows q, q + 1; t[q + 1]: odd */
        t[q] = _mm512_unpacklo_pd(r[q], r[q + 1]);
        t[q + 1] = _mm512_unpackhi_pd(r[q], r[q + 1]);
    }
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++) { /* u[h]: columns h and h + 4 of rows 0..3, u[h + 4] 4..7 */
        u[h] = _mm512_shuffle_f64x2(t[h], t[h + 2], 0x88);
        u[h + 2] = _mm512_shuffle_f64x2(t[h], t[h + 2], 0xdd); /* columns h + 2, h + 6 */
        u[h + 4] = _mm512_shuffle_f64x2(t[h + 4], t[h + 6], 0x88);
        u[h + 6] = _mm512_shuffle_f64x2(t[h + 4], t[h + 6], 0xdd);
    }
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) {
        r[j] = _mm512_shuffle_f64x2(u[j], u[j + 4], 0x88);
        r[j + 4] = _mm512_shuffle_f64x2(u[j], u[j + 4], 0xdd);
    }
}

/* The eight columns of the products x_rk y_rk in double (exact) of the 8 x 8 blocks at x and y
 * (row stride ld), rows in the lanes: widened and multiplied row by row, then one transpose of
 * the products (cheaper than transposing x and y). */
__attribute__((target("avx512f"), always_inline)) static inline void
prods8_pd(const float *x, const float *y, size_t ld, __m512d c[8])
{
#pragma GCC unroll 8
    for (int q = 0; q < 8; q++)
        c[q] = _mm512_mul_pd(_mm512_cvtps_pd(_mm256_loadu_ps(x + q * ld)),
                             _mm512_cvtps_pd(_mm256_loadu_ps(y + q * ld)));
    transpose8_pd(c);
}

/* out[r] = sum over k of x_rk y_rk in double for the 8 G rows r of x and y (row stride D;
 * G = 1 or 2), one sequential sum per row in a vector lane: a product, then an add, as the
 * plain loop. The G vectors are independent chains. sq (x == y): the floats are transposed
 * (half the data), then squared. Columns from D - D % 8 on, row by row. */
__attribute__((target("avx512f"), always_inline)) static inline void
dots_avx512_body(const float *x, const float *y, int D, int G, int sq, double *out)
{
    __m512d s[2] = {_mm512_setzero_pd(), _mm512_setzero_pd()};
    int k = 0;
    for (; k + 8 <= D; k += 8)
#pragma GCC unroll 2
        for (int g = 0; g < G; g++) {
            const float *xb = x + (size_t)8 * g * D + k, *yb = y + (size_t)8 * g * D + k;
            __m512d c[8];
            if (sq)
                cols8_pd(xb, (size_t)D, c);
            else
                prods8_pd(xb, yb, (size_t)D, c);
#pragma GCC unroll 8
            for (int q = 0; q < 8; q++)
                s[g] = _mm512_add_pd(s[g], sq ? _mm512_mul_pd(c[q], c[q]) : c[q]);
        }
    for (int g = 0; g < G; g++)
        _mm512_storeu_pd(out + 8 * g, s[g]);
    for (int r = 0; r < 8 * G; r++)
        for (int t = k; t < D; t++)
            out[r] += (double)x[(size_t)r * D + t] * y[(size_t)r * D + t];
}

/* dots_avx512_body for rows = 8 or 16 rows; x == y: sums of squares. */
__attribute__((target("avx512f"))) static void dots_avx512(const float *x, const float *y, int D,
                                                           int rows, double *out)
{
    if (x == y && rows == 16)
        dots_avx512_body(x, x, D, 2, 1, out);
    else if (x == y)
        dots_avx512_body(x, x, D, 1, 1, out);
    else if (rows == 16)
        dots_avx512_body(x, y, D, 2, 0, out);
    else
        dots_avx512_body(x, y, D, 1, 0, out);
}

/* o (D) = x (D) / n: a division, as the scalar path (o and x do not overlap or are the same). */
__attribute__((target("avx512f"))) static void div_row_avx512(float *o, const float *x, float n,
                                                              int D)
{
    __m512 nv = _mm512_set1_ps(n);
    int k = 0;
    for (; k + 16 <= D; k += 16)
        _mm512_storeu_ps(o + k, _mm512_div_ps(_mm512_loadu_ps(x + k), nv));
    if (k < D) {
        __mmask16 m = mask_below((size_t)(D - k));
        _mm512_mask_storeu_ps(o + k, m, _mm512_div_ps(_mm512_maskz_loadu_ps(m, x + k), nv));
    }
}

/* (g - o fdot) * inv on 16 lanes: a product, a difference, a product. */
__attribute__((target("avx512f"))) static inline __m512 l2_back16(__m512 g, __m512 o, __m512 fdot,
                                                                  __m512 inv)
{
    return _mm512_mul_ps(_mm512_sub_ps(g, _mm512_mul_ps(o, fdot)), inv);
}

/* d (D) = (g - o fdot) * inv (d may be g). */
__attribute__((target("avx512f"))) static void
l2_back_row_avx512(float *d, const float *g, const float *o, float fdot, float inv, int D)
{
    __m512 f = _mm512_set1_ps(fdot), iv = _mm512_set1_ps(inv);
    int k = 0;
    for (; k + 16 <= D; k += 16)
        _mm512_storeu_ps(d + k, l2_back16(_mm512_loadu_ps(g + k), _mm512_loadu_ps(o + k), f, iv));
    if (k < D) {
        __mmask16 m = mask_below((size_t)(D - k));
        __m512 gv = _mm512_maskz_loadu_ps(m, g + k), ov = _mm512_maskz_loadu_ps(m, o + k);
        _mm512_mask_storeu_ps(d + k, m, l2_back16(gv, ov, f, iv));
    }
}
#else
static void add_rows_avx512(float *acc, const float *x, int rows, int n)
{
    (void)acc, (void)x, (void)rows, (void)n;
    FT_ASSERT(0);
}

static void relu_forward_avx512(float *out, const float *inp, size_t N)
{
    (void)out, (void)inp, (void)N;
    FT_ASSERT(0);
}

static void relu_backward_avx512(float *dinp, const float *dout, const float *inp, size_t N)
{
    (void)dinp, (void)dout, (void)inp, (void)N;
    FT_ASSERT(0);
}

static void dots_avx512(const float *x, const float *y, int D, int rows, double *out)
{
    (void)x, (void)y, (void)D, (void)rows, (void)out;
    FT_ASSERT(0);
}

static void div_row_avx512(float *o, const float *x, float n, int D)
{
    (void)o, (void)x, (void)n, (void)D;
    FT_ASSERT(0);
}

static void l2_back_row_avx512(float *d, const float *g, const float *o, float fdot, float inv,
                               int D)
{
    (void)d, (void)g, (void)o, (void)fdot, (void)inv, (void)D;
    FT_ASSERT(0);
}
#endif

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

/* acc (n) += every row of x (rows, n), row by row (the plain loop's order for each column),
 * eight columns at a time through a local copy so the compiler vectorises (one chain of
 * dependent adds per vector); with AVX-512, up to 256 columns at a time (16 chains). */
static void add_rows(float *acc, const float *x, int rows, int n)
{
    if (have_avx512()) {
        add_rows_avx512(acc, x, rows, n);
        return;
    }
    int o = 0;
    for (; o + 8 <= n; o += 8) {
        float a[8];
        memcpy(a, acc + o, sizeof a);
        for (int i = 0; i < rows; i++) {
            float r[8];
            memcpy(r, x + (size_t)i * n + o, sizeof r);
#pragma GCC unroll 8
            for (int u = 0; u < 8; u++)
                a[u] += r[u];
        }
        memcpy(acc + o, a, sizeof a);
    }
    for (; o < n; o++)
        for (int i = 0; i < rows; i++)
            acc[o] += x[(size_t)i * n + o];
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
    if (db)
        add_rows(db, dout, B, OC);
}

/* v when keep, else +0: a bit mask instead of a branch (activations are half positive, half
 * not, so a branch mispredicts half the time). */
static inline float keep_if(float v, int keep)
{
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    u &= -(uint32_t)keep;
    memcpy(&v, &u, sizeof v);
    return v;
}

/* Blocks of 8 values are loaded into a local array first (out may alias inp) and unrolled, so
 * the compiler turns them into vector instructions; the results are those of the scalar rule
 * (as are those of the AVX-512 paths, 16 a vector). */
void ft_relu_forward(float *out, const float *inp, size_t N)
{
    if (have_avx512()) {
        relu_forward_avx512(out, inp, N);
        return;
    }
    size_t i = 0;
    for (; i + 8 <= N; i += 8) {
        uint32_t u[8];
        memcpy(u, inp + i, sizeof u);
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++) { /* keep sign 0 (x > 0 or +0) and NaN (|x| > inf) */
            uint32_t keep = (u[k] >> 31 == 0) | ((u[k] & 0x7fffffffu) > 0x7f800000u);
            u[k] &= -keep;
        }
        memcpy(out + i, u, sizeof u);
    }
    for (; i < N; i++) /* NaN stays NaN, as in torch */
        out[i] = keep_if(inp[i], (inp[i] > 0.0f) | isnan(inp[i]));
}

void ft_relu_backward(float *dinp, const float *dout, const float *inp, size_t N)
{
    if (have_avx512()) {
        relu_backward_avx512(dinp, dout, inp, N);
        return;
    }
    size_t i = 0;
    for (; i + 8 <= N; i += 8) {
        float x[8];
        uint32_t d[8];
        memcpy(x, inp + i, sizeof x);
        memcpy(d, dout + i, sizeof d);
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++)
            d[k] &= -(uint32_t)(x[k] > 0.0f);
        memcpy(dinp + i, d, sizeof d);
    }
    for (; i < N; i++)
        dinp[i] = keep_if(dout[i], inp[i] > 0.0f);
}

/* Sums of squares in double of rows i .. i + 3 of x (B, D) into ss: one sequential sum per row
 * (the order of a plain loop), four rows interleaved so the adds overlap. */
static void sum_squares4(const float *x, int D, double ss[4])
{
    const float *a = x, *b = x + D, *c = x + 2 * (size_t)D, *d = x + 3 * (size_t)D;
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    for (int k = 0; k < D; k++) {
        s0 += (double)a[k] * a[k];
        s1 += (double)b[k] * b[k];
        s2 += (double)c[k] * c[k];
        s3 += (double)d[k] * d[k];
    }
    ss[0] = s0, ss[1] = s1, ss[2] = s2, ss[3] = s3;
}

/* <o_i, g_i> in double for rows i .. i + 3 (one sequential sum each, interleaved). */
static void dots4(const float *o, const float *g, int D, double dot[4])
{
    double s[4] = {0.0, 0.0, 0.0, 0.0};
    for (int k = 0; k < D; k++)
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++)
            s[r] += (double)o[(size_t)r * D + k] * g[(size_t)r * D + k];
    memcpy(dot, s, sizeof s);
}

#ifdef NN_X86
/* Columns k .. k + 3 of the rows r[0..3] as four vectors (rows in the lanes), in double: a 4 x 4
 * transpose, then an exact widening. */
__attribute__((target("avx"))) static inline void cols_pd(const float *const r[4], int k,
                                                          __m256d c[4])
{
    __m128 a = _mm_loadu_ps(r[0] + k), b = _mm_loadu_ps(r[1] + k);
    __m128 e = _mm_loadu_ps(r[2] + k), f = _mm_loadu_ps(r[3] + k);
    _MM_TRANSPOSE4_PS(a, b, e, f);
    c[0] = _mm256_cvtps_pd(a);
    c[1] = _mm256_cvtps_pd(b);
    c[2] = _mm256_cvtps_pd(e);
    c[3] = _mm256_cvtps_pd(f);
}

/* out[r] = sum over k of x_rk y_rk in double for the 16 rows r of x and y (row stride D), one
 * sequential sum per row (a vector lane each; AVX has no FMA, so a product and an add as the
 * plain loop): the four groups of four rows are independent chains. */
__attribute__((target("avx"))) static void dots16_avx(const float *x, const float *y, int D,
                                                      double out[16])
{
    __m256d s[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(),
                    _mm256_setzero_pd()};
    const float *xr[4][4], *yr[4][4];
    for (int g = 0; g < 4; g++)
        for (int q = 0; q < 4; q++) {
            xr[g][q] = x + (size_t)(4 * g + q) * D;
            yr[g][q] = y + (size_t)(4 * g + q) * D;
        }
    int k = 0;
    for (; k + 4 <= D; k += 4)
#pragma GCC unroll 4
        for (int g = 0; g < 4; g++) {
            __m256d a[4], b[4];
            cols_pd(xr[g], k, a);
            cols_pd(yr[g], k, b);
#pragma GCC unroll 4
            for (int q = 0; q < 4; q++)
                s[g] = _mm256_add_pd(s[g], _mm256_mul_pd(a[q], b[q]));
        }
    for (int g = 0; g < 4; g++)
        _mm256_storeu_pd(out + 4 * g, s[g]);
    for (int r = 0; r < 16; r++)
        for (int t = k; t < D; t++)
            out[r] += (double)x[(size_t)r * D + t] * y[(size_t)r * D + t];
}

static int have_avx(void)
{
    return !force_scalar && __builtin_cpu_supports("avx");
}
#else
static void dots16_avx(const float *x, const float *y, int D, double out[16])
{
    (void)x, (void)y, (void)D, (void)out;
    FT_ASSERT(0);
}

static int have_avx(void)
{
    return 0;
}
#endif

/* dot[r] = <x_r, y_r> (x == y: the sums of squares) for the first rows r of x and y (B left,
 * row stride D), each the plain loop's sequential double sum; returns how many rows: the
 * widest block the machine has, 16 or 8 (AVX-512F), 16 (AVX), 4 or 1. */
static int dots_block(double *dot, const float *x, const float *y, int B, int D)
{
    if (B >= 8 && have_avx512()) {
        int rows = B >= 16 ? 16 : 8;
        dots_avx512(x, y, D, rows, dot);
        return rows;
    }
    if (B >= 16 && have_avx()) {
        dots16_avx(x, y, D, dot);
        return 16;
    }
    if (B >= 4 && x == y)
        sum_squares4(x, D, dot);
    else if (B >= 4)
        dots4(x, y, D, dot);
    if (B >= 4)
        return 4;
    double s = 0.0;
    for (int k = 0; k < D; k++)
        s += (double)x[k] * y[k];
    dot[0] = s;
    return 1;
}

void ft_sum_squares(double *ss, const float *x, int B, int D)
{
    /* ss (B), x (B, D) */
    for (int i = 0; i < B;) {
        const float *r = x + (size_t)i * D;
        i += dots_block(ss + i, r, r, B - i, D);
    }
}

/* o (D) = x (D) / n, eight at a time (o and x do not overlap or are the same row). */
static void div_row(float *o, const float *x, float n, int D)
{
    int k = 0;
    for (; k + 8 <= D; k += 8) {
        float v[8];
        memcpy(v, x + k, sizeof v);
#pragma GCC unroll 8
        for (int u = 0; u < 8; u++)
            v[u] /= n;
        memcpy(o + k, v, sizeof v);
    }
    for (; k < D; k++)
        o[k] = x[k] / n;
}

void ft_l2_normalize_forward(float *out, float *norms, const float *inp, int B, int D)
{
    /* out (B, D), norms (B), inp (B, D) */
    int wide = have_avx512();
    for (int i0 = 0; i0 < B; i0 += 64) {
        double ss[64];
        int nb = B - i0 < 64 ? B - i0 : 64;
        ft_sum_squares(ss, inp + (size_t)i0 * D, nb, D);
        for (int r = 0; r < nb; r++) {
            int i = i0 + r;
            float n = (float)sqrt(ss[r]);
            if (!(n > L2_EPS))
                n = L2_EPS;
            norms[i] = n;
            if (wide)
                div_row_avx512(out + (size_t)i * D, inp + (size_t)i * D, n, D);
            else
                div_row(out + (size_t)i * D, inp + (size_t)i * D, n, D);
        }
    }
}

/* d (D) = (g - o fdot) * inv, eight at a time (d may be g). */
static void l2_back_row(float *d, const float *g, const float *o, float fdot, float inv, int D)
{
    int k = 0;
    for (; k + 8 <= D; k += 8) {
        float gv[8], ov[8];
        memcpy(gv, g + k, sizeof gv);
        memcpy(ov, o + k, sizeof ov);
#pragma GCC unroll 8
        for (int u = 0; u < 8; u++)
            gv[u] = (gv[u] - ov[u] * fdot) * inv;
        memcpy(d + k, gv, sizeof gv);
    }
    for (; k < D; k++)
        d[k] = (g[k] - o[k] * fdot) * inv;
}

void ft_l2_normalize_backward(float *dinp, const float *dout, const float *out, const float *norms,
                              int B, int D)
{
    /* dinp (B, D), dout (B, D), out (B, D), norms (B); the dots of a block (dots_block) are
     * taken before its rows are written (dinp may be dout) */
    int wide = have_avx512();
    for (int i0 = 0; i0 < B;) {
        double dot[16];
        const float *g0 = dout + (size_t)i0 * D, *o0 = out + (size_t)i0 * D;
        int nb = dots_block(dot, o0, g0, B - i0, D);
        for (int r = 0; r < nb; r++) {
            size_t off = (size_t)r * D;
            float *d = dinp + (size_t)i0 * D + off;
            float fdot = (float)dot[r], inv = 1.0f / norms[i0 + r];
            if (wide)
                l2_back_row_avx512(d, g0 + off, o0 + off, fdot, inv, D);
            else
                l2_back_row(d, g0 + off, o0 + off, fdot, inv, D);
        }
        i0 += nb;
    }
}

/* ---- element-wise activations ---- */

#define SQRT_2_OVER_PI 0.7978845608028654f /* sqrt(2/pi) */
#define INV_SQRT_2 0.7071067811865476f     /* 1/sqrt(2) */
#define INV_SQRT_2PI 0.3989422804014327f   /* 1/sqrt(2 pi) */
#define GELU_C 0.044715f

/* 0.5 x (1 + erf(x/sqrt(2))) written with erfc so the left tail keeps its precision. */
static float gelu_erf(float x)
{
    return 0.5f * x * erfcf(-x * INV_SQRT_2);
}

static float gelu_erf_grad(float x)
{
    return 0.5f * erfcf(-x * INV_SQRT_2) + x * INV_SQRT_2PI * expf(-0.5f * x * x);
}

static float gelu_tanh(float x)
{
    float t = tanhf(SQRT_2_OVER_PI * (x + GELU_C * x * x * x));
    return 0.5f * x * (1.0f + t);
}

static float gelu_tanh_grad(float x)
{
    float t = tanhf(SQRT_2_OVER_PI * (x + GELU_C * x * x * x));
    float du = SQRT_2_OVER_PI * (1.0f + 3.0f * GELU_C * x * x);
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du;
}

void ft_gelu_forward(float *out, const float *inp, size_t N, enum ft_gelu_approx approx)
{
    if (approx == FT_GELU_TANH) {
        for (size_t i = 0; i < N; i++)
            out[i] = gelu_tanh(inp[i]);
        return;
    }
    for (size_t i = 0; i < N; i++)
        out[i] = gelu_erf(inp[i]);
}

void ft_gelu_backward(float *dinp, const float *dout, const float *inp, size_t N,
                      enum ft_gelu_approx approx)
{
    if (approx == FT_GELU_TANH) {
        for (size_t i = 0; i < N; i++)
            dinp[i] = dout[i] * gelu_tanh_grad(inp[i]);
        return;
    }
    for (size_t i = 0; i < N; i++)
        dinp[i] = dout[i] * gelu_erf_grad(inp[i]);
}

void ft_tanh_forward(float *out, const float *inp, size_t N)
{
    for (size_t i = 0; i < N; i++)
        out[i] = tanhf(inp[i]);
}

void ft_tanh_backward(float *dinp, const float *dout, const float *out, size_t N)
{
    for (size_t i = 0; i < N; i++)
        dinp[i] = dout[i] * (1.0f - out[i] * out[i]);
}

void ft_sigmoid_forward(float *out, const float *inp, size_t N)
{
    for (size_t i = 0; i < N; i++)
        out[i] = 1.0f / (1.0f + expf(-inp[i]));
}

void ft_sigmoid_backward(float *dinp, const float *dout, const float *out, size_t N)
{
    for (size_t i = 0; i < N; i++)
        dinp[i] = dout[i] * out[i] * (1.0f - out[i]);
}

/* ---- normalisation ---- */

/* sum of p[0..n) in double, four independent accumulators (one long chain of dependent double
 * adds would cost its latency per value). */
static double sum_d(const float *p, int n)
{
    double a[4] = {0, 0, 0, 0};
    int i = 0;
    for (; i + 4 <= n; i += 4)
        for (int k = 0; k < 4; k++)
            a[k] += p[i + k];
    for (; i < n; i++)
        a[0] += p[i];
    return (a[0] + a[1]) + (a[2] + a[3]);
}

/* sum of (p - mu)^2 over p[0..n), as sum_d. */
static double sum_sq_dev(const float *p, int n, double mu)
{
    double a[4] = {0, 0, 0, 0};
    int i = 0;
    for (; i + 4 <= n; i += 4)
        for (int k = 0; k < 4; k++)
            a[k] += (p[i + k] - mu) * (p[i + k] - mu);
    for (; i < n; i++)
        a[0] += (p[i] - mu) * (p[i] - mu);
    return (a[0] + a[1]) + (a[2] + a[3]);
}

/* sum g and sum g * (x - m) r over n values, as sum_d (*sg, *sgx accumulate). */
static void sum_grad(const float *g, const float *x, int n, float m, float r, double *sg,
                     double *sgx)
{
    double a[4] = {0, 0, 0, 0}, b[4] = {0, 0, 0, 0};
    int i = 0;
    for (; i + 4 <= n; i += 4)
        for (int k = 0; k < 4; k++) {
            a[k] += g[i + k];
            b[k] += (double)g[i + k] * ((x[i + k] - m) * r);
        }
    for (; i < n; i++) {
        a[0] += g[i];
        b[0] += (double)g[i] * ((x[i] - m) * r);
    }
    *sg += (a[0] + a[1]) + (a[2] + a[3]);
    *sgx += (b[0] + b[1]) + (b[2] + b[3]);
}

#ifdef NN_X86
/* The AVX2 paths of the three sums above run four rows p + q st (q = 0 .. 3) at once. A row's
 * accumulators a[0..3] are the lanes of one vector and take the scalar loop's operations in its
 * order (widening float -> double is exact; no FMA); the rows are independent chains whose adds
 * overlap, where one row alone waits on each add's latency as the scalar loop does.
 * Every value is the scalar path's; only which NaN comes out when two different NaNs meet
 * (NaN and -NaN, a NaN and inf - inf) may differ, as x86 returns the first operand's and the
 * compiler orders commutative operands as it likes (the scalar code at -O1 and -O2 already
 * differ there). A NaN in batch norm fails the training step either way. */

/* sum + sum_d(row q) for q = 0 .. rows-1 (rows <= 4), in order. */
__attribute__((target("avx2"), always_inline)) static inline double
sum_d_avx2(double sum, const float *p, size_t st, int n, int rows)
{
    __m256d a[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(),
                    _mm256_setzero_pd()};
    int i0 = n / 4 * 4;
    for (int i = 0; i < i0; i += 4)
#pragma GCC unroll 4
        for (int q = 0; q < rows; q++)
            a[q] = _mm256_add_pd(a[q], _mm256_cvtps_pd(_mm_loadu_ps(p + q * st + i)));
    for (int q = 0; q < rows; q++) {
        double l[4];
        _mm256_storeu_pd(l, a[q]);
        for (int i = i0; i < n; i++)
            l[0] += p[q * st + i];
        sum += (l[0] + l[1]) + (l[2] + l[3]);
    }
    return sum;
}

/* ss + sum_sq_dev(row q, mu) for q = 0 .. rows-1 (rows <= 4), in order. */
__attribute__((target("avx2"), always_inline)) static inline double
sum_sq_dev_avx2(double ss, const float *p, size_t st, int n, double mu, int rows)
{
    __m256d a[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(),
                    _mm256_setzero_pd()};
    __m256d vmu = _mm256_set1_pd(mu);
    int i0 = n / 4 * 4;
    for (int i = 0; i < i0; i += 4)
#pragma GCC unroll 4
        for (int q = 0; q < rows; q++) {
            __m256d d = _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(p + q * st + i)), vmu);
            a[q] = _mm256_add_pd(a[q], _mm256_mul_pd(d, d));
        }
    for (int q = 0; q < rows; q++) {
        double l[4];
        _mm256_storeu_pd(l, a[q]);
        for (int i = i0; i < n; i++) {
            double d = p[q * st + i] - mu;
            l[0] += d * d;
        }
        ss += (l[0] + l[1]) + (l[2] + l[3]);
    }
    return ss;
}

/* sum_grad of rows q = 0 .. rows-1 (rows <= 4) of g and x, accumulated into *sg, *sgx in row
 * order. */
__attribute__((target("avx2"), always_inline)) static inline void
sum_grad_avx2(const float *g, const float *x, size_t st, int n, float m, float r, double *sg,
              double *sgx, int rows)
{
    __m256d a[4], b[4];
    for (int q = 0; q < 4; q++)
        a[q] = b[q] = _mm256_setzero_pd();
    __m128 vm = _mm_set1_ps(m), vr = _mm_set1_ps(r);
    int i0 = n / 4 * 4;
    for (int i = 0; i < i0; i += 4)
#pragma GCC unroll 4
        for (int q = 0; q < rows; q++) {
            __m256d gd = _mm256_cvtps_pd(_mm_loadu_ps(g + q * st + i));
            __m128 xhat = _mm_mul_ps(_mm_sub_ps(_mm_loadu_ps(x + q * st + i), vm), vr);
            a[q] = _mm256_add_pd(a[q], gd);
            b[q] = _mm256_add_pd(b[q], _mm256_mul_pd(_mm256_cvtps_pd(xhat), gd));
        }
    for (int q = 0; q < rows; q++) {
        double la[4], lb[4];
        _mm256_storeu_pd(la, a[q]);
        _mm256_storeu_pd(lb, b[q]);
        for (int i = i0; i < n; i++) {
            double gi = g[q * st + i];
            la[0] += gi;
            lb[0] += gi * ((x[q * st + i] - m) * r);
        }
        *sg += (la[0] + la[1]) + (la[2] + la[3]);
        *sgx += (lb[0] + lb[1]) + (lb[2] + lb[3]);
    }
}

/* All ones in the lanes below k (k >= 8: all eight). */
__attribute__((target("avx2"))) static inline __m256i lanes_below(int k)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* channel_stats on the AVX2 sums: four rows at a time, then one. */
__attribute__((target("avx2"))) static void channel_stats_avx2(const float *x, int N, int C, int S,
                                                               int c, double *mean, double *var)
{
    const float *x0 = x + (size_t)c * S;
    size_t st = (size_t)C * S;
    double sum = 0.0, ss = 0.0;
    int n = 0;
    for (; n + 4 <= N; n += 4)
        sum = sum_d_avx2(sum, x0 + n * st, st, S, 4);
    for (; n < N; n++)
        sum = sum_d_avx2(sum, x0 + n * st, st, S, 1);
    double mu = sum / ((double)N * S);
    for (n = 0; n + 4 <= N; n += 4)
        ss = sum_sq_dev_avx2(ss, x0 + n * st, st, S, mu, 4);
    for (; n < N; n++)
        ss = sum_sq_dev_avx2(ss, x0 + n * st, st, S, mu, 1);
    *mean = mu;
    *var = ss / ((double)N * S);
}

/* One batch norm output row: o (n) = (x - m) scale + b (o may be x); the last < 8 masked. */
__attribute__((target("avx2"))) static void bn_row_avx2(float *o, const float *x, int n, float m,
                                                        float scale, float b)
{
    __m256 vm = _mm256_set1_ps(m), vs = _mm256_set1_ps(scale), vb = _mm256_set1_ps(b);
    for (int i = 0; i < n; i += 8) {
        __m256i keep = lanes_below(n - i);
        __m256 v = _mm256_mul_ps(_mm256_sub_ps(_mm256_maskload_ps(x + i, keep), vm), vs);
        _mm256_maskstore_ps(o + i, keep, _mm256_add_ps(v, vb));
    }
}

/* One batch norm input gradient row: xhat = (x - m) r, d (n) = k (fm g - fsd - xhat fsdx)
 * with f = {m, r, k, fm, fsd, fsdx}, the scalar loop's operations (d may be g); the last < 8
 * masked. */
__attribute__((target("avx2"))) static void
bn_grad_row_avx2(float *d, const float *g, const float *x, int n, const float f[6])
{
    __m256 m = _mm256_set1_ps(f[0]), r = _mm256_set1_ps(f[1]), k = _mm256_set1_ps(f[2]);
    __m256 fm = _mm256_set1_ps(f[3]), fsd = _mm256_set1_ps(f[4]), fsdx = _mm256_set1_ps(f[5]);
    for (int i = 0; i < n; i += 8) {
        __m256i keep = lanes_below(n - i);
        __m256 xhat = _mm256_mul_ps(_mm256_sub_ps(_mm256_maskload_ps(x + i, keep), m), r);
        __m256 t = _mm256_sub_ps(_mm256_mul_ps(_mm256_maskload_ps(g + i, keep), fm), fsd);
        t = _mm256_sub_ps(t, _mm256_mul_ps(xhat, fsdx));
        _mm256_maskstore_ps(d + i, keep, _mm256_mul_ps(t, k));
    }
}

/* ft_batchnorm_backward with the AVX2 sums and rows. */
__attribute__((target("avx2"))) static void
batchnorm_backward_avx2(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                        const float *mean, const float *rstd, const float *w, int N, int C, int S,
                        int training)
{
    double M = (double)N * S;
    size_t st = (size_t)C * S;
    for (int c = 0; c < C; c++) {
        double sd = 0.0, sdx = 0.0;
        float m = mean[c], r = rstd[c];
        const float *g0 = dout + (size_t)c * S, *x0 = inp + (size_t)c * S;
        int n = 0;
        for (; n + 4 <= N; n += 4)
            sum_grad_avx2(g0 + n * st, x0 + n * st, st, S, m, r, &sd, &sdx, 4);
        for (; n < N; n++)
            sum_grad_avx2(g0 + n * st, x0 + n * st, st, S, m, r, &sd, &sdx, 1);
        dw[c] += (float)sdx;
        db[c] += (float)sd;
        if (!dinp)
            continue;
        float wr = w[c] * r, k = training ? (float)(wr / M) : wr;
        float fm = training ? (float)M : 1.0f, fsd = training ? (float)sd : 0.0f;
        float fsdx = training ? (float)sdx : 0.0f;
        const float f[6] = {m, r, k, fm, fsd, fsdx};
        for (n = 0; n < N; n++)
            bn_grad_row_avx2(dinp + n * st + (size_t)c * S, g0 + n * st, x0 + n * st, S, f);
    }
}
#endif

/* Biased mean and variance of channel c of x (N, C, S), two passes in double. */
static void channel_stats(const float *x, int N, int C, int S, int c, double *mean, double *var)
{
    double sum = 0.0, ss = 0.0;
    for (int n = 0; n < N; n++)
        sum += sum_d(x + ((size_t)n * C + c) * S, S);
    double mu = sum / ((double)N * S);
    for (int n = 0; n < N; n++)
        ss += sum_sq_dev(x + ((size_t)n * C + c) * S, S, mu);
    *mean = mu;
    *var = ss / ((double)N * S);
}

/* Channel c's biased mean and variance (channel_stats), through AVX2 when simd. */
static void bn_stats(const float *x, int N, int C, int S, int c, double *mean, double *var,
                     int simd)
{
#ifdef NN_X86
    if (simd) {
        channel_stats_avx2(x, N, C, S, c, mean, var);
        return;
    }
#endif
    (void)simd;
    channel_stats(x, N, C, S, c, mean, var);
}

/* o (n) = (x - m) scale + bias, through AVX2 when simd. */
static void bn_row(float *o, const float *x, int n, float m, float scale, float bias, int simd)
{
#ifdef NN_X86
    if (simd) {
        bn_row_avx2(o, x, n, m, scale, bias);
        return;
    }
#endif
    (void)simd;
    for (int i = 0; i < n; i++)
        o[i] = (x[i] - m) * scale + bias;
}

void ft_batchnorm_forward(float *out, float *mean, float *rstd, float *running_mean,
                          float *running_var, const float *inp, const float *w, const float *b,
                          int N, int C, int S, int training)
{
    /* out (N, C, S), mean (C), rstd (C), running_mean (C), running_var (C), inp (N, C, S),
     * w (C), b (C) */
#ifdef NN_X86
    int simd = have_avx2();
#else
    int simd = 0;
#endif
    double M = (double)N * S;
    for (int c = 0; c < C; c++) {
        double mu, var;
        if (training) {
            bn_stats(inp, N, C, S, c, &mu, &var, simd);
            if (running_mean) {
                double unbiased = M > 1 ? var * M / (M - 1) : var;
                running_mean[c] =
                    (float)((1.0 - FT_BN_MOMENTUM) * running_mean[c] + FT_BN_MOMENTUM * mu);
                running_var[c] =
                    (float)((1.0 - FT_BN_MOMENTUM) * running_var[c] + FT_BN_MOMENTUM * unbiased);
            }
        } else {
            mu = running_mean[c];
            var = running_var[c];
        }
        float m = (float)mu, r = (float)(1.0 / sqrt(var + FT_NORM_EPS));
        float scale = w[c] * r;
        mean[c] = m;
        rstd[c] = r;
        for (int n = 0; n < N; n++)
            bn_row(out + ((size_t)n * C + c) * S, inp + ((size_t)n * C + c) * S, S, m, scale, b[c],
                   simd);
    }
}

void ft_batchnorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                           const float *mean, const float *rstd, const float *w, int N, int C,
                           int S, int training)
{
    /* dinp (N, C, S), dw (C), db (C), dout (N, C, S), inp (N, C, S), mean (C), rstd (C), w (C) */
#ifdef NN_X86
    if (have_avx2()) {
        batchnorm_backward_avx2(dinp, dw, db, dout, inp, mean, rstd, w, N, C, S, training);
        return;
    }
#endif
    double M = (double)N * S;
    for (int c = 0; c < C; c++) {
        double sd = 0.0, sdx = 0.0;
        float m = mean[c], r = rstd[c];
        for (int n = 0; n < N; n++) {
            size_t o = ((size_t)n * C + c) * S;
            sum_grad(dout + o, inp + o, S, m, r, &sd, &sdx);
        }
        dw[c] += (float)sdx;
        db[c] += (float)sd;
        if (!dinp)
            continue;
        float k = training ? (float)(w[c] * r / M) : w[c] * r;
        float fm = training ? (float)M : 1.0f, fsd = training ? (float)sd : 0.0f;
        float fsdx = training ? (float)sdx : 0.0f;
        for (int n = 0; n < N; n++) {
            size_t o = ((size_t)n * C + c) * S;
            for (int i = 0; i < S; i++) {
                float xhat = (inp[o + i] - m) * r;
                dinp[o + i] = k * (fm * dout[o + i] - fsd - xhat * fsdx);
            }
        }
    }
}

void ft_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                          const float *b, int B, int D)
{
    /* out (B, D), mean (B), rstd (B), inp (B, D), w (D), b (D) */
    for (int i = 0; i < B; i++) {
        const float *x = inp + (size_t)i * D;
        float *o = out + (size_t)i * D;
        double mu, var;
        channel_stats(x, 1, 1, D, 0, &mu, &var);
        float m = (float)mu, r = (float)(1.0 / sqrt(var + FT_NORM_EPS));
        for (int k = 0; k < D; k++)
            o[k] = (x[k] - m) * r * w[k] + b[k];
        mean[i] = m;
        rstd[i] = r;
    }
}

void ft_layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                           const float *mean, const float *rstd, const float *w, int B, int D)
{
    /* dinp (B, D), dw (D), db (D), dout (B, D), inp (B, D), mean (B), rstd (B), w (D) */
    for (int i = 0; i < B; i++) {
        const float *x = inp + (size_t)i * D, *g = dout + (size_t)i * D;
        float *d = dinp + (size_t)i * D;
        float m = mean[i], r = rstd[i];
        double sg = 0.0, sgx = 0.0;
        for (int k = 0; k < D; k++) {
            float xhat = (x[k] - m) * r;
            sg += (double)g[k] * w[k];
            sgx += (double)g[k] * w[k] * xhat;
            dw[k] += g[k] * xhat;
            db[k] += g[k];
        }
        float mg = (float)(sg / D), mgx = (float)(sgx / D);
        for (int k = 0; k < D; k++) {
            float xhat = (x[k] - m) * r;
            d[k] = r * (g[k] * w[k] - mg - xhat * mgx);
        }
    }
}

/* ---- dropout ---- */

void ft_dropout_forward(float *out, float *mask, const float *inp, size_t N, float p,
                        struct ft_rng *rng, int training)
{
    /* out (N), mask (N), inp (N) */
    if (!training || p <= 0.0f) {
        if (out != inp)
            memmove(out, inp, N * sizeof *out);
        for (size_t i = 0; mask && i < N; i++)
            mask[i] = 1.0f;
        return;
    }
    float scale = 1.0f / (1.0f - p);
    for (size_t i = 0; i < N; i++) {
        float m = ft_rng_uniform(rng) >= (double)p ? scale : 0.0f;
        mask[i] = m;
        out[i] = inp[i] * m;
    }
}

void ft_dropout_backward(float *dinp, const float *dout, const float *mask, size_t N)
{
    for (size_t i = 0; i < N; i++)
        dinp[i] = dout[i] * mask[i];
}

/* ---- convolution ---- */

int ft_conv2d_out_h(const struct ft_conv2d_shape *s)
{
    return (s->H + 2 * s->pad - s->KH) / s->stride + 1;
}

int ft_conv2d_out_w(const struct ft_conv2d_shape *s)
{
    return (s->W + 2 * s->pad - s->KW) / s->stride + 1;
}

size_t ft_conv2d_scratch_size(const struct ft_conv2d_shape *s)
{
    size_t BP = (size_t)s->B * ft_conv2d_out_h(s) * ft_conv2d_out_w(s);
    return (size_t)s->C * s->KH * s->KW * BP + (size_t)s->OC * BP;
}

/* First and one-past-last output column ow whose input column ow*stride + off lies in
 * [0, W). */
static void valid_cols(int off, int stride, int W, int Wo, int *lo, int *hi)
{
    int a = off >= 0 ? 0 : (-off + stride - 1) / stride;
    int b = W - 1 - off < 0 ? 0 : (W - 1 - off) / stride + 1;
    *lo = a < Wo ? a : Wo;
    *hi = b < Wo ? b : Wo;
    if (*hi < *lo)
        *hi = *lo;
}

/* One im2col row segment: dst (Ho, Wo) = xpad[oh*stride + kh, ow*stride + kw] of one (H, W)
 * plane, 0 in the padding. */
static void im2col_plane(float *dst, const float *plane, const struct ft_conv2d_shape *s, int kh,
                         int kw, int Ho, int Wo)
{
    int lo, hi, st = s->stride, off = kw - s->pad;
    valid_cols(off, st, s->W, Wo, &lo, &hi);
    for (int oh = 0; oh < Ho; oh++) {
        int ih = oh * st - s->pad + kh;
        float *d = dst + (size_t)oh * Wo;
        if (ih < 0 || ih >= s->H) {
            memset(d, 0, (size_t)Wo * sizeof *d);
            continue;
        }
        const float *row = plane + (size_t)ih * s->W;
        for (int ow = 0; ow < lo; ow++)
            d[ow] = 0.0f;
        if (st == 1 && hi > lo) /* stride 1: the valid columns are one contiguous run */
            memcpy(d + lo, row + lo + off, (size_t)(hi - lo) * sizeof *d);
        for (int ow = lo; st != 1 && ow < hi; ow++)
            d[ow] = row[ow * st + off];
        for (int ow = hi; ow < Wo; ow++)
            d[ow] = 0.0f;
    }
}

/* dst (n) += src (n), eight at a time through local copies (the buffers do not overlap). */
static void add_run(float *dst, const float *src, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        float a[8], b[8];
        memcpy(a, dst + i, sizeof a);
        memcpy(b, src + i, sizeof b);
#pragma GCC unroll 8
        for (int u = 0; u < 8; u++)
            a[u] += b[u];
        memcpy(dst + i, a, sizeof a);
    }
    for (; i < n; i++)
        dst[i] += src[i];
}

/* The adjoint of im2col_plane: plane += src scattered back (padding dropped). */
static void col2im_plane(float *plane, const float *src, const struct ft_conv2d_shape *s, int kh,
                         int kw, int Ho, int Wo)
{
    int lo, hi, st = s->stride, off = kw - s->pad;
    valid_cols(off, st, s->W, Wo, &lo, &hi);
    for (int oh = 0; oh < Ho; oh++) {
        int ih = oh * st - s->pad + kh;
        if (ih < 0 || ih >= s->H)
            continue;
        const float *g = src + (size_t)oh * Wo;
        float *row = plane + (size_t)ih * s->W;
        if (st == 1) {
            add_run(row + lo + off, g + lo, hi - lo);
            continue;
        }
        for (int ow = lo; ow < hi; ow++)
            row[ow * st + off] += g[ow];
    }
}

/* cols (C*KH*KW, B*Ho*Wo) from x (B, C, H, W): row (c, kh, kw), column (n, oh, ow). */
static void im2col(float *cols, const float *x, const struct ft_conv2d_shape *s)
{
    int Ho = ft_conv2d_out_h(s), Wo = ft_conv2d_out_w(s);
    size_t P = (size_t)Ho * Wo, BP = (size_t)s->B * P, HW = (size_t)s->H * s->W;
    for (int c = 0; c < s->C; c++)
        for (int kh = 0; kh < s->KH; kh++)
            for (int kw = 0; kw < s->KW; kw++) {
                float *row = cols + ((size_t)(c * s->KH + kh) * s->KW + kw) * BP;
                for (int n = 0; n < s->B; n++)
                    im2col_plane(row + n * P, x + ((size_t)n * s->C + c) * HW, s, kh, kw, Ho, Wo);
            }
}

/* x (B, C, H, W) = col2im(cols) (written). */
static void col2im(float *x, const float *cols, const struct ft_conv2d_shape *s)
{
    int Ho = ft_conv2d_out_h(s), Wo = ft_conv2d_out_w(s);
    size_t P = (size_t)Ho * Wo, BP = (size_t)s->B * P, HW = (size_t)s->H * s->W;
    memset(x, 0, (size_t)s->B * s->C * HW * sizeof *x);
    for (int c = 0; c < s->C; c++)
        for (int kh = 0; kh < s->KH; kh++)
            for (int kw = 0; kw < s->KW; kw++) {
                const float *row = cols + ((size_t)(c * s->KH + kh) * s->KW + kw) * BP;
                for (int n = 0; n < s->B; n++)
                    col2im_plane(x + ((size_t)n * s->C + c) * HW, row + n * P, s, kh, kw, Ho, Wo);
            }
}

void ft_conv2d_forward(float *out, float *scratch, const float *inp, const float *w, const float *b,
                       const struct ft_conv2d_shape *s)
{
    /* out (B, OC, Ho, Wo), scratch (ft_conv2d_scratch_size), inp (B, C, H, W),
     * w (OC, C, KH, KW), b (OC) */
    size_t P = (size_t)ft_conv2d_out_h(s) * ft_conv2d_out_w(s), BP = (size_t)s->B * P;
    int CKK = s->C * s->KH * s->KW;
    float *cols = scratch, *tmp = scratch + (size_t)CKK * BP;
    if (BP == 0)
        return;
    im2col(cols, inp, s);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s->OC, (int)BP, CKK, 1.0f, w, CKK, cols,
                (int)BP, 0.0f, tmp, (int)BP);
    for (int n = 0; n < s->B; n++)
        for (int oc = 0; oc < s->OC; oc++) {
            float *dst = out + ((size_t)n * s->OC + oc) * P;
            const float *src = tmp + (size_t)oc * BP + (size_t)n * P;
            float bias = b ? b[oc] : 0.0f;
            for (size_t i = 0; i < P; i++)
                dst[i] = src[i] + bias;
        }
}

/* out[r] += (float) of the sequential double sum of row r of x (rows, n), r = 0 .. rows-1.
 * Eight rows at a time as eight independent chains: each row's sum is the same additions in
 * the same order, but one chain alone waits on every add's latency (the cnn's bias gradient:
 * 100,352 values a channel in its first layer). */
static void row_sums_add(float *out, const float *x, int rows, size_t n)
{
    int r = 0;
    for (; r + 8 <= rows; r += 8) {
        double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        const float *p = x + (size_t)r * n;
        for (size_t i = 0; i < n; i++)
#pragma GCC unroll 8
            for (int k = 0; k < 8; k++)
                s[k] += p[(size_t)k * n + i];
        for (int k = 0; k < 8; k++)
            out[r + k] += (float)s[k];
    }
    for (; r < rows; r++) {
        double sum = 0.0;
        for (size_t i = 0; i < n; i++)
            sum += x[(size_t)r * n + i];
        out[r] += (float)sum;
    }
}

void ft_conv2d_backward(float *dinp, float *dw, float *db, float *scratch, const float *dout,
                        const float *inp, const float *w, const struct ft_conv2d_shape *s)
{
    /* dinp (B, C, H, W), dw (OC, C, KH, KW), db (OC), scratch, dout (B, OC, Ho, Wo),
     * inp (B, C, H, W), w (OC, C, KH, KW) */
    size_t P = (size_t)ft_conv2d_out_h(s) * ft_conv2d_out_w(s), BP = (size_t)s->B * P;
    int CKK = s->C * s->KH * s->KW;
    float *cols = scratch, *tmp = scratch + (size_t)CKK * BP;
    if (BP == 0)
        return;
    for (int n = 0; n < s->B; n++)
        for (int oc = 0; oc < s->OC; oc++)
            memcpy(tmp + (size_t)oc * BP + (size_t)n * P, dout + ((size_t)n * s->OC + oc) * P,
                   P * sizeof *tmp);
    if (db)
        row_sums_add(db, tmp, s->OC, BP);
    im2col(cols, inp, s);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s->OC, CKK, (int)BP, 1.0f, tmp, (int)BP,
                cols, (int)BP, 1.0f, dw, CKK);
    if (!dinp)
        return;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, CKK, (int)BP, s->OC, 1.0f, w, CKK, tmp,
                (int)BP, 0.0f, cols, (int)BP);
    col2im(dinp, cols, s);
}

/* ---- pooling ---- */

/* Index of the later of i and j when x[j] wins: strictly greater or NaN (torch keeps the first
 * maximum and lets NaN win). */
static inline int pool_pick(const float *x, int i, int j)
{
    return x[j] > x[i] || isnan(x[j]) ? j : i;
}

/* 2x2 window at flat index t: a tournament over (t, t+1) and (t+W, t+W+1), scan order kept.
 * Without NaN (checked once through the sum) the picks are compare-and-mask arithmetic, no
 * branches: argmax over random data would mispredict half of them. */
static inline int argmax2x2(const float *x, int t, int W)
{
    if (isnan(x[t] + x[t + 1] + x[t + W] + x[t + W + 1])) {
        int top = pool_pick(x, t, t + 1), bottom = pool_pick(x, t + W, t + W + 1);
        return pool_pick(x, top, bottom);
    }
    int top = t + (x[t + 1] > x[t]);
    int bottom = t + W + (x[t + W + 1] > x[t + W]);
    return top ^ ((bottom ^ top) & -(x[bottom] > x[top]));
}

static int argmax_window(const float *x, int t, int W, int k)
{
    if (k == 2)
        return argmax2x2(x, t, W);
    int bi = t;
    for (int i = 0; i < k; i++)
        for (int j = 0; j < k; j++)
            bi = pool_pick(x, bi, t + i * W + j);
    return bi;
}

#ifdef NN_X86
/* pool_pick on eight lanes: all ones where j wins against i (xj > xi, or xj NaN). */
__attribute__((target("avx2"))) static inline __m256 pick_lanes(__m256 xi, __m256 xj)
{
    return _mm256_or_ps(_mm256_cmp_ps(xj, xi, _CMP_GT_OQ), _mm256_cmp_ps(xj, xj, _CMP_UNORD_Q));
}

/* The even and odd columns of the 2 n <= 16 floats at p, in order (masked loads: nothing past
 * p + 2 n is read; the lanes from n on are 0). */
__attribute__((target("avx2"))) static inline void even_odd(const float *p, int n, __m256 *ev,
                                                            __m256 *od)
{
    __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256 a = _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(2 * n), lane));
    __m256 b = _mm256_maskload_ps(p + 8, _mm256_cmpgt_epi32(_mm256_set1_epi32(2 * n - 8), lane));
    /* shuffle_ps works per 128-bit half: (a0 a2 b0 b2 | a4 a6 b4 b6), then 64-bit pairs 0 2 1 3 */
    __m256d e = _mm256_castps_pd(_mm256_shuffle_ps(a, b, 0x88));
    __m256d o = _mm256_castps_pd(_mm256_shuffle_ps(a, b, 0xdd));
    *ev = _mm256_castpd_ps(_mm256_permute4x64_pd(e, 0xd8));
    *od = _mm256_castpd_ps(_mm256_permute4x64_pd(o, 0xd8));
}

/* One output row of 2x2 max pooling: o (Wo) and argmax a (Wo) of the windows whose top-left
 * is at flat index t0 + 2 ow of the plane x (., W). Eight windows a vector, each lane the
 * tournament of argmax2x2 with pool_pick's rule (the same picks with or without NaN); masked
 * stores for the last < 8. */
__attribute__((target("avx2"))) static void maxpool2_row_avx2(float *o, int32_t *a, const float *x,
                                                              int t0, int W, int Wo)
{
    __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int ow = 0; ow < Wo; ow += 8) {
        int n = Wo - ow < 8 ? Wo - ow : 8, t = t0 + 2 * ow;
        __m256 e0, o0, e1, o1;
        even_odd(x + t, n, &e0, &o0);
        even_odd(x + t + W, n, &e1, &o1);
        __m256i it = _mm256_add_epi32(_mm256_set1_epi32(t), _mm256_add_epi32(lane, lane));
        __m256i ib = _mm256_add_epi32(it, _mm256_set1_epi32(W));
        __m256 top = pick_lanes(e0, o0), bottom = pick_lanes(e1, o1);
        __m256 vt = _mm256_blendv_ps(e0, o0, top), vb = _mm256_blendv_ps(e1, o1, bottom);
        it = _mm256_sub_epi32(it, _mm256_castps_si256(top)); /* + 1 where the odd column won */
        ib = _mm256_sub_epi32(ib, _mm256_castps_si256(bottom));
        __m256 last = pick_lanes(vt, vb);
        __m256i bi = _mm256_castps_si256(
            _mm256_blendv_ps(_mm256_castsi256_ps(it), _mm256_castsi256_ps(ib), last));
        __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane);
        _mm256_maskstore_ps(o + ow, keep, _mm256_blendv_ps(vt, vb, last));
        _mm256_maskstore_epi32(a + ow, keep, bi);
    }
}
#endif

void ft_maxpool2d_forward(float *out, int32_t *argmax, const float *inp, int B, int C, int H, int W,
                          int k)
{
    /* out (B, C, H/k, W/k), argmax (B, C, H/k, W/k), inp (B, C, H, W) */
    int Ho = H / k, Wo = W / k;
    for (size_t pl = 0; pl < (size_t)B * C; pl++) {
        const float *x = inp + pl * H * W;
        float *o = out + pl * Ho * Wo;
        int32_t *a = argmax + pl * Ho * Wo;
#ifdef NN_X86
        if (k == 2 && have_avx2()) {
            for (int oh = 0; oh < Ho; oh++)
                maxpool2_row_avx2(o + oh * Wo, a + oh * Wo, x, 2 * oh * W, W, Wo);
            continue;
        }
#endif
        for (int oh = 0; oh < Ho; oh++)
            for (int ow = 0; ow < Wo; ow++) {
                int bi = argmax_window(x, oh * k * W + ow * k, W, k);
                o[oh * Wo + ow] = x[bi];
                a[oh * Wo + ow] = bi;
            }
    }
}

void ft_maxpool2d_backward(float *dinp, const float *dout, const int32_t *argmax, int B, int C,
                           int H, int W, int k)
{
    /* dinp (B, C, H, W), dout (B, C, H/k, W/k), argmax (B, C, H/k, W/k) */
    size_t P = (size_t)(H / k) * (W / k);
    memset(dinp, 0, (size_t)B * C * H * W * sizeof *dinp);
    for (size_t pl = 0; pl < (size_t)B * C; pl++)
        for (size_t i = 0; i < P; i++)
            dinp[pl * H * W + argmax[pl * P + i]] += dout[pl * P + i];
}

void ft_avgpool2d_forward(float *out, const float *inp, int B, int C, int H, int W, int k)
{
    /* out (B, C, H/k, W/k), inp (B, C, H, W) */
    int Ho = H / k, Wo = W / k;
    float inv = 1.0f / (float)(k * k);
    for (size_t pl = 0; pl < (size_t)B * C; pl++) {
        const float *x = inp + pl * H * W;
        for (int oh = 0; oh < Ho; oh++)
            for (int ow = 0; ow < Wo; ow++) {
                float s = 0.0f;
                for (int i = 0; i < k; i++)
                    for (int j = 0; j < k; j++)
                        s += x[(oh * k + i) * W + ow * k + j];
                out[(pl * Ho + oh) * Wo + ow] = s * inv;
            }
    }
}

void ft_avgpool2d_backward(float *dinp, const float *dout, int B, int C, int H, int W, int k)
{
    /* dinp (B, C, H, W), dout (B, C, H/k, W/k) */
    int Ho = H / k, Wo = W / k;
    float inv = 1.0f / (float)(k * k);
    memset(dinp, 0, (size_t)B * C * H * W * sizeof *dinp);
    for (size_t pl = 0; pl < (size_t)B * C; pl++) {
        float *d = dinp + pl * H * W;
        for (int oh = 0; oh < Ho; oh++)
            for (int ow = 0; ow < Wo; ow++) {
                float g = dout[(pl * Ho + oh) * Wo + ow] * inv;
                for (int i = 0; i < k; i++)
                    for (int j = 0; j < k; j++)
                        d[(oh * k + i) * W + ow * k + j] = g;
            }
    }
}

void ft_global_avgpool_forward(float *out, const float *inp, int B, int C, int S)
{
    /* out (B, C), inp (B, C, S) */
    for (size_t pl = 0; pl < (size_t)B * C; pl++) {
        double sum = 0.0;
        for (int i = 0; i < S; i++)
            sum += inp[pl * S + i];
        out[pl] = (float)(sum / S);
    }
}

void ft_global_avgpool_backward(float *dinp, const float *dout, int B, int C, int S)
{
    /* dinp (B, C, S), dout (B, C) */
    for (size_t pl = 0; pl < (size_t)B * C; pl++) {
        float g = dout[pl] / (float)S;
        for (int i = 0; i < S; i++)
            dinp[pl * S + i] = g;
    }
}

void ft_flatten_forward(float *out, const float *inp, size_t N)
{
    if (out != inp)
        memmove(out, inp, N * sizeof *out);
}

void ft_flatten_backward(float *dinp, const float *dout, size_t N)
{
    if (dinp != dout)
        memmove(dinp, dout, N * sizeof *dinp);
}
