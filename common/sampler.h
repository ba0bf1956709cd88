/* sampler.h — batch samplers over a labelled dataset.
 *
 * The class sampler (Finetuner's ClassSampler): each epoch, every class's items are shuffled
 * and cut into groups of num_items_per_class (a class's last, short group is dropped); the
 * groups of all classes are shuffled together and batch_size / num_items_per_class groups make
 * a batch (a short last batch is dropped). So every batch holds num_items_per_class items of
 * each class it contains, the triplet loss finds positives, and an epoch visits each item at
 * most once. Seeded: the same seed gives the same batches. */
#ifndef FT_SAMPLER_H
#define FT_SAMPLER_H

#include "ft_error.h"

#include <stdint.h>

typedef struct ft_sampler ft_sampler;

/* New class sampler over labels (n; borrowed only during the call). Errors: FT_EINVAL with
 * param "batch_size" (not a positive multiple of num_items_per_class, or larger than what the
 * data can fill) or "num_items_per_class" (< 2), FT_ENOMEM. Free with ft_sampler_free(). */
enum ft_err ft_sampler_new(const int32_t *labels, int64_t n, int batch_size,
                           int num_items_per_class, uint64_t seed, ft_sampler **out,
                           struct ft_error *err);
/* The class sampler with at most one group of a class per epoch, so no batch holds a class
 * twice (CLIPLoss: exactly num_items_per_class = 2 items of every label in a batch). An epoch
 * then has (number of classes with enough items) / (batch_size / num_items_per_class) batches.
 * Errors as ft_sampler_new. */
enum ft_err ft_sampler_new_distinct(const int32_t *labels, int64_t n, int batch_size,
                                    int num_items_per_class, uint64_t seed, ft_sampler **out,
                                    struct ft_error *err);

/* New random sampler (Finetuner's sampler='random'): each epoch a seeded permutation of the
 * n rows cut into batches of batch_size (a short last batch is dropped), whatever the labels.
 * Errors: FT_EINVAL with param "batch_size" (< 2 or larger than n), FT_ENOMEM. */
enum ft_err ft_sampler_new_random(int64_t n, int batch_size, uint64_t seed, ft_sampler **out,
                                  struct ft_error *err);
/* Batches per epoch (>= 1). */
int64_t ft_sampler_num_batches(const ft_sampler *s);
/* Batch size (the number of indices ft_sampler_next writes). */
int ft_sampler_batch_size(const ft_sampler *s);
/* Write the next batch's row indices into idx (batch_size) and return 1, or return 0 at the
 * end of the epoch (nothing written); the call after that starts a new, reshuffled epoch. */
int ft_sampler_next(ft_sampler *s, int64_t *idx);
/* Checkpoint support: the row order (n rows, grouped by class; the next epoch reshuffles it)
 * and the generator state (4 words), both borrowed and writable, so a resumed run can restore
 * them between epochs and draw the same batches as an uninterrupted one. Returns n. */
int64_t ft_sampler_state(ft_sampler *s, int64_t **order, uint64_t **rng);
void ft_sampler_free(ft_sampler *s);

#endif
