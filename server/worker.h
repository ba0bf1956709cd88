/* worker.h — the training worker process: `finetunerd --worker RUN_ID --data-dir DIR`.
 *
 * Opens its own store connection, loads the run's config and datasets, trains (common/train.h)
 * while writing log lines and metrics to SQLite, writes the artifact, and ends the run
 * FINISHED, FAILED (with the reason) or CANCELED. The daemon's scheduler only watches. */
#ifndef FT_WORKER_H
#define FT_WORKER_H

#include <stdint.h>

/* The exit code of a worker stopped by SIGTERM before its run ended: the run stays STARTED
 * and goes on from its resume state when it is started again. */
#define FT_WORKER_INTERRUPTED 75

/* Run id's training to its end. Returns the process exit code (0 when the run was ended
 * properly, whatever its status; 1 when the store itself could not be used). */
int ft_worker_main(int64_t run_id, const char *data_dir);

#endif
