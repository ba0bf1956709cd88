/* options.h — helpers for the strict JSON option objects of run configs (runspec, models,
 * losses, optimizers, schedulers, callbacks): each module formats its own 400, these find
 * what is wrong. */
#ifndef FT_OPTIONS_H
#define FT_OPTIONS_H

#include <jansson.h>

/* The first key of obj (an object; NULL = none) not in allowed (NULL-terminated), or NULL when
 * every key is known. Borrowed: valid while obj is. */
const char *ft_options_unknown_key(json_t *obj, const char *const *allowed);

#endif
