/*
 * cli_test.c — every candex subcommand parses its command line the same
 * way: an unknown option, a missing value, and numbers that are not whole
 * numbers in range ("abc", "12x", an overflow) are usage errors (exit 2),
 * reported in one style, before any work is done.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const commands[] = { "build", "inspect", "serve", "query", "recall", "sample", "demo" };

/* usage_error runs `candex <args>` and checks exit status 2 and message. */
static void
usage_error(const char *args, const char *message)
{
	char *out = NULL;
	int rc = tu_run(&out, "%s %s", CANDEX_BIN, args);
	if (rc != 2 || strstr(out, message) == NULL)
		fail_msg("candex %s: exit %d, wanted 2 and '%s':\n%s", args, rc, message, out);
	free(out);
}

static void
test_unknown_option(void **state)
{
	(void) state;
	char args[64], message[160];
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		snprintf(args, sizeof(args), "%s --foo", commands[i]);
		snprintf(message, sizeof(message), "candex %s: unknown option --foo; see candex %s --help\n",
		    commands[i], commands[i]);
		usage_error(args, message);
	}
	usage_error("nosuch", "candex: unknown command 'nosuch'; see candex --help");
}

static void
test_strict_numbers(void **state)
{
	(void) state;
	/* candex sample --tracks abc once meant 0 tracks, and 12x meant 12 */
	usage_error("sample --tracks abc",
	    "candex sample: --tracks 'abc': expected an integer in [1, 1000000000]; see "
	    "candex sample --help");
	usage_error("sample --tracks 12x", "candex sample: --tracks '12x': expected an integer");
	usage_error("sample --seed 18446744073709551616",
	    "candex sample: --seed '18446744073709551616': expected an "
	    "integer in [0, 18446744073709551615]");
	usage_error("sample --users -1", "candex sample: --users '-1': expected an integer");
	usage_error("build --shards 12x", "candex build: --shards '12x': expected an integer in [1, 9999]");
	usage_error("build --recall-target 0.5x",
	    "candex build: --recall-target '0.5x': expected a number in [0.01, 1]");
	usage_error(
	    "build --threads 99999999999", "candex build: --threads '99999999999': expected an integer");
	usage_error("query -k abc", "candex query: --k 'abc': expected an integer in [1, 10000000]");
	usage_error("query --refine nan", "candex query: --refine 'nan': expected a number");
	usage_error("query --exclude-id 4x", "candex query: --exclude-id '4x': expected an int64 id");
	usage_error("recall -k 1e3", "candex recall: --k '1e3': expected an integer in [1, 100000]");
	usage_error("recall --nprobe 8,16x", "candex recall: --nprobe '8,16x': '16x' is not a number");
	usage_error("serve --max-k 4294967296",
	    "candex serve: --max-k '4294967296': expected an integer in [1, "
	    "4294967295]");
	usage_error("serve --max-message 16Q", "candex serve: --max-message '16Q': expected a size in bytes");
	usage_error("demo --queries 0", "candex demo: --queries '0': expected an integer in [1, 1000000]");
}

static void
test_missing_values_and_arguments(void **state)
{
	(void) state;
	usage_error("sample --out", "candex sample: --out needs a value (DIR); see candex sample --help");
	usage_error("sample extra", "candex sample: unexpected argument 'extra'; see candex sample --help");
	usage_error("query --json=1", "candex query: --json takes no value");
	usage_error("build --input x.fvecs",
	    "candex build: --input, --collection, --metric and --out are required; see "
	    "candex build --help");
	usage_error("build frobnicate", "candex build: unknown step 'frobnicate' (train, encode, publish)");
	usage_error("inspect", "candex inspect: give one PATH; see candex inspect --help");
	usage_error(
	    "recall --index x", "candex recall: --queries FILE is required; see candex recall --help");
	usage_error("serve --index-dir x", "candex serve: at least one --listen URL is required");
	/* --help still works, and exits 0 */
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		char *out = NULL;
		assert_int_equal(tu_run(&out, "%s %s --help", CANDEX_BIN, commands[i]), 0);
		assert_non_null(strstr(out, "usage: candex "));
		assert_non_null(strstr(out, "-h, --help"));
		free(out);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_unknown_option),
		cmocka_unit_test(test_strict_numbers),
		cmocka_unit_test(test_missing_values_and_arguments),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
