/* finetuner.c — libfinetuner's public API over transport.c: client, runs, datasets.
 *
 * Each call clears the client's last error, builds a path with escaped names, performs one
 * request and turns the JSON answer into what the caller asked for. The run config of
 * ft_fit() is built with jansson from struct ft_fit_params (fit_config.c); unset fields are
 * left out so the server's normalised config shows its own defaults. A run handle is a name
 * pair plus the borrowed client; it holds no server state beyond the last status it saw. */
#include "finetuner.h"

#include "fit_config.h"
#include "sse.h"
#include "transport.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_URL "http://127.0.0.1:8910"
#define API_PREFIX "/api/v1"

struct ft_client_run {
    ft_client *c; /* borrowed */
    char *experiment;
    char *name;
    char status[FTC_STATUS_MAX];
};

/* ---- helpers ----------------------------------------------------------------------------- */

static char *dup_or_fail(ft_client *c, const char *s)
{
    char *d = strdup(s);
    if (!d)
        ftc_fail(c, "out_of_memory", NULL, "out of memory");
    return d;
}

/* Concatenate the NULL-terminated list of pieces (new string; NULL and "out_of_memory"). */
static char *join(ft_client *c, const char *first, ...)
{
    va_list ap;
    size_t n = 1;
    va_start(ap, first);
    for (const char *s = first; s; s = va_arg(ap, const char *))
        n += strlen(s);
    va_end(ap);
    char *out = malloc(n);
    if (!out) {
        ftc_fail(c, "out_of_memory", NULL, "out of memory");
        return NULL;
    }
    out[0] = '\0';
    va_start(ap, first);
    for (const char *s = first; s; s = va_arg(ap, const char *))
        strncat(out, s, n - strlen(out) - 1);
    va_end(ap);
    return out;
}

/* "/datasets/<name><suffix>" (new; NULL with the error set). */
static char *dataset_path(ft_client *c, const char *name, const char *suffix)
{
    char *e = ftc_escape(c, name, "name");
    char *p = e ? join(c, "/datasets/", e, suffix, NULL) : NULL;
    free(e);
    return p;
}

/* "/experiments/<exp>/runs[/<run>]<suffix>" (new; NULL with the error set). */
static char *run_path(ft_client *c, const char *exp, const char *run, const char *suffix)
{
    char *e = ftc_escape(c, exp, "experiment");
    char *r = e && run ? ftc_escape(c, run, "name") : NULL;
    char *p = NULL;
    if (e && (r || !run))
        p = join(c, "/experiments/", e, "/runs", r ? "/" : "", r ? r : "", suffix, NULL);
    free(e);
    free(r);
    return p;
}

/* Perform method on path (stolen) without a body. */
static int simple(ft_client *c, const char *method, char *path)
{
    if (!path)
        return -1;
    struct ftc_request rq = {.method = method, .path = path};
    int rc = ftc_perform(c, &rq);
    free(path);
    return rc;
}

/* Perform method on path (stolen); on success *out = a copy of the body (new). */
static int fetch_text(ft_client *c, const char *method, char *path, char **out)
{
    *out = NULL;
    if (simple(c, method, path) != 0)
        return -1;
    *out = dup_or_fail(c, c->body ? c->body : "");
    return *out ? 0 : -1;
}

/* The last body as a JSON object (new); NULL with "unexpected_response". */
static json_t *body_object(ft_client *c)
{
    json_error_t jerr;
    json_t *o = json_loadb(c->body ? c->body : "", c->body_len, 0, &jerr);
    if (json_is_object(o))
        return o;
    json_decref(o);
    ftc_fail(c, "unexpected_response", NULL, "the server's answer is not a JSON object: %s",
             jerr.text);
    return NULL;
}

static void set_status(ft_run *run, const char *status)
{
    snprintf(run->status, sizeof run->status, "%s", status ? status : "");
}

/* ---- client ------------------------------------------------------------------------------ */

/* base_url without trailing "/" and "/api/v1", plus "/api/v1" (new). */
static char *api_base(const char *base_url)
{
    size_t n = strlen(base_url), pl = strlen(API_PREFIX);
    while (n && base_url[n - 1] == '/')
        n--;
    if (n >= pl && strncmp(base_url + n - pl, API_PREFIX, pl) == 0)
        n -= pl;
    char *b = malloc(n + pl + 1);
    if (!b)
        return NULL;
    memcpy(b, base_url, n);
    memcpy(b + n, API_PREFIX, pl + 1);
    return b;
}

ft_client *ft_client_new(const char *base_url)
{
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return NULL;
    ft_client *c = calloc(1, sizeof *c);
    if (c)
        c->base = api_base(base_url ? base_url : DEFAULT_URL);
    if (c && c->base)
        c->curl = curl_easy_init();
    if (c && c->curl)
        return c;
    if (c)
        free(c->base);
    free(c);
    curl_global_cleanup();
    return NULL;
}

void ft_client_free(ft_client *c)
{
    if (!c)
        return;
    curl_easy_cleanup(c->curl);
    free(c->base);
    free(c->token);
    free(c->body);
    free(c);
    curl_global_cleanup();
}

int ft_client_set_token(ft_client *c, const char *token)
{
    ftc_error_clear(c);
    if (token && token[0]) {
        size_t n = strlen(token);
        for (size_t i = 0; i < n; i++)
            if (token[i] <= ' ' || token[i] > '~')
                return ftc_fail(c, "invalid_argument", "token",
                                "a token is printable ASCII without spaces (character %zu is not)",
                                i + 1);
        if (n > 512)
            return ftc_fail(c, "invalid_argument", "token", "a token is at most 512 characters");
    }
    char *copy = token && token[0] ? strdup(token) : NULL;
    if (token && token[0] && !copy)
        return ftc_fail(c, "out_of_memory", NULL, "out of memory");
    free(c->token);
    c->token = copy;
    return 0;
}

const char *ft_client_error_code(const ft_client *c)
{
    return c->code;
}

const char *ft_client_error_message(const ft_client *c)
{
    return c->message;
}

const char *ft_client_error_param(const ft_client *c)
{
    return c->has_param ? c->param : NULL;
}

long ft_client_http_status(const ft_client *c)
{
    return c->http_status;
}

const char *ft_client_last_response(const ft_client *c)
{
    return c->body ? c->body : "";
}

int ft_client_health(ft_client *c, char **version)
{
    if (version)
        *version = NULL;
    if (simple(c, "GET", join(c, "/health", NULL)) != 0)
        return -1;
    json_t *o = body_object(c);
    const char *v = json_string_value(json_object_get(o, "version"));
    int rc = 0;
    if (!o)
        rc = -1;
    else if (version)
        rc = (*version = dup_or_fail(c, v ? v : "")) ? 0 : -1;
    json_decref(o);
    return rc;
}

/* ---- runs -------------------------------------------------------------------------------- */

/* A run handle from a run object in the last body; exp is the fallback experiment name. */
static ft_run *run_from_body(ft_client *c, const char *exp)
{
    json_t *o = body_object(c);
    if (!o)
        return NULL;
    const char *name = json_string_value(json_object_get(o, "name"));
    const char *e = json_string_value(json_object_get(o, "experiment"));
    ft_run *run = NULL;
    if (!name)
        ftc_fail(c, "unexpected_response", NULL, "the run object has no name");
    else
        run = calloc(1, sizeof *run);
    if (run) {
        run->c = c;
        run->name = strdup(name);
        run->experiment = strdup(e ? e : exp);
        set_status(run, json_string_value(json_object_get(o, "status")));
    }
    if (run && (!run->name || !run->experiment)) {
        ft_run_free(run);
        run = NULL;
    }
    if (name && !run)
        ftc_fail(c, "out_of_memory", NULL, "out of memory");
    json_decref(o);
    return run;
}

int ft_fit(ft_client *c, const struct ft_fit_params *p, ft_run **out)
{
    const char *exp = p->experiment_name ? p->experiment_name : "default";
    *out = NULL;
    ftc_error_clear(c);
    char *path = run_path(c, exp, NULL, "");
    char *body = path ? ftc_fit_body(c, p) : NULL;
    int rc = -1;
    if (body) {
        struct ftc_request rq = {.method = "POST",
                                 .path = path,
                                 .content_type = "application/json",
                                 .body = body,
                                 .body_len = strlen(body)};
        rc = ftc_perform(c, &rq);
    }
    if (rc == 0)
        *out = run_from_body(c, exp);
    free(body);
    free(path);
    return *out ? 0 : -1;
}

int ft_get_run(ft_client *c, const char *experiment, const char *name, ft_run **out)
{
    *out = NULL;
    ftc_error_clear(c);
    if (simple(c, "GET", run_path(c, experiment, name, "")) != 0)
        return -1;
    *out = run_from_body(c, experiment);
    return *out ? 0 : -1;
}

void ft_run_free(ft_run *run)
{
    if (!run)
        return;
    free(run->experiment);
    free(run->name);
    free(run);
}

const char *ft_run_name(const ft_run *run)
{
    return run->name;
}

const char *ft_run_experiment(const ft_run *run)
{
    return run->experiment;
}

ft_client *ft_run_client(const ft_run *run)
{
    return run->c;
}

const char *ft_run_last_status(const ft_run *run)
{
    return run->status;
}

int ft_run_status_is_terminal(const char *status)
{
    return status && (strcmp(status, "FINISHED") == 0 || strcmp(status, "FAILED") == 0 ||
                      strcmp(status, "CANCELED") == 0);
}

int ft_run_status(ft_run *run, char status[FTC_STATUS_MAX], char **details)
{
    ft_client *c = run->c;
    if (details)
        *details = NULL;
    ftc_error_clear(c);
    if (simple(c, "GET", run_path(c, run->experiment, run->name, "/status")) != 0)
        return -1;
    json_t *o = body_object(c);
    const char *s = json_string_value(json_object_get(o, "status"));
    const char *d = json_string_value(json_object_get(o, "details"));
    int rc = 0;
    if (!s)
        rc = o ? ftc_fail(c, "unexpected_response", NULL, "the status answer has no status") : -1;
    if (rc == 0) {
        set_status(run, s);
        if (status)
            snprintf(status, FTC_STATUS_MAX, "%s", s);
        if (details && d)
            rc = (*details = dup_or_fail(c, d)) ? 0 : -1;
    }
    json_decref(o);
    return rc;
}

int ft_run_logs(ft_run *run, char **text)
{
    ftc_error_clear(run->c);
    return fetch_text(run->c, "GET", run_path(run->c, run->experiment, run->name, "/logs"), text);
}

int ft_run_metrics(ft_run *run, char **json)
{
    ftc_error_clear(run->c);
    return fetch_text(run->c, "GET", run_path(run->c, run->experiment, run->name, "/metrics"),
                      json);
}

int ft_run_examples(ft_run *run, char **json)
{
    ftc_error_clear(run->c);
    return fetch_text(run->c, "GET", run_path(run->c, run->experiment, run->name, "/examples"),
                      json);
}

int ft_run_cancel(ft_run *run)
{
    ft_client *c = run->c;
    ftc_error_clear(c);
    if (simple(c, "POST", run_path(c, run->experiment, run->name, "/cancel")) != 0)
        return -1;
    json_t *o = body_object(c);
    if (o)
        set_status(run, json_string_value(json_object_get(o, "status")));
    json_decref(o);
    return o ? 0 : -1;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

int ft_run_wait(ft_run *run, int poll_ms, char status[FTC_STATUS_MAX])
{
    char s[FTC_STATUS_MAX];
    for (;;) {
        if (ft_run_status(run, s, NULL) != 0)
            return -1;
        if (ft_run_status_is_terminal(s))
            break;
        sleep_ms(poll_ms > 0 ? poll_ms : 1000);
    }
    if (status)
        snprintf(status, FTC_STATUS_MAX, "%s", s);
    return 0;
}

int ft_list_runs(ft_client *c, const char *experiment, int limit, int offset, char **json)
{
    char q[64] = "";
    *json = NULL;
    ftc_error_clear(c);
    if (limit > 0)
        snprintf(q, sizeof q, "?limit=%d&offset=%d", limit, offset > 0 ? offset : 0);
    else if (offset > 0)
        snprintf(q, sizeof q, "?offset=%d", offset);
    return fetch_text(c, "GET", run_path(c, experiment, NULL, q), json);
}

int ft_delete_run(ft_client *c, const char *experiment, const char *name)
{
    ftc_error_clear(c);
    return simple(c, "DELETE", run_path(c, experiment, name, ""));
}

/* ---- log stream ------------------------------------------------------------------------- */

struct stream {
    ft_run *run;
    void (*on_line)(const char *line, void *ctx);
    void *ctx;
    struct ftc_sse sse;
    int ended;
};

static int on_event(void *ctx, const char *event, const char *data)
{
    struct stream *s = ctx;
    if (strcmp(event, "end") == 0) {
        set_status(s->run, data);
        s->ended = 1;
        return 1;
    }
    if (strcmp(event, "message") == 0 && s->on_line)
        s->on_line(data, s->ctx);
    return 0;
}

static int stream_sink(void *ctx, const char *data, size_t len)
{
    struct stream *s = ctx;
    int rc = ftc_sse_feed(&s->sse, data, len);
    if (rc < 0)
        return ftc_fail(s->run->c, "out_of_memory", NULL, "out of memory reading the log stream");
    return rc;
}

int ft_run_stream_logs(ft_run *run, void (*on_line)(const char *line, void *ctx), void *ctx)
{
    ft_client *c = run->c;
    struct stream s = {.run = run, .on_line = on_line, .ctx = ctx};
    ftc_error_clear(c);
    char *path = run_path(c, run->experiment, run->name, "/logstream");
    if (!path)
        return -1;
    ftc_sse_init(&s.sse, on_event, &s);
    struct ftc_request rq = {.method = "GET", .path = path, .sink = stream_sink, .sink_ctx = &s};
    int rc = ftc_perform(c, &rq);
    ftc_sse_free(&s.sse);
    free(path);
    if (rc == 0 && !s.ended)
        rc = ftc_fail(c, "unexpected_response", NULL,
                      "the log stream of run '%s' closed before its end event", run->name);
    return rc;
}

/* ---- artifact ---------------------------------------------------------------------------- */

struct file_sink {
    ft_client *c;
    FILE *f;
    const char *path;
};

static int write_sink(void *ctx, const char *data, size_t len)
{
    struct file_sink *s = ctx;
    if (fwrite(data, 1, len, s->f) == len)
        return 0;
    return ftc_fail(s->c, "io_error", "path", "cannot write %s: %s", s->path, strerror(errno));
}

/* Close s->f and move tmp to path; -1 with "io_error" (tmp removed) on failure. */
static int commit_file(struct file_sink *s, const char *tmp, const char *path, int rc)
{
    if (fclose(s->f) != 0 && rc == 0)
        rc = ftc_fail(s->c, "io_error", "path", "cannot write %s: %s", tmp, strerror(errno));
    if (rc == 0 && rename(tmp, path) != 0)
        rc = ftc_fail(s->c, "io_error", "path", "cannot rename %s to %s: %s", tmp, path,
                      strerror(errno));
    if (rc != 0)
        unlink(tmp);
    return rc;
}

int ft_run_save_artifact(ft_run *run, const char *path)
{
    ft_client *c = run->c;
    ftc_error_clear(c);
    if (!path || !path[0])
        return ftc_fail(c, "invalid_argument", "path", "path must be a file name");
    char *rpath = run_path(c, run->experiment, run->name, "/artifact");
    char *tmp = rpath ? join(c, path, ".tmp", NULL) : NULL;
    struct file_sink s = {.c = c, .path = tmp, .f = tmp ? fopen(tmp, "wb") : NULL};
    int rc = -1;
    if (tmp && !s.f)
        ftc_fail(c, "io_error", "path", "cannot create %s: %s", tmp, strerror(errno));
    if (s.f) {
        struct ftc_request rq = {
            .method = "GET", .path = rpath, .sink = write_sink, .sink_ctx = &s};
        rc = commit_file(&s, tmp, path, ftc_perform(c, &rq));
    }
    free(tmp);
    free(rpath);
    return rc;
}

/* ---- datasets ---------------------------------------------------------------------------- */

/* fopen path for reading with its size; NULL with "io_error" (param). */
static FILE *open_input(ft_client *c, const char *path, const char *param, long long *size)
{
    struct stat st;
    FILE *f = path ? fopen(path, "rb") : NULL;
    if (f && fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode)) {
        *size = (long long)st.st_size;
        return f;
    }
    if (f)
        fclose(f);
    ftc_fail(c, "io_error", param, "cannot read %s: %s", path ? path : "(null)",
             f ? "not a regular file" : strerror(errno));
    return NULL;
}

int ft_dataset_push_csv(ft_client *c, const char *name, const char *path)
{
    long long size = 0;
    ftc_error_clear(c);
    char *dpath = dataset_path(c, name, "?format=csv");
    FILE *f = dpath ? open_input(c, path, "path", &size) : NULL;
    int rc = -1;
    if (f) {
        struct ftc_request rq = {.method = "PUT",
                                 .path = dpath,
                                 .content_type = "text/csv",
                                 .upload = f,
                                 .upload_len = size};
        rc = ftc_perform(c, &rq);
        fclose(f);
    }
    free(dpath);
    return rc;
}

/* Add the file part name=@path to mime; -1 with the error set. */
static int add_file_part(ft_client *c, curl_mime *mime, const char *name, const char *path,
                         const char *param)
{
    long long size;
    FILE *f = open_input(c, path, param, &size);
    if (!f)
        return -1;
    fclose(f);
    curl_mimepart *part = curl_mime_addpart(mime);
    if (!part || curl_mime_name(part, name) != CURLE_OK ||
        curl_mime_filedata(part, path) != CURLE_OK ||
        curl_mime_type(part, "application/octet-stream") != CURLE_OK)
        return ftc_fail(c, "out_of_memory", NULL, "cannot build the multipart body");
    return 0;
}

int ft_dataset_push_idx(ft_client *c, const char *name, const char *images_path,
                        const char *labels_path)
{
    ftc_error_clear(c);
    char *dpath = dataset_path(c, name, "?format=idx");
    curl_mime *mime = dpath ? curl_mime_init(c->curl) : NULL;
    int rc = -1;
    if (dpath && !mime)
        ftc_fail(c, "out_of_memory", NULL, "out of memory");
    if (mime && add_file_part(c, mime, "images", images_path, "images_path") == 0 &&
        add_file_part(c, mime, "labels", labels_path, "labels_path") == 0) {
        struct ftc_request rq = {.method = "PUT", .path = dpath, .mime = mime};
        rc = ftc_perform(c, &rq);
    }
    curl_mime_free(mime);
    free(dpath);
    return rc;
}

int ft_dataset_list(ft_client *c, char **json)
{
    ftc_error_clear(c);
    return fetch_text(c, "GET", join(c, "/datasets", NULL), json);
}

int ft_dataset_get(ft_client *c, const char *name, char **json)
{
    ftc_error_clear(c);
    return fetch_text(c, "GET", dataset_path(c, name, ""), json);
}

int ft_dataset_delete(ft_client *c, const char *name)
{
    ftc_error_clear(c);
    return simple(c, "DELETE", dataset_path(c, name, ""));
}
