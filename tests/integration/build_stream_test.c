/*
 * build_stream_test.c — how `candex build` reads its input: streamed
 * through mmap in chunks, so peak RSS does not grow with the input (only
 * with the index), the chunk size does not change a byte of the output,
 * and progress shows as a bar on a terminal and as nothing but log lines
 * elsewhere.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "builder/build.h"

static char *root;

static int
setup(void **state)
{
	(void) state;
	root = tu_tmpdir("stream");
	return root ? 0 : -1;
}

static int
teardown(void **state)
{
	(void) state;
	tu_rmdir(root);
	return 0;
}

static char *
gen(const char *name, size_t n, size_t dim, uint64_t seed)
{
	float *x = malloc(n * dim * sizeof(float));
	assert_non_null(x);
	tu_clustered(x, n, dim, 20, seed);
	char *p = tu_path(root, name);
	assert_int_equal(tu_write_fvecs(p, x, n, dim), 0);
	free(x);
	return p;
}

/* build_rss builds input into root/out/c and returns the builder's peak
 * RSS in bytes. chunk: CANDEX_BUILD_CHUNK_BYTES, or NULL for the default. */
static long long
build_rss(const char *input, const char *out, const char *chunk)
{
	char *o = tu_path(root, out);
	const char *argv[] = { CANDEX_BIN, "build", "--input", input, "--collection", "c", "--metric", "l2",
		"--factory", "IVF64,PQ16", "--train-sample", "5000", "--refine", "fp16", "--quiet", "--out",
		o, NULL };
	if (chunk)
		setenv("CANDEX_BUILD_CHUNK_BYTES", chunk, 1);
	else
		unsetenv("CANDEX_BUILD_CHUNK_BYTES");
	struct rusage ru;
	char *output = NULL;
	int rc = tu_exec(&output, NULL, &ru, NULL, argv);
	unsetenv("CANDEX_BUILD_CHUNK_BYTES");
	if (rc != 0)
		fprintf(stderr, "build of %s failed (%d):\n%s\n", input, rc, output);
	assert_int_equal(rc, 0);
	free(output);
	free(o);
	return (long long) ru.ru_maxrss * 1024;
}

static char *
shard_of(const char *out)
{
	char *coll = NULL, *p = NULL;
	assert_true(asprintf(&coll, "%s/%s/c", root, out) >= 0);
	char *cur = tu_current(coll);
	assert_non_null(cur);
	assert_true(asprintf(&p, "%s/%s/shard-0000-of-0001.cdx", coll, cur) >= 0);
	free(cur);
	free(coll);
	return p;
}

/* Peak RSS grows with the index, not with the input: 120k more rows of
 * 64 floats are 31 MB more input but only ~4 MB more index (16-byte codes,
 * 8-byte ids in the lists and in the IDS part); the fp16 refine store (15 MB
 * more) streams to the file. The same build with one 64 MiB chunk, which
 * holds the whole input, shows that the measurement would notice. */
static void
test_rss_bounded(void **state)
{
	(void) state;
	const size_t dim = 64, small = 30000, big = 150000;
	char *in_small = gen("small.fvecs", small, dim, 1), *in_big = gen("big.fvecs", big, dim, 2);
	const long long more_input = (long long) ((big - small) * (4 + dim * 4));
	long long rss_small = build_rss(in_small, "small", "1048576");
	long long rss_big = build_rss(in_big, "big", "1048576");
	long long rss_big_one_chunk = build_rss(in_big, "big-one-chunk", NULL);
	print_message("peak RSS: %lld MB for %zu rows, %lld MB for %zu rows (1 MiB chunks), %lld MB in one "
	              "chunk; input +%lld MB\n",
	    rss_small >> 20, small, rss_big >> 20, big, rss_big_one_chunk >> 20, more_input >> 20);
#if defined(__SANITIZE_ADDRESS__)
	/* ASan's shadow memory and quarantine of freed blocks grow with the work
	 * done: peak RSS says nothing about our buffers there */
	print_message("AddressSanitizer build: not checking the RSS bound\n");
#else
	assert_true(rss_big - rss_small < more_input / 2);
	assert_true(rss_big_one_chunk - rss_small > more_input * 8 / 10); /* the control */
#endif

	/* the chunk size changes nothing in the output */
	char *a = shard_of("big"), *b = shard_of("big-one-chunk");
	assert_true(tu_files_equal(a, b));
	free(a);
	free(b);
	free(in_small);
	free(in_big);
}

/* run_on_pty runs argv with stderr on a pseudo-terminal and returns what
 * the terminal showed. */
static char *
run_on_pty(const char *const argv[], int *rc)
{
	int master, slave;
	assert_int_equal(openpty(&master, &slave, NULL, NULL, NULL), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(master);
		setsid();
		int null = open("/dev/null", O_WRONLY);
		dup2(null, 1);
		dup2(slave, 2);
		execv(argv[0], (char *const *) argv);
		_exit(127);
	}
	close(slave);
	cdx_buf out = { 0 };
	char chunk[4096];
	for (;;) {
		ssize_t n = read(master, chunk, sizeof(chunk));
		if (n > 0)
			cdx_buf_append(&out, chunk, (size_t) n);
		else if (n < 0 && errno == EINTR)
			continue;
		else
			break; /* EIO once the child has closed the terminal */
	}
	close(master);
	cdx_buf_append(&out, "", 1);
	int status;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	*rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
	return out.data;
}

static void
test_progress(void **state)
{
	(void) state;
	char *in = gen("p.fvecs", 20000, 16, 3), *out = tu_path(root, "p");
	/* 64 KiB chunks: 1000 rows each, many updates */
	setenv("CANDEX_BUILD_CHUNK_BYTES", "65536", 1);
	const char *argv[] = { CANDEX_BIN, "build", "--input", in, "--collection", "p", "--metric", "l2",
		"--factory", "IVF32,PQ4", "--out", out, NULL };
	int rc;
	char *tty = run_on_pty(argv, &rc);
	if (rc != 0 || strstr(tty, "rows/s") == NULL)
		fprintf(stderr, "on a terminal (%d):\n%s\n", rc, tty);
	assert_int_equal(rc, 0);
	/* a bar redrawn in place, with count, rate and time */
	assert_non_null(strstr(tty, "\rencode"));
	assert_non_null(strstr(tty, "[##############################] 100% 20.0k/20.0k rows"));
	assert_non_null(strstr(tty, "rows/s"));
	assert_non_null(strstr(tty, "took"));
	free(tty);

	/* not a terminal: no bar, no carriage returns, only log lines */
	char *piped = NULL;
	char *level = getenv("CANDEX_LOG_LEVEL") ? strdup(getenv("CANDEX_LOG_LEVEL")) : NULL;
	setenv("CANDEX_LOG_LEVEL", "info", 1);
	rc = tu_exec(&piped, NULL, NULL, NULL, argv);
	if (level) {
		setenv("CANDEX_LOG_LEVEL", level, 1);
		free(level);
	} else {
		unsetenv("CANDEX_LOG_LEVEL");
	}
	assert_int_equal(rc, 0);
	assert_null(strchr(piped, '\r'));
	assert_null(strstr(piped, "[#"));
	assert_non_null(strstr(piped, "INFO BLD-ENCODE"));
	assert_non_null(strstr(piped, "INFO BLD-PUBLISH"));
	free(piped);

	/* --quiet on a terminal: no bar either */
	const char *quiet[] = { CANDEX_BIN, "build", "--input", in, "--collection", "p", "--metric", "l2",
		"--factory", "IVF32,PQ4", "--out", out, "--quiet", NULL };
	tty = run_on_pty(quiet, &rc);
	assert_int_equal(rc, 0);
	assert_null(strstr(tty, "rows/s"));
	free(tty);
	unsetenv("CANDEX_BUILD_CHUNK_BYTES");
	free(in);
	free(out);
}

int
main(void)
{
	setenv("OMP_WAIT_POLICY", "passive", 0);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rss_bounded),
		cmocka_unit_test(test_progress),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
