/* dataset.c — labelled datasets in memory and their three formats (CSV, IDX, safetensors).
 *
 * Owns: struct ft_dataset and everything it points to (x, labels, label_names).
 * Design: every parser builds rows into growing arrays and labels through a small
 * string->id hash table (ids in order of first appearance), then hands the arrays to a new
 * struct ft_dataset. Input is never trusted: sizes are checked before any multiplication
 * is used, gzip output is capped (IDX_MAX_BYTES), and every error names where it happened
 * (CSV: "line L, column C: ...", param "body"; IDX: param "images" or "labels"). */
#include "dataset.h"

#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <string.h>
#include <stdarg.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define IDX_MAX_BYTES ((size_t)1 << 30) /* cap on an inflated or read IDX file */
#define IDX_IMAGES_MAGIC 0x00000803u
#define IDX_LABELS_MAGIC 0x00000801u

/* ---------------------------------------------------------------------------------------
 * Label table: names in order of first appearance plus an open-addressing hash of them. */

struct label_table {
    char **names; /* (count) owned */
    int count, cap;
    int *slots; /* (nslots) id or -1 */
    size_t nslots;
};

static uint64_t hash_bytes(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static int name_equals(const char *name, const char *s, size_t len)
{
    return strlen(name) == len && memcmp(name, s, len) == 0;
}

/* Slot index holding s, or the empty slot where it would go. */
static size_t label_table_slot(const struct label_table *t, const char *s, size_t len)
{
    size_t i = hash_bytes(s, len) & (t->nslots - 1);
    while (t->slots[i] >= 0 && !name_equals(t->names[t->slots[i]], s, len))
        i = (i + 1) & (t->nslots - 1);
    return i;
}

/* Id of s[0..len), or -1. */
static int label_table_find(const struct label_table *t, const char *s, size_t len)
{
    if (t->nslots == 0)
        return -1;
    return t->slots[label_table_slot(t, s, len)];
}

static int label_table_rehash(struct label_table *t, size_t nslots)
{
    int *slots = malloc(nslots * sizeof *slots);
    if (!slots)
        return -1;
    free(t->slots);
    t->slots = slots;
    t->nslots = nslots;
    for (size_t i = 0; i < nslots; i++)
        slots[i] = -1;
    for (int id = 0; id < t->count; id++)
        slots[label_table_slot(t, t->names[id], strlen(t->names[id]))] = id;
    return 0;
}

/* Id of s[0..len), added when new. -1 on ENOMEM. */
static int label_table_add(struct label_table *t, const char *s, size_t len)
{
    int id = label_table_find(t, s, len);
    if (id >= 0)
        return id;
    if ((size_t)(t->count + 1) * 2 > t->nslots &&
        label_table_rehash(t, t->nslots ? t->nslots * 2 : 16) < 0)
        return -1;
    if (t->count == t->cap) {
        int cap = t->cap ? t->cap * 2 : 16;
        char **names = realloc(t->names, (size_t)cap * sizeof *names);
        if (!names)
            return -1;
        t->names = names;
        t->cap = cap;
    }
    char *copy = malloc(len + 1);
    if (!copy)
        return -1;
    memcpy(copy, s, len);
    copy[len] = '\0';
    t->slots[label_table_slot(t, s, len)] = t->count;
    t->names[t->count] = copy;
    return t->count++;
}

static void label_table_free(struct label_table *t)
{
    for (int i = 0; i < t->count; i++)
        free(t->names[i]);
    free(t->names);
    free(t->slots);
    memset(t, 0, sizeof *t);
}

/* Move the names of t into ds (t is left empty). */
static void label_table_give(struct label_table *t, struct ft_dataset *ds)
{
    ds->label_names = t->names;
    ds->num_labels = t->count;
    t->names = NULL;
    t->count = 0;
    label_table_free(t);
}

/* ---------------------------------------------------------------------------------------
 * Datasets */

void ft_dataset_free(struct ft_dataset *ds)
{
    if (!ds)
        return;
    for (int i = 0; i < ds->num_labels; i++)
        free(ds->label_names[i]);
    free(ds->label_names);
    free(ds->x);
    free(ds->x8);
    free(ds->labels);
    free(ds);
}

/* Row buffers of at least this many bytes are 2 MiB aligned and asked to be backed by huge
 * pages: a batch reads random rows, and with 4 KiB pages each row costs a TLB miss whose
 * page walk misses the caches too. */
#define HUGE_ROWS ((size_t)8 << 20)
#define HUGE_PAGE ((size_t)2 << 20)

/* bytes of row storage (free with free()); NULL on ENOMEM. */
static void *rows_alloc(size_t bytes)
{
    void *p = NULL;
    if (bytes < HUGE_ROWS)
        return malloc(bytes ? bytes : 1);
    if (posix_memalign(&p, HUGE_PAGE, bytes) != 0)
        return NULL;
#ifdef MADV_HUGEPAGE
    madvise(p, (bytes + 4095) & ~(size_t)4095, MADV_HUGEPAGE); /* advice: failure is harmless */
#endif
    return p;
}

/* A new dataset with room for n rows of dim features (labels and x allocated, or x8 when
 * compact; no labels yet). */
static struct ft_dataset *dataset_alloc(int64_t n, int dim, int compact)
{
    struct ft_dataset *ds = calloc(1, sizeof *ds);
    if (!ds)
        return NULL;
    size_t rows = n > 0 ? (size_t)n : 1, values = rows * (size_t)(dim > 0 ? dim : 1);
    ds->n = n;
    ds->dim = dim;
    if (compact)
        ds->x8 = rows_alloc(values);
    else
        ds->x = rows_alloc(values * sizeof *ds->x);
    ds->labels = malloc(rows * sizeof *ds->labels);
    if ((!ds->x && !ds->x8) || !ds->labels) {
        ft_dataset_free(ds);
        return NULL;
    }
    return ds;
}

/* ---------------------------------------------------------------------------------------
 * IDX (MNIST / Fashion-MNIST), raw or gzipped */

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static int is_gzip(const unsigned char *p, size_t len)
{
    return len >= 2 && p[0] == 0x1f && p[1] == 0x8b;
}

/* Grow *buf (capacity *cap) so that it holds more than used bytes, within IDX_MAX_BYTES. */
static enum ft_err grow_inflate_buffer(unsigned char **buf, size_t *cap, const char *which,
                                       struct ft_error *err)
{
    if (*cap >= IDX_MAX_BYTES)
        return ft_error_set(err, FT_ETOO_LARGE, which, "%s: decompressed data exceeds %zu bytes",
                            which, IDX_MAX_BYTES);
    size_t ncap = *cap * 2 > IDX_MAX_BYTES ? IDX_MAX_BYTES : *cap * 2;
    unsigned char *nbuf = realloc(*buf, ncap);
    if (!nbuf)
        return ft_error_set(err, FT_ENOMEM, which, "%s: out of memory while decompressing", which);
    *buf = nbuf;
    *cap = ncap;
    return FT_OK;
}

/* One inflate() step with input refilled in chunks (avail_in is 32-bit). */
static int inflate_step(z_stream *zs, const unsigned char **in, size_t *in_left)
{
    if (zs->avail_in == 0 && *in_left > 0) {
        uInt chunk = *in_left > (1u << 30) ? (1u << 30) : (uInt)*in_left;
        zs->next_in = (Bytef *)*in;
        zs->avail_in = chunk;
        *in += chunk;
        *in_left -= chunk;
    }
    return inflate(zs, Z_NO_FLUSH);
}

/* Inflate every gzip member of in[0..len) into z's growing buffer. */
static enum ft_err inflate_members(z_stream *zs, const unsigned char *in, size_t len,
                                   unsigned char **buf, size_t *cap, const char *which,
                                   struct ft_error *err)
{
    size_t in_left = len;
    for (;;) {
        if (zs->total_out == *cap) {
            enum ft_err rc = grow_inflate_buffer(buf, cap, which, err);
            if (rc != FT_OK)
                return rc;
        }
        zs->next_out = *buf + zs->total_out;
        zs->avail_out = (uInt)(*cap - zs->total_out > UINT_MAX ? UINT_MAX : *cap - zs->total_out);
        int zrc = inflate_step(zs, &in, &in_left);
        if (zrc == Z_STREAM_END && zs->avail_in == 0 && in_left == 0)
            return FT_OK;
        if (zrc == Z_STREAM_END) {
            uLong out = zs->total_out; /* another member follows */
            inflateReset(zs);
            zs->total_out = out;
            continue;
        }
        if (zrc == Z_BUF_ERROR && zs->avail_out > 0)
            return ft_error_set(err, FT_EINVAL, which, "%s: truncated gzip data", which);
        if (zrc != Z_OK && zrc != Z_BUF_ERROR)
            return ft_error_set(err, FT_EINVAL, which, "%s: corrupt gzip data (%s)", which,
                                zs->msg ? zs->msg : "inflate failed");
    }
}

/* Decompress gzip data in[0..len). *out is new (free()); *out_len its size. */
static enum ft_err gunzip(const unsigned char *in, size_t len, unsigned char **out, size_t *out_len,
                          const char *which, struct ft_error *err)
{
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK)
        return ft_error_set(err, FT_ENOMEM, which, "%s: cannot initialise zlib", which);
    size_t cap = 1 << 16;
    unsigned char *buf = malloc(cap);
    enum ft_err rc = buf ? inflate_members(&zs, in, len, &buf, &cap, which, err)
                         : ft_error_set(err, FT_ENOMEM, which, "%s: out of memory", which);
    *out_len = zs.total_out;
    inflateEnd(&zs);
    if (rc != FT_OK) {
        free(buf);
        return rc;
    }
    *out = buf;
    return FT_OK;
}

/* The IDX bytes of data[0..len): borrowed when raw, inflated into *owned when gzipped. */
static enum ft_err idx_bytes(const void *data, size_t len, const char *which,
                             const unsigned char **bytes, size_t *n, unsigned char **owned,
                             struct ft_error *err)
{
    *owned = NULL;
    if (!data && len > 0)
        return ft_error_set(err, FT_EINVAL, which, "%s: no data", which);
    if (!is_gzip(data, len)) {
        *bytes = data;
        *n = len;
        return FT_OK;
    }
    enum ft_err rc = gunzip(data, len, owned, n, which, err);
    *bytes = *owned;
    return rc;
}

struct idx_images {
    uint32_t n, rows, cols;
    const unsigned char *pixels; /* (n, rows, cols), borrowed */
};

static enum ft_err idx_parse_images(const unsigned char *p, size_t len, struct idx_images *im,
                                    struct ft_error *err)
{
    if (len < 16)
        return ft_error_set(err, FT_EINVAL, "images", "images: truncated header (%zu bytes)", len);
    if (be32(p) != IDX_IMAGES_MAGIC)
        return ft_error_set(err, FT_EINVAL, "images",
                            "images: bad magic 0x%08x (want 0x%08x: u8, 3 dimensions)", be32(p),
                            IDX_IMAGES_MAGIC);
    im->n = be32(p + 4);
    im->rows = be32(p + 8);
    im->cols = be32(p + 12);
    if (im->n == 0 || im->rows == 0 || im->cols == 0)
        return ft_error_set(err, FT_EINVAL, "images", "images: empty shape (%u, %u, %u)", im->n,
                            im->rows, im->cols);
    if ((uint64_t)im->rows * im->cols > INT_MAX)
        return ft_error_set(err, FT_EINVAL, "images", "images: %u x %u pixels is too large",
                            im->rows, im->cols);
    uint64_t want = (uint64_t)im->n * im->rows * im->cols;
    if (want > len - 16)
        return ft_error_set(err, FT_EINVAL, "images",
                            "images: truncated data (%zu pixel bytes, want %llu)", len - 16,
                            (unsigned long long)want);
    if (want < len - 16)
        return ft_error_set(err, FT_EINVAL, "images", "images: %llu trailing bytes",
                            (unsigned long long)(len - 16 - want));
    im->pixels = p + 16;
    return FT_OK;
}

static enum ft_err idx_parse_labels(const unsigned char *p, size_t len, uint32_t *n,
                                    const unsigned char **labels, struct ft_error *err)
{
    if (len < 8)
        return ft_error_set(err, FT_EINVAL, "labels", "labels: truncated header (%zu bytes)", len);
    if (be32(p) != IDX_LABELS_MAGIC)
        return ft_error_set(err, FT_EINVAL, "labels",
                            "labels: bad magic 0x%08x (want 0x%08x: u8, 1 dimension)", be32(p),
                            IDX_LABELS_MAGIC);
    *n = be32(p + 4);
    if (*n > len - 8)
        return ft_error_set(err, FT_EINVAL, "labels", "labels: truncated data (%zu, want %u)",
                            len - 8, *n);
    if (*n < len - 8)
        return ft_error_set(err, FT_EINVAL, "labels", "labels: %zu trailing bytes", len - 8 - *n);
    *labels = p + 8;
    return FT_OK;
}

/* Label table "0".."255" restricted to the values present, ordered by value; ids into it. */
static enum ft_err idx_fill_labels(struct ft_dataset *ds, const unsigned char *raw,
                                   struct ft_error *err)
{
    int id_of[256];
    int present[256] = {0};
    for (int64_t i = 0; i < ds->n; i++)
        present[raw[i]] = 1;
    struct label_table t = {0};
    for (int v = 0; v < 256; v++) {
        char name[12];
        int len = snprintf(name, sizeof name, "%d", v);
        id_of[v] = present[v] ? label_table_add(&t, name, (size_t)len) : -1;
        if (present[v] && id_of[v] < 0) {
            label_table_free(&t);
            return ft_error_set(err, FT_ENOMEM, "labels", "labels: out of memory");
        }
    }
    for (int64_t i = 0; i < ds->n; i++)
        ds->labels[i] = id_of[raw[i]];
    label_table_give(&t, ds);
    return FT_OK;
}

static enum ft_err idx_build(const struct idx_images *im, const unsigned char *raw_labels,
                             struct ft_dataset **out, struct ft_error *err)
{
    int dim = (int)(im->rows * im->cols);
    struct ft_dataset *ds = dataset_alloc(im->n, dim, 0);
    if (!ds)
        return ft_error_set(err, FT_ENOMEM, "images", "images: out of memory");
    size_t total = (size_t)im->n * (size_t)dim;
    for (size_t i = 0; i < total; i++)
        ds->x[i] = im->pixels[i] / 255.0f;
    ds->image_shape[0] = 1;
    ds->image_shape[1] = (int)im->rows;
    ds->image_shape[2] = (int)im->cols;
    enum ft_err rc = idx_fill_labels(ds, raw_labels, err);
    if (rc != FT_OK) {
        ft_dataset_free(ds);
        return rc;
    }
    *out = ds;
    return FT_OK;
}

enum ft_err ft_dataset_parse_idx(const void *images, size_t images_len, const void *labels,
                                 size_t labels_len, struct ft_dataset **out, struct ft_error *err)
{
    const unsigned char *img = NULL, *lab = NULL, *raw_labels = NULL;
    unsigned char *img_owned = NULL, *lab_owned = NULL;
    size_t img_len = 0, lab_len = 0;
    struct idx_images im = {0};
    uint32_t n_labels = 0;
    *out = NULL;
    enum ft_err rc = idx_bytes(images, images_len, "images", &img, &img_len, &img_owned, err);
    if (rc == FT_OK)
        rc = idx_bytes(labels, labels_len, "labels", &lab, &lab_len, &lab_owned, err);
    if (rc == FT_OK)
        rc = idx_parse_images(img, img_len, &im, err);
    if (rc == FT_OK)
        rc = idx_parse_labels(lab, lab_len, &n_labels, &raw_labels, err);
    if (rc == FT_OK && n_labels != im.n)
        rc = ft_error_set(err, FT_EINVAL, "labels", "labels: %u labels for %u images", n_labels,
                          im.n);
    if (rc == FT_OK)
        rc = idx_build(&im, raw_labels, out, err);
    free(img_owned);
    free(lab_owned);
    return rc;
}

/* Read a whole file (at most IDX_MAX_BYTES). *buf is new (free()). */
static enum ft_err read_file(const char *path, const char *which, unsigned char **buf, size_t *len,
                             struct ft_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        return ft_error_set(err, e == ENOENT ? FT_ENOT_FOUND : FT_EIO, which, "%s: %s: %s", which,
                            path, strerror(e));
    }
    if ((uint64_t)st.st_size > IDX_MAX_BYTES) {
        close(fd);
        return ft_error_set(err, FT_ETOO_LARGE, which, "%s: %s is larger than %zu bytes", which,
                            path, IDX_MAX_BYTES);
    }
    size_t size = (size_t)st.st_size, got = 0;
    *buf = malloc(size ? size : 1);
    while (*buf && got < size) {
        ssize_t r = read(fd, *buf + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    int e = errno;
    close(fd);
    if (!*buf)
        return ft_error_set(err, FT_ENOMEM, which, "%s: out of memory", which);
    if (got < size) {
        free(*buf);
        *buf = NULL;
        return ft_error_set(err, FT_EIO, which, "%s: short read of %s: %s", which, path,
                            strerror(e));
    }
    *len = size;
    return FT_OK;
}

enum ft_err ft_dataset_load_idx_files(const char *images_path, const char *labels_path,
                                      struct ft_dataset **out, struct ft_error *err)
{
    unsigned char *img = NULL, *lab = NULL;
    size_t img_len = 0, lab_len = 0;
    *out = NULL;
    enum ft_err rc = read_file(images_path, "images", &img, &img_len, err);
    if (rc == FT_OK)
        rc = read_file(labels_path, "labels", &lab, &lab_len, err);
    if (rc == FT_OK)
        rc = ft_dataset_parse_idx(img, img_len, lab, lab_len, out, err);
    free(img);
    free(lab);
    return rc;
}

/* ---------------------------------------------------------------------------------------
 * CSV */

struct field {
    const char *s;
    size_t len;
};

struct csv {
    const char *p, *end; /* unread input */
    long long line;      /* 1-based number of the line last read */
    int ncols, label_col;
    struct field *fields; /* (ncols) scratch */
    struct label_table table;
    float *x;     /* (cap, ncols - 1) */
    int32_t *ids; /* (cap) */
    int64_t n, cap;
    struct ft_error *err;
};

static enum ft_err csv_error(struct csv *c, long long col, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* FT_EINVAL, param "body", message "line L, column C: <fmt>". */
static enum ft_err csv_error(struct csv *c, long long col, const char *fmt, ...)
{
    char what[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return ft_error_set(c->err, FT_EINVAL, "body", "line %lld, column %lld: %s", c->line, col,
                        what);
}

/* Next line as [*s, *s + *len) without "\n" or "\r\n"; 0 at the end of the input. */
static int csv_next_line(struct csv *c, const char **s, size_t *len)
{
    if (c->p >= c->end)
        return 0;
    const char *nl = memchr(c->p, '\n', (size_t)(c->end - c->p));
    const char *e = nl ? nl : c->end;
    *s = c->p;
    *len = (size_t)(e - c->p);
    if (*len > 0 && (*s)[*len - 1] == '\r')
        (*len)--;
    c->p = nl ? nl + 1 : c->end;
    c->line++;
    return 1;
}

/* 1 when only line breaks are left. */
static int csv_only_newlines(const struct csv *c)
{
    for (const char *q = c->p; q < c->end; q++)
        if (*q != '\n' && *q != '\r')
            return 0;
    return 1;
}

/* Split s[0..len) at commas; the first max fields go into f. Returns the number of fields. */
static long long csv_split(const char *s, size_t len, struct field *f, int max)
{
    const char *end = s + len;
    long long count = 0;
    for (;;) {
        const char *comma = memchr(s, ',', (size_t)(end - s));
        const char *fe = comma ? comma : end;
        if (count < max)
            f[count] = (struct field){s, (size_t)(fe - s)};
        count++;
        if (!comma)
            return count;
        s = comma + 1;
    }
}

/* Trim spaces and tabs, then drop one pair of surrounding double quotes. -1 when a quote
 * is left inside (quoted fields with commas or escaped quotes are not supported). */
static int field_clean(struct field *f)
{
    while (f->len > 0 && (f->s[0] == ' ' || f->s[0] == '\t')) {
        f->s++;
        f->len--;
    }
    while (f->len > 0 && (f->s[f->len - 1] == ' ' || f->s[f->len - 1] == '\t'))
        f->len--;
    if (f->len >= 2 && f->s[0] == '"' && f->s[f->len - 1] == '"') {
        f->s++;
        f->len -= 2;
    }
    return memchr(f->s, '"', f->len) ? -1 : 0;
}

static int is_label_name(const struct field *f)
{
    return (f->len == 5 && memcmp(f->s, "label", 5) == 0) ||
           (f->len == 15 && memcmp(f->s, "finetuner_label", 15) == 0);
}

/* Find the label column among the header fields. */
static enum ft_err csv_header_columns(struct csv *c)
{
    c->label_col = -1;
    for (int j = 0; j < c->ncols; j++) {
        struct field f = c->fields[j];
        if (field_clean(&f) < 0)
            return csv_error(c, j + 1, "quoted fields are not supported");
        if (!is_label_name(&f))
            continue;
        if (c->label_col >= 0)
            return csv_error(c, j + 1, "a second label column \"%.*s\"", (int)f.len, f.s);
        c->label_col = j;
    }
    if (c->label_col < 0)
        return csv_error(c, 1, "no \"label\" or \"finetuner_label\" column in the header");
    if (c->ncols < 2)
        return csv_error(c, 1, "no feature columns besides the label");
    return FT_OK;
}

static enum ft_err csv_header(struct csv *c)
{
    const char *s;
    size_t len;
    if (c->end - c->p >= 3 && memcmp(c->p, "\xEF\xBB\xBF", 3) == 0)
        c->p += 3; /* UTF-8 byte order mark */
    if (!csv_next_line(c, &s, &len) || (len == 0 && csv_only_newlines(c))) {
        c->line = 1;
        return csv_error(c, 1, "empty file");
    }
    if (len == 0)
        return csv_error(c, 1, "empty header line");
    long long count = csv_split(s, len, NULL, 0);
    if (count > INT_MAX - 1)
        return csv_error(c, 1, "too many columns (%lld)", count);
    c->ncols = (int)count;
    c->fields = malloc((size_t)c->ncols * sizeof *c->fields);
    if (!c->fields)
        return ft_error_set(c->err, FT_ENOMEM, "body", "out of memory");
    csv_split(s, len, c->fields, c->ncols);
    return csv_header_columns(c);
}

/* The number in field f (line c->line, column col) into *out. */
static enum ft_err csv_number(struct csv *c, struct field f, int col, float *out)
{
    char buf[128];
    if (field_clean(&f) < 0)
        return csv_error(c, col, "quoted fields are not supported");
    if (f.len == 0)
        return csv_error(c, col, "empty field");
    if (f.len >= sizeof buf)
        return csv_error(c, col, "\"%.32s...\" is not a number", f.s);
    memcpy(buf, f.s, f.len);
    buf[f.len] = '\0';
    char *end;
    errno = 0;
    double v = strtod(buf, &end);
    if (end != buf + f.len)
        return csv_error(c, col, "\"%s\" is not a number", buf);
    if (isnan(v) || (isinf(v) && errno != ERANGE))
        return csv_error(c, col, "non-finite number \"%s\"", buf);
    if (isinf(v) || fabs(v) > FLT_MAX)
        return csv_error(c, col, "\"%s\" is out of range for float32", buf);
    *out = (float)v;
    return FT_OK;
}

static enum ft_err csv_label(struct csv *c, struct field f, int col, int32_t *id)
{
    if (field_clean(&f) < 0)
        return csv_error(c, col, "quoted fields are not supported");
    if (f.len == 0)
        return csv_error(c, col, "empty label");
    if (memchr(f.s, '\0', f.len))
        return csv_error(c, col, "NUL byte in label");
    *id = label_table_add(&c->table, f.s, f.len);
    return *id < 0 ? ft_error_set(c->err, FT_ENOMEM, "body", "out of memory") : FT_OK;
}

static int csv_grow(struct csv *c)
{
    if (c->n < c->cap)
        return 0;
    int64_t cap = c->cap ? c->cap * 2 : 256;
    float *x = realloc(c->x, (size_t)cap * (size_t)(c->ncols - 1) * sizeof *x);
    if (x)
        c->x = x;
    int32_t *ids = x ? realloc(c->ids, (size_t)cap * sizeof *ids) : NULL;
    if (ids)
        c->ids = ids;
    if (!x || !ids)
        return -1;
    c->cap = cap;
    return 0;
}

/* Parse data line s[0..len) into row c->n. */
static enum ft_err csv_row(struct csv *c, const char *s, size_t len)
{
    long long count = csv_split(s, len, c->fields, c->ncols);
    if (count < c->ncols)
        return csv_error(c, count + 1, "expected %d columns, found %lld", c->ncols, count);
    if (count > c->ncols)
        return csv_error(c, c->ncols + 1, "expected %d columns, found %lld", c->ncols, count);
    if (csv_grow(c) < 0)
        return ft_error_set(c->err, FT_ENOMEM, "body", "out of memory");
    float *row = c->x + (size_t)c->n * (size_t)(c->ncols - 1);
    enum ft_err rc = FT_OK;
    for (int j = 0, k = 0; j < c->ncols && rc == FT_OK; j++) {
        if (j == c->label_col)
            rc = csv_label(c, c->fields[j], j + 1, &c->ids[c->n]);
        else
            rc = csv_number(c, c->fields[j], j + 1, &row[k++]);
    }
    if (rc == FT_OK)
        c->n++;
    return rc;
}

static enum ft_err csv_rows(struct csv *c)
{
    const char *s;
    size_t len;
    while (csv_next_line(c, &s, &len)) {
        if (len == 0 && csv_only_newlines(c))
            break;
        if (len == 0)
            return csv_error(c, 1, "empty line");
        enum ft_err rc = csv_row(c, s, len);
        if (rc != FT_OK)
            return rc;
    }
    if (c->n == 0) {
        c->line = 2;
        return csv_error(c, 1, "no data rows after the header");
    }
    return FT_OK;
}

enum ft_err ft_dataset_parse_csv(const char *buf, size_t len, struct ft_dataset **out,
                                 struct ft_error *err)
{
    struct csv c = {.p = buf, .end = buf ? buf + len : buf, .err = err};
    *out = NULL;
    enum ft_err rc = csv_header(&c);
    if (rc == FT_OK)
        rc = csv_rows(&c);
    struct ft_dataset *ds = rc == FT_OK ? calloc(1, sizeof *ds) : NULL;
    if (rc == FT_OK && !ds)
        rc = ft_error_set(err, FT_ENOMEM, "body", "out of memory");
    if (rc == FT_OK) {
        ds->n = c.n;
        ds->dim = c.ncols - 1;
        ds->x = c.x;
        ds->labels = c.ids;
        label_table_give(&c.table, ds);
        *out = ds;
    } else {
        free(c.x);
        free(c.ids);
        label_table_free(&c.table);
    }
    free(c.fields);
    return rc;
}

/* ---------------------------------------------------------------------------------------
 * Compact store: pixel bytes p, value p / 255.0f */

/* bytes (n * dim) = the pixel of each value of ds->x; 0 when ds has no image shape or some
 * value is not exactly p / 255.0f (bitwise: -0.0 is not a pixel). */
static int to_pixels(const struct ft_dataset *ds, uint8_t *bytes)
{
    float tab[256]; /* the IDX parser's pixel / 255.0f */
    size_t count = (size_t)ds->n * (size_t)ds->dim;
    if (!ds->x || ds->image_shape[0] <= 0)
        return 0;
    for (int p = 0; p < 256; p++)
        tab[p] = p / 255.0f;
    for (size_t i = 0; i < count; i++) {
        float v = ds->x[i];
        if (!(v >= 0.0f && v <= 1.0f))
            return 0;
        int p = (int)(v * 255.0f + 0.5f);
        uint32_t a, b;
        memcpy(&a, &v, sizeof a);
        memcpy(&b, &tab[p], sizeof b);
        if (a != b)
            return 0;
        bytes[i] = (uint8_t)p;
    }
    return 1;
}

#if defined(__x86_64__) && defined(__SSE2__)
#include <emmintrin.h>

/* dst[k] = b[k] / 255.0f for k < n - n % 16, sixteen at a time (exact int -> float, one
 * correctly rounded division: the scalar values); returns how many were done. */
static size_t bytes_to_floats16(float *dst, const uint8_t *b, size_t n)
{
    const __m128i zero = _mm_setzero_si128();
    const __m128 d = _mm_set1_ps(255.0f);
    size_t k = 0;
    for (; k + 16 <= n; k += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(b + k));
        __m128i lo = _mm_unpacklo_epi8(v, zero), hi = _mm_unpackhi_epi8(v, zero);
        __m128i w[4] = {_mm_unpacklo_epi16(lo, zero), _mm_unpackhi_epi16(lo, zero),
                        _mm_unpacklo_epi16(hi, zero), _mm_unpackhi_epi16(hi, zero)};
        for (int q = 0; q < 4; q++)
            _mm_storeu_ps(dst + k + 4 * q, _mm_div_ps(_mm_cvtepi32_ps(w[q]), d));
    }
    return k;
}
#else
static size_t bytes_to_floats16(float *dst, const uint8_t *b, size_t n)
{
    (void)dst, (void)b, (void)n;
    return 0;
}
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* As bytes_to_floats16 with AVX-512F, no division: with r = 1.0f / 255.0f, q = b r is off by
 * up to an ulp; one Markstein correction q + (b - 255 q) r, both steps fused (an FMA's single
 * rounding), gives the correctly rounded quotient b / 255.0f for each of the 256 byte values
 * (checked for every byte by test_compact's pixels_become_bytes_with_the_same_values). Single-width
 * operations and one 64-byte store a row piece; the double-precision product it replaces took
 * twice the instructions and, with its two 32-byte stores, made a batch's gather ~20% slower. */
__attribute__((target("avx512f"))) static size_t bytes_to_floats_avx512(float *dst,
                                                                        const uint8_t *b, size_t n)
{
    const __m512 r = _mm512_set1_ps(1.0f / 255.0f), d = _mm512_set1_ps(255.0f);
    size_t k = 0;
    for (; k + 16 <= n; k += 16) {
        __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(b + k)));
        __m512 x = _mm512_cvtepi32_ps(v), q = _mm512_mul_ps(x, r);
        _mm512_storeu_ps(dst + k, _mm512_fmadd_ps(_mm512_fnmadd_ps(q, d, x), r, q));
    }
    return k;
}

static size_t bytes_to_floats(float *dst, const uint8_t *b, size_t n)
{
    if (__builtin_cpu_supports("avx512f"))
        return bytes_to_floats_avx512(dst, b, n);
    return bytes_to_floats16(dst, b, n);
}
#else
static size_t bytes_to_floats(float *dst, const uint8_t *b, size_t n)
{
    return bytes_to_floats16(dst, b, n);
}
#endif

void ft_dataset_row(const struct ft_dataset *ds, int64_t row, float *dst)
{
    size_t dim = (size_t)ds->dim;
    if (!ds->x8) {
        memcpy(dst, ds->x + (size_t)row * dim, dim * sizeof *dst);
        return;
    }
    const uint8_t *b = ds->x8 + (size_t)row * dim;
    for (size_t k = bytes_to_floats(dst, b, dim); k < dim; k++)
        dst[k] = (float)b[k] / 255.0f;
}

int ft_dataset_compact(struct ft_dataset *ds)
{
    if (ds->x8)
        return 1;
    size_t count = (size_t)ds->n * (size_t)ds->dim;
    uint8_t *bytes = rows_alloc(count);
    if (!bytes || !to_pixels(ds, bytes)) {
        free(bytes);
        return 0;
    }
    free(ds->x);
    ds->x = NULL;
    ds->x8 = bytes;
    return 1;
}

enum ft_err ft_dataset_expand(struct ft_dataset *ds)
{
    if (!ds->x8)
        return FT_OK;
    size_t count = (size_t)ds->n * (size_t)ds->dim;
    float *x = rows_alloc(count * sizeof *x);
    if (!x)
        return FT_ENOMEM;
    for (int64_t i = 0; i < ds->n; i++)
        ft_dataset_row(ds, i, x + (size_t)i * (size_t)ds->dim);
    free(ds->x8);
    ds->x8 = NULL;
    ds->x = x;
    return FT_OK;
}

/* ---------------------------------------------------------------------------------------
 * Stored form (safetensors) */

/* Metadata {"image_shape": "C,H,W" or "", "label_names": "[...]"} of ds. New reference. */
static enum ft_err save_metadata(const struct ft_dataset *ds, json_t **out, struct ft_error *err)
{
    json_t *names = json_array();
    for (int i = 0; names && i < ds->num_labels; i++) {
        json_t *s = json_string(ds->label_names[i] ? ds->label_names[i] : "");
        if (!s || json_array_append_new(names, s) < 0) {
            json_decref(names);
            return ft_error_set(err, FT_EINVAL, "label_names", "label name %d is not valid UTF-8",
                                i);
        }
    }
    char *text = names ? json_dumps(names, JSON_COMPACT) : NULL;
    json_decref(names);
    char shape[64] = "";
    const int *is = ds->image_shape;
    if (is[0] || is[1] || is[2])
        snprintf(shape, sizeof shape, "%d,%d,%d", is[0], is[1], is[2]);
    *out = text ? json_pack("{s:s, s:s}", "image_shape", shape, "label_names", text) : NULL;
    free(text);
    return *out ? FT_OK : ft_error_set(err, FT_ENOMEM, NULL, "out of memory");
}

static enum ft_err check_dataset(const struct ft_dataset *ds, struct ft_error *err)
{
    if (!ds || ds->n < 0 || ds->dim <= 0 || ds->num_labels < 0 ||
        (ds->n > 0 && ((!ds->x && !ds->x8) || !ds->labels)) ||
        (ds->num_labels > 0 && !ds->label_names))
        return ft_error_set(err, FT_EINVAL, "dataset", "dataset is empty or malformed");
    for (int64_t i = 0; i < ds->n; i++)
        if (ds->labels[i] < 0 || ds->labels[i] >= ds->num_labels)
            return ft_error_set(err, FT_EINVAL, "labels", "row %lld has label id %d of %d",
                                (long long)i, ds->labels[i], ds->num_labels);
    return FT_OK;
}

enum ft_err ft_dataset_save(const struct ft_dataset *ds, const char *path, struct ft_error *err)
{
    json_t *metadata = NULL;
    enum ft_err rc = check_dataset(ds, err);
    if (rc == FT_OK)
        rc = save_metadata(ds, &metadata, err);
    if (rc != FT_OK)
        return rc;
    size_t count = (size_t)ds->n * (size_t)ds->dim;
    uint8_t *bytes = ds->x8 ? NULL : malloc(count ? count : 1);
    const void *x8 = ds->x8 ? ds->x8 : bytes && to_pixels(ds, bytes) ? bytes : NULL;
    struct ft_tensor_view views[2] = {
        {.name = "x", .dtype = "F32", .ndim = 2, .shape = {ds->n, ds->dim}, .data = ds->x},
        {.name = "labels", .dtype = "I32", .ndim = 1, .shape = {ds->n}, .data = ds->labels},
    };
    if (x8) {
        views[0].dtype = "U8";
        views[0].data = x8;
        json_object_set_new(metadata, "scale", json_string("1/255"));
    }
    rc = ft_safetensors_write(path, views, 2, metadata, err);
    json_decref(metadata);
    free(bytes);
    return rc;
}

/* "C,H,W" (positive ints) into shape; "" gives 0, 0, 0. -1 when malformed. */
static int parse_image_shape(const char *s, int shape[3])
{
    memset(shape, 0, 3 * sizeof *shape);
    if (!*s)
        return 0;
    for (int i = 0; i < 3; i++) {
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (end == s || errno || v <= 0 || v > INT_MAX || *end != (i < 2 ? ',' : '\0'))
            return -1;
        shape[i] = (int)v;
        s = end + 1;
    }
    return 0;
}

/* Label names from the metadata's "label_names" JSON array text into ds. */
static enum ft_err load_label_names(struct ft_dataset *ds, const char *text, struct ft_error *err)
{
    json_t *arr = text ? json_loads(text, 0, NULL) : NULL;
    struct label_table t = {0};
    enum ft_err rc = json_is_array(arr) && json_array_size(arr) <= INT_MAX
                         ? FT_OK
                         : ft_error_set(err, FT_EINVAL, "label_names",
                                        "metadata label_names is not a JSON array");
    for (size_t i = 0; rc == FT_OK && i < json_array_size(arr); i++) {
        json_t *v = json_array_get(arr, i);
        const char *s = json_string_value(v);
        if (!s || strlen(s) != json_string_length(v) || label_table_find(&t, s, strlen(s)) >= 0)
            rc = ft_error_set(err, FT_EINVAL, "label_names",
                              "label_names[%zu] is not a distinct string", i);
        else if (label_table_add(&t, s, strlen(s)) < 0)
            rc = ft_error_set(err, FT_ENOMEM, NULL, "out of memory");
    }
    json_decref(arr);
    if (rc == FT_OK)
        label_table_give(&t, ds);
    label_table_free(&t);
    return rc;
}

/* The "x" (n, dim) F32 (or U8 with metadata scale "1/255") and "labels" (n) I32 tensors of st,
 * checked. */
static enum ft_err load_views(const ft_safetensors *st, struct ft_tensor_view *x,
                              struct ft_tensor_view *labels, struct ft_error *err)
{
    const char *scale = json_string_value(json_object_get(ft_safetensors_metadata(st), "scale"));
    if (ft_safetensors_get(st, "x", x) < 0 || x->ndim != 2 || x->shape[1] <= 0 ||
        x->shape[1] > INT_MAX ||
        (strcmp(x->dtype, "F32") && (strcmp(x->dtype, "U8") || !scale || strcmp(scale, "1/255"))))
        return ft_error_set(err, FT_EINVAL, "x",
                            "dataset needs an \"x\" F32 tensor (n, dim), or U8 with metadata "
                            "scale \"1/255\"");
    if (ft_safetensors_get(st, "labels", labels) < 0 || strcmp(labels->dtype, "I32") ||
        labels->ndim != 1 || labels->shape[0] != x->shape[0])
        return ft_error_set(err, FT_EINVAL, "labels",
                            "dataset needs a \"labels\" I32 tensor (n) with n = %lld",
                            (long long)x->shape[0]);
    return FT_OK;
}

/* The rows of the "x" view into a new dataset of n rows: bytes kept (compact) or as floats. */
static struct ft_dataset *load_rows(const struct ft_tensor_view *x, int compact)
{
    int64_t n = x->shape[0];
    int dim = (int)x->shape[1];
    size_t count = (size_t)n * (size_t)dim;
    int bytes = strcmp(x->dtype, "U8") == 0;
    struct ft_dataset *ds = dataset_alloc(n, dim, bytes && compact);
    if (!ds)
        return NULL;
    if (bytes && compact) {
        memcpy(ds->x8, x->data, count);
    } else if (bytes) {
        struct ft_dataset view = {.n = n, .dim = dim, .x8 = (uint8_t *)x->data};
        for (int64_t i = 0; i < n; i++)
            ft_dataset_row(&view, i, ds->x + (size_t)i * (size_t)dim);
    } else {
        memcpy(ds->x, x->data, count * sizeof *ds->x);
    }
    return ds;
}

/* Build the dataset from an opened file. */
static enum ft_err load_dataset(const ft_safetensors *st, int compact, struct ft_dataset **out,
                                struct ft_error *err)
{
    struct ft_tensor_view x, labels;
    enum ft_err rc = load_views(st, &x, &labels, err);
    if (rc != FT_OK)
        return rc;
    json_t *md = ft_safetensors_metadata(st);
    struct ft_dataset *ds = load_rows(&x, compact);
    if (!ds)
        return ft_error_set(err, FT_ENOMEM, NULL, "out of memory");
    memcpy(ds->labels, labels.data, (size_t)ds->n * sizeof *ds->labels);
    rc = load_label_names(ds, json_string_value(json_object_get(md, "label_names")), err);
    const char *shape = json_string_value(json_object_get(md, "image_shape"));
    const int *is = ds->image_shape;
    if (rc == FT_OK && (!shape || parse_image_shape(shape, ds->image_shape) < 0 ||
                        (is[0] && (int64_t)is[0] * is[1] * is[2] != ds->dim)))
        rc = ft_error_set(err, FT_EINVAL, "image_shape",
                          "metadata image_shape must be \"C,H,W\" with C*H*W = %d, or \"\"",
                          ds->dim);
    if (rc == FT_OK)
        rc = check_dataset(ds, err);
    if (rc != FT_OK)
        ft_dataset_free(ds);
    else
        *out = ds;
    return rc;
}

static enum ft_err load_file(const char *path, int compact, struct ft_dataset **out,
                             struct ft_error *err)
{
    ft_safetensors *st = NULL;
    *out = NULL;
    enum ft_err rc = ft_safetensors_open(path, &st, err);
    if (rc == FT_OK)
        rc = load_dataset(st, compact, out, err);
    ft_safetensors_free(st);
    return rc;
}

enum ft_err ft_dataset_load(const char *path, struct ft_dataset **out, struct ft_error *err)
{
    return load_file(path, 0, out, err);
}

enum ft_err ft_dataset_load_compact(const char *path, struct ft_dataset **out, struct ft_error *err)
{
    return load_file(path, 1, out, err);
}

/* ---------------------------------------------------------------------------------------
 * Subsets and label spaces */

/* Copy the label names of src into dst. -1 on ENOMEM. */
static int copy_label_names(struct ft_dataset *dst, const struct ft_dataset *src)
{
    dst->label_names = calloc((size_t)(src->num_labels ? src->num_labels : 1), sizeof(char *));
    if (!dst->label_names)
        return -1;
    for (int i = 0; i < src->num_labels; i++) {
        dst->label_names[i] = strdup(src->label_names[i]);
        if (!dst->label_names[i])
            return -1;
        dst->num_labels = i + 1;
    }
    return 0;
}

struct ft_dataset *ft_dataset_subset(const struct ft_dataset *ds, const int64_t *idx, int64_t count)
{
    FT_ASSERT(ds && count >= 0 && (count == 0 || idx));
    struct ft_dataset *out = dataset_alloc(count, ds->dim, ds->x8 != NULL);
    if (!out || copy_label_names(out, ds) < 0) {
        ft_dataset_free(out);
        return NULL;
    }
    size_t row = (size_t)ds->dim;
    for (int64_t i = 0; i < count; i++) {
        FT_ASSERT(idx[i] >= 0 && idx[i] < ds->n);
        if (ds->x8)
            memcpy(out->x8 + (size_t)i * row, ds->x8 + (size_t)idx[i] * row, row);
        else
            memcpy(out->x + (size_t)i * row, ds->x + (size_t)idx[i] * row, row * sizeof *out->x);
        out->labels[i] = ds->labels[idx[i]];
    }
    memcpy(out->image_shape, ds->image_shape, sizeof out->image_shape);
    return out;
}

/* Id of name among a's labels by linear search (fallback when the hash table cannot be
 * built). */
static int32_t find_label_linear(const struct ft_dataset *a, const char *name)
{
    for (int i = 0; i < a->num_labels; i++)
        if (strcmp(a->label_names[i], name) == 0)
            return i;
    return -1;
}

void ft_dataset_map_labels(const struct ft_dataset *a, const struct ft_dataset *b, int32_t *out)
{
    struct label_table t = {0};
    int ok = 1;
    for (int i = 0; ok && i < a->num_labels; i++)
        ok = label_table_add(&t, a->label_names[i], strlen(a->label_names[i])) >= 0;
    for (int i = 0; i < b->num_labels; i++) {
        const char *name = b->label_names[i];
        out[i] = ok ? label_table_find(&t, name, strlen(name)) : find_label_linear(a, name);
    }
    label_table_free(&t);
}
