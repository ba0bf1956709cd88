/* test_compact.c — issue 5's performance work, held to "the same numbers": the compact dataset
 * store (pixels as bytes, "x" U8 + scale "1/255" on disk), training on it, and the retrieval
 * metrics' screening (filter, pool, partial refinement) against a brute-force ranking. */
#include "dataset.h"
#include "metrics.h"
#include "safetensors.h"
#include "train.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[64];

static void make_dir(void)
{
    snprintf(dir, sizeof dir, "/tmp/ft_compact_XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void remove_dir(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(compact, .init = make_dir, .fini = remove_dir);
TestSuite(screening);

static const char *tmp_path(const char *name)
{
    static char buf[256];
    snprintf(buf, sizeof buf, "%s/%s", dir, name);
    return buf;
}

static void put_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24), p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8), p[3] = (unsigned char)v;
}

/* An IDX dataset of n images rows x cols (pixels i * 37 % 256, every value 0..255 when there
 * are enough) with labels i % classes, parsed. */
static struct ft_dataset *idx_dataset(uint32_t n, uint32_t rows, uint32_t cols, int classes)
{
    size_t pixels = (size_t)n * rows * cols;
    unsigned char *img = malloc(16 + pixels), *lab = malloc(8 + n);
    put_be32(img, 0x803), put_be32(img + 4, n), put_be32(img + 8, rows), put_be32(img + 12, cols);
    put_be32(lab, 0x801), put_be32(lab + 4, n);
    for (size_t i = 0; i < pixels; i++)
        img[16 + i] = (unsigned char)(i * 37 % 256);
    for (uint32_t i = 0; i < n; i++)
        lab[8 + i] = (unsigned char)(i % (uint32_t)classes);
    struct ft_dataset *ds = NULL;
    cr_assert_eq(ft_dataset_parse_idx(img, 16 + pixels, lab, 8 + n, &ds, NULL), FT_OK);
    free(img);
    free(lab);
    return ds;
}

/* Every row of a (floats) and b (either store) bitwise equal, and the labels. */
static void assert_same_rows(const struct ft_dataset *a, const struct ft_dataset *b)
{
    cr_assert_eq(a->n, b->n);
    cr_assert_eq(a->dim, b->dim);
    float *row = malloc((size_t)b->dim * sizeof *row);
    for (int64_t i = 0; i < a->n; i++) {
        ft_dataset_row(b, i, row);
        cr_assert_eq(memcmp(row, a->x + (size_t)i * a->dim, (size_t)a->dim * sizeof *row), 0,
                     "row %lld", (long long)i);
        cr_assert_eq(a->labels[i], b->labels[i]);
    }
    free(row);
}

static struct ft_dataset *copy_of(const struct ft_dataset *ds)
{
    int64_t *idx = malloc((size_t)ds->n * sizeof *idx);
    for (int64_t i = 0; i < ds->n; i++)
        idx[i] = i;
    struct ft_dataset *out = ft_dataset_subset(ds, idx, ds->n);
    free(idx);
    return out;
}

Test(compact, pixels_become_bytes_with_the_same_values)
{
    struct ft_dataset *ds = idx_dataset(20, 4, 8, 3), *c = copy_of(ds);
    cr_assert_eq(ft_dataset_compact(c), 1);
    cr_assert_null(c->x);
    cr_assert_not_null(c->x8);
    for (size_t i = 0; i < 20 * 32; i++)
        cr_assert_eq(c->x8[i], (uint8_t)(i * 37 % 256));
    assert_same_rows(ds, c);
    cr_assert_eq(ft_dataset_compact(c), 1, "already compact");
    cr_assert_eq(ft_dataset_expand(c), FT_OK);
    cr_assert_null(c->x8);
    cr_assert_eq(memcmp(c->x, ds->x, 20 * 32 * sizeof(float)), 0);
    ft_dataset_free(ds);
    ft_dataset_free(c);
}

Test(compact, refuses_what_bytes_would_change)
{
    struct ft_dataset *ds = idx_dataset(4, 2, 2, 2);
    ds->x[5] = 0.3f; /* not p / 255 */
    cr_assert_eq(ft_dataset_compact(ds), 0);
    cr_assert_not_null(ds->x);
    cr_assert_null(ds->x8);
    ds->x[5] = -0.0f; /* equal to 0, other bits */
    cr_assert_eq(ft_dataset_compact(ds), 0);
    ds->x[5] = 0.0f;
    ds->image_shape[0] = 0; /* not image data */
    cr_assert_eq(ft_dataset_compact(ds), 0);
    ft_dataset_free(ds);
    const char *csv = "a,b,label\n0,1,x\n1,0,y\n";
    cr_assert_eq(ft_dataset_parse_csv(csv, strlen(csv), &ds, NULL), FT_OK);
    cr_assert_eq(ft_dataset_compact(ds), 0, "CSV rows stay floats");
    ft_dataset_free(ds);
}

/* dtype of tensor "x" and metadata "scale" (or "") of the file at path. */
static void stored_as(const char *path, const char *dtype, const char *scale)
{
    ft_safetensors *st = NULL;
    struct ft_tensor_view v;
    cr_assert_eq(ft_safetensors_open(path, &st, NULL), FT_OK);
    cr_assert_eq(ft_safetensors_get(st, "x", &v), 0);
    cr_assert_str_eq(v.dtype, dtype);
    const char *s = json_string_value(json_object_get(ft_safetensors_metadata(st), "scale"));
    cr_assert_str_eq(s ? s : "", scale);
    ft_safetensors_free(st);
}

Test(compact, pixel_data_is_stored_as_u8_and_reads_back_equal)
{
    struct ft_dataset *ds = idx_dataset(30, 3, 5, 4), *back = NULL, *bytes = NULL;
    cr_assert_eq(ft_dataset_save(ds, tmp_path("d"), NULL), FT_OK);
    stored_as(tmp_path("d"), "U8", "1/255");
    cr_assert_eq(ft_dataset_load(tmp_path("d"), &back, NULL), FT_OK);
    cr_assert_not_null(back->x, "ft_dataset_load gives floats");
    cr_assert_eq(memcmp(back->x, ds->x, 30 * 15 * sizeof(float)), 0);
    cr_assert_eq(back->image_shape[1], 3);
    cr_assert_eq(ft_dataset_load_compact(tmp_path("d"), &bytes, NULL), FT_OK);
    cr_assert_null(bytes->x);
    assert_same_rows(ds, bytes);
    cr_assert_eq(ft_dataset_save(bytes, tmp_path("again"), NULL), FT_OK);
    stored_as(tmp_path("again"), "U8", "1/255");
    const int64_t rows[3] = {7, 0, 29};
    struct ft_dataset *sub = ft_dataset_subset(bytes, rows, 3),
                      *fsub = ft_dataset_subset(ds, rows, 3);
    cr_assert_not_null(sub->x8);
    assert_same_rows(fsub, sub);
    ft_dataset_free(sub);
    ft_dataset_free(fsub);
    ft_dataset_free(ds);
    ft_dataset_free(back);
    ft_dataset_free(bytes);
}

Test(compact, other_data_stays_f32_and_u8_needs_its_scale)
{
    const char *csv = "a,b,label\n0,1,x\n1,0,y\n";
    struct ft_dataset *ds = NULL;
    cr_assert_eq(ft_dataset_parse_csv(csv, strlen(csv), &ds, NULL), FT_OK);
    cr_assert_eq(ft_dataset_save(ds, tmp_path("csv"), NULL), FT_OK);
    stored_as(tmp_path("csv"), "F32", "");
    ft_dataset_free(ds);
    uint8_t x[2] = {1, 2};
    int32_t labels[2] = {0, 1};
    struct ft_tensor_view v[2] = {
        {.name = "x", .dtype = "U8", .ndim = 2, .shape = {2, 1}, .data = x},
        {.name = "labels", .dtype = "I32", .ndim = 1, .shape = {2}, .data = labels},
    };
    json_t *md = json_pack("{s:s, s:s}", "label_names", "[\"a\",\"b\"]", "image_shape", "");
    cr_assert_eq(ft_safetensors_write(tmp_path("noscale"), v, 2, md, NULL), FT_OK);
    struct ft_error err;
    ds = (struct ft_dataset *)0x1;
    cr_assert_eq(ft_dataset_load(tmp_path("noscale"), &ds, &err), FT_EINVAL);
    cr_assert_null(ds);
    cr_assert_str_eq(err.param, "x");
    json_object_set_new(md, "scale", json_string("1/255"));
    cr_assert_eq(ft_safetensors_write(tmp_path("scale"), v, 2, md, NULL), FT_OK);
    cr_assert_eq(ft_dataset_load(tmp_path("scale"), &ds, &err), FT_OK, "%s", err.message);
    cr_assert_eq(ds->x[1], 2 / 255.0f);
    ft_dataset_free(ds);
    json_decref(md);
}

/* The artifact of a short run on train (an mlp with a batch-hard triplet loss and an
 * EvaluationCallback on eval), as bytes. */
static unsigned char *train_artifact(const struct ft_dataset *train, const struct ft_dataset *eval,
                                     const char *name, long *len)
{
    const char *text =
        "{\"model\": {\"name\": \"mlp\", \"options\": {\"hidden_sizes\": [16, 8], \"l2\": true}},"
        " \"data\": {\"train_data\": \"t\", \"standardize\": {\"mean\": 0.5, \"std\": 0.25}},"
        " \"hyper_parameters\": {\"miner\": \"BatchHardMiner\", \"epochs\": 2, \"batch_size\": 16},"
        " \"callbacks\": [{\"name\": \"EvaluationCallback\", \"options\": {\"query_data\": "
        "\"e\"}}]}";
    json_t *config = json_loads(text, 0, NULL);
    struct ft_run_config cfg;
    struct ft_error err;
    struct ft_train_result res;
    cr_assert_eq(ft_run_config_parse(config, &cfg, NULL, &err), FT_OK, "%s", err.message);
    struct ft_train_inputs in = {.train = train, .query = {eval}, .config = config};
    cr_assert_eq(ft_train(&cfg, &in, NULL, tmp_path(name), &res, &err), FT_OK, "%s", err.message);
    ft_run_config_clear(&cfg);
    json_decref(config);
    FILE *f = fopen(tmp_path(name), "rb");
    fseek(f, 0, SEEK_END);
    *len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)*len);
    cr_assert_eq(fread(buf, 1, (size_t)*len, f), (size_t)*len);
    fclose(f);
    return buf;
}

Test(compact, training_on_bytes_gives_the_same_artifact)
{
    struct ft_dataset *train = idx_dataset(96, 4, 6, 4), *eval = idx_dataset(40, 4, 6, 4);
    struct ft_dataset *ctrain = copy_of(train), *ceval = copy_of(eval);
    cr_assert(ft_dataset_compact(ctrain) && ft_dataset_compact(ceval));
    long a_len, b_len;
    unsigned char *a = train_artifact(train, eval, "float", &a_len);
    unsigned char *b = train_artifact(ctrain, ceval, "bytes", &b_len);
    cr_assert_eq(a_len, b_len);
    cr_assert_eq(memcmp(a, b, (size_t)a_len), 0);
    free(a);
    free(b);
    ft_dataset_free(train);
    ft_dataset_free(eval);
    ft_dataset_free(ctrain);
    ft_dataset_free(ceval);
}

/* ---- the metrics' screening against brute force ---- */

static uint64_t lcg(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return *s >> 33;
}

/* Exact double score of rows a and b (metrics.h: cosine, -squared euclidean, inner product). */
static double brute_score(const float *a, const float *b, int dim, enum ft_score score)
{
    double dot = 0.0, aa = 0.0, bb = 0.0, sq = 0.0;
    for (int i = 0; i < dim; i++) {
        double t = (double)a[i] - (double)b[i];
        dot += (double)a[i] * (double)b[i];
        aa += (double)a[i] * (double)a[i];
        bb += (double)b[i] * (double)b[i];
        sq += t * t;
    }
    if (score == FT_SCORE_COSINE)
        return sqrt(aa) * sqrt(bb) > 0 ? dot / (sqrt(aa) * sqrt(bb)) : 0.0;
    return score == FT_SCORE_INNER_PRODUCT ? dot : -sq;
}

/* Rows clustered around 12 centres (some tight, some loose) so that pools and guesses vary
 * from query to query. */
static float *clustered(int n, int dim, uint64_t seed)
{
    float *e = malloc((size_t)n * dim * sizeof *e);
    for (int i = 0; i < n; i++) {
        int c = (int)(lcg(&seed) % 12);
        double spread = c < 4 ? 0.02 : c < 8 ? 0.3 : 3.0;
        for (int d = 0; d < dim; d++) {
            double centre = (double)((c * 31 + d * 7) % 13) / 13.0 - 0.5;
            double u = (double)lcg(&seed) / 2147483648.0 - 1.0;
            e[(size_t)i * dim + d] = (float)(centre + spread * u);
        }
    }
    return e;
}

/* Every query's top k from ft_retrieval_topk equals the brute-force ranking (exact double
 * scores, ties by smaller id), itself excluded. */
static void check_ranking(enum ft_score score)
{
    enum { N = 3000, DIM = 24, K = 10, NQ = 300 };
    float *e = clustered(N, DIM, 5 + (uint64_t)score);
    int64_t *ids = malloc(N * sizeof *ids), *top = malloc((size_t)NQ * K * sizeof *top);
    int32_t *labels = malloc(N * sizeof *labels);
    double *scores = malloc((size_t)NQ * K * sizeof *scores), *all = malloc(N * sizeof *all);
    for (int i = 0; i < N; i++)
        ids[i] = i, labels[i] = i % 7;
    struct ft_eval_set index = {e, ids, labels, N}, queries = {e, ids, labels, NQ};
    cr_assert_eq(ft_retrieval_topk(&queries, &index, DIM, K, score, 1, top, scores, NULL), FT_OK);
    for (int q = 0; q < NQ; q++) {
        for (int j = 0; j < N; j++)
            all[j] = j == q ? -INFINITY
                            : brute_score(e + (size_t)q * DIM, e + (size_t)j * DIM, DIM, score);
        for (int r = 0; r < K; r++) { /* the r-th best: selection by (score desc, id asc) */
            int best = -1;
            for (int j = 0; j < N; j++)
                if (j != q && !isnan(all[j]) && (best < 0 || all[j] > all[best]))
                    best = j;
            cr_assert_eq(top[q * K + r], best, "score %d query %d rank %d", score, q, r);
            cr_assert_eq(scores[q * K + r], all[best]);
            all[best] = NAN;
        }
    }
    free(e), free(ids), free(top), free(labels), free(scores), free(all);
}

Test(screening, cosine_ranking_is_the_brute_force_one, .timeout = 60)
{
    check_ranking(FT_SCORE_COSINE);
}

Test(screening, euclidean_ranking_is_the_brute_force_one, .timeout = 60)
{
    check_ranking(FT_SCORE_EUCLIDEAN);
}

Test(screening, inner_product_ranking_is_the_brute_force_one, .timeout = 60)
{
    check_ranking(FT_SCORE_INNER_PRODUCT);
}
