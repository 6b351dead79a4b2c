/*
 * reload_test.c — hot reload and shutdown: zero failed requests while new
 * versions are built and swapped in (SIGHUP and admin reloads, repeatedly,
 * under load); a version that fails to load leaves the old one serving and
 * the failure is reported; --watch-interval picks up a new CURRENT;
 * collections appear and disappear; SIGTERM drains in-flight requests and
 * exits 0.
 */
#include "srvtest.h"

#include "shard/manifest.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>

#define N       3000
#define DIM     16
#define FACTORY "--factory IVF16,Flat"

static char *dir;

static int
setup(void **state)
{
	dir = tu_tmpdir("srvreload");
	free(st_build(dir, "tracks", N, DIM, 1, "l2", "t:", FACTORY));
	return 0;
}

static int
teardown(void **state)
{
	tu_rmdir(dir);
	return 0;
}

static void
rebuild(uint64_t seed)
{
	free(st_build(dir, "tracks", N, DIM, seed, "l2", "t:", FACTORY));
}

static struct cdx_result *
search_once(cdx_client *c, int *rc, struct cdx_client_error *err)
{
	static float q[DIM];
	struct cdx_query qq = { .collection = "tracks", .vectors = q, .nvectors = 1, .dim = DIM, .k = 10 };
	struct cdx_result *r = NULL;
	*rc = cdx_client_search(c, &qq, &r, err);
	return r;
}

/* wait_version polls until the server answers with version v (<= 10 s). */
static void
wait_version(const char *url, const char *v)
{
	cdx_client *c = st_client(url, 5000, 0);
	for (int i = 0; i < 1000; i++) {
		int rc;
		struct cdx_client_error err;
		struct cdx_result *r = search_once(c, &rc, &err);
		int done = rc == CDX_OK && strcmp(r->index_version, v) == 0;
		cdx_result_free(r);
		if (done) {
			cdx_client_close(c);
			return;
		}
		st_sleep_ms(10);
	}
	fail_msg("server never served version %s", v);
}

struct load {
	const char *url;
	atomic_int stop;
	atomic_int ok, failed;
	pthread_mutex_t mu;
	char versions[16][64];
	int nversions;
	char last_error[256];
};

static void *
load_thread(void *arg)
{
	struct load *l = arg;
	cdx_client *c = st_client(l->url, 5000, 0); /* no retries: every failure counts */
	float q[DIM];
	for (int i = 0; !atomic_load(&l->stop); i++) {
		for (int j = 0; j < DIM; j++)
			q[j] = (float) ((i * 31 + j * 7) % 13) - 6.0f;
		struct cdx_query qq
		    = { .collection = "tracks", .vectors = q, .nvectors = 1, .dim = DIM, .k = 10 };
		struct cdx_result *r = NULL;
		struct cdx_client_error err;
		if (cdx_client_search(c, &qq, &r, &err) != CDX_OK || r->queries[0].nhits != 10) {
			atomic_fetch_add(&l->failed, 1);
			pthread_mutex_lock(&l->mu);
			snprintf(l->last_error, sizeof(l->last_error), "%s: %.200s", cdx_errname(err.code),
			    err.message);
			pthread_mutex_unlock(&l->mu);
			cdx_result_free(r);
			continue;
		}
		atomic_fetch_add(&l->ok, 1);
		pthread_mutex_lock(&l->mu);
		int seen = 0;
		for (int v = 0; v < l->nversions; v++)
			seen |= strcmp(l->versions[v], r->index_version) == 0;
		if (!seen && l->nversions < 16)
			snprintf(l->versions[l->nversions++], 64, "%s", r->index_version);
		pthread_mutex_unlock(&l->mu);
		cdx_result_free(r);
	}
	cdx_client_close(c);
	return NULL;
}

static void
test_reload_under_load(void **state)
{
	struct st_server srv;
	assert_int_equal(st_start(&srv, dir, "load", "--threads 2"), 0);
	struct load l = { .url = srv.url };
	pthread_mutex_init(&l.mu, NULL);
	pthread_t th[3];
	for (int i = 0; i < 3; i++)
		assert_int_equal(pthread_create(&th[i], NULL, load_thread, &l), 0);
	cdx_client *admin = st_client(srv.admin, 30000, 0);

	char published[6][64];
	for (int round = 0; round < 6; round++) {
		rebuild(100 + (uint64_t) round);
		snprintf(published[round], 64, "%.63s", st_current(dir, "tracks"));
		if (round % 2 == 0) {
			kill(srv.pid, SIGHUP);
		} else {
			struct cdx_client_error err;
			assert_int_equal(cdx_client_reload(admin, NULL, &err), CDX_OK);
		}
		wait_version(srv.url, published[round]);
		st_sleep_ms(50);
	}
	atomic_store(&l.stop, 1);
	for (int i = 0; i < 3; i++)
		pthread_join(th[i], NULL);
	cdx_client_close(admin);
	if (atomic_load(&l.failed) != 0)
		fprintf(stderr, "%d failed requests, last: %s\n", atomic_load(&l.failed), l.last_error);
	assert_int_equal(atomic_load(&l.failed), 0);
	assert_true(atomic_load(&l.ok) > 100);
	/* the load saw at least the first version and most of the new ones */
	assert_true(l.nversions >= 5);
	assert_int_equal(st_stop(&srv, SIGTERM), 0);
	assert_true(st_log_has(&srv, "SRV-RELOAD"));
}

static void
test_failed_reload_keeps_old(void **state)
{
	struct st_server srv;
	assert_int_equal(st_start(&srv, dir, "fail", "--threads 1"), 0);
	char good[64], cdir[4096], cmd[16384];
	snprintf(good, sizeof(good), "%.63s", st_current(dir, "tracks"));
	snprintf(cdir, sizeof(cdir), "%s/index/tracks", dir);

	/* a copy of the good version with one byte of a shard flipped */
	snprintf(cmd, sizeof(cmd),
	    "cp -r %s/%s %s/vbad && f=$(ls %s/vbad/*.cdx | head -1) && "
	    "printf '\\377' | dd of=$f bs=1 seek=6000 conv=notrunc status=none",
	    cdir, good, cdir, cdir);
	assert_int_equal(tu_run(NULL, "%s", cmd), 0);
	assert_int_equal(cdx_version_publish(cdir, "vbad"), CDX_OK);

	cdx_client *admin = st_client(srv.admin, 30000, 0);
	cdx_client *c = st_client(srv.url, 5000, 0);
	struct cdx_client_error err;
	int rc = cdx_client_reload(admin, NULL, &err);
	assert_int_not_equal(rc, CDX_OK);
	assert_non_null(strstr(err.message, "vbad"));
	assert_non_null(strstr(err.message, good)); /* "still serving <good>" */
	struct cdx_result *r = search_once(c, &rc, &err);
	assert_int_equal(rc, CDX_OK);
	assert_string_equal(r->index_version, good);
	cdx_result_free(r);
	/* SIGHUP retries, fails again (a new SRV-LOAD-FAIL line: the admin
	 * reload above already wrote one), still serving */
	int fails = st_log_count(&srv, "SRV-LOAD-FAIL");
	assert_true(fails > 0);
	kill(srv.pid, SIGHUP);
	for (int i = 0; i < 500 && st_log_count(&srv, "SRV-LOAD-FAIL") == fails; i++)
		st_sleep_ms(10);
	assert_true(st_log_count(&srv, "SRV-LOAD-FAIL") > fails);
	r = search_once(c, &rc, &err);
	assert_int_equal(rc, CDX_OK);
	assert_string_equal(r->index_version, good);
	cdx_result_free(r);

	/* a good build is picked up again */
	rebuild(7);
	char fixed[64];
	snprintf(fixed, sizeof(fixed), "%.63s", st_current(dir, "tracks"));
	assert_int_equal(cdx_client_reload(admin, "tracks", &err), CDX_OK);
	r = search_once(c, &rc, &err);
	assert_int_equal(rc, CDX_OK);
	assert_string_equal(r->index_version, fixed);
	cdx_result_free(r);
	/* a reload of a collection that does not exist */
	assert_int_equal(cdx_client_reload(admin, "nope", &err), CDX_ENOTFOUND);
	cdx_client_close(admin);
	cdx_client_close(c);
	assert_int_equal(st_stop(&srv, SIGTERM), 0);
	tu_run(NULL, "rm -rf %s/vbad", cdir);
}

static void
test_watch_interval(void **state)
{
	struct st_server srv;
	assert_int_equal(st_start(&srv, dir, "watch", "--threads 1 --watch-interval 0.1"), 0);
	rebuild(8);
	wait_version(srv.url, st_current(dir, "tracks"));
	assert_int_equal(st_stop(&srv, SIGTERM), 0);
	assert_true(st_log_has(&srv, "CURRENT changed"));
}

/* save_points writes one operating point (k = 10, target 0.9) into the
 * served version's manifest, as `candex recall --save` does; flip also
 * flips a bit of a shard's checksum (a points-only reload must refuse that
 * manifest; flipping again restores it). */
static void
save_points(uint32_t nprobe, double recall, int flip)
{
	char vdir[8300];
	snprintf(vdir, sizeof(vdir), "%s/index/tracks/%s", dir, st_current(dir, "tracks"));
	struct cdx_manifest *m = NULL;
	assert_int_equal(cdx_manifest_load(&m, vdir), CDX_OK);
	free(m->points);
	m->points = calloc(1, sizeof(*m->points));
	m->points[0] = (struct cdx_operating_point) {
		.recall_target = 0.9, .recall = recall, .k = 10, .nprobe = nprobe, .p99_ms = 1
	};
	m->npoints = 1;
	if (flip)
		m->shards[0].xxh64 ^= 1;
	assert_int_equal(cdx_manifest_save(m, vdir), CDX_OK);
	cdx_manifest_free(m);
}

/* served_nprobe searches k = 10 at recall 0.9 and returns the nprobe used
 * (and whether the target was unmet). */
static uint32_t
served_nprobe(cdx_client *c, int *unmet, float *expected)
{
	static float q[DIM];
	struct cdx_query qq = { .collection = "tracks",
		.vectors = q,
		.nvectors = 1,
		.dim = DIM,
		.k = 10,
		.recall_target = 0.9f };
	struct cdx_result *r = st_search(c, &qq);
	uint32_t np = r->nprobe;
	*unmet = r->target_unmet;
	*expected = r->expected_recall;
	cdx_result_free(r);
	return np;
}

/* wait_nprobe polls until searches use nprobe (<= 5 s). */
static void
wait_nprobe(cdx_client *c, uint32_t want)
{
	int unmet;
	float expected;
	for (int i = 0; i < 500; i++) {
		if (served_nprobe(c, &unmet, &expected) == want)
			return;
		st_sleep_ms(10);
	}
	fail_msg("the server never used the saved nprobe %u", want);
}

static void
test_reload_applies_points(void **state)
{
	/* Operating points saved into the live version (candex recall --save)
	 * apply on SIGHUP, on an admin reload and with the watch: no restart. */
	struct st_server srv;
	assert_int_equal(st_start(&srv, dir, "points", "--threads 1"), 0);
	cdx_client *c = st_client(srv.url, 5000, 0);
	cdx_client *admin = st_client(srv.admin, 30000, 0);
	int unmet;
	float expected;
	save_points(3, 0.5, 0); /* start from a known point */
	assert_int_equal(cdx_client_reload(admin, "tracks", NULL), CDX_OK);
	assert_int_equal(served_nprobe(c, &unmet, &expected), 3);
	save_points(5, 0.93, 0);
	kill(srv.pid, SIGHUP);
	wait_nprobe(c, 5);
	assert_int_equal(served_nprobe(c, &unmet, &expected), 5);
	assert_false(unmet);
	assert_true(fabsf(expected - 0.93f) < 1e-6f);

	save_points(7, 0.95, 0);
	struct cdx_client_error err;
	assert_int_equal(cdx_client_reload(admin, "tracks", &err), CDX_OK);
	assert_int_equal(served_nprobe(c, &unmet, &expected), 7);

	/* a manifest that no longer fits the loaded shards is refused */
	save_points(9, 0.97, 1);
	assert_int_not_equal(cdx_client_reload(admin, "tracks", &err), CDX_OK);
	assert_non_null(strstr(err.message, "manifest"));
	assert_int_equal(served_nprobe(c, &unmet, &expected), 7);
	save_points(7, 0.95, 1);
	cdx_client_close(admin);
	cdx_client_close(c);
	assert_int_equal(st_stop(&srv, SIGTERM), 0);
	assert_true(st_log_has(&srv, "SRV-POINTS"));

	assert_int_equal(st_start(&srv, dir, "pwatch", "--threads 1 --watch-interval 0.1"), 0);
	c = st_client(srv.url, 5000, 0);
	assert_int_equal(served_nprobe(c, &unmet, &expected), 7);
	save_points(11, 0.99, 0);
	wait_nprobe(c, 11);
	cdx_client_close(c);
	assert_int_equal(st_stop(&srv, SIGTERM), 0);
}

static void
test_collections_come_and_go(void **state)
{
	struct st_server srv;
	assert_int_equal(st_start(&srv, dir, "cg", "--threads 1"), 0);
	cdx_client *admin = st_client(srv.admin, 30000, 0);
	cdx_client *c = st_client(srv.url, 5000, 0);
	struct cdx_client_error err;
	float *pod = st_build(dir, "podcasts", 1500, 8, 3, "l2", "p:", "--factory Flat");
	assert_int_equal(cdx_client_reload(admin, NULL, &err), CDX_OK);
	struct cdx_query q = { .collection = "podcasts", .vectors = pod, .nvectors = 1, .dim = 8, .k = 3 };
	struct cdx_result *r = st_search(c, &q);
	assert_string_equal(r->queries[0].hits[0].key, "p:0"); /* exact l2: itself */
	cdx_result_free(r);

	assert_int_equal(tu_run(NULL, "rm -rf %s/index/podcasts", dir), 0);
	/* a reload keeps what is loaded (and says so); only a drop retires it */
	char *out = NULL;
	assert_int_equal(tu_run(&out, "%s query --url %s --reload", CANDEX_BIN, srv.admin), 1);
	assert_non_null(strstr(out, "CURRENT link is gone"));
	free(out);
	r = st_search(c, &q);
	cdx_result_free(r);
	assert_int_equal(tu_run(&out, "%s query --url %s --drop podcasts", CANDEX_BIN, srv.url), 1);
	assert_non_null(strstr(out, "admin listener"));
	free(out);
	/* the CLI's admin drop, which then prints what is served */
	assert_int_equal(tu_run(&out, "%s query --url %s --drop podcasts", CANDEX_BIN, srv.admin), 0);
	assert_non_null(strstr(out, "dropped podcasts"));
	assert_non_null(strstr(out, "\"tracks\""));
	assert_null(strstr(out, "\"podcasts\""));
	free(out);
	assert_int_equal(tu_run(&out, "%s query --url %s --reload", CANDEX_BIN, srv.admin), 0);
	assert_non_null(strstr(out, "reloaded"));
	free(out);
	assert_int_equal(cdx_client_search(c, &q, &r, &err), CDX_ENOTFOUND);
	assert_true(st_log_has(&srv, "SRV-DROP"));
	cdx_client_close(admin);
	cdx_client_close(c);
	free(pod);
	assert_int_equal(st_stop(&srv, SIGTERM), 0);
}

struct drain {
	const char *url;
	atomic_uint_fast64_t sigterm_us; /* 0 until SIGTERM is sent */
	atomic_int ok, unavailable, lost_before, after_other;
};

static void *
drain_thread(void *arg)
{
	struct drain *d = arg;
	cdx_client *c = st_client(d->url, 3000, 0);
	float q[8 * DIM];
	for (int i = 0; i < 8 * DIM; i++)
		q[i] = (float) (i % 11) - 5.0f;
	for (;;) {
		struct cdx_query qq = { .collection = "tracks",
			.vectors = q,
			.nvectors = 8,
			.dim = DIM,
			.k = 100,
			.nprobe = 16 };
		struct cdx_result *r = NULL;
		struct cdx_client_error err;
		uint64_t t0 = cdx_now_us();
		int rc = cdx_client_search(c, &qq, &r, &err);
		cdx_result_free(r);
		uint64_t sig = atomic_load(&d->sigterm_us);
		if (rc == CDX_OK) {
			atomic_fetch_add(&d->ok, 1);
			continue;
		}
		if (sig != 0 && t0 + 20000 < sig)
			atomic_fetch_add(
			    &d->lost_before, 1); /* in flight well before SIGTERM, yet not answered */
		else if (rc == CDX_EUNAVAIL)
			atomic_fetch_add(&d->unavailable, 1);
		else
			atomic_fetch_add(&d->after_other, 1);
		if (sig == 0)
			atomic_fetch_add(&d->lost_before, 1);
		break;
	}
	cdx_client_close(c);
	return NULL;
}

static void
test_graceful_shutdown(void **state)
{
	struct st_server srv;
	/* one worker and eight clients: the queue always holds work to drain */
	assert_int_equal(st_start(&srv, dir, "drain", "--threads 1"), 0);
	struct drain d = { .url = srv.url };
	pthread_t th[8];
	for (int i = 0; i < 8; i++)
		assert_int_equal(pthread_create(&th[i], NULL, drain_thread, &d), 0);
	st_sleep_ms(300);
	atomic_store(&d.sigterm_us, cdx_now_us());
	int status = st_stop(&srv, SIGTERM);
	for (int i = 0; i < 8; i++)
		pthread_join(th[i], NULL);
	assert_int_equal(status, 0);
	assert_true(atomic_load(&d.ok) > 8);
	assert_int_equal(atomic_load(&d.lost_before), 0);
	assert_true(st_log_has(&srv, "SRV-STOPPED"));
	fprintf(stderr, "drain: %d ok, %d unavailable, %d after exit\n", atomic_load(&d.ok),
	    atomic_load(&d.unavailable), atomic_load(&d.after_other));

	/* SIGINT too */
	assert_int_equal(st_start(&srv, dir, "int", "--threads 1"), 0);
	assert_int_equal(st_stop(&srv, SIGINT), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_reload_under_load),
		cmocka_unit_test(test_failed_reload_keeps_old),
		cmocka_unit_test(test_watch_interval),
		cmocka_unit_test(test_reload_applies_points),
		cmocka_unit_test(test_collections_come_and_go),
		cmocka_unit_test(test_graceful_shutdown),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
