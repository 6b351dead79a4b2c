/*
 * tune.c — the self-tuning build (see tune.h DESIGN): read the input into
 * memory (the tuning base), pick the queries, compute their exact
 * neighbours, measure candidates in a fixed order (exact search by the cost
 * model alone; then IVF-PQ candidates: each coarse group — transform, PCA —
 * with 4-dimensional PQ sub-vectors, then, for the best group, 8-dimensional
 * sub-vectors and four times the lists), keep the cheapest that reaches the
 * target at every tuned k, derive its operating points and its report.
 * tune_measure.c measures one candidate; tune_check.c checks the choice.
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <faiss/c_api/index_factory_c.h>
#include <jansson.h>

#include "builder/tune_int.h"
#include "search/points.h"

/* --- reading -------------------------------------------------------------- */

static int
read_all(cdx_input *in, int metric, float **xp)
{
	uint64_t n = cdx_input_rows(in);
	uint32_t d = cdx_input_dim(in);
	float *x = malloc((size_t) n * d * sizeof(float));
	if (x == NULL)
		return cdx_error(CDX_ENOMEM, "tuning: %llu x %u floats", (unsigned long long) n, d);
	size_t step = CDX_MAX((size_t) 1, cdx_build_chunk_bytes() / ((size_t) d * sizeof(float)));
	int rc = CDX_OK;
	for (uint64_t r = 0; r < n && rc == CDX_OK; r += step) {
		size_t c = (size_t) CDX_MIN((uint64_t) step, n - r);
		rc = cdx_input_read(in, r, c, x + (size_t) r * d);
		cdx_input_release(in, r + c);
	}
	if (rc != CDX_OK) {
		free(x);
		return rc;
	}
	if (metric == CDX_METRIC_COS)
		cdx_normalize_rows(x, n, d);
	*xp = x;
	return CDX_OK;
}

/* read_queries reads --tune-queries: up to max rows (a seeded sample when
 * the file has more), in file order. */
static int
read_queries(const char *path, int format, uint32_t dim, uint32_t max, uint64_t seed, float **qp, size_t *np)
{
	cdx_input *qin = NULL;
	int rc = cdx_input_open(&qin, path, format == CDX_INPUT_RAW_F32 ? dim : 0, format);
	if (rc != CDX_OK)
		return rc;
	if (cdx_input_dim(qin) != dim) {
		rc = cdx_error(CDX_EDIM, "--tune-queries %s: dimension %u, the input has %u", path,
		    cdx_input_dim(qin), dim);
		cdx_input_close(qin);
		return rc;
	}
	uint64_t n = cdx_input_rows(qin), k = CDX_MIN(n, (uint64_t) max);
	uint64_t *rows = malloc(k * sizeof(uint64_t));
	float *q = malloc(k * dim * sizeof(float));
	if (rows == NULL || q == NULL) {
		free(rows);
		free(q);
		cdx_input_close(qin);
		return cdx_error(CDX_ENOMEM, "tuning queries");
	}
	cdx_build_sample(n, k, seed ^ 0x7175657279ull, rows);
	rc = cdx_input_read_rows(qin, rows, k, q);
	free(rows);
	cdx_input_close(qin);
	if (rc != CDX_OK) {
		free(q);
		return rc;
	}
	*qp = q;
	*np = k;
	return CDX_OK;
}

/* --- refine stores over the tuning base --------------------------------------- */

static int
make_stores(struct tdata *t)
{
	t->sq8_vmin = malloc(t->dim * sizeof(float));
	t->sq8_vdiff = malloc(t->dim * sizeof(float));
	if (t->sq8_vmin == NULL || t->sq8_vdiff == NULL)
		return cdx_error(CDX_ENOMEM, "tuning: sq8 tables");
	cdx_sq8_train(t->base, t->n, t->dim, t->sq8_vmin, t->sq8_vdiff);
	for (int kind = CDX_REFINE_FP32; kind <= CDX_REFINE_SQ8; kind++) {
		struct cdx_refine_store *st = &t->store[kind];
		st->kind = kind;
		st->dim = t->dim;
		st->rows = t->n;
		st->vmin = t->sq8_vmin;
		st->vdiff = t->sq8_vdiff;
		st->bytes_per_vector = cdx_refine_bytes_per_vector(kind, t->dim);
		if (kind == CDX_REFINE_FP32) {
			st->data = (const uint8_t *) t->base; /* the same bytes */
			continue;
		}
		uint8_t *data = malloc(t->n * st->bytes_per_vector);
		if (data == NULL)
			return cdx_error(CDX_ENOMEM, "tuning: %s copy of the base", cdx_refine_name(kind));
		cdx_refine_encode(st, t->base, t->n, data);
		st->data = data;
		t->store_data[kind] = data;
	}
	return CDX_OK;
}

/* --- the run ------------------------------------------------------------------ */

static void
cand_name(const struct cand *c, int kind, char *out, size_t cap)
{
	snprintf(out, cap, "%s%s%s%s", c->flat ? "Flat" : c->factory,
	    c->transform == CDX_TRANSFORM_MIPS_L2 ? " (ip as L2)" : "", kind > 0 ? " + refine " : "",
	    kind > 0 ? cdx_refine_name(kind) : "");
}

static void
log_cand(const struct tdata *t, const struct cand *c)
{
	char name[200];
	cand_name(c, c->kind, name, sizeof(name));
	if (c->ns == INFINITY) {
		cdx_info("BLD-TUNE",
		    "%s: does not reach %.3g at every k%s%s (trained %.1f s, searched %.1f s)", name,
		    t->target, c->note[0] ? ": " : "", c->note, c->train_s, c->eval_s);
		return;
	}
	char ks[256] = "";
	size_t used = 0;
	for (uint32_t ki = 0; ki < t->nks && used < sizeof(ks); ki++) {
		const struct setting *b = &c->best[ki][c->kind];
		int n = snprintf(ks + used, sizeof(ks) - used, "%sk %u: nprobe %u x%g %.3f", ki ? ", " : "",
		    t->ks[ki], b->nprobe, (double) b->factor, b->recall);
		if (n > 0)
			used += (size_t) n;
	}
	cdx_info("BLD-TUNE", "%s: %s; %.0f QPS modelled, %.0f B/item (trained %.1f s, searched %.1f s)", name,
	    ks, 1e9 / c->ns, c->bytes, c->train_s, c->eval_s);
}

/* A coarse group: candidates in one share their transform and PCA. */
struct group {
	int transform;
	uint32_t pca; /* 0: none */
};

/* flat_cand: exact search, by the cost model alone (its recall is 1). */
static void
flat_cand(const struct tdata *t, struct cand *c)
{
	memset(c, 0, sizeof(*c));
	c->flat = 1;
	c->evaluated = 1;
	c->index_dim = t->dim;
	c->kind = CDX_REFINE_NONE;
	snprintf(c->factory, sizeof(c->factory), "Flat");
	double sum = 0;
	for (uint32_t ki = 0; ki < t->nks; ki++) {
		double ns = cdx__tune_model_ns(c, 0, (double) t->nfull, t->ks[ki], CDX_REFINE_NONE, t->dim);
		c->best[ki][CDX_REFINE_NONE] = (struct setting) { 1, 0, 0, 1.0, 0, ns };
		sum += ns;
	}
	c->ns = sum / t->nks;
	c->bytes = cdx__tune_bytes_per_item(c, CDX_REFINE_NONE, t->dim);
}

/* tune_nlist: the power of two nearest 2 sqrt(n), in [16, n / 39]. */
static uint32_t
tune_nlist(size_t n)
{
	uint32_t nlist = 16;
	while ((double) nlist * 1.414 < 2.0 * sqrt((double) n))
		nlist *= 2;
	while (nlist > 16 && n / nlist < CDX_BUILD_MIN_POINTS_PER_LIST)
		nlist /= 2;
	return nlist;
}

static uint32_t
round_up(uint32_t x, uint32_t m)
{
	return (x + m - 1) / m * m;
}

/* ivf_cand describes an IVF-PQ candidate: group_dim is what the PQ codes
 * (PCA output, or the index vectors, padded to a multiple of 8 so that
 * both sub-vector sizes divide it); fastscan: 4-bit codes in SIMD blocks
 * (nbits is then 4). */
static void
ivf_cand(const struct tdata *t, struct cand *c, int transform, uint32_t pca, uint32_t nlist, uint32_t nbits,
    uint32_t dsub, int fastscan)
{
	memset(c, 0, sizeof(*c));
	c->transform = transform;
	c->pca = pca;
	c->nlist = nlist;
	c->fastscan = fastscan;
	c->nbits = fastscan ? 4 : nbits;
	c->kind = -1;
	c->group = -1;
	c->ns = INFINITY;
	uint32_t d_eff = t->dim + (transform == CDX_TRANSFORM_MIPS_L2);
	c->index_dim = pca ? d_eff : round_up(d_eff, 8);
	c->group_dim = pca ? pca : c->index_dim;
	c->m = c->group_dim / dsub;
	char pq[32];
	if (fastscan)
		snprintf(pq, sizeof(pq), "PQ%ux4fs", c->m);
	else
		snprintf(pq, sizeof(pq), "PQ%ux%unp", c->m, c->nbits);
	if (pca)
		snprintf(c->factory, sizeof(c->factory), "PCA%u,IVF%u,%s", pca, nlist, pq);
	else
		snprintf(c->factory, sizeof(c->factory), "IVF%u,%s", nlist, pq);
}

/* better: whether a beats b: cheaper beyond the tie band; within it,
 * exact search beats approximate (its answers are exact, whatever the
 * traffic), then fewer bytes per item win. */
static int
better(const struct cand *a, const struct cand *b)
{
	if (b == NULL)
		return 1;
	if (a->ns == INFINITY)
		return 0;
	if (a->ns * COST_TIE < b->ns)
		return 1;
	if (a->ns > b->ns * COST_TIE)
		return 0;
	if (a->flat != b->flat)
		return a->flat;
	return a->bytes < b->bytes;
}

static json_t *
cand_json(const struct tdata *t, const struct cand *c, int kind, int chosen)
{
	char name[200];
	cand_name(c, kind, name, sizeof(name));
	json_t *o = json_object();
	json_object_set_new(o, "structure", json_string(name));
	json_object_set_new(o, "factory", json_string(c->factory));
	json_object_set_new(o, "transform", json_string(cdx_transform_name(c->transform)));
	json_object_set_new(o, "refine", json_string(cdx_refine_name(kind)));
	json_object_set_new(o, "chosen", json_boolean(chosen));
	double ns = 0;
	int all = 1;
	json_t *ks = json_array();
	for (uint32_t ki = 0; ki < t->nks; ki++) {
		const struct setting *b = &c->best[ki][kind];
		json_t *r = json_object();
		json_object_set_new(r, "k", json_integer(t->ks[ki]));
		json_object_set_new(r, "reached", json_boolean(b->ok));
		if (b->ok) {
			json_object_set_new(r, "nprobe", json_integer(b->nprobe));
			json_object_set_new(r, "refine_factor", json_real(b->factor));
			json_object_set_new(r, "recall", json_real(b->recall));
			json_object_set_new(r, "recall_se", json_real(b->se));
			json_object_set_new(r, "qps_model", json_real(1e9 / b->ns));
			ns += b->ns;
		}
		all &= b->ok;
		json_array_append_new(ks, r);
	}
	json_object_set_new(o, "reached", json_boolean(all));
	json_object_set_new(o, "qps_model", all ? json_real(1e9 / (ns / t->nks)) : json_null());
	json_object_set_new(o, "bytes_per_item", json_real(cdx__tune_bytes_per_item(c, kind, t->dim)));
	json_object_set_new(o, "train_s", json_real(c->train_s));
	json_object_set_new(o, "add_s", json_real(c->add_s));
	json_object_set_new(o, "search_s", json_real(c->eval_s));
	json_object_set_new(o, "per_k", ks);
	if (c->note[0])
		json_object_set_new(o, "note", json_string(c->note));
	return o;
}

/* make_points: for each tuned k, the cheapest setting of the chosen
 * candidate for each rung target (the default target among them), as
 * operating points; rungs that repeat a cheaper rung's setting are dropped. */
static int
make_points(const struct tdata *t, const struct cand *c, struct cdx_tune_result *r)
{
	static const double rungs[] = { 0.8, 0.9, 0.95, 0.97, 0.98, 0.99 };
	size_t cap = (size_t) t->nks * (CDX_ARRAY_LEN(rungs) + 1);
	r->points = calloc(cap, sizeof(*r->points));
	if (r->points == NULL)
		return cdx_error(CDX_ENOMEM, "operating points");
	for (uint32_t ki = 0; ki < t->nks; ki++) {
		double targets[CDX_ARRAY_LEN(rungs) + 1];
		size_t nt = 0;
		for (size_t i = 0; i < CDX_ARRAY_LEN(rungs); i++)
			if (fabs(rungs[i] - t->target) > 1e-9)
				targets[nt++] = rungs[i];
		targets[nt++] = t->target;
		for (size_t i = 1; i < nt; i++) /* ascending */
			for (size_t j = i; j > 0 && targets[j] < targets[j - 1]; j--) {
				double x = targets[j];
				targets[j] = targets[j - 1];
				targets[j - 1] = x;
			}
		struct cdx_operating_point *prev = NULL;
		for (size_t ti = 0; ti < nt; ti++) {
			struct cdx_operating_point p = { .recall_target = targets[ti], .k = t->ks[ki] };
			double best = INFINITY;
			if (c->flat) {
				p.recall = 1;
				best = c->best[ki][CDX_REFINE_NONE].ns;
			} else {
				size_t nf = c->kind == CDX_REFINE_NONE ? 1 : nf_for(t->ks[ki]);
				for (uint32_t s = 0; s < c->nsteps; s++)
					for (size_t fi = 0; fi < nf; fi++) {
						double rec = c->rec[s][ki][c->kind][fi],
						       se = c->se[s][ki][c->kind][fi];
						if (!(cdx_points_lower_bound(rec, se) >= targets[ti]))
							continue;
						double pool = c->kind == CDX_REFINE_NONE
						    ? t->ks[ki]
						    : factors[fi] * t->ks[ki];
						double ns = cdx__tune_model_ns(
						    c, c->nprobes[s], c->codes[s], pool, c->kind, t->dim);
						if (ns < best) {
							best = ns;
							p.nprobe = c->nprobes[s];
							p.refine_factor
							    = c->kind == CDX_REFINE_NONE ? 0 : factors[fi];
							p.recall = rec;
							p.recall_se = se;
						}
					}
			}
			if (best == INFINITY)
				break; /* higher rungs are not reached either */
			p.qps = 1e9 / best;
			if (prev != NULL && prev->nprobe == p.nprobe
			    && prev->refine_factor == p.refine_factor) {
				*prev = p; /* one rung, labelled with the highest target it reaches */
				continue;
			}
			r->points[r->npoints] = p;
			prev = &r->points[r->npoints++];
		}
	}
	return CDX_OK;
}

void
cdx_tune_opts_init(struct cdx_tune_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->refine = -1;
	o->seed = CDX_BUILD_DEFAULT_SEED;
}

void
cdx_tune_result_fini(struct cdx_tune_result *r)
{
	if (r->index != NULL)
		faiss_Index_free(r->index);
	free(r->sq8_vmin);
	free(r->sq8_vdiff);
	free(r->points);
	if (r->report != NULL)
		json_decref((json_t *) r->report);
	cdx_tune_check_free(r->check);
	memset(r, 0, sizeof(*r));
}

static void
tdata_fini(struct tdata *t)
{
	if (t->base != t->full)
		free(t->base);
	free(t->full);
	free(t->sel);
	cdx_truth_fini(&t->truth);
	for (int k = 0; k < NKINDS; k++)
		free(t->store_data[k]);
	free(t->sq8_vmin);
	free(t->sq8_vdiff);
	cdx__tune_cache_fini(t);
}

/* mix_held_rows turns held-out rows into user-like queries for ip: query h
 * is the mean of 1 to CDX_TUNE_MIX_MAX held-out rows, row h among them (a
 * seeded choice). In matrix factorisation a user's vector is fitted to the
 * items the user played, so it lies among several items rather than on
 * one; tuned on single items, the sample tracks reached 10-recall@10 0.938
 * for users (BENCHMARKS.md, "Defaults"). self_row[h] is the query's own row
 * when it is one row, else -1. */
static void
mix_held_rows(
    const struct tdata *t, const uint64_t *held, size_t nq, uint64_t seed, float *q, int64_t *self_row)
{
	cdx_rng rng;
	cdx_rng_seed(&rng, seed ^ 0x6d6978ull);
	for (size_t h = 0; h < nq; h++) {
		uint32_t parts = 1 + (uint32_t) (cdx_rng_next(&rng) % CDX_TUNE_MIX_MAX);
		float *v = q + h * t->dim;
		self_row[h] = parts == 1 ? (int64_t) held[h] : -1;
		for (uint32_t p = 1; p < parts; p++) {
			const float *o = t->full + held[cdx_rng_next(&rng) % nq] * t->dim;
			for (uint32_t j = 0; j < t->dim; j++)
				v[j] += o[j];
		}
		for (uint32_t j = 0; j < t->dim; j++)
			v[j] /= (float) parts;
	}
}

/* pick_queries: --tune-queries, or held-out rows of the input (removed from
 * the tuning base; for ip, mixed into user-like queries). Alternate queries
 * go to selection and to the check. */
static int
pick_queries(struct tdata *t, const int64_t *ids, struct cdx_tune_check *chk, json_t *report)
{
	const struct cdx_tune_opts *o = t->o;
	uint32_t maxq = o->max_queries ? o->max_queries : CDX_TUNE_DEFAULT_QUERIES;
	float *q = NULL;
	size_t nq = 0;
	uint64_t *held = NULL;
	int64_t *self_row = NULL; /* per query: its own input row, or -1 */
	int rc;
	json_t *qj = json_object();
	json_object_set_new(report, "queries", qj);
	if (o->queries != NULL) {
		if ((rc = read_queries(o->queries, o->queries_format, t->dim, maxq, o->seed, &q, &nq))
		    != CDX_OK)
			return rc;
		json_object_set_new(qj, "source", json_string(o->queries));
	} else {
		nq = (size_t) CDX_MIN((uint64_t) maxq, t->nfull / 10);
		held = malloc(nq * sizeof(uint64_t));
		self_row = malloc(nq * sizeof(int64_t));
		q = malloc(nq * t->dim * sizeof(float));
		if (held == NULL || self_row == NULL || q == NULL) {
			free(held);
			free(self_row);
			free(q);
			return cdx_error(CDX_ENOMEM, "tuning queries");
		}
		cdx_build_sample(t->nfull, nq, o->seed ^ 0x68656c64ull, held);
		for (size_t h = 0; h < nq; h++) {
			memcpy(q + h * t->dim, t->full + held[h] * t->dim, t->dim * sizeof(float));
			self_row[h] = (int64_t) held[h];
		}
		int mix = t->metric == CDX_METRIC_IP;
		if (mix)
			mix_held_rows(t, held, nq, o->seed, q, self_row);
		json_object_set_new(qj, "source",
		    json_string(mix ? "held-out input rows, mixed 1-3 a query" : "held-out input rows"));
	}
	if (nq < 2) {
		free(held);
		free(self_row);
		free(q);
		return cdx_error(CDX_EEMPTY, "tuning needs at least 2 queries, has %zu", nq);
	}
	t->nsel = (nq + 1) / 2;
	chk->nq = nq / 2;
	chk->dim = t->dim;
	chk->metric = t->metric;
	t->sel = malloc(t->nsel * t->dim * sizeof(float));
	chk->queries = malloc((chk->nq ? chk->nq : 1) * t->dim * sizeof(float));
	if (held != NULL)
		chk->self = malloc((chk->nq ? chk->nq : 1) * sizeof(int64_t));
	if (t->sel == NULL || chk->queries == NULL || (held != NULL && chk->self == NULL)) {
		free(held);
		free(self_row);
		free(q);
		return cdx_error(CDX_ENOMEM, "tuning queries");
	}
	for (size_t i = 0; i < nq; i++) {
		const float *v = q + i * t->dim;
		if (i % 2 == 0) {
			memcpy(t->sel + (i / 2) * t->dim, v, t->dim * sizeof(float));
		} else {
			memcpy(chk->queries + (i / 2) * t->dim, v, t->dim * sizeof(float));
			if (held != NULL)
				chk->self[i / 2] = self_row[i] < 0 ? CDX_TUNE_NO_SELF
				    : ids                          ? ids[self_row[i]]
				                                   : self_row[i];
		}
	}
	if (t->metric == CDX_METRIC_COS)
		cdx_normalize_rows(t->sel, t->nsel, t->dim);
	json_object_set_new(qj, "selection", json_integer((json_int_t) t->nsel));
	json_object_set_new(qj, "check", json_integer((json_int_t) chk->nq));

	/* the check's truth: over the whole input, without the query's own row */
	rc = CDX_OK;
	if (chk->nq > 0) {
		struct cdx_recall_space full = { t->metric, t->dim, t->nfull, t->full };
		float *qn = malloc(chk->nq * t->dim * sizeof(float));
		struct cdx_truth big;
		memset(&big, 0, sizeof(big));
		if (qn == NULL)
			rc = cdx_error(CDX_ENOMEM, "check queries");
		if (rc == CDX_OK) {
			memcpy(qn, chk->queries, chk->nq * t->dim * sizeof(float));
			if (t->metric == CDX_METRIC_COS)
				cdx_normalize_rows(qn, chk->nq, t->dim);
			uint32_t kk = (uint32_t) CDX_MIN((uint64_t) t->kmax + (held != NULL), t->nfull);
			rc = cdx_truth_compute(&big, &full, qn, chk->nq, kk, NULL, NULL);
		}
		if (rc == CDX_OK) {
			struct cdx_truth *ct = &chk->truth;
			ct->nq = chk->nq;
			ct->k = CDX_MIN(t->kmax, big.k);
			ct->metric = t->metric;
			ct->rows = malloc(ct->nq * ct->k * sizeof(int64_t));
			ct->dist = malloc(ct->nq * ct->k * sizeof(float));
			if (ct->rows == NULL || ct->dist == NULL)
				rc = cdx_error(CDX_ENOMEM, "check truth");
			for (size_t i = 0; rc == CDX_OK && i < ct->nq; i++) {
				int64_t self = held != NULL ? self_row[2 * i + 1] : -1;
				uint32_t w = 0;
				for (uint32_t j = 0; j < big.k && w < ct->k; j++) {
					if (self >= 0 && big.rows[i * big.k + j] == self)
						continue;
					ct->rows[i * ct->k + w] = big.rows[i * big.k + j];
					ct->dist[i * ct->k + w] = big.dist[i * big.k + j];
					w++;
				}
				for (; w < ct->k; w++) {
					ct->rows[i * ct->k + w] = -1;
					ct->dist[i * ct->k + w] = INFINITY;
				}
			}
		}
		cdx_truth_fini(&big);
		free(qn);
	}
	/* the tuning base: the input without the held-out rows, compacted in
	 * place (the check's truth, over the whole input, is done) */
	t->base = t->full;
	t->n = t->nfull;
	if (held != NULL) {
		size_t h = 0, b = 0;
		for (uint64_t r = 0; r < t->nfull; r++) {
			if (h < nq && held[h] == r) {
				h++;
				continue;
			}
			if (b != r)
				memmove(t->full + b * t->dim, t->full + r * t->dim, t->dim * sizeof(float));
			b++;
		}
		t->n = b;
	}
	free(held);
	free(self_row);
	free(q);
	return rc;
}

int
cdx_tune_run(
    const struct cdx_tune_opts *o, cdx_input *in, int metric, const int64_t *ids, struct cdx_tune_result *r)
{
	memset(r, 0, sizeof(*r));
	struct tdata t;
	memset(&t, 0, sizeof(t));
	t.o = o;
	t.t0 = cdx_now_us();
	t.metric = metric;
	t.dim = cdx_input_dim(in);
	t.nfull = cdx_input_rows(in);
	t.target = o->target > 0 ? o->target : CDX_TUNE_DEFAULT_TARGET;
	double budget = o->budget_s > 0 ? o->budget_s : CDX_TUNE_DEFAULT_BUDGET_S;
	static const uint32_t default_ks[] = { 10, 100, 500 };
	const uint32_t *ks = o->nks ? o->ks : default_ks;
	uint32_t nks = o->nks ? o->nks : (uint32_t) CDX_ARRAY_LEN(default_ks);
	json_t *report = json_object();
	struct cdx_tune_check *chk = calloc(1, sizeof(*chk));
	struct cand *cands = calloc(10, sizeof(*cands)); /* flat, 4 groups, 2 codes, the lists */
	FaissIndex *best_index = NULL, *tr = NULL;
	uint64_t *sample = NULL;
	int rc = CDX_OK;
	if (report == NULL || chk == NULL || cands == NULL) {
		rc = cdx_error(CDX_ENOMEM, "tuning");
		goto done;
	}
	if (t.nfull > CDX_TUNE_MAX_ROWS) {
		rc = cdx_error(CDX_EINVAL,
		    "%llu rows: the self-tuning build measures up to %d rows in memory; give --factory "
		    "(and --refine) from a tuning run on a sample, or --no-tune",
		    (unsigned long long) t.nfull, CDX_TUNE_MAX_ROWS);
		goto done;
	}
	for (uint32_t i = 0; i < nks; i++) /* a k beyond a tenth of the items says little */
		if (ks[i] <= CDX_MAX(1u, (uint32_t) (t.nfull / 10)) || i == 0)
			t.ks[t.nks++] = (uint32_t) CDX_MIN((uint64_t) ks[i], t.nfull);
	t.kmax = t.ks[t.nks - 1];

	cdx_info("BLD-TUNE", "tuning for %u-recall@%u >= %.3g%s (budget %.0f s): reading %llu rows", t.ks[0],
	    t.ks[0], t.target, t.nks > 1 ? " and the other k" : "", budget, (unsigned long long) t.nfull);
	if ((rc = read_all(in, metric, &t.full)) != CDX_OK)
		goto done;
	if (metric == CDX_METRIC_IP) {
		for (uint64_t i = 0; i < t.nfull; i++) {
			const float *v = t.full + i * t.dim;
			double s = 0;
			for (uint32_t j = 0; j < t.dim; j++)
				s += (double) v[j] * v[j];
			if (s > t.max_norm2)
				t.max_norm2 = s;
		}
	}
	if ((rc = pick_queries(&t, ids, chk, report)) != CDX_OK)
		goto done;
	if (metric == CDX_METRIC_IP && o->queries == NULL)
		cdx_info("BLD-TUNE",
		    "ip without --tune-queries: tuning on mixtures of held-out items, a cautious stand-in "
		    "for "
		    "users; real user vectors (--tune-queries) usually allow a cheaper structure");
	t.space = (struct cdx_recall_space) { metric, t.dim, t.n, t.base };
	if ((rc = cdx_truth_compute(&t.truth, &t.space, t.sel, t.nsel, t.kmax, NULL, NULL)) != CDX_OK)
		goto done;
	t.pool = 1;
	for (uint32_t ki = 0; ki < t.nks; ki++)
		t.pool = CDX_MAX(t.pool, (size_t) (factors[nf_for(t.ks[ki]) - 1] * (float) t.ks[ki]));
	t.pool = CDX_MIN(t.pool, t.n);
	if ((rc = make_stores(&t)) != CDX_OK || (rc = cdx__tune_cache_init(&t)) != CDX_OK)
		goto done;
	cdx_info("BLD-TUNE", "%zu selection and %zu check queries (%s), exact neighbours in %.1f s", t.nsel,
	    chk->nq, o->queries ? o->queries : "held-out rows", elapsed_s(&t));

	int kinds[NKINDS] = { 1, 1, 1, 1 };
	if (o->refine >= 0)
		for (int k = 0; k < NKINDS; k++)
			kinds[k] = k == o->refine;

	size_t ncand = 0;
	struct cand *best = &cands[ncand++];
	flat_cand(&t, best);
	for (uint32_t ki = 0; ki < t.nks; ki++)
		t.flat_ns[ki] = best->best[ki][CDX_REFINE_NONE].ns;
	log_cand(&t, best);
	if (t.nfull >= CDX_TUNE_FLAT_BELOW) {
		/* the codes measured on the best coarse group besides fast-scan's:
		 * the same bytes in plain PQ, 8-bit codes of 4 dimensions from
		 * 10,000 rows (else 4-bit of 2) */
		uint32_t nbits = t.n >= CDX_BUILD_8BIT_FROM ? 8 : 4, dsub_plain = nbits == 8 ? 4 : 2;
		/* lists of a few hundred items: each probed list costs a table of
		 * M x 2^nbits entries, as much as scanning ~M x 2^nbits / M codes */
		uint32_t nlist0 = tune_nlist(t.n);
		/* coarse groups (transform, PCA). From dim 256 the codes go through
		 * a PCA: on MNIST (784) a full-dimension IVF512,PQ196x8 reached the
		 * target at 720 modelled QPS against 3,207 for PCA64,IVF512,PQ16x8,
		 * and trained 3x longer (BENCHMARKS.md, "Defaults"). */
		struct group groups[4];
		size_t ngroups = 0;
		uint32_t pca = t.dim >= 256 ? 64 : 0;
		groups[ngroups++] = (struct group) { CDX_TRANSFORM_NONE, pca };
		if (metric == CDX_METRIC_IP)
			groups[ngroups++] = (struct group) { CDX_TRANSFORM_MIPS_L2, pca };
		if (t.dim >= 512)
			groups[ngroups++] = (struct group) {
				metric == CDX_METRIC_IP ? CDX_TRANSFORM_MIPS_L2 : CDX_TRANSFORM_NONE, 128
			};
		size_t ns = (size_t) CDX_MIN((uint64_t) t.n, (uint64_t) CDX_MAX(32768u, 64u * 4 * nlist0));
		if ((sample = malloc(ns * sizeof(uint64_t))) == NULL) {
			rc = cdx_error(CDX_ENOMEM, "tuning sample");
			goto done;
		}
		cdx_build_sample(t.n, ns, o->seed, sample);
		r->params.train_sample = ns;
		struct cand *ivf_best = NULL;
		FaissIndex *group_first[4] = { NULL, NULL, NULL, NULL };
		const struct cand *group_cand[4] = { NULL, NULL, NULL, NULL }; /* each group's first */
		int best_group = -1;
		double spent = 0;
		size_t measured = 0;
		struct cdx_progress pr; /* candidates measured, of at most this many */
		cdx_progress_begin(&pr, "tune", ngroups + 3, o->quiet);
		for (int stage = 0; stage < 3 && rc == CDX_OK; stage++) {
			size_t nstage = stage == 0 ? ngroups : stage == 1 ? 2 : 1;
			if (stage == 1 && ivf_best != NULL)
				best_group = ivf_best->group;
			for (size_t g = 0; g < nstage && rc == CDX_OK; g++) {
				double avg = measured ? spent / (double) measured : 0;
				if (elapsed_s(&t) + avg > budget && ivf_best != NULL) {
					cdx_warn("BLD-TUNE",
					    "tuning budget of %.0f s reached after %.1f s: %zu candidate(s) "
					    "measured, the rest skipped (--tune-budget)",
					    budget, elapsed_s(&t), measured);
					json_object_set_new(report, "budget_reached", json_true());
					stage = 3;
					break;
				}
				struct cand *c = &cands[ncand];
				const FaissIndex *like = NULL;
				if (stage == 0) {
					/* a wider PCA only when the narrow one loses the neighbours */
					if (groups[g].pca > 64 && ivf_best != NULL && ivf_best->pca == 64
					    && ivf_best->ns < INFINITY)
						continue;
					/* each group with fast-scan codes of 2 dimensions, but
					 * ip as L2 with plain codes: fast-scan quantizes every
					 * sub-quantizer's table with one scale, set by the
					 * widest, and the added coordinate's (the item norms')
					 * leaves the others a few levels (Faiss's
					 * round_uint8_per_column). On tune_test's ip set,
					 * PQ10x4fs then lost recall as nprobe rose (x4: 0.86
					 * at nprobe 32, 0.65 at 64) and its chosen setting
					 * missed the target on fresh queries (0.947). */
					if (groups[g].transform == CDX_TRANSFORM_MIPS_L2)
						ivf_cand(&t, c, groups[g].transform, groups[g].pca, nlist0,
						    nbits, dsub_plain, 0);
					else
						ivf_cand(&t, c, groups[g].transform, groups[g].pca, nlist0, 4,
						    2, 1);
					c->group = (int) g;
				} else if (stage == 1) { /* the best group: plain codes, then half the code */
					if (best_group < 0 || group_cand[best_group] == NULL)
						continue;
					const struct cand *b0 = group_cand[best_group];
					/* plain already (ip as L2): only half the code is new */
					if (!b0->fastscan && g == 0)
						continue;
					if (!b0->fastscan)
						ivf_cand(&t, c, b0->transform, b0->pca, b0->nlist, nbits,
						    2 * dsub_plain, 0);
					else if (g == 0)
						ivf_cand(&t, c, b0->transform, b0->pca, b0->nlist, nbits,
						    dsub_plain, 0);
					else
						ivf_cand(&t, c, b0->transform, b0->pca, b0->nlist, 4, 4, 1);
					c->group = best_group;
					like = group_first[best_group];
				} else { /* four times the lists: shorter lists, a larger coarse step */
					if (ivf_best == NULL
					    || t.n / (nlist0 * 4) < CDX_BUILD_MIN_POINTS_PER_LIST)
						continue;
					ivf_cand(&t, c, ivf_best->transform, ivf_best->pca, nlist0 * 4,
					    ivf_best->nbits, ivf_best->group_dim / ivf_best->m,
					    ivf_best->fastscan);
					c->group = -1;
				}
				if (c->m == 0 || c->group_dim % c->m != 0)
					continue;
				uint64_t c0 = cdx_now_us();
				rc = cdx__tune_measure_ivf(&t, c, like, sample, ns, kinds, &tr);
				if (rc != CDX_OK)
					break;
				ncand++;
				measured++;
				spent += (double) (cdx_now_us() - c0) / 1e6;
				cdx_progress_update(&pr, measured);
				log_cand(&t, c);
				if (stage == 0) {
					group_first[g] = tr; /* kept: stage 1 reuses its coarse stage */
					group_cand[g] = c;
				}
				if (better(c, ivf_best)) {
					ivf_best = c;
					if (best_index != NULL && best_index != tr) {
						int shared = 0;
						for (int i = 0; i < 4; i++)
							shared |= group_first[i] == best_index;
						if (!shared)
							faiss_Index_free(best_index);
					}
					best_index = tr;
				} else if (stage != 0) {
					faiss_Index_free(tr);
				}
				tr = NULL;
			}
		}
		cdx_progress_end(&pr);
		for (int i = 0; i < 4; i++)
			if (group_first[i] != NULL && group_first[i] != best_index)
				faiss_Index_free(group_first[i]);
		if (rc != CDX_OK)
			goto done;
		if (ivf_best != NULL && better(ivf_best, best))
			best = ivf_best;
	}
	if (!best->flat && best_index == NULL) {
		rc = cdx_error(CDX_EINTERNAL, "tuning chose an index it did not keep");
		goto done;
	}
	if (best->ns == INFINITY) {
		/* nothing but exact search reaches the target: that is the answer */
		best = &cands[0];
	}
	if (t.nfull < CDX_TUNE_FLAT_BELOW)
		snprintf(r->params.note, sizeof(r->params.note),
		    "%llu items < %d: exact Flat index (too few points to train IVF-PQ; a scan is cheap at "
		    "this size)",
		    (unsigned long long) t.nfull, CDX_TUNE_FLAT_BELOW);

	/* the result */
	r->target = t.target;
	r->nks = t.nks;
	memcpy(r->ks, t.ks, sizeof(r->ks));
	r->transform = best->transform;
	r->index_dim = best->index_dim;
	r->max_norm2 = best->transform == CDX_TRANSFORM_MIPS_L2 ? t.max_norm2 : 0;
	r->refine
	    = o->refine >= 0 ? o->refine : best->kind; /* exact search still carries a store asked for */
	snprintf(r->params.factory, sizeof(r->params.factory), "%s", best->factory);
	r->params.flat = best->flat;
	r->params.nlist = best->nlist;
	r->params.pq_m = best->m;
	r->params.pq_nbits = best->nbits;
	if (best->flat) {
		FaissMetricType fm = metric == CDX_METRIC_IP ? METRIC_INNER_PRODUCT : METRIC_L2;
		if (faiss_index_factory(&r->index, (int) t.dim, "Flat", fm) != 0) {
			rc = cdx_error_faiss("Flat");
			goto done;
		}
		r->params.train_sample = 0;
	} else {
		faiss_Index_reset(best_index);
		r->index = best_index;
		best_index = NULL;
	}
	if (r->refine == CDX_REFINE_SQ8) {
		r->sq8_vmin = malloc(t.dim * sizeof(float));
		r->sq8_vdiff = malloc(t.dim * sizeof(float));
		if (r->sq8_vmin == NULL || r->sq8_vdiff == NULL) {
			rc = cdx_error(CDX_ENOMEM, "sq8 tables");
			goto done;
		}
		memcpy(r->sq8_vmin, t.sq8_vmin, t.dim * sizeof(float));
		memcpy(r->sq8_vdiff, t.sq8_vdiff, t.dim * sizeof(float));
	}
	if ((rc = make_points(&t, best, r)) != CDX_OK)
		goto done;
	r->params.default_nprobe = r->npoints > 0 && r->points[0].nprobe > 0 ? r->points[0].nprobe : 1;
	for (uint32_t i = 0; i < r->npoints; i++)
		if (r->points[i].k == t.ks[0] && fabs(r->points[i].recall_target - t.target) < 1e-9)
			r->params.default_nprobe = CDX_MAX(1u, r->points[i].nprobe);

	char name[200];
	cand_name(best, best->kind, name, sizeof(name));
	json_object_set_new(report, "target", json_real(t.target));
	json_t *kj = json_array();
	for (uint32_t i = 0; i < t.nks; i++)
		json_array_append_new(kj, json_integer(t.ks[i]));
	json_object_set_new(report, "k", kj);
	json_object_set_new(report, "chosen", json_string(name));
	json_object_set_new(report, "budget_s", json_real(budget));
	json_object_set_new(report, "seconds", json_real(elapsed_s(&t)));
	json_t *cj = json_array();
	for (size_t i = 0; i < ncand; i++) {
		const struct cand *c = &cands[i];
		for (int kind = 0; kind < NKINDS; kind++)
			if (c->evaluated && (c->flat ? kind == CDX_REFINE_NONE : kinds[kind]))
				json_array_append_new(
				    cj, cand_json(&t, c, kind, c == best && kind == best->kind));
	}
	json_object_set_new(report, "candidates", cj);
	r->report = report;
	report = NULL;
	r->check = chk;
	chk = NULL;
	cdx_info("BLD-TUNE", "chose %s: %.0f QPS modelled, %.0f B/item, tuned in %.1f s", name,
	    1e9 / best->ns, best->bytes, elapsed_s(&t));
done:
	if (best_index != NULL)
		faiss_Index_free(best_index);
	if (tr != NULL)
		faiss_Index_free(tr);
	free(sample);
	free(cands);
	if (report != NULL)
		json_decref(report);
	cdx_tune_check_free(chk);
	tdata_fini(&t);
	if (rc != CDX_OK)
		cdx_tune_result_fini(r);
	return rc;
}
