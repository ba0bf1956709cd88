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

static double *to_double(const float *v, size_t n)
{
    double *d = malloc(n * sizeof *d);
    for (size_t i = 0; i < n; i++)
        d[i] = v[i];
    return d;
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
    struct ref_ctx c = {to_double(b->emb, n), b->labels, b->B, b->D, o, 0, 0};
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
        struct ref_ctx c = {to_double(b.emb, 64 * 8), b.labels, 64, 8, &o, 0, 0};
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
    struct ft_loss_stats st = {-1, -1};
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
