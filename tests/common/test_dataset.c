/* test_dataset.c — CSV (good cases and every error with its line and column), IDX (the real
 * Fashion-MNIST t10k files gzipped and raw, synthetic broken buffers), the stored
 * safetensors form, subsets and label mapping. */
#include "dataset.h"
#include "safetensors.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#define FMNIST "/usr/share/datasets/fashion-mnist/"
#define T10K_IMAGES FMNIST "t10k-images-idx3-ubyte.gz"
#define T10K_LABELS FMNIST "t10k-labels-idx1-ubyte.gz"

static char dir[64];

static void make_dir(void)
{
    snprintf(dir, sizeof dir, "/tmp/ft_ds_XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void remove_dir(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(csv);
TestSuite(idx, .init = make_dir, .fini = remove_dir);
TestSuite(stored, .init = make_dir, .fini = remove_dir);
TestSuite(dataset);

static const char *tmp_path(const char *name)
{
    static char buf[256];
    snprintf(buf, sizeof buf, "%s/%s", dir, name);
    return buf;
}

/* ---------------------------------------------------------------------------------------
 * CSV */

static struct ft_dataset *csv_ok(const char *text)
{
    struct ft_dataset *ds = NULL;
    struct ft_error err;
    ft_error_clear(&err);
    enum ft_err rc = ft_dataset_parse_csv(text, strlen(text), &ds, &err);
    cr_assert_eq(rc, FT_OK, "csv %s: %s", text, err.message);
    cr_assert_not_null(ds);
    return ds;
}

/* Parsing text fails with FT_EINVAL, param "body", message "line L, column C: ...". */
static void csv_fails_at(const char *text, int line, int col)
{
    struct ft_dataset *ds = (struct ft_dataset *)0x1;
    struct ft_error err;
    ft_error_clear(&err);
    enum ft_err rc = ft_dataset_parse_csv(text, strlen(text), &ds, &err);
    cr_assert_eq(rc, FT_EINVAL, "csv %s: rc %d", text, rc);
    cr_assert_null(ds);
    cr_assert_str_eq(err.param, "body");
    char want[64];
    snprintf(want, sizeof want, "line %d, column %d: ", line, col);
    cr_assert_eq(strncmp(err.message, want, strlen(want)), 0, "csv %s: want \"%s...\", got \"%s\"",
                 text, want, err.message);
}

static void assert_floats(const float *got, const float *want, size_t n)
{
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(got[i], want[i], "x[%zu] = %g, want %g", i, got[i], want[i]);
}

Test(csv, label_column_in_the_middle)
{
    struct ft_dataset *ds = csv_ok("a,label,b\n1,cat,2\n3.5,dog,-4e2\n5,cat,6\n");
    cr_assert_eq(ds->n, 3);
    cr_assert_eq(ds->dim, 2);
    const float x[] = {1, 2, 3.5f, -400, 5, 6};
    assert_floats(ds->x, x, 6);
    cr_assert_eq(ds->num_labels, 2);
    cr_assert_str_eq(ds->label_names[0], "cat");
    cr_assert_str_eq(ds->label_names[1], "dog");
    cr_assert_eq(ds->labels[0], 0);
    cr_assert_eq(ds->labels[1], 1);
    cr_assert_eq(ds->labels[2], 0);
    cr_assert_eq(ds->image_shape[0], 0);
    ft_dataset_free(ds);
}

Test(csv, finetuner_label_first_and_numeric_label_names)
{
    struct ft_dataset *ds = csv_ok("finetuner_label,f1,f2\n7,0.5,1\n3,0.25,2\n7,1,3");
    cr_assert_eq(ds->n, 3);
    cr_assert_eq(ds->dim, 2);
    const float x[] = {0.5f, 1, 0.25f, 2, 1, 3};
    assert_floats(ds->x, x, 6);
    cr_assert_eq(ds->num_labels, 2);
    cr_assert_str_eq(ds->label_names[0], "7");
    cr_assert_str_eq(ds->label_names[1], "3");
    cr_assert_eq(ds->labels[2], 0);
    ft_dataset_free(ds);
}

Test(csv, crlf_and_trailing_empty_lines)
{
    struct ft_dataset *ds = csv_ok("a,label\r\n1,x\r\n2,y\r\n\r\n\n");
    cr_assert_eq(ds->n, 2);
    cr_assert_eq(ds->dim, 1);
    cr_assert_eq(ds->x[1], 2.0f);
    cr_assert_str_eq(ds->label_names[1], "y");
    ft_dataset_free(ds);
}

Test(csv, quoted_string_labels_spaces_and_bom)
{
    struct ft_dataset *ds =
        csv_ok("\xEF\xBB\xBF\"label\",v\n\"ankle boot\", 1.5 \n  shirt ,2\n\"ankle boot\",3\n");
    cr_assert_eq(ds->n, 3);
    cr_assert_eq(ds->num_labels, 2);
    cr_assert_str_eq(ds->label_names[0], "ankle boot");
    cr_assert_str_eq(ds->label_names[1], "shirt");
    cr_assert_eq(ds->labels[2], 0);
    cr_assert_eq(ds->x[0], 1.5f);
    ft_dataset_free(ds);
}

Test(csv, reads_only_len_bytes)
{
    const char *text = "a,label\n1,x\n2,yGARBAGE,more";
    struct ft_dataset *ds = NULL;
    cr_assert_eq(ft_dataset_parse_csv(text, strlen("a,label\n1,x\n2,y"), &ds, NULL), FT_OK);
    cr_assert_eq(ds->n, 2);
    cr_assert_str_eq(ds->label_names[1], "y");
    ft_dataset_free(ds);
}

Test(csv, many_rows_and_labels)
{
    size_t cap = 1 << 20, len = 0;
    char *buf = malloc(cap);
    len += (size_t)snprintf(buf, cap, "x0,x1,label\n");
    for (int i = 0; i < 5000; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%d,%d.5,class%d\n", i, -i, i % 1500);
    struct ft_dataset *ds = NULL;
    cr_assert_eq(ft_dataset_parse_csv(buf, len, &ds, NULL), FT_OK);
    cr_assert_eq(ds->n, 5000);
    cr_assert_eq(ds->num_labels, 1500);
    cr_assert_eq(ds->labels[4999], 4999 % 1500);
    cr_assert_str_eq(ds->label_names[1499], "class1499");
    cr_assert_eq(ds->x[2 * 4999], 4999.0f);
    cr_assert_eq(ds->x[2 * 4999 + 1], -4999.5f);
    ft_dataset_free(ds);
    free(buf);
}

Test(csv, empty_file)
{
    csv_fails_at("", 1, 1);
    csv_fails_at("\n\n", 1, 1);
}

Test(csv, header_only)
{
    csv_fails_at("a,label\n", 2, 1);
    csv_fails_at("a,label", 2, 1);
    csv_fails_at("a,label\r\n\r\n", 2, 1);
}

Test(csv, no_label_column)
{
    csv_fails_at("a,b\n1,2\n", 1, 1);
    csv_fails_at("a,labels\n1,2\n", 1, 1);
    csv_fails_at("label,finetuner_label,a\nx,y,1\n", 1, 2);
    csv_fails_at("label\nx\n", 1, 1);
}

Test(csv, ragged_row)
{
    csv_fails_at("a,label,b\n1,x,2\n3,y\n", 3, 3);
    csv_fails_at("a,label,b\n1,x,2,4\n", 2, 4);
    csv_fails_at("a,label\n1\n", 2, 2);
    csv_fails_at("a,label,b\n1,x,\"1,5\"\n", 2, 4); /* no quoted commas */
}

Test(csv, not_a_number)
{
    csv_fails_at("a,label\n1,x\nabc,y\n", 3, 1);
    csv_fails_at("a,label,b\n1,x,1.5x\n", 2, 3);
    csv_fails_at("a,label,b\n1,x,1 2\n", 2, 3);
}

Test(csv, non_finite_numbers)
{
    csv_fails_at("a,label\ninf,x\n", 2, 1);
    csv_fails_at("a,label\n1,x\n-Infinity,x\n", 3, 1);
    csv_fails_at("label,a\nx,nan\n", 2, 2);
    csv_fails_at("label,a\nx,1e999\n", 2, 2);
    csv_fails_at("label,a\nx,1e39\n", 2, 2); /* finite double, not a finite float */
}

Test(csv, empty_field_label_or_line)
{
    csv_fails_at("a,label,b\n1,x,\n", 2, 3);
    csv_fails_at("a,label,b\n,x,1\n", 2, 1);
    csv_fails_at("a,label,b\n1,  ,1\n", 2, 2);
    csv_fails_at("a,label,b\n1,\"\",1\n", 2, 2);
    csv_fails_at("a,label\n1,x\n\n2,y\n", 3, 1);
}

/* ---------------------------------------------------------------------------------------
 * IDX */

static unsigned char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)size + 1);
    cr_assert_eq(fread(buf, 1, (size_t)size, f), (size_t)size);
    fclose(f);
    *len = (size_t)size;
    return buf;
}

/* Write the decompressed contents of gz_path to path. */
static void gunzip_to(const char *gz_path, const char *path)
{
    gzFile in = gzopen(gz_path, "rb");
    FILE *out = fopen(path, "wb");
    cr_assert(in && out);
    char buf[1 << 16];
    int n;
    while ((n = gzread(in, buf, sizeof buf)) > 0)
        cr_assert_eq(fwrite(buf, 1, (size_t)n, out), (size_t)n);
    cr_assert_eq(n, 0);
    gzclose(in);
    fclose(out);
}

static void put_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* IDX images: magic, n, rows, cols, then n * rows * cols pixels (i * 37 % 256). */
static unsigned char *idx_images(uint32_t magic, uint32_t n, uint32_t rows, uint32_t cols,
                                 size_t *len)
{
    size_t pixels = (size_t)n * rows * cols;
    unsigned char *buf = malloc(16 + pixels);
    put_be32(buf, magic);
    put_be32(buf + 4, n);
    put_be32(buf + 8, rows);
    put_be32(buf + 12, cols);
    for (size_t i = 0; i < pixels; i++)
        buf[16 + i] = (unsigned char)(i * 37 % 256);
    *len = 16 + pixels;
    return buf;
}

/* IDX labels: magic, n, then values[0..n). */
static unsigned char *idx_labels(uint32_t magic, uint32_t n, const unsigned char *values,
                                 size_t *len)
{
    unsigned char *buf = malloc(8 + n);
    put_be32(buf, magic);
    put_be32(buf + 4, n);
    memcpy(buf + 8, values, n);
    *len = 8 + n;
    return buf;
}

/* gzip in[0..len). New buffer, *out_len its size. */
static unsigned char *gzip_buf(const unsigned char *in, size_t len, size_t *out_len)
{
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    cr_assert_eq(deflateInit2(&zs, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY), Z_OK);
    size_t cap = deflateBound(&zs, (uLong)len) + 32;
    unsigned char *out = malloc(cap);
    zs.next_in = (Bytef *)in;
    zs.avail_in = (uInt)len;
    zs.next_out = out;
    zs.avail_out = (uInt)cap;
    cr_assert_eq(deflate(&zs, Z_FINISH), Z_STREAM_END);
    *out_len = zs.total_out;
    deflateEnd(&zs);
    return out;
}

static void idx_fails(const void *img, size_t img_len, const void *lab, size_t lab_len,
                      const char *param)
{
    struct ft_dataset *ds = (struct ft_dataset *)0x1;
    struct ft_error err;
    ft_error_clear(&err);
    enum ft_err rc = ft_dataset_parse_idx(img, img_len, lab, lab_len, &ds, &err);
    cr_assert_eq(rc, FT_EINVAL, "rc %d: %s", rc, err.message);
    cr_assert_null(ds);
    cr_assert_str_eq(err.param, param, "param %s (%s)", err.param, err.message);
}

static void check_t10k(const struct ft_dataset *ds)
{
    cr_assert_eq(ds->n, 10000);
    cr_assert_eq(ds->dim, 784);
    cr_assert_eq(ds->image_shape[0], 1);
    cr_assert_eq(ds->image_shape[1], 28);
    cr_assert_eq(ds->image_shape[2], 28);
    cr_assert_eq(ds->num_labels, 10);
    for (int i = 0; i < 10; i++) {
        char want[16];
        snprintf(want, sizeof want, "%d", i);
        cr_assert_str_eq(ds->label_names[i], want);
    }
    /* First labels of t10k (od -t u1): 9 2 1 1 6 (ankle boot, pullover, trouser, ...). */
    const int32_t first[5] = {9, 2, 1, 1, 6};
    for (int i = 0; i < 5; i++)
        cr_assert_eq(ds->labels[i], first[i]);
    int count[10] = {0};
    for (int64_t i = 0; i < ds->n; i++)
        count[ds->labels[i]]++;
    for (int c = 0; c < 10; c++)
        cr_assert_eq(count[c], 1000);
    float lo = 1, hi = 0;
    for (size_t i = 0; i < (size_t)ds->n * 784; i++) {
        lo = ds->x[i] < lo ? ds->x[i] : lo;
        hi = ds->x[i] > hi ? ds->x[i] : hi;
    }
    cr_assert_eq(lo, 0.0f);
    cr_assert_eq(hi, 1.0f);
    double sum = 0; /* the first image's pixel bytes sum to 33456 */
    for (int i = 0; i < 784; i++)
        sum += ds->x[i] * 255.0;
    cr_assert(sum > 33456 - 0.01 && sum < 33456 + 0.01, "sum %f", sum);
}

Test(idx, fashion_mnist_t10k_gzipped)
{
    struct ft_dataset *ds = NULL;
    struct ft_error err;
    cr_assert_eq(ft_dataset_load_idx_files(T10K_IMAGES, T10K_LABELS, &ds, &err), FT_OK, "%s",
                 err.message);
    check_t10k(ds);
    size_t il, ll;
    unsigned char *img = read_all(T10K_IMAGES, &il), *lab = read_all(T10K_LABELS, &ll);
    struct ft_dataset *mem = NULL;
    cr_assert_eq(ft_dataset_parse_idx(img, il, lab, ll, &mem, &err), FT_OK, "%s", err.message);
    cr_assert_eq(memcmp(ds->x, mem->x, 10000 * 784 * sizeof(float)), 0);
    cr_assert_eq(memcmp(ds->labels, mem->labels, 10000 * sizeof(int32_t)), 0);
    ft_dataset_free(mem);
    ft_dataset_free(ds);
    free(img);
    free(lab);
}

Test(idx, fashion_mnist_t10k_raw_loads_identically)
{
    gunzip_to(T10K_IMAGES, tmp_path("images"));
    gunzip_to(T10K_LABELS, tmp_path("labels"));
    struct ft_dataset *gz = NULL, *raw = NULL, *mixed = NULL;
    struct ft_error err;
    cr_assert_eq(ft_dataset_load_idx_files(T10K_IMAGES, T10K_LABELS, &gz, &err), FT_OK);
    char images[256];
    snprintf(images, sizeof images, "%s", tmp_path("images"));
    cr_assert_eq(ft_dataset_load_idx_files(images, tmp_path("labels"), &raw, &err), FT_OK, "%s",
                 err.message);
    cr_assert_eq(ft_dataset_load_idx_files(images, T10K_LABELS, &mixed, &err), FT_OK);
    check_t10k(raw);
    cr_assert_eq(memcmp(gz->x, raw->x, 10000 * 784 * sizeof(float)), 0);
    cr_assert_eq(memcmp(gz->labels, raw->labels, 10000 * sizeof(int32_t)), 0);
    cr_assert_eq(memcmp(gz->labels, mixed->labels, 10000 * sizeof(int32_t)), 0);
    ft_dataset_free(gz);
    ft_dataset_free(raw);
    ft_dataset_free(mixed);
}

Test(idx, missing_file)
{
    struct ft_dataset *ds = NULL;
    struct ft_error err;
    cr_assert_neq(ft_dataset_load_idx_files("/nonexistent/images", T10K_LABELS, &ds, &err), FT_OK);
    cr_assert_str_eq(err.param, "images");
    cr_assert_null(ds);
}

Test(idx, synthetic_values_and_label_table)
{
    size_t il, ll;
    unsigned char *img = idx_images(0x803, 3, 2, 2, &il);
    const unsigned char values[3] = {7, 3, 7};
    unsigned char *lab = idx_labels(0x801, 3, values, &ll);
    struct ft_dataset *ds = NULL;
    cr_assert_eq(ft_dataset_parse_idx(img, il, lab, ll, &ds, NULL), FT_OK);
    cr_assert_eq(ds->n, 3);
    cr_assert_eq(ds->dim, 4);
    for (int i = 0; i < 12; i++)
        cr_assert_eq(ds->x[i], img[16 + i] / 255.0f);
    cr_assert_eq(ds->num_labels, 2);
    cr_assert_str_eq(ds->label_names[0], "3");
    cr_assert_str_eq(ds->label_names[1], "7");
    cr_assert_eq(ds->labels[0], 1);
    cr_assert_eq(ds->labels[1], 0);
    ft_dataset_free(ds);
    free(img);
    free(lab);
}

Test(idx, bad_magic)
{
    size_t il, ll;
    const unsigned char values[2] = {0, 1};
    unsigned char *img = idx_images(0x803, 2, 2, 2, &il);
    unsigned char *lab = idx_labels(0x801, 2, values, &ll);
    unsigned char *bad_img = idx_images(0x801, 2, 2, 2, &il);
    unsigned char *bad_lab = idx_labels(0x803, 2, values, &ll);
    idx_fails(bad_img, il, lab, ll, "images");
    idx_fails(img, il, bad_lab, ll, "labels");
    idx_fails(lab, ll, img, il, "images");
    free(img);
    free(lab);
    free(bad_img);
    free(bad_lab);
}

Test(idx, truncated_images)
{
    size_t il, ll;
    const unsigned char values[3] = {0, 1, 2};
    unsigned char *img = idx_images(0x803, 3, 4, 4, &il);
    unsigned char *lab = idx_labels(0x801, 3, values, &ll);
    idx_fails(img, il - 1, lab, ll, "images");
    idx_fails(img, 16 + 2 * 16, lab, ll, "images");
    idx_fails(img, 10, lab, ll, "images");
    idx_fails(NULL, 0, lab, ll, "images");
    free(img);
    free(lab);
}

Test(idx, truncated_labels)
{
    size_t il, ll;
    const unsigned char values[3] = {0, 1, 2};
    unsigned char *img = idx_images(0x803, 3, 4, 4, &il);
    unsigned char *lab = idx_labels(0x801, 3, values, &ll);
    idx_fails(img, il, lab, ll - 1, "labels");
    idx_fails(img, il, lab, 6, "labels");
    free(img);
    free(lab);
}

Test(idx, count_mismatch)
{
    size_t il, ll;
    const unsigned char values[4] = {0, 1, 2, 3};
    unsigned char *img = idx_images(0x803, 3, 4, 4, &il);
    unsigned char *lab = idx_labels(0x801, 4, values, &ll);
    idx_fails(img, il, lab, ll, "labels");
    free(img);
    free(lab);
}

Test(idx, huge_declared_shape_is_truncated_not_overflow)
{
    size_t il, ll;
    const unsigned char values[1] = {0};
    unsigned char *img = idx_images(0x803, 1, 2, 2, &il);
    unsigned char *lab = idx_labels(0x801, 1, values, &ll);
    put_be32(img + 4, 0xffffffffu);
    put_be32(img + 8, 0xffffu);
    put_be32(img + 12, 0x7fffu);
    idx_fails(img, il, lab, ll, "images");
    free(img);
    free(lab);
}

Test(idx, gzipped_buffers_and_truncated_gzip)
{
    size_t il, ll, gil, gll;
    const unsigned char values[3] = {5, 5, 1};
    unsigned char *img = idx_images(0x803, 3, 8, 8, &il);
    unsigned char *lab = idx_labels(0x801, 3, values, &ll);
    unsigned char *gimg = gzip_buf(img, il, &gil);
    unsigned char *glab = gzip_buf(lab, ll, &gll);
    struct ft_dataset *ds = NULL;
    cr_assert_eq(ft_dataset_parse_idx(gimg, gil, glab, gll, &ds, NULL), FT_OK);
    cr_assert_eq(ds->n, 3);
    cr_assert_eq(ds->dim, 64);
    cr_assert_eq(ds->x[5], img[16 + 5] / 255.0f);
    ft_dataset_free(ds);
    idx_fails(gimg, gil / 2, glab, gll, "images");
    idx_fails(gimg, gil - 1, glab, gll, "images"); /* missing part of the trailer */
    idx_fails(gimg, gil, glab, gll - 4, "labels");
    gimg[gil / 2] ^= 0xff; /* corrupt */
    idx_fails(gimg, gil, glab, gll, "images");
    free(img);
    free(lab);
    free(gimg);
    free(glab);
}

/* ---------------------------------------------------------------------------------------
 * Stored form */

static void assert_same(const struct ft_dataset *a, const struct ft_dataset *b)
{
    cr_assert_eq(a->n, b->n);
    cr_assert_eq(a->dim, b->dim);
    cr_assert_eq(memcmp(a->x, b->x, (size_t)a->n * (size_t)a->dim * sizeof(float)), 0);
    cr_assert_eq(memcmp(a->labels, b->labels, (size_t)a->n * sizeof(int32_t)), 0);
    cr_assert_eq(a->num_labels, b->num_labels);
    for (int i = 0; i < a->num_labels; i++)
        cr_assert_str_eq(a->label_names[i], b->label_names[i]);
    cr_assert_eq(memcmp(a->image_shape, b->image_shape, sizeof a->image_shape), 0);
}

Test(stored, csv_round_trip)
{
    struct ft_dataset *ds = csv_ok("a,label,b\n1,\xc3\xa9t\xc3\xa9,2\n3,\"quote\\\",4\n5,x,6\n");
    struct ft_error err;
    cr_assert_eq(ft_dataset_save(ds, tmp_path("d.safetensors"), &err), FT_OK, "%s", err.message);
    struct ft_dataset *back = NULL;
    cr_assert_eq(ft_dataset_load(tmp_path("d.safetensors"), &back, &err), FT_OK, "%s", err.message);
    assert_same(ds, back);
    ft_safetensors *st = NULL;
    cr_assert_eq(ft_safetensors_open(tmp_path("d.safetensors"), &st, NULL), FT_OK);
    json_t *md = ft_safetensors_metadata(st);
    cr_assert_str_eq(json_string_value(json_object_get(md, "image_shape")), "");
    cr_assert_str_eq(json_string_value(json_object_get(md, "label_names")),
                     "[\"\xc3\xa9t\xc3\xa9\",\"quote\\\\\",\"x\"]");
    ft_safetensors_free(st);
    ft_dataset_free(ds);
    ft_dataset_free(back);
}

Test(stored, idx_round_trip_keeps_image_shape)
{
    size_t il, ll;
    const unsigned char values[2] = {4, 2};
    unsigned char *img = idx_images(0x803, 2, 2, 3, &il);
    unsigned char *lab = idx_labels(0x801, 2, values, &ll);
    struct ft_dataset *ds = NULL, *back = NULL;
    cr_assert_eq(ft_dataset_parse_idx(img, il, lab, ll, &ds, NULL), FT_OK);
    cr_assert_eq(ft_dataset_save(ds, tmp_path("i.safetensors"), NULL), FT_OK);
    cr_assert_eq(ft_dataset_load(tmp_path("i.safetensors"), &back, NULL), FT_OK);
    assert_same(ds, back);
    cr_assert_eq(back->image_shape[1], 2);
    cr_assert_eq(back->image_shape[2], 3);
    ft_dataset_free(ds);
    ft_dataset_free(back);
    free(img);
    free(lab);
}

/* Write x (2, 1), labels and metadata straight through the safetensors writer. */
static void write_raw(const char *name, const int32_t labels[2], const char *names,
                      const char *shape)
{
    float x[2] = {1, 2};
    struct ft_tensor_view v[2] = {
        {.name = "x", .dtype = "F32", .ndim = 2, .shape = {2, 1}, .data = x},
        {.name = "labels", .dtype = "I32", .ndim = 1, .shape = {2}, .data = labels},
    };
    json_t *md = json_pack("{s:s, s:s}", "label_names", names, "image_shape", shape);
    cr_assert_eq(ft_safetensors_write(tmp_path(name), v, 2, md, NULL), FT_OK);
    json_decref(md);
}

static void load_fails(const char *name, const char *param)
{
    struct ft_dataset *ds = (struct ft_dataset *)0x1;
    struct ft_error err;
    ft_error_clear(&err);
    cr_assert_eq(ft_dataset_load(tmp_path(name), &ds, &err), FT_EINVAL, "%s", name);
    cr_assert_null(ds);
    cr_assert_str_eq(err.param, param, "%s: %s", name, err.message);
}

Test(stored, load_rejects_inconsistent_files)
{
    const int32_t ok[2] = {0, 1}, out_of_range[2] = {0, 2};
    write_raw("good", ok, "[\"a\",\"b\"]", "1,1,1");
    struct ft_dataset *ds = NULL;
    cr_assert_eq(ft_dataset_load(tmp_path("good"), &ds, NULL), FT_OK);
    ft_dataset_free(ds);
    write_raw("range", out_of_range, "[\"a\",\"b\"]", "");
    load_fails("range", "labels");
    write_raw("names", ok, "[\"a\",3]", "");
    load_fails("names", "label_names");
    write_raw("dups", ok, "[\"a\",\"a\"]", "");
    load_fails("dups", "label_names");
    write_raw("notjson", ok, "a,b", "");
    load_fails("notjson", "label_names");
    write_raw("shape", ok, "[\"a\",\"b\"]", "1,2,1");
    load_fails("shape", "image_shape");
    write_raw("shape2", ok, "[\"a\",\"b\"]", "1,1");
    load_fails("shape2", "image_shape");
    float x[2] = {1, 2};
    struct ft_tensor_view only_x = {
        .name = "x", .dtype = "F32", .ndim = 2, .shape = {2, 1}, .data = x};
    cr_assert_eq(ft_safetensors_write(tmp_path("nolabels"), &only_x, 1, NULL, NULL), FT_OK);
    load_fails("nolabels", "labels");
    struct ft_error err;
    cr_assert_eq(ft_dataset_load(tmp_path("absent"), &ds, &err), FT_EIO);
}

/* ---------------------------------------------------------------------------------------
 * Subsets and label spaces */

Test(dataset, subset)
{
    struct ft_dataset *ds = csv_ok("a,label,b\n1,cat,2\n3,dog,4\n5,bird,6\n");
    const int64_t idx[3] = {2, 0, 2};
    struct ft_dataset *sub = ft_dataset_subset(ds, idx, 3);
    cr_assert_not_null(sub);
    cr_assert_eq(sub->n, 3);
    cr_assert_eq(sub->dim, 2);
    const float x[] = {5, 6, 1, 2, 5, 6};
    assert_floats(sub->x, x, 6);
    cr_assert_eq(sub->labels[0], 2);
    cr_assert_eq(sub->labels[1], 0);
    cr_assert_eq(sub->num_labels, 3);
    cr_assert_str_eq(sub->label_names[2], "bird");
    cr_assert_neq(sub->label_names[2], ds->label_names[2]);
    struct ft_dataset *none = ft_dataset_subset(ds, NULL, 0);
    cr_assert_not_null(none);
    cr_assert_eq(none->n, 0);
    cr_assert_eq(none->num_labels, 3);
    ft_dataset_free(none);
    ft_dataset_free(sub);
    ft_dataset_free(ds);
    ft_dataset_free(NULL);
}

Test(dataset, map_labels)
{
    struct ft_dataset *a = csv_ok("label,v\ncat,1\ndog,2\n");
    struct ft_dataset *b = csv_ok("label,v\ndog,1\nbird,2\ncat,3\n");
    int32_t out[3] = {99, 99, 99};
    ft_dataset_map_labels(a, b, out);
    cr_assert_eq(out[0], 1);
    cr_assert_eq(out[1], -1);
    cr_assert_eq(out[2], 0);
    int32_t back[2];
    ft_dataset_map_labels(b, a, back);
    cr_assert_eq(back[0], 2);
    cr_assert_eq(back[1], 0);
    ft_dataset_free(a);
    ft_dataset_free(b);
}

/* Found by fuzzing (tests/fuzz/fuzz_csv.c): the error quoted the field's raw bytes, so a
 * non-UTF-8 byte made a message no JSON string can hold, and the upload was answered 500
 * "out of memory" instead of 400. The message is now valid UTF-8 (the bad byte as '?'). */
Test(csv, error_quoting_invalid_utf8_is_valid_utf8)
{
    static const char text[] = "a,label\n1,x\n\xff\xfe,y\n2,\xc3\n";
    struct ft_dataset *ds = NULL;
    struct ft_error err;
    cr_assert_eq(ft_dataset_parse_csv(text, strlen(text), &ds, &err), FT_EINVAL);
    cr_assert_null(ds);
    cr_assert_str_eq(err.message, "line 3, column 1: \"??\" is not a number");
    json_t *s = json_string(err.message);
    cr_assert_not_null(s, "the message is valid UTF-8");
    json_decref(s);
}
