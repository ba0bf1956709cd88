/* store.h — finetunerd's state in one SQLite database (WAL) plus files beside it.
 *
 * <data_dir>/finetunerd.db          experiments, runs, run logs, per-epoch metrics, datasets
 * <data_dir>/datasets/<name>.safetensors   stored datasets (see common/dataset.h)
 * <data_dir>/runs/<id>/model.safetensors   a run's artifact
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

typedef struct ft_store ft_store;

/* Open (creating the directory, database and schema when missing). Errors: FT_EIO, FT_EDB. */
enum ft_err ft_store_open(const char *data_dir, ft_store **out, struct ft_error *err);
void ft_store_close(ft_store *s);
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
/* Path of a dataset's file (new string). */
char *ft_store_dataset_path(const ft_store *s, const char *name);
/* Insert metadata. FT_ECONFLICT when the name exists. */
enum ft_err ft_store_dataset_insert(ft_store *s, const struct ft_dataset_info *info,
                                    struct ft_error *err);
/* Dataset object or FT_ENOT_FOUND. */
enum ft_err ft_store_dataset_get(ft_store *s, const char *name, json_t **out, struct ft_error *err);
json_t *ft_store_dataset_list(ft_store *s);
/* Delete metadata and file. FT_ENOT_FOUND; FT_ECONFLICT while a CREATED/STARTED run uses it. */
enum ft_err ft_store_dataset_delete(ft_store *s, const char *name, struct ft_error *err);

/* ---- experiments ---- */
/* Create when missing; *created (may be NULL) says which. */
enum ft_err ft_store_experiment_ensure(ft_store *s, const char *name, int *created,
                                       struct ft_error *err);
enum ft_err ft_store_experiment_get(ft_store *s, const char *name, json_t **out,
                                    struct ft_error *err);
json_t *ft_store_experiment_list(ft_store *s);
/* Delete it with its runs' rows and files. FT_ECONFLICT while one is CREATED/STARTED. */
enum ft_err ft_store_experiment_delete(ft_store *s, const char *name, struct ft_error *err);

/* ---- runs ---- */
/* Insert a CREATED run (experiment created when missing). name NULL = "run-<n>". datasets
 * (count) are recorded so a dataset in use cannot be deleted. FT_ECONFLICT on a taken name. */
enum ft_err ft_store_run_insert(ft_store *s, const char *experiment, const char *name,
                                const char *description, const char *config_json,
                                const char *const *datasets, int count, int64_t *id,
                                struct ft_error *err);
/* Id of run (experiment, name), FT_ENOT_FOUND naming which is missing. */
enum ft_err ft_store_run_find(ft_store *s, const char *experiment, const char *name, int64_t *id,
                              struct ft_error *err);
/* The run object (see the README's API table). */
enum ft_err ft_store_run_get(ft_store *s, int64_t id, json_t **out, struct ft_error *err);
/* {"runs": [...], "total", "limit", "offset"}, oldest first. */
enum ft_err ft_store_run_list(ft_store *s, const char *experiment, int limit, int offset,
                              json_t **out, struct ft_error *err);
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
 * status: returns FT_ECONFLICT (and changes nothing) when the run already ended. */
enum ft_err ft_store_run_finish(ft_store *s, int64_t id, const char *status, const char *details);
/* STARTED -> CREATED for runs whose worker is gone (daemon start/stop), with the log line why;
 * their logs and metrics stay (the worker trims the metrics when it resumes). Returns how
 * many. */
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

#endif
