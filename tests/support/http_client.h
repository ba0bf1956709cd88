/* http_client.h — a tiny libcurl HTTP client for the end-to-end tests (tests/server/).
 *
 * One call, one request, one complete response in memory (body NUL-terminated). Transport
 * errors (connection refused, timeout) return -1 and leave status 0; HTTP error statuses are
 * normal responses. Not thread-safe with respect to curl_global_init (tests are
 * single-threaded). */
#ifndef FT_TEST_HTTP_CLIENT_H
#define FT_TEST_HTTP_CLIENT_H

#include <jansson.h>
#include <stddef.h>

struct th_response {
    long status; /* HTTP status, 0 after a transport error */
    char *body;  /* owned, NUL-terminated (len bytes before the NUL) */
    size_t len;
    char content_type[128]; /* Content-Type header, "" when absent */
    char allow[128];        /* Allow header, "" when absent */
    char error[256];        /* curl's message after a transport error */
};

/* method url with body[0..len) (body NULL = none) sent as content_type (NULL = none); the
 * whole exchange must end within timeout_s seconds (0 = 60). Fills out (free with
 * th_response_free). Returns 0, or -1 on a transport error (out->error says why). */
int th_request(const char *method, const char *url, const char *content_type, const void *body,
               size_t len, long timeout_s, struct th_response *out);

/* The same with extra request headers ("Name: value", NULL-terminated list, or NULL), e.g.
 * "Transfer-Encoding: chunked". */
int th_request_headers(const char *method, const char *url, const char *const *headers,
                       const char *content_type, const void *body, size_t len, long timeout_s,
                       struct th_response *out);

/* GET url (60 s timeout). */
int th_get(const char *url, struct th_response *out);
/* POST url with a JSON body (NUL-terminated string). */
int th_post_json(const char *url, const char *json, struct th_response *out);
/* PUT url with multipart/form-data file parts "images" and "labels" read from the two paths
 * (curl -F images=@... -F labels=@...). */
int th_put_idx_files(const char *url, const char *images_path, const char *labels_path,
                     struct th_response *out);

/* The body parsed as JSON: new reference (json_decref), NULL when it is not JSON. */
json_t *th_json(const struct th_response *r);

/* Free what r owns and zero it. NULL is a no-op. */
void th_response_free(struct th_response *r);

#endif
