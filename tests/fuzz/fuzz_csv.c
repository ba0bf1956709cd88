/* fuzz_csv.c — the CSV dataset loader (ft_dataset_parse_csv) on arbitrary bytes.
 *
 * Input: the CSV text as uploaded (not NUL-terminated: the parser gets exactly size bytes,
 * so a read past the end is an ASan report). A dataset that parses must be well formed: at
 * least one row, dim >= 1, finite features, every label id in range with a name, and the
 * label names distinct. */
#include "dataset.h"

#include "fuzz_common.h"

#include <math.h>

static void check_dataset(const struct ft_dataset *ds)
{
    FZ_CHECK(ds->n >= 1 && ds->dim >= 1 && ds->num_labels >= 1);
    FZ_CHECK(ds->num_labels <= ds->n);
    for (int64_t i = 0; i < ds->n * ds->dim; i++)
        FZ_CHECK(isfinite(ds->x[i]));
    for (int64_t i = 0; i < ds->n; i++)
        FZ_CHECK(ds->labels[i] >= 0 && ds->labels[i] < ds->num_labels);
    for (int i = 0; i < ds->num_labels; i++) {
        FZ_CHECK(ds->label_names[i] && ds->label_names[i][0]);
        for (int j = 0; j < i; j++)
            FZ_CHECK(strcmp(ds->label_names[i], ds->label_names[j]) != 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ft_dataset *ds = NULL;
    struct ft_error err = {0};
    /* an exact-size copy, so ASan sees any read past the end */
    char *buf = malloc(size ? size : 1);
    FZ_CHECK(buf);
    memcpy(buf, data, size);
    enum ft_err e = ft_dataset_parse_csv(buf, size, &ds, &err);
    if (e == FT_OK)
        check_dataset(ds);
    else
        FZ_CHECK(ds == NULL && fz_error_ok(&err, e));
    ft_dataset_free(ds);
    free(buf);
    return 0;
}
