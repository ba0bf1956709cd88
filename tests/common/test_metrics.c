/* test_metrics.c — ft_retrieval_metrics against tests/fixtures/metrics (spec: its README.md):
 * every hand and random case to 1e-9, the Fashion-MNIST raw-pixel means to 1e-9, plus name
 * lookup and argument errors. */
#include <criterion/criterion.h>

#include "dataset.h"
#include "support/fixture.h"
#include "metrics.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LABELS 64

/* One string-label table shared by query and index. */
struct label_table {
    const char *names[MAX_LABELS];
    int n;
};

static int32_t label_id(struct label_table *t, const char *name)
{
    for (int i = 0; i < t->n; i++) {
        if (strcmp(t->names[i], name) == 0)
            return i;
    }
    cr_assert_lt(t->n, MAX_LABELS, "too many labels");
    t->names[t->n] = name;
    return t->n++;
}

/* A document set decoded from {"ids", "labels", "embeddings"}; arrays owned. */
struct doc_set {
    struct ft_eval_set set;
    float *emb;
    int64_t *ids;
    int32_t *labels;
    int dim;
};

static void doc_set_load(json_t *obj, struct label_table *t, struct doc_set *out)
{
    json_t *ids = json_object_get(obj, "ids");
    json_t *labels = json_object_get(obj, "labels");
    json_t *emb = json_object_get(obj, "embeddings");
    size_t n = json_array_size(ids);
    cr_assert(n > 0 && json_array_size(labels) == n && json_array_size(emb) == n);
    out->dim = (int)json_array_size(json_array_get(emb, 0));
    out->emb = malloc(n * out->dim * sizeof *out->emb);
    out->ids = malloc(n * sizeof *out->ids);
    out->labels = malloc(n * sizeof *out->labels);
    for (size_t i = 0; i < n; i++) {
        json_t *row = json_array_get(emb, i);
        cr_assert_eq(json_array_size(row), (size_t)out->dim);
        for (int c = 0; c < out->dim; c++)
            out->emb[i * out->dim + c] = (float)json_number_value(json_array_get(row, c));
        out->ids[i] = json_integer_value(json_array_get(ids, i));
        out->labels[i] = label_id(t, json_string_value(json_array_get(labels, i)));
    }
    out->set = (struct ft_eval_set){out->emb, out->ids, out->labels, (int64_t)n};
}

static void doc_set_free(struct doc_set *s)
{
    free(s->emb);
    free(s->ids);
    free(s->labels);
}

/* Compare a result with an "expected" object: nine means to tol (null => none evaluated),
 * evaluated/skipped exactly. */
static void assert_expected(const char *name, const struct ft_metrics_result *got, json_t *want,
                            double tol)
{
    cr_assert_eq(got->evaluated, json_integer_value(json_object_get(want, "evaluated_queries")),
                 "%s: evaluated %lld", name, (long long)got->evaluated);
    cr_assert_eq(got->skipped, json_integer_value(json_object_get(want, "skipped_queries")),
                 "%s: skipped %lld", name, (long long)got->skipped);
    for (int m = 0; m < FT_NUM_METRICS; m++) {
        json_t *w = json_object_get(want, ft_metric_name(m));
        cr_assert_not_null(w, "%s: no %s", name, ft_metric_name(m));
        if (json_is_null(w)) {
            cr_assert_eq(got->evaluated, 0, "%s: %s should be null", name, ft_metric_name(m));
            continue;
        }
        double e = json_number_value(w);
        cr_assert(fabs(got->value[m] - e) <= tol, "%s: %s = %.17g, want %.17g", name,
                  ft_metric_name(m), got->value[m], e);
    }
}

static void run_case(const char *file)
{
    char rel[512];
    snprintf(rel, sizeof rel, "metrics/cases/%s", file);
    json_t *fx = fx_load(rel);
    struct label_table t = {.n = 0};
    struct doc_set q, d;
    doc_set_load(json_object_get(fx, "query"), &t, &q);
    json_t *index = json_object_get(fx, "index");
    int has_index = index && !json_is_null(index);
    if (has_index)
        doc_set_load(index, &t, &d);
    enum ft_score score;
    cr_assert_eq(ft_score_parse(json_string_value(json_object_get(fx, "distance")), &score), 0);
    int k = (int)json_integer_value(json_object_get(fx, "limit"));
    int excl = json_is_true(json_object_get(fx, "exclude_self"));
    struct ft_metrics_result res;
    struct ft_error err;
    enum ft_err rc =
        ft_retrieval_metrics(&q.set, has_index ? &d.set : NULL, q.dim, k, score, excl, &res, &err);
    cr_assert_eq(rc, FT_OK, "%s: %s", file, err.message);
    assert_expected(file, &res, json_object_get(fx, "expected"), 1e-9);
    doc_set_free(&q);
    if (has_index)
        doc_set_free(&d);
    json_decref(fx);
}

Test(metrics, fixture_cases)
{
    size_t count;
    char **files = fx_list("metrics/cases", &count);
    cr_assert_geq(count, 42, "expected 42 metric cases, found %zu", count);
    for (size_t i = 0; i < count; i++)
        run_case(files[i]);
    fx_free_list(files, count);
}

Test(metrics, fashion_mnist_raw_pixels, .timeout = 120)
{
    struct ft_dataset *ds = NULL;
    struct ft_error err;
    enum ft_err rc = ft_dataset_load_idx_files(
        "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz",
        "/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz", &ds, &err);
    cr_assert_eq(rc, FT_OK, "load Fashion-MNIST: %s", err.message);
    cr_assert_eq(ds->n, 10000);
    cr_assert_eq(ds->dim, 784);
    int64_t *ids = malloc(ds->n * sizeof *ids);
    for (int64_t i = 0; i < ds->n; i++)
        ids[i] = i;
    json_t *fx = fx_load("metrics/fashion_mnist_raw_pixels.json");
    json_t *results = json_object_get(fx, "results");
    cr_assert_eq(json_array_size(results), 4);
    for (size_t r = 0; r < json_array_size(results); r++) {
        json_t *c = json_array_get(results, r);
        int64_t n = json_integer_value(json_object_get(c, "n"));
        const char *dist = json_string_value(json_object_get(c, "distance"));
        enum ft_score score;
        cr_assert_eq(ft_score_parse(dist, &score), 0);
        struct ft_eval_set set = {ds->x, ids, ds->labels, n};
        struct ft_metrics_result res;
        int k = (int)json_integer_value(json_object_get(c, "limit"));
        rc = ft_retrieval_metrics(&set, NULL, ds->dim, k, score, 1, &res, &err);
        cr_assert_eq(rc, FT_OK, "%s", err.message);
        char label[64];
        snprintf(label, sizeof label, "fashion-mnist n=%lld %s", (long long)n, dist);
        /* The README allows 1e-4 for float32 scores; ours rescore the top of each list in
         * double, so the float64 reference's 1e-9 applies (measured: 3.7e-13). */
        assert_expected(label, &res, json_object_get(c, "expected"), 1e-9);
    }
    json_decref(fx);
    free(ids);
    ft_dataset_free(ds);
}

/* Four 2-d documents, two labels; used by the small unit tests below. */
static const float small_emb[] = {1, 0, 0.9f, 0.1f, 0, 1, 0.1f, 0.9f};
static const int64_t small_ids[] = {0, 1, 2, 3};
static const int32_t small_labels[] = {0, 0, 1, 1};

Test(metrics, limit_below_one_is_invalid)
{
    struct ft_eval_set s = {small_emb, small_ids, small_labels, 4};
    struct ft_metrics_result res;
    struct ft_error err;
    cr_assert_eq(ft_retrieval_metrics(&s, NULL, 2, 0, FT_SCORE_COSINE, 1, &res, &err), FT_EINVAL);
    cr_assert_str_eq(err.param, "limit");
    cr_assert_eq(ft_retrieval_metrics(&s, NULL, 2, -3, FT_SCORE_COSINE, 1, &res, &err), FT_EINVAL);
    cr_assert_eq(ft_retrieval_metrics(&s, NULL, 0, 1, FT_SCORE_COSINE, 1, &res, &err), FT_EINVAL);
    cr_assert_str_eq(err.param, "dim");
}

Test(metrics, perfect_ranking)
{
    struct ft_eval_set s = {small_emb, small_ids, small_labels, 4};
    struct ft_metrics_result res;
    for (int score = FT_SCORE_COSINE; score <= FT_SCORE_INNER_PRODUCT; score++) {
        cr_assert_eq(ft_retrieval_metrics(&s, NULL, 2, 1, score, 1, &res, NULL), FT_OK);
        cr_assert_eq(res.evaluated, 4);
        for (int m = 0; m < FT_NUM_METRICS; m++)
            cr_assert_float_eq(res.value[m], 1.0, 1e-15, "score %d %s", score, ft_metric_name(m));
    }
}

Test(metrics, cosine_with_zero_vector_scores_zero)
{
    /* Query (1,0) label 0; index: zero vector (label 0, id 5) and (-1,0) (label 1, id 1).
     * Cosine: zero vector scores 0 > -1, so it ranks first and is relevant. */
    const float q[] = {1, 0};
    const int64_t qid[] = {0};
    const int32_t ql[] = {0};
    const float d[] = {0, 0, -1, 0};
    const int64_t did[] = {5, 1};
    const int32_t dl[] = {0, 1};
    struct ft_eval_set qs = {q, qid, ql, 1}, ds = {d, did, dl, 2};
    struct ft_metrics_result res;
    cr_assert_eq(ft_retrieval_metrics(&qs, &ds, 2, 1, FT_SCORE_COSINE, 1, &res, NULL), FT_OK);
    cr_assert_eq(res.evaluated, 1);
    cr_assert_float_eq(res.value[FT_METRIC_HIT_AT_K], 1.0, 0);
    cr_assert(isfinite(res.value[FT_METRIC_NDCG_AT_K]));
}

Test(metrics, exact_ties_from_duplicates_break_by_id)
{
    /* 301 copies of one vector with shuffled ids; only the copy with id 0 is relevant, so
     * precision@1 is 1 for every query only if all copies score bitwise-equal and the tie
     * goes to the smaller id. Plain sgemm on many query rows rounds identical columns
     * differently (OpenBLAS 0.3.21: ~5,000 of 19,264 dots here), so this needs the
     * duplicate handling. */
    enum { NQ = 64, N = 301, DIM = 40 };
    static float q[NQ * DIM], d[N * DIM];
    static int64_t qid[NQ], did[N];
    static int32_t ql[NQ], dl[N];
    unsigned s = 12345;
    for (int i = 0; i < NQ * DIM + DIM; i++) {
        s = s * 1103515245u + 12345u;
        float v = (float)((s >> 8) & 0xffffff) / 16777216.0f - 0.5f;
        if (i < NQ * DIM)
            q[i] = v;
        else
            for (int j = 0; j < N; j++)
                d[j * DIM + (i - NQ * DIM)] = v;
    }
    for (int i = 0; i < NQ; i++) {
        qid[i] = 1000 + i;
        ql[i] = 0;
    }
    for (int j = 0; j < N; j++) {
        did[j] = (j * 11 + 150) % N; /* a permutation of 0..300 (gcd(11, 301) = 1) */
        dl[j] = did[j] == 0 ? 0 : 1;
    }
    struct ft_eval_set qs = {q, qid, ql, NQ}, ds = {d, did, dl, N};
    struct ft_metrics_result res;
    for (int score = FT_SCORE_COSINE; score <= FT_SCORE_INNER_PRODUCT; score++) {
        cr_assert_eq(ft_retrieval_metrics(&qs, &ds, DIM, 1, score, 0, &res, NULL), FT_OK);
        cr_assert_eq(res.evaluated, NQ);
        cr_assert_float_eq(res.value[FT_METRIC_PRECISION_AT_K], 1.0, 0, "score %d", score);
    }
}

Test(metrics, names_and_lookup)
{
    cr_assert_str_eq(ft_metric_name(FT_METRIC_PRECISION_AT_K), "precision_at_k");
    cr_assert_str_eq(ft_metric_name(FT_METRIC_NDCG_AT_K), "ndcg_at_k");
    cr_assert_null(ft_metric_name(FT_NUM_METRICS));
    cr_assert_eq(ft_metric_lookup("mlp_precision_at_k"), FT_METRIC_PRECISION_AT_K);
    cr_assert_eq(ft_metric_lookup("precision_at_k"), FT_METRIC_PRECISION_AT_K);
    cr_assert_eq(ft_metric_lookup("resnet50_ndcg_at_k"), FT_METRIC_NDCG_AT_K);
    cr_assert_eq(ft_metric_lookup("lossless-net_dcg_at_k"), FT_METRIC_DCG_AT_K);
    cr_assert_eq(ft_metric_lookup("mlp_ndcg_at_k_v2"), -1);
    cr_assert_eq(ft_metric_lookup("_ndcg_at_k"), -1);
    cr_assert_eq(ft_metric_lookup("val_loss"), -1);
    cr_assert_eq(ft_metric_lookup(""), -1);
    for (int m = 0; m < FT_NUM_METRICS; m++)
        cr_assert_eq(ft_metric_lookup(ft_metric_name(m)), m);
}

Test(metrics, score_parse)
{
    enum ft_score s;
    cr_assert_eq(ft_score_parse("cosine", &s), 0);
    cr_assert_eq(s, FT_SCORE_COSINE);
    cr_assert_eq(ft_score_parse("euclidean", &s), 0);
    cr_assert_eq(s, FT_SCORE_EUCLIDEAN);
    cr_assert_eq(ft_score_parse("sqeuclidean", &s), 0);
    cr_assert_eq(s, FT_SCORE_SQEUCLIDEAN);
    cr_assert_eq(ft_score_parse("inner_product", &s), 0);
    cr_assert_eq(s, FT_SCORE_INNER_PRODUCT);
    cr_assert_eq(ft_score_parse("manhattan", &s), -1);
    cr_assert_eq(ft_score_parse(NULL, &s), -1);
}

Test(metrics, topk_ranks_like_the_metrics)
{
    const float q[] = {1, 0};
    const float d[] = {2, 0, 1, 0.25f, 0.5f, 0};
    const int64_t qid[] = {10}, did[] = {2, 0, 1};
    const int32_t ql[] = {0}, dl[] = {0, 1, 1};
    struct ft_eval_set qs = {q, qid, ql, 1}, ds = {d, did, dl, 3};
    int64_t ids[9]; /* up to 3 queries x k 3 (the last call ranks every document) */
    double scores[9];
    struct ft_error err;
    cr_assert_eq(ft_retrieval_topk(&qs, &ds, 2, 4, FT_SCORE_COSINE, 1, ids, scores, &err), FT_OK);
    cr_assert(ids[0] == 1 && ids[1] == 2 && ids[2] == 0 && ids[3] == -1,
              "cosine: a and c tie, smaller id first: %lld %lld %lld %lld", (long long)ids[0],
              (long long)ids[1], (long long)ids[2], (long long)ids[3]);
    cr_assert_float_eq(scores[0], 1.0, 1e-12);
    cr_assert_eq(ft_retrieval_topk(&qs, &ds, 2, 3, FT_SCORE_INNER_PRODUCT, 1, ids, scores, &err),
                 FT_OK);
    cr_assert(ids[0] == 2 && ids[1] == 0 && ids[2] == 1);
    cr_assert_eq(ft_retrieval_topk(&qs, &ds, 2, 3, FT_SCORE_EUCLIDEAN, 1, ids, scores, &err),
                 FT_OK);
    cr_assert(ids[0] == 0 && ids[1] == 1 && ids[2] == 2);
    cr_assert_float_eq(scores[0], -0.0625, 1e-12);
    /* index omitted: exclude_self drops the query's own id */
    cr_assert_eq(ft_retrieval_topk(&ds, NULL, 2, 3, FT_SCORE_INNER_PRODUCT, 1, ids, scores, &err),
                 FT_OK);
    cr_assert(ids[0] == 0 && ids[1] == 1 && ids[2] == -1, "row of id 2: %lld %lld %lld",
              (long long)ids[0], (long long)ids[1], (long long)ids[2]);
}

/* Queries = index (one embedding array) take the symmetric path (half the dot products, a pool
 * per query across blocks, a guessed bar); a copy of the array as index takes the one-matrix
 * path. Both must give the same pools, so bitwise-equal metrics and top-k ids and scores:
 * every score, limits from 1 to past the pool size, with and without exclusion, an index of
 * 1,000 rows (not a multiple of the 128-row blocks) with bitwise-equal rows spread over the
 * blocks, repeated ids (the excluded rows are all the rows of the query's id), random and
 * clustered rows (there many queries guess too high and are redone). */
static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Fills e (n, dim) and labels: random rows, or (clustered) rows sorted into five clusters of
 * different spread, so the first rows are not like the rest; every 37th row (from the 5th)
 * copies row i / 3 (in an earlier block, often the first). */
static void sym_data(float *e, int32_t *labels, int n, int dim, int clustered)
{
    unsigned s = 777;
    for (int i = 0; i < n * dim; i++) {
        s = s * 1103515245u + 12345u;
        e[i] = (float)((s >> 8) & 0xffffff) / 16777216.0f - 0.5f;
    }
    for (int i = 0; i < n; i++) {
        labels[i] = clustered ? (int32_t)(i * 5 / n) : (int32_t)((i * 7) % 5);
        for (int c = 0; clustered && c < dim; c++) /* center: row labels[i] of the noise */
            e[i * dim + c] = e[labels[i] * dim + c] + e[i * dim + c] * 0.05f * (labels[i] + 1);
        if (i % 37 == 5)
            memcpy(e + i * dim, e + (i / 3) * dim, dim * sizeof *e);
    }
}

Test(metrics, symmetric_path_matches_one_matrix, .timeout = 120)
{
    enum { N = 1000, DIM = 24 };
    float *e = malloc(N * DIM * sizeof *e), *copy = malloc(N * DIM * sizeof *copy);
    int64_t *ids = malloc(N * sizeof *ids);
    int32_t *labels = malloc(N * sizeof *labels);
    for (int i = 0; i < N; i++)
        ids[i] = i % 97 == 0 ? i + 1 : i; /* a few ids twice */
    struct ft_eval_set qs = {e, ids, labels, N}, ds = {copy, ids, labels, N};
    static int64_t ta[N * 70], tb[N * 70];
    static double sa[N * 70], sb[N * 70];
    const int limits[] = {1, 5, 20, 70};
    for (int clustered = 0; clustered <= 1; clustered++) {
        sym_data(e, labels, N, DIM, clustered);
        memcpy(copy, e, N * DIM * sizeof *e);
        for (int score = FT_SCORE_COSINE; score <= FT_SCORE_INNER_PRODUCT; score++) {
            for (size_t li = 0; li < sizeof limits / sizeof *limits; li++) {
                int k = limits[li];
                for (int excl = 0; excl <= 1; excl++) {
                    struct ft_metrics_result a, b;
                    cr_assert_eq(
                        ft_retrieval_metrics_by_id(&qs, &qs, DIM, k, score, excl, &a, NULL), FT_OK);
                    cr_assert_eq(
                        ft_retrieval_metrics_by_id(&qs, &ds, DIM, k, score, excl, &b, NULL), FT_OK);
                    cr_assert_eq(a.evaluated, b.evaluated);
                    cr_assert_eq(a.skipped, b.skipped);
                    for (int m = 0; m < FT_NUM_METRICS; m++)
                        cr_assert(a.value[m] == b.value[m],
                                  "clustered %d score %d k %d excl %d %s: %.17g vs %.17g",
                                  clustered, score, k, excl, ft_metric_name(m), a.value[m],
                                  b.value[m]);
                    cr_assert_eq(ft_retrieval_topk(&qs, &qs, DIM, k, score, excl, ta, sa, NULL),
                                 FT_OK);
                    cr_assert_eq(ft_retrieval_topk(&qs, &ds, DIM, k, score, excl, tb, sb, NULL),
                                 FT_OK);
                    cr_assert(memcmp(ta, tb, (size_t)N * k * sizeof *ta) == 0,
                              "clustered %d score %d k %d ids", clustered, score, k);
                    cr_assert(memcmp(sa, sb, (size_t)N * k * sizeof *sa) == 0,
                              "clustered %d score %d k %d", clustered, score, k);
                }
            }
        }
    }
    free(e);
    free(copy);
    free(ids);
    free(labels);
}

/* The symmetric path's duplicate handling: 305 copies of one vector v among 60 others near it
 * (v plus noise), shuffled ids, as queries and index at once. The copies tie exactly for every
 * query, though their dot products come from different tiles that round them differently, so
 * the copies in each query's top 40 must be the smallest ids among them (not the query's own),
 * in id order. */
Test(metrics, symmetric_path_breaks_duplicate_ties_by_id)
{
    enum { N = 365, DIM = 40, K = 40 };
    static float e[N * DIM], v[DIM];
    static int64_t ids[N], top[N * K], copy_ids[N];
    static int32_t labels[N];
    static double scores[N * K];
    unsigned s = 4242;
    for (int c = 0; c < DIM; c++) {
        s = s * 1103515245u + 12345u;
        v[c] = (float)((s >> 8) & 0xffffff) / 16777216.0f - 0.5f;
    }
    int ncopies = 0;
    for (int j = 0; j < N; j++) {
        ids[j] = (j * 11 + 150) % N; /* a permutation of 0..364 (gcd(11, 365) = 1) */
        labels[j] = 0;
        for (int c = 0; c < DIM; c++) {
            s = s * 1103515245u + 12345u;
            float noise = ((float)((s >> 8) & 0xffffff) / 16777216.0f - 0.5f) * 0.1f;
            e[j * DIM + c] = j % 6 == 0 ? v[c] + noise : v[c];
        }
        if (j % 6 != 0)
            copy_ids[ncopies++] = ids[j];
    }
    qsort(copy_ids, (size_t)ncopies, sizeof *copy_ids, cmp_i64);
    struct ft_eval_set set = {e, ids, labels, N};
    for (int score = FT_SCORE_COSINE; score <= FT_SCORE_INNER_PRODUCT; score++) {
        cr_assert_eq(ft_retrieval_topk(&set, NULL, DIM, K, score, 1, top, scores, NULL), FT_OK);
        for (int q = 0; q < N; q++) {
            int next = 0; /* the next copy id expected in the ranking */
            for (int r = 0; r < K; r++) {
                int64_t id = top[q * K + r];
                int is_copy = bsearch(&id, copy_ids, (size_t)ncopies, sizeof id, cmp_i64) != NULL;
                if (!is_copy)
                    continue;
                if (copy_ids[next] == ids[q])
                    next++;
                cr_assert_eq(id, copy_ids[next], "score %d query %d rank %d: id %lld, want %lld",
                             score, q, r, (long long)id, (long long)copy_ids[next]);
                next++;
            }
            cr_assert_gt(next, 0, "score %d query %d: no copy in its top %d", score, q, K);
        }
    }
}

/* The exact score of the spec, as metrics.c's refinement computes it: sequential double sums
 * over the float components (each product exact in double). */
static double ref_score(const float *q, const float *d, int dim, int score)
{
    double acc = 0.0, qq = 0.0, dd = 0.0;
    for (int i = 0; i < dim; i++) {
        if (score == FT_SCORE_EUCLIDEAN || score == FT_SCORE_SQEUCLIDEAN) {
            double t = (double)q[i] - (double)d[i];
            acc += t * t;
        } else {
            acc += (double)q[i] * (double)d[i];
        }
        qq += (double)q[i] * q[i];
        dd += (double)d[i] * d[i];
    }
    if (score == FT_SCORE_EUCLIDEAN || score == FT_SCORE_SQEUCLIDEAN)
        return -acc;
    if (score == FT_SCORE_COSINE) {
        double den = sqrt(qq) * sqrt(dd);
        return den > 0 ? acc / den : 0.0;
    }
    return acc;
}

/* Near-ties: 300 rows from 6 vectors, each row a copy with some zero components turned into
 * -0 (not bitwise equal, so not duplicates; every exact score ties) or one component moved by
 * an ulp. BLAS rounds one pair's dot product differently at different matrix positions, so
 * which tied candidates a pool keeps is noise; both paths must still return the exact ranking
 * (score, then id, then row), the one a brute force in double gives. */
Test(metrics, near_ties_give_the_exact_ranking, .timeout = 120)
{
    enum { N = 300, DIM = 16, K = 5 };
    static float e[N * DIM], copy[N * DIM], base[6 * DIM];
    static int64_t ids[N], ta[N * K], tb[N * K];
    static int32_t labels[N];
    static double sa[N * K], sb[N * K];
    unsigned s = 31337;
    for (int i = 0; i < 6 * DIM; i++) {
        s = s * 1103515245u + 12345u;
        base[i] = i % 3 == 0 ? 0.0f : (float)((s >> 8) & 0xffff) / 65536.0f - 0.5f;
    }
    for (int j = 0; j < N; j++) {
        ids[j] = (j * 7 + 11) % N;
        labels[j] = j % 4;
        for (int c = 0; c < DIM; c++) {
            s = s * 1103515245u + 12345u;
            float v = base[(j % 6) * DIM + c];
            if (v == 0.0f && (s >> 16) % 2)
                v = -0.0f;
            else if (j % 5 == 1 && c == 1)
                v = nextafterf(v, 1.0f);
            e[j * DIM + c] = v;
        }
    }
    memcpy(copy, e, sizeof e);
    struct ft_eval_set qs = {e, ids, labels, N}, ds = {copy, ids, labels, N};
    for (int score = FT_SCORE_COSINE; score <= FT_SCORE_INNER_PRODUCT; score++) {
        cr_assert_eq(ft_retrieval_topk(&qs, &qs, DIM, K, score, 1, ta, sa, NULL), FT_OK);
        cr_assert_eq(ft_retrieval_topk(&qs, &ds, DIM, K, score, 1, tb, sb, NULL), FT_OK);
        for (int q = 0; q < N; q++) {
            int64_t want[K];
            double best[K];
            for (int r = 0; r < K; r++) { /* insertion into the K best, spec order */
                want[r] = -1;
                best[r] = -INFINITY;
            }
            for (int j = 0; j < N; j++) {
                if (ids[j] == ids[q])
                    continue;
                double v = ref_score(e + q * DIM, e + j * DIM, DIM, score);
                int r = K;
                while (r > 0 && (want[r - 1] < 0 || v > best[r - 1] ||
                                 (v == best[r - 1] && ids[j] < want[r - 1])))
                    r--;
                if (r == K)
                    continue;
                memmove(want + r + 1, want + r, (size_t)(K - 1 - r) * sizeof *want);
                memmove(best + r + 1, best + r, (size_t)(K - 1 - r) * sizeof *best);
                want[r] = ids[j];
                best[r] = v;
            }
            for (int r = 0; r < K; r++) {
                cr_assert_eq(ta[q * K + r], want[r], "score %d query %d rank %d: %lld, want %lld",
                             score, q, r, (long long)ta[q * K + r], (long long)want[r]);
                cr_assert_eq(tb[q * K + r], want[r], "one matrix: score %d query %d rank %d", score,
                             q, r);
            }
        }
    }
}
