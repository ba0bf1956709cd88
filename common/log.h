/* log.h — the daemon's own log (stderr): UTC timestamp, level, module, key=value message.
 * The level is checked before formatting. Run logs (what users read through the API) are
 * separate: see server/store.h. */
#ifndef FT_LOG_H
#define FT_LOG_H

enum ft_log_level { FT_LOG_DEBUG, FT_LOG_INFO, FT_LOG_WARN, FT_LOG_ERROR };

/* Current threshold (default FT_LOG_INFO). */
extern enum ft_log_level ft_log_threshold;

/* "debug" | "info" | "warn" | "error" -> 0 and *out; -1 when unknown. */
int ft_log_level_parse(const char *name, enum ft_log_level *out);

#define ft_log(level, module, ...)                        \
    do {                                                  \
        if ((level) >= ft_log_threshold)                  \
            ft_log_write((level), (module), __VA_ARGS__); \
    } while (0)

/* Format and write one line; use the ft_log macro instead. */
void ft_log_write(enum ft_log_level level, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
