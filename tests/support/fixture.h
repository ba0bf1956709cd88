/* fixture.h — load the JSON fixtures copied into tests/fixtures/ (never ../shared).
 *
 * Paths are relative to tests/fixtures/; the directory comes from $FT_FIXTURES or, when
 * unset, "tests/fixtures" (tests run from the repository root). */
#ifndef FT_TEST_FIXTURE_H
#define FT_TEST_FIXTURE_H

#include <jansson.h>
#include <stddef.h>

/* Parse tests/fixtures/<relpath>. New reference: json_decref(). Aborts the test (cr_assert)
 * when the file is missing or not JSON. */
json_t *fx_load(const char *relpath);

/* Full path of tests/fixtures/<relpath> in a static buffer (overwritten by the next call). */
const char *fx_path(const char *relpath);

/* obj[section][name] = {"shape": [...], "data": [...]}: copy data into a new float array
 * (caller frees) and its element count into *n (may be NULL). Aborts when absent. */
float *fx_floats(json_t *fixture, const char *section, const char *name, size_t *n);
/* The same as double (reference values). */
double *fx_doubles(json_t *fixture, const char *section, const char *name, size_t *n);
/* The same as int64 (labels, indices). */
long long *fx_ints(json_t *fixture, const char *section, const char *name, size_t *n);
/* Shape dimension i of obj[section][name] (aborts when absent). */
int fx_dim(json_t *fixture, const char *section, const char *name, int i);

/* |got - want| <= atol + rtol * |want| for every element; on failure reports the first bad
 * index through Criterion with label. */
void fx_assert_close(const char *label, const float *got, const double *want, size_t n, double atol,
                     double rtol);
/* The same with the file's own "tolerance" block. */
void fx_assert_close_tol(json_t *fixture, const char *label, const float *got, const double *want,
                         size_t n);

/* Finite-difference checks (STYLE.md: central differences in double, |a - b| <= atol + rtol |b|),
 * with h 1e-6, atol 1e-5, rtol 1e-4. */
#define FX_FD_H 1e-6
#define FX_FD_ATOL 1e-5
#define FX_FD_RTOL 1e-4

/* A scalar function of some double array the caller perturbs (the rest is in ctx). */
typedef double (*fx_scalar_fn)(void *ctx);

/* Central differences of f w.r.t. every entry of v (n; restored after), each compared with
 * grad[i] (float); fails the test naming label and the index. */
void fx_check_fd(const char *label, fx_scalar_fn f, void *ctx, double *v, size_t n,
                 const float *grad);

/* v (n) as a new double array (caller frees). */
double *fx_to_double(const float *v, size_t n);

/* Names of the *.json files in tests/fixtures/<dir>, sorted; *count set. Free with
 * fx_free_list(). */
char **fx_list(const char *dir, size_t *count);
void fx_free_list(char **list, size_t count);

#endif
