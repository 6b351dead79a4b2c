/*
 * client_pkgconfig_test.c — the client library as an outside program sees
 * it: `cmake --install --component client` into a fresh prefix, then a small
 * program (tests/install/client_app.c) is compiled and linked through
 * `pkg-config candex-client`, against the shared and the static library,
 * and run against a live `candex serve`. Neither link line nor the program
 * may reference Faiss, OpenMP, OpenBLAS, lz4 or jansson.
 */
#define _GNU_SOURCE
#include "srvtest.h"

static char *dir;
static struct st_server srv;

static int
setup(void **state)
{
	(void) state;
	dir = tu_tmpdir("pkgconfig");
	assert_non_null(dir);
	free(st_build(dir, "tracks", 1500, 16, 3, "l2", "track:", NULL));
	assert_int_equal(st_start(&srv, dir, "pc", "--threads 1"), 0);
	char *out = NULL;
	int rc
	    = tu_run(&out, "cmake --install %s --component client --prefix %s/prefix", CANDEX_BUILD_DIR, dir);
	if (rc != 0)
		fprintf(stderr, "cmake --install failed (%d): %s\n", rc, out);
	free(out);
	assert_int_equal(rc, 0);
	return 0;
}

static int
teardown(void **state)
{
	(void) state;
	st_stop(&srv, SIGTERM);
	tu_rmdir(dir);
	return 0;
}

/* no_server_libraries fails if text names one of the libraries a client
 * must not need. */
static void
no_server_libraries(const char *what, const char *text)
{
	static const char *const banned[] = { "faiss", "gomp", "openblas", "lz4", "jansson" };
	for (size_t i = 0; i < sizeof(banned) / sizeof(banned[0]); i++)
		if (strstr(text, banned[i]) != NULL)
			fail_msg("%s mentions %s:\n%s", what, banned[i], text);
}

/* build_and_run compiles client_app with the given link arguments (a shell
 * fragment) and runs it against the server; returns its output. */
static char *
build_and_run(const char *tag, const char *link)
{
	char *out = NULL;
	int rc = tu_run(&out,
	    "export PKG_CONFIG_PATH=%s/prefix/lib/pkgconfig && %s %s -o %s/app-%s "
	    "%s/tests/install/client_app.c "
	    "$(pkg-config --cflags candex-client) %s",
	    dir, CANDEX_C_COMPILER, CANDEX_SANITIZE_FLAGS, dir, tag, CANDEX_SOURCE_DIR, link);
	if (rc != 0)
		fail_msg("compiling client_app (%s) failed (%d):\n%s", tag, rc, out);
	free(out);

	/* what the program needs, directly (NEEDED) and through its libraries */
	rc = tu_run(&out, "readelf -d %s/app-%s | grep NEEDED && ldd %s/app-%s", dir, tag, dir, tag);
	assert_int_equal(rc, 0);
	no_server_libraries("the program's libraries", out);
	free(out);

	char url[4300];
	snprintf(url, sizeof(url), "%s", srv.url);
	rc = tu_run(&out, "%s/app-%s '%s' tracks track:42", dir, tag, url);
	if (rc != 0)
		fail_msg("client_app (%s) failed (%d):\n%s", tag, rc, out);
	return out;
}

static void
test_pkgconfig_link_line(void **state)
{
	(void) state;
	char *out = NULL;
	assert_int_equal(
	    tu_run(&out,
	        "PKG_CONFIG_PATH=%s/prefix/lib/pkgconfig pkg-config --cflags --libs candex-client && "
	        "PKG_CONFIG_PATH=%s/prefix/lib/pkgconfig pkg-config --static --libs candex-client",
	        dir, dir),
	    0);
	assert_non_null(strstr(out, "-lcandex-client"));
	assert_non_null(strstr(out, "-lnng"));
	assert_non_null(strstr(out, "-lprotobuf-c"));
	no_server_libraries("pkg-config --libs candex-client", out);
	free(out);
	/* only the public API is exported by the shared library */
	assert_int_equal(tu_run(&out, "nm -D --defined-only %s/prefix/lib/libcandex-client.so", dir), 0);
	assert_non_null(strstr(out, "cdx_client_search"));
	assert_null(strstr(out, "cdx_error"));
	assert_null(strstr(out, "candex__v1"));
	free(out);
}

static void
test_shared(void **state)
{
	(void) state;
	char link[8192];
	snprintf(link, sizeof(link), "$(pkg-config --libs candex-client) -Wl,-rpath,%s/prefix/lib", dir);
	char *out = build_and_run("shared", link);
	assert_non_null(strstr(out, "health OK"));
	/* the stored item is its own nearest neighbour */
	assert_non_null(strstr(out, "hit 1 42 track:42 "));
	assert_non_null(strstr(out, "hit 5 "));
	free(out);
}

static void
test_static(void **state)
{
	(void) state;
	char link[8192];
	snprintf(link, sizeof(link),
	    "%s/prefix/lib/libcandex-client.a $(pkg-config --static --libs candex-client | sed "
	    "'s/-lcandex-client//')",
	    dir);
	char *out = build_and_run("static", link);
	assert_non_null(strstr(out, "hit 1 42 track:42 "));
	free(out);
	assert_int_equal(tu_run(&out, "readelf -d %s/app-static | grep NEEDED", dir), 0);
	assert_null(strstr(out, "candex-client"));
	free(out);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pkgconfig_link_line),
		cmocka_unit_test(test_shared),
		cmocka_unit_test(test_static),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
