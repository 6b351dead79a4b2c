/*
 * manifest.h — manifest.json of a version directory, and the version layout
 * (DIR/<collection>/<version>/, DIR/<collection>/CURRENT -> <version>).
 *
 * The manifest is human-readable JSON (jansson, keys sorted, indented). It is
 * written last in a staging directory, so a version directory that has a
 * valid manifest.json is complete. Fields unknown to this version of candex
 * are preserved on load/save (extra), so later tools can add sections.
 */
#ifndef CANDEX_MANIFEST_H
#define CANDEX_MANIFEST_H

#include <stddef.h>
#include <stdint.h>

#include "shard/attrs.h"
#include "shard/shard.h"

#define CDX_MANIFEST_FORMAT_VERSION 1
#define CDX_MANIFEST_MAX_REFINE     1024 /* largest refine factor a manifest may hold */
#define CDX_MANIFEST_FILE           "manifest.json"
#define CDX_CURRENT_LINK            "CURRENT"

struct cdx_manifest_shard {
	char file[CDX_NAME_MAX]; /* relative to the version directory */
	uint64_t bytes;
	uint64_t rows;
	uint64_t xxh64; /* of the whole file; hex in JSON */
};

/* One measured operating point: the cheapest setting reaching recall_target
 * at k (k-recall@k). The points measured at one k, ordered by recall, are the
 * ladder the server climbs when online recall falls short (server.h). */
struct cdx_operating_point {
	double recall_target;
	double recall; /* measured on the queries that chose it */
	uint32_t k;
	uint32_t nprobe;
	float refine_factor;
	double p99_ms;
	/* optional (0 when unknown): */
	double recall_se;    /* standard error of recall over those queries */
	double check_recall; /* measured again on tuning queries that did not choose it */
	double qps;          /* single-thread queries per second (measured or modelled) */
};

#define CDX_MANIFEST_MAX_TUNED_K 8

struct cdx_manifest {
	uint32_t format_version;
	char collection[CDX_NAME_MAX];
	char version[CDX_NAME_MAX];
	char model_version[128];
	char factory[256];
	int metric;
	uint32_t dim;
	uint64_t items;
	uint32_t nlist; /* 0 for non-IVF (flat fallback) */
	uint32_t pq_m;  /* 0 when not PQ */
	uint32_t pq_nbits;
	uint32_t default_nprobe;
	int refine;                  /* enum cdx_refine_kind */
	float default_refine_factor; /* 0 = no re-ranking unless asked */
	uint32_t nshards;
	struct cdx_manifest_shard *shards;
	uint32_t npoints;
	struct cdx_operating_point *points;
	/* structure (optional in JSON; defaults describe older builds) */
	int transform;      /* enum cdx_transform */
	uint32_t index_dim; /* dimension Faiss indexes: dim, + 1 for MIPS_L2, + zero padding */
	double max_norm2;   /* MIPS_L2: the largest squared item norm */
	/* defaults of a request that names neither nprobe nor recall_target:
	 * the operating point for default_recall_target at the request's k, or
	 * default_nprobe when 0 or no point was measured */
	double default_recall_target;
	uint32_t ntuned_k; /* the k the points were measured at, ascending */
	uint32_t tuned_k[CDX_MANIFEST_MAX_TUNED_K];
	void *tuning; /* json_t* report of the self-tuning build, or NULL; owned */
	/* item attributes (attrs.h), or NULL when the build had none; owned */
	struct cdx_attr_schema *attrs;
	/* build provenance */
	uint64_t seed;
	uint64_t train_sample;
	char input_path[512];
	uint64_t input_bytes;
	uint64_t input_fingerprint; /* xxh64 of the input vectors as read */
	char created[32];           /* ISO 8601 UTC */
	char candex_version[32];
	void *extra; /* json_t* of unknown top-level fields; owned */
};

/* cdx_manifest_load parses DIR/manifest.json of a version directory. On
 * success *mp is set and the caller frees it with cdx_manifest_free(). */
int cdx_manifest_load(struct cdx_manifest **mp, const char *version_dir);
/* cdx_manifest_parse is cdx_manifest_load on the text of a manifest; path
 * only names it in error messages. */
int cdx_manifest_parse(struct cdx_manifest **mp, const char *text, size_t len, const char *path);
/* cdx_manifest_save writes version_dir/manifest.json atomically and durably. */
int cdx_manifest_save(const struct cdx_manifest *m, const char *version_dir);
/* cdx_manifest_to_json returns a malloc'd JSON text (for inspect / info). */
char *cdx_manifest_to_json(const struct cdx_manifest *m);
void cdx_manifest_free(struct cdx_manifest *m); /* NULL is a no-op */

/* cdx_points_to_json returns a new json_t* array of operating points, as
 * the manifest holds them (the build plan stores them the same way).
 * cdx_points_from_json parses one (what names it in errors); on success
 * *points is malloc'd (n entries) and the caller frees it. */
void *cdx_points_to_json(const struct cdx_operating_point *points, uint32_t n);
int cdx_points_from_json(
    const void *json, const char *what, struct cdx_operating_point **points, uint32_t *n);

/* cdx_name_valid: collection and version names are [A-Za-z0-9_.-]{1,63},
 * not starting with '.', so they are safe as path components. */
int cdx_name_valid(const char *name);

/* cdx_version_resolve reads collection_dir/CURRENT and writes the version
 * name into version (CDX_NAME_MAX bytes). CDX_ENOTFOUND if none published. */
int cdx_version_resolve(const char *collection_dir, char *version);
/* cdx_version_publish atomically points collection_dir/CURRENT at version
 * (which must be a complete directory there) and fsyncs the directory. */
int cdx_version_publish(const char *collection_dir, const char *version);
/* cdx_version_gc removes all but the newest keep versions (never CURRENT's)
 * and any stale staging directories. */
int cdx_version_gc(const char *collection_dir, unsigned keep);
/* cdx_version_path_resolve turns any of DIR/NAME, DIR/NAME/CURRENT or
 * DIR/NAME/<version> into the real version directory path (PATH_MAX bytes). */
int cdx_version_path_resolve(const char *path, char *version_dir);
/* cdx_version_staging_name writes ".staging-<pid>-<version>" into out: the
 * directory name (inside the collection directory) a builder fills before
 * renaming it to <version>. gc recognises the pid and removes the staging
 * directories of dead builders (and any older than a day). */
int cdx_version_staging_name(char *out, size_t cap, const char *version);

#endif
