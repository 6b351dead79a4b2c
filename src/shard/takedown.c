/*
 * takedown.c — the TAKEDOWNS file (takedown.h).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "shard/takedown.h"

#define HEADER "# candex takedowns v1\n"

void
cdx_takedowns_fini(struct cdx_takedowns *t)
{
	if (t == NULL)
		return;
	for (size_t i = 0; i < t->nkeys; i++)
		free(t->keys[i]);
	free(t->keys);
	free(t->ids);
	memset(t, 0, sizeof(*t));
}

int
cdx_takedown_key_valid(const char *key)
{
	size_t len = strlen(key);
	return len > 0 && len <= CDX_TAKEDOWN_MAX_KEY && strpbrk(key, "\t\r\n") == NULL;
}

int
cdx_takedowns_has_id(const struct cdx_takedowns *t, int64_t id)
{
	return t->nids > 0 && bsearch(&id, t->ids, t->nids, sizeof(int64_t), cdx_cmp_i64) != NULL;
}

int
cdx_takedowns_has_key(const struct cdx_takedowns *t, const char *key)
{
	return t->nkeys > 0 && bsearch(&key, t->keys, t->nkeys, sizeof(char *), cdx_cmp_str) != NULL;
}

static int
push_id(struct cdx_takedowns *t, int64_t id, size_t *cap)
{
	if (t->nids == *cap) {
		*cap = *cap ? *cap * 2 : 16;
		int64_t *grown = realloc(t->ids, *cap * sizeof(int64_t));
		if (grown == NULL)
			return cdx_error(CDX_ENOMEM, "takedowns");
		t->ids = grown;
	}
	t->ids[t->nids++] = id;
	return CDX_OK;
}

static int
push_key(struct cdx_takedowns *t, const char *key, size_t len, size_t *cap)
{
	if (t->nkeys == *cap) {
		*cap = *cap ? *cap * 2 : 16;
		char **grown = realloc(t->keys, *cap * sizeof(char *));
		if (grown == NULL)
			return cdx_error(CDX_ENOMEM, "takedowns");
		t->keys = grown;
	}
	if ((t->keys[t->nkeys] = strndup(key, len)) == NULL)
		return cdx_error(CDX_ENOMEM, "takedowns");
	t->nkeys++;
	return CDX_OK;
}

/* normalise sorts both lists and drops duplicates. */
static void
normalise(struct cdx_takedowns *t)
{
	if (t->nids > 1) {
		qsort(t->ids, t->nids, sizeof(int64_t), cdx_cmp_i64);
		size_t n = 1;
		for (size_t i = 1; i < t->nids; i++)
			if (t->ids[i] != t->ids[n - 1])
				t->ids[n++] = t->ids[i];
		t->nids = n;
	}
	if (t->nkeys > 1) {
		qsort(t->keys, t->nkeys, sizeof(char *), cdx_cmp_str);
		size_t n = 1;
		for (size_t i = 1; i < t->nkeys; i++) {
			if (strcmp(t->keys[i], t->keys[n - 1]) != 0)
				t->keys[n++] = t->keys[i];
			else
				free(t->keys[i]);
		}
		t->nkeys = n;
	}
}

static int
parse(const char *path, const char *text, size_t len, struct cdx_takedowns *t)
{
	size_t idcap = 0, keycap = 0;
	const char *p = text, *end = text + len;
	unsigned long long line = 0;
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t) (end - p)), *le = nl ? nl : end;
		line++;
		size_t ll = (size_t) (le - p);
		int rc = CDX_OK;
		if (ll == 0 || *p == '#') {
			/* blank or comment */
		} else if (ll > 3 && memcmp(p, "id\t", 3) == 0) {
			char tmp[32], *e;
			if (ll - 3 >= sizeof(tmp))
				goto bad;
			memcpy(tmp, p + 3, ll - 3);
			tmp[ll - 3] = '\0';
			errno = 0;
			long long v = strtoll(tmp, &e, 10);
			if (errno != 0 || *e != '\0' || e == tmp)
				goto bad;
			rc = push_id(t, v, &idcap);
		} else if (ll > 4 && memcmp(p, "key\t", 4) == 0 && ll - 4 <= CDX_TAKEDOWN_MAX_KEY
		    && memchr(p + 4, '\t', ll - 4) == NULL && memchr(p + 4, '\0', ll - 4) == NULL) {
			rc = push_key(t, p + 4, ll - 4, &keycap);
		} else {
			goto bad;
		}
		if (rc != CDX_OK)
			return rc;
		p = nl ? nl + 1 : end;
		continue;
	bad:
		return cdx_error(CDX_ECORRUPT,
		    "%s: line %llu: expected \"id<TAB>integer\" or \"key<TAB>key\"", path, line);
	}
	normalise(t);
	return CDX_OK;
}

static int
read_list(const char *path, struct cdx_takedowns *t)
{
	char *text = NULL;
	size_t len = 0;
	memset(t, 0, sizeof(*t));
	if (access(path, F_OK) != 0 && errno == ENOENT)
		return CDX_OK;
	int rc = cdx_read_file(path, &text, &len);
	if (rc == CDX_OK)
		rc = parse(path, text, len, t);
	free(text);
	if (rc != CDX_OK)
		cdx_takedowns_fini(t);
	return rc;
}

int
cdx_takedowns_load(const char *coll_dir, struct cdx_takedowns *t)
{
	char path[PATH_MAX];
	int rc = cdx_pathf(path, sizeof(path), "%s/%s", coll_dir, CDX_TAKEDOWN_FILE);
	if (rc != CDX_OK)
		return rc;
	return read_list(path, t);
}

static int
save(const char *path, const struct cdx_takedowns *t)
{
	cdx_buf b = { 0 };
	int rc = cdx_buf_append(&b, HEADER, strlen(HEADER));
	for (size_t i = 0; rc == CDX_OK && i < t->nids; i++)
		rc = cdx_buf_printf(&b, "id\t%lld\n", (long long) t->ids[i]);
	for (size_t i = 0; rc == CDX_OK && i < t->nkeys; i++)
		rc = cdx_buf_printf(&b, "key\t%s\n", t->keys[i]);
	if (rc == CDX_OK)
		rc = cdx_write_file_atomic(path, b.data, b.len);
	cdx_buf_fini(&b);
	return rc;
}

/* apply changes t by ch; *changed and *dropped count what happened. */
static int
apply(struct cdx_takedowns *t, const struct cdx_takedown_change *ch, int *changed, size_t *dropped)
{
	size_t idcap = t->nids, keycap = t->nkeys;
	int rc = CDX_OK;
	for (size_t i = 0; rc == CDX_OK && i < ch->n_add_ids; i++) {
		if (!cdx_takedowns_has_id(t, ch->add_ids[i])) {
			*changed = 1;
			rc = push_id(t, ch->add_ids[i], &idcap);
		}
	}
	for (size_t i = 0; rc == CDX_OK && i < ch->n_add_keys; i++) {
		const char *k = ch->add_keys[i];
		if (!cdx_takedowns_has_key(t, k)) {
			*changed = 1;
			rc = push_key(t, k, strlen(k), &keycap);
		}
	}
	if (rc != CDX_OK)
		return rc;
	normalise(t);
	size_t n = 0;
	for (size_t i = 0; i < t->nids; i++) {
		int64_t id = t->ids[i];
		int drop = ch->n_remove_ids > 0
		    && bsearch(&id, ch->remove_ids, ch->n_remove_ids, sizeof(int64_t), cdx_cmp_i64) != NULL;
		if (!drop && ch->keep_id != NULL && !ch->keep_id(ch->ctx, id)) {
			drop = 1;
			(*dropped)++;
		}
		if (!drop)
			t->ids[n++] = id;
	}
	*changed |= n != t->nids;
	t->nids = n;
	n = 0;
	for (size_t i = 0; i < t->nkeys; i++) {
		char *k = t->keys[i];
		int drop = 0;
		for (size_t j = 0; j < ch->n_remove_keys && !drop; j++)
			drop = strcmp(k, ch->remove_keys[j]) == 0;
		if (!drop && ch->keep_key != NULL && !ch->keep_key(ch->ctx, k)) {
			drop = 1;
			(*dropped)++;
		}
		if (drop)
			free(k);
		else
			t->keys[n++] = k;
	}
	*changed |= n != t->nkeys;
	t->nkeys = n;
	return CDX_OK;
}

int
cdx_takedowns_update(
    const char *coll_dir, const struct cdx_takedown_change *ch, struct cdx_takedowns *after, size_t *dropped)
{
	char path[PATH_MAX], lock[PATH_MAX];
	size_t dropped_here = 0;
	int rc;
	if ((rc = cdx_pathf(path, sizeof(path), "%s/%s", coll_dir, CDX_TAKEDOWN_FILE)) != CDX_OK
	    || (rc = cdx_pathf(lock, sizeof(lock), "%s/%s.lock", coll_dir, CDX_TAKEDOWN_FILE)) != CDX_OK)
		return rc;
	for (size_t i = 0; i < ch->n_add_keys; i++)
		if (!cdx_takedown_key_valid(ch->add_keys[i]))
			return cdx_error(CDX_EINVAL,
			    "takedown key %zu is empty, longer than %d bytes or holds a tab or newline", i,
			    CDX_TAKEDOWN_MAX_KEY);
	int64_t *remove_ids = NULL;
	if (ch->n_remove_ids > 0) {
		if ((remove_ids = malloc(ch->n_remove_ids * sizeof(int64_t))) == NULL)
			return cdx_error(CDX_ENOMEM, "takedowns");
		memcpy(remove_ids, ch->remove_ids, ch->n_remove_ids * sizeof(int64_t));
		qsort(remove_ids, ch->n_remove_ids, sizeof(int64_t), cdx_cmp_i64);
	}
	struct cdx_takedown_change sorted = *ch;
	sorted.remove_ids = remove_ids;
	int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0) {
		free(remove_ids);
		return cdx_error_errno(CDX_EIO, "takedown lock %s", lock);
	}
	while (flock(fd, LOCK_EX) != 0 && errno == EINTR)
		;
	struct cdx_takedowns t;
	int changed = 0;
	rc = read_list(path, &t);
	if (rc == CDX_OK)
		rc = apply(&t, &sorted, &changed, &dropped_here);
	if (rc == CDX_OK && changed)
		rc = save(path, &t);
	flock(fd, LOCK_UN);
	close(fd);
	free(remove_ids);
	if (rc == CDX_OK && after != NULL)
		*after = t;
	else
		cdx_takedowns_fini(&t);
	if (dropped != NULL)
		*dropped = dropped_here;
	return rc;
}
