/* api.h — the REST API: a static route table (method, path pattern, handler) under /api/v1.
 *
 * 404 when no route has the path, 405 (with Allow) when the path exists but not the method.
 * Every error is {"error": {"code", "message", "param"}} with the status of its ft_err code. */
#ifndef FT_API_H
#define FT_API_H

#include "http.h"
#include "store.h"

#include <stddef.h>

struct ft_api {
    ft_store *store;         /* borrowed */
    size_t max_upload;       /* bytes, for dataset uploads */
    size_t max_dataset;      /* bytes of a decoded dataset (float32); 0 = no limit */
    void (*wake)(void *ctx); /* tell the scheduler a run was queued or canceled (may be NULL) */
    void *wake_ctx;
    volatile int *stopping; /* non-zero while the daemon shuts down (may be NULL) */
};

/* Handle one complete request; fills resp (status, body...). Never fails: errors become error
 * responses. */
void ft_api_handle(struct ft_api *api, const struct ft_http_request *req,
                   struct ft_http_response *resp);

/* The error body for err (new string). */
char *ft_api_error_body(const struct ft_error *err);

#endif
