/* loss.c — pml TripletMarginLoss (AvgNonZero reducer) with an optional TripletMarginMiner.
 *
 * Design: the B x B distance matrix comes from one Gram sgemm over the normalised (or raw)
 * embeddings. The triplets are never enumerated: per anchor the negatives and the positives
 * are sorted by distance (radix sort) and one sweep over the positives keeps three cursors
 * into the negatives, so the kept/active negatives of each (a, p) are a range whose count,
 * loss sum (prefix sums) and gradient counts (difference array) cost O(1): O(B^2) per batch
 * instead of O(B^3). The counts dL/dD are scaled by 1/num_nonzero and pushed back to the
 * embeddings with one more sgemm, then through the L2 normalisation. ft_triplet_mine
 * enumerates with the same float predicates (the tests check both agree). Scratch buffers are
 * allocated per call and freed before returning.
 *
 * Distances (see loss.h): cosine d = 1 - <n_i, n_j>; euclidean d = sqrt(|x_i|^2 + |x_j|^2 -
 * 2 <x_i, x_j>). Near pairs (d^2 < NEAR (|x_i|^2 + |x_j|^2)) lose digits to cancellation, so
 * their distance is recomputed from the difference vector and their gradient
 * (x_i - x_j) / d is applied directly rather than through the sgemm; d = 0 gives gradient 0.
 * Miner rule with m = d(a,n) - d(a,p): all m <= margin, hard m <= 0, semihard 0 < m <= margin,
 * easy m > margin; a kept triplet's loss is max(0, margin_loss - m). */
#include "loss.h"

#include "nn.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define NEAR 1e-2

struct work {
    int B, D;
    int euclidean;
    int normalize;
    float *x;      /* (B, D) normalised embeddings, or a copy of the raw ones */
    float *norms;  /* (B) row norms saved by the normalisation */
    float *sq;     /* (B) |x_i|^2 */
    float *dist;   /* (B, B) distance matrix */
    float *dd;     /* (B, B) dL/dD, then the symmetric backward weights */
    int nonfinite; /* some distance is NaN or infinite */
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
}

/* Allocate the scratch; returns 0 on ENOMEM (w is then freed). */
static int work_alloc(struct work *w, int B, int D, const struct ft_triplet_opts *o, int grad)
{
    memset(w, 0, sizeof *w);
    w->B = B;
    w->D = D;
    w->euclidean = o->distance == FT_DIST_EUCLIDEAN;
    w->normalize = !w->euclidean || o->normalize_embeddings;
    size_t bb = (size_t)B * B;
    w->x = malloc((size_t)B * D * sizeof *w->x);
    w->norms = malloc((size_t)B * sizeof *w->norms);
    w->sq = malloc((size_t)B * sizeof *w->sq);
    w->dist = malloc(bb * sizeof *w->dist);
    w->dd = grad ? calloc(bb, sizeof *w->dd) : NULL;
    if (!w->x || !w->norms || !w->sq || !w->dist || (grad && !w->dd)) {
        work_free(w);
        return 0;
    }
    return 1;
}

static int is_near(const struct work *w, int i, int j, float d)
{
    return (double)d * d < NEAR * ((double)w->sq[i] + w->sq[j]);
}

static float exact_dist(const struct work *w, int i, int j)
{
    const float *xi = w->x + (size_t)i * w->D, *xj = w->x + (size_t)j * w->D;
    double s = 0.0;
    for (int k = 0; k < w->D; k++) {
        double t = (double)xi[k] - xj[k];
        s += t * t;
    }
    return (float)sqrt(s);
}

/* What tiled_pairs does to each unordered pair (i < j). */
enum pair_op {
    OP_DIST,     /* Gram matrix entry -> distance, mirrored */
    OP_COS_SYM,  /* S_ij = dd_ij + dd_ji, mirrored */
    OP_EUCLID_W, /* S_ij = (dd_ij + dd_ji) / d_ij, mirrored; near pairs applied to gx, S = 0 */
};

static void pair_dist(struct work *w, int i, int j)
{
    size_t ij = (size_t)i * w->B + j, ji = (size_t)j * w->B + i;
    float d;
    if (!w->euclidean) {
        d = 1.0f - w->dist[ij];
    } else {
        float d2 = w->sq[i] + w->sq[j] - 2.0f * w->dist[ij];
        d = sqrtf(d2 > 0.0f ? d2 : 0.0f);
        if (is_near(w, i, j, d))
            d = exact_dist(w, i, j);
    }
    if (!isfinite(d))
        w->nonfinite = 1;
    w->dist[ij] = d;
    w->dist[ji] = d;
}

/* gx_i += c (x_i - x_j), gx_j -= c (x_i - x_j): a near pair's gradient, applied directly. */
static void near_pair(float *gx, const struct work *w, int i, int j, float c)
{
    const float *xi = w->x + (size_t)i * w->D, *xj = w->x + (size_t)j * w->D;
    float *gi = gx + (size_t)i * w->D, *gj = gx + (size_t)j * w->D;
    for (int k = 0; k < w->D; k++) {
        float t = c * (xi[k] - xj[k]);
        gi[k] += t;
        gj[k] -= t;
    }
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
            for (int i = i0; i < i1; i++)
                for (int j = j0 > i + 1 ? j0 : i + 1; j < j1; j++) {
                    if (op == OP_DIST)
                        pair_dist(w, i, j);
                    else
                        pair_weight(w, gx, i, j);
                }
        }
    }
    float *m = op == OP_DIST ? w->dist : w->dd;
    for (int i = 0; i < B; i++)
        m[(size_t)i * B + i] = 0.0f;
}

static void compute_dist(struct work *w, const float *emb)
{
    int B = w->B, D = w->D;
    if (w->normalize)
        ft_l2_normalize_forward(w->x, w->norms, emb, B, D);
    else
        memcpy(w->x, emb, (size_t)B * D * sizeof *emb);
    for (int i = 0; i < B; i++) {
        const float *xi = w->x + (size_t)i * D;
        double s = 0.0;
        for (int k = 0; k < D; k++)
            s += (double)xi[k] * xi[k];
        w->sq[i] = (float)s;
        if (!isfinite(w->sq[i]))
            w->nonfinite = 1;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, B, D, 1.0f, w->x, D, w->x, D, 0.0f,
                w->dist, B);
    tiled_pairs(w, OP_DIST, NULL);
}

struct tally {
    double loss;
    int64_t kept;
    int64_t nonzero;
};

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

/* Loop over anchors; dd (B, B) gets the raw counts when non-NULL. Returns 0 on ENOMEM. */
static int triplet_pass(struct tally *t, float *dd, const struct work *w, const int32_t *labels,
                        const struct ft_triplet_opts *o)
{
    int B = w->B;
    struct anchor_scratch s;
    if (!scratch_alloc(&s, B))
        return 0;
    struct miner_bounds mb = miner_bounds(o);
    memset(t, 0, sizeof *t);
    for (int a = 0; a < B; a++) {
        float *dd_row = dd ? dd + (size_t)a * B : NULL;
        anchor_pass(t, dd_row, &s, w->dist + (size_t)a * B, labels, a, B, mb, (float)o->margin);
    }
    scratch_free(&s);
    return 1;
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

/* demb (B, D) from the scaled dd: through the distance, then the normalisation. */
static void backward(float *demb, struct work *w)
{
    int B = w->B, D = w->D;
    memset(demb, 0, (size_t)B * D * sizeof *demb);
    if (w->euclidean)
        euclid_backward(demb, w);
    else
        cosine_backward(demb, w);
    if (w->normalize)
        ft_l2_normalize_backward(demb, demb, w->x, w->norms, B, D);
}

static void scale(float *v, size_t n, float c)
{
    for (size_t i = 0; i < n; i++)
        v[i] *= c;
}

/* Distances, triplet pass and (when demb) the backward; t gets the tally. */
static enum ft_err loss_core(float *loss, float *demb, struct tally *t, const float *emb,
                             const int32_t *labels, int B, int D,
                             const struct ft_triplet_opts *opts)
{
    struct work w;
    if (!work_alloc(&w, B, D, opts, demb != NULL))
        return FT_ENOMEM;
    compute_dist(&w, emb);
    if (w.nonfinite) {
        *loss = NAN;
        work_free(&w);
        return FT_OK;
    }
    if (!triplet_pass(t, w.dd, &w, labels, opts)) {
        work_free(&w);
        return FT_ENOMEM;
    }
    if (t->nonzero > 0) {
        *loss = (float)(t->loss / (double)t->nonzero);
        if (demb) {
            scale(w.dd, (size_t)B * B, (float)(1.0 / (double)t->nonzero));
            backward(demb, &w);
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
    if (!work_alloc(&w, B, D, opts, 0))
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
