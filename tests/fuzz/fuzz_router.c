/* fuzz_router.c — the REST API's router and handlers in-process (ft_api_handle), as the HTTP
 * glue calls them, over a real store in a temporary directory.
 *
 * Input, line by line: method, path, query string ("a=b&c=d"), Content-Type, Authorization,
 * Idempotency-Key (an empty line = no such header), then the body. With a multipart/form-data
 * Content-Type the body becomes the parts instead (as server/http.c does): "NAME\nDATA" pieces
 * separated by "\n--\n", at most FT_HTTP_MAX_PARTS.
 *
 * The store is opened once with a baseline the handlers can go deep on: datasets "train" and
 * "eval" (CSV, 2 columns, 2 labels), "img" (IDX, 2x2 images), experiment "exp" with a
 * FINISHED run "done" (artifact, log, metrics, a checkpoint) and a CREATED run "r1". Inputs
 * may add datasets, experiments and runs; every RESET_EVERY inputs the store is thrown away
 * and rebuilt, so it never grows without bound (a crash that depends on an earlier input's
 * state still reproduces alone in most cases: the baseline is what it acts on).
 *
 * Checked for every response: a status in 200..499 (no memory or disk runs out here, so a 5xx
 * is a bug), and a JSON body with exactly {"error": {"code", "message", "param"}} for every
 * error. */
#define _XOPEN_SOURCE 700 /* nftw */

#include "api.h"
#include "http.h"
#include "log.h"
#include "safetensors.h"
#include "store.h"

#include "fuzz_common.h"

#include <jansson.h>
#include <sys/stat.h>

#define RESET_EVERY 2000

static struct {
    char dir[256];
    ft_store *store;
    struct ft_api api;
    long inputs;
} F;

/* One in-process request with a NUL-terminated body (NULL = none); returns the status. */
static int call(const char *method, const char *path, const char *ctype, const char *body,
                const struct ft_http_part *parts, int nparts)
{
    struct ft_http_request req = {0};
    struct ft_http_response resp = {0};
    req.method = method;
    req.path = path;
    req.content_type = ctype;
    if (body) {
        req.body = strdup(body);
        req.body_len = strlen(body);
    }
    for (int i = 0; i < nparts; i++) {
        req.parts[i] = parts[i];
        req.parts[i].data = malloc(parts[i].len + 1);
        FZ_CHECK(req.parts[i].data);
        memcpy(req.parts[i].data, parts[i].data, parts[i].len);
        req.parts[i].data[parts[i].len] = '\0';
    }
    req.num_parts = nparts;
    ft_api_handle(&F.api, &req, &resp);
    int status = resp.status;
    if (status >= 300)
        fprintf(stderr, "baseline: %s %s -> %d %.*s\n", method, path, status, (int)resp.body_len,
                resp.body);
    ft_http_request_clear(&req);
    ft_http_response_clear(&resp);
    return status;
}

/* A 2x2 IDX image file of 4 images and its labels (0, 1, 0, 1). */
static void put_idx_dataset(void)
{
    static char images[16 + 16] = {0, 0, 8, 3, 0, 0, 0, 4, 0, 0, 0, 2, 0, 0, 0, 2};
    static char labels[8 + 4] = {0, 0, 8, 1, 0, 0, 0, 4, 0, 1, 0, 1};
    for (int i = 0; i < 16; i++)
        images[16 + i] = (char)(i * 16);
    struct ft_http_part parts[2] = {{.name = "images", .data = images, .len = sizeof images},
                                    {.name = "labels", .data = labels, .len = sizeof labels}};
    FZ_CHECK(call("PUT", "/api/v1/datasets/img", "multipart/form-data; boundary=x", NULL, parts,
                  2) == 201);
}

/* Make run "done" FINISHED with an artifact, a log line, metrics and one checkpoint. */
static void finish_run(void)
{
    struct ft_error err;
    int64_t id;
    char *text = NULL;
    FZ_CHECK(ft_store_run_claim_next(F.store, &id, &err) == FT_OK);
    FZ_CHECK(ft_store_run_config(F.store, id, &text, &err) == FT_OK);
    json_t *config = json_loads(text, 0, NULL);
    char *model = json_dumps(json_object_get(config, "model"), JSON_COMPACT);
    json_t *md = json_pack("{s:s}", "model_config", model);
    char *dir = ft_store_run_dir(F.store, id), *path = ft_store_artifact_path(F.store, id);
    char ckpt[1200];
    float w[2] = {1, 2};
    struct ft_tensor_view t = {.name = "w", .dtype = "F32", .ndim = 1, .shape = {2}, .data = w};
    snprintf(ckpt, sizeof ckpt, "%s/checkpoints", dir);
    mkdir(dir, 0755);
    mkdir(ckpt, 0755);
    FZ_CHECK(ft_safetensors_write(path, &t, 1, md, &err) == FT_OK);
    snprintf(ckpt, sizeof ckpt, "%s/checkpoints/epoch-1.safetensors", dir);
    FZ_CHECK(ft_safetensors_write(ckpt, &t, 1, md, &err) == FT_OK);
    ft_store_log_append(F.store, id, "Epoch 1/1");
    json_t *m = json_pack("{s:f}", "train_loss", 0.5);
    ft_store_metrics_put(F.store, id, "epoch", 1, m);
    FZ_CHECK(ft_store_run_finish(F.store, id, "FINISHED", NULL) == FT_OK);
    json_decref(m);
    json_decref(md);
    json_decref(config);
    free(model);
    free(text);
    free(dir);
    free(path);
}

static void baseline(void)
{
    static const char csv[] = "f1,f2,label\n0.1,0.2,a\n0.3,0.1,b\n0.2,0.2,a\n0.4,0.3,b\n"
                              "0.5,0.1,a\n0.1,0.9,b\n0.7,0.2,a\n0.3,0.3,b\n";
    static const char run[] =
        "{\"name\": \"%s\", \"config\": {\"model\": {\"name\": \"mlp\", \"options\": "
        "{\"hidden_sizes\": [4]}}, \"data\": {\"train_data\": \"train\", \"eval_data\": "
        "\"eval\"}, \"hyper_parameters\": {\"epochs\": 1, \"batch_size\": 8, \"loss\": "
        "\"TripletMarginLoss\"}, \"callbacks\": [{\"name\": \"EvaluationCallback\", \"options\": "
        "{\"query_data\": \"eval\"}}]}}";
    char body[1024];
    FZ_CHECK(call("PUT", "/api/v1/datasets/train", "text/csv", csv, NULL, 0) == 201);
    FZ_CHECK(call("PUT", "/api/v1/datasets/eval", "text/csv", csv, NULL, 0) == 201);
    put_idx_dataset();
    FZ_CHECK(call("POST", "/api/v1/experiments", "application/json", "{\"name\": \"exp\"}", NULL,
                  0) == 201);
    snprintf(body, sizeof body, run, "done");
    FZ_CHECK(call("POST", "/api/v1/experiments/exp/runs", "application/json", body, NULL, 0) ==
             201);
    finish_run();
    snprintf(body, sizeof body, run, "r1");
    FZ_CHECK(call("POST", "/api/v1/experiments/exp/runs", "application/json", body, NULL, 0) ==
             201);
}

static void store_open(void)
{
    struct ft_error err;
    struct stat st;
    const char *base = stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) ? "/dev/shm" : "/tmp";
    snprintf(F.dir, sizeof F.dir, "%s/ft-fuzz-router-XXXXXX", base);
    FZ_CHECK(mkdtemp(F.dir));
    FZ_CHECK(ft_store_open(F.dir, &F.store, &err) == FT_OK);
    F.api.store = F.store;
    F.api.max_upload = 1u << 20;
    F.api.max_dataset = 64u << 20;
    baseline();
}

static void store_close(void)
{
    ft_store_close(F.store);
    F.store = NULL;
    fz_rm_tree(F.dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    ft_log_threshold = FT_LOG_ERROR + 1; /* quiet: the handlers log every upload */
    store_open();
    atexit(store_close);
    return 0;
}

/* Split the multipart body into req's parts (see the file comment). */
static void carve_parts(struct fz_input *in, struct ft_http_request *req)
{
    while (in->n && req->num_parts < FT_HTTP_MAX_PARTS) {
        struct ft_http_part *p = &req->parts[req->num_parts++];
        fz_take_line(in, p->name, sizeof p->name);
        const uint8_t *end = fz_find(in->p, in->n, "\n--\n", 4);
        size_t len = end ? (size_t)(end - in->p) : in->n;
        p->data = malloc(len + 1);
        FZ_CHECK(p->data);
        memcpy(p->data, in->p, len);
        p->data[len] = '\0';
        p->len = p->cap = len;
        in->p += len + (end ? 4 : 0);
        in->n -= len + (end ? 4 : 0);
    }
}

/* Split "a=b&c=d" (in place) into req's arguments. */
static void carve_query(char *qs, struct ft_http_request *req)
{
    while (*qs && req->num_args < FT_HTTP_MAX_ARGS) {
        char *amp = strchr(qs, '&');
        if (amp)
            *amp = '\0';
        char *eq = strchr(qs, '=');
        if (eq)
            *eq = '\0';
        req->arg_key[req->num_args] = qs;
        req->arg_val[req->num_args++] = eq ? eq + 1 : "";
        if (!amp)
            break;
        qs = amp + 1;
    }
}

static void check_response(const struct ft_http_response *resp)
{
    FZ_CHECK(resp->status >= 200 && resp->status <= 599);
    if (resp->kind == FT_BODY_FILE)
        FZ_CHECK(resp->status == 200 && resp->file_path);
    if (resp->kind != FT_BODY_BUFFER)
        return;
    FZ_CHECK(resp->body && resp->content_type && strlen(resp->body) == resp->body_len);
    if (strcmp(resp->content_type, "application/json") != 0)
        return;
    json_t *o = json_loadb(resp->body, resp->body_len, 0, NULL);
    FZ_CHECK(o);
    if (resp->status >= 400) {
        json_t *e = json_object_get(o, "error");
        FZ_CHECK(json_object_size(o) == 1 && json_object_size(e) == 3);
        FZ_CHECK(json_string_value(json_object_get(e, "code")));
        FZ_CHECK(json_string_length(json_object_get(e, "message")) > 0);
        if (resp->status >= 500)
            fprintf(stderr, "%d: %s\n", resp->status, resp->body);
        FZ_CHECK(resp->status < 500); /* nothing here runs out of memory or fails a write */
    }
    json_decref(o);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fz_input in = {data, size};
    struct ft_http_request req = {0};
    struct ft_http_response resp = {0};
    char method[32], path[2048], query[1024], ctype[256], auth[256], key[256];
    if (++F.inputs % RESET_EVERY == 0) {
        store_close();
        store_open();
    }
    fz_take_line(&in, method, sizeof method);
    fz_take_line(&in, path, sizeof path);
    fz_take_line(&in, query, sizeof query);
    fz_take_line(&in, ctype, sizeof ctype);
    fz_take_line(&in, auth, sizeof auth);
    fz_take_line(&in, key, sizeof key);
    req.method = method;
    req.path = path;
    req.content_type = ctype[0] ? ctype : NULL;
    req.authorization = auth[0] ? auth : NULL;
    req.idempotency_key = key[0] ? key : NULL;
    carve_query(query, &req);
    if (strncmp(ctype, "multipart/form-data", 19) == 0) {
        carve_parts(&in, &req);
    } else if (in.n) {
        req.body = malloc(in.n + 1);
        FZ_CHECK(req.body);
        memcpy(req.body, in.p, in.n);
        req.body[in.n] = '\0';
        req.body_len = in.n;
    }
    ft_api_handle(&F.api, &req, &resp);
    if (getenv("FUZZ_VERBOSE")) /* what each input did, e.g. to check a seed corpus */
        fprintf(stderr, "%s %s -> %d %.300s\n", method, path, resp.status,
                resp.kind == FT_BODY_BUFFER ? resp.body : "(file or stream)");
    check_response(&resp);
    ft_http_request_clear(&req);
    ft_http_response_clear(&resp);
    return 0;
}
