/*
 * takedown.h — a collection's takedown list: item ids and keys that must
 * never be returned, kept in DIR/<collection>/TAKEDOWNS, next to the
 * versions (so it outlives them), until a build whose input no longer
 * holds an item drops that item's entry.
 *
 * The file is text, one entry a line:
 *
 *   # candex takedowns v1
 *   id<TAB>123
 *   key<TAB>spotify:track:9
 *
 * Every change (the server's admin requests, the builder's pruning) holds
 * an exclusive flock on DIR/<collection>/TAKEDOWNS.lock while it reads the
 * file, changes it and replaces it atomically (cdx_write_file_atomic), so
 * a server and a builder, or two servers sharing the directory, never lose
 * each other's changes.
 */
#ifndef CANDEX_TAKEDOWN_H
#define CANDEX_TAKEDOWN_H

#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

#define CDX_TAKEDOWN_FILE    "TAKEDOWNS"
#define CDX_TAKEDOWN_MAX_KEY 4096

struct cdx_takedowns {
	int64_t *ids; /* ascending, unique */
	size_t nids;
	char **keys; /* strcmp order, unique */
	size_t nkeys;
};

void cdx_takedowns_fini(struct cdx_takedowns *t);

/* cdx_takedowns_load reads coll_dir's list (a missing file is an empty
 * list). Errors name the file and line. */
int cdx_takedowns_load(const char *coll_dir, struct cdx_takedowns *t);

/* A change: entries to add and to remove, and optionally a predicate that
 * keeps (1) or drops (0) each remaining entry (the builder's pruning). */
struct cdx_takedown_change {
	const int64_t *add_ids, *remove_ids;
	size_t n_add_ids, n_remove_ids;
	const char *const *add_keys;
	const char *const *remove_keys;
	size_t n_add_keys, n_remove_keys;
	int (*keep_id)(void *ctx, int64_t id);
	int (*keep_key)(void *ctx, const char *key);
	void *ctx;
};

/* cdx_takedown_key_valid: 1..CDX_TAKEDOWN_MAX_KEY bytes, no tab, newline
 * or NUL. */
int cdx_takedown_key_valid(const char *key);

/* cdx_takedowns_update applies ch to coll_dir's list under the lock and
 * saves it (only if it changed). *after (may be NULL) gets the list as
 * saved; the caller frees it with cdx_takedowns_fini(). *dropped (may be
 * NULL) counts the entries the predicates dropped. */
int cdx_takedowns_update(
    const char *coll_dir, const struct cdx_takedown_change *ch, struct cdx_takedowns *after, size_t *dropped);

/* cdx_takedowns_has_id / _has_key: membership (binary search). */
int cdx_takedowns_has_id(const struct cdx_takedowns *t, int64_t id);
int cdx_takedowns_has_key(const struct cdx_takedowns *t, const char *key);

#endif
