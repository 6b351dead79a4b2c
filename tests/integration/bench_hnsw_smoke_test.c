/*
 * bench_hnsw_smoke_test.c — the side-by-side benchmark of issue 11
 * (tools/bench/hnsw/bench_hnsw.c) still runs end to end: hnswlib, the
 * default `candex build`, candex in process and candex served, on a few
 * thousand generated vectors for a fraction of a second each. It checks
 * that every path answers with recall and that the goals' table is printed;
 * it measures nothing (BENCHMARKS.md has the figures and their commands).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define N   4000
#define NQ  60
#define DIM 16

static void
test_smoke(void **state)
{
	(void) state;
	char *dir = tu_tmpdir("benchsmoke");
	char *base_path = tu_path(dir, "base.fvecs"), *query_path = tu_path(dir, "query.fvecs");
	char *out_dir = tu_path(dir, "idx");
	float *x = malloc((size_t) (N + NQ) * DIM * sizeof(float));
	assert_non_null(x);
	tu_clustered(x, N + NQ, DIM, 20, 7);
	assert_int_equal(tu_write_fvecs(base_path, x, N, DIM), 0);
	assert_int_equal(tu_write_fvecs(query_path, x + (size_t) N * DIM, NQ, DIM), 0);
	char *out = NULL;
	int rc = tu_run(&out,
	    "%s/bench_hnsw --base %s --queries %s --metric l2 --max-queries 50 --seconds 0.2 "
	    "--hnsw-efc 40 --ef 10,20,40 --workers 1 --clients 2 --out %s --collection smoke",
	    CANDEX_BUILD_DIR, base_path, query_path, out_dir);
	if (rc != 0 || strstr(out, "errors: 0") == NULL)
		fprintf(stderr, "%s\n", out);
	assert_int_equal(rc, 0);
	/* every path ran and the goals were computed */
	assert_non_null(strstr(out, "| candex in process, 1 threads |"));
	assert_non_null(strstr(out, "| candex served, 1 workers, 2 clients |"));
	assert_non_null(strstr(out, "| P1a served QPS / hnswlib at the same recall |"));
	assert_non_null(strstr(out, "| P4 build time / hnswlib's (1 thread) |"));
	assert_non_null(strstr(out, "errors: 0"));
	free(out);
	free(x);
	free(base_path);
	free(query_path);
	free(out_dir);
	tu_rmdir(dir);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_smoke),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
