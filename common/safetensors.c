/* safetensors.c — write and strictly read the safetensors format (see safetensors.h).
 *
 * Owns: the ft_safetensors handle (parsed header, the tensor byte buffer, aligned copies of
 * tensors whose offset is not a multiple of their element size).
 * Writer: header JSON built with jansson ("__metadata__" first, keys sorted; then tensors in
 * the caller's order with keys dtype, shape, data_offsets), compact, padded with spaces to a
 * multiple of 8, data laid out back to back; written to path.tmp, fsynced, renamed over path,
 * directory fsynced.
 * Reader: the checks of the reference implementation (huggingface/safetensors,
 * safetensors/src/tensor.rs): header size <= 100,000,000 and within the file, a JSON object,
 * every tensor's byte size = dtype size x prod(shape) = end - begin, and the tensors sorted by
 * offset cover the byte buffer exactly (no overlap, no gap, nothing after the last one).
 * Hosts are assumed little-endian (checked at compile time). */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors data is little-endian");

#define ST_MAX_HEADER 100000000ull /* as MAX_HEADER_SIZE in the reference implementation */

struct st_entry {
    char *name;        /* owned */
    const char *dtype; /* static string */
    int ndim;
    int64_t shape[FT_ST_MAX_DIMS];
    uint64_t begin, end; /* offsets into the byte buffer */
    void *aligned;       /* owned copy when begin is misaligned for dtype, else NULL */
};

struct ft_safetensors {
    json_t *metadata;         /* object, owned reference */
    struct st_entry *entries; /* (count) in header order */
    int count;
    unsigned char *data; /* (data_len) owned */
    size_t data_len;
};

/* Size in bytes of one element of dtype and its canonical (static) name; 0 when unknown. */
static size_t dtype_size(const char *dtype, const char **canon)
{
    static const char *const names[] = {"F32", "I32", "I64", "U8"};
    static const size_t sizes[] = {4, 4, 8, 1};
    for (int i = 0; dtype && i < 4; i++) {
        if (strcmp(dtype, names[i]) == 0) {
            if (canon)
                *canon = names[i];
            return sizes[i];
        }
    }
    return 0;
}

/* prod(shape) * elem into *bytes; -1 on a negative dimension or overflow. */
static int tensor_bytes(const int64_t *shape, int ndim, size_t elem, uint64_t *bytes)
{
    uint64_t total = elem;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0)
            return -1;
        if (shape[d] != 0 && total > UINT64_MAX / (uint64_t)shape[d])
            return -1;
        total *= (uint64_t)shape[d];
    }
    *bytes = total;
    return 0;
}

static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* ---------------------------------------------------------------------------------------
 * Writer */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* *out = a new copy of the metadata object with its keys sorted. Errors: FT_EINVAL (not an
 * object, a value not a string), FT_ENOMEM. */
static enum ft_err sorted_metadata(json_t *metadata, json_t **out, struct ft_error *err)
{
    if (!json_is_object(metadata))
        return ft_error_set(err, FT_EINVAL, "metadata", "metadata is not a JSON object");
    size_t n = json_object_size(metadata), i = 0;
    const char **keys = malloc((n ? n : 1) * sizeof *keys);
    const char *key;
    json_t *value;
    if (!keys)
        return ft_error_set(err, FT_ENOMEM, NULL, "out of memory");
    json_object_foreach(metadata, key, value)
    {
        if (!json_is_string(value)) {
            free(keys);
            return ft_error_set(err, FT_EINVAL, "metadata",
                                "metadata value of \"%s\" is not a string", key);
        }
        keys[i++] = key;
    }
    qsort(keys, n, sizeof *keys, cmp_str);
    *out = json_object();
    for (i = 0; *out && i < n; i++) {
        if (json_object_set(*out, keys[i], json_object_get(metadata, keys[i])) < 0) {
            json_decref(*out);
            *out = NULL;
        }
    }
    free(keys);
    return *out ? FT_OK : ft_error_set(err, FT_ENOMEM, NULL, "out of memory");
}

/* Check tensor t (index i) and return its byte size in *bytes. */
static enum ft_err check_view(const struct ft_tensor_view *t, int i, uint64_t *bytes,
                              struct ft_error *err)
{
    const char *name = t->name ? t->name : "";
    if (!t->name || !*t->name || strcmp(t->name, "__metadata__") == 0)
        return ft_error_set(err, FT_EINVAL, "tensors", "tensor %d has an invalid name \"%s\"", i,
                            name);
    json_t *utf8 = json_string(t->name); /* NULL when not valid UTF-8 */
    json_decref(utf8);
    if (!utf8)
        return ft_error_set(err, FT_EINVAL, "tensors", "tensor %d: name is not valid UTF-8", i);
    size_t elem = dtype_size(t->dtype, NULL);
    if (elem == 0)
        return ft_error_set(err, FT_EINVAL, "tensors", "tensor \"%s\": unknown dtype \"%s\"", name,
                            t->dtype ? t->dtype : "(null)");
    if (t->ndim < 0 || t->ndim > FT_ST_MAX_DIMS || tensor_bytes(t->shape, t->ndim, elem, bytes) < 0)
        return ft_error_set(err, FT_EINVAL, "tensors", "tensor \"%s\": invalid shape", name);
    if (*bytes > 0 && !t->data)
        return ft_error_set(err, FT_EINVAL, "tensors", "tensor \"%s\": no data", name);
    return FT_OK;
}

static json_t *tensor_json(const struct ft_tensor_view *t, uint64_t begin, uint64_t end)
{
    json_t *shape = json_array();
    for (int d = 0; shape && d < t->ndim; d++)
        json_array_append_new(shape, json_integer(t->shape[d]));
    return json_pack("{s:s, s:o, s:[I, I]}", "dtype", t->dtype, "shape", shape, "data_offsets",
                     (json_int_t)begin, (json_int_t)end);
}

/* Add the tensor entries to root, in order, with back-to-back offsets. */
static enum ft_err add_tensors(json_t *root, const struct ft_tensor_view *tensors, int count,
                               struct ft_error *err)
{
    uint64_t offset = 0;
    for (int i = 0; i < count; i++) {
        uint64_t bytes;
        enum ft_err rc = check_view(&tensors[i], i, &bytes, err);
        if (rc != FT_OK)
            return rc;
        if (json_object_get(root, tensors[i].name))
            return ft_error_set(err, FT_EINVAL, "tensors", "duplicate tensor name \"%s\"",
                                tensors[i].name);
        json_t *entry = tensor_json(&tensors[i], offset, offset + bytes);
        if (!entry || json_object_set_new(root, tensors[i].name, entry) < 0)
            return ft_error_set(err, FT_ENOMEM, NULL, "out of memory building the header");
        offset += bytes;
    }
    return FT_OK;
}

/* The header text: 8-byte size then JSON padded with spaces to a multiple of 8. *out is new
 * (free()), *len its size. */
static enum ft_err build_header(const struct ft_tensor_view *tensors, int count, json_t *metadata,
                                unsigned char **out, size_t *len, struct ft_error *err)
{
    json_t *root = json_object();
    if (!root)
        return ft_error_set(err, FT_ENOMEM, NULL, "out of memory building the header");
    enum ft_err rc = FT_OK;
    json_t *sorted = NULL;
    if (metadata)
        rc = sorted_metadata(metadata, &sorted, err);
    if (sorted && json_object_set_new(root, "__metadata__", sorted) < 0)
        rc = ft_error_set(err, FT_ENOMEM, NULL, "out of memory building the header");
    if (rc == FT_OK)
        rc = add_tensors(root, tensors, count, err);
    char *text = rc == FT_OK ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    if (rc != FT_OK)
        return rc;
    if (!text)
        return ft_error_set(err, FT_ENOMEM, NULL, "out of memory building the header");
    size_t n = strlen(text), padded = (n + 7) / 8 * 8;
    *out = malloc(8 + padded);
    if (*out) {
        put_le64(*out, padded);
        memcpy(*out + 8, text, n);
        memset(*out + 8 + n, ' ', padded - n);
        *len = 8 + padded;
    }
    free(text);
    return *out ? FT_OK : ft_error_set(err, FT_ENOMEM, NULL, "out of memory");
}

static int write_all(int fd, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -1;
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

/* fsync the directory holding path; filesystems that cannot (EINVAL) are not an error. */
static int fsync_dir(const char *path)
{
    char *copy = strdup(path);
    if (!copy)
        return -1;
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free(copy);
    if (fd < 0)
        return -1;
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    errno = e;
    return rc < 0 && e != EINVAL ? -1 : 0;
}

/* Write header then every tensor's bytes to fd; fsync. */
static int write_contents(int fd, const unsigned char *header, size_t header_len,
                          const struct ft_tensor_view *tensors, int count)
{
    if (write_all(fd, header, header_len) < 0)
        return -1;
    for (int i = 0; i < count; i++) {
        uint64_t bytes = 0;
        check_view(&tensors[i], i, &bytes, NULL);
        if (write_all(fd, tensors[i].data, (size_t)bytes) < 0)
            return -1;
    }
    return fsync(fd);
}

static enum ft_err write_atomic(const char *path, const unsigned char *header, size_t header_len,
                                const struct ft_tensor_view *tensors, int count,
                                struct ft_error *err)
{
    size_t plen = strlen(path) + 5;
    char *tmp = malloc(plen);
    if (!tmp)
        return ft_error_set(err, FT_ENOMEM, NULL, "out of memory");
    snprintf(tmp, plen, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int ok = fd >= 0 && write_contents(fd, header, header_len, tensors, count) == 0;
    int e = errno;
    if (fd >= 0 && close(fd) < 0 && ok) {
        ok = 0;
        e = errno;
    }
    if (ok && rename(tmp, path) < 0) {
        ok = 0;
        e = errno;
    }
    if (!ok && fd >= 0)
        unlink(tmp);
    free(tmp);
    if (ok && fsync_dir(path) < 0) {
        ok = 0;
        e = errno;
    }
    if (ok)
        return FT_OK;
    /* a full disk, a quota or RLIMIT_FSIZE: the caller may tell the user to free space */
    enum ft_err code = e == ENOSPC || e == EDQUOT || e == EFBIG ? FT_ENOSPACE : FT_EIO;
    return ft_error_set(err, code, NULL, "cannot write %s: %s", path, strerror(e));
}

enum ft_err ft_safetensors_write(const char *path, const struct ft_tensor_view *tensors, int count,
                                 json_t *metadata, struct ft_error *err)
{
    if (!path || count < 0 || (count > 0 && !tensors))
        return ft_error_set(err, FT_EINVAL, NULL, "invalid arguments to ft_safetensors_write");
    unsigned char *header = NULL;
    size_t header_len = 0;
    enum ft_err rc = build_header(tensors, count, metadata, &header, &header_len, err);
    if (rc == FT_OK)
        rc = write_atomic(path, header, header_len, tensors, count, err);
    free(header);
    return rc;
}

/* ---------------------------------------------------------------------------------------
 * Reader */

void ft_safetensors_free(ft_safetensors *st)
{
    if (!st)
        return;
    for (int i = 0; i < st->count; i++) {
        free(st->entries[i].name);
        free(st->entries[i].aligned);
    }
    free(st->entries);
    free(st->data);
    json_decref(st->metadata);
    free(st);
}

static enum ft_err parse_metadata(ft_safetensors *st, json_t *value, struct ft_error *err)
{
    const char *key;
    json_t *v;
    if (!json_is_object(value))
        return ft_error_set(err, FT_EINVAL, "__metadata__", "__metadata__ is not an object");
    json_object_foreach(value, key, v)
    {
        if (!json_is_string(v))
            return ft_error_set(err, FT_EINVAL, "__metadata__",
                                "__metadata__ value of \"%s\" is not a string", key);
    }
    json_decref(st->metadata);
    st->metadata = json_incref(value);
    return FT_OK;
}

/* Non-negative JSON integer v into *out; -1 otherwise. */
static int json_uint(json_t *v, int64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return -1;
    *out = json_integer_value(v);
    return 0;
}

static enum ft_err parse_shape(struct st_entry *e, json_t *shape, struct ft_error *err)
{
    if (!json_is_array(shape) || json_array_size(shape) > FT_ST_MAX_DIMS)
        return ft_error_set(err, FT_EINVAL, e->name,
                            "tensor \"%s\": shape must be an array of at most %d integers", e->name,
                            FT_ST_MAX_DIMS);
    e->ndim = (int)json_array_size(shape);
    for (int d = 0; d < e->ndim; d++)
        if (json_uint(json_array_get(shape, (size_t)d), &e->shape[d]) < 0)
            return ft_error_set(err, FT_EINVAL, e->name,
                                "tensor \"%s\": shape[%d] is not a non-negative integer", e->name,
                                d);
    return FT_OK;
}

static enum ft_err parse_offsets(struct st_entry *e, json_t *offsets, size_t data_len,
                                 struct ft_error *err)
{
    int64_t b, en;
    if (!json_is_array(offsets) || json_array_size(offsets) != 2 ||
        json_uint(json_array_get(offsets, 0), &b) < 0 ||
        json_uint(json_array_get(offsets, 1), &en) < 0 || b > en)
        return ft_error_set(err, FT_EINVAL, e->name,
                            "tensor \"%s\": data_offsets must be [begin, end] with "
                            "0 <= begin <= end",
                            e->name);
    if ((uint64_t)en > data_len)
        return ft_error_set(err, FT_EINVAL, e->name,
                            "tensor \"%s\": data_offsets [%lld, %lld] beyond the %zu data bytes",
                            e->name, (long long)b, (long long)en, data_len);
    e->begin = (uint64_t)b;
    e->end = (uint64_t)en;
    return FT_OK;
}

/* Fill e (name already set) from the header entry value. */
static enum ft_err parse_entry(struct st_entry *e, json_t *value, size_t data_len,
                               struct ft_error *err)
{
    if (!json_is_object(value))
        return ft_error_set(err, FT_EINVAL, e->name, "tensor \"%s\" is not an object", e->name);
    const char *key;
    json_t *v;
    json_object_foreach(value, key, v)
    {
        if (strcmp(key, "dtype") && strcmp(key, "shape") && strcmp(key, "data_offsets"))
            return ft_error_set(err, FT_EINVAL, e->name, "tensor \"%s\": unknown field \"%s\"",
                                e->name, key);
    }
    size_t elem = dtype_size(json_string_value(json_object_get(value, "dtype")), &e->dtype);
    if (elem == 0)
        return ft_error_set(err, FT_EINVAL, e->name,
                            "tensor \"%s\": dtype must be one of F32, I32, I64, U8", e->name);
    enum ft_err rc = parse_shape(e, json_object_get(value, "shape"), err);
    if (rc == FT_OK)
        rc = parse_offsets(e, json_object_get(value, "data_offsets"), data_len, err);
    if (rc != FT_OK)
        return rc;
    uint64_t bytes;
    if (tensor_bytes(e->shape, e->ndim, elem, &bytes) < 0 || bytes != e->end - e->begin)
        return ft_error_set(err, FT_EINVAL, e->name,
                            "tensor \"%s\": %llu data bytes do not match dtype %s and its shape",
                            e->name, (unsigned long long)(e->end - e->begin), e->dtype);
    return FT_OK;
}

struct span {
    uint64_t begin, end;
    int index;
};

static int cmp_span(const void *a, const void *b)
{
    const struct span *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return 0;
}

/* The tensors sorted by offset must tile [0, data_len) exactly. */
static enum ft_err check_coverage(const ft_safetensors *st, struct ft_error *err)
{
    struct span *order = malloc((size_t)(st->count ? st->count : 1) * sizeof *order);
    if (!order)
        return ft_error_set(err, FT_ENOMEM, NULL, "out of memory");
    for (int i = 0; i < st->count; i++)
        order[i] = (struct span){st->entries[i].begin, st->entries[i].end, i};
    qsort(order, (size_t)st->count, sizeof *order, cmp_span);
    uint64_t at = 0;
    enum ft_err rc = FT_OK;
    for (int k = 0; k < st->count && rc == FT_OK; k++) {
        const struct st_entry *e = &st->entries[order[k].index];
        if (e->begin != at)
            rc = ft_error_set(err, FT_EINVAL, e->name,
                              "tensor \"%s\": data_offsets begin at %llu, expected %llu "
                              "(tensors must not overlap or leave gaps)",
                              e->name, (unsigned long long)e->begin, (unsigned long long)at);
        at = e->end;
    }
    free(order);
    if (rc == FT_OK && at != st->data_len)
        rc = ft_error_set(err, FT_EINVAL, NULL,
                          "tensors cover %llu of the %zu data bytes after the header",
                          (unsigned long long)at, st->data_len);
    return rc;
}

/* Aligned copies of tensors whose offset is not a multiple of their element size, so that
 * callers may read the borrowed data as float / int32_t / int64_t. */
static enum ft_err align_entries(ft_safetensors *st, struct ft_error *err)
{
    for (int i = 0; i < st->count; i++) {
        struct st_entry *e = &st->entries[i];
        if (e->begin % dtype_size(e->dtype, NULL) == 0)
            continue;
        size_t bytes = (size_t)(e->end - e->begin);
        e->aligned = malloc(bytes ? bytes : 1);
        if (!e->aligned)
            return ft_error_set(err, FT_ENOMEM, NULL, "out of memory");
        memcpy(e->aligned, st->data + e->begin, bytes);
    }
    return FT_OK;
}

/* Parse every top-level entry of the header object root into st. */
static enum ft_err parse_entries(ft_safetensors *st, json_t *root, struct ft_error *err)
{
    size_t n = json_object_size(root);
    const char *key;
    json_t *value;
    st->entries = calloc(n ? n : 1, sizeof *st->entries);
    if (!st->entries)
        return ft_error_set(err, FT_ENOMEM, NULL, "out of memory");
    json_object_foreach(root, key, value)
    {
        enum ft_err rc;
        if (strcmp(key, "__metadata__") == 0) {
            rc = parse_metadata(st, value, err);
        } else {
            struct st_entry *e = &st->entries[st->count];
            e->name = strdup(key);
            if (!e->name)
                return ft_error_set(err, FT_ENOMEM, NULL, "out of memory");
            st->count++;
            rc = parse_entry(e, value, st->data_len, err);
        }
        if (rc != FT_OK)
            return rc;
    }
    return FT_OK;
}

static enum ft_err parse_header(ft_safetensors *st, const char *hdr, size_t n, struct ft_error *err)
{
    if (n == 0 || hdr[0] != '{')
        return ft_error_set(err, FT_EINVAL, NULL, "safetensors header is not a JSON object");
    json_error_t jerr;
    json_t *root = json_loadb(hdr, n, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return ft_error_set(err, FT_EINVAL, NULL, "safetensors header is not valid JSON: %s",
                            jerr.text);
    enum ft_err rc = json_is_object(root) ? parse_entries(st, root, err)
                                          : ft_error_set(err, FT_EINVAL, NULL,
                                                         "safetensors header is not a JSON object");
    json_decref(root);
    return rc;
}

/* A new handle from header text hdr[0..n) and the byte buffer data[0..data_len), which it
 * steals (freed on error too). */
static enum ft_err build(const char *hdr, size_t n, unsigned char *data, size_t data_len,
                         ft_safetensors **out, struct ft_error *err)
{
    ft_safetensors *st = calloc(1, sizeof *st);
    if (!st) {
        free(data);
        return ft_error_set(err, FT_ENOMEM, NULL, "out of memory");
    }
    st->data = data;
    st->data_len = data_len;
    st->metadata = json_object();
    enum ft_err rc = st->metadata ? parse_header(st, hdr, n, err)
                                  : ft_error_set(err, FT_ENOMEM, NULL, "out of memory");
    if (rc == FT_OK)
        rc = check_coverage(st, err);
    if (rc == FT_OK)
        rc = align_entries(st, err);
    if (rc != FT_OK) {
        ft_safetensors_free(st);
        return rc;
    }
    *out = st;
    return FT_OK;
}

/* The declared header size n must fit in the avail bytes after the 8-byte prefix. */
static enum ft_err check_header_size(uint64_t n, uint64_t avail, struct ft_error *err)
{
    if (n > ST_MAX_HEADER)
        return ft_error_set(err, FT_EINVAL, NULL, "safetensors header size %llu exceeds %llu",
                            (unsigned long long)n, ST_MAX_HEADER);
    if (n > avail)
        return ft_error_set(err, FT_EINVAL, NULL,
                            "safetensors header size %llu is larger than the %llu bytes left",
                            (unsigned long long)n, (unsigned long long)avail);
    return FT_OK;
}

enum ft_err ft_safetensors_parse(const void *buf, size_t len, ft_safetensors **out,
                                 struct ft_error *err)
{
    const unsigned char *p = buf;
    *out = NULL;
    if (!buf || len < 8)
        return ft_error_set(err, FT_EINVAL, NULL, "truncated safetensors data (%zu bytes)", len);
    uint64_t n = get_le64(p);
    enum ft_err rc = check_header_size(n, len - 8, err);
    if (rc != FT_OK)
        return rc;
    size_t data_len = len - 8 - (size_t)n;
    unsigned char *data = malloc(data_len ? data_len : 1);
    if (!data)
        return ft_error_set(err, FT_ENOMEM, NULL, "out of memory");
    memcpy(data, p + 8 + n, data_len);
    return build((const char *)p + 8, (size_t)n, data, data_len, out, err);
}

/* Read exactly len bytes; -1 with errno set (EIO at an early end of file). */
static int read_exact(int fd, void *buf, size_t len)
{
    unsigned char *p = buf;
    while (len > 0) {
        ssize_t r = read(fd, p, len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            if (r == 0)
                errno = EIO;
            return -1;
        }
        p += r;
        len -= (size_t)r;
    }
    return 0;
}

/* Read header and data of the open file fd of size bytes, then build the handle. */
static enum ft_err read_open_file(int fd, uint64_t size, const char *path, ft_safetensors **out,
                                  struct ft_error *err)
{
    unsigned char prefix[8];
    if (size < 8)
        return ft_error_set(err, FT_EINVAL, NULL, "%s: truncated safetensors file (%llu bytes)",
                            path, (unsigned long long)size);
    if (read_exact(fd, prefix, 8) < 0)
        return ft_error_set(err, FT_EIO, NULL, "cannot read %s: %s", path, strerror(errno));
    uint64_t n = get_le64(prefix);
    enum ft_err rc = check_header_size(n, size - 8, err);
    if (rc != FT_OK)
        return rc;
    size_t data_len = (size_t)(size - 8 - n);
    char *hdr = malloc(n ? (size_t)n : 1);
    unsigned char *data = malloc(data_len ? data_len : 1);
    if (!hdr || !data) {
        rc = ft_error_set(err, FT_ENOMEM, NULL, "out of memory reading %s", path);
    } else if (read_exact(fd, hdr, (size_t)n) < 0 || read_exact(fd, data, data_len) < 0) {
        rc = ft_error_set(err, FT_EIO, NULL, "cannot read %s: %s", path, strerror(errno));
    } else {
        rc = build(hdr, (size_t)n, data, data_len, out, err);
        data = NULL; /* stolen by build */
    }
    free(hdr);
    free(data);
    return rc;
}

enum ft_err ft_safetensors_open(const char *path, ft_safetensors **out, struct ft_error *err)
{
    *out = NULL;
    int fd = path ? open(path, O_RDONLY | O_CLOEXEC) : -1;
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) < 0) {
        int e = path ? errno : EINVAL;
        if (fd >= 0)
            close(fd);
        return ft_error_set(err, FT_EIO, NULL, "cannot open %s: %s", path ? path : "(null)",
                            strerror(e));
    }
    enum ft_err rc = read_open_file(fd, (uint64_t)sb.st_size, path, out, err);
    close(fd);
    return rc;
}

int ft_safetensors_get(const ft_safetensors *st, const char *name, struct ft_tensor_view *view)
{
    for (int i = 0; st && name && i < st->count; i++) {
        const struct st_entry *e = &st->entries[i];
        if (strcmp(e->name, name) != 0)
            continue;
        memset(view, 0, sizeof *view);
        view->name = e->name;
        view->dtype = e->dtype;
        view->ndim = e->ndim;
        memcpy(view->shape, e->shape, sizeof e->shape);
        view->data = e->aligned ? e->aligned : st->data + e->begin;
        return 0;
    }
    return -1;
}

int ft_safetensors_count(const ft_safetensors *st)
{
    return st ? st->count : 0;
}

const char *ft_safetensors_name(const ft_safetensors *st, int i)
{
    return st && i >= 0 && i < st->count ? st->entries[i].name : NULL;
}

json_t *ft_safetensors_metadata(const ft_safetensors *st)
{
    return st->metadata;
}
