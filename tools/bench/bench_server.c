/*
 * bench_server.c — server throughput and latency against in-process search
 * on the same index, parameters and cores, measured in one run.
 *
 *   1. baseline: --threads threads each calling cdx_collection_search on one
 *      query at a time (OpenMP at 1 thread per caller, as the server's
 *      workers do), closed loop for --seconds;
 *   2. for each transport (ipc://, tcp://): a server started in this process
 *      (cdx_server_start, --threads workers) and --clients client threads,
 *      each with its own cdx_client, one query per request, closed loop:
 *      saturation QPS, p50, p99;
 *   3. open loop at --load (0.7) x the saturation QPS of that transport:
 *      requests are sent on a fixed schedule and latency counts from the
 *      scheduled time (no coordinated omission): p50, p99.
 *
 * With --server-cpus/--client-cpus the server is a separate `candex serve`
 * process pinned to the server CPUs, the in-process baseline runs pinned to
 * the same CPUs, and the load generator is pinned to the client CPUs: the
 * ratio then compares the server with Faiss on the same cores, without the
 * clients competing for them, and the server's own CPU time per request
 * (from /proc) is reported next to the baseline's.
 *
 * Prints a Markdown table. Usage: bench_server --help.
 */
#define _GNU_SOURCE
#include <getopt.h>
#include <omp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "candex/client.h"
#include "common/common.h"
#include "lib/benchlib.h"
#include "search/search.h"
#include "server/server.h"

struct bench {
	const char *index_dir, *collection, *queries_path;
	uint32_t k, nprobe, threads, clients;
	uint32_t batch; /* query vectors per request (and per in-process call) */
	double seconds, load;
	float *queries;
	size_t nq;
	uint32_t dim;
	cdx_collection *coll;
	const char *url;
	double rate; /* open loop: requests per second over all clients */
	cpu_set_t server_cpus, client_cpus;
	int pinned;       /* --server-cpus given: the server is a child process */
	pid_t server_pid; /* that child, whose CPU time is read from /proc */
};

struct result {
	double qps, p50, p99;
	double srv_p50, srv_p99; /* server-side (SearchResponse.server_time_us), ms */
	double cpu_us;           /* process CPU time per answered request, microseconds */
	double srv_cpu_us;       /* the server child's CPU time per answered request */
	uint64_t errors;
};

struct worker {
	struct bench *b;
	int id;
	struct bench_lat lat;
	struct bench_lat srv; /* server_time_us of the same requests */
	uint64_t errors;
	atomic_int *stop;
	uint64_t t0;
	int open_loop;
};

static void *
inprocess_thread(void *arg)
{
	struct worker *w = arg;
	struct bench *b = w->b;
	omp_set_num_threads(1);
	struct cdx_hit *hits = malloc((size_t) b->batch * b->k * sizeof(*hits));
	struct cdx_search_params p = { .k = b->k, .nprobe = b->nprobe };
	for (size_t i = (size_t) w->id * 7919; !atomic_load(w->stop); i++) {
		uint64_t t = cdx_now_us();
		size_t qi = (i * b->batch) % (b->nq - b->batch + 1);
		if (cdx_collection_search(b->coll, &p, b->queries + qi * b->dim, b->batch, hits) != CDX_OK)
			w->errors++;
		uint64_t us = cdx_now_us() - t;
		bench_lat_add(&w->lat, us);
		bench_lat_add(&w->srv, us);
	}
	free(hits);
	return NULL;
}

static void *
client_thread(void *arg)
{
	struct worker *w = arg;
	struct bench *b = w->b;
	struct cdx_client_options o = { .timeout_ms = 10000 };
	struct cdx_client_error err;
	cdx_client *c;
	if (cdx_client_open(&c, b->url, &o, &err) != CDX_OK) {
		fprintf(stderr, "client: %s\n", err.message);
		w->errors++;
		return NULL;
	}
	double interval_us = w->open_loop ? 1e6 * (double) b->clients / b->rate : 0;
	uint64_t start = w->t0 + (uint64_t) (interval_us * w->id / b->clients);
	for (size_t i = 0; !atomic_load(w->stop); i++) {
		size_t qi = (((size_t) w->id * 7919 + i) * b->batch) % (b->nq - b->batch + 1);
		struct cdx_query q = { .collection = b->collection,
			.vectors = b->queries + qi * b->dim,
			.nvectors = b->batch,
			.dim = b->dim,
			.k = b->k,
			.nprobe = b->nprobe };
		uint64_t t = cdx_now_us();
		if (w->open_loop) {
			t = start + (uint64_t) (interval_us * (double) i);
			bench_sleep_until(t);
			if (atomic_load(w->stop))
				break;
		}
		struct cdx_result *r = NULL;
		if (cdx_client_search(c, &q, &r, &err) != CDX_OK)
			w->errors++;
		else {
			bench_lat_add(&w->lat, cdx_now_us() - t);
			bench_lat_add(&w->srv, r->server_time_us);
		}
		cdx_result_free(r);
	}
	cdx_client_close(c);
	return NULL;
}

static struct result
run(struct bench *b, void *(*fn)(void *), unsigned nthreads, int open_loop)
{
	struct worker *w = calloc(nthreads, sizeof(*w));
	pthread_t *th = calloc(nthreads, sizeof(*th));
	atomic_int stop = 0;
	uint64_t t0 = cdx_now_us() + 20000;
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	if (b->pinned)
		pthread_attr_setaffinity_np(
		    &attr, sizeof(cpu_set_t), fn == inprocess_thread ? &b->server_cpus : &b->client_cpus);
	for (unsigned i = 0; i < nthreads; i++) {
		w[i] = (struct worker) {
			.b = b, .id = (int) i, .stop = &stop, .t0 = t0, .open_loop = open_loop
		};
		pthread_create(&th[i], &attr, fn, &w[i]);
	}
	pthread_attr_destroy(&attr);
	/* warm up for 10% of the time, then measure from a clean slate */
	bench_sleep_until(t0 + (uint64_t) (b->seconds * 1e5));
	uint64_t m0 = cdx_now_us();
	double c0 = bench_process_cpu_us();
	double s0 = b->server_pid > 0 && fn != inprocess_thread ? bench_child_cpu_us(b->server_pid) : 0;
	size_t *skip = calloc(nthreads, sizeof(*skip));
	for (unsigned i = 0; i < nthreads; i++)
		skip[i] = w[i].lat.n; /* racy read of a counter: only used as a rough cut */
	bench_sleep_until(m0 + (uint64_t) (b->seconds * 1e6));
	uint64_t m1 = cdx_now_us();
	double c1 = bench_process_cpu_us();
	double s1 = b->server_pid > 0 && fn != inprocess_thread ? bench_child_cpu_us(b->server_pid) : 0;
	size_t *end = calloc(nthreads, sizeof(*end));
	for (unsigned i = 0; i < nthreads; i++)
		end[i] = w[i].lat.n;
	atomic_store(&stop, 1);
	for (unsigned i = 0; i < nthreads; i++)
		pthread_join(th[i], NULL);
	struct bench_lat all = { 0 }, srv = { 0 };
	struct result r = { 0 };
	for (unsigned i = 0; i < nthreads; i++) {
		for (size_t j = skip[i]; j < end[i] && j < w[i].lat.n; j++) {
			bench_lat_add(&all, w[i].lat.v[j]);
			bench_lat_add(&srv, w[i].srv.v[j]);
		}
		r.errors += w[i].errors;
		bench_lat_fini(&w[i].lat);
		bench_lat_fini(&w[i].srv);
	}
	bench_lat_sort(&all);
	bench_lat_sort(&srv);
	r.srv_p50 = bench_lat_pct(&srv, 0.50);
	r.srv_p99 = bench_lat_pct(&srv, 0.99);
	bench_lat_fini(&srv);
	r.qps = (double) all.n / ((double) (m1 - m0) / 1e6);
	r.p50 = bench_lat_pct(&all, 0.50);
	r.p99 = bench_lat_pct(&all, 0.99);
	r.cpu_us = all.n ? (c1 - c0) / (double) all.n : 0;
	r.srv_cpu_us = all.n ? (s1 - s0) / (double) all.n : 0;
	bench_lat_fini(&all);
	free(skip);
	free(end);
	free(w);
	free(th);
	return r;
}

static int
load_queries(struct bench *b)
{
	FILE *f = fopen(b->queries_path, "rb");
	if (f == NULL)
		return cdx_error_errno(CDX_EIO, "%s", b->queries_path);
	int32_t d;
	cdx_buf buf = { 0 };
	size_t n = 0;
	while (fread(&d, 4, 1, f) == 1) {
		if (d <= 0 || (b->dim && (uint32_t) d != b->dim)) {
			fclose(f);
			return cdx_error(CDX_ECORRUPT, "%s: bad row dimension", b->queries_path);
		}
		b->dim = (uint32_t) d;
		cdx_buf_reserve(&buf, (size_t) d * 4);
		if (fread(buf.data + buf.len, 4, (size_t) d, f) != (size_t) d)
			break;
		buf.len += (size_t) d * 4;
		n++;
	}
	fclose(f);
	b->queries = (float *) buf.data;
	b->nq = n;
	return n > 0 ? CDX_OK : cdx_error(CDX_EEMPTY, "%s: no queries", b->queries_path);
}

static void
usage(FILE *out)
{
	fprintf(out,
	    "usage: bench_server --index-dir DIR --collection NAME --queries Q.fvecs [options]\n"
	    "  --k K              candidates per query [100]\n"
	    "  --nprobe N         0 = the collection's default [0]\n"
	    "  --threads N        server workers and in-process threads (0 = cores) [0]\n"
	    "  --clients N        concurrent client threads [4 x threads]\n"
	    "  --seconds S        measuring time per run [5]\n"
	    "  --load F           open-loop rate as a fraction of saturation QPS [0.7]\n"
	    "  --batch N          query vectors per request and per in-process call [1];\n"
	    "                     QPS counts requests (x N for queries per second)\n"
	    "  --rate R           open loop at R requests/s instead of --load x saturation (skips it)\n"
	    "  --url URL          measure an already running server at URL instead of starting one\n"
	    "                     (its CPU time is not included in the client CPU column)\n"
	    "  --server-cpus LIST run the server as a separate `candex serve` pinned to these CPUs\n"
	    "                     (e.g. 0 or 0-3) and the in-process baseline on the same CPUs;\n"
	    "                     needs --client-cpus\n"
	    "  --client-cpus LIST pin the load generator to these CPUs (e.g. 1)\n"
	    "  --candex PATH      the candex binary for --server-cpus [next to bench_server]\n");
}

int
main(int argc, char **argv)
{
	cdx_process_init(argc, argv);
	struct bench b = { .k = 100, .seconds = 5, .load = 0.7, .batch = 1 };
	const char *ext_url = NULL, *candex = NULL, *server_cpus = NULL, *client_cpus = NULL;
	double fixed_rate = 0;
	static const struct option lo[] = {
		{ "index-dir", required_argument, NULL, 'd' },
		{ "collection", required_argument, NULL, 'c' },
		{ "queries", required_argument, NULL, 'q' },
		{ "k", required_argument, NULL, 'k' },
		{ "nprobe", required_argument, NULL, 'n' },
		{ "threads", required_argument, NULL, 't' },
		{ "clients", required_argument, NULL, 'C' },
		{ "seconds", required_argument, NULL, 's' },
		{ "load", required_argument, NULL, 'l' },
		{ "url", required_argument, NULL, 'u' },
		{ "batch", required_argument, NULL, 'b' },
		{ "rate", required_argument, NULL, 'r' },
		{ "server-cpus", required_argument, NULL, 'S' },
		{ "client-cpus", required_argument, NULL, 'L' },
		{ "candex", required_argument, NULL, 'x' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int ch;
	while ((ch = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
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
			b.k = (uint32_t) atoi(optarg);
			break;
		case 'n':
			b.nprobe = (uint32_t) atoi(optarg);
			break;
		case 't':
			b.threads = (uint32_t) atoi(optarg);
			break;
		case 'C':
			b.clients = (uint32_t) atoi(optarg);
			break;
		case 's':
			b.seconds = atof(optarg);
			break;
		case 'l':
			b.load = atof(optarg);
			break;
		case 'u':
			ext_url = optarg;
			break;
		case 'b':
			b.batch = (uint32_t) atoi(optarg);
			break;
		case 'r':
			fixed_rate = atof(optarg);
			break;
		case 'S':
			server_cpus = optarg;
			break;
		case 'L':
			client_cpus = optarg;
			break;
		case 'x':
			candex = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (b.index_dir == NULL || b.collection == NULL || b.queries_path == NULL || b.k == 0
	    || b.seconds <= 0) {
		usage(stderr);
		return 2;
	}
	if ((server_cpus != NULL) != (client_cpus != NULL) || (server_cpus != NULL && ext_url != NULL)) {
		fprintf(stderr, "bench_server: --server-cpus and --client-cpus go together, without --url\n");
		return 2;
	}
	char candex_buf[4096];
	if (server_cpus != NULL) {
		if (bench_parse_cpus(server_cpus, &b.server_cpus) != 0
		    || bench_parse_cpus(client_cpus, &b.client_cpus) != 0) {
			fprintf(stderr, "bench_server: bad CPU list (want e.g. 0, 1-3 or 0,2)\n");
			return 2;
		}
		b.pinned = 1;
		if (candex == NULL) {
			/* the candex binary sits next to bench_server in the build directory */
			if (bench_candex_path(candex_buf, sizeof(candex_buf)) != 0) {
				fprintf(stderr, "bench_server: give --candex PATH\n");
				return 2;
			}
			candex = candex_buf;
		}
		/* this thread, and the nng threads the clients start, run on the client CPUs */
		sched_setaffinity(0, sizeof(cpu_set_t), &b.client_cpus);
		if (b.threads == 0)
			b.threads = (uint32_t) CPU_COUNT(&b.server_cpus);
	}
	if (b.threads == 0)
		b.threads = (uint32_t) cdx_cpu_count();
	if (b.clients == 0)
		b.clients = 4 * b.threads;
	cdx_log_set_level(CDX_LOG_WARN);
	cdx_blas_set_threads(1);
	char path[4096];
	snprintf(path, sizeof(path), "%s/%s", b.index_dir, b.collection);
	if (load_queries(&b) != CDX_OK || cdx_collection_load(&b.coll, path) != CDX_OK) {
		fprintf(stderr, "bench_server: %s\n", cdx_last_error());
		return 1;
	}
	const struct cdx_manifest *m = cdx_collection_manifest(b.coll);
	uint32_t nprobe_used = cdx_collection_effective_nprobe(b.coll, b.nprobe);
	if (b.batch > b.nq) {
		fprintf(stderr, "bench_server: --batch %u > %zu queries\n", b.batch, b.nq);
		return 2;
	}
	printf("index %s/%s version %s: %llu x %u %s, %s, %u shard(s); %zu queries; k=%u nprobe=%u batch=%u; "
	       "%u workers/threads, %u clients, %.1f s per run\n\n",
	    b.index_dir, b.collection, m->version, (unsigned long long) m->items, m->dim,
	    cdx_metric_name(m->metric), m->factory, m->nshards, b.nq, b.k, nprobe_used, b.batch, b.threads,
	    b.clients, b.seconds);

	struct result base = run(&b, inprocess_thread, b.threads, 0);
	if (b.pinned)
		printf("server and in-process baseline on CPUs %s, load generator on CPUs %s\n\n",
		    server_cpus, client_cpus);
	printf("| path | QPS | vs in-process | p50 ms | p99 ms | CPU µs/req (this process) | server CPU "
	       "µs/req | open loop at %.0f%%: QPS | p50 ms | p99 ms | server-side p50 ms | server-side p99 "
	       "ms | errors |\n",
	    100 * b.load);
	printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
	printf(
	    "| in-process cdx_collection_search, %u threads | %.0f | 1.00 | %.3f | %.3f | %.0f | | | | | | "
	    "| %llu |\n",
	    b.threads, base.qps, base.p50, base.p99, base.cpu_us, (unsigned long long) base.errors);
	fflush(stdout);

	struct cdx_server_config cfg;
	cdx_server_config_init(&cfg);
	char ipc[256], tcp[64];
	cdx_server *srv = NULL;
	const char *urls[2] = { ipc, tcp };
	const char *names[2] = { "ipc://", "tcp:// (loopback)" };
	int nurls = 2;
	if (ext_url != NULL) {
		urls[0] = ext_url;
		names[0] = ext_url;
		nurls = 1;
	} else if (b.pinned) {
		snprintf(ipc, sizeof(ipc), "ipc:///tmp/candex-bench-%d.ipc", (int) getpid());
		snprintf(tcp, sizeof(tcp), "tcp://127.0.0.1:%d", bench_free_port());
		struct bench_serve so = { .candex = candex,
			.index_dir = b.index_dir,
			.urls = { ipc, tcp },
			.nurls = 2,
			.threads = b.threads,
			.queue_max = 4 * b.clients, /* throughput, not admission */
			.max_k = b.k > 1000 ? b.k : 1000,
			.cpus = &b.server_cpus };
		if ((b.server_pid = bench_serve_start(&so)) <= 0) {
			fprintf(stderr, "bench_server: %s serve did not come up\n", candex);
			return 1;
		}
	} else {
		snprintf(ipc, sizeof(ipc), "ipc:///tmp/candex-bench-%d.ipc", (int) getpid());
		snprintf(tcp, sizeof(tcp), "tcp://127.0.0.1:%d", bench_free_port());
		cfg.index_dir = strdup(b.index_dir);
		cfg.listen[0] = strdup(ipc);
		cfg.listen[1] = strdup(tcp);
		cfg.nlisten = 2;
		cfg.threads = b.threads;
		cfg.queue_max = 4 * b.clients; /* measure throughput, not admission */
		cfg.max_k = b.k > 1000 ? b.k : 1000;
		cfg.log_level = CDX_LOG_WARN;
		if (cdx_server_start(&srv, &cfg) != CDX_OK) {
			fprintf(stderr, "bench_server: %s\n", cdx_last_error());
			return 1;
		}
	}
	for (int t = 0; t < nurls; t++) {
		b.url = urls[t];
		struct result sat = { 0 };
		if (fixed_rate > 0) {
			b.rate = fixed_rate;
		} else {
			sat = run(&b, client_thread, b.clients, 0);
			b.rate = b.load * sat.qps;
		}
		struct result ol = run(&b, client_thread, b.clients, 1);
		char srv_cpu[32] = "";
		if (b.server_pid > 0)
			snprintf(srv_cpu, sizeof(srv_cpu), "%.0f", sat.srv_cpu_us);
		printf("| %s %s, %u clients | %.0f | %.2f | %.3f | %.3f | %.0f | %s | %.0f | %.3f | %.3f | "
		       "%.3f | "
		       "%.3f | %llu |\n",
		    ext_url ? "external server at" : "server over", names[t], b.clients, sat.qps,
		    sat.qps / base.qps, sat.p50, sat.p99, sat.cpu_us, srv_cpu, ol.qps, ol.p50, ol.p99,
		    ol.srv_p50, ol.srv_p99, (unsigned long long) (sat.errors + ol.errors));
		fflush(stdout);
	}
	cdx_server_stop(srv);
	bench_serve_stop(b.server_pid);
	cdx_server_config_fini(&cfg);
	cdx_collection_unref(b.coll);
	free(b.queries);
	return 0;
}
