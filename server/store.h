/* store.h — finetunerd's state in one SQLite database (WAL) plus files beside it.
 *
 * <data_dir>/finetunerd.db          tokens, experiments, runs, run logs, per-epoch metrics,
 *                                   datasets, idempotency keys
 * <data_dir>/datasets/<owner hash>-<name>.safetensors   stored datasets (common/dataset.h)
 * <data_dir>/runs/<id>/model.safetensors   a run's artifact
 *
 * Owners: every dataset, experiment and run belongs to the user whose access token created it
 * (the token's name; "" while the server has no tokens). Names are unique per owner, and every
 * call that takes a name takes the owner too: another owner's things do not exist for it. The
 * owner hash in a dataset's file name is the first 32 hex digits of SHA-256(owner).
 *
 * Schema: PRAGMA user_version is FT_STORE_SCHEMA_VERSION. A database made by an older
 * finetunerd (no owners) is refused with a message saying so, rather than migrated.
 *
 * One ft_store per process (the daemon's HTTP threads and scheduler share one, serialised by a
 * mutex; each worker process opens its own). Statuses: CREATED -> STARTED -> FINISHED | FAILED,
 * plus CANCELED; a terminal status never changes (every transition is a guarded UPDATE).
 * Returned JSON is new (caller json_decref's); returned strings are new (caller frees). */
#ifndef FT_STORE_H
#define FT_STORE_H

#include "ft_error.h"

#include <jansson.h>
#include <stdint.h>
#include <sys/types.h>

#define FT_STORE_SCHEMA_VERSION 2
/* Size of a buffer that holds any owner (a token name of at most 100 bytes) and its NUL. */
#define FT_OWNER_MAX 128

typedef struct ft_store ft_store;

/* Open (creating the directory, database and schema when missing). Errors: FT_EIO, FT_EDB
 * (also for a database of another schema version, with a message that says what to do). */
enum ft_err ft_store_open(const char *data_dir, ft_store **out, struct ft_error *err);
void ft_store_close(ft_store *s);

/* One read transaction around several reads: between begin and end the calling thread holds
 * the store (other threads' store calls wait) and every read sees one snapshot, at the cost of
 * one pair of SQLite read locks (fcntl) instead of a pair per statement. Only reads may be
 * made in between; end commits and releases the store. Not nestable. */
void ft_store_read_begin(ft_store *s);
void ft_store_read_end(ft_store *s);
/* The data directory (borrowed). */
const char *ft_store_dir(const ft_store *s);

/* ---- datasets ---- */
struct ft_dataset_info {
    char name[128];
    char format[8]; /* "csv" | "idx" */
    int64_t rows;
    int dims;
    int labels;
    int64_t bytes;
};
/* Valid names: 1-100 of [A-Za-z0-9._-], not starting with '.'. */
int ft_store_valid_name(const char *name);
/* Path of owner's dataset name's file (new string). */
char *ft_store_dataset_path(const ft_store *s, const char *owner, const char *name);
/* Insert metadata. FT_ECONFLICT when owner has a dataset of that name. */
enum ft_err ft_store_dataset_insert(ft_store *s, const char *owner,
                                    const struct ft_dataset_info *info, struct ft_error *err);
/* Dataset object or FT_ENOT_FOUND. */
enum ft_err ft_store_dataset_get(ft_store *s, const char *owner, const char *name, json_t **out,
                                 struct ft_error *err);
/* owner's datasets, by name. */
json_t *ft_store_dataset_list(ft_store *s, const char *owner);
/* Delete metadata and file. FT_ENOT_FOUND; FT_ECONFLICT while a CREATED/STARTED run uses it. */
enum ft_err ft_store_dataset_delete(ft_store *s, const char *owner, const char *name,
                                    struct ft_error *err);

/* ---- experiments ---- */
/* Create when missing; *created (may be NULL) says which. */
enum ft_err ft_store_experiment_ensure(ft_store *s, const char *owner, const char *name,
                                       int *created, struct ft_error *err);
enum ft_err ft_store_experiment_get(ft_store *s, const char *owner, const char *name, json_t **out,
                                    struct ft_error *err);
json_t *ft_store_experiment_list(ft_store *s, const char *owner);
/* Delete it with its runs' rows and files. FT_ECONFLICT while one is CREATED/STARTED. */
enum ft_err ft_store_experiment_delete(ft_store *s, const char *owner, const char *name,
                                       struct ft_error *err);

/* ---- runs ---- */
/* A run to queue (every pointer borrowed). */
struct ft_run_submission {
    const char *owner;
    const char *experiment;      /* created when missing */
    const char *name;            /* NULL = "run-<n>" */
    const char *description;     /* may be NULL */
    const char *config_json;     /* the normalised config */
    const char *const *datasets; /* the owner's datasets it reads (num_datasets), recorded so */
    int num_datasets;            /* that a dataset in use cannot be deleted */
    int max_queued;              /* CREATED runs the owner may have at once (0 = no limit) */
};
/* Insert a CREATED run, all in one transaction. FT_ECONFLICT on a taken name; FT_ETOO_MANY
 * when the owner already has max_queued CREATED runs; FT_EINVAL when a dataset is gone. */
enum ft_err ft_store_run_insert(ft_store *s, const struct ft_run_submission *sub, int64_t *id,
                                struct ft_error *err);
/* Id of owner's run (experiment, name), FT_ENOT_FOUND naming which is missing. */
enum ft_err ft_store_run_find(ft_store *s, const char *owner, const char *experiment,
                              const char *name, int64_t *id, struct ft_error *err);
/* The owner of run id into owner (FT_OWNER_MAX bytes). FT_ENOT_FOUND. */
enum ft_err ft_store_run_owner(ft_store *s, int64_t id, char owner[FT_OWNER_MAX],
                               struct ft_error *err);
/* The run object (see the README's API table). */
enum ft_err ft_store_run_get(ft_store *s, int64_t id, json_t **out, struct ft_error *err);
/* {"runs": [...], "total", "limit", "offset"}, oldest first. */
enum ft_err ft_store_run_list(ft_store *s, const char *owner, const char *experiment, int limit,
                              int offset, json_t **out, struct ft_error *err);
/* Status string into status (16 bytes); details (may be NULL) set to a new string or NULL. */
enum ft_err ft_store_run_status(ft_store *s, int64_t id, char *status, char **details,
                                struct ft_error *err);
/* The stored (normalised) config text, new string. */
enum ft_err ft_store_run_config(ft_store *s, int64_t id, char **config, struct ft_error *err);
/* CREATED -> CANCELED at once; STARTED -> cancel requested (the worker stops at the next
 * batch and marks it CANCELED). FT_ECONFLICT when already terminal. */
enum ft_err ft_store_run_cancel(ft_store *s, int64_t id, struct ft_error *err);
/* Whether cancel was requested (worker side). */
int ft_store_run_cancel_requested(ft_store *s, int64_t id);
/* Delete rows and files. FT_ECONFLICT while STARTED. */
enum ft_err ft_store_run_delete(ft_store *s, int64_t id, struct ft_error *err);
/* Oldest CREATED run -> STARTED; FT_ENOT_FOUND when none is waiting. */
enum ft_err ft_store_run_claim_next(ft_store *s, int64_t *id, struct ft_error *err);
void ft_store_run_set_pid(ft_store *s, int64_t id, pid_t pid);
/* STARTED -> status (FINISHED | FAILED | CANCELED) with details; only from a non-terminal
 * status: returns FT_ECONFLICT (and changes nothing) when the run already ended. A FINISHED
 * for a run whose cancel was accepted (ft_store_run_cancel) becomes CANCELED ("canceled as
 * its training ended"): a cancel that answered 200 always ends the run CANCELED. */
enum ft_err ft_store_run_finish(ft_store *s, int64_t id, const char *status, const char *details);
/* STARTED -> CREATED for runs whose worker is gone (daemon start/stop), with the log line why;
 * their logs and metrics stay (the worker trims the metrics when it resumes). A run whose
 * cancel was requested ends CANCELED instead of going back to the queue. Returns how many. */
int ft_store_runs_requeue_started(ft_store *s, const char *why);
/* The same for one run (its worker was interrupted while the daemon runs on). */
void ft_store_run_requeue(ft_store *s, int64_t id, const char *why);
/* STARTED runs and their worker pids (0 when unknown), at most cap; returns the count. */
int ft_store_runs_started(ft_store *s, int64_t *ids, pid_t *pids, int cap);
/* Directory of run id (new string; created by the worker). */
char *ft_store_run_dir(const ft_store *s, int64_t id);
/* Path of the artifact (new string). */
char *ft_store_artifact_path(const ft_store *s, int64_t id);

/* ---- logs and metrics ---- */
void ft_store_log_append(ft_store *s, int64_t id, const char *line);
/* Log lines with seq > after, in order, into a new string ("line\n..."), *last_seq updated. */
char *ft_store_logs_since(ft_store *s, int64_t id, int64_t after, int64_t *last_seq);
/* phase "before" | "epoch" | "after"; values borrowed. */
void ft_store_metrics_put(ft_store *s, int64_t id, const char *phase, int epoch, json_t *values);
/* {"before": {...}, "after": {...}, "epochs": [...]} */
json_t *ft_store_metrics_get(ft_store *s, int64_t id);
/* Delete the metrics recorded after epoch (epoch rows beyond it, "after", step rows of later
 * epochs); epoch < 0 deletes them all. For a run that resumes or starts over. */
enum ft_err ft_store_metrics_truncate(ft_store *s, int64_t id, int epoch);
/* How many metric rows run id has. */
int64_t ft_store_metrics_count(ft_store *s, int64_t id);
/* {"before": [...], "after": [...]}: the example queries of EvaluationCallbacks with
 * gather_examples, stored as metrics of phase "examples_before" / "examples_after". */
json_t *ft_store_examples_get(ft_store *s, int64_t id);

/* ---- access tokens (server/auth.h) ---- */
/* Store the token of name by its SHA-256 hex. FT_ECONFLICT when name has one. */
enum ft_err ft_store_token_insert(ft_store *s, const char *name, const char *hash,
                                  struct ft_error *err);
/* [{"name", "created_at"}], by name (the hashes stay inside). NULL on a database error. */
json_t *ft_store_token_list(ft_store *s);
/* Delete name's token (what name owns stays). FT_ENOT_FOUND. */
enum ft_err ft_store_token_delete(ft_store *s, const char *name, struct ft_error *err);
/* How many tokens exist; -1 on a database error. */
int64_t ft_store_token_count(ft_store *s);
/* The name of the token whose hash is hash into owner (FT_OWNER_MAX bytes). FT_ENOT_FOUND,
 * FT_EDB. */
enum ft_err ft_store_token_owner(ft_store *s, const char *hash, char owner[FT_OWNER_MAX]);

/* ---- idempotency keys ---- */
/* Claim owner's key for a request whose fingerprint (a SHA-256 hex of method, path and body)
 * is given. FT_OK with *status 0: the key is new and now in flight (end with _finish or
 * _release). FT_OK with *status > 0: the key has a stored response: *status and *body (new
 * string) are it. FT_ECONFLICT: the same request is still in flight. FT_EIDEMPOTENCY_KEY_REUSED:
 * the key was used with another request. Keys are remembered for 24 hours. */
enum ft_err ft_store_idempotency_begin(ft_store *s, const char *owner, const char *key,
                                       const char *fingerprint, int *status, char **body,
                                       struct ft_error *err);
/* Store the response of an in-flight key. */
void ft_store_idempotency_finish(ft_store *s, const char *owner, const char *key, int status,
                                 const char *body);
/* Forget an in-flight key (its request failed: a retry runs it again). */
void ft_store_idempotency_release(ft_store *s, const char *owner, const char *key);
/* Forget every in-flight key (daemon start: their requests died with the last daemon).
 * Returns how many. */
int ft_store_idempotency_clear_pending(ft_store *s);

#endif
