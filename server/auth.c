/* auth.c — tokens and their check (see auth.h).
 *
 * SHA-256 comes from OpenSSL's libcrypto (EVP interface). Tokens are looked up by their hash
 * (the tokens table's unique index), so what a timing difference could reveal is a prefix of
 * a hash, never of a token. */
#include "auth.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

#define TOKEN_BYTES 32

static void to_hex(const unsigned char *bytes, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 15];
    }
    out[2 * n] = '\0';
}

ft_sha256 *ft_sha256_begin(void)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(ctx);
        ctx = NULL;
    }
    return (ft_sha256 *)ctx;
}

void ft_sha256_update(ft_sha256 *h, const void *data, size_t len)
{
    if (h && len)
        EVP_DigestUpdate((EVP_MD_CTX *)h, data, len);
}

void ft_sha256_end(ft_sha256 *h, char out[FT_SHA256_HEX])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    out[0] = '\0';
    if (!h)
        return;
    if (EVP_DigestFinal_ex((EVP_MD_CTX *)h, md, &n) == 1 && n == 32)
        to_hex(md, n, out);
    EVP_MD_CTX_free((EVP_MD_CTX *)h);
    /* the HTTP pool's threads live as long as the daemon: free OpenSSL's per-thread state
     * (its error queue, 904 bytes) now rather than at a thread exit that never comes */
    OPENSSL_thread_stop();
}

void ft_sha256_hex(const void *data, size_t len, char out[FT_SHA256_HEX])
{
    ft_sha256 *h = ft_sha256_begin();
    ft_sha256_update(h, data, len);
    ft_sha256_end(h, out);
}

enum ft_err ft_token_generate(char out[FT_TOKEN_HEX], struct ft_error *err)
{
    unsigned char buf[TOKEN_BYTES];
    size_t got = 0;
    while (got < sizeof buf) {
        ssize_t n = getrandom(buf + got, sizeof buf - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return ft_error_set(err, FT_EIO, NULL, "getrandom failed: %s", strerror(errno));
        got += (size_t)n;
    }
    to_hex(buf, sizeof buf, out);
    return FT_OK;
}

int ft_auth_parse_header(const char *header, char *out, size_t cap)
{
    size_t skip = 0;
    if (!header)
        return 0;
    if (strncasecmp(header, "token ", 6) == 0)
        skip = 6;
    else if (strncasecmp(header, "bearer ", 7) == 0)
        skip = 7;
    else
        return 0;
    const char *t = header + skip;
    while (*t == ' ')
        t++;
    size_t n = 0;
    while (t[n] > ' ' && t[n] < 127)
        n++;
    for (size_t k = n; t[k]; k++)
        if (t[k] != ' ')
            return 0; /* a second word, or a control character */
    if (n == 0 || n >= cap)
        return 0;
    memcpy(out, t, n);
    out[n] = '\0';
    return 1;
}

enum ft_err ft_auth_owner(ft_store *s, const char *header, int require_token,
                          char owner[FT_OWNER_MAX], struct ft_error *err)
{
    char token[256], hash[FT_SHA256_HEX];
    owner[0] = '\0';
    int64_t n = ft_store_token_count(s);
    if (n < 0)
        return ft_error_set(err, FT_EDB, NULL, "cannot read the access tokens");
    if (n == 0 && !require_token)
        return FT_OK;
    if (!header)
        return ft_error_set(err, FT_EUNAUTHORIZED, "Authorization",
                            "this server needs an access token: send 'Authorization: token "
                            "<token>' (tokens are made with `finetunerd token create NAME`)");
    if (!ft_auth_parse_header(header, token, sizeof token))
        return ft_error_set(err, FT_EUNAUTHORIZED, "Authorization",
                            "malformed Authorization header: expected 'token <token>' or "
                            "'Bearer <token>'");
    ft_sha256_hex(token, strlen(token), hash);
    enum ft_err e = ft_store_token_owner(s, hash, owner);
    if (e == FT_ENOT_FOUND)
        return ft_error_set(err, FT_EUNAUTHORIZED, "Authorization",
                            "the access token is not valid (unknown or revoked)");
    if (e != FT_OK)
        return ft_error_set(err, FT_EDB, NULL, "cannot read the access tokens");
    return FT_OK;
}

/* ---- the token subcommands ---- */

static int token_create(ft_store *s, const char *name, FILE *out, FILE *errf)
{
    struct ft_error err = {0};
    char token[FT_TOKEN_HEX], hash[FT_SHA256_HEX];
    if (!ft_store_valid_name(name)) {
        fprintf(errf,
                "finetunerd: invalid token name '%s': use 1 to 100 of A-Z a-z 0-9 . _ - "
                "(not starting with .)\n",
                name);
        return 2;
    }
    enum ft_err e = ft_token_generate(token, &err);
    if (e == FT_OK) {
        ft_sha256_hex(token, strlen(token), hash);
        e = ft_store_token_insert(s, name, hash, &err);
    }
    if (e != FT_OK) {
        fprintf(errf, "finetunerd: %s\n", err.message);
        return 1;
    }
    fprintf(out, "%s\n", token);
    fprintf(errf,
            "token '%s' created; it is shown only now: keep it (finetuner --token, "
            "$FINETUNER_TOKEN, or 'Authorization: token <token>')\n",
            name);
    return 0;
}

static int token_list(ft_store *s, FILE *out, FILE *errf)
{
    json_t *list = ft_store_token_list(s);
    size_t i;
    json_t *t;
    if (!list) {
        fprintf(errf, "finetunerd: cannot list the tokens\n");
        return 1;
    }
    json_array_foreach(list, i, t)
    {
        fprintf(out, "%s\t%s\n", json_string_value(json_object_get(t, "name")),
                json_string_value(json_object_get(t, "created_at")));
    }
    json_decref(list);
    return 0;
}

static int token_revoke(ft_store *s, const char *name, FILE *out, FILE *errf)
{
    struct ft_error err = {0};
    if (ft_store_token_delete(s, name, &err) != FT_OK) {
        fprintf(errf, "finetunerd: %s\n", err.message);
        return 1;
    }
    fprintf(out, "token '%s' revoked\n", name);
    return 0;
}

int ft_token_command(const char *data_dir, int argc, const char *const *argv, FILE *out, FILE *errf)
{
    struct ft_error err = {0};
    ft_store *s = NULL;
    const char *sub = argc > 0 ? argv[0] : "";
    int named = strcmp(sub, "create") == 0 || strcmp(sub, "revoke") == 0;
    if (!(named && argc == 2) && !(strcmp(sub, "list") == 0 && argc == 1)) {
        fprintf(errf, "usage: finetunerd [--data-dir DIR] token create NAME | list | revoke "
                      "NAME\n");
        return 2;
    }
    if (ft_store_open(data_dir, &s, &err) != FT_OK) {
        fprintf(errf, "finetunerd: %s\n", err.message);
        return 1;
    }
    int rc = strcmp(sub, "create") == 0   ? token_create(s, argv[1], out, errf)
             : strcmp(sub, "revoke") == 0 ? token_revoke(s, argv[1], out, errf)
                                          : token_list(s, out, errf);
    ft_store_close(s);
    return rc;
}
