/*
 * collection_int.h — the insides of a loaded collection, shared by
 * collection.c (loading) and search.c (searching). Not a public interface.
 */
#ifndef CANDEX_COLLECTION_INT_H
#define CANDEX_COLLECTION_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include <faiss/c_api/IndexIVF_c.h>
#include <faiss/c_api/Index_c.h>

#include "faissx/faissx.h"
#include "search/search.h"
#include "shard/attrs.h"
#include "shard/refine.h"
#include "shard/transform.h"

struct cdx_loaded_shard {
	FaissIndex *index;    /* owned; labels are shard-local rows */
	FaissIndexIVF *ivf;   /* the IVF inside index (behind its pre-transform, if any), or NULL */
	int preassigned;      /* 1: per-request nprobe via search_preassigned */
	int fastscan;         /* 1: a fast-scan IVF-PQ, searched through views (faissx.h) */
	pthread_mutex_t lock; /* !preassigned, !fastscan IVF indexes (nprobe is set per call); the views */
	cdx_fx_view **views;  /* fast-scan: idle views, nviews of them (one per concurrent search at most) */
	size_t nviews, views_cap;
	uint64_t rows;
	int64_t *ids;          /* rows external ids */
	char *key_strings;     /* NUL-terminated keys, or NULL */
	uint64_t *key_offsets; /* rows + 1 offsets into key_strings */
	void *refine_data;     /* decompressed REFINE part, or NULL */
	size_t refine_bytes;   /* its size */
	struct cdx_refine_store refine;
	struct cdx_attr_table attrs; /* the ATTRS part (schema NULL: none) */
	int selector_scan;           /* 1: the scan applies a row selector (filters inside the scan) */
};

/* An entry of the key index: sorted by hash, then resolved by comparing strings. */
struct cdx_key_slot {
	uint64_t hash;
	uint32_t shard;
	uint32_t row;
};

/* What loading a version built: shared, read-only, by every collection
 * object made from it (a points-only reload makes a new cdx_collection with
 * a new manifest over the same data; see cdx_collection_with_manifest). */
struct cdx_collection_data {
	atomic_long refs;
	uint32_t nshards; /* loaded shards: all of the manifest's, or the --shards subset */
	struct cdx_loaded_shard *shards;
	uint32_t *shard_no;          /* nshards: each loaded shard's number in the manifest, ascending */
	const FaissIndex *quantizer; /* the first shard's coarse quantizer, shared by all shards */
	size_t nlist;
	size_t nprobe_cap;              /* every IVF shard's nprobe field, fixed at load */
	struct cdx_key_slot *key_index; /* items slots sorted by hash, or NULL */
	uint64_t items;
	uint64_t memory_bytes;
	/* a cosine collection indexed as L2 over unit vectors (builds since
	 * 2026-11-28; older ones are inner product): Faiss distances d become
	 * cosine scores 1 - d/2 */
	int cos_from_l2;
	/* queries as the index holds vectors (shard/transform.h); for older
	 * inner-product cosine builds map.metric is ip, whose scores are d */
	struct cdx_vector_map map;
	const FaissIndex *pre; /* shard 0's index if it is an IndexPreTransform (PCA), else NULL */
	uint64_t *list_sizes;  /* nlist: items in each inverted list, summed over shards */
	uint32_t inner_dim;    /* dimension of the IVF behind the pre-transform (index_dim if none) */
	const struct cdx_attr_schema *attrs; /* shard 0's attribute schema (all equal), or NULL */
};

struct cdx_collection {
	atomic_long refs;
	char dir[4096];
	struct cdx_manifest *manifest;
	struct cdx_collection_data *d; /* one reference */
};

/* cdx__shard_view_acquire sets *vp to an idle view of a fast-scan shard
 * (made on first need); give it back with cdx__shard_view_release. */
int cdx__shard_view_acquire(struct cdx_loaded_shard *ls, cdx_fx_view **vp);
void cdx__shard_view_release(struct cdx_loaded_shard *ls, cdx_fx_view *v);

/* Upper bound on per-request nprobe: the assignment arrays passed to
 * search_preassigned have this stride, padded with -1. */
#define CDX_NPROBE_CAP_DEFAULT 2048

#endif
