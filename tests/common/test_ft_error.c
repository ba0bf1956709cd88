/* test_ft_error.c — errors are fit for a JSON body: ft_utf8_sanitize() and ft_error_set().
 *
 * Every case is also checked against jansson, which is what turns messages into API bodies:
 * what ft_utf8_sanitize() leaves must be a string json_string() accepts. */
#include "ft_error.h"

#include <criterion/criterion.h>
#include <jansson.h>
#include <string.h>

static void expect_sanitized(const char *in, const char *want)
{
    char buf[64];
    snprintf(buf, sizeof buf, "%s", in);
    ft_utf8_sanitize(buf);
    cr_assert_str_eq(buf, want);
    json_t *s = json_string(buf);
    cr_assert_not_null(s, "jansson accepts the result of \"%s\"", want);
    json_decref(s);
}

Test(utf8, valid_text_is_unchanged)
{
    expect_sanitized("", "");
    expect_sanitized("plain ascii ~\x7f", "plain ascii ~\x7f");
    expect_sanitized("h\xc3\xa9llo \xe2\x82\xac \xf0\x9d\x84\x9e",
                     "h\xc3\xa9llo \xe2\x82\xac \xf0\x9d\x84\x9e");
    /* U+FFFF and U+10FFFF, the largest of their lengths */
    expect_sanitized("\xef\xbf\xbf\xf4\x8f\xbf\xbf", "\xef\xbf\xbf\xf4\x8f\xbf\xbf");
}

Test(utf8, every_byte_of_a_bad_sequence_becomes_a_question_mark)
{
    expect_sanitized("a\xff-z", "a?-z");
    expect_sanitized("\x80\xbf", "??");                   /* lone continuation bytes */
    expect_sanitized("\xc0\xaf \xc1\xbf", "?? ??");       /* overlong 2-byte forms */
    expect_sanitized("\xe0\x80\xaf", "???");              /* overlong 3-byte form */
    expect_sanitized("\xf0\x8f\xbf\xbf", "????");         /* overlong 4-byte form */
    expect_sanitized("\xed\xa0\x80", "???");              /* a UTF-16 surrogate */
    expect_sanitized("\xf4\x90\x80\x80", "????");         /* above U+10FFFF */
    expect_sanitized("\xf5\x80\x80\x80", "????");         /* no such lead byte */
    expect_sanitized("x\xe2\x82", "x??");                 /* cut at the end */
    expect_sanitized("\xe2\x82x\xc3\xa9", "??x\xc3\xa9"); /* cut, then valid again */
}

Test(utf8, error_set_cuts_no_character_in_half)
{
    struct ft_error err;
    char param[200];
    memset(param, 'p', sizeof param);
    memcpy(param + 126, "\xc3\xa9", 2); /* bytes 126-127: the buffer holds only byte 126 */
    param[128] = '\0';
    ft_error_set(&err, FT_EINVAL, param, "bad value '%s' in line %d", "\xff", 3);
    cr_assert_eq(strlen(err.param), sizeof err.param - 1);
    cr_assert_eq(err.param[126], '?');
    cr_assert_str_eq(err.message, "bad value '?' in line 3");
    json_t *p = json_string(err.param), *m = json_string(err.message);
    cr_assert(p && m);
    json_decref(p);
    json_decref(m);
}
