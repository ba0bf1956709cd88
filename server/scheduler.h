/* scheduler.h — the run queue's consumer: starts the oldest CREATED run whenever a worker slot
 * is free, each in its own worker process (`finetunerd --worker ID`), reaps workers, and marks
 * a run FAILED with the cause when its worker dies without ending it. */
#ifndef FT_SCHEDULER_H
#define FT_SCHEDULER_H

#include "store.h"

typedef struct ft_scheduler ft_scheduler;

struct ft_scheduler_opts {
    const char *exe;       /* path of the finetunerd binary (borrowed, copied) */
    const char *data_dir;  /* copied */
    const char *log_level; /* passed to workers, copied */
    int workers;           /* concurrent runs >= 1 */
};

/* Start the scheduler thread. store is borrowed (shared with the HTTP threads). NULL on
 * failure. */
ft_scheduler *ft_scheduler_start(ft_store *store, const struct ft_scheduler_opts *opts);
/* Wake it now (a run was queued or canceled). Safe from any thread. */
void ft_scheduler_wake(void *sched);
/* Number of live workers. */
int ft_scheduler_running(ft_scheduler *s);
/* Stop starting runs, SIGTERM the workers (SIGKILL after grace_s seconds), reap them, put
 * their runs back in the queue, join the thread, free. NULL is a no-op. */
void ft_scheduler_stop(ft_scheduler *s, int grace_s);

#endif
