/* finetuner.h — libfinetuner: the C client of finetunerd (the one public header).
 *
 * A thin, blocking client over the REST API v1 (libcurl + jansson inside, neither exposed):
 *
 *     ft_client *c = ft_client_new("http://127.0.0.1:8910");
 *     struct ft_callback cbs[] = {ft_early_stopping("val_loss", NULL, 2, -1)};
 *     struct ft_fit_params p = {.model = "mlp", .train_data = "fmnist-train",
 *                               .eval_data = "fmnist-test", .epochs = 3,
 *                               .callbacks = cbs, .num_callbacks = 1};
 *     ft_run *run;
 *     if (ft_fit(c, &p, &run) != 0)
 *         fprintf(stderr, "%s: %s\n", ft_client_error_code(c), ft_client_error_message(c));
 *
 * Conventions (sqlite/jansson style):
 * - Functions that can fail return 0 on success and -1 on failure; the reason is then in the
 *   client's last error (ft_client_error_code() and friends), valid until the next call on
 *   the same client. Every call resets it.
 * - String results documented "new" are malloc'd: the caller frees them with free().
 *   "Borrowed" results belong to the library and stay valid as documented.
 * - String arguments are borrowed for the duration of the call (copied when kept).
 * - A client (and every run handle made from it) is used by one thread at a time; use one
 *   client per thread. Names (datasets, experiments, runs) are 1 to 100 of A-Z a-z 0-9 . _ -
 *   (the server checks; the client escapes them into URLs).
 * - ft_*_free(NULL) is a no-op.
 *
 * This header includes only the C library and defines nothing from the server's headers, so
 * it can be included next to them. */
#ifndef FINETUNER_H
#define FINETUNER_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A connection to one finetunerd (opaque): one libcurl handle, the last error and the last
 * response body. */
typedef struct ft_client ft_client;

/* A run on the server (opaque): experiment and run name, plus the client it borrows. */
typedef struct ft_client_run ft_run;

/* Size of a buffer that holds any run status ("CREATED", "STARTED", "FINISHED", "FAILED",
 * "CANCELED") with its terminating NUL. */
#define FTC_STATUS_MAX 16

/* ---- client ------------------------------------------------------------------------------ */

/* A new client for base_url ("http://127.0.0.1:8910"; a trailing "/" and a trailing
 * "/api/v1" are accepted). No request is made. Returns NULL when out of memory or when
 * libcurl cannot initialise. Owned: free with ft_client_free(). */
ft_client *ft_client_new(const char *base_url);

/* Free c (NULL ok). Every ft_run made from c must be freed first or not be used again. */
void ft_client_free(ft_client *c);

/* Send token (copied) with every request from now on, as "Authorization: token <token>".
 * A server that has access tokens (`finetunerd token create NAME`) answers every request but
 * health without a valid one with "unauthorized" (HTTP 401); each token's user sees only the
 * datasets, experiments and runs made with it. token NULL or "" sends none again. No request
 * is made. Errors: "invalid_argument" (param "token") when token has a space, a control or a
 * non-ASCII character or is longer than 512 characters (the token set before stays). */
int ft_client_set_token(ft_client *c, const char *token);

/* Error code of the last call on c (borrowed, valid until the next call):
 * "" after a success; otherwise the server's error.code ("invalid_argument", "unauthorized",
 * "not_found", "conflict", "too_many_requests", ...), or one decided by the client:
 *   "transport"           libcurl failed (connection refused, timeout, reset, ...);
 *   "invalid_argument"    a bad argument caught before any request (param names it);
 *   "io_error"            a local file could not be read or written;
 *   "out_of_memory"       an allocation failed;
 *   "unexpected_response" the server answered something that is not the API's shape. */
const char *ft_client_error_code(const ft_client *c);

/* Message of the last error (borrowed, valid until the next call): the server's message,
 * libcurl's error text for "transport", or the client's own; "" after a success. */
const char *ft_client_error_message(const ft_client *c);

/* The parameter the last error names (the server's error.param, e.g.
 * "config.hyper_parameters.epochs"; borrowed, valid until the next call), or NULL when none. */
const char *ft_client_error_param(const ft_client *c);

/* HTTP status of the last response (200, 404, ...), or 0 when no response arrived. */
long ft_client_http_status(const ft_client *c);

/* Body of the last JSON response (borrowed, valid until the next call), "" when none. After
 * ft_dataset_push_csv() it is the dataset object, after ft_run_cancel() the run object. */
const char *ft_client_last_response(const ft_client *c);

/* GET /health. On success *version (when non-NULL) is set to the server's version string
 * (new). Errors: as every call ("transport" when nothing listens). */
int ft_client_health(ft_client *c, char **version);

/* ---- fit --------------------------------------------------------------------------------- */

/* One callback of the run config: {"name": name, "options": {...}}. Build with the
 * constructors below or by hand. Every pointer is borrowed: it must stay valid until the
 * ft_fit() that uses the struct returns. Unset fields (NULL, or a negative number where noted)
 * are omitted so that the server fills its defaults. */
struct ft_callback {
    const char *name;    /* "EvaluationCallback" | "BestModelCheckpoint" | "EarlyStopping" |
                            "TrainingCheckpoint" | "WiSEFTCallback" */
    const char *options; /* JSON object text; when non-NULL it is sent as is and the typed
                            fields below are ignored (the only way to set the options that
                            have no field here: caption, gather_examples, alpha, ...) */
    /* EvaluationCallback */
    const char *query_data; /* dataset name (required by the server) */
    const char *index_data; /* dataset name, NULL = the query set is the index */
    int limit;              /* k of the retrieval metrics, <= 0 = server default (20) */
    const char *distance;   /* "cosine" | "euclidean" | "sqeuclidean" | "inner_product" */
    /* BestModelCheckpoint, EarlyStopping */
    const char *monitor; /* "val_loss" (default), "train_loss" or a metric name */
    const char *mode;    /* "auto" | "min" | "max" */
    int patience;        /* EarlyStopping: epochs without improvement, < 0 = default (2);
                            a hand-made zero-initialised struct sends 0, so set -1 or use
                            ft_early_stopping() */
    double min_delta;    /* EarlyStopping: least improvement, < 0 = default (0) */
};

/* EvaluationCallback(query_data, index_data, limit, distance): index_data NULL = none,
 * limit <= 0 = default, distance NULL = default. Pure: no allocation, strings borrowed. */
struct ft_callback ft_evaluation_callback(const char *query_data, const char *index_data, int limit,
                                          const char *distance);

/* BestModelCheckpoint(monitor, mode); NULL = the server default ("val_loss", "auto"). Pure. */
struct ft_callback ft_best_model_checkpoint(const char *monitor, const char *mode);

/* EarlyStopping(monitor, mode, patience, min_delta); NULL / negative = the server default
 * ("val_loss", "auto", 2, 0). Pure. */
struct ft_callback ft_early_stopping(const char *monitor, const char *mode, int patience,
                                     double min_delta);

/* The keyword arguments of finetuner.fit(). Zero-initialise and set what you need: NULL
 * strings and zero numbers are "unset" and left out of the request, so the server applies
 * Finetuner's defaults (TripletMarginLoss, Adam, learning_rate 1e-3, epochs 5, batch_size
 * chosen from the data, num_items_per_class 4, sampler auto, seed 42). *_options are JSON
 * object texts. All pointers borrowed. README.md "Run config" lists every name and option. */
struct ft_fit_params {
    const char *model;           /* "mlp" | "cnn" (required by the server unless model_artifact
                                    is set: the artifact's model is the default then) */
    const char *model_options;   /* e.g. "{\"hidden_sizes\": [128], \"l2\": true}" */
    int output_dim;              /* > 0: append a linear projection head of that size; 0 = none */
    int has_freeze;              /* 1 = send freeze */
    int freeze;                  /* 1 = train only the projection head (needs output_dim) */
    const char *model_artifact;  /* "EXPERIMENT/RUN" of an earlier FINISHED run to start from,
                                    sent as config.model.artifact; NULL = fresh weights */
    const char *train_data;      /* dataset name (required by the server) */
    const char *eval_data;       /* dataset name or NULL */
    const char *run_name;        /* NULL = the server picks a name */
    const char *description;     /* NULL = none */
    const char *experiment_name; /* NULL = "default" */
    const char *loss;            /* "TripletMarginLoss", "ArcFaceLoss", ... */
    const char *loss_options;    /* {"margin": 0.2, "distance": "cosine"} */
    const char *miner;           /* "TripletMarginMiner", "BatchHardMiner", ... or NULL */
    const char *miner_options;   /* {"type_of_triplets": "hard", "margin": 0.2} */
    const char *optimizer;       /* "Adam" | "AdamW" | "SGD" */
    const char *optimizer_options;
    const char *loss_optimizer; /* for a loss's own parameters (ArcFaceLoss); NULL = optimizer */
    const char *loss_optimizer_options;
    const char *scheduler;         /* "linear", "cosine", ... or NULL = constant learning rate */
    const char *scheduler_options; /* {"num_warmup_steps": 10, "scheduler_step": "batch"} */
    double learning_rate;          /* 0 = default */
    int epochs;                    /* 0 = default */
    int batch_size;                /* 0 = the server chooses from the data; else a multiple of
                                      num_items_per_class (unless sampler is "random") */
    int num_items_per_class;       /* 0 = default */
    const char *sampler;           /* "auto" | "class" | "random"; NULL = default (auto) */
    double val_split;              /* fraction of train_data held out for val_loss; 0 = none */
    int has_standardize;           /* 1 = send data.standardize {"mean", "std"} */
    double standardize_mean;       /* every feature becomes (x - mean) / std */
    double standardize_std;        /* > 0 */
    const struct ft_callback *callbacks; /* num_callbacks entries (NULL when 0) */
    size_t num_callbacks;
    int has_seed;   /* 1 = send seed */
    long long seed; /* >= 0 */
};

/* Submit a run: POST /experiments/{experiment_name}/runs with {"name", "description",
 * "config"} built from p (the experiment is created if missing). On success *out is a new run
 * handle (free with ft_run_free()) in status CREATED, and ft_client_last_response(c) is the
 * run object with the normalised config. Errors: "invalid_argument" when an *_options text is
 * not a JSON object (param names the field, e.g. "loss_options", or
 * "callbacks[1].options") or when the server rejects the config (param is its JSON path, e.g.
 * "config.data.train_data"); "conflict" when run_name exists; "too_many_requests" when
 * this user already has as many queued (CREATED) runs as the server allows
 * (--max-queued-runs); "transport". *out is NULL on failure. */
int ft_fit(ft_client *c, const struct ft_fit_params *p, ft_run **out);

/* ---- runs -------------------------------------------------------------------------------- */

/* A handle on an existing run: GET /experiments/{experiment}/runs/{name}. *out: new, free
 * with ft_run_free(); NULL on failure ("not_found" when the run does not exist). */
int ft_get_run(ft_client *c, const char *experiment, const char *name, ft_run **out);

/* Free run (NULL ok). The run on the server is untouched. */
void ft_run_free(ft_run *run);

/* Name and experiment of run (borrowed, valid until ft_run_free(run)). */
const char *ft_run_name(const ft_run *run);
const char *ft_run_experiment(const ft_run *run);

/* The client run was made from (borrowed), for its last error. */
ft_client *ft_run_client(const ft_run *run);

/* The last status this handle saw (by ft_fit, ft_get_run, ft_run_status, ft_run_wait,
 * ft_run_cancel or the end of ft_run_stream_logs; borrowed, valid until the next call on
 * run); "" when unknown. */
const char *ft_run_last_status(const ft_run *run);

/* 1 when status is terminal (FINISHED, FAILED or CANCELED), else 0. */
int ft_run_status_is_terminal(const char *status);

/* GET .../status. status: a caller buffer of FTC_STATUS_MAX bytes (may be NULL). details
 * (may be NULL): set to a new string (free()) with the server's details sentence, or NULL
 * when the server has none. */
int ft_run_status(ft_run *run, char status[FTC_STATUS_MAX], char **details);

/* GET .../logs: *text is set to the whole run log (new, one line per log line, free()). */
int ft_run_logs(ft_run *run, char **text);

/* Follow GET .../logstream (server-sent events) and call on_line(line, ctx) for every log
 * line as it arrives, from the first (line borrowed for the call, no trailing newline;
 * on_line must not use run's client). Returns 0 when the server sends "event: end"; its data
 * is then ft_run_last_status(run): the final status, or the current one ("STARTED") when the
 * server is shutting down, or "GONE" when the run was deleted meanwhile. Returns -1 with
 * "transport" when the stream breaks before that, or "unexpected_response" when it closes
 * without the end event. Blocks for the rest of the run. */
int ft_run_stream_logs(ft_run *run, void (*on_line)(const char *line, void *ctx), void *ctx);

/* GET .../metrics: *json is set to the metrics object as JSON text (new, free()):
 * {"before": {...}, "after": {...}, "epochs": [{"epoch", "train_loss", "val_loss", ...}]}. */
int ft_run_metrics(ft_run *run, char **json);

/* GET .../examples: *json is set to {"before": [...], "after": [...]} (new, free()): the
 * top-limit results of the example queries of EvaluationCallbacks with gather_examples (empty
 * lists when none gathered any). */
int ft_run_examples(ft_run *run, char **json);

/* GET .../artifact and store the safetensors model at path: written to "<path>.tmp" first,
 * then renamed, so path is either the old file or the complete new one. Errors: "conflict"
 * until the run is FINISHED; "io_error" when the file cannot be written (the .tmp is
 * removed); "transport". */
int ft_run_save_artifact(ft_run *run, const char *path);

/* POST .../cancel. Errors: "conflict" when the run is already terminal. */
int ft_run_cancel(ft_run *run);

/* Poll the status every poll_ms milliseconds (<= 0: 1000) until it is terminal; the final
 * status goes into status (FTC_STATUS_MAX bytes, may be NULL). Returns -1 on the first failed
 * poll. */
int ft_run_wait(ft_run *run, int poll_ms, char status[FTC_STATUS_MAX]);

/* GET /experiments/{experiment}/runs?limit=&offset=: *json is set to
 * {"runs": [...], "total", "limit", "offset"} (new, free()). limit <= 0 = server default (50),
 * offset < 0 = 0. */
int ft_list_runs(ft_client *c, const char *experiment, int limit, int offset, char **json);

/* DELETE /experiments/{experiment}/runs/{name}. Errors: "conflict" while the run is STARTED
 * (cancel it first), "not_found". */
int ft_delete_run(ft_client *c, const char *experiment, const char *name);

/* ---- datasets ---------------------------------------------------------------------------- */

/* PUT /datasets/{name}?format=csv with the file at path as the body (text/csv: a header row
 * with a "label" (or "finetuner_label") column, every other column a number, one row per
 * line). ft_client_last_response(c) is then the dataset object {"name", "format", "rows",
 * "dims", "labels", "bytes", "created_at"}. Errors:
 * "io_error" (path unreadable), "invalid_argument" (the server names the bad line),
 * "conflict" (name exists), "payload_too_large". */
int ft_dataset_push_csv(ft_client *c, const char *name, const char *path);

/* PUT /datasets/{name}?format=idx as multipart/form-data with file parts "images" and
 * "labels" (IDX files, gzip'd or not). Errors as ft_dataset_push_csv(). */
int ft_dataset_push_idx(ft_client *c, const char *name, const char *images_path,
                        const char *labels_path);

/* GET /datasets: *json is set to {"datasets": [dataset object...]} (new, free()). */
int ft_dataset_list(ft_client *c, char **json);

/* GET /datasets/{name}: *json is set to the dataset object (new, free()). */
int ft_dataset_get(ft_client *c, const char *name, char **json);

/* DELETE /datasets/{name}. Errors: "conflict" while a CREATED/STARTED run uses it. */
int ft_dataset_delete(ft_client *c, const char *name);

#ifdef __cplusplus
}
#endif

#endif
