/* cli.c — the finetuner command line: `finetuner [--url URL] [--token T] <command> [options]`.
 *
 * Every command is a thin wrapper over one or two libfinetuner calls. Flags are described by
 * a small table per command (name, kind, destination, help) that drives both parsing and
 * --help. Exit codes: 0 success, 1 a server or transport error (printed as
 * "error: <code>: <message> (param: p)"), or a run that ended FAILED/CANCELED under
 * `fit --follow`; 2 a usage error. Followed logs on a terminal draw progress lines
 * ("Training [2/5] 469/469 batches loss: 0.182") as a bar redrawn in place; elsewhere every
 * line is printed as it comes. */
#include "finetuner.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_URL "http://127.0.0.1:8910"
#define EXIT_SERVER 1
#define EXIT_USAGE 2
#define MAX_POS 4
#define MAX_CALLBACKS 16

/* ---- flags ------------------------------------------------------------------------------- */

/* OPT_POS_*: a number that must be > 0 when given (0 would read as "unset" downstream). */
enum opt_kind {
    OPT_STR,
    OPT_INT,
    OPT_POS_INT,
    OPT_DOUBLE,
    OPT_POS_DOUBLE,
    OPT_LLONG,
    OPT_BOOL,
    OPT_CALLBACK,
    OPT_PAIR
};

struct opt {
    const char *name;  /* "--epochs" */
    const char *alias; /* "-o" or NULL */
    enum opt_kind kind;
    void *dst; /* const char **, int *, double *, long long *, int *, struct cb_list *,
                  struct pair * */
    const char *meta;
    const char *help;
};

struct cb_list {
    struct ft_callback items[MAX_CALLBACKS];
    char names[MAX_CALLBACKS][64];
    int n;
};

/* "A,B": two numbers, e.g. --standardize MEAN,STD. */
struct pair {
    int set;
    double a, b;
};

struct cmd_spec {
    const char *name;     /* "dataset push" */
    const char *synopsis; /* "NAME --csv FILE | --images F --labels F" */
    const char *summary;
    int min_pos, max_pos;
};

enum parse_result { PARSE_OK, PARSE_HELP, PARSE_BAD };

static int usage_error(const struct cmd_spec *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int usage_error(const struct cmd_spec *cmd, const char *fmt, ...)
{
    va_list ap;
    fputs("error: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nusage: finetuner %s %s\nTry 'finetuner %s --help'.\n", cmd->name,
            cmd->synopsis, cmd->name);
    return PARSE_BAD;
}

static void print_help(const struct cmd_spec *cmd, const struct opt *opts)
{
    printf("usage: finetuner %s %s\n\n%s\n", cmd->name, cmd->synopsis, cmd->summary);
    if (opts && opts[0].name)
        printf("\noptions:\n");
    for (const struct opt *o = opts; o && o->name; o++) {
        char left[64];
        snprintf(left, sizeof left, "%s%s%s%s%s", o->alias ? o->alias : "", o->alias ? ", " : "",
                 o->name, o->meta ? " " : "", o->meta ? o->meta : "");
        printf("  %-30s %s\n", left, o->help);
    }
    printf("  %-30s %s\n", "-h, --help", "show this help");
}

static int parse_long(const char *s, long long lo, long long hi, long long *out)
{
    char *end;
    long long v = strtoll(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static int parse_double(const char *s, double *out)
{
    char *end;
    double v = strtod(s, &end);
    if (*s == '\0' || *end != '\0' || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

/* "NAME" or "NAME:JSON" into the list; -1 when full or malformed. */
static int add_callback(struct cb_list *l, const char *arg)
{
    const char *colon = strchr(arg, ':');
    size_t n = colon ? (size_t)(colon - arg) : strlen(arg);
    if (l->n == MAX_CALLBACKS || n == 0 || n >= sizeof l->names[0])
        return -1;
    memcpy(l->names[l->n], arg, n);
    l->names[l->n][n] = '\0';
    l->items[l->n] = (struct ft_callback){.name = l->names[l->n],
                                          .options = colon && colon[1] ? colon + 1 : NULL,
                                          .patience = -1,
                                          .min_delta = -1};
    l->n++;
    return 0;
}

/* "A,B" into pr; -1 when malformed. */
static int parse_pair(const char *val, struct pair *pr)
{
    char first[64];
    const char *comma = strchr(val, ',');
    if (!comma || (size_t)(comma - val) >= sizeof first)
        return -1;
    memcpy(first, val, (size_t)(comma - val));
    first[comma - val] = '\0';
    if (parse_double(first, &pr->a) != 0 || parse_double(comma + 1, &pr->b) != 0)
        return -1;
    pr->set = 1;
    return 0;
}

/* Store val into o's destination; -1 when it does not parse. */
static int set_opt(const struct opt *o, const char *val)
{
    long long v;
    switch (o->kind) {
    case OPT_STR:
        *(const char **)o->dst = val;
        return 0;
    case OPT_INT:
    case OPT_POS_INT:
        if (parse_long(val, o->kind == OPT_POS_INT ? 1 : 0, 2147483647LL, &v) != 0)
            return -1;
        *(int *)o->dst = (int)v;
        return 0;
    case OPT_LLONG:
        return parse_long(val, 0, 9223372036854775807LL, (long long *)o->dst);
    case OPT_DOUBLE:
    case OPT_POS_DOUBLE:
        if (parse_double(val, (double *)o->dst) != 0)
            return -1;
        return o->kind == OPT_POS_DOUBLE && !(*(double *)o->dst > 0) ? -1 : 0;
    case OPT_CALLBACK:
        return add_callback(o->dst, val);
    case OPT_PAIR:
        return parse_pair(val, o->dst);
    case OPT_BOOL:
        break;
    }
    return -1;
}

static const struct opt *find_opt(const struct opt *opts, const char *arg, size_t n)
{
    for (const struct opt *o = opts; o && o->name; o++)
        if ((strlen(o->name) == n && strncmp(o->name, arg, n) == 0) ||
            (o->alias && strlen(o->alias) == n && strncmp(o->alias, arg, n) == 0))
            return o;
    return NULL;
}

/* One "--flag", "--flag value" or "--flag=value" at argv[*i]. */
static int parse_flag(const struct cmd_spec *cmd, const struct opt *opts, int argc, char **argv,
                      int *i)
{
    const char *arg = argv[*i];
    const char *eq = strchr(arg, '=');
    size_t n = eq ? (size_t)(eq - arg) : strlen(arg);
    const struct opt *o = find_opt(opts, arg, n);
    if (!o)
        return usage_error(cmd, "unknown option '%.*s'", (int)n, arg);
    if (o->kind == OPT_BOOL) {
        if (eq)
            return usage_error(cmd, "option '%s' takes no value", o->name);
        *(int *)o->dst = 1;
        return PARSE_OK;
    }
    const char *val = eq ? eq + 1 : (*i + 1 < argc ? argv[++*i] : NULL);
    if (!val)
        return usage_error(cmd, "option '%s' needs a value (%s)", o->name, o->meta);
    if (set_opt(o, val) != 0)
        return usage_error(cmd, "bad value '%s' for %s (%s)", val, o->name, o->meta);
    return PARSE_OK;
}

/* Parse argv (the command's words already removed) into opts and positionals. */
static int parse_args(const struct cmd_spec *cmd, const struct opt *opts, int argc, char **argv,
                      const char **pos, int *npos)
{
    int only_pos = 0;
    *npos = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!only_pos && (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0)) {
            print_help(cmd, opts);
            return PARSE_HELP;
        }
        if (!only_pos && strcmp(a, "--") == 0) {
            only_pos = 1;
        } else if (!only_pos && a[0] == '-' && a[1] != '\0') {
            int r = parse_flag(cmd, opts, argc, argv, &i);
            if (r != PARSE_OK)
                return r;
        } else if (*npos == cmd->max_pos) {
            return usage_error(cmd, "unexpected argument '%s'", a);
        } else {
            pos[(*npos)++] = a;
        }
    }
    if (*npos < cmd->min_pos)
        return usage_error(cmd, "missing arguments");
    return PARSE_OK;
}

/* Exit code for a parse result other than PARSE_OK. */
static int parse_exit(int r)
{
    return r == PARSE_HELP ? 0 : EXIT_USAGE;
}

/* ---- output ------------------------------------------------------------------------------ */

static int server_error(const ft_client *c)
{
    const char *param = ft_client_error_param(c);
    fprintf(stderr, "error: %s: %s", ft_client_error_code(c), ft_client_error_message(c));
    if (param)
        fprintf(stderr, " (param: %s)", param);
    fputc('\n', stderr);
    return EXIT_SERVER;
}

static int print_json_text(const char *text)
{
    json_t *o = json_loads(text, 0, NULL);
    char *pretty =
        o ? json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15)) : NULL;
    puts(pretty ? pretty : text);
    free(pretty);
    json_decref(o);
    return 0;
}

/* The value of key in o as text for a table cell. */
static void cell(json_t *o, const char *key, char *buf, size_t cap)
{
    json_t *v = json_object_get(o, key);
    if (json_is_string(v))
        snprintf(buf, cap, "%s", json_string_value(v));
    else if (json_is_integer(v))
        snprintf(buf, cap, "%lld", (long long)json_integer_value(v));
    else if (json_is_real(v))
        snprintf(buf, cap, "%g", json_real_value(v));
    else
        snprintf(buf, cap, "-");
}

/* Print the objects of array key in text as a table of cols (headers in capitals). */
static void print_table(const char *text, const char *key, const char *const *cols,
                        const int *widths, int ncols)
{
    json_t *root = json_loads(text, 0, NULL);
    json_t *rows = json_object_get(root, key);
    char buf[256];
    for (int j = 0; j < ncols; j++) {
        int k = 0;
        for (const char *s = cols[j]; *s && k < (int)sizeof buf - 1; s++)
            buf[k++] = (char)(*s == '_' ? ' ' : (*s >= 'a' && *s <= 'z' ? *s - 32 : *s));
        buf[k] = '\0';
        printf("%-*s%s", j + 1 < ncols ? widths[j] : 0, buf, j + 1 < ncols ? "  " : "\n");
    }
    for (size_t i = 0; i < json_array_size(rows); i++) {
        for (int j = 0; j < ncols; j++) {
            cell(json_array_get(rows, i), cols[j], buf, sizeof buf);
            printf("%-*s%s", j + 1 < ncols ? widths[j] : 0, buf, j + 1 < ncols ? "  " : "\n");
        }
    }
    json_decref(root);
}

/* ---- progress lines ---------------------------------------------------------------------- */

struct progress {
    char label[160]; /* "Training [2/5]" */
    long long cur, total;
    const char *rest; /* "loss: 0.182" (borrowed from the line) */
};

struct render {
    int tty, color;
    int pending; /* a bar is drawn on the current line */
    char label[160];
    struct timespec start;
};

/* "<label> <cur>/<total> batches[ <rest>]" -> p; 0 when line is not a progress line. */
static int parse_progress(const char *line, struct progress *p)
{
    const char *b = strstr(line, " batches");
    if (!b || (b[8] != '\0' && b[8] != ' '))
        return 0;
    const char *tok = b;
    while (tok > line && tok[-1] != ' ')
        tok--;
    if (tok == line)
        return 0;
    char *end;
    p->cur = strtoll(tok, &end, 10);
    if (end == tok || *end != '/')
        return 0;
    const char *t2 = end + 1;
    p->total = strtoll(t2, &end, 10);
    if (end == t2 || end != b || p->total <= 0 || p->cur < 0 || p->cur > p->total)
        return 0;
    snprintf(p->label, sizeof p->label, "%.*s", (int)(tok - 1 - line), line);
    p->rest = b + 8;
    while (*p->rest == ' ')
        p->rest++;
    return 1;
}

static double seconds_since(const struct timespec *t0)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - t0->tv_sec) + (double)(now.tv_nsec - t0->tv_nsec) / 1e9;
}

static void hms(double s, char *buf, size_t cap)
{
    if (s < 0) {
        snprintf(buf, cap, "-:--:--");
        return;
    }
    long t = s > 359999.0 ? 359999 : (long)(s + 0.5); /* 99:59:59 at most */
    snprintf(buf, cap, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
}

static int terminal_columns(void)
{
    struct winsize ws;
    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
        return ws.ws_col;
    return 80;
}

/* The bar: filled "━" in pink (green when complete), the rest in grey. */
static void draw_bar(const struct render *r, const struct progress *p, int width)
{
    int filled = (int)(p->cur * width / p->total);
    const char *on = p->cur == p->total ? "\033[38;5;106m" : "\033[38;5;197m";
    if (r->color)
        fputs(on, stdout);
    for (int i = 0; i < width; i++) {
        if (i == filled && r->color)
            fputs("\033[38;5;237m", stdout);
        fputs("\xe2\x94\x81", stdout);
    }
    if (r->color)
        fputs("\033[0m", stdout);
}

static void draw_progress(struct render *r, const struct progress *p)
{
    char counts[48], left[32], elapsed[32];
    if (r->pending && strcmp(r->label, p->label) != 0)
        fputc('\n', stdout);
    if (!r->pending || strcmp(r->label, p->label) != 0) {
        snprintf(r->label, sizeof r->label, "%s", p->label);
        clock_gettime(CLOCK_MONOTONIC, &r->start);
    }
    double t = seconds_since(&r->start);
    snprintf(counts, sizeof counts, "%lld/%lld", p->cur, p->total);
    hms(t, elapsed, sizeof elapsed);
    hms(p->cur > 0 ? t * (double)(p->total - p->cur) / (double)p->cur : -1, left, sizeof left);
    int fixed = (int)(strlen(p->label) + strlen(counts) + strlen(left) + strlen(elapsed) +
                      (p->rest[0] ? strlen(p->rest) + 3 : 0)) +
                5;
    int width = terminal_columns() - fixed;
    width = width > 40 ? 40 : (width < 10 ? 10 : width);
    printf("\r\033[K%s ", p->label);
    draw_bar(r, p, width);
    printf(" %s %s %s%s%s", counts, left, elapsed, p->rest[0] ? " \xe2\x80\xa2 " : "", p->rest);
    fflush(stdout);
    r->pending = 1;
}

static void on_log_line(const char *line, void *ctx)
{
    struct render *r = ctx;
    struct progress p;
    if (r->tty && parse_progress(line, &p)) {
        draw_progress(r, &p);
        return;
    }
    if (r->pending)
        fputc('\n', stdout);
    r->pending = 0;
    puts(line);
    fflush(stdout);
}

static void render_init(struct render *r)
{
    const char *no_color = getenv("NO_COLOR");
    memset(r, 0, sizeof *r);
    r->tty = isatty(STDOUT_FILENO);
    r->color = r->tty && !(no_color && no_color[0]);
}

/* Stream run's log to stdout; 0, or 1 after printing the error. */
static int follow(ft_run *run)
{
    struct render r;
    render_init(&r);
    int rc = ft_run_stream_logs(run, on_log_line, &r);
    if (r.pending)
        fputc('\n', stdout);
    fflush(stdout);
    return rc == 0 ? 0 : server_error(ft_run_client(run));
}

/* ---- commands ---------------------------------------------------------------------------- */

/* A run handle for pos[0] (experiment) and pos[1] (run); NULL after printing the error. */
static ft_run *open_run(ft_client *c, const char **pos)
{
    ft_run *run;
    if (ft_get_run(c, pos[0], pos[1], &run) != 0)
        server_error(c);
    return run;
}

/* After `fit --follow`: 0 when FINISHED, else 1 with the status and details. */
static int run_outcome(ft_run *run)
{
    char status[FTC_STATUS_MAX];
    char *details = NULL;
    if (ft_run_status(run, status, &details) != 0)
        return server_error(ft_run_client(run));
    int ok = strcmp(status, "FINISHED") == 0;
    if (ok)
        printf("Run %s FINISHED%s%s\n", ft_run_name(run), details ? ": " : "",
               details ? details : "");
    else
        fprintf(stderr, "error: run_%s: run %s ended %s%s%s\n",
                strcmp(status, "CANCELED") == 0 ? "canceled" : "failed", ft_run_name(run), status,
                details ? ": " : "", details ? details : "");
    free(details);
    return ok ? 0 : EXIT_SERVER;
}

static int cmd_fit(ft_client *c, int argc, char **argv)
{
    static const struct cmd_spec spec = {
        "fit", "--train-data DATASET [options]",
        "Submit a finetuning run (the keyword arguments of finetuner.fit()). Unset options take "
        "the server's\ndefaults. With --follow, stream the log and exit 1 unless the run "
        "FINISHED.",
        0, 0};
    struct ft_fit_params p = {.seed = -1};
    struct cb_list cbs = {.n = 0};
    struct pair standardize = {0};
    int follow_flag = 0;
    const struct opt opts[] = {
        {"--model", NULL, OPT_STR, &p.model, "NAME",
         "mlp (default) or cnn; with --model-artifact: its model"},
        {"--model-options", NULL, OPT_STR, &p.model_options, "JSON", "model options (object)"},
        {"--output-dim", NULL, OPT_POS_INT, &p.output_dim, "N",
         "append a linear projection head of N outputs"},
        {"--freeze", NULL, OPT_BOOL, &p.freeze, NULL,
         "train only the projection head (needs --output-dim)"},
        {"--model-artifact", NULL, OPT_STR, &p.model_artifact, "EXP/RUN",
         "start from the model of an earlier FINISHED run"},
        {"--train-data", NULL, OPT_STR, &p.train_data, "DATASET", "training dataset (required)"},
        {"--eval-data", NULL, OPT_STR, &p.eval_data, "DATASET", "evaluation dataset (val_loss)"},
        {"--val-split", NULL, OPT_DOUBLE, &p.val_split, "F", "hold out F of train_data instead"},
        {"--sampler", NULL, OPT_STR, &p.sampler, "NAME", "auto (default), class or random"},
        {"--standardize", NULL, OPT_PAIR, &standardize, "MEAN,STD",
         "feed the model (x - MEAN) / STD"},
        {"--run-name", NULL, OPT_STR, &p.run_name, "NAME", "run name (default: server's pick)"},
        {"--description", NULL, OPT_STR, &p.description, "TEXT", "run description"},
        {"--experiment", NULL, OPT_STR, &p.experiment_name, "NAME", "experiment (default)"},
        {"--loss", NULL, OPT_STR, &p.loss, "NAME", "loss (default: TripletMarginLoss)"},
        {"--loss-options", NULL, OPT_STR, &p.loss_options, "JSON", "loss options (object)"},
        {"--miner", NULL, OPT_STR, &p.miner, "NAME",
         "miner, e.g. TripletMarginMiner (default: none)"},
        {"--miner-options", NULL, OPT_STR, &p.miner_options, "JSON", "miner options (object)"},
        {"--optimizer", NULL, OPT_STR, &p.optimizer, "NAME", "Adam (default), AdamW or SGD"},
        {"--optimizer-options", NULL, OPT_STR, &p.optimizer_options, "JSON",
         "optimizer options (object)"},
        {"--loss-optimizer", NULL, OPT_STR, &p.loss_optimizer, "NAME",
         "for the loss's own weights (ArcFaceLoss; default: --optimizer)"},
        {"--loss-optimizer-options", NULL, OPT_STR, &p.loss_optimizer_options, "JSON",
         "loss optimizer options (object)"},
        {"--scheduler", NULL, OPT_STR, &p.scheduler, "NAME",
         "learning-rate schedule, e.g. linear (default: none)"},
        {"--scheduler-options", NULL, OPT_STR, &p.scheduler_options, "JSON",
         "scheduler options (object)"},
        {"--learning-rate", NULL, OPT_POS_DOUBLE, &p.learning_rate, "LR", "default: 0.001"},
        {"--epochs", NULL, OPT_POS_INT, &p.epochs, "N", "default: 5"},
        {"--batch-size", NULL, OPT_POS_INT, &p.batch_size, "N", "default: chosen from the data"},
        {"--num-items-per-class", NULL, OPT_POS_INT, &p.num_items_per_class, "N", "default: 4"},
        {"--seed", NULL, OPT_LLONG, &p.seed, "N", "random seed (default: 42)"},
        {"--callback", NULL, OPT_CALLBACK, &cbs, "NAME:JSON",
         "add a callback, e.g. 'EarlyStopping:{\"patience\":2}' (repeatable)"},
        {"--follow", "-f", OPT_BOOL, &follow_flag, NULL, "stream the run's log until it ends"},
        {NULL, NULL, 0, NULL, NULL, NULL}};
    const char *pos[MAX_POS];
    int npos, r = parse_args(&spec, opts, argc, argv, pos, &npos);
    if (r != PARSE_OK)
        return parse_exit(r);
    if (!p.model && !p.model_artifact) /* an artifact brings its own architecture */
        p.model = "mlp";
    p.has_seed = p.seed >= 0;
    p.has_freeze = p.freeze;
    p.has_standardize = standardize.set;
    p.standardize_mean = standardize.a;
    p.standardize_std = standardize.b;
    p.callbacks = cbs.items;
    p.num_callbacks = (size_t)cbs.n;
    ft_run *run;
    if (ft_fit(c, &p, &run) != 0)
        return server_error(c);
    printf("Created run %s in experiment %s (status %s)\n", ft_run_name(run),
           ft_run_experiment(run), ft_run_last_status(run));
    fflush(stdout);
    r = follow_flag ? follow(run) : 0;
    if (follow_flag && r == 0)
        r = run_outcome(run);
    ft_run_free(run);
    return r;
}

static int cmd_status(ft_client *c, int argc, char **argv)
{
    static const struct cmd_spec spec = {
        "status", "EXPERIMENT RUN",
        "Print the run's status (CREATED, STARTED, FINISHED, FAILED or CANCELED) and details.", 2,
        2};
    const char *pos[MAX_POS];
    int npos, r = parse_args(&spec, NULL, argc, argv, pos, &npos);
    if (r != PARSE_OK)
        return parse_exit(r);
    ft_run *run = open_run(c, pos);
    char status[FTC_STATUS_MAX];
    char *details = NULL;
    if (!run)
        return EXIT_SERVER;
    r = ft_run_status(run, status, &details) == 0 ? 0 : server_error(c);
    if (r == 0)
        printf("%s\n%s%s", status, details ? details : "", details ? "\n" : "");
    free(details);
    ft_run_free(run);
    return r;
}

static int cmd_logs(ft_client *c, int argc, char **argv)
{
    static const struct cmd_spec spec = {
        "logs", "EXPERIMENT RUN [--follow]",
        "Print the run's log; with --follow, stream it until the run ends.", 2, 2};
    int follow_flag = 0;
    const struct opt opts[] = {
        {"--follow", "-f", OPT_BOOL, &follow_flag, NULL, "stream new lines until the run ends"},
        {NULL, NULL, 0, NULL, NULL, NULL}};
    const char *pos[MAX_POS];
    int npos, r = parse_args(&spec, opts, argc, argv, pos, &npos);
    if (r != PARSE_OK)
        return parse_exit(r);
    ft_run *run = open_run(c, pos);
    char *text = NULL;
    if (!run)
        return EXIT_SERVER;
    if (follow_flag)
        r = follow(run);
    else if (ft_run_logs(run, &text) != 0)
        r = server_error(c);
    else
        fputs(text, stdout);
    free(text);
    ft_run_free(run);
    return r;
}

/* A number or "-" for a missing one, in a fixed-width column. */
static void print_cell(json_t *v)
{
    if (json_is_number(v))
        printf(" %12.5f", json_number_value(v));
    else
        printf(" %12s", "-");
}

/* metrics as two tables: before/after per metric, then one row per epoch. */
static int print_metrics_table(const char *text)
{
    json_t *m = json_loads(text, 0, NULL);
    if (!m)
        return print_json_text(text);
    json_t *before = json_object_get(m, "before"), *after = json_object_get(m, "after");
    json_t *epochs = json_object_get(m, "epochs"), *v;
    const char *key;
    json_t *names = json_object_size(after) ? after : before;
    if (json_object_size(names)) {
        printf("%-30s %12s %12s\n", "metric", "before", "after");
        json_object_foreach(names, key, v)
        {
            printf("%-30s", key);
            print_cell(json_object_get(before, key));
            print_cell(json_object_get(after, key));
            printf("\n");
        }
    }
    static const char *const cols[] = {"train_loss", "val_loss", "precision_at_k",
                                       "average_precision", "ndcg_at_k"};
    if (json_array_size(epochs))
        printf("\n%-6s", "epoch");
    for (size_t c = 0; json_array_size(epochs) && c < sizeof cols / sizeof cols[0]; c++)
        printf(" %12.12s", cols[c]);
    size_t i;
    json_t *e;
    json_array_foreach(epochs, i, e)
    {
        printf("\n%-6lld", (long long)json_integer_value(json_object_get(e, "epoch")));
        for (size_t c = 0; c < sizeof cols / sizeof cols[0]; c++) {
            json_t *cell = json_object_get(e, cols[c]);
            json_object_foreach(e, key, v) /* metrics are logged as <model>_<metric> */
            {
                size_t kl = strlen(key), cl = strlen(cols[c]);
                if (!cell && kl > cl && key[kl - cl - 1] == '_' &&
                    strcmp(key + kl - cl, cols[c]) == 0)
                    cell = v;
            }
            print_cell(cell);
        }
    }
    if (json_array_size(epochs))
        printf("\n");
    json_decref(m);
    return 0;
}

static int cmd_metrics(ft_client *c, int argc, char **argv)
{
    static const struct cmd_spec spec = {
        "metrics", "EXPERIMENT RUN [--json]",
        "Print the run's metrics: before/after evaluation, then one row per epoch (--json: the "
        "API's JSON).",
        2, 2};
    int json_flag = 0;
    const struct opt opts[] = {
        {"--json", NULL, OPT_BOOL, &json_flag, NULL, "print the JSON the API returns"},
        {NULL, NULL, 0, NULL, NULL, NULL}};
    const char *pos[MAX_POS];
    int npos, r = parse_args(&spec, opts, argc, argv, pos, &npos);
    if (r != PARSE_OK)
        return parse_exit(r);
    ft_run *run = open_run(c, pos);
    char *json = NULL;
    if (!run)
        return EXIT_SERVER;
    if (ft_run_metrics(run, &json) != 0)
        r = server_error(c);
    else
        r = json_flag ? print_json_text(json) : print_metrics_table(json);
    free(json);
    ft_run_free(run);
    return r;
}

static int cmd_examples(ft_client *c, int argc, char **argv)
{
    static const struct cmd_spec spec = {
        "examples", "EXPERIMENT RUN",
        "Print the example queries' top results before and after finetuning (JSON; from\n"
        "EvaluationCallbacks with gather_examples).",
        2, 2};
    const char *pos[MAX_POS];
    int npos, r = parse_args(&spec, NULL, argc, argv, pos, &npos);
    if (r != PARSE_OK)
        return parse_exit(r);
    ft_run *run = open_run(c, pos);
    char *json = NULL;
    if (!run)
        return EXIT_SERVER;
    r = ft_run_examples(run, &json) == 0 ? print_json_text(json) : server_error(c);
    free(json);
    ft_run_free(run);
    return r;
}

static int cmd_artifact(ft_client *c, int argc, char **argv)
{
    static const struct cmd_spec spec = {"artifact", "EXPERIMENT RUN -o PATH",
                                         "Download the finished run's model (safetensors) to PATH.",
                                         2, 2};
    const char *out = NULL;
    const struct opt opts[] = {
        {"--output", "-o", OPT_STR, &out, "PATH", "where to write the model (required)"},
        {NULL, NULL, 0, NULL, NULL, NULL}};
    const char *pos[MAX_POS];
    int npos, r = parse_args(&spec, opts, argc, argv, pos, &npos);
    if (r != PARSE_OK)
        return parse_exit(r);
    if (!out)
        return parse_exit(usage_error(&spec, "-o PATH is required"));
    ft_run *run = open_run(c, pos);
    if (!run)
        return EXIT_SERVER;
    r = ft_run_save_artifact(run, out) == 0 ? 0 : server_error(c);
    if (r == 0)
        printf("Saved the model of run %s to %s\n", ft_run_name(run), out);
    ft_run_free(run);
    return r;
}

static int cmd_cancel(ft_client *c, int argc, char **argv)
{
    static const struct cmd_spec spec = {"cancel", "EXPERIMENT RUN",
                                         "Cancel a CREATED or STARTED run.", 2, 2};
    const char *pos[MAX_POS];
    int npos, r = parse_args(&spec, NULL, argc, argv, pos, &npos);
    if (r != PARSE_OK)
        return parse_exit(r);
    ft_run *run = open_run(c, pos);
    if (!run)
        return EXIT_SERVER;
    r = ft_run_cancel(run) == 0 ? 0 : server_error(c);
    if (r == 0)
        printf("Run %s: %s\n", ft_run_name(run), ft_run_last_status(run));
    ft_run_free(run);
    return r;
}

static int cmd_runs(ft_client *c, int argc, char **argv)
{
    static const struct cmd_spec spec = {"runs", "EXPERIMENT [--limit N] [--offset N] [--json]",
                                         "List the experiment's runs.", 1, 1};
    static const char *const cols[] = {"name", "status", "created_at", "finished_at", "details"};
    static const int widths[] = {24, 9, 24, 24, 0};
    int limit = 0, offset = 0, as_json = 0;
    const struct opt opts[] = {
        {"--limit", NULL, OPT_POS_INT, &limit, "N", "at most N runs (default: 50)"},
        {"--offset", NULL, OPT_INT, &offset, "N", "skip the first N runs"},
        {"--json", NULL, OPT_BOOL, &as_json, NULL, "print the server's JSON"},
        {NULL, NULL, 0, NULL, NULL, NULL}};
    const char *pos[MAX_POS];
    int npos, r = parse_args(&spec, opts, argc, argv, pos, &npos);
    if (r != PARSE_OK)
        return parse_exit(r);
    char *json;
    if (ft_list_runs(c, pos[0], limit, offset, &json) != 0)
        return server_error(c);
    if (as_json)
        print_json_text(json);
    else
        print_table(json, "runs", cols, widths, 5);
    free(json);
    return 0;
}

static int cmd_delete(ft_client *c, int argc, char **argv)
{
    static const struct cmd_spec spec = {
        "delete", "EXPERIMENT RUN",
        "Delete a run with its logs, metrics and model (cancel a STARTED run first).", 2, 2};
    const char *pos[MAX_POS];
    int npos, r = parse_args(&spec, NULL, argc, argv, pos, &npos);
    if (r != PARSE_OK)
        return parse_exit(r);
    if (ft_delete_run(c, pos[0], pos[1]) != 0)
        return server_error(c);
    printf("Deleted run %s\n", pos[1]);
    return 0;
}

static int cmd_health(ft_client *c, int argc, char **argv)
{
    static const struct cmd_spec spec = {"health", "", "Check that the server answers.", 0, 0};
    const char *pos[MAX_POS];
    int npos, r = parse_args(&spec, NULL, argc, argv, pos, &npos);
    char *version;
    if (r != PARSE_OK)
        return parse_exit(r);
    if (ft_client_health(c, &version) != 0)
        return server_error(c);
    printf("ok (finetunerd %s)\n", version);
    free(version);
    return 0;
}

/* ---- datasets ---------------------------------------------------------------------------- */

static void print_dataset_summary(const char *text)
{
    json_t *o = json_loads(text, 0, NULL);
    printf("Dataset %s: %lld rows, %lld dims, %lld labels (%s, %lld bytes)\n",
           json_string_value(json_object_get(o, "name")),
           (long long)json_integer_value(json_object_get(o, "rows")),
           (long long)json_integer_value(json_object_get(o, "dims")),
           (long long)json_integer_value(json_object_get(o, "labels")),
           json_string_value(json_object_get(o, "format")),
           (long long)json_integer_value(json_object_get(o, "bytes")));
    json_decref(o);
}

static int cmd_dataset_push(ft_client *c, int argc, char **argv)
{
    static const struct cmd_spec spec = {
        "dataset push", "NAME --csv FILE | --images FILE --labels FILE",
        "Upload a dataset: a CSV (label first, then the features, one row per line) or a pair "
        "of IDX files\n(gzip'd or not, as Fashion-MNIST ships them).",
        1, 1};
    const char *csv = NULL, *images = NULL, *labels = NULL;
    const struct opt opts[] = {{"--csv", NULL, OPT_STR, &csv, "FILE", "a CSV file"},
                               {"--images", NULL, OPT_STR, &images, "FILE", "IDX images file"},
                               {"--labels", NULL, OPT_STR, &labels, "FILE", "IDX labels file"},
                               {NULL, NULL, 0, NULL, NULL, NULL}};
    const char *pos[MAX_POS];
    int npos, r = parse_args(&spec, opts, argc, argv, pos, &npos);
    if (r != PARSE_OK)
        return parse_exit(r);
    if (!csv == !(images || labels) || (!csv && (!images || !labels)))
        return parse_exit(usage_error(&spec, "give either --csv or both --images and --labels"));
    r = csv ? ft_dataset_push_csv(c, pos[0], csv) : ft_dataset_push_idx(c, pos[0], images, labels);
    if (r != 0)
        return server_error(c);
    print_dataset_summary(ft_client_last_response(c));
    return 0;
}

static int cmd_dataset_list(ft_client *c, int argc, char **argv)
{
    static const struct cmd_spec spec = {"dataset list", "[--json]", "List the datasets.", 0, 0};
    static const char *const cols[] = {"name",   "format", "rows",      "dims",
                                       "labels", "bytes",  "created_at"};
    static const int widths[] = {24, 6, 8, 6, 6, 10, 0};
    int as_json = 0;
    const struct opt opts[] = {
        {"--json", NULL, OPT_BOOL, &as_json, NULL, "print the server's JSON"},
        {NULL, NULL, 0, NULL, NULL, NULL}};
    const char *pos[MAX_POS];
    int npos, r = parse_args(&spec, opts, argc, argv, pos, &npos);
    char *json;
    if (r != PARSE_OK)
        return parse_exit(r);
    if (ft_dataset_list(c, &json) != 0)
        return server_error(c);
    if (as_json)
        print_json_text(json);
    else
        print_table(json, "datasets", cols, widths, 7);
    free(json);
    return 0;
}

static int cmd_dataset_delete(ft_client *c, int argc, char **argv)
{
    static const struct cmd_spec spec = {"dataset delete", "NAME", "Delete a dataset.", 1, 1};
    const char *pos[MAX_POS];
    int npos, r = parse_args(&spec, NULL, argc, argv, pos, &npos);
    if (r != PARSE_OK)
        return parse_exit(r);
    if (ft_dataset_delete(c, pos[0]) != 0)
        return server_error(c);
    printf("Deleted dataset %s\n", pos[0]);
    return 0;
}

typedef int (*cmd_fn)(ft_client *c, int argc, char **argv);

struct command {
    const char *name;
    cmd_fn fn;
    const char *summary;
};

static const struct command dataset_commands[] = {
    {"push", cmd_dataset_push, "upload a CSV or IDX dataset"},
    {"list", cmd_dataset_list, "list datasets"},
    {"delete", cmd_dataset_delete, "delete a dataset"},
};

static const struct command commands[] = {
    {"fit", cmd_fit, "submit a finetuning run"},
    {"status", cmd_status, "show a run's status"},
    {"logs", cmd_logs, "show or follow a run's log"},
    {"metrics", cmd_metrics, "show a run's metrics"},
    {"examples", cmd_examples, "show a run's example query results"},
    {"artifact", cmd_artifact, "download a finished run's model"},
    {"cancel", cmd_cancel, "cancel a run"},
    {"runs", cmd_runs, "list an experiment's runs"},
    {"delete", cmd_delete, "delete a run"},
    {"dataset", NULL, "push, list or delete datasets"},
    {"health", cmd_health, "check the server"},
};

static void print_usage(FILE *f)
{
    fprintf(f, "usage: finetuner [--url URL] [--token TOKEN] <command> [options]\n\n"
               "  --url URL      the finetunerd to talk to (default: $FINETUNER_URL or " DEFAULT_URL
               ")\n"
               "  --token TOKEN  access token, sent as 'Authorization: token TOKEN' (default:\n"
               "                 $FINETUNER_TOKEN; none when unset)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (commands[i].fn)
            fprintf(f, "  %-14s %s\n", commands[i].name, commands[i].summary);
    for (size_t i = 0; i < sizeof dataset_commands / sizeof dataset_commands[0]; i++)
        fprintf(f, "  dataset %-6s %s\n", dataset_commands[i].name, dataset_commands[i].summary);
    fprintf(f, "\nRun 'finetuner <command> --help' for a command's options.\n");
}

static int unknown(const char *what, const char *name)
{
    fprintf(stderr, "error: unknown %s '%s'\n", what, name);
    print_usage(stderr);
    return EXIT_USAGE;
}

static const struct command *find(const struct command *list, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(list[i].name, name) == 0)
            return &list[i];
    return NULL;
}

/* Run the command in argv[0] (with its arguments). */
static int dispatch(ft_client *c, int argc, char **argv)
{
    const struct command *cmd = find(commands, sizeof commands / sizeof commands[0], argv[0]);
    if (!cmd)
        return unknown("command", argv[0]);
    if (cmd->fn)
        return cmd->fn(c, argc - 1, argv + 1);
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        print_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : 0;
    }
    cmd = find(dataset_commands, sizeof dataset_commands / sizeof dataset_commands[0], argv[1]);
    if (!cmd)
        return unknown("dataset command", argv[1]);
    return cmd->fn(c, argc - 2, argv + 2);
}

int main(int argc, char **argv)
{
    const char *url = getenv("FINETUNER_URL");
    const char *token = getenv("FINETUNER_TOKEN");
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            print_usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--url") == 0 && i + 1 < argc) {
            url = argv[++i];
        } else if (strncmp(argv[i], "--url=", 6) == 0) {
            url = argv[i] + 6;
        } else if (strcmp(argv[i], "--token") == 0 && i + 1 < argc) {
            token = argv[++i];
        } else if (strncmp(argv[i], "--token=", 8) == 0) {
            token = argv[i] + 8;
        } else {
            return unknown("option", argv[i]);
        }
    }
    if (i == argc) {
        print_usage(stderr);
        return EXIT_USAGE;
    }
    ft_client *c = ft_client_new(url && url[0] ? url : DEFAULT_URL);
    if (!c) {
        fprintf(stderr, "error: out_of_memory: cannot create the client\n");
        return EXIT_SERVER;
    }
    if (ft_client_set_token(c, token) != 0) {
        fprintf(stderr, "error: %s: %s\n", ft_client_error_code(c), ft_client_error_message(c));
        ft_client_free(c);
        return EXIT_USAGE;
    }
    int rc = dispatch(c, argc - i, argv + i);
    ft_client_free(c);
    return rc;
}
