/* metrics.h — the nine retrieval metrics of EvaluationCallback.
 *
 * Spec: tests/fixtures/metrics/README.md. Per query: candidates = index documents (minus the
 * document with the query's id when exclude_self and the index is the query set); score
 * cosine | -squared euclidean | inner product, larger is better; rank by score descending,
 * ties by smaller id; top k = limit; relevant = same label; queries with R = 0 skipped; each
 * metric is the mean over evaluated queries (all "missing" when none). AP and r_precision
 * divide by min(k, R); IDCG from min(R, k) ideal ranks; precision divides by k always.
 * Scores of bitwise-equal vectors are bitwise-equal (dot products from BLAS on raw embeddings
 * divided by precomputed norms). */
#ifndef FT_METRICS_H
#define FT_METRICS_H

#include "ft_error.h"

#include <stdint.h>

#define FT_METRICS(X)                         \
    X(PRECISION_AT_K, "precision_at_k")       \
    X(RECALL_AT_K, "recall_at_k")             \
    X(F1_SCORE_AT_K, "f1_score_at_k")         \
    X(HIT_AT_K, "hit_at_k")                   \
    X(RECIPROCAL_RANK, "reciprocal_rank")     \
    X(AVERAGE_PRECISION, "average_precision") \
    X(R_PRECISION, "r_precision")             \
    X(DCG_AT_K, "dcg_at_k")                   \
    X(NDCG_AT_K, "ndcg_at_k")

enum ft_metric {
#define X(id, name) FT_METRIC_##id,
    FT_METRICS(X)
#undef X
        FT_NUM_METRICS
};

/* Bare name of metric i ("precision_at_k"), static. */
const char *ft_metric_name(int i);
/* Index of a metric name: bare ("ndcg_at_k") or with any "<model>_" prefix whose suffix is
 * exactly one of the nine ("mlp_ndcg_at_k"); -1 otherwise ("mlp_ndcg_at_k_v2"). */
int ft_metric_lookup(const char *name);

enum ft_score { FT_SCORE_COSINE, FT_SCORE_EUCLIDEAN, FT_SCORE_SQEUCLIDEAN, FT_SCORE_INNER_PRODUCT };
/* "cosine", "euclidean", "sqeuclidean", "inner_product" -> 0 and *out; -1 when unknown. */
int ft_score_parse(const char *name, enum ft_score *out);

/* A set of documents (borrowed pointers). */
struct ft_eval_set {
    const float *emb;      /* (n, dim) */
    const int64_t *ids;    /* (n) document ids */
    const int32_t *labels; /* (n) in one label space shared by query and index */
    int64_t n;
};

struct ft_metrics_result {
    double value[FT_NUM_METRICS]; /* means; meaningless when evaluated == 0 */
    int64_t evaluated;            /* queries with R > 0 */
    int64_t skipped;              /* queries with R = 0 */
};

/* Compute the nine means. index NULL = the query set itself (exclude_self then applies).
 * k >= 1. Works in blocks of queries (memory O(block x n_index)); when the query set is the
 * index (one embedding array, same n) only half the dot products are computed and each query
 * keeps a pool of 2 (k + k/4 + 16) candidates meanwhile (used while that stays under 64 MiB;
 * same results). Errors: FT_EINVAL (k < 1, dim < 1), FT_ENOMEM. */
enum ft_err ft_retrieval_metrics(const struct ft_eval_set *query, const struct ft_eval_set *index,
                                 int dim, int k, enum ft_score score, int exclude_self,
                                 struct ft_metrics_result *out, struct ft_error *err);

/* As ft_retrieval_metrics with the index given and the exclusion decided by the caller:
 * exclude_same_id = 1 removes, for each query, the index document with the query's id (for a
 * sample of queries against their whole dataset, say). */
enum ft_err ft_retrieval_metrics_by_id(const struct ft_eval_set *query,
                                       const struct ft_eval_set *index, int dim, int k,
                                       enum ft_score score, int exclude_same_id,
                                       struct ft_metrics_result *out, struct ft_error *err);

/* The ranking itself, for EvaluationCallback's gather_examples: for every query i of query
 * (use a subset set for a few queries) its top k index documents, best first, ties by smaller
 * id; exclude_self = 1 removes the index document with the query's id (index NULL = query); ids
 * (query->n, k) and scores (query->n, k) written; slots past the candidates hold id -1 and score 0.
 * Scores as ranked (cosine, -squared euclidean, inner product). Errors as ft_retrieval_metrics. */
enum ft_err ft_retrieval_topk(const struct ft_eval_set *query, const struct ft_eval_set *index,
                              int dim, int k, enum ft_score score, int exclude_self, int64_t *ids,
                              double *scores, struct ft_error *err);

#endif
