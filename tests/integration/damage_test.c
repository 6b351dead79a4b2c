/*
 * damage_test.c — what happens to a running `candex serve` when the files
 * under it change badly: a shard that shrinks while it is being loaded is
 * refused with a log line (never SIGBUS, which would end every collection),
 * and a deleted CURRENT keeps the loaded version serving until an admin
 * drops the collection explicitly.
 */
#include "srvtest.h"

#include <dirent.h>

#include "shard/manifest.h"

#define N       3000
#define DIM     16
#define FACTORY "--factory IVF16,Flat"

static char *dir;

static int
setup(void **state)
{
	dir = tu_tmpdir("damage");
	free(st_build(dir, "tracks", N, DIM, 1, "l2", "t:", FACTORY));
	return 0;
}

static int
teardown(void **state)
{
	tu_rmdir(dir);
	return 0;
}

static int
search_version(cdx_client *c, const char *coll, char *version, size_t size)
{
	static float q[DIM];
	struct cdx_query qq = { .collection = coll, .vectors = q, .nvectors = 1, .dim = DIM, .k = 5 };
	struct cdx_result *r = NULL;
	struct cdx_client_error err;
	int rc = cdx_client_search(c, &qq, &r, &err);
	if (rc == CDX_OK && version != NULL)
		snprintf(version, size, "%s", r->index_version);
	cdx_result_free(r);
	return rc;
}

/* first_shard writes the path of the first *.cdx file of vdir into out. */
static void
first_shard(const char *vdir, char *out, size_t size)
{
	DIR *d = opendir(vdir);
	struct dirent *e;
	assert_non_null(d);
	out[0] = '\0';
	while ((e = readdir(d)) != NULL) {
		size_t n = strlen(e->d_name);
		if (n > 4 && strcmp(e->d_name + n - 4, ".cdx") == 0) {
			snprintf(out, size, "%s/%s", vdir, e->d_name);
			break;
		}
	}
	closedir(d);
	assert_true(out[0] != '\0');
}

/* A new version whose shard is truncated between the server sizing it and
 * reading it: the reload is refused as corrupt, the old version serves on. */
static void
test_shard_shrinks_while_loading(void **state)
{
	char cdir[4096], vdir[4200], shard[4400], good[64];
	snprintf(cdir, sizeof(cdir), "%s/index/tracks", dir);
	snprintf(good, sizeof(good), "%.63s", st_current(dir, "tracks"));
	snprintf(vdir, sizeof(vdir), "%s/vshrink", cdir);
	assert_int_equal(tu_run(NULL, "cp -r %s/%s %s", cdir, good, vdir), 0);
	first_shard(vdir, shard, sizeof(shard));

	/* the preload library shrinks the shard the first time the server
	 * fstat()s it: when the reload below opens it */
	tu_preload_begin(CANDEX_SHRINK_FILE_LIB);
	setenv("CANDEX_SHRINK_PATH", shard, 1);
	setenv("CANDEX_SHRINK_TO", "6000", 1);
	struct st_server srv;
	int started = st_start(&srv, dir, "shrink", "--threads 1");
	tu_preload_end();
	unsetenv("CANDEX_SHRINK_PATH");
	assert_int_equal(started, 0);

	assert_int_equal(cdx_version_publish(cdir, "vshrink"), CDX_OK);
	cdx_client *admin = st_client(srv.admin, 30000, 0);
	cdx_client *c = st_client(srv.url, 5000, 0);
	struct cdx_client_error err;
	int rc = cdx_client_reload(admin, NULL, &err);
	if (rc != CDX_ECORRUPT)
		st_dump_log(&srv);
	assert_int_equal(rc, CDX_ECORRUPT);
	struct stat st;
	assert_int_equal(stat(shard, &st), 0);
	assert_int_equal(st.st_size, 6000); /* the damage did happen */
	assert_int_equal(kill(srv.pid, 0), 0);
	char v[64];
	assert_int_equal(search_version(c, "tracks", v, sizeof(v)), CDX_OK);
	assert_string_equal(v, good);
	assert_true(st_log_has(&srv, "SRV-LOAD-FAIL"));
	assert_true(st_log_has(&srv, "shrank while being read"));
	cdx_client_close(admin);
	cdx_client_close(c);
	assert_int_equal(st_stop(&srv, SIGTERM), 0);
	assert_int_equal(cdx_version_publish(cdir, good), CDX_OK);
	assert_int_equal(tu_run(NULL, "rm -rf %s", vdir), 0);
}

/* log_count counts the lines of the server's log that contain what. */
static int
log_count(const struct st_server *srv, const char *what)
{
	char *text = NULL;
	size_t len;
	int n = 0;
	if (cdx_read_file(srv->log, &text, &len) != CDX_OK)
		return 0;
	for (const char *p = text; (p = strstr(p, what)) != NULL; p += strlen(what))
		n++;
	free(text);
	return n;
}

/* A deleted CURRENT (then the watcher, a SIGHUP, an admin reload) keeps the
 * loaded version serving, warns once and shows in /metrics; an admin drop,
 * refused while a CURRENT exists, retires the collection. */
static void
test_deleted_current_keeps_serving(void **state)
{
	char cdir[4096], link[4200], good[64], args[256], v[64];
	snprintf(cdir, sizeof(cdir), "%s/index/tracks", dir);
	snprintf(link, sizeof(link), "%s/CURRENT", cdir);
	snprintf(good, sizeof(good), "%.63s", st_current(dir, "tracks"));
	int port = st_free_port();
	snprintf(args, sizeof(args), "--threads 1 --watch-interval 0.05 --http-listen 127.0.0.1:%d", port);
	struct st_server srv;
	assert_int_equal(st_start(&srv, dir, "gone", args), 0);
	cdx_client *admin = st_client(srv.admin, 30000, 0);
	cdx_client *c = st_client(srv.url, 5000, 0);
	const char *gauge = "candex_collection_current_missing{collection=\"tracks\"}";
	struct cdx_client_error err;

	assert_int_equal(unlink(link), 0);
	/* the watcher notices (and once dropped the collection here) */
	for (int i = 0; i < 500 && !st_log_has(&srv, "SRV-CURRENT-GONE") && !st_log_has(&srv, "SRV-DROP");
	     i++)
		st_sleep_ms(10);
	st_sleep_ms(300); /* several more watch polls */
	kill(srv.pid, SIGHUP);
	st_sleep_ms(100);
	assert_int_equal(search_version(c, "tracks", v, sizeof(v)), CDX_OK);
	assert_string_equal(v, good);
	assert_true(st_metric(port, gauge) == 1);
	assert_int_equal(log_count(&srv, "SRV-CURRENT-GONE"), 1); /* warned once */
	assert_int_equal(cdx_client_reload(admin, NULL, &err), CDX_ENOTFOUND);
	assert_non_null(strstr(err.message, "CURRENT link is gone"));
	assert_int_equal(search_version(c, "tracks", v, sizeof(v)), CDX_OK);

	/* CURRENT comes back: nothing to load, the gauge clears */
	assert_int_equal(cdx_version_publish(cdir, good), CDX_OK);
	for (int i = 0; i < 500 && st_metric(port, gauge) != 0; i++)
		st_sleep_ms(10);
	assert_true(st_metric(port, gauge) == 0);
	assert_true(st_log_has(&srv, "SRV-CURRENT-BACK"));

	/* retiring it is an explicit admin action, refused while a CURRENT
	 * would load the collection again, and only on the admin listener */
	assert_int_equal(cdx_client_drop(admin, "tracks", &err), CDX_EINVAL);
	assert_int_equal(cdx_client_drop(c, "tracks", &err), CDX_EPERM);
	assert_int_equal(unlink(link), 0);
	assert_int_equal(cdx_client_drop(admin, "tracks", &err), CDX_OK);
	assert_int_equal(search_version(c, "tracks", NULL, 0), CDX_ENOTFOUND);
	assert_int_equal(cdx_client_drop(admin, "tracks", &err), CDX_ENOTFOUND);
	assert_true(st_log_has(&srv, "SRV-DROP"));
	cdx_client_close(admin);
	cdx_client_close(c);
	assert_int_equal(st_stop(&srv, SIGTERM), 0);
	assert_int_equal(cdx_version_publish(cdir, good), CDX_OK);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_shard_shrinks_while_loading),
		cmocka_unit_test(test_deleted_current_keeps_serving),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
