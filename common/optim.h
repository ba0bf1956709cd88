/* optim.h — optimizers over one contiguous parameter buffer (torch.optim 1.13 semantics).
 *
 * SGD: d = g + wd p; buf = d (first step) else momentum buf + d; p -= lr (nesterov ? d +
 * momentum buf : buf) (plain p -= lr d when momentum = 0).
 * Adam: g' = g + wd p; m = b1 m + (1-b1) g'; v = b2 v + (1-b2) g'^2;
 * p -= (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps).
 * Reference numbers: tests/fixtures/torch/optim_*.json. */
#ifndef FT_OPTIM_H
#define FT_OPTIM_H

#include "ft_error.h"

#include <stddef.h>
#include <stdint.h>

enum ft_optim_kind { FT_OPTIM_SGD, FT_OPTIM_ADAM };

struct ft_optim_opts {
    enum ft_optim_kind kind;
    double beta1, beta2, eps; /* Adam: 0.9, 0.999, 1e-8 */
    double weight_decay;      /* L2 added to the gradient; default 0 */
    double momentum;          /* SGD; default 0 */
    int nesterov;             /* SGD; default 0 */
};

typedef struct ft_optim ft_optim;

/* Fill opts with torch's defaults for kind. */
void ft_optim_opts_default(struct ft_optim_opts *opts, enum ft_optim_kind kind);
/* New optimizer state for n parameters (moments start at 0). Errors: FT_EINVAL (negative
 * option, nesterov without momentum), FT_ENOMEM. Free with ft_optim_free(). */
enum ft_err ft_optim_new(const struct ft_optim_opts *opts, size_t n, ft_optim **out,
                         struct ft_error *err);
/* One step at learning rate lr: params (n) updated in place from grads (n). */
void ft_optim_step(ft_optim *o, float *params, const float *grads, double lr);
/* Steps taken so far. */
int64_t ft_optim_steps(const ft_optim *o);
/* The moment buffers (borrowed, n floats each, valid until ft_optim_free; NULL when not kept):
 * *m = SGD momentum_buffer or Adam exp_avg, *v = Adam exp_avg_sq. Either pointer may be NULL. */
void ft_optim_state(ft_optim *o, float **m, float **v);
void ft_optim_free(ft_optim *o);

#endif
