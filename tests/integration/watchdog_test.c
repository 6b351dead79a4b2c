/*
 * watchdog_test.c — the listener watchdog leaves busy listeners alone, and
 * shutdown keeps its time (issue 10, defect 3):
 *   - under a load that keeps every context busy for seconds, no listener
 *     is recreated and no client loses its connection (the old watchdog
 *     took a slow health answer for the nng 1.5 listener bug);
 *   - SIGTERM in the middle of expensive searches, clients that vanish and
 *     half-sent frames ends the process within --drain-ms, round after
 *     round.
 * (badinput_test checks that a listener the bug really stopped is found
 * and recreated.)
 */
#include "srvtest.h"

#include <pthread.h>
#include <stdatomic.h>

#define N   40000
#define DIM 32

static char *dir;
static float *base;

static int
setup(void **state)
{
	dir = tu_tmpdir("srvwd");
	base = st_build(dir, "big", N, DIM, 9, "l2", "b:", "--factory IVF64,PQ8x8np --refine fp32");
	return 0;
}

static int
teardown(void **state)
{
	free(base);
	tu_rmdir(dir);
	return 0;
}

struct load {
	const char *url;
	uint32_t batch; /* queries per request */
	atomic_int *stop;
	int ok, overloaded, failed;
	pthread_t t;
};

/* A client that loses its connection does not get an answer at all (the
 * client library does not resend): it waits out its own timeout. Every
 * answer, even DEADLINE_EXCEEDED from the server, comes well before. */
#define LOAD_CLIENT_MS 40000
#define LOAD_SERVER_MS 20000

static void *
load_main(void *arg)
{
	struct load *l = arg;
	cdx_client *c = st_client(l->url, LOAD_CLIENT_MS, 0);
	uint64_t until = cdx_now_us() + 30000000u; /* bounded whatever happens */
	while (!atomic_load(l->stop) && cdx_now_us() < until) {
		struct cdx_query q = { .collection = "big",
			.vectors = base,
			.nvectors = l->batch,
			.dim = DIM,
			.k = 100,
			.nprobe = 64,
			.refine_factor = 8,
			.timeout_ms = LOAD_SERVER_MS };
		struct cdx_result *r = NULL;
		struct cdx_client_error err;
		uint64_t t0 = cdx_now_us();
		int rc = cdx_client_search(c, &q, &r, &err);
		int answered = cdx_now_us() - t0 < (uint64_t) LOAD_CLIENT_MS * 1000u;
		if (rc == CDX_OK)
			l->ok++;
		else if (answered && (rc == CDX_EOVERLOAD || rc == CDX_EUNAVAIL || rc == CDX_ETIMEDOUT))
			l->overloaded++;
		else
			l->failed++;
		cdx_result_free(r);
	}
	cdx_client_close(c);
	return NULL;
}

/* health_ms times a health request on a raw connection (no answer: -1). */
static double
health_ms(const char *url)
{
	Candex__V1__Request req = CANDEX__V1__REQUEST__INIT;
	Candex__V1__HealthRequest hr = CANDEX__V1__HEALTH_REQUEST__INIT;
	req.protocol_version = 1;
	req.body_case = CANDEX__V1__REQUEST__BODY_HEALTH;
	req.health = &hr;
	uint64_t t0 = cdx_now_us();
	Candex__V1__Response *resp = st_raw_request(url, &req, 10000);
	double ms = resp != NULL ? (double) (cdx_now_us() - t0) / 1000.0 : -1;
	candex__v1__response__free_unpacked(resp, NULL);
	return ms;
}

static void
test_busy_listeners_left_alone(void **state)
{
	struct st_server srv;
	char extra[512], tcp[64];
	int http = st_free_port();
	snprintf(tcp, sizeof(tcp), "tcp://127.0.0.1:%d", st_free_port());
	/* two contexts and one worker: every request waits for a context */
	snprintf(extra, sizeof(extra),
	    "--threads 1 --contexts 2 --listen %s --http-listen 127.0.0.1:%d --listener-check-ms 300 "
	    "--log-level debug",
	    tcp, http);
	assert_int_equal(st_start(&srv, dir, "busy", extra), 0);
	enum { L = 12 };
	atomic_int stop = 0;
	struct load l[L];
	for (int i = 0; i < L; i++) {
		l[i] = (struct load) { .url = i % 2 ? tcp : srv.url, .batch = 256, .stop = &stop };
		assert_int_equal(pthread_create(&l[i].t, NULL, load_main, &l[i]), 0);
	}
	/* the load is what fooled the old watchdog: a health answer takes
	 * longer than its 1 s probe timeout (sampled for 3 s) */
	double worst = 0;
	for (uint64_t t0 = cdx_now_us(); cdx_now_us() - t0 < 3000000u;) {
		st_sleep_ms(200);
		double ms = health_ms(srv.url);
		worst = CDX_MAX(worst, ms < 0 ? 10000 : ms); /* no answer: the raw call waits 10 s */
	}
	atomic_store(&stop, 1);
	int ok = 0, failed = 0;
	for (int i = 0; i < L; i++) {
		pthread_join(l[i].t, NULL);
		ok += l[i].ok;
		failed += l[i].failed;
	}
	double restarts = st_metric(http, "candex_listener_restarts_total");
	fprintf(stderr,
	    "under load: health answered after %.0f ms at worst; %d searches OK, %d failed; %.0f listener "
	    "restart(s)\n",
	    worst, ok, failed, restarts);
	if (restarts != 0)
		st_dump_log(&srv);
	assert_true(worst > 1000); /* busy enough to matter */
	assert_int_equal(restarts, 0);
	assert_false(st_log_has(&srv, "SRV-LISTEN-RESTART"));
	assert_int_equal(failed, 0);
	assert_true(ok > 0);
	assert_int_equal(st_stop(&srv, SIGTERM), 0);
}

static void
test_shutdown_under_load(void **state)
{
	const unsigned drain_ms = 600;
	for (int round = 0; round < 4; round++) {
		struct st_server srv;
		char extra[512], tcp[64], tag[16];
		snprintf(tcp, sizeof(tcp), "tcp://127.0.0.1:%d", st_free_port());
		snprintf(tag, sizeof(tag), "stop%d", round);
		snprintf(extra, sizeof(extra), "--threads 2 --listen %s --drain-ms %u", tcp, drain_ms);
		assert_int_equal(st_start(&srv, dir, tag, extra), 0);
		enum { L = 6 };
		atomic_int stop = 0;
		struct load l[L];
		for (int i = 0; i < L; i++) {
			/* whole-collection batches: each search outlasts the drain */
			l[i] = (struct load) { .url = i % 2 ? tcp : srv.url, .batch = 512, .stop = &stop };
			assert_int_equal(pthread_create(&l[i].t, NULL, load_main, &l[i]), 0);
		}
		size_t len;
		uint8_t *req = st_pack_search("big", base, 64, DIM, 100, 64, 0, 0, &len);
		for (int i = 0; i < 8; i++)
			st_vanish(i % 2 ? tcp : srv.url, req, len, i % 4 < 2);
		free(req);
		st_sleep_ms(700);
		uint64_t t0 = cdx_now_us();
		int rc = st_stop(&srv, SIGTERM);
		double ms = (double) (cdx_now_us() - t0) / 1000.0;
		atomic_store(&stop, 1);
		for (int i = 0; i < L; i++)
			pthread_join(l[i].t, NULL);
		fprintf(stderr, "round %d: SIGTERM to exit %.0f ms (--drain-ms %u), exit %d, %s\n", round, ms,
		    drain_ms, rc,
		    st_log_has(&srv, "SRV-STOP-STUCK") ? "gave up on closing at the deadline"
		                                       : "closed cleanly");
		assert_int_equal(rc, 0);
		/* the drain time, and what a signal, a process exit and the
		 * wait's 10 ms polling take on a busy machine */
		assert_true(ms < drain_ms + ST_EXIT_MS);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_busy_listeners_left_alone),
		cmocka_unit_test(test_shutdown_under_load),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
