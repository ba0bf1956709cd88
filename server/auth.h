/* auth.h — access tokens: SHA-256, token generation, the Authorization header, and the
 * `finetunerd token create|list|revoke` subcommands.
 *
 * A token is 32 bytes from getrandom() written as 64 lowercase hex digits. It is printed once
 * by `token create NAME`; the database keeps only its SHA-256 (hex) next to NAME, the token's
 * user (the "owner" of what it creates: see store.h). A request proves who it is with
 * `Authorization: token <t>` (Finetuner's header) or `Authorization: Bearer <t>`. While the
 * tokens table is empty the API is open (owner ""), for the single-user localhost case. */
#ifndef FT_AUTH_H
#define FT_AUTH_H

#include "ft_error.h"
#include "store.h"

#include <stddef.h>
#include <stdio.h>

#define FT_SHA256_HEX 65 /* 64 lowercase hex digits and a NUL */
#define FT_TOKEN_HEX 65  /* a token: 32 random bytes as 64 hex digits and a NUL */

/* SHA-256 (FIPS 180-4, via OpenSSL's libcrypto) of data[0..len) as lowercase hex into out. */
void ft_sha256_hex(const void *data, size_t len, char out[FT_SHA256_HEX]);

/* Incremental SHA-256 over several pieces (opaque; libcrypto's EVP_MD_CTX inside). */
typedef struct ft_sha256 ft_sha256;
/* New context (owned: ft_sha256_end frees it); NULL when out of memory. */
ft_sha256 *ft_sha256_begin(void);
/* Hash len more bytes. h NULL is a no-op. */
void ft_sha256_update(ft_sha256 *h, const void *data, size_t len);
/* Write the digest as hex into out and free h. h NULL writes "". */
void ft_sha256_end(ft_sha256 *h, char out[FT_SHA256_HEX]);

/* A new token (32 bytes of getrandom(), hex) into out. FT_EIO when the kernel gives none. */
enum ft_err ft_token_generate(char out[FT_TOKEN_HEX], struct ft_error *err);

/* The token of an Authorization header value: "token <t>" or "Bearer <t>" (scheme
 * case-insensitive, spaces around <t> ignored; <t> printable ASCII without spaces) copied into
 * out (cap bytes). Returns 1, or 0 when header is NULL, of another scheme, empty or too long. */
int ft_auth_parse_header(const char *header, char *out, size_t cap);

/* Who makes a request with Authorization header value header (NULL when absent): its token's
 * name into owner (FT_OWNER_MAX bytes). With no token in the store the API is open: owner ""
 * unless require_token, which answers every request FT_EUNAUTHORIZED. Errors:
 * FT_EUNAUTHORIZED (missing, malformed or unknown token; err says which), FT_EDB. */
enum ft_err ft_auth_owner(ft_store *s, const char *header, int require_token,
                          char owner[FT_OWNER_MAX], struct ft_error *err);

/* `finetunerd token create NAME | list | revoke NAME` on the database of data_dir: argv[0] is
 * the subcommand (argc words). create prints the new token on out (once: only its hash is
 * kept); list prints "NAME<TAB>CREATED_AT" lines; revoke deletes NAME's token (what NAME owns
 * stays). Messages go to errf. Returns the exit code: 0, 1 on failure, 2 on a usage error. */
int ft_token_command(const char *data_dir, int argc, const char *const *argv, FILE *out,
                     FILE *errf);

#endif
