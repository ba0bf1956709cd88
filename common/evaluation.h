/* evaluation.h — one EvaluationCallback of a run: its data prepared once (query sample, ids,
 * the index labels mapped into the query's label space), then, whenever the trainer asks, the
 * model's embeddings, the nine retrieval metrics (metrics.h) and the example queries.
 *
 * Metric names are "<model>_<metric>", or "<model>_<caption>_<metric>" with a caption.
 * Index omitted: the index is the whole query dataset and exclude_self removes each query's
 * own row (by id, also when only a sample of queries is evaluated). */
#ifndef FT_EVALUATION_H
#define FT_EVALUATION_H

#include "callbacks.h"
#include "dataset.h"
#include "metrics.h"

#include <jansson.h>

/* How the trainer turns rows into embeddings: embed(ctx, ds, batch) returns a new (ds->n,
 * dim) array (caller frees) or NULL on ENOMEM. */
struct ft_embedder {
    void *ctx;
    float *(*embed)(void *ctx, const struct ft_dataset *ds, int batch);
    int dim;
};

typedef struct ft_evaluation ft_evaluation;

/* Prepare callback cb (borrowed; must outlive the evaluation) over query and index (borrowed;
 * index NULL = none). model_name prefixes metric names. seed draws the query sample. Errors:
 * FT_ENOMEM. Free with ft_evaluation_free(). */
enum ft_err ft_evaluation_new(const struct ft_eval_callback *cb, const struct ft_dataset *query,
                              const struct ft_dataset *index, const char *model_name, uint64_t seed,
                              ft_evaluation **out, struct ft_error *err);
void ft_evaluation_free(ft_evaluation *ev);

/* The name of metric m in this callback's logs and metrics ("mlp_test_ndcg_at_k"; borrowed). */
const char *ft_evaluation_key(const ft_evaluation *ev, int m);

/* Embed with emb, compute the metrics into *res and set "<key>": value (null when no query
 * could be evaluated) in values (borrowed object). When the callback gathers examples and
 * examples is non-NULL, *examples is a new JSON object {"caption", "queries": [{"id", "label",
 * "results": [{"id", "label", "score", "relevant"}]}]}. Errors: FT_ENOMEM, FT_EINVAL. */
enum ft_err ft_evaluation_run(ft_evaluation *ev, const struct ft_embedder *emb, json_t *values,
                              struct ft_metrics_result *res, json_t **examples,
                              struct ft_error *err);

#endif
