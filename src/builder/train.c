/*
 * train.c — the train step: validate the inputs, choose the parameters,
 * train the Faiss index once on a seeded sample, and save/load the plan
 * that the encode and publish steps work from.
 *
 * The work directory of a distributed build holds:
 *   plan.json            every parameter of the build (human-readable)
 *   trained.faissindex   the trained, empty index (faiss_write_index)
 *   shard-I-of-N.cdx     encode outputs, each with
 *   shard-I-of-N.json    rows, input fingerprint and the plan_id it was made for
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <faiss/c_api/IndexIVF_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/index_factory_c.h>
#include <faiss/c_api/index_io_c.h>
#include <jansson.h>

#include "builder/build.h"
#include "builder/tune.h"
#include "shard/refine.h"
#include "faissx/error.h"

#define PLAN_FILE    "plan.json"
#define TRAINED_FILE "trained.faissindex"
#define PLAN_FORMAT  1
/* faiss/index_io.h IO_FLAG_SKIP_PRECOMPUTE_TABLE (not in the C API header) */
#define CDX_FAISS_IO_SKIP_PRECOMPUTE_TABLE 16

static FaissMetricType
faiss_metric(int metric)
{
	/* Cosine is L2 over vectors the builder normalised: for unit vectors
	 * |q - x|^2 = 2 - 2 cos, the same order as exact cosine, and unlike inner
	 * product it does not favour PQ reconstructions with a larger norm
	 * (with IP, recall fell as nprobe rose: docs/recall.md). Search turns
	 * the distance back into a cosine. */
	return metric == CDX_METRIC_IP ? METRIC_INNER_PRODUCT : METRIC_L2;
}

void
cdx_build_plan_free(struct cdx_build_plan *p)
{
	if (p == NULL)
		return;
	if (p->index != NULL)
		faiss_Index_free(p->index);
	free(p->sq8_vmin);
	free(p->sq8_vdiff);
	free(p->points);
	if (p->tuning != NULL)
		json_decref((json_t *) p->tuning);
	cdx_tune_check_free(p->check);
	cdx_attr_schema_free(p->attrs_schema);
	free(p);
}

static int
copy_path(char *dst, const char *src, const char *what)
{
	if (src == NULL) {
		dst[0] = 0;
		return CDX_OK;
	}
	/* absolute, so that the plan works from any working directory */
	char *rp = realpath(src, NULL);
	const char *use = rp ? rp : src;
	int rc = CDX_OK;
	if (snprintf(dst, PATH_MAX, "%s", use) >= PATH_MAX)
		rc = cdx_error(CDX_EINVAL, "%s path too long: %s", what, src);
	free(rp);
	return rc;
}

/* check_structure refuses indexes the server cannot search with a
 * per-request nprobe: an IVF must be the top-level index. */
static int
check_structure(struct cdx_build_plan *p)
{
	FaissIndexIVF *ivf = faiss_IndexIVF_cast(p->index);
	if (ivf != NULL) {
		p->params.nlist = (uint32_t) faiss_IndexIVF_nlist(ivf);
		return CDX_OK;
	}
	if (strstr(p->params.factory, "IVF") != NULL)
		return cdx_error(CDX_EINVAL,
		    "--factory '%s': the IVF index is wrapped (a transform prefix such as OPQ/PCA, or a "
		    "refine "
		    "suffix); the server needs the IVF at the top level for per-request nprobe. Use --refine "
		    "for "
		    "exact re-ranking",
		    p->params.factory);
	p->params.nlist = 0;
	return CDX_OK;
}

/* drop_tables replaces the trained index by a copy read back with
 * IO_FLAG_SKIP_PRECOMPUTE_TABLE. An L2 IVF-PQ precomputes a search table of
 * nlist x M x 2^nbits floats at train time (512 MiB for IVF16384,PQ32):
 * adding vectors never uses it, and every per-shard clone would copy it. */
static int
drop_tables(struct cdx_build_plan *p)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	if (f == NULL)
		return cdx_error_errno(CDX_ENOMEM, "serialising the trained index");
	int rc = CDX_OK;
	if (faiss_write_index(p->index, f) != 0)
		rc = cdx_error_faiss("serialising the trained index");
	if (fclose(f) != 0 && rc == CDX_OK)
		rc = cdx_error_errno(CDX_ENOMEM, "serialising the trained index");
	FaissIndex *copy = NULL;
	if (rc == CDX_OK) {
		FILE *r = fmemopen(buf, len, "rb");
		if (r == NULL)
			rc = cdx_error_errno(CDX_ENOMEM, "re-reading the trained index");
		else if (faiss_read_index(r, CDX_FAISS_IO_SKIP_PRECOMPUTE_TABLE, &copy) != 0)
			rc = cdx_error_faiss("re-reading the trained index");
		if (r != NULL)
			fclose(r);
	}
	free(buf);
	if (rc == CDX_OK) {
		faiss_Index_free(p->index);
		p->index = copy;
	}
	return rc;
}

/* read_sample reads the seeded sample (normalised for cos) into *xs. */
static int
read_sample(struct cdx_build_plan *p, cdx_input *in, const struct cdx_build_opts *o, float **xsp)
{
	uint64_t k = p->params.train_sample;
	uint64_t *rows = malloc(k * sizeof(uint64_t));
	float *xs = malloc(k * (size_t) p->dim * sizeof(float));
	if (rows == NULL || xs == NULL) {
		free(rows);
		free(xs);
		return cdx_error(CDX_ENOMEM, "training sample of %llu x %u", (unsigned long long) k, p->dim);
	}
	cdx_build_sample(p->rows, k, p->seed, rows);
	struct cdx_progress pr;
	cdx_progress_begin(&pr, "sample", k, o->quiet);
	/* Each sampled row may sit on a page of its own, and the mapping keeps
	 * every page touched until released: read at most a chunk's worth of
	 * pages between releases (16384 rows with the default 64 MiB chunks),
	 * so that the input's pages in our RSS stay within the chunk budget. */
	size_t page = (size_t) sysconf(_SC_PAGESIZE);
	size_t row_bytes = (size_t) p->dim * sizeof(float);
	const size_t step = CDX_MAX((size_t) 1, cdx_build_chunk_bytes() / CDX_MAX(page, row_bytes));
	int rc = CDX_OK;
	for (uint64_t i = 0; i < k && rc == CDX_OK; i += step) {
		size_t n = (size_t) CDX_MIN((uint64_t) step, k - i);
		rc = cdx_input_read_rows(in, rows + i, n, xs + i * p->dim);
		cdx_input_release(in, rows[i + n - 1]);
		cdx_progress_update(&pr, i + n);
	}
	cdx_progress_end(&pr);
	cdx_input_release(in, p->rows);
	free(rows);
	if (rc != CDX_OK) {
		free(xs);
		return rc;
	}
	if (p->metric == CDX_METRIC_COS)
		cdx_normalize_rows(xs, k, p->dim);
	*xsp = xs;
	return CDX_OK;
}

/* tune runs the self-tuning build and takes what it chose into the plan.
 * ids: the input rows' external ids (a held-out query's own item is
 * excluded by id), or NULL for row numbers. */
static int
tune(struct cdx_build_plan *p, const struct cdx_build_opts *o, cdx_input *in, const int64_t *ids)
{
	struct cdx_tune_opts to;
	cdx_tune_opts_init(&to);
	to.target = o->recall_target;
	to.nks = o->ntune_k;
	memcpy(to.ks, o->tune_k, sizeof(to.ks));
	to.queries = o->tune_queries;
	to.queries_format = o->input_format;
	to.budget_s = o->tune_budget_s;
	to.max_queries = o->tune_queries_max;
	to.refine = o->refine_set ? o->refine : -1;
	to.seed = o->seed;
	to.quiet = o->quiet;
	struct cdx_tune_result r;
	int rc = cdx_tune_run(&to, in, p->metric, ids, &r);
	if (rc != CDX_OK)
		return rc;
	p->params = r.params;
	if (p->params.note[0])
		cdx_warn("BLD-PARAMS", "%s: %s", p->collection, p->params.note);
	uint32_t np = p->params.nlist / 32;
	if (p->params.default_nprobe == 0)
		p->params.default_nprobe = np < 1 ? 1 : np > 256 ? 256 : np;
	p->refine
	    = o->refine_set ? o->refine : r.refine; /* a flat index may still carry the store asked for */
	p->transform = r.transform;
	p->index_dim = r.index_dim;
	p->max_norm2 = r.max_norm2;
	p->index = r.index;
	p->sq8_vmin = r.sq8_vmin;
	p->sq8_vdiff = r.sq8_vdiff;
	p->points = r.points;
	p->npoints = r.npoints;
	p->ntuned_k = r.nks;
	memcpy(p->tuned_k, r.ks, sizeof(p->tuned_k));
	p->default_recall_target = r.target;
	p->tuning = r.report;
	p->check = r.check;
	memset(&r, 0, sizeof(r)); /* all taken */
	if (!p->params.flat && (rc = drop_tables(p)) != CDX_OK)
		return rc;
	cdx_info("BLD-PARAMS",
	    "%s: factory %s%s (nlist %u, PQ M %u x %u bits), metric %s, %u shard(s), refine %s",
	    p->collection, p->params.factory, p->transform ? " over inner product reduced to L2" : "",
	    p->params.nlist, p->params.pq_m, p->params.pq_nbits, cdx_metric_name(p->metric), p->nshards,
	    cdx_refine_name(p->refine));
	return CDX_OK;
}

static void
make_plan_id(char *out, size_t cap)
{
	uint64_t seed[3] = { cdx_wall_ms(), cdx_now_us(), (uint64_t) getpid() };
	snprintf(out, cap, "%016llx", (unsigned long long) cdx_xxh64(seed, sizeof(seed), 0x636478));
}

int
cdx_build_train(const struct cdx_build_opts *o, struct cdx_build_plan **pp)
{
	*pp = NULL;
	if (o->input == NULL || o->collection == NULL || o->out == NULL)
		return cdx_error(CDX_EINVAL, "--input, --collection and --out are required");
	if (!cdx_name_valid(o->collection))
		return cdx_error(CDX_EINVAL,
		    "--collection '%s': names are [A-Za-z0-9_.-]{1,63}, not starting with '.'",
		    o->collection);
	if (o->nshards < 1 || o->nshards > 9999)
		return cdx_error(CDX_EINVAL, "--shards %u: must be 1..9999", o->nshards);
	struct cdx_build_plan *p = calloc(1, sizeof(*p));
	if (p == NULL)
		return cdx_error(CDX_ENOMEM, "build plan");
	cdx_input *in = NULL;
	float *xs = NULL;
	int64_t *ids = NULL;
	int rc;
	uint64_t t0 = cdx_now_us();

	make_plan_id(p->plan_id, sizeof(p->plan_id));
	snprintf(p->collection, sizeof(p->collection), "%s", o->collection);
	snprintf(p->model_version, sizeof(p->model_version), "%s", o->model_version ? o->model_version : "");
	p->metric = o->metric;
	p->nshards = o->nshards;
	p->refine = o->refine;
	p->seed = o->seed;
	p->keep = o->keep ? o->keep : CDX_BUILD_DEFAULT_KEEP;
	if ((rc = cdx_mkdir_p(o->out, 0755)) != CDX_OK)
		goto fail;
	if ((rc = copy_path(p->out, o->out, "--out")) != CDX_OK
	    || (rc = copy_path(p->input, o->input, "--input")) != CDX_OK
	    || (rc = copy_path(p->keys, o->keys, "--keys")) != CDX_OK
	    || (rc = copy_path(p->ids, o->ids, "--ids")) != CDX_OK
	    || (rc = copy_path(p->attrs, o->attrs, "--attrs")) != CDX_OK)
		goto fail;

	if ((rc = cdx_input_open(&in, o->input, o->dim, o->input_format)) != CDX_OK)
		goto fail;
	p->dim = cdx_input_dim(in);
	p->rows = cdx_input_rows(in);
	p->input_format = cdx_input_format(in);
	p->input_bytes = cdx_input_file_bytes(in);
	cdx_info("BLD-INPUT", "%s: %llu rows x %u (%s, %llu bytes)", o->input, (unsigned long long) p->rows,
	    p->dim, cdx_input_format_name(p->input_format), (unsigned long long) p->input_bytes);

	/* keys, ids and attributes are read again by every encode step: no pipes */
	const char *side[3] = { o->keys, o->ids, o->attrs }, *side_name[3] = { "keys", "ids", "attributes" };
	for (int i = 0; i < 3; i++) {
		struct stat st;
		if (side[i] != NULL && stat(side[i], &st) == 0 && !S_ISREG(st.st_mode)) {
			rc = cdx_error(CDX_EINVAL, "%s: not a regular file (%s are read more than once)",
			    side[i], side_name[i]);
			goto fail;
		}
	}
	if (o->ids != NULL) {
		struct stat st;
		uint64_t nids;
		if ((rc = cdx_ids_load(o->ids, p->rows, &ids, &nids)) != CDX_OK)
			goto fail;
		if (stat(o->ids, &st) == 0)
			p->ids_bytes = (uint64_t) st.st_size;
	}
	if (o->keys != NULL && (rc = cdx_keys_check(o->keys, p->rows, &p->keys_bytes)) != CDX_OK)
		goto fail;
	if (o->attrs != NULL
	    && (rc = cdx_attrs_scan(o->attrs, p->rows, &p->attrs_schema, &p->attrs_bytes)) != CDX_OK)
		goto fail;

	p->index_dim = p->dim;
	if (o->factory == NULL && !o->no_tune) {
		if ((rc = tune(p, o, in, ids)) != CDX_OK)
			goto fail;
	} else {
		if ((rc = cdx_build_params_choose(
		         &p->params, p->rows, p->dim, o->factory, o->polysemous, o->train_sample))
		    != CDX_OK)
			goto fail;
		if (p->params.note[0])
			cdx_warn("BLD-PARAMS", "%s: %s", p->collection, p->params.note);
		if (faiss_index_factory(&p->index, (int) p->dim, p->params.factory, faiss_metric(p->metric))
		    != 0) {
			rc = cdx_error_faiss(p->params.factory);
			goto fail;
		}
		if ((rc = check_structure(p)) != CDX_OK)
			goto fail;
		if (o->factory != NULL && o->train_sample == 0) /* nlist now known for sure */
			p->params.train_sample
			    = CDX_MIN(p->rows, CDX_MAX((uint64_t) 100000, (uint64_t) p->params.nlist * 64));
		uint32_t nprobe = p->params.nlist / 32;
		p->params.default_nprobe = nprobe < 1 ? 1 : nprobe > 256 ? 256 : nprobe;
		cdx_info("BLD-PARAMS",
		    "%s: factory %s (nlist %u, PQ M %u x %u bits), metric %s, %u shard(s), refine %s",
		    p->collection, p->params.factory, p->params.nlist, p->params.pq_m, p->params.pq_nbits,
		    cdx_metric_name(p->metric), p->nshards, cdx_refine_name(p->refine));

		int need_sample = !faiss_Index_is_trained(p->index) || p->refine == CDX_REFINE_SQ8;
		if (need_sample) {
			if ((rc = read_sample(p, in, o, &xs)) != CDX_OK)
				goto fail;
		}
		if (!faiss_Index_is_trained(p->index)) {
			uint64_t t1 = cdx_now_us();
			/* k-means runs its sgemm calls between OpenMP regions that already
			 * use every core; a BLAS thread pool on top only competes (sift
			 * 140k, IVF1024: 24.6 s with 2 BLAS threads, 10.4 s with 1; on
			 * 2026-11-28, 52-56 s with 2, 37-40 s with 2 and
			 * OPENBLAS_THREAD_TIMEOUT=4, 21-23 s with 1, loaded machine). */
			cdx_blas_set_threads(1);
			cdx_info("BLD-TRAIN", "training %s on %llu of %llu rows (seed %llu)",
			    p->params.factory, (unsigned long long) p->params.train_sample,
			    (unsigned long long) p->rows, (unsigned long long) p->seed);
			if (p->metric == CDX_METRIC_COS
			    && (rc = cdx_build_train_spherical(p->index, p->params.train_sample, xs, 0, 0))
			        != CDX_OK)
				goto fail;
			if (faiss_Index_train(p->index, (idx_t) p->params.train_sample, xs) != 0) {
				rc = cdx_error_faiss("training");
				goto fail;
			}
			cdx_info("BLD-TRAIN", "trained in %.1f s", (double) (cdx_now_us() - t1) / 1e6);
			if ((rc = drop_tables(p)) != CDX_OK)
				goto fail;
		}
		if (p->refine == CDX_REFINE_SQ8) {
			p->sq8_vmin = malloc(p->dim * sizeof(float));
			p->sq8_vdiff = malloc(p->dim * sizeof(float));
			if (p->sq8_vmin == NULL || p->sq8_vdiff == NULL) {
				rc = cdx_error(CDX_ENOMEM, "sq8 tables");
				goto fail;
			}
			cdx_sq8_train(xs, p->params.train_sample, p->dim, p->sq8_vmin, p->sq8_vdiff);
		}
	}
	free(xs);
	free(ids);
	cdx_input_close(in);
	p->train_seconds = (double) (cdx_now_us() - t0) / 1e6;
	*pp = p;
	return CDX_OK;
fail:
	free(xs);
	free(ids);
	cdx_input_close(in);
	cdx_build_plan_free(p);
	return rc;
}

/* --- plan.json ------------------------------------------------------------ */

static json_t *
u64_json(uint64_t v)
{
	char s[24];
	snprintf(s, sizeof(s), "%llu", (unsigned long long) v);
	return json_string(s); /* exact for any u64 */
}

static json_t *
floats_json(const float *v, uint32_t n)
{
	json_t *a = json_array();
	for (uint32_t i = 0; v != NULL && i < n; i++)
		json_array_append_new(a, json_real((double) v[i])); /* 17 digits: exact */
	return a;
}

/* remove_stale_outputs deletes shard outputs of an earlier plan. */
static void
remove_stale_outputs(const char *workdir)
{
	DIR *d = opendir(workdir);
	if (d == NULL)
		return;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (strncmp(e->d_name, "shard-", 6) == 0 || strncmp(e->d_name, ".encode-", 8) == 0
		    || strncmp(e->d_name, "tune-check-", 11) == 0) {
			char path[PATH_MAX];
			if (snprintf(path, sizeof(path), "%s/%s", workdir, e->d_name) < (int) sizeof(path))
				cdx_rm_rf(path);
		}
	}
	closedir(d);
}

int
cdx_build_plan_save(const struct cdx_build_plan *p, const char *workdir)
{
	char path[PATH_MAX], tmp[PATH_MAX];
	int rc = cdx_mkdir_p(workdir, 0755);
	if (rc != CDX_OK)
		return rc;
	remove_stale_outputs(workdir);
	snprintf(path, sizeof(path), "%s/%s", workdir, TRAINED_FILE);
	snprintf(tmp, sizeof(tmp), "%s/%s.tmp.%d", workdir, TRAINED_FILE, (int) getpid());
	FILE *f = fopen(tmp, "wb");
	if (f == NULL)
		return cdx_error_errno(CDX_EIO, "create %s", tmp);
	if (faiss_write_index(p->index, f) != 0) {
		int e = errno;
		if (ferror(f) && (e == ENOSPC || e == EFBIG || e == EDQUOT)) {
			/* a full disk: say so (CDX_ENOSPC), not "faiss error" */
			errno = e;
			rc = cdx_error_errno(CDX_EIO, "write %s", tmp);
		} else {
			rc = cdx_error_faiss(tmp);
		}
		fclose(f);
		unlink(tmp);
		return rc;
	}
	if (fflush(f) != 0 || fsync(fileno(f)) != 0) {
		rc = cdx_error_errno(CDX_EIO, "write %s", tmp);
		fclose(f);
		unlink(tmp);
		return rc;
	}
	if (fclose(f) != 0) {
		unlink(tmp);
		return cdx_error_errno(CDX_EIO, "close %s", tmp);
	}
	if (rename(tmp, path) != 0) {
		rc = cdx_error_errno(CDX_EIO, "rename %s", tmp);
		unlink(tmp);
		return rc;
	}

	json_t *o = json_object();
	json_object_set_new(o, "plan_format", json_integer(PLAN_FORMAT));
	json_object_set_new(o, "plan_id", json_string(p->plan_id));
	json_object_set_new(o, "collection", json_string(p->collection));
	json_object_set_new(o, "model_version", json_string(p->model_version));
	json_object_set_new(o, "out", json_string(p->out));
	json_object_set_new(o, "metric", json_string(cdx_metric_name(p->metric)));
	json_object_set_new(o, "dim", json_integer(p->dim));
	json_object_set_new(o, "rows", u64_json(p->rows));
	json_object_set_new(o, "input", json_string(p->input));
	json_object_set_new(o, "input_format", json_string(cdx_input_format_name(p->input_format)));
	json_object_set_new(o, "input_bytes", u64_json(p->input_bytes));
	json_object_set_new(o, "keys", json_string(p->keys));
	json_object_set_new(o, "keys_bytes", u64_json(p->keys_bytes));
	json_object_set_new(o, "ids", json_string(p->ids));
	json_object_set_new(o, "ids_bytes", u64_json(p->ids_bytes));
	if (p->attrs_schema != NULL) {
		json_object_set_new(o, "attrs", json_string(p->attrs));
		json_object_set_new(o, "attrs_bytes", u64_json(p->attrs_bytes));
		json_object_set_new(o, "attributes", cdx_attr_schema_to_json(p->attrs_schema));
	}
	json_object_set_new(o, "factory", json_string(p->params.factory));
	json_object_set_new(o, "nlist", json_integer(p->params.nlist));
	json_object_set_new(o, "pq_m", json_integer(p->params.pq_m));
	json_object_set_new(o, "pq_nbits", json_integer(p->params.pq_nbits));
	json_object_set_new(o, "flat", json_boolean(p->params.flat));
	json_object_set_new(o, "train_sample", u64_json(p->params.train_sample));
	json_object_set_new(o, "default_nprobe", json_integer(p->params.default_nprobe));
	json_object_set_new(o, "note", json_string(p->params.note));
	json_object_set_new(o, "shards", json_integer(p->nshards));
	json_object_set_new(o, "refine", json_string(cdx_refine_name(p->refine)));
	json_object_set_new(o, "sq8_vmin", floats_json(p->sq8_vmin, p->dim));
	json_object_set_new(o, "sq8_vdiff", floats_json(p->sq8_vdiff, p->dim));
	json_object_set_new(o, "seed", u64_json(p->seed));
	json_object_set_new(o, "keep", json_integer(p->keep));
	json_object_set_new(o, "train_seconds", json_real(p->train_seconds));
	json_object_set_new(o, "candex_version", json_string(CANDEX_VERSION));
	json_object_set_new(o, "transform", json_string(cdx_transform_name(p->transform)));
	json_object_set_new(o, "index_dim", json_integer(p->index_dim ? p->index_dim : p->dim));
	json_object_set_new(o, "max_norm2", json_real(p->max_norm2));
	json_object_set_new(o, "operating_points", cdx_points_to_json(p->points, p->npoints));
	json_t *tk = json_array();
	for (uint32_t i = 0; i < p->ntuned_k; i++)
		json_array_append_new(tk, json_integer(p->tuned_k[i]));
	json_object_set_new(o, "tuned_k", tk);
	json_object_set_new(o, "default_recall_target", json_real(p->default_recall_target));
	if (p->tuning != NULL)
		json_object_set(o, "tuning", (json_t *) p->tuning);
	char *s = json_dumps(o, JSON_INDENT(2) | JSON_SORT_KEYS);
	json_decref(o);
	if (s == NULL)
		return cdx_error(CDX_ENOMEM, "plan.json");
	snprintf(path, sizeof(path), "%s/%s", workdir, PLAN_FILE);
	rc = cdx_write_file_atomic(path, s, strlen(s));
	free(s);
	if (rc == CDX_OK && p->check != NULL)
		rc = cdx_tune_check_save(p->check, workdir);
	return rc;
}

struct pl {
	const char *path;
	int rc;
};

static json_t *
pl_get(struct pl *l, json_t *o, const char *key, json_type type)
{
	if (l->rc != CDX_OK)
		return NULL;
	json_t *v = json_object_get(o, key);
	if (v == NULL || json_typeof(v) != type) {
		l->rc = cdx_error(CDX_ECORRUPT, "%s: field '%s' missing or of the wrong type", l->path, key);
		return NULL;
	}
	return v;
}

static void
pl_str(struct pl *l, json_t *o, const char *key, char *out, size_t cap)
{
	json_t *v = pl_get(l, o, key, JSON_STRING);
	if (v == NULL)
		return;
	if (snprintf(out, cap, "%s", json_string_value(v)) >= (int) cap)
		l->rc = cdx_error(CDX_ECORRUPT, "%s: field '%s' too long", l->path, key);
}

static uint64_t
pl_u64(struct pl *l, json_t *o, const char *key)
{
	json_t *v = pl_get(l, o, key, JSON_STRING);
	if (v == NULL)
		return 0;
	char *end;
	errno = 0;
	unsigned long long x = strtoull(json_string_value(v), &end, 10);
	if (*end != 0 || errno != 0)
		l->rc = cdx_error(CDX_ECORRUPT, "%s: field '%s' is not an unsigned integer", l->path, key);
	return x;
}

static uint32_t
pl_int(struct pl *l, json_t *o, const char *key)
{
	json_t *v = pl_get(l, o, key, JSON_INTEGER);
	if (v == NULL)
		return 0;
	json_int_t x = json_integer_value(v);
	if (x < 0 || x > UINT32_MAX) {
		l->rc = cdx_error(CDX_ECORRUPT, "%s: field '%s' out of range", l->path, key);
		return 0;
	}
	return (uint32_t) x;
}

static float *
pl_floats(struct pl *l, json_t *o, const char *key, uint32_t n)
{
	json_t *a = pl_get(l, o, key, JSON_ARRAY);
	if (a == NULL || json_array_size(a) == 0)
		return NULL;
	if (json_array_size(a) != n) {
		l->rc = cdx_error(CDX_ECORRUPT, "%s: field '%s' has %zu values, expected %u", l->path, key,
		    json_array_size(a), n);
		return NULL;
	}
	float *v = malloc(n * sizeof(float));
	if (v == NULL) {
		l->rc = cdx_error(CDX_ENOMEM, "%s", l->path);
		return NULL;
	}
	for (uint32_t i = 0; i < n; i++)
		v[i] = (float) json_number_value(json_array_get(a, i));
	return v;
}

int
cdx_build_plan_load(struct cdx_build_plan **pp, const char *workdir, int with_index)
{
	*pp = NULL;
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/%s", workdir, PLAN_FILE);
	json_error_t jerr;
	json_t *o = json_load_file(path, 0, &jerr);
	if (o == NULL) {
		if (access(path, F_OK) != 0)
			return cdx_error(CDX_ENOTFOUND,
			    "%s: no plan (run `candex build train --work %s` first)", path, workdir);
		return cdx_error(CDX_ECORRUPT, "%s: line %d: %s", path, jerr.line, jerr.text);
	}
	struct cdx_build_plan *p = calloc(1, sizeof(*p));
	if (p == NULL) {
		json_decref(o);
		return cdx_error(CDX_ENOMEM, "plan");
	}
	struct pl l = { path, CDX_OK };
	char metric[16] = "", refine[16] = "", fmt[16] = "";
	if (pl_int(&l, o, "plan_format") != PLAN_FORMAT && l.rc == CDX_OK)
		l.rc = cdx_error(CDX_EVERSION, "%s: unknown plan_format", path);
	pl_str(&l, o, "plan_id", p->plan_id, sizeof(p->plan_id));
	pl_str(&l, o, "collection", p->collection, sizeof(p->collection));
	pl_str(&l, o, "model_version", p->model_version, sizeof(p->model_version));
	pl_str(&l, o, "out", p->out, sizeof(p->out));
	pl_str(&l, o, "metric", metric, sizeof(metric));
	p->dim = pl_int(&l, o, "dim");
	p->rows = pl_u64(&l, o, "rows");
	pl_str(&l, o, "input", p->input, sizeof(p->input));
	pl_str(&l, o, "input_format", fmt, sizeof(fmt));
	p->input_bytes = pl_u64(&l, o, "input_bytes");
	pl_str(&l, o, "keys", p->keys, sizeof(p->keys));
	p->keys_bytes = pl_u64(&l, o, "keys_bytes");
	pl_str(&l, o, "ids", p->ids, sizeof(p->ids));
	p->ids_bytes = pl_u64(&l, o, "ids_bytes");
	/* attributes: absent in plans of builds without them (and older ones) */
	if (json_object_get(o, "attrs") != NULL) {
		pl_str(&l, o, "attrs", p->attrs, sizeof(p->attrs));
		p->attrs_bytes = pl_u64(&l, o, "attrs_bytes");
		if (l.rc == CDX_OK)
			l.rc = cdx_attr_schema_from_json(
			    json_object_get(o, "attributes"), path, &p->attrs_schema);
	}
	pl_str(&l, o, "factory", p->params.factory, sizeof(p->params.factory));
	p->params.nlist = pl_int(&l, o, "nlist");
	p->params.pq_m = pl_int(&l, o, "pq_m");
	p->params.pq_nbits = pl_int(&l, o, "pq_nbits");
	json_t *flat = json_object_get(o, "flat");
	p->params.flat = flat != NULL && json_is_true(flat);
	p->params.train_sample = pl_u64(&l, o, "train_sample");
	p->params.default_nprobe = pl_int(&l, o, "default_nprobe");
	pl_str(&l, o, "note", p->params.note, sizeof(p->params.note));
	p->nshards = pl_int(&l, o, "shards");
	pl_str(&l, o, "refine", refine, sizeof(refine));
	p->seed = pl_u64(&l, o, "seed");
	p->keep = pl_int(&l, o, "keep");
	json_t *ts = json_object_get(o, "train_seconds");
	p->train_seconds = ts ? json_number_value(ts) : 0;
	/* the self-tuning build's choices: absent in plans of older builds */
	char transform[16] = "none";
	if (json_object_get(o, "transform") != NULL)
		pl_str(&l, o, "transform", transform, sizeof(transform));
	if (l.rc == CDX_OK && cdx_transform_parse(transform, &p->transform) != CDX_OK)
		l.rc = cdx_error(CDX_ECORRUPT, "%s: bad transform '%s'", path, transform);
	p->index_dim = json_object_get(o, "index_dim") ? pl_int(&l, o, "index_dim") : 0;
	json_t *mn = json_object_get(o, "max_norm2");
	p->max_norm2 = mn ? json_number_value(mn) : 0;
	json_t *pts = json_object_get(o, "operating_points");
	if (l.rc == CDX_OK && pts != NULL)
		l.rc = cdx_points_from_json(pts, path, &p->points, &p->npoints);
	json_t *tk = json_object_get(o, "tuned_k");
	for (size_t i = 0;
	     l.rc == CDX_OK && json_is_array(tk) && i < json_array_size(tk) && i < CDX_MANIFEST_MAX_TUNED_K;
	     i++)
		p->tuned_k[p->ntuned_k++] = (uint32_t) json_integer_value(json_array_get(tk, i));
	json_t *dt = json_object_get(o, "default_recall_target");
	p->default_recall_target = dt ? json_number_value(dt) : 0;
	json_t *tuning = json_object_get(o, "tuning");
	if (json_is_object(tuning))
		p->tuning = json_incref(tuning);
	if (l.rc == CDX_OK && cdx_metric_parse(metric, &p->metric) != CDX_OK)
		l.rc = cdx_error(CDX_ECORRUPT, "%s: bad metric '%s'", path, metric);
	if (l.rc == CDX_OK && cdx_refine_parse(refine, &p->refine) != CDX_OK)
		l.rc = cdx_error(CDX_ECORRUPT, "%s: bad refine '%s'", path, refine);
	if (l.rc == CDX_OK)
		p->input_format = cdx_input_format_from_name(fmt);
	if (l.rc == CDX_OK && (p->input_format == 0 || p->dim == 0 || p->nshards == 0 || p->rows == 0))
		l.rc = cdx_error(CDX_ECORRUPT, "%s: inconsistent plan", path);
	if (l.rc == CDX_OK && p->refine == CDX_REFINE_SQ8) {
		p->sq8_vmin = pl_floats(&l, o, "sq8_vmin", p->dim);
		p->sq8_vdiff = pl_floats(&l, o, "sq8_vdiff", p->dim);
		if (l.rc == CDX_OK && (p->sq8_vmin == NULL || p->sq8_vdiff == NULL))
			l.rc = cdx_error(CDX_ECORRUPT, "%s: refine sq8 without its tables", path);
	}
	json_decref(o);
	if (l.rc == CDX_OK && with_index) {
		snprintf(path, sizeof(path), "%s/%s", workdir, TRAINED_FILE);
		if (faiss_read_index_fname(path, CDX_FAISS_IO_SKIP_PRECOMPUTE_TABLE, &p->index) != 0)
			l.rc = cdx_error_faiss(path);
		else if ((uint32_t) faiss_Index_d(p->index) != p->dim)
			l.rc = cdx_error(CDX_EDIM, "%s: trained index has d=%d, the plan says %u", path,
			    faiss_Index_d(p->index), p->dim);
	}
	if (l.rc == CDX_OK && p->ntuned_k > 0)
		l.rc = cdx_tune_check_load(&p->check, workdir, p->metric, p->dim);
	if (l.rc != CDX_OK) {
		cdx_build_plan_free(p);
		return l.rc;
	}
	*pp = p;
	return CDX_OK;
}
