/* http.h — the request/response structs the API handlers see, and the libmicrohttpd glue.
 *
 * The glue (http.c) reads a request fully (body or multipart parts, with a size limit that
 * turns into 413), calls ft_api_handle() and turns the response into an MHD response: a
 * buffer, a file (artifact), or a server-sent-events stream of a run's log. Tests call
 * ft_api_handle() in-process with hand-built requests. */
#ifndef FT_HTTP_H
#define FT_HTTP_H

#include <stddef.h>
#include <stdint.h>

#define FT_HTTP_MAX_ARGS 16
#define FT_HTTP_MAX_PARTS 4

struct ft_http_part {
    char name[64];
    char *data; /* owned */
    size_t len, cap;
};

struct ft_http_request {
    const char *method;          /* "GET", ... (borrowed) */
    const char *path;            /* URL path, e.g. "/api/v1/health" (borrowed) */
    const char *content_type;    /* NULL when absent (borrowed) */
    const char *authorization;   /* Authorization header, NULL when absent (borrowed) */
    const char *idempotency_key; /* Idempotency-Key header, NULL when absent (borrowed) */
    char *body;                  /* raw body (owned by the request), NUL-terminated */
    size_t body_len;
    int num_args;
    const char *arg_key[FT_HTTP_MAX_ARGS]; /* query arguments (borrowed) */
    const char *arg_val[FT_HTTP_MAX_ARGS];
    int num_parts; /* multipart/form-data file and value parts */
    struct ft_http_part parts[FT_HTTP_MAX_PARTS];
};

enum ft_http_body_kind { FT_BODY_BUFFER, FT_BODY_FILE, FT_BODY_LOGSTREAM };

struct ft_http_response {
    int status;
    const char *content_type; /* static string */
    enum ft_http_body_kind kind;
    char *body; /* FT_BODY_BUFFER: owned, malloc'd */
    size_t body_len;
    char *file_path; /* FT_BODY_FILE: owned */
    int64_t run_id;  /* FT_BODY_LOGSTREAM: the run whose log is streamed */
    char allow[64];  /* Allow header for 405 */
    int replayed;    /* 1: the stored answer of an Idempotency-Key (Idempotent-Replayed) */
};

/* Value of query argument key, or NULL (borrowed). */
const char *ft_http_arg(const struct ft_http_request *req, const char *key);
/* Part named name, or NULL (borrowed). */
const struct ft_http_part *ft_http_part(const struct ft_http_request *req, const char *name);
/* Free what the request and response own (not the structs). */
void ft_http_request_clear(struct ft_http_request *req);
void ft_http_response_clear(struct ft_http_response *resp);

struct ft_api;
typedef struct ft_http_server ft_http_server;

/* Connection limits (server/config.h has the flags and their defaults). */
struct ft_http_limits {
    size_t max_upload;         /* bytes of a dataset upload (413 beyond); JSON bodies: 1 MiB */
    unsigned threads;          /* threads serving connections (MHD's pool, an epoll loop each) */
    unsigned max_connections;  /* open connections at once */
    unsigned per_ip;           /* open connections from one client address; more are closed
                                * at accept */
    unsigned idle_timeout_s;   /* a connection silent this long is closed */
    unsigned header_timeout_s; /* a connection whose request line and headers are not complete
                                * this long after it opened (or after its previous request
                                * ended) is shut down, however slowly it keeps sending: a
                                * slow-loris client cannot keep its place. 0 = no deadline */
};

/* Start listening on host:port (a pool of lim->threads threads) with the limits lim (copied). NULL
 * on failure (logged). */
ft_http_server *ft_http_start(struct ft_api *api, const char *host, int port,
                              const struct ft_http_limits *lim);
/* The port actually bound (for --port 0). */
int ft_http_port(const ft_http_server *srv);
/* Stop accepting, close connections, free. NULL is a no-op. */
void ft_http_stop(ft_http_server *srv);

#endif
