/* callbacks.h — EvaluationCallback, EarlyStopping, BestModelCheckpoint: options and state.
 *
 * Spec: tests/fixtures/callbacks/README.md. mode 'auto' is min for train_loss/val_loss and max
 * for one of the nine metric names, bare or "<model>_"-prefixed; anything else is invalid.
 * improvement(cur, ref): false for NaN/inf; true when there is no ref; min: cur < ref -
 * min_delta; max: cur > ref + min_delta (double). EarlyStopping stops after the epoch that
 * incremented wait to >= patience; a missing value neither improves nor waits.
 * BestModelCheckpoint keeps the strictly best finite value, ties to the earliest epoch. */
#ifndef FT_CALLBACKS_H
#define FT_CALLBACKS_H

#include "ft_error.h"
#include "metrics.h"

#include <jansson.h>

#define FT_MAX_EVAL_CALLBACKS 4
#define FT_NAME_MAX 128

enum ft_mode { FT_MODE_MIN, FT_MODE_MAX };

/* Which series a monitor names. */
enum ft_monitor_kind { FT_MON_TRAIN_LOSS, FT_MON_VAL_LOSS, FT_MON_METRIC };

struct ft_eval_callback {
    char query_data[FT_NAME_MAX]; /* dataset name (required) */
    char index_data[FT_NAME_MAX]; /* "" = none: the query set is the index */
    int limit;                    /* k, default 20, >= 1 */
    enum ft_score distance;       /* default cosine */
    int exclude_self;             /* default 1 */
    int batch_size;               /* embedding batch size, default 8 as Finetuner (>= 1) */
    char caption[64];             /* "" = none; metrics are then "<model>_<caption>_<metric>",
                                     required to tell several EvaluationCallbacks apart */
    int gather_examples;          /* 1 = keep the top-limit results of example queries */
    int num_example_queries;      /* how many (default 5), the first queries of query_data */
    int query_sample_size;        /* 0 = every query; else a seeded sample of that many */
    int steps_per_interval;       /* 0 = after each epoch only; else also every N batches */
};

/* TrainingCheckpoint(last_k_epochs=1): keep the last k epochs' full training state. */
struct ft_training_checkpoint {
    int last_k_epochs; /* >= 1 */
};

/* WiSEFTCallback(alpha=0.4): artifact = (1 - alpha) theta_start + alpha theta_finetuned, for
 * runs that start from model.artifact (Wortsman et al., "Robust fine-tuning of zero-shot
 * models", CVPR 2022). */
struct ft_wiseft {
    double alpha; /* [0, 1] */
};

struct ft_early_stopping {
    char monitor[FT_NAME_MAX]; /* default "val_loss" */
    enum ft_monitor_kind kind;
    int metric;        /* enum ft_metric when kind == FT_MON_METRIC */
    int eval_index;    /* which EvaluationCallback a metric monitor reads */
    enum ft_mode mode; /* resolved */
    int patience;      /* default 2, integer >= 0 */
    double min_delta;  /* default 0, >= 0 */
    int has_baseline;
    double baseline;
    /* state */
    int has_ref;
    double ref;
    int wait;
};

struct ft_best_checkpoint {
    char monitor[FT_NAME_MAX]; /* default "val_loss" */
    enum ft_monitor_kind kind;
    int metric;
    int eval_index;
    enum ft_mode mode;
    /* state */
    int best_epoch; /* 0 = none yet */
    double best_value;
};

struct ft_callbacks {
    int num_eval;
    struct ft_eval_callback eval[FT_MAX_EVAL_CALLBACKS];
    int has_early_stopping;
    struct ft_early_stopping early_stopping;
    int has_best_checkpoint;
    struct ft_best_checkpoint best_checkpoint;
    int has_training_checkpoint;
    struct ft_training_checkpoint training_checkpoint;
    int has_wiseft;
    struct ft_wiseft wiseft;
};

/* Resolve mode "min" | "max" | "auto" for monitor; FT_EINVAL (param "mode") when auto cannot
 * be inferred or mode is unknown. Also sets kind/metric for a known series; with an explicit
 * mode, a monitor naming no known series is FT_EINVAL (param "monitor"). */
enum ft_err ft_monitor_resolve(const char *monitor, const char *mode, enum ft_mode *mode_out,
                               enum ft_monitor_kind *kind, int *metric, struct ft_error *err);

/* Which EvaluationCallback a metric monitor reads: the one whose caption stands between the
 * model prefix and the metric name ("mlp_test_ndcg_at_k", "test_ndcg_at_k"), else the one
 * without a caption. Returns the index or -1 when none fits. */
int ft_monitor_eval_index(const struct ft_callbacks *cb, const char *monitor);

/* Parse the run config's "callbacks" array ([{"name", "options"}], borrowed; NULL = none)
 * into out (zeroed first). Unknown callback names, unknown or mistyped options, out-of-range
 * values: FT_EINVAL with param "callbacks[i].options.<opt>" (or "callbacks[i].name"). */
enum ft_err ft_callbacks_parse(json_t *callbacks, struct ft_callbacks *out, struct ft_error *err);

/* Feed one epoch's monitored value (has_value 0 = missing). *improved (may be NULL) says if it
 * counted as an improvement. Returns 1 when training must stop after this epoch. */
int ft_early_stopping_update(struct ft_early_stopping *es, int has_value, double value,
                             int *improved);

/* Feed epoch (1-based) and its value; returns 1 when it is the new best. */
int ft_best_checkpoint_update(struct ft_best_checkpoint *b, int epoch, int has_value, double value);

#endif
