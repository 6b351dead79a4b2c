/*
 * takedown.c — takedowns of served collections: the admin request that
 * changes a collection's list (shard/takedown.h) and the rows it blocks in
 * the served version.
 *
 * DESIGN
 * The list lives in DIR/<collection>/TAKEDOWNS, so it survives restarts and
 * new versions. Each served entry holds the rows its list blocks in its
 * version (a cdx_rowset, built when the version loads and whenever the list
 * changes); searches skip those rows inside the scan. Changes run on the
 * reload thread, one at a time with reloads, so a reload never publishes a
 * row set built from an older list: a change saves the file, builds the new
 * rows for the version served now and swaps them into the entry under
 * set_mu before it answers, so the next request sees them.
 */
#define _GNU_SOURCE
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server/server.h"
#include "shard/takedown.h"

int
cdx__srv_takedown_rows(cdx_server *s, const char *name, const cdx_collection *c, cdx_rowset **out)
{
	char dir[PATH_MAX];
	struct cdx_takedowns t;
	*out = NULL;
	int rc = cdx_pathf(dir, sizeof(dir), "%s/%s", s->cfg.index_dir, name);
	if (rc != CDX_OK || (rc = cdx_takedowns_load(dir, &t)) != CDX_OK)
		return rc;
	if (t.nids + t.nkeys == 0)
		return CDX_OK;
	cdx_rowset *rows = NULL;
	if ((rc = cdx_rowset_alloc(&rows, c)) != CDX_OK) {
		cdx_takedowns_fini(&t);
		return rc;
	}
	/* ids: one pass over the loaded shards (the list is small, the version
	 * not); shard positions count loaded shards (--shards) */
	uint32_t nloaded = cdx_collection_shards(c, NULL);
	for (uint32_t sh = 0; t.nids > 0 && sh < nloaded; sh++)
		for (uint64_t r = 0; r < cdx_collection_shard_rows(c, sh); r++)
			if (cdx_takedowns_has_id(&t, cdx_collection_id(c, sh, (uint32_t) r)))
				cdx_rowset_add(rows, sh, (uint32_t) r);
	for (size_t i = 0; i < t.nkeys; i++) {
		uint32_t sh, r;
		if (cdx_collection_find_key(c, t.keys[i], &sh, &r, NULL) == CDX_OK)
			cdx_rowset_add(rows, sh, r);
	}
	cdx_error_clear();
	cdx_takedowns_fini(&t);
	if (rows->count == 0) {
		cdx_rowset_unref(rows);
		rows = NULL;
	}
	*out = rows;
	return CDX_OK;
}

/* swap_rows makes rows (one reference, given up) the blocked rows of the
 * served entry name, if it still serves c. */
static void
swap_rows(cdx_server *s, const char *name, const cdx_collection *c, cdx_rowset *rows)
{
	cdx_rowset *old = rows;
	pthread_mutex_lock(&s->set_mu);
	for (size_t i = 0; s->set != NULL && i < s->set->n; i++) {
		struct srv_entry *e = &s->set->e[i];
		if (strcmp(e->name, name) == 0 && e->coll == c) {
			old = e->blocked;
			e->blocked = rows;
			break;
		}
	}
	pthread_mutex_unlock(&s->set_mu);
	cdx_rowset_unref(old);
}

void
cdx__srv_takedown_apply(cdx_server *s, struct srv_ctx *ctx, const Candex__V1__TakedownRequest *tr)
{
	const char *name = tr->collection;
	char dir[PATH_MAX];
	struct cdx_takedowns after = { 0 };
	cdx_rowset *rows = NULL;
	cdx_collection *c = NULL;
	int rc;
	if (name == NULL || !cdx_name_valid(name)) {
		cdx__srv_reply_error(ctx, CDX_EINVAL, "takedown: a valid collection name is required");
		return;
	}
	/* a collection not served yet may get a list: it applies once it loads */
	rc = cdx_pathf(dir, sizeof(dir), "%s/%s", s->cfg.index_dir, name);
	if (rc == CDX_OK && access(dir, F_OK) != 0)
		rc = cdx_error(CDX_ENOTFOUND, "no collection '%s' in %s", name, s->cfg.index_dir);
	struct cdx_takedown_change ch = {
		.add_ids = tr->add_ids,
		.n_add_ids = tr->n_add_ids,
		.remove_ids = tr->remove_ids,
		.n_remove_ids = tr->n_remove_ids,
		.add_keys = (const char *const *) tr->add_keys,
		.n_add_keys = tr->n_add_keys,
		.remove_keys = (const char *const *) tr->remove_keys,
		.n_remove_keys = tr->n_remove_keys,
	};
	if (rc == CDX_OK)
		rc = cdx_takedowns_update(dir, &ch, &after, NULL);
	if (rc == CDX_OK && (c = cdx__srv_lookup(s, name, NULL)) != NULL
	    && (rc = cdx__srv_takedown_rows(s, name, c, &rows)) == CDX_OK) {
		if (rows != NULL)
			cdx_rowset_ref(rows); /* one for the entry, one kept for the answer */
		swap_rows(s, name, c, rows);
	}
	if (rc == CDX_OK) /* a version kept for pinned requests (--keep-previous) too */
		cdx__srv_previous_takedowns(s, name);
	if (rc != CDX_OK) {
		cdx_warn("SRV-TAKEDOWN-FAIL", "collection %s: %s", name, cdx_last_error());
		cdx__srv_reply_error(ctx, rc, "takedown: %s", cdx_last_error());
	} else {
		atomic_fetch_add(&s->m.takedowns, 1);
		cdx_info("SRV-TAKEDOWN",
		    "collection %s: +%zu/-%zu ids, +%zu/-%zu keys: %zu ids and %zu keys listed, %llu served "
		    "items "
		    "blocked",
		    name, tr->n_add_ids, tr->n_remove_ids, tr->n_add_keys, tr->n_remove_keys, after.nids,
		    after.nkeys, (unsigned long long) (rows ? rows->count : 0));
		Candex__V1__Response resp = CANDEX__V1__RESPONSE__INIT;
		Candex__V1__TakedownResponse out = CANDEX__V1__TAKEDOWN_RESPONSE__INIT;
		out.n_ids = after.nids;
		out.ids = after.ids;
		out.n_keys = after.nkeys;
		out.keys = after.keys;
		out.blocked_items = rows ? rows->count : 0;
		resp.body_case = CANDEX__V1__RESPONSE__BODY_TAKEDOWN;
		resp.takedown = &out;
		cdx__srv_send(ctx, &resp);
	}
	cdx_rowset_unref(rows);
	cdx_collection_unref(c);
	cdx_takedowns_fini(&after);
}
