/* log.c — one line per call to stderr: "2026-11-29T08:00:00Z INFO  store: msg". */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

enum ft_log_level ft_log_threshold = FT_LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

int ft_log_level_parse(const char *name, enum ft_log_level *out)
{
    for (int i = 0; i < 4; i++) {
        if (strcmp(name, level_names[i]) == 0) {
            *out = (enum ft_log_level)i;
            return 0;
        }
    }
    return -1;
}

void ft_log_write(enum ft_log_level level, const char *module, const char *fmt, ...)
{
    char msg[1024], ts[32];
    time_t now = time(NULL);
    struct tm tm;
    va_list ap;
    gmtime_r(&now, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s %-5s %s: %s\n", ts, level_names[level], module, msg);
}
