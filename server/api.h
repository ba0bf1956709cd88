/* api.h — the REST API: a static route table (method, path pattern, handler) under /api/v1.
 *
 * Every route but GET /health first finds the request's owner (server/auth.h: 401 without a
 * valid token once a token exists); handlers then see only that owner's datasets, experiments
 * and runs. POST .../runs and PUT /datasets/{name} honour an Idempotency-Key header: the same
 * key and request again get the first answer back (its status and body) without doing
 * anything; the key with another request is 422; while the first is in flight, 409. Only 2xx
 * answers are kept: after an error the key is free again.
 * 404 when no route has the path, 405 (with Allow) when the path exists but not the method.
 * Every error is {"error": {"code", "message", "param"}} with the status of its ft_err code. */
#ifndef FT_API_H
#define FT_API_H

#include "auth.h"
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
    int require_token;      /* 1: 401 without a valid token even while none exists */
    int max_queued_runs;    /* CREATED runs per owner before submissions are 429; 0 = no limit */
    int max_json_depth;     /* deepest array/object nesting of a JSON body (400 beyond);
                             * 0 = jansson's own limit (2048) */
};

/* Handle one complete request; fills resp (status, body...). Never fails: errors become error
 * responses. */
void ft_api_handle(struct ft_api *api, const struct ft_http_request *req,
                   struct ft_http_response *resp);

/* Whether req may be served as far as its headers tell: FT_OK for GET /health and for a
 * request with a valid token (or any while the API is open), else FT_EUNAUTHORIZED (or
 * FT_EDB) with err filled. The HTTP glue asks before reading a body, so an unknown client's
 * upload is drained rather than kept; ft_api_handle() checks again. */
enum ft_err ft_api_authorize(struct ft_api *api, const struct ft_http_request *req,
                             struct ft_error *err);

/* The fingerprint an Idempotency-Key is bound to: SHA-256 (hex) of the method, path, query
 * arguments, and the body or (multipart) the named parts, each length-prefixed; so retries
 * match whatever multipart boundary they use. "" when out of memory. */
void ft_api_fingerprint(const struct ft_http_request *req, char out[FT_SHA256_HEX]);

/* The error body for err (new string). */
char *ft_api_error_body(const struct ft_error *err);

#endif
