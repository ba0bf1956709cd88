/* safetensors.h — read and write the safetensors format.
 *
 * Format (https://github.com/huggingface/safetensors): 8-byte little-endian u64 N, then N bytes
 * of JSON header {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
 * "__metadata__": {"key": "string value", ...}}, padded with spaces to a multiple of 8, then
 * the raw little-endian tensor bytes. Offsets are relative to the start of the byte buffer.
 * Supported dtypes: F32, I32, I64, U8. */
#ifndef FT_SAFETENSORS_H
#define FT_SAFETENSORS_H

#include "ft_error.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define FT_ST_MAX_DIMS 8

/* One tensor to write (borrowed pointers). */
struct ft_tensor_view {
    const char *name;
    const char *dtype; /* "F32", "I32", "I64" or "U8" */
    int ndim;
    int64_t shape[FT_ST_MAX_DIMS];
    const void *data; /* prod(shape) * sizeof(dtype) bytes */
};

/* Write tensors[0..count) and metadata (borrowed; a JSON object whose values are strings, or
 * NULL) to path atomically: path.tmp, fsync, rename, fsync of the directory.
 * Errors: FT_EINVAL (bad dtype, non-string metadata value, duplicate name), FT_EIO. */
enum ft_err ft_safetensors_write(const char *path, const struct ft_tensor_view *tensors, int count,
                                 json_t *metadata, struct ft_error *err);

/* A file read into memory and checked (header JSON, offsets in bounds, no overlap, sizes match
 * dtype x shape). Opaque. */
typedef struct ft_safetensors ft_safetensors;

/* Read and validate path. New handle: ft_safetensors_free(). Errors: FT_EIO, FT_EINVAL. */
enum ft_err ft_safetensors_open(const char *path, ft_safetensors **out, struct ft_error *err);
/* The same from a buffer (copied). */
enum ft_err ft_safetensors_parse(const void *buf, size_t len, ft_safetensors **out,
                                 struct ft_error *err);

/* Look up tensor name. Returns 0 and fills *view (pointers borrowed: valid until
 * ft_safetensors_free), or -1 when absent. */
int ft_safetensors_get(const ft_safetensors *st, const char *name, struct ft_tensor_view *view);
/* Number of tensors and the i-th name (borrowed). */
int ft_safetensors_count(const ft_safetensors *st);
const char *ft_safetensors_name(const ft_safetensors *st, int i);
/* The __metadata__ object (borrowed; never NULL: an empty object when absent). */
json_t *ft_safetensors_metadata(const ft_safetensors *st);

void ft_safetensors_free(ft_safetensors *st);

#endif
