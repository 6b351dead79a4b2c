/*
 * admission_test.c — expensive searches against the deadline and against
 * cheap ones (issue 10, defect 5, and the queued work of a client that left):
 *   - a request whose deadline passes mid-search is stopped and answered
 *     DEADLINE_EXCEEDED, not OK seconds later;
 *   - two expensive requests do not hold up cheap ones;
 *   - requests that the queued work would make miss their deadline are
 *     refused at once (OVERLOADED), and no answer comes after its deadline;
 *   - a queued search whose client disconnected is not run;
 *   - a client that sends requests on one connection and never reads the
 *     replies holds the server's contexts only until a second past their
 *     deadlines: other clients are served meanwhile.
 * Timings are compared with one expensive search measured in the same run,
 * never with fixed numbers.
 */
#include "srvtest.h"

#include <pthread.h>

#define N     40000
#define DIM   32
#define BATCH 128

static char *dir;
static float *base;
static struct st_server srv;
static char tcp_url[64];
static int http_port;
static double full_ms; /* one expensive search, alone, measured in setup */

static int
setup(void **state)
{
	dir = tu_tmpdir("srvadm");
	base = st_build(dir, "big", N, DIM, 5, "l2", "b:", "--factory IVF64,PQ8x8np --refine fp32");
	char extra[256];
	http_port = st_free_port();
	snprintf(tcp_url, sizeof(tcp_url), "tcp://127.0.0.1:%d", st_free_port());
	snprintf(extra, sizeof(extra), "--threads 2 --listen %s --http-listen 127.0.0.1:%d --log-level debug",
	    tcp_url, http_port);
	assert_int_equal(st_start(&srv, dir, "adm", extra), 0);
	return 0;
}

static int
teardown(void **state)
{
	assert_int_equal(st_stop(&srv, SIGTERM), 0);
	free(base);
	tu_rmdir(dir);
	return 0;
}

/* expensive: BATCH queries x every list x k 1000 x refine 16 */
static struct cdx_query
expensive(uint32_t timeout_ms)
{
	return (struct cdx_query) { .collection = "big",
		.vectors = base,
		.nvectors = BATCH,
		.dim = DIM,
		.k = 1000,
		.nprobe = 64,
		.refine_factor = 16,
		.timeout_ms = timeout_ms };
}

/* call runs q on a fresh client; returns the status, *ms the time taken. */
static int
call(const struct cdx_query *q, double *ms)
{
	cdx_client *c = st_client(tcp_url, 120000, 0);
	struct cdx_result *r = NULL;
	struct cdx_client_error err;
	uint64_t t0 = cdx_now_us();
	int rc = cdx_client_search(c, q, &r, &err);
	*ms = (double) (cdx_now_us() - t0) / 1000.0;
	if (rc != CDX_OK)
		fprintf(stderr, "  %s after %.0f ms: %s\n", cdx_errname(rc), *ms, err.message);
	cdx_result_free(r);
	cdx_client_close(c);
	return rc;
}

struct job {
	struct cdx_query q;
	int rc;
	double ms;
	pthread_t t;
};

static void *
job_main(void *arg)
{
	struct job *j = arg;
	j->rc = call(&j->q, &j->ms);
	return NULL;
}

static void
test_measure(void **state)
{
	struct cdx_query q = expensive(60000);
	double ms;
	assert_int_equal(call(&q, &ms), CDX_OK); /* warm-up, and calibrates the server */
	assert_int_equal(call(&q, &ms), CDX_OK);
	full_ms = ms;
	fprintf(stderr, "one expensive search: %.0f ms\n", full_ms);
	/* the other tests need a search long enough to be told apart */
	assert_true(full_ms > 300);
}

static void
test_deadline_inside_search(void **state)
{
	uint32_t timeout = (uint32_t) (full_ms / 10);
	struct cdx_query q = expensive(timeout);
	double ms;
	double dropped0 = st_metric(http_port, "candex_deadline_dropped_total");
	int rc = call(&q, &ms);
	fprintf(stderr, "timeout %u ms: %s after %.0f ms (whole search %.0f ms)\n", timeout, cdx_errname(rc),
	    ms, full_ms);
	assert_int_equal(rc, CDX_ETIMEDOUT);
	/* stopped mid-search, not after it */
	assert_true(ms < full_ms / 2);
	assert_true(st_metric(http_port, "candex_deadline_dropped_total") >= dropped0 + 1);
}

static void
test_cheap_not_starved(void **state)
{
	struct job heavy[2];
	for (int i = 0; i < 2; i++) {
		heavy[i].q = expensive(60000);
		assert_int_equal(pthread_create(&heavy[i].t, NULL, job_main, &heavy[i]), 0);
	}
	st_sleep_ms((unsigned) (full_ms / 10)); /* both are running or queued */
	double worst = 0;
	cdx_client *c = st_client(tcp_url, 60000, 0);
	for (int i = 0; i < 10; i++) {
		struct cdx_query q = { .collection = "big",
			.vectors = base + (size_t) i * DIM,
			.nvectors = 1,
			.dim = DIM,
			.k = 10 };
		uint64_t t0 = cdx_now_us();
		struct cdx_result *r = st_search(c, &q);
		worst = CDX_MAX(worst, (double) (cdx_now_us() - t0) / 1000.0);
		assert_int_equal(r->queries[0].nhits, 10);
		cdx_result_free(r);
	}
	cdx_client_close(c);
	for (int i = 0; i < 2; i++) {
		pthread_join(heavy[i].t, NULL);
		assert_int_equal(heavy[i].rc, CDX_OK);
	}
	fprintf(stderr,
	    "cheap queries during two expensive ones: worst %.1f ms (expensive: %.0f ms, %.0f ms)\n", worst,
	    heavy[0].ms, heavy[1].ms);
	assert_true(worst < full_ms / 4);
	assert_true(st_metric(http_port, "candex_heavy_total") >= 2);
}

static void
test_admission_by_cost(void **state)
{
	/* eight expensive requests at once, each with a deadline of 1.5 whole
	 * searches: only the first two can finish in time */
	enum { J = 8 };
	uint32_t timeout = (uint32_t) (full_ms * 1.5);
	struct job jobs[J];
	for (int i = 0; i < J; i++) {
		jobs[i].q = expensive(timeout);
		assert_int_equal(pthread_create(&jobs[i].t, NULL, job_main, &jobs[i]), 0);
	}
	int ok = 0, refused_fast = 0; /* ok: reported only */
	double latest = 0;
	for (int i = 0; i < J; i++) {
		pthread_join(jobs[i].t, NULL);
		ok += jobs[i].rc == CDX_OK;
		refused_fast += jobs[i].rc == CDX_EOVERLOAD && jobs[i].ms < full_ms / 2;
		latest = CDX_MAX(latest, jobs[i].ms);
	}
	fprintf(stderr,
	    "8 expensive requests, deadline %u ms: %d OK, %d refused at once, last answer after %.0f ms\n",
	    timeout, ok, refused_fast, latest);
	/* (the one or two admitted may finish OK or be stopped at their
	 * deadline, depending on how busy the machine is) */
	assert_true(refused_fast >= 1);
	/* nothing is answered long after its deadline */
	assert_true(latest < timeout + full_ms / 2);
}

static void
test_disconnected_client_not_searched(void **state)
{
	/* keep both workers busy with expensive searches, queue a search from
	 * a raw client, let it leave, and check that its batch is never
	 * searched */
	struct job heavy[2];
	for (int i = 0; i < 2; i++) {
		heavy[i].q = expensive(60000);
		assert_int_equal(pthread_create(&heavy[i].t, NULL, job_main, &heavy[i]), 0);
	}
	st_sleep_ms((unsigned) (full_ms / 10));
	double queries0 = st_metric(http_port, "candex_queries_total");
	double abandoned0 = st_metric(http_port, "candex_abandoned_total");

	/* 100 queries: expensive too, distinct from BATCH; a deadline that
	 * lets it wait in the queue rather than be refused */
	size_t len;
	uint8_t *buf = st_pack_search("big", base, 100, DIM, 1000, 64, 16, 60000, &len);
	int fd = st_sp_send(tcp_url, buf, len);
	free(buf);
	assert_true(fd >= 0);
	st_sleep_ms(200); /* received and queued behind the expensive ones */
	close(fd);
	for (int i = 0; i < 2; i++) {
		pthread_join(heavy[i].t, NULL);
		assert_int_equal(heavy[i].rc, CDX_OK);
	}
	/* until everything received is answered or dropped */
	for (int i = 0; i < 500 && st_metric(http_port, "candex_in_flight") != 0; i++)
		st_sleep_ms(20);
	double searched = st_metric(http_port, "candex_queries_total") - queries0;
	double abandoned = st_metric(http_port, "candex_abandoned_total") - abandoned0;
	fprintf(stderr,
	    "queries searched meanwhile: %.0f (the two expensive requests: %d); abandoned: %.0f\n", searched,
	    2 * BATCH, abandoned);
	/* the two expensive batches at most (one may have been counted
	 * before queries0 was read): never the leaver's 100 */
	assert_true(searched <= 2 * BATCH);
	assert_true(abandoned >= 1);
}

/* sp_frame sends one more framed request (request id id) on a raw REQ
 * connection made by st_sp_send. */
static int
sp_frame(int fd, int ipc, uint32_t id, const void *data, size_t len)
{
	uint8_t head[9 + 4];
	size_t h = 0;
	if (ipc)
		head[h++] = 1;
	uint64_t flen = 4 + (uint64_t) len;
	for (int b = 0; b < 8; b++)
		head[h++] = (uint8_t) (flen >> (56 - 8 * b));
	id |= 0x80000000u;
	for (int b = 0; b < 4; b++)
		head[h++] = (uint8_t) (id >> (24 - 8 * b));
	return send(fd, head, h, MSG_NOSIGNAL) == (ssize_t) h
	        && send(fd, data, len, MSG_NOSIGNAL) == (ssize_t) len
	    ? 0
	    : -1;
}

static void
test_client_not_reading(void **state)
{
	/* three contexts; a raw client pipelines searches whose replies
	 * (32 x 1000 hits, ~600 KiB each) overflow its socket, and never reads:
	 * its first reply stays half-written, the next ones wait behind it */
	struct st_server s2;
	char extra[256];
	int http = st_free_port();
	snprintf(extra, sizeof(extra), "--threads 1 --contexts 3 --http-listen 127.0.0.1:%d", http);
	assert_int_equal(st_start(&s2, dir, "noread", extra), 0);
	size_t len;
	uint8_t *buf = st_pack_search("big", base, 32, DIM, 1000, 16, 0, 300, &len); /* deadline 300 ms */
	int fd = st_sp_send(s2.url, buf, len);
	assert_true(fd >= 0);
	for (uint32_t i = 1; i < 8; i++)
		assert_int_equal(sp_frame(fd, 1, 7 + i, buf, len), 0);
	free(buf);
	st_sleep_ms(500); /* every context now holds one of its replies */

	/* another client is served: the waiting replies are dropped a second
	 * past their deadline and their contexts receive again */
	cdx_client *c = st_client(s2.url, 5000, 0);
	struct cdx_query q = { .collection = "big", .vectors = base, .nvectors = 1, .dim = DIM, .k = 10 };
	struct cdx_result *r = NULL;
	struct cdx_client_error err;
	uint64_t t0 = cdx_now_us();
	int rc = cdx_client_search(c, &q, &r, &err);
	double ms = (double) (cdx_now_us() - t0) / 1000.0;
	double waited = st_metric(http, "candex_replies_waited_total");
	double dropped = st_metric(http, "candex_replies_dropped_total");
	fprintf(stderr, "other client: %s after %.0f ms; replies waited %.0f, dropped %.0f\n",
	    cdx_errname(rc), ms, waited, dropped);
	if (rc != CDX_OK)
		fprintf(stderr, "  %s\n", err.message);
	assert_int_equal(rc, CDX_OK);
	assert_int_equal(r->queries[0].nhits, 10);
	assert_true(dropped >= 1);
	cdx_result_free(r);
	cdx_client_close(c);
	close(fd);
	assert_int_equal(st_stop(&s2, SIGTERM), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_measure),
		cmocka_unit_test(test_deadline_inside_search),
		cmocka_unit_test(test_cheap_not_starved),
		cmocka_unit_test(test_admission_by_cost),
		cmocka_unit_test(test_disconnected_client_not_searched),
		cmocka_unit_test(test_client_not_reading),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
