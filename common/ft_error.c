/* ft_error.c — names, messages and HTTP statuses generated from the FT_ERRORS list. */
#include "ft_error.h"

#include <stdarg.h>
#include <stdint.h>
#include <string.h>

static const char *const names[] = {
#define X(name, api, status, msg) api,
    FT_ERRORS(X)
#undef X
};
static const char *const messages[] = {
#define X(name, api, status, msg) msg,
    FT_ERRORS(X)
#undef X
};
static const int statuses[] = {
#define X(name, api, status, msg) status,
    FT_ERRORS(X)
#undef X
};

const char *ft_err_name(enum ft_err code)
{
    return (unsigned)code < FT_E_COUNT ? names[code] : names[FT_EINTERNAL];
}

const char *ft_err_message(enum ft_err code)
{
    return (unsigned)code < FT_E_COUNT ? messages[code] : messages[FT_EINTERNAL];
}

int ft_err_http_status(enum ft_err code)
{
    return (unsigned)code < FT_E_COUNT ? statuses[code] : 500;
}

/* Length of the well-formed UTF-8 sequence at s, or 0 when s does not start one (also when it
 * is cut short by the terminating NUL). */
static size_t utf8_sequence(const unsigned char *s)
{
    unsigned c = s[0];
    size_t n = c < 0x80                 ? 1
               : c >= 0xC2 && c <= 0xDF ? 2
               : c >= 0xE0 && c <= 0xEF ? 3
               : c >= 0xF0 && c <= 0xF4 ? 4
                                        : 0;
    if (n <= 1)
        return n;
    uint32_t cp = c & (0x3Fu >> (n - 1));
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3Fu);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || (cp >= 0xD800 && cp <= 0xDFFF) ||
        cp > 0x10FFFF)
        return 0;
    return n;
}

void ft_utf8_sanitize(char *s)
{
    unsigned char *p = (unsigned char *)s;
    while (*p) {
        size_t n = utf8_sequence(p);
        if (n == 0)
            *p++ = '?';
        else
            p += n;
    }
}

enum ft_err ft_error_set(struct ft_error *err, enum ft_err code, const char *param, const char *fmt,
                         ...)
{
    if (!err)
        return code;
    err->code = code;
    snprintf(err->param, sizeof err->param, "%s", param ? param : "");
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    } else {
        snprintf(err->message, sizeof err->message, "%s", ft_err_message(code));
    }
    ft_utf8_sanitize(err->param);
    ft_utf8_sanitize(err->message);
    return code;
}

void ft_error_clear(struct ft_error *err)
{
    if (!err)
        return;
    err->code = FT_OK;
    err->param[0] = '\0';
    err->message[0] = '\0';
}
