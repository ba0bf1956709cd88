/* train.h — the training loop of one run: sampler -> model -> loss -> optimizer, with the
 * EvaluationCallback, BestModelCheckpoint and EarlyStopping semantics of
 * tests/fixtures/callbacks/README.md, run logs that read like Finetuner's, and the best model
 * written as a safetensors artifact.
 *
 * Order per epoch (the spec's): train batches -> train_loss (unweighted mean of batch losses)
 * -> val_loss (mean over class-balanced eval batches, the same batches every epoch) ->
 * EvaluationCallbacks -> BestModelCheckpoint -> EarlyStopping. "before" metrics are computed
 * once before the first batch, "after" metrics on the artifact's weights. */
#ifndef FT_TRAIN_H
#define FT_TRAIN_H

#include "dataset.h"
#include "ft_error.h"
#include "runspec.h"

#include <jansson.h>

/* Everything borrowed for the duration of ft_train. */
struct ft_train_inputs {
    const struct ft_dataset *train; /* rows; when cfg->val_split > 0 a seeded hold-out of it
                                       becomes the eval set */
    const struct ft_dataset *eval;  /* eval_data (NULL = none) */
    const struct ft_dataset *query[FT_MAX_EVAL_CALLBACKS]; /* per EvaluationCallback */
    const struct ft_dataset *index[FT_MAX_EVAL_CALLBACKS]; /* NULL = the query set */
    json_t *config;             /* normalised run config, stored in the artifact */
    const char *start_artifact; /* the file of config model.artifact (NULL = none) */
    const char *checkpoint_dir; /* where TrainingCheckpoint writes epoch-<e>.safetensors
                                   (an existing directory; NULL = no checkpoints) */
    const char *resume_path;    /* write the resume state here after every epoch (NULL =
                                   don't); the same format as TrainingCheckpoint's */
    const char *resume_from;    /* go on from this resume state (NULL = from the start):
                                   the run then ends exactly as an uninterrupted one */
};

/* Callbacks into the caller (the worker writes them to SQLite). Any may be NULL. */
struct ft_train_hooks {
    void *ctx;
    /* One run-log line (no trailing newline). */
    void (*log)(void *ctx, const char *line);
    /* Metrics of phase "before" (epoch 0), "epoch" (1-based) or "after": an object of
     * name -> number or null (borrowed for the call). */
    void (*metrics)(void *ctx, const char *phase, int epoch, json_t *values);
    /* Non-zero when the run was canceled; checked before every batch. */
    int (*canceled)(void *ctx);
};

struct ft_train_result {
    int epochs_completed;
    int stopped_early;
    int best_epoch;    /* 0 = none (the last epoch's weights were kept) */
    char details[256]; /* a sentence for the run's status details */
};

/* Train cfg on inputs; write the artifact (safetensors, atomically) to artifact_path.
 * Errors: FT_EINVAL (data that cannot fill a batch, dims that disagree), FT_ENUMERIC (a
 * non-finite loss: the message names epoch and batch), FT_ECANCELED, FT_ENOMEM, FT_EIO. */
enum ft_err ft_train(const struct ft_run_config *cfg, const struct ft_train_inputs *in,
                     const struct ft_train_hooks *hooks, const char *artifact_path,
                     struct ft_train_result *res, struct ft_error *err);

#endif
