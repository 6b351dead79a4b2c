/*
 * install_test.c — candex installed as a service runs it: `cmake --install`
 * into a fresh prefix puts the Faiss libraries beside the binary (RUNPATH
 * $ORIGIN/../lib, nothing pointing into the build user's home cache), and
 * the installed binary, run as `nobody` with an empty environment when the
 * test runs as root (so the build user's ~/.cache is out of reach), starts
 * on a read-only index and answers a query.
 */
#include "srvtest.h"

#include <sys/stat.h>

#define N   1000
#define DIM 8

static char *dir;

static int
setup(void **state)
{
	dir = tu_tmpdir("install");
	/* the service user must reach the index and the socket directory */
	chmod(dir, 0755);
	return 0;
}

static int
teardown(void **state)
{
	tu_rmdir(dir);
	return 0;
}

static void
test_install_and_run_as_service_user(void **state)
{
	char *out = NULL;
	int rc = tu_run(&out, "cmake --install %s --prefix %s/prefix", CANDEX_BUILD_DIR, dir);
	if (rc != 0)
		fprintf(stderr, "%s\n", out);
	free(out);
	assert_int_equal(rc, 0);

	/* every RUNPATH entry of the binary is relative to it */
	assert_int_equal(tu_run(&out, "readelf -d %s/prefix/bin/candex", dir), 0);
	const char *rp = strstr(out, "(RUNPATH)");
	assert_non_null(rp);
	assert_non_null(strstr(rp, "[$ORIGIN/../lib]"));
	assert_null(strstr(out, "/.cache/"));
	free(out);
	assert_int_equal(
	    tu_run(
	        NULL, "test -f %s/prefix/lib/libfaiss_c.so && test -f %s/prefix/lib/libfaiss.so", dir, dir),
	    0);
	assert_int_equal(tu_run(NULL, "test -f %s/prefix/share/candex/systemd/candex.service", dir), 0);

	/* a read-only index: built by this user, 0755/0644, then served by another */
	free(st_build(dir, "tracks", N, DIM, 1, "l2", "t:", "--factory Flat"));
	assert_int_equal(tu_run(NULL, "chmod -R a+rX,go-w %s/index && mkdir -m 0777 %s/run", dir, dir), 0);

	/* as nobody (if we can), with no environment: no HOME, no cache */
	const char *as = getuid() == 0 ? "setpriv --reuid=65534 --regid=65534 --clear-groups " : "";
	if (getuid() != 0)
		fprintf(stderr, "not root: the installed binary runs as this user, with HOME unset\n");
	struct st_server srv;
	memset(&srv, 0, sizeof(srv));
	snprintf(srv.url, sizeof(srv.url), "ipc://%s/run/q.ipc", dir);
	snprintf(srv.log, sizeof(srv.log), "%s/serve-installed.log", dir);
	char cmd[16384];
	/* ASan's leak check would want its suppression file, which the
	 * service user may not be able to read: memory errors still abort */
	snprintf(cmd, sizeof(cmd),
	    "exec %senv -i PATH=/usr/bin:/bin ASAN_OPTIONS=detect_leaks=0 %s/prefix/bin/candex serve "
	    "--index-dir %s/index --listen %s --threads 1 >%s 2>&1",
	    as, dir, dir, srv.url, srv.log);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		execl("/bin/sh", "sh", "-c", cmd, (char *) NULL);
		_exit(127);
	}
	srv.pid = pid;
	int ready = 0, status;
	for (int i = 0; i < 3000 && !ready; i++) {
		ready = st_log_has(&srv, "SRV-READY");
		if (!ready && waitpid(pid, &status, WNOHANG) == pid) {
			srv.pid = 0;
			st_dump_log(&srv);
			fail_msg("the installed candex did not start");
		}
		st_sleep_ms(10);
	}
	assert_true(ready);
	cdx_client *c = st_client(srv.url, 5000, 0);
	float q[DIM] = { 0 };
	struct cdx_query qq = { .collection = "tracks", .vectors = q, .nvectors = 1, .dim = DIM, .k = 3 };
	struct cdx_result *r = st_search(c, &qq);
	assert_int_equal(r->queries[0].nhits, 3);
	cdx_result_free(r);
	cdx_client_close(c);
	assert_int_equal(st_stop(&srv, SIGTERM), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_install_and_run_as_service_user),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
