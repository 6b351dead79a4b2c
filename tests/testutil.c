#define _GNU_SOURCE
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <iconv.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/common.h"

char *
tu_tmpdir(const char *tag)
{
	const char *base = getenv("TMPDIR");
	char *path = NULL;
	if (asprintf(&path, "%s/candex-%s-XXXXXX", base && *base ? base : "/tmp", tag) < 0)
		return NULL;
	if (mkdtemp(path) == NULL) {
		free(path);
		return NULL;
	}
	return path;
}

void
tu_rmdir(char *dir)
{
	if (dir != NULL && getenv("CANDEX_KEEP_TMP") == NULL)
		cdx_rm_rf(dir);
	free(dir);
}

void
tu_clustered(float *x, size_t n, size_t dim, size_t nclusters, uint64_t seed)
{
	cdx_rng rng;
	cdx_rng_seed(&rng, seed);
	float *centers = malloc(nclusters * dim * sizeof(float));
	for (size_t i = 0; i < nclusters * dim; i++)
		centers[i] = (float) (cdx_rng_normal(&rng) * 4.0);
	for (size_t i = 0; i < n; i++) {
		size_t c = cdx_rng_next(&rng) % nclusters;
		for (size_t j = 0; j < dim; j++)
			x[i * dim + j] = centers[c * dim + j] + (float) cdx_rng_normal(&rng);
	}
	free(centers);
}

int
tu_write_fvecs(const char *path, const float *x, size_t n, size_t dim)
{
	FILE *f = fopen(path, "wb");
	if (f == NULL)
		return -1;
	int32_t d = (int32_t) dim;
	for (size_t i = 0; i < n; i++) {
		if (fwrite(&d, sizeof(d), 1, f) != 1 || fwrite(x + i * dim, sizeof(float), dim, f) != dim) {
			fclose(f);
			return -1;
		}
	}
	return fclose(f) == 0 ? 0 : -1;
}

int
tu_write_npy(
    const char *path, const char *descr, int fortran, const char *shape, const void *data, size_t len)
{
	char hdr[256];
	int n = snprintf(hdr, sizeof(hdr), "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }", descr,
	    fortran ? "True" : "False", shape);
	if (n < 0 || n + 64 >= (int) sizeof(hdr))
		return -1;
	/* magic (6) + version (2) + header length (2) + header ends on a 64-byte boundary, in '\n' */
	while ((10 + n + 1) % 64 != 0)
		hdr[n++] = ' ';
	hdr[n++] = '\n';
	uint16_t hlen = (uint16_t) n;
	FILE *f = fopen(path, "wb");
	if (f == NULL)
		return -1;
	int ok = fwrite("\x93NUMPY\x01\x00", 1, 8, f) == 8 && fwrite(&hlen, 2, 1, f) == 1
	    && fwrite(hdr, 1, (size_t) n, f) == (size_t) n && (len == 0 || fwrite(data, 1, len, f) == len);
	return fclose(f) == 0 && ok ? 0 : -1;
}

int
tu_write_keys(const char *path, const char *prefix, size_t n)
{
	FILE *f = fopen(path, "w");
	if (f == NULL)
		return -1;
	for (size_t i = 0; i < n; i++)
		fprintf(f, "%s%zu\n", prefix, i);
	return fclose(f) == 0 ? 0 : -1;
}

char *
tu_path(const char *a, const char *b)
{
	char *p = NULL;
	if (asprintf(&p, "%s/%s", a, b) < 0)
		return NULL;
	return p;
}

int
tu_run(char **output, const char *fmt, ...)
{
	char *cmd = NULL, *full = NULL;
	va_list ap;
	va_start(ap, fmt);
	int rc = vasprintf(&cmd, fmt, ap);
	va_end(ap);
	if (rc < 0)
		return -1;
	if (asprintf(&full, "%s 2>&1", cmd) < 0) {
		free(cmd);
		return -1;
	}
	free(cmd);
	FILE *p = popen(full, "r");
	free(full);
	if (p == NULL)
		return -1;
	cdx_buf out = { 0 };
	char chunk[4096];
	size_t got;
	while ((got = fread(chunk, 1, sizeof(chunk), p)) > 0)
		cdx_buf_append(&out, chunk, got);
	cdx_buf_append(&out, "", 1);
	int status = pclose(p);
	if (output != NULL)
		*output = out.data;
	else
		cdx_buf_fini(&out);
	if (getenv("CANDEX_TEST_VERBOSE") && out.data)
		fprintf(stderr, "%s", output ? *output : "");
	if (status == -1 || !WIFEXITED(status))
		return -1;
	return WEXITSTATUS(status);
}

int
tu_exec(char **output, const struct tu_exec_opts *opts, struct rusage *ru, int *was_ready,
    const char *const argv[])
{
	static const struct tu_exec_opts none;
	if (opts == NULL)
		opts = &none;
	if (was_ready != NULL)
		*was_ready = 0;
	int fds[2];
	if (pipe2(fds, O_CLOEXEC) != 0)
		return -1000;
	pid_t pid = fork();
	if (pid < 0)
		return -1000;
	if (pid == 0) {
		dup2(fds[1], 1);
		dup2(fds[1], 2);
		if (opts->fsize_limit > 0) {
			struct rlimit rl = { (rlim_t) opts->fsize_limit, (rlim_t) opts->fsize_limit };
			if (setrlimit(RLIMIT_FSIZE, &rl) != 0)
				_exit(126);
		}
		if (opts->child_setup != NULL)
			opts->child_setup(opts->arg);
		execv(argv[0], (char *const *) argv);
		_exit(127);
	}
	close(fds[1]);
	cdx_buf out = { 0 };
	char chunk[4096];
	int fired = 0;
	for (;;) {
		struct pollfd pfd = { fds[0], POLLIN, 0 };
		if (poll(&pfd, 1, opts->ready ? 2 : 1000) > 0) {
			ssize_t got = read(fds[0], chunk, sizeof(chunk));
			if (got > 0)
				cdx_buf_append(&out, chunk, (size_t) got);
			else if (got == 0 || errno != EINTR)
				break;
		}
		if (opts->ready != NULL && !fired && opts->ready(opts->arg)) {
			fired = 1;
			if (was_ready != NULL)
				*was_ready = 1;
			if (opts->signal_when_ready > 0)
				kill(pid, opts->signal_when_ready);
		}
	}
	close(fds[0]);
	cdx_buf_append(&out, "", 1);
	if (getenv("CANDEX_TEST_VERBOSE"))
		fprintf(stderr, "%s %s -> \n%s\n", argv[0], argv[1] ? argv[1] : "", out.data);
	if (output != NULL)
		*output = out.data;
	else
		cdx_buf_fini(&out);
	int status;
	struct rusage usage;
	if (wait4(pid, &status, 0, &usage) != pid)
		return -1000;
	if (ru != NULL)
		*ru = usage;
	if (WIFSIGNALED(status))
		return -WTERMSIG(status);
	return WEXITSTATUS(status);
}

char *
tu_current(const char *coll_dir)
{
	char link[4096], buf[256];
	snprintf(link, sizeof(link), "%s/CURRENT", coll_dir);
	ssize_t n = readlink(link, buf, sizeof(buf) - 1);
	if (n < 0)
		return NULL;
	buf[n] = 0;
	return strdup(buf);
}

void
tu_count_dirs(const char *coll_dir, int *versions, int *staging)
{
	*versions = *staging = 0;
	DIR *d = opendir(coll_dir);
	if (d == NULL)
		return;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (strncmp(e->d_name, ".staging-", 9) == 0)
			(*staging)++;
		else if (e->d_name[0] != '.' && strcmp(e->d_name, "CURRENT") != 0)
			(*versions)++;
	}
	closedir(d);
}

int
tu_files_equal(const char *a, const char *b)
{
	char *da = NULL, *db = NULL;
	size_t la = 0, lb = 0;
	if (cdx_read_file(a, &da, &la) != CDX_OK || cdx_read_file(b, &db, &lb) != CDX_OK) {
		free(da);
		return 0;
	}
	int eq = la == lb && memcmp(da, db, la) == 0;
	free(da);
	free(db);
	return eq;
}

struct tu_pair {
	float d;
	int64_t i;
};

void
tu_exact_knn(const float *x, size_t n, size_t dim, const float *q, size_t k, int metric_ip, int64_t *out)
{
	/* k small: keep a sorted array, best first */
	struct tu_pair *best = malloc(k * sizeof(*best));
	size_t have = 0;
	for (size_t i = 0; i < n; i++) {
		float s = 0;
		for (size_t j = 0; j < dim; j++) {
			if (metric_ip)
				s += x[i * dim + j] * q[j];
			else {
				float t = x[i * dim + j] - q[j];
				s += t * t;
			}
		}
		float key = metric_ip ? -s : s; /* smaller key is better */
		if (have == k && key >= best[k - 1].d)
			continue;
		size_t pos = have < k ? have++ : k - 1;
		while (pos > 0 && best[pos - 1].d > key) {
			best[pos] = best[pos - 1];
			pos--;
		}
		best[pos].d = key;
		best[pos].i = (int64_t) i;
	}
	for (size_t i = 0; i < k; i++)
		out[i] = i < have ? best[i].i : -1;
	free(best);
}

int
tu_utf8_strict(const char *s, size_t len)
{
	iconv_t cd = iconv_open("UTF-32LE", "UTF-8");
	if (cd == (iconv_t) -1)
		return 0;
	char *in = (char *) s;
	size_t inleft = len, outsize = 4 * len + 4, outleft = outsize;
	char *buf = malloc(outsize), *out = buf;
	size_t r = buf ? iconv(cd, &in, &inleft, &out, &outleft) : (size_t) -1;
	int ok = r != (size_t) -1 && inleft == 0;
	free(buf);
	iconv_close(cd);
	return ok;
}

static char *preload_saved_asan; /* ASAN_OPTIONS before tu_preload_begin */
static int preload_had_asan;

void
tu_preload_begin(const char *lib)
{
	const char *asan = getenv("ASAN_OPTIONS");
	char *asan_new = NULL;
	preload_had_asan = asan != NULL;
	preload_saved_asan = asan ? strdup(asan) : NULL;
	if (asprintf(&asan_new, "%s%sverify_asan_link_order=0", asan ? asan : "", asan ? ":" : "") < 0)
		abort();
	setenv("ASAN_OPTIONS", asan_new, 1);
	free(asan_new);
	setenv("LD_PRELOAD", lib, 1);
}

void
tu_preload_end(void)
{
	unsetenv("LD_PRELOAD");
	if (preload_had_asan)
		setenv("ASAN_OPTIONS", preload_saved_asan, 1);
	else
		unsetenv("ASAN_OPTIONS");
	free(preload_saved_asan);
	preload_saved_asan = NULL;
}
