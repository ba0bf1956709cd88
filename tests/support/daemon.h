/* daemon.h — start and stop a real finetunerd for the end-to-end tests.
 *
 * The binary is <dir>/finetunerd with dir from $FT_BIN_DIR, else $BUILD (set by tests/run.sh,
 * so `make asan` tests the ASan daemon), else "build" (tests run from the repository root).
 * Each daemon gets its own free 127.0.0.1 port and its own mkdtemp data directory, so several
 * test binaries (and other people's daemons) can run at the same time. The child is fork/exec'd
 * with PR_SET_PDEATHSIG, so a crashed test never leaves a daemon behind. */
#ifndef FT_TEST_DAEMON_H
#define FT_TEST_DAEMON_H

#include <sys/types.h>

struct td_daemon {
    pid_t pid; /* 0 when not running */
    int port;
    char data_dir[256]; /* mkdtemp directory, removed by td_daemon_stop */
    char base_url[64];  /* "http://127.0.0.1:<port>/api/v1" */
};

/* Start finetunerd --host 127.0.0.1 --port P --data-dir D --log-level warn, then extra_args
 * (NULL-terminated list, or NULL), and wait (10 s) until GET /health answers 200. Retries with
 * another port when the chosen one was taken meanwhile. Fails the test (cr_assert) otherwise. */
void td_daemon_start(struct td_daemon *d, const char *const *extra_args);

/* The same, with the daemon's RLIMIT_FSIZE set to fsize bytes (set in the child only): a write
 * past it fails with EFBIG, as on a full disk. */
void td_daemon_start_fsize(struct td_daemon *d, const char *const *extra_args, long fsize);

/* SIGTERM the daemon and reap it (SIGKILL after 20 s), then remove its data directory.
 * Returns the waitpid status (-1 when it was not running). Safe to call twice. */
int td_daemon_stop(struct td_daemon *d);

/* base_url + path (path starts with '/') in one of 8 rotating static buffers. */
const char *td_url(const struct td_daemon *d, const char *path);

/* Child process ids of the daemon (the training workers), read from
 * /proc/<pid>/task/<tid>/children, into pids (cap entries); returns how many. */
int td_daemon_children(const struct td_daemon *d, pid_t *pids, int cap);

/* Run `finetunerd --data-dir data_dir token SUB [NAME]` (the binary td_daemon_start runs;
 * name NULL = none, stderr discarded) and put the first line it prints, without the newline,
 * into out (cap bytes; may be NULL). Returns its exit code (-1 when it could not run). */
int td_token(const char *data_dir, const char *sub, const char *name, char *out, size_t cap);

/* Sleep ms milliseconds. */
void td_sleep_ms(long ms);
/* Monotonic clock in seconds (for timeouts and durations in tests). */
double td_now_s(void);

/* Remove a directory tree (nftw). Returns 0 or -1. */
int td_remove_tree(const char *path);

#endif
