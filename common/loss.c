/* loss.c — metric-learning losses and miners, pml 2.x semantics (see loss.h and
 * tests/fixtures/torch/README.md).
 *
 * Two layers. (1) The colleague's TripletMarginLoss (AvgNonZero) with an optional
 * TripletMarginMiner, ft_triplet_margin_loss: the B x B distance matrix (see Distances) of
 * the normalised (or raw) embeddings. The triplets are never enumerated: per anchor
 * the negatives and the positives are sorted by distance (radix sort) and one sweep over the
 * positives keeps three cursors into the negatives, so the kept/active negatives of each
 * (a, p) are a range whose count, loss sum (prefix sums) and gradient counts (difference
 * array) cost O(1): O(B^2) per batch instead of O(B^3). The counts dL/dD are scaled by
 * 1/num_nonzero and pushed back to the embeddings with one more sgemm, then through the L2
 * normalisation. ft_triplet_mine enumerates with the same float predicates (the tests check both
 * agree). Scratch buffers are allocated per call and freed before returning.
 *
 * (2) ft_loss, the losses and miners by name: one option table per loss and miner drives
 * validation, defaults and the normalised JSON. Every distance-based loss (triplet, contrastive,
 * NTXent, multi-similarity) fills the same dL/dD matrix and reuses the one backward (sgemm +
 * normalisation; a sparse dL/dD, at most 4 B entries as BatchHardMiner's two per anchor, is
 * applied pair by pair instead, O(B D)); pair losses and pair miners work on a (B, B) selection
 * mask in O(B^2); TripletMarginLoss keeps the sorted sweep and enumerates triplets (O(B P N))
 * only for swap, smooth_loss and BatchHardMiner (its extremes found eight columns at a time with
 * AVX2). CLIPLoss and ArcFaceLoss are two sgemms and a softmax each.
 * The object owns its scratch (grown to the largest batch seen, so that training steps after
 * the first allocate nothing) and ArcFace's W and gradient.
 *
 * Distances (see loss.h): cosine d = 1 - <n_i, n_j> from one Gram sgemm; euclidean d from the
 * difference vectors, d = sqrtf(sum_k (x_ik - x_jk)^2) in float, each square added by an FMA:
 * no cancellation, so near pairs (a collapsed batch, as batch-hard training often starts, has
 * every pair near) are as exact as far ones, and identical rows give 0. The pairs above the
 * diagonal go 16 (AVX-512F) or 8 (AVX2) to a vector, one pair per lane, from a transposed copy
 * of the batch, blocks of 4 rows sharing each column load; without SIMD pair by pair: the same
 * operations in the same order, so the same distances on every CPU. For B = D = 128 this costs
 * about what the Gram sgemm alone did. In the dense euclidean backward, near pairs
 * (d^2 < NEAR (|x_i|^2 + |x_j|^2)) have their gradient (x_i - x_j) / d applied directly rather
 * than through the sgemm; d = 0 gives gradient 0.
 *
 * Miner rule with m = d(a,n) - d(a,p): all m <= margin, hard m <= 0, semihard 0 < m <= margin,
 * easy m > margin; a kept triplet's loss is max(0, margin_loss - m). */
#include "loss.h"

#include "nn.h"
#include "rng.h"

#include <cblas.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define NEAR 1e-2

struct work {
    int B, D;
    int euclidean;
    int normalize;
    float *x;     /* (B, D) normalised embeddings, or a copy of the raw ones */
    float *norms; /* (B) row norms saved by the normalisation */
    float *sq;    /* (B) |x_i|^2, when sq_ready */
    int sq_ready;
    float *dist;   /* (B, B) distance matrix */
    float *dd;     /* (B, B) dL/dD, then the symmetric backward weights */
    float *xt;     /* (D, xt_ld(B)) x transposed (euclidean distances) */
    int nonfinite; /* some distance is NaN or infinite */
    size_t cap_x, cap_norms, cap_sq, cap_dist, cap_dd; /* allocated floats of each buffer */
    size_t cap_xt;                                     /* allocated floats of xt */
};

/* Keep a triplet when lo < m <= hi, m = d(a,n) - d(a,p). */
struct miner_bounds {
    float lo, hi;
};

void ft_triplet_opts_default(struct ft_triplet_opts *opts)
{
    opts->margin = 0.05;
    opts->distance = FT_DIST_EUCLIDEAN;
    opts->normalize_embeddings = 1;
    opts->use_miner = 0;
    opts->miner_margin = 0.2;
    opts->type = FT_TRIPLETS_ALL;
}

static struct miner_bounds miner_bounds(const struct ft_triplet_opts *o)
{
    struct miner_bounds mb = {-INFINITY, INFINITY};
    float mm = (float)o->miner_margin;
    if (!o->use_miner)
        return mb;
    switch (o->type) {
    case FT_TRIPLETS_ALL:
        mb.hi = mm;
        break;
    case FT_TRIPLETS_HARD:
        mb.hi = 0.0f;
        break;
    case FT_TRIPLETS_SEMIHARD:
        mb.lo = 0.0f;
        mb.hi = mm;
        break;
    case FT_TRIPLETS_EASY:
        mb.lo = mm;
        break;
    }
    return mb;
}

static void work_free(struct work *w)
{
    free(w->x);
    free(w->norms);
    free(w->sq);
    free(w->dist);
    free(w->dd);
    free(w->xt);
    memset(w, 0, sizeof *w);
}

/* Make *p hold at least n floats (old contents dropped); 0 on ENOMEM (*p is then NULL). */
static int reserve(float **p, size_t *cap, size_t n)
{
    if (*p && n <= *cap)
        return 1;
    free(*p);
    *p = malloc((n ? n : 1) * sizeof **p);
    *cap = *p ? n : 0;
    return *p != NULL;
}

/* Leading dimension of xt: B rounded up to 16 (a block of 16 columns starting at a multiple of
 * 16 below B stays inside). */
static int xt_ld(int B)
{
    return (B + 15) / 16 * 16;
}

/* Size the scratch for a (B, D) batch, growing the buffers when needed (w starts zeroed and
 * may be reused); dd (B, B) is left uninitialised. Returns 0 on ENOMEM (w stays freeable). */
static int work_reserve(struct work *w, int B, int D, int euclidean, int normalize)
{
    size_t bb = (size_t)B * B;
    w->B = B;
    w->D = D;
    w->euclidean = euclidean;
    w->normalize = !euclidean || normalize;
    w->nonfinite = 0;
    w->sq_ready = 0;
    return reserve(&w->x, &w->cap_x, (size_t)B * D) && reserve(&w->norms, &w->cap_norms, B) &&
           reserve(&w->sq, &w->cap_sq, B) && reserve(&w->dist, &w->cap_dist, bb) &&
           reserve(&w->dd, &w->cap_dd, bb) &&
           (!w->euclidean || reserve(&w->xt, &w->cap_xt, (size_t)D * xt_ld(B)));
}

/* Allocate the scratch; returns 0 on ENOMEM (w is then freed). dd is zeroed. */
static int work_alloc(struct work *w, int B, int D, const struct ft_triplet_opts *o)
{
    memset(w, 0, sizeof *w);
    if (!work_reserve(w, B, D, o->distance == FT_DIST_EUCLIDEAN, o->normalize_embeddings)) {
        work_free(w);
        return 0;
    }
    memset(w->dd, 0, (size_t)B * B * sizeof *w->dd);
    return 1;
}

static int is_near(const struct work *w, int i, int j, float d)
{
    return (double)d * d < NEAR * ((double)w->sq[i] + w->sq[j]);
}

/* What tiled_pairs does to each unordered pair (i < j). */
enum pair_op {
    OP_DIST,     /* Gram matrix entry -> distance, mirrored */
    OP_COS_SYM,  /* S_ij = dd_ij + dd_ji, mirrored */
    OP_EUCLID_W, /* S_ij = (dd_ij + dd_ji) / d_ij, mirrored; near pairs applied to gx, S = 0 */
};

static void set_dist(struct work *w, int i, int j, float d)
{
    if (!isfinite(d))
        w->nonfinite = 1;
    w->dist[(size_t)i * w->B + j] = d;
    w->dist[(size_t)j * w->B + i] = d;
}

/* ---- euclidean distances from difference vectors ----
 * d(i, j) = sqrtf(s), s the sequential float sum over k of t * t, t = x_ik - x_jk, each term
 * added by a fused multiply-add, s = fma(t, t, s): one rounding a term, not two. A SIMD block
 * then issues a subtract and an FMA a term instead of a subtract, a multiply and an add (the
 * mlp epoch's distance blocks: 11.5 -> 10.4 ms, near the 9.3 ms of one 16-wide FMA a cycle on
 * this 2-core EPYC). Every path computes exactly these operations, one pair per vector lane from a
 * transposed copy of x, so the distances do not depend on the CPU; without hardware FMA (before
 * AVX2) the scalar path's fmaf is exact too, only slower. */

static float direct_dist(const float *xi, const float *xj, int D)
{
    float s = 0.0f;
    for (int k = 0; k < D; k++) {
        float t = xi[k] - xj[k];
        s = fmaf(t, t, s);
    }
    return sqrtf(s);
}

/* w->xt (D, xt_ld(B)) = x transposed, zero-padded. */
static void make_xt(struct work *w)
{
    int ld = xt_ld(w->B);
    for (int k = 0; k < w->D; k++) {
        float *row = w->xt + (size_t)k * ld;
        for (int j = 0; j < w->B; j++)
            row[j] = w->x[(size_t)j * w->D + k];
        for (int j = w->B; j < ld; j++)
            row[j] = 0.0f;
    }
}

/* Rows i .. i + 3 of a distance block: rows past B repeat the last row (computed, not kept). */
static void block_rows(const struct work *w, int i, const float *r[4])
{
    for (int q = 0; q < 4; q++)
        r[q] = w->x + (size_t)(i + q < w->B ? i + q : w->B - 1) * w->D;
}

/* Rows i .. i + 3 (those below B) of block out (4, width) into dist at columns c .. (those
 * below B); entries on or below the diagonal are overwritten by mirror_upper. */
static void store_block(struct work *w, int i, int c, int width, const float *out)
{
    int cols = w->B - c < width ? w->B - c : width;
    for (int q = 0; q < 4 && i + q < w->B; q++)
        memcpy(w->dist + (size_t)(i + q) * w->B + c, out + q * width, (size_t)cols * sizeof *out);
}

/* Tile (i0, j0) of dist mirrored entry by entry (the pairs above the diagonal only); returns
 * whether one of them is NaN or infinite. */
static int mirror_tile_scalar(float *dist, int B, int i0, int j0)
{
    int bad = 0;
    for (int i = i0; i < i0 + 4 && i < B; i++)
        for (int j = j0 > i + 1 ? j0 : i + 1; j < j0 + 4 && j < B; j++) {
            float d = dist[(size_t)i * B + j];
            bad |= !isfinite(d);
            dist[(size_t)j * B + i] = d;
        }
    return bad;
}

#if defined(__x86_64__) && defined(__SSE2__)
#include <xmmintrin.h>

/* A full 4 x 4 tile above the diagonal mirrored with one transpose; returns whether one of its
 * entries is NaN or infinite (every exponent bit set). */
static int mirror_tile(float *dist, int B, int i0, int j0)
{
    if (j0 == i0 || i0 + 4 > B || j0 + 4 > B)
        return mirror_tile_scalar(dist, B, i0, j0);
    float *s = dist + (size_t)i0 * B + j0;
    __m128 r0 = _mm_loadu_ps(s), r1 = _mm_loadu_ps(s + B);
    __m128 r2 = _mm_loadu_ps(s + 2 * (size_t)B), r3 = _mm_loadu_ps(s + 3 * (size_t)B);
    const __m128i e = _mm_set1_epi32(0x7f800000);
    __m128i any = _mm_setzero_si128();
    __m128 rows[4] = {r0, r1, r2, r3};
    for (int q = 0; q < 4; q++) {
        __m128i u = _mm_and_si128(_mm_castps_si128(rows[q]), e);
        any = _mm_or_si128(any, _mm_cmpeq_epi32(u, e));
    }
    _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
    float *t = dist + (size_t)j0 * B + i0;
    _mm_storeu_ps(t, r0);
    _mm_storeu_ps(t + B, r1);
    _mm_storeu_ps(t + 2 * (size_t)B, r2);
    _mm_storeu_ps(t + 3 * (size_t)B, r3);
    return _mm_movemask_epi8(any) != 0;
}
#else
static int mirror_tile(float *dist, int B, int i0, int j0)
{
    return mirror_tile_scalar(dist, B, i0, j0);
}
#endif

/* dist_ji = dist_ij for i < j (4 x 4 tiles), a diagonal of 0, and w->nonfinite when a distance
 * is NaN or infinite. */
static void mirror_upper(struct work *w)
{
    int B = w->B, bad = 0;
    for (int i0 = 0; i0 < B; i0 += 4)
        for (int j0 = i0; j0 < B; j0 += 4)
            bad |= mirror_tile(w->dist, B, i0, j0);
    for (int i = 0; i < B; i++)
        w->dist[(size_t)i * B + i] = 0.0f;
    if (bad)
        w->nonfinite = 1;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* Distances of rows r[0..3] to the 8 columns c.. (xt (D, ld)) into out (4, 8), AVX2 + FMA: each
 * lane does direct_dist's operations. */
__attribute__((target("avx2,fma"))) static void
dist_block_fma(const float *const r[4], const float *xt, int ld, int D, int c, float *out)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (int k = 0; k < D; k++) {
        __m256 col = _mm256_loadu_ps(xt + (size_t)k * ld + c);
        __m256 t0 = _mm256_sub_ps(_mm256_broadcast_ss(r[0] + k), col);
        __m256 t1 = _mm256_sub_ps(_mm256_broadcast_ss(r[1] + k), col);
        __m256 t2 = _mm256_sub_ps(_mm256_broadcast_ss(r[2] + k), col);
        __m256 t3 = _mm256_sub_ps(_mm256_broadcast_ss(r[3] + k), col);
        s0 = _mm256_fmadd_ps(t0, t0, s0);
        s1 = _mm256_fmadd_ps(t1, t1, s1);
        s2 = _mm256_fmadd_ps(t2, t2, s2);
        s3 = _mm256_fmadd_ps(t3, t3, s3);
    }
    _mm256_storeu_ps(out, _mm256_sqrt_ps(s0));
    _mm256_storeu_ps(out + 8, _mm256_sqrt_ps(s1));
    _mm256_storeu_ps(out + 16, _mm256_sqrt_ps(s2));
    _mm256_storeu_ps(out + 24, _mm256_sqrt_ps(s3));
}

/* As dist_block_fma for 16 columns (AVX-512F). */
__attribute__((target("avx512f"))) static void
dist_block_avx512(const float *const r[4], const float *xt, int ld, int D, int c, float *out)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (int k = 0; k < D; k++) {
        __m512 col = _mm512_loadu_ps(xt + (size_t)k * ld + c);
        __m512 t0 = _mm512_sub_ps(_mm512_set1_ps(r[0][k]), col);
        __m512 t1 = _mm512_sub_ps(_mm512_set1_ps(r[1][k]), col);
        __m512 t2 = _mm512_sub_ps(_mm512_set1_ps(r[2][k]), col);
        __m512 t3 = _mm512_sub_ps(_mm512_set1_ps(r[3][k]), col);
        s0 = _mm512_fmadd_ps(t0, t0, s0);
        s1 = _mm512_fmadd_ps(t1, t1, s1);
        s2 = _mm512_fmadd_ps(t2, t2, s2);
        s3 = _mm512_fmadd_ps(t3, t3, s3);
    }
    _mm512_storeu_ps(out, _mm512_sqrt_ps(s0));
    _mm512_storeu_ps(out + 16, _mm512_sqrt_ps(s1));
    _mm512_storeu_ps(out + 32, _mm512_sqrt_ps(s2));
    _mm512_storeu_ps(out + 48, _mm512_sqrt_ps(s3));
}

/* Columns of one SIMD distance block: 16 (AVX-512F), 8 (AVX2 and FMA) or 0 (none: scalar). */
static int dist_width(void)
{
    if (__builtin_cpu_supports("avx512f"))
        return 16;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 8 : 0;
}

static void dist_block(const float *const r[4], const float *xt, int ld, int D, int c, int width,
                       float *out)
{
    if (width == 16)
        dist_block_avx512(r, xt, ld, D, c, out);
    else
        dist_block_fma(r, xt, ld, D, c, out);
}
#else
static int dist_width(void)
{
    return 0;
}

static void dist_block(const float *const r[4], const float *xt, int ld, int D, int c, int width,
                       float *out)
{
    (void)r, (void)xt, (void)ld, (void)D, (void)c, (void)width, (void)out;
    FT_ASSERT(0);
}
#endif

/* Every euclidean distance d(i, j), i < j, mirrored: blocks of 4 rows by width columns from the
 * first multiple of width past the diagonal, or pair by pair without SIMD. */
static void euclid_dists(struct work *w)
{
    int B = w->B, width = dist_width();
    if (width == 0) {
        for (int i = 0; i < B; i++)
            for (int j = i + 1; j < B; j++)
                w->dist[(size_t)i * B + j] =
                    direct_dist(w->x + (size_t)i * w->D, w->x + (size_t)j * w->D, w->D);
        mirror_upper(w);
        return;
    }
    make_xt(w);
    for (int i = 0; i < B; i += 4) {
        const float *r[4];
        float out[4 * 16];
        block_rows(w, i, r);
        for (int c = (i + 1) / width * width; c < B; c += width) {
            dist_block(r, w->xt, xt_ld(B), w->D, c, width, out);
            store_block(w, i, c, width, out);
        }
    }
    mirror_upper(w);
}

/* Cosine distances 1 - g of pairs (i, j), j in [j0, j1), from the Gram matrix, mirrored. */
static void dist_row(struct work *w, int i, int j0, int j1)
{
    for (int j = j0; j < j1; j++)
        set_dist(w, i, j, 1.0f - w->dist[(size_t)i * w->B + j]);
}

#if defined(__x86_64__) && defined(__GNUC__)
/* near_pair's first D - D % 16 values, sixteen at a time (AVX-512F, no FMA: each value as the
 * plain loop computes it); returns how many were done. */
__attribute__((target("avx512f"))) static int
near_pair_avx512(float *gi, float *gj, const float *xi, const float *xj, float c, int D)
{
    const __m512 cc = _mm512_set1_ps(c);
    int k = 0;
    for (; k + 16 <= D; k += 16) {
        __m512 t =
            _mm512_mul_ps(cc, _mm512_sub_ps(_mm512_loadu_ps(xi + k), _mm512_loadu_ps(xj + k)));
        _mm512_storeu_ps(gi + k, _mm512_add_ps(_mm512_loadu_ps(gi + k), t));
        _mm512_storeu_ps(gj + k, _mm512_sub_ps(_mm512_loadu_ps(gj + k), t));
    }
    return k;
}

/* cos_pair's first D - D % 16 values the same way. */
__attribute__((target("avx512f"))) static int cos_pair_avx512(float *gi, float *gj, const float *xi,
                                                              const float *xj, float g, int D)
{
    const __m512 gg = _mm512_set1_ps(g);
    int k = 0;
    for (; k + 16 <= D; k += 16) {
        __m512 a = _mm512_loadu_ps(xi + k), b = _mm512_loadu_ps(xj + k);
        _mm512_storeu_ps(gi + k, _mm512_sub_ps(_mm512_loadu_ps(gi + k), _mm512_mul_ps(gg, b)));
        _mm512_storeu_ps(gj + k, _mm512_sub_ps(_mm512_loadu_ps(gj + k), _mm512_mul_ps(gg, a)));
    }
    return k;
}

static int pair_avx512(void)
{
    return __builtin_cpu_supports("avx512f");
}
#else
static int near_pair_avx512(float *gi, float *gj, const float *xi, const float *xj, float c, int D)
{
    (void)gi, (void)gj, (void)xi, (void)xj, (void)c, (void)D;
    return 0;
}

static int cos_pair_avx512(float *gi, float *gj, const float *xi, const float *xj, float g, int D)
{
    (void)gi, (void)gj, (void)xi, (void)xj, (void)g, (void)D;
    return 0;
}

static int pair_avx512(void)
{
    return 0;
}
#endif

/* gx_i += c (x_i - x_j), gx_j -= c (x_i - x_j): a near pair's gradient, applied directly: 16 at
 * a time with AVX-512F, then eight at a time through local copies (i != j, so the compiler
 * vectorises); each value as the plain loop computes it. */
static void near_pair(float *gx, const struct work *w, int i, int j, float c)
{
    const float *xi = w->x + (size_t)i * w->D, *xj = w->x + (size_t)j * w->D;
    float *gi = gx + (size_t)i * w->D, *gj = gx + (size_t)j * w->D;
    int k = pair_avx512() ? near_pair_avx512(gi, gj, xi, xj, c, w->D) : 0;
    for (; k + 8 <= w->D; k += 8) {
        float a[8], b[8], u[8], v[8];
        memcpy(a, xi + k, sizeof a);
        memcpy(b, xj + k, sizeof b);
        memcpy(u, gi + k, sizeof u);
        memcpy(v, gj + k, sizeof v);
#pragma GCC unroll 8
        for (int l = 0; l < 8; l++) {
            float t = c * (a[l] - b[l]);
            u[l] += t;
            v[l] -= t;
        }
        memcpy(gi + k, u, sizeof u);
        memcpy(gj + k, v, sizeof v);
    }
    for (; k < w->D; k++) {
        float t = c * (xi[k] - xj[k]);
        gi[k] += t;
        gj[k] -= t;
    }
}

/* gx_i -= g x_j, gx_j -= g x_i: a cosine pair's gradient (-S x), applied directly, as
 * near_pair. */
static void cos_pair(float *gx, const struct work *w, int i, int j, float g)
{
    const float *xi = w->x + (size_t)i * w->D, *xj = w->x + (size_t)j * w->D;
    float *gi = gx + (size_t)i * w->D, *gj = gx + (size_t)j * w->D;
    int k = pair_avx512() ? cos_pair_avx512(gi, gj, xi, xj, g, w->D) : 0;
    for (; k + 8 <= w->D; k += 8) {
        float a[8], b[8], u[8], v[8];
        memcpy(a, xi + k, sizeof a);
        memcpy(b, xj + k, sizeof b);
        memcpy(u, gi + k, sizeof u);
        memcpy(v, gj + k, sizeof v);
#pragma GCC unroll 8
        for (int l = 0; l < 8; l++) {
            u[l] -= g * b[l];
            v[l] -= g * a[l];
        }
        memcpy(gi + k, u, sizeof u);
        memcpy(gj + k, v, sizeof v);
    }
    for (; k < w->D; k++) {
        gi[k] -= g * xj[k];
        gj[k] -= g * xi[k];
    }
}

/* Pair (i, j) of a sparse dd: its weight g = dd_ij + dd_ji into gx without the sgemm (euclidean:
 * c = g / d_ij as near_pair; d = 0 gives gradient 0). */
static void direct_pair(struct work *w, float *gx, int i, int j)
{
    float g = w->dd[(size_t)i * w->B + j] + w->dd[(size_t)j * w->B + i];
    if (g == 0.0f)
        return;
    if (!w->euclidean) {
        cos_pair(gx, w, i, j, g);
        return;
    }
    float d = w->dist[(size_t)i * w->B + j];
    if (d > 0.0f)
        near_pair(gx, w, i, j, g / d);
}

static void pair_weight(struct work *w, float *gx, int i, int j)
{
    size_t ij = (size_t)i * w->B + j, ji = (size_t)j * w->B + i;
    float g = w->dd[ij] + w->dd[ji];
    if (w->euclidean) {
        float d = w->dist[ij];
        g = (g != 0.0f && d > 0.0f) ? g / d : 0.0f;
        if (g != 0.0f && is_near(w, i, j, d)) {
            near_pair(gx, w, i, j, g);
            g = 0.0f;
        }
    }
    w->dd[ij] = g;
    w->dd[ji] = g;
}

/* Apply op to every pair i < j, TILE x TILE blocks at a time so that the mirrored entry
 * [j][i] stays in cache; the diagonal of the touched matrix is set to 0. */
static void tiled_pairs(struct work *w, enum pair_op op, float *gx)
{
    enum { TILE = 64 };
    int B = w->B;
    for (int i0 = 0; i0 < B; i0 += TILE) {
        int i1 = i0 + TILE < B ? i0 + TILE : B;
        for (int j0 = i0; j0 < B; j0 += TILE) {
            int j1 = j0 + TILE < B ? j0 + TILE : B;
            for (int i = i0; i < i1; i++) {
                int jlo = j0 > i + 1 ? j0 : i + 1;
                if (op == OP_DIST && jlo < j1)
                    dist_row(w, i, jlo, j1);
                for (int j = jlo; op != OP_DIST && j < j1; j++)
                    pair_weight(w, gx, i, j);
            }
        }
    }
    float *m = op == OP_DIST ? w->dist : w->dd;
    for (int i = 0; i < B; i++)
        m[(size_t)i * B + i] = 0.0f;
}

/* w->sq = |x_i|^2 (summed in double); w->nonfinite when one overflows. Normalised rows need it
 * only for the dense euclidean backward (a NaN row shows in the distances anyway). */
static void compute_sq(struct work *w)
{
    int B = w->B, D = w->D;
    for (int i0 = 0; i0 < B; i0 += 64) {
        double ss[64];
        int nb = B - i0 < 64 ? B - i0 : 64;
        ft_sum_squares(ss, w->x + (size_t)i0 * D, nb, D);
        for (int r = 0; r < nb; r++) {
            w->sq[i0 + r] = (float)ss[r];
            if (!isfinite(w->sq[i0 + r]))
                w->nonfinite = 1;
        }
    }
    w->sq_ready = 1;
}

static void compute_dist(struct work *w, const float *emb)
{
    int B = w->B, D = w->D;
    if (w->normalize)
        ft_l2_normalize_forward(w->x, w->norms, emb, B, D);
    else
        memcpy(w->x, emb, (size_t)B * D * sizeof *emb);
    if (!w->normalize)
        compute_sq(w); /* raw rows: a square norm that overflows makes the batch non-finite */
    if (w->euclidean) {
        euclid_dists(w);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, B, D, 1.0f, w->x, D, w->x, D, 0.0f,
                w->dist, B);
    tiled_pairs(w, OP_DIST, NULL);
}

struct tally {
    double loss;
    int64_t kept;
    int64_t nonzero;
    /* when hit: the dd entries (i B + j) the triplets wrote, up to cap_hit of them (more: nhit
     * = -1, unknown) so that a sparse backward need not search the B x B matrix for them */
    int64_t *hit;
    int nhit, cap_hit;
};

/* Record that dd entry e was written. */
static void tally_hit(struct tally *t, int64_t e)
{
    if (!t->hit || t->nhit < 0)
        return;
    if (t->nhit == t->cap_hit)
        t->nhit = -1;
    else
        t->hit[t->nhit++] = e;
}

/* Per-anchor scratch for the sorted negatives (B entries each). */
struct anchor_scratch {
    uint64_t *keys, *tmp; /* (order-preserving distance bits << 32) | column */
    uint64_t *pkeys;      /* the same for the positives */
    float *v;             /* sorted negative distances */
    double *prefix;       /* (B + 1) prefix sums of v */
    int *diff;            /* (B + 1) difference array of per-negative active counts */
};

static void scratch_free(struct anchor_scratch *s)
{
    free(s->keys);
    free(s->tmp);
    free(s->pkeys);
    free(s->v);
    free(s->prefix);
    free(s->diff);
}

static int scratch_alloc(struct anchor_scratch *s, int B)
{
    s->keys = malloc((size_t)B * sizeof *s->keys);
    s->tmp = malloc((size_t)B * sizeof *s->tmp);
    s->pkeys = malloc((size_t)B * sizeof *s->pkeys);
    s->v = malloc((size_t)B * sizeof *s->v);
    s->prefix = malloc(((size_t)B + 1) * sizeof *s->prefix);
    s->diff = malloc(((size_t)B + 1) * sizeof *s->diff);
    if (!s->keys || !s->tmp || !s->pkeys || !s->v || !s->prefix || !s->diff) {
        scratch_free(s);
        return 0;
    }
    return 1;
}

/* Order-preserving map of a (non-NaN) float to uint32. */
static uint32_t float_key(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u ^ ((u >> 31) ? 0xffffffffu : 0x80000000u);
}

/* Stable LSD radix sort of a (n) by bits 32..63; tmp (n) scratch. */
static void radix_sort_hi(uint64_t *a, uint64_t *tmp, int n)
{
    uint64_t *src = a, *dst = tmp;
    for (int shift = 32; shift < 64; shift += 8) {
        int cnt[257] = {0};
        for (int i = 0; i < n; i++)
            cnt[((src[i] >> shift) & 0xff) + 1]++;
        if (n == 0 || cnt[((src[0] >> shift) & 0xff) + 1] == n)
            continue; /* every key has this digit */
        for (int b = 0; b < 256; b++)
            cnt[b + 1] += cnt[b];
        for (int i = 0; i < n; i++)
            dst[cnt[(src[i] >> shift) & 0xff]++] = src[i];
        uint64_t *t = src;
        src = dst;
        dst = t;
    }
    if (src != a)
        memcpy(a, src, (size_t)n * sizeof *a);
}

/* Sort anchor a's negatives by distance into s (keys, v, prefix); returns their count. */
static int sort_negatives(struct anchor_scratch *s, const float *drow, const int32_t *labels, int a,
                          int B)
{
    int n = 0;
    for (int j = 0; j < B; j++)
        if (labels[j] != labels[a])
            s->keys[n++] = ((uint64_t)float_key(drow[j]) << 32) | (uint32_t)j;
    radix_sort_hi(s->keys, s->tmp, n);
    s->prefix[0] = 0.0;
    for (int k = 0; k < n; k++) {
        s->v[k] = drow[s->keys[k] & 0xffffffffu];
        s->prefix[k + 1] = s->prefix[k] + s->v[k];
    }
    return n;
}

/* Sort anchor a's positives (p != a) by distance into s->pkeys; returns their count. */
static int sort_positives(struct anchor_scratch *s, const float *drow, const int32_t *labels, int a,
                          int B)
{
    int n = 0;
    for (int j = 0; j < B; j++)
        if (j != a && labels[j] == labels[a])
            s->pkeys[n++] = ((uint64_t)float_key(drow[j]) << 32) | (uint32_t)j;
    radix_sort_hi(s->pkeys, s->tmp, n);
    return n;
}

/* Sorted-range bounds of one positive's triplets: kept by the miner [lo, ek), active [lo, ea)
 * capped at ek. With m = fl(v - dap): lo = first k with m > mb.lo, ek = first k with
 * m > mb.hi, ea = first k with m >= margin (the hinge margin - m no longer > 0). */
struct range {
    int lo, ek, ea;
};

/* Move r forward for the next (not smaller) dap: every bound is monotone in dap because float
 * subtraction rounds monotonically, so these are the very float predicates of the brute-force
 * enumeration (ft_triplet_mine) and both select the same triplets. */
static void advance(struct range *r, const float *v, int n, float dap, struct miner_bounds mb,
                    float margin)
{
    if (mb.lo != -INFINITY)
        while (r->lo < n && !(v[r->lo] - dap > mb.lo))
            r->lo++;
    if (mb.hi != INFINITY)
        while (r->ek < n && !(v[r->ek] - dap > mb.hi))
            r->ek++;
    else
        r->ek = n;
    while (r->ea < n && v[r->ea] - dap < margin)
        r->ea++;
}

/* One anchor: negatives and positives sorted by distance, then one sweep over the positives
 * in increasing d(a,p) with three forward-only cursors into the negatives. The active
 * negatives of each positive form a range: its count, its loss sum (from prefix sums) and a
 * difference-array update give the gradient counts. */
static void anchor_pass(struct tally *t, float *dd_row, struct anchor_scratch *s, const float *drow,
                        const int32_t *labels, int a, int B, struct miner_bounds mb, float margin)
{
    int n = sort_negatives(s, drow, labels, a, B);
    int np = sort_positives(s, drow, labels, a, B);
    struct range r = {0, 0, 0};
    if (dd_row)
        memset(s->diff, 0, ((size_t)n + 1) * sizeof *s->diff);
    for (int q = 0; q < np; q++) {
        int p = (int)(s->pkeys[q] & 0xffffffffu);
        float dap = drow[p];
        advance(&r, s->v, n, dap, mb, margin);
        int e = r.ek < r.ea ? r.ek : r.ea;
        t->kept += r.ek > r.lo ? r.ek - r.lo : 0;
        if (e <= r.lo)
            continue;
        t->nonzero += e - r.lo;
        t->loss += (double)(e - r.lo) * ((double)margin + dap) - (s->prefix[e] - s->prefix[r.lo]);
        if (!dd_row)
            continue;
        dd_row[p] += (float)(e - r.lo);
        s->diff[r.lo]++;
        s->diff[e]--;
    }
    if (!dd_row)
        return;
    int run = 0;
    for (int k = 0; k < n; k++) {
        run += s->diff[k];
        dd_row[s->keys[k] & 0xffffffffu] -= (float)run;
    }
}

/* Loop over anchors; dd (B, B) gets the raw counts when non-NULL. s: scratch for B anchors. */
static void triplet_pass(struct tally *t, float *dd, const struct work *w, const int32_t *labels,
                         const struct ft_triplet_opts *o, struct anchor_scratch *s)
{
    int B = w->B;
    struct miner_bounds mb = miner_bounds(o);
    memset(t, 0, sizeof *t);
    for (int a = 0; a < B; a++) {
        float *dd_row = dd ? dd + (size_t)a * B : NULL;
        anchor_pass(t, dd_row, s, w->dist + (size_t)a * B, labels, a, B, mb, (float)o->margin);
    }
}

/* Cosine: dL/dx = -S x with S = dd + dd^T (d = 1 - <x_i, x_j>). */
static void cosine_backward(float *gx, struct work *w)
{
    tiled_pairs(w, OP_COS_SYM, gx);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, w->B, w->D, w->B, -1.0f, w->dd, w->B,
                w->x, w->D, 0.0f, gx, w->D);
}

/* Euclidean: dL/dx_i = sum_j S_ij (x_i - x_j) with S_ij = (dd_ij + dd_ji) / d_ij, computed as
 * rowsum(S)_i x_i - (S x)_i for far pairs and directly for near ones (gx starts at 0). */
static void euclid_backward(float *gx, struct work *w)
{
    int B = w->B, D = w->D;
    if (!w->sq_ready)
        compute_sq(w);
    tiled_pairs(w, OP_EUCLID_W, gx);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, D, B, -1.0f, w->dd, B, w->x, D, 1.0f,
                gx, D);
    for (int i = 0; i < B; i++) {
        const float *srow = w->dd + (size_t)i * B;
        float rs = 0.0f;
        for (int j = 0; j < B; j++)
            rs += srow[j];
        const float *xi = w->x + (size_t)i * D;
        float *gi = gx + (size_t)i * D;
        for (int k = 0; k < D; k++)
            gi[k] += rs * xi[k];
    }
}

#if defined(__x86_64__) && defined(__SSE2__)
#include <emmintrin.h>

/* Bit l set when v[l] != 0 (NaN included, -0 not), l < 8. */
static unsigned nonzero8(const float *v)
{
    const __m128 z = _mm_setzero_ps();
    int lo = _mm_movemask_ps(_mm_cmpneq_ps(_mm_loadu_ps(v), z));
    int hi = _mm_movemask_ps(_mm_cmpneq_ps(_mm_loadu_ps(v + 4), z));
    return (unsigned)(lo | hi << 4);
}
#else
static unsigned nonzero8(const float *v)
{
    unsigned m = 0;
    for (int l = 0; l < 8; l++)
        m |= (unsigned)(v[l] != 0.0f) << l;
    return m;
}
#endif

/* Bit l set when row[j + l] != 0 for the up to eight columns j + l < B. */
static unsigned nonzero_at(const float *row, int j, int B)
{
    if (j + 8 <= B)
        return nonzero8(row + j);
    unsigned m = 0;
    for (int l = 0; j + l < B; l++)
        m |= (unsigned)(row[j + l] != 0.0f) << l;
    return m;
}

/* Sort the n entries of hit ascending, duplicates removed; returns how many are left. Insertion
 * sort: the anchors come in order, so the entries nearly are. */
static int sort_hits(int64_t *hit, int n)
{
    for (int i = 1; i < n; i++) {
        int64_t v = hit[i];
        int j = i;
        for (; j > 0 && hit[j - 1] > v; j--)
            hit[j] = hit[j - 1];
        hit[j] = v;
    }
    int u = 0;
    for (int i = 0; i < n; i++)
        if (u == 0 || hit[u - 1] != hit[i])
            hit[u++] = hit[i];
    return u;
}

/* Nonzero off-diagonal entries of dd (B, B). */
static size_t dd_nonzero(const struct work *w)
{
    size_t count = 0;
    for (int i = 0; i < w->B; i++) {
        const float *row = w->dd + (size_t)i * w->B;
        for (int j = 0; j < w->B; j += 8)
            for (unsigned m = nonzero_at(row, j, w->B); m; m &= m - 1)
                count++;
        count -= row[i] != 0.0f;
    }
    return count;
}

/* A sparse dd applied pair by pair (direct_pair), its nonzero entries found eight at a time in
 * row-major order: a pair (a < b) is applied once, at its first nonzero entry in that order. */
static void direct_pairs(struct work *w, float *gx)
{
    int B = w->B;
    for (int i = 0; i < B; i++) {
        const float *row = w->dd + (size_t)i * B;
        for (int j0 = 0; j0 < B; j0 += 8) {
            for (unsigned m = nonzero_at(row, j0, B); m; m &= m - 1) {
                int j = j0 + __builtin_ctz(m);
                if (j == i || (j < i && w->dd[(size_t)j * B + i] != 0.0f))
                    continue;
                direct_pair(w, gx, i < j ? i : j, i < j ? j : i);
            }
        }
    }
}

/* Nonzero off-diagonal entries of dd among hit (n, sorted): dd_nonzero when every other entry
 * is 0. */
static size_t hits_nonzero(const struct work *w, const int64_t *hit, int n)
{
    size_t count = 0;
    for (int h = 0; h < n; h++)
        count += hit[h] / w->B != hit[h] % w->B && w->dd[hit[h]] != 0.0f;
    return count;
}

/* direct_pairs when dd's nonzero entries are all among hit (n, sorted): the same pairs in the
 * same order, found without reading the B x B matrix. */
static void hit_pairs(struct work *w, float *gx, const int64_t *hit, int n)
{
    int B = w->B;
    for (int h = 0; h < n; h++) {
        int i = (int)(hit[h] / B), j = (int)(hit[h] % B);
        if (w->dd[hit[h]] == 0.0f || j == i || (j < i && w->dd[(size_t)j * B + i] != 0.0f))
            continue;
        direct_pair(w, gx, i < j ? i : j, i < j ? j : i);
    }
}

/* demb (B, D) from the scaled dd: through the distance, then the normalisation. A sparse dd
 * (at most 4 B entries, e.g. BatchHardMiner's two per anchor) is applied pair by pair, O(B D),
 * instead of the B x B x D sgemm. hit (n, sorted), when non-NULL: every entry of dd that may be
 * nonzero. */
static void backward(float *demb, struct work *w, const int64_t *hit, int n)
{
    int B = w->B, D = w->D;
    memset(demb, 0, (size_t)B * D * sizeof *demb);
    if (hit && hits_nonzero(w, hit, n) <= 4 * (size_t)B)
        hit_pairs(w, demb, hit, n);
    else if (!hit && dd_nonzero(w) <= 4 * (size_t)B)
        direct_pairs(w, demb);
    else if (w->euclidean)
        euclid_backward(demb, w);
    else
        cosine_backward(demb, w);
    if (w->normalize)
        ft_l2_normalize_backward(demb, demb, w->x, w->norms, B, D);
}

static void scale(float *v, size_t n, float c)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        float u[8];
        memcpy(u, v + i, sizeof u);
#pragma GCC unroll 8
        for (int l = 0; l < 8; l++)
            u[l] *= c;
        memcpy(v + i, u, sizeof u);
    }
    for (; i < n; i++)
        v[i] *= c;
}

/* Distances, triplet pass and (when demb) the backward; t gets the tally. */
static enum ft_err loss_core(float *loss, float *demb, struct tally *t, const float *emb,
                             const int32_t *labels, int B, int D,
                             const struct ft_triplet_opts *opts)
{
    struct work w;
    if (!work_alloc(&w, B, D, opts))
        return FT_ENOMEM;
    compute_dist(&w, emb);
    if (w.nonfinite) {
        *loss = NAN;
        work_free(&w);
        return FT_OK;
    }
    struct anchor_scratch s;
    if (!scratch_alloc(&s, B)) {
        work_free(&w);
        return FT_ENOMEM;
    }
    triplet_pass(t, demb ? w.dd : NULL, &w, labels, opts, &s);
    scratch_free(&s);
    if (t->nonzero > 0) {
        *loss = (float)(t->loss / (double)t->nonzero);
        if (demb) {
            scale(w.dd, (size_t)B * B, (float)(1.0 / (double)t->nonzero));
            backward(demb, &w, NULL, 0);
        }
    }
    work_free(&w);
    return FT_OK;
}

enum ft_err ft_triplet_margin_loss(float *loss, float *demb, const float *emb,
                                   const int32_t *labels, int B, int D,
                                   const struct ft_triplet_opts *opts, struct ft_loss_stats *stats)
{
    struct tally t = {0};
    enum ft_err rc = FT_OK;
    *loss = 0.0f;
    if (demb && B > 0 && D > 0)
        memset(demb, 0, (size_t)B * D * sizeof *demb);
    if (B >= 3 && D > 0)
        rc = loss_core(loss, demb, &t, emb, labels, B, D, opts);
    if (stats) {
        memset(stats, 0, sizeof *stats);
        stats->num_triplets = t.kept;
        stats->num_nonzero = t.nonzero;
    }
    return rc;
}

int64_t ft_triplet_mine(int64_t *trip, int64_t cap, const float *emb, const int32_t *labels, int B,
                        int D, const struct ft_triplet_opts *opts)
{
    struct work w;
    if (B < 3 || D <= 0)
        return 0;
    if (!work_alloc(&w, B, D, opts))
        return -1;
    compute_dist(&w, emb);
    struct miner_bounds mb = miner_bounds(opts);
    int64_t count = 0;
    for (int a = 0; a < B; a++) {
        const float *drow = w.dist + (size_t)a * B;
        for (int p = 0; p < B; p++) {
            if (p == a || labels[p] != labels[a])
                continue;
            for (int n = 0; n < B; n++) {
                float m = drow[n] - drow[p];
                if (labels[n] == labels[a] || !(m > mb.lo && m <= mb.hi))
                    continue;
                if (count < cap) {
                    trip[3 * count] = a;
                    trip[3 * count + 1] = p;
                    trip[3 * count + 2] = n;
                }
                count++;
            }
        }
    }
    work_free(&w);
    return count;
}

/* ======================================================================================
 * Losses and miners by name (ft_loss). Options come from one table per loss and miner
 * (key, type, default, range), used by both ft_loss_check and ft_loss_new.
 * ====================================================================================== */

#define LOSS_PATH "config.hyper_parameters.loss"
#define LOSS_OPTS_PATH "config.hyper_parameters.loss_options"
#define MINER_PATH "config.hyper_parameters.miner"
#define MINER_OPTS_PATH "config.hyper_parameters.miner_options"
#define KNOWN_LOSSES                                                                       \
    "TripletMarginLoss, ContrastiveLoss, SiameseLoss, NTXentLoss, CLIPLoss, ArcFaceLoss, " \
    "MultiSimilarityLoss"
#define KNOWN_MINERS "TripletMarginMiner, BatchHardMiner, MultiSimilarityMiner, PairMarginMiner"
#define PI 3.14159265358979323846

enum loss_kind {
    LOSS_TRIPLET,
    LOSS_CONTRASTIVE,
    LOSS_NTXENT,
    LOSS_CLIP,
    LOSS_ARCFACE,
    LOSS_MULTI_SIM
};

enum miner_kind {
    MINER_NONE,
    MINER_TRIPLET_MARGIN,
    MINER_BATCH_HARD,
    MINER_MULTI_SIM,
    MINER_PAIR_MARGIN
};

/* Every option of every loss and miner; a loss reads only its own. */
struct loss_cfg {
    enum loss_kind loss;
    enum miner_kind miner;
    double margin;                 /* TripletMarginLoss; ArcFaceLoss (degrees) */
    int distance;                  /* enum ft_distance */
    int normalize, swap, smooth;   /* TripletMarginLoss (normalize: ContrastiveLoss too) */
    double pos_margin, neg_margin; /* ContrastiveLoss */
    double temperature;            /* NTXentLoss */
    double scale;                  /* ArcFaceLoss */
    double alpha, beta, base;      /* MultiSimilarityLoss */
    double miner_margin;           /* TripletMarginMiner */
    int type;                      /* TripletMarginMiner: enum ft_triplet_type */
    double epsilon;                /* MultiSimilarityMiner */
    double miner_pos_margin, miner_neg_margin; /* PairMarginMiner */
};

enum opt_kind { OPT_NUM, OPT_BOOL, OPT_ENUM };

/* One option: NUM in [lo, hi] ((lo, hi] when lo_open) stored as double; BOOL and ENUM (index
 * into names) stored as int. */
struct opt {
    const char *key;
    enum opt_kind kind;
    size_t off;
    double def;
    double lo, hi;
    int lo_open;
    const char *const *names;
};

static const char *const dist_names[] = {"cosine", "euclidean", NULL}; /* enum ft_distance */
static const char *const type_names[] = {"all", "hard", "semihard", "easy", NULL};

#define NUM(k, f, d, lo, hi, open)                                      \
    {                                                                   \
        k, OPT_NUM, offsetof(struct loss_cfg, f), d, lo, hi, open, NULL \
    }
#define BOOL(k, f, d)                                               \
    {                                                               \
        k, OPT_BOOL, offsetof(struct loss_cfg, f), d, 0, 0, 0, NULL \
    }
#define ENUM(k, f, d, n)                                         \
    {                                                            \
        k, OPT_ENUM, offsetof(struct loss_cfg, f), d, 0, 0, 0, n \
    }
#define END                                \
    {                                      \
        NULL, OPT_NUM, 0, 0, 0, 0, 0, NULL \
    }

static const struct opt triplet_opts[] = {
    NUM("margin", margin, 0.05, 0.0, 100.0, 0),
    ENUM("distance", distance, FT_DIST_EUCLIDEAN, dist_names),
    BOOL("normalize_embeddings", normalize, 1),
    BOOL("swap", swap, 0),
    BOOL("smooth_loss", smooth, 0),
    END,
};
static const struct opt contrastive_opts[] = {
    NUM("pos_margin", pos_margin, 0.0, -100.0, 100.0, 0),
    NUM("neg_margin", neg_margin, 1.0, -100.0, 100.0, 0),
    ENUM("distance", distance, FT_DIST_EUCLIDEAN, dist_names),
    BOOL("normalize_embeddings", normalize, 1),
    END,
};
static const struct opt ntxent_opts[] = {NUM("temperature", temperature, 0.07, 0.0, 100.0, 1), END};
static const struct opt no_opts[] = {END};
static const struct opt arcface_opts[] = {
    NUM("margin", margin, 28.6, 0.0, 180.0, 0),
    NUM("scale", scale, 64.0, 0.0, 1e4, 1),
    END,
};
static const struct opt ms_opts[] = {
    NUM("alpha", alpha, 2.0, 0.0, 1e4, 1),
    NUM("beta", beta, 50.0, 0.0, 1e4, 1),
    NUM("base", base, 0.5, -100.0, 100.0, 0),
    END,
};
static const struct opt tm_miner_opts[] = {
    NUM("margin", miner_margin, 0.2, 0.0, 100.0, 0),
    ENUM("type_of_triplets", type, FT_TRIPLETS_ALL, type_names),
    END,
};
static const struct opt ms_miner_opts[] = {NUM("epsilon", epsilon, 0.1, 0.0, 100.0, 0), END};
static const struct opt pm_miner_opts[] = {
    NUM("pos_margin", miner_pos_margin, 0.2, -100.0, 100.0, 0),
    NUM("neg_margin", miner_neg_margin, 0.8, -100.0, 100.0, 0),
    END,
};

#define TRIPLET_MINERS ((1u << MINER_TRIPLET_MARGIN) | (1u << MINER_BATCH_HARD))
#define PAIR_MINERS ((1u << MINER_MULTI_SIM) | (1u << MINER_PAIR_MARGIN))

struct loss_def {
    const char *name;
    enum loss_kind kind;
    const struct opt *opts;
    unsigned miners;  /* bit (1 << enum miner_kind) per miner that fits */
    const char *fits; /* the miners that fit, for messages */
};

static const struct loss_def loss_defs[] = {
    {"TripletMarginLoss", LOSS_TRIPLET, triplet_opts, TRIPLET_MINERS,
     "TripletMarginMiner or BatchHardMiner"},
    {"ContrastiveLoss", LOSS_CONTRASTIVE, contrastive_opts, PAIR_MINERS,
     "MultiSimilarityMiner or PairMarginMiner"},
    {"SiameseLoss", LOSS_CONTRASTIVE, contrastive_opts, PAIR_MINERS,
     "MultiSimilarityMiner or PairMarginMiner"},
    {"NTXentLoss", LOSS_NTXENT, ntxent_opts, PAIR_MINERS,
     "MultiSimilarityMiner or PairMarginMiner"},
    {"CLIPLoss", LOSS_CLIP, no_opts, 0, "no miner"},
    {"ArcFaceLoss", LOSS_ARCFACE, arcface_opts, 0, "no miner"},
    {"MultiSimilarityLoss", LOSS_MULTI_SIM, ms_opts, PAIR_MINERS,
     "MultiSimilarityMiner or PairMarginMiner"},
};

struct miner_def {
    const char *name;
    enum miner_kind kind;
    const struct opt *opts;
};

static const struct miner_def miner_defs[] = {
    {"TripletMarginMiner", MINER_TRIPLET_MARGIN, tm_miner_opts},
    {"BatchHardMiner", MINER_BATCH_HARD, no_opts},
    {"MultiSimilarityMiner", MINER_MULTI_SIM, ms_miner_opts},
    {"PairMarginMiner", MINER_PAIR_MARGIN, pm_miner_opts},
};

static const struct loss_def *find_loss(const char *name)
{
    for (size_t i = 0; i < sizeof loss_defs / sizeof loss_defs[0]; i++)
        if (strcmp(loss_defs[i].name, name) == 0)
            return &loss_defs[i];
    return NULL;
}

static const struct miner_def *find_miner(const char *name)
{
    for (size_t i = 0; i < sizeof miner_defs / sizeof miner_defs[0]; i++)
        if (strcmp(miner_defs[i].name, name) == 0)
            return &miner_defs[i];
    return NULL;
}

static double *num_field(struct loss_cfg *c, const struct opt *o)
{
    return (double *)((char *)c + o->off);
}

static int *int_field(struct loss_cfg *c, const struct opt *o)
{
    return (int *)((char *)c + o->off);
}

static void opt_defaults(struct loss_cfg *c, const struct opt *spec)
{
    for (const struct opt *o = spec; o->key; o++) {
        if (o->kind == OPT_NUM)
            *num_field(c, o) = o->def;
        else
            *int_field(c, o) = (int)o->def;
    }
}

static const struct opt *opt_find(const struct opt *spec, const char *key)
{
    for (const struct opt *o = spec; o->key; o++)
        if (strcmp(o->key, key) == 0)
            return o;
    return NULL;
}

/* "a, b, c" from a NULL-terminated list of names (or the keys of spec when names is NULL). */
static void join_names(char *buf, size_t cap, const struct opt *spec, const char *const *names)
{
    size_t len = 0;
    buf[0] = '\0';
    for (int i = 0; names ? names[i] != NULL : spec[i].key != NULL; i++) {
        int k =
            snprintf(buf + len, cap - len, "%s%s", i ? ", " : "", names ? names[i] : spec[i].key);
        if (k < 0 || (size_t)k >= cap - len)
            return;
        len += (size_t)k;
    }
}

static enum ft_err opt_number(struct loss_cfg *c, const struct opt *o, json_t *v, const char *p,
                              struct ft_error *err)
{
    if (!json_is_number(v))
        return ft_error_set(err, FT_EINVAL, p, "%s must be a number", p);
    double x = json_number_value(v);
    if (!isfinite(x) || x > o->hi || x < o->lo || (o->lo_open && x <= o->lo))
        return ft_error_set(err, FT_EINVAL, p, "%s must be in %c%g, %g], got %g", p,
                            o->lo_open ? '(' : '[', o->lo, o->hi, x);
    *num_field(c, o) = x;
    return FT_OK;
}

static enum ft_err opt_value(struct loss_cfg *c, const struct opt *o, json_t *v, const char *p,
                             struct ft_error *err)
{
    if (o->kind == OPT_NUM)
        return opt_number(c, o, v, p, err);
    if (o->kind == OPT_BOOL) {
        if (!json_is_boolean(v))
            return ft_error_set(err, FT_EINVAL, p, "%s must be true or false", p);
        *int_field(c, o) = json_is_true(v);
        return FT_OK;
    }
    for (int i = 0; json_is_string(v) && o->names[i]; i++) {
        if (strcmp(json_string_value(v), o->names[i]) == 0) {
            *int_field(c, o) = i;
            return FT_OK;
        }
    }
    char list[128];
    join_names(list, sizeof list, NULL, o->names);
    return ft_error_set(err, FT_EINVAL, p, "%s must be one of: %s", p, list);
}

/* Defaults of spec into c, then the keys of obj (borrowed; NULL or JSON null = none). A null
 * value keeps the default. owner names the loss or miner in messages. */
static enum ft_err parse_opts(struct loss_cfg *c, const struct opt *spec, json_t *obj,
                              const char *path, const char *owner, struct ft_error *err)
{
    const char *key;
    json_t *v;
    opt_defaults(c, spec);
    if (!obj || json_is_null(obj))
        return FT_OK;
    if (!json_is_object(obj))
        return ft_error_set(err, FT_EINVAL, path, "%s must be an object", path);
    json_object_foreach(obj, key, v)
    {
        char p[256], keys[256];
        snprintf(p, sizeof p, "%s.%s", path, key);
        const struct opt *o = opt_find(spec, key);
        if (!o) {
            join_names(keys, sizeof keys, spec, NULL);
            return ft_error_set(err, FT_EINVAL, p, "unknown field '%s' in %s (%s takes %s%s)", key,
                                path, owner, keys[0] ? "" : "no options", keys);
        }
        if (json_is_null(v))
            continue;
        enum ft_err e = opt_value(c, o, v, p, err);
        if (e != FT_OK)
            return e;
    }
    return FT_OK;
}

/* The loss half of parse_config: name, options and their cross-checks. */
static enum ft_err parse_loss_part(const char *name, json_t *options, struct loss_cfg *c,
                                   const struct loss_def **ld, struct ft_error *err)
{
    *ld = find_loss(name ? name : "TripletMarginLoss");
    if (!*ld)
        return ft_error_set(err, FT_EINVAL, LOSS_PATH, "unknown loss '%s' (known: %s)", name,
                            KNOWN_LOSSES);
    c->loss = (*ld)->kind;
    c->distance = FT_DIST_COSINE; /* NTXentLoss, MultiSimilarityLoss; others set their own */
    enum ft_err e = parse_opts(c, (*ld)->opts, options, LOSS_OPTS_PATH, (*ld)->name, err);
    if (e != FT_OK)
        return e;
    if ((c->loss == LOSS_TRIPLET || c->loss == LOSS_CONTRASTIVE) && c->distance == FT_DIST_COSINE &&
        !c->normalize)
        return ft_error_set(err, FT_EINVAL, LOSS_OPTS_PATH ".normalize_embeddings",
                            "normalize_embeddings must be true with distance cosine (cosine "
                            "similarity always normalises); use distance euclidean for raw "
                            "embeddings");
    return FT_OK;
}

/* Parse and validate everything into c; *md = NULL without a miner. */
static enum ft_err parse_config(const char *name, json_t *options, const char *miner,
                                json_t *miner_options, struct loss_cfg *c,
                                const struct loss_def **ld, const struct miner_def **md,
                                struct ft_error *err)
{
    memset(c, 0, sizeof *c);
    *md = NULL;
    enum ft_err e = parse_loss_part(name, options, c, ld, err);
    if (e != FT_OK)
        return e;
    if (!miner) {
        if (miner_options && !json_is_null(miner_options))
            return ft_error_set(err, FT_EINVAL, MINER_OPTS_PATH,
                                "miner_options given without a miner");
        return FT_OK;
    }
    *md = find_miner(miner);
    if (!*md)
        return ft_error_set(err, FT_EINVAL, MINER_PATH, "unknown miner '%s' (known: %s)", miner,
                            KNOWN_MINERS);
    if (!((*ld)->miners & (1u << (*md)->kind)))
        return ft_error_set(err, FT_EINVAL, MINER_PATH,
                            "miner %s does not fit loss %s (%s takes %s)", (*md)->name, (*ld)->name,
                            (*ld)->name, (*ld)->fits);
    c->miner = (*md)->kind;
    return parse_opts(c, (*md)->opts, miner_options, MINER_OPTS_PATH, (*md)->name, err);
}

/* New object with every option of spec (numbers as reals). */
static json_t *opts_json(struct loss_cfg *c, const struct opt *spec)
{
    json_t *obj = json_object();
    for (const struct opt *o = spec; obj && o->key; o++) {
        json_t *v;
        if (o->kind == OPT_NUM)
            v = json_real(*num_field(c, o));
        else if (o->kind == OPT_BOOL)
            v = json_boolean(*int_field(c, o));
        else
            v = json_string(o->names[*int_field(c, o)]);
        json_object_set_new(obj, o->key, v);
    }
    return obj;
}

enum ft_err ft_loss_check(const char *name, json_t *options, const char *miner,
                          json_t *miner_options, json_t **norm_options, json_t **norm_miner_options,
                          struct ft_error *err)
{
    struct loss_cfg c;
    const struct loss_def *ld;
    const struct miner_def *md;
    if (norm_options)
        *norm_options = NULL;
    if (norm_miner_options)
        *norm_miner_options = NULL;
    enum ft_err e = parse_config(name, options, miner, miner_options, &c, &ld, &md, err);
    if (e != FT_OK)
        return e;
    if (norm_options)
        *norm_options = opts_json(&c, ld->opts);
    if (norm_miner_options)
        *norm_miner_options = md ? opts_json(&c, md->opts) : json_null();
    return FT_OK;
}

/* ---- the loss object ---- */

enum { NSLOT = 12, NINTER = 4 };

struct ft_loss {
    struct loss_cfg cfg;
    int dim, num_classes;
    float *w, *gw;          /* ArcFaceLoss W (num_classes, dim) and its gradient */
    struct work work;       /* distances (grown on demand) */
    void *slot[NSLOT];      /* per-loss scratch, grown on demand */
    size_t slot_cap[NSLOT]; /* bytes */
    struct {                /* intermediates of the last compute (ft_loss_intermediate) */
        const char *name;
        const float *data;
        size_t n;
    } inter[NINTER];
    int num_inter;
};

/* Scratch slot s holding at least bytes (contents kept only while it does not grow); NULL on
 * ENOMEM. */
static void *slot(ft_loss *l, int s, size_t bytes)
{
    if (l->slot[s] && bytes <= l->slot_cap[s])
        return l->slot[s];
    free(l->slot[s]);
    l->slot[s] = malloc(bytes ? bytes : 1);
    l->slot_cap[s] = l->slot[s] ? bytes : 0;
    return l->slot[s];
}

static float *fslot(ft_loss *l, int s, size_t n)
{
    return slot(l, s, n * sizeof(float));
}

static void add_inter(ft_loss *l, const char *name, const float *data, size_t n)
{
    FT_ASSERT(l->num_inter < NINTER);
    l->inter[l->num_inter].name = name;
    l->inter[l->num_inter].data = data;
    l->inter[l->num_inter].n = n;
    l->num_inter++;
}

/* N(0, 1) by Box-Muller from ft_rng seeded with seed. */
static void normal_fill(float *w, size_t n, uint64_t seed)
{
    struct ft_rng rng;
    ft_rng_seed(&rng, seed);
    for (size_t i = 0; i < n; i += 2) {
        double u1 = ft_rng_uniform(&rng), u2 = ft_rng_uniform(&rng);
        double r = sqrt(-2.0 * log(1.0 - u1)), t = 2.0 * PI * u2;
        w[i] = (float)(r * cos(t));
        if (i + 1 < n)
            w[i + 1] = (float)(r * sin(t));
    }
}

static enum ft_err arcface_init(ft_loss *l, int dim, int num_classes, uint64_t seed,
                                struct ft_error *err)
{
    if (dim < 1 || num_classes < 1)
        return ft_error_set(err, FT_EINVAL, LOSS_PATH,
                            "ArcFaceLoss needs the embedding size and at least one class (got "
                            "dim %d, %d classes)",
                            dim, num_classes);
    size_t n = (size_t)num_classes * (size_t)dim;
    l->w = malloc(n * sizeof *l->w);
    l->gw = calloc(n, sizeof *l->gw);
    if (!l->w || !l->gw)
        return ft_error_set(err, FT_ENOMEM, NULL, "out of memory for ArcFaceLoss W");
    normal_fill(l->w, n, seed);
    return FT_OK;
}

enum ft_err ft_loss_new(const char *name, json_t *options, const char *miner, json_t *miner_options,
                        int dim, int num_classes, uint64_t seed, ft_loss **out,
                        struct ft_error *err)
{
    struct loss_cfg c;
    const struct loss_def *ld;
    const struct miner_def *md;
    *out = NULL;
    enum ft_err e = parse_config(name, options, miner, miner_options, &c, &ld, &md, err);
    if (e != FT_OK)
        return e;
    ft_loss *l = calloc(1, sizeof *l);
    if (!l)
        return ft_error_set(err, FT_ENOMEM, NULL, "out of memory");
    l->cfg = c;
    l->dim = dim;
    l->num_classes = num_classes;
    if (c.loss == LOSS_ARCFACE) {
        e = arcface_init(l, dim, num_classes, seed, err);
        if (e != FT_OK) {
            ft_loss_free(l);
            return e;
        }
    }
    *out = l;
    return FT_OK;
}

void ft_loss_free(ft_loss *l)
{
    if (!l)
        return;
    free(l->w);
    free(l->gw);
    work_free(&l->work);
    for (int i = 0; i < NSLOT; i++)
        free(l->slot[i]);
    free(l);
}

size_t ft_loss_num_params(const ft_loss *l)
{
    return l->w ? (size_t)l->num_classes * (size_t)l->dim : 0;
}

float *ft_loss_params(ft_loss *l)
{
    return l->w;
}

float *ft_loss_grads(ft_loss *l)
{
    return l->gw;
}

void ft_loss_zero_grad(ft_loss *l)
{
    if (l->gw)
        memset(l->gw, 0, ft_loss_num_params(l) * sizeof *l->gw);
}

int ft_loss_items_per_class(const ft_loss *l)
{
    return l->cfg.loss == LOSS_CLIP ? 2 : 0;
}

const float *ft_loss_intermediate(const ft_loss *l, const char *name, size_t *n)
{
    for (int i = 0; i < l->num_inter; i++) {
        if (strcmp(l->inter[i].name, name) == 0) {
            if (n)
                *n = l->inter[i].n;
            return l->inter[i].data;
        }
    }
    if (n)
        *n = 0;
    return NULL;
}

/* ---- compute: shared ---- */

static int all_finite(const float *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return 0;
    return 1;
}

static int loss_euclidean(const struct loss_cfg *c)
{
    return (c->loss == LOSS_TRIPLET || c->loss == LOSS_CONTRASTIVE) &&
           c->distance == FT_DIST_EUCLIDEAN;
}

/* Distance matrix of emb (B, D) into l->work, registered as "dist_matrix"; dd zeroed when grad.
 * *finite = 0 when some distance is not finite. Errors: FT_ENOMEM. */
static enum ft_err dist_prepare(ft_loss *l, const float *emb, int B, int D, int grad, int *finite)
{
    struct work *w = &l->work;
    if (!work_reserve(w, B, D, loss_euclidean(&l->cfg), l->cfg.normalize))
        return FT_ENOMEM;
    compute_dist(w, emb);
    if (grad)
        memset(w->dd, 0, (size_t)B * B * sizeof *w->dd);
    add_inter(l, "dist_matrix", w->dist, (size_t)B * B);
    *finite = !w->nonfinite;
    return FT_OK;
}

/* Similarity (cosine: s = 1 - d) or distance (euclidean) of pair (i, j): what pml's distance
 * object returns, so margins and miner rules compare against it. */
static float measure(const struct work *w, int i, int j)
{
    float d = w->dist[(size_t)i * w->B + j];
    return w->euclidean ? d : 1.0f - d;
}

/* ---- TripletMarginLoss: the enumerating path (swap, smooth_loss, BatchHardMiner) ---- */

struct triplet_mode {
    int swap, smooth, batch_hard;
};

static struct ft_triplet_opts triplet_opts_of(const struct loss_cfg *c)
{
    struct ft_triplet_opts o;
    ft_triplet_opts_default(&o);
    o.margin = c->margin;
    o.distance = (enum ft_distance)c->distance;
    o.normalize_embeddings = c->normalize;
    o.use_miner = c->miner == MINER_TRIPLET_MARGIN;
    o.miner_margin = c->miner_margin;
    o.type = (enum ft_triplet_type)c->type;
    return o;
}

/* torch.nn.functional.softplus (beta 1) of x without overflow, in float as torch's float32;
 * *grad = its derivative sigmoid(x). One expf and one log1pf. */
static float softplus(float x, float *grad)
{
    float e = expf(-fabsf(x));
    *grad = x >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
    return (x > 0.0f ? x : 0.0f) + log1pf(e);
}

/* One triplet (pml TripletMarginLoss.compute_loss): with swap the negative distance is
 * min(d(a,n), d(p,n)) (pml distance.smallest_dist); violation v = d(a,p) - d(a,n) + margin;
 * loss relu(v) or softplus(v) (smooth_loss). Adds to t and, when dd, +g at (a,p) and -g at the
 * negative's pair, g = d loss / d v. */
static void triplet_term(struct tally *t, float *dd, const struct work *w, int a, int p, int n,
                         const struct triplet_mode *m, float margin)
{
    size_t B = (size_t)w->B;
    int from = a;
    float dap = w->dist[a * B + p], dan = w->dist[a * B + n];
    if (m->swap && w->dist[p * B + n] < dan) {
        dan = w->dist[p * B + n];
        from = p;
    }
    float v = dap - dan + margin, g = 1.0f;
    float l = m->smooth ? softplus(v, &g) : (v > 0.0f ? v : 0.0f);
    t->kept++;
    if (!(l > 0.0f)) /* AvgNonZero counts losses > 0 */
        return;
    t->nonzero++;
    t->loss += l;
    if (!dd)
        return;
    dd[a * B + p] += g;
    dd[from * B + n] -= g;
    tally_hit(t, (int64_t)(a * B + p));
    tally_hit(t, (int64_t)(from * B + n));
}

/* The first j (!= a when pos) whose label equality with a's is pos and whose distance is v. */
static int first_at(const float *drow, const int32_t *labels, int a, int B, int pos, float v)
{
    for (int j = 0; j < B; j++)
        if (j != a && (labels[j] == labels[a]) == pos && drow[j] == v)
            return j;
    return -1;
}

/* batch_hard for a row of finite distances: the extremes without branches (labels are
 * unpredictable), then the first index holding each: the scan's choice. */
static int batch_hard_finite(const float *drow, const int32_t *labels, int a, int B, int *p, int *n)
{
    float hi = -INFINITY, lo = INFINITY;
    int32_t la = labels[a];
    for (int j = 0; j < B; j++) {
        int pos = labels[j] == la;
        float vp = pos && j != a ? drow[j] : -INFINITY;
        float vn = pos ? INFINITY : drow[j];
        hi = vp > hi ? vp : hi;
        lo = vn < lo ? vn : lo;
    }
    *p = hi > -INFINITY ? first_at(drow, labels, a, B, 1, hi) : -1;
    *n = lo < INFINITY ? first_at(drow, labels, a, B, 0, lo) : -1;
    return *p >= 0 && *n >= 0;
}

#if defined(__x86_64__) && defined(__GNUC__)
/* Lanes j .. j + 7: positives (label of a, not a itself) into *pos, negatives into *neg. */
__attribute__((target("avx2"))) static inline void
hard_masks(const int32_t *labels, __m256i la, int a, int j, __m256 *pos, __m256 *neg)
{
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i same = _mm256_cmpeq_epi32(_mm256_loadu_si256((const __m256i *)(labels + j)), la);
    __m256i self =
        _mm256_cmpeq_epi32(_mm256_add_epi32(iota, _mm256_set1_epi32(j)), _mm256_set1_epi32(a));
    *pos = _mm256_castsi256_ps(_mm256_andnot_si256(self, same));
    *neg = _mm256_castsi256_ps(_mm256_xor_si256(same, _mm256_set1_epi32(-1)));
}

/* The first lane j of v equal to x among the lanes of mask: 8 at a time, B - B % 8 lanes; -1 if
 * none. */
__attribute__((target("avx2"))) static int first_lane(const float *drow, const int32_t *labels,
                                                      int a, int B, float x, int want_pos)
{
    __m256i la = _mm256_set1_epi32(labels[a]);
    __m256 vx = _mm256_set1_ps(x);
    for (int j = 0; j + 8 <= B; j += 8) {
        __m256 pos, neg;
        hard_masks(labels, la, a, j, &pos, &neg);
        __m256 eq = _mm256_cmp_ps(_mm256_loadu_ps(drow + j), vx, _CMP_EQ_OQ);
        int m = _mm256_movemask_ps(_mm256_and_ps(eq, want_pos ? pos : neg));
        if (m)
            return j + __builtin_ctz((unsigned)m);
    }
    return -1;
}

/* batch_hard_finite with AVX2, 8 columns at a time (the tail as the scalar rule): the same
 * extremes (max/min are exact) and the same first indices. */
__attribute__((target("avx2"))) static int batch_hard_avx2(const float *drow, const int32_t *labels,
                                                           int a, int B, int *p, int *n)
{
    __m256i la = _mm256_set1_epi32(labels[a]);
    __m256 vhi = _mm256_set1_ps(-INFINITY), vlo = _mm256_set1_ps(INFINITY);
    int j = 0;
    for (; j + 8 <= B; j += 8) {
        __m256 pos, neg, d = _mm256_loadu_ps(drow + j);
        hard_masks(labels, la, a, j, &pos, &neg);
        vhi = _mm256_max_ps(vhi, _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), d, pos));
        vlo = _mm256_min_ps(vlo, _mm256_blendv_ps(_mm256_set1_ps(INFINITY), d, neg));
    }
    float h[8], l[8], hi = -INFINITY, lo = INFINITY;
    _mm256_storeu_ps(h, vhi);
    _mm256_storeu_ps(l, vlo);
    for (int q = 0; q < 8; q++) {
        hi = h[q] > hi ? h[q] : hi;
        lo = l[q] < lo ? l[q] : lo;
    }
    for (; j < B; j++) {
        int pos = labels[j] == labels[a];
        if (pos && j != a && drow[j] > hi)
            hi = drow[j];
        else if (!pos && drow[j] < lo)
            lo = drow[j];
    }
    *p = hi > -INFINITY ? first_lane(drow, labels, a, B, hi, 1) : -1;
    *n = lo < INFINITY ? first_lane(drow, labels, a, B, lo, 0) : -1;
    if (*p < 0 && hi > -INFINITY)
        *p = first_at(drow, labels, a, B, 1, hi);
    if (*n < 0 && lo < INFINITY)
        *n = first_at(drow, labels, a, B, 0, lo);
    return *p >= 0 && *n >= 0;
}

static int have_avx2(void)
{
    return __builtin_cpu_supports("avx2");
}
#else
static int batch_hard_avx2(const float *drow, const int32_t *labels, int a, int B, int *p, int *n)
{
    return batch_hard_finite(drow, labels, a, B, p, n);
}

static int have_avx2(void)
{
    return 0;
}
#endif

/* pml BatchHardMiner for anchor a: the farthest positive and the nearest negative (the first
 * index on ties); 0 when a has no positive or no negative. finite: every distance of the row is
 * finite (the branch-free paths). */
static int batch_hard(const float *drow, const int32_t *labels, int a, int B, int finite, int *p,
                      int *n)
{
    if (finite && have_avx2())
        return batch_hard_avx2(drow, labels, a, B, p, n);
    if (finite)
        return batch_hard_finite(drow, labels, a, B, p, n);
    *p = -1;
    *n = -1;
    for (int j = 0; j < B; j++) {
        if (j == a)
            continue;
        if (labels[j] == labels[a]) {
            if (*p < 0 || drow[j] > drow[*p])
                *p = j;
        } else if (*n < 0 || drow[j] < drow[*n]) {
            *n = j;
        }
    }
    return *p >= 0 && *n >= 0;
}

/* Every triplet the miner keeps (BatchHardMiner: one per anchor), one at a time: O(B * P * N)
 * per batch, for the variants the sorted sweep cannot do. */
static void triplet_enumerate(struct tally *t, float *dd, const struct work *w,
                              const int32_t *labels, const struct ft_triplet_opts *o,
                              const struct triplet_mode *m)
{
    int B = w->B;
    struct miner_bounds mb = miner_bounds(o);
    float margin = (float)o->margin;
    *t = (struct tally){.hit = t->hit, .cap_hit = t->cap_hit}; /* the caller's hit list stays */
    for (int a = 0; a < B; a++) {
        const float *drow = w->dist + (size_t)a * B;
        int p, n;
        if (m->batch_hard) {
            if (batch_hard(drow, labels, a, B, !w->nonfinite, &p, &n))
                triplet_term(t, dd, w, a, p, n, m, margin);
            continue;
        }
        for (p = 0; p < B; p++) {
            if (p == a || labels[p] != labels[a])
                continue;
            for (n = 0; n < B; n++) {
                float mm = drow[n] - drow[p];
                if (labels[n] != labels[a] && mm > mb.lo && mm <= mb.hi)
                    triplet_term(t, dd, w, a, p, n, m, margin);
            }
        }
    }
}

/* The sorted sweep's per-anchor scratch for B anchors, in the loss's slots (kept between
 * calls, so a training step does not allocate). -1 on ENOMEM. */
static int triplet_scratch(ft_loss *l, int B, struct anchor_scratch *s)
{
    size_t n = (size_t)B;
    s->keys = slot(l, 0, n * sizeof *s->keys);
    s->tmp = slot(l, 1, n * sizeof *s->tmp);
    s->pkeys = slot(l, 2, n * sizeof *s->pkeys);
    s->v = slot(l, 3, n * sizeof *s->v);
    s->prefix = slot(l, 4, (n + 1) * sizeof *s->prefix);
    s->diff = slot(l, 5, (n + 1) * sizeof *s->diff);
    return s->keys && s->tmp && s->pkeys && s->v && s->prefix && s->diff ? 0 : -1;
}

static enum ft_err triplet_compute(ft_loss *l, const float *emb, const int32_t *labels, int B,
                                   int D, float *loss, float *demb, struct ft_loss_stats *st)
{
    struct anchor_scratch sc;
    struct ft_triplet_opts o = triplet_opts_of(&l->cfg);
    struct triplet_mode m = {l->cfg.swap, l->cfg.smooth, l->cfg.miner == MINER_BATCH_HARD};
    struct work *w = &l->work;
    struct tally t = {0};
    int finite;
    enum ft_err e = dist_prepare(l, emb, B, D, demb != NULL, &finite);
    if (e != FT_OK || !finite) {
        *loss = e == FT_OK ? NAN : 0.0f;
        return e;
    }
    float *dd = demb ? w->dd : NULL;
    if (dd) { /* BatchHardMiner writes 2 entries an anchor; other triplets may overflow it */
        t.hit = slot(l, 10, 4 * (size_t)B * sizeof *t.hit);
        t.cap_hit = t.hit ? 4 * B : 0;
    }
    if (m.swap || m.smooth || m.batch_hard)
        triplet_enumerate(&t, dd, w, labels, &o, &m);
    else if (triplet_scratch(l, B, &sc) == 0)
        triplet_pass(&t, dd, w, labels, &o, &sc);
    else
        return FT_ENOMEM;
    st->num_triplets = t.kept;
    st->num_nonzero = t.nonzero;
    if (t.nonzero == 0)
        return FT_OK;
    *loss = (float)(t.loss / (double)t.nonzero);
    if (demb) {
        float c = (float)(1.0 / (double)t.nonzero);
        int n = t.hit && t.nhit >= 0 ? sort_hits(t.hit, t.nhit) : -1;
        for (int h = 0; h < n; h++) /* scale's product, on the only entries that can be nonzero */
            w->dd[t.hit[h]] *= c;
        if (n < 0)
            scale(w->dd, (size_t)B * B, c);
        backward(demb, w, n >= 0 ? t.hit : NULL, n);
    }
    return FT_OK;
}

/* ---- pair selection: every pair, or a pair miner's ---- */

/* mask (B, B): 1 for a positive pair (i != j, same label), 2 for a negative pair. */
static void all_pairs(uint8_t *mask, const int32_t *labels, int B)
{
    for (int i = 0; i < B; i++)
        for (int j = 0; j < B; j++)
            mask[(size_t)i * B + j] = i == j ? 0 : labels[i] == labels[j] ? 1 : 2;
}

/* pml PairMarginMiner: similarity s: keep positives s < pos_margin, negatives s > neg_margin;
 * distance d: keep positives d > pos_margin, negatives d < neg_margin. */
static void pair_margin_filter(uint8_t *mask, const struct work *w, const struct loss_cfg *c)
{
    float pm = (float)c->miner_pos_margin, nm = (float)c->miner_neg_margin;
    int inv = !w->euclidean, B = w->B;
    for (int i = 0; i < B; i++) {
        for (int j = 0; j < B; j++) {
            uint8_t *k = mask + (size_t)i * B + j;
            float v = measure(w, i, j);
            if ((*k == 1 && !(inv ? v < pm : v > pm)) || (*k == 2 && !(inv ? v > nm : v < nm)))
                *k = 0;
        }
    }
}

/* pml MultiSimilarityMiner on row a (see loss.h): extremes of the positives and negatives,
 * then the epsilon rule against the other set's extreme. */
static void ms_filter_row(uint8_t *mrow, const struct work *w, int a, float eps)
{
    int inv = !w->euclidean, B = w->B;
    float pos_lo = INFINITY, pos_hi = -INFINITY, neg_lo = INFINITY, neg_hi = -INFINITY;
    for (int j = 0; j < B; j++) {
        float v = measure(w, a, j);
        if (mrow[j] == 1) {
            pos_lo = v < pos_lo ? v : pos_lo;
            pos_hi = v > pos_hi ? v : pos_hi;
        } else if (mrow[j] == 2) {
            neg_lo = v < neg_lo ? v : neg_lo;
            neg_hi = v > neg_hi ? v : neg_hi;
        }
    }
    for (int j = 0; j < B; j++) {
        float v = measure(w, a, j);
        if (mrow[j] == 1 && !(inv ? v - eps < neg_hi : v + eps > neg_lo))
            mrow[j] = 0;
        else if (mrow[j] == 2 && !(inv ? v + eps > pos_lo : v - eps < pos_hi))
            mrow[j] = 0;
    }
}

static void count_pairs(const uint8_t *mask, int B, int64_t *npos, int64_t *nneg)
{
    *npos = 0;
    *nneg = 0;
    for (size_t i = 0; i < (size_t)B * B; i++) {
        *npos += mask[i] == 1;
        *nneg += mask[i] == 2;
    }
}

/* The pairs the loss uses (in scratch slot 0, valid until the next compute); their counts into
 * st. NULL on ENOMEM. Needs l->work's distances. */
static uint8_t *pair_selection(ft_loss *l, const int32_t *labels, int B, struct ft_loss_stats *st)
{
    uint8_t *mask = slot(l, 0, (size_t)B * B);
    if (!mask)
        return NULL;
    all_pairs(mask, labels, B);
    if (l->cfg.miner == MINER_PAIR_MARGIN)
        pair_margin_filter(mask, &l->work, &l->cfg);
    if (l->cfg.miner == MINER_MULTI_SIM) {
        count_pairs(mask, B, &st->num_pos_pairs, &st->num_neg_pairs);
        if (st->num_pos_pairs == 0 || st->num_neg_pairs == 0) /* pml: nothing mined */
            memset(mask, 0, (size_t)B * B);
        for (int a = 0; a < B && st->num_pos_pairs && st->num_neg_pairs; a++)
            ms_filter_row(mask + (size_t)a * B, &l->work, a, (float)l->cfg.epsilon);
    }
    count_pairs(mask, B, &st->num_pos_pairs, &st->num_neg_pairs);
    return mask;
}

/* ---- ContrastiveLoss ---- */

/* pml ContrastiveLoss: per pair relu(d - pos_margin) / relu(neg_margin - d) (similarity:
 * relu(pos_margin - s) / relu(s - neg_margin)); each half AvgNonZero, then added. dd (when
 * non-NULL, zeroed) gets d loss / d distance: +1/num_pos_nonzero or -1/num_neg_nonzero. */
static double contrastive_pass(const uint8_t *mask, const struct work *w, const struct loss_cfg *c,
                               float *dd, struct ft_loss_stats *st)
{
    size_t BB = (size_t)w->B * w->B;
    int inv = !w->euclidean;
    float pm = (float)c->pos_margin, nm = (float)c->neg_margin;
    double sum[2] = {0.0, 0.0};
    int64_t nz[2] = {0, 0};
    for (size_t ij = 0; ij < BB; ij++) {
        if (!mask[ij])
            continue;
        float v = inv ? 1.0f - w->dist[ij] : w->dist[ij];
        int neg = mask[ij] == 2;
        float x = neg ? (inv ? v - nm : nm - v) : (inv ? pm - v : v - pm);
        if (!(x > 0.0f))
            continue;
        sum[neg] += x;
        nz[neg]++;
        if (dd)
            dd[ij] = neg ? -1.0f : 1.0f;
    }
    st->num_pos_nonzero = nz[0];
    st->num_neg_nonzero = nz[1];
    st->pos_loss = nz[0] ? sum[0] / (double)nz[0] : 0.0;
    st->neg_loss = nz[1] ? sum[1] / (double)nz[1] : 0.0;
    for (size_t ij = 0; dd && ij < BB; ij++) {
        if (dd[ij] > 0.0f)
            dd[ij] = (float)(1.0 / (double)nz[0]);
        else if (dd[ij] < 0.0f)
            dd[ij] = (float)(-1.0 / (double)nz[1]);
    }
    return st->pos_loss + st->neg_loss;
}

/* ---- NTXentLoss ---- */

/* Anchor i's negatives: M = max z, S = sum exp(z - M) with z = s / temperature (S = 0 and
 * M = -inf when it has none). */
static void ntxent_negatives(const uint8_t *mrow, const struct work *w, int i, double inv_t,
                             double *M, double *S)
{
    *M = -INFINITY;
    *S = 0.0;
    for (int k = 0; k < w->B; k++)
        if (mrow[k] == 2 && measure(w, i, k) * inv_t > *M)
            *M = measure(w, i, k) * inv_t;
    for (int k = 0; k < w->B; k++)
        if (mrow[k] == 2)
            *S += exp(measure(w, i, k) * inv_t - *M);
}

/* One anchor: the loss of each of its positive pairs into pl (advanced), their sum returned;
 * with ddrow, d loss / d distance for the row (the mean over P pairs: scale 1/P). pml
 * NTXentLoss: l(i,j) = -log(exp(z_ij) / (exp(z_ij) + sum_k exp(z_ik))), k over i's negatives. */
static double ntxent_row(const uint8_t *mrow, const struct work *w, int i, double inv_t,
                         double inv_p, float **pl, float *ddrow)
{
    double M, S, sum = 0.0, wsum = 0.0;
    ntxent_negatives(mrow, w, i, inv_t, &M, &S);
    for (int j = 0; j < w->B; j++) {
        if (mrow[j] != 1)
            continue;
        double z = measure(w, i, j) * inv_t, m = z > M ? z : M;
        double ez = exp(z - m), den = ez + (S > 0.0 ? S * exp(M - m) : 0.0);
        double lij = log(den) - (z - m);
        *(*pl)++ = (float)lij;
        sum += lij;
        if (ddrow) { /* dL/dz_ij = p - 1; dL/dd = -dL/ds = -dL/dz / temperature */
            ddrow[j] = (float)(-(ez / den - 1.0) * inv_t * inv_p);
            wsum += exp(M - m) / den;
        }
    }
    for (int k = 0; ddrow && S > 0.0 && k < w->B; k++)
        if (mrow[k] == 2) /* dL/dz_ik = sum_j exp(z_ik) / den_ij */
            ddrow[k] = (float)(-exp(measure(w, i, k) * inv_t - M) * wsum * inv_t * inv_p);
    return sum;
}

/* Mean over the positive pairs; 0 without negatives (pml returns zero losses then). */
static enum ft_err ntxent_pass(ft_loss *l, const uint8_t *mask, float *dd,
                               const struct ft_loss_stats *st, double *value)
{
    const struct work *w = &l->work;
    int64_t P = st->num_pos_pairs;
    *value = 0.0;
    if (P == 0 || st->num_neg_pairs == 0)
        return FT_OK;
    float *pl = fslot(l, 1, (size_t)P);
    if (!pl)
        return FT_ENOMEM;
    add_inter(l, "pair_losses", pl, (size_t)P);
    double inv_t = 1.0 / l->cfg.temperature, sum = 0.0;
    for (int i = 0; i < w->B; i++)
        sum += ntxent_row(mask + (size_t)i * w->B, w, i, inv_t, 1.0 / (double)P, &pl,
                          dd ? dd + (size_t)i * w->B : NULL);
    *value = sum / (double)P;
    return FT_OK;
}

/* ---- MultiSimilarityLoss ---- */

/* log(1 + sum_j exp(x_j)) over the row's pairs of kind, x_j = k (s_ij - base), max-shifted (pml
 * lmu.logsumexp with add_one); 0 when the set is empty. With grow, adds gscale * exp(x_j) /
 * (1 + sum exp x) to grow[j]. */
static double lse1_row(const uint8_t *mrow, const struct work *w, int i, uint8_t kind, double k,
                       double base, float *grow, double gscale)
{
    double m = 0.0, S;
    int any = 0;
    for (int j = 0; j < w->B; j++) {
        if (mrow[j] == kind) {
            double x = k * (measure(w, i, j) - base);
            m = x > m ? x : m;
            any = 1;
        }
    }
    if (!any)
        return 0.0;
    S = exp(-m);
    for (int j = 0; j < w->B; j++)
        if (mrow[j] == kind)
            S += exp(k * (measure(w, i, j) - base) - m);
    for (int j = 0; grow && j < w->B; j++)
        if (mrow[j] == kind)
            grow[j] += (float)(gscale * exp(k * (measure(w, i, j) - base) - m) / S);
    return m + log(S);
}

/* pml MultiSimilarityLoss: l_i = (1/alpha) log(1 + sum_P exp(-alpha (s - base))) + (1/beta)
 * log(1 + sum_N exp(beta (s - base))), mean over all B items. dd = -dL/ds. */
static enum ft_err ms_pass(ft_loss *l, const uint8_t *mask, float *dd, double *value)
{
    const struct work *w = &l->work;
    int B = w->B;
    double a = l->cfg.alpha, b = l->cfg.beta, base = l->cfg.base, sum = 0.0;
    float *per_item = fslot(l, 1, (size_t)B);
    if (!per_item)
        return FT_ENOMEM;
    add_inter(l, "per_item_loss", per_item, (size_t)B);
    for (int i = 0; i < B; i++) {
        const uint8_t *mrow = mask + (size_t)i * B;
        float *grow = dd ? dd + (size_t)i * B : NULL;
        double lp = lse1_row(mrow, w, i, 1, -a, base, grow, 1.0 / B) / a;
        double ln = lse1_row(mrow, w, i, 2, b, base, grow, -1.0 / B) / b;
        per_item[i] = (float)(lp + ln);
        sum += lp + ln;
    }
    *value = sum / B;
    return FT_OK;
}

/* ContrastiveLoss, NTXentLoss, MultiSimilarityLoss: distances, pair selection, the loss's pass
 * filling dd, then one backward through the distances. */
static enum ft_err pair_compute(ft_loss *l, const float *emb, const int32_t *labels, int B, int D,
                                float *loss, float *demb, struct ft_loss_stats *st)
{
    int finite;
    double value = 0.0;
    enum ft_err e = dist_prepare(l, emb, B, D, demb != NULL, &finite);
    if (e != FT_OK || !finite) {
        *loss = e == FT_OK ? NAN : 0.0f;
        return e;
    }
    uint8_t *mask = pair_selection(l, labels, B, st);
    if (!mask)
        return FT_ENOMEM;
    if (st->num_pos_pairs <= 1 && st->num_neg_pairs <= 1) /* pml GenericPairLoss: zero */
        return FT_OK;
    float *dd = demb ? l->work.dd : NULL;
    if (l->cfg.loss == LOSS_CONTRASTIVE)
        value = contrastive_pass(mask, &l->work, &l->cfg, dd, st);
    else if (l->cfg.loss == LOSS_NTXENT)
        e = ntxent_pass(l, mask, dd, st, &value);
    else
        e = ms_pass(l, mask, dd, &value);
    if (e != FT_OK)
        return e;
    *loss = (float)value;
    if (demb)
        backward(demb, &l->work, NULL, 0);
    return FT_OK;
}

/* ---- CLIPLoss ---- */

/* Pair the batch up: every label must have exactly two items; row r of the n = B/2 rows is a
 * label (in order of its first item) with img[r] = its first item, txt[r] = its second. The
 * rows live in scratch slot 2 (img = rows, txt = rows + n). Errors: FT_EINVAL, FT_ENOMEM. */
static enum ft_err clip_rows(ft_loss *l, const int32_t *labels, int B)
{
    uint64_t *keys = slot(l, 0, (size_t)B * sizeof *keys);
    uint64_t *tmp = slot(l, 1, (size_t)B * sizeof *tmp);
    int *rows = slot(l, 2, (size_t)B * sizeof *rows),
        *second = slot(l, 9, (size_t)B * sizeof *rows);
    if (!keys || !tmp || !rows || !second)
        return FT_ENOMEM;
    if (B % 2)
        return FT_EINVAL;
    for (int i = 0; i < B; i++) {
        keys[i] = ((uint64_t)((uint32_t)labels[i] ^ 0x80000000u) << 32) | (uint32_t)i;
        second[i] = -1;
    }
    radix_sort_hi(keys, tmp, B); /* stable: a label's items stay in index order */
    for (int k = 0; k < B; k += 2) {
        if ((keys[k] >> 32) != (keys[k + 1] >> 32) ||
            (k + 2 < B && (keys[k + 2] >> 32) == (keys[k] >> 32)))
            return FT_EINVAL;
        second[keys[k] & 0xffffffffu] = (int)(keys[k + 1] & 0xffffffffu);
    }
    for (int i = 0, r = 0; i < B; i++) {
        if (second[i] >= 0) {
            rows[r] = i;
            rows[B / 2 + r] = second[i];
            r++;
        }
    }
    return FT_OK;
}

/* max-shifted logsumexp of n values v[0], v[stride], ... */
static double lse_strided(const float *v, int n, int stride)
{
    double m = -INFINITY, s = 0.0;
    for (int i = 0; i < n; i++)
        m = v[(size_t)i * stride] > m ? v[(size_t)i * stride] : m;
    for (int i = 0; i < n; i++)
        s += exp(v[(size_t)i * stride] - m);
    return m + log(s);
}

/* (CE(L, diag) + CE(L^T, diag)) / 2 for logits L (n, n); G (n, n) = d loss / d L. */
static double clip_ce(const float *L, float *G, int n)
{
    double loss = 0.0, inv = 1.0 / (2.0 * n);
    for (int r = 0; r < n; r++) {
        const float *row = L + (size_t)r * n;
        double lse = lse_strided(row, n, 1);
        loss += lse - row[r];
        for (int c = 0; c < n; c++)
            G[(size_t)r * n + c] = (float)((exp(row[c] - lse) - (r == c)) * inv);
    }
    for (int c = 0; c < n; c++) {
        double lse = lse_strided(L + c, n, n);
        loss += lse - L[(size_t)c * n + c];
        for (int r = 0; r < n; r++)
            G[(size_t)r * n + c] += (float)((exp(L[(size_t)r * n + c] - lse) - (r == c)) * inv);
    }
    return loss * inv;
}

/* Finetuner CLIPLoss on the rows clip_rows made: logits = (1/0.07) img txt^T, symmetric CE.
 * No normalisation here (the model's l2 option gives unit vectors). */
static enum ft_err clip_compute(ft_loss *l, const float *emb, int B, int D, float *loss,
                                float *demb)
{
    const int *img = l->slot[2], *txt = img + B / 2; /* from clip_rows (validate_batch) */
    int n = B / 2;
    float s = (float)(1.0 / 0.07);
    float *xi = fslot(l, 3, (size_t)n * D), *xt = fslot(l, 4, (size_t)n * D);
    float *L = fslot(l, 5, (size_t)n * n), *G = fslot(l, 6, (size_t)n * n);
    float *gi = fslot(l, 7, (size_t)n * D), *gt = fslot(l, 8, (size_t)n * D);
    if (!xi || !xt || !L || !G || !gi || !gt)
        return FT_ENOMEM;
    for (int r = 0; r < n; r++) {
        memcpy(xi + (size_t)r * D, emb + (size_t)img[r] * D, (size_t)D * sizeof *emb);
        memcpy(xt + (size_t)r * D, emb + (size_t)txt[r] * D, (size_t)D * sizeof *emb);
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, D, s, xi, D, xt, D, 0.0f, L, n);
    add_inter(l, "logits", L, (size_t)n * n);
    *loss = (float)clip_ce(L, G, n);
    if (!demb)
        return FT_OK;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, D, n, s, G, n, xt, D, 0.0f, gi, D);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, D, n, s, G, n, xi, D, 0.0f, gt, D);
    for (int r = 0; r < n; r++) {
        memcpy(demb + (size_t)img[r] * D, gi + (size_t)r * D, (size_t)D * sizeof *demb);
        memcpy(demb + (size_t)txt[r] * D, gt + (size_t)r * D, (size_t)D * sizeof *demb);
    }
    return FT_OK;
}

/* ---- ArcFaceLoss ---- */

/* Row i of pml ArcFaceLoss (>= 1.7): theta = acos(clamp(cos_y, -1, 1)); target logit
 * cos(theta + m) if theta <= pi - m, else cos(theta) - m sin(m); logits * scale into lrow; returns
 * CE(lrow, y). With dcrow, d loss_i / d cos * inv_b (the target through dt/dcos: sin(theta + m)
 * / sin(theta), resp. 1; 0 outside the clamp). */
static double arcface_row(const float *crow, float *lrow, float *dcrow, float *angle, int C, int y,
                          double m, double scale, double inv_b)
{
    double c = crow[y], cl = c < -1.0 ? -1.0 : c > 1.0 ? 1.0 : c;
    double th = acos(cl), t, dt;
    if (th <= PI - m) {
        t = cos(th + m);
        dt = (c > -1.0 && c < 1.0) ? sin(th + m) / sin(th) : 0.0;
    } else {
        t = cl - m * sin(m);
        dt = (c >= -1.0 && c <= 1.0) ? 1.0 : 0.0;
    }
    *angle = (float)th;
    for (int k = 0; k < C; k++)
        lrow[k] = (float)(scale * (k == y ? t : (double)crow[k]));
    double lse = lse_strided(lrow, C, 1);
    for (int k = 0; dcrow && k < C; k++) {
        double g = (exp(lrow[k] - lse) - (k == y)) * inv_b * scale;
        dcrow[k] = (float)(k == y ? g * dt : g);
    }
    return lse - lrow[y];
}

/* dcos (B, C) back to demb (written) and W's gradient (accumulated), through both
 * normalisations. */
static enum ft_err arcface_backward(ft_loss *l, float *demb, const float *xn, const float *xnorm,
                                    const float *wn, const float *wnorm, const float *dcos, int B)
{
    int C = l->num_classes, D = l->dim;
    float *dxn = fslot(l, 8, (size_t)B * D), *dwn = fslot(l, 9, (size_t)C * D);
    if (!dxn || !dwn)
        return FT_ENOMEM;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, D, C, 1.0f, dcos, C, wn, D, 0.0f, dxn,
                D);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, C, D, B, 1.0f, dcos, C, xn, D, 0.0f, dwn,
                D);
    ft_l2_normalize_backward(demb, dxn, xn, xnorm, B, D);
    ft_l2_normalize_backward(dwn, dwn, wn, wnorm, C, D);
    for (size_t i = 0; i < (size_t)C * D; i++)
        l->gw[i] += dwn[i];
    return FT_OK;
}

static enum ft_err arcface_compute(ft_loss *l, const float *emb, const int32_t *labels, int B,
                                   float *loss, float *demb)
{
    int C = l->num_classes, D = l->dim;
    size_t bc = (size_t)B * C;
    float *xn = fslot(l, 0, (size_t)B * D), *xnorm = fslot(l, 1, B);
    float *wn = fslot(l, 2, (size_t)C * D), *wnorm = fslot(l, 3, C);
    float *cosm = fslot(l, 4, bc), *lg = fslot(l, 5, bc), *ang = fslot(l, 6, B);
    float *dcos = fslot(l, 7, bc);
    if (!xn || !xnorm || !wn || !wnorm || !cosm || !lg || !ang || !dcos)
        return FT_ENOMEM;
    ft_l2_normalize_forward(xn, xnorm, emb, B, D);
    ft_l2_normalize_forward(wn, wnorm, l->w, C, D);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, C, D, 1.0f, xn, D, wn, D, 0.0f, cosm,
                C);
    add_inter(l, "cosine", cosm, bc);
    add_inter(l, "logits", lg, bc);
    add_inter(l, "target_angle", ang, B);
    double m = l->cfg.margin * PI / 180.0, sum = 0.0;
    for (int i = 0; i < B; i++)
        sum += arcface_row(cosm + (size_t)i * C, lg + (size_t)i * C,
                           demb ? dcos + (size_t)i * C : NULL, ang + i, C, labels[i], m,
                           l->cfg.scale, 1.0 / B);
    *loss = (float)(sum / B);
    return demb ? arcface_backward(l, demb, xn, xnorm, wn, wnorm, dcos, B) : FT_OK;
}

/* ---- ft_loss_compute ---- */

/* What needs the batch's shape and labels but not its values: ArcFaceLoss's dim and label
 * range, CLIPLoss's pairing. */
static enum ft_err validate_batch(ft_loss *l, const int32_t *labels, int B, int D)
{
    if (B < 0 || D < 0)
        return FT_EINVAL;
    if (l->cfg.loss == LOSS_ARCFACE) {
        if (B > 0 && D != l->dim)
            return FT_EINVAL;
        for (int i = 0; i < B; i++)
            if (labels[i] < 0 || labels[i] >= l->num_classes)
                return FT_EINVAL;
    }
    if (l->cfg.loss == LOSS_CLIP)
        return clip_rows(l, labels, B);
    return FT_OK;
}

static enum ft_err dispatch(ft_loss *l, const float *emb, const int32_t *labels, int B, int D,
                            float *loss, float *demb, struct ft_loss_stats *st)
{
    switch (l->cfg.loss) {
    case LOSS_TRIPLET:
        return triplet_compute(l, emb, labels, B, D, loss, demb, st);
    case LOSS_CONTRASTIVE:
    case LOSS_NTXENT:
    case LOSS_MULTI_SIM:
        return pair_compute(l, emb, labels, B, D, loss, demb, st);
    case LOSS_CLIP:
        return clip_compute(l, emb, B, D, loss, demb);
    case LOSS_ARCFACE:
        return arcface_compute(l, emb, labels, B, loss, demb);
    }
    return FT_EINTERNAL;
}

enum ft_err ft_loss_compute(ft_loss *l, const float *emb, const int32_t *labels, int B, int D,
                            float *loss, float *demb, struct ft_loss_stats *stats)
{
    struct ft_loss_stats st;
    memset(&st, 0, sizeof st);
    l->num_inter = 0;
    *loss = 0.0f;
    if (demb && B > 0 && D > 0)
        memset(demb, 0, (size_t)B * D * sizeof *demb);
    enum ft_err e = validate_batch(l, labels, B, D);
    if (e == FT_OK && B > 0 && D > 0) {
        if (all_finite(emb, (size_t)B * D))
            e = dispatch(l, emb, labels, B, D, loss, demb, &st);
        else
            *loss = NAN;
    }
    if (e == FT_OK && demb && B > 0 && D > 0 && !isfinite(*loss))
        memset(demb, 0, (size_t)B * D * sizeof *demb);
    if (stats)
        *stats = st;
    return e;
}

/* ---- mining, for tests and diagnostics ---- */

enum ft_err ft_loss_mine_triplets(ft_loss *l, const float *emb, const int32_t *labels, int B, int D,
                                  int64_t *trip, int64_t cap, int64_t *count)
{
    *count = 0;
    l->num_inter = 0;
    if (l->cfg.loss != LOSS_TRIPLET)
        return FT_EINVAL;
    if (B < 3 || D <= 0)
        return FT_OK;
    if (l->cfg.miner != MINER_BATCH_HARD) {
        struct ft_triplet_opts o = triplet_opts_of(&l->cfg);
        int64_t c = ft_triplet_mine(trip, cap, emb, labels, B, D, &o);
        *count = c < 0 ? 0 : c;
        return c < 0 ? FT_ENOMEM : FT_OK;
    }
    int finite;
    enum ft_err e = dist_prepare(l, emb, B, D, 0, &finite);
    for (int a = 0, p, n; e == FT_OK && a < B; a++) {
        if (!batch_hard(l->work.dist + (size_t)a * B, labels, a, B, finite, &p, &n))
            continue;
        if (*count < cap) {
            trip[3 * *count] = a;
            trip[3 * *count + 1] = p;
            trip[3 * *count + 2] = n;
        }
        (*count)++;
    }
    return e;
}

enum ft_err ft_loss_mine_pairs(ft_loss *l, const float *emb, const int32_t *labels, int B, int D,
                               uint8_t *mask)
{
    struct ft_loss_stats st;
    int finite;
    l->num_inter = 0;
    if (l->cfg.loss != LOSS_CONTRASTIVE && l->cfg.loss != LOSS_NTXENT &&
        l->cfg.loss != LOSS_MULTI_SIM)
        return FT_EINVAL;
    if (B <= 0 || D <= 0) {
        if (B > 0)
            memset(mask, 0, (size_t)B * B);
        return FT_OK;
    }
    memset(&st, 0, sizeof st);
    enum ft_err e = dist_prepare(l, emb, B, D, 0, &finite);
    const uint8_t *sel = e == FT_OK ? pair_selection(l, labels, B, &st) : NULL;
    if (!sel)
        return FT_ENOMEM;
    memcpy(mask, sel, (size_t)B * B);
    return FT_OK;
}
