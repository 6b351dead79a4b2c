/*
 * testutil.h — helpers shared by candex's cmocka tests: temporary
 * directories, seeded clustered data, fvecs files, running the candex CLI.
 * Tests generate their own small data; nothing here reads ../shared/data.
 */
#ifndef CANDEX_TESTUTIL_H
#define CANDEX_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/resource.h>

#include <cmocka.h>

/* tu_tmpdir creates a fresh directory under $TMPDIR and returns its path
 * (static storage per call site is not assumed: caller frees). Removed by
 * tu_rmdir. */
char *tu_tmpdir(const char *tag);
void tu_rmdir(char *dir); /* removes recursively and frees dir */

/* tu_clustered fills x (n x dim) with nclusters Gaussian clusters, seeded. */
void tu_clustered(float *x, size_t n, size_t dim, size_t nclusters, uint64_t seed);
/* tu_write_fvecs writes n x dim floats as .fvecs. Returns 0 on success. */
int tu_write_fvecs(const char *path, const float *x, size_t n, size_t dim);
/* tu_write_npy writes a .npy (format 1.0, header padded to 64 bytes) with
 * dtype descr ("<f4"), shape written as Python does ("(20, 8)", "(5,)"),
 * C or Fortran order, then len bytes of data. Returns 0 on success. */
int tu_write_npy(
    const char *path, const char *descr, int fortran, const char *shape, const void *data, size_t len);
/* tu_write_keys writes one "prefix<i>" line per row. */
int tu_write_keys(const char *path, const char *prefix, size_t n);
/* tu_path joins two components into a malloc'd path. */
char *tu_path(const char *a, const char *b);

/* tu_run runs a shell command line (printf-formatted) and returns its exit
 * status (0..255), or -1 if it was killed by a signal. Its stdout+stderr go
 * to *output (malloc'd) when output is not NULL. */
int tu_run(char **output, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* How tu_exec runs a child. Zero-initialised means: no limits, no hooks. */
struct tu_exec_opts {
	long long fsize_limit;          /* > 0: RLIMIT_FSIZE in the child. SIGXFSZ keeps its default
	                                   action (candex build ignores it itself, so that a write past
	                                   the limit fails with EFBIG, as one to a full disk) */
	void (*child_setup)(void *arg); /* run in the child before exec (same pid as the command) */
	int (*ready)(void *arg);        /* polled every 2 ms while the child runs */
	void *arg;                      /* for child_setup and ready */
	int signal_when_ready;          /* a signal sent to the child the first time ready() returns 1 */
};

/* tu_exec runs argv[0] with argv (no shell), stdout+stderr to *output
 * (malloc'd, may be NULL). Returns the exit status (0..255), or -(signal)
 * if the child was killed by a signal. *ru (may be NULL) gets the child's
 * resource usage (ru_maxrss: its peak RSS in KiB). *was_ready (may be
 * NULL) is set to 1 if ready() returned 1 while the child ran. */
int tu_exec(char **output, const struct tu_exec_opts *opts, struct rusage *ru, int *was_ready,
    const char *const argv[]);

/* tu_current returns the target of coll_dir/CURRENT (malloc'd) or NULL. */
char *tu_current(const char *coll_dir);
/* tu_count_dirs counts the entries of coll_dir: versions (no leading '.',
 * not CURRENT) and staging directories (".staging-*"). */
void tu_count_dirs(const char *coll_dir, int *versions, int *staging);
/* tu_files_equal: 1 if both files can be read and hold the same bytes. */
int tu_files_equal(const char *a, const char *b);

/* tu_utf8_strict decodes s[0, len) with iconv (glibc's UTF-8 decoder,
 * which refuses stray, overlong, surrogate and cut-short sequences): 1 if it
 * is valid UTF-8. An oracle independent of candex's own checks. */
int tu_utf8_strict(const char *s, size_t len);

/* tu_exact_knn computes exact top-k rows (for l2: smallest squared
 * distance; ip: largest inner product) of q among x, by brute force. */
void tu_exact_knn(
    const float *x, size_t n, size_t dim, const float *q, size_t k, int metric_ip, int64_t *out);

/* tu_preload_begin puts lib in LD_PRELOAD for the processes started until
 * tu_preload_end(), which restores the environment. A sanitized candex
 * wants its runtime first in the library list: ASAN_OPTIONS gets
 * verify_asan_link_order=0 meanwhile. */
void tu_preload_begin(const char *lib);
void tu_preload_end(void);

#endif
