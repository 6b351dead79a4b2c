/*
 * groups.c — what a server needs to serve as one shard group behind
 * `candex route` (docs/router.md): the --shards selection, the previous
 * version kept for requests pinned to it, and what each answer covers.
 *
 * DESIGN
 * Shards. `--shards 0-3` loads shards 0..3 of every collection (a collection
 * with fewer shards: those it has; with none of them: not served here), and
 * `--shards 'tracks:4-7;podcasts:none'` chooses per collection. Searches
 * then cover the loaded shards, and every SearchResponse says which shards
 * and how many of the version's items it searched (coverage), so that a
 * router adds the groups up and a client of one group is never misled.
 *
 * Version pins. A router asks every group for one version
 * (SearchRequest.index_version) and never merges two. During a rolling
 * reload some groups have moved to v2 while others still serve v1, so a
 * group that has moved must still answer for v1: with --keep-previous S,
 * the version a reload replaces stays loaded (one per collection) until no
 * request has named it for S seconds. Expiry is lazy, checked when a pinned
 * request or an info request looks: no thread of its own, and a quiet
 * server keeps it until then. Memory is that of two versions during the
 * transition, which any reload needs anyway (the new version loads before
 * the old one goes).
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "wire/wire.h"
#include "server/server.h"

/* A replaced version kept for requests that name it. */
struct srv_previous {
	char name[CDX_NAME_MAX];
	cdx_collection *coll; /* one reference */
	cdx_rowset *blocked;  /* its takedowns' rows, one reference; NULL = none */
	uint64_t used_ms;     /* monotonic: last request that named it, or when it was replaced */
};

int
cdx__srv_shards_for(const char *spec, const char *name, struct cdx_shard_set *set, int *serve)
{
	char *copy, *save = NULL;
	int rc = CDX_OK, named = 0;

	memset(set, 0, sizeof(*set));
	*serve = 1;
	if (spec == NULL || *spec == '\0')
		return CDX_OK;
	if ((copy = strdup(spec)) == NULL)
		return cdx_error(CDX_ENOMEM, "out of memory");
	for (char *item = strtok_r(copy, ";", &save); item != NULL; item = strtok_r(NULL, ";", &save)) {
		while (*item == ' ')
			item++;
		char *colon = strchr(item, ':'), *list = item;
		const char *who = NULL;
		if (colon != NULL) {
			*colon = '\0';
			who = item;
			list = colon + 1;
			if (!cdx_name_valid(who)) {
				rc = cdx_error(
				    CDX_EINVAL, "--shards '%s': '%s' is not a collection name", spec, who);
				break;
			}
		}
		/* a collection's own entry wins over the entry for all of them */
		int applies = name != NULL && (who == NULL ? !named : strcmp(who, name) == 0);
		struct cdx_shard_set parsed;
		int none = strcmp(list, "none") == 0;
		if (!none && cdx_shard_set_parse(&parsed, list) != CDX_OK) {
			rc = cdx_error(CDX_EINVAL, "--shards '%s': %s", spec, cdx_last_error());
			break;
		}
		if (applies) {
			*serve = !none;
			if (!none)
				*set = parsed;
			named |= who != NULL;
		}
	}
	free(copy);
	return rc;
}

int
cdx__srv_wants(cdx_server *s, const char *name, const char *vdir, struct cdx_shard_set *set)
{
	int serve;
	if (cdx__srv_shards_for(s->cfg.shards, name, set, &serve) != CDX_OK || !serve)
		return 0;
	if (set->n == 0)
		return 1;
	/* Does this version have any of our shards? (A version with fewer shards
	 * than an earlier one may have none left for this group.) A manifest
	 * that cannot be read is the load's to report. */
	struct cdx_manifest *m = NULL;
	if (cdx_manifest_load(&m, vdir) != CDX_OK) {
		cdx_error_clear();
		return 1;
	}
	int any = 0;
	for (uint32_t i = 0; i < m->nshards && !any; i++)
		any = cdx_shard_set_has(set, i);
	cdx_manifest_free(m);
	return any;
}

/* drop_idle_locked removes the previous versions no request has named for
 * --keep-previous seconds; their references go to *dropped (set_mu held). */
static size_t
drop_idle_locked(cdx_server *s, struct srv_previous *dropped, size_t max)
{
	uint64_t now = cdx_now_us() / 1000, keep = (uint64_t) (s->cfg.keep_previous * 1000);
	size_t n = 0;
	for (size_t i = 0; i < s->nprev && n < max;) {
		if (now - s->prev[i].used_ms >= keep) {
			cdx_info("SRV-PREV-DROP", "collection %s: version %s no longer asked for; freed",
			    s->prev[i].name, cdx_collection_manifest(s->prev[i].coll)->version);
			dropped[n++] = s->prev[i];
			s->prev[i] = s->prev[--s->nprev];
		} else {
			i++;
		}
	}
	return n;
}

/* drop_idle drops idle previous versions; freeing happens outside set_mu. */
static void
drop_idle(cdx_server *s)
{
	struct srv_previous dropped[16];
	size_t n;
	do {
		pthread_mutex_lock(&s->set_mu);
		n = drop_idle_locked(s, dropped, CDX_ARRAY_LEN(dropped));
		pthread_mutex_unlock(&s->set_mu);
		for (size_t i = 0; i < n; i++) {
			cdx_collection_unref(dropped[i].coll);
			cdx_rowset_unref(dropped[i].blocked);
		}
	} while (n == CDX_ARRAY_LEN(dropped));
}

void
cdx__srv_previous_keep(cdx_server *s, const char *name, cdx_collection *old, cdx_rowset *old_blocked)
{
	if (s->cfg.keep_previous <= 0)
		return;
	cdx_collection *gone = NULL;
	cdx_rowset *gone_blocked = NULL;
	cdx_collection_ref(old);
	if (old_blocked != NULL)
		cdx_rowset_ref(old_blocked);
	pthread_mutex_lock(&s->set_mu);
	size_t i = 0;
	while (i < s->nprev && strcmp(s->prev[i].name, name) != 0)
		i++;
	if (i == s->nprev) {
		struct srv_previous *grown = realloc(s->prev, (s->nprev + 1) * sizeof(*grown));
		if (grown == NULL) {
			pthread_mutex_unlock(&s->set_mu);
			cdx_collection_unref(old);
			cdx_rowset_unref(old_blocked);
			cdx_warn(
			    "SRV-PREV", "collection %s: out of memory keeping the previous version", name);
			return;
		}
		s->prev = grown;
		s->nprev++;
	} else {
		gone = s->prev[i].coll;
		gone_blocked = s->prev[i].blocked;
	}
	snprintf(s->prev[i].name, sizeof(s->prev[i].name), "%s", name);
	s->prev[i].coll = old;
	s->prev[i].blocked = old_blocked;
	s->prev[i].used_ms = cdx_now_us() / 1000;
	pthread_mutex_unlock(&s->set_mu);
	cdx_info("SRV-PREV",
	    "collection %s: version %s stays loaded for requests that name it (until none has for %g s)",
	    name, cdx_collection_manifest(old)->version, s->cfg.keep_previous);
	cdx_collection_unref(gone);
	cdx_rowset_unref(gone_blocked);
}

cdx_collection *
cdx__srv_lookup_version(cdx_server *s, const char *name, const char *version, cdx_rowset **blocked)
{
	if (version == NULL || *version == '\0')
		return cdx__srv_lookup(s, name, blocked);
	cdx_collection *c = cdx__srv_lookup(s, name, blocked);
	if (c != NULL && strcmp(cdx_collection_manifest(c)->version, version) == 0)
		return c;
	cdx_collection_unref(c);
	c = NULL;
	if (blocked != NULL) {
		cdx_rowset_unref(*blocked);
		*blocked = NULL;
	}
	drop_idle(s);
	pthread_mutex_lock(&s->set_mu);
	for (size_t i = 0; i < s->nprev; i++) {
		if (strcmp(s->prev[i].name, name) == 0
		    && strcmp(cdx_collection_manifest(s->prev[i].coll)->version, version) == 0) {
			c = s->prev[i].coll;
			cdx_collection_ref(c);
			if (blocked != NULL && (*blocked = s->prev[i].blocked) != NULL)
				cdx_rowset_ref(*blocked);
			s->prev[i].used_ms = cdx_now_us() / 1000;
			break;
		}
	}
	pthread_mutex_unlock(&s->set_mu);
	return c;
}

void
cdx__srv_previous_takedowns(cdx_server *s, const char *name)
{
	cdx_collection *c = NULL;
	pthread_mutex_lock(&s->set_mu);
	for (size_t i = 0; i < s->nprev && c == NULL; i++)
		if (strcmp(s->prev[i].name, name) == 0)
			cdx_collection_ref(c = s->prev[i].coll);
	pthread_mutex_unlock(&s->set_mu);
	if (c == NULL)
		return;
	/* the rows are the version's own: computed outside the lock, then
	 * swapped in if that version is still the one kept */
	cdx_rowset *rows = NULL;
	if (cdx__srv_takedown_rows(s, name, c, &rows) != CDX_OK) {
		cdx_warn("SRV-TAKEDOWN-FAIL",
		    "collection %s: previous version %s keeps its earlier takedowns: %s", name,
		    cdx_collection_manifest(c)->version, cdx_last_error());
		cdx_collection_unref(c);
		return;
	}
	pthread_mutex_lock(&s->set_mu);
	for (size_t i = 0; i < s->nprev; i++) {
		if (strcmp(s->prev[i].name, name) == 0 && s->prev[i].coll == c) {
			cdx_rowset *old = s->prev[i].blocked;
			s->prev[i].blocked = rows;
			rows = old;
			break;
		}
	}
	pthread_mutex_unlock(&s->set_mu);
	cdx_rowset_unref(rows);
	cdx_collection_unref(c);
}

void
cdx__srv_previous_free(cdx_server *s)
{
	for (size_t i = 0; i < s->nprev; i++) {
		cdx_collection_unref(s->prev[i].coll);
		cdx_rowset_unref(s->prev[i].blocked);
	}
	free(s->prev);
	s->prev = NULL;
	s->nprev = 0;
}

void
cdx__srv_fill_coverage(Candex__V1__SearchResponse *out, const cdx_collection *c)
{
	const struct cdx_manifest *m = cdx_collection_manifest(c);
	const uint32_t *numbers;
	out->n_shards_searched = cdx_collection_shards(c, &numbers);
	out->shards_searched = (uint32_t *) numbers; /* valid while the request holds c */
	out->shards_total = m->nshards;
	out->items_searched = cdx_collection_items_loaded(c);
	out->items_total = m->items;
	out->coverage = m->items > 0 ? (float) ((double) out->items_searched / (double) m->items) : 1.0f;
}

void
cdx__srv_fill_info_shards(Candex__V1__CollectionInfo *ci, const cdx_collection *c)
{
	const uint32_t *numbers;
	ci->n_shards_served = cdx_collection_shards(c, &numbers);
	ci->shards_served = (uint32_t *) numbers; /* valid while the snapshot holds c */
	ci->items_served = cdx_collection_items_loaded(c);
}

char *
cdx__srv_fill_previous(cdx_server *s, Candex__V1__CollectionInfo **ci, size_t n)
{
	if (s->cfg.keep_previous <= 0 || n == 0)
		return NULL;
	drop_idle(s);
	char *names = calloc(n, CDX_NAME_MAX);
	if (names == NULL)
		return NULL;
	pthread_mutex_lock(&s->set_mu);
	for (size_t i = 0; i < n; i++) {
		for (size_t j = 0; j < s->nprev; j++) {
			if (strcmp(s->prev[j].name, ci[i]->name) == 0) {
				snprintf(names + i * CDX_NAME_MAX, CDX_NAME_MAX, "%s",
				    cdx_collection_manifest(s->prev[j].coll)->version);
				ci[i]->previous_version = names + i * CDX_NAME_MAX;
			}
		}
	}
	pthread_mutex_unlock(&s->set_mu);
	return names;
}
