/* fuzz_common.h — small helpers shared by the libFuzzer targets in tests/fuzz/ (header-only:
 * every fuzz target is one .c file linked with the project's libraries).
 *
 * A fuzz target's input is carved with fz_take_line() (the bytes up to the next '\n', copied
 * into a NUL-terminated buffer) and fz_take_u32(); what is left is the body. A broken
 * invariant is reported with FZ_CHECK, which prints the condition and aborts, so libFuzzer
 * saves the input as a crash. */
#ifndef FT_FUZZ_COMMON_H
#define FT_FUZZ_COMMON_H

#include "ft_error.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FZ_CHECK(cond)                                                                          \
    do {                                                                                        \
        if (!(cond)) {                                                                          \
            fprintf(stderr, "%s:%d: fuzz invariant violated: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                            \
        }                                                                                       \
    } while (0)

/* The unread part of a fuzz input. */
struct fz_input {
    const uint8_t *p;
    size_t n;
};

/* Copy the bytes up to the next '\n' (or the end) into out (cap bytes, always NUL-terminated,
 * cut at cap - 1) and consume them with the '\n'. Returns the length copied. */
static inline size_t fz_take_line(struct fz_input *in, char *out, size_t cap)
{
    const uint8_t *nl = in->n ? memchr(in->p, '\n', in->n) : NULL;
    size_t len = nl ? (size_t)(nl - in->p) : in->n;
    size_t copy = len < cap - 1 ? len : cap - 1;
    memcpy(out, in->p, copy);
    out[copy] = '\0';
    in->p += len + (nl ? 1 : 0);
    in->n -= len + (nl ? 1 : 0);
    return copy;
}

/* The next 4 bytes as a little-endian u32 (missing bytes read as 0). */
static inline uint32_t fz_take_u32(struct fz_input *in)
{
    uint32_t v = 0;
    for (int i = 0; i < 4 && in->n; i++, in->p++, in->n--)
        v |= (uint32_t)in->p[0] << (8 * i);
    return v;
}

/* Whether err holds what ft_error.h promises: its code, a message, and message and param fit
 * to go straight into a JSON error body (valid UTF-8). */
static inline int fz_error_ok(const struct ft_error *err, enum ft_err code)
{
    json_t *m = json_string(err->message), *p = json_string(err->param);
    int ok = err->code == code && err->message[0] && m && p;
    if (!ok)
        fprintf(stderr, "error not fit for JSON: code %d, param \"%s\", message \"%s\"\n",
                (int)err->code, err->param, err->message);
    json_decref(m);
    json_decref(p);
    return ok;
}

/* First occurrence of needle[0..m) in p[0..n), or NULL. */
static inline const uint8_t *fz_find(const uint8_t *p, size_t n, const char *needle, size_t m)
{
    for (size_t i = 0; m && i + m <= n; i++)
        if (p[i] == (uint8_t)needle[0] && memcmp(p + i, needle, m) == 0)
            return p + i;
    return NULL;
}

#if defined(_XOPEN_SOURCE) /* nftw: targets that keep a store define it before any include */
#include <ftw.h>

static inline int fz_rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

/* Remove a directory tree (the fuzz targets' temporary stores). */
static inline void fz_rm_tree(const char *path)
{
    nftw(path, fz_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}
#endif

#endif
