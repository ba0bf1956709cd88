/* dataset.h — an in-memory labelled dataset and its formats.
 *
 * A dataset is n rows of dim float32 features plus one label per row. Labels are kept as
 * names (label_names, owned) and as int32 ids into that table (labels), so two datasets can
 * be put into one label space with ft_dataset_map_labels(). Document ids are row indices.
 *
 * Formats:
 *  - CSV: header row; a "label" (or Finetuner's "finetuner_label") column; every other column
 *    a number. Errors name the 1-based line and column.
 *  - IDX (MNIST/Fashion-MNIST): images (magic 0x00000803, u8, n x rows x cols) and labels
 *    (magic 0x00000801, u8, n), each gzipped or raw (zlib). Pixels scaled to [0, 1] as
 *    pixel / 255.0f.
 *  - Stored form: a safetensors file with "x" F32 (n, dim) and "labels" I32 (n); metadata
 *    "label_names" (JSON array of strings) and "image_shape" ("C,H,W" or ""). Pixel data
 *    (an image shape and every value exactly p / 255.0f, p = 0..255, as IDX gives) is stored
 *    as "x" U8 (n, dim) with metadata "scale" = "1/255" instead: a quarter of the bytes, the
 *    same values when read back.
 *
 * Compact store: a dataset may hold its rows as bytes (x8, with x NULL); the value of byte p
 * is p / 255.0f, formed when a batch is built (the trainer does; readers of x must call
 * ft_dataset_expand first). ft_dataset_compact and ft_dataset_load_compact make one. */
#ifndef FT_DATASET_H
#define FT_DATASET_H

#include "ft_error.h"

#include <stddef.h>
#include <stdint.h>

struct ft_dataset {
    int64_t n;          /* rows */
    int dim;            /* features per row */
    float *x;           /* (n, dim) row-major, owned */
    int32_t *labels;    /* (n) ids into label_names, owned */
    int num_labels;     /* entries in label_names */
    char **label_names; /* (num_labels) owned strings */
    int image_shape[3]; /* C, H, W when the rows are images (IDX), else 0, 0, 0 */
    uint8_t *x8;        /* (n, dim) owned: the compact store, or NULL (then x holds the rows); the
                           value of byte p is p / 255.0f */
};

/* Parse CSV text buf[0..len) (not NUL-terminated necessarily). On success *out is new (free
 * with ft_dataset_free). Errors: FT_EINVAL with a message naming line and column (empty file,
 * no label column, ragged row, non-number, non-finite number), FT_ENOMEM. */
enum ft_err ft_dataset_parse_csv(const char *buf, size_t len, struct ft_dataset **out,
                                 struct ft_error *err);

/* Parse IDX images + labels, each gzipped or raw. On success *out is new. Errors: FT_EINVAL
 * (bad magic, truncated data, counts that disagree, corrupt gzip) with param "images" or
 * "labels", FT_ENOMEM. */
enum ft_err ft_dataset_parse_idx(const void *images, size_t images_len, const void *labels,
                                 size_t labels_len, struct ft_dataset **out, struct ft_error *err);

/* Read and parse two IDX files from disk (convenience for tools, tests and the demo). */
enum ft_err ft_dataset_load_idx_files(const char *images_path, const char *labels_path,
                                      struct ft_dataset **out, struct ft_error *err);

/* Write ds to path atomically (temp file + fsync + rename) as safetensors (see above). */
enum ft_err ft_dataset_save(const struct ft_dataset *ds, const char *path, struct ft_error *err);
/* Load a dataset written by ft_dataset_save. *out is new. Errors: FT_EIO, FT_EINVAL. */
enum ft_err ft_dataset_load(const char *path, struct ft_dataset **out, struct ft_error *err);

/* Like ft_dataset_load, but a stored "x" U8 stays bytes: *out is in the compact store (x NULL,
 * x8 set). F32 files load as ft_dataset_load does. */
enum ft_err ft_dataset_load_compact(const char *path, struct ft_dataset **out,
                                    struct ft_error *err);

/* Turn ds into the compact store when that loses nothing: it has an image shape and every value
 * is exactly p / 255.0f for a p in 0..255. x is freed. Returns 1 when ds is (now) compact, 0
 * when it stays float (or on ENOMEM, ds unchanged). */
int ft_dataset_compact(struct ft_dataset *ds);

/* Give a compact ds its float rows back (x = x8 / 255.0f, x8 freed); no-op otherwise.
 * Errors: FT_ENOMEM (ds unchanged). */
enum ft_err ft_dataset_expand(struct ft_dataset *ds);

/* Row row of ds as floats into dst (dim), from x or the compact store. */
void ft_dataset_row(const struct ft_dataset *ds, int64_t row, float *dst);

/* A new dataset with rows idx[0..count) of ds (same label table; compact when ds is). NULL on
 * ENOMEM. */
struct ft_dataset *ft_dataset_subset(const struct ft_dataset *ds, const int64_t *idx,
                                     int64_t count);

/* Map b's label ids into a's label table by name: out[i] = id in a of b's label i, or -1
 * when a has no such name. out has b->num_labels entries (caller-provided). */
void ft_dataset_map_labels(const struct ft_dataset *a, const struct ft_dataset *b, int32_t *out);

/* Free ds and everything it owns. NULL is a no-op. */
void ft_dataset_free(struct ft_dataset *ds);

#endif
