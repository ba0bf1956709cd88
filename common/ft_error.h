/* ft_error.h — the one list of errors (libuv-style X-macro) and the detail struct.
 *
 * Functions that can fail return enum ft_err and, when given a non-NULL struct ft_error *,
 * fill it with the code, the offending parameter (a JSON path such as
 * "config.hyper_parameters.loss") and a message fit to go straight into an API error body.
 * Library code never prints or exits. */
#ifndef FT_ERROR_H
#define FT_ERROR_H

#include <stdio.h>
#include <stdlib.h>

/* X(NAME, "api code", http_status, default message) */
#define FT_ERRORS(X)                                                              \
    X(OK, "ok", 200, "ok")                                                        \
    X(INVAL, "invalid_argument", 400, "invalid argument")                         \
    X(UNAUTHORIZED, "unauthorized", 401, "a valid access token is required")      \
    X(NOT_FOUND, "not_found", 404, "not found")                                   \
    X(METHOD_NOT_ALLOWED, "method_not_allowed", 405, "method not allowed")        \
    X(CONFLICT, "conflict", 409, "conflict")                                      \
    X(TOO_LARGE, "payload_too_large", 413, "payload too large")                   \
    X(URI_TOO_LONG, "uri_too_long", 414, "URI too long")                          \
    X(UNSUPPORTED_MEDIA, "unsupported_media_type", 415, "unsupported media type") \
    X(IDEMPOTENCY_KEY_REUSED, "idempotency_key_reused", 422,                      \
      "the Idempotency-Key was already used with another request")                \
    X(TOO_MANY, "too_many_requests", 429, "too many requests")                    \
    X(NOMEM, "out_of_memory", 500, "out of memory")                               \
    X(IO, "io_error", 500, "i/o error")                                           \
    X(NOSPACE, "insufficient_storage", 507,                                       \
      "the data directory is full (no space left, quota or file size limit)")     \
    X(DB, "database_error", 500, "database error")                                \
    X(NUMERIC, "non_finite", 500, "non-finite value")                             \
    X(CANCELED, "canceled", 500, "canceled")                                      \
    X(INTERNAL, "internal_error", 500, "internal error")

enum ft_err {
#define X(name, api, status, msg) FT_E##name,
    FT_ERRORS(X)
#undef X
        FT_E_COUNT
};
#define FT_OK FT_EOK

struct ft_error {
    enum ft_err code;
    char param[128];   /* offending field, "" when none */
    char message[512]; /* human-readable, complete sentence-ish */
};

/* The API error code ("invalid", "not_found", ...): lowercase name of code (static string). */
const char *ft_err_name(enum ft_err code);
/* Default message of code (static string). */
const char *ft_err_message(enum ft_err code);
/* HTTP status for code (200 for FT_OK). */
int ft_err_http_status(enum ft_err code);

/* Fill err (when non-NULL) with code, param (NULL = "") and a printf-style message; returns
 * code so callers can write `return ft_error_set(err, FT_EINVAL, "epochs", "must be > 0");`. */
enum ft_err ft_error_set(struct ft_error *err, enum ft_err code, const char *param, const char *fmt,
                         ...) __attribute__((format(printf, 4, 5)));

/* Make s valid UTF-8 in place (JSON strings must be): every byte that does not start a
 * complete, well-formed sequence (RFC 3629: no overlong forms, surrogates or code points above
 * U+10FFFF) becomes '?'. ft_error_set() applies it to param and message, which quote input
 * (a CSV field, a URL path) that may be any bytes or be cut in the middle of a character. */
void ft_utf8_sanitize(char *s);

/* Reset err to FT_OK with empty param and message. NULL is a no-op. */
void ft_error_clear(struct ft_error *err);

/* A violated invariant is a bug: abort with file and line. */
#define FT_ASSERT(cond)                                                                  \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                     \
        }                                                                                \
    } while (0)

#endif
