/*
 * recall_run.c — a whole measurement, as `candex recall` runs it: the target
 * (a version in process, or a server), queries, base and ids (src/input),
 * ground truth (computed and cached, or an .ivecs file), the sweep, operating
 * points and the reports; tools/cmd_recall.c only parses the options.
 */
#define _GNU_SOURCE
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <candex/client.h>

#include "recall/recall.h"
#include "search/search.h"
#include "shard/manifest.h"

void
cdx_recall_job_init(struct cdx_recall_job *j)
{
	memset(j, 0, sizeof(*j));
	j->k = 10;
	j->eps = CDX_RECALL_EPSILON_DEFAULT;
	j->batch = 64;
	j->timeout_ms = 10000;
	j->format = CDX_INPUT_AUTO;
}

int
cdx_recall_job_check(const struct cdx_recall_job *j)
{
	if (j->index == NULL && j->url == NULL)
		return cdx_error(CDX_EINVAL, "give --index PATH or --url URL");
	if (j->url != NULL && j->collection == NULL)
		return cdx_error(CDX_EINVAL, "--url needs --collection NAME");
	if (j->queries == NULL)
		return cdx_error(CDX_EINVAL, "--queries FILE is required");
	if (j->base == NULL && j->gt == NULL)
		return cdx_error(CDX_EINVAL, "give --base FILE (truth computed) or --gt FILE.ivecs");
	if (j->ids != NULL && j->base == NULL)
		return cdx_error(CDX_EINVAL, "--ids maps ids to --base rows; give --base too");
	if (j->baseline && j->base == NULL)
		return cdx_error(CDX_EINVAL, "--baseline searches the --base vectors; give --base");
	if (j->save && j->n_targets == 0)
		return cdx_error(CDX_EINVAL, "--save needs --target");
	if (j->save && j->index == NULL)
		return cdx_error(CDX_EINVAL, "--save with --url needs --index PATH of the served version");
	return CDX_OK;
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
	FILE *out; /* the table */
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
		cdx_recall_table_row(ps->out, row);
		fflush(ps->out);
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

/* The state of one run, filled step by step. */
struct run {
	const struct cdx_recall_job *j;
	FILE *out;
	cdx_collection *coll;     /* in process */
	cdx_client *cl;           /* or over RPC */
	struct cdx_manifest *man; /* with --url and --index: for memory and --save */
	struct target_info ti;
	char version_dir[PATH_MAX];
	struct cdx_recall_backend be;
	struct cdx_vecs qv, bv; /* queries (qv.n: up to --max-queries), base */
	size_t nq_file;         /* queries in the file */
	float *qnorm;           /* the queries, normalised for cos */
	struct cdx_idmap idmap;
	struct cdx_recall_space space;
	int32_t *gt; /* --gt rows */
	struct cdx_truth truth;
	const char *truth_source;
	struct progress_state ps;
	struct cdx_recall_row *rows;
	size_t nrows;
	double exact_qps;
	struct cdx_recall_point pts[CDX_RECALL_MAX_LIST];
	int unreached;
};

/* open_target opens the version in process, or a client of the server, and learns what it holds. */
static int
open_target(struct run *st)
{
	const struct cdx_recall_job *j = st->j;
	int rc = CDX_OK;
	if (j->index != NULL) {
		if ((rc = cdx_version_path_resolve(j->index, st->version_dir)) != CDX_OK)
			return rc;
	}
	if (j->url != NULL) {
		struct cdx_client_options copts = { .timeout_ms = j->timeout_ms };
		struct cdx_client_error err = { 0 };
		if ((rc = cdx_client_open(&st->cl, j->url, &copts, &err)) != CDX_OK) {
			rc = cdx_error(rc, "cannot open a client for %s: %s", j->url, err.message);
			return rc;
		}
		if ((rc = cdx_client_health(st->cl, &err)) != CDX_OK) {
			rc = cdx_error(rc, "candex server at %s is not reachable or not serving: %s", j->url,
			    err.message[0] ? err.message : cdx_strerror(rc));
			return rc;
		}
		if ((rc = info_from_server(&st->ti, st->cl, j->url, j->collection)) != CDX_OK)
			return rc;
		if (st->version_dir[0]) {
			if ((rc = cdx_manifest_load(&st->man, st->version_dir)) != CDX_OK)
				return rc;
			struct target_info mi = { 0 };
			info_from_manifest(&mi, st->man);
			st->ti.bytes_per_vector = mi.bytes_per_vector;
		}
		if ((rc = cdx_recall_backend_client(&st->be, st->cl, j->collection, st->ti.dim, j->batch))
		    != CDX_OK)
			return rc;
	} else {
		if (!j->quiet)
			fprintf(stderr, "loading %s\n", st->version_dir);
		if ((rc = cdx_collection_load(&st->coll, st->version_dir)) != CDX_OK)
			return rc;
		info_from_manifest(&st->ti, cdx_collection_manifest(st->coll));
		st->ti.bytes_per_vector = st->ti.items
		    ? (double) cdx_collection_memory_bytes(st->coll) / (double) st->ti.items
		    : NAN;
		cdx_recall_backend_collection(&st->be, st->coll);
		st->be.batch = j->batch;
	}

	return rc;
}

/* read_inputs reads the queries, the base vectors and the ids (src/input) and checks them against the target.
 */
static int
read_inputs(struct run *st)
{
	const struct cdx_recall_job *j = st->j;
	int rc = CDX_OK;
	if ((rc = cdx_vecs_read(
	         &st->qv, j->queries, j->format == CDX_INPUT_RAW_F32 ? st->ti.dim : 0, j->format, 0, 0))
	    != CDX_OK)
		return rc;
	if (st->qv.dim != st->ti.dim) {
		rc = cdx_error(CDX_EDIM, "queries %s have dimension %u, but collection %s has dimension %u",
		    j->queries, st->qv.dim, st->ti.collection, st->ti.dim);
		return rc;
	}
	st->nq_file = st->qv.n;
	if (j->max_queries > 0 && st->qv.n > j->max_queries)
		st->qv.n = j->max_queries;
	if (j->base != NULL) {
		if ((rc = cdx_vecs_read(
		         &st->bv, j->base, j->format == CDX_INPUT_RAW_F32 ? st->ti.dim : 0, j->format, 0, 0))
		    != CDX_OK)
			return rc;
		if (st->bv.dim != st->ti.dim) {
			rc = cdx_error(CDX_EDIM,
			    "base vectors %s have dimension %u, but collection %s has dimension %u", j->base,
			    st->bv.dim, st->ti.collection, st->ti.dim);
			return rc;
		}
		/* the builder indexes every input row (a bad row fails the build),
		 * so another count means another file: st->truth over it would judge
		 * hits against neighbours the index never held, or the reverse */
		if (st->bv.n != st->ti.items) {
			rc = cdx_error(CDX_EINVAL,
			    "base vectors %s have %zu rows, but collection %s holds %llu items: give the "
			    "builder's --input",
			    j->base, st->bv.n, st->ti.collection, (unsigned long long) st->ti.items);
			return rc;
		}
		if (st->ti.metric == CDX_METRIC_COS)
			cdx_normalize_rows(st->bv.x, st->bv.n, st->bv.dim);
	}
	if (j->ids != NULL) {
		int64_t *ids = NULL;
		uint64_t nids = 0;
		if ((rc = cdx_ids_load(j->ids, st->bv.n, &ids, &nids)) != CDX_OK)
			return rc;
		rc = cdx_idmap_init_ids(&st->idmap, ids, (size_t) nids);
		free(ids);
		if (rc != CDX_OK)
			return rc;
	} else {
		cdx_idmap_identity(&st->idmap, st->bv.n ? st->bv.n : (size_t) st->ti.items);
	}
	st->qnorm = malloc(st->qv.n * st->qv.dim * sizeof(float));
	if (st->qnorm == NULL) {
		rc = cdx_error(CDX_ENOMEM, "queries");
		return rc;
	}
	memcpy(st->qnorm, st->qv.x, st->qv.n * st->qv.dim * sizeof(float));
	if (st->ti.metric == CDX_METRIC_COS)
		cdx_normalize_rows(st->qnorm, st->qv.n, st->qv.dim);
	st->space = (struct cdx_recall_space) {
		.metric = st->ti.metric, .dim = st->ti.dim, .nb = st->bv.n, .base = st->bv.x
	};
	return rc;
}

/* make_truth reads the ground truth from an .ivecs file, or computes it (exact search) and caches it. */
static int
make_truth(struct run *st)
{
	const struct cdx_recall_job *j = st->j;
	int rc = CDX_OK;
	uint32_t want_k = j->k > 100 ? j->k : 100;
	if (j->gt != NULL) {
		size_t gn;
		uint32_t gk;
		if ((rc = cdx_ivecs_read(j->gt, &st->gt, &gn, &gk)) != CDX_OK)
			return rc;
		if (gn != st->nq_file) {
			rc = cdx_error(CDX_EINVAL,
			    "ground truth %s has %zu rows but %s has %zu queries: they must match", j->gt, gn,
			    j->queries, st->nq_file);
			return rc;
		}
		if (gk < j->k) {
			rc = cdx_error(CDX_EINVAL,
			    "ground truth %s holds %u neighbours per query, fewer than k = %u", j->gt, gk,
			    j->k);
			return rc;
		}
		if (st->bv.x == NULL) {
			st->space.nb = st->ti.items;
			if (!j->quiet)
				fprintf(stderr,
				    "candex recall: no --base: hits are matched to the ground truth by "
				    "row; "
				    "ties are not credited\n");
		}
		uint32_t tk = gk < want_k ? gk : want_k;
		if ((rc = cdx_truth_from_rows(&st->truth, &st->space, st->qnorm, st->qv.n, st->gt, gk, tk))
		    != CDX_OK) {
			rc = cdx_error(rc, "%s: %s", j->gt, cdx_last_error());
			return rc;
		}
		st->truth_source = "ivecs";
	} else {
		uint32_t tk = st->bv.n < want_k ? (uint32_t) st->bv.n : want_k;
		if (tk < j->k) {
			rc = cdx_error(
			    CDX_EINVAL, "k = %u but the base has only %zu vectors", j->k, st->bv.n);
			return rc;
		}
		char cdir[PATH_MAX], cpath[PATH_MAX + 64];
		uint64_t key = 0;
		cpath[0] = '\0';
		if (!j->no_cache) {
			const char *dir = j->cache_dir ? j->cache_dir : default_cache_dir(cdir, sizeof(cdir));
			key = cdx_truth_key(&st->space, st->qnorm, st->qv.n, tk, NULL, 0);
			cdx_truth_cache_path(cpath, sizeof(cpath), dir, key);
			int lrc = cdx_truth_load(&st->truth, cpath);
			if (lrc == CDX_OK && st->truth.nq == st->qv.n && st->truth.k == tk
			    && st->truth.metric == st->ti.metric && st->truth.dist != NULL) {
				st->truth_source = "cache";
			} else {
				if (lrc == CDX_OK || lrc != CDX_ENOTFOUND)
					fprintf(stderr, "candex recall: ignoring truth cache %s: %s\n", cpath,
					    lrc ? cdx_last_error() : "does not match");
				cdx_truth_fini(&st->truth);
				if ((rc = cdx_mkdir_p(dir, 0755)) != CDX_OK)
					return rc;
			}
		}
		if (st->truth.rows == NULL) {
			uint64_t t0 = cdx_now_us();
			rc = cdx_truth_compute(
			    &st->truth, &st->space, st->qnorm, st->qv.n, tk, truth_progress, &st->ps);
			if (rc != CDX_OK)
				return rc;
			if (!j->quiet)
				fprintf(stderr,
				    "ground truth: %zu queries x top-%u over %zu vectors in %.1f s\n",
				    st->qv.n, tk, st->bv.n, (double) (cdx_now_us() - t0) / 1e6);
			if (cpath[0] && (rc = cdx_truth_save(&st->truth, cpath)) != CDX_OK)
				return rc;
		}
	}

	return rc;
}

/* sweep measures every nprobe x refine setting (and exact search, with --baseline), printing the table. */
static int
sweep(struct run *st)
{
	const struct cdx_recall_job *j = st->j;
	FILE *out = st->out;
	int rc = CDX_OK;
	uint32_t nprobes[CDX_RECALL_MAX_LIST];
	size_t n_nprobes = j->n_nprobes;
	if (n_nprobes > 0)
		memcpy(nprobes, j->nprobes, n_nprobes * sizeof(uint32_t));
	else
		n_nprobes = cdx_recall_default_nprobes(st->ti.nlist, nprobes, CDX_RECALL_MAX_LIST);
	float refines[CDX_RECALL_MAX_LIST];
	size_t n_refines = j->n_refines;
	if (j->defaults) { /* 0 and 0: the server's (or collection's) own choice */
		nprobes[0] = 0;
		n_nprobes = 1;
		refines[0] = 0;
		n_refines = 1;
	} else if (n_refines > 0) {
		memcpy(refines, j->refines, n_refines * sizeof(float));
		for (size_t i = 0; i < n_refines; i++)
			if (refines[i] >= 1 && !st->ti.has_refine) {
				rc = cdx_error(CDX_EINVAL,
				    "--refine %g: collection %s has no refine store "
				    "(build it with candex build --refine sq8|fp16|fp32)",
				    (double) refines[i], st->ti.collection);
				return rc;
			}
	} else {
		refines[n_refines++] = CDX_RECALL_REFINE_NONE;
		if (st->ti.has_refine) {
			refines[n_refines++] = 2;
			refines[n_refines++] = 4;
			refines[n_refines++] = 8;
		}
	}
	struct cdx_recall_set set = { .space = st->space,
		.queries = st->qv.x,
		.queries_norm = st->qnorm,
		.nq = st->qv.n,
		.truth = &st->truth,
		.idmap = &st->idmap,
		.eps = j->eps };
	struct cdx_sweep_config cfg = { .k = j->k,
		.nprobes = nprobes,
		.n_nprobes = n_nprobes,
		.refines = refines,
		.n_refines = n_refines,
		.threads = j->threads,
		.min_seconds = j->min_time,
		.latency_queries = j->latency_queries,
		.bytes_per_vector = st->ti.bytes_per_vector,
		.progress = sweep_progress,
		.progress_arg = &st->ps };

	if (j->baseline) {
		if ((rc = cdx_recall_exact_qps(&st->space, st->qnorm, st->qv.n, j->k,
		         j->min_time > 0 ? j->min_time : 0.3, &st->exact_qps))
		    != CDX_OK)
			return rc;
	}

	fprintf(out, "# candex recall: %s (version %s, %s, dim %u, %llu items, nlist %u) via %s\n",
	    st->ti.collection, st->ti.version, cdx_metric_name(st->ti.metric), st->ti.dim,
	    (unsigned long long) st->ti.items, st->ti.nlist, j->url ? j->url : st->version_dir);
	fprintf(out, "# %zu queries, truth %s (top %u), k %u, epsilon %g%s\n", st->qv.n, st->truth_source,
	    st->truth.k, j->k, j->eps, st->space.base ? "" : ", ids only (no tie rule)");
	if (st->exact_qps > 0)
		fprintf(out, "# exact search (Faiss flat, all cores, batches of 1024): %.0f QPS\n",
		    st->exact_qps);
	cdx_recall_table_header(out, j->k);
	fflush(out);
	if ((rc = cdx_recall_sweep(&st->be, &set, &cfg, &st->rows, &st->nrows)) != CDX_OK)
		return rc;
	if (j->baseline) {
		/* timed again after the sweep, the faster counts: one timing on a
		 * shared machine can land on someone else's busy moment */
		double again = 0;
		if ((rc = cdx_recall_exact_qps(
		         &st->space, st->qnorm, st->qv.n, j->k, j->min_time > 0 ? j->min_time : 0.3, &again))
		    != CDX_OK)
			return rc;
		if (again > st->exact_qps)
			st->exact_qps = again;
		fprintf(out, "# exact search, best of before and after the sweep: %.0f QPS\n", st->exact_qps);
	}

	size_t at;
	double drop = cdx_recall_worst_drop(st->rows, st->nrows, &at);
	if (drop > 0.01)
		fprintf(stderr,
		    "candex recall: WARNING: recall falls by %.4f as nprobe rises (to nprobe %u, refine %g): "
		    "more probes only add candidates, so this points at a bug in the metric path\n",
		    drop, st->rows[at].nprobe,
		    st->rows[at].refine_factor < 1 ? 0.0 : (double) st->rows[at].refine_factor);
	size_t mism = 0;
	for (size_t i = 0; i < st->nrows; i++)
		mism += st->rows[i].mismatched;
	if (mism > 0 && !j->quiet)
		fprintf(stderr,
		    "candex recall: note: %zu single-query results differed from the batched ones "
		    "(float rounding in batched distance code can reorder near-ties)\n",
		    mism);

	return rc;
}

/* pick_points picks the cheapest setting reaching each target and prints them. */
static int
pick_points(struct run *st)
{
	const struct cdx_recall_job *j = st->j;
	FILE *out = st->out;
	if (j->n_targets > 0) {
		fprintf(out,
		    "\n# operating points (cheapest setting whose %u-recall@%u reaches the target with 95%% "
		    "confidence: recall - 1.645 x standard error)\n",
		    j->k, j->k);
		fprintf(out, "%8s %7s %6s %9s %8s %8s %10s\n", "target", "nprobe", "refine", "recall",
		    "std err", "p99 ms", "QPS");
	}
	for (size_t i = 0; i < j->n_targets; i++) {
		st->pts[i].target = j->targets[i];
		st->pts[i].row = cdx_recall_pick(st->rows, st->nrows, j->targets[i]);
		if (st->pts[i].row < 0) {
			fprintf(out, "%8.4f %7s %6s %9s %8s %8s %10s\n", j->targets[i], "-", "-", "-", "-",
			    "-", "-");
			fprintf(stderr,
			    "candex recall: target %g not reached by any setting swept (best %u-recall@%u: "
			    "%.4f)\n",
			    j->targets[i], j->k, j->k, best_recall(st->rows, st->nrows));
			st->unreached = 1;
			continue;
		}
		const struct cdx_recall_row *r = &st->rows[st->pts[i].row];
		char rf[16];
		if (r->refine_factor < 1)
			snprintf(rf, sizeof(rf), "none");
		else
			snprintf(rf, sizeof(rf), "x%g", (double) r->refine_factor);
		fprintf(out, "%8.4f %7u %6s %9.4f %8.4f %8.3f %10.0f\n", j->targets[i], r->nprobe, rf,
		    r->recall, r->recall_se, r->p99_ms, r->qps);
	}
	return CDX_OK;
}

/* write_outputs writes the CSV, JSON and plot asked for, and saves the points into the manifest. */
static int
write_outputs(struct run *st)
{
	const struct cdx_recall_job *j = st->j;
	int rc = CDX_OK;
	if (j->csv != NULL && (rc = cdx_recall_write_csv(j->csv, st->rows, st->nrows)) != CDX_OK)
		return rc;
	if (j->json != NULL) {
		struct cdx_recall_meta meta = { .collection = st->ti.collection,
			.version = st->ti.version,
			.source = j->url ? j->url : st->version_dir,
			.metric = st->ti.metric,
			.dim = st->ti.dim,
			.nb = st->bv.n,
			.items = st->ti.items,
			.nlist = st->ti.nlist,
			.nq = st->qv.n,
			.k = j->k,
			.eps = j->eps,
			.truth_source = st->truth_source,
			.ids_only = st->space.base == NULL,
			.exact_qps = st->exact_qps };
		if ((rc = cdx_recall_write_json(j->json, &meta, st->rows, st->nrows, st->pts, j->n_targets))
		    != CDX_OK)
			return rc;
	}
	if (j->plot != NULL) {
		char title[256];
		if (j->title == NULL)
			snprintf(title, sizeof(title), "%s (%s, %llu items, nlist %u): %u-recall@%u vs QPS",
			    st->ti.collection, cdx_metric_name(st->ti.metric),
			    (unsigned long long) st->ti.items, st->ti.nlist, j->k, j->k);
		if ((rc = cdx_recall_plot(
		         j->plot, j->title ? j->title : title, st->rows, st->nrows, st->exact_qps))
		    != CDX_OK)
			return rc;
	}
	if (j->save) {
		if ((rc = save_points(
		         st->version_dir, j->url ? st->ti.version : NULL, st->rows, st->pts, j->n_targets))
		    != CDX_OK)
			return rc;
		if (!j->quiet)
			fprintf(
			    stderr, "operating points saved to %s/%s\n", st->version_dir, CDX_MANIFEST_FILE);
	}
	return rc;
}

int
cdx_recall_run(const struct cdx_recall_job *j, FILE *out, int *unreached)
{
	struct run st = { .j = j, .out = out, .truth_source = "computed" };
	st.ps = (struct progress_state) { .out = out, .quiet = j->quiet, .tty = isatty(2), .k = j->k };
	int rc = open_target(&st);
	if (rc == CDX_OK)
		rc = read_inputs(&st);
	if (rc == CDX_OK)
		rc = make_truth(&st);
	if (rc == CDX_OK)
		rc = sweep(&st);
	if (rc == CDX_OK)
		rc = pick_points(&st);
	if (rc == CDX_OK)
		rc = write_outputs(&st);
	if (rc != CDX_OK && st.ps.tty && !j->quiet)
		fprintf(stderr, "\r\033[K"); /* the progress line */
	*unreached = rc == CDX_OK && st.unreached;
	free(st.rows);
	cdx_recall_backend_fini(&st.be);
	cdx_truth_fini(&st.truth);
	cdx_idmap_fini(&st.idmap);
	free(st.gt);
	free(st.qnorm);
	cdx_vecs_fini(&st.qv);
	cdx_vecs_fini(&st.bv);
	cdx_manifest_free(st.man);
	cdx_collection_unref(st.coll);
	cdx_client_close(st.cl);
	return rc;
}
