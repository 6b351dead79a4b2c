/*
 * opt_test.c — the option tables and the strict number parser every
 * command uses (src/common/opt.c): what is a number, what is refused, and
 * the one error style.
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/opt.h"
#include "testutil.h"

static void
test_numbers(void **state)
{
	(void) state;
	uint64_t u;
	int64_t i;
	double d;
	assert_int_equal(cdx_parse_u64("0", 0, 10, &u), CDX_OK);
	assert_int_equal(cdx_parse_u64("18446744073709551615", 0, UINT64_MAX, &u), CDX_OK);
	assert_true(u == UINT64_MAX);
	const char *bad_u[] = { "", "abc", "12x", "x12", " 12", "12 ", "-1", "+1", "1e3", "1.0", "0x10",
		"18446744073709551616", "99999999999999999999999" };
	for (size_t k = 0; k < sizeof(bad_u) / sizeof(bad_u[0]); k++)
		if (cdx_parse_u64(bad_u[k], 0, UINT64_MAX, &u) != CDX_EINVAL)
			fail_msg("'%s' was taken as an unsigned integer", bad_u[k]);
	assert_int_equal(cdx_parse_u64("11", 0, 10, &u), CDX_EINVAL); /* out of range */
	assert_int_equal(cdx_parse_u64("0", 1, 10, &u), CDX_EINVAL);
	assert_int_equal(cdx_parse_i64("-9223372036854775808", INT64_MIN, INT64_MAX, &i), CDX_OK);
	assert_true(i == INT64_MIN);
	assert_int_equal(cdx_parse_i64("-9223372036854775809", INT64_MIN, INT64_MAX, &i), CDX_EINVAL);
	assert_int_equal(cdx_parse_i64("-", INT64_MIN, INT64_MAX, &i), CDX_EINVAL);
	assert_int_equal(cdx_parse_i64("--1", INT64_MIN, INT64_MAX, &i), CDX_EINVAL);
	assert_int_equal(cdx_parse_double("0.25", 0, 1, &d), CDX_OK);
	assert_float_equal(d, 0.25, 0);
	assert_int_equal(cdx_parse_double("1e-3", 0, 1, &d), CDX_OK);
	const char *bad_d[] = { "", "abc", "0.5x", "nan", "inf", "0x1p3", " 1", "1e999", "--1" };
	for (size_t k = 0; k < sizeof(bad_d) / sizeof(bad_d[0]); k++)
		if (cdx_parse_double(bad_d[k], -HUGE_VAL, HUGE_VAL, &d) != CDX_EINVAL)
			fail_msg("'%s' was taken as a number", bad_d[k]);
	assert_int_equal(cdx_parse_double("1.5", 0, 1, &d), CDX_EINVAL);
	assert_int_equal(cdx_parse_size("16M", &u), CDX_OK);
	assert_true(u == 16u << 20);
	assert_int_equal(cdx_parse_size("2KiB", &u), CDX_OK);
	assert_true(u == 2048);
	assert_int_equal(cdx_parse_size("3gb", &u), CDX_OK);
	assert_true(u == 3ull << 30);
	const char *bad_s[] = { "", "M", "0", "16Q", "16MM", "1.5M", "-1", "99999999999G" };
	for (size_t k = 0; k < sizeof(bad_s) / sizeof(bad_s[0]); k++)
		if (cdx_parse_size(bad_s[k], &u) != CDX_EINVAL)
			fail_msg("'%s' was taken as a size", bad_s[k]);
}

struct opts {
	const char *name;
	char *owned;
	int flag;
	uint32_t k;
	int64_t id;
	double ratio;
	float f;
	uint64_t bytes;
	size_t n;
	int calls;
};

static int
count_call(const char *v, void *o)
{
	if (strcmp(v, "bad") == 0)
		return cdx_error(CDX_EINVAL, "not a good value");
	((struct opts *) o)->calls++;
	return CDX_OK;
}

#define O(f) offsetof(struct opts, f)
static const struct cdx_opt table[] = {
	CDX_OPT_HEADING("things:"),
	CDX_OPT_STR_("name", O(name), "NAME", "a name"),
	CDX_OPT_STRDUP_("owned", O(owned), "S", "a copy"),
	CDX_OPT_FLAG_("flag", O(flag), "a flag\nover two lines"),
	CDX_OPT_ENTRY("k", 'k', CDX_OPT_U32, O(k), "K", "results", 1, 100, NULL),
	CDX_OPT_NUM_("id", CDX_OPT_I64, O(id), "ID", "an id", 0, 0),
	CDX_OPT_NUM_("ratio", CDX_OPT_DOUBLE, O(ratio), "R", "a ratio", 0, 1),
	CDX_OPT_NUM_("f", CDX_OPT_FLOAT, O(f), "F", "a float", 0, 0),
	CDX_OPT_NUM_("bytes", CDX_OPT_BYTES, O(bytes), "B", "a size", 0, 0),
	CDX_OPT_NUM_("n", CDX_OPT_SIZE_T, O(n), "N", "a count", 0, 0),
	CDX_OPT_CALL_("call", "V", "repeatable", count_call),
};
#undef O

/* parse splits line (in buf, which the parsed strings point into) into argv. */
static int
parse(struct opts *o, char *buf, const char *line, const char **pos, size_t maxpos, size_t *npos)
{
	char *argv[32], *save = NULL;
	int argc = 0;
	strcpy(buf, line);
	argv[argc++] = (char *) "cmd";
	for (char *t = strtok_r(buf, " ", &save); t != NULL && argc < 32; t = strtok_r(NULL, " ", &save))
		argv[argc++] = t;
	int help = 0;
	return cdx_opt_parse(
	    "candex test", table, sizeof(table) / sizeof(table[0]), o, argc, argv, &help, pos, maxpos, npos);
}

/* refused checks the whole error line of a bad command line. */
static void
refused(const char *line, const char *message)
{
	struct opts o = { 0 };
	char buf[512];
	assert_int_equal(parse(&o, buf, line, NULL, 0, NULL), CDX_EINVAL);
	if (strcmp(cdx_last_error(), message) != 0)
		fail_msg("'%s':\n  got    '%s'\n  wanted '%s'", line, cdx_last_error(), message);
	free(o.owned);
}

static void
test_parse(void **state)
{
	(void) state;
	struct opts o = { 0 };
	char buf[512];
	assert_int_equal(
	    parse(&o, buf,
	        "--name a --owned x --owned y --flag -k 7 --id=-5 --ratio 0.5 --f 2.5 --bytes 1K "
	        "--n 3 --call 1 --call 2",
	        NULL, 0, NULL),
	    CDX_OK);
	assert_string_equal(o.name, "a");
	assert_string_equal(o.owned, "y"); /* the first copy was freed: ASan would say */
	assert_int_equal(o.flag, 1);
	assert_int_equal(o.k, 7);
	assert_int_equal(o.id, -5);
	assert_float_equal(o.ratio, 0.5, 0);
	assert_float_equal(o.f, 2.5, 0);
	assert_int_equal(o.bytes, 1024);
	assert_int_equal(o.n, 3);
	assert_int_equal(o.calls, 2);
	free(o.owned);

	const char *pos[2];
	size_t npos = 0;
	memset(&o, 0, sizeof(o));
	assert_int_equal(parse(&o, buf, "a --flag b", pos, 2, &npos), CDX_OK);
	assert_int_equal(npos, 2);
	assert_string_equal(pos[1], "b");

	refused("--foo", "candex test: unknown option --foo; see candex test --help");
	refused("--foo=1", "candex test: unknown option --foo; see candex test --help");
	refused("-x", "candex test: unknown option -x; see candex test --help");
	refused("extra", "candex test: unexpected argument 'extra'; see candex test --help");
	refused("--name", "candex test: --name needs a value (NAME); see candex test --help");
	refused("--flag=1", "candex test: --flag takes no value; see candex test --help");
	refused("-k abc", "candex test: --k 'abc': expected an integer in [1, 100]; see candex test --help");
	refused("-k 12x", "candex test: --k '12x': expected an integer in [1, 100]; see candex test --help");
	refused("-k 101", "candex test: --k '101': expected an integer in [1, 100]; see candex test --help");
	refused("-k 0", "candex test: --k '0': expected an integer in [1, 100]; see candex test --help");
	refused("--n 18446744073709551616",
	    "candex test: --n '18446744073709551616': expected an integer in [0, 18446744073709551615]; see "
	    "candex "
	    "test --help");
	refused("--id 1.5",
	    "candex test: --id '1.5': expected an integer in [-9223372036854775808, "
	    "9223372036854775807]; see candex test --help");
	refused("--ratio 2", "candex test: --ratio '2': expected a number in [0, 1]; see candex test --help");
	refused(
	    "--f nan", "candex test: --f 'nan': expected a number in [-inf, inf]; see candex test --help");
	refused("--bytes 1Q",
	    "candex test: --bytes '1Q': expected a size in bytes like 16M (K, M, G suffixes); see candex "
	    "test --help");
	refused("--call bad", "candex test: --call 'bad': not a good value; see candex test --help");

	/* options by name, as a config file sets them */
	memset(&o, 0, sizeof(o));
	assert_int_equal(
	    cdx_opt_set("candex test", table, sizeof(table) / sizeof(table[0]), &o, "k", "9", "f.conf:3"),
	    CDX_OK);
	assert_int_equal(o.k, 9);
	assert_int_equal(
	    cdx_opt_set("candex test", table, sizeof(table) / sizeof(table[0]), &o, "kk", "9", "f.conf:4"),
	    CDX_EINVAL);
	assert_string_equal(
	    cdx_last_error(), "candex test: f.conf:4: unknown option kk; see candex test --help");
	assert_int_equal(
	    cdx_opt_set("candex test", table, sizeof(table) / sizeof(table[0]), &o, "k", "x", "f.conf:5"),
	    CDX_EINVAL);
	assert_string_equal(cdx_last_error(),
	    "candex test: f.conf:5: --k 'x': expected an integer in [1, 100]; see candex test --help");
}

static void
test_usage(void **state)
{
	(void) state;
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	struct opts d = { .k = 10, .name = "dflt" };
	cdx_opt_usage(f, table, sizeof(table) / sizeof(table[0]), &d);
	fclose(f);
	assert_non_null(strstr(text, "things:\n"));
	/* one column for the help texts: after the longest name, at least 20 wide */
	assert_non_null(strstr(text, "  -k, --k K           results [10]\n"));
	assert_non_null(strstr(text, "  --name NAME         a name [dflt]\n"));
	assert_non_null(strstr(text, "  --flag              a flag\n                      over two lines\n"));
	assert_non_null(strstr(text, "  -h, --help          show this help\n"));
	free(text);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_numbers),
		cmocka_unit_test(test_parse),
		cmocka_unit_test(test_usage),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
