/*
 * search.h — a loaded collection version and per-request search over it.
 *
 * DESIGN
 * A cdx_collection is immutable once loaded and shared read-only by every
 * request thread; reloads load a new one and swap a pointer (server/). It is
 * reference-counted: the last cdx_collection_unref() frees it.
 *
 * Per-request nprobe without shared mutable state: Faiss 1.7.3's nprobe is a
 * field of the index and its C API has no per-call parameters. At load time
 * every IVF shard's nprobe is set once to nlist (never changed afterwards).
 * A search runs the shared coarse quantizer itself (k = request nprobe), pads
 * the assignment rows to nlist entries with -1, which
 * IndexIVF::search_preassigned skips, and calls faiss_IndexIVF_search_preassigned
 * on each shard. All shards share one quantizer, so coarse assignment happens
 * once per query for all shards. Fast-scan IVF-PQ shards (4-bit codes in
 * SIMD blocks) have no search_preassigned and read nprobe from the index:
 * each search borrows a view (src/faissx: a small copy of the index object
 * sharing its lists, whose quantizer hands back the assignment already
 * computed) from the shard's pool of idle views and sets the view's nprobe.
 * Non-IVF indexes (flat fallback) need no nprobe and use faiss_Index_search,
 * which is const.
 *
 * Scores: l2 = squared distance (lower is better); ip and cos = inner
 * product of (normalised, for cos) vectors (higher is better). Merging across
 * shards, exclusion and refine all compare through cdx_metric_higher_is_better.
 */
#ifndef CANDEX_SEARCH_H
#define CANDEX_SEARCH_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <faiss/c_api/Index_c.h>

#include "shard/manifest.h"

typedef struct cdx_collection cdx_collection;

/* cdx_collection_load loads a version directory (any path accepted by
 * cdx_version_path_resolve), verifying every shard's checksums against the
 * manifest. On success *cp is set with one reference owned by the caller. */
int cdx_collection_load(cdx_collection **cp, const char *path);
/* A set of shard numbers, as `candex serve --shards` names them: which
 * shards of a collection one process loads (a shard group). n == 0 means
 * every shard. */
#define CDX_SHARD_SET_MAX 64
struct cdx_shard_set {
	uint32_t n;
	uint32_t lo[CDX_SHARD_SET_MAX], hi[CDX_SHARD_SET_MAX]; /* inclusive ranges */
};
/* cdx_shard_set_parse reads "all" or a comma-separated list of shard
 * numbers and ranges ("0-3,8"). CDX_EINVAL with cdx_error() set if bad. */
int cdx_shard_set_parse(struct cdx_shard_set *set, const char *text);
/* cdx_shard_set_has: whether shard is in set (NULL = every shard). */
int cdx_shard_set_has(const struct cdx_shard_set *set, uint32_t shard);

/* cdx_collection_load_shards is cdx_collection_load for the shards of the
 * version that are in only (NULL = all): what a shard group's server holds.
 * Searches then cover those shards alone, and shard positions (cdx_hit.shard,
 * cdx_collection_key, cdx_collection_vector) count loaded shards only;
 * cdx_collection_shards maps them to the manifest's numbers. CDX_ENOTFOUND
 * when the version has none of them. */
int cdx_collection_load_shards(cdx_collection **cp, const char *path, const struct cdx_shard_set *only);
/* cdx_collection_shards returns how many shards are loaded and, if numbers
 * is not NULL, points it at their manifest shard numbers, ascending (valid
 * while c is referenced). */
uint32_t cdx_collection_shards(const cdx_collection *c, const uint32_t **numbers);
/* cdx_collection_shard_rows: items of the loaded shard at position shard. */
uint64_t cdx_collection_shard_rows(const cdx_collection *c, uint32_t shard);
/* cdx_collection_items_loaded: items in the loaded shards (the manifest's
 * items when every shard is loaded). */
uint64_t cdx_collection_items_loaded(const cdx_collection *c);

/* cdx_collection_from_index makes a collection of one shard over index
 * (ids are row numbers; no keys, no refine store) with manifest m: the
 * self-tuning build searches its candidates through the server's own code
 * this way. Takes ownership of m and index, even on failure; m->items,
 * m->index_dim and m->nshards (1) must fit the index. */
int cdx_collection_from_index(cdx_collection **cp, struct cdx_manifest *m, FaissIndex *index);
void cdx_collection_ref(cdx_collection *c);
/* cdx_collection_with_manifest re-reads old's manifest.json and, if it
 * still describes the same shards and index (only operating points,
 * defaults or the tuning report changed, as `candex recall --save` does),
 * sets *cp to a new collection with that manifest over old's loaded data
 * (shared, not copied). CDX_ECORRUPT if anything else changed. */
int cdx_collection_with_manifest(cdx_collection **cp, cdx_collection *old);
void cdx_collection_unref(cdx_collection *c); /* NULL is a no-op */

const struct cdx_manifest *cdx_collection_manifest(const cdx_collection *c);
const char *cdx_collection_dir(const cdx_collection *c);       /* the version directory */
uint64_t cdx_collection_memory_bytes(const cdx_collection *c); /* approx. resident size */

/* What a search used, for the response and the metrics. */
struct cdx_search_used {
	uint32_t nprobe;        /* lists probed (0: not an IVF index) */
	float refine_factor;    /* 0: no re-ranking */
	uint32_t candidates;    /* fetched per shard and query (re-ranked when refining) */
	uint64_t codes;         /* codes scanned in the inverted lists probed, all queries */
	float recall_target;    /* the target wanted (request or collection default), 0 = none */
	double expected_recall; /* the operating point's measured recall, 0 = unknown */
	int target_unmet;       /* a target was wanted and no measured point reaches it */
	uint32_t rung, rungs;   /* the operating point used, of how many at its k */
	uint32_t widened;       /* queries searched again, wider, to find k results */
	double selectivity;     /* estimated share of items the filter and takedowns keep (1: none) */
};

struct cdx_rowset;

/* A request's settings. nprobe, refine_factor and recall_target choose an
 * operating point as search/points.h says. */
struct cdx_search_params {
	uint32_t k;
	uint32_t nprobe;     /* 0 = from recall_target (or the collection's default target) */
	float refine_factor; /* 0 = the point's or the manifest's default; < 1 means none */
	float recall_target; /* 0 = the collection's default_recall_target */
	uint32_t escalate;   /* operating-point rungs above the one that reaches the target */
	const int64_t *exclude_ids;
	size_t n_exclude_ids;
	const char *const *exclude_keys;
	size_t n_exclude_keys;
	int parallel;                 /* allow OpenMP threads inside this call */
	struct cdx_search_used *used; /* if not NULL, filled on success */
	/* Recommender selections (docs/recommenders.md; NULL / 0 = none). They
	 * apply inside the scan where the index type allows (search/filter.h),
	 * and a search that finds fewer than k rows that pass is widened (more
	 * candidates, then more lists) until it has k or has searched everything. */
	const char *filter;               /* on the items' attributes (search/filter.h) */
	const struct cdx_rowset *blocked; /* rows never returned (the server's takedowns) */
	uint32_t max_per_group;           /* crowding: at most this many results per group */
	const char *group_by;             /* its group attribute (NULL or "": the first group column) */
	uint8_t *exhausted; /* if not NULL, nq flags set to 1 where fewer than k rows pass at all */
	/* cdx_now_us() after which the search stops with CDX_ETIMEDOUT, checked
	 * between shards and query slices; NULL = none. Read at every check, so
	 * its owner may bring it forward while the search runs (a server that
	 * is shutting down does). */
	const atomic_uint_fast64_t *deadline_us;
};

struct cdx_hit {
	int64_t id; /* external id; -1 = no hit (fewer than k found) */
	float score;
	uint32_t shard;
	uint32_t row; /* shard-local row */
};

/* cdx_collection_search searches nq queries (nq x dim floats; normalised
 * internally for cos). hits must hold nq x k entries; query i's hits are at
 * hits[i*k], best first, padded with id -1. Validates k, dims and finiteness
 * (and the filter: CDX_EINVAL naming the problem). */
int cdx_collection_search(const cdx_collection *c, const struct cdx_search_params *p, const float *queries,
    size_t nq, struct cdx_hit *hits);

/* cdx_collection_effective_nprobe returns the nprobe a search with requested
 * (0 = default) uses: clamped to [1, min(nlist, cap)]; 0 for non-IVF indexes. */
uint32_t cdx_collection_effective_nprobe(const cdx_collection *c, uint32_t requested);
/* cdx_collection_effective_refine returns the refine factor a search with
 * requested (0 = default) uses; 0 means no re-ranking. */
float cdx_collection_effective_refine(const cdx_collection *c, float requested);
/* cdx_collection_has_refine: every shard has a refine store. */
int cdx_collection_has_refine(const cdx_collection *c);

/* cdx_collection_attrs: the version's attribute schema, or NULL. */
const struct cdx_attr_schema *cdx_collection_attrs(const cdx_collection *c);
/* cdx_collection_filter_ids sets *ids (malloc'd, *n entries, the caller
 * frees it) to the ids of every item that passes filter (search/filter.h):
 * what brute force with the same filter searches (tests, benchmarks). */
int cdx_collection_filter_ids(const cdx_collection *c, const char *filter, int64_t **ids, size_t *n);
/* cdx_collection_id returns the external id of a (shard,row). */
int64_t cdx_collection_id(const cdx_collection *c, uint32_t shard, uint32_t row);

/* cdx_collection_key returns the key of a (shard,row), or "" if the
 * collection has no keys. Valid while the collection is referenced. */
const char *cdx_collection_key(const cdx_collection *c, uint32_t shard, uint32_t row);
/* cdx_collection_find_key finds an item by key. CDX_ENOTFOUND if absent. */
int cdx_collection_find_key(
    const cdx_collection *c, const char *key, uint32_t *shard, uint32_t *row, int64_t *id);
/* cdx_collection_find_id finds an item by external id. */
int cdx_collection_find_id(const cdx_collection *c, int64_t id, uint32_t *shard, uint32_t *row);
/* cdx_collection_vector writes an item's stored vector (as indexed: normalised
 * for cos) to out[dim]: from the refine store if any, else reconstructed from
 * the PQ code. */
int cdx_collection_vector(const cdx_collection *c, uint32_t shard, uint32_t row, float *out);

#endif
