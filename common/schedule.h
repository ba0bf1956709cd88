/* schedule.h — learning-rate schedules with Hugging Face transformers' get_scheduler semantics.
 *
 * A schedule is one multiplier lambda(s) (torch LambdaLR): lr(s) = base_lr * lambda(s), where
 * s = number of scheduler steps taken so far. The optimizer step s + 1 uses lr(s), so with a
 * warm-up the very first update uses lr 0. W = num_warmup_steps, T = num_training_steps.
 * Warm-up (every kind but constant): lambda = s / max(1, W) for s < W. After it, with
 * progress = (s - W) / max(1, T - W):
 *   linear               max(0, (T - s) / max(1, T - W))
 *   cosine               max(0, 0.5 (1 + cos(pi num_cycles 2 progress)))           num_cycles 0.5
 *   cosine_with_restarts 0 when progress >= 1, else
 *                        max(0, 0.5 (1 + cos(pi ((num_cycles progress) mod 1))))   num_cycles 1
 *   polynomial           lr_end / lr_init for s > T, else
 *                        ((lr_init - lr_end) (1 - (s - W) / (T - W))^power + lr_end) / lr_init
 *                        with lr_init = base_lr, power 1, lr_end 1e-7
 *   constant             1 (no warm-up, num_warmup_steps is ignored as in HF)
 *   constant_with_warmup 1 after the warm-up
 * Reference numbers: tests/fixtures/torch/schedule_*.json (their descriptions are the spec).
 *
 * Run config: hyper_parameters.scheduler (one of the names above, or absent/null = no
 * scheduler: constant lr) and hyper_parameters.scheduler_options {num_warmup_steps int >= 0 [0],
 * num_training_steps int > 0 or "auto" ["auto"], scheduler_step "batch" | "epoch" ["batch"],
 * num_cycles > 0 (cosine kinds), power > 0 and lr_end >= 0 [1e-7] (polynomial)}. "auto" is
 * epochs x batches per epoch with scheduler_step "batch", epochs with "epoch"; W and T count
 * scheduler steps (batches or epochs). */
#ifndef FT_SCHEDULE_H
#define FT_SCHEDULE_H

#include "ft_error.h"

#include <jansson.h>
#include <stdint.h>

enum ft_schedule_kind {
    FT_SCHED_NONE, /* no scheduler: lambda = 1 */
    FT_SCHED_LINEAR,
    FT_SCHED_COSINE,
    FT_SCHED_COSINE_WITH_RESTARTS,
    FT_SCHED_POLYNOMIAL,
    FT_SCHED_CONSTANT,
    FT_SCHED_CONSTANT_WITH_WARMUP,
};

struct ft_schedule {
    enum ft_schedule_kind kind;
    int64_t num_warmup_steps;
    int64_t num_training_steps; /* resolved, > 0 (also for the kinds that ignore it) */
    double num_cycles;          /* cosine 0.5, cosine_with_restarts 1 */
    double power, lr_end;       /* polynomial: 1, 1e-7 */
    double lr_init;             /* polynomial: the base lr lambda divides by (HF lr_init) */
    int step_per_batch;         /* scheduler_step "batch" (1) or "epoch" (0) */
};

/* Validate the run config's scheduler name (NULL = none) and scheduler_options (borrowed; NULL
 * or JSON null = defaults). On success and when normalized is non-NULL, *normalized is a new
 * object with every option of that kind filled in ({} for no scheduler; "auto" stays "auto");
 * caller json_decref()s. Errors: FT_EINVAL with param "config.hyper_parameters.scheduler"
 * (unknown name), "config.hyper_parameters.scheduler_options" (not an object, or non-empty
 * without a scheduler) or "config.hyper_parameters.scheduler_options.<key>" (unknown key, bad
 * value, num_warmup_steps > num_training_steps when both are integers);
 * FT_ENOMEM. */
enum ft_err ft_schedule_check(const char *name, json_t *options, json_t **normalized,
                              struct ft_error *err);

/* Fill s for name and options (borrowed; normally ft_schedule_check's normalized object),
 * resolving num_training_steps "auto" from epochs and batches_per_epoch. base_lr is the
 * optimizer's learning rate (HF lr_init; polynomial needs lr_end < base_lr). Errors: FT_EINVAL
 * (options that fail ft_schedule_check, "auto" with epochs or batches_per_epoch < 1, resolved
 * warm-up longer than training, base_lr <= 0 or lr_end >= base_lr), params as in
 * ft_schedule_check. */
enum ft_err ft_schedule_init(struct ft_schedule *s, const char *name, json_t *options, int epochs,
                             int64_t batches_per_epoch, double base_lr, struct ft_error *err);

/* The multiplier after step scheduler steps (step >= 0). */
double ft_schedule_lambda(const struct ft_schedule *s, int64_t step);

/* base_lr * ft_schedule_lambda(s, step): the lr of optimizer step step + 1. */
double ft_schedule_lr(const struct ft_schedule *s, double base_lr, int64_t step);

#endif
