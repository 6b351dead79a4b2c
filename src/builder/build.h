/*
 * build.h — the index builder: read embeddings, choose parameters, train
 * one IVF-PQ index on a sample, encode the items into shard files and
 * publish them as a new version of a collection.
 *
 * DESIGN
 * A build is three steps that can run in one process (cdx_build_run) or
 * apart, as separate jobs sharing a work directory:
 *
 *   train    reads a deterministic sample of the input (seeded), trains the
 *            Faiss index once and writes WORKDIR/plan.json (every parameter
 *            the later steps need) and WORKDIR/trained.faissindex.
 *   encode   (one job per shard) streams the WHOLE input through mmap in
 *            fixed-size chunks, validates and fingerprints every row, adds
 *            the rows that belong to its shard (cdx_mix64(id) % nshards) to
 *            a copy of the trained index and writes one shard file. Every
 *            shard thus sees the same input fingerprint, which publish
 *            compares, so an input that changed between jobs is caught.
 *   publish  links (or, across file systems, copies) the shards into
 *            DIR/NAME/.staging-<pid>-<version>/, leaving the work directory
 *            whole so that a failed publish can be retried; re-opens and
 *            verifies each, writes manifest.json, renames the staging
 *            directory to DIR/NAME/<version>, swaps CURRENT and
 *            garbage-collects old versions. (The one-process build encodes
 *            straight into the staging directory.)
 *
 * Memory: the input is mapped and processed in CDX_BUILD_CHUNK_BYTES
 * chunks whose pages are dropped (MADV_DONTNEED) once used, so peak RSS is
 * the index being built (one shard at a time) plus the training sample
 * (train step only) plus a few chunk-sized buffers, whatever the input size.
 *
 * Nothing under DIR/NAME changes until the final rename; any error removes
 * the staging directory, and an interrupt (SIGINT/SIGTERM, see
 * cdx_build_signals_start) does the same before exiting.
 */
#ifndef CANDEX_BUILD_H
#define CANDEX_BUILD_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>

#include <faiss/c_api/Index_c.h>

#include "input/input.h"
#include "shard/manifest.h"
#include "shard/shard.h"

#define CDX_BUILD_CHUNK_BYTES         (64u << 20) /* input processed per step */
#define CDX_BUILD_DEFAULT_SEED        1234
#define CDX_BUILD_DEFAULT_KEEP        3
#define CDX_BUILD_FLAT_BELOW          1000  /* fewer items: exact "Flat" index */
#define CDX_BUILD_8BIT_FROM           10000 /* fewer items: 4-bit PQ codebooks */
#define CDX_BUILD_MIN_POINTS_PER_LIST 39    /* Faiss k-means wants >= 39 points per centroid */

/* cdx_build_chunk_bytes: the input bytes encode processes per step,
 * CDX_BUILD_CHUNK_BYTES unless the environment sets CANDEX_BUILD_CHUNK_BYTES
 * (4096 .. 2^40; the tests use small chunks to stream a small input in many
 * steps). The chunk size does not change the output. */
size_t cdx_build_chunk_bytes(void);

/* Input files (embeddings, ids, keys) are read by src/input (input.h). */

/* --- parameters ------------------------------------------------------- */

/* What the user asked for: the CLI's options. Strings are borrowed. */
struct cdx_build_opts {
	const char *input;
	const char *collection;
	const char *out;     /* index directory DIR (the collection goes to DIR/collection) */
	const char *keys;    /* NULL: no keys */
	const char *ids;     /* NULL: ids are row numbers */
	const char *attrs;   /* NULL: no attributes */
	const char *factory; /* NULL: chosen from N and dim */
	const char *model_version;
	const char *work; /* work directory of a distributed build */
	int metric;       /* enum cdx_metric */
	uint32_t nshards; /* >= 1 */
	int refine;       /* enum cdx_refine_kind */
	uint64_t seed;
	uint32_t dim;          /* raw float32 input: required; else 0 or a check */
	int input_format;      /* CDX_INPUT_AUTO (by extension), _FVECS, _NPY or _RAW_F32 */
	uint64_t train_sample; /* 0: default */
	unsigned keep;         /* versions to keep, >= 1 */
	int threads;           /* 0: all cores */
	int quiet;             /* no progress output */
	int polysemous;        /* keep polysemous training in a user factory */
	int refine_set;        /* refine was given (else the tuner chooses it) */
	/* the self-tuning build (tune.h); off with no_tune or a factory */
	int no_tune;
	const char *tune_queries; /* NULL: held-out input rows */
	double recall_target;     /* 0: CDX_TUNE_DEFAULT_TARGET */
	uint32_t tune_k[CDX_MANIFEST_MAX_TUNED_K];
	uint32_t ntune_k; /* 0: 10, 100, 500 */
	double tune_budget_s;
	uint32_t tune_queries_max; /* 0: default */
};
void cdx_build_opts_init(struct cdx_build_opts *o); /* defaults */

/* The index parameters a build uses, chosen by cdx_build_params_choose. */
struct cdx_build_params {
	char factory[256]; /* as passed to faiss_index_factory */
	uint32_t nlist;    /* 0 when not IVF */
	uint32_t pq_m;     /* 0 when not PQ */
	uint32_t pq_nbits;
	int flat;                /* exact Flat fallback */
	uint64_t train_sample;   /* rows trained on */
	uint32_t default_nprobe; /* clamp(nlist/32, 1, 256) */
	char note[256];          /* why a fallback was chosen ("" if none) */
};

/* cdx_build_default_nlist: the power of two nearest 4*sqrt(n), clamped to
 * [16, 65536] and then down to at most n/39 (a power of two, >= 1). */
uint32_t cdx_build_default_nlist(uint64_t n);
/* cdx_build_default_pq_m: the largest divisor of dim that is <= dim/4
 * (1 for dim < 8 with no such divisor). */
uint32_t cdx_build_default_pq_m(uint32_t dim);
/* cdx_build_factory_rewrite checks a user factory string and writes the one
 * to use into out: "np" is appended to every PQ<M>[x<b>] component unless
 * polysemous (fast-scan PQ<M>x4fs[r] has none); L2norm components are
 * refused with CDX_EINVAL and a message saying why. */
int cdx_build_factory_rewrite(const char *factory, int polysemous, char *out, size_t outlen);
/* cdx_build_params_choose fills p for n rows of dim: the documented
 * defaults, or factory (if not NULL) after cdx_build_factory_rewrite.
 * nlist/M/nbits are parsed from the factory string; train_sample is
 * min(n, max(100000, 64*nlist)) unless train_sample_opt is not 0. */
int cdx_build_params_choose(struct cdx_build_params *p, uint64_t n, uint32_t dim, const char *factory,
    int polysemous, uint64_t train_sample_opt);

/* cdx_build_train_spherical trains an IVF index's coarse quantizer with
 * spherical k-means (unit centroids) on n rows of x (niter and the sample
 * cap per centroid: 0 = Faiss's defaults); Faiss's train() then sees a
 * trained quantizer and only trains the codes. Not an IVF: nothing done. */
int cdx_build_train_spherical(
    FaissIndex *index, uint64_t n, const float *x, int niter, int max_points_per_centroid);

/* cdx_build_sample picks k of n row numbers uniformly without replacement,
 * ascending, deterministically from seed (Knuth's selection sampling).
 * out holds k entries. k >= n yields every row. */
void cdx_build_sample(uint64_t n, uint64_t k, uint64_t seed, uint64_t *out);

/* cdx_build_shard_of: the shard of an item, from its external id. */
static inline uint32_t
cdx_build_shard_of(int64_t id, uint32_t nshards)
{
	return nshards <= 1 ? 0 : (uint32_t) (cdx_mix64((uint64_t) id) % nshards);
}

/* cdx_file_xxh64 reads a whole file: its size and xxh64 (seed 0), as the
 * manifest records them. */
int cdx_file_xxh64(const char *path, uint64_t *bytes, uint64_t *hash);

/* cdx_build_shard_name writes "shard-0000-of-0004.cdx". */
void cdx_build_shard_name(char out[CDX_NAME_MAX], uint32_t index, uint32_t count);

/* --- the plan: output of train, input of encode and publish ------------ */

struct cdx_tune_check;

struct cdx_build_plan {
	char plan_id[24]; /* random per train run; ties encode outputs to it */
	char collection[CDX_NAME_MAX];
	char model_version[128];
	char out[PATH_MAX]; /* index directory */
	int metric;
	uint32_t dim;
	uint64_t rows;
	char input[PATH_MAX];
	int input_format;
	uint64_t input_bytes;
	char keys[PATH_MAX]; /* "" if none */
	uint64_t keys_bytes;
	char ids[PATH_MAX]; /* "" if none */
	uint64_t ids_bytes;
	char attrs[PATH_MAX]; /* "" if none */
	uint64_t attrs_bytes;
	struct cdx_attr_schema *attrs_schema; /* owned; NULL without attributes */
	struct cdx_build_params params;
	uint32_t nshards;
	int refine;
	float *sq8_vmin, *sq8_vdiff; /* dim each, for refine sq8 */
	/* what the self-tuning build chose (tune.h); transform none, no points
	 * when it did not run */
	int transform;
	uint32_t index_dim;
	double max_norm2;
	struct cdx_operating_point *points; /* owned */
	uint32_t npoints;
	uint32_t tuned_k[CDX_MANIFEST_MAX_TUNED_K], ntuned_k;
	double default_recall_target;
	void *tuning;                 /* json_t* report; owned */
	struct cdx_tune_check *check; /* owned; only in the process that tuned */
	uint64_t seed;
	unsigned keep;
	double train_seconds;
	FaissIndex *index; /* trained; owned */
};

/* cdx_build_train runs the train step. On success *pp is set and the caller
 * frees it with cdx_build_plan_free(). */
int cdx_build_train(const struct cdx_build_opts *o, struct cdx_build_plan **pp);
/* cdx_build_plan_save writes plan.json and trained.faissindex into workdir
 * (created if needed) and removes shard outputs of any earlier plan there. */
int cdx_build_plan_save(const struct cdx_build_plan *p, const char *workdir);
/* cdx_build_plan_load reads them back (*pp as for cdx_build_train); the
 * trained index only when with_index (publish does not need it). */
int cdx_build_plan_load(struct cdx_build_plan **pp, const char *workdir, int with_index);
void cdx_build_plan_free(struct cdx_build_plan *p); /* NULL is a no-op */

/* What encoding one shard produced. */
struct cdx_encode_result {
	uint32_t shard;
	uint64_t rows;        /* items in this shard */
	uint64_t input_rows;  /* rows of the input scanned */
	uint64_t fingerprint; /* xxh64 of every input vector as read (float32) */
	double seconds;
};

/* cdx_build_encode_shard writes shard `shard` of the plan to dir/<shard name>
 * (dir must exist; an existing file of that name is an error). input may
 * override the plan's input path (NULL: the plan's), for jobs that
 * mount the input elsewhere; its size must match the plan's. The shard's
 * index is a clone of p->index, unless consume is set: then it takes
 * p->index itself (p->index becomes NULL), one trained copy fewer in
 * memory (an L2 IVF-PQ carries a precomputed table of nlist x M x 2^nbits
 * floats). */
int cdx_build_encode_shard(struct cdx_build_plan *p, uint32_t shard, const char *dir, const char *input,
    int consume, int quiet, struct cdx_encode_result *res);

/* cdx_build_publish_staged publishes a staging directory holding every shard
 * of the plan: verifies them, writes the manifest, renames the directory to
 * DIR/NAME/<version> (version as chosen by cdx_build_staging_create),
 * swaps CURRENT and runs gc. version_out (may be NULL, CDX_NAME_MAX bytes)
 * gets the version published. */
int cdx_build_publish_staged(const struct cdx_build_plan *p, const char *staging, const char *version,
    const struct cdx_encode_result *res, char *version_out);
/* cdx_build_staging_create picks a fresh version name ("v" + UTC
 * yyyymmddThhmmssZ + "-" + 4 hex digits: the millisecond x 65, plus a bump
 * past names that exist) and creates DIR/NAME/.staging-<pid>-<version>/
 * (registered for removal on interrupt).
 * staging gets PATH_MAX bytes, version CDX_NAME_MAX. */
int cdx_build_staging_create(const struct cdx_build_plan *p, char *staging, char *version);

/* cdx_build_prune_takedowns drops, from coll_dir's takedown list
 * (shard/takedown.h), the items the plan's input no longer has; publish
 * runs it once the new version is live. */
int cdx_build_prune_takedowns(const struct cdx_build_plan *p, const char *coll_dir);

/* The distributed steps, as the CLI runs them. */
int cdx_build_encode_work(const char *workdir, uint32_t shard, uint32_t of, const char *input, int quiet);
int cdx_build_publish_work(
    const char *workdir, const char *out_override, unsigned keep_override, char *version_out);

/* cdx_build_run: train + encode every shard + publish, in one process. */
int cdx_build_run(const struct cdx_build_opts *o, char *version_out);

/* --- interrupts and progress ------------------------------------------ */

/* cdx_build_signals_start handles SIGINT and SIGTERM: on either, a
 * dedicated thread removes every path registered with
 * cdx_build_cleanup_add (unless the build has already published) and
 * exits the process with status 128+signal. */
int cdx_build_signals_start(void);
void cdx_build_cleanup_add(const char *path);
void cdx_build_cleanup_remove(const char *path);
/* The publish critical section: an interrupt waits for it, and after
 * cdx_build_mark_published nothing is removed. */
void cdx_build_publish_lock(void);
void cdx_build_publish_unlock(void);
void cdx_build_mark_published(void);

/* Progress: a bar with rate and ETA on a terminal, log lines otherwise. */
struct cdx_progress {
	char what[48];
	uint64_t total, done;
	uint64_t t0, last;
	int tty, quiet, drawn;
};
void cdx_progress_begin(struct cdx_progress *pr, const char *what, uint64_t total, int quiet);
void cdx_progress_update(struct cdx_progress *pr, uint64_t done);
void cdx_progress_end(struct cdx_progress *pr);

#endif
