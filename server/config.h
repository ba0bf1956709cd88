/* config.h — finetunerd's settings: one table, read from a config file and then the command
 * line (flags win). The file has one "key = value" per line ('#' starts a comment); keys are
 * the flag names without dashes, with '_' or '-': host, port, data_dir, workers, log_level,
 * max_upload_mb, max_dataset_mb, max_queued_runs, http_threads, max_connections,
 * max_connections_per_ip, connection_timeout, header_timeout, max_json_depth, insecure_no_auth
 * (true|false; on the command line a flag without a value). Words that are not options (`token
 * create NAME`) are kept in command[] for main() to dispatch. */
#ifndef FT_CONFIG_H
#define FT_CONFIG_H

#include "ft_error.h"

struct ft_config {
    char host[64];              /* --host, default 127.0.0.1 */
    int port;                   /* --port, default 8910 (0 = any free port) */
    char data_dir[512];         /* --data-dir, default ./finetunerd-data */
    int workers;                /* --workers, concurrent runs, default 1 */
    char log_level[16];         /* --log-level debug|info|warn|error, default info */
    int max_upload_mb;          /* --max-upload-mb, dataset upload limit, default 1024 */
    int max_dataset_mb;         /* --max-dataset-mb, decoded dataset limit, default 2048 */
    int max_queued_runs;        /* --max-queued-runs, CREATED runs per user, default 100 */
    int insecure_no_auth;       /* --insecure-no-auth: serve a non-loopback host without tokens */
    int http_threads;           /* --http-threads, HTTP threads, 0 = one per core (>= 2) */
    int max_connections;        /* --max-connections, open connections, default 1024 */
    int max_connections_per_ip; /* --max-connections-per-ip, per client address, default 128 */
    int connection_timeout;     /* --connection-timeout, seconds idle before a close, default 60 */
    int header_timeout;         /* --header-timeout, seconds to send request line + headers, 10 */
    int max_json_depth;         /* --max-json-depth, nesting of a JSON body, default 32 */
    char config_file[512];      /* --config FILE */
    long long worker_run;       /* --worker ID (internal: run one training worker), -1 = daemon */
    int help;                   /* --help given */
    const char *command[4];     /* the words that are not options, in order (borrowed from argv) */
    int num_command;
};

/* Defaults. */
void ft_config_default(struct ft_config *c);
/* Apply argv (argv[0] skipped), reading --config FILE first when given. FT_EINVAL with param
 * = the flag and a message for unknown flags, missing or bad values, more than 4 words. */
enum ft_err ft_config_parse_args(struct ft_config *c, int argc, char **argv, struct ft_error *err);
/* Apply a config file. FT_EIO when unreadable, FT_EINVAL naming "file:line". */
enum ft_err ft_config_load_file(struct ft_config *c, const char *path, struct ft_error *err);
/* Whether host (an IPv4 address) is a loopback address (127.0.0.0/8): only such a host may
 * serve without access tokens unless insecure_no_auth is set. */
int ft_config_host_is_loopback(const char *host);
/* The --help text (static). */
const char *ft_config_usage(void);

#endif
