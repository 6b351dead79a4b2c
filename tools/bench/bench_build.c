/*
 * bench_build.c — `candex build` against raw Faiss, same factory, same
 * training sample, same machine, same run.
 *
 *   bench_build --input FILE.fvecs [--metric l2|ip|cos] [--factory STR]
 *               [--train-sample N] [--seed N] [--refine KIND] [--shards N]
 *               [--candex PATH] [--work DIR] [--skip-raw] [--raw-tuned] [--repeat N]
 *   bench_build --generate N --dim D --out FILE.fvecs [--seed N]
 *
 * Raw Faiss runs in a forked child (so its peak RSS is its own): read the
 * whole fvecs into memory, faiss_index_factory, train on the rows candex
 * samples (cdx_build_sample, same seed), add all rows in one call.
 * candex runs as a child process (`candex build --quiet ...`); its peak RSS
 * comes from wait4(). Ratios are candex / raw.
 *
 * Thread settings matter more than anything else here (see cmd_build.c,
 * train.c, encode.c): candex build runs with OMP_WAIT_POLICY=passive, one
 * BLAS thread while training and all while adding. The raw baseline gets the
 * libraries' defaults, unless --raw-tuned (the same per-phase BLAS threads;
 * start bench_build with OMP_WAIT_POLICY=passive to match the OpenMP side,
 * which is fixed when the process starts): that compares the code alone.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <omp.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/index_factory_c.h>

#include "builder/build.h"
#include "common/opt.h"
#include "common/common.h"

struct raw_times {
	double load, train, add;
	int rc;
	char factory[256];
	uint64_t train_sample;
};

static double
secs_since(uint64_t t0)
{
	return (double) (cdx_now_us() - t0) / 1e6;
}

/* run_raw is the baseline, in the forked child. */
static void
run_raw(const char *input, int metric, const char *factory_opt, uint64_t sample_opt, uint64_t seed, int tuned,
    struct raw_times *t)
{
	memset(t, 0, sizeof(*t));
	uint64_t t0 = cdx_now_us();
	/* What a Faiss user does: read the whole fvecs into memory with read(2)
	 * (no mapping left behind), drop the per-row dimension fields in place. */
	int fd = open(input, O_RDONLY);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) != 0 || st.st_size < 4) {
		fprintf(stderr, "raw: cannot read %s\n", input);
		t->rc = 1;
		return;
	}
	char *buf = malloc((size_t) st.st_size);
	if (buf == NULL || cdx_read_all(fd, buf, (size_t) st.st_size, 0, input) != CDX_OK) {
		fprintf(stderr, "raw: load: %s\n", buf ? cdx_last_error() : "out of memory");
		t->rc = 1;
		return;
	}
	close(fd);
	int32_t d32;
	memcpy(&d32, buf, 4);
	uint32_t d = (uint32_t) d32;
	uint64_t n = (uint64_t) st.st_size / (4 + 4 * (uint64_t) d);
	float *x = (float *) (void *) buf;
	for (uint64_t i = 0; i < n; i++)
		memmove(x + i * d, buf + i * (4 + 4 * (uint64_t) d) + 4, d * sizeof(float));
	if (metric == CDX_METRIC_COS)
		cdx_normalize_rows(x, n, d);
	t->load = secs_since(t0);

	struct cdx_build_params p;
	if (cdx_build_params_choose(&p, n, d, factory_opt, 0, sample_opt) != CDX_OK) {
		fprintf(stderr, "raw: %s\n", cdx_last_error());
		t->rc = 1;
		return;
	}
	snprintf(t->factory, sizeof(t->factory), "%s", p.factory);
	t->train_sample = p.train_sample;
	t0 = cdx_now_us();
	FaissIndex *idx = NULL;
	if (faiss_index_factory(
	        &idx, (int) d, p.factory, metric == CDX_METRIC_L2 ? METRIC_L2 : METRIC_INNER_PRODUCT)
	    != 0) {
		fprintf(stderr, "raw: factory: %s\n", faiss_get_last_error());
		t->rc = 1;
		return;
	}
	if (tuned)
		cdx_blas_set_threads(1);
	if (!faiss_Index_is_trained(idx)) {
		uint64_t *rows = malloc(p.train_sample * sizeof(uint64_t));
		float *xs = malloc(p.train_sample * d * sizeof(float));
		cdx_build_sample(n, p.train_sample, seed, rows);
		for (uint64_t i = 0; i < p.train_sample; i++)
			memcpy(xs + i * d, x + rows[i] * d, d * sizeof(float));
		if (faiss_Index_train(idx, (idx_t) p.train_sample, xs) != 0) {
			fprintf(stderr, "raw: train: %s\n", faiss_get_last_error());
			t->rc = 1;
			return;
		}
		free(xs);
		free(rows);
	}
	t->train = secs_since(t0);
	if (tuned)
		cdx_blas_set_threads(omp_get_max_threads());
	t0 = cdx_now_us();
	if (faiss_Index_add(idx, (idx_t) n, x) != 0) {
		fprintf(stderr, "raw: add: %s\n", faiss_get_last_error());
		t->rc = 1;
		return;
	}
	t->add = secs_since(t0);
	faiss_Index_free(idx);
	free(x);
}

static long
kib_to_mib(long kib)
{
	return (kib + 512) / 1024;
}

static uint64_t
dir_bytes(const char *dir)
{
	char cmd[PATH_MAX + 32];
	snprintf(cmd, sizeof(cmd), "du -sb '%s'", dir);
	FILE *p = popen(cmd, "r");
	unsigned long long b = 0;
	if (p != NULL) {
		if (fscanf(p, "%llu", &b) != 1)
			b = 0;
		pclose(p);
	}
	return b;
}

static int
generate(const char *out, uint64_t n, uint32_t dim, uint64_t seed)
{
	/* clustered Gaussians with skewed cluster sizes, like a catalogue */
	const uint32_t nclusters = 1000;
	cdx_rng rng;
	cdx_rng_seed(&rng, seed);
	float *centers = malloc((size_t) nclusters * dim * sizeof(float));
	for (size_t i = 0; i < (size_t) nclusters * dim; i++)
		centers[i] = (float) (cdx_rng_normal(&rng) * 3.0);
	FILE *f = fopen(out, "wb");
	if (f == NULL) {
		perror(out);
		return 1;
	}
	float *row = malloc(dim * sizeof(float));
	int32_t d = (int32_t) dim;
	for (uint64_t i = 0; i < n; i++) {
		double u = cdx_rng_uniform(&rng);
		uint32_t c = (uint32_t) (u * u * nclusters); /* skewed: low clusters are popular */
		for (uint32_t j = 0; j < dim; j++)
			row[j] = centers[(size_t) c * dim + j] + (float) cdx_rng_normal(&rng);
		if (fwrite(&d, 4, 1, f) != 1 || fwrite(row, 4, dim, f) != dim) {
			perror(out);
			return 1;
		}
	}
	free(row);
	free(centers);
	if (fclose(f) != 0) {
		perror(out);
		return 1;
	}
	return 0;
}

static double
loadavg(void)
{
	double l = -1;
	FILE *f = fopen("/proc/loadavg", "r");
	if (f != NULL) {
		if (fscanf(f, "%lf", &l) != 1)
			l = -1;
		fclose(f);
	}
	return l;
}

static double
cpu_s(const struct rusage *ru)
{
	return (double) ru->ru_utime.tv_sec + ru->ru_utime.tv_usec / 1e6 + (double) ru->ru_stime.tv_sec
	    + ru->ru_stime.tv_usec / 1e6;
}

/* raw_run runs the baseline in a forked child; its times come back through a pipe. */
static int
raw_run(const char *input, int metric, const char *factory, uint64_t sample, uint64_t seed, int tuned,
    struct raw_times *rt, struct rusage *ru)
{
	int pfd[2];
	if (pipe(pfd) != 0)
		return 1;
	pid_t pid = fork();
	if (pid == 0) {
		close(pfd[0]);
		run_raw(input, metric, factory, sample, seed, tuned, rt);
		ssize_t w = write(pfd[1], rt, sizeof(*rt));
		_exit(w == (ssize_t) sizeof(*rt) ? rt->rc : 1);
	}
	close(pfd[1]);
	ssize_t got = read(pfd[0], rt, sizeof(*rt));
	close(pfd[0]);
	int status;
	wait4(pid, &status, 0, ru);
	if (got != (ssize_t) sizeof(*rt) || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		fprintf(stderr, "bench_build: raw Faiss run failed\n");
		return 1;
	}
	return 0;
}

/* candex_run runs `candex build --quiet ...` and collects its rusage. */
static int
candex_run(const char *candex, const char *input, int metric, const char *work, uint64_t seed,
    uint64_t sample, const char *refine, unsigned shards, const char *factory, struct rusage *ru)
{
	char cmd_seed[32], cmd_sample[32], cmd_shards[32];
	snprintf(cmd_seed, sizeof(cmd_seed), "%llu", (unsigned long long) seed);
	snprintf(cmd_sample, sizeof(cmd_sample), "%llu", (unsigned long long) sample);
	snprintf(cmd_shards, sizeof(cmd_shards), "%u", shards);
	char *args[32];
	int a = 0;
	args[a++] = "candex";
	args[a++] = "build";
	args[a++] = "--input";
	args[a++] = (char *) input;
	args[a++] = "--collection";
	args[a++] = "bench";
	args[a++] = "--metric";
	args[a++] = (char *) cdx_metric_name(metric);
	args[a++] = "--out";
	args[a++] = (char *) work;
	args[a++] = "--seed";
	args[a++] = cmd_seed;
	args[a++] = "--refine";
	args[a++] = (char *) refine;
	args[a++] = "--shards";
	args[a++] = cmd_shards;
	args[a++] = "--keep";
	args[a++] = "1";
	if (factory) {
		args[a++] = "--factory";
		args[a++] = (char *) factory;
	}
	if (sample) {
		args[a++] = "--train-sample";
		args[a++] = cmd_sample;
	}
	args[a] = NULL;
	pid_t pid = fork();
	if (pid == 0) {
		/* logs (phase times) to a file next to the work directory */
		char log[PATH_MAX + 16];
		snprintf(log, sizeof(log), "%s.log", work);
		int fd = open("/dev/null", O_WRONLY);
		int lfd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		dup2(fd, 1);
		if (lfd >= 0)
			dup2(lfd, 2);
		execv(candex, args);
		perror(candex);
		_exit(127);
	}
	int status;
	wait4(pid, &status, 0, ru);
	char log[PATH_MAX + 16], cmd[PATH_MAX + 128];
	snprintf(log, sizeof(log), "%s.log", work);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		fprintf(stderr, "bench_build: candex build failed (status %d), log %s\n", status, log);
		return 1;
	}
	/* the phase times */
	snprintf(cmd, sizeof(cmd), "grep -E 'trained in|rows in' '%s' | sed -e 's/^[^ ]* /        /'", log);
	fflush(stdout);
	if (system(cmd) != 0)
		fprintf(stderr, "bench_build: no phase times in %s\n", log);
	unlink(log);
	return 0;
}

struct bench_opts {
	const char *input, *factory, *candex, *work, *out, *refine;
	int metric, skip_raw, raw_tuned;
	uint32_t repeat, shards, dim;
	uint64_t sample, seed, gen;
};

static int
set_metric(const char *v, void *opts)
{
	return cdx_metric_parse(v, &((struct bench_opts *) opts)->metric);
}

#define O(f) offsetof(struct bench_opts, f)
static const struct cdx_opt options[] = {
	CDX_OPT_STR_("input", O(input), "FILE.fvecs", "the embeddings to build from"),
	CDX_OPT_CALL_("metric", "l2|ip|cos", "metric [l2]", set_metric),
	CDX_OPT_STR_("factory", O(factory), "STR", "Faiss factory string (default: candex's choice)"),
	CDX_OPT_NUM_(
	    "train-sample", CDX_OPT_U64, O(sample), "N", "rows to train on (default: candex's choice)", 0, 0),
	CDX_OPT_NUM_("seed", CDX_OPT_U64, O(seed), "N", "sample seed", 0, 0),
	CDX_OPT_STR_("refine", O(refine), "KIND", "none|sq8|fp16|fp32 [none]"),
	CDX_OPT_NUM_("shards", CDX_OPT_U32, O(shards), "N", "shard files [1]", 1, 9999),
	CDX_OPT_STR_("candex", O(candex), "PATH", "the candex binary (default: next to this one)"),
	CDX_OPT_STR_("work", O(work), "DIR", "scratch directory (default /tmp/bench-build-PID)"),
	CDX_OPT_FLAG_("skip-raw", O(skip_raw), "do not run the raw Faiss baseline"),
	CDX_OPT_FLAG_("raw-tuned", O(raw_tuned), "give raw Faiss candex's thread settings"),
	CDX_OPT_NUM_(
	    "repeat", CDX_OPT_U32, O(repeat), "N", "runs of each side; the best counts [1]", 1, 1000),
	CDX_OPT_NUM_(
	    "generate", CDX_OPT_U64, O(gen), "N", "write N clustered vectors to --out instead", 0, 0),
	CDX_OPT_NUM_("dim", CDX_OPT_U32, O(dim), "D", "dimension of --generate", 1, 65536),
	CDX_OPT_STR_("out", O(out), "FILE.fvecs", "output of --generate"),
};
#undef O
static const struct cdx_opt_command command = {
	.prog = "bench_build",
	.head
	= "usage: bench_build --input FILE.fvecs [--metric l2|ip|cos] [--factory STR] [--train-sample N]\n"
	  "                   [--seed N] [--refine KIND] [--shards N] [--candex PATH] [--work DIR] "
	  "[--skip-raw]\n"
	  "       bench_build --generate N --dim D --out FILE.fvecs [--seed N]\n\n"
	  "candex build against raw Faiss (index_factory + train + add) on the same input: time and peak "
	  "RSS\n"
	  "ratios (BENCHMARKS.md, Builder).\n",
	.opts = options,
	.nopts = CDX_ARRAY_LEN(options),
};

int
main(int argc, char **argv)
{
	cdx_process_init(argc, argv);
	struct bench_opts o = { .refine = "none",
		.metric = CDX_METRIC_L2,
		.repeat = 1,
		.shards = 1,
		.seed = CDX_BUILD_DEFAULT_SEED };
	int prc = cdx_opt_command_parse(&command, &o, argc, argv, NULL, 0, NULL);
	if (prc >= 0)
		return prc;
	const char *input = o.input, *factory = o.factory, *candex = o.candex, *work = o.work, *out = o.out,
	           *refine = o.refine;
	int metric = o.metric, skip_raw = o.skip_raw, raw_tuned = o.raw_tuned, repeat = (int) o.repeat;
	uint64_t sample = o.sample, seed = o.seed, gen = o.gen;
	unsigned shards = o.shards, dim = o.dim;
	if (gen > 0) {
		if (dim == 0 || out == NULL) {
			fprintf(stderr, "bench_build: --generate needs --dim and --out\n");
			return 2;
		}
		return generate(out, gen, dim, seed);
	}
	if (input == NULL) {
		fprintf(stderr, "bench_build: --input is required\n");
		return 2;
	}
	char self[PATH_MAX], candex_path[PATH_MAX + 16], workdir[PATH_MAX];
	if (candex == NULL) {
		ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
		self[n > 0 ? n : 0] = 0;
		char *slash = strrchr(self, '/');
		if (slash)
			*slash = 0;
		snprintf(candex_path, sizeof(candex_path), "%s/candex", self);
		candex = candex_path;
	}
	if (work == NULL) {
		snprintf(workdir, sizeof(workdir), "/tmp/bench-build-%d", (int) getpid());
		work = workdir;
	}
	struct stat st;
	if (stat(input, &st) != 0) {
		perror(input);
		return 1;
	}
	printf("input   %s (%.1f MB)\n", input, (double) st.st_size / 1e6);
	fflush(stdout);

	/* Raw and candex alternate; on a shared machine the best run of each
	 * is the one least disturbed by neighbours, so the ratio uses minima
	 * (every run is printed, with the load average before it). */
	double raw_best = 1e30, raw_tadd_best = 1e30, cdx_best = 1e30, raw_cpu = 1e30, cdx_cpu = 1e30;
	long raw_rss = 0, cdx_rss = 0;
	uint64_t idx_bytes = 0;
	struct raw_times rt = { 0 };
	for (int run = 0; run < repeat; run++) {
		if (!skip_raw) {
			struct rusage ru_raw = { 0 };
			double load = loadavg();
			uint64_t t0 = cdx_now_us();
			if (raw_run(input, metric, factory, sample, seed, raw_tuned, &rt, &ru_raw) != 0)
				return 1;
			double raw_wall = secs_since(t0);
			if (run == 0) {
				printf("factory %s, train sample %llu, seed %llu\n", rt.factory,
				    (unsigned long long) rt.train_sample, (unsigned long long) seed);
				const char *pol = getenv("OMP_WAIT_POLICY");
				printf("raw     threads: %s, OMP_WAIT_POLICY=%s\n",
				    raw_tuned ? "BLAS 1 for train, all for add (as candex)"
				              : "library defaults",
				    pol ? pol : "(unset)");
			}
			printf("raw     run %d (load %.2f): load %.2f s  train %.2f s  add %.2f s  total "
			       "%.2f s  "
			       "(process %.2f s)  peak RSS %ld MiB  cpu %.2f cores\n",
			    run + 1, load, rt.load, rt.train, rt.add, rt.load + rt.train + rt.add, raw_wall,
			    kib_to_mib(ru_raw.ru_maxrss), cpu_s(&ru_raw) / raw_wall);
			fflush(stdout);
			raw_best = CDX_MIN(raw_best, rt.load + rt.train + rt.add);
			raw_tadd_best = CDX_MIN(raw_tadd_best, rt.train + rt.add);
			raw_rss = CDX_MAX(raw_rss, ru_raw.ru_maxrss);
			raw_cpu = CDX_MIN(raw_cpu, cpu_s(&ru_raw));
		}
		struct rusage ru = { 0 };
		double load = loadavg();
		uint64_t t0 = cdx_now_us();
		if (candex_run(candex, input, metric, work, seed, sample, refine, shards, factory, &ru) != 0)
			return 1;
		double cdx_wall = secs_since(t0);
		char vdir[PATH_MAX + 32], real[PATH_MAX];
		snprintf(vdir, sizeof(vdir), "%s/bench/CURRENT", work);
		idx_bytes = realpath(vdir, real) ? dir_bytes(real) : 0;
		printf("candex  run %d (load %.2f): total %.2f s  peak RSS %ld MiB  cpu %.2f cores  version "
		       "on disk "
		       "%.1f MiB\n",
		    run + 1, load, cdx_wall, kib_to_mib(ru.ru_maxrss), cpu_s(&ru) / cdx_wall,
		    (double) idx_bytes / 1048576.0);
		fflush(stdout);
		cdx_best = CDX_MIN(cdx_best, cdx_wall);
		cdx_rss = CDX_MAX(cdx_rss, ru.ru_maxrss);
		cdx_cpu = CDX_MIN(cdx_cpu, cpu_s(&ru));
	}
	if (!skip_raw)
		printf("ratio   time %.3f x (best candex %.2f s / best raw load+train+add %.2f s), %.3f x vs "
		       "train+add; "
		       "peak RSS %.3f x (%ld / %ld MiB)\n",
		    cdx_best / raw_best, cdx_best, raw_best, cdx_best / raw_tadd_best,
		    (double) cdx_rss / (double) raw_rss, kib_to_mib(cdx_rss), kib_to_mib(raw_rss));
	if (!skip_raw)
		printf("cpu     %.3f x (best candex %.1f s / best raw %.1f s of user+sys; robust to "
		       "neighbours with "
		       "OMP_WAIT_POLICY=passive)\n",
		    cdx_cpu / raw_cpu, cdx_cpu, raw_cpu);
	printf("rss-over-index  %ld MiB (candex peak RSS - version size on disk %.1f MiB)\n",
	    kib_to_mib(cdx_rss) - (long) (idx_bytes / 1048576), (double) idx_bytes / 1048576.0);
	cdx_rm_rf(work);
	return 0;
}
