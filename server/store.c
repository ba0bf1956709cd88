/* store.c — SQLite persistence of access tokens, datasets, experiments, runs, run logs,
 * metrics and idempotency keys.
 *
 * One connection per process, WAL journal, busy timeout 10 s (the daemon and its workers write
 * the same file). Every public function takes the store mutex, so the daemon's HTTP threads
 * and scheduler never interleave statements or transactions on the shared connection. Every
 * query by name also filters by owner (the primary and unique keys start with it); status
 * changes are compare-and-swap UPDATEs guarded by the status they leave. */
#include "store.h"

#include "auth.h"
#include "log.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Prepared statements kept for reuse, keyed by their SQL text: a request's queries are the
 * same few every time, and preparing (parsing) them was a tenth of a status request. */
#define STMT_CACHE 64

struct cached_stmt {
    char *sql; /* owned copy of the key */
    uint64_t hash;
    sqlite3_stmt *st;
    int busy; /* handed out by prep, not yet given back by done */
};

/* One SQLite connection and its statements. */
struct conn {
    sqlite3 *db;
    struct cached_stmt cache[STMT_CACHE];
    int ncache;
    int reading;       /* a reader inside ft_store_read_begin/end */
    struct conn *next; /* in the store's list of readers */
};

/* The main connection serves every call under the mutex. A thread's GET reads
 * (ft_store_read_begin/end) go to that thread's own reader connection instead, without the
 * mutex: WAL readers do not wait for each other or for the writer, so the HTTP threads no
 * longer queue behind one another on the mutex. */
struct ft_store {
    struct conn main;
    char *dir, *dbpath;
    pthread_mutex_t mu;   /* guards main and readers */
    pthread_key_t reader; /* this thread's reader connection (struct conn *) */
    int has_key;
    struct conn *readers; /* every reader connection, closed with the store */
};

/* Schema version FT_STORE_SCHEMA_VERSION (PRAGMA user_version). Names are unique per owner. */
static const char *const schema =
    "CREATE TABLE IF NOT EXISTS tokens("
    "  name TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS datasets("
    "  owner TEXT NOT NULL, name TEXT NOT NULL, format TEXT NOT NULL, rows INTEGER NOT NULL,"
    "  dims INTEGER NOT NULL, labels INTEGER NOT NULL, bytes INTEGER NOT NULL,"
    "  created_at TEXT NOT NULL, PRIMARY KEY(owner, name));"
    "CREATE TABLE IF NOT EXISTS experiments("
    "  owner TEXT NOT NULL, name TEXT NOT NULL, created_at TEXT NOT NULL,"
    "  PRIMARY KEY(owner, name));"
    "CREATE TABLE IF NOT EXISTS runs("
    "  id INTEGER PRIMARY KEY AUTOINCREMENT, owner TEXT NOT NULL, experiment TEXT NOT NULL,"
    "  name TEXT NOT NULL, description TEXT, config TEXT NOT NULL,"
    "  status TEXT NOT NULL DEFAULT 'CREATED', details TEXT,"
    "  cancel_requested INTEGER NOT NULL DEFAULT 0, pid INTEGER,"
    "  created_at TEXT NOT NULL, started_at TEXT, finished_at TEXT,"
    "  UNIQUE(owner, experiment, name),"
    "  FOREIGN KEY(owner, experiment) REFERENCES experiments(owner, name));"
    "CREATE INDEX IF NOT EXISTS runs_by_status ON runs(status, owner);"
    "CREATE TABLE IF NOT EXISTS run_datasets("
    "  run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE, dataset TEXT NOT NULL);"
    "CREATE INDEX IF NOT EXISTS run_datasets_by_name ON run_datasets(dataset);"
    "CREATE TABLE IF NOT EXISTS logs("
    "  run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,"
    "  seq INTEGER NOT NULL, line TEXT NOT NULL, PRIMARY KEY(run_id, seq));"
    "CREATE TABLE IF NOT EXISTS metrics("
    "  run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,"
    "  phase TEXT NOT NULL, epoch INTEGER NOT NULL, data TEXT NOT NULL,"
    "  PRIMARY KEY(run_id, phase, epoch));"
    "CREATE TABLE IF NOT EXISTS idempotency("
    "  owner TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL,"
    "  status INTEGER, response TEXT, created_at TEXT NOT NULL, PRIMARY KEY(owner, key));";

#define FT_STR_(x) #x
#define FT_STR(x) FT_STR_(x)
#define NOW "strftime('%Y-%m-%dT%H:%M:%fZ','now')"
#define ACTIVE "('CREATED','STARTED')"

/* The connection this thread's store calls use: its reader inside a read transaction, else
 * the main one. */
static struct conn *C(ft_store *s)
{
    struct conn *r = s->has_key ? pthread_getspecific(s->reader) : NULL;
    return r && r->reading ? r : &s->main;
}

static void lock(ft_store *s)
{
    if (C(s) == &s->main)
        pthread_mutex_lock(&s->mu);
}

static void unlock(ft_store *s)
{
    if (C(s) == &s->main)
        pthread_mutex_unlock(&s->mu);
}

/* This thread's reader connection, opened on first use (NULL when it cannot be). */
static struct conn *reader(ft_store *s)
{
    struct conn *r = s->has_key ? pthread_getspecific(s->reader) : NULL;
    if (r || !s->has_key)
        return r;
    r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    if (sqlite3_open_v2(s->dbpath, &r->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX, NULL) !=
            SQLITE_OK ||
        sqlite3_exec(r->db, "PRAGMA query_only = 1", NULL, NULL, NULL) != SQLITE_OK) {
        ft_log(FT_LOG_WARN, "store", "cannot open a reader connection: %s",
               r->db ? sqlite3_errmsg(r->db) : "out of memory");
        sqlite3_close(r->db);
        free(r);
        return NULL;
    }
    sqlite3_busy_timeout(r->db, 10000);
    pthread_mutex_lock(&s->mu);
    r->next = s->readers;
    s->readers = r;
    pthread_mutex_unlock(&s->mu);
    pthread_setspecific(s->reader, r);
    return r;
}

void ft_store_read_begin(ft_store *s)
{
    struct conn *r = reader(s);
    if (r)
        r->reading = 1;
    lock(s); /* only without a reader: the main connection then */
    if (sqlite3_exec(C(s)->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
        ft_log(FT_LOG_WARN, "store", "BEGIN failed: %s", sqlite3_errmsg(C(s)->db));
}

void ft_store_read_end(ft_store *s)
{
    struct conn *c = C(s);
    if (!sqlite3_get_autocommit(c->db))
        sqlite3_exec(c->db, "COMMIT", NULL, NULL, NULL);
    unlock(s);
    c->reading = 0;
}

static enum ft_err db_error(ft_store *s, struct ft_error *err, const char *what)
{
    int rc = sqlite3_errcode(C(s)->db);
    ft_log(FT_LOG_ERROR, "store", "%s: %s", what, sqlite3_errmsg(C(s)->db));
    /* SQLITE_FULL: the disk is full (or RLIMIT_FSIZE); the transaction was rolled back */
    return ft_error_set(err, rc == SQLITE_FULL ? FT_ENOSPACE : FT_EDB, NULL,
                        "database error while %s: %s", what, sqlite3_errmsg(C(s)->db));
}

static uint64_t fnv1a(const char *p)
{
    uint64_t h = 1469598103934665603ull;
    for (; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    return h;
}

/* A statement for sql: a cached one not in use, else a new one (cached while there is room). */
static sqlite3_stmt *stmt_get(ft_store *s, const char *sql)
{
    struct conn *cn = C(s);
    uint64_t h = fnv1a(sql);
    for (int i = 0; i < cn->ncache; i++) {
        struct cached_stmt *c = &cn->cache[i];
        if (!c->busy && c->hash == h && strcmp(c->sql, sql) == 0) {
            c->busy = 1;
            return c->st;
        }
    }
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v3(cn->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL) != SQLITE_OK) {
        ft_log(FT_LOG_ERROR, "store", "prepare failed: %s: %s", sqlite3_errmsg(cn->db), sql);
        sqlite3_finalize(st);
        return NULL;
    }
    char *key = cn->ncache < STMT_CACHE ? strdup(sql) : NULL;
    if (key)
        cn->cache[cn->ncache++] = (struct cached_stmt){key, h, st, 1};
    return st;
}

/* Give back a statement from prep: a cached one is reset for the next use (ending its read),
 * another one finalized. NULL is a no-op. */
static void done(ft_store *s, sqlite3_stmt *st)
{
    struct conn *cn = C(s);
    if (!st)
        return;
    for (int i = 0; i < cn->ncache; i++) {
        if (cn->cache[i].st == st) {
            sqlite3_reset(st);
            sqlite3_clear_bindings(st);
            cn->cache[i].busy = 0;
            return;
        }
    }
    sqlite3_finalize(st);
}

/* Prepare sql (or reuse it) and bind the text arguments ("s") and integers ("i") given in
 * types. Give the statement back with done(). */
static sqlite3_stmt *prep(ft_store *s, const char *sql, const char *types, ...)
{
    sqlite3_stmt *st = stmt_get(s, sql);
    va_list ap;
    if (!st)
        return NULL;
    va_start(ap, types);
    for (int i = 0; types && types[i]; i++) {
        if (types[i] == 's') {
            const char *v = va_arg(ap, const char *);
            if (v)
                sqlite3_bind_text(st, i + 1, v, -1, SQLITE_TRANSIENT);
            else
                sqlite3_bind_null(st, i + 1);
        } else {
            sqlite3_bind_int64(st, i + 1, va_arg(ap, int64_t));
        }
    }
    va_end(ap);
    return st;
}

/* Run a statement that returns no rows and give it back; SQLITE_DONE on success. */
static int exec_stmt(ft_store *s, sqlite3_stmt *st)
{
    if (!st)
        return SQLITE_ERROR;
    int rc = sqlite3_step(st);
    done(s, st);
    return rc == SQLITE_ROW ? SQLITE_DONE : rc;
}

static char *path_join(const char *dir, const char *fmt, ...)
{
    char tail[512], *out;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tail, sizeof tail, fmt, ap);
    va_end(ap);
    size_t len = strlen(dir) + strlen(tail) + 2;
    out = malloc(len);
    if (out)
        snprintf(out, len, "%s/%s", dir, tail);
    return out;
}

static int mkdir_p(const char *path)
{
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                return -1;
            *p = '/';
        }
    }
    return mkdir(buf, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

/* The integer in the first column of sql's first row; -1 on error. */
static int64_t query_int(ft_store *s, const char *sql)
{
    sqlite3_stmt *st = prep(s, sql, NULL);
    int64_t v = st && sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
    done(s, st);
    return v;
}

/* The schema of a new database, or a check that an existing one has this version. */
static enum ft_err check_version(ft_store *s, const char *dbpath, struct ft_error *err)
{
    int64_t version = query_int(s, "PRAGMA user_version");
    int64_t tables =
        query_int(s, "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'runs'");
    char *msg = NULL;
    if (version < 0 || tables < 0)
        return db_error(s, err, "reading the schema version");
    if (version == FT_STORE_SCHEMA_VERSION)
        return FT_OK;
    if (version != 0 || tables > 0)
        return ft_error_set(err, FT_EDB, "data_dir",
                            "%s was made by %s finetunerd (database schema version %lld; this one "
                            "has version %d, where datasets, experiments and runs belong to the "
                            "user of an access token) and is not converted: move the data "
                            "directory away or delete it, and start afresh",
                            dbpath, version > FT_STORE_SCHEMA_VERSION ? "a newer" : "an older",
                            (long long)version, FT_STORE_SCHEMA_VERSION);
    if (sqlite3_exec(C(s)->db, schema, NULL, NULL, &msg) != SQLITE_OK ||
        sqlite3_exec(C(s)->db, "PRAGMA user_version = " FT_STR(FT_STORE_SCHEMA_VERSION), NULL, NULL,
                     &msg) != SQLITE_OK) {
        ft_error_set(err, FT_EDB, "data_dir", "cannot create the schema in %s: %s", dbpath,
                     msg ? msg : "?");
        sqlite3_free(msg);
        return FT_EDB;
    }
    return FT_OK;
}

/* WAL and foreign keys on this connection, then the schema check in one write transaction
 * (so a daemon and a `finetunerd token` starting together create it once). */
static enum ft_err init_schema(ft_store *s, const char *dbpath, struct ft_error *err)
{
    if (sqlite3_exec(C(s)->db, "PRAGMA journal_mode=WAL; PRAGMA foreign_keys=ON;", NULL, NULL,
                     NULL) != SQLITE_OK ||
        sqlite3_exec(C(s)->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return ft_error_set(err, FT_EDB, "data_dir", "cannot open %s: %s", dbpath,
                            sqlite3_errmsg(C(s)->db));
    enum ft_err e = check_version(s, dbpath, err);
    sqlite3_exec(C(s)->db, e == FT_OK ? "COMMIT" : "ROLLBACK", NULL, NULL, NULL);
    return e;
}

enum ft_err ft_store_open(const char *data_dir, ft_store **out, struct ft_error *err)
{
    ft_store *s = calloc(1, sizeof *s);
    char *dbpath = NULL, *dsdir = NULL, *rundir = NULL;
    enum ft_err e = FT_OK;
    *out = NULL;
    if (!s || !(s->dir = strdup(data_dir)))
        e = ft_error_set(err, FT_ENOMEM, NULL, "out of memory");
    if (e == FT_OK) {
        /* recursive: a request's read transaction (ft_store_read_begin) holds it around the
         * store calls of its handler, which take it again */
        pthread_mutexattr_t ma;
        pthread_mutexattr_init(&ma);
        pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_RECURSIVE);
        pthread_mutex_init(&s->mu, &ma);
        pthread_mutexattr_destroy(&ma);
        dbpath = path_join(data_dir, "finetunerd.db");
        dsdir = path_join(data_dir, "datasets");
        rundir = path_join(data_dir, "runs");
        if (!dbpath || !dsdir || !rundir)
            e = ft_error_set(err, FT_ENOMEM, NULL, "out of memory");
    }
    if (e == FT_OK && (mkdir_p(data_dir) || mkdir_p(dsdir) || mkdir_p(rundir)))
        e = ft_error_set(err, FT_EIO, "data_dir", "cannot create data directory %s: %s", data_dir,
                         strerror(errno));
    if (e == FT_OK &&
        sqlite3_open_v2(dbpath, &s->main.db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                        NULL) != SQLITE_OK)
        e = ft_error_set(err, FT_EDB, "data_dir", "cannot open %s: %s", dbpath,
                         s->main.db ? sqlite3_errmsg(s->main.db) : "out of memory");
    if (e == FT_OK) {
        sqlite3_busy_timeout(s->main.db, 10000);
        e = init_schema(s, dbpath, err);
    }
    if (e == FT_OK && pthread_key_create(&s->reader, NULL) == 0)
        s->has_key = 1; /* without it every call takes the main connection */
    if (s)
        s->dbpath = dbpath; /* readers open it too */
    else
        free(dbpath);
    free(dsdir);
    free(rundir);
    if (e != FT_OK) {
        ft_store_close(s);
        return e;
    }
    *out = s;
    return FT_OK;
}

static void conn_close(struct conn *c)
{
    for (int i = 0; i < c->ncache; i++) {
        sqlite3_finalize(c->cache[i].st);
        free(c->cache[i].sql);
    }
    if (c->db)
        sqlite3_close(c->db);
}

void ft_store_close(ft_store *s)
{
    if (!s)
        return;
    for (struct conn *r = s->readers, *next; r; r = next) {
        next = r->next;
        conn_close(r);
        free(r);
    }
    if (s->has_key)
        pthread_key_delete(s->reader);
    conn_close(&s->main);
    if (s->dir)
        pthread_mutex_destroy(&s->mu);
    free(s->dbpath);
    free(s->dir);
    free(s);
}

const char *ft_store_dir(const ft_store *s)
{
    return s->dir;
}

int ft_store_valid_name(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > 100 || name[0] == '.')
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '.' || c == '_' || c == '-';
        if (!ok)
            return 0;
    }
    return 1;
}

/* ---- JSON from rows ---- */

static json_t *col_json(sqlite3_stmt *st, int i)
{
    switch (sqlite3_column_type(st, i)) {
    case SQLITE_INTEGER:
        return json_integer(sqlite3_column_int64(st, i));
    case SQLITE_FLOAT:
        return json_real(sqlite3_column_double(st, i));
    case SQLITE_NULL:
        return json_null();
    default:
        return json_string((const char *)sqlite3_column_text(st, i));
    }
}

/* The current row as an object keyed by column names. */
static json_t *row_json(sqlite3_stmt *st)
{
    json_t *o = json_object();
    for (int i = 0; i < sqlite3_column_count(st); i++)
        json_object_set_new(o, sqlite3_column_name(st, i), col_json(st, i));
    return o;
}

/* All rows as an array (NULL on error). Gives st back. */
static json_t *rows_json(ft_store *s, sqlite3_stmt *st)
{
    json_t *arr = json_array();
    int rc;
    if (!st) {
        json_decref(arr);
        return NULL;
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        json_array_append_new(arr, row_json(st));
    done(s, st);
    if (rc != SQLITE_DONE) {
        json_decref(arr);
        return NULL;
    }
    return arr;
}

/* The first row as an object, or NULL when there is none. Gives st back. */
static json_t *one_json(ft_store *s, sqlite3_stmt *st)
{
    json_t *o = NULL;
    if (st && sqlite3_step(st) == SQLITE_ROW)
        o = row_json(st);
    done(s, st);
    return o;
}

/* ---- datasets ---- */

#define DATASET_COLS "name, format, rows, dims, labels, bytes, created_at"

char *ft_store_dataset_path(const ft_store *s, const char *owner, const char *name)
{
    char hash[FT_SHA256_HEX];
    ft_sha256_hex(owner, strlen(owner), hash);
    return path_join(s->dir, "datasets/%.32s-%s.safetensors", hash, name);
}

enum ft_err ft_store_dataset_insert(ft_store *s, const char *owner,
                                    const struct ft_dataset_info *info, struct ft_error *err)
{
    lock(s);
    int rc = exec_stmt(
        s, prep(s, "INSERT INTO datasets(owner, " DATASET_COLS ") VALUES(?,?,?,?,?,?,?," NOW ")",
                "sssiiii", owner, info->name, info->format, info->rows, (int64_t)info->dims,
                (int64_t)info->labels, info->bytes));
    enum ft_err e = FT_OK;
    if (rc == SQLITE_CONSTRAINT)
        e = ft_error_set(err, FT_ECONFLICT, "name",
                         "dataset '%s' already exists; delete it first or pick another name",
                         info->name);
    else if (rc != SQLITE_DONE)
        e = db_error(s, err, "storing the dataset");
    unlock(s);
    return e;
}

enum ft_err ft_store_dataset_get(ft_store *s, const char *owner, const char *name, json_t **out,
                                 struct ft_error *err)
{
    lock(s);
    *out = one_json(s, prep(s, "SELECT " DATASET_COLS " FROM datasets WHERE owner = ? AND name = ?",
                            "ss", owner, name));
    unlock(s);
    if (!*out)
        return ft_error_set(err, FT_ENOT_FOUND, "dataset", "dataset '%s' does not exist", name);
    return FT_OK;
}

json_t *ft_store_dataset_list(ft_store *s, const char *owner)
{
    lock(s);
    json_t *a =
        rows_json(s, prep(s, "SELECT " DATASET_COLS " FROM datasets WHERE owner = ? ORDER BY name",
                          "s", owner));
    unlock(s);
    return a;
}

enum ft_err ft_store_dataset_delete(ft_store *s, const char *owner, const char *name,
                                    struct ft_error *err)
{
    enum ft_err e = FT_OK;
    lock(s);
    json_t *used = one_json(s, prep(s,
                                    "SELECT r.name AS run, r.experiment FROM run_datasets d "
                                    "JOIN runs r ON r.id = d.run_id WHERE d.dataset = ? AND "
                                    "r.owner = ? AND r.status IN " ACTIVE " LIMIT 1",
                                    "ss", name, owner));
    if (used) {
        e = ft_error_set(err, FT_ECONFLICT, "dataset",
                         "dataset '%s' is used by run '%s' of experiment '%s', which has not "
                         "ended; cancel it first",
                         name, json_string_value(json_object_get(used, "run")),
                         json_string_value(json_object_get(used, "experiment")));
        json_decref(used);
    } else {
        int rc = exec_stmt(
            s, prep(s, "DELETE FROM datasets WHERE owner = ? AND name = ?", "ss", owner, name));
        if (rc != SQLITE_DONE)
            e = db_error(s, err, "deleting the dataset");
        else if (sqlite3_changes(C(s)->db) == 0)
            e = ft_error_set(err, FT_ENOT_FOUND, "dataset", "dataset '%s' does not exist", name);
    }
    if (e == FT_OK) {
        char *path = ft_store_dataset_path(s, owner, name);
        if (path)
            unlink(path);
        free(path);
    }
    unlock(s);
    return e;
}

/* ---- experiments ---- */

static enum ft_err ensure_locked(ft_store *s, const char *owner, const char *name, int *created,
                                 struct ft_error *err)
{
    int rc = exec_stmt(s, prep(s,
                               "INSERT OR IGNORE INTO experiments(owner, name, created_at) "
                               "VALUES(?, ?, " NOW ")",
                               "ss", owner, name));
    if (rc != SQLITE_DONE)
        return db_error(s, err, "creating the experiment");
    if (created)
        *created = sqlite3_changes(C(s)->db) > 0;
    return FT_OK;
}

enum ft_err ft_store_experiment_ensure(ft_store *s, const char *owner, const char *name,
                                       int *created, struct ft_error *err)
{
    lock(s);
    enum ft_err e = ensure_locked(s, owner, name, created, err);
    unlock(s);
    return e;
}

#define EXPERIMENT_SELECT                                                                    \
    "SELECT e.name, e.created_at, (SELECT COUNT(*) FROM runs r WHERE r.owner = e.owner AND " \
    "r.experiment = e.name) AS num_runs FROM experiments e"

enum ft_err ft_store_experiment_get(ft_store *s, const char *owner, const char *name, json_t **out,
                                    struct ft_error *err)
{
    lock(s);
    *out = one_json(
        s, prep(s, EXPERIMENT_SELECT " WHERE e.owner = ? AND e.name = ?", "ss", owner, name));
    unlock(s);
    if (!*out)
        return ft_error_set(err, FT_ENOT_FOUND, "experiment", "experiment '%s' does not exist",
                            name);
    return FT_OK;
}

json_t *ft_store_experiment_list(ft_store *s, const char *owner)
{
    lock(s);
    json_t *a =
        rows_json(s, prep(s, EXPERIMENT_SELECT " WHERE e.owner = ? ORDER BY e.name", "s", owner));
    unlock(s);
    return a;
}

static void remove_run_files(ft_store *s, int64_t id)
{
    char *dir = ft_store_run_dir(s, id);
    DIR *d = dir ? opendir(dir) : NULL;
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        char *p = path_join(dir, "%s", de->d_name);
        if (p)
            unlink(p);
        free(p);
    }
    if (d) {
        closedir(d);
        rmdir(dir);
    }
    free(dir);
}

enum ft_err ft_store_experiment_delete(ft_store *s, const char *owner, const char *name,
                                       struct ft_error *err)
{
    enum ft_err e = FT_OK;
    lock(s);
    json_t *active =
        one_json(s, prep(s,
                         "SELECT name FROM runs WHERE owner = ? AND experiment = ? AND "
                         "status IN " ACTIVE " LIMIT 1",
                         "ss", owner, name));
    json_t *ids = rows_json(
        s, prep(s, "SELECT id FROM runs WHERE owner = ? AND experiment = ?", "ss", owner, name));
    if (active) {
        e = ft_error_set(err, FT_ECONFLICT, "experiment",
                         "experiment '%s' has run '%s', which has not ended; cancel it first", name,
                         json_string_value(json_object_get(active, "name")));
    } else if (exec_stmt(s, prep(s, "DELETE FROM runs WHERE owner = ? AND experiment = ?", "ss",
                                 owner, name)) != SQLITE_DONE ||
               exec_stmt(s, prep(s, "DELETE FROM experiments WHERE owner = ? AND name = ?", "ss",
                                 owner, name)) != SQLITE_DONE) {
        e = db_error(s, err, "deleting the experiment");
    } else if (sqlite3_changes(C(s)->db) == 0) {
        e = ft_error_set(err, FT_ENOT_FOUND, "experiment", "experiment '%s' does not exist", name);
    } else {
        size_t i;
        json_t *row;
        json_array_foreach(ids, i, row)
        {
            remove_run_files(s, json_integer_value(json_object_get(row, "id")));
        }
    }
    json_decref(active);
    json_decref(ids);
    unlock(s);
    return e;
}

/* ---- runs ---- */

/* A free "run-<n>" name in the experiment of sub (into buf). */
static void auto_run_name(ft_store *s, const struct ft_run_submission *sub, char *buf, size_t cap)
{
    json_t *r = one_json(s, prep(s, "SELECT COALESCE(MAX(id), 0) + 1 AS n FROM runs", NULL));
    int64_t n = r ? json_integer_value(json_object_get(r, "n")) : 1;
    json_decref(r);
    for (;; n++) { /* a user may have named a run "run-<n>" already */
        snprintf(buf, cap, "run-%lld", (long long)n);
        json_t *taken = one_json(
            s, prep(s, "SELECT 1 FROM runs WHERE owner = ? AND experiment = ? AND name = ?", "sss",
                    sub->owner, sub->experiment, buf));
        if (!taken)
            break;
        json_decref(taken);
    }
}

/* FT_ETOO_MANY when sub's owner has max_queued CREATED runs already. */
static enum ft_err check_queue_room(ft_store *s, const struct ft_run_submission *sub,
                                    struct ft_error *err)
{
    if (sub->max_queued <= 0)
        return FT_OK;
    json_t *r =
        one_json(s, prep(s, "SELECT COUNT(*) AS n FROM runs WHERE status = 'CREATED' AND owner = ?",
                         "s", sub->owner));
    if (!r)
        return db_error(s, err, "counting queued runs");
    int64_t n = json_integer_value(json_object_get(r, "n"));
    json_decref(r);
    if (n >= sub->max_queued)
        return ft_error_set(err, FT_ETOO_MANY, NULL,
                            "%lld runs of yours are queued (CREATED), the most this server takes "
                            "(--max-queued-runs %d); wait until some start, or cancel some",
                            (long long)n, sub->max_queued);
    return FT_OK;
}

/* The datasets of the run, checked again here, in the transaction: a dataset deleted since
 * the request was validated must not leave a run that can never load it. */
static enum ft_err insert_run_datasets(ft_store *s, const struct ft_run_submission *sub, int64_t id,
                                       struct ft_error *err)
{
    for (int i = 0; i < sub->num_datasets; i++) {
        json_t *ds = one_json(s, prep(s, "SELECT 1 FROM datasets WHERE owner = ? AND name = ?",
                                      "ss", sub->owner, sub->datasets[i]));
        if (!ds)
            return ft_error_set(err, FT_EINVAL, "config",
                                "dataset '%s' does not exist (it was deleted meanwhile)",
                                sub->datasets[i]);
        json_decref(ds);
        if (exec_stmt(s, prep(s, "INSERT INTO run_datasets(run_id, dataset) VALUES(?, ?)", "is", id,
                              sub->datasets[i])) != SQLITE_DONE)
            return db_error(s, err, "storing the run's datasets");
    }
    return FT_OK;
}

static enum ft_err insert_run_locked(ft_store *s, const struct ft_run_submission *sub, int64_t *id,
                                     struct ft_error *err)
{
    char auto_name[64];
    const char *name = sub->name;
    enum ft_err e = check_queue_room(s, sub, err);
    if (e != FT_OK)
        return e;
    if (!name) {
        auto_run_name(s, sub, auto_name, sizeof auto_name);
        name = auto_name;
    }
    int rc = exec_stmt(s, prep(s,
                               "INSERT INTO runs(owner, experiment, name, description, config, "
                               "created_at) VALUES(?, ?, ?, ?, ?, " NOW ")",
                               "sssss", sub->owner, sub->experiment, name, sub->description,
                               sub->config_json));
    if (rc == SQLITE_CONSTRAINT)
        return ft_error_set(err, FT_ECONFLICT, "name", "run '%s' already exists in experiment '%s'",
                            name, sub->experiment);
    if (rc != SQLITE_DONE)
        return db_error(s, err, "storing the run");
    *id = sqlite3_last_insert_rowid(C(s)->db);
    return insert_run_datasets(s, sub, *id, err);
}

enum ft_err ft_store_run_insert(ft_store *s, const struct ft_run_submission *sub, int64_t *id,
                                struct ft_error *err)
{
    lock(s);
    enum ft_err e = FT_OK;
    if (sqlite3_exec(C(s)->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        e = db_error(s, err, "starting a transaction");
    if (e == FT_OK)
        e = ensure_locked(s, sub->owner, sub->experiment, NULL, err);
    if (e == FT_OK)
        e = insert_run_locked(s, sub, id, err);
    if (e == FT_OK && sqlite3_exec(C(s)->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        e = db_error(s, err, "committing the run");
    if (e != FT_OK)
        sqlite3_exec(C(s)->db, "ROLLBACK", NULL, NULL, NULL);
    unlock(s);
    return e;
}

enum ft_err ft_store_run_find(ft_store *s, const char *owner, const char *experiment,
                              const char *name, int64_t *id, struct ft_error *err)
{
    lock(s);
    json_t *r =
        one_json(s, prep(s, "SELECT id FROM runs WHERE owner = ? AND experiment = ? AND name = ?",
                         "sss", owner, experiment, name));
    json_t *ex = r ? NULL
                   : one_json(s, prep(s, "SELECT 1 FROM experiments WHERE owner = ? AND name = ?",
                                      "ss", owner, experiment));
    unlock(s);
    if (!r) {
        enum ft_err e =
            ex ? ft_error_set(err, FT_ENOT_FOUND, "run",
                              "run '%s' does not exist in experiment '%s'", name, experiment)
               : ft_error_set(err, FT_ENOT_FOUND, "experiment", "experiment '%s' does not exist",
                              experiment);
        json_decref(ex);
        return e;
    }
    *id = json_integer_value(json_object_get(r, "id"));
    json_decref(r);
    return FT_OK;
}

enum ft_err ft_store_run_owner(ft_store *s, int64_t id, char owner[FT_OWNER_MAX],
                               struct ft_error *err)
{
    lock(s);
    json_t *r = one_json(s, prep(s, "SELECT owner FROM runs WHERE id = ?", "i", id));
    unlock(s);
    if (!r)
        return ft_error_set(err, FT_ENOT_FOUND, "run", "run %lld does not exist", (long long)id);
    snprintf(owner, FT_OWNER_MAX, "%s", json_string_value(json_object_get(r, "owner")));
    json_decref(r);
    return FT_OK;
}

#define RUN_SELECT                                                                            \
    "SELECT name, experiment, description, status, details, config, created_at, started_at, " \
    "finished_at FROM runs"

/* Turn the stored config text into JSON in place. */
static void expand_config(json_t *run)
{
    const char *text = json_string_value(json_object_get(run, "config"));
    json_t *cfg = text ? json_loads(text, 0, NULL) : NULL;
    json_object_set_new(run, "config", cfg ? cfg : json_null());
}

enum ft_err ft_store_run_get(ft_store *s, int64_t id, json_t **out, struct ft_error *err)
{
    lock(s);
    *out = one_json(s, prep(s, RUN_SELECT " WHERE id = ?", "i", id));
    unlock(s);
    if (!*out)
        return ft_error_set(err, FT_ENOT_FOUND, "run", "run %lld does not exist", (long long)id);
    expand_config(*out);
    return FT_OK;
}

enum ft_err ft_store_run_list(ft_store *s, const char *owner, const char *experiment, int limit,
                              int offset, json_t **out, struct ft_error *err)
{
    lock(s);
    json_t *ex =
        one_json(s, prep(s, "SELECT COUNT(*) AS n FROM experiments WHERE owner = ? AND name = ?",
                         "ss", owner, experiment));
    json_t *total =
        one_json(s, prep(s, "SELECT COUNT(*) AS n FROM runs WHERE owner = ? AND experiment = ?",
                         "ss", owner, experiment));
    json_t *runs = rows_json(
        s, prep(s, RUN_SELECT " WHERE owner = ? AND experiment = ? ORDER BY id LIMIT ? OFFSET ?",
                "ssii", owner, experiment, (int64_t)limit, (int64_t)offset));
    unlock(s);
    enum ft_err e = FT_OK;
    if (!ex || !total || !runs)
        e = db_error(s, err, "listing runs");
    else if (json_integer_value(json_object_get(ex, "n")) == 0)
        e = ft_error_set(err, FT_ENOT_FOUND, "experiment", "experiment '%s' does not exist",
                         experiment);
    if (e == FT_OK) {
        size_t i;
        json_t *r;
        json_array_foreach(runs, i, r)
        {
            expand_config(r);
        }
        *out = json_pack("{s:O, s:O, s:i, s:i}", "runs", runs, "total", json_object_get(total, "n"),
                         "limit", limit, "offset", offset);
    }
    json_decref(ex);
    json_decref(total);
    json_decref(runs);
    return e;
}

enum ft_err ft_store_run_status(ft_store *s, int64_t id, char *status, char **details,
                                struct ft_error *err)
{
    lock(s);
    json_t *r = one_json(s, prep(s, "SELECT status, details FROM runs WHERE id = ?", "i", id));
    unlock(s);
    if (!r)
        return ft_error_set(err, FT_ENOT_FOUND, "run", "run %lld does not exist", (long long)id);
    snprintf(status, 16, "%s", json_string_value(json_object_get(r, "status")));
    if (details) {
        const char *d = json_string_value(json_object_get(r, "details"));
        *details = d ? strdup(d) : NULL;
    }
    json_decref(r);
    return FT_OK;
}

enum ft_err ft_store_run_config(ft_store *s, int64_t id, char **config, struct ft_error *err)
{
    lock(s);
    json_t *r = one_json(s, prep(s, "SELECT config FROM runs WHERE id = ?", "i", id));
    unlock(s);
    if (!r)
        return ft_error_set(err, FT_ENOT_FOUND, "run", "run %lld does not exist", (long long)id);
    *config = strdup(json_string_value(json_object_get(r, "config")));
    json_decref(r);
    return *config ? FT_OK : ft_error_set(err, FT_ENOMEM, NULL, "out of memory");
}

/* The run's name for a message (static buffer; called with the lock held). */
static const char *run_name(ft_store *s, int64_t id)
{
    static __thread char name[128];
    json_t *r = one_json(s, prep(s, "SELECT name FROM runs WHERE id = ?", "i", id));
    snprintf(name, sizeof name, "%s", r ? json_string_value(json_object_get(r, "name")) : "?");
    json_decref(r);
    return name;
}

enum ft_err ft_store_run_cancel(ft_store *s, int64_t id, struct ft_error *err)
{
    enum ft_err e = FT_OK;
    lock(s);
    int rc =
        exec_stmt(s, prep(s,
                          "UPDATE runs SET status = 'CANCELED', details = 'canceled before it "
                          "started', finished_at = " NOW " WHERE id = ? AND status = 'CREATED'",
                          "i", id));
    if (rc == SQLITE_DONE && sqlite3_changes(C(s)->db) == 0)
        rc = exec_stmt(s, prep(s,
                               "UPDATE runs SET cancel_requested = 1, details = 'cancel requested; "
                               "the run stops at "
                               "the next batch' WHERE id = ? AND status = "
                               "'STARTED'",
                               "i", id));
    if (rc != SQLITE_DONE)
        e = db_error(s, err, "canceling the run");
    else if (sqlite3_changes(C(s)->db) == 0)
        e = ft_error_set(err, FT_ECONFLICT, "run", "run '%s' has already ended", run_name(s, id));
    unlock(s);
    return e;
}

int ft_store_run_cancel_requested(ft_store *s, int64_t id)
{
    lock(s);
    json_t *r = one_json(s, prep(s, "SELECT cancel_requested FROM runs WHERE id = ?", "i", id));
    unlock(s);
    int yes = r && json_integer_value(json_object_get(r, "cancel_requested"));
    json_decref(r);
    return yes;
}

enum ft_err ft_store_run_delete(ft_store *s, int64_t id, struct ft_error *err)
{
    enum ft_err e = FT_OK;
    lock(s);
    int rc =
        exec_stmt(s, prep(s, "DELETE FROM runs WHERE id = ? AND status != 'STARTED'", "i", id));
    if (rc != SQLITE_DONE)
        e = db_error(s, err, "deleting the run");
    else if (sqlite3_changes(C(s)->db) == 0)
        e = ft_error_set(err, FT_ECONFLICT, "run",
                         "run '%s' is running; cancel it before deleting it", run_name(s, id));
    else
        remove_run_files(s, id);
    unlock(s);
    return e;
}

enum ft_err ft_store_run_claim_next(ft_store *s, int64_t *id, struct ft_error *err)
{
    enum ft_err e = FT_OK;
    lock(s);
    sqlite3_exec(C(s)->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    json_t *r = one_json(
        s, prep(s, "SELECT id FROM runs WHERE status = 'CREATED' ORDER BY id LIMIT 1", NULL));
    if (!r) {
        e = FT_ENOT_FOUND;
    } else {
        *id = json_integer_value(json_object_get(r, "id"));
        if (exec_stmt(s, prep(s,
                              "UPDATE runs SET status = 'STARTED', started_at = " NOW
                              " WHERE id = ? AND status = 'CREATED'",
                              "i", *id)) != SQLITE_DONE)
            e = db_error(s, err, "starting a run");
        else if (sqlite3_changes(C(s)->db) != 1)
            e = FT_ENOT_FOUND; /* canceled meanwhile: never start a run that is not CREATED */
    }
    sqlite3_exec(C(s)->db, e == FT_OK ? "COMMIT" : "ROLLBACK", NULL, NULL, NULL);
    unlock(s);
    json_decref(r);
    return e;
}

void ft_store_run_set_pid(ft_store *s, int64_t id, pid_t pid)
{
    lock(s);
    exec_stmt(s, prep(s, "UPDATE runs SET pid = ? WHERE id = ?", "ii", (int64_t)pid, id));
    unlock(s);
}

enum ft_err ft_store_run_finish(ft_store *s, int64_t id, const char *status, const char *details)
{
    lock(s);
    /* a cancel accepted while the run was STARTED wins over a FINISHED that comes after it
     * (the cancel answered 200: the run must end CANCELED), in the same statement */
    int rc = exec_stmt(s, prep(s,
                               "UPDATE runs SET status = CASE WHEN ?1 = 'FINISHED' AND "
                               "cancel_requested = 1 THEN 'CANCELED' ELSE ?1 END, details = CASE "
                               "WHEN ?1 = 'FINISHED' AND cancel_requested = 1 THEN 'canceled as "
                               "its training ended' ELSE ?2 END, "
                               "finished_at = " NOW " WHERE id = ?3 AND status IN " ACTIVE,
                               "ssi", status, details, id));
    int changed = rc == SQLITE_DONE ? sqlite3_changes(C(s)->db) : 0;
    unlock(s);
    if (rc != SQLITE_DONE)
        return FT_EDB;
    return changed ? FT_OK : FT_ECONFLICT;
}

/* STARTED -> CREATED with a log line (lock held). */
static void requeue_locked(ft_store *s, int64_t id, const char *why)
{
    /* logs and metrics stay: the worker goes on from the run's resume state and drops the
     * metrics after it (server/worker.c) */
    exec_stmt(s, prep(s,
                      "INSERT INTO logs(run_id, seq, line) VALUES(?, (SELECT COALESCE(MAX(seq), 0) "
                      "+ 1 FROM logs WHERE run_id = ?1), ?)",
                      "is", id, why));
    /* its cancel was asked for: it ends here rather than being queued to stop again */
    exec_stmt(s, prep(s,
                      "UPDATE runs SET status = 'CANCELED', details = 'canceled while its worker "
                      "was interrupted', finished_at = " NOW ", pid = NULL "
                      "WHERE id = ? AND status = 'STARTED' AND cancel_requested = 1",
                      "i", id));
    exec_stmt(s, prep(s,
                      "UPDATE runs SET status = 'CREATED', started_at = NULL, pid = NULL "
                      "WHERE id = ? AND status = 'STARTED'",
                      "i", id));
}

void ft_store_run_requeue(ft_store *s, int64_t id, const char *why)
{
    lock(s);
    requeue_locked(s, id, why);
    unlock(s);
}

int ft_store_runs_requeue_started(ft_store *s, const char *why)
{
    lock(s);
    json_t *ids = rows_json(s, prep(s, "SELECT id FROM runs WHERE status = 'STARTED'", NULL));
    size_t i;
    json_t *row;
    json_array_foreach(ids, i, row)
    {
        requeue_locked(s, json_integer_value(json_object_get(row, "id")), why);
    }
    unlock(s);
    int n = (int)json_array_size(ids);
    json_decref(ids);
    return n;
}

int ft_store_runs_started(ft_store *s, int64_t *ids, pid_t *pids, int cap)
{
    int n = 0;
    lock(s);
    sqlite3_stmt *st =
        prep(s, "SELECT id, COALESCE(pid, 0) FROM runs WHERE status = 'STARTED'", NULL);
    while (st && n < cap && sqlite3_step(st) == SQLITE_ROW) {
        ids[n] = sqlite3_column_int64(st, 0);
        pids[n++] = (pid_t)sqlite3_column_int64(st, 1);
    }
    done(s, st);
    unlock(s);
    return n;
}

char *ft_store_run_dir(const ft_store *s, int64_t id)
{
    return path_join(s->dir, "runs/%lld", (long long)id);
}

char *ft_store_artifact_path(const ft_store *s, int64_t id)
{
    return path_join(s->dir, "runs/%lld/model.safetensors", (long long)id);
}

/* ---- logs and metrics ---- */

void ft_store_log_append(ft_store *s, int64_t id, const char *line)
{
    lock(s);
    exec_stmt(s, prep(s,
                      "INSERT INTO logs(run_id, seq, line) VALUES(?, (SELECT COALESCE(MAX(seq), 0) "
                      "+ 1 FROM logs WHERE run_id = ?1), ?)",
                      "is", id, line));
    unlock(s);
}

char *ft_store_logs_since(ft_store *s, int64_t id, int64_t after, int64_t *last_seq)
{
    size_t len = 0, cap = 4096;
    char *buf = malloc(cap);
    if (!buf)
        return NULL;
    buf[0] = '\0';
    lock(s);
    sqlite3_stmt *st = prep(
        s, "SELECT seq, line FROM logs WHERE run_id = ? AND seq > ? ORDER BY seq", "ii", id, after);
    while (st && sqlite3_step(st) == SQLITE_ROW) {
        const char *line = (const char *)sqlite3_column_text(st, 1);
        size_t n = strlen(line);
        if (len + n + 2 > cap) {
            while (len + n + 2 > cap)
                cap *= 2;
            char *nb = realloc(buf, cap);
            if (!nb)
                break;
            buf = nb;
        }
        memcpy(buf + len, line, n);
        len += n;
        buf[len++] = '\n';
        buf[len] = '\0';
        if (last_seq)
            *last_seq = sqlite3_column_int64(st, 0);
    }
    done(s, st);
    unlock(s);
    return buf;
}

void ft_store_metrics_put(ft_store *s, int64_t id, const char *phase, int epoch, json_t *values)
{
    char *text = json_dumps(values, JSON_COMPACT);
    if (!text)
        return;
    lock(s);
    exec_stmt(s,
              prep(s, "INSERT OR REPLACE INTO metrics(run_id, phase, epoch, data) VALUES(?,?,?,?)",
                   "isis", id, phase, (int64_t)epoch, text));
    unlock(s);
    free(text);
}

json_t *ft_store_metrics_get(ft_store *s, int64_t id)
{
    json_t *out = json_pack("{s:{}, s:{}, s:[], s:[]}", "before", "after", "epochs", "steps");
    lock(s);
    sqlite3_stmt *st = prep(s,
                            "SELECT phase, data FROM metrics WHERE run_id = ? AND phase IN "
                            "('before', 'after', 'epoch', 'step') ORDER BY epoch",
                            "i", id);
    while (st && sqlite3_step(st) == SQLITE_ROW) {
        const char *phase = (const char *)sqlite3_column_text(st, 0);
        json_t *v = json_loads((const char *)sqlite3_column_text(st, 1), 0, NULL);
        if (!v)
            continue;
        if (strcmp(phase, "epoch") == 0)
            json_array_append_new(json_object_get(out, "epochs"), v);
        else if (strcmp(phase, "step") == 0)
            json_array_append_new(json_object_get(out, "steps"), v);
        else
            json_object_set_new(out, phase, v);
    }
    done(s, st);
    unlock(s);
    return out;
}

enum ft_err ft_store_metrics_truncate(ft_store *s, int64_t id, int epoch)
{
    lock(s);
    int rc =
        epoch < 0
            ? exec_stmt(s, prep(s, "DELETE FROM metrics WHERE run_id = ?", "i", id))
            : exec_stmt(s, prep(s,
                                "DELETE FROM metrics WHERE run_id = ?1 AND ((phase = 'epoch' AND "
                                "epoch > ?2) OR phase IN ('after', 'examples_after') OR "
                                "(phase = 'step' AND json_extract(data, '$.epoch') > ?2))",
                                "ii", id, (int64_t)epoch));
    unlock(s);
    return rc == SQLITE_DONE ? FT_OK : FT_EDB;
}

int64_t ft_store_metrics_count(ft_store *s, int64_t id)
{
    lock(s);
    json_t *r = one_json(s, prep(s, "SELECT COUNT(*) AS n FROM metrics WHERE run_id = ?", "i", id));
    unlock(s);
    int64_t n = r ? json_integer_value(json_object_get(r, "n")) : 0;
    json_decref(r);
    return n;
}

json_t *ft_store_examples_get(ft_store *s, int64_t id)
{
    json_t *out = json_pack("{s:[], s:[]}", "before", "after");
    lock(s);
    sqlite3_stmt *st = prep(s,
                            "SELECT phase, data FROM metrics WHERE run_id = ? AND phase IN "
                            "('examples_before', 'examples_after')",
                            "i", id);
    while (st && sqlite3_step(st) == SQLITE_ROW) {
        const char *phase = (const char *)sqlite3_column_text(st, 0);
        json_t *v = json_loads((const char *)sqlite3_column_text(st, 1), 0, NULL);
        if (v)
            json_object_set_new(out, strcmp(phase, "examples_before") == 0 ? "before" : "after", v);
    }
    done(s, st);
    unlock(s);
    return out;
}

/* ---- access tokens ---- */

enum ft_err ft_store_token_insert(ft_store *s, const char *name, const char *hash,
                                  struct ft_error *err)
{
    lock(s);
    int rc =
        exec_stmt(s, prep(s, "INSERT INTO tokens(name, hash, created_at) VALUES(?, ?, " NOW ")",
                          "ss", name, hash));
    enum ft_err e = FT_OK;
    if (rc == SQLITE_CONSTRAINT)
        e = ft_error_set(err, FT_ECONFLICT, "name",
                         "token '%s' exists; revoke it first to make a new one", name);
    else if (rc != SQLITE_DONE)
        e = db_error(s, err, "storing the token");
    unlock(s);
    return e;
}

json_t *ft_store_token_list(ft_store *s)
{
    lock(s);
    json_t *a = rows_json(s, prep(s, "SELECT name, created_at FROM tokens ORDER BY name", NULL));
    unlock(s);
    return a;
}

enum ft_err ft_store_token_delete(ft_store *s, const char *name, struct ft_error *err)
{
    lock(s);
    int rc = exec_stmt(s, prep(s, "DELETE FROM tokens WHERE name = ?", "s", name));
    enum ft_err e = FT_OK;
    if (rc != SQLITE_DONE)
        e = db_error(s, err, "revoking the token");
    else if (sqlite3_changes(C(s)->db) == 0)
        e = ft_error_set(err, FT_ENOT_FOUND, "name", "there is no token '%s'", name);
    unlock(s);
    return e;
}

int64_t ft_store_token_count(ft_store *s)
{
    lock(s);
    int64_t n = query_int(s, "SELECT COUNT(*) FROM tokens");
    unlock(s);
    return n;
}

enum ft_err ft_store_token_owner(ft_store *s, const char *hash, char owner[FT_OWNER_MAX])
{
    lock(s);
    sqlite3_stmt *st = prep(s, "SELECT name FROM tokens WHERE hash = ?", "s", hash);
    int rc = st ? sqlite3_step(st) : SQLITE_ERROR;
    if (rc == SQLITE_ROW)
        snprintf(owner, FT_OWNER_MAX, "%s", (const char *)sqlite3_column_text(st, 0));
    done(s, st);
    unlock(s);
    return rc == SQLITE_ROW ? FT_OK : rc == SQLITE_DONE ? FT_ENOT_FOUND : FT_EDB;
}

/* ---- idempotency keys ---- */

/* What is stored under (owner, key): FT_ENOT_FOUND when nothing (lock held). */
static enum ft_err idem_lookup(ft_store *s, const char *owner, const char *key,
                               const char *fingerprint, int *status, char **body,
                               struct ft_error *err)
{
    json_t *r = one_json(s, prep(s,
                                 "SELECT fingerprint, status, response FROM idempotency "
                                 "WHERE owner = ? AND key = ?",
                                 "ss", owner, key));
    enum ft_err e = FT_OK;
    if (!r)
        return FT_ENOT_FOUND;
    json_t *st = json_object_get(r, "status");
    if (strcmp(json_string_value(json_object_get(r, "fingerprint")), fingerprint) != 0)
        e = ft_error_set(err, FT_EIDEMPOTENCY_KEY_REUSED, "Idempotency-Key",
                         "the Idempotency-Key '%.200s' was already used with another request "
                         "(method, path or body); use a new key for a new request",
                         key);
    else if (json_is_null(st))
        e = ft_error_set(err, FT_ECONFLICT, "Idempotency-Key",
                         "a request with the Idempotency-Key '%.200s' is still being processed; "
                         "retry once it has finished",
                         key);
    else {
        *status = (int)json_integer_value(st);
        *body = strdup(json_string_value(json_object_get(r, "response")));
        if (!*body)
            e = ft_error_set(err, FT_ENOMEM, NULL, "out of memory");
    }
    json_decref(r);
    return e;
}

enum ft_err ft_store_idempotency_begin(ft_store *s, const char *owner, const char *key,
                                       const char *fingerprint, int *status, char **body,
                                       struct ft_error *err)
{
    *status = 0;
    *body = NULL;
    lock(s);
    exec_stmt(s, prep(s,
                      "DELETE FROM idempotency WHERE created_at < "
                      "strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 day')",
                      NULL));
    enum ft_err e = idem_lookup(s, owner, key, fingerprint, status, body, err);
    if (e == FT_ENOT_FOUND) {
        int rc = exec_stmt(s, prep(s,
                                   "INSERT INTO idempotency(owner, key, fingerprint, created_at) "
                                   "VALUES(?, ?, ?, " NOW ")",
                                   "sss", owner, key, fingerprint));
        e = rc == SQLITE_DONE ? FT_OK : db_error(s, err, "storing the idempotency key");
    }
    unlock(s);
    return e;
}

void ft_store_idempotency_finish(ft_store *s, const char *owner, const char *key, int status,
                                 const char *body)
{
    lock(s);
    exec_stmt(s, prep(s,
                      "UPDATE idempotency SET status = ?, response = ? WHERE owner = ? AND key = ? "
                      "AND status IS NULL",
                      "isss", (int64_t)status, body, owner, key));
    unlock(s);
}

void ft_store_idempotency_release(ft_store *s, const char *owner, const char *key)
{
    lock(s);
    exec_stmt(s, prep(s, "DELETE FROM idempotency WHERE owner = ? AND key = ? AND status IS NULL",
                      "ss", owner, key));
    unlock(s);
}

int ft_store_idempotency_clear_pending(ft_store *s)
{
    lock(s);
    int rc = exec_stmt(s, prep(s, "DELETE FROM idempotency WHERE status IS NULL", NULL));
    int n = rc == SQLITE_DONE ? sqlite3_changes(C(s)->db) : 0;
    unlock(s);
    return n;
}
