/*
 * ope_test.c — `candex ope` on simulated data whose true value is known.
 *
 * Fifty contexts, each with a ranked list of 14 candidates and known click
 * probabilities per (candidate, slot). The logging policy is candex's: 4
 * exploit slots, then 2 exploration slots drawn uniformly from ranks 5-14
 * (cdx_rec_explore, propensity 1/10), logged through the real impression
 * log writer; clicks are drawn from the true probabilities. The new policy
 * keeps the exploit slots and puts the pool's two best candidates in the
 * exploration slots: its true value is computed exactly and differs from
 * the logging policy's by far more than the estimates' standard errors, so
 * a wrong weighting cannot pass.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "candex.pb-c.h"
#include "recommend/implog.h"
#include "recommend/recommend.h"

#define CONTEXTS 50
#define X        4 /* exploit slots */
#define E        2 /* exploration slots */
#define POOL     10
#define LIST     (X + POOL)
#define IMPS     20000

static double
quality(int c, int r)
{
	return (double) (cdx_mix64((uint64_t) c * 1000 + (uint64_t) r) >> 11) / 9007199254740992.0;
}

/* ctr of the candidate at rank r of context c shown in slot j */
static double
ctr(int c, int r, int j)
{
	return (0.05 + 0.4 * quality(c, r)) / (1.0 + 0.3 * j);
}

/* the new policy's candidates for the exploration slots: the pool's best two */
static void
target_picks(int c, int picks[E])
{
	picks[0] = picks[1] = -1;
	for (int r = X; r < LIST; r++) {
		if (picks[0] < 0 || quality(c, r) > quality(c, picks[0])) {
			picks[1] = picks[0];
			picks[0] = r;
		} else if (picks[1] < 0 || quality(c, r) > quality(c, picks[1])) {
			picks[1] = r;
		}
	}
}

static double
json_num(json_t *root, const char *est, const char *field)
{
	return json_number_value(json_object_get(json_object_get(root, est), field));
}

static void
test_ope_known_value(void **state)
{
	(void) state;
	char *dir = tu_tmpdir("ope"), *logdir = tu_path(dir, "log"), *rewards = tu_path(dir, "rewards.tsv"),
	     *targets = tu_path(dir, "targets.tsv");
	/* the true values */
	double v_new = 0, v_old = 0;
	for (int c = 0; c < CONTEXTS; c++) {
		int picks[E];
		target_picks(c, picks);
		for (int j = 0; j < X; j++) {
			v_new += ctr(c, j, j) / CONTEXTS;
			v_old += ctr(c, j, j) / CONTEXTS;
		}
		for (int j = 0; j < E; j++) {
			v_new += ctr(c, picks[j], X + j) / CONTEXTS;
			for (int r = X; r < LIST; r++)
				v_old += ctr(c, r, X + j) / POOL / CONTEXTS;
		}
	}
	/* the log, written by the server's writer, and what was observed */
	cdx_implog *log = NULL;
	struct cdx_implog_config lc = { .dir = logdir, .max_file_bytes = 256 << 10 }; /* several files */
	assert_int_equal(cdx_implog_open(&log, &lc), CDX_OK);
	FILE *fr = fopen(rewards, "w"), *ft = fopen(targets, "w");
	fprintf(fr, "# request_id query slot reward\n");
	cdx_rng rng;
	cdx_rng_seed(&rng, 2024);
	for (int i = 0; i < IMPS; i++) {
		int c = (int) (cdx_rng_next(&rng) % CONTEXTS), picks[E];
		target_picks(c, picks);
		char rid[32];
		snprintf(rid, sizeof(rid), "imp-%d", i);
		int64_t slot_of[E];
		double prop = cdx_rec_explore(
		    LIST, X, E, POOL, cdx_rec_query_seed(cdx_xxh64(rid, strlen(rid), 0), 0), slot_of);
		Candex__V1__Impression imp = CANDEX__V1__IMPRESSION__INIT;
		Candex__V1__ImpressionItem items[X + E], *ptrs[X + E];
		for (int j = 0; j < X + E; j++) {
			int rank = j < X ? j : (int) slot_of[j - X];
			candex__v1__impression_item__init(&items[j]);
			items[j].slot = (uint32_t) j;
			items[j].collection = (char *) "tracks";
			items[j].id = c * 1000 + rank;
			items[j].rank = (uint32_t) rank + 1;
			items[j].explore = j >= X;
			items[j].propensity = j < X ? 1.0 : prop;
			ptrs[j] = &items[j];
			if (cdx_rng_uniform(&rng) < ctr(c, rank, j))
				fprintf(fr, "%s\t0\t%d\t1\n", rid, j);
			/* the new policy shows the same exploit items, and its picks */
			int shown = j < X || rank == picks[j - X];
			if (shown)
				fprintf(ft, "%s\t0\t%d\t1\n", rid, j);
		}
		imp.request_id = rid;
		imp.n_items = X + E;
		imp.items = ptrs;
		uint8_t buf[1024];
		size_t len = candex__v1__impression__get_packed_size(&imp);
		candex__v1__impression__pack(&imp, buf);
		while (cdx_implog_append(log, buf, len) != CDX_OK) /* the buffer may be full: wait a little */
			cdx_implog_flush(log, 1000);
	}
	fclose(fr);
	fclose(ft);
	assert_int_equal(cdx_implog_flush(log, 10000), CDX_OK);
	struct cdx_implog_stats st;
	cdx_implog_stats(log, &st);
	assert_int_equal(st.written, IMPS);
	assert_true(st.files > 1);
	cdx_implog_close(log);

	char *out = NULL;
	int rc = tu_run(&out, "%s ope --log %s --rewards %s --targets %s --json 2>/dev/null", CANDEX_BIN,
	    logdir, rewards, targets);
	if (rc != 0)
		fprintf(stderr, "%s\n", out);
	assert_int_equal(rc, 0);
	json_error_t jerr;
	json_t *root = json_loads(out, 0, &jerr);
	assert_non_null(root);
	double ips = json_num(root, "ips", "value"), ips_se = json_num(root, "ips", "se");
	double snips = json_num(root, "snips", "value"), snips_se = json_num(root, "snips", "se");
	double logged = json_num(root, "logged", "value"), logged_se = json_num(root, "logged", "se");
	fprintf(stderr,
	    "true new %.4f old %.4f; IPS %.4f (se %.4f) SNIPS %.4f (se %.4f) logged %.4f (se %.4f)\n", v_new,
	    v_old, ips, ips_se, snips, snips_se, logged, logged_se);
	assert_int_equal(json_integer_value(json_object_get(root, "impressions")), IMPS);
	assert_int_equal(json_integer_value(json_object_get(root, "rewards_unmatched")), 0);
	/* the estimates find the new policy's value, within 3 standard errors
	 * (the seed is fixed: the outcome is the same every run) */
	assert_true(fabs(ips - v_new) < 3 * ips_se);
	assert_true(fabs(snips - v_new) < 3 * snips_se);
	assert_true(fabs(logged - v_old) < 3 * logged_se);
	/* and the 95% intervals hold it */
	assert_true(json_num(root, "ips", "lo") <= v_new && v_new <= json_num(root, "ips", "hi"));
	assert_true(json_num(root, "snips", "lo") <= v_new && v_new <= json_num(root, "snips", "hi"));
	/* the test can tell the policies apart */
	assert_true(v_new - v_old > 8 * ips_se);
	assert_true(ips_se > 0 && ips_se < 0.02);
	json_decref(root);
	free(out);

	/* bad inputs are named */
	FILE *bad = fopen(rewards, "a");
	fprintf(bad, "imp-1\tzero\t3\t1\n");
	fclose(bad);
	assert_int_equal(
	    tu_run(&out, "%s ope --log %s --rewards %s --targets %s", CANDEX_BIN, logdir, rewards, targets),
	    1);
	assert_non_null(strstr(out, "rewards.tsv: line"));
	free(out);
	assert_int_equal(tu_run(&out, "%s ope --log %s/nothing --rewards %s --targets %s", CANDEX_BIN, dir,
	                     rewards, targets),
	    1);
	free(out);
	assert_int_equal(tu_run(&out, "%s ope --log %s", CANDEX_BIN, logdir), 2);
	free(out);
	free(logdir);
	free(rewards);
	free(targets);
	tu_rmdir(dir);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ope_known_value),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
