/* loss.h — metric-learning losses and miners (pytorch-metric-learning 2.x semantics).
 *
 * Spec and reference numbers: tests/fixtures/torch/README.md ("Metric-learning losses").
 * Distances: cosine d = 1 - cos(e_i, e_j); euclidean d = ||n_i - n_j||_2 with n = e/||e||
 * (pml LpDistance(normalize_embeddings=True), its default) or raw e when
 * normalize_embeddings = 0. Gradients are w.r.t. the raw embeddings. */
#ifndef FT_LOSS_H
#define FT_LOSS_H

#include "ft_error.h"

#include <jansson.h>
#include <stddef.h>
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

/* What one loss call saw; fields a loss does not use are 0. */
struct ft_loss_stats {
    int64_t num_triplets; /* TripletMarginLoss: triplets the loss saw (after mining) */
    int64_t num_nonzero;  /* of those with loss > 0 (AvgNonZero divisor) */
    /* pair losses (ContrastiveLoss, NTXentLoss, MultiSimilarityLoss): ordered pairs used */
    int64_t num_pos_pairs, num_neg_pairs;
    /* ContrastiveLoss: AvgNonZero divisors and the two sub-losses (loss = pos_loss + neg_loss) */
    int64_t num_pos_nonzero, num_neg_nonzero;
    double pos_loss, neg_loss;
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

/* ---- losses and miners by name (what the trainer uses) ----
 *
 * Names and semantics are pytorch-metric-learning's (pml 2.x); the reference numbers and the
 * exact rules are in tests/fixtures/torch/README.md ("Metric-learning losses").
 *
 * loss_options [defaults]:
 *   TripletMarginLoss    margin [0.05], distance cosine|euclidean [euclidean],
 *                        normalize_embeddings [true], swap [false], smooth_loss [false]
 *   ContrastiveLoss      pos_margin [0], neg_margin [1], distance [euclidean],
 *   (alias SiameseLoss)  normalize_embeddings [true]
 *   NTXentLoss           temperature [0.07] (cosine similarity)
 *   CLIPLoss             none (logit scale 1/0.07, fixed)
 *   ArcFaceLoss          margin [28.6, degrees], scale [64]
 *   MultiSimilarityLoss  alpha [2], beta [50], base [0.5] (cosine similarity)
 * miner_options [defaults]:
 *   TripletMarginMiner   margin [0.2], type_of_triplets all|hard|semihard|easy [all]
 *   BatchHardMiner       none
 *   MultiSimilarityMiner epsilon [0.1]
 *   PairMarginMiner      pos_margin [0.2], neg_margin [0.8]
 * Triplet miners (TripletMarginMiner, BatchHardMiner) fit TripletMarginLoss only; pair miners
 * (MultiSimilarityMiner, PairMarginMiner) fit ContrastiveLoss/SiameseLoss, NTXentLoss and
 * MultiSimilarityLoss; CLIPLoss and ArcFaceLoss take no miner.
 *
 * Decided semantics (pml's where pml decides):
 * - A miner measures with its loss's distance (pml miners carry their own distance object,
 *   which Finetuner never sets; this keeps one distance per run).
 * - With distance cosine, margins of ContrastiveLoss and PairMarginMiner are cosine
 *   *similarities* as in pml (CosineSimilarity is inverted): ContrastiveLoss uses
 *   max(0, pos_margin - s) and max(0, s - neg_margin); PairMarginMiner keeps positives with
 *   s < pos_margin and negatives with s > neg_margin. With euclidean they are distances:
 *   max(0, d - pos_margin), max(0, neg_margin - d); keep d > pos_margin, d < neg_margin.
 * - MultiSimilarityMiner (pml): with similarity s, keep positive (a,p) when
 *   s(a,p) - epsilon < max_n s(a,n), negative (a,n) when s(a,n) + epsilon > min_p s(a,p);
 *   with a distance d, keep d(a,p) + epsilon > min_n d(a,n) and d(a,n) - epsilon <
 *   max_p d(a,p).
 * - Pair losses are 0 when at most one positive and at most one negative pair are left (pml
 *   GenericPairLoss returns zero losses when every index list has length <= 1).
 * - cosine always normalises (pml CosineSimilarity): normalize_embeddings false with distance
 *   cosine is rejected. */
typedef struct ft_loss ft_loss;

/* Validate a loss configuration without data (at submission). name NULL means
 * "TripletMarginLoss"; options / miner_options: JSON objects (borrowed), NULL or JSON null for
 * none; miner NULL for none. On success, when non-NULL, *norm_options is set to a new object
 * with every option of the loss filled in, and *norm_miner_options to a new object with every
 * option of the miner (JSON null when there is no miner); on error both are set to NULL.
 * Errors (FT_EINVAL) name the field: "config.hyper_parameters.loss" (unknown loss),
 * "config.hyper_parameters.loss_options[.<key>]" (not an object, unknown key, wrong type, out
 * of range), "config.hyper_parameters.miner" (unknown miner, or a miner that does not fit the
 * loss: the message names both), "config.hyper_parameters.miner_options[.<key>]" (the same
 * for the miner; miner_options without a miner). */
enum ft_err ft_loss_check(const char *name, json_t *options, const char *miner,
                          json_t *miner_options, json_t **norm_options, json_t **norm_miner_options,
                          struct ft_error *err);

/* Build a loss (validated as ft_loss_check does). dim = embedding size and num_classes =
 * classes of the training data (labels 0..num_classes-1) are used by ArcFaceLoss only, whose
 * W (num_classes, dim) is drawn N(0, 1) (pml's default weight_init_func,
 * torch.nn.init.normal_) from ft_rng seeded with seed. On success *out is owned: free with
 * ft_loss_free(). Errors: FT_EINVAL (as ft_loss_check; ArcFaceLoss with dim or num_classes < 1:
 * param "config.hyper_parameters.loss"), FT_ENOMEM. */
enum ft_err ft_loss_new(const char *name, json_t *options, const char *miner, json_t *miner_options,
                        int dim, int num_classes, uint64_t seed, ft_loss **out,
                        struct ft_error *err);

/* Loss of emb (B, D) with labels (B) into *loss; demb (B, D) written with d loss / d emb
 * (NULL = no gradient: the loss's own parameter gradients are then left alone too); with a
 * gradient, a loss with parameters (ArcFaceLoss: W) also accumulates (+=) d loss / d W into
 * ft_loss_grads(). Labels are compared for equality (any int32, negative too); ArcFaceLoss
 * needs 0 <= label < num_classes and D == dim. stats (may be NULL) is written. Non-finite
 * embeddings (or distances that overflow) give *loss = NaN and a zero gradient. Scratch
 * memory is kept in l and grows to the largest batch seen. Errors: FT_EINVAL (ArcFaceLoss label
 * out of range or D != dim; CLIPLoss without exactly two items of every label in the batch),
 * FT_ENOMEM. */
enum ft_err ft_loss_compute(ft_loss *l, const float *emb, const int32_t *labels, int B, int D,
                            float *loss, float *demb, struct ft_loss_stats *stats);

/* Number of trainable parameters of the loss: num_classes * dim for ArcFaceLoss, else 0. */
size_t ft_loss_num_params(const ft_loss *l);
/* The parameters / their gradients (ft_loss_num_params() floats each; ArcFaceLoss: W
 * (num_classes, dim), row c = class c; pml stores the transpose). Borrowed: valid until
 * ft_loss_free(); NULL when the loss has none. */
float *ft_loss_params(ft_loss *l);
float *ft_loss_grads(ft_loss *l);
/* Set the parameter gradients to 0 (no-op without parameters). */
void ft_loss_zero_grad(ft_loss *l);
/* Items of one label the batch sampler must put in a batch: 2 for CLIPLoss (item A of a label
 * is the "image", item B the "text"), 0 = any. */
int ft_loss_items_per_class(const ft_loss *l);
/* Free l; NULL is a no-op. */
void ft_loss_free(ft_loss *l);

/* Diagnostics and tests: a borrowed view of an intermediate of the last ft_loss_compute
 * (valid until the next compute or ft_loss_free), its element count in *n (may be NULL); NULL
 * when this loss has none by that name or no compute ran. Names:
 *   "dist_matrix"   (B, B) distances of the distance-based losses (cosine: 1 - s)
 *   "pair_losses"   NTXentLoss: one loss per positive pair used, row-major (i, j) order
 *   "per_item_loss" (B) MultiSimilarityLoss
 *   "logits"        CLIPLoss (n, n) image x text, n = B/2, rows in order of the labels' first
 *                   items; ArcFaceLoss (B, num_classes), scaled
 *   "cosine"        ArcFaceLoss (B, num_classes)
 *   "target_angle"  ArcFaceLoss (B) theta of the target class */
const float *ft_loss_intermediate(const ft_loss *l, const char *name, size_t *n);

/* The triplets a TripletMarginLoss uses on this batch (its miner's, or every valid one):
 * writes up to cap (a, p, n) rows into trip (cap, 3) in enumeration order (a, then p, then n;
 * BatchHardMiner: one row per anchor that has a positive and a negative) and sets *count to
 * the number used (may exceed cap). Errors: FT_EINVAL (not a TripletMarginLoss), FT_ENOMEM. */
enum ft_err ft_loss_mine_triplets(ft_loss *l, const float *emb, const int32_t *labels, int B, int D,
                                  int64_t *trip, int64_t cap, int64_t *count);

/* The pairs a pair loss uses on this batch: mask (B, B) written with 1 for a positive pair
 * (a, p) used, 2 for a negative pair (a, n) used, 0 otherwise. Errors: FT_EINVAL (not
 * ContrastiveLoss, NTXentLoss or MultiSimilarityLoss), FT_ENOMEM. */
enum ft_err ft_loss_mine_pairs(ft_loss *l, const float *emb, const int32_t *labels, int B, int D,
                               uint8_t *mask);

#endif
