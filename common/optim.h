/* optim.h — optimizers over one contiguous parameter buffer (torch.optim 1.13 semantics).
 *
 * SGD: d = g + wd p; buf = d (first step) else momentum buf + d; p -= lr (nesterov ? d +
 * momentum buf : buf) (plain p -= lr d when momentum = 0).
 * Adam: g' = g + wd p; m = b1 m + (1-b1) g'; v = b2 v + (1-b2) g'^2;
 * p -= (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps).
 * AdamW: p *= 1 - lr wd (decoupled decay, first); then Adam with the plain gradient (g' = g).
 * Reference numbers: tests/fixtures/torch/optim_*.json.
 *
 * Run-config names: "Adam", "AdamW", "SGD"; their options (JSON) are validated and normalised by
 * ft_optim_check() and turned into struct ft_optim_opts by ft_optim_opts_from_json(). */
#ifndef FT_OPTIM_H
#define FT_OPTIM_H

#include "ft_error.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

enum ft_optim_kind { FT_OPTIM_SGD, FT_OPTIM_ADAM, FT_OPTIM_ADAMW };

struct ft_optim_opts {
    enum ft_optim_kind kind;
    double beta1, beta2, eps; /* Adam: 0.9, 0.999, 1e-8 */
    double weight_decay;      /* SGD/Adam: L2 added to the gradient, default 0;
                                 AdamW: decoupled, default 0.01 */
    double momentum;          /* SGD; default 0 */
    int nesterov;             /* SGD; default 0 */
};

typedef struct ft_optim ft_optim;

/* Fill opts with torch's defaults for kind. */
void ft_optim_opts_default(struct ft_optim_opts *opts, enum ft_optim_kind kind);

/* Validate the run config's optimizer (name) and optimizer_options (options, borrowed; NULL or
 * JSON null = all defaults). Adam/AdamW take {betas: [b1, b2] each in [0, 1), eps >= 0,
 * weight_decay >= 0}; SGD takes {momentum in [0, 1), nesterov bool (needs momentum > 0),
 * weight_decay >= 0}; any other key (amsgrad, dampening, typos) is rejected. On success and when
 * normalized is non-NULL, *normalized is a new object with every option filled (caller
 * json_decref()s). Errors: FT_EINVAL with param "config.hyper_parameters.optimizer" (NULL or
 * unknown name), "config.hyper_parameters.optimizer_options" (not an object) or
 * "config.hyper_parameters.optimizer_options.<key>"; FT_ENOMEM. */
enum ft_err ft_optim_check(const char *name, json_t *options, json_t **normalized,
                           struct ft_error *err);
/* Options for name from options (borrowed; normally ft_optim_check's normalized object, but any
 * valid options work: absent keys take the defaults). Returns FT_EINVAL when name or options
 * do not pass ft_optim_check. */
enum ft_err ft_optim_opts_from_json(const char *name, json_t *options, struct ft_optim_opts *out);

/* New optimizer state for n parameters (moments start at 0). Errors: FT_EINVAL (negative
 * option, nesterov without momentum), FT_ENOMEM. Free with ft_optim_free(). */
enum ft_err ft_optim_new(const struct ft_optim_opts *opts, size_t n, ft_optim **out,
                         struct ft_error *err);
/* One step at learning rate lr: params (n) updated in place from grads (n). Returns 1, or 0
 * when a gradient was NaN or infinite: the check rides along the update (Adam's loop waits on
 * its divisions, so it costs nothing, where a separate pass read every gradient again), so the
 * params and moments then hold non-finite values and the run must stop. */
int ft_optim_step(ft_optim *o, float *params, const float *grads, double lr);
/* Steps taken so far. */
int64_t ft_optim_steps(const ft_optim *o);
/* Set the step count t (>= 0), e.g. to the checkpoint's value after restoring the moment buffers
 * through ft_optim_state, so a resumed run continues Adam's bias correction (the next step uses
 * t + 1) and SGD's momentum (t > 0: the buffer is not re-initialised). */
void ft_optim_set_steps(ft_optim *o, int64_t steps);
/* The moment buffers (borrowed, n floats each, valid until ft_optim_free; NULL when not kept):
 * *m = SGD momentum_buffer or Adam exp_avg, *v = Adam exp_avg_sq. Either pointer may be NULL. */
void ft_optim_state(ft_optim *o, float **m, float **v);
void ft_optim_free(ft_optim *o);

#endif
