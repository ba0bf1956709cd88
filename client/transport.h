/* transport.h — libfinetuner internals: the client struct and one HTTP exchange over libcurl.
 *
 * Not installed: only the client sources include it. A request names a method, a path under
 * /api/v1 (already escaped), and at most one body source (memory, FILE or MIME). The
 * response body lands in the client's buffer (c->body), or, for a 2xx answer, in a sink the
 * caller supplies (log streams, artifacts). Non-2xx answers are parsed into the last error. */
#ifndef FT_CLIENT_TRANSPORT_H
#define FT_CLIENT_TRANSPORT_H

#include "finetuner.h"

#include <curl/curl.h>
#include <stdio.h>

#pragma GCC visibility push(hidden) /* internal: not exported from the .so */

struct ft_client {
    CURL *curl;
    char *base;  /* "http://host:port/api/v1", no trailing slash */
    char *token; /* access token sent as "Authorization: token <t>", NULL = none */
    /* last error */
    char code[48];
    char param[256];
    int has_param;
    char message[1024];
    long http_status;
    /* last response body (NUL-terminated; body_len excludes the NUL) */
    char *body;
    size_t body_len, body_cap;
    char errbuf[CURL_ERROR_SIZE];
};

/* Where a 2xx body goes instead of c->body. Returns 0 to go on, 1 to end the transfer as a
 * success, -1 to fail it (after setting the client's error with ftc_fail()). */
typedef int (*ftc_sink_fn)(void *ctx, const char *data, size_t len);

struct ftc_request {
    const char *method;       /* "GET" | "POST" | "PUT" | "DELETE" */
    const char *path;         /* "/datasets/x?format=csv" (escaped) */
    const char *content_type; /* of the body; NULL = none */
    const char *body;         /* in-memory body (borrowed) or NULL */
    size_t body_len;
    FILE *upload; /* file body (borrowed) or NULL */
    long long upload_len;
    curl_mime *mime; /* multipart body (borrowed) or NULL */
    ftc_sink_fn sink;
    void *sink_ctx;
};

/* Reset the last error and the last response body. */
void ftc_error_clear(ft_client *c);

/* Set the last error (code and param are copied; param NULL = none) and return -1. */
int ftc_fail(ft_client *c, const char *code, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Perform rq on c. Returns 0 on a 2xx answer (last error cleared), -1 otherwise with the
 * last error set: the server's {"error": ...}, "transport", "unexpected_response" or
 * "out_of_memory". */
int ftc_perform(ft_client *c, const struct ftc_request *rq);

/* name escaped for a URL path segment (new, free()); NULL with "invalid_argument" (param)
 * when name is NULL or empty, or "out_of_memory". */
char *ftc_escape(ft_client *c, const char *name, const char *param);

#pragma GCC visibility pop

#endif
