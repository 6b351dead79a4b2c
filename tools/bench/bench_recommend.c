/*
 * bench_recommend.c — BENCHMARKS.md's "Recommender features" rows.
 *
 *   bench_recommend recall --index DIR/NAME --base FILE --queries FILE
 *                   --filters 'EXPR;EXPR...' [-k 10] [--max-queries N]
 *     In process (cdx_collection_search, one query per call, the
 *     collection's defaults: no nprobe, no target): recall@k of each filter
 *     against brute force with the same filter (exact search over the items
 *     that pass), beside the unfiltered search's recall against unfiltered
 *     brute force, and the time per query as a ratio to the unfiltered one.
 *     Base row i must be item id i (a build without --ids).
 *
 *   bench_recommend exclusions --url URL --collection NAME --queries FILE
 *                   --items N [--counts 0,2000,50000] [--requests 300] [-k 10]
 *     Through a running server: the server time (SearchResponse.server_time_us)
 *     of requests excluding 0, 2,000 and 50,000 ids, sent compactly
 *     (exclude_ids_packed) and as plain ids, as ratios to the request with
 *     none. The excluded ids are each query's 100 nearest items first (a
 *     listening history lies near the user), then uniformly drawn ids of
 *     the collection's N items.
 */
#define _GNU_SOURCE
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <faiss/c_api/IndexFlat_c.h>
#include <faiss/c_api/Index_c.h>

#include "builder/build.h"
#include "candex/client.h"
#include "common/idlist.h"
#include "input/input.h"
#include "search/search.h"

static float *
read_vectors(const char *path, uint64_t *n, uint32_t *dim, uint64_t max)
{
	struct cdx_vecs v = { 0 };
	if (cdx_vecs_read(&v, path, 0, CDX_INPUT_AUTO, 0, (size_t) max) != CDX_OK
	    && (max == 0 || cdx_vecs_read(&v, path, 0, CDX_INPUT_AUTO, 0, 0) != CDX_OK)) {
		fprintf(stderr, "bench_recommend: %s\n", cdx_last_error());
		exit(1);
	}
	*n = v.n;
	*dim = v.dim;
	return v.x;
}

static double
score(int metric, const float *a, const float *b, uint32_t dim)
{
	double s = 0;
	for (uint32_t j = 0; j < dim; j++)
		s += metric == CDX_METRIC_L2 ? ((double) a[j] - b[j]) * ((double) a[j] - b[j])
		                             : (double) a[j] * b[j];
	return s;
}

/* truth: the top k of the rows in pass (NULL: all) for each query, by an
 * exact Faiss flat index over those rows; out[q * k + j] = base row. */
static void
truth(int metric, const float *base, uint64_t n, uint32_t dim, const uint8_t *pass, const float *q, size_t nq,
    uint32_t k, int64_t *out)
{
	FaissIndexFlat *flat = NULL;
	faiss_IndexFlat_new_with(
	    &flat, (idx_t) dim, metric == CDX_METRIC_L2 ? METRIC_L2 : METRIC_INNER_PRODUCT);
	int64_t *rows = malloc(n * sizeof(int64_t));
	float *sub = malloc(n * dim * sizeof(float));
	size_t m = 0;
	for (uint64_t i = 0; i < n; i++) {
		if (pass != NULL && !pass[i])
			continue;
		memcpy(sub + m * dim, base + i * dim, dim * sizeof(float));
		rows[m++] = (int64_t) i;
	}
	faiss_Index_add((FaissIndex *) flat, (idx_t) m, sub);
	float *d = malloc(nq * k * sizeof(float));
	faiss_Index_search((FaissIndex *) flat, (idx_t) nq, q, (idx_t) k, d, out);
	for (size_t i = 0; i < nq * k; i++)
		out[i] = out[i] >= 0 ? rows[out[i]] : -1;
	free(d);
	free(sub);
	free(rows);
	faiss_Index_free((FaissIndex *) flat);
}

struct run {
	double recall, se, us, nprobe;
};

/* one pass of single-query searches with filter, against truth */
static struct run
measure(const cdx_collection *c, int metric, const float *base, uint32_t dim, const float *q, size_t nq,
    uint32_t k, const char *filter, const int64_t *t)
{
	struct cdx_hit *hits = malloc(k * sizeof(*hits));
	double sum = 0, sum2 = 0, nprobe = 0;
	uint64_t spent = 0;
	for (size_t i = 0; i < nq; i++) {
		struct cdx_search_used used;
		struct cdx_search_params p = { .k = k, .filter = filter, .used = &used };
		uint64_t t0 = cdx_now_us();
		if (cdx_collection_search(c, &p, q + i * dim, 1, hits) != CDX_OK) {
			fprintf(stderr, "bench_recommend: %s\n", cdx_last_error());
			exit(1);
		}
		spent += cdx_now_us() - t0;
		nprobe += used.nprobe;
		const int64_t *ti = t + i * k;
		double r = 1;
		if (ti[k - 1] >= 0) {
			/* a hit counts when it is as near as the k-th true one (ties) */
			double kth = score(metric, q + i * dim, base + ti[k - 1] * dim, dim),
			       eps = 1e-4 * (fabs(kth) + 1);
			size_t ok = 0;
			for (uint32_t j = 0; j < k; j++) {
				if (hits[j].id < 0)
					continue;
				double s = score(metric, q + i * dim, base + hits[j].id * dim, dim);
				ok += metric == CDX_METRIC_L2 ? s <= kth + eps : s >= kth - eps;
			}
			r = (double) ok / k;
		}
		sum += r;
		sum2 += r * r;
	}
	free(hits);
	double mean = sum / nq;
	return (struct run) { mean, sqrt(fmax(0, sum2 / nq - mean * mean) / nq), (double) spent / nq,
		nprobe / nq };
}

static int
cmd_recall(
    const char *index, const char *basef, const char *qf, const char *filters, uint32_t k, uint64_t maxq)
{
	cdx_collection *c = NULL;
	if (cdx_collection_load(&c, index) != CDX_OK) {
		fprintf(stderr, "bench_recommend: %s\n", cdx_last_error());
		return 1;
	}
	const struct cdx_manifest *m = cdx_collection_manifest(c);
	uint64_t n, nq;
	uint32_t dim, qdim;
	float *base = read_vectors(basef, &n, &dim, 0), *q = read_vectors(qf, &nq, &qdim, maxq);
	if (dim != m->dim || qdim != dim || n != m->items) {
		fprintf(stderr, "bench_recommend: base %llu x %u, queries x %u, collection %llu x %u\n",
		    (unsigned long long) n, dim, qdim, (unsigned long long) m->items, m->dim);
		return 1;
	}
	if (m->metric == CDX_METRIC_COS) {
		cdx_normalize_rows(base, n, dim);
		cdx_normalize_rows(q, nq, dim);
	}
	int metric = m->metric == CDX_METRIC_L2 ? CDX_METRIC_L2 : CDX_METRIC_IP;
	int64_t *t = malloc(nq * k * sizeof(int64_t));
	truth(metric, base, n, dim, NULL, q, nq, k, t);
	struct run plain = measure(c, metric, base, dim, q, nq, k, NULL, t);
	printf("| filter | kept | %u-recall@%u vs brute force (same filter) | minus unfiltered | nprobe "
	       "(mean) | µs/query "
	       "| time ratio |\n|---|---|---|---|---|---|---|\n",
	    k, k);
	printf("| (none) | 100%% | %.4f ± %.4f | | %.1f | %.0f | 1.00 |\n", plain.recall, plain.se,
	    plain.nprobe, plain.us);
	char *list = strdup(filters), *save = NULL;
	for (char *f = strtok_r(list, ";", &save); f != NULL; f = strtok_r(NULL, ";", &save)) {
		int64_t *ids = NULL;
		size_t nids = 0;
		if (cdx_collection_filter_ids(c, f, &ids, &nids) != CDX_OK) {
			fprintf(stderr, "bench_recommend: %s\n", cdx_last_error());
			return 1;
		}
		uint8_t *pass = calloc(n, 1);
		for (size_t i = 0; i < nids; i++)
			if (ids[i] >= 0 && (uint64_t) ids[i] < n)
				pass[ids[i]] = 1;
		truth(metric, base, n, dim, pass, q, nq, k, t);
		struct run r = measure(c, metric, base, dim, q, nq, k, f, t);
		printf("| `%s` | %.1f%% | %.4f ± %.4f | %+.4f | %.1f | %.0f | %.2f |\n", f, 100.0 * nids / n,
		    r.recall, r.se, r.recall - plain.recall, r.nprobe, r.us, r.us / plain.us);
		free(ids);
		free(pass);
	}
	printf("\n%llu queries, k = %u, %s, the collection's defaults (manifest default_recall_target %g)\n",
	    (unsigned long long) nq, k, m->factory, m->default_recall_target);
	free(list);
	free(t);
	free(base);
	free(q);
	cdx_collection_unref(c);
	return 0;
}

/* id_bytes: what the ids take on the wire, compact or as a packed
 * repeated int64 (a varint of each id as uint64). */
static size_t
id_bytes(const int64_t *ids, size_t n, int compact)
{
	if (compact) {
		cdx_buf b = { 0 };
		cdx_idlist_encode(ids, n, &b);
		size_t len = b.len;
		cdx_buf_fini(&b);
		return len;
	}
	size_t len = 0;
	for (size_t i = 0; i < n; i++)
		for (uint64_t v = (uint64_t) ids[i];; v >>= 7) {
			len++;
			if (v < 0x80)
				break;
		}
	return len;
}

static int
cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
	return x < y ? -1 : x > y;
}

static int
cmd_exclusions(const char *url, const char *coll, const char *qf, uint64_t items, const char *counts,
    size_t requests, uint32_t k)
{
	uint64_t nq;
	uint32_t dim;
	float *q = read_vectors(qf, &nq, &dim, 0);
	cdx_client *cl = NULL;
	struct cdx_client_options o = { .timeout_ms = 30000, .retries = 2 };
	struct cdx_client_error err;
	if (cdx_client_open(&cl, url, &o, &err) != CDX_OK) {
		fprintf(stderr, "bench_recommend: %s\n", err.message);
		return 1;
	}
	printf("| excluded ids | encoding | request bytes | server µs p50 | p99 | p50 ratio to none | "
	       "results = k |\n"
	       "|---|---|---|---|---|---|---|\n");
	double base_p50 = 0;
	char *list = strdup(counts), *save = NULL;
	for (char *tok = strtok_r(list, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
		size_t nex = strtoull(tok, NULL, 10);
		for (int compact = 1; compact >= (nex > 0 ? 0 : 1); compact--) {
			uint64_t *us = malloc(requests * sizeof(uint64_t));
			int64_t *ex = malloc((nex + 1) * sizeof(int64_t));
			size_t full = 0, bytes = 0;
			cdx_rng rng;
			cdx_rng_seed(&rng, 99);
			for (size_t r = 0; r < requests; r++) {
				const float *qi = q + (r % nq) * dim;
				size_t have = 0;
				if (nex > 0) {
					/* the query's 100 nearest first */
					struct cdx_query near = { .collection = coll,
						.vectors = qi,
						.nvectors = 1,
						.dim = dim,
						.k = (uint32_t) CDX_MIN(nex, (size_t) 100) };
					struct cdx_result *nr = NULL;
					if (cdx_client_search(cl, &near, &nr, &err) != CDX_OK) {
						fprintf(stderr, "bench_recommend: %s\n", err.message);
						return 1;
					}
					for (size_t j = 0; j < nr->queries[0].nhits; j++)
						ex[have++] = nr->queries[0].hits[j].id;
					cdx_result_free(nr);
					while (have < nex)
						ex[have++] = (int64_t) (cdx_rng_next(&rng) % items);
				}
				struct cdx_query qq = { .collection = coll,
					.vectors = qi,
					.nvectors = 1,
					.dim = dim,
					.k = k,
					.exclude_ids = ex,
					.n_exclude_ids = have,
					.compact_excludes = compact };
				struct cdx_result *res = NULL;
				if (cdx_client_search(cl, &qq, &res, &err) != CDX_OK) {
					fprintf(stderr, "bench_recommend: %s\n", err.message);
					return 1;
				}
				us[r] = res->server_time_us;
				full += res->queries[0].nhits == k;
				cdx_result_free(res);
				if (r == 0)
					bytes = id_bytes(ex, have, compact);
			}
			qsort(us, requests, sizeof(uint64_t), cmp_u64);
			double p50 = (double) us[requests / 2], p99 = (double) us[requests * 99 / 100];
			if (nex == 0)
				base_p50 = p50;
			printf("| %zu | %s | %zu | %.0f | %.0f | %.2f | %zu / %zu |\n", nex,
			    nex == 0      ? "-"
			        : compact ? "compact"
			                  : "plain",
			    bytes, p50, p99, p50 / base_p50, full, requests);
			free(us);
			free(ex);
		}
	}
	free(list);
	free(q);
	cdx_client_close(cl);
	return 0;
}

int
main(int argc, char **argv)
{
	cdx_process_init(argc, argv);
	static const struct option opts[] = {
		{ "index", required_argument, NULL, 'i' },
		{ "base", required_argument, NULL, 'b' },
		{ "queries", required_argument, NULL, 'q' },
		{ "filters", required_argument, NULL, 'f' },
		{ "k", required_argument, NULL, 'k' },
		{ "max-queries", required_argument, NULL, 'm' },
		{ "url", required_argument, NULL, 'u' },
		{ "collection", required_argument, NULL, 'c' },
		{ "items", required_argument, NULL, 'n' },
		{ "counts", required_argument, NULL, 'e' },
		{ "requests", required_argument, NULL, 'r' },
		{ NULL, 0, NULL, 0 },
	};
	const char *index = NULL, *basef = NULL, *qf = NULL, *filters = "", *url = NULL, *coll = NULL;
	const char *counts = "0,2000,50000";
	uint32_t k = 10;
	uint64_t maxq = 0, items = 0;
	size_t requests = 300;
	int c;
	if (argc < 2) {
		fprintf(stderr,
		    "usage: bench_recommend recall|exclusions [options] (see the comment at the top)\n");
		return 2;
	}
	const char *mode = argv[1];
	optind = 2;
	while ((c = getopt_long(argc, argv, "k:", opts, NULL)) != -1) {
		switch (c) {
		case 'i':
			index = optarg;
			break;
		case 'b':
			basef = optarg;
			break;
		case 'q':
			qf = optarg;
			break;
		case 'f':
			filters = optarg;
			break;
		case 'k':
			k = (uint32_t) strtoul(optarg, NULL, 10);
			break;
		case 'm':
			maxq = strtoull(optarg, NULL, 10);
			break;
		case 'u':
			url = optarg;
			break;
		case 'c':
			coll = optarg;
			break;
		case 'n':
			items = strtoull(optarg, NULL, 10);
			break;
		case 'e':
			counts = optarg;
			break;
		case 'r':
			requests = strtoull(optarg, NULL, 10);
			break;
		default:
			return 2;
		}
	}
	if (strcmp(mode, "recall") == 0 && index && basef && qf && k > 0)
		return cmd_recall(index, basef, qf, filters, k, maxq);
	if (strcmp(mode, "exclusions") == 0 && url && coll && qf && items > 0 && requests > 0 && k > 0)
		return cmd_exclusions(url, coll, qf, items, counts, requests, k);
	fprintf(stderr, "bench_recommend: missing or unknown options (see the comment at the top)\n");
	return 2;
}
