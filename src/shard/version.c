/*
 * version.c — version directories and the CURRENT symlink.
 *
 * DIR/<collection>/CURRENT is a relative symlink holding a version name.
 * Publishing creates a fresh symlink under a temporary name and renames it
 * over CURRENT: rename(2) is atomic, so a reader sees the old or the new
 * version, never neither. Version names sort by time (the builder makes
 * them from a UTC timestamp), which is what gc uses to pick the newest.
 *
 * Builders stage a version in DIR/<collection>/.staging-<pid>-<version>
 * (see cdx_version_staging_name) and rename it into place once complete;
 * gc removes staging directories whose owner is dead or that are over a
 * day old. Only directories holding a manifest count as versions.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "shard/manifest.h"

#define STAGING_PREFIX     ".staging-"
#define CURRENT_TMP_PREFIX CDX_CURRENT_LINK ".tmp."
#define STALE_SECONDS      (24 * 3600)

int
cdx_name_valid(const char *name)
{
	if (name == NULL || name[0] == 0 || name[0] == '.')
		return 0;
	size_t n = 0;
	for (const char *p = name; *p; p++, n++) {
		char c = *p;
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_'
		        || c == '.' || c == '-'))
			return 0;
		if (n + 1 >= CDX_NAME_MAX)
			return 0;
	}
	return 1;
}

static int
join(char *out, size_t cap, const char *a, const char *b)
{
	if (snprintf(out, cap, "%s/%s", a, b) >= (int) cap)
		return cdx_error(CDX_EINVAL, "path too long: %s/%s", a, b);
	return CDX_OK;
}

int
cdx_version_resolve(const char *collection_dir, char *version)
{
	char link[PATH_MAX], target[PATH_MAX];
	version[0] = 0;
	int rc = join(link, sizeof(link), collection_dir, CDX_CURRENT_LINK);
	if (rc != CDX_OK)
		return rc;
	ssize_t n = readlink(link, target, sizeof(target) - 1);
	if (n < 0) {
		if (errno == ENOENT)
			return cdx_error(CDX_ENOTFOUND, "%s: no published version (no %s)", collection_dir,
			    CDX_CURRENT_LINK);
		return cdx_error_errno(errno == EINVAL ? CDX_ECORRUPT : CDX_EIO, "readlink %s", link);
	}
	target[n] = 0;
	if (!cdx_name_valid(target))
		return cdx_error(CDX_ECORRUPT, "%s points at \"%s\", not a version name", link, target);
	char dir[PATH_MAX];
	struct stat st;
	if ((rc = join(dir, sizeof(dir), collection_dir, target)) != CDX_OK)
		return rc;
	if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
		return cdx_error(CDX_ECORRUPT, "%s points at %s, which is not a directory", link, target);
	memcpy(version, target, (size_t) n + 1);
	return CDX_OK;
}

int
cdx_version_publish(const char *collection_dir, const char *version)
{
	static atomic_uint seq;
	if (!cdx_name_valid(version))
		return cdx_error(CDX_EINVAL, "invalid version name \"%s\"", version ? version : "(null)");
	char dir[PATH_MAX], mf[PATH_MAX], tmp[PATH_MAX], cur[PATH_MAX];
	int rc;
	if ((rc = join(dir, sizeof(dir), collection_dir, version)) != CDX_OK
	    || (rc = join(mf, sizeof(mf), dir, CDX_MANIFEST_FILE)) != CDX_OK
	    || (rc = join(cur, sizeof(cur), collection_dir, CDX_CURRENT_LINK)) != CDX_OK)
		return rc;
	struct stat st;
	if (stat(mf, &st) != 0 || !S_ISREG(st.st_mode))
		return cdx_error(CDX_ENOTFOUND, "cannot publish %s: %s is missing", dir, mf);
	/* pid for gc's stale check, a counter for threads of one process */
	if (snprintf(tmp, sizeof(tmp), "%s/%s%d.%u", collection_dir, CURRENT_TMP_PREFIX, (int) getpid(),
	        atomic_fetch_add(&seq, 1))
	    >= (int) sizeof(tmp))
		return cdx_error(CDX_EINVAL, "path too long: %s", collection_dir);
	unlink(tmp);
	if (symlink(version, tmp) != 0)
		return cdx_error_errno(CDX_EIO, "symlink %s -> %s", tmp, version);
	if (rename(tmp, cur) != 0) {
		rc = cdx_error_errno(CDX_EIO, "rename %s -> %s", tmp, cur);
		unlink(tmp);
		return rc;
	}
	return cdx_fsync_path(collection_dir);
}

int
cdx_version_staging_name(char *out, size_t cap, const char *version)
{
	if (!cdx_name_valid(version))
		return cdx_error(CDX_EINVAL, "invalid version name \"%s\"", version ? version : "(null)");
	if (snprintf(out, cap, "%s%d-%s", STAGING_PREFIX, (int) getpid(), version) >= (int) cap)
		return cdx_error(CDX_EINVAL, "staging name too long for version %s", version);
	return CDX_OK;
}

/* owner_pid parses the pid after prefix ("<digits>" up to '-', '.' or the
 * end); 0 if there is none. */
static pid_t
owner_pid(const char *name, const char *prefix)
{
	const char *p = name + strlen(prefix);
	long pid = 0;
	if (*p < '0' || *p > '9')
		return 0;
	for (; *p >= '0' && *p <= '9'; p++) {
		pid = pid * 10 + (*p - '0');
		if (pid > INT_MAX)
			return 0;
	}
	return (*p == 0 || *p == '-' || *p == '.') ? (pid_t) pid : 0;
}

static int
is_stale(const char *name, const char *prefix, const struct stat *st)
{
	if (time(NULL) - st->st_mtime > STALE_SECONDS)
		return 1; /* also covers a recycled pid */
	pid_t pid = owner_pid(name, prefix);
	if (pid <= 0)
		return 0; /* unknown owner: only age makes it stale */
	return kill(pid, 0) != 0 && errno == ESRCH;
}

static int
cmp_desc(const void *a, const void *b)
{
	return -strcmp(*(char *const *) a, *(char *const *) b);
}

int
cdx_version_gc(const char *collection_dir, unsigned keep)
{
	char current[CDX_NAME_MAX];
	int rc = cdx_version_resolve(collection_dir, current);
	if (rc == CDX_ENOTFOUND)
		current[0] = 0;
	else if (rc != CDX_OK)
		return rc; /* never guess which version is live */
	DIR *d = opendir(collection_dir);
	if (d == NULL)
		return cdx_error_errno(
		    errno == ENOENT ? CDX_ENOTFOUND : CDX_EIO, "opendir %s", collection_dir);
	char **names = NULL;
	size_t n = 0, cap = 0;
	int first = CDX_OK;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		char path[PATH_MAX];
		struct stat st;
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		if (join(path, sizeof(path), collection_dir, e->d_name) != CDX_OK || lstat(path, &st) != 0)
			continue;
		if (strncmp(e->d_name, STAGING_PREFIX, strlen(STAGING_PREFIX)) == 0) {
			if (S_ISDIR(st.st_mode) && is_stale(e->d_name, STAGING_PREFIX, &st)) {
				cdx_info("SHARD-GC", "removing stale staging directory %s", path);
				rc = cdx_rm_rf(path);
				if (rc != CDX_OK && first == CDX_OK)
					first = rc;
			}
			continue;
		}
		if (strncmp(e->d_name, CURRENT_TMP_PREFIX, strlen(CURRENT_TMP_PREFIX)) == 0) {
			if (S_ISLNK(st.st_mode) && is_stale(e->d_name, CURRENT_TMP_PREFIX, &st))
				unlink(path);
			continue;
		}
		if (!S_ISDIR(st.st_mode) || !cdx_name_valid(e->d_name))
			continue;
		/* only complete versions: never some other directory an
		 * operator keeps here (and which might sort as "newest") */
		char mf[PATH_MAX];
		if (join(mf, sizeof(mf), path, CDX_MANIFEST_FILE) != CDX_OK || lstat(mf, &st) != 0)
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 16;
			char **nn = realloc(names, cap * sizeof(*names));
			if (nn == NULL) {
				first = cdx_error(CDX_ENOMEM, "gc %s", collection_dir);
				break;
			}
			names = nn;
		}
		if ((names[n] = strdup(e->d_name)) == NULL) {
			first = cdx_error(CDX_ENOMEM, "gc %s", collection_dir);
			break;
		}
		n++;
	}
	closedir(d);
	if (first == CDX_ENOMEM) {
		for (size_t i = 0; i < n; i++)
			free(names[i]);
		free(names);
		return first;
	}
	/* The newest keep versions stay, and CURRENT's target too even when it
	 * is older (after a rollback). */
	if (n > 0)
		qsort(names, n, sizeof(*names), cmp_desc);
	for (size_t i = 0; i < n; i++) {
		if (i >= keep && strcmp(names[i], current) != 0) {
			char path[PATH_MAX];
			if (join(path, sizeof(path), collection_dir, names[i]) == CDX_OK) {
				cdx_info("SHARD-GC", "removing old version %s", path);
				rc = cdx_rm_rf(path);
				if (rc != CDX_OK && first == CDX_OK)
					first = rc;
			}
		}
		free(names[i]);
	}
	free(names);
	if (first == CDX_OK)
		first = cdx_fsync_path(collection_dir);
	return first;
}

int
cdx_version_path_resolve(const char *path, char *version_dir)
{
	char rp[PATH_MAX], probe[PATH_MAX];
	struct stat st;
	version_dir[0] = 0;
	if (realpath(path, rp) == NULL)
		return cdx_error_errno(errno == ENOENT ? CDX_ENOTFOUND : CDX_EIO, "resolve %s", path);
	if (stat(rp, &st) != 0 || !S_ISDIR(st.st_mode))
		return cdx_error(CDX_EINVAL, "%s is not a directory", path);
	int rc = join(probe, sizeof(probe), rp, CDX_MANIFEST_FILE);
	if (rc != CDX_OK)
		return rc;
	if (stat(probe, &st) == 0) { /* DIR/NAME/<version> or DIR/NAME/CURRENT */
		memcpy(version_dir, rp, strlen(rp) + 1);
		return CDX_OK;
	}
	if ((rc = join(probe, sizeof(probe), rp, CDX_CURRENT_LINK)) != CDX_OK)
		return rc;
	if (lstat(probe, &st) != 0)
		return cdx_error(CDX_ENOTFOUND,
		    "%s is neither a version directory (no %s) nor a collection (no %s)", path,
		    CDX_MANIFEST_FILE, CDX_CURRENT_LINK);
	char version[CDX_NAME_MAX];
	if ((rc = cdx_version_resolve(rp, version)) != CDX_OK)
		return rc;
	if ((rc = join(probe, sizeof(probe), rp, version)) != CDX_OK)
		return rc;
	if (realpath(probe, version_dir) == NULL) {
		version_dir[0] = 0;
		return cdx_error_errno(CDX_ECORRUPT, "resolve %s", probe);
	}
	return CDX_OK;
}
