/* fixture.c — JSON fixture loading and tolerance asserts for the Criterion tests. */
#include "support/fixture.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *fx_path(const char *relpath)
{
    static char buf[1024];
    const char *dir = getenv("FT_FIXTURES");
    snprintf(buf, sizeof buf, "%s/%s", dir && *dir ? dir : "tests/fixtures", relpath);
    return buf;
}

json_t *fx_load(const char *relpath)
{
    json_error_t jerr;
    json_t *root = json_load_file(fx_path(relpath), 0, &jerr);
    cr_assert_not_null(root, "fixture %s: %s (line %d)", relpath, jerr.text, jerr.line);
    return root;
}

static json_t *entry(json_t *fixture, const char *section, const char *name)
{
    json_t *e = json_object_get(json_object_get(fixture, section), name);
    cr_assert_not_null(e, "fixture has no %s.%s", section, name);
    json_t *data = json_object_get(e, "data");
    cr_assert(json_is_array(data), "fixture %s.%s has no data array", section, name);
    return e;
}

int fx_dim(json_t *fixture, const char *section, const char *name, int i)
{
    json_t *shape = json_object_get(entry(fixture, section, name), "shape");
    cr_assert(json_is_array(shape) && (size_t)i < json_array_size(shape), "%s.%s: no dim %d",
              section, name, i);
    return (int)json_integer_value(json_array_get(shape, (size_t)i));
}

double *fx_doubles(json_t *fixture, const char *section, const char *name, size_t *n)
{
    json_t *data = json_object_get(entry(fixture, section, name), "data");
    size_t len = json_array_size(data);
    double *out = calloc(len ? len : 1, sizeof *out);
    cr_assert_not_null(out);
    for (size_t i = 0; i < len; i++)
        out[i] = json_number_value(json_array_get(data, i));
    if (n)
        *n = len;
    return out;
}

float *fx_floats(json_t *fixture, const char *section, const char *name, size_t *n)
{
    size_t len;
    double *d = fx_doubles(fixture, section, name, &len);
    float *out = calloc(len ? len : 1, sizeof *out);
    cr_assert_not_null(out);
    for (size_t i = 0; i < len; i++)
        out[i] = (float)d[i];
    free(d);
    if (n)
        *n = len;
    return out;
}

long long *fx_ints(json_t *fixture, const char *section, const char *name, size_t *n)
{
    json_t *data = json_object_get(entry(fixture, section, name), "data");
    size_t len = json_array_size(data);
    long long *out = calloc(len ? len : 1, sizeof *out);
    cr_assert_not_null(out);
    for (size_t i = 0; i < len; i++)
        out[i] = (long long)json_integer_value(json_array_get(data, i));
    if (n)
        *n = len;
    return out;
}

void fx_assert_close(const char *label, const float *got, const double *want, size_t n, double atol,
                     double rtol)
{
    for (size_t i = 0; i < n; i++) {
        double diff = fabs((double)got[i] - want[i]);
        cr_assert(diff <= atol + rtol * fabs(want[i]),
                  "%s[%zu]: got %.9g want %.9g (|diff| %.3g > atol %.1g + rtol %.1g)", label, i,
                  (double)got[i], want[i], diff, atol, rtol);
    }
}

void fx_assert_close_tol(json_t *fixture, const char *label, const float *got, const double *want,
                         size_t n)
{
    json_t *tol = json_object_get(fixture, "tolerance");
    cr_assert_not_null(tol, "fixture has no tolerance");
    fx_assert_close(label, got, want, n, json_number_value(json_object_get(tol, "atol")),
                    json_number_value(json_object_get(tol, "rtol")));
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

char **fx_list(const char *dir, size_t *count)
{
    DIR *d = opendir(fx_path(dir));
    cr_assert_not_null(d, "no fixture directory %s", dir);
    size_t n = 0, cap = 16;
    char **list = malloc(cap * sizeof *list);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        if (len < 6 || strcmp(de->d_name + len - 5, ".json") != 0)
            continue;
        if (n == cap) {
            cap *= 2;
            list = realloc(list, cap * sizeof *list);
        }
        list[n++] = strdup(de->d_name);
    }
    closedir(d);
    qsort(list, n, sizeof *list, cmp_str);
    *count = n;
    return list;
}

void fx_free_list(char **list, size_t count)
{
    for (size_t i = 0; i < count; i++)
        free(list[i]);
    free(list);
}

void fx_check_fd(const char *label, fx_scalar_fn f, void *ctx, double *v, size_t n,
                 const float *grad)
{
    for (size_t i = 0; i < n; i++) {
        double keep = v[i];
        v[i] = keep + FX_FD_H;
        double fp = f(ctx);
        v[i] = keep - FX_FD_H;
        double fm = f(ctx);
        v[i] = keep;
        double fd = (fp - fm) / (2.0 * FX_FD_H);
        cr_assert(fabs(grad[i] - fd) <= FX_FD_ATOL + FX_FD_RTOL * fabs(fd),
                  "%s[%zu]: analytic %.9g, finite difference %.9g", label, i, (double)grad[i], fd);
    }
}

double *fx_to_double(const float *v, size_t n)
{
    double *d = malloc((n ? n : 1) * sizeof *d);
    cr_assert_not_null(d);
    for (size_t i = 0; i < n; i++)
        d[i] = v[i];
    return d;
}
