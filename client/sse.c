/* sse.c — text/event-stream parsing for the log stream (see sse.h for the rules kept).
 *
 * Bytes accumulate into the current line; each complete line is one field or, when empty,
 * the end of an event. Buffers grow by doubling and live until ftc_sse_free(). */
#include "sse.h"

#include <stdlib.h>
#include <string.h>

void ftc_sse_init(struct ftc_sse *s, ftc_sse_event_fn on_event, void *ctx)
{
    memset(s, 0, sizeof *s);
    s->on_event = on_event;
    s->ctx = ctx;
}

void ftc_sse_free(struct ftc_sse *s)
{
    free(s->line);
    free(s->data);
    s->line = s->data = NULL;
    s->line_len = s->line_cap = s->data_len = s->data_cap = 0;
}

/* Append n bytes to *buf (NUL-terminated); -1 when out of memory. */
static int grow_append(char **buf, size_t *len, size_t *cap, const char *src, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t c = *cap ? *cap : 256;
        while (c < *len + n + 1)
            c *= 2;
        char *p = realloc(*buf, c);
        if (!p)
            return -1;
        *buf = p;
        *cap = c;
    }
    memcpy(*buf + *len, src, n);
    *len += n;
    (*buf)[*len] = '\0';
    return 0;
}

/* The blank line: hand the event over and reset. */
static int dispatch(struct ftc_sse *s)
{
    int rc = 0;
    if (s->has_data)
        rc = s->on_event(s->ctx, s->event[0] ? s->event : "message", s->data ? s->data : "");
    s->has_data = 0;
    s->data_len = 0;
    if (s->data)
        s->data[0] = '\0';
    s->event[0] = '\0';
    return rc;
}

/* One complete line (NUL-terminated, no line end). */
static int field(struct ftc_sse *s, char *line, size_t len)
{
    if (len == 0)
        return dispatch(s);
    if (line[0] == ':')
        return 0;
    char *colon = memchr(line, ':', len);
    const char *value = "";
    if (colon) {
        *colon = '\0';
        value = colon[1] == ' ' ? colon + 2 : colon + 1;
    }
    if (strcmp(line, "event") == 0) {
        size_t n = strlen(value) < sizeof s->event ? strlen(value) : sizeof s->event - 1;
        memcpy(s->event, value, n);
        s->event[n] = '\0';
    } else if (strcmp(line, "data") == 0) {
        if (s->has_data && grow_append(&s->data, &s->data_len, &s->data_cap, "\n", 1) != 0)
            return -1;
        if (grow_append(&s->data, &s->data_len, &s->data_cap, value, strlen(value)) != 0)
            return -1;
        s->has_data = 1;
    }
    return 0;
}

int ftc_sse_feed(struct ftc_sse *s, const char *buf, size_t len)
{
    while (len > 0) {
        const char *nl = memchr(buf, '\n', len);
        size_t n = nl ? (size_t)(nl - buf) : len;
        if (grow_append(&s->line, &s->line_len, &s->line_cap, buf, n) != 0)
            return -1;
        buf += n;
        len -= n;
        if (!nl)
            break;
        buf++;
        len--;
        if (s->line_len && s->line[s->line_len - 1] == '\r')
            s->line[--s->line_len] = '\0';
        size_t line_len = s->line_len;
        s->line_len = 0;
        int rc = field(s, s->line, line_len);
        if (rc != 0)
            return rc;
    }
    return 0;
}
