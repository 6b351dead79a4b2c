/*
 * recsearch.c — a search request from protobuf to results and back: one
 * collection or several (parts), with filters, compact exclusions,
 * takedowns, crowding and exploration (src/recommend/), the response, and
 * the impression log record of each query.
 *
 * The nng thread checks what is cheap (cdx__srv_check_rec); a worker runs
 * cdx__srv_search_run, which looks up the parts' collections, decodes
 * exclusions, searches, answers, and only then copies the impressions into
 * the log's buffer (never waiting for the disk: recommend/implog.h).
 */
#define _GNU_SOURCE
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "wire/wire.h"
#include "common/idlist.h"
#include "recall/online.h"
#include "recommend/implog.h"
#include "recommend/recommend.h"
#include "search/filter.h"
#include "server/server.h"

#define SRV_MAX_POOL_FACTOR 16 /* explore_pool <= 16 x max-k */

/* ---- checks on the nng thread ----------------------------------------- */

static int
check_vectors(const float *v, size_t n, uint32_t dim, const char *what, char *msg, size_t size)
{
	if (n == 0)
		return 0;
	if (dim == 0 || n % dim != 0) {
		snprintf(msg, size, "%s: %zu floats is not a whole number of %u-dimensional vectors", what, n,
		    dim);
		return CDX_EDIM;
	}
	long bad = cdx_find_nonfinite(v, n);
	if (bad >= 0) {
		snprintf(msg, size, "%s: query %ld, component %ld is %s", what, bad / (long) dim,
		    bad % (long) dim, isnan(v[bad]) ? "NaN" : "infinite");
		return CDX_ENONFINITE;
	}
	return 0;
}

int
cdx__srv_check_rec(
    const struct cdx_server_config *cfg, const Candex__V1__SearchRequest *sr, char *msg, size_t size)
{
	if (sr->filter != NULL && strlen(sr->filter) > CDX_FILTER_MAX_TEXT) {
		snprintf(msg, size, "filter of %zu characters (at most %d)", strlen(sr->filter),
		    CDX_FILTER_MAX_TEXT);
		return CDX_ELIMIT;
	}
	if (sr->group_by != NULL && strlen(sr->group_by) >= CDX_ATTR_NAME_MAX) {
		snprintf(
		    msg, size, "group_by names no attribute (names are shorter than %d)", CDX_ATTR_NAME_MAX);
		return CDX_EINVAL;
	}
	if (!isfinite(sr->explore_share) || sr->explore_share < 0 || sr->explore_share > 1) {
		snprintf(msg, size, "explore_share must be in [0, 1], not %g", (double) sr->explore_share);
		return CDX_EINVAL;
	}
	if (sr->explore_slots > sr->k) {
		snprintf(msg, size, "explore_slots = %u is more than k = %u", sr->explore_slots, sr->k);
		return CDX_EINVAL;
	}
	if ((uint64_t) sr->explore_pool > (uint64_t) SRV_MAX_POOL_FACTOR * cfg->max_k) {
		snprintf(msg, size, "explore_pool = %u exceeds %d x the server's max-k %u", sr->explore_pool,
		    SRV_MAX_POOL_FACTOR, cfg->max_k);
		return CDX_ELIMIT;
	}
	if (sr->n_parts == 0)
		return 0;
	/* a search with parts: everything cdx__srv_validate_search checks of
	 * a single-collection search is checked here, per part */
	if (sr->k == 0 || sr->k > cfg->max_k) {
		snprintf(msg, size, "k = %u: must be 1 .. the server's max-k %u", sr->k, cfg->max_k);
		return sr->k ? CDX_ELIMIT : CDX_EINVAL;
	}
	int rc = cdx__srv_validate_settings(sr, msg, size);
	if (rc != CDX_OK)
		return rc;
	if (sr->n_parts > CDX_REC_MAX_PARTS) {
		snprintf(
		    msg, size, "%zu collections in one search (at most %d)", sr->n_parts, CDX_REC_MAX_PARTS);
		return CDX_ELIMIT;
	}
	if (sr->collection != NULL && sr->collection[0] != '\0') {
		snprintf(
		    msg, size, "a search with parts names its collections in the parts, not in collection");
		return CDX_EINVAL;
	}
	if (sr->n_query_keys > 0 || sr->n_exclude_ids > 0 || sr->n_exclude_keys > 0
	    || sr->exclude_ids_packed.len > 0) {
		snprintf(msg, size, "a search with parts takes query vectors, and exclusions per part");
		return CDX_EINVAL;
	}
	if ((rc = check_vectors(sr->vectors, sr->n_vectors, sr->dim, "vectors", msg, size)) != 0)
		return rc;
	/* every part searches the same queries: the request's, or its own */
	const Candex__V1__CollectionPart *p0 = sr->parts[0];
	size_t nq = sr->n_vectors > 0          ? sr->n_vectors / sr->dim
	    : p0->n_vectors > 0 && p0->dim > 0 ? p0->n_vectors / p0->dim
	                                       : 0;
	size_t excl = 0;
	for (size_t i = 0; i < sr->n_parts; i++) {
		const Candex__V1__CollectionPart *p = sr->parts[i];
		char what[96];
		snprintf(what, sizeof(what), "part %zu", i);
		if (p->collection == NULL || p->collection[0] == '\0' || p->quota == 0) {
			snprintf(msg, size, "part %zu needs a collection and a quota of at least 1", i);
			return CDX_EINVAL;
		}
		if ((rc = check_vectors(p->vectors, p->n_vectors, p->dim, what, msg, size)) != 0)
			return rc;
		size_t pn = p->n_vectors > 0 ? p->n_vectors / p->dim : sr->n_vectors > 0 ? nq : 0;
		if (pn == 0 || pn != nq) {
			snprintf(msg, size,
			    "part %zu (%s): %zu query vectors; every part needs the same number, at least "
			    "one",
			    i, p->collection, pn);
			return pn == 0 ? CDX_EEMPTY : CDX_EINVAL;
		}
		if (pn > cfg->max_batch) {
			snprintf(msg, size, "batch of %zu queries exceeds the server's max-batch %u", pn,
			    cfg->max_batch);
			return CDX_ELIMIT;
		}
		if (p->filter != NULL && strlen(p->filter) > CDX_FILTER_MAX_TEXT) {
			snprintf(msg, size, "part %zu: filter too long", i);
			return CDX_ELIMIT;
		}
		if (!isfinite(p->calibration_scale) || !isfinite(p->calibration_offset)) {
			snprintf(msg, size, "part %zu: calibration must be finite", i);
			return CDX_EINVAL;
		}
		excl += p->n_exclude_ids + p->n_exclude_keys;
	}
	if (excl > cfg->max_excludes) {
		snprintf(msg, size, "%zu excluded items exceed the server's max-excludes %u", excl,
		    cfg->max_excludes);
		return CDX_ELIMIT;
	}
	return 0;
}

/* ---- a request's parts ------------------------------------------------- */

struct part_res {
	cdx_collection *coll; /* a reference (parts looked up here) */
	cdx_rowset *blocked;  /* a reference */
	int64_t *ids;         /* exclude ids: plain + packed (malloc'd) */
	float *owned;         /* query vectors from keys */
};

struct run {
	cdx_server *s;
	const Candex__V1__Request *req;
	const Candex__V1__SearchRequest *sr;
	struct cdx_rec_request rr;
	struct cdx_rec_part parts[CDX_REC_MAX_PARTS];
	struct part_res res[CDX_REC_MAX_PARTS];
	struct cdx_rec_hit *hits;
	uint8_t *exhausted;
	uint32_t applied;
	int code;
	char msg[1024];
};

static int CDX_PRINTF(3, 4) fail(struct run *r, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(r->msg, sizeof(r->msg), fmt, ap);
	va_end(ap);
	r->code = code;
	return code;
}

/* exclusions gathers a part's exclude ids: the plain list and the packed one. */
static int
exclusions(struct run *r, size_t i, const int64_t *ids, size_t n, ProtobufCBinaryData packed, size_t n_keys)
{
	struct cdx_rec_part *p = &r->parts[i];
	size_t limit = r->s->cfg.max_excludes, have = n + n_keys;
	p->exclude_ids = ids;
	p->n_exclude_ids = n;
	if (packed.len == 0)
		return CDX_OK;
	int64_t *unpacked = NULL;
	size_t nu = 0;
	int rc = cdx_idlist_decode(packed.data, packed.len, have < limit ? limit - have : 0, &unpacked, &nu);
	if (rc == CDX_ELIMIT)
		return fail(r, rc, "excluded items exceed the server's max-excludes %zu", limit);
	if (rc != CDX_OK)
		return fail(r, rc, "exclude_ids_packed: %s", cdx_last_error());
	int64_t *all = realloc(unpacked, (nu + n) * sizeof(int64_t));
	if (all == NULL && nu + n > 0) {
		free(unpacked);
		return fail(r, CDX_ENOMEM, "out of memory for %zu exclusions", nu + n);
	}
	if (n > 0)
		memcpy(all + nu, ids, n * sizeof(int64_t));
	r->res[i].ids = all;
	p->exclude_ids = all;
	p->n_exclude_ids = nu + n;
	r->applied |= CANDEX__V1__APPLIED__APPLIED_EXCLUDE_PACKED;
	return CDX_OK;
}

/* key_vectors turns query_keys into the stored items' vectors. */
static int
key_vectors(struct run *r, const cdx_collection *c, size_t nq)
{
	const struct cdx_manifest *m = cdx_collection_manifest(c);
	float *v = malloc(nq * m->dim * sizeof(float));
	if (v == NULL)
		return fail(r, CDX_ENOMEM, "out of memory");
	r->res[0].owned = v;
	for (size_t i = 0; i < nq; i++) {
		uint32_t shard, row;
		const char *key = r->sr->query_keys[i];
		int rc = cdx_collection_find_key(c, key, &shard, &row, NULL);
		if (rc == CDX_OK)
			rc = cdx_collection_vector(c, shard, row, v + i * m->dim);
		if (rc == CDX_ENOTFOUND)
			return fail(r, rc, "unknown key '%.*s' in collection '%s'",
			    (int) cdx_utf8_cut(key, 200), key, m->collection);
		if (rc != CDX_OK)
			return fail(
			    r, rc, "key '%.*s': %s", (int) cdx_utf8_cut(key, 200), key, cdx_last_error());
	}
	r->parts[0].queries = v;
	return CDX_OK;
}

/* setup_single: the request's own collection (checked by dispatch.c). */
static int
setup_single(struct run *r, cdx_collection *coll, const cdx_rowset *blocked, size_t *nq)
{
	const Candex__V1__SearchRequest *sr = r->sr;
	const struct cdx_manifest *m = cdx_collection_manifest(coll);
	struct cdx_rec_part *p = &r->parts[0];
	r->rr.nparts = 1;
	p->coll = coll;
	p->blocked = blocked;
	p->filter = sr->filter;
	p->quota = sr->k;
	p->exclude_keys = (const char *const *) sr->exclude_keys;
	p->n_exclude_keys = sr->n_exclude_keys;
	*nq = sr->n_vectors > 0 ? sr->n_vectors / m->dim : sr->n_query_keys;
	p->queries = sr->vectors;
	/* recall adaptation (adapt.c) learns per collection from plain
	 * single-collection queries, and serves its rungs to all of them */
	r->rr.escalate = sr->nprobe == 0 ? cdx__srv_adapt_escalation(r->s->adapt, coll, sr->k) : 0;
	int rc = exclusions(
	    r, 0, sr->exclude_ids, sr->n_exclude_ids, sr->exclude_ids_packed, sr->n_exclude_keys);
	if (rc == CDX_OK && sr->n_query_keys > 0)
		rc = key_vectors(r, coll, *nq);
	return rc;
}

/* setup_parts looks up each part's collection and checks its vectors. */
static int
setup_parts(struct run *r, size_t *nq)
{
	const Candex__V1__SearchRequest *sr = r->sr;
	r->rr.nparts = sr->n_parts;
	r->applied |= CANDEX__V1__APPLIED__APPLIED_PARTS;
	for (size_t i = 0; i < sr->n_parts; i++) {
		const Candex__V1__CollectionPart *pp = sr->parts[i];
		struct cdx_rec_part *p = &r->parts[i];
		struct part_res *res = &r->res[i];
		if ((res->coll = cdx__srv_lookup(r->s, pp->collection, &res->blocked)) == NULL) {
			char names[512];
			cdx__srv_names(r->s, names, sizeof(names));
			return fail(r, CDX_ENOTFOUND, "part %zu: unknown collection '%.*s' (serving: %s)", i,
			    (int) cdx_utf8_cut(pp->collection, 100), pp->collection, names);
		}
		const struct cdx_manifest *m = cdx_collection_manifest(res->coll);
		uint32_t dim = pp->n_vectors > 0 ? pp->dim : sr->dim;
		if (dim != m->dim)
			return fail(r, CDX_EDIM,
			    "part %zu: query dimension %u, but collection '%s' has dimension %u", i, dim,
			    m->collection, m->dim);
		const char *mv = pp->model_version;
		if (mv != NULL && mv[0] != '\0' && strcmp(mv, m->model_version) != 0)
			return fail(r, CDX_EMODEL,
			    "part %zu: query vectors come from model '%.*s' but collection '%s' version %s "
			    "was built from model '%s'",
			    i, (int) cdx_utf8_cut(mv, 128), mv, m->collection, m->version,
			    m->model_version[0] ? m->model_version : "(unset)");
		p->coll = res->coll;
		p->blocked = res->blocked;
		p->queries = pp->n_vectors > 0 ? pp->vectors : sr->vectors;
		*nq = pp->n_vectors > 0 ? pp->n_vectors / pp->dim : sr->n_vectors / sr->dim;
		p->filter = pp->filter != NULL && pp->filter[0] != '\0' ? pp->filter : sr->filter;
		p->quota = pp->quota;
		p->calib_scale = pp->calibration_scale;
		p->calib_offset = pp->calibration_offset;
		p->exclude_keys = (const char *const *) pp->exclude_keys;
		p->n_exclude_keys = pp->n_exclude_keys;
		int rc = exclusions(
		    r, i, pp->exclude_ids, pp->n_exclude_ids, pp->exclude_ids_packed, pp->n_exclude_keys);
		if (rc != CDX_OK)
			return rc;
	}
	return CDX_OK;
}

/* ---- the response ----------------------------------------------------- */

/* impression logs query i's hits (one Impression record). */
static void
log_impression(struct run *r, size_t i, const char *const *versions, uint64_t seed)
{
	const struct cdx_rec_hit *h = r->hits + i * r->rr.k;
	Candex__V1__Impression imp = CANDEX__V1__IMPRESSION__INIT;
	Candex__V1__ImpressionItem items[64], *ptrs[64], **ip = ptrs, *iv = items;
	size_t n = 0;
	while (n < r->rr.k && h[n].id >= 0)
		n++;
	if (n > 64) {
		iv = malloc(n * sizeof(*iv));
		ip = malloc(n * sizeof(*ip));
		if (iv == NULL || ip == NULL)
			goto done;
	}
	for (size_t j = 0; j < n; j++) {
		const cdx_collection *c = r->parts[h[j].part].coll;
		candex__v1__impression_item__init(&iv[j]);
		iv[j].slot = (uint32_t) j;
		iv[j].collection = (char *) cdx_collection_manifest(c)->collection;
		iv[j].index_version = (char *) versions[h[j].part];
		iv[j].id = h[j].id;
		iv[j].key = (char *) cdx_collection_key(c, h[j].shard, h[j].row);
		iv[j].score = h[j].score;
		iv[j].rank = h[j].rank;
		iv[j].explore = h[j].explore != 0;
		iv[j].propensity = h[j].propensity;
		ip[j] = &iv[j];
	}
	imp.request_id = r->req->request_id != NULL ? r->req->request_id : (char *) "";
	imp.query = (uint32_t) i;
	imp.unix_ms = cdx_wall_ms();
	imp.seed = seed;
	imp.n_items = n;
	imp.items = ip;
	size_t len = candex__v1__impression__get_packed_size(&imp);
	uint8_t small[4096], *buf = len <= sizeof(small) ? small : malloc(len);
	if (buf != NULL) {
		candex__v1__impression__pack(&imp, buf);
		cdx_implog_append(r->s->implog, buf, len);
		if (buf != small)
			free(buf);
	}
done:
	if (iv != items)
		free(iv);
	if (ip != ptrs)
		free(ip);
}

static void
answer(struct run *r, struct srv_ctx *ctx, size_t nq, uint64_t t_recv_us)
{
	const struct cdx_rec_request *rr = &r->rr;
	size_t k = rr->k, np = rr->nparts;
	int multi = r->sr->n_parts > 0, exploring = rr->explore_slots > 0;
	Candex__V1__QueryResult *qrs = calloc(nq, sizeof(*qrs));
	Candex__V1__QueryResult **qrp = calloc(nq, sizeof(*qrp));
	Candex__V1__Hit *hitv = calloc(nq * k, sizeof(*hitv));
	Candex__V1__Hit **hitp = calloc(nq * k, sizeof(*hitp));
	Candex__V1__PartResult *prs = calloc(np, sizeof(*prs));
	Candex__V1__PartResult **prp = calloc(np, sizeof(*prp));
	if (qrs == NULL || qrp == NULL || hitv == NULL || hitp == NULL || prs == NULL || prp == NULL) {
		cdx__srv_reply_error(ctx, CDX_ENOMEM, "out of memory for %zu x %zu results", nq, k);
		goto done;
	}
	const char *versions[CDX_REC_MAX_PARTS];
	uint32_t nprobe = 0;
	int unmet = 0;
	for (size_t p = 0; p < np; p++) {
		const struct cdx_manifest *m = cdx_collection_manifest(rr->parts[p].coll);
		const struct cdx_search_used *u = &rr->parts[p].used;
		versions[p] = m->version;
		nprobe = CDX_MAX(nprobe, u->nprobe);
		unmet |= u->target_unmet;
		atomic_fetch_add(&r->s->m.widened, u->widened);
		candex__v1__part_result__init(&prs[p]);
		prs[p].collection = (char *) m->collection;
		prs[p].index_version = (char *) m->version;
		prs[p].nprobe = u->nprobe;
		prs[p].refine_factor = u->refine_factor;
		prs[p].expected_recall = (float) u->expected_recall;
		prs[p].target_unmet = u->target_unmet != 0;
		prs[p].metric = (char *) cdx_metric_name(m->metric);
		prp[p] = &prs[p];
	}
	for (size_t i = 0; i < nq; i++) {
		candex__v1__query_result__init(&qrs[i]);
		qrp[i] = &qrs[i];
		qrs[i].hits = hitp + i * k;
		qrs[i].exhausted = r->exhausted[i] != 0;
		for (size_t j = 0; j < k; j++) {
			const struct cdx_rec_hit *h = &r->hits[i * k + j];
			if (h->id < 0)
				break; /* fewer than k found */
			const cdx_collection *c = rr->parts[h->part].coll;
			Candex__V1__Hit *o = &hitv[i * k + j];
			candex__v1__hit__init(o);
			o->id = h->id;
			o->key = (char *) cdx_collection_key(c, h->shard, h->row);
			o->score = h->score;
			if (multi)
				o->collection = (char *) cdx_collection_manifest(c)->collection;
			if (exploring || multi)
				o->rank = h->rank;
			if (exploring) {
				o->explore = h->explore != 0;
				o->propensity = h->propensity;
			}
			qrs[i].hits[qrs[i].n_hits++] = o;
		}
	}
	Candex__V1__Response resp = CANDEX__V1__RESPONSE__INIT;
	Candex__V1__SearchResponse out = CANDEX__V1__SEARCH_RESPONSE__INIT;
	const struct cdx_search_used *u0 = &rr->parts[0].used;
	const struct cdx_manifest *m0 = cdx_collection_manifest(rr->parts[0].coll);
	out.n_results = nq;
	out.results = qrp;
	out.nprobe = nprobe;
	out.target_unmet = unmet != 0;
	if (!multi) {
		out.index_version = (char *) m0->version;
		out.refine_factor = u0->refine_factor;
		out.recall_target = u0->recall_target;
		out.expected_recall = (float) u0->expected_recall;
		out.metric = (char *) cdx_metric_name(m0->metric);
		cdx__srv_fill_coverage(&out, rr->parts[0].coll);
	} else {
		out.n_parts = np;
		out.parts = prp;
	}
	out.applied = r->applied;
	out.seed = exploring ? rr->seed : 0;
	out.server_time_us = cdx_now_us() - t_recv_us;
	resp.body_case = CANDEX__V1__RESPONSE__BODY_SEARCH;
	resp.search = &out;
	atomic_fetch_add(&r->s->m.queries, nq);
	if (unmet)
		atomic_fetch_add(&r->s->m.target_unmet, 1);
	if (exploring)
		atomic_fetch_add(&r->s->m.exploring, 1);
	/* the log only copies into its buffer (the writer thread does the I/O);
	 * before the send, which releases the request and its collection */
	for (size_t i = 0; r->s->implog != NULL && i < nq; i++)
		log_impression(r, i, versions, rr->seed);
	cdx__srv_send(ctx, &resp);
done:
	free(qrs);
	free(qrp);
	free(hitv);
	free(hitp);
	free(prs);
	free(prp);
}

uint64_t
cdx__srv_search_run(struct srv_ctx *x, int idle)
{
	cdx_server *s = x->s;
	const Candex__V1__Request *req = x->req;
	const Candex__V1__SearchRequest *sr = req->search;
	cdx_collection *coll = x->coll;
	const cdx_rowset *blocked = x->blocked;
	uint64_t t_recv_us = x->t_recv_us, took_us = 0;
	struct run *r = calloc(1, sizeof(*r));
	if (r == NULL) {
		cdx__srv_reply_error(x, CDX_ENOMEM, "out of memory");
		return 0;
	}
	r->s = s;
	r->req = req;
	r->sr = sr;
	r->rr.parts = r->parts;
	size_t nq = 0;
	int rc = sr->n_parts > 0 ? setup_parts(r, &nq) : setup_single(r, coll, blocked, &nq);
	if (rc != CDX_OK)
		goto done;
	struct cdx_rec_request *rr = &r->rr;
	rr->nq = nq;
	rr->k = sr->k;
	rr->nprobe = sr->nprobe;
	rr->refine_factor = sr->refine_factor;
	rr->recall_target = sr->recall_target;
	rr->max_per_group = sr->max_per_group;
	rr->group_by = sr->group_by;
	rr->explore_slots = sr->explore_slots > 0 ? sr->explore_slots
	                                          : (uint32_t) lround((double) sr->explore_share * sr->k);
	rr->explore_pool = sr->explore_pool;
	rr->merge = sr->merge == CANDEX__V1__MERGE__MERGE_CALIBRATED ? CDX_REC_MERGE_CALIBRATED
	                                                             : CDX_REC_MERGE_INTERLEAVE;
	rr->deadline_us = &x->stop_by;
	/* reproducible from the request id unless the request names a seed */
	const char *rid = req->request_id != NULL ? req->request_id : "";
	rr->seed = sr->seed != 0 ? sr->seed : rid[0] ? cdx_xxh64(rid, strlen(rid), 0) : cdx_mix64(t_recv_us);
	if (sr->filter != NULL && sr->filter[0] != '\0')
		r->applied |= CANDEX__V1__APPLIED__APPLIED_FILTER;
	for (size_t i = 0; i < sr->n_parts; i++)
		if (sr->parts[i]->filter != NULL && sr->parts[i]->filter[0] != '\0')
			r->applied |= CANDEX__V1__APPLIED__APPLIED_FILTER;
	if (rr->max_per_group > 0)
		r->applied |= CANDEX__V1__APPLIED__APPLIED_CROWDING;
	if (rr->explore_slots > 0)
		r->applied |= CANDEX__V1__APPLIED__APPLIED_EXPLORE;
	if ((r->hits = malloc(nq * rr->k * sizeof(*r->hits))) == NULL
	    || (r->exhausted = calloc(nq, 1)) == NULL) {
		rc = fail(r, CDX_ENOMEM, "out of memory for %zu x %u results", nq, sr->k);
		goto done;
	}
	int parallel = s->cfg.parallel_batch > 0 && nq >= s->cfg.parallel_batch && idle && s->nworkers > 1;
	if (parallel) {
		/* an idle server lends every core to a big batch (search.c
		 * splits it in slices); workers otherwise stay single-threaded */
		rr->parallel = 1;
		omp_set_num_threads((int) s->nworkers);
	}
	uint64_t t_search = cdx_now_us(), waited = t_search - t_recv_us;
	rc = cdx_rec_search(rr, r->hits, r->exhausted);
	uint64_t searched = cdx_now_us() - t_search;
	/* calibrate on whole searches only, in one worker's time */
	if (rc == CDX_OK)
		took_us = CDX_MAX(searched, (uint64_t) 1) * (parallel ? s->nworkers : 1);
	if (parallel)
		omp_set_num_threads(1);
	/* the parts are searched one after another in one call: each is
	 * observed with the whole call's time */
	for (size_t i = 0; i < rr->nparts; i++)
		cdx__srv_observe_search(
		    s, cdx_collection_manifest(rr->parts[i].coll)->collection, waited, 1, searched);
	if (rc == CDX_ETIMEDOUT && atomic_load(&x->stop_by) < x->deadline_us) {
		fail(r, CDX_EUNAVAIL,
		    "server is shutting down: search stopped after %.1f ms; retry on another replica",
		    (double) searched / 1000.0);
		goto done;
	}
	if (rc == CDX_ETIMEDOUT) {
		atomic_fetch_add(&s->m.deadline_dropped, 1);
		fail(r, rc, "deadline exceeded after %.1f ms (%.1f ms of it searching); search stopped",
		    (double) (cdx_now_us() - t_recv_us) / 1000.0, (double) searched / 1000.0);
		goto done;
	}
	if (rc != CDX_OK) {
		/* a bad filter or group_by speaks for itself; anything else failed */
		fail(r, rc, "%s%s", rc == CDX_EINVAL ? "" : "search failed: ", cdx_last_error());
		goto done;
	}
	/* the exact re-run knows nothing of selections: offer plain queries only */
	int plain = r->applied == 0 && sr->n_exclude_ids == 0 && sr->n_exclude_keys == 0 && blocked == NULL;
	/* the queue's cost model knows nothing of selections either (a narrow
	 * filter widens a search 25x): it calibrates on plain searches only */
	if (!plain)
		took_us = 0;
	struct cdx_hit *plain_hits = s->online != NULL && plain ? malloc(rr->k * sizeof(*plain_hits)) : NULL;
	struct cdx_search_params plain_p = { .k = rr->k,
		.nprobe = rr->nprobe,
		.refine_factor = rr->refine_factor,
		.recall_target = rr->recall_target,
		.escalate = rr->escalate };
	for (size_t i = 0; plain_hits != NULL && i < nq; i++) {
		const struct cdx_rec_hit *h = r->hits + i * rr->k;
		uint32_t n = 0;
		for (uint32_t j = 0; j < rr->k; j++) {
			plain_hits[j] = (struct cdx_hit) { h[j].id, h[j].score, h[j].shard, h[j].row };
			n += h[j].id >= 0;
		}
		const struct cdx_manifest *m = cdx_collection_manifest(coll);
		cdx__srv_recall_offer(
		    s, coll, &plain_p, &r->parts[0].used, r->parts[0].queries + i * m->dim, plain_hits, n);
	}
	free(plain_hits);
	answer(r, x, nq, t_recv_us);
done:
	if (rc != CDX_OK) {
		took_us = 0;
		cdx__srv_reply_error(x, r->code ? r->code : rc, "%s", r->msg[0] ? r->msg : cdx_last_error());
	}
	for (size_t i = 0; i < CDX_REC_MAX_PARTS; i++) {
		cdx_collection_unref(r->res[i].coll);
		cdx_rowset_unref(r->res[i].blocked);
		free(r->res[i].ids);
		free(r->res[i].owned);
	}
	free(r->hits);
	free(r->exhausted);
	free(r);
	return took_us;
}

double
cdx__srv_rec_cost_units(cdx_server *s, const Candex__V1__SearchRequest *sr)
{
	double units = 0;
	for (size_t i = 0; i < sr->n_parts; i++) {
		const Candex__V1__CollectionPart *pp = sr->parts[i];
		cdx_collection *c = cdx__srv_lookup(s, pp->collection, NULL);
		if (c == NULL)
			continue;
		size_t nq = pp->n_vectors > 0 && pp->dim > 0 ? pp->n_vectors / pp->dim
		    : sr->dim > 0                            ? sr->n_vectors / sr->dim
		                                             : 0;
		struct cdx_search_params p = { .k = sr->k,
			.nprobe = sr->nprobe,
			.refine_factor = sr->refine_factor,
			.recall_target = sr->recall_target,
			.n_exclude_ids = pp->n_exclude_ids,
			.n_exclude_keys = pp->n_exclude_keys };
		units += cdx__srv_cost_units(c, nq, &p);
		cdx_collection_unref(c);
	}
	return units;
}

/* ---- the impression log and metrics ----------------------------------- */

int
cdx__srv_rec_start(cdx_server *s)
{
	if (s->cfg.impression_log == NULL || s->cfg.impression_log[0] == '\0')
		return CDX_OK;
	struct cdx_implog_config lc = {
		.dir = s->cfg.impression_log,
		.max_file_bytes = s->cfg.impression_log_bytes,
		.buffer_bytes = (size_t) s->cfg.impression_buffer,
	};
	int rc = cdx_implog_open(&s->implog, &lc);
	if (rc == CDX_OK)
		cdx_info("SRV-IMPLOG", "impression log in %s (files of at most %llu bytes)", lc.dir,
		    (unsigned long long) lc.max_file_bytes);
	return rc;
}

void
cdx__srv_rec_stop(cdx_server *s)
{
	cdx_implog_close(s->implog);
	s->implog = NULL;
}

void
cdx__srv_rec_metrics(cdx_server *s, cdx_buf *b)
{
	cdx_buf_printf(b,
	    "# HELP candex_widened_total Queries searched again, wider, to find k results that "
	    "pass filters, exclusions, takedowns and crowding.\n# TYPE candex_widened_total counter\n");
	cdx_buf_printf(b, "candex_widened_total %llu\n", (unsigned long long) atomic_load(&s->m.widened));
	cdx_buf_printf(b,
	    "# HELP candex_exploring_searches_total Searches with exploration slots.\n"
	    "# TYPE candex_exploring_searches_total counter\n");
	cdx_buf_printf(
	    b, "candex_exploring_searches_total %llu\n", (unsigned long long) atomic_load(&s->m.exploring));
	cdx_buf_printf(b,
	    "# HELP candex_takedown_changes_total Admin takedown changes applied.\n"
	    "# TYPE candex_takedown_changes_total counter\n");
	cdx_buf_printf(
	    b, "candex_takedown_changes_total %llu\n", (unsigned long long) atomic_load(&s->m.takedowns));
	if (s->implog == NULL)
		return;
	struct cdx_implog_stats st;
	cdx_implog_stats(s->implog, &st);
	cdx_buf_printf(b,
	    "# HELP candex_impressions_logged_total Impression records written to the log.\n"
	    "# TYPE candex_impressions_logged_total counter\n");
	cdx_buf_printf(b, "candex_impressions_logged_total %llu\n", (unsigned long long) st.written);
	cdx_buf_printf(b,
	    "# HELP candex_impressions_dropped_total Impression records dropped (the request was "
	    "answered): the buffer was full, or the write failed (disk full).\n"
	    "# TYPE candex_impressions_dropped_total counter\n");
	cdx_buf_printf(b, "candex_impressions_dropped_total{reason=\"buffer_full\"} %llu\n",
	    (unsigned long long) st.dropped_full);
	cdx_buf_printf(b, "candex_impressions_dropped_total{reason=\"write_failed\"} %llu\n",
	    (unsigned long long) st.dropped_write);
}
