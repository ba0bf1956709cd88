/* runspec.h — the run config: parse, validate and normalise the JSON that finetuner.fit() sends.
 *
 * {"model": {"name": "mlp", "options": {...}, "output_dim": null, "freeze": false,
 *            "artifact": "EXPERIMENT/RUN" (start from that run's model) | null},
 *  "data": {"train_data", "eval_data", "val_split", "num_items_per_class", "sampler",
 *           "standardize": {"mean", "std"}},
 *  "hyper_parameters": {"loss", "loss_options", "miner", "miner_options", "optimizer",
 *                       "optimizer_options", "loss_optimizer", "loss_optimizer_options",
 *                       "scheduler", "scheduler_options", "learning_rate", "epochs",
 *                       "batch_size"},
 *  "callbacks": [{"name", "options"}], "seed"}
 * Defaults are Finetuner's (TripletMarginLoss, Adam, learning_rate 1e-3, epochs 5, batch_size
 * chosen from the data, num_items_per_class 4, sampler auto, seed 42). Every unknown key, wrong
 * type or out-of-range value is FT_EINVAL with param = the JSON path
 * ("config.hyper_parameters.epochs"). Dataset existence is checked by the caller (the server knows
 * the datasets). */
#ifndef FT_RUNSPEC_H
#define FT_RUNSPEC_H

#include "callbacks.h"
#include "ft_error.h"
#include "loss.h"
#include "model.h"
#include "optim.h"

#include <jansson.h>
#include <stdint.h>

struct ft_run_config {
    /* model */
    char model_name[32];   /* "mlp" | "cnn" */
    json_t *model_options; /* owned: normalised (ft_model_check_options); input_size /
                              input_shape null = taken from the train data */
    int output_dim;        /* 0 = none; else a linear projection head is appended */
    int freeze;            /* 1 = train only the projection head (needs output_dim) */
    char model_artifact[2 * FT_NAME_MAX]; /* "EXPERIMENT/RUN" to start from, "" = none */
    /* data */
    char train_data[FT_NAME_MAX];
    char eval_data[FT_NAME_MAX]; /* "" = none */
    double val_split;            /* [0, 1): seeded hold-out of train_data when no eval_data */
    int num_items_per_class;
    char sampler[16]; /* "auto" | "class" | "random" */
    int standardize;  /* 1 = x -> (x - standardize_mean) / standardize_std */
    double standardize_mean, standardize_std;
    /* hyper_parameters */
    char loss[64];
    json_t *loss_options;    /* owned: normalised (ft_loss_check) */
    char miner[64];          /* "" = none */
    json_t *miner_options;   /* owned: normalised, JSON null without a miner */
    char loss_optimizer[32]; /* for a loss's own parameters (ArcFaceLoss): default the optimizer */
    json_t *loss_optimizer_options; /* owned: normalised */
    struct ft_optim_opts loss_optim;
    char optimizer[32];
    struct ft_optim_opts optim;
    json_t *optimizer_options; /* owned: normalised (ft_optim_check) */
    char scheduler[32];        /* "" = none */
    json_t *scheduler_options; /* owned: normalised (ft_schedule_check) */
    double learning_rate;
    int epochs;
    int batch_size; /* 0 = auto: chosen from the training data */
    struct ft_callbacks callbacks;
    uint64_t seed;
};

/* Parse config (borrowed). On success fills out (release with ft_run_config_clear) and, when
 * normalized is non-NULL, sets it to a new JSON object: the config with every default filled in
 * (what the API shows). On failure out holds nothing to release. */
enum ft_err ft_run_config_parse(json_t *config, struct ft_run_config *out, json_t **normalized,
                                struct ft_error *err);

/* Release what a parsed config owns (the normalised option objects). */
void ft_run_config_clear(struct ft_run_config *c);

/* Names of the datasets a config reads (train, eval, callback query/index), deduplicated, into
 * names (cap entries, borrowed from cfg); returns the count. */
int ft_run_config_datasets(const struct ft_run_config *cfg, const char **names, int cap);

/* Whether a monitor's series exists for this config: val_loss needs eval_data or val_split > 0;
 * metrics need an EvaluationCallback. FT_EINVAL naming the callback's monitor otherwise. */
enum ft_err ft_run_config_check_monitors(const struct ft_run_config *cfg, json_t *config,
                                         struct ft_error *err);

#endif
