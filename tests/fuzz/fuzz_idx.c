/* fuzz_idx.c — the IDX loader (ft_dataset_parse_idx), raw and gzipped.
 *
 * Input: a 4-byte little-endian length L, then the images file (L mod (rest + 1) bytes), then
 * the labels file (the rest). Both are parsed as given (raw, or gzip when they start with
 * 1f 8b), each from an exact-size copy so ASan sees any read past the end; then both are
 * gzipped here and parsed again, which must give the very same dataset or the very same error
 * (the upload path of `curl -F images=@...-idx3-ubyte.gz`). */
#include "dataset.h"

#include "fuzz_common.h"

#include <zlib.h>

/* gzip in[0..len) into a new buffer (*out_len bytes). */
static unsigned char *gzip_bytes(const unsigned char *in, size_t len, size_t *out_len)
{
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    FZ_CHECK(deflateInit2(&zs, 1, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) == Z_OK);
    size_t cap = deflateBound(&zs, (uLong)len) + 32;
    unsigned char *out = malloc(cap);
    FZ_CHECK(out);
    zs.next_in = (Bytef *)in;
    zs.avail_in = (uInt)len;
    zs.next_out = out;
    zs.avail_out = (uInt)cap;
    FZ_CHECK(deflate(&zs, Z_FINISH) == Z_STREAM_END);
    *out_len = zs.total_out;
    deflateEnd(&zs);
    return out;
}

static void check_dataset(const struct ft_dataset *ds)
{
    FZ_CHECK(ds->n >= 1 && ds->dim >= 1 && ds->num_labels >= 1 && ds->num_labels <= 256);
    FZ_CHECK((int64_t)ds->image_shape[0] * ds->image_shape[1] * ds->image_shape[2] == ds->dim);
    for (int64_t i = 0; i < ds->n * ds->dim; i++)
        FZ_CHECK(ds->x[i] >= 0.0f && ds->x[i] <= 1.0f);
    for (int64_t i = 0; i < ds->n; i++)
        FZ_CHECK(ds->labels[i] >= 0 && ds->labels[i] < ds->num_labels);
}

static int same_dataset(const struct ft_dataset *a, const struct ft_dataset *b)
{
    if (a->n != b->n || a->dim != b->dim || a->num_labels != b->num_labels ||
        memcmp(a->image_shape, b->image_shape, sizeof a->image_shape) != 0)
        return 0;
    if (memcmp(a->x, b->x, (size_t)a->n * (size_t)a->dim * sizeof *a->x) != 0 ||
        memcmp(a->labels, b->labels, (size_t)a->n * sizeof *a->labels) != 0)
        return 0;
    for (int i = 0; i < a->num_labels; i++)
        if (strcmp(a->label_names[i], b->label_names[i]) != 0)
            return 0;
    return 1;
}

static int is_gzip(const unsigned char *p, size_t len)
{
    return len >= 2 && p[0] == 0x1f && p[1] == 0x8b;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fz_input in = {data, size};
    uint32_t split = fz_take_u32(&in);
    size_t ilen = split % (in.n + 1), llen = in.n - ilen;
    unsigned char *img = malloc(ilen ? ilen : 1), *lab = malloc(llen ? llen : 1);
    FZ_CHECK(img && lab);
    memcpy(img, in.p, ilen);
    memcpy(lab, in.p + ilen, llen);

    struct ft_dataset *raw = NULL, *gz = NULL;
    struct ft_error err = {0}, gerr = {0};
    enum ft_err e = ft_dataset_parse_idx(img, ilen, lab, llen, &raw, &err);
    if (e == FT_OK)
        check_dataset(raw);
    else
        FZ_CHECK(raw == NULL && fz_error_ok(&err, e));

    if (!is_gzip(img, ilen) && !is_gzip(lab, llen)) {
        size_t gilen, gllen;
        unsigned char *gimg = gzip_bytes(img, ilen, &gilen), *glab = gzip_bytes(lab, llen, &gllen);
        enum ft_err ge = ft_dataset_parse_idx(gimg, gilen, glab, gllen, &gz, &gerr);
        FZ_CHECK(ge == e);
        if (e == FT_OK)
            FZ_CHECK(same_dataset(raw, gz));
        else
            FZ_CHECK(strcmp(err.param, gerr.param) == 0 && strcmp(err.message, gerr.message) == 0);
        free(gimg);
        free(glab);
    }
    ft_dataset_free(raw);
    ft_dataset_free(gz);
    free(img);
    free(lab);
    return 0;
}
