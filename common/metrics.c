/* metrics.c — the nine retrieval metrics of EvaluationCallback (spec:
 * tests/fixtures/metrics/README.md).
 *
 * Design, two passes per query:
 *  1. Screening: one cblas_sgemm per block of queries gives the float32 dot products
 *     dot(q, d) of the RAW embeddings, (block x n_index) floats; a score is formed per pair
 *     in double from that dot and norms precomputed in double per document:
 *       cosine dot / (|q| |d|) (0 when either norm is 0), (sq)euclidean
 *       -(|q|^2 + |d|^2 - 2 dot), inner_product dot.
 *     The pool keeps the best k + k/4 + 16 candidates (score desc, then id, then row): a
 *     buffer of candidates cut back to the pool size by quickselect whenever it fills, the
 *     worst kept one then being the bar to pass; a float screening value per candidate
 *     (see "screening filter") skips, without the double score, those certainly below it,
 *     and a guess of the bar from the previous query screens the row first (fill_pool). The
 *     pool is the same set of candidates, whatever the order they came in.
 *  2. Refinement: the pool is rescored exactly in double from the float32 embeddings (dot
 *     products, or the direct sum of (q_i - d_i)^2 for euclidean; float products are exact
 *     in double) and sorted; its first k are the ranking. Only the pool's k best by screening
 *     score and those within twice the screening error of the k-th are rescored: the others
 *     cannot reach the top k. When the pool's worst is itself within that band (near-ties:
 *     which of them the pool kept is rounding noise), every candidate of the query's row in
 *     the band is rescored instead (pool_uncertain, wide_row). So the ranking is the float64
 *     reference one whenever the filter is on (finite, moderate norms).
 * When the queries are the index (EvaluationCallback without index_data), the matrix is
 * symmetric and pass 1 computes half of it, each query keeping its pool across the blocks
 * (see "symmetric mode"); the rankings, and so the results, are the same.
 * Exact ties are broken by id, so bitwise-equal vectors must get bitwise-equal scores in both
 * passes. BLAS micro-kernels round the same column differently at different positions, so
 * bitwise-equal index vectors are found once (hash + memcmp) and every duplicate column
 * copies its representative's dot product; the refinement is one per-pair routine. Means
 * are accumulated in double.
 *
 * Owns nothing past a call: every buffer is allocated and freed inside
 * ft_retrieval_metrics(). */
#include "metrics.h"

#include "nn.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Floats of the per-block dot-product buffer (32 MiB at most) and the most queries in one block
 * (128: sgemm runs about 8% faster than with 64-query blocks; the scan reads the block's dot
 * products in order, 5 MiB for a 10,000-row index, which the prefetcher keeps up with; larger
 * blocks gain nothing more on the sgemm and lose it in the scan). */
#define DOT_BUDGET (8 * 1024 * 1024)
#define MAX_BLOCK 128

static const char *const metric_names[FT_NUM_METRICS] = {
#define X(id, name) name,
    FT_METRICS(X)
#undef X
};

const char *ft_metric_name(int i)
{
    return (i >= 0 && i < FT_NUM_METRICS) ? metric_names[i] : NULL;
}

/* 1 when name is metric m bare, or "<prefix>_<m>" with a non-empty prefix. */
static int names_metric(const char *name, const char *m)
{
    size_t len = strlen(name);
    size_t mlen = strlen(m);
    if (len == mlen)
        return strcmp(name, m) == 0;
    if (len < mlen + 2)
        return 0;
    return name[len - mlen - 1] == '_' && strcmp(name + len - mlen, m) == 0;
}

int ft_metric_lookup(const char *name)
{
    if (!name)
        return -1;
    for (int i = 0; i < FT_NUM_METRICS; i++) {
        if (names_metric(name, metric_names[i]))
            return i;
    }
    return -1;
}

int ft_score_parse(const char *name, enum ft_score *out)
{
    static const struct {
        const char *name;
        enum ft_score score;
    } table[] = {{"cosine", FT_SCORE_COSINE},
                 {"euclidean", FT_SCORE_EUCLIDEAN},
                 {"sqeuclidean", FT_SCORE_SQEUCLIDEAN},
                 {"inner_product", FT_SCORE_INNER_PRODUCT}};
    if (!name)
        return -1;
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        if (strcmp(name, table[i].name) == 0) {
            if (out)
                *out = table[i].score;
            return 0;
        }
    }
    return -1;
}

/* ---- duplicate columns ------------------------------------------------------------------ */

/* A hash of the bytes of v (dim): eight bytes a step (multiply and fold), the rest as FNV-1a.
 * Only the bucket depends on it: duplicates are confirmed with memcmp. */
static uint64_t vec_hash(const float *v, int dim)
{
    const unsigned char *p = (const unsigned char *)v;
    size_t n = (size_t)dim * sizeof(float), i = 0;
    uint64_t h = 1469598103934665603ULL;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, sizeof w);
        h = (h ^ w) * 0x9e3779b97f4a7c15ULL;
        h ^= h >> 29;
    }
    for (; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

/* rep[j] = the first index of a document whose embedding is bitwise-equal to j's (j itself
 * when none precedes it). emb (n, dim). Returns 0, or -1 on ENOMEM. */
static int find_duplicates(const float *emb, int64_t n, int dim, int64_t *rep)
{
    size_t cap = 16;
    while (cap < (size_t)n * 2)
        cap *= 2;
    int64_t *slot = malloc(cap * sizeof *slot);
    if (!slot)
        return -1;
    for (size_t s = 0; s < cap; s++)
        slot[s] = -1;
    size_t bytes = (size_t)dim * sizeof(float);
    for (int64_t j = 0; j < n; j++) {
        const float *v = emb + (size_t)j * dim;
        size_t s = vec_hash(v, dim) & (cap - 1);
        while (slot[s] >= 0 && memcmp(emb + (size_t)slot[s] * dim, v, bytes) != 0)
            s = (s + 1) & (cap - 1);
        if (slot[s] < 0)
            slot[s] = j;
        rep[j] = slot[s];
    }
    free(slot);
    return 0;
}

/* ---- the pool: the best candidates of a query ------------------------------------------ */

struct hit {
    double score;
    int64_t id;
    int64_t row; /* index row */
};

/* 1 when a ranks before b: score descending, ties by smaller id, then by smaller row (only
 * when an index repeats an id; the row order is the order a scan meets them). A strict total
 * order, so "the best m" is one set whatever order the candidates come in. */
static int ranks_before(const struct hit *a, const struct hit *b)
{
    if (a->score != b->score)
        return a->score > b->score;
    if (a->id != b->id)
        return a->id < b->id;
    return a->row < b->row;
}

/* Reorder h (n) so that its m best (1 <= m <= n) come first, h[m - 1] the worst of them
 * (Hoare quickselect on ranks_before). */
static void select_best(struct hit *h, int n, int m)
{
    int lo = 0, hi = n - 1, want = m - 1;
    while (lo < hi) {
        struct hit pivot = h[lo + (hi - lo) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (ranks_before(&h[i], &pivot))
                i++;
            while (ranks_before(&pivot, &h[j]))
                j--;
            if (i <= j) {
                struct hit t = h[i];
                h[i++] = h[j];
                h[j--] = t;
            }
        }
        if (want <= j)
            hi = j;
        else if (want >= i)
            lo = i;
        else
            break;
    }
}

static int cmp_rank(const void *a, const void *b)
{
    if (ranks_before(a, b))
        return -1;
    return ranks_before(b, a) ? 1 : 0;
}

/* ---- per-query metrics ------------------------------------------------------------------ */

/* The nine values of one query. rel (n_ret) relevance of the ranked list best first, R
 * relevant candidates (> 0), k the limit, idcg (k_cap + 1) prefix sums of 1/log2(i+1). */
static void query_metrics(const unsigned char *rel, int n_ret, int64_t R, int k, const double *idcg,
                          double *v)
{
    int64_t m = R < k ? R : k;
    int hits = 0;
    int hits_m = 0;
    int first = 0;
    double ap = 0.0;
    double dcg = 0.0;
    for (int i = 0; i < n_ret; i++) {
        if (!rel[i])
            continue;
        hits++;
        if (!first)
            first = i + 1;
        if (i < m)
            hits_m++;
        ap += (double)hits / (i + 1);
        dcg += 1.0 / log2(i + 2.0);
    }
    double p = (double)hits / k;
    double r = (double)hits / (double)R;
    v[FT_METRIC_PRECISION_AT_K] = p;
    v[FT_METRIC_RECALL_AT_K] = r;
    v[FT_METRIC_F1_SCORE_AT_K] = p + r > 0 ? 2 * p * r / (p + r) : 0.0;
    v[FT_METRIC_HIT_AT_K] = hits > 0;
    v[FT_METRIC_RECIPROCAL_RANK] = first ? 1.0 / first : 0.0;
    v[FT_METRIC_AVERAGE_PRECISION] = ap / (double)m;
    v[FT_METRIC_R_PRECISION] = (double)hits_m / (double)m;
    v[FT_METRIC_DCG_AT_K] = dcg;
    v[FT_METRIC_NDCG_AT_K] = dcg / idcg[m];
}

/* ---- the whole evaluation --------------------------------------------------------------- */

struct id_row {
    int64_t id, row;
};

struct eval_ctx {
    const struct ft_eval_set *q, *d;
    int dim, k, exclude;
    int heap_cap; /* screening pool: min(n_index, k + k/4 + 16) */
    int buf_cap;  /* candidates buffered before they are cut back to heap_cap */
    enum ft_score score;
    double *qsq, *dsq; /* squared norms (double) */
    double *qn, *dn;   /* their square roots, the norms (cosine) */
    int64_t *rep;      /* duplicate representative per index row */
    int64_t *dups;     /* rows with rep != row */
    int64_t ndups;
    int64_t *label_count; /* relevant documents per label in the index */
    int32_t num_labels;
    double *idcg;       /* (heap_cap + 1) */
    float *dots;        /* (block, n_index) */
    struct hit *heap;   /* (buf_cap) the pool's buffer */
    struct hit *wide;   /* (n_index) every candidate above an uncertain pool's bar (wide_row) */
    unsigned char *rel; /* (heap_cap) */
    int64_t *top_ids;   /* ft_retrieval_topk: (nq, k) outputs, else NULL */
    double *top_scores;
    /* screening filter (see scan_row): used when every norm is finite and moderate */
    int filter;
    float *key;               /* (n_index) cosine: 1/|d| (0 for |d| = 0); inner product: 1;
                                 (sq)euclidean: |d|^2 */
    double max_dsq;           /* largest |d|^2 */
    struct id_row *by_id;     /* (n_index) index rows sorted by id, then row (exclusion lookup) */
    int64_t excl_lo, excl_hi; /* the query's own rows: by_id[excl_lo .. excl_hi) (exclude) */
    int has_guess;            /* guess: a guess of the next pool's worst score (fill_pool) */
    double guess, gap;
    /* symmetric mode (eval_symmetric): the queries are the index */
    int sym;
    float *qtlo;        /* (n) each query's screening threshold, -inf before its first cut */
    int64_t *dup_first; /* (n + 1) duplicates of row r: dup_rows[dup_first[r] .. [r + 1]) */
    int64_t *dup_rows;  /* (ndups) */
};

/* out (n) = squared norms of emb (n, dim), each a sequential double sum (ft_sum_squares: 16
 * rows at a time with AVX, the plain loop's values). */
static void sq_norms(const float *emb, int64_t n, int dim, double *out)
{
    for (int64_t i = 0; i < n; i += 4096) {
        int rows = n - i < 4096 ? (int)(n - i) : 4096;
        ft_sum_squares(out + i, emb + (size_t)i * dim, rows, dim);
    }
}

static double pair_score(const struct eval_ctx *c, float dot, int64_t qi, int64_t j)
{
    double s;
    double qsq = c->qsq[qi];
    if (c->score == FT_SCORE_COSINE) {
        double den = c->qn[qi] * c->dn[j];
        s = den > 0 ? (double)dot / den : 0.0;
    } else if (c->score == FT_SCORE_INNER_PRODUCT) {
        s = dot;
    } else {
        s = -(qsq + c->dsq[j] - 2.0 * (double)dot);
    }
    return isnan(s) ? -INFINITY : s;
}

/* The exact double score of query qi and index row j (one routine for every pair). */
static double exact_score(const struct eval_ctx *c, int64_t qi, int64_t j)
{
    const float *q = c->q->emb + (size_t)qi * c->dim;
    const float *d = c->d->emb + (size_t)j * c->dim;
    double acc = 0.0;
    if (c->score == FT_SCORE_EUCLIDEAN || c->score == FT_SCORE_SQEUCLIDEAN) {
        for (int i = 0; i < c->dim; i++) {
            double t = (double)q[i] - (double)d[i];
            acc += t * t;
        }
        return isnan(acc) ? -INFINITY : -acc;
    }
    for (int i = 0; i < c->dim; i++)
        acc += (double)q[i] * (double)d[i];
    if (c->score == FT_SCORE_COSINE) {
        double den = c->qn[qi] * c->dn[j];
        acc = den > 0 ? acc / den : 0.0;
    }
    return isnan(acc) ? -INFINITY : acc;
}

/* exact_score of query qi and the rows of h[0..4): the same per-pair operations, four pairs
 * interleaved (each keeps its own sequential sum). */
static void exact_scores4(const struct eval_ctx *c, int64_t qi, struct hit *h)
{
    const float *q = c->q->emb + (size_t)qi * c->dim, *d[4];
    double acc[4] = {0.0, 0.0, 0.0, 0.0};
    int euclid = c->score == FT_SCORE_EUCLIDEAN || c->score == FT_SCORE_SQEUCLIDEAN;
    for (int r = 0; r < 4; r++)
        d[r] = c->d->emb + (size_t)h[r].row * c->dim;
    for (int i = 0; i < c->dim; i++) {
        double qv = q[i];
        if (euclid) {
            double t0 = qv - (double)d[0][i], t1 = qv - (double)d[1][i];
            double t2 = qv - (double)d[2][i], t3 = qv - (double)d[3][i];
            acc[0] += t0 * t0, acc[1] += t1 * t1, acc[2] += t2 * t2, acc[3] += t3 * t3;
        } else {
            acc[0] += qv * (double)d[0][i], acc[1] += qv * (double)d[1][i];
            acc[2] += qv * (double)d[2][i], acc[3] += qv * (double)d[3][i];
        }
    }
    for (int r = 0; r < 4; r++) {
        double a = acc[r];
        if (euclid) {
            h[r].score = isnan(a) ? -INFINITY : -a;
            continue;
        }
        if (c->score == FT_SCORE_COSINE) {
            double den = c->qn[qi] * c->dn[h[r].row];
            a = den > 0 ? a / den : 0.0;
        }
        h[r].score = isnan(a) ? -INFINITY : a;
    }
}

/* The exact score of query qi and index row row from its double sum acc (exact_score's ending). */
static double finish_score(const struct eval_ctx *c, int64_t qi, int64_t row, double a, int euclid)
{
    if (euclid)
        return isnan(a) ? -INFINITY : -a;
    if (c->score == FT_SCORE_COSINE) {
        double den = c->qn[qi] * c->dn[row];
        a = den > 0 ? a / den : 0.0;
    }
    return isnan(a) ? -INFINITY : a;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* exact_scores4 with AVX for the sixteen hits h[0..16): four pairs in the lanes of each of
 * four vectors (4 x 4 transposes of the rows, widened exactly to double), each lane the same
 * sequential sum of products (or of squared differences) as the scalar loop (AVX has no FMA);
 * the four vectors are independent chains, so the adds overlap. */
__attribute__((target("avx"))) static void exact_scores16_avx(const struct eval_ctx *c, int64_t qi,
                                                              struct hit *h)
{
    const float *q = c->q->emb + (size_t)qi * c->dim, *d[16];
    int euclid = c->score == FT_SCORE_EUCLIDEAN || c->score == FT_SCORE_SQEUCLIDEAN;
    for (int r = 0; r < 16; r++)
        d[r] = c->d->emb + (size_t)h[r].row * c->dim;
    __m256d acc[4] = {_mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(),
                      _mm256_setzero_pd()};
    int i = 0;
    for (; i + 4 <= c->dim; i += 4) {
        __m256d qv[4];
        for (int t = 0; t < 4; t++)
            qv[t] = _mm256_set1_pd((double)q[i + t]);
        for (int g = 0; g < 4; g++) {
            __m128 a = _mm_loadu_ps(d[4 * g] + i), b = _mm_loadu_ps(d[4 * g + 1] + i);
            __m128 e = _mm_loadu_ps(d[4 * g + 2] + i), f = _mm_loadu_ps(d[4 * g + 3] + i);
            _MM_TRANSPOSE4_PS(a, b, e, f);
            __m256d col[4] = {_mm256_cvtps_pd(a), _mm256_cvtps_pd(b), _mm256_cvtps_pd(e),
                              _mm256_cvtps_pd(f)};
            for (int t = 0; t < 4; t++) {
                __m256d x = euclid ? _mm256_sub_pd(qv[t], col[t]) : col[t];
                acc[g] = _mm256_add_pd(acc[g], _mm256_mul_pd(euclid ? x : qv[t], x));
            }
        }
    }
    double s[16];
    for (int g = 0; g < 4; g++)
        _mm256_storeu_pd(s + 4 * g, acc[g]);
    for (; i < c->dim; i++)
        for (int r = 0; r < 16; r++) {
            double qv = q[i], t = qv - (double)d[r][i];
            s[r] += euclid ? t * t : qv * (double)d[r][i];
        }
    for (int r = 0; r < 16; r++)
        h[r].score = finish_score(c, qi, h[r].row, s[r], euclid);
}

static int have_avx(void)
{
    return __builtin_cpu_supports("avx");
}
#else
static void exact_scores16_avx(const struct eval_ctx *c, int64_t qi, struct hit *h)
{
    (void)c, (void)qi, (void)h;
    FT_ASSERT(0);
}

static int have_avx(void)
{
    return 0;
}
#endif

/* A bound on |screening score - exact score| for query qi: a float dot product of dim terms
 * in any order (FMA or not) is within (dim + 2) 2^-24 |q| |d| of the real one; the double
 * sums and divisions add far less than the 1e-13 (|q|^2 + |d|^2) allowed for them. */
static double score_error(const struct eval_ctx *c, int64_t qi)
{
    double g = 1.01 * (c->dim + 2) * 0x1p-24;
    if (c->score == FT_SCORE_COSINE)
        return g + 1e-13;
    double qd = c->qn[qi] * sqrt(c->max_dsq);
    double dbl = 1e-13 * (c->qsq[qi] + c->max_dsq);
    return c->score == FT_SCORE_INNER_PRODUCT ? g * qd + dbl : 2.0 * g * qd + dbl;
}

/* The ids of hits h (n) from their rows: offer leaves them out (the scan's dot products push
 * the id array out of the cache, and most offered hits are dropped unranked), so they are
 * loaded together, before anything orders the hits. */
static void fill_ids(const struct eval_ctx *c, struct hit *h, int n)
{
    for (int i = 0; i < n; i++)
        h[i].id = c->d->ids[h[i].row];
}

/* Rescore the pool h (n) exactly and sort it best first; returns how many entries are sorted
 * (at least min(n, k)). Only the k best by screening score and those within twice the
 * screening error of the k-th can be among the k best by exact score, so (with the filter's
 * finite norms) only they are rescored. */
static int refine_pool(const struct eval_ctx *c, int64_t qi, struct hit *h, int n)
{
    int m = n;
    fill_ids(c, h, n);
    if (c->filter && n > c->k) {
        select_best(h, n, c->k);
        double bar = h[c->k - 1].score - 2.2 * score_error(c, qi);
        m = c->k;
        for (int i = c->k; i < n; i++) {
            if (!(h[i].score >= bar))
                continue;
            struct hit t = h[m];
            h[m++] = h[i];
            h[i] = t;
        }
    }
    size_t row_bytes = (size_t)c->dim * sizeof(float);
    for (int r = 0; r < m; r++) { /* random index rows: ask for them all before the first */
        const char *e = (const char *)(c->d->emb + (size_t)h[r].row * c->dim);
        for (size_t o = 0; o < row_bytes; o += 64)
            __builtin_prefetch(e + o);
    }
    int i = 0;
    for (; have_avx() && i + 16 <= m; i += 16)
        exact_scores16_avx(c, qi, h + i);
    for (; i + 4 <= m; i += 4)
        exact_scores4(c, qi, h + i);
    for (; i < m; i++)
        h[i].score = exact_score(c, qi, h[i].row);
    qsort(h, (size_t)m, sizeof *h, cmp_rank);
    return m;
}

static int is_relevant(int32_t qlabel, int32_t dlabel)
{
    return qlabel >= 0 && qlabel == dlabel;
}

/* ---- screening filter ----
 * Once the pool has been cut back, a candidate enters only if it ranks before the worst kept
 * hit, so its score must be >= that hit's score h. A float "screening value" per candidate,
 * compared with one threshold per query, skips most candidates without the double score:
 *   cosine         v = dot * (1/|d|)      vs  h |q|        (v within 2.5e-7 |v| of s |q|)
 *   inner product  v = dot                vs  h            (exact)
 *   (sq)euclidean  v = 2 dot - |d|^2      vs  h + |q|^2    (within 1.2e-7 (2|q||d| + |d|^2))
 * The threshold is lowered by 1e-5 of those magnitudes (plus 1e-30), far beyond the float
 * error, so a skipped candidate always scores below h and could not be among the best: the
 * pool (and the metrics) are exactly those of offering every candidate. The filter is used
 * only when every squared norm is finite and within [1e-30, 1e30] (or 0). */

static int is_euclid(enum ft_score s)
{
    return s == FT_SCORE_EUCLIDEAN || s == FT_SCORE_SQEUCLIDEAN;
}

static float screen_threshold(const struct eval_ctx *c, int64_t qi, double h)
{
    double t, margin;
    if (is_euclid(c->score)) {
        t = h + c->qsq[qi];
        margin = 1e-5 * (2.0 * sqrt(c->qsq[qi] * c->max_dsq) + c->max_dsq + fabs(t));
    } else {
        t = c->score == FT_SCORE_COSINE ? h * c->qn[qi] : h;
        margin = 1e-5 * fabs(t);
    }
    return (float)(t - margin - 1e-30);
}

static float screen_value(float dot, float key, int euclid)
{
    return euclid ? (dot + dot) - key : dot * key;
}

#if defined(__x86_64__) && defined(__SSE2__)
#include <emmintrin.h>

/* The first j' >= j with a screening value >= tlo in blocks of 8 (SSE2); j' or the end of the
 * blocks. */
static int64_t next_block(const float *dots, const float *key, int euclid, int64_t j, int64_t j0,
                          int64_t n, float tlo)
{
    const __m128 t = _mm_set1_ps(tlo);
    for (; j + 8 <= n; j += 8) {
        __m128 a = _mm_loadu_ps(dots + (j - j0)), b = _mm_loadu_ps(dots + (j - j0) + 4);
        __m128 ka = _mm_loadu_ps(key + j), kb = _mm_loadu_ps(key + j + 4);
        __m128 va = euclid ? _mm_sub_ps(_mm_add_ps(a, a), ka) : _mm_mul_ps(a, ka);
        __m128 vb = euclid ? _mm_sub_ps(_mm_add_ps(b, b), kb) : _mm_mul_ps(b, kb);
        int m = _mm_movemask_ps(_mm_cmpge_ps(va, t)) | _mm_movemask_ps(_mm_cmpge_ps(vb, t)) << 4;
        if (m)
            return j + __builtin_ctz((unsigned)m);
    }
    return j;
}
#else
static int64_t next_block(const float *dots, const float *key, int euclid, int64_t j, int64_t j0,
                          int64_t n, float tlo)
{
    (void)dots, (void)key, (void)euclid, (void)j0, (void)n, (void)tlo;
    return j;
}
#endif

/* The first candidate j' >= j that passes the screen, or n. dots[j - j0]: index row j's. */
static int64_t next_candidate(const struct eval_ctx *c, const float *dots, int64_t j, int64_t j0,
                              float tlo)
{
    int64_t n = c->d->n;
    int euclid = is_euclid(c->score);
    j = next_block(dots, c->key, euclid, j, j0, n, tlo);
    while (j < n && !(screen_value(dots[j - j0], c->key[j], euclid) >= tlo))
        j++;
    return j;
}

/* One query's pool being filled. */
struct pool {
    struct hit *h; /* (cap) its buffer: c->heap, or its own (symmetric mode) */
    int cap;       /* cut back to c->heap_cap when n reaches it */
    int n;         /* candidates in h */
    int has_bar;   /* the pool has been cut back: bar is its worst kept hit */
    struct hit bar;
    int screen; /* tlo is in force (filter only) */
    float tlo;  /* screening threshold: of the bar, or of est */
    int spec;   /* speculating: candidates scoring below est are dropped */
    double est;
    int64_t nspec;            /* candidates met scoring >= est */
    int64_t excl_lo, excl_hi; /* the query's own rows: by_id[excl_lo .. excl_hi) (exclude) */
    int ranked;               /* h holds the exact ranking, best first (symmetric mode) */
};

/* c->excl_lo .. excl_hi = the entries of by_id with query qi's id (the index rows excluded
 * for it). */
static void find_own_rows(struct eval_ctx *c, int64_t qi)
{
    int64_t qid = c->q->ids[qi], lo = 0, hi = c->d->n;
    while (lo < hi) { /* first entry with id >= qid */
        int64_t mid = lo + (hi - lo) / 2;
        if (c->by_id[mid].id < qid)
            lo = mid + 1;
        else
            hi = mid;
    }
    c->excl_lo = lo;
    while (lo < c->d->n && c->by_id[lo].id == qid)
        lo++;
    c->excl_hi = lo;
}

/* Whether index row j is one of the pool's query's own (exclude). */
static int is_own_row(const struct eval_ctx *c, const struct pool *p, int64_t j)
{
    for (int64_t e = p->excl_lo; e < p->excl_hi; e++)
        if (c->by_id[e].row == j)
            return 1;
    return 0;
}

/* Cut the buffer back to the pool size; the worst kept hit becomes the bar. */
static void cut_back(struct eval_ctx *c, int64_t qi, struct pool *p)
{
    fill_ids(c, p->h, p->n);
    select_best(p->h, p->n, c->heap_cap);
    p->n = c->heap_cap;
    p->bar = p->h[c->heap_cap - 1];
    p->has_bar = 1;
    p->screen = c->filter;
    if (c->filter)
        p->tlo = screen_threshold(c, qi, p->bar.score);
    if (c->qtlo)
        c->qtlo[qi] = p->tlo;
}

/* Offer index row j to query qi's pool (not when it is the query itself). */
static void offer_row(struct eval_ctx *c, int64_t qi, int64_t j, float dot, struct pool *p)
{
    if (c->exclude && is_own_row(c, p, j))
        return;
    struct hit h = {pair_score(c, dot, qi, j), -1, j}; /* id: fill_ids */
    if (p->spec && !(h.score >= p->est))
        return;
    p->nspec += p->spec;
    if (p->has_bar && h.score == p->bar.score) /* the tie is broken by id */
        h.id = c->d->ids[j];
    if (p->has_bar && !ranks_before(&h, &p->bar))
        return;
    p->h[p->n++] = h;
    if (p->n == p->cap)
        cut_back(c, qi, p);
}

/* Offer index row j with its dot product. In symmetric mode a duplicate row is offered only
 * through its representative, whose dot product every duplicate then takes (the dot products
 * of one query with bitwise-equal rows come from different tiles, rounded differently); the
 * other mode has already copied it into the duplicate's column (block_dots). */
static void offer(struct eval_ctx *c, int64_t qi, int64_t j, float dot, struct pool *p)
{
    if (!c->sym || c->ndups == 0) {
        offer_row(c, qi, j, dot, p);
        return;
    }
    if (c->rep[j] != j)
        return;
    offer_row(c, qi, j, dot, p);
    for (int64_t t = c->dup_first[j]; t < c->dup_first[j + 1]; t++)
        offer_row(c, qi, c->dup_rows[t], dot, p);
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* Candidates a screened scan collects before offering them. */
enum { SCAN_BATCH = 32 };

/* Offer, from j on, the candidates whose screening value passes p->tlo, sixteen at a time
 * (AVX-512F); returns where the blocks end. The candidates are collected, their index norms
 * asked for from memory as they are found (the scan's stream of dot products pushes the norm
 * array out of the cache), and offered SCAN_BATCH at a time, in order. A candidate is found with
 * the threshold in force when its block is screened; a cut back raises it later, and offer's
 * exact test then turns away what the new threshold would have skipped, so the pool is the
 * same. */
__attribute__((target("avx512f"))) static int64_t scan_screened_avx512(struct eval_ctx *c,
                                                                       int64_t qi,
                                                                       const float *dots, int64_t j,
                                                                       int64_t j0, struct pool *p)
{
    int64_t rows[SCAN_BATCH + 16], nd = c->d->n;
    int euclid = is_euclid(c->score), n = 0;
    for (; j + 16 <= nd; j += 16) {
        __m512 a = _mm512_loadu_ps(dots + (j - j0)), k = _mm512_loadu_ps(c->key + j);
        __m512 v = euclid ? _mm512_sub_ps(_mm512_add_ps(a, a), k) : _mm512_mul_ps(a, k);
        unsigned m = _mm512_cmp_ps_mask(v, _mm512_set1_ps(p->tlo), _CMP_GE_OQ);
        for (; m; m &= m - 1) {
            int64_t t = j + __builtin_ctz(m);
            __builtin_prefetch(c->dn + t);
            __builtin_prefetch(c->dsq + t);
            rows[n++] = t;
        }
        if (n >= SCAN_BATCH) {
            for (int i = 0; i < n; i++)
                offer(c, qi, rows[i], dots[rows[i] - j0], p);
            n = 0;
        }
    }
    for (int i = 0; i < n; i++)
        offer(c, qi, rows[i], dots[rows[i] - j0], p);
    return j;
}

/* The column scan of symmetric mode (see eval_symmetric), sixteen queries at a time: offer
 * index row i, whose dot products with queries [j, n) are dots[0 ..), to each of them whose
 * threshold its screening value passes; returns where the blocks end. */
__attribute__((target("avx512f"))) static int64_t
scan_column_avx512(struct eval_ctx *c, int64_t i, const float *dots, int64_t j, struct pool *pools)
{
    int64_t n = c->d->n, j0 = j;
    int euclid = is_euclid(c->score);
    __m512 k = _mm512_set1_ps(c->key[i]);
    for (; j + 16 <= n; j += 16) {
        __m512 a = _mm512_loadu_ps(dots + (j - j0));
        __m512 v = euclid ? _mm512_sub_ps(_mm512_add_ps(a, a), k) : _mm512_mul_ps(a, k);
        unsigned m = _mm512_cmp_ps_mask(v, _mm512_loadu_ps(c->qtlo + j), _CMP_GE_OQ);
        for (; m; m &= m - 1) {
            int64_t q = j + __builtin_ctz(m);
            offer(c, q, i, dots[q - j0], &pools[q]);
        }
    }
    return j;
}

static int64_t scan_screened(struct eval_ctx *c, int64_t qi, const float *dots, int64_t j,
                             int64_t j0, struct pool *p)
{
    if (__builtin_cpu_supports("avx512f"))
        return scan_screened_avx512(c, qi, dots, j, j0, p);
    return j;
}

static int64_t scan_column_simd(struct eval_ctx *c, int64_t i, const float *dots, int64_t j,
                                struct pool *pools)
{
    if (__builtin_cpu_supports("avx512f"))
        return scan_column_avx512(c, i, dots, j, pools);
    return j;
}
#else
static int64_t scan_screened(struct eval_ctx *c, int64_t qi, const float *dots, int64_t j,
                             int64_t j0, struct pool *p)
{
    (void)c, (void)qi, (void)dots, (void)j0, (void)p;
    return j;
}

static int64_t scan_column_simd(struct eval_ctx *c, int64_t i, const float *dots, int64_t j,
                                struct pool *pools)
{
    (void)c, (void)i, (void)dots, (void)pools;
    return j;
}
#endif

/* Offer every candidate of the row that passes the screen (once the screen is on, it stays on
 * for the row): index rows j0 .. n, row j's dot product in dots[j - j0]. */
static void scan_row(struct eval_ctx *c, int64_t qi, const float *dots, int64_t j0, struct pool *p)
{
    int64_t nd = c->d->n;
    for (int64_t j = j0; j < nd; j++) {
        if (p->screen) {
            j = scan_screened(c, qi, dots, j, j0, p);
            j = next_candidate(c, dots, j, j0, p->tlo);
        }
        if (j < nd)
            offer(c, qi, j, dots[j - j0], p);
    }
    if (p->n > c->heap_cap)
        cut_back(c, qi, p);
}

/* The next query's guess of its pool's worst score: this pool's worst minus gap times its
 * spread (the gap adapts: it doubles after a failed guess and shrinks while guesses let many
 * more candidates through than the pool holds). */
static void update_guess(struct eval_ctx *c, int n)
{
    double worst = INFINITY, best = -INFINITY;
    for (int i = 0; i < n; i++) {
        worst = c->heap[i].score < worst ? c->heap[i].score : worst;
        best = c->heap[i].score > best ? c->heap[i].score : best;
    }
    c->has_guess = n == c->heap_cap && isfinite(worst) && isfinite(best);
    c->guess = worst - c->gap * (best - worst);
}

/* The pool of query qi from its row of dot products: its best min(heap_cap, candidates)
 * candidates in c->heap[0 .. returned count), in no particular order. With the filter, a guess
 * of the pool's worst score (from the previous query) screens the row first; when fewer than
 * heap_cap candidates score at least the guess, the row is scanned again without it. Either
 * way the pool is the best heap_cap of all candidates. */
static int fill_pool(struct eval_ctx *c, int64_t qi, const float *dots)
{
    struct pool p = {.h = c->heap, .cap = c->buf_cap, .excl_lo = c->excl_lo, .excl_hi = c->excl_hi};
    if (c->filter && c->has_guess) {
        p.spec = p.screen = 1;
        p.est = c->guess;
        p.tlo = screen_threshold(c, qi, p.est);
        scan_row(c, qi, dots, 0, &p);
        if (p.nspec >= c->heap_cap) {
            c->gap = p.nspec > 4 * c->heap_cap && c->gap > 0.01 ? c->gap * 0.8 : c->gap;
            update_guess(c, p.n);
            return p.n;
        }
        c->gap = c->gap < 64 ? c->gap * 2 : c->gap;
        p = (struct pool){
            .h = c->heap, .cap = c->buf_cap, .excl_lo = c->excl_lo, .excl_hi = c->excl_hi};
    }
    scan_row(c, qi, dots, 0, &p);
    if (c->filter)
        update_guess(c, p.n);
    return p.n;
}

static int cmp_id_row(const void *a, const void *b)
{
    const struct id_row *x = a, *y = b;
    if (x->id != y->id)
        return x->id < y->id ? -1 : 1;
    return (x->row > y->row) - (x->row < y->row);
}

/* Relevant index documents of query qi: those of its label, minus the excluded ones (the index
 * rows with the query's id, found in by_id). */
static int64_t relevant_count(const struct eval_ctx *c, int64_t qi)
{
    int32_t ql = c->q->labels[qi];
    int64_t R = (ql >= 0 && ql < c->num_labels) ? c->label_count[ql] : 0;
    if (!c->exclude)
        return R;
    for (int64_t e = c->excl_lo; e < c->excl_hi; e++)
        R -= is_relevant(ql, c->d->labels[c->by_id[e].row]);
    return R;
}

/* Rank query qi's pool h (n, at most heap_cap; c->excl_lo/hi its own rows), add its nine
 * values to sum (or count it as skipped), or write its top k (ft_retrieval_topk). ranked: h
 * already holds the exact ranking (its first min(n, k)), best first. */
static void finish_query(struct eval_ctx *c, int64_t qi, struct hit *h, int n, int ranked,
                         double *sum, struct ft_metrics_result *out)
{
    int32_t ql = c->q->labels[qi];
    if (c->top_ids) { /* examples: the ranking itself, whatever R is */
        if (!ranked)
            refine_pool(c, qi, h, n);
        for (int i = 0; i < c->k; i++) {
            c->top_ids[qi * c->k + i] = i < n ? h[i].id : -1;
            c->top_scores[qi * c->k + i] = i < n ? h[i].score : 0.0;
        }
        return;
    }
    int64_t R = relevant_count(c, qi);
    if (R <= 0) {
        out->skipped++;
        return;
    }
    if (!ranked)
        refine_pool(c, qi, h, n);
    n = n < c->k ? n : c->k;
    for (int i = 0; i < n; i++)
        c->rel[i] = (unsigned char)is_relevant(ql, c->d->labels[h[i].row]);
    double v[FT_NUM_METRICS];
    query_metrics(c->rel, n, R, c->k, c->idcg, v);
    for (int m = 0; m < FT_NUM_METRICS; m++)
        sum[m] += v[m];
    out->evaluated++;
}

/* Whether the pool h (n: the best heap_cap candidates by screening score, c->filter on) may
 * miss one of the exact k best. refine_pool rescores the pool's candidates down to the k-th
 * screening score minus 2.2 screening errors (*bar); when the pool's worst is still at or
 * above that bar, candidates left out of the pool may lie above it too (near-ties: BLAS rounds
 * a dot product differently at different matrix positions, so which of them the pool kept is
 * noise). Then the whole row must be looked at (wide_row). */
static int pool_uncertain(const struct eval_ctx *c, int64_t qi, struct hit *h, int n, double *bar)
{
    if (!c->filter || n < c->heap_cap || n <= c->k || c->heap_cap >= c->d->n)
        return 0;
    double worst = INFINITY, band = 2.2 * score_error(c, qi);
    for (int i = 0; i < n; i++)
        worst = h[i].score < worst ? h[i].score : worst;
    int above = 0; /* certain when the k-th best is above worst + band: k scores are */
    for (int i = 0; i < n; i++)
        above += h[i].score > worst + band;
    if (above >= c->k)
        return 0;
    fill_ids(c, h, n);
    select_best(h, n, c->k);
    *bar = h[c->k - 1].score - band;
    return 1;
}

/* Every candidate of query qi (c->excl_lo/hi its own rows) whose screening score is >= bar,
 * into c->wide; returns the count. dots: its row of n_index dot products, a duplicate taking
 * its representative's. refine_pool on them gives the exact ranking. */
static int wide_row(struct eval_ctx *c, int64_t qi, const float *dots, double bar)
{
    struct pool own = {.excl_lo = c->excl_lo, .excl_hi = c->excl_hi};
    int m = 0;
    for (int64_t j = 0; j < c->d->n; j++) {
        if (c->exclude && is_own_row(c, &own, j))
            continue;
        double s = pair_score(c, dots[c->rep[j]], qi, j);
        if (s >= bar)
            c->wide[m++] = (struct hit){s, -1, j};
    }
    return m;
}

/* Rank the candidates of query qi (dots: its row of n_index dot products), add its nine
 * values to sum (or count it as skipped). */
static void eval_query(struct eval_ctx *c, int64_t qi, const float *dots, double *sum,
                       struct ft_metrics_result *out)
{
    if (c->exclude)
        find_own_rows(c, qi);
    int n = fill_pool(c, qi, dots);
    struct hit *h = c->heap;
    double bar;
    if (pool_uncertain(c, qi, h, n, &bar)) {
        n = wide_row(c, qi, dots, bar);
        h = c->wide;
    }
    finish_query(c, qi, h, n, 0, sum, out);
}

/* Dot products of queries [q0, q0 + nb) with every index row into c->dots. */
static void block_dots(struct eval_ctx *c, int64_t q0, int nb)
{
    int64_t n = c->d->n;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, (int)n, c->dim, 1.0f,
                c->q->emb + (size_t)q0 * c->dim, c->dim, c->d->emb, c->dim, 0.0f, c->dots, (int)n);
    for (int r = 0; r < nb; r++) {
        float *row = c->dots + (size_t)r * n;
        for (int64_t t = 0; t < c->ndups; t++)
            row[c->dups[t]] = row[c->rep[c->dups[t]]];
    }
}

static int32_t max_label(const struct ft_eval_set *s)
{
    int32_t m = -1;
    for (int64_t i = 0; i < s->n; i++)
        m = s->labels[i] > m ? s->labels[i] : m;
    return m;
}

static void ctx_free(struct eval_ctx *c)
{
    free(c->key);
    free(c->by_id);
    free(c->qn);
    free(c->dn);
    free(c->qsq);
    free(c->dsq);
    free(c->rep);
    free(c->dups);
    free(c->label_count);
    free(c->idcg);
    free(c->dots);
    free(c->heap);
    free(c->wide);
    free(c->rel);
    free(c->qtlo);
    free(c->dup_first);
    free(c->dup_rows);
}

/* The screening keys and whether the norms allow the filter. -1 on ENOMEM. */
static int prepare_screen(struct eval_ctx *c)
{
    int64_t nd = c->d->n;
    c->key = malloc(((size_t)nd + 1) * sizeof *c->key);
    if (!c->key)
        return -1;
    c->filter = 1;
    c->max_dsq = 0.0;
    for (int64_t i = 0; i < c->q->n; i++)
        c->filter &= c->qsq[i] <= 1e30;
    for (int64_t j = 0; j < nd; j++) {
        double d = c->dsq[j];
        c->filter &= d <= 1e30 && (d == 0.0 || d >= 1e-30);
        c->max_dsq = d > c->max_dsq ? d : c->max_dsq;
        if (is_euclid(c->score))
            c->key[j] = (float)d;
        else if (c->score == FT_SCORE_COSINE)
            c->key[j] = d > 0.0 ? (float)(1.0 / sqrt(d)) : 0.0f;
        else
            c->key[j] = 1.0f;
    }
    return 0;
}

/* Index rows sorted by id (for the excluded rows of each query). -1 on ENOMEM. */
static int prepare_id_order(struct eval_ctx *c)
{
    int64_t nd = c->d->n;
    struct id_row *by_id = malloc(((size_t)nd + 1) * sizeof *by_id);
    if (!by_id)
        return -1;
    for (int64_t j = 0; j < nd; j++)
        by_id[j] = (struct id_row){c->d->ids[j], j};
    qsort(by_id, (size_t)nd, sizeof *by_id, cmp_id_row);
    c->by_id = by_id;
    return 0;
}

/* Allocate and fill everything but the dot buffer. Returns 0 or -1 on ENOMEM. */
static int ctx_prepare(struct eval_ctx *c)
{
    int64_t nq = c->q->n, nd = c->d->n;
    c->num_labels = max_label(c->d) + 1;
    c->qsq = malloc(((size_t)nq + 1) * sizeof *c->qsq);
    c->dsq = malloc(((size_t)nd + 1) * sizeof *c->dsq);
    c->rep = malloc(((size_t)nd + 1) * sizeof *c->rep);
    c->dups = malloc(((size_t)nd + 1) * sizeof *c->dups);
    c->label_count = calloc((size_t)c->num_labels + 1, sizeof *c->label_count);
    c->idcg = malloc(((size_t)c->heap_cap + 1) * sizeof *c->idcg);
    c->buf_cap = 4 * c->heap_cap + 64;
    c->heap = malloc(((size_t)c->buf_cap + 1) * sizeof *c->heap);
    c->wide = malloc(((size_t)nd + 1) * sizeof *c->wide);
    c->rel = malloc((size_t)c->heap_cap + 1);
    if (!c->qsq || !c->dsq || !c->rep || !c->dups || !c->label_count || !c->idcg || !c->heap ||
        !c->wide || !c->rel)
        return -1;
    if (find_duplicates(c->d->emb, nd, c->dim, c->rep) != 0)
        return -1;
    for (int64_t j = 0; j < nd; j++) {
        if (c->rep[j] != j)
            c->dups[c->ndups++] = j;
        if (c->d->labels[j] >= 0)
            c->label_count[c->d->labels[j]]++;
    }
    sq_norms(c->d->emb, nd, c->dim, c->dsq);
    if (c->q->emb == c->d->emb && nq <= nd) /* the queries are the index (or its first rows) */
        memcpy(c->qsq, c->dsq, (size_t)nq * sizeof *c->qsq);
    else
        sq_norms(c->q->emb, nq, c->dim, c->qsq);
    c->qn = malloc(((size_t)nq + 1) * sizeof *c->qn);
    c->dn = malloc(((size_t)nd + 1) * sizeof *c->dn);
    if (!c->qn || !c->dn)
        return -1;
    for (int64_t i = 0; i < nq; i++)
        c->qn[i] = sqrt(c->qsq[i]);
    for (int64_t j = 0; j < nd; j++)
        c->dn[j] = sqrt(c->dsq[j]);
    if (prepare_screen(c) != 0 || (c->exclude && prepare_id_order(c) != 0))
        return -1;
    c->idcg[0] = 0.0;
    for (int i = 1; i <= c->heap_cap; i++)
        c->idcg[i] = c->idcg[i - 1] + 1.0 / log2(i + 1.0);
    return 0;
}

static enum ft_err check_args(const struct ft_eval_set *query, const struct ft_eval_set *index,
                              int dim, int k, struct ft_metrics_result *out, struct ft_error *err)
{
    if (!query || !out)
        return ft_error_set(err, FT_EINVAL, "query", "query set and result are required");
    if (k < 1)
        return ft_error_set(err, FT_EINVAL, "limit", "limit must be an integer >= 1, got %d", k);
    if (dim < 1)
        return ft_error_set(err, FT_EINVAL, "dim", "embedding dimension must be >= 1, got %d", dim);
    if (query->n < 0 || index->n < 0 || index->n > INT_MAX || query->n > INT64_MAX / dim ||
        index->n > INT64_MAX / dim)
        return ft_error_set(err, FT_EINVAL, "index", "document count out of range");
    if ((query->n > 0 && (!query->emb || !query->ids || !query->labels)) ||
        (index->n > 0 && (!index->emb || !index->ids || !index->labels)))
        return ft_error_set(err, FT_EINVAL, "query",
                            "document set without embeddings, ids or labels");
    return FT_OK;
}

/* Run every query block; sum receives the per-metric sums. */
static void eval_all(struct eval_ctx *c, int block, double *sum, struct ft_metrics_result *out)
{
    for (int64_t q0 = 0; q0 < c->q->n; q0 += block) {
        int nb = (int)(c->q->n - q0 < block ? c->q->n - q0 : block);
        if (c->d->n > 0)
            block_dots(c, q0, nb);
        for (int r = 0; r < nb; r++)
            eval_query(c, q0 + r, c->dots + (size_t)r * c->d->n, sum, out);
    }
}

/* ---- symmetric mode ----
 * When the queries are the index (one embedding array, as EvaluationCallback without
 * index_data), the dot products form a symmetric matrix and half of it is enough: block I of
 * queries [i0, i0 + nb) gets one sgemm against rows [i0, n) (about half the flops of the full
 * matrix over all blocks). Each query keeps a pool of its own across the blocks:
 *  - row scan: query i (in block I) is offered rows [i0, n) from its row of the tile, with
 *    scan_row's screen;
 *  - column scan: query j >= i0 + nb (after block I) is offered each row i of block I with
 *    the tile's entry (i, j), screened against its threshold in c->qtlo, sixteen queries at a
 *    time.
 * So every (query, row) pair is offered once, rows before the query's block by the column
 * scans, the rest by its row scan. A pool is the best heap_cap of what it was offered,
 * whatever the order (ranks_before is a total order), so it is eval_all's up to the rounding
 * of each dot product (from another tile here), which the refinement makes irrelevant (an
 * uncertain pool is ranked from its query's whole row); duplicates are offered through their
 * representative (offer).
 * Memory: n pools of 2 heap_cap hits (about 2 KiB a query for limit 20), so it is used only
 * while that stays under SYM_BUDGET bytes. Instead of fill_pool's guess from the previous
 * query, one guessed bar screens every pool from the start (sym_guess). */
#define SYM_BUDGET (64 * 1024 * 1024)

static int sym_cap(const struct eval_ctx *c)
{
    return 2 * c->heap_cap;
}

/* Whether symmetric mode applies (the caller has the screening filter on). */
static int sym_wanted(const struct eval_ctx *c)
{
    int64_t n = c->d->n;
    size_t per_query = sizeof(struct pool) + (size_t)sym_cap(c) * sizeof(struct hit) + 4;
    return c->q->emb == c->d->emb && c->q->n == n && n >= 2 * MAX_BLOCK && c->filter &&
           (size_t)n <= SYM_BUDGET / per_query;
}

/* dup_first/dup_rows: the duplicates of each representative (symmetric mode). -1 on ENOMEM. */
static int prepare_dup_lists(struct eval_ctx *c)
{
    int64_t n = c->d->n;
    c->dup_first = calloc((size_t)n + 2, sizeof *c->dup_first);
    c->dup_rows = malloc(((size_t)c->ndups + 1) * sizeof *c->dup_rows);
    if (!c->dup_first || !c->dup_rows)
        return -1;
    for (int64_t t = 0; t < c->ndups; t++)
        c->dup_first[c->rep[c->dups[t]] + 2]++;
    for (int64_t r = 0; r < n; r++)
        c->dup_first[r + 2] += c->dup_first[r + 1];
    for (int64_t t = 0; t < c->ndups; t++) /* dups is ascending: each list is too */
        c->dup_rows[c->dup_first[c->rep[c->dups[t]] + 1]++] = c->dups[t];
    return 0;
}

/* Offer row i (of block [i0, i0 + nb)) to the queries after the block: dots[t] is the entry
 * of query i0 + nb + t. */
static void scan_column(struct eval_ctx *c, int64_t i, const float *dots, int64_t j0,
                        struct pool *pools)
{
    int64_t n = c->d->n;
    int euclid = is_euclid(c->score);
    int64_t j = scan_column_simd(c, i, dots, j0, pools);
    for (; j < n; j++)
        if (screen_value(dots[j - j0], c->key[i], euclid) >= c->qtlo[j])
            offer(c, j, i, dots[j - j0], &pools[j]);
}

/* Query i's pool before any candidate: no bar; screening at -inf (everything passes). */
static struct pool sym_pool(struct eval_ctx *c, int64_t i, struct hit *h, int cap)
{
    if (c->exclude)
        find_own_rows(c, i);
    c->qtlo[i] = -INFINITY;
    return (struct pool){.h = h,
                         .cap = cap,
                         .screen = 1,
                         .tlo = -INFINITY,
                         .excl_lo = c->excl_lo,
                         .excl_hi = c->excl_hi};
}

/* A guess of every query's pool bar: the lowest worst score of the complete pools of up to
 * `block` queries spread evenly over the rows (every (n / s)-th, so an index sorted by label
 * is sampled across its labels; about one query in s then guesses too high and sym_rows redoes
 * it). Costs s / n of the full matrix. 0 when there is no guess (a pool short of heap_cap, a
 * score not finite). qbuf (block, dim) scratch. */
static int sym_guess(struct eval_ctx *c, int block, float *qbuf, double *guess)
{
    int64_t n = c->d->n;
    int s = (int)(n < block ? n : block);
    for (int r = 0; r < s; r++)
        memcpy(qbuf + (size_t)r * c->dim, c->d->emb + (size_t)(r * (n / s)) * c->dim,
               (size_t)c->dim * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s, (int)n, c->dim, 1.0f, qbuf, c->dim,
                c->d->emb, c->dim, 0.0f, c->dots, (int)n);
    double g = INFINITY;
    for (int r = 0; r < s; r++) {
        int64_t qi = r * (n / s);
        if (c->exclude)
            find_own_rows(c, qi);
        struct pool p = {.h = c->heap,
                         .cap = c->buf_cap,
                         .screen = 1,
                         .tlo = -INFINITY,
                         .excl_lo = c->excl_lo,
                         .excl_hi = c->excl_hi};
        c->qtlo[qi] = -INFINITY;
        scan_row(c, qi, c->dots + (size_t)r * n, 0, &p);
        if (p.n < c->heap_cap)
            return 0;
        for (int t = 0; t < p.n; t++)
            g = p.h[t].score < g ? p.h[t].score : g;
    }
    *guess = g;
    return isfinite(g);
}

/* What sym_rows does with a query's whole row. */
enum row_job { ROW_REFILL, ROW_RANK };

/* Queries whose pool must come from whole rows, block by block (rows (nf); qbuf (block, dim)
 * scratch). ROW_REFILL: the guess was too high (fewer than heap_cap candidates reached it, so
 * the pool may miss some of its best): the pool again, as eval_all fills it. ROW_RANK: the pool
 * is uncertain (pool_uncertain): the exact top k from the whole row into it (ranked). */
static void sym_rows(struct eval_ctx *c, struct pool *pools, const int64_t *rows, int64_t nf,
                     int block, float *qbuf, enum row_job job)
{
    int64_t n = c->d->n;
    size_t row_bytes = (size_t)c->dim * sizeof(float);
    for (int64_t f0 = 0; f0 < nf; f0 += block) {
        int nb = (int)(nf - f0 < block ? nf - f0 : block);
        for (int r = 0; r < nb; r++)
            memcpy(qbuf + (size_t)r * c->dim, c->d->emb + (size_t)rows[f0 + r] * c->dim, row_bytes);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, (int)n, c->dim, 1.0f, qbuf, c->dim,
                    c->d->emb, c->dim, 0.0f, c->dots, (int)n);
        for (int r = 0; r < nb; r++) {
            int64_t qi = rows[f0 + r];
            struct pool *p = &pools[qi];
            double bar;
            if (job == ROW_REFILL) {
                *p = sym_pool(c, qi, p->h, p->cap);
                scan_row(c, qi, c->dots + (size_t)r * n, 0, p);
            } else if (pool_uncertain(c, qi, p->h, p->n, &bar)) {
                if (c->exclude)
                    find_own_rows(c, qi);
                int m = wide_row(c, qi, c->dots + (size_t)r * n, bar);
                m = refine_pool(c, qi, c->wide, m);
                p->n = m < c->k ? m : c->k;
                memcpy(p->h, c->wide, (size_t)p->n * sizeof *p->h);
                p->ranked = 1;
            }
        }
    }
}

/* eval_all for queries = index in symmetric mode. -1 on ENOMEM, before anything is counted
 * (c as before: eval_all can run). */
static int eval_symmetric(struct eval_ctx *c, int block, double *sum, struct ft_metrics_result *out)
{
    int64_t n = c->d->n, nf = 0;
    int cap = sym_cap(c);
    struct pool *pools = malloc((size_t)n * sizeof *pools);
    struct hit *hits = malloc((size_t)n * (size_t)cap * sizeof *hits);
    int64_t *failed = malloc((size_t)n * sizeof *failed);
    float *qbuf = malloc((size_t)block * (size_t)c->dim * sizeof *qbuf);
    c->qtlo = malloc((size_t)n * sizeof *c->qtlo);
    int rc = -1;
    if (!pools || !hits || !failed || !qbuf || !c->qtlo || prepare_dup_lists(c) != 0)
        goto done;
    c->sym = 1;
    double g;
    int spec = sym_guess(c, block, qbuf, &g);
    for (int64_t i = 0; i < n; i++) {
        struct pool *p = &pools[i];
        *p = sym_pool(c, i, hits + (size_t)i * cap, cap);
        if (spec) {
            p->spec = 1;
            p->est = g;
            p->tlo = c->qtlo[i] = screen_threshold(c, i, g);
        }
    }
    for (int64_t i0 = 0; i0 < n; i0 += block) {
        int nb = (int)(n - i0 < block ? n - i0 : block);
        int64_t m = n - i0; /* tile: (nb, m), rows [i0, n) */
        const float *e = c->d->emb + (size_t)i0 * c->dim;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nb, (int)m, c->dim, 1.0f, e, c->dim, e,
                    c->dim, 0.0f, c->dots, (int)m);
        for (int r = 0; r < nb; r++)
            scan_row(c, i0 + r, c->dots + (size_t)r * m, i0, &pools[i0 + r]);
        if (i0 + nb < n)
            for (int r = 0; r < nb; r++)
                if (c->rep[i0 + r] == i0 + r)
                    scan_column(c, i0 + r, c->dots + (size_t)r * m + nb, i0 + nb, pools);
    }
    for (int64_t i = 0; i < n; i++)
        if (pools[i].spec && pools[i].nspec < c->heap_cap)
            failed[nf++] = i;
    sym_rows(c, pools, failed, nf, block, qbuf, ROW_REFILL);
    nf = 0;
    for (int64_t i = 0; i < n; i++) {
        struct pool *p = &pools[i];
        double bar;
        if (p->n > c->heap_cap)
            cut_back(c, i, p);
        if (pool_uncertain(c, i, p->h, p->n, &bar))
            failed[nf++] = i;
    }
    sym_rows(c, pools, failed, nf, block, qbuf, ROW_RANK);
    for (int64_t i = 0; i < n; i++) {
        struct pool *p = &pools[i];
        if (c->exclude)
            find_own_rows(c, i);
        finish_query(c, i, p->h, p->n, p->ranked, sum, out);
    }
    rc = 0;
done:
    if (rc != 0) {
        free(c->qtlo);
        c->qtlo = NULL;
        c->sym = 0;
    }
    free(pools);
    free(hits);
    free(failed);
    free(qbuf);
    return rc;
}

/* Shared by ft_retrieval_metrics and ft_retrieval_topk (top_ids non-NULL). */
static enum ft_err retrieve(const struct ft_eval_set *query, const struct ft_eval_set *index,
                            int dim, int k, enum ft_score score, int exclude_self,
                            struct ft_metrics_result *out, int64_t *top_ids, double *top_scores,
                            struct ft_error *err);

enum ft_err ft_retrieval_topk(const struct ft_eval_set *query, const struct ft_eval_set *index,
                              int dim, int k, enum ft_score score, int exclude_self, int64_t *ids,
                              double *scores, struct ft_error *err)
{
    struct ft_metrics_result unused;
    if (!ids || !scores)
        return ft_error_set(err, FT_EINVAL, "ids", "output arrays are required");
    return retrieve(query, index, dim, k, score, exclude_self, &unused, ids, scores, err);
}

enum ft_err ft_retrieval_metrics(const struct ft_eval_set *query, const struct ft_eval_set *index,
                                 int dim, int k, enum ft_score score, int exclude_self,
                                 struct ft_metrics_result *out, struct ft_error *err)
{
    return retrieve(query, index, dim, k, score, exclude_self && (!index || index == query), out,
                    NULL, NULL, err);
}

enum ft_err ft_retrieval_metrics_by_id(const struct ft_eval_set *query,
                                       const struct ft_eval_set *index, int dim, int k,
                                       enum ft_score score, int exclude_same_id,
                                       struct ft_metrics_result *out, struct ft_error *err)
{
    return retrieve(query, index, dim, k, score, exclude_same_id, out, NULL, NULL, err);
}

static enum ft_err retrieve(const struct ft_eval_set *query, const struct ft_eval_set *index,
                            int dim, int k, enum ft_score score, int exclude_self,
                            struct ft_metrics_result *out, int64_t *top_ids, double *top_scores,
                            struct ft_error *err)
{
    const struct ft_eval_set *d = index ? index : query;
    enum ft_err rc = check_args(query, d, dim, k, out, err);
    if (rc != FT_OK)
        return rc;
    memset(out, 0, sizeof *out);
    struct eval_ctx c = {.q = query,
                         .d = d,
                         .dim = dim,
                         .k = k,
                         .score = score,
                         .top_ids = top_ids,
                         .top_scores = top_scores};
    c.exclude = exclude_self; /* callers decide when it applies */
    c.gap = 0.5;
    int64_t pool = (int64_t)k + k / 4 + 16;
    c.heap_cap = (int)(pool < d->n ? pool : d->n);
    int64_t block = d->n > 0 ? DOT_BUDGET / d->n : MAX_BLOCK;
    block = block < 1 ? 1 : (block > MAX_BLOCK ? MAX_BLOCK : block);
    c.dots = malloc((size_t)block * (size_t)d->n * sizeof *c.dots + sizeof *c.dots);
    if (!c.dots || ctx_prepare(&c) != 0) {
        ctx_free(&c);
        return ft_error_set(err, FT_ENOMEM, NULL, "out of memory computing retrieval metrics");
    }
    double sum[FT_NUM_METRICS] = {0};
    if (!sym_wanted(&c) || eval_symmetric(&c, (int)block, sum, out) != 0)
        eval_all(&c, (int)block, sum, out); /* also when the pools did not fit in memory */
    for (int m = 0; m < FT_NUM_METRICS; m++)
        out->value[m] = out->evaluated > 0 ? sum[m] / (double)out->evaluated : 0.0;
    ctx_free(&c);
    return FT_OK;
}
