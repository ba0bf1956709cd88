/* config.c — the settings table, shared by the config file and the flags. */
#include "config.h"

#include "log.h"

#include <arpa/inet.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum kind { K_STR, K_INT, K_BOOL };

struct setting {
    const char *name; /* flag without "--", '-' separated */
    enum kind kind;
    size_t offset, size;
    long lo, hi;
};

#define STR(n, f)                                                                         \
    {                                                                                     \
        n, K_STR, offsetof(struct ft_config, f), sizeof(((struct ft_config *)0)->f), 0, 0 \
    }
#define INT(n, f, lo, hi)                                  \
    {                                                      \
        n, K_INT, offsetof(struct ft_config, f), 0, lo, hi \
    }
#define BOOL(n, f)                                        \
    {                                                     \
        n, K_BOOL, offsetof(struct ft_config, f), 0, 0, 1 \
    }

static const struct setting settings[] = {
    STR("host", host),
    INT("port", port, 0, 65535),
    STR("data-dir", data_dir),
    INT("workers", workers, 1, 64),
    STR("log-level", log_level),
    INT("max-upload-mb", max_upload_mb, 1, 65536),
    INT("max-dataset-mb", max_dataset_mb, 1, 1 << 20),
    INT("max-queued-runs", max_queued_runs, 1, 1000000),
    BOOL("insecure-no-auth", insecure_no_auth),
    INT("http-threads", http_threads, 0, 256),
    INT("max-connections", max_connections, 4, 65536),
    INT("max-connections-per-ip", max_connections_per_ip, 1, 65536),
    INT("connection-timeout", connection_timeout, 1, 86400),
    INT("header-timeout", header_timeout, 1, 3600),
    INT("max-json-depth", max_json_depth, 2, 1000),
};

void ft_config_default(struct ft_config *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->host, sizeof c->host, "127.0.0.1");
    c->port = 8910;
    snprintf(c->data_dir, sizeof c->data_dir, "./finetunerd-data");
    c->workers = 1;
    snprintf(c->log_level, sizeof c->log_level, "info");
    c->max_upload_mb = 1024;
    c->max_dataset_mb = 2048;
    c->max_queued_runs = 100;
    c->max_connections = 1024;
    c->max_connections_per_ip = 128;
    c->connection_timeout = 60;
    c->header_timeout = 10;
    c->max_json_depth = 32;
    c->worker_run = -1;
}

const char *ft_config_usage(void)
{
    return "usage: finetunerd [options]\n"
           "\n"
           "  --host ADDR          IPv4 address to listen on (default 127.0.0.1)\n"
           "  --port N             TCP port (default 8910; 0 = any free port)\n"
           "  --data-dir DIR       SQLite database, datasets and artifacts\n"
           "                       (default ./finetunerd-data)\n"
           "  --workers N          runs trained at once, each in its own process (default 1)\n"
           "  --log-level LEVEL    debug | info | warn | error (default info)\n"
           "  --max-upload-mb N    largest dataset upload in MiB (default 1024)\n"
           "  --max-dataset-mb N   largest dataset once decoded to float32, in MiB (default 2048)\n"
           "  --max-queued-runs N  queued (CREATED) runs one user may have; more are 429\n"
           "                       (default 100)\n"
           "  --http-threads N     threads serving HTTP, an epoll loop each (default 0: one per\n"
           "                       core, at least 2)\n"
           "  --max-connections N  open connections at once (default 1024)\n"
           "  --max-connections-per-ip N\n"
           "                       open connections from one client address (default 128)\n"
           "  --connection-timeout S  close a connection idle for S seconds (default 60)\n"
           "  --header-timeout S   close a connection whose request line and headers are not\n"
           "                       complete S seconds after it opened or after its previous\n"
           "                       request (slow clients; default 10)\n"
           "  --max-json-depth N   deepest nesting of arrays/objects in a JSON body; deeper\n"
           "                       is 400 (default 32)\n"
           "  --insecure-no-auth   serve a non-loopback --host even though no access token\n"
           "                       exists (anyone who reaches it may use it)\n"
           "  --config FILE        read settings from FILE first: one 'key = value' a line,\n"
           "                       keys as the flags without dashes (data_dir = /var/lib/ft)\n"
           "  --help               this text\n"
           "\n"
           "finetunerd [--data-dir DIR] token create NAME | list | revoke NAME\n"
           "  manage access tokens: create prints a new token for user NAME once; once any\n"
           "  token exists every request but GET /health needs 'Authorization: token <t>'\n"
           "\n"
           "The REST API is served under http://HOST:PORT/api/v1 (see README.md).\n";
}

static const struct setting *find(const char *name)
{
    char norm[64];
    snprintf(norm, sizeof norm, "%s", name);
    for (char *p = norm; *p; p++)
        if (*p == '_')
            *p = '-';
    for (size_t i = 0; i < sizeof settings / sizeof settings[0]; i++)
        if (strcmp(settings[i].name, norm) == 0)
            return &settings[i];
    return NULL;
}

static enum ft_err set(struct ft_config *c, const struct setting *s, const char *value,
                       const char *where, struct ft_error *err)
{
    char *dst = (char *)c + s->offset;
    if (s->kind == K_BOOL) {
        int yes =
            strcmp(value, "true") == 0 || strcmp(value, "1") == 0 || strcmp(value, "yes") == 0;
        int no = strcmp(value, "false") == 0 || strcmp(value, "0") == 0 || strcmp(value, "no") == 0;
        if (!yes && !no)
            return ft_error_set(err, FT_EINVAL, where, "%s: expected true or false, got '%s'",
                                where, value);
        *(int *)(void *)dst = yes;
    } else if (s->kind == K_STR) {
        if (!value[0] || strlen(value) >= s->size)
            return ft_error_set(err, FT_EINVAL, where, "%s: value must be 1 to %zu characters",
                                where, s->size - 1);
        snprintf(dst, s->size, "%s", value);
    } else {
        char *end;
        long v = strtol(value, &end, 10);
        if (!value[0] || *end || v < s->lo || v > s->hi)
            return ft_error_set(err, FT_EINVAL, where,
                                "%s: expected an integer in [%ld, %ld], got '%s'", where, s->lo,
                                s->hi, value);
        *(int *)(void *)dst = (int)v;
    }
    if (strcmp(s->name, "log-level") == 0) {
        enum ft_log_level lvl;
        if (ft_log_level_parse(c->log_level, &lvl) != 0)
            return ft_error_set(err, FT_EINVAL, where,
                                "%s: log level must be debug, info, warn or error", where);
    }
    return FT_OK;
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r'))
        s[--n] = '\0';
    return s;
}

enum ft_err ft_config_load_file(struct ft_config *c, const char *path, struct ft_error *err)
{
    FILE *f = fopen(path, "r");
    char line[1024], where[600];
    enum ft_err e = FT_OK;
    if (!f)
        return ft_error_set(err, FT_EIO, "--config", "cannot read config file %s", path);
    for (int ln = 1; e == FT_OK && fgets(line, sizeof line, f); ln++) {
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        char *s = trim(line);
        if (!*s)
            continue;
        char *eq = strchr(s, '=');
        snprintf(where, sizeof where, "%s:%d", path, ln);
        if (!eq) {
            e = ft_error_set(err, FT_EINVAL, where, "%s: expected 'key = value'", where);
            break;
        }
        *eq = '\0';
        const struct setting *st = find(trim(s));
        if (!st)
            e = ft_error_set(err, FT_EINVAL, where, "%s: unknown setting '%s'", where, trim(s));
        else
            e = set(c, st, trim(eq + 1), where, err);
    }
    fclose(f);
    return e;
}

enum ft_err ft_config_parse_args(struct ft_config *c, int argc, char **argv, struct ft_error *err)
{
    for (int i = 1; i + 1 < argc; i++) /* the file first, so flags win */
        if (strcmp(argv[i], "--config") == 0) {
            snprintf(c->config_file, sizeof c->config_file, "%s", argv[i + 1]);
            enum ft_err e = ft_config_load_file(c, argv[i + 1], err);
            if (e != FT_OK)
                return e;
        }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            c->help = 1;
            continue;
        }
        if (strncmp(a, "--", 2) != 0) {
            if (c->num_command == 4)
                return ft_error_set(err, FT_EINVAL, a, "unexpected argument '%s' (see --help)", a);
            c->command[c->num_command++] = a;
            continue;
        }
        const struct setting *flag = find(a + 2);
        if (flag && flag->kind == K_BOOL) {
            enum ft_err e = set(c, flag, "true", a, err);
            if (e != FT_OK)
                return e;
            continue;
        }
        if (i + 1 >= argc)
            return ft_error_set(err, FT_EINVAL, a, "%s needs a value", a);
        const char *v = argv[++i];
        if (strcmp(a, "--config") == 0)
            continue;
        if (strcmp(a, "--worker") == 0) {
            char *end;
            c->worker_run = strtoll(v, &end, 10);
            if (*end || c->worker_run < 0)
                return ft_error_set(err, FT_EINVAL, a, "--worker needs a run id");
            continue;
        }
        const struct setting *st = find(a + 2);
        if (!st)
            return ft_error_set(err, FT_EINVAL, a, "unknown option '%s' (see --help)", a);
        enum ft_err e = set(c, st, v, a, err);
        if (e != FT_OK)
            return e;
    }
    return FT_OK;
}

int ft_config_host_is_loopback(const char *host)
{
    struct in_addr a;
    if (inet_pton(AF_INET, host, &a) != 1)
        return 0;
    return (ntohl(a.s_addr) >> 24) == 127;
}
