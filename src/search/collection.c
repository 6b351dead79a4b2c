/*
 * collection.c — loading a published version into memory, read-only.
 *
 * Loading verifies every shard against the manifest (size, whole-file xxh64)
 * and its own part checksums before anything is served, so a corrupt or
 * half-copied version is refused and the server keeps the one it has.
 */
#define _GNU_SOURCE
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <faiss/c_api/index_io_c.h>

#include "faissx/faissx.h"
#include "search/collection_int.h"
#include "search/filter.h"
#include "faissx/error.h"

static int
key_slot_cmp(const void *a, const void *b)
{
	const struct cdx_key_slot *x = a, *y = b;
	if (x->hash != y->hash)
		return x->hash < y->hash ? -1 : 1;
	if (x->shard != y->shard)
		return x->shard < y->shard ? -1 : 1;
	return x->row < y->row ? -1 : (x->row > y->row);
}

static uint64_t
key_hash(const char *key)
{
	return cdx_xxh64(key, strlen(key), 0);
}

/* Probes whether search_preassigned works on this index type (fast-scan
 * indexes throw): one query of zeros, k = 1. */
static int
probe_preassigned(struct cdx_loaded_shard *ls, const FaissIndex *quantizer, size_t d)
{
	float *q = calloc(d, sizeof(float));
	if (q == NULL)
		return 0;
	idx_t assign = 0, label;
	float cdis = 0, dist;
	int ok = faiss_Index_search(quantizer, 1, q, 1, &cdis, &assign) == 0;
	if (ok) {
		size_t cap = faiss_IndexIVF_nprobe(ls->ivf);
		idx_t *keys = malloc(cap * sizeof(idx_t));
		float *dis = calloc(cap, sizeof(float));
		if (keys != NULL && dis != NULL) {
			for (size_t i = 0; i < cap; i++)
				keys[i] = i == 0 ? assign : -1;
			dis[0] = cdis;
			ok = faiss_IndexIVF_search_preassigned(ls->ivf, 1, q, 1, keys, dis, &dist, &label, 0)
			    == 0;
		} else {
			ok = 0;
		}
		free(keys);
		free(dis);
	}
	free(q);
	return ok;
}

static int
load_keys(struct cdx_loaded_shard *ls, const cdx_shard *s)
{
	if (cdx_shard_find_part(s, CDX_PART_KEYS) == NULL)
		return CDX_OK;
	void *data;
	size_t len;
	int rc = cdx_shard_read_part(s, CDX_PART_KEYS, &data, &len);
	if (rc != CDX_OK)
		return rc;
	rc = cdx_keys_decode(data, len, ls->rows, &ls->key_strings, &ls->key_offsets);
	free(data);
	return rc;
}

/* load_attrs reads the ATTRS part, which must be there exactly when the
 * manifest lists attributes, with the same schema. */
static int
load_attrs(struct cdx_loaded_shard *ls, const cdx_shard *s, const struct cdx_manifest *m, const char *path)
{
	int has = cdx_shard_find_part(s, CDX_PART_ATTRS) != NULL;
	if (has != (m->attrs != NULL))
		return cdx_error(CDX_ECORRUPT, "%s: %s an attributes part but the manifest %s attributes",
		    path, has ? "has" : "lacks", has ? "lists no" : "lists");
	if (!has)
		return CDX_OK;
	void *data;
	size_t len;
	int rc = cdx_shard_read_part(s, CDX_PART_ATTRS, &data, &len);
	if (rc != CDX_OK)
		return rc;
	if ((rc = cdx_attr_part_decode(data, len, ls->rows, &ls->attrs)) != CDX_OK)
		return cdx_error(rc, "%s: %s", path, cdx_last_error());
	if (!cdx_attr_schema_equal(ls->attrs.schema, m->attrs))
		return cdx_error(CDX_ECORRUPT, "%s: its attributes differ from the manifest's", path);
	return CDX_OK;
}

/* load_shard loads the manifest's shard i into position pos. */
static int
load_shard(cdx_collection *c, uint32_t pos, uint32_t i, const char *path)
{
	struct cdx_loaded_shard *ls = &c->d->shards[pos];
	const struct cdx_manifest *m = c->manifest;
	const struct cdx_manifest_shard *ms = &m->shards[i];
	cdx_shard *s = NULL;
	FILE *f = NULL;
	void *ids_data = NULL;
	size_t ids_len = 0;
	struct stat st;

	if (stat(path, &st) != 0)
		return cdx_error_errno(CDX_ENOTFOUND, "shard %s", path);
	if ((uint64_t) st.st_size != ms->bytes)
		return cdx_error(CDX_ECORRUPT, "%s: %llu bytes, manifest says %llu", path,
		    (unsigned long long) st.st_size, (unsigned long long) ms->bytes);
	int rc = cdx_shard_open(&s, path);
	if (rc != CDX_OK)
		return rc;
	const struct cdx_shard_info *info = cdx_shard_info(s);
	if (info->dim != m->dim || (int) info->metric != m->metric || info->rows != ms->rows
	    || info->shard_index != i || info->shard_count != m->nshards) {
		rc = cdx_error(CDX_ECORRUPT,
		    "%s: header (dim %u, metric %s, rows %llu, shard %u/%u) disagrees "
		    "with the manifest",
		    path, info->dim, cdx_metric_name((int) info->metric), (unsigned long long) info->rows,
		    info->shard_index, info->shard_count);
		goto fail;
	}
	uint64_t file_hash;
	if ((rc = cdx_shard_verify(s, &file_hash)) != CDX_OK)
		goto fail;
	/* The manifest's whole-file hash also covers the header and any bytes
	 * between parts: a shard from another build cannot pass for this one. */
	if (file_hash != ms->xxh64) {
		rc = cdx_error(CDX_ECORRUPT, "%s: xxh64 %016llx, manifest says %016llx", path,
		    (unsigned long long) file_hash, (unsigned long long) ms->xxh64);
		goto fail;
	}
	ls->rows = info->rows;

	if ((rc = cdx_shard_open_part_stream(s, CDX_PART_FAISS, &f)) != CDX_OK)
		goto fail;
	if (faiss_read_index(f, 0, &ls->index) != 0) {
		rc = cdx_error_faiss(path);
		goto fail;
	}
	fclose(f);
	f = NULL;
	if ((uint32_t) faiss_Index_d(ls->index) != m->index_dim
	    || (uint64_t) faiss_Index_ntotal(ls->index) != ls->rows) {
		rc = cdx_error(CDX_ECORRUPT, "%s: faiss index has d=%d ntotal=%lld, expected %u and %llu",
		    path, faiss_Index_d(ls->index), (long long) faiss_Index_ntotal(ls->index), m->index_dim,
		    (unsigned long long) ls->rows);
		goto fail;
	}

	if ((rc = cdx_shard_read_part(s, CDX_PART_IDS, &ids_data, &ids_len)) != CDX_OK)
		goto fail;
	ls->ids = malloc((ls->rows ? ls->rows : 1) * sizeof(int64_t));
	if (ls->ids == NULL) {
		rc = cdx_error(CDX_ENOMEM, "%s: ids", path);
		goto fail;
	}
	if ((rc = cdx_ids_decode(ids_data, ids_len, ls->ids, ls->rows)) != CDX_OK)
		goto fail;
	if ((rc = load_keys(ls, s)) != CDX_OK)
		goto fail;
	if (cdx_shard_find_part(s, CDX_PART_REFINE) != NULL) {
		size_t len;
		if ((rc = cdx_shard_read_part(s, CDX_PART_REFINE, &ls->refine_data, &len)) != CDX_OK)
			goto fail;
		ls->refine_bytes = len;
		if ((rc = cdx_refine_store_parse(&ls->refine, ls->refine_data, len, ls->rows, m->dim))
		    != CDX_OK)
			goto fail;
	}
	if ((rc = load_attrs(ls, s, m, path)) != CDX_OK)
		goto fail;
	free(ids_data);
	cdx_shard_close(s);
	return CDX_OK;
fail:
	if (f != NULL)
		fclose(f);
	free(ids_data);
	cdx_shard_close(s);
	return rc;
}

/* add_list_sizes adds a shard's inverted-list sizes to the collection's
 * (what a probe of those lists scans: cdx_search_used.codes). */
static int
add_list_sizes(cdx_collection *c, const struct cdx_loaded_shard *ls)
{
	size_t nlist = c->d->nlist, *sizes = malloc(nlist * sizeof(size_t));
	if (c->d->list_sizes == NULL)
		c->d->list_sizes = calloc(nlist, sizeof(uint64_t));
	if (sizes == NULL || c->d->list_sizes == NULL) {
		free(sizes);
		return cdx_error(CDX_ENOMEM, "%s: list sizes", c->dir);
	}
	int frc = cdx_fx_list_sizes(ls->index, sizes, nlist);
	for (size_t l = 0; frc == 0 && l < nlist; l++)
		c->d->list_sizes[l] += sizes[l];
	free(sizes);
	return frc == 0 ? CDX_OK : cdx_error_faiss("inverted list sizes");
}

/* Makes every IVF shard ready for per-request nprobe; see search.h DESIGN. */
static int
prepare_ivf(cdx_collection *c)
{
	const struct cdx_manifest *m = c->manifest;
	int rc;
	for (uint32_t i = 0; i < c->d->nshards; i++) {
		struct cdx_loaded_shard *ls = &c->d->shards[i];
		pthread_mutex_init(&ls->lock, NULL);
		FaissIndex *inner = NULL;
		int inner_dim = 0;
		if (cdx_fx_unwrap(ls->index, &inner, &inner_dim) != 0)
			return cdx_error_faiss("unwrapping a pre-transform");
		/* The Faiss metric must fit the collection's; cosine may be either
		 * (L2 since 2026-11-28, inner product before), the same in every
		 * shard; inner product reduced to L2 is L2. */
		int want = m->metric, fm = (int) faiss_Index_metric_type(inner);
		int l2 = fm == METRIC_L2, mips = m->transform == CDX_TRANSFORM_MIPS_L2;
		if ((fm != METRIC_L2 && fm != METRIC_INNER_PRODUCT) || (want == CDX_METRIC_L2 && !l2)
		    || (want == CDX_METRIC_IP && l2 != mips) || (mips && want != CDX_METRIC_IP)
		    || (i > 0 && want == CDX_METRIC_COS && l2 != c->d->cos_from_l2))
			return cdx_error(CDX_ECORRUPT,
			    "%s: shard %u's Faiss index has metric %d, which does not fit %s (transform %s)",
			    c->dir, i, fm, cdx_metric_name(want), cdx_transform_name(m->transform));
		c->d->cos_from_l2 = want == CDX_METRIC_COS && l2;
		int pre = inner != ls->index;
		if (i == 0) {
			c->d->pre = pre ? ls->index : NULL;
			c->d->inner_dim = (uint32_t) inner_dim;
		} else if ((c->d->pre != NULL) != pre || (uint32_t) inner_dim != c->d->inner_dim) {
			return cdx_error(CDX_ECORRUPT, "%s: shards differ in their pre-transforms", c->dir);
		}
		ls->ivf = faiss_IndexIVF_cast(inner);
		ls->selector_scan = cdx_fx_selector_scan(inner);
		if ((ls->ivf == NULL) != (c->d->shards[0].ivf == NULL))
			return cdx_error(CDX_ECORRUPT, "%s: shards mix IVF and non-IVF indexes", c->dir);
		if (ls->ivf == NULL)
			continue;
		size_t nlist = faiss_IndexIVF_nlist(ls->ivf);
		if (i == 0) {
			c->d->nlist = nlist;
			c->d->nprobe_cap = CDX_MIN(nlist, (size_t) CDX_NPROBE_CAP_DEFAULT);
			c->d->quantizer = faiss_IndexIVF_quantizer(ls->ivf);
		} else if (nlist != c->d->nlist) {
			return cdx_error(CDX_ECORRUPT, "%s: shard %u has nlist %zu, shard 0 has %zu", c->dir,
			    i, nlist, c->d->nlist);
		}
		faiss_IndexIVF_set_nprobe(ls->ivf, c->d->nprobe_cap);
		if ((rc = add_list_sizes(c, ls)) != CDX_OK)
			return rc;
		/* Vectors of stored items (query by key, online recall) come from
		 * the refine store when there is one, else from the PQ codes, which
		 * needs the row -> (list, offset) direct map: 8 bytes an item. */
		if (ls->refine_data == NULL && faiss_IndexIVF_make_direct_map(ls->ivf, 1) != 0)
			return cdx_error_faiss("make_direct_map");
		ls->fastscan = cdx_fx_is_fastscan(inner);
		ls->preassigned = !ls->fastscan && probe_preassigned(ls, c->d->quantizer, c->d->inner_dim);
		/* a selector needs search_preassigned's parameters (Faiss 1.7.3's
		 * fast-scan has neither): search.c filters the others' candidates */
		ls->selector_scan = ls->selector_scan && ls->preassigned;
		if (!ls->preassigned && !ls->fastscan)
			cdx_warn("SRCH-NOPREASSIGN",
			    "%s shard %u: index type has no search_preassigned; per-request nprobe is "
			    "serialised by a lock on this shard",
			    c->dir, i);
	}
	c->d->map = (struct cdx_vector_map) {
		.metric = m->metric == CDX_METRIC_COS && !c->d->cos_from_l2 ? CDX_METRIC_IP : m->metric,
		.transform = m->transform,
		.dim = m->dim,
		.index_dim = m->index_dim,
		.max_norm2 = m->max_norm2,
	};
	return CDX_OK;
}

int
cdx__shard_view_acquire(struct cdx_loaded_shard *ls, cdx_fx_view **vp)
{
	pthread_mutex_lock(&ls->lock);
	*vp = ls->nviews > 0 ? ls->views[--ls->nviews] : NULL;
	pthread_mutex_unlock(&ls->lock);
	if (*vp == NULL && cdx_fx_view_new(ls->ivf, vp) != 0)
		return cdx_error_faiss("fast-scan search view");
	return CDX_OK;
}

void
cdx__shard_view_release(struct cdx_loaded_shard *ls, cdx_fx_view *v)
{
	pthread_mutex_lock(&ls->lock);
	if (ls->nviews == ls->views_cap) {
		size_t cap = ls->views_cap ? 2 * ls->views_cap : 4;
		cdx_fx_view **grown = realloc(ls->views, cap * sizeof(*grown));
		if (grown == NULL) { /* keep going without it */
			pthread_mutex_unlock(&ls->lock);
			cdx_fx_view_free(v);
			return;
		}
		ls->views = grown;
		ls->views_cap = cap;
	}
	ls->views[ls->nviews++] = v;
	pthread_mutex_unlock(&ls->lock);
}

/* Items are found by key through a sorted (hash, shard, row) array: 16 bytes
 * an item, no pointers, built with one sort. */
static int
build_key_index(cdx_collection *c)
{
	if (c->d->shards[0].key_strings == NULL || c->d->items == 0)
		return CDX_OK;
	c->d->key_index = malloc(c->d->items * sizeof(struct cdx_key_slot));
	if (c->d->key_index == NULL)
		return cdx_error(
		    CDX_ENOMEM, "%s: key index of %llu items", c->dir, (unsigned long long) c->d->items);
	size_t n = 0;
	for (uint32_t s = 0; s < c->d->nshards; s++) {
		const struct cdx_loaded_shard *ls = &c->d->shards[s];
		if (ls->key_strings == NULL)
			return cdx_error(
			    CDX_ECORRUPT, "%s: shard %u has no keys but shard 0 does", c->dir, s);
		for (uint64_t r = 0; r < ls->rows; r++) {
			c->d->key_index[n].hash = key_hash(ls->key_strings + ls->key_offsets[r]);
			c->d->key_index[n].shard = s;
			c->d->key_index[n].row = (uint32_t) r;
			n++;
		}
	}
	qsort(c->d->key_index, n, sizeof(*c->d->key_index), key_slot_cmp);
	return CDX_OK;
}

/* memory_bytes counts what the loaded collection holds, once it is ready
 * (direct maps are made by prepare_ivf): every Faiss index as its objects
 * hold it, ids, keys, refine stores, attributes and the key index. */
static uint64_t
memory_bytes(const struct cdx_collection_data *c)
{
	uint64_t b = (uint64_t) c->nshards * sizeof(struct cdx_loaded_shard);
	for (uint32_t i = 0; i < c->nshards; i++) {
		const struct cdx_loaded_shard *ls = &c->shards[i];
		b += cdx_fx_index_bytes(ls->index) + ls->rows * sizeof(int64_t);
		if (ls->key_strings != NULL)
			b += ls->key_offsets[ls->rows] + (ls->rows + 1) * sizeof(uint64_t);
		if (ls->refine_data != NULL)
			b += ls->refine_bytes;
		for (uint32_t j = 0; ls->attrs.schema != NULL && j < ls->attrs.schema->ncols; j++)
			b += ls->rows * cdx_attr_type_width(ls->attrs.schema->cols[j].type);
	}
	if (c->key_index != NULL)
		b += c->items * sizeof(struct cdx_key_slot);
	return b;
}

int
cdx_shard_set_parse(struct cdx_shard_set *set, const char *text)
{
	memset(set, 0, sizeof(*set));
	if (strcmp(text, "all") == 0)
		return CDX_OK;
	const char *p = text;
	for (;;) {
		char *end;
		unsigned long lo, hi;
		if (*p < '0' || *p > '9')
			goto bad;
		lo = hi = strtoul(p, &end, 10);
		if (*end == '-') {
			p = end + 1;
			if (*p < '0' || *p > '9')
				goto bad;
			hi = strtoul(p, &end, 10);
		}
		if (lo > hi || hi >= UINT32_MAX)
			goto bad;
		if (set->n == CDX_SHARD_SET_MAX)
			return cdx_error(
			    CDX_EINVAL, "shard list '%s' has more than %d ranges", text, CDX_SHARD_SET_MAX);
		set->lo[set->n] = (uint32_t) lo;
		set->hi[set->n] = (uint32_t) hi;
		set->n++;
		if (*end == '\0')
			return CDX_OK;
		if (*end != ',')
			goto bad;
		p = end + 1;
	}
bad:
	memset(set, 0, sizeof(*set));
	return cdx_error(
	    CDX_EINVAL, "shard list '%s': expected 'all' or shard numbers and ranges such as 0-3,8", text);
}

int
cdx_shard_set_has(const struct cdx_shard_set *set, uint32_t shard)
{
	if (set == NULL || set->n == 0)
		return 1;
	for (uint32_t i = 0; i < set->n; i++)
		if (shard >= set->lo[i] && shard <= set->hi[i])
			return 1;
	return 0;
}

int
cdx_collection_load(cdx_collection **cp, const char *path)
{
	return cdx_collection_load_shards(cp, path, NULL);
}

int
cdx_collection_load_shards(cdx_collection **cp, const char *path, const struct cdx_shard_set *only)
{
	*cp = NULL;
	cdx_collection *c = calloc(1, sizeof(*c));
	if (c != NULL && (c->d = calloc(1, sizeof(*c->d))) == NULL) {
		free(c);
		c = NULL;
	}
	if (c == NULL)
		return cdx_error(CDX_ENOMEM, "loading %s", path);
	atomic_init(&c->refs, 1);
	atomic_init(&c->d->refs, 1);
	int rc = cdx_version_path_resolve(path, c->dir);
	if (rc != CDX_OK)
		goto fail;
	if ((rc = cdx_manifest_load(&c->manifest, c->dir)) != CDX_OK)
		goto fail;
	const struct cdx_manifest *m = c->manifest;
	if (m->nshards == 0) {
		rc = cdx_error(CDX_ECORRUPT, "%s: manifest lists no shards", c->dir);
		goto fail;
	}
	c->d->shards = calloc(m->nshards, sizeof(*c->d->shards));
	c->d->shard_no = calloc(m->nshards, sizeof(*c->d->shard_no));
	if (c->d->shards == NULL || c->d->shard_no == NULL) {
		rc = cdx_error(CDX_ENOMEM, "%s: shards", c->dir);
		goto fail;
	}
	uint64_t want_items = 0;
	for (uint32_t i = 0; i < m->nshards; i++) {
		if (!cdx_shard_set_has(only, i))
			continue;
		char shard_path[PATH_MAX + CDX_NAME_MAX];
		uint32_t pos = c->d->nshards++;
		snprintf(shard_path, sizeof(shard_path), "%s/%s", c->dir, m->shards[i].file);
		c->d->shard_no[pos] = i;
		if ((rc = load_shard(c, pos, i, shard_path)) != CDX_OK)
			goto fail;
		c->d->items += c->d->shards[pos].rows;
		want_items += m->shards[i].rows;
	}
	if (c->d->nshards == 0) {
		rc = cdx_error(
		    CDX_ENOTFOUND, "%s: none of its %u shards is among those asked for", c->dir, m->nshards);
		goto fail;
	}
	if (c->d->nshards == m->nshards && c->d->items != m->items) {
		rc = cdx_error(CDX_ECORRUPT, "%s: shards hold %llu items, manifest says %llu", c->dir,
		    (unsigned long long) c->d->items, (unsigned long long) m->items);
		goto fail;
	}
	if (c->d->items != want_items) {
		rc = cdx_error(CDX_ECORRUPT, "%s: shards hold %llu items, manifest says %llu", c->dir,
		    (unsigned long long) c->d->items, (unsigned long long) want_items);
		goto fail;
	}
	if ((rc = prepare_ivf(c)) != CDX_OK || (rc = build_key_index(c)) != CDX_OK)
		goto fail;
	c->d->attrs = c->d->shards[0].attrs.schema;
	c->d->memory_bytes = memory_bytes(c->d);
	*cp = c;
	return CDX_OK;
fail:
	cdx_collection_unref(c);
	return rc;
}

int
cdx_collection_from_index(cdx_collection **cp, struct cdx_manifest *m, FaissIndex *index)
{
	*cp = NULL;
	cdx_collection *c = calloc(1, sizeof(*c));
	if (c != NULL && (c->d = calloc(1, sizeof(*c->d))) == NULL) {
		free(c);
		c = NULL;
	}
	if (c == NULL) {
		faiss_Index_free(index);
		cdx_manifest_free(m);
		return cdx_error(CDX_ENOMEM, "in-memory collection");
	}
	atomic_init(&c->refs, 1);
	atomic_init(&c->d->refs, 1);
	snprintf(c->dir, sizeof(c->dir), "(in memory: %s)", m->collection);
	c->manifest = m;
	c->d->nshards = 1;
	int rc = CDX_OK;
	if ((c->d->shards = calloc(1, sizeof(*c->d->shards))) == NULL
	    || (c->d->shard_no = calloc(1, sizeof(*c->d->shard_no))) == NULL) {
		faiss_Index_free(index);
		rc = cdx_error(CDX_ENOMEM, "in-memory collection");
		goto fail;
	}
	struct cdx_loaded_shard *ls = &c->d->shards[0];
	ls->index = index;
	ls->rows = (uint64_t) faiss_Index_ntotal(index);
	c->d->items = ls->rows;
	if ((ls->ids = malloc((ls->rows ? ls->rows : 1) * sizeof(int64_t))) == NULL) {
		rc = cdx_error(CDX_ENOMEM, "in-memory collection ids");
		goto fail;
	}
	for (uint64_t r = 0; r < ls->rows; r++)
		ls->ids[r] = (int64_t) r;
	if ((uint32_t) faiss_Index_d(index) != m->index_dim || m->nshards > 1 || m->items != ls->rows) {
		rc = cdx_error(CDX_EINVAL,
		    "in-memory collection: index (d=%d, %llu items) does not fit its manifest",
		    faiss_Index_d(index), (unsigned long long) ls->rows);
		goto fail;
	}
	if ((rc = prepare_ivf(c)) != CDX_OK)
		goto fail;
	c->d->memory_bytes = memory_bytes(c->d);
	*cp = c;
	return CDX_OK;
fail:
	cdx_collection_unref(c);
	return rc;
}

void
cdx_collection_ref(cdx_collection *c)
{
	atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
}

static void
data_unref(struct cdx_collection_data *d)
{
	if (d == NULL || atomic_fetch_sub_explicit(&d->refs, 1, memory_order_acq_rel) != 1)
		return;
	for (uint32_t i = 0; d->shards != NULL && i < d->nshards; i++) {
		struct cdx_loaded_shard *ls = &d->shards[i];
		if (ls->index != NULL)
			faiss_Index_free(ls->index);
		free(ls->ids);
		free(ls->key_strings);
		free(ls->key_offsets);
		free(ls->refine_data);
		cdx_attr_table_fini(&ls->attrs);
		for (size_t v = 0; v < ls->nviews; v++)
			cdx_fx_view_free(ls->views[v]);
		free(ls->views);
		pthread_mutex_destroy(&ls->lock);
	}
	free(d->shards);
	free(d->shard_no);
	free(d->key_index);
	free(d->list_sizes);
	free(d);
}

void
cdx_collection_unref(cdx_collection *c)
{
	if (c == NULL || atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) != 1)
		return;
	data_unref(c->d);
	cdx_manifest_free(c->manifest);
	free(c);
}

/* same_build: whether two manifests describe the same shard files and
 * index, so that one's loaded data can serve the other. Only what search
 * reads from the manifest besides the shards may differ: operating points,
 * defaults, the tuning report and unknown fields. */
static int
same_build(const struct cdx_manifest *a, const struct cdx_manifest *b)
{
	if (strcmp(a->collection, b->collection) != 0 || strcmp(a->version, b->version) != 0
	    || a->metric != b->metric || a->dim != b->dim || a->items != b->items || a->nshards != b->nshards
	    || a->transform != b->transform || a->index_dim != b->index_dim || a->max_norm2 != b->max_norm2
	    || a->refine != b->refine)
		return 0;
	for (uint32_t i = 0; i < a->nshards; i++)
		if (strcmp(a->shards[i].file, b->shards[i].file) != 0
		    || a->shards[i].bytes != b->shards[i].bytes || a->shards[i].xxh64 != b->shards[i].xxh64)
			return 0;
	return 1;
}

int
cdx_collection_with_manifest(cdx_collection **cp, cdx_collection *old)
{
	*cp = NULL;
	struct cdx_manifest *m = NULL;
	int rc = cdx_manifest_load(&m, old->dir);
	if (rc != CDX_OK)
		return rc;
	if (!same_build(old->manifest, m)) {
		cdx_manifest_free(m);
		return cdx_error(CDX_ECORRUPT,
		    "%s: manifest.json now describes other shards or another index than the loaded "
		    "version (a published version never changes but for its operating points)",
		    old->dir);
	}
	cdx_collection *c = calloc(1, sizeof(*c));
	if (c == NULL) {
		cdx_manifest_free(m);
		return cdx_error(CDX_ENOMEM, "%s", old->dir);
	}
	atomic_init(&c->refs, 1);
	memcpy(c->dir, old->dir, sizeof(c->dir));
	c->manifest = m;
	c->d = old->d;
	atomic_fetch_add_explicit(&c->d->refs, 1, memory_order_relaxed);
	*cp = c;
	return CDX_OK;
}

const struct cdx_manifest *
cdx_collection_manifest(const cdx_collection *c)
{
	return c->manifest;
}

const char *
cdx_collection_dir(const cdx_collection *c)
{
	return c->dir;
}

uint64_t
cdx_collection_memory_bytes(const cdx_collection *c)
{
	return c->d->memory_bytes;
}

const char *
cdx_collection_key(const cdx_collection *c, uint32_t shard, uint32_t row)
{
	if (shard >= c->d->nshards || row >= c->d->shards[shard].rows
	    || c->d->shards[shard].key_strings == NULL)
		return "";
	const struct cdx_loaded_shard *ls = &c->d->shards[shard];
	return ls->key_strings + ls->key_offsets[row];
}

int
cdx_collection_find_key(const cdx_collection *c, const char *key, uint32_t *shard, uint32_t *row, int64_t *id)
{
	if (c->d->key_index == NULL)
		return cdx_error(CDX_ENOTFOUND, "collection %s has no keys", c->manifest->collection);
	uint64_t h = key_hash(key);
	size_t lo = 0, hi = c->d->items;
	while (lo < hi) { /* first slot with hash >= h */
		size_t mid = lo + (hi - lo) / 2;
		if (c->d->key_index[mid].hash < h)
			lo = mid + 1;
		else
			hi = mid;
	}
	for (; lo < c->d->items && c->d->key_index[lo].hash == h; lo++) {
		const struct cdx_key_slot *s = &c->d->key_index[lo];
		if (strcmp(cdx_collection_key(c, s->shard, s->row), key) == 0) {
			*shard = s->shard;
			*row = s->row;
			if (id != NULL)
				*id = c->d->shards[s->shard].ids[s->row];
			return CDX_OK;
		}
	}
	return cdx_error(CDX_ENOTFOUND, "key '%s' not in collection %s", key, c->manifest->collection);
}

uint32_t
cdx_collection_shards(const cdx_collection *c, const uint32_t **numbers)
{
	if (numbers != NULL)
		*numbers = c->d->shard_no;
	return c->d->nshards;
}

uint64_t
cdx_collection_shard_rows(const cdx_collection *c, uint32_t shard)
{
	return shard < c->d->nshards ? c->d->shards[shard].rows : 0;
}

uint64_t
cdx_collection_items_loaded(const cdx_collection *c)
{
	return c->d->items;
}

int
cdx_collection_find_id(const cdx_collection *c, int64_t id, uint32_t *shard, uint32_t *row)
{
	/* Items go to shard mix64(id) % nshards (see build), so one shard is scanned. */
	uint32_t no = (uint32_t) (cdx_mix64((uint64_t) id) % c->manifest->nshards), s = 0;
	while (s < c->d->nshards && c->d->shard_no[s] != no)
		s++;
	if (s == c->d->nshards)
		return cdx_error(CDX_ENOTFOUND, "id %lld is in shard %u of collection %s, not loaded here",
		    (long long) id, no, c->manifest->collection);
	const struct cdx_loaded_shard *ls = &c->d->shards[s];
	for (uint64_t r = 0; r < ls->rows; r++) {
		if (ls->ids[r] == id) {
			*shard = s;
			*row = (uint32_t) r;
			return CDX_OK;
		}
	}
	return cdx_error(
	    CDX_ENOTFOUND, "id %lld not in collection %s", (long long) id, c->manifest->collection);
}

int
cdx_collection_vector(const cdx_collection *c, uint32_t shard, uint32_t row, float *out)
{
	if (shard >= c->d->nshards || row >= c->d->shards[shard].rows)
		return cdx_error(CDX_EINVAL, "no item at shard %u row %u", shard, row);
	const struct cdx_loaded_shard *ls = &c->d->shards[shard];
	if (ls->refine_data != NULL) {
		cdx_refine_decode(&ls->refine, row, out);
		return CDX_OK;
	}
	/* IVF: prepare_ivf() made a direct map (row -> list, offset) at load.
	 * The outer index undoes any pre-transform; the first dim coordinates
	 * of an index vector are the item's (transform.h). */
	uint32_t di = c->manifest->index_dim;
	if (di == c->manifest->dim)
		return faiss_Index_reconstruct(ls->index, row, out) != 0 ? cdx_error_faiss("reconstruct")
		                                                         : CDX_OK;
	float *t = malloc(di * sizeof(float));
	if (t == NULL)
		return cdx_error(CDX_ENOMEM, "reconstruct");
	int frc = faiss_Index_reconstruct(ls->index, row, t);
	if (frc == 0)
		memcpy(out, t, c->manifest->dim * sizeof(float));
	free(t);
	return frc != 0 ? cdx_error_faiss("reconstruct") : CDX_OK;
}

const struct cdx_attr_schema *
cdx_collection_attrs(const cdx_collection *c)
{
	return c->d->attrs;
}

int64_t
cdx_collection_id(const cdx_collection *c, uint32_t shard, uint32_t row)
{
	return c->d->shards[shard].ids[row];
}

int
cdx_collection_filter_ids(const cdx_collection *c, const char *filter, int64_t **idsp, size_t *np)
{
	*idsp = NULL;
	*np = 0;
	cdx_filter *f = NULL;
	int rc = cdx_filter_compile(&f, filter, c->d->attrs);
	if (rc != CDX_OK)
		return rc;
	int64_t *ids = malloc((c->d->items ? c->d->items : 1) * sizeof(int64_t));
	if (ids == NULL) {
		cdx_filter_free(f);
		return cdx_error(CDX_ENOMEM, "ids of %llu items", (unsigned long long) c->d->items);
	}
	size_t n = 0;
	for (uint32_t s = 0; s < c->d->nshards; s++) {
		const struct cdx_loaded_shard *ls = &c->d->shards[s];
		for (uint64_t r = 0; r < ls->rows; r++)
			if (cdx_filter_match(f, &ls->attrs, r))
				ids[n++] = ls->ids[r];
	}
	cdx_filter_free(f);
	*idsp = ids;
	*np = n;
	return CDX_OK;
}
