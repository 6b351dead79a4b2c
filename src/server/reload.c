/*
 * reload.c — the served collection set and the reload thread.
 *
 * DESIGN
 * The set is a small array of (name, collection, version dir) that is never
 * modified in place: a reload builds a new array (reusing, with a new
 * reference, every collection whose CURRENT did not move, and loading the
 * ones that did), swaps the pointer under set_mu and drops the old array's
 * references. A request holds its own reference for as long as it runs, so
 * an old version lives until its last request finishes and is then freed by
 * that request's thread. Loading, checksum verification and a smoke search
 * happen on the reload thread, never on a request's path; a load that fails
 * leaves the old version in the new array, so it keeps serving.
 *
 * A collection whose CURRENT disappears (or its whole directory) is not
 * dropped: the loaded version keeps serving, a warning is logged once, and
 * /metrics shows candex_collection_current_missing. Deleting a link by
 * mistake must not be an outage; retiring a collection is an explicit
 * admin DropRequest, refused while a CURRENT would bring it back.
 *
 * Triggers: SIGHUP and --watch-interval ask for a rescan (no answer owed);
 * an admin ReloadRequest is queued with its nng context and answered by the
 * reload thread when its rescan is done. Reloads run one at a time. A
 * version that failed to load is not retried by the watcher until CURRENT
 * moves again (explicit reloads always retry), so a broken build is logged
 * once, not every poll.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "server/server.h"

struct srv_reload_req {
	struct srv_ctx *ctx;
	int drop;                                    /* a DropRequest of only, not a reload */
	char only[CDX_NAME_MAX];                     /* "" = all */
	const Candex__V1__TakedownRequest *takedown; /* a takedown change instead of a reload */
	struct srv_reload_req *next;
};

/* A version that failed to load, remembered so the watcher does not retry
 * it. Only the reload thread (and start, before it) touches the list. */
struct srv_failed {
	char name[CDX_NAME_MAX];
	char version_dir[PATH_MAX];
};

void
cdx__srv_set_free(struct srv_set *set)
{
	if (set == NULL)
		return;
	for (size_t i = 0; i < set->n; i++) {
		cdx_collection_unref(set->e[i].coll);
		cdx_rowset_unref(set->e[i].blocked);
	}
	free(set->e);
	free(set);
}

void
cdx__srv_entry_ref(const struct srv_entry *e)
{
	cdx_collection_ref(e->coll);
	if (e->blocked != NULL)
		cdx_rowset_ref(e->blocked);
}

cdx_collection *
cdx__srv_lookup(cdx_server *s, const char *name, cdx_rowset **blocked)
{
	cdx_collection *c = NULL;
	if (blocked != NULL)
		*blocked = NULL;
	pthread_mutex_lock(&s->set_mu);
	for (size_t i = 0; s->set != NULL && i < s->set->n; i++) {
		if (strcmp(s->set->e[i].name, name) == 0) {
			c = s->set->e[i].coll;
			cdx_collection_ref(c);
			if (blocked != NULL && (*blocked = s->set->e[i].blocked) != NULL)
				cdx_rowset_ref(*blocked);
			break;
		}
	}
	pthread_mutex_unlock(&s->set_mu);
	return c;
}

struct srv_set *
cdx__srv_snapshot(cdx_server *s)
{
	struct srv_set *copy = calloc(1, sizeof(*copy));
	if (copy == NULL)
		return NULL;
	pthread_mutex_lock(&s->set_mu);
	if (s->set != NULL && s->set->n > 0) {
		copy->e = malloc(s->set->n * sizeof(*copy->e));
		if (copy->e != NULL) {
			copy->n = s->set->n;
			memcpy(copy->e, s->set->e, copy->n * sizeof(*copy->e));
			for (size_t i = 0; i < copy->n; i++)
				cdx__srv_entry_ref(&copy->e[i]);
		}
	}
	pthread_mutex_unlock(&s->set_mu);
	return copy;
}

void
cdx__srv_names(cdx_server *s, char *out, size_t size)
{
	size_t used = 0;
	out[0] = '\0';
	pthread_mutex_lock(&s->set_mu);
	for (size_t i = 0; s->set != NULL && i < s->set->n && used < size; i++) {
		int n = snprintf(out + used, size - used, "%s%s", i ? ", " : "", s->set->e[i].name);
		if (n < 0)
			break;
		used += (size_t) n;
	}
	pthread_mutex_unlock(&s->set_mu);
	if (out[0] == '\0')
		snprintf(out, size, "none");
}

static int
cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

/* list_collections returns the sorted names of DIR's subdirectories that
 * look like collections (a valid name and a CURRENT entry). */
static int
list_collections(const char *dir, char ***namesp, size_t *np)
{
	DIR *d = opendir(dir);
	char **names = NULL;
	size_t n = 0, cap = 0;
	struct dirent *de;

	*namesp = NULL;
	*np = 0;
	if (d == NULL)
		return cdx_error_errno(CDX_EIO, "index directory %s", dir);
	while ((de = readdir(d)) != NULL) {
		if (!cdx_name_valid(de->d_name))
			continue;
		char path[PATH_MAX];
		struct stat st;
		snprintf(path, sizeof(path), "%s/%s/%s", dir, de->d_name, CDX_CURRENT_LINK);
		if (lstat(path, &st) != 0)
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 8;
			char **grown = realloc(names, cap * sizeof(*names));
			if (grown == NULL)
				goto nomem;
			names = grown;
		}
		if ((names[n] = strdup(de->d_name)) == NULL)
			goto nomem;
		n++;
	}
	closedir(d);
	if (n > 1)
		qsort(names, n, sizeof(*names), cmp_names);
	*namesp = names;
	*np = n;
	return CDX_OK;
nomem:
	closedir(d);
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	return cdx_error(CDX_ENOMEM, "out of memory listing %s", dir);
}

/* verify runs one search for a stored item, so that a version whose index
 * loads but cannot search is refused before it serves anyone. */
static int
verify(cdx_collection *c)
{
	const struct cdx_manifest *m = cdx_collection_manifest(c);
	uint32_t shard = 0, nshards = cdx_collection_shards(c, NULL);
	while (shard < nshards && cdx_collection_shard_rows(c, shard) == 0)
		shard++;
	if (shard == nshards)
		return CDX_OK;
	float *v = malloc(m->dim * sizeof(float));
	struct cdx_hit hit;
	struct cdx_search_params p = { .k = 1 };
	if (v == NULL)
		return cdx_error(CDX_ENOMEM, "out of memory");
	int rc = cdx_collection_vector(c, shard, 0, v);
	if (rc == CDX_OK)
		rc = cdx_collection_search(c, &p, v, 1, &hit);
	if (rc == CDX_OK && hit.id < 0)
		rc = cdx_error(CDX_ECORRUPT, "a search for a stored item found nothing");
	free(v);
	return rc;
}

static int
was_failed(cdx_server *s, const char *name, const char *vdir)
{
	struct srv_failed *failed_list = s->failed;
	size_t nfailed = s->nfailed;
	for (size_t i = 0; i < nfailed; i++)
		if (strcmp(failed_list[i].name, name) == 0 && strcmp(failed_list[i].version_dir, vdir) == 0)
			return 1;
	return 0;
}

static void
set_failed(cdx_server *s, const char *name, const char *vdir)
{
	struct srv_failed *failed_list = s->failed;
	size_t nfailed = s->nfailed;
	for (size_t i = 0; i < nfailed; i++) {
		if (strcmp(failed_list[i].name, name) == 0) {
			if (vdir == NULL)
				failed_list[i] = failed_list[--s->nfailed];
			else
				snprintf(failed_list[i].version_dir, PATH_MAX, "%s", vdir);
			return;
		}
	}
	if (vdir == NULL)
		return;
	struct srv_failed *grown = realloc(failed_list, (nfailed + 1) * sizeof(*grown));
	if (grown == NULL)
		return;
	s->failed = grown;
	snprintf(grown[nfailed].name, CDX_NAME_MAX, "%s", name);
	snprintf(grown[nfailed].version_dir, PATH_MAX, "%s", vdir);
	s->nfailed = nfailed + 1;
}

/* manifest_id identifies the manifest.json of a version directory as it
 * is now; `candex recall --save` replaces it (rename), which changes it. */
static void
manifest_id(const char *vdir, uint64_t id[3])
{
	char path[PATH_MAX + 32];
	struct stat st;
	snprintf(path, sizeof(path), "%s/%s", vdir, CDX_MANIFEST_FILE);
	if (stat(path, &st) != 0) {
		id[0] = id[1] = id[2] = 0;
		return;
	}
	id[0] = (uint64_t) st.st_ino;
	id[1] = (uint64_t) st.st_size;
	id[2] = (uint64_t) st.st_mtim.tv_sec * 1000000000u + (uint64_t) st.st_mtim.tv_nsec;
}

/* reload_points swaps in cur's version with its re-read manifest (new
 * operating points or defaults), sharing the loaded data. */
static int
reload_points(const struct srv_entry *cur, const uint64_t id[3], struct srv_entry *e)
{
	cdx_collection *c = NULL;
	int rc = cdx_collection_with_manifest(&c, cur->coll);
	if (rc != CDX_OK)
		return rc;
	const struct cdx_manifest *m = cdx_collection_manifest(c);
	*e = *cur;
	e->coll = c; /* the same loaded data: its takedown rows still fit */
	if (e->blocked != NULL)
		cdx_rowset_ref(e->blocked);
	memcpy(e->manifest_id, id, sizeof(e->manifest_id));
	cdx_info("SRV-POINTS",
	    "collection %s: version %s: manifest re-read: %u operating point(s), default target %g",
	    cur->name, m->version, m->npoints, m->default_recall_target);
	return CDX_OK;
}

static const struct srv_entry *
find_entry(const struct srv_set *set, const char *name)
{
	for (size_t i = 0; set != NULL && i < set->n; i++)
		if (strcmp(set->e[i].name, name) == 0)
			return &set->e[i];
	return NULL;
}

static int
append_entry(struct srv_set *set, const struct srv_entry *e)
{
	struct srv_entry *grown = realloc(set->e, (set->n + 1) * sizeof(*grown));
	if (grown == NULL)
		return CDX_ENOMEM;
	set->e = grown;
	set->e[set->n++] = *e;
	return CDX_OK;
}

static void
add_failure(cdx_server *s, cdx_buf *msg, int *rc, int code, const char *name, const char *why,
    const struct srv_entry *kept)
{
	struct srv_coll_metrics *cm = cdx__srv_coll_metrics(s, name);
	if (cm != NULL)
		atomic_fetch_add(&cm->reload_failed, 1);
	if (*rc == CDX_OK)
		*rc = code;
	/* what still serves comes first: clients may truncate long messages */
	if (kept != NULL)
		cdx_buf_printf(msg, "%s%s (still serving %s): %s", msg->len ? "; " : "", name,
		    cdx_collection_manifest(kept->coll)->version, why);
	else
		cdx_buf_printf(msg, "%s%s (not served): %s", msg->len ? "; " : "", name, why);
}

/* do_reload is cdx__srv_reload with watch semantics (skip versions known to
 * fail). *changed counts collections added, replaced or dropped. */
static int
do_reload(cdx_server *s, const char *only, int watch, char **msgp, unsigned *changed)
{
	char **names = NULL;
	size_t nnames = 0;
	cdx_buf msg = { 0 };
	int rc = CDX_OK;
	struct srv_set *old = cdx__srv_snapshot(s), *next = calloc(1, sizeof(*next));

	*changed = 0;
	if (msgp != NULL)
		*msgp = NULL;
	if (old == NULL || next == NULL) {
		cdx__srv_set_free(old);
		free(next);
		return cdx_error(CDX_ENOMEM, "out of memory");
	}
	int lrc = list_collections(s->cfg.index_dir, &names, &nnames);
	/* names[i] is a collection this shard group does not serve (--shards) */
	char *not_ours = calloc(nnames ? nnames : 1, 1);
	if (not_ours == NULL)
		lrc = cdx_error(CDX_ENOMEM, "out of memory");
	if (lrc != CDX_OK) {
		/* the directory itself is unreadable: keep everything */
		rc = lrc;
		cdx_buf_printf(&msg, "%s", cdx_last_error());
		nnames = 0;
		for (size_t i = 0; i < old->n; i++) {
			append_entry(next, &old->e[i]);
			cdx__srv_entry_ref(&old->e[i]);
		}
		goto swap;
	}
	if (only != NULL && *only != '\0') {
		size_t i;
		for (i = 0; i < nnames && strcmp(names[i], only) != 0; i++)
			;
		if (i == nnames && find_entry(old, only) == NULL) {
			rc = CDX_ENOTFOUND;
			cdx_buf_printf(&msg, "no collection '%s' in %s", only, s->cfg.index_dir);
		}
	}

	for (size_t i = 0; i < nnames; i++) {
		const char *name = names[i];
		const struct srv_entry *cur = find_entry(old, name);
		struct srv_entry e;
		memset(&e, 0, sizeof(e));
		snprintf(e.name, sizeof(e.name), "%s", name);

		if (only != NULL && *only != '\0' && strcmp(name, only) != 0) {
			if (cur != NULL) {
				e = *cur;
				cdx__srv_entry_ref(&e);
				append_entry(next, &e);
			}
			continue;
		}
		char cdir[PATH_MAX], vdir[PATH_MAX];
		snprintf(cdir, sizeof(cdir), "%s/%s", s->cfg.index_dir, name);
		int r = cdx_version_path_resolve(cdir, vdir);
		uint64_t id[3]; /* before loading: a change while loading is seen next time */
		manifest_id(vdir, id);
		if (r == CDX_OK && cur != NULL && strcmp(cur->version_dir, vdir) == 0) {
			if (cur->current_missing)
				cdx_info("SRV-CURRENT-BACK", "collection %s: CURRENT is back", name);
			if (memcmp(id, cur->manifest_id, sizeof(id)) == 0) {
				e = *cur; /* unchanged */
				e.current_missing = 0;
				cdx__srv_entry_ref(&e);
				append_entry(next, &e);
				continue;
			}
			if ((r = reload_points(cur, id, &e)) != CDX_OK) {
				char why[1024];
				const char *le = cdx_last_error();
				snprintf(why, sizeof(why), "re-reading its manifest: %.*s",
				    (int) cdx_utf8_cut(le, 900), le);
				cdx_err("SRV-LOAD-FAIL", "collection %s: %s; the loaded one keeps serving",
				    name, why);
				add_failure(s, &msg, &rc, r, name, why, cur);
				e = *cur; /* not retried until the manifest changes again */
				e.current_missing = 0;
				memcpy(e.manifest_id, id, sizeof(id));
				cdx__srv_entry_ref(&e);
				append_entry(next, &e);
				continue;
			}
			e.current_missing = 0;
			if (append_entry(next, &e) != CDX_OK) {
				cdx_collection_unref(e.coll);
				cdx_rowset_unref(e.blocked);
				add_failure(s, &msg, &rc, CDX_ENOMEM, name, "out of memory", cur);
				goto keep_old;
			}
			(*changed)++;
			continue;
		}
		if (r != CDX_OK) {
			char why[512];
			snprintf(why, sizeof(why), "cannot resolve CURRENT: %s", cdx_last_error());
			cdx_err("SRV-LOAD-FAIL", "collection %s: %s", name, why);
			add_failure(s, &msg, &rc, r, name, why, cur);
			goto keep_old;
		}
		if (watch && was_failed(s, name, vdir)) {
			if (rc == CDX_OK)
				rc = CDX_ECORRUPT;
			goto keep_old;
		}
		struct cdx_shard_set shards;
		if (!cdx__srv_wants(s, name, vdir, &shards)) {
			if (cur == NULL) { /* not this shard group's collection: nothing to serve */
				not_ours[i] = 1;
				continue;
			}
			cdx_warn("SRV-LOAD-FAIL",
			    "collection %s: version at %s has none of this server's shards (--shards); "
			    "the loaded one keeps serving",
			    name, vdir);
			goto keep_old;
		}
		uint64_t t0 = cdx_now_us();
		cdx_collection *c = NULL;
		cdx_rowset *blocked = NULL;
		r = cdx_collection_load_shards(&c, vdir, &shards);
		if (r == CDX_OK && strcmp(cdx_collection_manifest(c)->collection, name) != 0)
			/* served under its directory's name: a copied or moved
			 * version must not answer for another collection */
			r = cdx_error(CDX_ECORRUPT, "its manifest names collection '%s', not '%s'",
			    cdx_collection_manifest(c)->collection, name);
		if (r == CDX_OK)
			r = verify(c);
		if (r == CDX_OK)
			r = cdx__srv_takedown_rows(s, name, c, &blocked);
		if (r != CDX_OK) {
			cdx_collection_unref(c); /* NULL if the load itself failed */
			c = NULL;
			char why[1024];
			const char *vname = strrchr(vdir, '/');
			const char *vn = vname ? vname + 1 : vdir, *le = cdx_last_error();
			snprintf(why, sizeof(why), "version %.*s failed to load: %.*s",
			    (int) cdx_utf8_cut(vn, 100), vn, (int) cdx_utf8_cut(le, 800), le);
			cdx_err("SRV-LOAD-FAIL", "collection %s: %s (%s)%s", name, why, vdir,
			    cur ? "; the previous version keeps serving" : "");
			add_failure(s, &msg, &rc, r, name, why, cur);
			set_failed(s, name, vdir);
			goto keep_old;
		}
		set_failed(s, name, NULL);
		const struct cdx_manifest *m = cdx_collection_manifest(c);
		cdx_info("SRV-LOAD",
		    "collection %s: loaded version %s (%llu items, dim %u, %s, %u of %u shards) in %.1f "
		    "ms%s%s",
		    name, m->version, (unsigned long long) cdx_collection_items_loaded(c), m->dim,
		    cdx_metric_name(m->metric), cdx_collection_shards(c, NULL), m->nshards,
		    (double) (cdx_now_us() - t0) / 1000.0, cur ? ", replacing " : "",
		    cur ? cdx_collection_manifest(cur->coll)->version : "");
		if (cur != NULL && strcmp(cdx_collection_manifest(cur->coll)->version, m->version) != 0)
			cdx__srv_previous_keep(s, name, cur->coll, cur->blocked);
		e.coll = c;
		e.blocked = blocked;
		snprintf(e.version_dir, sizeof(e.version_dir), "%s", vdir);
		memcpy(e.manifest_id, id, sizeof(id));
		e.loaded_ms = cdx_wall_ms();
		if (append_entry(next, &e) != CDX_OK) {
			cdx_collection_unref(c);
			cdx_rowset_unref(blocked);
			add_failure(s, &msg, &rc, CDX_ENOMEM, name, "out of memory", cur);
			goto keep_old;
		}
		(*changed)++;
		continue;
	keep_old:
		if (cur != NULL) {
			e = *cur;
			e.current_missing = 0; /* there is a CURRENT, even if it is bad */
			cdx__srv_entry_ref(&e);
			append_entry(next, &e);
		}
	}
	/* Collections whose directory or CURRENT disappeared keep serving
	 * what is loaded: only an admin DropRequest retires a collection. */
	for (size_t i = 0; i < old->n; i++) {
		if (find_entry(next, old->e[i].name) != NULL)
			continue;
		struct srv_entry e = old->e[i];
		cdx__srv_entry_ref(&e);
		if (only == NULL || *only == '\0' || strcmp(e.name, only) == 0) {
			const char *version = cdx_collection_manifest(e.coll)->version;
			if (!e.current_missing)
				cdx_warn("SRV-CURRENT-GONE",
				    "collection %s: %s/%s/%s is gone; still serving version %s (drop it with "
				    "an admin DropRequest: candex query --url ADMIN --drop %s)",
				    e.name, s->cfg.index_dir, e.name, CDX_CURRENT_LINK, version, e.name);
			/* the watcher reports it once, an explicit reload every time */
			if (!watch || !e.current_missing)
				add_failure(
				    s, &msg, &rc, CDX_ENOTFOUND, e.name, "its CURRENT link is gone", &e);
			e.current_missing = 1;
		}
		append_entry(next, &e);
	}
swap:;
	/* readiness: which collections of the directory serve nothing */
	char unserved[sizeof(s->unserved)] = "";
	size_t used = 0;
	for (size_t i = 0; i < nnames && used < sizeof(unserved); i++) {
		if (find_entry(next, names[i]) != NULL || not_ours[i])
			continue;
		int w
		    = snprintf(unserved + used, sizeof(unserved) - used, "%s%s", used ? ", " : "", names[i]);
		used += w > 0 ? (size_t) w : 0;
	}
	pthread_mutex_lock(&s->set_mu);
	struct srv_set *prev = s->set;
	s->set = next;
	if (lrc == CDX_OK)
		snprintf(s->unserved, sizeof(s->unserved), "%s", unserved);
	pthread_mutex_unlock(&s->set_mu);
	cdx__srv_adapt_sync(s->adapt, next); /* reloads run one at a time: next stays */
	cdx__srv_set_free(prev);
	cdx__srv_set_free(old);
	for (size_t i = 0; i < nnames; i++)
		free(names[i]);
	free(names);
	free(not_ours);
	if (*changed > 0 || rc != CDX_OK) {
		/* A load frees as much as it keeps (read buffers, decoded parts,
		 * the old version): give the free pages back, so that RSS
		 * follows what is served. */
		malloc_trim(0);
	}
	if (msgp != NULL && msg.len > 0 && (*msgp = strdup(msg.data)) != NULL)
		cdx_utf8_sanitize(*msgp); /* paths need not be UTF-8; the answer must */
	cdx_buf_fini(&msg);
	return rc;
}

int
cdx__srv_reload(cdx_server *s, const char *only, char **msg)
{
	unsigned changed;
	int rc = do_reload(s, only, 0, msg, &changed);
	if (rc == CDX_OK)
		atomic_fetch_add(&s->m.reload_ok, 1);
	else
		atomic_fetch_add(&s->m.reload_failed, 1);
	return rc;
}

int
cdx__srv_load_initial(cdx_server *s)
{
	struct stat st;
	if (stat(s->cfg.index_dir, &st) != 0 || !S_ISDIR(st.st_mode))
		return cdx_error(CDX_ENOTFOUND, "index directory %s does not exist", s->cfg.index_dir);
	char *msg = NULL;
	unsigned changed;
	int rc = do_reload(s, NULL, 0, &msg, &changed);
	if (rc != CDX_OK) {
		atomic_fetch_add(&s->m.reload_failed, 1);
		cdx_warn("SRV-START", "some collections did not load: %s", msg ? msg : cdx_strerror(rc));
	}
	free(msg);
	char names[1024];
	cdx__srv_names(s, names, sizeof(names));
	pthread_mutex_lock(&s->set_mu);
	size_t n = s->set ? s->set->n : 0;
	pthread_mutex_unlock(&s->set_mu);
	if (n == 0)
		cdx_warn("SRV-EMPTY",
		    "no collection to serve in %s yet; /readyz answers 503 until a reload loads one",
		    s->cfg.index_dir);
	else
		cdx_info("SRV-START", "serving %zu collection(s): %s", n, names);
	return CDX_OK;
}

/* drop_collection stops serving name, which must have lost its CURRENT
 * (else the next reload would bring it back). Runs on the reload thread,
 * like every change of the set. */
static int
drop_collection(cdx_server *s, const char *name, char **msgp)
{
	char link[PATH_MAX];
	struct stat st;
	*msgp = NULL;
	struct srv_set *old = cdx__srv_snapshot(s), *next = calloc(1, sizeof(*next));
	int rc = CDX_OK;
	if (old == NULL || next == NULL) {
		rc = cdx_error(CDX_ENOMEM, "out of memory");
		goto done;
	}
	const struct srv_entry *cur = find_entry(old, name);
	if (cur == NULL) {
		rc = cdx_error(
		    CDX_ENOTFOUND, "collection '%.*s' is not served", (int) cdx_utf8_cut(name, 64), name);
		goto done;
	}
	snprintf(link, sizeof(link), "%s/%s/%s", s->cfg.index_dir, name, CDX_CURRENT_LINK);
	if (lstat(link, &st) == 0) {
		rc = cdx_error(CDX_EINVAL,
		    "collection %s still has %s: the next reload would load it again; remove that link "
		    "first",
		    name, link);
		goto done;
	}
	for (size_t i = 0; i < old->n; i++) {
		if (strcmp(old->e[i].name, name) == 0)
			continue;
		if (append_entry(next, &old->e[i]) != CDX_OK) {
			rc = cdx_error(CDX_ENOMEM, "out of memory");
			goto done;
		}
		cdx__srv_entry_ref(&old->e[i]);
	}
	cdx_warn("SRV-DROP", "collection %s: dropped by an admin; version %s no longer served", name,
	    cdx_collection_manifest(cur->coll)->version);
	set_failed(s, name, NULL);
	pthread_mutex_lock(&s->set_mu);
	struct srv_set *prev = s->set;
	s->set = next;
	pthread_mutex_unlock(&s->set_mu);
	next = prev;
done:
	if (rc != CDX_OK)
		*msgp = strdup(cdx_last_error());
	cdx__srv_set_free(next);
	cdx__srv_set_free(old);
	return rc;
}

static void
answer_admin(cdx_server *s, struct srv_reload_req *r)
{
	if (r->takedown != NULL) {
		cdx__srv_takedown_apply(s, r->ctx, r->takedown);
		free(r);
		return;
	}
	char *msg = NULL;
	if (r->drop) {
		int rc = drop_collection(s, r->only, &msg);
		if (rc != CDX_OK)
			cdx_warn(
			    "SRV-DROP-FAIL", "admin drop of %s: %s", r->only, msg ? msg : cdx_strerror(rc));
		cdx__srv_reply_reload(r->ctx, rc, msg);
		free(msg);
		free(r);
		return;
	}
	int rc = cdx__srv_reload(s, r->only[0] ? r->only : NULL, &msg);
	if (rc == CDX_OK)
		cdx_info("SRV-RELOAD", "admin reload%s%s done", r->only[0] ? " of " : "", r->only);
	else
		cdx_warn("SRV-RELOAD-FAIL", "admin reload: %s", msg ? msg : cdx_strerror(rc));
	cdx__srv_reply_reload(r->ctx, rc, msg);
	free(msg);
	free(r);
}

static void *
reloader_main(void *arg)
{
	cdx_server *s = arg;
	uint64_t next_watch = 0;

	pthread_mutex_lock(&s->r_mu);
	for (;;) {
		if (s->r_head != NULL) {
			struct srv_reload_req *r = s->r_head;
			s->r_head = r->next;
			pthread_mutex_unlock(&s->r_mu);
			answer_admin(s, r);
			pthread_mutex_lock(&s->r_mu);
			continue;
		}
		if (s->r_stop)
			break;
		if (s->r_pending) {
			s->r_pending = 0;
			pthread_mutex_unlock(&s->r_mu);
			char *msg = NULL;
			int rc = cdx__srv_reload(s, NULL, &msg);
			if (rc == CDX_OK)
				cdx_info("SRV-RELOAD", "reload done");
			else
				cdx_warn("SRV-RELOAD-FAIL", "reload: %s", msg ? msg : cdx_strerror(rc));
			free(msg);
			pthread_mutex_lock(&s->r_mu);
			continue;
		}
		if (s->cfg.watch_interval > 0) {
			uint64_t now = cdx_now_us();
			if (next_watch == 0)
				next_watch = now + (uint64_t) (s->cfg.watch_interval * 1e6);
			if (now >= next_watch) {
				next_watch = now + (uint64_t) (s->cfg.watch_interval * 1e6);
				pthread_mutex_unlock(&s->r_mu);
				char *msg = NULL;
				unsigned changed = 0;
				int rc = do_reload(s, NULL, 1, &msg, &changed);
				if (changed > 0 || (rc != CDX_OK && msg != NULL)) {
					atomic_fetch_add(
					    rc == CDX_OK ? &s->m.reload_ok : &s->m.reload_failed, 1);
					if (rc == CDX_OK)
						cdx_info("SRV-RELOAD", "CURRENT changed: reloaded");
					else
						cdx_warn("SRV-RELOAD-FAIL", "watch reload: %s", msg);
				}
				free(msg);
				pthread_mutex_lock(&s->r_mu);
				continue;
			}
			struct timespec ts;
			clock_gettime(CLOCK_MONOTONIC, &ts);
			uint64_t wait_us = next_watch - now;
			ts.tv_sec += (time_t) (wait_us / 1000000);
			ts.tv_nsec += (long) (wait_us % 1000000) * 1000;
			if (ts.tv_nsec >= 1000000000L) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000L;
			}
			pthread_cond_timedwait(&s->r_cv, &s->r_mu, &ts);
		} else {
			pthread_cond_wait(&s->r_cv, &s->r_mu);
		}
	}
	pthread_mutex_unlock(&s->r_mu);
	return NULL;
}

int
cdx__srv_reloader_start(cdx_server *s)
{
	/* r_mu and r_cv (on CLOCK_MONOTONIC) are set up by cdx_server_start */
	if (pthread_create(&s->reloader, NULL, reloader_main, s) != 0)
		return cdx_error(CDX_ENOMEM, "cannot start the reload thread");
	s->reloader_started = 1;
	return CDX_OK;
}

void
cdx__srv_reloader_stop(cdx_server *s)
{
	if (!s->reloader_started)
		return;
	pthread_mutex_lock(&s->r_mu);
	s->r_stop = 1;
	pthread_cond_signal(&s->r_cv);
	pthread_mutex_unlock(&s->r_mu);
	pthread_join(s->reloader, NULL);
	s->reloader_started = 0;
	free(s->failed);
	s->failed = NULL;
	s->nfailed = 0;
}

void
cdx_server_request_reload(cdx_server *s)
{
	pthread_mutex_lock(&s->r_mu);
	s->r_pending = 1;
	pthread_cond_signal(&s->r_cv);
	pthread_mutex_unlock(&s->r_mu);
}

static void
queue_admin(cdx_server *s, struct srv_reload_req *r)
{
	struct srv_reload_req **tail;
	pthread_mutex_lock(&s->r_mu);
	for (tail = &s->r_head; *tail != NULL; tail = &(*tail)->next)
		;
	*tail = r;
	pthread_cond_signal(&s->r_cv);
	pthread_mutex_unlock(&s->r_mu);
}

/* admin_enqueue queues an admin reload (drop 0) or drop of only. */
static void
admin_enqueue(cdx_server *s, struct srv_ctx *ctx, const char *only, int drop)
{
	struct srv_reload_req *r = calloc(1, sizeof(*r));
	if (r == NULL) {
		cdx__srv_reply_reload(ctx, CDX_ENOMEM, "out of memory");
		return;
	}
	r->ctx = ctx;
	r->drop = drop;
	snprintf(r->only, sizeof(r->only), "%s", only ? only : "");
	queue_admin(s, r);
}

void
cdx__srv_reload_admin(cdx_server *s, struct srv_ctx *ctx, const char *only)
{
	admin_enqueue(s, ctx, only, 0);
}

void
cdx__srv_drop_admin(cdx_server *s, struct srv_ctx *ctx, const char *name)
{
	if (name == NULL || !cdx_name_valid(name)) {
		/* never cut a name to fit: a prefix could name another collection */
		cdx__srv_reply_reload(ctx, CDX_EINVAL, "drop needs a valid collection name");
		return;
	}
	admin_enqueue(s, ctx, name, 1);
}

void
cdx__srv_takedown_admin(cdx_server *s, struct srv_ctx *ctx, const Candex__V1__TakedownRequest *tr)
{
	struct srv_reload_req *r = calloc(1, sizeof(*r));
	if (r == NULL) {
		cdx__srv_reply_error(ctx, CDX_ENOMEM, "out of memory");
		return;
	}
	r->ctx = ctx;
	r->takedown = tr;
	queue_admin(s, r);
}
