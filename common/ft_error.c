/* ft_error.c — names, messages and HTTP statuses generated from the FT_ERRORS list. */
#include "ft_error.h"

#include <stdarg.h>
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
