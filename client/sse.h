/* sse.h — libfinetuner internals: a parser of text/event-stream (server-sent events).
 *
 * Fed the body in chunks of any size; calls on_event(ctx, event, data) at every blank line
 * that ends an event with at least one "data:" field (event is "message" when the event has
 * no "event:" field; several data lines are joined with "\n"). Comment lines (": ...") and
 * "id:"/"retry:" fields are ignored. Line ends are "\n" or "\r\n". Unlike the HTML spec, an
 * event whose data is "" is still delivered (an empty log line is still a line). */
#ifndef FT_CLIENT_SSE_H
#define FT_CLIENT_SSE_H

#include <stddef.h>

#pragma GCC visibility push(hidden) /* internal: not exported from the .so */

/* Returns 0 to go on, 1 to stop parsing (ftc_sse_feed returns 1), -1 to fail. */
typedef int (*ftc_sse_event_fn)(void *ctx, const char *event, const char *data);

struct ftc_sse {
    ftc_sse_event_fn on_event;
    void *ctx;
    char *line; /* the incomplete line so far */
    size_t line_len, line_cap;
    char *data; /* the event's data so far */
    size_t data_len, data_cap;
    int has_data;
    char event[64];
};

/* Start a parser (no allocation yet). */
void ftc_sse_init(struct ftc_sse *s, ftc_sse_event_fn on_event, void *ctx);

/* Parse len bytes. Returns 0 (need more), 1 (on_event asked to stop; the rest of buf is
 * ignored), -1 (on_event failed, or out of memory). */
int ftc_sse_feed(struct ftc_sse *s, const char *buf, size_t len);

/* Free the parser's buffers (the struct itself is the caller's). */
void ftc_sse_free(struct ftc_sse *s);

#pragma GCC visibility pop

#endif
