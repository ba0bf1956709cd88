/* test_sampler.c — the class sampler: class-balanced batches, no repeats within an epoch,
 * seeded, the right number of batches, bad arguments. */
#include "sampler.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

/* 5 classes with 10, 9, 7, 12, 4 items (labels interleaved, non-contiguous ids). */
enum { N = 42 };
static const int class_sizes[5] = {10, 9, 7, 12, 4};
static const int32_t class_ids[5] = {7, -1, 3, 100, 0};

static void make_labels(int32_t *labels)
{
    int left[5], n = 0;
    memcpy(left, class_sizes, sizeof left);
    while (n < N)
        for (int c = 0; c < 5; c++)
            if (left[c] > 0) {
                left[c]--;
                labels[n++] = class_ids[c];
            }
}

static ft_sampler *new_sampler(const int32_t *labels, int batch, int k, uint64_t seed)
{
    ft_sampler *s = NULL;
    struct ft_error err;
    cr_assert_eq(ft_sampler_new(labels, N, batch, k, seed, &s, &err), FT_OK, "%s", err.message);
    return s;
}

/* Each class label in the batch appears a positive multiple of k times. */
static void assert_class_balanced(const int64_t *idx, int batch, int k, const int32_t *labels)
{
    for (int i = 0; i < batch; i++) {
        int count = 0;
        for (int j = 0; j < batch; j++)
            count += labels[idx[j]] == labels[idx[i]];
        cr_assert(count % k == 0, "label %d appears %d times (k = %d)", labels[idx[i]], count, k);
    }
}

Test(sampler, batches_are_class_balanced_without_repeats)
{
    int32_t labels[N];
    make_labels(labels);
    const int k = 3, batch = 6;
    ft_sampler *s = new_sampler(labels, batch, k, 1);
    /* groups of 3: 3 + 3 + 2 + 4 + 1 = 13 -> 6 batches of 2 groups */
    cr_assert_eq(ft_sampler_num_batches(s), 6);
    cr_assert_eq(ft_sampler_batch_size(s), batch);
    for (int epoch = 0; epoch < 3; epoch++) {
        int seen[N] = {0};
        int64_t idx[6];
        int64_t nb = 0;
        while (ft_sampler_next(s, idx)) {
            for (int i = 0; i < batch; i++) {
                cr_assert(idx[i] >= 0 && idx[i] < N);
                cr_assert_eq(seen[idx[i]], 0, "row %lld repeated in epoch %d", (long long)idx[i],
                             epoch);
                seen[idx[i]] = 1;
            }
            assert_class_balanced(idx, batch, k, labels);
            nb++;
        }
        cr_assert_eq(nb, ft_sampler_num_batches(s));
    }
    ft_sampler_free(s);
}

Test(sampler, k_items_of_each_class_when_groups_are_distinct)
{
    int32_t labels[N];
    make_labels(labels);
    ft_sampler *s = new_sampler(labels, 2, 2, 9); /* one group per batch */
    int64_t idx[2];
    int64_t nb = 0;
    while (ft_sampler_next(s, idx)) {
        cr_assert_eq(labels[idx[0]], labels[idx[1]]);
        cr_assert_neq(idx[0], idx[1]);
        nb++;
    }
    cr_assert_eq(nb, 5 + 4 + 3 + 6 + 2);
    ft_sampler_free(s);
}

/* All batches of `epochs` epochs, concatenated. */
static void collect(ft_sampler *s, int64_t *out, int epochs)
{
    int batch = ft_sampler_batch_size(s);
    size_t n = 0;
    for (int e = 0; e < epochs; e++)
        while (ft_sampler_next(s, out + n))
            n += (size_t)batch;
}

Test(sampler, seeded)
{
    int32_t labels[N];
    make_labels(labels);
    ft_sampler *a = new_sampler(labels, 8, 4, 42), *b = new_sampler(labels, 8, 4, 42);
    ft_sampler *c = new_sampler(labels, 8, 4, 43);
    int64_t nb = ft_sampler_num_batches(a);
    cr_assert_eq(nb, (2 + 2 + 1 + 3 + 1) / 2);
    size_t len = (size_t)(2 * nb * 8);
    int64_t *xa = calloc(len, sizeof *xa), *xb = calloc(len, sizeof *xb);
    int64_t *xc = calloc(len, sizeof *xc);
    collect(a, xa, 2);
    collect(b, xb, 2);
    collect(c, xc, 2);
    cr_assert(memcmp(xa, xb, len * sizeof *xa) == 0);
    cr_assert(memcmp(xa, xc, len * sizeof *xa) != 0);
    /* epochs are reshuffled */
    cr_assert(memcmp(xa, xa + len / 2, len / 2 * sizeof *xa) != 0);
    free(xa), free(xb), free(xc);
    ft_sampler_free(a), ft_sampler_free(b), ft_sampler_free(c);
}

static void assert_einval(int batch, int k, const char *param)
{
    int32_t labels[N];
    make_labels(labels);
    struct ft_error err;
    ft_sampler *s = (ft_sampler *)labels;
    cr_assert_eq(ft_sampler_new(labels, N, batch, k, 1, &s, &err), FT_EINVAL,
                 "batch %d k %d accepted", batch, k);
    cr_assert_null(s);
    cr_assert_str_eq(err.param, param);
    cr_assert_neq(err.message[0], '\0');
}

Test(sampler, bad_arguments_are_einval)
{
    assert_einval(0, 2, "batch_size");
    assert_einval(-4, 2, "batch_size");
    assert_einval(7, 2, "batch_size");      /* not a multiple */
    assert_einval(64, 4, "batch_size");     /* more than the data */
    assert_einval(4 * 10, 4, "batch_size"); /* 40 <= 42 rows but only 9 groups of 4 */
    assert_einval(4, 1, "num_items_per_class");
    ft_sampler_free(NULL);
}

Test(sampler, random_sampler_is_a_seeded_permutation)
{
    ft_sampler *s;
    struct ft_error err;
    int64_t idx[8], seen[40] = {0};
    cr_assert_eq(ft_sampler_new_random(40, 8, 5, &s, &err), FT_OK, "%s", err.message);
    cr_assert_eq(ft_sampler_num_batches(s), 5);
    int batches = 0;
    while (ft_sampler_next(s, idx)) {
        for (int i = 0; i < 8; i++) {
            cr_assert(idx[i] >= 0 && idx[i] < 40);
            seen[idx[i]]++;
        }
        batches++;
    }
    cr_assert_eq(batches, 5);
    for (int i = 0; i < 40; i++)
        cr_assert_eq(seen[i], 1, "row %d seen %lld times", i, (long long)seen[i]);
    ft_sampler_free(s);
    cr_assert_eq(ft_sampler_new_random(4, 8, 5, &s, &err), FT_EINVAL);
    cr_assert_str_eq(err.param, "batch_size");
}

Test(sampler, distinct_sampler_never_repeats_a_class_in_a_batch)
{
    int32_t labels[60];
    for (int i = 0; i < 60; i++)
        labels[i] = i % 10; /* 10 classes of 6 items */
    ft_sampler *s;
    struct ft_error err;
    int64_t idx[8];
    cr_assert_eq(ft_sampler_new_distinct(labels, 60, 8, 2, 3, &s, &err), FT_OK, "%s",
                 err.message);
    cr_assert_eq(ft_sampler_num_batches(s), 2, "10 classes, one pair each, 4 pairs a batch");
    for (int epoch = 0; epoch < 3; epoch++) {
        int batches = 0;
        while (ft_sampler_next(s, idx)) {
            int count[10] = {0};
            for (int i = 0; i < 8; i++)
                count[labels[idx[i]]]++;
            for (int c = 0; c < 10; c++)
                cr_assert(count[c] == 0 || count[c] == 2, "class %d appears %d times", c,
                          count[c]);
            batches++;
        }
        cr_assert_eq(batches, 2);
    }
    ft_sampler_free(s);
}
