/* test_safetensors.c — writer/reader round trips, the exact bytes of a tiny file, and every
 * rejection of the strict reader (truncation, header size, offsets, sizes, dtype, header
 * type, metadata values, overlaps and gaps). */
#include "safetensors.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[64];

static void make_dir(void)
{
    snprintf(dir, sizeof dir, "/tmp/ft_st_XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void remove_dir(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(safetensors, .init = make_dir, .fini = remove_dir);

static const char *tmp_path(const char *name)
{
    static char buf[256];
    snprintf(buf, sizeof buf, "%s/%s", dir, name);
    return buf;
}

/* Whole file into a new buffer; *len its size. */
static unsigned char *slurp(const char *path, size_t *len)
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

static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* 8-byte size + header (unpadded) + data bytes. New buffer, *len its size. */
static unsigned char *make_file(const char *header, const void *data, size_t data_len, size_t *len)
{
    size_t n = strlen(header);
    unsigned char *buf = malloc(8 + n + data_len + 1);
    put_le64(buf, n);
    memcpy(buf + 8, header, n);
    if (data_len)
        memcpy(buf + 8 + n, data, data_len);
    *len = 8 + n + data_len;
    return buf;
}

/* Parse header + data_len zero bytes and expect FT_EINVAL. */
static void expect_rejected(const char *header, size_t data_len)
{
    unsigned char zeros[64] = {0};
    size_t len;
    unsigned char *buf = make_file(header, zeros, data_len, &len);
    ft_safetensors *st = (ft_safetensors *)0x1;
    struct ft_error err;
    ft_error_clear(&err);
    enum ft_err rc = ft_safetensors_parse(buf, len, &st, &err);
    cr_assert_eq(rc, FT_EINVAL, "header %s: rc %d", header, rc);
    cr_assert_eq(err.code, FT_EINVAL);
    cr_assert_neq(err.message[0], '\0');
    cr_assert_null(st);
    free(buf);
}

static void expect_accepted(const char *header, size_t data_len)
{
    unsigned char zeros[64] = {0};
    size_t len;
    unsigned char *buf = make_file(header, zeros, data_len, &len);
    ft_safetensors *st = NULL;
    struct ft_error err;
    enum ft_err rc = ft_safetensors_parse(buf, len, &st, &err);
    cr_assert_eq(rc, FT_OK, "header %s: %s", header, err.message);
    ft_safetensors_free(st);
    free(buf);
}

Test(safetensors, round_trip_all_dtypes_with_metadata)
{
    float f[6] = {1.5f, -2.0f, 0.0f, 3.25f, 1e-20f, -7.0f};
    int32_t i32[3] = {-1, 0, 2147483647};
    int64_t i64[2] = {-9000000000LL, 42};
    struct ft_tensor_view in[3] = {
        {.name = "weights", .dtype = "F32", .ndim = 2, .shape = {2, 3}, .data = f},
        {.name = "ids", .dtype = "I32", .ndim = 1, .shape = {3}, .data = i32},
        {.name = "big", .dtype = "I64", .ndim = 2, .shape = {1, 2}, .data = i64},
    };
    json_t *md = json_pack("{s:s, s:s}", "zeta", "last", "alpha", "first");
    struct ft_error err;
    cr_assert_eq(ft_safetensors_write(tmp_path("a.safetensors"), in, 3, md, &err), FT_OK, "%s",
                 err.message);
    json_decref(md);
    cr_assert_neq(access(tmp_path("a.safetensors.tmp"), F_OK), 0, "temp file left behind");

    ft_safetensors *st = NULL;
    cr_assert_eq(ft_safetensors_open(tmp_path("a.safetensors"), &st, &err), FT_OK, "%s",
                 err.message);
    cr_assert_eq(ft_safetensors_count(st), 3);
    cr_assert_str_eq(ft_safetensors_name(st, 0), "weights");
    cr_assert_str_eq(ft_safetensors_name(st, 1), "ids");
    cr_assert_str_eq(ft_safetensors_name(st, 2), "big");
    cr_assert_null(ft_safetensors_name(st, 3));
    for (int t = 0; t < 3; t++) {
        struct ft_tensor_view v;
        cr_assert_eq(ft_safetensors_get(st, in[t].name, &v), 0);
        cr_assert_str_eq(v.dtype, in[t].dtype);
        cr_assert_eq(v.ndim, in[t].ndim);
        size_t bytes = t == 2 ? 8 : 4;
        for (int d = 0; d < v.ndim; d++) {
            cr_assert_eq(v.shape[d], in[t].shape[d]);
            bytes *= (size_t)v.shape[d];
        }
        cr_assert_eq(memcmp(v.data, in[t].data, bytes), 0, "tensor %s differs", in[t].name);
    }
    struct ft_tensor_view v;
    cr_assert_eq(ft_safetensors_get(st, "missing", &v), -1);
    json_t *got = ft_safetensors_metadata(st);
    cr_assert_eq(json_object_size(got), 2);
    cr_assert_str_eq(json_string_value(json_object_get(got, "alpha")), "first");
    cr_assert_str_eq(json_string_value(json_object_get(got, "zeta")), "last");
    ft_safetensors_free(st);
}

Test(safetensors, exact_bytes_of_a_tiny_file)
{
    float a[2] = {1.0f, -2.0f};
    struct ft_tensor_view in = {.name = "a", .dtype = "F32", .ndim = 1, .shape = {2}, .data = a};
    json_t *md = json_pack("{s:s}", "k", "v");
    struct ft_error err;
    cr_assert_eq(ft_safetensors_write(tmp_path("tiny.safetensors"), &in, 1, md, &err), FT_OK);
    json_decref(md);
    size_t len;
    unsigned char *buf = slurp(tmp_path("tiny.safetensors"), &len);

    const char *json = "{\"__metadata__\":{\"k\":\"v\"},\"a\":{\"dtype\":\"F32\",\"shape\":[2],"
                       "\"data_offsets\":[0,8]}}";
    cr_assert_eq(strlen(json), 79);
    /* 79 bytes of JSON padded with one space to 80 = 0x50. */
    const unsigned char size[8] = {0x50, 0, 0, 0, 0, 0, 0, 0};
    const unsigned char data[8] = {0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0xc0};
    cr_assert_eq(len, 8 + 80 + 8);
    cr_assert_eq(memcmp(buf, size, 8), 0);
    cr_assert_eq(memcmp(buf + 8, json, 79), 0, "header: %.80s", (char *)buf + 8);
    cr_assert_eq(buf[8 + 79], ' ');
    cr_assert_eq(memcmp(buf + 88, data, 8), 0);
    free(buf);
}

Test(safetensors, header_padded_to_eight_and_no_metadata_key_when_null)
{
    int32_t x[1] = {7};
    struct ft_tensor_view in = {.name = "xy", .dtype = "I32", .ndim = 1, .shape = {1}, .data = x};
    cr_assert_eq(ft_safetensors_write(tmp_path("b.safetensors"), &in, 1, NULL, NULL), FT_OK);
    size_t len;
    unsigned char *buf = slurp(tmp_path("b.safetensors"), &len);
    const char *json = "{\"xy\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    uint64_t n = buf[0] | (uint64_t)buf[1] << 8;
    cr_assert_eq(n % 8, 0);
    cr_assert_eq(n, (strlen(json) + 7) / 8 * 8);
    cr_assert_eq(memcmp(buf + 8, json, strlen(json)), 0);
    for (size_t i = strlen(json); i < n; i++)
        cr_assert_eq(buf[8 + i], ' ');
    cr_assert_eq(len, 8 + n + 4);
    free(buf);
}

Test(safetensors, misaligned_tensor_is_readable_aligned)
{
    int32_t small[1] = {5};
    int64_t big[2] = {1LL << 40, -3};
    struct ft_tensor_view in[2] = {
        {.name = "s", .dtype = "I32", .ndim = 1, .shape = {1}, .data = small},
        {.name = "b", .dtype = "I64", .ndim = 1, .shape = {2}, .data = big},
    };
    cr_assert_eq(ft_safetensors_write(tmp_path("m.safetensors"), in, 2, NULL, NULL), FT_OK);
    ft_safetensors *st = NULL;
    cr_assert_eq(ft_safetensors_open(tmp_path("m.safetensors"), &st, NULL), FT_OK);
    struct ft_tensor_view v;
    cr_assert_eq(ft_safetensors_get(st, "b", &v), 0);
    cr_assert_eq((uintptr_t)v.data % 8, 0);
    cr_assert_eq(((const int64_t *)v.data)[0], 1LL << 40);
    cr_assert_eq(((const int64_t *)v.data)[1], -3);
    ft_safetensors_free(st);
}

Test(safetensors, empty_and_zero_sized_tensors)
{
    struct ft_tensor_view in = {.name = "e", .dtype = "F32", .ndim = 2, .shape = {0, 4}};
    cr_assert_eq(ft_safetensors_write(tmp_path("z.safetensors"), &in, 1, NULL, NULL), FT_OK);
    ft_safetensors *st = NULL;
    cr_assert_eq(ft_safetensors_open(tmp_path("z.safetensors"), &st, NULL), FT_OK);
    struct ft_tensor_view v;
    cr_assert_eq(ft_safetensors_get(st, "e", &v), 0);
    cr_assert_eq(v.shape[0], 0);
    cr_assert_eq(v.shape[1], 4);
    cr_assert_eq(json_object_size(ft_safetensors_metadata(st)), 0);
    ft_safetensors_free(st);
    cr_assert_eq(ft_safetensors_write(tmp_path("n.safetensors"), NULL, 0, NULL, NULL), FT_OK);
    cr_assert_eq(ft_safetensors_open(tmp_path("n.safetensors"), &st, NULL), FT_OK);
    cr_assert_eq(ft_safetensors_count(st), 0);
    ft_safetensors_free(st);
    expect_accepted("{\"a\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]}}", 4);
    expect_accepted("{}", 0);
}

Test(safetensors, writer_rejects_bad_input)
{
    float f[1] = {1};
    struct ft_tensor_view bad_dtype = {
        .name = "a", .dtype = "F16", .ndim = 1, .shape = {1}, .data = f};
    struct ft_error err;
    cr_assert_eq(ft_safetensors_write(tmp_path("w.safetensors"), &bad_dtype, 1, NULL, &err),
                 FT_EINVAL);
    struct ft_tensor_view dup[2] = {
        {.name = "a", .dtype = "F32", .ndim = 1, .shape = {1}, .data = f},
        {.name = "a", .dtype = "F32", .ndim = 1, .shape = {1}, .data = f},
    };
    cr_assert_eq(ft_safetensors_write(tmp_path("w.safetensors"), dup, 2, NULL, &err), FT_EINVAL);
    cr_assert(strstr(err.message, "duplicate"), "%s", err.message);
    json_t *md = json_pack("{s:i}", "k", 1);
    cr_assert_eq(ft_safetensors_write(tmp_path("w.safetensors"), dup, 1, md, &err), FT_EINVAL);
    cr_assert_str_eq(err.param, "metadata");
    json_decref(md);
    struct ft_tensor_view neg = {.name = "a", .dtype = "F32", .ndim = 1, .shape = {-1}, .data = f};
    cr_assert_eq(ft_safetensors_write(tmp_path("w.safetensors"), &neg, 1, NULL, &err), FT_EINVAL);
    cr_assert_neq(access(tmp_path("w.safetensors"), F_OK), 0);
    cr_assert_eq(ft_safetensors_write("/nonexistent-dir/x.safetensors", dup, 1, NULL, &err),
                 FT_EIO);
}

Test(safetensors, rejects_truncated_file)
{
    float a[2] = {1.0f, -2.0f};
    struct ft_tensor_view in = {.name = "a", .dtype = "F32", .ndim = 1, .shape = {2}, .data = a};
    cr_assert_eq(ft_safetensors_write(tmp_path("t.safetensors"), &in, 1, NULL, NULL), FT_OK);
    size_t len;
    unsigned char *buf = slurp(tmp_path("t.safetensors"), &len);
    ft_safetensors *st = NULL;
    struct ft_error err;
    cr_assert_eq(ft_safetensors_parse(buf, len, &st, &err), FT_OK);
    ft_safetensors_free(st);
    size_t cuts[] = {0, 5, 8, 20, len - 8, len - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
        cr_assert_eq(ft_safetensors_parse(buf, cuts[i], &st, &err), FT_EINVAL, "cut at %zu",
                     cuts[i]);
        cr_assert_null(st);
    }
    FILE *f = fopen(tmp_path("t.safetensors"), "wb");
    fwrite(buf, 1, len - 1, f);
    fclose(f);
    cr_assert_eq(ft_safetensors_open(tmp_path("t.safetensors"), &st, &err), FT_EINVAL);
    f = fopen(tmp_path("t.safetensors"), "wb");
    fwrite(buf, 1, 3, f);
    fclose(f);
    cr_assert_eq(ft_safetensors_open(tmp_path("t.safetensors"), &st, &err), FT_EINVAL);
    cr_assert_eq(ft_safetensors_open(tmp_path("absent.safetensors"), &st, &err), FT_EIO);
    free(buf);
}

Test(safetensors, rejects_header_size_beyond_file_or_limit)
{
    size_t len;
    unsigned char *buf = make_file("{}", NULL, 0, &len);
    ft_safetensors *st = NULL;
    struct ft_error err;
    put_le64(buf, len - 8 + 1);
    cr_assert_eq(ft_safetensors_parse(buf, len, &st, &err), FT_EINVAL);
    put_le64(buf, 200000000);
    cr_assert_eq(ft_safetensors_parse(buf, len, &st, &err), FT_EINVAL);
    put_le64(buf, UINT64_MAX);
    cr_assert_eq(ft_safetensors_parse(buf, len, &st, &err), FT_EINVAL);
    put_le64(buf, 2);
    cr_assert_eq(ft_safetensors_parse(buf, len, &st, &err), FT_OK);
    ft_safetensors_free(st);
    free(buf);
}

Test(safetensors, rejects_offsets_out_of_bounds)
{
    expect_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8);
    expect_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", 8);
    expect_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 8);
    expect_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 8);
    expect_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4);
    expect_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4.0]}}", 4);
}

Test(safetensors, rejects_size_mismatch_with_shape)
{
    expect_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8);
    expect_rejected("{\"a\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
    expect_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8);
    expect_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4],"
                    "\"data_offsets\":[0,8]}}",
                    8);
    expect_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],"
                    "\"data_offsets\":[0,4]}}",
                    4);
    expect_rejected("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4);
}

Test(safetensors, rejects_unknown_dtype)
{
    expect_rejected("{\"a\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4);
    expect_rejected("{\"a\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4);
    expect_rejected("{\"a\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4);
    expect_rejected("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4);
    expect_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", 4);
}

Test(safetensors, rejects_non_object_header)
{
    expect_rejected("[1, 2]", 0);
    expect_rejected("\"text\"", 0);
    expect_rejected("{\"a\": 1}", 0);
    expect_rejected("{\"a\": [0, 4]}", 4);
    expect_rejected("{not json}", 0);
    expect_rejected("{} x", 0);
    expect_rejected("", 0);
    expect_rejected("  {}", 0);
    expect_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                    "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                    4);
}

Test(safetensors, rejects_non_string_metadata)
{
    expect_rejected("{\"__metadata__\":{\"k\":1}}", 0);
    expect_rejected("{\"__metadata__\":{\"k\":null}}", 0);
    expect_rejected("{\"__metadata__\":{\"k\":{\"nested\":\"v\"}}}", 0);
    expect_rejected("{\"__metadata__\":[\"k\"]}", 0);
    expect_accepted("{\"__metadata__\":{\"k\":\"v\"}}", 0);
}

Test(safetensors, rejects_overlaps_gaps_and_trailing_bytes)
{
    expect_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                    "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                    12);
    expect_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                    "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                    4);
    expect_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                    "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
                    12);
    expect_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8);
    expect_rejected("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8);
    /* Any order in the header is fine as long as the offsets tile the buffer. */
    expect_accepted("{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]},"
                    "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                    8);
}

/* Readable by the reference implementation when Python has it (skipped otherwise). */
Test(safetensors, readable_by_python_safetensors)
{
    if (system("/usr/bin/python3 -c 'import safetensors' >/dev/null 2>&1") != 0)
        cr_skip_test("python3 has no safetensors module");
    float a[3] = {1.0f, 2.0f, 3.0f};
    int64_t b[1] = {-5};
    struct ft_tensor_view in[2] = {
        {.name = "a", .dtype = "F32", .ndim = 2, .shape = {1, 3}, .data = a},
        {.name = "b", .dtype = "I64", .ndim = 1, .shape = {1}, .data = b},
    };
    json_t *md = json_pack("{s:s}", "k", "v");
    cr_assert_eq(ft_safetensors_write(tmp_path("py.safetensors"), in, 2, md, NULL), FT_OK);
    json_decref(md);
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 -c 'import safetensors, struct; "
             "d = dict(safetensors.deserialize(open(\"%s\", \"rb\").read())); "
             "assert d[\"a\"][\"shape\"] == [1, 3]; "
             "assert struct.unpack(\"<3f\", bytes(d[\"a\"][\"data\"])) == (1.0, 2.0, 3.0); "
             "assert struct.unpack(\"<q\", bytes(d[\"b\"][\"data\"])) == (-5,)'",
             tmp_path("py.safetensors"));
    cr_assert_eq(system(cmd), 0, "python safetensors could not read the file");
}

/* Found by fuzzing (tests/fuzz/fuzz_safetensors.c): jansson's parse error quotes the input
 * near the error, bytes and all; the message must still be valid UTF-8 for a JSON body. */
Test(safetensors, header_error_with_invalid_utf8_is_valid_utf8)
{
    size_t len;
    /* the parser stops at the escape "\<0xde>": its error text holds a lone lead byte */
    unsigned char *file = make_file("{\"__metadata__\":{\"k\":\"\\\xde\x82\"}}", NULL, 0, &len);
    ft_safetensors *st = NULL;
    struct ft_error err;
    cr_assert_eq(ft_safetensors_parse(file, len, &st, &err), FT_EINVAL);
    cr_assert_null(st);
    cr_assert_str_eq(err.message,
                     "safetensors header is not valid JSON: invalid escape near '\"\\?'");
    json_t *s = json_string(err.message);
    cr_assert_not_null(s, "the message is valid UTF-8");
    json_decref(s);
    free(file);
}
