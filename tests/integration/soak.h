/*
 * soak.h — the soak run (issue 10): a bounded load generator on loopback
 * against a real `candex serve`, shared by the short soak_test
 * (integration) and the long soak_long_test (slow). Header-only, like
 * srvtest.h.
 *
 * Two versions of collection "tracks" are built; then for a fixed time
 * these run at once:
 *   - good clients (client library, 2 retries on OVERLOADED/UNAVAILABLE):
 *     searches by vector and by key, every answer checked (k hits);
 *   - a sender of malformed requests (junk, wrong version, wrong dimension,
 *     NaN, empty batch): each is answered with an error, or its connection
 *     refused while the attack below holds every connection the server
 *     allows;
 *   - clients that send an expensive search, or half a frame, and vanish;
 *   - the memory attack: connections that announce a large frame and send
 *     all but its last byte, and requests of half a million empty strings;
 *   - reloads: CURRENT flips between the two versions and the admin socket
 *     is asked to reload, `reloads` times, evenly spread.
 * A first, shorter round of the same load warms the server up (allocator
 * arenas, nng's pools); RSS and open descriptors are read when the server
 * is quiet after it and again after the main round. Finally SIGTERM arrives
 * while attackers hold connections and searches run, and the time to exit
 * is measured. Figures go to stderr; soak_run returns them.
 */
#ifndef CANDEX_SOAK_H
#define CANDEX_SOAK_H

#include "srvtest.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>

#define SOAK_N       20000
#define SOAK_DIM     32
#define SOAK_MAX_MSG (256u << 10)
#define SOAK_DRAIN   2000

struct soak_result {
	double seconds;
	long good_ok, good_failed;
	long bad_answered, bad_ok, bad_unanswered;
	long vanished, attacks;
	int reloads_ok, reloads_failed;
	long rss_start_kb, rss_end_kb;
	int fds_start, fds_end;
	double stop_ms;
	int exit_status;
};

struct soak {
	char *dir;
	float *base;
	struct st_server srv;
	char tcp[64];
	int http;
	char version[2][4096];
	atomic_int stop;
	atomic_long good_ok, good_failed, bad_answered, bad_ok, bad_unanswered, vanished, attacks;
	double seconds;
	int reloads, reloads_ok, reloads_failed;
};

static void *
soak_good(void *arg)
{
	struct soak *k = arg;
	cdx_client *c = st_client(k->tcp, 5000, 2);
	char key[32];
	const char *keys[1] = { key };
	for (unsigned i = 0; !atomic_load(&k->stop); i++) {
		struct cdx_query q = { .collection = "tracks", .k = 10, .nprobe = 8 };
		if (i % 3 == 0) {
			snprintf(key, sizeof(key), "t:%u", (i * 7919u) % SOAK_N);
			q.keys = keys;
			q.nkeys = 1;
		} else {
			q.vectors = k->base + (size_t) ((i * 104729u) % (SOAK_N - 4)) * SOAK_DIM;
			q.nvectors = 1 + i % 4;
			q.dim = SOAK_DIM;
		}
		struct cdx_result *r = NULL;
		struct cdx_client_error err;
		int rc = cdx_client_search(c, &q, &r, &err);
		int good = rc == CDX_OK;
		for (size_t j = 0; good && j < r->nqueries; j++)
			good = r->queries[j].nhits == 10;
		if (good) {
			atomic_fetch_add(&k->good_ok, 1);
		} else {
			atomic_fetch_add(&k->good_failed, 1);
			fprintf(stderr, "soak: good request failed: %s: %s\n", cdx_errname(rc), err.message);
		}
		cdx_result_free(r);
		st_sleep_ms(2);
	}
	cdx_client_close(c);
	return NULL;
}

static void *
soak_bad(void *arg)
{
	struct soak *k = arg;
	float v[SOAK_DIM + 1];
	memcpy(v, k->base, sizeof(v));
	for (unsigned i = 0; !atomic_load(&k->stop); i++) {
		Candex__V1__Request req = CANDEX__V1__REQUEST__INIT;
		Candex__V1__SearchRequest sr = CANDEX__V1__SEARCH_REQUEST__INIT;
		req.protocol_version = 1;
		req.request_id = (char *) "soak-bad";
		req.body_case = CANDEX__V1__REQUEST__BODY_SEARCH;
		req.search = &sr;
		sr.collection = (char *) "tracks";
		sr.dim = SOAK_DIM;
		sr.k = 10;
		sr.vectors = v;
		sr.n_vectors = SOAK_DIM;
		v[3] = 0.5f;
		Candex__V1__Response *resp;
		switch (i % 5) {
		case 0: {
			uint8_t junk[48];
			memset(junk, 0xff, sizeof(junk));
			resp = st_raw_call(k->srv.url, junk, sizeof(junk), 5000);
			break;
		}
		case 1:
			req.protocol_version = 7;
			resp = st_raw_request(k->tcp, &req, 5000);
			break;
		case 2:
			sr.n_vectors = SOAK_DIM + 1;
			resp = st_raw_request(k->srv.url, &req, 5000);
			break;
		case 3:
			v[3] = NAN;
			resp = st_raw_request(k->tcp, &req, 5000);
			break;
		default:
			sr.n_vectors = 0;
			resp = st_raw_request(k->srv.url, &req, 5000);
			break;
		}
		if (resp != NULL && resp->status != 0) {
			atomic_fetch_add(&k->bad_answered, 1);
		} else {
			/* refused at the connection limit the attack fills, or
			 * (resp != NULL) answered OK, which soak_check rejects */
			atomic_fetch_add(resp != NULL ? &k->bad_ok : &k->bad_unanswered, 1);
		}
		candex__v1__response__free_unpacked(resp, NULL);
		st_sleep_ms(5);
	}
	return NULL;
}

static void
soak_vanish_once(struct soak *k, unsigned i)
{
	size_t len;
	uint8_t *req = st_pack_search("tracks", k->base, 32, SOAK_DIM, 200, 64, 0, 0, &len);
	st_vanish(i % 2 ? k->tcp : k->srv.url, req, len, i % 4 >= 2);
	free(req);
	atomic_fetch_add(&k->vanished, 1);
}

static void *
soak_vanish(void *arg)
{
	struct soak *k = arg;
	for (unsigned i = 0; !atomic_load(&k->stop); i++) {
		soak_vanish_once(k, i);
		st_sleep_ms(20);
	}
	return NULL;
}

/* soak_attack_once holds 20 slow frames for 300 ms, then sends two
 * requests of empty strings. */
static void
soak_attack_once(struct soak *k, const uint8_t *payload)
{
	enum { C = 20 };
	int fds[C];
	for (int i = 0; i < C; i++)
		fds[i] = st_slow_frame(i % 2 ? k->tcp : k->srv.url, 2 * SOAK_MAX_MSG - 64, payload);
	st_sleep_ms(300);
	for (int i = 0; i < C; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	size_t len;
	uint8_t *strings = st_strings_request(4, (SOAK_MAX_MSG - 64) / 2, &len);
	for (int i = 0; i < 2; i++) {
		Candex__V1__Response *resp = st_raw_call(k->tcp, strings, len, 5000);
		candex__v1__response__free_unpacked(resp, NULL);
	}
	free(strings);
	atomic_fetch_add(&k->attacks, 1);
}

static void *
soak_attack(void *arg)
{
	struct soak *k = arg;
	uint8_t *payload = calloc(1, 2 * SOAK_MAX_MSG);
	while (!atomic_load(&k->stop)) {
		soak_attack_once(k, payload);
		st_sleep_ms(200);
	}
	free(payload);
	return NULL;
}

/* soak_flip points CURRENT at version v (a fresh link renamed over it). */
static void
soak_flip(struct soak *k, int v)
{
	char link[4096], tmp[4200];
	snprintf(link, sizeof(link), "%s/index/tracks/CURRENT", k->dir);
	snprintf(tmp, sizeof(tmp), "%s.soak", link);
	unlink(tmp);
	assert_int_equal(symlink(k->version[v], tmp), 0);
	assert_int_equal(rename(tmp, link), 0);
}

static void *
soak_reload(void *arg)
{
	struct soak *k = arg;
	cdx_client *c = st_client(k->srv.admin, 30000, 0);
	uint64_t t0 = cdx_now_us();
	for (int r = 0; r < k->reloads && !atomic_load(&k->stop); r++) {
		/* evenly spread over the run */
		uint64_t at = t0 + (uint64_t) (k->seconds * 1e6 * r / k->reloads);
		while (cdx_now_us() < at && !atomic_load(&k->stop))
			st_sleep_ms(5);
		soak_flip(k, (r + 1) % 2);
		struct cdx_client_error err;
		int rc = cdx_client_reload(c, NULL, &err);
		if (rc == CDX_OK) {
			k->reloads_ok++;
		} else {
			k->reloads_failed++;
			fprintf(stderr, "soak: reload %d failed: %s: %s\n", r, cdx_errname(rc), err.message);
		}
	}
	cdx_client_close(c);
	return NULL;
}

/* soak_round runs every kind of traffic for seconds, with reloads. */
static void
soak_round(struct soak *k, double seconds, int reloads)
{
	enum { GOOD = 4 };
	pthread_t good[GOOD], bad, vanish, attack, reload;
	k->seconds = seconds;
	k->reloads = reloads;
	atomic_store(&k->stop, 0);
	for (int i = 0; i < GOOD; i++)
		assert_int_equal(pthread_create(&good[i], NULL, soak_good, k), 0);
	assert_int_equal(pthread_create(&bad, NULL, soak_bad, k), 0);
	assert_int_equal(pthread_create(&vanish, NULL, soak_vanish, k), 0);
	assert_int_equal(pthread_create(&attack, NULL, soak_attack, k), 0);
	assert_int_equal(pthread_create(&reload, NULL, soak_reload, k), 0);
	st_sleep_ms((unsigned) (seconds * 1000));
	pthread_join(reload, NULL); /* the last reload may still be loading */
	atomic_store(&k->stop, 1);
	for (int i = 0; i < GOOD; i++)
		pthread_join(good[i], NULL);
	pthread_join(bad, NULL);
	pthread_join(vanish, NULL);
	pthread_join(attack, NULL);
}

/* soak_quiet waits until no connection is open and nothing is in flight
 * (at most 20 s), then a moment more for nng's reaper. */
static void
soak_quiet(struct soak *k)
{
	for (int i = 0; i < 2000; i++) {
		if (st_metric(k->http, "candex_connections") == 0
		    && st_metric(k->http, "candex_in_flight") == 0)
			break;
		st_sleep_ms(10);
	}
	st_sleep_ms(1500); /* the server trims its heap a second after the last request */
}

/* soak_run builds, serves, warms up for warmup seconds, runs seconds with
 * reloads, and stops the server under attack. */
static struct soak_result
soak_run(double warmup, double seconds, int reloads)
{
	struct soak k = { 0 };
	struct soak_result out = { .seconds = seconds };
	k.dir = tu_tmpdir("soak");
	free(st_build(k.dir, "tracks", SOAK_N, SOAK_DIM, 1, "l2", "t:", "--refine fp16"));
	snprintf(k.version[0], sizeof(k.version[0]), "%s", st_current(k.dir, "tracks"));
	k.base = st_build(k.dir, "tracks", SOAK_N, SOAK_DIM, 2, "l2", "t:", "--refine fp16");
	snprintf(k.version[1], sizeof(k.version[1]), "%s", st_current(k.dir, "tracks"));
	k.http = st_free_port();
	snprintf(k.tcp, sizeof(k.tcp), "tcp://127.0.0.1:%d", st_free_port());
	char extra[512];
	snprintf(extra, sizeof(extra),
	    "--threads 2 --listen %s --http-listen 127.0.0.1:%d --max-message %u --max-connections 24 "
	    "--max-receive-memory 64M --drain-ms %d",
	    k.tcp, k.http, SOAK_MAX_MSG, SOAK_DRAIN);
	assert_int_equal(st_start(&k.srv, k.dir, "soak", extra), 0);

	soak_round(&k, warmup, 2);
	soak_quiet(&k);
	out.rss_start_kb = st_proc_kb(k.srv.pid, "VmRSS");
	out.fds_start = st_fd_count(k.srv.pid);
	atomic_store(&k.good_ok, 0);
	atomic_store(&k.good_failed, 0);
	atomic_store(&k.bad_answered, 0);
	atomic_store(&k.bad_ok, 0);
	atomic_store(&k.bad_unanswered, 0);
	atomic_store(&k.vanished, 0);
	atomic_store(&k.attacks, 0);
	k.reloads_ok = k.reloads_failed = 0;

	soak_round(&k, seconds, reloads);
	out.good_ok = atomic_load(&k.good_ok);
	out.good_failed = atomic_load(&k.good_failed);
	out.bad_answered = atomic_load(&k.bad_answered);
	out.bad_ok = atomic_load(&k.bad_ok);
	out.bad_unanswered = atomic_load(&k.bad_unanswered);
	out.vanished = atomic_load(&k.vanished);
	out.attacks = atomic_load(&k.attacks);
	out.reloads_ok = k.reloads_ok;
	out.reloads_failed = k.reloads_failed;
	soak_quiet(&k);
	out.rss_end_kb = st_proc_kb(k.srv.pid, "VmRSS");
	out.fds_end = st_fd_count(k.srv.pid);

	/* SIGTERM while attackers hold frames and searches are under way */
	uint8_t *payload = calloc(1, 2 * SOAK_MAX_MSG);
	int fds[10];
	for (int i = 0; i < 10; i++)
		fds[i] = st_slow_frame(k.tcp, 2 * SOAK_MAX_MSG - 64, payload);
	for (unsigned i = 0; i < 8; i++)
		soak_vanish_once(&k, i);
	uint64_t t0 = cdx_now_us();
	out.exit_status = st_stop(&k.srv, SIGTERM);
	out.stop_ms = (double) (cdx_now_us() - t0) / 1000.0;
	for (int i = 0; i < 10; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	free(payload);

	fprintf(stderr,
	    "soak: %.0f s: good requests %ld OK, %ld failed; malformed %ld answered with an error, %ld OK, "
	    "%ld refused (connection limit); %ld "
	    "vanished clients; %ld memory attacks; reloads %d OK, %d failed\n"
	    "soak: RSS %ld -> %ld KiB (%+.2f%%); open fds %d -> %d; SIGTERM to exit %.0f ms (--drain-ms %d), "
	    "exit %d\n",
	    seconds, out.good_ok, out.good_failed, out.bad_answered, out.bad_ok, out.bad_unanswered,
	    out.vanished, out.attacks, out.reloads_ok, out.reloads_failed, out.rss_start_kb, out.rss_end_kb,
	    100.0 * (double) (out.rss_end_kb - out.rss_start_kb) / (double) out.rss_start_kb, out.fds_start,
	    out.fds_end, out.stop_ms, SOAK_DRAIN, out.exit_status);
	free(k.base);
	tu_rmdir(k.dir);
	return out;
}

/* soak_check asserts the soak's acceptance: no failed good request or
 * reload, every malformed request answered, RSS within rss_tolerance of
 * the start, no descriptor growth, exit 0 within the drain time. */
static void
soak_check(const struct soak_result *r, int reloads, double rss_tolerance)
{
	assert_int_equal(r->good_failed, 0);
	assert_true(r->good_ok > 0);
	assert_int_equal(r->reloads_failed, 0);
	assert_int_equal(r->reloads_ok, reloads);
	assert_int_equal(r->bad_ok, 0);
	assert_true(r->bad_answered > 0);
	assert_true(r->vanished > 0 && r->attacks > 0);
	assert_true(!ST_RSS_CHECKED
	    || fabs((double) (r->rss_end_kb - r->rss_start_kb)) <= rss_tolerance * (double) r->rss_start_kb);
	assert_true(r->fds_end <= r->fds_start);
	assert_int_equal(r->exit_status, 0);
	assert_true(r->stop_ms < SOAK_DRAIN + ST_EXIT_MS);
}

#endif
