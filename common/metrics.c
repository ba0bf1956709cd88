/* metrics.c — the nine retrieval metrics of EvaluationCallback (spec:
 * tests/fixtures/metrics/README.md).
 *
 * Design, two passes per query:
 *  1. Screening: one cblas_sgemm per block of queries gives the float32 dot products
 *     dot(q, d) of the RAW embeddings, (block x n_index) floats; a score is formed per pair
 *     in double from that dot and norms precomputed in double per document:
 *       cosine dot / (|q| |d|) (0 when either norm is 0), (sq)euclidean
 *       -(|q|^2 + |d|^2 - 2 dot), inner_product dot.
 *     A bounded heap keeps a pool of the best k + k/4 + 16 candidates (score desc, id asc).
 *  2. Refinement: the pool is rescored exactly in double from the float32 embeddings (dot
 *     products, or the direct sum of (q_i - d_i)^2 for euclidean; float products are exact
 *     in double) and sorted; its first k are the ranking. This gives the float64 reference
 *     ranking unless the float32 screening error exceeds the margin of the pool.
 * Exact ties are broken by id, so bitwise-equal vectors must get bitwise-equal scores in both
 * passes. BLAS micro-kernels round the same column differently at different positions, so
 * bitwise-equal index vectors are found once (hash + memcmp) and every duplicate column
 * copies its representative's dot product; the refinement is one per-pair routine. Means
 * are accumulated in double.
 *
 * Owns nothing past a call: every buffer is allocated and freed inside
 * ft_retrieval_metrics(). */
#include "metrics.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Floats of the per-block dot-product buffer (32 MiB) and the most queries in one block. */
#define DOT_BUDGET (8 * 1024 * 1024)
#define MAX_BLOCK 256

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

static uint64_t vec_hash(const float *v, int dim)
{
    const unsigned char *p = (const unsigned char *)v;
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < (size_t)dim * sizeof(float); i++) {
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

/* ---- top-k heap ------------------------------------------------------------------------- */

struct hit {
    double score;
    int64_t id;
    int64_t row; /* index row */
};

/* 1 when a ranks before b: score descending, ties by smaller id. */
static int ranks_before(const struct hit *a, const struct hit *b)
{
    if (a->score != b->score)
        return a->score > b->score;
    return a->id < b->id;
}

/* Min-heap on rank: h[0] is the worst kept hit. */
static void heap_sift_down(struct hit *h, int n, int i)
{
    for (;;) {
        int w = i;
        int l = 2 * i + 1;
        int r = l + 1;
        if (l < n && ranks_before(&h[w], &h[l]))
            w = l;
        if (r < n && ranks_before(&h[w], &h[r]))
            w = r;
        if (w == i)
            return;
        struct hit t = h[i];
        h[i] = h[w];
        h[w] = t;
        i = w;
    }
}

static void heap_sift_up(struct hit *h, int i)
{
    while (i > 0) {
        int p = (i - 1) / 2;
        if (!ranks_before(&h[p], &h[i]))
            return;
        struct hit t = h[i];
        h[i] = h[p];
        h[p] = t;
        i = p;
    }
}

/* Offer c to the heap h of *n entries (capacity cap). */
static void heap_offer(struct hit *h, int *n, int cap, const struct hit *c)
{
    if (*n < cap) {
        h[*n] = *c;
        heap_sift_up(h, (*n)++);
    } else if (ranks_before(c, &h[0])) {
        h[0] = *c;
        heap_sift_down(h, *n, 0);
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

struct eval_ctx {
    const struct ft_eval_set *q, *d;
    int dim, k, exclude;
    int heap_cap; /* screening pool: min(n_index, k + k/4 + 16) */
    enum ft_score score;
    double *qsq, *dsq; /* squared norms (double) */
    int64_t *rep;      /* duplicate representative per index row */
    int64_t *dups;     /* rows with rep != row */
    int64_t ndups;
    int64_t *label_count; /* relevant documents per label in the index */
    int32_t num_labels;
    double *idcg;       /* (heap_cap + 1) */
    float *dots;        /* (block, n_index) */
    struct hit *heap;   /* (heap_cap) */
    unsigned char *rel; /* (heap_cap) */
    int64_t *top_ids;   /* ft_retrieval_topk: (nq, k) outputs, else NULL */
    double *top_scores;
};

static void sq_norms(const float *emb, int64_t n, int dim, double *out)
{
    for (int64_t i = 0; i < n; i++) {
        const float *v = emb + (size_t)i * dim;
        double s = 0.0;
        for (int c = 0; c < dim; c++)
            s += (double)v[c] * (double)v[c];
        out[i] = s;
    }
}

static double pair_score(const struct eval_ctx *c, float dot, double qsq, int64_t j)
{
    double s;
    if (c->score == FT_SCORE_COSINE) {
        double den = sqrt(qsq) * sqrt(c->dsq[j]);
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
        double den = sqrt(c->qsq[qi]) * sqrt(c->dsq[j]);
        acc = den > 0 ? acc / den : 0.0;
    }
    return isnan(acc) ? -INFINITY : acc;
}

/* Rescore the pool h (n) exactly and sort it best first. */
static void refine_pool(const struct eval_ctx *c, int64_t qi, struct hit *h, int n)
{
    for (int i = 0; i < n; i++)
        h[i].score = exact_score(c, qi, h[i].row);
    qsort(h, (size_t)n, sizeof *h, cmp_rank);
}

static int is_relevant(int32_t qlabel, int32_t dlabel)
{
    return qlabel >= 0 && qlabel == dlabel;
}

/* Rank the candidates of query qi (dots: its row of n_index dot products), add its nine
 * values to sum (or count it as skipped). */
static void eval_query(struct eval_ctx *c, int64_t qi, const float *dots, double *sum,
                       struct ft_metrics_result *out)
{
    int64_t qid = c->q->ids[qi];
    int32_t ql = c->q->labels[qi];
    int64_t R = (ql >= 0 && ql < c->num_labels) ? c->label_count[ql] : 0;
    int n = 0;
    for (int64_t j = 0; j < c->d->n; j++) {
        if (c->exclude && c->d->ids[j] == qid) {
            R -= is_relevant(ql, c->d->labels[j]);
            continue;
        }
        struct hit h = {pair_score(c, dots[j], c->qsq[qi], j), c->d->ids[j], j};
        heap_offer(c->heap, &n, c->heap_cap, &h);
    }
    if (c->top_ids) { /* examples: the ranking itself, whatever R is */
        refine_pool(c, qi, c->heap, n);
        for (int i = 0; i < c->k; i++) {
            c->top_ids[qi * c->k + i] = i < n ? c->heap[i].id : -1;
            c->top_scores[qi * c->k + i] = i < n ? c->heap[i].score : 0.0;
        }
        return;
    }
    if (R <= 0) {
        out->skipped++;
        return;
    }
    refine_pool(c, qi, c->heap, n);
    n = n < c->k ? n : c->k;
    for (int i = 0; i < n; i++)
        c->rel[i] = (unsigned char)is_relevant(ql, c->d->labels[c->heap[i].row]);
    double v[FT_NUM_METRICS];
    query_metrics(c->rel, n, R, c->k, c->idcg, v);
    for (int m = 0; m < FT_NUM_METRICS; m++)
        sum[m] += v[m];
    out->evaluated++;
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
    free(c->qsq);
    free(c->dsq);
    free(c->rep);
    free(c->dups);
    free(c->label_count);
    free(c->idcg);
    free(c->dots);
    free(c->heap);
    free(c->rel);
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
    c->heap = malloc(((size_t)c->heap_cap + 1) * sizeof *c->heap);
    c->rel = malloc((size_t)c->heap_cap + 1);
    if (!c->qsq || !c->dsq || !c->rep || !c->dups || !c->label_count || !c->idcg || !c->heap ||
        !c->rel)
        return -1;
    if (find_duplicates(c->d->emb, nd, c->dim, c->rep) != 0)
        return -1;
    for (int64_t j = 0; j < nd; j++) {
        if (c->rep[j] != j)
            c->dups[c->ndups++] = j;
        if (c->d->labels[j] >= 0)
            c->label_count[c->d->labels[j]]++;
    }
    sq_norms(c->q->emb, nq, c->dim, c->qsq);
    sq_norms(c->d->emb, nd, c->dim, c->dsq);
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
    eval_all(&c, (int)block, sum, out);
    for (int m = 0; m < FT_NUM_METRICS; m++)
        out->value[m] = out->evaluated > 0 ? sum[m] / (double)out->evaluated : 0.0;
    ctx_free(&c);
    return FT_OK;
}
