/*
 * inputs_test.c — one reader for every input: `candex build`, `candex
 * recall` and `candex query` accept and refuse the same vector files, with
 * the same message: a CSV given with --dim, a 3-D .npy and files with
 * trailing bytes are refused; a float64 .npy is read, and gives the same
 * index and the same answers as float32.
 */
#define _GNU_SOURCE
#include "srvtest.h"

#define N   1500
#define DIM 16

static char *dir;
static float *base;
static char *base_path;
static struct st_server srv;

/* write_npy writes a .npy with extra bytes after its data. */
static void
write_npy(const char *path, const char *descr, const char *shape, const void *data, size_t len, size_t extra)
{
	assert_int_equal(tu_write_npy(path, descr, 0, shape, data, len), 0);
	FILE *f = fopen(path, "ab");
	assert_non_null(f);
	for (size_t i = 0; i < extra; i++)
		fputc(0, f);
	fclose(f);
}

static int
setup(void **state)
{
	(void) state;
	dir = tu_tmpdir("inputs");
	assert_non_null(dir);
	base = st_build(dir, "tracks", N, DIM, 21, "l2", "t:", NULL);
	assert_true(asprintf(&base_path, "%s/tracks-21.fvecs", dir) > 0);
	assert_int_equal(st_start(&srv, dir, "inputs", "--threads 1"), 0);

	char *p = tu_path(dir, "emb.csv");
	FILE *f = fopen(p, "w");
	for (int r = 0; r < 20; r++)
		for (int c = 0; c < DIM; c++)
			fprintf(f, "%.6f%s", (double) base[r * DIM + c], c + 1 < DIM ? "," : "\n");
	fclose(f);
	free(p);
	p = tu_path(dir, "q3d.npy");
	write_npy(p, "<f4", "(2, 10, 16)", base, 20 * DIM * sizeof(float), 0);
	free(p);
	p = tu_path(dir, "trail.npy");
	write_npy(p, "<f4", "(20, 16)", base, 20 * DIM * sizeof(float), 12);
	free(p);
	p = tu_path(dir, "q32.npy");
	write_npy(p, "<f4", "(20, 16)", base, 20 * DIM * sizeof(float), 0);
	free(p);
	double d[20 * DIM];
	for (int i = 0; i < 20 * DIM; i++)
		d[i] = base[i];
	p = tu_path(dir, "q64.npy");
	write_npy(p, "<f8", "(20, 16)", d, sizeof(d), 0);
	free(p);
	p = tu_path(dir, "trail.fvecs");
	assert_int_equal(tu_write_fvecs(p, base, 20, DIM), 0);
	f = fopen(p, "ab");
	fwrite("ab", 1, 2, f); /* a part of a 21st row */
	fclose(f);
	free(p);
	return 0;
}

static int
teardown(void **state)
{
	(void) state;
	st_stop(&srv, SIGTERM);
	free(base);
	free(base_path);
	tu_rmdir(dir);
	return 0;
}

/* run_cmd runs a candex subcommand on file (in dir) and returns its exit
 * status; *out gets its output. */
static int
run_cmd(const char *cmd, const char *file, char **out)
{
	if (strcmp(cmd, "build") == 0)
		return tu_run(out,
		    "%s build --quiet --input %s/%s --dim %d --collection x --metric l2 --out %s/bad",
		    CANDEX_BIN, dir, file, DIM, dir);
	if (strcmp(cmd, "recall") == 0)
		return tu_run(out,
		    "%s recall --quiet --index %s/index/tracks --base %s --queries %s/%s -k 5 --nprobe 4",
		    CANDEX_BIN, dir, base_path, dir, file);
	return tu_run(out, "%s query --url %s --collection tracks --vector-file %s/%s --row 3 -k 5 --json",
	    CANDEX_BIN, srv.url, dir, file);
}

static const char *const commands[] = { "build", "recall", "query" };

/* refused_everywhere: every command fails on file with the same message. */
static void
refused_everywhere(const char *file, const char *message)
{
	for (size_t i = 0; i < 3; i++) {
		char *out = NULL;
		int rc = run_cmd(commands[i], file, &out);
		if (rc != 1 || strstr(out, message) == NULL)
			fail_msg("candex %s on %s: exit %d, wanted 1 with '%s':\n%s", commands[i], file, rc,
			    message, out);
		free(out);
	}
}

static void
test_csv(void **state)
{
	(void) state;
	refused_everywhere("emb.csv", "emb.csv: unknown vector format (it looks like a text file: CSV?)");
}

static void
test_3d_npy(void **state)
{
	(void) state;
	refused_everywhere("q3d.npy", "q3d.npy: .npy must be 2-D (rows x dim), has 3 dimensions");
}

static void
test_trailing_bytes(void **state)
{
	(void) state;
	refused_everywhere("trail.npy", "trail.npy: 12 bytes after the 20 rows the header announces");
	refused_everywhere("trail.fvecs", "trail.fvecs: truncated: the file ends inside row 20");
}

/* float64 reads as the float32 it holds: the same answers, the same index. */
static void
test_float64(void **state)
{
	(void) state;
	char *a = NULL, *b = NULL;
	assert_int_equal(run_cmd("query", "q64.npy", &a), 0);
	assert_int_equal(run_cmd("query", "q32.npy", &b), 0);
	/* the same hits (server_time_us differs, the rest must not) */
	assert_non_null(strstr(a, "\"results\""));
	assert_string_equal(strstr(a, "\"results\""), strstr(b, "\"results\""));
	assert_non_null(strstr(a, "\"key\": \"t:3\""));
	free(a);
	free(b);
	assert_int_equal(run_cmd("recall", "q64.npy", &a), 0);
	free(a);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(
		    tu_run(&a, "%s build --quiet --input %s/q%d.npy --collection x --metric l2 --out %s/f%d",
		        CANDEX_BIN, dir, i ? 64 : 32, dir, i),
		    0);
		free(a);
	}
	assert_int_equal(
	    tu_run(&a, "cmp %s/f0/x/CURRENT/shard-0000-of-0001.cdx %s/f1/x/CURRENT/shard-0000-of-0001.cdx",
	        dir, dir),
	    0);
	free(a);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_csv),
		cmocka_unit_test(test_3d_npy),
		cmocka_unit_test(test_trailing_bytes),
		cmocka_unit_test(test_float64),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
