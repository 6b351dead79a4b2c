/*
 * limits_test.c — no client can make the server use unbounded memory
 * (issue 10, defect 1), while other clients keep being served:
 *   - many connections, each announcing a large frame and sending all but
 *     its last byte: the connection limit (with eviction of connections
 *     that never complete a request) bounds what nng holds;
 *   - requests of hundreds of thousands of empty strings or unknown fields:
 *     refused from their wire counts, before decoding;
 *   - a request the counts allow but whose decoded form exceeds the
 *     receive-memory budget: refused OVERLOADED by the decoder's allocator.
 * The server's resident memory is sampled from /proc while it happens.
 */
#include "srvtest.h"

#include <pthread.h>
#include <stdatomic.h>

#define N       3000
#define DIM     16
#define MAX_MSG (1u << 20)
#define FRAME   (2u * MAX_MSG) /* nng's frame limit: 2 x --max-message */
#define CONNS   8
#define ATTACK  60

static char *dir;
static float *base;
static struct st_server srv;
static char tcp_url[64];
static int http_port;

static int
setup(void **state)
{
	dir = tu_tmpdir("srvlim");
	base = st_build(dir, "tracks", N, DIM, 3, "l2", "t:", NULL);
	char extra[512];
	http_port = st_free_port();
	snprintf(tcp_url, sizeof(tcp_url), "tcp://127.0.0.1:%d", st_free_port());
	snprintf(extra, sizeof(extra),
	    "--threads 2 --listen %s --http-listen 127.0.0.1:%d --max-message %u --max-connections %d "
	    "--max-receive-memory 64M",
	    tcp_url, http_port, MAX_MSG, CONNS);
	assert_int_equal(st_start(&srv, dir, "lim", extra), 0);
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

/* A client that keeps searching while an attack runs. */
struct good {
	pthread_t t;
	atomic_int stop;
	int ok, failed;
};

static void *
good_main(void *arg)
{
	struct good *g = arg;
	cdx_client *c = st_client(tcp_url, 2000, 5);
	while (!atomic_load(&g->stop)) {
		struct cdx_query q
		    = { .collection = "tracks", .vectors = base, .nvectors = 1, .dim = DIM, .k = 5 };
		struct cdx_result *r = NULL;
		struct cdx_client_error err;
		int rc = cdx_client_search(c, &q, &r, &err);
		if (rc == CDX_OK && r->queries[0].nhits == 5) {
			g->ok++;
		} else {
			g->failed++;
			fprintf(stderr, "  good client: %s: %s\n", cdx_errname(rc), err.message);
		}
		cdx_result_free(r);
		st_sleep_ms(50);
	}
	cdx_client_close(c);
	return NULL;
}

static void
good_start(struct good *g)
{
	memset(g, 0, sizeof(*g));
	assert_int_equal(pthread_create(&g->t, NULL, good_main, g), 0);
	st_sleep_ms(300); /* connected and served once */
}

static void
good_stop(struct good *g)
{
	atomic_store(&g->stop, 1);
	pthread_join(g->t, NULL);
	fprintf(stderr, "good client: %d served, %d failed\n", g->ok, g->failed);
	assert_int_equal(g->failed, 0);
	assert_true(g->ok > 0);
}

/* peak_rss_mb waits ms and returns the server's RSS at its highest since
 * the last st_peak_reset, less base_kb, in MiB. */
static double
peak_rss_mb(long base_kb, unsigned ms)
{
	st_sleep_ms(ms);
	return (double) (st_proc_kb(srv.pid, "VmHWM") - base_kb) / 1024.0;
}

static void
test_slow_frames(void **state)
{
	struct good g;
	good_start(&g);
	st_peak_reset(srv.pid);
	long rss0 = st_proc_kb(srv.pid, "VmRSS");
	uint8_t *payload = calloc(1, FRAME);
	int fds[ATTACK];
	for (int i = 0; i < ATTACK; i++)
		fds[i] = st_slow_frame(tcp_url, FRAME - 64, payload);
	double growth = peak_rss_mb(rss0, 1500);
	/* a client arriving now takes the place of a silent attacker */
	cdx_client *late = st_client(tcp_url, 2000, 3);
	struct cdx_query q = { .collection = "tracks", .vectors = base, .nvectors = 1, .dim = DIM, .k = 5 };
	cdx_result_free(st_search(late, &q));
	cdx_client_close(late);
	double refused = st_metric(http_port, "candex_connections_refused_total");
	double evicted = st_metric(http_port, "candex_connections_evicted_total");
	for (int i = 0; i < ATTACK; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	free(payload);
	fprintf(stderr,
	    "%d connections x %u-byte frames: RSS +%.1f MiB (bound %d x %.0f MiB); %.0f refused, %.0f "
	    "evicted\n",
	    ATTACK, FRAME - 65, growth, CONNS, FRAME / 1048576.0, refused, evicted);
	good_stop(&g);
	/* the old server held every frame: ATTACK x 2 MiB = 120 MiB */
	assert_true(!ST_RSS_CHECKED || growth < CONNS * (FRAME >> 20) + 16);
	assert_true(refused + evicted >= ATTACK - CONNS);
	assert_true(evicted >= 1);
}

struct raw {
	pthread_t t;
	const uint8_t *data;
	size_t len;
	int status;
	char message[256];
};

static void *
raw_main(void *arg)
{
	struct raw *r = arg;
	Candex__V1__Response *resp = st_raw_call(tcp_url, r->data, r->len, 20000);
	r->status = resp != NULL ? (int) resp->status : -1;
	snprintf(r->message, sizeof(r->message), "%s", resp != NULL ? resp->message : "(no answer)");
	candex__v1__response__free_unpacked(resp, NULL);
	return NULL;
}

/* flood sends copies of data at once, one per connection the server has
 * left besides the good client's, and returns the server's RSS growth in
 * MiB meanwhile; each answer must be want with needle in its message. */
static double
flood(const uint8_t *data, size_t len, int want, const char *needle, int *wrong)
{
	enum { FLOOD = CONNS - 2 };
	struct raw r[FLOOD];
	st_peak_reset(srv.pid);
	long rss0 = st_proc_kb(srv.pid, "VmRSS");
	for (int i = 0; i < FLOOD; i++) {
		r[i] = (struct raw) { .data = data, .len = len };
		assert_int_equal(pthread_create(&r[i].t, NULL, raw_main, &r[i]), 0);
	}
	double growth = peak_rss_mb(rss0, 600);
	for (int i = 0; i < FLOOD; i++) {
		pthread_join(r[i].t, NULL);
		if (r[i].status != want || strstr(r[i].message, needle) == NULL) {
			fprintf(stderr, "  got %d '%s', wanted %d '%s'\n", r[i].status, r[i].message, want,
			    needle);
			++*wrong;
		}
	}
	return growth;
}

static void
test_empty_strings(void **state)
{
	struct good g;
	good_start(&g);
	size_t count = (MAX_MSG - 64) / 2, len;
	uint8_t *keys = st_strings_request(4, count, &len); /* query_keys */
	int wrong = 0;
	double g1 = flood(keys, len, CDX_ELIMIT, "query keys exceeds the server's max-batch", &wrong);
	free(keys);
	uint8_t *excl = st_strings_request(9, count, &len); /* exclude_keys */
	double g2 = flood(excl, len, CDX_ELIMIT, "exceed the server's max-excludes", &wrong);
	free(excl);
	/* a field this server does not know (two-byte tags: fewer of them fit) */
	uint8_t *unknown = st_strings_request(29, count * 2 / 3, &len);
	double g3 = flood(unknown, len, CDX_ELIMIT, "unknown fields", &wrong);
	free(unknown);
	/* empty CollectionParts: each would decode into a message of its own */
	uint8_t *parts = st_strings_request(20, count * 2 / 3, &len);
	double g4 = flood(parts, len, CDX_ELIMIT, "parts exceed", &wrong);
	free(parts);
	fprintf(stderr,
	    "%d x %zu empty strings: RSS +%.1f / +%.1f / +%.1f / +%.1f MiB (keys, excludes, unknown, "
	    "parts)\n",
	    CONNS - 2, count, g1, g2, g3, g4);
	good_stop(&g);
	/* decoding them took 6 x ~20 MiB on the old server */
	assert_true(!ST_RSS_CHECKED || CDX_MAX(CDX_MAX(g1, g2), CDX_MAX(g3, g4)) < 24);
	assert_int_equal(wrong, 0);
}

static void
test_decode_budget(void **state)
{
	/* a server whose counts allow a million keys but whose budget is
	 * 4 MiB: the decoder's allocator refuses what the counts let through */
	struct st_server b;
	char extra[512], url[64];
	snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", st_free_port());
	snprintf(extra, sizeof(extra),
	    "--threads 1 --listen %s --max-message %u --max-receive-memory 8M --max-batch 1000000 "
	    "--max-excludes 1000000",
	    url, MAX_MSG);
	assert_int_equal(st_start(&b, dir, "budget", extra), 0);
	size_t count = (MAX_MSG - 64) / 2, len;
	uint8_t *keys = st_strings_request(4, count, &len);
	st_peak_reset(b.pid);
	long rss0 = st_proc_kb(b.pid, "VmRSS");
	Candex__V1__Response *resp = st_raw_call(url, keys, len, 10000);
	long rss1 = st_proc_kb(b.pid, "VmHWM");
	assert_non_null(resp);
	fprintf(stderr, "%zu empty keys under an 8 MiB budget: %s '%s' (peak RSS %+.1f MiB)\n", count,
	    cdx_errname((int) resp->status), resp->message, (double) (rss1 - rss0) / 1024.0);
	assert_int_equal(resp->status, CDX_EOVERLOAD);
	assert_non_null(strstr(resp->message, "receive-memory budget"));
	candex__v1__response__free_unpacked(resp, NULL);
	/* and an ordinary request still works */
	cdx_client *c = st_client(url, 5000, 2);
	struct cdx_query q = { .collection = "tracks", .vectors = base, .nvectors = 1, .dim = DIM, .k = 5 };
	cdx_result_free(st_search(c, &q));
	cdx_client_close(c);
	free(keys);
	assert_int_equal(st_stop(&b, SIGTERM), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_slow_frames),
		cmocka_unit_test(test_empty_strings),
		cmocka_unit_test(test_decode_budget),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
