/*
 * cmd_recall.c — `candex recall`: measure recall, latency, QPS and memory of
 * an index version (in process) or a live server, over a sweep of nprobe x
 * refine factor, and pick operating points. See docs/recall.md.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <candex/client.h>

#include "cli.h"
#include "recall/recall.h"
#include "search/search.h"
#include "shard/manifest.h"

#define MAX_LIST 64

static void
usage(FILE *out)
{
	fprintf(out,
	    "usage: candex recall (--index PATH | --url URL --collection NAME [--index PATH])\n"
	    "                     --queries FILE (--base FILE | --gt FILE.ivecs [--base FILE]) [options]\n"
	    "\n"
	    "Measures k-recall@k (10-recall@10, 100-recall@100, 1-recall@k), latency p50/p95/p99,\n"
	    "QPS and memory per vector for every nprobe x refine-factor setting, against exact\n"
	    "ground truth (a Faiss flat index over the base vectors, cached, or an .ivecs file).\n"
	    "A hit counts when its true distance is <= the k-th true distance + epsilon.\n"
	    "\n"
	    "what to measure:\n"
	    "  --index PATH          a version directory (DIR/NAME, DIR/NAME/CURRENT or DIR/NAME/<v>),\n"
	    "                        searched in process; with --url, only read for --save and memory\n"
	    "  --url URL             a live candex server (tcp://, ipc://, tls+tcp://)\n"
	    "  --collection NAME     the collection on the server (with --url)\n"
	    "  --timeout-ms N        per-request client timeout (default 10000)\n"
	    "\n"
	    "queries and truth:\n"
	    "  --queries FILE        query vectors (.fvecs, .npy float32/float16/float64)\n"
	    "  --base FILE           the vectors the index was built from (the builder's --input);\n"
	    "                        base row i is the item with id i unless --ids is given\n"
	    "  --ids FILE            the builder's --ids file (text or .npy int64): ids of the base rows\n"
	    "  --gt FILE.ivecs       ground truth: per query, the nearest base rows, nearest first;\n"
	    "                        without --base, hits are matched by row only (no tie rule)\n"
	    "  --format FMT          fvecs, npy or raw: read --queries and --base as FMT whatever their\n"
	    "                        names (raw: little-endian float32 of the index's dimension)\n"
	    "  --max-queries N       use only the first N queries (and ground-truth rows)\n"
	    "  --cache-dir DIR       where computed truth is cached (default $CANDEX_CACHE/recall-truth,\n"
	    "                        i.e. ~/.cache/candex/recall-truth)\n"
	    "  --no-cache            neither read nor write the truth cache\n"
	    "  --epsilon E           tie tolerance, in distance units (l2: Euclidean distance;\n"
	    "                        ip: inner product; cos: 1 - cosine); default %g\n"
	    "\n"
	    "sweep:\n"
	    "  -k, --k K             results per query (default 10); recall at k is what targets use\n"
	    "  --nprobe LIST         comma list (default 1,2,4,... up to min(nlist, 1024))\n"
	    "  --refine LIST         comma list of refine factors, 0 = none (default 0, and 2,4,8 when\n"
	    "                        the index has a refine store)\n"
	    "  --latency-queries N   single-query calls per setting for latency (default: all queries)\n"
	    "  --threads N           threads for the batched QPS pass (default: online CPUs)\n"
	    "  --batch N             queries per call in the QPS pass (default 64)\n"
	    "  --min-time S          repeat each QPS pass (>= 2 times, the best counts) until S seconds "
	    "(default 0.3)\n"
	    "  --defaults            measure only what a request with no nprobe, refine factor or\n"
	    "                        recall target gets: the collection's default operating point\n"
	    "                        at k (shown as nprobe 0, refine 0)\n"
	    "  --baseline            also time exact search (Faiss flat over --base, every core) and\n"
	    "                        report each setting's QPS as a speed-up over it\n"
	    "\n"
	    "output:\n"
	    "  --csv FILE            results as CSV\n"
	    "  --json FILE           results, settings and operating points as JSON\n"
	    "  --plot FILE.png       recall against QPS (log scale), one line per refine factor, made\n"
	    "                        by gnuplot (FILE.gp and FILE.dat are kept next to it)\n"
	    "  --title TEXT          plot title\n"
	    "  --quiet               no progress on stderr\n"
	    "\n"
	    "operating points:\n"
	    "  --target R[,R...]     pick the cheapest setting (highest QPS) reaching recall R at k\n"
	    "                        with 95%% confidence (recall - 1.645 x its standard error over\n"
	    "                        the queries >= R); repeatable; exit status 1 if not reached\n"
	    "  --save                write the picked points into the version's manifest.json\n"
	    "                        (operating_points), replacing points of the same k and target\n"
	    "\n"
	    "Exit status: 0 success, 1 failure (or a target not reached), 2 usage error.\n",
	    CDX_RECALL_EPSILON_DEFAULT);
}

struct opts {
	const char *index, *url, *collection, *queries, *base, *ids, *gt, *cache_dir;
	const char *csv, *json, *plot, *title;
	int no_cache, save, quiet, baseline, defaults;
	uint32_t k;
	uint32_t nprobes[MAX_LIST];
	size_t n_nprobes;
	float refines[MAX_LIST];
	size_t n_refines;
	double targets[MAX_LIST];
	size_t n_targets;
	size_t max_queries, latency_queries;
	unsigned threads;
	uint32_t batch, timeout_ms;
	int format; /* of --queries and --base: CDX_INPUT_AUTO (by extension) */
	double min_time;
	double eps;
};

static int
parse_u64(const char *s, const char *what, uint64_t max, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (*s == '-' || end == s || *end != '\0' || errno != 0 || v > max) {
		fprintf(stderr, "candex recall: %s: '%s' is not a number in 0..%llu\n", what, s,
		    (unsigned long long) max);
		return -1;
	}
	*out = v;
	return 0;
}

/* parse_list splits a comma list of numbers into doubles. */
static int
parse_list(const char *s, const char *what, double *out, size_t *n)
{
	char *copy = strdup(s), *save = NULL;
	for (char *tok = strtok_r(copy, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
		char *end;
		double v = strtod(tok, &end);
		if (end == tok || *end != '\0' || !isfinite(v) || v < 0) {
			fprintf(stderr, "candex recall: %s: '%s' is not a non-negative number\n", what, tok);
			free(copy);
			return -1;
		}
		if (*n >= MAX_LIST) {
			fprintf(stderr, "candex recall: %s: at most %d values\n", what, MAX_LIST);
			free(copy);
			return -1;
		}
		out[(*n)++] = v;
	}
	free(copy);
	return 0;
}

static int
parse_opts(int argc, char **argv, struct opts *o)
{
	enum {
		O_INDEX = 256,
		O_URL,
		O_COLLECTION,
		O_QUERIES,
		O_BASE,
		O_IDS,
		O_GT,
		O_CACHE,
		O_NOCACHE,
		O_EPS,
		O_NPROBE,
		O_REFINE,
		O_MAXQ,
		O_LATQ,
		O_THREADS,
		O_BATCH,
		O_CSV,
		O_JSON,
		O_PLOT,
		O_TITLE,
		O_TARGET,
		O_SAVE,
		O_DEFAULTS,
		O_QUIET,
		O_TIMEOUT,
		O_MINTIME,
		O_BASELINE,
		O_FORMAT,
	};
	static const struct option longopts[] = {
		{ "index", required_argument, NULL, O_INDEX },
		{ "url", required_argument, NULL, O_URL },
		{ "collection", required_argument, NULL, O_COLLECTION },
		{ "queries", required_argument, NULL, O_QUERIES },
		{ "base", required_argument, NULL, O_BASE },
		{ "ids", required_argument, NULL, O_IDS },
		{ "gt", required_argument, NULL, O_GT },
		{ "cache-dir", required_argument, NULL, O_CACHE },
		{ "no-cache", no_argument, NULL, O_NOCACHE },
		{ "epsilon", required_argument, NULL, O_EPS },
		{ "k", required_argument, NULL, 'k' },
		{ "nprobe", required_argument, NULL, O_NPROBE },
		{ "refine", required_argument, NULL, O_REFINE },
		{ "max-queries", required_argument, NULL, O_MAXQ },
		{ "latency-queries", required_argument, NULL, O_LATQ },
		{ "threads", required_argument, NULL, O_THREADS },
		{ "batch", required_argument, NULL, O_BATCH },
		{ "csv", required_argument, NULL, O_CSV },
		{ "json", required_argument, NULL, O_JSON },
		{ "plot", required_argument, NULL, O_PLOT },
		{ "title", required_argument, NULL, O_TITLE },
		{ "target", required_argument, NULL, O_TARGET },
		{ "save", no_argument, NULL, O_SAVE },
		{ "defaults", no_argument, NULL, O_DEFAULTS },
		{ "quiet", no_argument, NULL, O_QUIET },
		{ "timeout-ms", required_argument, NULL, O_TIMEOUT },
		{ "min-time", required_argument, NULL, O_MINTIME },
		{ "baseline", no_argument, NULL, O_BASELINE },
		{ "format", required_argument, NULL, O_FORMAT },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	memset(o, 0, sizeof(*o));
	o->k = 10;
	o->eps = CDX_RECALL_EPSILON_DEFAULT;
	o->batch = 64;
	o->timeout_ms = 10000;
	double list[MAX_LIST];
	size_t n;
	uint64_t v;
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "hk:", longopts, NULL)) != -1) {
		switch (c) {
		case O_INDEX:
			o->index = optarg;
			break;
		case O_URL:
			o->url = optarg;
			break;
		case O_COLLECTION:
			o->collection = optarg;
			break;
		case O_QUERIES:
			o->queries = optarg;
			break;
		case O_BASE:
			o->base = optarg;
			break;
		case O_IDS:
			o->ids = optarg;
			break;
		case O_GT:
			o->gt = optarg;
			break;
		case O_CACHE:
			o->cache_dir = optarg;
			break;
		case O_NOCACHE:
			o->no_cache = 1;
			break;
		case O_CSV:
			o->csv = optarg;
			break;
		case O_JSON:
			o->json = optarg;
			break;
		case O_PLOT:
			o->plot = optarg;
			break;
		case O_TITLE:
			o->title = optarg;
			break;
		case O_DEFAULTS:
			o->defaults = 1;
			break;
		case O_SAVE:
			o->save = 1;
			break;
		case O_QUIET:
			o->quiet = 1;
			break;
		case O_BASELINE:
			o->baseline = 1;
			break;
		case O_FORMAT:
			if (cdx_input_format_parse(optarg, &o->format) != CDX_OK) {
				fprintf(stderr, "candex recall: --format: %s\n", cdx_last_error());
				return -1;
			}
			break;
		case O_MINTIME: {
			char *end;
			o->min_time = strtod(optarg, &end);
			if (end == optarg || *end != '\0' || !(o->min_time >= 0 && o->min_time < 3600)) {
				fprintf(stderr,
				    "candex recall: --min-time: '%s' is not a number of seconds\n", optarg);
				return -1;
			}
			break;
		}
		case O_EPS: {
			char *end;
			o->eps = strtod(optarg, &end);
			if (end == optarg || *end != '\0' || !(o->eps >= 0)) {
				fprintf(stderr,
				    "candex recall: --epsilon: '%s' is not a non-negative number\n", optarg);
				return -1;
			}
			break;
		}
		case 'k':
			if (parse_u64(optarg, "-k", 100000, &v) != 0 || v == 0) {
				if (v == 0)
					fprintf(stderr, "candex recall: -k must be at least 1\n");
				return -1;
			}
			o->k = (uint32_t) v;
			break;
		case O_NPROBE:
			n = 0;
			if (parse_list(optarg, "--nprobe", list, &n) != 0)
				return -1;
			for (size_t i = 0; i < n; i++) {
				if (list[i] < 1 || list[i] != floor(list[i]) || list[i] > 1e6) {
					fprintf(stderr,
					    "candex recall: --nprobe: %g is not a positive integer\n",
					    list[i]);
					return -1;
				}
				if (o->n_nprobes < MAX_LIST)
					o->nprobes[o->n_nprobes++] = (uint32_t) list[i];
			}
			break;
		case O_REFINE:
			n = 0;
			if (parse_list(optarg, "--refine", list, &n) != 0)
				return -1;
			for (size_t i = 0; i < n; i++) {
				if (list[i] != 0 && list[i] < 1) {
					fprintf(stderr,
					    "candex recall: --refine: %g: use 0 (none) or a factor >= 1\n",
					    list[i]);
					return -1;
				}
				if (o->n_refines < MAX_LIST)
					o->refines[o->n_refines++]
					    = list[i] == 0 ? CDX_RECALL_REFINE_NONE : (float) list[i];
			}
			break;
		case O_TARGET:
			n = 0;
			if (parse_list(optarg, "--target", list, &n) != 0)
				return -1;
			for (size_t i = 0; i < n; i++) {
				if (list[i] <= 0 || list[i] > 1) {
					fprintf(stderr,
					    "candex recall: --target: %g is not a recall in (0, 1]\n",
					    list[i]);
					return -1;
				}
				if (o->n_targets < MAX_LIST)
					o->targets[o->n_targets++] = list[i];
			}
			break;
		case O_MAXQ:
			if (parse_u64(optarg, "--max-queries", SIZE_MAX, &v) != 0)
				return -1;
			o->max_queries = (size_t) v;
			break;
		case O_LATQ:
			if (parse_u64(optarg, "--latency-queries", SIZE_MAX, &v) != 0)
				return -1;
			o->latency_queries = (size_t) v;
			break;
		case O_THREADS:
			if (parse_u64(optarg, "--threads", 64, &v) != 0)
				return -1;
			o->threads = (unsigned) v;
			break;
		case O_BATCH:
			if (parse_u64(optarg, "--batch", 100000, &v) != 0 || v == 0)
				return -1;
			o->batch = (uint32_t) v;
			break;
		case O_TIMEOUT:
			if (parse_u64(optarg, "--timeout-ms", 86400000, &v) != 0)
				return -1;
			o->timeout_ms = (uint32_t) v;
			break;
		case 'h':
			usage(stdout);
			return 1;
		default:
			return -1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "candex recall: unexpected argument '%s'\n", argv[optind]);
		return -1;
	}
	if (o->index == NULL && o->url == NULL) {
		fprintf(stderr, "candex recall: give --index PATH or --url URL\n");
		return -1;
	}
	if (o->url != NULL && o->collection == NULL) {
		fprintf(stderr, "candex recall: --url needs --collection NAME\n");
		return -1;
	}
	if (o->queries == NULL) {
		fprintf(stderr, "candex recall: --queries FILE is required\n");
		return -1;
	}
	if (o->base == NULL && o->gt == NULL) {
		fprintf(stderr, "candex recall: give --base FILE (truth computed) or --gt FILE.ivecs\n");
		return -1;
	}
	if (o->ids != NULL && o->base == NULL) {
		fprintf(stderr, "candex recall: --ids maps ids to --base rows; give --base too\n");
		return -1;
	}
	if (o->baseline && o->base == NULL) {
		fprintf(stderr, "candex recall: --baseline searches the --base vectors; give --base\n");
		return -1;
	}
	if (o->save && o->n_targets == 0) {
		fprintf(stderr, "candex recall: --save needs --target\n");
		return -1;
	}
	if (o->save && o->index == NULL) {
		fprintf(
		    stderr, "candex recall: --save with --url needs --index PATH of the served version\n");
		return -1;
	}
	return 0;
}

/* What is known about the target index, from a manifest or server info. */
struct target_info {
	char collection[CDX_NAME_MAX];
	char version[CDX_NAME_MAX];
	int metric;
	uint32_t dim;
	uint64_t items;
	uint32_t nlist;
	int has_refine;
	double bytes_per_vector;
};

static void
info_from_manifest(struct target_info *ti, const struct cdx_manifest *m)
{
	snprintf(ti->collection, sizeof(ti->collection), "%s", m->collection);
	snprintf(ti->version, sizeof(ti->version), "%s", m->version);
	ti->metric = m->metric;
	ti->dim = m->dim;
	ti->items = m->items;
	ti->nlist = m->nlist;
	ti->has_refine = m->refine != CDX_REFINE_NONE;
	uint64_t bytes = 0;
	for (uint32_t i = 0; i < m->nshards; i++)
		bytes += m->shards[i].bytes;
	ti->bytes_per_vector = m->items ? (double) bytes / (double) m->items : NAN;
}

static int
info_from_server(struct target_info *ti, cdx_client *cl, const char *url, const char *collection)
{
	struct cdx_client_error err = { 0 };
	char *text = NULL;
	int rc = cdx_client_info(cl, collection, &text, &err);
	if (rc != CDX_OK)
		return cdx_error(rc, "%s: info for collection %s: %s", url, collection, err.message);
	json_error_t jerr;
	json_t *root = json_loads(text, 0, &jerr);
	free(text);
	json_t *arr = root ? json_object_get(root, "collections") : NULL;
	json_t *found = NULL;
	for (size_t i = 0; arr != NULL && i < json_array_size(arr); i++) {
		json_t *c = json_array_get(arr, i);
		const char *name = json_string_value(json_object_get(c, "name"));
		if (name != NULL && strcmp(name, collection) == 0)
			found = c;
	}
	if (found == NULL) {
		json_decref(root);
		return cdx_error(CDX_ENOTFOUND, "%s serves no collection named %s", url, collection);
	}
	snprintf(ti->collection, sizeof(ti->collection), "%s", collection);
	const char *s = json_string_value(json_object_get(found, "version"));
	snprintf(ti->version, sizeof(ti->version), "%s", s ? s : "");
	s = json_string_value(json_object_get(found, "metric"));
	if (s == NULL || cdx_metric_parse(s, &ti->metric) != 0) {
		json_decref(root);
		return cdx_error(CDX_EPROTO, "%s: collection %s has an unknown metric", url, collection);
	}
	ti->dim = (uint32_t) json_integer_value(json_object_get(found, "dim"));
	ti->items = (uint64_t) json_integer_value(json_object_get(found, "items"));
	ti->nlist = (uint32_t) json_integer_value(json_object_get(found, "nlist"));
	s = json_string_value(json_object_get(found, "refine"));
	ti->has_refine = s != NULL && *s != '\0' && strcmp(s, "none") != 0;
	ti->bytes_per_vector = NAN;
	json_decref(root);
	return CDX_OK;
}

struct progress_state {
	int quiet, tty;
	uint32_t k;
	int header_done;
};

static void
truth_progress(void *arg, size_t done, size_t total)
{
	struct progress_state *ps = arg;
	if (ps->quiet)
		return;
	if (ps->tty)
		fprintf(stderr, "\rground truth: %zu/%zu queries", done, total);
	if (ps->tty && done == total)
		fprintf(stderr, "\n");
}

static void
sweep_progress(void *arg, size_t done, size_t total, const char *what, const struct cdx_recall_row *row)
{
	struct progress_state *ps = arg;
	if (!ps->quiet && ps->tty)
		fprintf(stderr, "\r\033[K");
	if (row != NULL) {
		cdx_recall_table_row(stdout, row);
		fflush(stdout);
	}
	if (ps->quiet)
		return;
	if (ps->tty && done < total) {
		fprintf(stderr, "[%zu/%zu] %s", done + (row ? 0 : 1), total, what ? what : "");
		fflush(stderr);
	}
}

static const char *
default_cache_dir(char *buf, size_t len)
{
	const char *c = getenv("CANDEX_CACHE");
	if (c != NULL && *c)
		snprintf(buf, len, "%s/recall-truth", c);
	else if ((c = getenv("XDG_CACHE_HOME")) != NULL && *c)
		snprintf(buf, len, "%s/candex/recall-truth", c);
	else
		snprintf(buf, len, "%s/.cache/candex/recall-truth", getenv("HOME") ? getenv("HOME") : "/tmp");
	return buf;
}

static double
best_recall(const struct cdx_recall_row *rows, size_t n)
{
	double best = 0;
	for (size_t i = 0; i < n; i++)
		if (rows[i].recall > best)
			best = rows[i].recall;
	return best;
}

/* save_points merges the picked points into version_dir/manifest.json. */
static int
save_points(const char *version_dir, const char *expect_version, const struct cdx_recall_row *rows,
    const struct cdx_recall_point *pts, size_t npts)
{
	struct cdx_manifest *m = NULL;
	int rc = cdx_manifest_load(&m, version_dir);
	if (rc != CDX_OK)
		return rc;
	if (expect_version != NULL && *expect_version && strcmp(m->version, expect_version) != 0) {
		rc = cdx_error(CDX_EVERSION, "the server serves version %s, but %s is version %s: not saving",
		    expect_version, version_dir, m->version);
		cdx_manifest_free(m);
		return rc;
	}
	size_t cap = m->npoints + npts;
	struct cdx_operating_point *np = calloc(cap ? cap : 1, sizeof(*np));
	if (np == NULL) {
		cdx_manifest_free(m);
		return cdx_error(CDX_ENOMEM, "operating points");
	}
	size_t n = 0;
	for (uint32_t i = 0; i < m->npoints; i++) {
		int replaced = 0;
		for (size_t j = 0; j < npts; j++)
			if (pts[j].row >= 0 && m->points[i].k == rows[pts[j].row].k
			    && fabs(m->points[i].recall_target - pts[j].target) < 1e-9)
				replaced = 1;
		if (!replaced)
			np[n++] = m->points[i];
	}
	for (size_t j = 0; j < npts; j++) {
		if (pts[j].row < 0)
			continue;
		const struct cdx_recall_row *r = &rows[pts[j].row];
		np[n++] = (struct cdx_operating_point) { .recall_target = pts[j].target,
			.recall = r->recall,
			.k = r->k,
			.nprobe = r->nprobe,
			.refine_factor = r->refine_factor,
			.p99_ms = r->p99_ms };
	}
	/* "no re-ranking" is stored as the value searched with,
	 * CDX_RECALL_REFINE_NONE (0.5): a point's refine_factor goes straight
	 * into cdx_search_params, where 0 would mean the collection's default
	 * (x4 with a refine store) and anything below 1 means none.
	 * Sorted by k, then target, for readers. */
	for (size_t i = 1; i < n; i++)
		for (size_t j = i; j > 0
		     && (np[j].k < np[j - 1].k
		         || (np[j].k == np[j - 1].k && np[j].recall_target < np[j - 1].recall_target));
		     j--) {
			struct cdx_operating_point t = np[j];
			np[j] = np[j - 1];
			np[j - 1] = t;
		}
	free(m->points);
	m->points = np;
	m->npoints = (uint32_t) n;
	rc = cdx_manifest_save(m, version_dir);
	cdx_manifest_free(m);
	return rc;
}

int
cmd_recall(int argc, char **argv)
{
	struct opts o;
	int prc = parse_opts(argc, argv, &o);
	if (prc > 0)
		return CLI_EXIT_OK;
	if (prc < 0) {
		fprintf(stderr, "(candex recall --help for usage)\n");
		return CLI_EXIT_USAGE;
	}

	int rc = CDX_OK, exit_code = CLI_EXIT_FAIL;
	cdx_collection *coll = NULL;
	cdx_client *cl = NULL;
	struct cdx_manifest *man = NULL;
	struct cdx_vecs qv = { 0 }, bv = { 0 };
	float *qnorm = NULL;
	int32_t *gt = NULL;
	struct cdx_truth truth = { 0 };
	struct cdx_idmap idmap = { 0 };
	struct cdx_recall_backend be = { 0 };
	struct cdx_recall_row *rows = NULL;
	size_t nrows = 0;
	struct target_info ti = { 0 };
	char version_dir[PATH_MAX] = "";
	const char *truth_source = "computed";
	struct progress_state ps = { .quiet = o.quiet, .tty = isatty(2), .k = o.k };

	/* 1. the target */
	if (o.index != NULL) {
		if ((rc = cdx_version_path_resolve(o.index, version_dir)) != CDX_OK)
			goto fail;
	}
	if (o.url != NULL) {
		struct cdx_client_options copts = { .timeout_ms = o.timeout_ms };
		struct cdx_client_error err = { 0 };
		if ((rc = cdx_client_open(&cl, o.url, &copts, &err)) != CDX_OK) {
			rc = cdx_error(rc, "cannot open a client for %s: %s", o.url, err.message);
			goto fail;
		}
		if ((rc = cdx_client_health(cl, &err)) != CDX_OK) {
			rc = cdx_error(rc, "candex server at %s is not reachable or not serving: %s", o.url,
			    err.message[0] ? err.message : cdx_strerror(rc));
			goto fail;
		}
		if ((rc = info_from_server(&ti, cl, o.url, o.collection)) != CDX_OK)
			goto fail;
		if (version_dir[0]) {
			if ((rc = cdx_manifest_load(&man, version_dir)) != CDX_OK)
				goto fail;
			struct target_info mi = { 0 };
			info_from_manifest(&mi, man);
			ti.bytes_per_vector = mi.bytes_per_vector;
		}
		if ((rc = cdx_recall_backend_client(&be, cl, o.collection, ti.dim, o.batch)) != CDX_OK)
			goto fail;
	} else {
		if (!o.quiet)
			fprintf(stderr, "loading %s\n", version_dir);
		if ((rc = cdx_collection_load(&coll, version_dir)) != CDX_OK)
			goto fail;
		info_from_manifest(&ti, cdx_collection_manifest(coll));
		ti.bytes_per_vector
		    = ti.items ? (double) cdx_collection_memory_bytes(coll) / (double) ti.items : NAN;
		cdx_recall_backend_collection(&be, coll);
		be.batch = o.batch;
	}

	/* 2. queries, base, truth */
	if ((rc = cdx_vecs_read(&qv, o.queries, o.format == CDX_INPUT_RAW_F32 ? ti.dim : 0, o.format, 0, 0))
	    != CDX_OK)
		goto fail;
	if (qv.dim != ti.dim) {
		rc = cdx_error(CDX_EDIM, "queries %s have dimension %u, but collection %s has dimension %u",
		    o.queries, qv.dim, ti.collection, ti.dim);
		goto fail;
	}
	size_t nq_file = qv.n;
	if (o.max_queries > 0 && qv.n > o.max_queries)
		qv.n = o.max_queries;
	if (o.base != NULL) {
		if ((rc = cdx_vecs_read(
		         &bv, o.base, o.format == CDX_INPUT_RAW_F32 ? ti.dim : 0, o.format, 0, 0))
		    != CDX_OK)
			goto fail;
		if (bv.dim != ti.dim) {
			rc = cdx_error(CDX_EDIM,
			    "base vectors %s have dimension %u, but collection %s has dimension %u", o.base,
			    bv.dim, ti.collection, ti.dim);
			goto fail;
		}
		/* the builder indexes every input row (a bad row fails the build),
		 * so another count means another file: truth over it would judge
		 * hits against neighbours the index never held, or the reverse */
		if (bv.n != ti.items) {
			rc = cdx_error(CDX_EINVAL,
			    "base vectors %s have %zu rows, but collection %s holds %llu items: give the "
			    "builder's --input",
			    o.base, bv.n, ti.collection, (unsigned long long) ti.items);
			goto fail;
		}
		if (ti.metric == CDX_METRIC_COS)
			cdx_normalize_rows(bv.x, bv.n, bv.dim);
	}
	if (o.ids != NULL) {
		int64_t *ids = NULL;
		uint64_t nids = 0;
		if ((rc = cdx_ids_load(o.ids, bv.n, &ids, &nids)) != CDX_OK)
			goto fail;
		rc = cdx_idmap_init_ids(&idmap, ids, (size_t) nids);
		free(ids);
		if (rc != CDX_OK)
			goto fail;
	} else {
		cdx_idmap_identity(&idmap, bv.n ? bv.n : (size_t) ti.items);
	}
	qnorm = malloc(qv.n * qv.dim * sizeof(float));
	if (qnorm == NULL) {
		rc = cdx_error(CDX_ENOMEM, "queries");
		goto fail;
	}
	memcpy(qnorm, qv.x, qv.n * qv.dim * sizeof(float));
	if (ti.metric == CDX_METRIC_COS)
		cdx_normalize_rows(qnorm, qv.n, qv.dim);
	struct cdx_recall_space space = { .metric = ti.metric, .dim = ti.dim, .nb = bv.n, .base = bv.x };
	uint32_t want_k = o.k > 100 ? o.k : 100;

	if (o.gt != NULL) {
		size_t gn;
		uint32_t gk;
		if ((rc = cdx_ivecs_read(o.gt, &gt, &gn, &gk)) != CDX_OK)
			goto fail;
		if (gn != nq_file) {
			rc = cdx_error(CDX_EINVAL,
			    "ground truth %s has %zu rows but %s has %zu queries: they must match", o.gt, gn,
			    o.queries, nq_file);
			goto fail;
		}
		if (gk < o.k) {
			rc = cdx_error(CDX_EINVAL,
			    "ground truth %s holds %u neighbours per query, fewer than k = %u", o.gt, gk,
			    o.k);
			goto fail;
		}
		if (bv.x == NULL) {
			space.nb = ti.items;
			if (!o.quiet)
				fprintf(stderr,
				    "candex recall: no --base: hits are matched to the ground truth by row; "
				    "ties are not credited\n");
		}
		uint32_t tk = gk < want_k ? gk : want_k;
		if ((rc = cdx_truth_from_rows(&truth, &space, qnorm, qv.n, gt, gk, tk)) != CDX_OK) {
			rc = cdx_error(rc, "%s: %s", o.gt, cdx_last_error());
			goto fail;
		}
		truth_source = "ivecs";
	} else {
		uint32_t tk = bv.n < want_k ? (uint32_t) bv.n : want_k;
		if (tk < o.k) {
			rc = cdx_error(CDX_EINVAL, "k = %u but the base has only %zu vectors", o.k, bv.n);
			goto fail;
		}
		char cdir[PATH_MAX], cpath[PATH_MAX + 64];
		uint64_t key = 0;
		cpath[0] = '\0';
		if (!o.no_cache) {
			const char *dir = o.cache_dir ? o.cache_dir : default_cache_dir(cdir, sizeof(cdir));
			key = cdx_truth_key(&space, qnorm, qv.n, tk, NULL, 0);
			cdx_truth_cache_path(cpath, sizeof(cpath), dir, key);
			int lrc = cdx_truth_load(&truth, cpath);
			if (lrc == CDX_OK && truth.nq == qv.n && truth.k == tk && truth.metric == ti.metric
			    && truth.dist != NULL) {
				truth_source = "cache";
			} else {
				if (lrc == CDX_OK || lrc != CDX_ENOTFOUND)
					fprintf(stderr, "candex recall: ignoring truth cache %s: %s\n", cpath,
					    lrc ? cdx_last_error() : "does not match");
				cdx_truth_fini(&truth);
				if ((rc = cdx_mkdir_p(dir, 0755)) != CDX_OK)
					goto fail;
			}
		}
		if (truth.rows == NULL) {
			uint64_t t0 = cdx_now_us();
			rc = cdx_truth_compute(&truth, &space, qnorm, qv.n, tk, truth_progress, &ps);
			if (rc != CDX_OK)
				goto fail;
			if (!o.quiet)
				fprintf(stderr,
				    "ground truth: %zu queries x top-%u over %zu vectors in %.1f s\n", qv.n,
				    tk, bv.n, (double) (cdx_now_us() - t0) / 1e6);
			if (cpath[0] && (rc = cdx_truth_save(&truth, cpath)) != CDX_OK)
				goto fail;
		}
	}

	/* 3. the sweep */
	uint32_t nprobes[MAX_LIST];
	size_t n_nprobes = o.n_nprobes;
	if (n_nprobes > 0)
		memcpy(nprobes, o.nprobes, n_nprobes * sizeof(uint32_t));
	else
		n_nprobes = cdx_recall_default_nprobes(ti.nlist, nprobes, MAX_LIST);
	float refines[MAX_LIST];
	size_t n_refines = o.n_refines;
	if (o.defaults) { /* 0 and 0: the server's (or collection's) own choice */
		nprobes[0] = 0;
		n_nprobes = 1;
		refines[0] = 0;
		n_refines = 1;
	} else if (n_refines > 0) {
		memcpy(refines, o.refines, n_refines * sizeof(float));
		for (size_t i = 0; i < n_refines; i++)
			if (refines[i] >= 1 && !ti.has_refine) {
				rc = cdx_error(CDX_EINVAL,
				    "--refine %g: collection %s has no refine store "
				    "(build it with candex build --refine sq8|fp16|fp32)",
				    (double) refines[i], ti.collection);
				goto fail;
			}
	} else {
		refines[n_refines++] = CDX_RECALL_REFINE_NONE;
		if (ti.has_refine) {
			refines[n_refines++] = 2;
			refines[n_refines++] = 4;
			refines[n_refines++] = 8;
		}
	}
	struct cdx_recall_set set = { .space = space,
		.queries = qv.x,
		.queries_norm = qnorm,
		.nq = qv.n,
		.truth = &truth,
		.idmap = &idmap,
		.eps = o.eps };
	struct cdx_sweep_config cfg = { .k = o.k,
		.nprobes = nprobes,
		.n_nprobes = n_nprobes,
		.refines = refines,
		.n_refines = n_refines,
		.threads = o.threads,
		.min_seconds = o.min_time,
		.latency_queries = o.latency_queries,
		.bytes_per_vector = ti.bytes_per_vector,
		.progress = sweep_progress,
		.progress_arg = &ps };

	double exact_qps = 0;
	if (o.baseline) {
		if ((rc = cdx_recall_exact_qps(
		         &space, qnorm, qv.n, o.k, o.min_time > 0 ? o.min_time : 0.3, &exact_qps))
		    != CDX_OK)
			goto fail;
	}

	printf("# candex recall: %s (version %s, %s, dim %u, %llu items, nlist %u) via %s\n", ti.collection,
	    ti.version, cdx_metric_name(ti.metric), ti.dim, (unsigned long long) ti.items, ti.nlist,
	    o.url ? o.url : version_dir);
	printf("# %zu queries, truth %s (top %u), k %u, epsilon %g%s\n", qv.n, truth_source, truth.k, o.k,
	    o.eps, space.base ? "" : ", ids only (no tie rule)");
	if (exact_qps > 0)
		printf("# exact search (Faiss flat, all cores, batches of 1024): %.0f QPS\n", exact_qps);
	cdx_recall_table_header(stdout, o.k);
	fflush(stdout);
	if ((rc = cdx_recall_sweep(&be, &set, &cfg, &rows, &nrows)) != CDX_OK)
		goto fail;
	if (o.baseline) {
		/* timed again after the sweep, the faster counts: one timing on a
		 * shared machine can land on someone else's busy moment */
		double again = 0;
		if ((rc = cdx_recall_exact_qps(
		         &space, qnorm, qv.n, o.k, o.min_time > 0 ? o.min_time : 0.3, &again))
		    != CDX_OK)
			goto fail;
		if (again > exact_qps)
			exact_qps = again;
		printf("# exact search, best of before and after the sweep: %.0f QPS\n", exact_qps);
	}

	size_t at;
	double drop = cdx_recall_worst_drop(rows, nrows, &at);
	if (drop > 0.01)
		fprintf(stderr,
		    "candex recall: WARNING: recall falls by %.4f as nprobe rises (to nprobe %u, refine %g): "
		    "more probes only add candidates, so this points at a bug in the metric path\n",
		    drop, rows[at].nprobe,
		    rows[at].refine_factor < 1 ? 0.0 : (double) rows[at].refine_factor);
	size_t mism = 0;
	for (size_t i = 0; i < nrows; i++)
		mism += rows[i].mismatched;
	if (mism > 0 && !o.quiet)
		fprintf(stderr,
		    "candex recall: note: %zu single-query results differed from the batched ones "
		    "(float rounding in batched distance code can reorder near-ties)\n",
		    mism);

	/* 4. operating points and outputs */
	struct cdx_recall_point pts[MAX_LIST];
	int unreached = 0;
	if (o.n_targets > 0) {
		printf(
		    "\n# operating points (cheapest setting whose %u-recall@%u reaches the target with 95%% "
		    "confidence: recall - 1.645 x standard error)\n",
		    o.k, o.k);
		printf("%8s %7s %6s %9s %8s %8s %10s\n", "target", "nprobe", "refine", "recall", "std err",
		    "p99 ms", "QPS");
	}
	for (size_t i = 0; i < o.n_targets; i++) {
		pts[i].target = o.targets[i];
		pts[i].row = cdx_recall_pick(rows, nrows, o.targets[i]);
		if (pts[i].row < 0) {
			printf(
			    "%8.4f %7s %6s %9s %8s %8s %10s\n", o.targets[i], "-", "-", "-", "-", "-", "-");
			fprintf(stderr,
			    "candex recall: target %g not reached by any setting swept (best %u-recall@%u: "
			    "%.4f)\n",
			    o.targets[i], o.k, o.k, best_recall(rows, nrows));
			unreached = 1;
			continue;
		}
		const struct cdx_recall_row *r = &rows[pts[i].row];
		char rf[16];
		if (r->refine_factor < 1)
			snprintf(rf, sizeof(rf), "none");
		else
			snprintf(rf, sizeof(rf), "x%g", (double) r->refine_factor);
		printf("%8.4f %7u %6s %9.4f %8.4f %8.3f %10.0f\n", o.targets[i], r->nprobe, rf, r->recall,
		    r->recall_se, r->p99_ms, r->qps);
	}
	if (o.csv != NULL && (rc = cdx_recall_write_csv(o.csv, rows, nrows)) != CDX_OK)
		goto fail;
	if (o.json != NULL) {
		struct cdx_recall_meta meta = { .collection = ti.collection,
			.version = ti.version,
			.source = o.url ? o.url : version_dir,
			.metric = ti.metric,
			.dim = ti.dim,
			.nb = bv.n,
			.items = ti.items,
			.nlist = ti.nlist,
			.nq = qv.n,
			.k = o.k,
			.eps = o.eps,
			.truth_source = truth_source,
			.ids_only = space.base == NULL,
			.exact_qps = exact_qps };
		if ((rc = cdx_recall_write_json(o.json, &meta, rows, nrows, pts, o.n_targets)) != CDX_OK)
			goto fail;
	}
	if (o.plot != NULL) {
		char title[256];
		if (o.title == NULL)
			snprintf(title, sizeof(title), "%s (%s, %llu items, nlist %u): %u-recall@%u vs QPS",
			    ti.collection, cdx_metric_name(ti.metric), (unsigned long long) ti.items,
			    ti.nlist, o.k, o.k);
		if ((rc = cdx_recall_plot(o.plot, o.title ? o.title : title, rows, nrows, exact_qps))
		    != CDX_OK)
			goto fail;
	}
	if (o.save) {
		if ((rc = save_points(version_dir, o.url ? ti.version : NULL, rows, pts, o.n_targets))
		    != CDX_OK)
			goto fail;
		if (!o.quiet)
			fprintf(stderr, "operating points saved to %s/%s\n", version_dir, CDX_MANIFEST_FILE);
	}
	exit_code = unreached ? CLI_EXIT_FAIL : CLI_EXIT_OK;
	goto out;
fail:
	if (ps.tty && !o.quiet)
		fprintf(stderr, "\r\033[K");
	fprintf(stderr, "candex recall: %s\n", cdx_last_error());
	exit_code = CLI_EXIT_FAIL;
out:
	free(rows);
	cdx_recall_backend_fini(&be);
	cdx_truth_fini(&truth);
	cdx_idmap_fini(&idmap);
	free(gt);
	free(qnorm);
	cdx_vecs_fini(&qv);
	cdx_vecs_fini(&bv);
	cdx_manifest_free(man);
	cdx_collection_unref(coll);
	cdx_client_close(cl);
	(void) rc;
	return exit_code;
}
