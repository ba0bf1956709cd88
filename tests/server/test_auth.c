/* test_auth.c — access tokens, owners, idempotency keys and the per-user queue limit, through
 * ft_api_handle() in-process over a real store in a temporary directory (as test_api.c).
 *
 * Covered: SHA-256 against FIPS 180-2's vectors; tokens are 64 hex digits from getrandom();
 * the Authorization header's forms; `finetunerd token create|list|revoke` (only the hash is
 * stored); an open API while no token exists, 401 once one does (missing, malformed, unknown,
 * revoked token), GET /health always open, require_token closing an API without tokens; two
 * users with datasets, experiments and runs of the same names that cannot see or touch each
 * other's, their dataset files apart, and the worker reading the run owner's dataset;
 * Idempotency-Key replay (status, body, nothing done again), 422 for another request, per
 * owner, 409 while in flight (deterministic and with two threads), errors not kept, kept
 * across a store reopen; --max-queued-runs' 429, freed at once by a cancel; and a database of
 * another schema version refused with a reason. */
#include "api.h"
#include "auth.h"
#include "http.h"
#include "log.h"
#include "store.h"
#include "support/daemon.h"
#include "worker.h"

#include <criterion/criterion.h>
#include <jansson.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#endif

static struct {
    char dir[64];
    ft_store *store;
    struct ft_api api;
    char alice[FT_TOKEN_HEX], bob[FT_TOKEN_HEX];
} E;

static void setup(void)
{
    struct ft_error err;
    memset(&E, 0, sizeof E);
    ft_log_threshold = FT_LOG_ERROR;
    snprintf(E.dir, sizeof E.dir, "/tmp/ft-test-auth-XXXXXX");
    cr_assert_not_null(mkdtemp(E.dir));
    cr_assert_eq(ft_store_open(E.dir, &E.store, &err), FT_OK, "%s", err.message);
    E.api.store = E.store;
    E.api.max_upload = 1u << 30;
}

static void teardown(void)
{
    ft_store_close(E.store);
    E.store = NULL;
    td_remove_tree(E.dir);
}

/* Close the store; under ASan, nothing the test allocated may be left unreachable. */
static void finish(void)
{
    ft_store_close(E.store);
    E.store = NULL;
#if defined(__SANITIZE_ADDRESS__)
    cr_assert_eq(__lsan_do_recoverable_leak_check(), 0, "LeakSanitizer found leaks (see above)");
#endif
}

TestSuite(auth, .init = setup, .fini = teardown, .timeout = 60);
TestSuite(owners, .init = setup, .fini = teardown, .timeout = 60);
TestSuite(idempotency, .init = setup, .fini = teardown, .timeout = 60);
TestSuite(queue, .init = setup, .fini = teardown, .timeout = 60);

/* ---- helpers ---- */

/* s with every ' turned into " (JSON without escapes), in one of 4 static buffers. */
static const char *q(const char *s)
{
    static __thread char bufs[4][2048];
    static __thread int next;
    char *b = bufs[next];
    next = (next + 1) % 4;
    snprintf(b, sizeof bufs[0], "%s", s);
    for (char *p = b; *p; p++)
        if (*p == '\'')
            *p = '"';
    return b;
}

/* A token for name in the store (as `token create` makes it) into out. */
static void make_token(const char *name, char out[FT_TOKEN_HEX])
{
    char hash[FT_SHA256_HEX];
    struct ft_error err;
    cr_assert_eq(ft_token_generate(out, &err), FT_OK);
    ft_sha256_hex(out, strlen(out), hash);
    cr_assert_eq(ft_store_token_insert(E.store, name, hash, &err), FT_OK, "%s", err.message);
}

static void two_users(void)
{
    make_token("alice", E.alice);
    make_token("bob", E.bob);
}

struct req {
    const char *method, *path, *body, *ctype;
    const char *token; /* sent as "token <t>"; NULL = no Authorization */
    const char *key;   /* Idempotency-Key, NULL = none */
};

/* One request into resp (zeroed first; clear it with ft_http_response_clear). */
static void send_req(struct ft_api *api, const struct req *r, struct ft_http_response *resp)
{
    struct ft_http_request req = {0};
    char auth[128];
    req.method = r->method;
    req.path = r->path;
    req.content_type = r->ctype ? r->ctype : r->body ? "application/json" : NULL;
    if (r->token) {
        snprintf(auth, sizeof auth, "token %s", r->token);
        req.authorization = auth;
    }
    req.idempotency_key = r->key;
    if (r->body) {
        req.body = strdup(r->body);
        req.body_len = strlen(r->body);
    }
    memset(resp, 0, sizeof *resp);
    ft_api_handle(api, &req, resp);
    ft_http_request_clear(&req);
}

/* The request must answer status; returns the JSON body (new reference). */
static json_t *expect(const struct req *r, int status)
{
    struct ft_http_response resp;
    send_req(&E.api, r, &resp);
    cr_assert_eq(resp.status, status, "%s %s: %d, want %d: %s", r->method, r->path, resp.status,
                 status, resp.body ? resp.body : "");
    json_t *o = json_loadb(resp.body, resp.body_len, 0, NULL);
    cr_assert_not_null(o, "not JSON: %s", resp.body);
    ft_http_response_clear(&resp);
    return o;
}

static void expect_ok(const struct req *r, int status)
{
    json_decref(expect(r, status));
}

/* The request must fail with status, code and param (NULL = JSON null). */
static void expect_error(const struct req *r, int status, const char *code, const char *param)
{
    json_t *o = expect(r, status);
    json_t *e = json_object_get(o, "error");
    cr_assert_str_eq(json_string_value(json_object_get(e, "code")), code);
    cr_assert_gt(json_string_length(json_object_get(e, "message")), 0);
    if (param)
        cr_assert_str_eq(json_string_value(json_object_get(e, "param")), param);
    else
        cr_assert(json_is_null(json_object_get(e, "param")));
    json_decref(o);
}

static const char *jstr(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

static json_int_t jint(json_t *o, const char *key)
{
    return json_integer_value(json_object_get(o, key));
}

/* rows x dims CSV with 4 classes (new string). */
static char *csv(int rows, int dims)
{
    size_t cap = (size_t)rows * (size_t)dims * 16 + 256, n = 0;
    char *b = malloc(cap);
    n += (size_t)snprintf(b + n, cap - n, "label");
    for (int j = 0; j < dims; j++)
        n += (size_t)snprintf(b + n, cap - n, ",f%d", j);
    for (int i = 0; i < rows; i++) {
        n += (size_t)snprintf(b + n, cap - n, "\nc%d", i % 4);
        for (int j = 0; j < dims; j++)
            n += (size_t)snprintf(b + n, cap - n, ",%.3f",
                                  (j % 4 == i % 4 ? 1.0 : 0.0) + 0.01 * ((i * 7 + j) % 11));
    }
    n += (size_t)snprintf(b + n, cap - n, "\n");
    return b;
}

/* PUT dataset name (rows x dims) as the token's user; expect 201. */
static void put_dataset(const char *token, const char *name, int rows, int dims)
{
    char path[128];
    char *body = csv(rows, dims);
    snprintf(path, sizeof path, "/api/v1/datasets/%s", name);
    struct req r = {"PUT", path, body, "text/csv", token, NULL};
    expect_ok(&r, 201);
    free(body);
}

#define RUN_BODY(name, ds)                                                                  \
    "{'name': '" name "', 'config': {'model': {'name': 'mlp', 'options': {'hidden_sizes': " \
    "[8]}}, 'data': {'train_data': '" ds "', 'sampler': 'random'}, 'hyper_parameters': "    \
    "{'epochs': 1, 'batch_size': 8}}}"

/* ---- hashing, tokens, the header ---- */

Test(auth, sha256_matches_fips_180_2_vectors)
{
    char out[FT_SHA256_HEX];
    ft_sha256_hex("", 0, out);
    cr_assert_str_eq(out, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    ft_sha256_hex("abc", 3, out);
    cr_assert_str_eq(out, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    ft_sha256 *h = ft_sha256_begin();
    ft_sha256_update(h, m, 10);
    ft_sha256_update(h, m + 10, strlen(m) - 10);
    ft_sha256_end(h, out);
    cr_assert_str_eq(out, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    cr_assert_eq(ft_err_http_status(FT_EUNAUTHORIZED), 401);
    cr_assert_str_eq(ft_err_name(FT_EUNAUTHORIZED), "unauthorized");
    cr_assert_eq(ft_err_http_status(FT_EIDEMPOTENCY_KEY_REUSED), 422);
    cr_assert_str_eq(ft_err_name(FT_EIDEMPOTENCY_KEY_REUSED), "idempotency_key_reused");
    cr_assert_eq(ft_err_http_status(FT_ETOO_MANY), 429);
    cr_assert_str_eq(ft_err_name(FT_ETOO_MANY), "too_many_requests");
    finish();
}

Test(auth, tokens_are_32_random_bytes_in_hex)
{
    char a[FT_TOKEN_HEX], b[FT_TOKEN_HEX];
    cr_assert_eq(ft_token_generate(a, NULL), FT_OK);
    cr_assert_eq(ft_token_generate(b, NULL), FT_OK);
    cr_assert_eq(strlen(a), 64);
    cr_assert_eq(strspn(a, "0123456789abcdef"), 64);
    cr_assert_str_neq(a, b);
    finish();
}

Test(auth, authorization_header_forms)
{
    char t[64];
    cr_assert(ft_auth_parse_header("token abc", t, sizeof t));
    cr_assert_str_eq(t, "abc");
    cr_assert(ft_auth_parse_header("Bearer abc", t, sizeof t));
    cr_assert_str_eq(t, "abc");
    cr_assert(ft_auth_parse_header("TOKEN   x-y_z  ", t, sizeof t));
    cr_assert_str_eq(t, "x-y_z");
    cr_assert_not(ft_auth_parse_header(NULL, t, sizeof t));
    cr_assert_not(ft_auth_parse_header("Basic abc", t, sizeof t));
    cr_assert_not(ft_auth_parse_header("token", t, sizeof t));
    cr_assert_not(ft_auth_parse_header("token ", t, sizeof t));
    cr_assert_not(ft_auth_parse_header("token a b", t, sizeof t));
    cr_assert_not(ft_auth_parse_header("token a\tb", t, sizeof t));
    cr_assert_not(ft_auth_parse_header("tokenabc", t, sizeof t));
    char longer[100];
    memset(longer, 'a', sizeof longer);
    memcpy(longer, "token ", 6);
    longer[99] = '\0';
    cr_assert_not(ft_auth_parse_header(longer, t, sizeof t), "longer than the buffer");
    finish();
}

/* Whether needle occurs in the file at path (binary search through its bytes). */
static int file_has(const char *path, const char *needle)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    size_t got = fread(buf, 1, (size_t)n, f);
    fclose(f);
    size_t k = strlen(needle);
    int found = 0;
    for (size_t i = 0; !found && i + k <= got; i++)
        found = memcmp(buf + i, needle, k) == 0;
    free(buf);
    return found;
}

/* ft_token_command(E.dir, words...) with its output in out (cap); returns the exit code. */
static int token_cmd(char *out, size_t cap, int argc, const char *const *argv)
{
    out[0] = '\0';
    FILE *o = fmemopen(out, cap, "w"), *e = fopen("/dev/null", "w");
    int rc = ft_token_command(E.dir, argc, argv, o, e);
    fclose(o);
    fclose(e);
    return rc;
}

Test(auth, token_command_creates_lists_and_revokes_keeping_only_the_hash)
{
    char out[512] = "", hash[FT_SHA256_HEX], token[FT_TOKEN_HEX], path[128];
    const char *create[] = {"create", "alice"};
    cr_assert_eq(token_cmd(out, sizeof out, 2, create), 0);
    cr_assert_eq(strlen(out), 65, "the token and a newline: %s", out);
    snprintf(token, sizeof token, "%.64s", out);
    cr_assert_eq(strspn(token, "0123456789abcdef"), 64);
    /* the database holds the hash, never the token */
    ft_sha256_hex(token, 64, hash);
    int in_db = 0, hash_in_db = 0;
    for (int k = 0; k < 2; k++) {
        snprintf(path, sizeof path, "%s/finetunerd.db%s", E.dir, k ? "-wal" : "");
        in_db |= file_has(path, token);
        hash_in_db |= file_has(path, hash);
    }
    cr_assert_not(in_db, "the token itself is not stored");
    cr_assert(hash_in_db, "its SHA-256 is");
    /* it works right away on an open store */
    char owner[FT_OWNER_MAX], header[128];
    snprintf(header, sizeof header, "token %s", token);
    cr_assert_eq(ft_auth_owner(E.store, header, 0, owner, NULL), FT_OK);
    cr_assert_str_eq(owner, "alice");
    cr_assert_eq(token_cmd(out, sizeof out, 2, create), 1, "alice has a token already");
    const char *bad[] = {"create", ".hidden"};
    cr_assert_eq(token_cmd(out, sizeof out, 2, bad), 2);
    const char *list[] = {"list"};
    cr_assert_eq(token_cmd(out, sizeof out, 1, list), 0);
    cr_assert(strncmp(out, "alice\t20", 8) == 0, "%s", out);
    cr_assert_null(strstr(out, token), "list never shows a token");
    const char *revoke_bob[] = {"revoke", "bob"};
    cr_assert_eq(token_cmd(out, sizeof out, 2, revoke_bob), 1);
    const char *revoke[] = {"revoke", "alice"};
    cr_assert_eq(token_cmd(out, sizeof out, 2, revoke), 0);
    cr_assert_eq(ft_auth_owner(E.store, header, 0, owner, NULL), FT_OK, "no tokens: open");
    cr_assert_str_eq(owner, "");
    cr_assert_eq(token_cmd(out, sizeof out, 1, list), 0);
    cr_assert_str_eq(out, "");
    const char *usage[] = {"create"};
    cr_assert_eq(token_cmd(out, sizeof out, 1, usage), 2);
    cr_assert_eq(token_cmd(out, sizeof out, 0, NULL), 2);
    finish();
}

Test(auth, open_without_tokens_and_401_once_one_exists)
{
    struct req r = {"GET", "/api/v1/datasets", NULL, NULL, NULL, NULL};
    expect_ok(&r, 200);
    make_token("alice", E.alice);
    expect_error(&r, 401, "unauthorized", "Authorization");
    r.token = "0000000000000000000000000000000000000000000000000000000000000000";
    expect_error(&r, 401, "unauthorized", "Authorization");
    r.token = E.alice;
    expect_ok(&r, 200);
    /* Bearer works too; other schemes do not */
    struct ft_http_request req = {.method = "GET", .path = "/api/v1/datasets"};
    struct ft_http_response resp = {0};
    char auth[128];
    snprintf(auth, sizeof auth, "Bearer %s", E.alice);
    req.authorization = auth;
    ft_api_handle(&E.api, &req, &resp);
    cr_assert_eq(resp.status, 200);
    ft_http_response_clear(&resp);
    memset(&resp, 0, sizeof resp);
    snprintf(auth, sizeof auth, "Basic %s", E.alice);
    ft_api_handle(&E.api, &req, &resp);
    cr_assert_eq(resp.status, 401);
    ft_http_response_clear(&resp);
    /* health needs nothing; every other route (even unknown ones) needs the token */
    struct req h = {"GET", "/api/v1/health", NULL, NULL, NULL, NULL};
    expect_ok(&h, 200);
    struct req unknown = {"GET", "/api/v1/nope", NULL, NULL, NULL, NULL};
    expect_error(&unknown, 401, "unauthorized", "Authorization");
    struct req cancel = {"POST", "/api/v1/experiments/e/runs/r/cancel", NULL, NULL, NULL, NULL};
    expect_error(&cancel, 401, "unauthorized", "Authorization");
    /* revoked: refused again */
    cr_assert_eq(ft_store_token_delete(E.store, "alice", NULL), FT_OK);
    make_token("bob", E.bob);
    expect_error(&r, 401, "unauthorized", "Authorization");
    finish();
}

Test(auth, require_token_closes_an_api_without_tokens)
{
    E.api.require_token = 1;
    struct req r = {"GET", "/api/v1/experiments", NULL, NULL, NULL, NULL};
    expect_error(&r, 401, "unauthorized", "Authorization");
    struct req h = {"GET", "/api/v1/health", NULL, NULL, NULL, NULL};
    expect_ok(&h, 200);
    struct ft_error err;
    struct ft_http_request put = {.method = "PUT", .path = "/api/v1/datasets/x"};
    cr_assert_eq(ft_api_authorize(&E.api, &put, &err), FT_EUNAUTHORIZED, "known from headers");
    make_token("alice", E.alice);
    r.token = E.alice;
    expect_ok(&r, 200);
    finish();
}

/* ---- owners ---- */

Test(owners, users_see_and_touch_only_their_own)
{
    two_users();
    put_dataset(E.alice, "d", 20, 2);
    struct req get = {"GET", "/api/v1/datasets/d", NULL, NULL, E.bob, NULL};
    expect_error(&get, 404, "not_found", "dataset");
    struct req list = {"GET", "/api/v1/datasets", NULL, NULL, E.bob, NULL};
    json_t *o = expect(&list, 200);
    cr_assert_eq(json_array_size(json_object_get(o, "datasets")), 0, "absent from bob's list");
    json_decref(o);
    put_dataset(E.bob, "d", 24, 3); /* the same name for another user */
    get.token = E.alice;
    o = expect(&get, 200);
    cr_assert_eq(jint(o, "dims"), 2);
    json_decref(o);
    get.token = E.bob;
    o = expect(&get, 200);
    cr_assert_eq(jint(o, "dims"), 3);
    json_decref(o);
    char *pa = ft_store_dataset_path(E.store, "alice", "d");
    char *pb = ft_store_dataset_path(E.store, "bob", "d");
    cr_assert_str_neq(pa, pb);
    cr_assert_eq(access(pa, R_OK), 0);
    cr_assert_eq(access(pb, R_OK), 0);
    free(pa);
    free(pb);
    /* runs and experiments */
    struct req sub = {"POST", "/api/v1/experiments/e/runs", q(RUN_BODY("r", "d")), NULL, E.alice,
                      NULL};
    expect_ok(&sub, 201);
    struct req b[] = {
        {"GET", "/api/v1/experiments/e", NULL, NULL, E.bob, NULL},
        {"GET", "/api/v1/experiments/e/runs", NULL, NULL, E.bob, NULL},
        {"GET", "/api/v1/experiments/e/runs/r", NULL, NULL, E.bob, NULL},
        {"GET", "/api/v1/experiments/e/runs/r/logs", NULL, NULL, E.bob, NULL},
        {"POST", "/api/v1/experiments/e/runs/r/cancel", NULL, NULL, E.bob, NULL},
        {"DELETE", "/api/v1/experiments/e/runs/r", NULL, NULL, E.bob, NULL},
        {"DELETE", "/api/v1/experiments/e", NULL, NULL, E.bob, NULL},
    };
    for (size_t i = 0; i < sizeof b / sizeof b[0]; i++)
        expect_error(&b[i], 404, "not_found", "experiment");
    struct req exps = {"GET", "/api/v1/experiments", NULL, NULL, E.bob, NULL};
    o = expect(&exps, 200);
    cr_assert_eq(json_array_size(json_object_get(o, "experiments")), 0);
    json_decref(o);
    /* bob's run of the same names, on his own "d" (3 columns) */
    sub.token = E.bob;
    o = expect(&sub, 201);
    cr_assert_eq(
        jint(json_object_get(json_object_get(json_object_get(o, "config"), "model"), "options"),
             "input_size"),
        3, "bob's d");
    json_decref(o);
    /* alice's dataset does not exist for bob's runs */
    put_dataset(E.alice, "only-alice", 20, 2);
    struct req other = {
        "POST", "/api/v1/experiments/e/runs", q(RUN_BODY("r2", "only-alice")), NULL, E.bob, NULL};
    expect_error(&other, 400, "invalid_argument", "config.data.train_data");
    /* each sees one run in its own "e"; alice's cancel does not touch bob's */
    struct req mine = {"GET", "/api/v1/experiments/e", NULL, NULL, E.alice, NULL};
    o = expect(&mine, 200);
    cr_assert_eq(jint(o, "num_runs"), 1);
    json_decref(o);
    struct req cancel = {"POST", "/api/v1/experiments/e/runs/r/cancel", NULL, NULL, E.alice, NULL};
    expect_ok(&cancel, 200);
    struct req st = {"GET", "/api/v1/experiments/e/runs/r/status", NULL, NULL, E.bob, NULL};
    o = expect(&st, 200);
    cr_assert_str_eq(jstr(o, "status"), "CREATED");
    json_decref(o);
    /* bob's "d" is in use by his run, alice's is free */
    struct req del = {"DELETE", "/api/v1/datasets/d", NULL, NULL, E.bob, NULL};
    expect_error(&del, 409, "conflict", "dataset");
    del.token = E.alice;
    expect_ok(&del, 200);
    get.token = E.bob;
    expect_ok(&get, 200);
    finish();
}

Test(owners, the_worker_reads_the_run_owners_dataset, .timeout = 120)
{
    two_users();
    put_dataset(E.bob, "d", 40, 5);
    put_dataset(E.alice, "d", 40, 2); /* after bob's: one file for both would be alice's */
    struct req sub = {"POST", "/api/v1/experiments/e/runs", q(RUN_BODY("r", "d")), NULL, E.bob,
                      NULL};
    expect_ok(&sub, 201);
    int64_t id;
    cr_assert_eq(ft_store_run_claim_next(E.store, &id, NULL), FT_OK);
    cr_assert_eq(ft_worker_main(id, E.dir), 0);
    char status[16], *details = NULL;
    cr_assert_eq(ft_store_run_status(E.store, id, status, &details, NULL), FT_OK);
    cr_assert_str_eq(status, "FINISHED", "%s", details ? details : "");
    free(details);
    char owner[FT_OWNER_MAX];
    cr_assert_eq(ft_store_run_owner(E.store, id, owner, NULL), FT_OK);
    cr_assert_str_eq(owner, "bob");
    finish();
}

/* ---- idempotency ---- */

Test(idempotency, a_retry_replays_the_first_answer_and_does_nothing_again)
{
    put_dataset(NULL, "d", 20, 2);
    /* an unnamed run: a second submission would make run-2 */
    struct req sub = {"POST",
                      "/api/v1/experiments/e/runs",
                      q("{'config': {'model': {'name': 'mlp'}, 'data': {'train_data': 'd'}}}"),
                      NULL,
                      NULL,
                      "key-1"};
    struct ft_http_response first, again;
    send_req(&E.api, &sub, &first);
    cr_assert_eq(first.status, 201, "%s", first.body);
    cr_assert_eq(first.replayed, 0);
    send_req(&E.api, &sub, &again);
    cr_assert_eq(again.status, 201);
    cr_assert_eq(again.replayed, 1);
    cr_assert_str_eq(again.body, first.body, "the same body, byte for byte");
    ft_http_response_clear(&first);
    ft_http_response_clear(&again);
    struct req list = {"GET", "/api/v1/experiments/e/runs", NULL, NULL, NULL, NULL};
    json_t *o = expect(&list, 200);
    cr_assert_eq(jint(o, "total"), 1, "one run, not two");
    json_decref(o);
    /* without the key the same body is a new run */
    sub.key = NULL;
    expect_ok(&sub, 201);
    o = expect(&list, 200);
    cr_assert_eq(jint(o, "total"), 2);
    json_decref(o);
    finish();
}

Test(idempotency, the_key_with_another_request_is_422)
{
    put_dataset(NULL, "d", 20, 2);
    struct req sub = {"POST", "/api/v1/experiments/e/runs", q(RUN_BODY("a", "d")), NULL, NULL, "k"};
    expect_ok(&sub, 201);
    sub.body = q(RUN_BODY("b", "d"));
    expect_error(&sub, 422, "idempotency_key_reused", "Idempotency-Key");
    sub.body = q(RUN_BODY("a", "d"));
    sub.path = "/api/v1/experiments/other/runs";
    expect_error(&sub, 422, "idempotency_key_reused", "Idempotency-Key");
    /* keys of printable ASCII, 1 to 255 */
    sub.key = "bad\nkey";
    expect_error(&sub, 400, "invalid_argument", "Idempotency-Key");
    char longkey[300];
    memset(longkey, 'k', sizeof longkey - 1);
    longkey[sizeof longkey - 1] = '\0';
    sub.key = longkey;
    expect_error(&sub, 400, "invalid_argument", "Idempotency-Key");
    finish();
}

Test(idempotency, keys_belong_to_their_user)
{
    two_users();
    put_dataset(E.alice, "d", 20, 2);
    put_dataset(E.bob, "d", 20, 2);
    struct req sub = {
        "POST", "/api/v1/experiments/e/runs", q(RUN_BODY("r", "d")), NULL, E.alice, "shared-key"};
    struct ft_http_response a, b;
    send_req(&E.api, &sub, &a);
    sub.token = E.bob;
    send_req(&E.api, &sub, &b);
    cr_assert_eq(a.status, 201);
    cr_assert_eq(b.status, 201);
    cr_assert_eq(b.replayed, 0, "bob's key is his own: his run is made");
    ft_http_response_clear(&a);
    ft_http_response_clear(&b);
    struct req get = {"GET", "/api/v1/experiments/e/runs/r", NULL, NULL, E.bob, NULL};
    expect_ok(&get, 200);
    finish();
}

Test(idempotency, dataset_uploads_replay_instead_of_409)
{
    char *body = csv(20, 2), *other = csv(24, 2);
    struct req put = {"PUT", "/api/v1/datasets/d", body, "text/csv", NULL, "up-1"};
    struct ft_http_response first, again;
    send_req(&E.api, &put, &first);
    cr_assert_eq(first.status, 201, "%s", first.body);
    send_req(&E.api, &put, &again);
    cr_assert_eq(again.status, 201, "%s", again.body);
    cr_assert_eq(again.replayed, 1);
    cr_assert_str_eq(again.body, first.body);
    ft_http_response_clear(&first);
    ft_http_response_clear(&again);
    put.key = NULL;
    expect_error(&put, 409, "conflict", "name");
    put.key = "up-1";
    put.body = other;
    expect_error(&put, 422, "idempotency_key_reused", "Idempotency-Key");
    /* multipart: the parts count, not the boundary */
    struct ft_http_request a = {.method = "PUT", .path = "/api/v1/datasets/m"}, b = a;
    char fa[FT_SHA256_HEX], fb[FT_SHA256_HEX];
    a.num_parts = b.num_parts = 1;
    snprintf(a.parts[0].name, sizeof a.parts[0].name, "images");
    b.parts[0] = a.parts[0];
    a.parts[0].data = "xyz";
    a.parts[0].len = 3;
    ft_api_fingerprint(&a, fa);
    ft_api_fingerprint(&b, fb);
    cr_assert_str_neq(fa, fb);
    b.parts[0].data = "xyz";
    b.parts[0].len = 3;
    ft_api_fingerprint(&b, fb);
    cr_assert_str_eq(fa, fb);
    free(body);
    free(other);
    finish();
}

Test(idempotency, errors_are_not_kept_so_a_retry_runs_again)
{
    struct req sub = {"POST", "/api/v1/experiments/e/runs", q(RUN_BODY("r", "d")), NULL, NULL, "k"};
    expect_error(&sub, 400, "invalid_argument", "config.data.train_data");
    put_dataset(NULL, "d", 20, 2);
    expect_ok(&sub, 201);
    finish();
}

Test(idempotency, a_duplicate_in_flight_is_409)
{
    put_dataset(NULL, "d", 20, 2);
    struct req sub = {"POST", "/api/v1/experiments/e/runs", q(RUN_BODY("r", "d")), NULL, NULL, "k"};
    /* the first request has claimed the key and not answered yet */
    struct ft_http_request req = {.method = sub.method, .path = sub.path};
    req.body = (char *)sub.body;
    req.body_len = strlen(sub.body);
    char fp[FT_SHA256_HEX], *body = NULL;
    int status = -1;
    ft_api_fingerprint(&req, fp);
    cr_assert_eq(ft_store_idempotency_begin(E.store, "", "k", fp, &status, &body, NULL), FT_OK);
    cr_assert_eq(status, 0, "new");
    expect_error(&sub, 409, "conflict", "Idempotency-Key");
    /* a daemon start forgets requests that died in flight */
    cr_assert_eq(ft_store_idempotency_clear_pending(E.store), 1);
    expect_ok(&sub, 201);
    finish();
}

struct racer {
    const char *key, *path, *body;
    struct ft_http_response resp;
    pthread_barrier_t *go;
};

static void *race_put(void *arg)
{
    struct racer *r = arg;
    struct req put = {"PUT", r->path, r->body, "text/csv", NULL, r->key};
    pthread_barrier_wait(r->go);
    send_req(&E.api, &put, &r->resp);
    return NULL;
}

Test(idempotency, concurrent_duplicates_make_one_dataset)
{
    char *body = csv(200, 4);
    for (int i = 0; i < 20; i++) {
        char key[32], path[64];
        pthread_barrier_t go;
        pthread_t t[2];
        struct racer r[2];
        snprintf(key, sizeof key, "k%d", i);
        snprintf(path, sizeof path, "/api/v1/datasets/d%d", i);
        pthread_barrier_init(&go, NULL, 2);
        for (int k = 0; k < 2; k++) {
            r[k] = (struct racer){key, path, body, {0}, &go};
            pthread_create(&t[k], NULL, race_put, &r[k]);
        }
        for (int k = 0; k < 2; k++)
            pthread_join(t[k], NULL);
        pthread_barrier_destroy(&go);
        int created = 0;
        for (int k = 0; k < 2; k++) {
            int s = r[k].resp.status;
            cr_assert(s == 201 || s == 409, "status %d: %s", s, r[k].resp.body);
            if (s == 409)
                cr_assert(strstr(r[k].resp.body, "\"Idempotency-Key\""), "%s", r[k].resp.body);
            created += s == 201 && !r[k].resp.replayed;
        }
        cr_assert_eq(created, 1, "exactly one request made the dataset");
        if (r[0].resp.status == 201 && r[1].resp.status == 201)
            cr_assert_str_eq(r[0].resp.body, r[1].resp.body);
        ft_http_response_clear(&r[0].resp);
        ft_http_response_clear(&r[1].resp);
    }
    json_t *list = ft_store_dataset_list(E.store, "");
    cr_assert_eq(json_array_size(list), 20);
    json_decref(list);
    free(body);
    finish();
}

Test(idempotency, keys_survive_a_restart)
{
    struct ft_error err;
    put_dataset(NULL, "d", 20, 2);
    struct req sub = {"POST", "/api/v1/experiments/e/runs", q(RUN_BODY("r", "d")), NULL, NULL, "k"};
    struct ft_http_response first, again;
    send_req(&E.api, &sub, &first);
    cr_assert_eq(first.status, 201);
    ft_store_close(E.store);
    cr_assert_eq(ft_store_open(E.dir, &E.store, &err), FT_OK, "%s", err.message);
    E.api.store = E.store;
    cr_assert_eq(ft_store_idempotency_clear_pending(E.store), 0, "answered keys stay");
    send_req(&E.api, &sub, &again);
    cr_assert_eq(again.status, 201, "%s", again.body);
    cr_assert_eq(again.replayed, 1);
    cr_assert_str_eq(again.body, first.body);
    ft_http_response_clear(&first);
    ft_http_response_clear(&again);
    finish();
}

/* ---- the queue limit ---- */

Test(queue, max_queued_runs_per_user_is_429_and_a_cancel_frees_a_place_at_once)
{
    two_users();
    E.api.max_queued_runs = 2;
    put_dataset(E.alice, "d", 20, 2);
    put_dataset(E.bob, "d", 20, 2);
    struct req a = {"POST", "/api/v1/experiments/e/runs", q(RUN_BODY("r1", "d")), NULL, E.alice,
                    NULL};
    expect_ok(&a, 201);
    a.body = q(RUN_BODY("r2", "d"));
    expect_ok(&a, 201);
    a.body = q(RUN_BODY("r3", "d"));
    expect_error(&a, 429, "too_many_requests", NULL);
    /* the limit is per user */
    struct req b = {"POST", "/api/v1/experiments/e/runs", q(RUN_BODY("r1", "d")), NULL, E.bob,
                    NULL};
    expect_ok(&b, 201);
    /* a started run is not queued any more, a canceled one frees its place at once */
    int64_t id;
    cr_assert_eq(ft_store_run_claim_next(E.store, &id, NULL), FT_OK);
    expect_ok(&a, 201);
    a.body = q(RUN_BODY("r4", "d"));
    expect_error(&a, 429, "too_many_requests", NULL);
    struct req cancel = {"POST", "/api/v1/experiments/e/runs/r2/cancel", NULL, NULL, E.alice, NULL};
    json_t *o = expect(&cancel, 200);
    cr_assert_str_eq(jstr(o, "status"), "CANCELED");
    json_decref(o);
    expect_ok(&a, 201);
    finish();
}

/* ---- the schema version ---- */

/* A database in dir/old made with sql (as an older finetunerd would have left it). */
static void old_database(const char *sql, char *dir, size_t cap)
{
    char path[128];
    sqlite3 *db;
    snprintf(dir, cap, "%s/old", E.dir);
    cr_assert_eq(mkdir(dir, 0755), 0);
    snprintf(path, sizeof path, "%s/finetunerd.db", dir);
    cr_assert_eq(sqlite3_open(path, &db), SQLITE_OK);
    cr_assert_eq(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

Test(auth, a_database_of_another_schema_version_is_refused_with_a_reason)
{
    struct ft_error err = {0};
    ft_store *s = NULL;
    char dir[128];
    old_database("CREATE TABLE datasets(name TEXT PRIMARY KEY);"
                 "CREATE TABLE runs(id INTEGER PRIMARY KEY, experiment TEXT, name TEXT);",
                 dir, sizeof dir);
    cr_assert_eq(ft_store_open(dir, &s, &err), FT_EDB);
    cr_assert_null(s);
    cr_assert(strstr(err.message, "an older finetunerd") && strstr(err.message, "version 0") &&
                  strstr(err.message, "start afresh"),
              "%s", err.message);
    td_remove_tree(dir);
    old_database("PRAGMA user_version = 99;", dir, sizeof dir);
    cr_assert_eq(ft_store_open(dir, &s, &err), FT_EDB);
    cr_assert(strstr(err.message, "a newer finetunerd"), "%s", err.message);
    td_remove_tree(dir);
    /* a new one gets this version, and opens again */
    old_database("", dir, sizeof dir);
    cr_assert_eq(ft_store_open(dir, &s, &err), FT_OK, "%s", err.message);
    ft_store_close(s);
    cr_assert_eq(ft_store_open(dir, &s, &err), FT_OK, "%s", err.message);
    ft_store_close(s);
    char path[160];
    sqlite3 *db;
    sqlite3_stmt *st;
    snprintf(path, sizeof path, "%s/finetunerd.db", dir);
    cr_assert_eq(sqlite3_open(path, &db), SQLITE_OK);
    cr_assert_eq(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL), SQLITE_OK);
    cr_assert_eq(sqlite3_step(st), SQLITE_ROW);
    cr_assert_eq(sqlite3_column_int(st, 0), FT_STORE_SCHEMA_VERSION);
    sqlite3_finalize(st);
    sqlite3_close(db);
    finish();
}
