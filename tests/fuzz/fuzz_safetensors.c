/* fuzz_safetensors.c — the safetensors reader (ft_safetensors_parse) on arbitrary bytes.
 *
 * A buffer that parses must keep the reader's promises: every tensor found by name, a known
 * dtype, data_offsets tiling the byte buffer (so the byte sizes add up to what follows the
 * header), and every byte of every tensor readable (touched here, for ASan). */
#include "safetensors.h"

#include "fuzz_common.h"

static size_t elem_size(const char *dtype)
{
    if (strcmp(dtype, "F32") == 0 || strcmp(dtype, "I32") == 0)
        return 4;
    FZ_CHECK(strcmp(dtype, "I64") == 0);
    return 8;
}

static void check_handle(const ft_safetensors *st, size_t size)
{
    uint64_t total = 0;
    unsigned sum = 0;
    int count = ft_safetensors_count(st);
    FZ_CHECK(count >= 0);
    FZ_CHECK(json_is_object(ft_safetensors_metadata(st)));
    for (int i = 0; i < count; i++) {
        struct ft_tensor_view v;
        const char *name = ft_safetensors_name(st, i);
        FZ_CHECK(name && ft_safetensors_get(st, name, &v) == 0);
        FZ_CHECK(v.ndim >= 0 && v.ndim <= FT_ST_MAX_DIMS);
        uint64_t bytes = elem_size(v.dtype);
        for (int d = 0; d < v.ndim; d++)
            bytes *= (uint64_t)v.shape[d];
        FZ_CHECK(bytes <= size);
        FZ_CHECK((uintptr_t)v.data % elem_size(v.dtype) == 0 || bytes == 0);
        for (uint64_t k = 0; k < bytes; k++)
            sum += ((const unsigned char *)v.data)[k];
        total += bytes;
    }
    FZ_CHECK(total <= size);
    FZ_CHECK(ft_safetensors_name(st, count) == NULL);
    (void)sum;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ft_safetensors *st = NULL;
    struct ft_error err = {0};
    enum ft_err e = ft_safetensors_parse(data, size, &st, &err);
    if (e == FT_OK)
        check_handle(st, size);
    else
        FZ_CHECK(st == NULL && fz_error_ok(&err, e));
    ft_safetensors_free(st);
    return 0;
}
