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
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <netinet/in.h>
#include <omp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#include "candex/client.h"
#include "common/common.h"
#include "common/opt.h"
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

struct lat {
	uint64_t *v;
	size_t n, cap;
};

static void
lat_add(struct lat *l, uint64_t us)
{
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 4096;
		l->v = realloc(l->v, l->cap * sizeof(*l->v));
		if (l->v == NULL)
			abort();
	}
	l->v[l->n++] = us;
}

static int
cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
	return x < y ? -1 : x > y;
}

static double
pct(const struct lat *l, double p)
{
	if (l->n == 0)
		return 0;
	size_t i = (size_t) (p * (double) (l->n - 1) + 0.5);
	return (double) l->v[i] / 1000.0;
}

struct result {
	double qps, p50, p99;
	double srv_p50, srv_p99; /* server-side (SearchResponse.server_time_us), ms */
	double cpu_us;           /* process CPU time per answered request, microseconds */
	double srv_cpu_us;       /* the server child's CPU time per answered request */
	uint64_t errors;
};

static double
process_cpu_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double) ts.tv_sec * 1e6 + (double) ts.tv_nsec / 1e3;
}

/* child_cpu_us is the CPU time (user + system) of process pid so far. */
static double
child_cpu_us(pid_t pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int) pid);
	FILE *f = fopen(path, "r");
	if (f == NULL)
		return 0;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	/* fields 14 and 15 (utime, stime), counted after the ")" of the name */
	const char *p = strrchr(buf, ')');
	unsigned long ut = 0, st = 0;
	if (p == NULL || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
		return 0;
	return (double) (ut + st) * 1e6 / (double) sysconf(_SC_CLK_TCK);
}

struct worker {
	struct bench *b;
	int id;
	struct lat lat;
	struct lat srv; /* server_time_us of the same requests */
	uint64_t errors;
	atomic_int *stop;
	uint64_t t0;
	int open_loop;
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
		lat_add(&w->lat, us);
		lat_add(&w->srv, us);
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
			sleep_until(t);
			if (atomic_load(w->stop))
				break;
		}
		struct cdx_result *r = NULL;
		if (cdx_client_search(c, &q, &r, &err) != CDX_OK)
			w->errors++;
		else {
			lat_add(&w->lat, cdx_now_us() - t);
			lat_add(&w->srv, r->server_time_us);
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
	sleep_until(t0 + (uint64_t) (b->seconds * 1e5));
	uint64_t m0 = cdx_now_us();
	double c0 = process_cpu_us();
	double s0 = b->server_pid > 0 && fn != inprocess_thread ? child_cpu_us(b->server_pid) : 0;
	size_t *skip = calloc(nthreads, sizeof(*skip));
	for (unsigned i = 0; i < nthreads; i++)
		skip[i] = w[i].lat.n; /* racy read of a counter: only used as a rough cut */
	sleep_until(m0 + (uint64_t) (b->seconds * 1e6));
	uint64_t m1 = cdx_now_us();
	double c1 = process_cpu_us();
	double s1 = b->server_pid > 0 && fn != inprocess_thread ? child_cpu_us(b->server_pid) : 0;
	size_t *end = calloc(nthreads, sizeof(*end));
	for (unsigned i = 0; i < nthreads; i++)
		end[i] = w[i].lat.n;
	atomic_store(&stop, 1);
	for (unsigned i = 0; i < nthreads; i++)
		pthread_join(th[i], NULL);
	struct lat all = { 0 }, srv = { 0 };
	struct result r = { 0 };
	for (unsigned i = 0; i < nthreads; i++) {
		for (size_t j = skip[i]; j < end[i] && j < w[i].lat.n; j++) {
			lat_add(&all, w[i].lat.v[j]);
			lat_add(&srv, w[i].srv.v[j]);
		}
		r.errors += w[i].errors;
		free(w[i].lat.v);
		free(w[i].srv.v);
	}
	qsort(all.v, all.n, sizeof(*all.v), cmp_u64);
	qsort(srv.v, srv.n, sizeof(*srv.v), cmp_u64);
	r.srv_p50 = pct(&srv, 0.50);
	r.srv_p99 = pct(&srv, 0.99);
	free(srv.v);
	r.qps = (double) all.n / ((double) (m1 - m0) / 1e6);
	r.p50 = pct(&all, 0.50);
	r.p99 = pct(&all, 0.99);
	r.cpu_us = all.n ? (c1 - c0) / (double) all.n : 0;
	r.srv_cpu_us = all.n ? (s1 - s0) / (double) all.n : 0;
	free(all.v);
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

static int
free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	if (fd < 0 || bind(fd, (struct sockaddr *) &a, sizeof(a)) != 0
	    || getsockname(fd, (struct sockaddr *) &a, &len) != 0)
		return 0;
	close(fd);
	return ntohs(a.sin_port);
}

/* parse_cpus reads a CPU list like "0", "1-3" or "0,2". */
static int
parse_cpus(const char *arg, cpu_set_t *set)
{
	CPU_ZERO(set);
	const char *p = arg;
	while (*p) {
		char *e;
		long a = strtol(p, &e, 10), z = a;
		if (e == p || a < 0 || a >= CPU_SETSIZE)
			return -1;
		if (*e == '-') {
			p = e + 1;
			z = strtol(p, &e, 10);
			if (e == p || z < a || z >= CPU_SETSIZE)
				return -1;
		}
		for (long c = a; c <= z; c++)
			CPU_SET((int) c, set);
		p = *e == ',' ? e + 1 : e;
		if (*e != ',' && *e != '\0')
			return -1;
	}
	return CPU_COUNT(set) > 0 ? 0 : -1;
}

/* spawn_server starts `candex serve` pinned to the server CPUs and waits
 * until it answers a health check. */
static pid_t
spawn_server(struct bench *b, const char *candex, const char *ipc, const char *tcp)
{
	char threads[16], queue[16], maxk[16];
	snprintf(threads, sizeof(threads), "%u", b->threads);
	snprintf(queue, sizeof(queue), "%u", 4 * b->clients); /* throughput, not admission */
	snprintf(maxk, sizeof(maxk), "%u", b->k > 1000 ? b->k : 1000);
	pid_t pid = fork();
	if (pid == 0) {
		sched_setaffinity(0, sizeof(cpu_set_t), &b->server_cpus);
		execl(candex, candex, "serve", "--index-dir", b->index_dir, "--listen", ipc, "--listen", tcp,
		    "--threads", threads, "--queue-max", queue, "--max-k", maxk, "--log-level", "warn",
		    (char *) NULL);
		fprintf(stderr, "bench_server: cannot run %s: %s\n", candex, strerror(errno));
		_exit(127);
	}
	if (pid < 0)
		return -1;
	struct cdx_client_options o = { .timeout_ms = 1000 };
	struct cdx_client_error err;
	for (int i = 0; i < 300; i++) {
		cdx_client *c;
		if (cdx_client_open(&c, ipc, &o, &err) == CDX_OK) {
			int rc = cdx_client_health(c, &err);
			cdx_client_close(c);
			if (rc == CDX_OK)
				return pid;
		}
		if (waitpid(pid, NULL, WNOHANG) == pid)
			return -1;
		usleep(100000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	return -1;
}

struct bench_cli {
	struct bench b;
	const char *ext_url, *candex, *server_cpus, *client_cpus;
	double fixed_rate;
};

#define O(f) offsetof(struct bench_cli, f)
static const struct cdx_opt options[] = {
	CDX_OPT_STR_("index-dir", O(b.index_dir), "DIR", "index directory (required)"),
	CDX_OPT_STR_("collection", O(b.collection), "NAME", "collection (required)"),
	CDX_OPT_STR_("queries", O(b.queries_path), "Q.fvecs", "query vectors (required)"),
	CDX_OPT_NUM_("k", CDX_OPT_U32, O(b.k), "K", "candidates per query [100]", 1, 100000),
	CDX_OPT_NUM_("nprobe", CDX_OPT_U32, O(b.nprobe), "N", "0 = the collection's default [0]", 0, 0),
	CDX_OPT_NUM_("threads", CDX_OPT_U32, O(b.threads), "N",
	    "server workers and in-process threads (0 = cores) [0]", 0, 1024),
	CDX_OPT_NUM_(
	    "clients", CDX_OPT_U32, O(b.clients), "N", "concurrent client threads [4 x threads]", 0, 4096),
	CDX_OPT_NUM_("seconds", CDX_OPT_DOUBLE, O(b.seconds), "S", "measuring time per run [5]", 0.01, 86400),
	CDX_OPT_NUM_("load", CDX_OPT_DOUBLE, O(b.load), "F",
	    "open-loop rate as a fraction of saturation QPS [0.7]", 0, 10),
	CDX_OPT_NUM_("batch", CDX_OPT_U32, O(b.batch), "N",
	    "query vectors per request and per in-process call [1];\nQPS counts requests (x N for queries "
	    "per second)",
	    1, 100000),
	CDX_OPT_NUM_("rate", CDX_OPT_DOUBLE, O(fixed_rate), "R",
	    "open loop at R requests/s instead of --load x saturation (skips it)", 0, 1e9),
	CDX_OPT_STR_("url", O(ext_url), "URL",
	    "measure an already running server at URL instead of starting one\n(its CPU time is not included "
	    "in the "
	    "client CPU column)"),
	CDX_OPT_STR_("server-cpus", O(server_cpus), "LIST",
	    "run the server as a separate `candex serve` pinned to these CPUs\n(e.g. 0 or 0-3) and the "
	    "in-process "
	    "baseline on the same CPUs;\nneeds --client-cpus"),
	CDX_OPT_STR_("client-cpus", O(client_cpus), "LIST", "pin the load generator to these CPUs (e.g. 1)"),
	CDX_OPT_STR_(
	    "candex", O(candex), "PATH", "the candex binary for --server-cpus [next to bench_server]"),
};
#undef O

static const struct cdx_opt_command command = {
	.prog = "bench_server",
	.head = "usage: bench_server --index-dir DIR --collection NAME --queries Q.fvecs [options]\n",
	.opts = options,
	.nopts = CDX_ARRAY_LEN(options),
};

int
main(int argc, char **argv)
{
	cdx_process_init(argc, argv);
	struct bench_cli cli = { .b = { .k = 100, .seconds = 5, .load = 0.7, .batch = 1 } };
	int prc = cdx_opt_command_parse(&command, &cli, argc, argv, NULL, 0, NULL);
	if (prc >= 0)
		return prc;
	struct bench b = cli.b;
	const char *ext_url = cli.ext_url, *candex = cli.candex, *server_cpus = cli.server_cpus,
	           *client_cpus = cli.client_cpus;
	double fixed_rate = cli.fixed_rate;
	if (b.index_dir == NULL || b.collection == NULL || b.queries_path == NULL)
		return cdx_opt_command_fail(&command, "--index-dir, --collection and --queries are required");
	if ((server_cpus != NULL) != (client_cpus != NULL) || (server_cpus != NULL && ext_url != NULL)) {
		fprintf(stderr, "bench_server: --server-cpus and --client-cpus go together, without --url\n");
		return 2;
	}
	char candex_buf[4096];
	if (server_cpus != NULL) {
		if (parse_cpus(server_cpus, &b.server_cpus) != 0
		    || parse_cpus(client_cpus, &b.client_cpus) != 0) {
			fprintf(stderr, "bench_server: bad CPU list (want e.g. 0, 1-3 or 0,2)\n");
			return 2;
		}
		b.pinned = 1;
		if (candex == NULL) {
			/* the candex binary sits next to bench_server in the build directory */
			ssize_t n = readlink("/proc/self/exe", candex_buf, sizeof(candex_buf) - 1);
			candex_buf[n > 0 ? n : 0] = '\0';
			char *slash = strrchr(candex_buf, '/');
			if (slash == NULL || (size_t) (slash - candex_buf) + 8 > sizeof(candex_buf)) {
				fprintf(stderr, "bench_server: give --candex PATH\n");
				return 2;
			}
			strcpy(slash + 1, "candex");
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
		snprintf(tcp, sizeof(tcp), "tcp://127.0.0.1:%d", free_port());
		if ((b.server_pid = spawn_server(&b, candex, ipc, tcp)) <= 0) {
			fprintf(stderr, "bench_server: %s serve did not come up\n", candex);
			return 1;
		}
	} else {
		snprintf(ipc, sizeof(ipc), "ipc:///tmp/candex-bench-%d.ipc", (int) getpid());
		snprintf(tcp, sizeof(tcp), "tcp://127.0.0.1:%d", free_port());
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
	if (b.server_pid > 0) {
		kill(b.server_pid, SIGTERM);
		waitpid(b.server_pid, NULL, 0);
	}
	cdx_server_config_fini(&cfg);
	cdx_collection_unref(b.coll);
	free(b.queries);
	return 0;
}
