/* fit_config.h — libfinetuner internals: struct ft_fit_params -> the run submission JSON. */
#ifndef FT_CLIENT_FIT_CONFIG_H
#define FT_CLIENT_FIT_CONFIG_H

#include "finetuner.h"

#pragma GCC visibility push(hidden) /* internal: not exported from the .so */

/* The body of POST /experiments/{exp}/runs for p: {"name"?, "description"?, "config": {...}}
 * as compact JSON text (new, free()). Unset fields are left out. NULL with the client's error
 * set: "invalid_argument" (param "loss_options", "callbacks[i].options", ...) when an options
 * text is not a JSON object or a callback has no name, "out_of_memory". */
char *ftc_fit_body(ft_client *c, const struct ft_fit_params *p);

#pragma GCC visibility pop

#endif
