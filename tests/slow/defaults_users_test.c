/*
 * defaults_users_test.c — an inner-product catalogue built with no tuning
 * flags at all serves its users at the default target: the sample tracks
 * (`candex sample`, 100,000 × 64, norms skewed by popularity), built with
 * `candex build` alone, queried through `candex serve` with neither nprobe
 * nor recall_target by users the build never saw, 10-recall@10 and
 * 100-recall@100 against exact search ≥ 0.95 (`candex recall --url
 * --defaults`).
 *
 * Users are not items. Tuned on held-out items, this build chose an IVF-PQ
 * that served these users at 0.938 (issue 9); the tuner now tunes ip on
 * mixtures of held-out items when it has no --tune-queries (tune.c).
 */
#define _GNU_SOURCE
#include "srvtest.h"

#include <jansson.h>

static char *dir;

static int
setup(void **state)
{
	dir = tu_tmpdir("defusers");
	return 0;
}

static int
teardown(void **state)
{
	tu_rmdir(dir);
	return 0;
}

static double
served_recall(const char *url, uint32_t k)
{
	char *out = NULL, json[4200];
	snprintf(json, sizeof(json), "%s/r%u.json", dir, k);
	int rc = tu_run(&out,
	    "%s recall --url %s --collection tracks --index %s/index/tracks --base %s/s/tracks.fvecs "
	    "--queries %s/s/users-tracks.fvecs --defaults -k %u --batch 1 --threads 2 --min-time 0 --json %s "
	    "--quiet --no-cache",
	    CANDEX_BIN, url, dir, dir, dir, k, json);
	if (rc != 0)
		fprintf(stderr, "candex recall failed (%d): %s\n", rc, out);
	assert_int_equal(rc, 0);
	free(out);
	json_error_t err;
	json_t *root = json_load_file(json, 0, &err);
	assert_non_null(root);
	json_t *r0 = json_array_get(json_object_get(root, "results"), 0);
	assert_non_null(r0);
	double recall = json_number_value(json_object_get(r0, "recall_at_k"));
	json_decref(root);
	return recall;
}

static void
test_ip_users_without_tuning_flags(void **state)
{
	char *out = NULL;
	assert_int_equal(
	    tu_run(&out, "%s sample --out %s/s --tracks 100000 --podcasts 1000 --users 500", CANDEX_BIN, dir),
	    0);
	free(out);
	int rc = tu_run(&out,
	    "%s build --quiet --input %s/s/tracks.fvecs --collection tracks --metric ip --out %s/index",
	    CANDEX_BIN, dir, dir);
	if (rc != 0)
		fprintf(stderr, "candex build failed (%d): %s\n", rc, out);
	assert_int_equal(rc, 0);
	free(out);

	struct st_server srv;
	assert_int_equal(st_start(&srv, dir, "users", "--threads 2"), 0);
	double r10 = served_recall(srv.url, 10), r100 = served_recall(srv.url, 100);
	print_message(
	    "sample tracks, no tuning flags, users: 10-recall@10 %.4f, 100-recall@100 %.4f\n", r10, r100);
	assert_true(r10 >= 0.95);
	assert_true(r100 >= 0.95);
	assert_int_equal(st_stop(&srv, SIGTERM), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ip_users_without_tuning_flags),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
