/*
 * adapt_test.c — recall that corrects itself (src/server/adapt.c), through a
 * real `candex serve` with online recall on every query.
 *
 * The collection: items on a 4-dimensional manifold inside 32 dimensions
 * (uniform in the first 4, small noise in the other 28), indexed IVF256,Flat,
 * with a ladder of operating points measured by `candex recall --save` on
 * queries from the manifold (distribution A): nprobe 2, 4, 8, 16, 32 for
 * targets 0.7, 0.9, 0.99, 0.999, 0.9999. A request for 0.9 gets nprobe 4.
 *
 * The drift (distribution B): the same positions plus a large component
 * off the manifold. Coarse assignment does not see it (centroids lie on the
 * manifold), but the true neighbours are now spread over many lists:
 * recall@10 at nprobe 4 falls to about 0.57 (8: 0.76, 16: 0.91, 32: 0.98).
 *
 * The server must climb while B lasts (4 -> 8 -> 16, at most
 * --adapt-max-rungs above the chosen point), with recall back near the
 * target, log and count each move, come back down to 4 when A returns, and
 * start again at the chosen point after a points reload or a new version.
 * With --adapt-max-rungs 1 it stops one rung up; with 0 it never moves.
 */
#include "srvtest.h"

#include <math.h>

#define N      20000
#define DIM    32
#define ZDIM   4   /* the manifold */
#define NTUNE  400 /* tuning queries (A) */
#define BATCH  20  /* queries per request */
#define K      10
#define TARGET 0.9f
#define WINDOW 40 /* --adapt-window */

static char *dir;
static float *base;
static struct st_server srv; /* the server of the running test */

/* make_queries fills q (n x DIM) with queries from A, or from B (drifted):
 * the same positions plus N(0, 3^2) off the manifold. */
static void
make_queries(float *q, size_t n, int drifted, cdx_rng *r)
{
	for (size_t i = 0; i < n; i++)
		for (size_t j = 0; j < DIM; j++)
			q[i * DIM + j] = j < ZDIM ? (float) (10 * cdx_rng_uniform(r))
			    : drifted             ? (float) (3 * cdx_rng_normal(r))
			                          : 0.0f;
}

static void
save_point(uint32_t nprobe, const char *target)
{
	char *out = NULL;
	int rc = tu_run(&out,
	    "%s recall --index %s/index/c --base %s/base.fvecs --queries %s/tune.fvecs -k %d --nprobe %u "
	    "--refine 0 --target %s --save --quiet --cache-dir %s/cache --min-time 0.01 "
	    "--latency-queries 20 --threads 1",
	    CANDEX_BIN, dir, dir, dir, K, nprobe, target, dir);
	if (rc != 0)
		fprintf(stderr, "candex recall --save failed (%d): %s\n", rc, out);
	assert_int_equal(rc, 0);
	free(out);
}

static void
save_ladder(void)
{
	save_point(2, "0.7");
	save_point(4, "0.9");
	save_point(8, "0.99");
	save_point(16, "0.999");
	save_point(32, "0.9999");
}

/* build publishes a new version of c with the ladder measured on it */
static void
build(void)
{
	char *out = NULL;
	int rc = tu_run(&out,
	    "%s build --quiet --input %s/base.fvecs --collection c --metric l2 --out %s/index "
	    "--factory IVF256,Flat",
	    CANDEX_BIN, dir, dir);
	if (rc != 0)
		fprintf(stderr, "candex build failed (%d): %s\n", rc, out);
	assert_int_equal(rc, 0);
	free(out);
	save_ladder();
}

static int
setup(void **state)
{
	(void) state;
	dir = tu_tmpdir("srvadapt");
	cdx_rng r;
	cdx_rng_seed(&r, 7);
	base = malloc((size_t) N * DIM * sizeof(float));
	float *tune = malloc(NTUNE * DIM * sizeof(float));
	assert_non_null(base);
	assert_non_null(tune);
	for (size_t i = 0; i < N; i++)
		for (size_t j = 0; j < DIM; j++)
			base[i * DIM + j] = j < ZDIM ? (float) (10 * cdx_rng_uniform(&r))
			                             : (float) (0.3 * cdx_rng_normal(&r));
	make_queries(tune, NTUNE, 0, &r);
	char path[4200];
	snprintf(path, sizeof(path), "%s/base.fvecs", dir);
	assert_int_equal(tu_write_fvecs(path, base, N, DIM), 0);
	snprintf(path, sizeof(path), "%s/tune.fvecs", dir);
	assert_int_equal(tu_write_fvecs(path, tune, NTUNE, DIM), 0);
	free(tune);
	build();
	return 0;
}

static int
teardown(void **state)
{
	(void) state;
	free(base);
	tu_rmdir(dir);
	return 0;
}

#define RUNGS   "candex_adapt_rungs{collection=\"c\",k=\"10\"}"
#define UPS     "candex_adapt_moves_total{collection=\"c\",direction=\"up\"}"
#define DOWNS   "candex_adapt_moves_total{collection=\"c\",direction=\"down\"}"
#define CHECKED "candex_online_recall_queries_total{collection=\"c\",k=\"10\"}"

/* search_at sends BATCH queries from A or B, at nprobe (0: at the target),
 * and returns the nprobe the server used; *recall (if not NULL) gets their
 * recall@10 against exact search over the base vectors. */
static uint32_t
search_at(cdx_client *c, int drifted, uint32_t nprobe, cdx_rng *r, double *recall)
{
	float q[BATCH * DIM];
	make_queries(q, BATCH, drifted, r);
	struct cdx_query qq = { .collection = "c",
		.vectors = q,
		.nvectors = BATCH,
		.dim = DIM,
		.k = K,
		.nprobe = nprobe,
		.recall_target = TARGET };
	struct cdx_result *res = st_search(c, &qq);
	assert_int_equal(res->nqueries, BATCH);
	double found = 0;
	for (size_t i = 0; recall != NULL && i < BATCH; i++) {
		int64_t truth[K];
		tu_exact_knn(base, N, DIM, q + i * DIM, K, 0, truth);
		for (size_t j = 0; j < res->queries[i].nhits; j++)
			for (size_t t = 0; t < K; t++)
				found += res->queries[i].hits[j].id == truth[t];
	}
	if (recall != NULL)
		*recall = found / (BATCH * K);
	uint32_t used = res->nprobe;
	cdx_result_free(res);
	return used;
}

static uint32_t
search_batch(cdx_client *c, int drifted, cdx_rng *r, double *recall)
{
	return search_at(c, drifted, 0, r, recall);
}

/* until_nprobe sends batches from A or B until the server uses want (at
 * most 60 s); the nprobe values seen on the way must be the end of path.
 * Then, if settle, it sends 5 more batches, which must stay at want, and
 * returns their mean recall. */
static double
until_nprobe(
    cdx_client *c, int drifted, cdx_rng *r, uint32_t want, const uint32_t *path, size_t npath, int settle)
{
	uint64_t until = cdx_now_us() + 60000000u;
	uint32_t seen[16];
	size_t nseen = 0;
	for (;;) {
		uint32_t np = search_batch(c, drifted, r, NULL);
		if (nseen == 0 || seen[nseen - 1] != np) {
			assert_true(nseen < 16);
			seen[nseen++] = np;
		}
		if (np == want)
			break;
		if (cdx_now_us() > until) {
			fprintf(stderr, "nprobe went");
			for (size_t i = 0; i < nseen; i++)
				fprintf(stderr, " %u", seen[i]);
			fprintf(stderr, ", never reached %u\n", want);
			fail_msg("the server did not move to nprobe %u", want);
		}
	}
	/* one rung at a time, along the ladder (it may have taken the first
	 * steps before the first batch here) */
	assert_true(nseen <= npath);
	for (size_t i = 0; i < nseen; i++)
		assert_int_equal(seen[i], path[npath - nseen + i]);
	double sum = 0, recall;
	for (int i = 0; settle && i < 5; i++) {
		assert_int_equal(search_batch(c, drifted, r, &recall), want);
		sum += recall;
	}
	return sum / 5;
}

/* hold sends batches from A or B until `windows` more adaptation windows'
 * worth of queries were checked, and requires nprobe to stay at want. */
static void
hold(cdx_client *c, int port, int drifted, cdx_rng *r, uint32_t want, int windows)
{
	double target = st_metric_or(port, CHECKED, 0) + windows * WINDOW;
	uint64_t t0 = cdx_now_us(), until = t0 + 60000000u;
	while (st_metric_or(port, CHECKED, 0) < target || cdx_now_us() - t0 < 1000000u) {
		assert_int_equal(search_batch(c, drifted, r, NULL), want);
		assert_true(cdx_now_us() < until);
	}
}

static int
start(int *port, const char *tag, int max_rungs)
{
	char args[512];
	*port = st_free_port();
	snprintf(args, sizeof(args),
	    "--threads 1 --http-listen 127.0.0.1:%d --online-recall-fraction 1 --online-recall-cpu 1 "
	    "--adapt-window %d --adapt-window-seconds 0.3 --adapt-max-rungs %d",
	    *port, WINDOW, max_rungs);
	return st_start(&srv, dir, tag, args);
}

static void
test_climbs_with_drift_and_back(void **state)
{
	(void) state;
	int port;
	cdx_rng r;
	cdx_rng_seed(&r, 11);
	assert_int_equal(start(&port, "drift", 2), 0);
	cdx_client *c = st_client(srv.url, 10000, 0);
	double recall;

	/* A, as tuned: the chosen point (nprobe 4) is enough and it stays there */
	assert_int_equal(search_batch(c, 0, &r, &recall), 4);
	assert_true(recall >= 0.85);
	hold(c, port, 0, &r, 4, 4);
	assert_true(st_metric_or(port, RUNGS, 0) == 0);
	assert_true(st_metric_or(port, UPS, 0) == 0);

	/* B: recall at the chosen point falls far below the target (measured
	 * with an explicit nprobe, which adaptation neither judges nor moves) ... */
	double before = 0;
	for (int i = 0; i < 3; i++) {
		assert_int_equal(search_at(c, 1, 4, &r, &recall), 4);
		before += recall / 3;
	}
	assert_true(st_metric_or(port, RUNGS, 0) == 0);
	assert_true(before < 0.75);
	/* ... so the server climbs one rung at a time, two at most, and recall
	 * comes back near the target */
	static const uint32_t up[] = { 4, 8, 16 };
	double after = until_nprobe(c, 1, &r, 16, up, 3, 1);
	fprintf(stderr, "drifted queries: recall@10 %.3f at the chosen point, %.3f two rungs up\n", before,
	    after);
	assert_true(after >= 0.85);
	assert_true(st_metric_or(port, RUNGS, -1) == 2);
	assert_true(st_metric_or(port, UPS, 0) == 2);
	assert_true(st_log_has(&srv, "SRV-ADAPT"));
	assert_true(st_log_has(&srv, "collection c k 10: online recall"));
	assert_true(st_log_has(&srv, "below target 0.900: rung 2 -> 3 of 5 (nprobe 4 -> 8)"));
	assert_true(st_log_has(&srv, "rung 3 -> 4 of 5 (nprobe 8 -> 16)"));
	/* it stays there while B lasts (the rung below would not do) */
	hold(c, port, 1, &r, 16, 3);
	assert_true(st_metric_or(port, UPS, 0) == 2);
	assert_true(st_metric_or(port, DOWNS, 0) == 0);

	/* A again: back down, one rung at a time, to the chosen point */
	static const uint32_t down[] = { 16, 8, 4 };
	after = until_nprobe(c, 0, &r, 4, down, 3, 1);
	assert_true(after >= 0.85);
	assert_true(st_metric_or(port, RUNGS, -1) == 0);
	assert_true(st_metric_or(port, DOWNS, 0) == 2);
	assert_true(st_log_has(&srv, "reaches target 0.900: rung 3 -> 2 of 5 (nprobe 8 -> 4)"));
	hold(c, port, 0, &r, 4, 3);
	assert_true(st_metric_or(port, UPS, 0) == 2);

	/* a points reload (the ladder may have changed) starts again at the
	 * chosen point */
	static const uint32_t one_up[] = { 4, 8 };
	until_nprobe(c, 1, &r, 8, one_up, 2, 0); /* (a window still in the checker may climb on) */
	save_point(32, "0.9999");                /* rewrites manifest.json */
	kill(srv.pid, SIGHUP);
	for (int i = 0; i < 1000 && !st_log_has(&srv, "operating points re-read: back to the chosen"); i++)
		st_sleep_ms(10);
	assert_true(st_log_has(&srv, "operating points re-read: back to the chosen"));
	assert_int_equal(search_batch(c, 1, &r, NULL), 4);
	assert_true(st_metric_or(port, RUNGS, 0) == 0);
	assert_true(st_metric_or(port, UPS, 0) >= 3); /* counters survive the reload */

	cdx_client_close(c);
	assert_int_equal(st_stop(&srv, SIGTERM), 0);
}

static void
test_bounded_and_off(void **state)
{
	(void) state;
	int port;
	cdx_rng r;
	cdx_rng_seed(&r, 13);

	/* --adapt-max-rungs 1: one rung up, and no further though recall
	 * stays below the target */
	assert_int_equal(start(&port, "bound", 1), 0);
	cdx_client *c = st_client(srv.url, 10000, 0);
	static const uint32_t up[] = { 4, 8 };
	double recall = until_nprobe(c, 1, &r, 8, up, 2, 1);
	assert_true(recall < TARGET);
	hold(c, port, 1, &r, 8, 4);
	assert_true(st_metric_or(port, RUNGS, -1) == 1);
	assert_true(st_metric_or(port, UPS, 0) == 1);

	/* a new version starts again at the chosen point */
	build();
	kill(srv.pid, SIGHUP);
	for (int i = 0; i < 1000 && !st_log_has(&srv, "new version v"); i++)
		st_sleep_ms(10);
	assert_true(st_log_has(&srv, "new version v"));
	assert_int_equal(search_batch(c, 1, &r, &recall), 4);
	cdx_client_close(c);
	assert_int_equal(st_stop(&srv, SIGTERM), 0);

	/* --adapt-max-rungs 0: adaptation is off */
	assert_int_equal(start(&port, "off", 0), 0);
	c = st_client(srv.url, 10000, 0);
	hold(c, port, 1, &r, 4, 4);
	assert_true(st_metric_or(port, UPS, -1) == -1);
	cdx_client_close(c);
	assert_int_equal(st_stop(&srv, SIGTERM), 0);
	assert_false(st_log_has(&srv, "SRV-ADAPT"));
}

static void
test_options(void **state)
{
	(void) state;
	char *out = NULL;
	assert_int_equal(tu_run(&out, "%s serve --help", CANDEX_BIN), 0);
	assert_non_null(strstr(out, "--adapt-max-rungs N"));
	assert_non_null(strstr(out, "--adapt-window N"));
	assert_non_null(strstr(out, "--adapt-window-seconds SECONDS"));
	free(out);
	/* bad values are usage errors that say what is wanted */
	assert_int_equal(
	    tu_run(&out, "%s serve --index-dir %s/index --listen ipc://%s/x.ipc --adapt-window 5", CANDEX_BIN,
	        dir, dir),
	    2);
	assert_non_null(strstr(out, "--adapt-window '5': expected an integer in [10, "));
	free(out);
	assert_int_equal(
	    tu_run(&out, "%s serve --index-dir %s/index --listen ipc://%s/x.ipc --adapt-max-rungs 17",
	        CANDEX_BIN, dir, dir),
	    2);
	assert_non_null(strstr(out, "--adapt-max-rungs '17': expected an integer in [0, 16]"));
	free(out);
	assert_int_equal(
	    tu_run(&out, "%s serve --index-dir %s/index --listen ipc://%s/x.ipc --adapt-window-seconds -1",
	        CANDEX_BIN, dir, dir),
	    2);
	assert_non_null(strstr(out, "--adapt-window-seconds '-1': expected a number in [0, "));
	free(out);
}

/* stop_server stops a server a failed test left running. */
static int
stop_server(void **state)
{
	(void) state;
	if (srv.pid > 0)
		st_stop(&srv, SIGKILL);
	return 0;
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_climbs_with_drift_and_back, stop_server),
		cmocka_unit_test_teardown(test_bounded_and_off, stop_server),
		cmocka_unit_test(test_options),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
