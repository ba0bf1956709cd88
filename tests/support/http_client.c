/* http_client.c — libcurl easy-API client for the end-to-end tests (see http_client.h).
 *
 * Each request uses a fresh easy handle: the body is collected into a growing buffer and the
 * Content-Type and Allow headers are copied out of the header callback. */
#include "support/http_client.h"

#include <ctype.h>
#include <curl/curl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static size_t on_body(char *data, size_t size, size_t nmemb, void *ctx)
{
    struct th_response *r = ctx;
    size_t n = size * nmemb;
    char *nb = realloc(r->body, r->len + n + 1);
    if (!nb)
        return 0; /* curl reports a write error */
    memcpy(nb + r->len, data, n);
    r->body = nb;
    r->len += n;
    r->body[r->len] = '\0';
    return n;
}

/* Copy the value of header line "Name: value\r\n" into dst when its name is name. */
static void copy_header(const char *line, size_t n, const char *name, char *dst, size_t cap)
{
    size_t k = strlen(name);
    if (n <= k || strncasecmp(line, name, k) != 0 || line[k] != ':')
        return;
    const char *v = line + k + 1;
    const char *end = line + n;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && isspace((unsigned char)end[-1]))
        end--;
    snprintf(dst, cap, "%.*s", (int)(end - v), v);
}

static size_t on_header(char *line, size_t size, size_t nmemb, void *ctx)
{
    struct th_response *r = ctx;
    size_t n = size * nmemb;
    copy_header(line, n, "Content-Type", r->content_type, sizeof r->content_type);
    copy_header(line, n, "Allow", r->allow, sizeof r->allow);
    return n;
}

/* Run a prepared handle (headers and mime may be NULL; both are freed here). */
static int perform(CURL *h, struct curl_slist *headers, curl_mime *mime, long timeout_s,
                   struct th_response *out)
{
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, out);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, timeout_s > 0 ? timeout_s : 60L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_NOPROXY, "*");
    headers = curl_slist_append(headers, "Expect:");
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    CURLcode rc = curl_easy_perform(h);
    if (rc == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &out->status);
    else
        snprintf(out->error, sizeof out->error, "%s", curl_easy_strerror(rc));
    if (!out->body)
        out->body = calloc(1, 1);
    curl_slist_free_all(headers);
    curl_mime_free(mime);
    curl_easy_cleanup(h);
    return rc == CURLE_OK ? 0 : -1;
}

int th_request(const char *method, const char *url, const char *content_type, const void *body,
               size_t len, long timeout_s, struct th_response *out)
{
    return th_request_headers(method, url, NULL, content_type, body, len, timeout_s, out);
}

int th_request_headers(const char *method, const char *url, const char *const *extra,
                       const char *content_type, const void *body, size_t len, long timeout_s,
                       struct th_response *out)
{
    struct curl_slist *headers = NULL;
    memset(out, 0, sizeof *out);
    CURL *h = curl_easy_init();
    if (!h) {
        snprintf(out->error, sizeof out->error, "curl_easy_init failed");
        return -1;
    }
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    if (strcmp(method, "HEAD") == 0)
        curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    if (body) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    }
    if (content_type) {
        char line[160];
        snprintf(line, sizeof line, "Content-Type: %s", content_type);
        headers = curl_slist_append(headers, line);
    }
    for (int i = 0; extra && extra[i]; i++)
        headers = curl_slist_append(headers, extra[i]);
    return perform(h, headers, NULL, timeout_s, out);
}

int th_get(const char *url, struct th_response *out)
{
    return th_request("GET", url, NULL, NULL, 0, 60, out);
}

int th_post_json(const char *url, const char *json, struct th_response *out)
{
    return th_request("POST", url, "application/json", json, strlen(json), 60, out);
}

int th_put_idx_files(const char *url, const char *images_path, const char *labels_path,
                     struct th_response *out)
{
    memset(out, 0, sizeof *out);
    CURL *h = curl_easy_init();
    if (!h) {
        snprintf(out->error, sizeof out->error, "curl_easy_init failed");
        return -1;
    }
    curl_mime *mime = curl_mime_init(h);
    curl_mimepart *p = curl_mime_addpart(mime);
    curl_mime_name(p, "images");
    curl_mime_filedata(p, images_path);
    p = curl_mime_addpart(mime);
    curl_mime_name(p, "labels");
    curl_mime_filedata(p, labels_path);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_MIMEPOST, mime);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, "PUT");
    return perform(h, NULL, mime, 60, out);
}

json_t *th_json(const struct th_response *r)
{
    if (!r->body)
        return NULL;
    return json_loadb(r->body, r->len, 0, NULL);
}

void th_response_free(struct th_response *r)
{
    if (!r)
        return;
    free(r->body);
    memset(r, 0, sizeof *r);
}
