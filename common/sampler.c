/* sampler.c — the class sampler (Finetuner's ClassSampler), seeded by ft_rng.
 *
 * Owns a copy of the row indices grouped by label (order: sorted by label, then row) and the
 * start positions of the current epoch's groups. Each epoch: shuffle every class's segment of
 * order in place, cut it into groups of k = num_items_per_class (dropping a short tail), shuffle
 * all groups together; batch b is groups [b * G, (b + 1) * G) with G = batch_size / k. The
 * group count per class does not change between epochs, so neither does num_batches.
 * The random sampler is the same machine over one class with groups of one row. */
#include "sampler.h"

#include "rng.h"

#include <stdlib.h>

struct ft_sampler {
    struct ft_rng rng;
    int batch_size;
    int k;                /* num_items_per_class */
    int64_t n;            /* rows */
    int64_t *order;       /* (n) row indices grouped by label */
    int64_t num_classes;  /* label segments in order */
    int64_t *class_start; /* (num_classes + 1) segment bounds in order */
    int64_t num_groups;
    int64_t *groups; /* (num_groups) start positions in order, this epoch's order */
    int64_t num_batches;
    int64_t next_batch; /* in this epoch; num_batches = epoch finished */
    int started;        /* an epoch has been prepared */
    int one_group;      /* at most one group of a class per epoch (no class twice a batch) */
};

/* qsort context-free comparison: rows sorted by (label, row) through a packed pair. */
struct row_label {
    int32_t label;
    int64_t row;
};

static int cmp_row_label(const void *a, const void *b)
{
    const struct row_label *x = a, *y = b;
    if (x->label != y->label)
        return x->label < y->label ? -1 : 1;
    return (x->row > y->row) - (x->row < y->row);
}

/* Fill s->order and s->class_start from labels. Returns 0 on ENOMEM. */
static int group_by_label(ft_sampler *s, const int32_t *labels)
{
    struct row_label *rl = malloc((size_t)s->n * sizeof *rl);
    s->order = malloc((size_t)s->n * sizeof *s->order);
    s->class_start = malloc(((size_t)s->n + 1) * sizeof *s->class_start);
    if (!rl || !s->order || !s->class_start) {
        free(rl);
        return 0;
    }
    for (int64_t i = 0; i < s->n; i++) {
        rl[i].label = labels[i];
        rl[i].row = i;
    }
    qsort(rl, (size_t)s->n, sizeof *rl, cmp_row_label);
    s->num_classes = 0;
    for (int64_t i = 0; i < s->n; i++) {
        s->order[i] = rl[i].row;
        if (i == 0 || rl[i].label != rl[i - 1].label)
            s->class_start[s->num_classes++] = i;
    }
    s->class_start[s->num_classes] = s->n;
    free(rl);
    return 1;
}

static int64_t groups_of(const ft_sampler *s, int64_t c)
{
    int64_t g = (s->class_start[c + 1] - s->class_start[c]) / s->k;
    return s->one_group && g > 1 ? 1 : g;
}

static int64_t count_groups(const ft_sampler *s)
{
    int64_t g = 0;
    for (int64_t c = 0; c < s->num_classes; c++)
        g += groups_of(s, c);
    return g;
}

static enum ft_err check_args(int64_t n, int batch_size, int k, struct ft_error *err)
{
    if (k < 2)
        return ft_error_set(err, FT_EINVAL, "num_items_per_class",
                            "num_items_per_class must be >= 2, got %d", k);
    if (batch_size <= 0 || batch_size % k != 0)
        return ft_error_set(err, FT_EINVAL, "batch_size",
                            "batch_size must be a positive multiple of num_items_per_class (%d), "
                            "got %d",
                            k, batch_size);
    if (n < batch_size)
        return ft_error_set(err, FT_EINVAL, "batch_size",
                            "batch_size %d is larger than the %lld items in the data", batch_size,
                            (long long)n);
    return FT_OK;
}

static enum ft_err sampler_new(const int32_t *labels, int64_t n, int batch_size,
                               int num_items_per_class, uint64_t seed, int one_group,
                               ft_sampler **out, struct ft_error *err);

enum ft_err ft_sampler_new(const int32_t *labels, int64_t n, int batch_size,
                           int num_items_per_class, uint64_t seed, ft_sampler **out,
                           struct ft_error *err)
{
    *out = NULL;
    enum ft_err rc = check_args(n, batch_size, num_items_per_class, err);
    if (rc != FT_OK)
        return rc;
    return sampler_new(labels, n, batch_size, num_items_per_class, seed, 0, out, err);
}

enum ft_err ft_sampler_new_distinct(const int32_t *labels, int64_t n, int batch_size,
                                    int num_items_per_class, uint64_t seed, ft_sampler **out,
                                    struct ft_error *err)
{
    *out = NULL;
    enum ft_err rc = check_args(n, batch_size, num_items_per_class, err);
    if (rc != FT_OK)
        return rc;
    return sampler_new(labels, n, batch_size, num_items_per_class, seed, 1, out, err);
}

/* The random sampler is the class sampler with one class and groups of one item. */
enum ft_err ft_sampler_new_random(int64_t n, int batch_size, uint64_t seed, ft_sampler **out,
                                  struct ft_error *err)
{
    *out = NULL;
    if (batch_size < 2)
        return ft_error_set(err, FT_EINVAL, "batch_size", "batch_size must be >= 2, got %d",
                            batch_size);
    if (n < batch_size)
        return ft_error_set(err, FT_EINVAL, "batch_size",
                            "batch_size %d is larger than the %lld items in the data", batch_size,
                            (long long)n);
    int32_t *zeros = calloc((size_t)n, sizeof *zeros);
    if (!zeros)
        return ft_error_set(err, FT_ENOMEM, NULL, "out of memory allocating the sampler");
    enum ft_err rc = sampler_new(zeros, n, batch_size, 1, seed, 0, out, err);
    free(zeros);
    return rc;
}

static enum ft_err sampler_new(const int32_t *labels, int64_t n, int batch_size,
                               int num_items_per_class, uint64_t seed, int one_group,
                               ft_sampler **out, struct ft_error *err)
{
    ft_sampler *s = calloc(1, sizeof *s);
    if (!s)
        return ft_error_set(err, FT_ENOMEM, NULL, "out of memory allocating the sampler");
    ft_rng_seed(&s->rng, seed);
    s->batch_size = batch_size;
    s->k = num_items_per_class;
    s->n = n;
    s->one_group = one_group;
    if (!group_by_label(s, labels))
        goto nomem;
    s->num_groups = count_groups(s);
    s->num_batches = s->num_groups / (batch_size / s->k);
    if (s->num_batches < 1) {
        long long groups = (long long)s->num_groups;
        ft_sampler_free(s);
        return ft_error_set(err, FT_EINVAL, "batch_size",
                            "batch_size %d cannot be filled with groups of %d items per class "
                            "(only %lld full groups in the data)",
                            batch_size, num_items_per_class, groups);
    }
    s->groups = malloc((size_t)s->num_groups * sizeof *s->groups);
    if (!s->groups)
        goto nomem;
    *out = s;
    return FT_OK;
nomem:
    ft_sampler_free(s);
    return ft_error_set(err, FT_ENOMEM, NULL, "out of memory allocating the sampler");
}

/* Reshuffle the classes and the groups for a new epoch. */
static void start_epoch(ft_sampler *s)
{
    int64_t g = 0;
    for (int64_t c = 0; c < s->num_classes; c++) {
        int64_t start = s->class_start[c], len = s->class_start[c + 1] - start;
        ft_rng_shuffle(&s->rng, s->order + start, len);
        for (int64_t j = 0; j < groups_of(s, c) * s->k; j += s->k)
            s->groups[g++] = start + j;
    }
    FT_ASSERT(g == s->num_groups);
    ft_rng_shuffle(&s->rng, s->groups, s->num_groups);
    s->next_batch = 0;
    s->started = 1;
}

int64_t ft_sampler_num_batches(const ft_sampler *s)
{
    return s->num_batches;
}

int ft_sampler_batch_size(const ft_sampler *s)
{
    return s->batch_size;
}

int ft_sampler_next(ft_sampler *s, int64_t *idx)
{
    if (!s->started)
        start_epoch(s);
    if (s->next_batch == s->num_batches) {
        s->started = 0;
        return 0;
    }
    int per_batch = s->batch_size / s->k;
    const int64_t *g = s->groups + s->next_batch * per_batch;
    for (int j = 0; j < per_batch; j++)
        for (int i = 0; i < s->k; i++)
            idx[j * s->k + i] = s->order[g[j] + i];
    s->next_batch++;
    return 1;
}

int64_t ft_sampler_state(ft_sampler *s, int64_t **order, uint64_t **rng)
{
    *order = s->order;
    *rng = s->rng.s;
    return s->n;
}

void ft_sampler_free(ft_sampler *s)
{
    if (!s)
        return;
    free(s->order);
    free(s->class_start);
    free(s->groups);
    free(s);
}
