/* evaluation.c — EvaluationCallback's data preparation, metrics and example queries.
 *
 * Owns: the query sample (a subset dataset when query_sample_size is smaller than the data),
 * the id arrays, the index labels mapped into the query's label table (a label the query data
 * lacks gets a distinct negative id, so it is never relevant) and the metric names. */
#include "evaluation.h"

#include "rng.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ft_evaluation {
    const struct ft_eval_callback *cb;
    const struct ft_dataset *query; /* the (sampled) queries */
    const struct ft_dataset *index; /* the candidates: index data, or the whole query data */
    struct ft_dataset *sample;      /* owned when the queries are a sample */
    int64_t *qids, *xids;           /* ids: row numbers in the query / index dataset */
    int32_t *xlabels;               /* index labels in the query's label space */
    int by_id;                      /* exclude each query's own row by id */
    char keys[FT_NUM_METRICS][192];
};

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* rows (count) = a seeded sample of n rows, sorted. Returns -1 on ENOMEM. */
static int sample_rows(int64_t n, int64_t count, uint64_t seed, int64_t *rows)
{
    int64_t *perm = malloc((size_t)n * sizeof *perm);
    struct ft_rng rng;
    if (!perm)
        return -1;
    ft_rng_seed(&rng, seed);
    for (int64_t i = 0; i < n; i++)
        perm[i] = i;
    ft_rng_shuffle(&rng, perm, n); /* the first count rows of the permutation, in row order */
    memcpy(rows, perm, (size_t)count * sizeof *rows);
    free(perm);
    qsort(rows, (size_t)count, sizeof *rows, cmp_i64);
    return 0;
}

static enum ft_err prepare_queries(ft_evaluation *ev, const struct ft_dataset *query, uint64_t seed)
{
    int64_t n = query->n, m = ev->cb->query_sample_size;
    int sampled = m > 0 && m < n;
    ev->qids = malloc((size_t)(sampled ? m : n) * sizeof *ev->qids + 1);
    if (!ev->qids)
        return FT_ENOMEM;
    if (!sampled) {
        for (int64_t i = 0; i < n; i++)
            ev->qids[i] = i;
        ev->query = query;
        return FT_OK;
    }
    if (sample_rows(n, m, seed, ev->qids) != 0)
        return FT_ENOMEM;
    ev->sample = ft_dataset_subset(query, ev->qids, m);
    ev->query = ev->sample;
    return ev->sample ? FT_OK : FT_ENOMEM;
}

static enum ft_err prepare_index(ft_evaluation *ev, const struct ft_dataset *query,
                                 const struct ft_dataset *index)
{
    const struct ft_dataset *x = index ? index : query;
    ev->index = x;
    ev->by_id = !index && ev->cb->exclude_self;
    ev->xids = malloc((size_t)x->n * sizeof *ev->xids + 1);
    ev->xlabels = malloc((size_t)x->n * sizeof *ev->xlabels + 1);
    int32_t *map = malloc((size_t)x->num_labels * sizeof *map + 1);
    if (!ev->xids || !ev->xlabels || !map) {
        free(map);
        return FT_ENOMEM;
    }
    ft_dataset_map_labels(query, x, map);
    for (int64_t i = 0; i < x->n; i++) {
        int32_t l = map[x->labels[i]];
        ev->xids[i] = i;
        ev->xlabels[i] = l >= 0 ? l : -1 - x->labels[i];
    }
    free(map);
    return FT_OK;
}

enum ft_err ft_evaluation_new(const struct ft_eval_callback *cb, const struct ft_dataset *query,
                              const struct ft_dataset *index, const char *model_name, uint64_t seed,
                              ft_evaluation **out, struct ft_error *err)
{
    ft_evaluation *ev = calloc(1, sizeof *ev);
    *out = NULL;
    if (!ev)
        return ft_error_set(err, FT_ENOMEM, NULL, "out of memory preparing an evaluation");
    ev->cb = cb;
    enum ft_err e = prepare_queries(ev, query, seed);
    if (e == FT_OK)
        e = prepare_index(ev, query, index);
    if (e != FT_OK) {
        ft_evaluation_free(ev);
        return ft_error_set(err, e, NULL, "out of memory preparing an evaluation");
    }
    for (int m = 0; m < FT_NUM_METRICS; m++) {
        if (cb->caption[0])
            snprintf(ev->keys[m], sizeof ev->keys[m], "%s_%s_%s", model_name, cb->caption,
                     ft_metric_name(m));
        else
            snprintf(ev->keys[m], sizeof ev->keys[m], "%s_%s", model_name, ft_metric_name(m));
    }
    *out = ev;
    return FT_OK;
}

void ft_evaluation_free(ft_evaluation *ev)
{
    if (!ev)
        return;
    ft_dataset_free(ev->sample);
    free(ev->qids);
    free(ev->xids);
    free(ev->xlabels);
    free(ev);
}

const char *ft_evaluation_key(const ft_evaluation *ev, int m)
{
    return ev->keys[m];
}

/* One example query's results as JSON. */
static json_t *example_json(const ft_evaluation *ev, int64_t qi, const int64_t *ids,
                            const double *scores, int k)
{
    const struct ft_dataset *q = ev->query, *x = ev->index;
    int32_t ql = q->labels[qi];
    json_t *results = json_array();
    for (int r = 0; r < k && ids[r] >= 0; r++) {
        int64_t row = ids[r];
        json_array_append_new(results, json_pack("{s:I, s:s, s:f, s:b}", "id", (json_int_t)row,
                                                 "label", x->label_names[x->labels[row]], "score",
                                                 scores[r], "relevant", ev->xlabels[row] == ql));
    }
    return json_pack("{s:I, s:s, s:o}", "id", (json_int_t)ev->qids[qi], "label", q->label_names[ql],
                     "results", results);
}

static enum ft_err gather_examples(const ft_evaluation *ev, const float *qe, const float *xe,
                                   int dim, json_t **out, struct ft_error *err)
{
    int k = ev->cb->limit;
    int64_t nq =
        ev->query->n < ev->cb->num_example_queries ? ev->query->n : ev->cb->num_example_queries;
    int64_t *ids = malloc((size_t)(nq * k + 1) * sizeof *ids);
    double *scores = malloc((size_t)(nq * k + 1) * sizeof *scores);
    enum ft_err e = ids && scores ? FT_OK : FT_ENOMEM;
    struct ft_eval_set qs = {qe, ev->qids, ev->query->labels, nq};
    struct ft_eval_set xs = {xe, ev->xids, ev->xlabels, ev->index->n};
    if (e == FT_OK)
        e = ft_retrieval_topk(&qs, &xs, dim, k, ev->cb->distance, ev->by_id, ids, scores, err);
    if (e == FT_OK) {
        json_t *queries = json_array();
        for (int64_t i = 0; i < nq; i++)
            json_array_append_new(queries, example_json(ev, i, ids + i * k, scores + i * k, k));
        *out = json_pack("{s:s, s:o}", "caption", ev->cb->caption, "queries", queries);
    }
    free(ids);
    free(scores);
    return e;
}

enum ft_err ft_evaluation_run(ft_evaluation *ev, const struct ft_embedder *emb, json_t *values,
                              struct ft_metrics_result *res, json_t **examples,
                              struct ft_error *err)
{
    int batch = ev->cb->batch_size < 256 ? 256 : ev->cb->batch_size; /* same numbers */
    int same = ev->index == ev->query;
    float *qe = emb->embed(emb->ctx, ev->query, batch);
    float *xe = same ? qe : emb->embed(emb->ctx, ev->index, batch);
    enum ft_err e = qe && xe ? FT_OK : ft_error_set(err, FT_ENOMEM, NULL, "out of memory");
    struct ft_eval_set qs = {qe, ev->qids, ev->query->labels, ev->query->n};
    struct ft_eval_set xs = {xe, ev->xids, ev->xlabels, ev->index->n};
    if (e == FT_OK)
        e = ft_retrieval_metrics_by_id(&qs, &xs, emb->dim, ev->cb->limit, ev->cb->distance,
                                       ev->by_id, res, err);
    for (int m = 0; e == FT_OK && m < FT_NUM_METRICS; m++)
        json_object_set_new(values, ev->keys[m],
                            res->evaluated > 0 ? json_real(res->value[m]) : json_null());
    if (e == FT_OK && examples && ev->cb->gather_examples)
        e = gather_examples(ev, qe, xe, emb->dim, examples, err);
    free(qe);
    if (!same)
        free(xe);
    return e;
}
