/* test_loss.c — TripletMarginLoss (+ TripletMarginMiner) against the pml fixtures, against an
 * independent brute-force double implementation (loss, counts, central finite differences of
 * the gradient), and edge cases (no positives, coincident points). */
#include "loss.h"
#include "rng.h"
#include "support/fixture.h"

#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- fixtures ---- */

static const char *param_str(json_t *fx, const char *key)
{
    return json_string_value(json_object_get(json_object_get(fx, "params"), key));
}

static double param_num(json_t *fx, const char *key)
{
    json_t *v = json_object_get(json_object_get(fx, "params"), key);
    cr_assert_not_null(v, "fixture has no params.%s", key);
    return json_number_value(v);
}

static void opts_from_fixture(json_t *fx, struct ft_triplet_opts *o)
{
    ft_triplet_opts_default(o);
    const char *dist = param_str(fx, "distance");
    cr_assert_not_null(dist);
    o->distance = strcmp(dist, "cosine") == 0 ? FT_DIST_COSINE : FT_DIST_EUCLIDEAN;
    o->normalize_embeddings = strcmp(dist, "euclidean_raw") != 0;
    const char *type = param_str(fx, "type_of_triplets");
    if (!type) {
        o->margin = param_num(fx, "margin");
        return;
    }
    o->use_miner = 1;
    o->margin = param_num(fx, "loss_margin");
    o->miner_margin = param_num(fx, "margin");
    static const char *names[] = {"all", "hard", "semihard", "easy"};
    static const enum ft_triplet_type types[] = {FT_TRIPLETS_ALL, FT_TRIPLETS_HARD,
                                                 FT_TRIPLETS_SEMIHARD, FT_TRIPLETS_EASY};
    for (int i = 0; i < 4; i++)
        if (strcmp(type, names[i]) == 0)
            o->type = types[i];
}

static long long expected_int(json_t *fx, const char *name)
{
    long long *v = fx_ints(fx, "expected", name, NULL);
    long long r = v[0];
    free(v);
    return r;
}

struct batch {
    float *emb;
    int32_t *labels;
    int B, D;
};

static struct batch load_batch(json_t *fx)
{
    struct batch b;
    size_t n;
    b.emb = fx_floats(fx, "inputs", "embeddings", NULL);
    b.B = fx_dim(fx, "inputs", "embeddings", 0);
    b.D = fx_dim(fx, "inputs", "embeddings", 1);
    long long *l = fx_ints(fx, "inputs", "labels", &n);
    cr_assert_eq((int)n, b.B);
    b.labels = malloc(n * sizeof *b.labels);
    for (size_t i = 0; i < n; i++)
        b.labels[i] = (int32_t)l[i];
    free(l);
    return b;
}

static void free_batch(struct batch *b)
{
    free(b->emb);
    free(b->labels);
}

/* loss, num_triplets, num_nonzero, dembeddings of one fixture file. */
static void check_loss_fixture(json_t *fx, const struct ft_triplet_opts *o, struct batch *b)
{
    float loss;
    float *demb = calloc((size_t)b->B * b->D, sizeof *demb);
    struct ft_loss_stats st;
    cr_assert_eq(ft_triplet_margin_loss(&loss, demb, b->emb, b->labels, b->B, b->D, o, &st), FT_OK);
    double *want = fx_doubles(fx, "expected", "loss", NULL);
    fx_assert_close_tol(fx, "loss", &loss, want, 1);
    free(want);
    cr_assert_eq(st.num_triplets, expected_int(fx, "num_triplets"));
    cr_assert_eq(st.num_nonzero, expected_int(fx, "num_nonzero"));
    want = fx_doubles(fx, "expected", "dembeddings", NULL);
    fx_assert_close_tol(fx, "dembeddings", demb, want, (size_t)b->B * b->D);
    free(want);
    /* No gradient requested: same loss and stats. */
    float loss2;
    struct ft_loss_stats st2;
    cr_assert_eq(ft_triplet_margin_loss(&loss2, NULL, b->emb, b->labels, b->B, b->D, o, &st2),
                 FT_OK);
    cr_assert_eq(loss2, loss);
    cr_assert_eq(st2.num_nonzero, st.num_nonzero);
    free(demb);
}

static void run_margin_fixture(const char *file)
{
    json_t *fx = fx_load(file);
    struct ft_triplet_opts o;
    opts_from_fixture(fx, &o);
    struct batch b = load_batch(fx);
    check_loss_fixture(fx, &o, &b);
    free_batch(&b);
    json_decref(fx);
}

Test(triplet_margin, cosine)
{
    run_margin_fixture("torch/triplet_margin_cosine.json");
}

Test(triplet_margin, euclidean_l2norm)
{
    run_margin_fixture("torch/triplet_margin_euclidean_l2norm.json");
}

Test(triplet_margin, euclidean_raw)
{
    run_margin_fixture("torch/triplet_margin_euclidean_raw.json");
}

static void run_miner_fixture(const char *file)
{
    json_t *fx = fx_load(file);
    struct ft_triplet_opts o;
    opts_from_fixture(fx, &o);
    cr_assert(o.use_miner);
    struct batch b = load_batch(fx);
    size_t n;
    long long *want = fx_ints(fx, "expected", "triplets", &n);
    int64_t cap = (int64_t)(n / 3) + 1;
    int64_t *trip = calloc((size_t)cap * 3, sizeof *trip);
    int64_t got = ft_triplet_mine(trip, cap, b.emb, b.labels, b.B, b.D, &o);
    cr_assert_eq(got, (int64_t)(n / 3), "mined %lld triplets, want %zu", (long long)got, n / 3);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(trip[i], want[i], "triplet %zu differs", i / 3);
    /* A short buffer gets the first cap rows and the full count. */
    if (got > 1)
        cr_assert_eq(ft_triplet_mine(trip, 1, b.emb, b.labels, b.B, b.D, &o), got);
    check_loss_fixture(fx, &o, &b);
    free(want), free(trip);
    free_batch(&b);
    json_decref(fx);
}

Test(triplet_miner, cosine_all)
{
    run_miner_fixture("torch/triplet_miner_cosine_all.json");
}

Test(triplet_miner, cosine_hard)
{
    run_miner_fixture("torch/triplet_miner_cosine_hard.json");
}

Test(triplet_miner, cosine_semihard)
{
    run_miner_fixture("torch/triplet_miner_cosine_semihard.json");
}

Test(triplet_miner, cosine_easy)
{
    run_miner_fixture("torch/triplet_miner_cosine_easy.json");
}

Test(triplet_miner, euclidean_l2norm_all)
{
    run_miner_fixture("torch/triplet_miner_euclidean_l2norm_all.json");
}

Test(triplet_miner, euclidean_l2norm_hard)
{
    run_miner_fixture("torch/triplet_miner_euclidean_l2norm_hard.json");
}

Test(triplet_miner, euclidean_l2norm_semihard)
{
    run_miner_fixture("torch/triplet_miner_euclidean_l2norm_semihard.json");
}

Test(triplet_miner, euclidean_l2norm_easy)
{
    run_miner_fixture("torch/triplet_miner_euclidean_l2norm_easy.json");
}

/* ---- brute-force double reference ---- */

static double ref_dist(const double *e, int i, int j, int D, const struct ft_triplet_opts *o)
{
    double ni = 0, nj = 0, dot = 0, sq = 0;
    for (int k = 0; k < D; k++) {
        ni += e[i * D + k] * e[i * D + k];
        nj += e[j * D + k] * e[j * D + k];
    }
    ni = fmax(sqrt(ni), 1e-12);
    nj = fmax(sqrt(nj), 1e-12);
    int norm = o->distance == FT_DIST_COSINE || o->normalize_embeddings;
    for (int k = 0; k < D; k++) {
        double a = norm ? e[i * D + k] / ni : e[i * D + k];
        double b = norm ? e[j * D + k] / nj : e[j * D + k];
        dot += a * b;
        sq += (a - b) * (a - b);
    }
    return o->distance == FT_DIST_COSINE ? 1.0 - dot : sqrt(sq);
}

static int ref_keep(double m, const struct ft_triplet_opts *o)
{
    if (!o->use_miner)
        return 1;
    switch (o->type) {
    case FT_TRIPLETS_ALL:
        return m <= o->miner_margin;
    case FT_TRIPLETS_HARD:
        return m <= 0;
    case FT_TRIPLETS_SEMIHARD:
        return m > 0 && m <= o->miner_margin;
    case FT_TRIPLETS_EASY:
        return m > o->miner_margin;
    }
    return 0;
}

struct ref_ctx {
    double *e;
    const int32_t *labels;
    int B, D;
    const struct ft_triplet_opts *o;
    int64_t kept, nonzero;
};

static double ref_loss(void *p)
{
    struct ref_ctx *c = p;
    double sum = 0.0;
    c->kept = c->nonzero = 0;
    for (int a = 0; a < c->B; a++)
        for (int q = 0; q < c->B; q++) {
            if (q == a || c->labels[q] != c->labels[a])
                continue;
            double dap = ref_dist(c->e, a, q, c->D, c->o);
            for (int n = 0; n < c->B; n++) {
                if (c->labels[n] == c->labels[a])
                    continue;
                double m = ref_dist(c->e, a, n, c->D, c->o) - dap;
                if (!ref_keep(m, c->o))
                    continue;
                c->kept++;
                double l = c->o->margin - m;
                if (l > 0) {
                    sum += l;
                    c->nonzero++;
                }
            }
        }
    return c->nonzero ? sum / (double)c->nonzero : 0.0;
}

static struct batch random_batch(uint64_t seed, int B, int D, int classes, double spread)
{
    struct ft_rng rng;
    ft_rng_seed(&rng, seed);
    struct batch b = {malloc((size_t)B * D * sizeof(float)), malloc((size_t)B * sizeof(int32_t)), B,
                      D};
    for (int i = 0; i < B; i++) {
        b.labels[i] = (int32_t)ft_rng_below(&rng, (uint64_t)classes);
        for (int k = 0; k < D; k++) /* class centre + noise */
            b.emb[i * D + k] = (float)((b.labels[i] % D == k ? 1.0 : 0.0) +
                                       spread * (2.0 * ft_rng_uniform(&rng) - 1.0));
    }
    return b;
}

static const struct {
    enum ft_distance distance;
    int normalize, use_miner;
    enum ft_triplet_type type;
} configs[] = {
    {FT_DIST_COSINE, 1, 0, FT_TRIPLETS_ALL},     {FT_DIST_EUCLIDEAN, 1, 0, FT_TRIPLETS_ALL},
    {FT_DIST_EUCLIDEAN, 0, 0, FT_TRIPLETS_ALL},  {FT_DIST_COSINE, 1, 1, FT_TRIPLETS_ALL},
    {FT_DIST_COSINE, 1, 1, FT_TRIPLETS_HARD},    {FT_DIST_EUCLIDEAN, 1, 1, FT_TRIPLETS_SEMIHARD},
    {FT_DIST_EUCLIDEAN, 0, 1, FT_TRIPLETS_HARD}, {FT_DIST_EUCLIDEAN, 1, 1, FT_TRIPLETS_EASY},
};

static struct ft_triplet_opts config_opts(int i)
{
    struct ft_triplet_opts o;
    ft_triplet_opts_default(&o);
    o.margin = 0.2;
    o.distance = configs[i].distance;
    o.normalize_embeddings = configs[i].normalize;
    o.use_miner = configs[i].use_miner;
    o.type = configs[i].type;
    /* easy with miner margin 0.2 never overlaps the loss; use a small one to exercise it */
    o.miner_margin = o.type == FT_TRIPLETS_EASY ? 0.05 : 0.2;
    return o;
}

/* Loss and count against the double reference, then every gradient entry against central
 * differences of it (step h). */
static void check_against_reference(const struct ft_triplet_opts *o, struct batch *b, double h,
                                    const char *label)
{
    const double atol = 2e-6, rtol = 1e-3;
    size_t n = (size_t)b->B * b->D;
    float loss, *demb = malloc(n * sizeof *demb);
    struct ft_loss_stats st;
    cr_assert_eq(ft_triplet_margin_loss(&loss, demb, b->emb, b->labels, b->B, b->D, o, &st), FT_OK);
    struct ref_ctx c = {fx_to_double(b->emb, n), b->labels, b->B, b->D, o, 0, 0};
    double want = ref_loss(&c);
    cr_assert(fabs(loss - want) <= 1e-5 * fabs(want), "%s: loss %.9g want %.9g", label, loss, want);
    cr_assert_eq(st.num_nonzero, c.nonzero, "%s", label);
    cr_assert(c.nonzero > 0, "%s: no active triplet to differentiate", label);
    for (size_t i = 0; i < n; i++) {
        double keep = c.e[i];
        c.e[i] = keep + h;
        double fp = ref_loss(&c);
        c.e[i] = keep - h;
        double fm = ref_loss(&c);
        c.e[i] = keep;
        double fd = (fp - fm) / (2 * h);
        cr_assert(fabs(demb[i] - fd) <= atol + rtol * fabs(fd),
                  "%s demb[%zu]: analytic %.9g finite difference %.9g", label, i, (double)demb[i],
                  fd);
    }
    free(c.e);
    free(demb);
}

Test(triplet_margin, gradient_matches_finite_differences)
{
    for (size_t ci = 0; ci < sizeof configs / sizeof configs[0]; ci++) {
        struct ft_triplet_opts o = config_opts((int)ci);
        struct batch b = random_batch(100 + ci, 9, 4, 3, 0.8);
        char label[32];
        snprintf(label, sizeof label, "config %zu", ci);
        check_against_reference(&o, &b, 1e-6, label);
        free_batch(&b);
    }
}

/* Every pair closer than the cancellation threshold: distances are recomputed from the
 * difference vectors and their gradients bypass the sgemm. */
Test(triplet_margin, tight_cluster_euclidean)
{
    for (int norm = 0; norm < 2; norm++) {
        struct ft_triplet_opts o;
        ft_triplet_opts_default(&o);
        o.margin = 0.2;
        o.normalize_embeddings = norm;
        struct batch b = random_batch(300 + norm, 9, 4, 3, 3e-3);
        for (int i = 0; i < 9 * 4; i++) /* one common centre for all classes */
            b.emb[i] += (float)(i % 4 == 0) - (float)(b.labels[i / 4] % 4 == i % 4);
        check_against_reference(&o, &b, 1e-8, norm ? "normalised" : "raw");
        free_batch(&b);
    }
}

/* A larger batch exercises the sorted-negatives path against brute force. */
Test(triplet_margin, larger_batch_matches_brute_force)
{
    for (size_t ci = 0; ci < sizeof configs / sizeof configs[0]; ci++) {
        struct ft_triplet_opts o = config_opts((int)ci);
        struct batch b = random_batch(200 + ci, 64, 8, 5, 0.9);
        float loss;
        struct ft_loss_stats st;
        cr_assert_eq(ft_triplet_margin_loss(&loss, NULL, b.emb, b.labels, 64, 8, &o, &st), FT_OK);
        struct ref_ctx c = {fx_to_double(b.emb, 64 * 8), b.labels, 64, 8, &o, 0, 0};
        double want = ref_loss(&c);
        cr_assert(fabs(loss - want) <= 1e-5 + 1e-4 * fabs(want), "config %zu loss %g want %g", ci,
                  loss, want);
        cr_assert_eq(st.num_triplets, c.kept, "config %zu", ci);
        cr_assert_eq(st.num_nonzero, c.nonzero, "config %zu", ci);
        cr_assert_eq(ft_triplet_mine(NULL, 0, b.emb, b.labels, 64, 8, &o), st.num_triplets);
        free(c.e);
        free_batch(&b);
    }
}

/* ---- edge cases ---- */

Test(triplet_margin, no_positives_gives_zero)
{
    float emb[4 * 3] = {1, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 0};
    int32_t labels[4] = {0, 1, 2, 3};
    float demb[12], loss = 1;
    memset(demb, 0x7f, sizeof demb);
    struct ft_triplet_opts o;
    ft_triplet_opts_default(&o);
    struct ft_loss_stats st = {.num_triplets = -1, .num_nonzero = -1};
    cr_assert_eq(ft_triplet_margin_loss(&loss, demb, emb, labels, 4, 3, &o, &st), FT_OK);
    cr_assert_eq(loss, 0.0f);
    cr_assert_eq(st.num_triplets, 0);
    cr_assert_eq(st.num_nonzero, 0);
    for (int i = 0; i < 12; i++)
        cr_assert_eq(demb[i], 0.0f);
}

Test(triplet_margin, coincident_points_stay_finite)
{
    /* rows 0-2 identical (classes 0, 0, 1), row 3 (class 1) 1e-4 away, row 4 apart */
    float emb[5 * 3] = {1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3.0001f, -1, 0.5f, 2};
    int32_t labels[5] = {0, 0, 1, 1, 0};
    for (int norm = 0; norm < 2; norm++) {
        struct ft_triplet_opts o;
        ft_triplet_opts_default(&o);
        o.normalize_embeddings = norm;
        float loss, demb[15];
        struct ft_loss_stats st;
        cr_assert_eq(ft_triplet_margin_loss(&loss, demb, emb, labels, 5, 3, &o, &st), FT_OK);
        cr_assert(isfinite(loss) && loss > 0);
        for (int i = 0; i < 15; i++)
            cr_assert(isfinite(demb[i]), "demb[%d] = %g", i, (double)demb[i]);
    }
}

/* Many exactly equal distances (duplicated points): the sorted sweep keeps exactly the
 * triplets the enumeration keeps, also at the miner thresholds (m = 0 for hard/semihard). */
Test(triplet_margin, ties_match_enumeration)
{
    float pts[3][2] = {{1, 0}, {0, 1}, {0.6f, 0.8f}};
    float emb[12 * 2];
    int32_t labels[12];
    for (int i = 0; i < 12; i++) {
        emb[2 * i] = pts[i % 3][0];
        emb[2 * i + 1] = pts[i % 3][1];
        labels[i] = (i / 2) % 3;
    }
    for (size_t ci = 0; ci < sizeof configs / sizeof configs[0]; ci++) {
        struct ft_triplet_opts o = config_opts((int)ci);
        float loss;
        struct ft_loss_stats st;
        cr_assert_eq(ft_triplet_margin_loss(&loss, NULL, emb, labels, 12, 2, &o, &st), FT_OK);
        cr_assert_eq(ft_triplet_mine(NULL, 0, emb, labels, 12, 2, &o), st.num_triplets,
                     "config %zu", ci);
    }
}

Test(triplet_margin, non_finite_embeddings_give_nan_loss)
{
    float emb[4 * 2] = {1, 0, 0.9f, 0.1f, 0, 1, NAN, 1};
    int32_t labels[4] = {0, 0, 1, 1};
    float loss, demb[8];
    struct ft_triplet_opts o;
    ft_triplet_opts_default(&o);
    for (int d = 0; d < 2; d++) {
        o.distance = d ? FT_DIST_COSINE : FT_DIST_EUCLIDEAN;
        cr_assert_eq(ft_triplet_margin_loss(&loss, demb, emb, labels, 4, 2, &o, NULL), FT_OK);
        cr_assert(isnan(loss));
        for (int i = 0; i < 8; i++)
            cr_assert_eq(demb[i], 0.0f);
    }
}

Test(triplet_margin, defaults_are_pml)
{
    struct ft_triplet_opts o;
    ft_triplet_opts_default(&o);
    cr_assert_float_eq(o.margin, 0.05, 1e-12);
    cr_assert_eq(o.distance, FT_DIST_EUCLIDEAN);
    cr_assert_eq(o.normalize_embeddings, 1);
    cr_assert_eq(o.use_miner, 0);
    cr_assert_float_eq(o.miner_margin, 0.2, 1e-12);
    cr_assert_eq(o.type, FT_TRIPLETS_ALL);
}

/* ======================================================================================
 * Losses and miners by name (ft_loss): the pml fixtures, double references with central
 * finite differences (miner selections held fixed), brute-force miners, option validation.
 * ====================================================================================== */

static json_t *jparse(const char *s)
{
    json_error_t je;
    if (!s)
        return NULL;
    json_t *j = json_loads(s, JSON_DECODE_ANY, &je);
    cr_assert_not_null(j, "bad test JSON %s: %s", s, je.text);
    return j;
}

static ft_loss *make_loss(const char *name, const char *opts, const char *miner, const char *mopts,
                          int dim, int classes)
{
    json_t *o = jparse(opts), *mo = jparse(mopts);
    ft_loss *l = NULL;
    struct ft_error err = {0};
    enum ft_err e = ft_loss_new(name, o, miner, mo, dim, classes, 7, &l, &err);
    cr_assert_eq(e, FT_OK, "%s: %s (param %s)", name, err.message, err.param);
    cr_assert_not_null(l);
    json_decref(o);
    json_decref(mo);
    return l;
}

static void expect_array(json_t *fx, const char *name, const float *got, size_t n)
{
    size_t m;
    double *want = fx_doubles(fx, "expected", name, &m);
    cr_assert_eq(m, n, "%s: %zu values, want %zu", name, n, m);
    fx_assert_close_tol(fx, name, got, want, n);
    free(want);
}

static void expect_scalar(json_t *fx, const char *name, double got)
{
    float g = (float)got;
    expect_array(fx, name, &g, 1);
}

static void expect_inter(json_t *fx, ft_loss *l, const char *inter, const char *name)
{
    size_t n;
    const float *v = ft_loss_intermediate(l, inter, &n);
    cr_assert_not_null(v, "no intermediate %s", inter);
    expect_array(fx, name, v, n);
}

/* loss and dembeddings of a fixture batch, then the same loss without a gradient; returns the
 * stats of the first call. */
static struct ft_loss_stats run_fixture_loss(json_t *fx, ft_loss *l, struct batch *b)
{
    size_t n = (size_t)b->B * b->D;
    float loss, loss2, *demb = malloc(n * sizeof *demb);
    struct ft_loss_stats st, st2;
    cr_assert_eq(ft_loss_compute(l, b->emb, b->labels, b->B, b->D, &loss, demb, &st), FT_OK);
    expect_scalar(fx, "loss", loss);
    expect_array(fx, "dembeddings", demb, n);
    cr_assert_eq(ft_loss_compute(l, b->emb, b->labels, b->B, b->D, &loss2, NULL, &st2), FT_OK);
    cr_assert_eq(loss2, loss);
    cr_assert_eq(st2.num_nonzero, st.num_nonzero);
    cr_assert_eq(st2.num_pos_pairs, st.num_pos_pairs);
    free(demb);
    return st;
}

/* ---- fixtures ---- */

static void run_contrastive_fixture(const char *file, const char *name)
{
    json_t *fx = fx_load(file);
    int raw = strcmp(param_str(fx, "distance"), "euclidean_raw") == 0;
    char opts[200];
    snprintf(opts, sizeof opts,
             "{\"pos_margin\": %.17g, \"neg_margin\": %.17g, \"distance\": \"euclidean\", "
             "\"normalize_embeddings\": %s}",
             param_num(fx, "pos_margin"), param_num(fx, "neg_margin"), raw ? "false" : "true");
    struct batch b = load_batch(fx);
    ft_loss *l = make_loss(name, opts, NULL, NULL, b.D, 0);
    struct ft_loss_stats st = run_fixture_loss(fx, l, &b);
    expect_scalar(fx, "pos_loss", st.pos_loss);
    expect_scalar(fx, "neg_loss", st.neg_loss);
    cr_assert_eq(st.num_pos_nonzero, expected_int(fx, "num_pos_nonzero"));
    cr_assert_eq(st.num_neg_nonzero, expected_int(fx, "num_neg_nonzero"));
    cr_assert_eq(st.num_pos_pairs, 36);
    cr_assert_eq(st.num_neg_pairs, 12 * 8);
    expect_inter(fx, l, "dist_matrix", "dist_matrix");
    ft_loss_free(l);
    free_batch(&b);
    json_decref(fx);
}

Test(contrastive, euclidean_l2norm)
{
    run_contrastive_fixture("torch/contrastive_l2norm.json", "ContrastiveLoss");
}

Test(contrastive, euclidean_raw)
{
    run_contrastive_fixture("torch/contrastive_raw.json", "ContrastiveLoss");
}

Test(contrastive, siamese_alias_matches_fixtures)
{
    run_contrastive_fixture("torch/contrastive_l2norm.json", "SiameseLoss");
    run_contrastive_fixture("torch/contrastive_raw.json", "SiameseLoss");
}

Test(ntxent, fixture)
{
    json_t *fx = fx_load("torch/ntxent.json");
    char opts[64];
    snprintf(opts, sizeof opts, "{\"temperature\": %.17g}", param_num(fx, "temperature"));
    struct batch b = load_batch(fx);
    ft_loss *l = make_loss("NTXentLoss", opts, NULL, NULL, b.D, 0);
    struct ft_loss_stats st = run_fixture_loss(fx, l, &b);
    expect_inter(fx, l, "pair_losses", "pair_losses");
    size_t n;
    long long *pairs = fx_ints(fx, "expected", "pairs", &n);
    cr_assert_eq(st.num_pos_pairs, (int64_t)(n / 2));
    uint8_t *mask = malloc((size_t)b.B * b.B);
    cr_assert_eq(ft_loss_mine_pairs(l, b.emb, b.labels, b.B, b.D, mask), FT_OK);
    size_t q = 0;
    for (int i = 0; i < b.B; i++)
        for (int j = 0; j < b.B; j++)
            if (mask[i * b.B + j] == 1) {
                cr_assert(q + 1 < n && pairs[q] == i && pairs[q + 1] == j, "pair %zu", q / 2);
                q += 2;
            }
    cr_assert_eq(q, n);
    free(mask);
    free(pairs);
    ft_loss_free(l);
    free_batch(&b);
    json_decref(fx);
}

Test(multi_similarity, fixture)
{
    json_t *fx = fx_load("torch/multi_similarity.json");
    char opts[128];
    snprintf(opts, sizeof opts, "{\"alpha\": %.17g, \"beta\": %.17g, \"base\": %.17g}",
             param_num(fx, "alpha"), param_num(fx, "beta"), param_num(fx, "base"));
    struct batch b = load_batch(fx);
    ft_loss *l = make_loss("MultiSimilarityLoss", opts, NULL, NULL, b.D, 0);
    run_fixture_loss(fx, l, &b);
    expect_inter(fx, l, "per_item_loss", "per_item_loss");
    ft_loss_free(l);
    free_batch(&b);
    json_decref(fx);
}

/* CLIP batch from the fixture's image/text rows: interleaved (image r at 2r, text r at 2r+1)
 * or blocked (images first, then the texts in reverse order), with negative labels. */
static void run_clip_fixture(int blocked)
{
    json_t *fx = fx_load("torch/clip.json");
    float *im = fx_floats(fx, "inputs", "image_embeddings", NULL);
    float *tx = fx_floats(fx, "inputs", "text_embeddings", NULL);
    int n = fx_dim(fx, "inputs", "image_embeddings", 0),
        D = fx_dim(fx, "inputs", "image_embeddings", 1);
    int B = 2 * n, *irow = malloc(n * sizeof *irow), *trow = malloc(n * sizeof *trow);
    float *emb = malloc((size_t)B * D * sizeof *emb), *demb = malloc((size_t)B * D * sizeof *demb);
    float *dim_ = malloc((size_t)n * D * sizeof *dim_), *dtx = malloc((size_t)n * D * sizeof *dtx);
    int32_t *labels = malloc(B * sizeof *labels);
    for (int r = 0; r < n; r++) {
        irow[r] = blocked ? r : 2 * r;
        trow[r] = blocked ? B - 1 - r : 2 * r + 1;
        labels[irow[r]] = labels[trow[r]] = -5 * r - 1;
        memcpy(emb + (size_t)irow[r] * D, im + (size_t)r * D, D * sizeof *emb);
        memcpy(emb + (size_t)trow[r] * D, tx + (size_t)r * D, D * sizeof *emb);
    }
    ft_loss *l = make_loss("CLIPLoss", NULL, NULL, NULL, D, 0);
    cr_assert_eq(ft_loss_items_per_class(l), 2);
    float loss;
    cr_assert_eq(ft_loss_compute(l, emb, labels, B, D, &loss, demb, NULL), FT_OK);
    expect_scalar(fx, "loss", loss);
    expect_inter(fx, l, "logits", "logits_per_image");
    for (int r = 0; r < n; r++) {
        memcpy(dim_ + (size_t)r * D, demb + (size_t)irow[r] * D, D * sizeof *demb);
        memcpy(dtx + (size_t)r * D, demb + (size_t)trow[r] * D, D * sizeof *demb);
    }
    expect_array(fx, "dimage_embeddings", dim_, (size_t)n * D);
    expect_array(fx, "dtext_embeddings", dtx, (size_t)n * D);
    ft_loss_free(l);
    free(im), free(tx), free(irow), free(trow), free(emb), free(demb), free(dim_), free(dtx);
    free(labels);
    json_decref(fx);
}

Test(clip, fixture_interleaved)
{
    run_clip_fixture(0);
}

Test(clip, fixture_blocked_reverse_texts)
{
    run_clip_fixture(1);
}

Test(arcface, fixture)
{
    json_t *fx = fx_load("torch/arcface.json");
    struct batch b = load_batch(fx);
    int C = (int)param_num(fx, "num_classes");
    char opts[96];
    snprintf(opts, sizeof opts, "{\"margin\": %.17g, \"scale\": %.17g}",
             param_num(fx, "margin_degrees"), param_num(fx, "scale"));
    ft_loss *l = make_loss("ArcFaceLoss", opts, NULL, NULL, b.D, C);
    size_t nw;
    float *W = fx_floats(fx, "inputs", "W", &nw);
    cr_assert_eq(ft_loss_num_params(l), nw);
    memcpy(ft_loss_params(l), W, nw * sizeof *W);
    ft_loss_zero_grad(l);
    run_fixture_loss(fx, l, &b); /* the second (no-gradient) call leaves dW alone */
    expect_inter(fx, l, "cosine", "cosine");
    expect_inter(fx, l, "logits", "logits");
    expect_inter(fx, l, "target_angle", "target_angle");
    expect_array(fx, "dW", ft_loss_grads(l), nw);
    const float *ang = ft_loss_intermediate(l, "target_angle", NULL);
    cr_assert(ang[11] > M_PI - param_num(fx, "margin_radians"), "item 11 takes the else branch");
    /* gradients accumulate: a second call with a gradient doubles dW */
    float loss, *demb = malloc((size_t)b.B * b.D * sizeof *demb), *dw1 = malloc(nw * sizeof *dw1);
    memcpy(dw1, ft_loss_grads(l), nw * sizeof *dw1);
    cr_assert_eq(ft_loss_compute(l, b.emb, b.labels, b.B, b.D, &loss, demb, NULL), FT_OK);
    for (size_t i = 0; i < nw; i++)
        cr_assert_float_eq(ft_loss_grads(l)[i], 2 * dw1[i], 1e-5 + 1e-6 * fabsf(dw1[i]));
    ft_loss_zero_grad(l);
    for (size_t i = 0; i < nw; i++)
        cr_assert_eq(ft_loss_grads(l)[i], 0.0f);
    free(demb), free(dw1), free(W);
    ft_loss_free(l);
    free_batch(&b);
    json_decref(fx);
}

static void run_batch_hard_fixture(const char *file)
{
    json_t *fx = fx_load(file);
    int cosine = strcmp(param_str(fx, "distance"), "cosine") == 0;
    char opts[96];
    snprintf(opts, sizeof opts, "{\"margin\": %.17g, \"distance\": \"%s\"}",
             param_num(fx, "margin"), cosine ? "cosine" : "euclidean");
    struct batch b = load_batch(fx);
    ft_loss *l = make_loss("TripletMarginLoss", opts, "BatchHardMiner", NULL, b.D, 0);
    struct ft_loss_stats st = run_fixture_loss(fx, l, &b);
    cr_assert_eq(st.num_nonzero, expected_int(fx, "num_nonzero"));
    cr_assert_eq(st.num_triplets, b.B);
    expect_inter(fx, l, "dist_matrix", "dist_matrix");
    size_t n;
    long long *want = fx_ints(fx, "expected", "triplets", &n);
    int64_t trip[3 * 16], count;
    cr_assert_eq(ft_loss_mine_triplets(l, b.emb, b.labels, b.B, b.D, trip, 16, &count), FT_OK);
    cr_assert_eq(count, (int64_t)(n / 3));
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(trip[i], want[i], "triplet %zu differs", i / 3);
    free(want);
    ft_loss_free(l);
    free_batch(&b);
    json_decref(fx);
}

Test(batch_hard, cosine)
{
    run_batch_hard_fixture("torch/triplet_batch_hard_cosine.json");
}

Test(batch_hard, euclidean_l2norm)
{
    run_batch_hard_fixture("torch/triplet_batch_hard_euclidean_l2norm.json");
}

/* The colleague's triplet fixtures through the generic object (TripletMarginMiner by name). */
Test(triplet_generic, fixtures_by_name)
{
    static const char *files[] = {
        "torch/triplet_margin_cosine.json",
        "torch/triplet_margin_euclidean_l2norm.json",
        "torch/triplet_margin_euclidean_raw.json",
        "torch/triplet_miner_cosine_all.json",
        "torch/triplet_miner_cosine_hard.json",
        "torch/triplet_miner_cosine_semihard.json",
        "torch/triplet_miner_cosine_easy.json",
        "torch/triplet_miner_euclidean_l2norm_all.json",
        "torch/triplet_miner_euclidean_l2norm_hard.json",
        "torch/triplet_miner_euclidean_l2norm_semihard.json",
        "torch/triplet_miner_euclidean_l2norm_easy.json",
    };
    for (size_t f = 0; f < sizeof files / sizeof files[0]; f++) {
        json_t *fx = fx_load(files[f]);
        struct ft_triplet_opts o;
        opts_from_fixture(fx, &o);
        char opts[160], mopts[96];
        snprintf(opts, sizeof opts,
                 "{\"margin\": %.17g, \"distance\": \"%s\", \"normalize_embeddings\": %s}",
                 o.margin, o.distance == FT_DIST_COSINE ? "cosine" : "euclidean",
                 o.normalize_embeddings ? "true" : "false");
        snprintf(mopts, sizeof mopts, "{\"margin\": %.17g, \"type_of_triplets\": \"%s\"}",
                 o.miner_margin,
                 param_str(fx, "type_of_triplets") ? param_str(fx, "type_of_triplets") : "all");
        struct batch b = load_batch(fx);
        ft_loss *l = make_loss("TripletMarginLoss", opts, o.use_miner ? "TripletMarginMiner" : NULL,
                               o.use_miner ? mopts : NULL, b.D, 0);
        struct ft_loss_stats st = run_fixture_loss(fx, l, &b);
        cr_assert_eq(st.num_triplets, expected_int(fx, "num_triplets"), "%s", files[f]);
        cr_assert_eq(st.num_nonzero, expected_int(fx, "num_nonzero"), "%s", files[f]);
        if (o.use_miner) {
            size_t n;
            long long *want = fx_ints(fx, "expected", "triplets", &n);
            int64_t count, *trip = malloc((n + 3) * sizeof *trip);
            cr_assert_eq(ft_loss_mine_triplets(l, b.emb, b.labels, b.B, b.D, trip,
                                               (int64_t)(n / 3) + 1, &count),
                         FT_OK);
            cr_assert_eq(count, (int64_t)(n / 3), "%s", files[f]);
            for (size_t i = 0; i < n; i++)
                cr_assert_eq(trip[i], want[i], "%s: triplet %zu", files[f], i / 3);
            free(want), free(trip);
        }
        ft_loss_free(l);
        free_batch(&b);
        json_decref(fx);
    }
}

/* ---- double references (independent of loss.c) ---- */

struct ref {
    double *e; /* (B, D) embeddings; the finite differences perturb them */
    double *w; /* ArcFaceLoss W (C, D) */
    const int32_t *labels;
    int B, D, C;
    int cosine, normalize; /* the distance */
    double p1, p2, p3;     /* the loss's parameters (see each ref_*) */
    int swap, smooth;
    const int64_t *trip; /* TripletMarginLoss: the triplets used (nt, 3) */
    int64_t nt;
    const uint8_t *mask;  /* pair losses: the pairs used (B, B): 1 pos, 2 neg */
    const int *img, *txt; /* CLIPLoss rows (n) */
    int n;
    int64_t nonzero, nonzero2; /* set by the reference */
};

static double r_norm(const double *v, int D)
{
    double s = 0;
    for (int k = 0; k < D; k++)
        s += v[k] * v[k];
    return fmax(sqrt(s), 1e-12);
}

static double r_dist(const struct ref *r, int i, int j)
{
    const double *a = r->e + (size_t)i * r->D, *b = r->e + (size_t)j * r->D;
    double na = r_norm(a, r->D), nb = r_norm(b, r->D), dot = 0, sq = 0;
    int norm = r->cosine || r->normalize;
    for (int k = 0; k < r->D; k++) {
        double x = norm ? a[k] / na : a[k], y = norm ? b[k] / nb : b[k];
        dot += x * y;
        sq += (x - y) * (x - y);
    }
    return r->cosine ? 1.0 - dot : sqrt(sq);
}

/* pml's measure: cosine similarity or the distance. */
static double r_meas(const struct ref *r, int i, int j)
{
    return r->cosine ? 1.0 - r_dist(r, i, j) : r_dist(r, i, j);
}

/* TripletMarginLoss over r->trip: p1 = margin. */
static double ref_triplet(void *p)
{
    struct ref *r = p;
    double sum = 0;
    r->nonzero = 0;
    for (int64_t t = 0; t < r->nt; t++) {
        int a = (int)r->trip[3 * t], q = (int)r->trip[3 * t + 1], n = (int)r->trip[3 * t + 2];
        double dap = r_dist(r, a, q), dan = r_dist(r, a, n);
        if (r->swap)
            dan = fmin(dan, r_dist(r, q, n));
        double v = dap - dan + r->p1, l = r->smooth ? log1p(exp(v)) : fmax(v, 0.0);
        if (l > 0) {
            sum += l;
            r->nonzero++;
        }
    }
    return r->nonzero ? sum / (double)r->nonzero : 0.0;
}

/* ContrastiveLoss over r->mask: p1 = pos_margin, p2 = neg_margin (similarities for cosine). */
static double ref_contrastive(void *p)
{
    struct ref *r = p;
    double sum[2] = {0, 0};
    int64_t nz[2] = {0, 0};
    for (int i = 0; i < r->B; i++)
        for (int j = 0; j < r->B; j++) {
            int k = r->mask[i * r->B + j];
            if (!k)
                continue;
            double v = r_meas(r, i, j), x;
            if (k == 1)
                x = r->cosine ? r->p1 - v : v - r->p1;
            else
                x = r->cosine ? v - r->p2 : r->p2 - v;
            if (x > 0) {
                sum[k - 1] += x;
                nz[k - 1]++;
            }
        }
    r->nonzero = nz[0];
    r->nonzero2 = nz[1];
    return (nz[0] ? sum[0] / nz[0] : 0) + (nz[1] ? sum[1] / nz[1] : 0);
}

/* NTXentLoss over r->mask: p1 = temperature. */
static double ref_ntxent(void *p)
{
    struct ref *r = p;
    double sum = 0;
    int64_t P = 0, N = 0;
    for (int i = 0; i < r->B * r->B; i++)
        N += r->mask[i] == 2;
    for (int i = 0; i < r->B; i++)
        for (int j = 0; j < r->B; j++) {
            if (r->mask[i * r->B + j] != 1)
                continue;
            double num = exp(r_meas(r, i, j) / r->p1), den = num;
            for (int k = 0; k < r->B; k++)
                if (r->mask[i * r->B + k] == 2)
                    den += exp(r_meas(r, i, k) / r->p1);
            sum += -log(num / den);
            P++;
        }
    return P && N ? sum / P : 0.0;
}

/* MultiSimilarityLoss over r->mask: p1 = alpha, p2 = beta, p3 = base. */
static double ref_ms(void *p)
{
    struct ref *r = p;
    double total = 0;
    for (int i = 0; i < r->B; i++) {
        double sp = 0, sn = 0;
        int hp = 0, hn = 0;
        for (int j = 0; j < r->B; j++) {
            int k = r->mask[i * r->B + j];
            if (k == 1) {
                sp += exp(-r->p1 * (r_meas(r, i, j) - r->p3));
                hp = 1;
            } else if (k == 2) {
                sn += exp(r->p2 * (r_meas(r, i, j) - r->p3));
                hn = 1;
            }
        }
        total += (hp ? log1p(sp) / r->p1 : 0) + (hn ? log1p(sn) / r->p2 : 0);
    }
    return total / r->B;
}

/* CLIPLoss over r->img / r->txt rows, logit scale 1/0.07. */
static double ref_clip(void *p)
{
    struct ref *r = p;
    int n = r->n;
    double *L = malloc((size_t)n * n * sizeof *L), loss = 0;
    for (int a = 0; a < n; a++)
        for (int c = 0; c < n; c++) {
            double dot = 0;
            for (int k = 0; k < r->D; k++)
                dot += r->e[r->img[a] * r->D + k] * r->e[r->txt[c] * r->D + k];
            L[a * n + c] = dot / 0.07;
        }
    for (int a = 0; a < n; a++) {
        double sr = 0, sc = 0;
        for (int c = 0; c < n; c++) {
            sr += exp(L[a * n + c]);
            sc += exp(L[c * n + a]);
        }
        loss += log(sr) - L[a * n + a] + log(sc) - L[a * n + a];
    }
    free(L);
    return loss / (2.0 * n);
}

/* ArcFaceLoss: p1 = margin (radians), p2 = scale; W in r->w. */
static double ref_arcface(void *p)
{
    struct ref *r = p;
    double total = 0, *lg = malloc(r->C * sizeof *lg);
    for (int i = 0; i < r->B; i++) {
        const double *x = r->e + (size_t)i * r->D;
        double nx = r_norm(x, r->D), mx = -INFINITY, s = 0;
        for (int c = 0; c < r->C; c++) {
            const double *w = r->w + (size_t)c * r->D;
            double nw = r_norm(w, r->D), dot = 0;
            for (int k = 0; k < r->D; k++)
                dot += x[k] * w[k];
            lg[c] = dot / (nx * nw);
        }
        double th = acos(fmax(-1.0, fmin(1.0, lg[r->labels[i]])));
        lg[r->labels[i]] = th <= M_PI - r->p1 ? cos(th + r->p1) : cos(th) - r->p1 * sin(r->p1);
        for (int c = 0; c < r->C; c++) {
            lg[c] *= r->p2;
            mx = fmax(mx, lg[c]);
        }
        for (int c = 0; c < r->C; c++)
            s += exp(lg[c] - mx);
        total += mx + log(s) - lg[r->labels[i]];
    }
    free(lg);
    return total / r->B;
}

/* Every entry of g (n) against central differences of f in x (perturbed in place). */
static void fd_check(double (*f)(void *), void *ctx, double *x, const float *g, size_t n,
                     double atol, double rtol, const char *label)
{
    const double h = 1e-6;
    for (size_t i = 0; i < n; i++) {
        double keep = x[i];
        x[i] = keep + h;
        double fp = f(ctx);
        x[i] = keep - h;
        double fm = f(ctx);
        x[i] = keep;
        double fd = (fp - fm) / (2 * h);
        cr_assert(fabs(g[i] - fd) <= atol + rtol * fabs(fd),
                  "%s grad[%zu]: analytic %.9g finite difference %.9g", label, i, (double)g[i], fd);
    }
}

/* Loss value and every gradient entry of l on batch b against the reference f (whose ctx r
 * already holds the selection); returns the stats. */
static struct ft_loss_stats check_ref(ft_loss *l, struct batch *b, double (*f)(void *),
                                      struct ref *r, const char *label)
{
    size_t n = (size_t)b->B * b->D;
    float loss, *demb = malloc(n * sizeof *demb);
    struct ft_loss_stats st;
    cr_assert_eq(ft_loss_compute(l, b->emb, b->labels, b->B, b->D, &loss, demb, &st), FT_OK);
    double want = f(r);
    cr_assert(want > 1e-3, "%s: reference loss %g too small to test", label, want);
    cr_assert(fabs(loss - want) <= 1e-6 + 1e-5 * fabs(want), "%s: loss %.9g want %.9g", label,
              (double)loss, want);
    fd_check(f, r, r->e, demb, n, 1e-5, 2e-3, label);
    free(demb);
    return st;
}

static struct ref ref_of(struct batch *b, int cosine, int normalize)
{
    struct ref r;
    memset(&r, 0, sizeof r);
    r.e = fx_to_double(b->emb, (size_t)b->B * b->D);
    r.labels = b->labels;
    r.B = b->B;
    r.D = b->D;
    r.cosine = cosine;
    r.normalize = normalize;
    return r;
}

/* ---- TripletMarginLoss variants and triplet miners, selection held fixed ---- */

static const struct {
    const char *opts, *miner, *mopts;
    int cosine, normalize, swap, smooth;
} triplet_cases[] = {
    {"{\"margin\": 0.2, \"distance\": \"cosine\", \"swap\": true}", NULL, NULL, 1, 1, 1, 0},
    {"{\"margin\": 0.2, \"smooth_loss\": true}", NULL, NULL, 0, 1, 0, 1},
    {"{\"margin\": 0.1, \"normalize_embeddings\": false, \"swap\": true, \"smooth_loss\": true}",
     "TripletMarginMiner", "{\"margin\": 0.3, \"type_of_triplets\": \"semihard\"}", 0, 0, 1, 1},
    {"{\"margin\": 0.2}", "TripletMarginMiner", "{\"type_of_triplets\": \"hard\"}", 0, 1, 0, 0},
    {"{\"margin\": 0.3, \"distance\": \"cosine\"}", "BatchHardMiner", NULL, 1, 1, 0, 0},
    {"{\"margin\": 0.5, \"normalize_embeddings\": false, \"swap\": true}", "BatchHardMiner", NULL,
     0, 0, 1, 0},
    {"{\"margin\": 0.2, \"distance\": \"cosine\", \"smooth_loss\": true}", "BatchHardMiner", NULL,
     1, 1, 0, 1},
};

/* Brute-force BatchHardMiner in double. */
static int64_t ref_batch_hard(const struct ref *r, int64_t *trip)
{
    int64_t nt = 0;
    for (int a = 0; a < r->B; a++) {
        int p = -1, n = -1;
        for (int j = 0; j < r->B; j++) {
            if (j == a)
                continue;
            if (r->labels[j] == r->labels[a]) {
                if (p < 0 || r_dist(r, a, j) > r_dist(r, a, p))
                    p = j;
            } else if (n < 0 || r_dist(r, a, j) < r_dist(r, a, n)) {
                n = j;
            }
        }
        if (p >= 0 && n >= 0) {
            trip[3 * nt] = a;
            trip[3 * nt + 1] = p;
            trip[3 * nt + 2] = n;
            nt++;
        }
    }
    return nt;
}

Test(triplet_generic, variants_match_reference_and_finite_differences)
{
    for (size_t c = 0; c < sizeof triplet_cases / sizeof triplet_cases[0]; c++) {
        char label[48];
        snprintf(label, sizeof label, "triplet case %zu", c);
        struct batch b = random_batch(500 + c, 9, 4, 3, 0.8);
        ft_loss *l = make_loss("TripletMarginLoss", triplet_cases[c].opts, triplet_cases[c].miner,
                               triplet_cases[c].mopts, b.D, 0);
        int64_t cap = 9 * 8 * 8, nt, *trip = malloc(3 * cap * sizeof *trip);
        cr_assert_eq(ft_loss_mine_triplets(l, b.emb, b.labels, b.B, b.D, trip, cap, &nt), FT_OK);
        cr_assert(nt > 0 && nt <= cap, "%s: %lld triplets", label, (long long)nt);
        struct ref r = ref_of(&b, triplet_cases[c].cosine, triplet_cases[c].normalize);
        if (triplet_cases[c].miner && strcmp(triplet_cases[c].miner, "BatchHardMiner") == 0) {
            int64_t *want = malloc(3 * 9 * sizeof *want), wn = ref_batch_hard(&r, want);
            cr_assert_eq(nt, wn, "%s", label);
            for (int64_t i = 0; i < 3 * wn; i++)
                cr_assert_eq(trip[i], want[i], "%s: triplet %lld", label, (long long)(i / 3));
            free(want);
        }
        r.trip = trip;
        r.nt = nt;
        r.swap = triplet_cases[c].swap;
        r.smooth = triplet_cases[c].smooth;
        json_t *o = jparse(triplet_cases[c].opts);
        r.p1 = json_number_value(json_object_get(o, "margin"));
        json_decref(o);
        struct ft_loss_stats st = check_ref(l, &b, ref_triplet, &r, label);
        cr_assert_eq(st.num_triplets, nt, "%s", label);
        cr_assert_eq(st.num_nonzero, r.nonzero, "%s", label);
        free(r.e), free(trip);
        ft_loss_free(l);
        free_batch(&b);
    }
}

/* ---- pair losses and pair miners, selection held fixed ---- */

/* Brute-force pair miners in double: miner 0 none, 1 PairMarginMiner(a, b), 2
 * MultiSimilarityMiner(epsilon a). */
static void ref_mine_pairs(const struct ref *r, int miner, double a, double b, uint8_t *mask)
{
    int B = r->B, npos = 0, nneg = 0;
    for (int i = 0; i < B; i++)
        for (int j = 0; j < B; j++) {
            mask[i * B + j] = i == j ? 0 : r->labels[i] == r->labels[j] ? 1 : 2;
            npos += mask[i * B + j] == 1;
            nneg += mask[i * B + j] == 2;
        }
    for (int i = 0; i < B && miner; i++) {
        double plo = INFINITY, phi = -INFINITY, nlo = INFINITY, nhi = -INFINITY;
        for (int j = 0; j < B; j++) {
            double v = r_meas(r, i, j);
            if (mask[i * B + j] == 1)
                plo = fmin(plo, v), phi = fmax(phi, v);
            if (mask[i * B + j] == 2)
                nlo = fmin(nlo, v), nhi = fmax(nhi, v);
        }
        for (int j = 0; j < B; j++) {
            uint8_t *k = &mask[i * B + j];
            double v = r_meas(r, i, j);
            int keep;
            if (miner == 1)
                keep = *k == 1 ? (r->cosine ? v < a : v > a) : (r->cosine ? v > b : v < b);
            else if (*k == 1)
                keep = npos && nneg && (r->cosine ? v - a < nhi : v + a > nlo);
            else
                keep = npos && nneg && (r->cosine ? v + a > plo : v - a < phi);
            if (*k && !keep)
                *k = 0;
        }
    }
}

static const struct {
    const char *loss, *opts, *miner, *mopts;
    int cosine, normalize;
} pair_cases[] = {
    {"ContrastiveLoss", "{\"pos_margin\": 0.1, \"neg_margin\": 1.2}", NULL, NULL, 0, 1},
    {"ContrastiveLoss", "{\"pos_margin\": 0.9, \"neg_margin\": 0.1, \"distance\": \"cosine\"}",
     "PairMarginMiner", "{\"pos_margin\": 0.95, \"neg_margin\": -0.2}", 1, 1},
    {"SiameseLoss", "{\"neg_margin\": 2.0, \"normalize_embeddings\": false}",
     "MultiSimilarityMiner", "{\"epsilon\": 0.1}", 0, 0},
    {"ContrastiveLoss", "{\"pos_margin\": 0.2, \"neg_margin\": 1.0}", "PairMarginMiner",
     "{\"pos_margin\": 0.3, \"neg_margin\": 1.1}", 0, 1},
    {"NTXentLoss", "{\"temperature\": 0.1}", NULL, NULL, 1, 1},
    {"NTXentLoss", "{\"temperature\": 0.2}", "MultiSimilarityMiner", NULL, 1, 1},
    {"NTXentLoss", "{\"temperature\": 0.07}", "PairMarginMiner",
     "{\"pos_margin\": 0.9, \"neg_margin\": 0.0}", 1, 1},
    {"MultiSimilarityLoss", NULL, NULL, NULL, 1, 1},
    {"MultiSimilarityLoss", "{\"alpha\": 3, \"beta\": 20, \"base\": 0.3}", "MultiSimilarityMiner",
     "{\"epsilon\": 0.2}", 1, 1},
    {"MultiSimilarityLoss", NULL, "PairMarginMiner", "{\"pos_margin\": 0.95, \"neg_margin\": 0.0}",
     1, 1},
};

/* The reference and its parameters for pair case c (defaults where the case has none). */
static double (*pair_ref(size_t c, struct ref *r))(void *)
{
    json_t *o = jparse(pair_cases[c].opts);
    const char *name = pair_cases[c].loss;
    double (*f)(void *);
#define OPT(k, d) (json_object_get(o, k) ? json_number_value(json_object_get(o, k)) : (d))
    if (strstr(name, "NTXent")) {
        r->p1 = OPT("temperature", 0.07);
        f = ref_ntxent;
    } else if (strstr(name, "MultiSimilarity")) {
        r->p1 = OPT("alpha", 2.0);
        r->p2 = OPT("beta", 50.0);
        r->p3 = OPT("base", 0.5);
        f = ref_ms;
    } else {
        r->p1 = OPT("pos_margin", 0.0);
        r->p2 = OPT("neg_margin", 1.0);
        f = ref_contrastive;
    }
#undef OPT
    json_decref(o);
    return f;
}

static void pair_miner_args(size_t c, int *miner, double *a, double *b)
{
    json_t *mo = jparse(pair_cases[c].mopts);
    const char *m = pair_cases[c].miner;
    *miner = !m ? 0 : strcmp(m, "PairMarginMiner") == 0 ? 1 : 2;
    json_t *pa = json_object_get(mo, *miner == 1 ? "pos_margin" : "epsilon");
    json_t *pb = json_object_get(mo, "neg_margin");
    *a = pa ? json_number_value(pa) : *miner == 1 ? 0.2 : 0.1;
    *b = pb ? json_number_value(pb) : 0.8;
    json_decref(mo);
}

Test(pair_losses, match_reference_miners_and_finite_differences)
{
    for (size_t c = 0; c < sizeof pair_cases / sizeof pair_cases[0]; c++) {
        char label[64];
        snprintf(label, sizeof label, "pair case %zu (%s)", c, pair_cases[c].loss);
        struct batch b = random_batch(700 + c, 9, 4, 3, 0.8);
        ft_loss *l = make_loss(pair_cases[c].loss, pair_cases[c].opts, pair_cases[c].miner,
                               pair_cases[c].mopts, b.D, 0);
        struct ref r = ref_of(&b, pair_cases[c].cosine, pair_cases[c].normalize);
        uint8_t mask[81], want[81];
        int miner, npos = 0, nneg = 0;
        double ma, mb;
        pair_miner_args(c, &miner, &ma, &mb);
        cr_assert_eq(ft_loss_mine_pairs(l, b.emb, b.labels, b.B, b.D, mask), FT_OK);
        ref_mine_pairs(&r, miner, ma, mb, want);
        for (int i = 0; i < 81; i++) {
            cr_assert_eq(mask[i], want[i], "%s: pair (%d, %d)", label, i / 9, i % 9);
            npos += mask[i] == 1;
            nneg += mask[i] == 2;
        }
        int all_pos = 0;
        for (int i = 0; i < 81; i++)
            all_pos += i / 9 != i % 9 && b.labels[i / 9] == b.labels[i % 9];
        cr_assert(npos > 1 && nneg > 1, "%s: %d pos %d neg pairs", label, npos, nneg);
        cr_assert(!miner || npos + nneg < 72, "%s: the miner kept every pair", label);
        cr_assert(miner || (npos == all_pos && nneg == 72 - all_pos), "%s", label);
        r.mask = mask;
        double (*f)(void *) = pair_ref(c, &r);
        struct ft_loss_stats st = check_ref(l, &b, f, &r, label);
        cr_assert_eq(st.num_pos_pairs, npos, "%s", label);
        cr_assert_eq(st.num_neg_pairs, nneg, "%s", label);
        if (f == ref_contrastive) {
            f(&r);
            cr_assert_eq(st.num_pos_nonzero, r.nonzero, "%s", label);
            cr_assert_eq(st.num_neg_nonzero, r.nonzero2, "%s", label);
        }
        free(r.e);
        ft_loss_free(l);
        free_batch(&b);
    }
}

/* ---- CLIPLoss and ArcFaceLoss against their references ---- */

Test(clip, matches_reference_and_finite_differences)
{
    int32_t labels[8] = {3, 1, 3, 0, 2, 1, 0, 2};
    int img[4] = {0, 1, 3, 4}, txt[4] = {2, 5, 6, 7}; /* rows in order of first items */
    struct batch b = random_batch(900, 8, 4, 4, 0.7);
    memcpy(b.labels, labels, sizeof labels);
    for (int i = 0; i < 8; i++) { /* unit rows, as the model's l2 option gives them */
        double n = 0;
        for (int k = 0; k < 4; k++)
            n += (double)b.emb[i * 4 + k] * b.emb[i * 4 + k];
        for (int k = 0; k < 4; k++)
            b.emb[i * 4 + k] = (float)(b.emb[i * 4 + k] / sqrt(n));
    }
    ft_loss *l = make_loss("CLIPLoss", "{}", NULL, NULL, 4, 0);
    struct ref r = ref_of(&b, 0, 0);
    r.img = img;
    r.txt = txt;
    r.n = 4;
    check_ref(l, &b, ref_clip, &r, "clip");
    const float *lg = ft_loss_intermediate(l, "logits", NULL);
    for (int a = 0; a < 4; a++)
        for (int c = 0; c < 4; c++) {
            double dot = 0;
            for (int k = 0; k < 4; k++)
                dot += r.e[img[a] * 4 + k] * r.e[txt[c] * 4 + k];
            cr_assert_float_eq(lg[a * 4 + c], dot / 0.07, 1e-5, "logits[%d][%d]", a, c);
        }
    free(r.e);
    ft_loss_free(l);
    free_batch(&b);
}

Test(arcface, matches_reference_and_finite_differences)
{
    const int B = 9, D = 4, C = 3;
    for (int sc = 0; sc < 2; sc++) {
        double scale = sc ? 64.0 : 8.0;
        char opts[64];
        snprintf(opts, sizeof opts, "{\"scale\": %g}", scale);
        struct batch b = random_batch(950 + sc, B, D, C, 0.9);
        ft_loss *l = make_loss("ArcFaceLoss", opts, NULL, NULL, D, C);
        float *W = ft_loss_params(l);
        for (int k = 0; k < D; k++) /* item 0 opposite its class: the else branch */
            b.emb[k] = -W[b.labels[0] * D + k] + 0.01f * (float)(k + 1);
        struct ref r = ref_of(&b, 0, 0);
        r.w = fx_to_double(W, (size_t)C * D);
        r.C = C;
        r.p1 = 28.6 * M_PI / 180.0;
        r.p2 = scale;
        ft_loss_zero_grad(l);
        check_ref(l, &b, ref_arcface, &r, sc ? "arcface scale 64" : "arcface scale 8");
        const float *ang = ft_loss_intermediate(l, "target_angle", NULL);
        cr_assert(ang[0] > M_PI - r.p1, "item 0 in the else branch (theta %g)", (double)ang[0]);
        fd_check(ref_arcface, &r, r.w, ft_loss_grads(l), (size_t)C * D, 1e-5, 2e-3, "arcface dW");
        free(r.e), free(r.w);
        ft_loss_free(l);
        free_batch(&b);
    }
}

/* A larger batch (tiles of 64, sgemm paths) against the references: the loss value and a sample
 * of gradient entries. */
Test(pair_losses, larger_batch_matches_reference)
{
    static const char *names[] = {"ContrastiveLoss", "NTXentLoss", "MultiSimilarityLoss"};
    for (int c = 0; c < 3; c++) {
        struct batch b = random_batch(1100 + c, 96, 8, 6, 0.9);
        ft_loss *l = make_loss(names[c], NULL, "MultiSimilarityMiner", NULL, 8, 0);
        struct ref r = ref_of(&b, c > 0, 1);
        uint8_t *mask = malloc(96 * 96);
        cr_assert_eq(ft_loss_mine_pairs(l, b.emb, b.labels, 96, 8, mask), FT_OK);
        r.mask = mask;
        r.p1 = c == 0 ? 0.0 : c == 1 ? 0.07 : 2.0;
        r.p2 = c == 0 ? 1.0 : 50.0;
        r.p3 = 0.5;
        double (*f)(void *) = c == 0 ? ref_contrastive : c == 1 ? ref_ntxent : ref_ms;
        float loss, *demb = malloc(96 * 8 * sizeof *demb);
        cr_assert_eq(ft_loss_compute(l, b.emb, b.labels, 96, 8, &loss, demb, NULL), FT_OK);
        double want = f(&r);
        cr_assert(fabs(loss - want) <= 1e-5 * fabs(want), "%s: %g want %g", names[c], loss, want);
        for (int s = 0; s < 16; s++) {
            size_t i = (size_t)(s * 47 + 5) % (96 * 8);
            double keep = r.e[i], h = 1e-6;
            r.e[i] = keep + h;
            double fp = f(&r);
            r.e[i] = keep - h;
            double fm = f(&r), fd = (fp - fm) / (2 * h);
            r.e[i] = keep;
            cr_assert(fabs(demb[i] - fd) <= 1e-5 + 2e-3 * fabs(fd), "%s grad[%zu] %g fd %g",
                      names[c], i, (double)demb[i], fd);
        }
        free(mask), free(demb), free(r.e);
        ft_loss_free(l);
        free_batch(&b);
    }
}

/* ---- options ---- */

/* ft_loss_check must fail with FT_EINVAL and exactly this param; the message contains want
 * (when non-NULL). ft_loss_new fails the same way. */
static void expect_invalid(const char *name, const char *opts, const char *miner, const char *mopts,
                           const char *param, const char *want)
{
    json_t *o = jparse(opts), *mo = jparse(mopts), *no = json_true(), *nm = json_true();
    struct ft_error err = {0};
    cr_assert_eq(ft_loss_check(name, o, miner, mo, &no, &nm, &err), FT_EINVAL, "%s %s accepted",
                 name, opts ? opts : "");
    cr_assert_str_eq(err.param, param, "%s: %s", name, err.message);
    cr_assert(!want || strstr(err.message, want), "message '%s' lacks '%s'", err.message, want);
    cr_assert_null(no);
    cr_assert_null(nm);
    ft_loss *l = (ft_loss *)&err;
    struct ft_error err2 = {0};
    cr_assert_eq(ft_loss_new(name, o, miner, mo, 4, 3, 1, &l, &err2), FT_EINVAL);
    cr_assert_null(l);
    cr_assert_str_eq(err2.param, param);
    json_decref(o);
    json_decref(mo);
}

#define HP "config.hyper_parameters."

Test(loss_options, unknown_keys_and_names)
{
    expect_invalid("TripletMarginLoss", "{\"margin\": 0.1, \"foo\": 1}", NULL, NULL,
                   HP "loss_options.foo", "unknown field 'foo'");
    expect_invalid("CLIPLoss", "{\"temperature\": 0.1}", NULL, NULL, HP "loss_options.temperature",
                   "CLIPLoss takes no options");
    expect_invalid("ArcFaceLoss", "{\"num_classes\": 3}", NULL, NULL, HP "loss_options.num_classes",
                   "margin, scale");
    expect_invalid("NTXentLoss", "{\"distance\": \"cosine\"}", NULL, NULL,
                   HP "loss_options.distance", NULL);
    expect_invalid("TripletLoss", NULL, NULL, NULL, HP "loss", "unknown loss 'TripletLoss'");
    expect_invalid("TripletMarginLoss", NULL, "HardMiner", NULL, HP "miner", "unknown miner");
    expect_invalid("TripletMarginLoss", NULL, "TripletMarginMiner", "{\"type\": \"hard\"}",
                   HP "miner_options.type", "unknown field 'type'");
    expect_invalid("NTXentLoss", NULL, "BatchHardMiner", NULL, HP "miner", "BatchHardMiner");
    expect_invalid("ContrastiveLoss", NULL, "PairMarginMiner", "{\"margin\": 0.1}",
                   HP "miner_options.margin", NULL);
}

Test(loss_options, bad_values)
{
    expect_invalid("TripletMarginLoss", "{\"margin\": \"big\"}", NULL, NULL,
                   HP "loss_options.margin", "must be a number");
    expect_invalid("TripletMarginLoss", "{\"margin\": -0.1}", NULL, NULL, HP "loss_options.margin",
                   "must be in [0, 100]");
    expect_invalid("TripletMarginLoss", "{\"distance\": \"manhattan\"}", NULL, NULL,
                   HP "loss_options.distance", "cosine, euclidean");
    expect_invalid("TripletMarginLoss", "{\"swap\": 1}", NULL, NULL, HP "loss_options.swap",
                   "true or false");
    expect_invalid("NTXentLoss", "{\"temperature\": 0}", NULL, NULL, HP "loss_options.temperature",
                   "(0, 100]");
    expect_invalid("ArcFaceLoss", "{\"scale\": -1}", NULL, NULL, HP "loss_options.scale", NULL);
    expect_invalid("MultiSimilarityLoss", "{\"beta\": 0}", NULL, NULL, HP "loss_options.beta",
                   NULL);
    expect_invalid("TripletMarginLoss", NULL, "TripletMarginMiner",
                   "{\"type_of_triplets\": \"medium\"}", HP "miner_options.type_of_triplets",
                   "all, hard, semihard, easy");
    expect_invalid("ContrastiveLoss", NULL, "MultiSimilarityMiner", "{\"epsilon\": -1}",
                   HP "miner_options.epsilon", NULL);
    expect_invalid("TripletMarginLoss", "[0.1]", NULL, NULL, HP "loss_options",
                   "must be an object");
    expect_invalid("TripletMarginLoss", NULL, "BatchHardMiner", "3", HP "miner_options",
                   "must be an object");
    expect_invalid("TripletMarginLoss", NULL, NULL, "{\"margin\": 0.2}", HP "miner_options",
                   "without a miner");
    expect_invalid("ContrastiveLoss", "{\"distance\": \"cosine\", \"normalize_embeddings\": false}",
                   NULL, NULL, HP "loss_options.normalize_embeddings", "cosine");
}

Test(loss_options, combinations_that_do_not_fit)
{
    static const char *bad[][2] = {
        {"TripletMarginLoss", "MultiSimilarityMiner"},
        {"TripletMarginLoss", "PairMarginMiner"},
        {"ContrastiveLoss", "TripletMarginMiner"},
        {"SiameseLoss", "BatchHardMiner"},
        {"NTXentLoss", "TripletMarginMiner"},
        {"MultiSimilarityLoss", "BatchHardMiner"},
        {"CLIPLoss", "BatchHardMiner"},
        {"CLIPLoss", "MultiSimilarityMiner"},
        {"ArcFaceLoss", "PairMarginMiner"},
        {"ArcFaceLoss", "TripletMarginMiner"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        json_t *no, *nm;
        struct ft_error err = {0};
        cr_assert_eq(ft_loss_check(bad[i][0], NULL, bad[i][1], NULL, &no, &nm, &err), FT_EINVAL);
        cr_assert_str_eq(err.param, HP "miner");
        cr_assert(strstr(err.message, bad[i][0]) && strstr(err.message, bad[i][1]), "%s",
                  err.message);
    }
}

static void expect_normalized(const char *name, const char *opts, const char *miner,
                              const char *mopts, const char *want, const char *want_miner)
{
    json_t *o = jparse(opts), *mo = jparse(mopts), *no, *nm;
    json_t *w = jparse(want), *wm = want_miner ? jparse(want_miner) : json_null();
    struct ft_error err = {0};
    cr_assert_eq(ft_loss_check(name, o, miner, mo, &no, &nm, &err), FT_OK, "%s", err.message);
    char *got = json_dumps(no, JSON_SORT_KEYS),
         *gotm = json_dumps(nm, JSON_SORT_KEYS | JSON_ENCODE_ANY);
    cr_assert(json_equal(no, w), "%s options %s", name, got);
    cr_assert(json_equal(nm, wm), "%s miner options %s", name, gotm);
    free(got), free(gotm);
    json_decref(o), json_decref(mo), json_decref(no), json_decref(nm), json_decref(w);
    json_decref(wm);
}

Test(loss_options, every_default_filled)
{
    expect_normalized(NULL, NULL, NULL, NULL,
                      "{\"margin\": 0.05, \"distance\": \"euclidean\", \"normalize_embeddings\": "
                      "true, \"swap\": false, \"smooth_loss\": false}",
                      NULL);
    expect_normalized("TripletMarginLoss", "{\"margin\": 1, \"distance\": \"cosine\"}",
                      "TripletMarginMiner", NULL,
                      "{\"margin\": 1.0, \"distance\": \"cosine\", \"normalize_embeddings\": true, "
                      "\"swap\": false, \"smooth_loss\": false}",
                      "{\"margin\": 0.2, \"type_of_triplets\": \"all\"}");
    expect_normalized("TripletMarginLoss", NULL, "BatchHardMiner", "{}",
                      "{\"margin\": 0.05, \"distance\": \"euclidean\", \"normalize_embeddings\": "
                      "true, \"swap\": false, \"smooth_loss\": false}",
                      "{}");
    expect_normalized("ContrastiveLoss", "{\"neg_margin\": null}", "PairMarginMiner", NULL,
                      "{\"pos_margin\": 0.0, \"neg_margin\": 1.0, \"distance\": \"euclidean\", "
                      "\"normalize_embeddings\": true}",
                      "{\"pos_margin\": 0.2, \"neg_margin\": 0.8}");
    expect_normalized("SiameseLoss", NULL, "MultiSimilarityMiner", NULL,
                      "{\"pos_margin\": 0.0, \"neg_margin\": 1.0, \"distance\": \"euclidean\", "
                      "\"normalize_embeddings\": true}",
                      "{\"epsilon\": 0.1}");
    expect_normalized("NTXentLoss", NULL, NULL, NULL, "{\"temperature\": 0.07}", NULL);
    expect_normalized("CLIPLoss", "{}", NULL, NULL, "{}", NULL);
    expect_normalized("ArcFaceLoss", NULL, NULL, "null", "{\"margin\": 28.6, \"scale\": 64.0}",
                      NULL);
    expect_normalized("MultiSimilarityLoss", NULL, NULL, NULL,
                      "{\"alpha\": 2.0, \"beta\": 50.0, \"base\": 0.5}", NULL);
    /* NULL outputs are skipped */
    cr_assert_eq(ft_loss_check("NTXentLoss", NULL, NULL, NULL, NULL, NULL, NULL), FT_OK);
}

/* ---- behaviour ---- */

Test(contrastive, siamese_alias_equals_contrastive)
{
    struct batch b = random_batch(1200, 16, 5, 4, 0.9);
    const char *opts = "{\"pos_margin\": 0.1, \"neg_margin\": 0.9}";
    ft_loss *c = make_loss("ContrastiveLoss", opts, "PairMarginMiner", NULL, 5, 0);
    ft_loss *s = make_loss("SiameseLoss", opts, "PairMarginMiner", NULL, 5, 0);
    float lc, ls, gc[80], gs[80];
    struct ft_loss_stats sc, ss;
    cr_assert_eq(ft_loss_compute(c, b.emb, b.labels, 16, 5, &lc, gc, &sc), FT_OK);
    cr_assert_eq(ft_loss_compute(s, b.emb, b.labels, 16, 5, &ls, gs, &ss), FT_OK);
    cr_assert(lc > 0);
    cr_assert_eq(lc, ls);
    cr_assert_eq(memcmp(gc, gs, sizeof gc), 0);
    cr_assert_eq(memcmp(&sc, &ss, sizeof sc), 0);
    ft_loss_free(c);
    ft_loss_free(s);
    free_batch(&b);
}

/* The colleague's API and the generic object agree bit for bit. */
Test(triplet_generic, same_as_ft_triplet_margin_loss)
{
    struct batch b = random_batch(1300, 64, 8, 5, 0.9);
    struct ft_triplet_opts o;
    ft_triplet_opts_default(&o);
    o.use_miner = 1;
    o.type = FT_TRIPLETS_SEMIHARD;
    ft_loss *l = make_loss("TripletMarginLoss", NULL, "TripletMarginMiner",
                           "{\"type_of_triplets\": \"semihard\"}", 8, 0);
    float l1, l2, *g1 = malloc(64 * 8 * sizeof *g1), *g2 = malloc(64 * 8 * sizeof *g2);
    struct ft_loss_stats s1, s2;
    cr_assert_eq(ft_triplet_margin_loss(&l1, g1, b.emb, b.labels, 64, 8, &o, &s1), FT_OK);
    cr_assert_eq(ft_loss_compute(l, b.emb, b.labels, 64, 8, &l2, g2, &s2), FT_OK);
    cr_assert(l1 > 0);
    cr_assert_eq(l1, l2);
    cr_assert_eq(memcmp(g1, g2, 64 * 8 * sizeof *g1), 0);
    cr_assert_eq(memcmp(&s1, &s2, sizeof s1), 0);
    free(g1), free(g2);
    ft_loss_free(l);
    free_batch(&b);
}

/* pml GenericPairLoss: one positive and one negative pair left -> zero loss. */
Test(pair_losses, single_pairs_give_zero_like_pml)
{
    float emb[3 * 2] = {1, 0, 0.5f, 0.8660254f, 0.8660254f, -0.5f}; /* 0, 60, -30 degrees */
    int32_t labels[3] = {0, 0, 1};
    ft_loss *l = make_loss("NTXentLoss", NULL, "MultiSimilarityMiner", NULL, 2, 0);
    uint8_t mask[9];
    cr_assert_eq(ft_loss_mine_pairs(l, emb, labels, 3, 2, mask), FT_OK);
    uint8_t want[9] = {0, 1, 2, 0, 0, 0, 0, 0, 0};
    cr_assert_eq(memcmp(mask, want, 9), 0);
    float loss = 1, demb[6];
    struct ft_loss_stats st;
    cr_assert_eq(ft_loss_compute(l, emb, labels, 3, 2, &loss, demb, &st), FT_OK);
    cr_assert_eq(loss, 0.0f);
    cr_assert_eq(st.num_pos_pairs, 1);
    cr_assert_eq(st.num_neg_pairs, 1);
    for (int i = 0; i < 6; i++)
        cr_assert_eq(demb[i], 0.0f);
    ft_loss_free(l);
}

Test(loss_generic, non_finite_embeddings_give_nan_and_zero_gradient)
{
    static const char *names[] = {"TripletMarginLoss", "ContrastiveLoss", "NTXentLoss",
                                  "CLIPLoss",          "ArcFaceLoss",     "MultiSimilarityLoss"};
    float emb[4 * 2] = {1, 0, 0.9f, 0.1f, 0, 1, NAN, 1};
    int32_t labels[4] = {0, 1, 0, 1};
    for (int i = 0; i < 6; i++) {
        ft_loss *l = make_loss(names[i], NULL, NULL, NULL, 2, 2);
        float loss, demb[8];
        cr_assert_eq(ft_loss_compute(l, emb, labels, 4, 2, &loss, demb, NULL), FT_OK, "%s",
                     names[i]);
        cr_assert(isnan(loss), "%s", names[i]);
        for (int k = 0; k < 8; k++)
            cr_assert_eq(demb[k], 0.0f, "%s", names[i]);
        if (ft_loss_num_params(l))
            for (size_t k = 0; k < ft_loss_num_params(l); k++)
                cr_assert_eq(ft_loss_grads(l)[k], 0.0f);
        ft_loss_free(l);
    }
}

Test(loss_generic, empty_and_tiny_batches)
{
    static const char *names[] = {"TripletMarginLoss", "ContrastiveLoss", "NTXentLoss",
                                  "CLIPLoss",          "ArcFaceLoss",     "MultiSimilarityLoss"};
    float emb[2] = {1, 0};
    int32_t labels[1] = {0};
    for (int i = 0; i < 6; i++) {
        ft_loss *l = make_loss(names[i], NULL, NULL, NULL, 2, 2);
        float loss = 5, demb[2] = {5, 5};
        cr_assert_eq(ft_loss_compute(l, emb, labels, 0, 2, &loss, NULL, NULL), FT_OK);
        cr_assert_eq(loss, 0.0f);
        if (i != 3) { /* one item: nothing to compare (ArcFace: a plain softmax loss) */
            cr_assert_eq(ft_loss_compute(l, emb, labels, 1, 2, &loss, demb, NULL), FT_OK);
            cr_assert(i == 4 ? loss > 0 : loss == 0.0f, "%s", names[i]);
        }
        ft_loss_free(l);
    }
    ft_loss_free(NULL);
}

Test(clip, batch_must_hold_two_items_per_label)
{
    ft_loss *l = make_loss("CLIPLoss", NULL, NULL, NULL, 2, 0);
    float emb[6 * 2] = {1, 0, 0, 1, 1, 1, -1, 0, 0, -1, 1, -1}, loss, demb[12];
    int32_t three[6] = {0, 0, 0, 1, 1, 1}, one[6] = {0, 0, 1, 2, 2, 2}, odd[5] = {0, 0, 1, 1, 2};
    int32_t ok[6] = {7, -1, 3, 3, -1, 7};
    cr_assert_eq(ft_loss_compute(l, emb, three, 6, 2, &loss, demb, NULL), FT_EINVAL);
    cr_assert_eq(ft_loss_compute(l, emb, one, 6, 2, &loss, demb, NULL), FT_EINVAL);
    cr_assert_eq(ft_loss_compute(l, emb, odd, 5, 2, &loss, demb, NULL), FT_EINVAL);
    cr_assert_eq(ft_loss_compute(l, emb, ok, 6, 2, &loss, demb, NULL), FT_OK);
    cr_assert(loss > 0);
    ft_loss_free(l);
}

Test(arcface, shapes_labels_and_init)
{
    ft_loss *l = NULL;
    struct ft_error err = {0};
    cr_assert_eq(ft_loss_new("ArcFaceLoss", NULL, NULL, NULL, 4, 0, 1, &l, &err), FT_EINVAL);
    cr_assert_str_eq(err.param, HP "loss");
    cr_assert_null(l);
    ft_loss *a = make_loss("ArcFaceLoss", NULL, NULL, NULL, 128, 40);
    ft_loss *b = make_loss("ArcFaceLoss", NULL, NULL, NULL, 128, 40);
    size_t n = ft_loss_num_params(a);
    cr_assert_eq(n, 40 * 128);
    cr_assert_eq(memcmp(ft_loss_params(a), ft_loss_params(b), n * sizeof(float)), 0, "seeded");
    double mean = 0, var = 0;
    for (size_t i = 0; i < n; i++)
        mean += ft_loss_params(a)[i] / (double)n;
    for (size_t i = 0; i < n; i++)
        var += pow(ft_loss_params(a)[i] - mean, 2) / (double)n;
    cr_assert(fabs(mean) < 0.05 && fabs(var - 1.0) < 0.08, "N(0,1): mean %g var %g", mean, var);
    float emb[2 * 128] = {0}, loss, demb[256];
    int32_t good[2] = {0, 39}, bad[2] = {0, 40}, neg[2] = {-1, 0};
    emb[0] = emb[129] = 1;
    cr_assert_eq(ft_loss_compute(a, emb, good, 2, 128, &loss, demb, NULL), FT_OK);
    cr_assert_eq(ft_loss_compute(a, emb, bad, 2, 128, &loss, demb, NULL), FT_EINVAL);
    cr_assert_eq(ft_loss_compute(a, emb, neg, 2, 128, &loss, demb, NULL), FT_EINVAL);
    cr_assert_eq(ft_loss_compute(a, emb, good, 2, 64, &loss, demb, NULL), FT_EINVAL);
    cr_assert_eq(ft_loss_items_per_class(a), 0);
    ft_loss_free(a);
    ft_loss_free(b);
    ft_loss *t = make_loss("TripletMarginLoss", NULL, NULL, NULL, 4, 3);
    cr_assert_eq(ft_loss_num_params(t), 0);
    cr_assert_null(ft_loss_params(t));
    cr_assert_null(ft_loss_grads(t));
    ft_loss_zero_grad(t);
    cr_assert_null(ft_loss_intermediate(t, "dist_matrix", NULL), "no compute yet");
    int64_t cnt;
    uint8_t mask[1];
    cr_assert_eq(ft_loss_mine_pairs(t, emb, good, 1, 4, mask), FT_EINVAL);
    ft_loss_free(t);
    ft_loss *c = make_loss("ContrastiveLoss", NULL, NULL, NULL, 4, 0);
    cr_assert_eq(ft_loss_mine_triplets(c, emb, good, 2, 4, NULL, 0, &cnt), FT_EINVAL);
    ft_loss_free(c);
}

/* The euclidean distance matrix is bitwise sqrtf of the sequential fmaf sum of squared
 * differences (loss.c "euclidean distances") on whichever SIMD path this CPU takes: shapes
 * whose B is not a multiple of the 4-row blocks or of the 8/16-column vectors, D not a multiple
 * of anything, and near rows (a collapsed batch) whose terms are tiny. */
Test(loss_generic, euclidean_distances_are_the_fma_sum_bitwise)
{
    static const int shapes[][2] = {{3, 1}, {5, 7}, {17, 13}, {37, 33}, {64, 128}, {128, 128}};
    for (size_t t = 0; t < sizeof shapes / sizeof *shapes; t++)
        for (int collapsed = 0; collapsed < 2; collapsed++) {
            int B = shapes[t][0], D = shapes[t][1];
            struct batch b = random_batch(300 + t, B, D, 4, collapsed ? 1e-4 : 0.9);
            ft_loss *l =
                make_loss("TripletMarginLoss", "{\"normalize_embeddings\": false}", NULL, NULL, D, 0);
            float loss;
            cr_assert_eq(ft_loss_compute(l, b.emb, b.labels, B, D, &loss, NULL, NULL), FT_OK);
            size_t n;
            const float *dist = ft_loss_intermediate(l, "dist_matrix", &n);
            cr_assert_eq(n, (size_t)B * B);
            for (int i = 0; i < B; i++)
                for (int j = 0; j < B; j++) {
                    float s = 0.0f;
                    for (int k = 0; k < D; k++) {
                        float d = b.emb[i * D + k] - b.emb[j * D + k];
                        s = fmaf(d, d, s);
                    }
                    float want = i == j ? 0.0f : sqrtf(s); /* (x_j - x_i)^2: the same terms */
                    cr_assert_eq(dist[i * B + j], want, "B %d D %d (%d, %d): %a, want %a", B, D,
                                 i, j, (double)dist[i * B + j], (double)want);
                }
            ft_loss_free(l);
            free_batch(&b);
        }
}

/* Scratch grows and shrinks with the batch: a big batch, then a small one, then big again. */
Test(loss_generic, reuse_across_batch_sizes)
{
    static const char *names[] = {"TripletMarginLoss", "ContrastiveLoss", "NTXentLoss",
                                  "MultiSimilarityLoss"};
    for (int i = 0; i < 4; i++) {
        ft_loss *l = make_loss(names[i], NULL, NULL, NULL, 6, 0);
        int sizes[3] = {40, 7, 40};
        float first = 0;
        for (int s = 0; s < 3; s++) {
            struct batch b = random_batch(1400, sizes[s], 6, 3, 0.9);
            float loss, *demb = malloc((size_t)sizes[s] * 6 * sizeof *demb);
            cr_assert_eq(ft_loss_compute(l, b.emb, b.labels, sizes[s], 6, &loss, demb, NULL),
                         FT_OK);
            if (s == 0)
                first = loss;
            if (s == 2)
                cr_assert_eq(loss, first, "%s", names[i]);
            free(demb);
            free_batch(&b);
        }
        ft_loss_free(l);
    }
}
