/* loss.h — metric-learning losses and miners (pytorch-metric-learning 2.x semantics).
 *
 * Spec and reference numbers: tests/fixtures/torch/README.md ("Metric-learning losses").
 * Distances: cosine d = 1 - cos(e_i, e_j); euclidean d = ||n_i - n_j||_2 with n = e/||e||
 * (pml LpDistance(normalize_embeddings=True), its default) or raw e when
 * normalize_embeddings = 0. Gradients are w.r.t. the raw embeddings. */
#ifndef FT_LOSS_H
#define FT_LOSS_H

#include "ft_error.h"

#include <stdint.h>

enum ft_distance { FT_DIST_COSINE, FT_DIST_EUCLIDEAN };

enum ft_triplet_type { FT_TRIPLETS_ALL, FT_TRIPLETS_HARD, FT_TRIPLETS_SEMIHARD, FT_TRIPLETS_EASY };

/* TripletMarginLoss(margin, distance) [+ TripletMarginMiner(margin, type_of_triplets)].
 * Without a miner every valid in-batch triplet is used (pml's default). */
struct ft_triplet_opts {
    double margin;             /* loss margin; pml default 0.05 */
    enum ft_distance distance; /* pml default euclidean (normalised) */
    int normalize_embeddings;  /* euclidean only; default 1 */
    int use_miner;             /* 1 = TripletMarginMiner selects the triplets */
    double miner_margin;       /* miner margin; pml default 0.2 */
    enum ft_triplet_type type; /* miner type_of_triplets; default all */
};

struct ft_loss_stats {
    int64_t num_triplets; /* triplets the loss saw (after mining) */
    int64_t num_nonzero;  /* of those with loss > 0 (AvgNonZero divisor) */
};

/* Fill opts with pml's defaults (margin 0.05, euclidean normalised, no miner, miner margin
 * 0.2, type all). */
void ft_triplet_opts_default(struct ft_triplet_opts *opts);

/* loss = AvgNonZero over mined triplets of max(0, d(a,p) - d(a,n) + margin); 0 when none.
 * emb (B, D), labels (B); demb (B, D) written with d loss / d emb (NULL = no gradient);
 * stats may be NULL. Errors: FT_ENOMEM. Triplet enumeration order: a, p, n ascending.
 * Non-finite embeddings (a NaN or infinite distance) give *loss = NaN and a zero gradient. */
enum ft_err ft_triplet_margin_loss(float *loss, float *demb, const float *emb,
                                   const int32_t *labels, int B, int D,
                                   const struct ft_triplet_opts *opts, struct ft_loss_stats *stats);

/* The mined triplets themselves (for tests): writes up to cap (a, p, n) rows into trip
 * (cap, 3) in enumeration order and returns the number kept (may exceed cap; then only cap
 * were written), or -1 on ENOMEM. */
int64_t ft_triplet_mine(int64_t *trip, int64_t cap, const float *emb, const int32_t *labels, int B,
                        int D, const struct ft_triplet_opts *opts);

#endif
