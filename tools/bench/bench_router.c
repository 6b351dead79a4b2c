/*
 * bench_router.c — what `candex route` costs against asking a server
 * directly, measured in one run on the same index, queries and machine.
 *
 * It starts, as processes: one `candex serve` holding every shard; --groups
 * shard-group servers (`candex serve --shards ...`, the shards split evenly);
 * a router in front of the whole server (one group: the router's own cost,
 * an extra hop and a merge) and a router in front of the groups (the fan-out
 * a sharded deployment pays). For each path it measures, with --clients
 * client threads (cdx_client, one query per request):
 *   - closed loop for --seconds: saturation QPS, p50, p99;
 *   - open loop at --load x the direct server's saturation QPS, the same
 *     rate for every path, latency from the scheduled send time: p50, p99.
 * Ratios are against the direct server, measured in the same run.
 *
 * Prints a Markdown table. Usage: bench_router --help.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "candex/client.h"
#include "common/common.h"
#include "shard/manifest.h"

struct bench {
	const char *index_dir, *collection, *queries_path, *candex;
	uint32_t k, clients, groups;
	double seconds, load;
	float *queries;
	size_t nq;
	uint32_t dim;
	char tmp[64]; /* prefix of the ipc:// paths */
};

struct worker {
	const struct bench *b;
	const char *url;
	int id, open_loop;
	double rate;
	uint64_t t0, m0, m1; /* start; measuring window */
	uint64_t *lat;
	size_t n, cap, errors;
	atomic_int *stop;
};

static void
sleep_until(uint64_t t_us)
{
	uint64_t now = cdx_now_us();
	if (t_us <= now)
		return;
	struct timespec ts = { .tv_sec = (time_t) ((t_us - now) / 1000000),
		.tv_nsec = (long) ((t_us - now) % 1000000) * 1000 };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static void *
client_main(void *arg)
{
	struct worker *w = arg;
	const struct bench *b = w->b;
	struct cdx_client_options o = { .timeout_ms = 10000 };
	struct cdx_client_error err;
	cdx_client *c;
	if (cdx_client_open(&c, w->url, &o, &err) != CDX_OK) {
		w->errors++;
		return NULL;
	}
	double interval = w->open_loop ? 1e6 * (double) b->clients / w->rate : 0;
	uint64_t start = w->t0 + (uint64_t) (interval * w->id / b->clients);
	for (size_t i = 0; !atomic_load(w->stop); i++) {
		size_t qi = ((size_t) w->id * 7919 + i) % b->nq;
		struct cdx_query q = { .collection = b->collection,
			.vectors = b->queries + qi * b->dim,
			.nvectors = 1,
			.dim = b->dim,
			.k = b->k };
		uint64_t t = cdx_now_us();
		if (w->open_loop) {
			t = start + (uint64_t) (interval * (double) i);
			sleep_until(t);
		}
		struct cdx_result *r = NULL;
		int rc = cdx_client_search(c, &q, &r, &err);
		uint64_t done = cdx_now_us();
		if (t >= w->m0 && done <= w->m1) {
			if (rc != CDX_OK || r->coverage < 1) {
				w->errors++;
			} else {
				if (w->n == w->cap) {
					w->cap = w->cap ? 2 * w->cap : 4096;
					if ((w->lat = realloc(w->lat, w->cap * sizeof(*w->lat))) == NULL)
						abort();
				}
				w->lat[w->n++] = done - t;
			}
		}
		cdx_result_free(r);
	}
	cdx_client_close(c);
	return NULL;
}

/* cpu_us is the CPU time (user + system) of process pid so far. */
static double
cpu_us(pid_t pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int) pid);
	FILE *f = fopen(path, "r");
	if (f == NULL)
		return 0;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	const char *p = strrchr(buf, ')'); /* fields 14 and 15 (utime, stime) follow the name */
	unsigned long ut = 0, st = 0;
	if (p == NULL || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
		return 0;
	return (double) (ut + st) * 1e6 / (double) sysconf(_SC_CLK_TCK);
}

static int
cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
	return x < y ? -1 : x > y;
}

struct result {
	double qps, p50, p99;
	double cpu_us; /* CPU of the process dialed (server or router) per answered request */
	size_t errors;
};

/* run loads url, served by process pid, with the clients (open loop at
 * rate when rate > 0). */
static struct result
run(const struct bench *b, const char *url, pid_t pid, double rate)
{
	struct worker *w = calloc(b->clients, sizeof(*w));
	pthread_t *th = calloc(b->clients, sizeof(*th));
	atomic_int stop = 0;
	uint64_t t0 = cdx_now_us() + 20000, m0 = t0 + (uint64_t) (b->seconds * 1e5),
	         m1 = m0 + (uint64_t) (b->seconds * 1e6);
	for (uint32_t i = 0; i < b->clients; i++) {
		w[i] = (struct worker) { .b = b,
			.url = url,
			.id = (int) i,
			.open_loop = rate > 0,
			.rate = rate,
			.t0 = t0,
			.m0 = m0,
			.m1 = m1,
			.stop = &stop };
		pthread_create(&th[i], NULL, client_main, &w[i]);
	}
	sleep_until(m0);
	double c0 = cpu_us(pid);
	sleep_until(m1);
	double c1 = cpu_us(pid);
	atomic_store(&stop, 1);
	size_t n = 0;
	struct result r = { 0 };
	for (uint32_t i = 0; i < b->clients; i++) {
		pthread_join(th[i], NULL);
		n += w[i].n;
		r.errors += w[i].errors;
	}
	uint64_t *all = malloc((n ? n : 1) * sizeof(*all));
	n = 0;
	for (uint32_t i = 0; i < b->clients; i++) {
		memcpy(all + n, w[i].lat, w[i].n * sizeof(*all));
		n += w[i].n;
		free(w[i].lat);
	}
	qsort(all, n, sizeof(*all), cmp_u64);
	r.qps = (double) n / b->seconds;
	r.cpu_us = n ? (c1 - c0) / (double) n : 0;
	r.p50 = n ? (double) all[(size_t) (0.50 * (double) (n - 1))] / 1000.0 : 0;
	r.p99 = n ? (double) all[(size_t) (0.99 * (double) (n - 1))] / 1000.0 : 0;
	free(all);
	free(w);
	free(th);
	return r;
}

static int
load_queries(struct bench *b)
{
	char *data = NULL;
	size_t len;
	int rc = cdx_read_file(b->queries_path, &data, &len);
	if (rc != CDX_OK)
		return rc;
	int32_t d = 0;
	if (len >= 4)
		memcpy(&d, data, 4);
	if (d <= 0 || len % (4 + (size_t) d * 4) != 0) {
		free(data);
		return cdx_error(CDX_ECORRUPT, "%s: not an .fvecs file", b->queries_path);
	}
	b->dim = (uint32_t) d;
	b->nq = len / (4 + (size_t) d * 4);
	b->queries = malloc(b->nq * b->dim * sizeof(float));
	for (size_t i = 0; b->queries != NULL && i < b->nq; i++)
		memcpy(b->queries + i * b->dim, data + i * (4 + (size_t) d * 4) + 4, b->dim * sizeof(float));
	free(data);
	return b->queries != NULL ? CDX_OK : cdx_error(CDX_ENOMEM, "queries");
}

/* spawn runs `candex <args...>` (NULL-terminated), quiet, and waits until
 * url answers a health check with something to serve. */
static pid_t
spawn(const struct bench *b, const char *url, char *const args[])
{
	pid_t pid = fork();
	if (pid == 0) {
		execv(b->candex, args);
		_exit(127);
	}
	struct cdx_client_options o = { .timeout_ms = 500 };
	struct cdx_client_error err;
	for (int i = 0; pid > 0 && i < 600; i++) {
		cdx_client *c;
		if (cdx_client_open(&c, url, &o, &err) == CDX_OK) {
			int rc = cdx_client_health(c, &err);
			cdx_client_close(c);
			if (rc == CDX_OK)
				return pid;
		}
		if (waitpid(pid, NULL, WNOHANG) == pid)
			return -1;
		usleep(100000);
	}
	if (pid > 0) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	return -1;
}

static void
usage(FILE *out)
{
	fprintf(out,
	    "usage: bench_router --index-dir DIR --collection NAME --queries Q.fvecs [options]\n"
	    "  --k K          candidates per query [10]\n"
	    "  --clients N    concurrent client threads [8]\n"
	    "  --seconds S    measuring time per run [5]\n"
	    "  --load F       open-loop rate as a fraction of the direct server's saturation QPS [0.5]\n"
	    "  --groups N     shard groups for the fan-out path (the shards split evenly) [2]\n"
	    "  --candex PATH  the candex binary [next to bench_router]\n");
}

int
main(int argc, char **argv)
{
	cdx_process_init(argc, argv);
	struct bench b = { .k = 10, .clients = 8, .seconds = 5, .load = 0.5, .groups = 2 };
	static const struct option lo[] = { { "index-dir", required_argument, NULL, 'd' },
		{ "collection", required_argument, NULL, 'c' }, { "queries", required_argument, NULL, 'q' },
		{ "k", required_argument, NULL, 'k' }, { "clients", required_argument, NULL, 'C' },
		{ "seconds", required_argument, NULL, 's' }, { "load", required_argument, NULL, 'l' },
		{ "groups", required_argument, NULL, 'g' }, { "candex", required_argument, NULL, 'x' },
		{ "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 } };
	char candex[4096];
	int ch;
	while ((ch = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		char *end = NULL;
		switch (ch) {
		case 'd':
			b.index_dir = optarg;
			break;
		case 'c':
			b.collection = optarg;
			break;
		case 'q':
			b.queries_path = optarg;
			break;
		case 'k':
		case 'C':
		case 'g': {
			unsigned long v = strtoul(optarg, &end, 10);
			if (*end != '\0' || v == 0 || v > 100000) {
				fprintf(stderr, "bench_router: '%s' is not a positive number\n", optarg);
				return 2;
			}
			*(ch == 'k' ? &b.k : ch == 'C' ? &b.clients : &b.groups) = (uint32_t) v;
			break;
		}
		case 's':
		case 'l': {
			double v = strtod(optarg, &end);
			if (*end != '\0' || !(v > 0)) {
				fprintf(stderr, "bench_router: '%s' is not a positive number\n", optarg);
				return 2;
			}
			*(ch == 's' ? &b.seconds : &b.load) = v;
			break;
		}
		case 'x':
			b.candex = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (b.index_dir == NULL || b.collection == NULL || b.queries_path == NULL) {
		usage(stderr);
		return 2;
	}
	if (b.candex == NULL) { /* next to this program in the build directory */
		ssize_t n = readlink("/proc/self/exe", candex, sizeof(candex) - 8);
		candex[n > 0 ? n : 0] = '\0';
		char *slash = strrchr(candex, '/');
		snprintf(slash ? slash + 1 : candex, 8, "candex");
		b.candex = candex;
	}
	cdx_log_set_level(CDX_LOG_WARN);
	char path[4096], version_dir[4096];
	struct cdx_manifest *m = NULL;
	snprintf(path, sizeof(path), "%s/%s", b.index_dir, b.collection);
	if (load_queries(&b) != CDX_OK || cdx_version_path_resolve(path, version_dir) != CDX_OK
	    || cdx_manifest_load(&m, version_dir) != CDX_OK) {
		fprintf(stderr, "bench_router: %s\n", cdx_last_error());
		return 1;
	}
	if (b.groups > m->nshards) {
		fprintf(stderr, "bench_router: --groups %u, but %s has %u shards\n", b.groups, b.collection,
		    m->nshards);
		return 2;
	}
	snprintf(b.tmp, sizeof(b.tmp), "/tmp/candex-bench-router-%d", (int) getpid());

	/* processes: the whole server, the groups, and the two routers */
	pid_t pids[2 + 64 + 2];
	int npids = 0, ok = 1;
	char all_url[128], rt1_url[128], rtg_url[128], one_arg[256];
	snprintf(all_url, sizeof(all_url), "ipc://%s-all.ipc", b.tmp);
	snprintf(rt1_url, sizeof(rt1_url), "ipc://%s-r1.ipc", b.tmp);
	snprintf(rtg_url, sizeof(rtg_url), "ipc://%s-rg.ipc", b.tmp);
	char *serve_all[] = { "candex", "serve", "--index-dir", (char *) b.index_dir, "--listen", all_url,
		"--log-level", "warn", NULL };
	ok = (pids[npids++] = spawn(&b, all_url, serve_all)) > 0;
	char *route_args[8 + 2 * 64 + 4];
	int na = 0;
	route_args[na++] = "candex";
	route_args[na++] = "route";
	route_args[na++] = "--listen";
	route_args[na++] = rtg_url;
	char gurl[64][128], gshards[64][32], garg[64][300];
	for (uint32_t g = 0; ok && g < b.groups; g++) {
		uint32_t lo_s = m->nshards * g / b.groups, hi_s = m->nshards * (g + 1) / b.groups - 1;
		snprintf(gurl[g], sizeof(gurl[g]), "ipc://%s-g%u.ipc", b.tmp, g);
		snprintf(gshards[g], sizeof(gshards[g]), "%u-%u", lo_s, hi_s);
		char *serve_g[]
		    = { "candex", "serve", "--index-dir", (char *) b.index_dir, "--listen", gurl[g],
			      "--shards", gshards[g], "--keep-previous", "60", "--log-level", "warn", NULL };
		ok = (pids[npids++] = spawn(&b, gurl[g], serve_g)) > 0;
		snprintf(garg[g], sizeof(garg[g]), "g%u=%s", g, gurl[g]);
		route_args[na++] = "--group";
		route_args[na++] = garg[g];
	}
	route_args[na++] = "--log-level";
	route_args[na++] = "warn";
	route_args[na] = NULL;
	snprintf(one_arg, sizeof(one_arg), "all=%s", all_url);
	char *route_one[]
	    = { "candex", "route", "--listen", rt1_url, "--group", one_arg, "--log-level", "warn", NULL };
	if (ok)
		ok = (pids[npids++] = spawn(&b, rt1_url, route_one)) > 0;
	if (ok)
		ok = (pids[npids++] = spawn(&b, rtg_url, route_args)) > 0;
	if (!ok) {
		fprintf(stderr, "bench_router: a candex process did not come up (%s)\n", b.candex);
	} else {
		printf("index %s/%s version %s: %llu x %u %s, %s, %u shards; %zu queries, k=%u, %u clients, "
		       "%.1f s "
		       "per run; servers, routers and clients share this machine's %d CPUs\n\n",
		    b.index_dir, b.collection, m->version, (unsigned long long) m->items, m->dim,
		    cdx_metric_name(m->metric), m->factory, m->nshards, b.nq, b.k, b.clients, b.seconds,
		    cdx_cpu_count());
		const char *urls[3] = { all_url, rt1_url, rtg_url };
		char names[3][128];
		snprintf(names[0], sizeof(names[0]), "candex serve, direct");
		snprintf(names[1], sizeof(names[1]), "candex route -> the same server (1 group)");
		snprintf(names[2], sizeof(names[2]), "candex route -> %u shard groups", b.groups);
		/* the process each path's clients talk to: the server, or a router */
		pid_t front[3] = { pids[0], pids[npids - 2], pids[npids - 1] };
		struct result sat[3], ol[3];
		for (int p = 0; p < 3; p++)
			sat[p] = run(&b, urls[p], front[p], 0);
		double rate = b.load * sat[0].qps;
		for (int p = 0; p < 3; p++)
			ol[p] = run(&b, urls[p], front[p], rate);
		printf("| path | QPS | QPS vs direct | p50 ms | p99 ms | p99 vs direct | CPU µs/req of the "
		       "process "
		       "dialed | open loop %.0f/s: p50 ms | p99 ms | p99 vs direct | errors |\n",
		    rate);
		printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
		for (int p = 0; p < 3; p++)
			printf(
			    "| %s | %.0f | %.2f | %.3f | %.3f | %.2f | %.0f | %.3f | %.3f | %.2f | %zu |\n",
			    names[p], sat[p].qps, sat[p].qps / sat[0].qps, sat[p].p50, sat[p].p99,
			    sat[p].p99 / sat[0].p99, sat[p].cpu_us, ol[p].p50, ol[p].p99,
			    ol[p].p99 / ol[0].p99, sat[p].errors + ol[p].errors);
	}
	for (int i = npids - 1; i >= 0; i--) {
		if (pids[i] > 0) {
			kill(pids[i], SIGTERM);
			waitpid(pids[i], NULL, 0);
		}
	}
	cdx_manifest_free(m);
	free(b.queries);
	return ok ? 0 : 1;
}
