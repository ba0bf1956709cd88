/* transport.c — one HTTP exchange with finetunerd over the client's libcurl easy handle.
 *
 * The handle is reset before every request (connections stay cached, so a client reuses
 * its keep-alive connection) and every option is set again. The write callback looks at the
 * status once the headers are in: a 2xx body goes to the request's sink when it has one,
 * everything else into c->body, where an error answer is parsed as
 * {"error": {"code", "message", "param"}}. Nothing here prints. */
#include "transport.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define USER_AGENT "libfinetuner/0.1.0"
#define CONNECT_TIMEOUT_MS 10000L
#define LOW_SPEED_TIME_S 120L /* the server sends a log-stream keepalive every ~15 s */

struct xfer {
    ft_client *c;
    const struct ftc_request *rq;
    int status_known;
    int to_sink;
    int sink_rc; /* 1 = the sink ended the transfer, -1 = it failed */
    int nomem;
};

void ftc_error_clear(ft_client *c)
{
    c->code[0] = '\0';
    c->param[0] = '\0';
    c->has_param = 0;
    c->message[0] = '\0';
    c->http_status = 0;
    c->body_len = 0;
    if (c->body)
        c->body[0] = '\0';
}

int ftc_fail(ft_client *c, const char *code, const char *param, const char *fmt, ...)
{
    va_list ap;
    snprintf(c->code, sizeof c->code, "%s", code);
    c->has_param = param != NULL;
    snprintf(c->param, sizeof c->param, "%s", param ? param : "");
    va_start(ap, fmt);
    vsnprintf(c->message, sizeof c->message, fmt, ap);
    va_end(ap);
    return -1;
}

char *ftc_escape(ft_client *c, const char *name, const char *param)
{
    if (!name || !name[0]) {
        ftc_fail(c, "invalid_argument", param, "%s must be a non-empty name", param);
        return NULL;
    }
    char *e = curl_easy_escape(c->curl, name, 0);
    char *copy = e ? strdup(e) : NULL;
    curl_free(e);
    if (!copy)
        ftc_fail(c, "out_of_memory", NULL, "out of memory");
    return copy;
}

/* Append len bytes to c->body, keeping it NUL-terminated; -1 when out of memory. */
static int body_append(ft_client *c, const char *data, size_t len)
{
    if (c->body_len + len + 1 > c->body_cap) {
        size_t cap = c->body_cap ? c->body_cap : 4096;
        while (cap < c->body_len + len + 1)
            cap *= 2;
        char *p = realloc(c->body, cap);
        if (!p)
            return -1;
        c->body = p;
        c->body_cap = cap;
    }
    memcpy(c->body + c->body_len, data, len);
    c->body_len += len;
    c->body[c->body_len] = '\0';
    return 0;
}

static size_t on_write(char *data, size_t size, size_t nmemb, void *userdata)
{
    struct xfer *x = userdata;
    size_t len = size * nmemb;
    if (!x->status_known) {
        long status = 0;
        if (curl_easy_getinfo(x->c->curl, CURLINFO_RESPONSE_CODE, &status) != CURLE_OK)
            status = 0;
        x->to_sink = x->rq->sink && status >= 200 && status < 300;
        x->status_known = 1;
    }
    if (x->to_sink) {
        int rc = x->rq->sink(x->rq->sink_ctx, data, len);
        if (rc == 0)
            return len;
        x->sink_rc = rc;
        return len ? 0 : 1; /* anything but len aborts the transfer */
    }
    if (body_append(x->c, data, len) != 0) {
        x->nomem = 1;
        return len ? 0 : 1;
    }
    return len;
}

#define SETOPT(h, opt, val)                           \
    do {                                              \
        CURLcode rc_ = curl_easy_setopt(h, opt, val); \
        if (rc_ != CURLE_OK)                          \
            return rc_;                               \
    } while (0)

/* Method and body source of rq. */
static CURLcode set_body(CURL *h, const struct ftc_request *rq)
{
    if (rq->mime) {
        SETOPT(h, CURLOPT_MIMEPOST, rq->mime);
    } else if (rq->upload) {
        SETOPT(h, CURLOPT_UPLOAD, 1L);
        SETOPT(h, CURLOPT_READDATA, rq->upload);
        SETOPT(h, CURLOPT_INFILESIZE_LARGE, (curl_off_t)rq->upload_len);
    } else if (rq->body || strcmp(rq->method, "POST") == 0 || strcmp(rq->method, "PUT") == 0) {
        SETOPT(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(rq->body ? rq->body_len : 0));
        SETOPT(h, CURLOPT_POSTFIELDS, rq->body ? rq->body : "");
    } else {
        SETOPT(h, CURLOPT_HTTPGET, 1L);
    }
    if (strcmp(rq->method, "GET") != 0 && strcmp(rq->method, "POST") != 0)
        SETOPT(h, CURLOPT_CUSTOMREQUEST, rq->method);
    return CURLE_OK;
}

static CURLcode set_options(ft_client *c, const char *url, struct curl_slist *headers,
                            struct xfer *x)
{
    CURL *h = c->curl;
    SETOPT(h, CURLOPT_URL, url);
    SETOPT(h, CURLOPT_ERRORBUFFER, c->errbuf);
    SETOPT(h, CURLOPT_NOSIGNAL, 1L);
    SETOPT(h, CURLOPT_USERAGENT, USER_AGENT);
    SETOPT(h, CURLOPT_CONNECTTIMEOUT_MS, CONNECT_TIMEOUT_MS);
    SETOPT(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
    SETOPT(h, CURLOPT_LOW_SPEED_TIME, LOW_SPEED_TIME_S);
    SETOPT(h, CURLOPT_HTTPHEADER, headers);
    SETOPT(h, CURLOPT_WRITEFUNCTION, on_write);
    SETOPT(h, CURLOPT_WRITEDATA, x);
    return set_body(h, x->rq);
}

/* Request headers (new list; NULL when out of memory). */
static struct curl_slist *make_headers(const ft_client *c, const struct ftc_request *rq)
{
    char ct[128], auth[600];
    struct curl_slist *l = curl_slist_append(NULL, "Expect:");
    struct curl_slist *t = l ? curl_slist_append(l, "Accept: application/json") : NULL;
    if (t && rq->content_type) {
        snprintf(ct, sizeof ct, "Content-Type: %s", rq->content_type);
        t = curl_slist_append(l, ct);
    }
    if (t && c->token) {
        snprintf(auth, sizeof auth, "Authorization: token %s", c->token);
        t = curl_slist_append(l, auth);
    }
    if (!t) {
        curl_slist_free_all(l);
        return NULL;
    }
    return l;
}

/* Fill the last error from a non-2xx answer in c->body. */
static int http_error(ft_client *c, const char *method, const char *path)
{
    long status = c->http_status;
    json_t *root = json_loadb(c->body ? c->body : "", c->body_len, 0, NULL);
    json_t *e = json_object_get(root, "error");
    const char *code = json_string_value(json_object_get(e, "code"));
    const char *msg = json_string_value(json_object_get(e, "message"));
    const char *param = json_string_value(json_object_get(e, "param"));
    if (code && msg)
        ftc_fail(c, code, param, "%s", msg);
    else
        ftc_fail(c, "unexpected_response", NULL, "HTTP %ld from %s %s: %.200s", status, method,
                 path, c->body_len ? c->body : "(empty body)");
    json_decref(root);
    c->http_status = status;
    return -1;
}

/* Turn the outcome of curl_easy_perform into the return value and last error. */
static int finish(ft_client *c, const struct ftc_request *rq, const struct xfer *x, CURLcode rc)
{
    long status = 0;
    if (curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &status) != CURLE_OK)
        status = 0;
    if (x->sink_rc < 0) {
        c->http_status = status;
        return -1;
    }
    if (x->nomem)
        return ftc_fail(c, "out_of_memory", NULL, "out of memory reading the response");
    if (rc != CURLE_OK && !(x->sink_rc == 1 && rc == CURLE_WRITE_ERROR))
        return ftc_fail(c, "transport", NULL, "%s %s: %s", rq->method, rq->path,
                        c->errbuf[0] ? c->errbuf : curl_easy_strerror(rc));
    c->http_status = status;
    if (status >= 200 && status < 300)
        return 0;
    return http_error(c, rq->method, rq->path);
}

int ftc_perform(ft_client *c, const struct ftc_request *rq)
{
    struct xfer x = {.c = c, .rq = rq};
    size_t n = strlen(c->base) + strlen(rq->path) + 1;
    char *url = malloc(n);
    struct curl_slist *headers = make_headers(c, rq);
    ftc_error_clear(c);
    c->errbuf[0] = '\0';
    if (!url || !headers) {
        free(url);
        curl_slist_free_all(headers);
        return ftc_fail(c, "out_of_memory", NULL, "out of memory");
    }
    snprintf(url, n, "%s%s", c->base, rq->path);
    curl_easy_reset(c->curl);
    CURLcode rc = set_options(c, url, headers, &x);
    int ret;
    if (rc != CURLE_OK)
        ret =
            ftc_fail(c, "transport", NULL, "cannot set up the request: %s", curl_easy_strerror(rc));
    else
        ret = finish(c, rq, &x, curl_easy_perform(c->curl));
    /* the handle must not keep pointers into this request */
    curl_easy_reset(c->curl);
    curl_slist_free_all(headers);
    free(url);
    return ret;
}
