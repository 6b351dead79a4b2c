/*
 * implog.c — the impression log writer and reader (implog.h DESIGN).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/idlist.h"
#include "recommend/implog.h"

struct logbuf {
	uint8_t *data;
	size_t len;
	uint64_t records;
};

struct cdx_implog {
	char dir[PATH_MAX];
	uint64_t max_file_bytes;
	size_t cap;
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;      /* the writer waits for data or stop */
	pthread_cond_t done_cv; /* flush waits for the writer */
	struct logbuf active, spare;
	int stop;
	uint64_t appended, settled; /* records appended, and written or dropped by the writer */
	/* the writer's file (only the writer thread touches these) */
	int fd;
	uint64_t file_bytes;
	unsigned seq;
	uint64_t files_opened;
	struct cdx_implog_stats st; /* under mu */
};

static int
open_next(cdx_implog *l)
{
	char path[PATH_MAX + 64], stamp[32];
	time_t now = time(NULL);
	struct tm tm;
	gmtime_r(&now, &tm);
	strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%SZ", &tm);
	for (int tries = 0; tries < 1000; tries++) {
		snprintf(path, sizeof(path), "%s/impressions-%s-%06u%s", l->dir, stamp, ++l->seq,
		    CDX_IMPLOG_SUFFIX);
		int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0644);
		if (fd >= 0) {
			l->fd = fd;
			l->file_bytes = 0;
			l->files_opened++;
			return CDX_OK;
		}
		if (errno != EEXIST)
			return cdx_error_errno(CDX_EIO, "impression log %s", path);
	}
	return cdx_error(CDX_EIO, "impression log: no free file name in %s", l->dir);
}

/* write_buf writes one buffer (1) or fails (0): its records are then
 * dropped and the file is cut back to its last whole record. */
static int
write_buf(cdx_implog *l, const struct logbuf *b)
{
	if (b->len == 0)
		return 1;
	if (l->fd >= 0 && l->file_bytes > 0 && l->file_bytes + b->len > l->max_file_bytes) {
		fdatasync(l->fd);
		close(l->fd);
		l->fd = -1;
	}
	int ok = l->fd >= 0 || open_next(l) == CDX_OK;
	size_t done = 0;
	while (ok && done < b->len) {
		ssize_t n = write(l->fd, b->data + done, b->len - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			ok = 0;
		else
			done += (size_t) n;
	}
	if (ok) {
		l->file_bytes += b->len;
		return 1;
	}
	if (l->fd >= 0 && done > 0 && ftruncate(l->fd, (off_t) l->file_bytes) != 0) {
		/* cannot cut the partial record off: start a new file */
		close(l->fd);
		l->fd = -1;
	}
	cdx_error_clear();
	return 0;
}

static void *
writer_main(void *arg)
{
	cdx_implog *l = arg;
	pthread_mutex_lock(&l->mu);
	for (;;) {
		while (l->active.len == 0 && !l->stop)
			pthread_cond_wait(&l->cv, &l->mu);
		if (l->active.len == 0 && l->stop)
			break;
		struct logbuf full = l->active;
		l->active = l->spare;
		l->active.len = 0;
		l->active.records = 0;
		pthread_mutex_unlock(&l->mu);
		int ok = write_buf(l, &full);
		pthread_mutex_lock(&l->mu);
		if (ok)
			l->st.written += full.records;
		else
			l->st.dropped_write += full.records;
		l->st.files = l->files_opened;
		l->spare = full;
		l->settled += full.records;
		pthread_cond_broadcast(&l->done_cv);
	}
	pthread_mutex_unlock(&l->mu);
	return NULL;
}

int
cdx_implog_open(cdx_implog **lp, const struct cdx_implog_config *cfg)
{
	*lp = NULL;
	cdx_implog *l = calloc(1, sizeof(*l));
	if (l == NULL)
		return cdx_error(CDX_ENOMEM, "impression log");
	if (snprintf(l->dir, sizeof(l->dir), "%s", cfg->dir) >= (int) sizeof(l->dir)) {
		free(l);
		return cdx_error(CDX_EINVAL, "impression log directory name too long");
	}
	l->max_file_bytes = cfg->max_file_bytes ? cfg->max_file_bytes : (64u << 20);
	l->cap = cfg->buffer_bytes ? cfg->buffer_bytes : (4u << 20);
	l->fd = -1;
	int rc = cdx_mkdir_p(l->dir, 0755);
	if (rc == CDX_OK
	    && ((l->active.data = malloc(l->cap)) == NULL || (l->spare.data = malloc(l->cap)) == NULL))
		rc = cdx_error(CDX_ENOMEM, "impression log buffers");
	if (rc == CDX_OK) {
		pthread_mutex_init(&l->mu, NULL);
		pthread_cond_init(&l->cv, NULL);
		pthread_cond_init(&l->done_cv, NULL);
		if (pthread_create(&l->thread, NULL, writer_main, l) != 0) {
			pthread_mutex_destroy(&l->mu);
			pthread_cond_destroy(&l->cv);
			pthread_cond_destroy(&l->done_cv);
			rc = cdx_error(CDX_ENOMEM, "impression log thread");
		}
	}
	if (rc != CDX_OK) {
		free(l->active.data);
		free(l->spare.data);
		free(l);
		return rc;
	}
	*lp = l;
	return CDX_OK;
}

void
cdx_implog_close(cdx_implog *l)
{
	if (l == NULL)
		return;
	pthread_mutex_lock(&l->mu);
	l->stop = 1;
	pthread_cond_signal(&l->cv);
	pthread_mutex_unlock(&l->mu);
	pthread_join(l->thread, NULL);
	if (l->fd >= 0) {
		fdatasync(l->fd);
		close(l->fd);
	}
	pthread_mutex_destroy(&l->mu);
	pthread_cond_destroy(&l->cv);
	pthread_cond_destroy(&l->done_cv);
	free(l->active.data);
	free(l->spare.data);
	free(l);
}

int
cdx_implog_append(cdx_implog *l, const void *record, size_t len)
{
	uint8_t head[10];
	size_t hl = cdx_varint_put(head, len);
	pthread_mutex_lock(&l->mu);
	if (l->active.len + hl + len > l->cap) {
		l->st.dropped_full++;
		pthread_mutex_unlock(&l->mu);
		return CDX_EOVERLOAD;
	}
	memcpy(l->active.data + l->active.len, head, hl);
	memcpy(l->active.data + l->active.len + hl, record, len);
	l->active.len += hl + len;
	l->active.records++;
	l->appended++;
	pthread_cond_signal(&l->cv);
	pthread_mutex_unlock(&l->mu);
	return CDX_OK;
}

int
cdx_implog_flush(cdx_implog *l, uint32_t timeout_ms)
{
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += timeout_ms / 1000;
	until.tv_nsec += (long) (timeout_ms % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	int rc = CDX_OK;
	pthread_mutex_lock(&l->mu);
	uint64_t want = l->appended;
	while (l->settled < want && rc == CDX_OK)
		if (pthread_cond_timedwait(&l->done_cv, &l->mu, &until) == ETIMEDOUT)
			rc = CDX_ETIMEDOUT;
	pthread_mutex_unlock(&l->mu);
	return rc;
}

void
cdx_implog_stats(cdx_implog *l, struct cdx_implog_stats *st)
{
	pthread_mutex_lock(&l->mu);
	*st = l->st;
	pthread_mutex_unlock(&l->mu);
}

int
cdx_implog_next(const uint8_t *data, size_t len, size_t *off, const uint8_t **rec, size_t *rec_len)
{
	if (*off >= len)
		return 0;
	const uint8_t *p = data + *off, *end = data + len;
	uint64_t v;
	if (cdx_varint_get(&p, end, &v) != 0 || v > (uint64_t) (end - p))
		return -1;
	*rec = p;
	*rec_len = (size_t) v;
	*off = (size_t) (p - data) + (size_t) v;
	return 1;
}

int
cdx_implog_list(const char *dir, char ***pathsp, size_t *np)
{
	*pathsp = NULL;
	*np = 0;
	struct stat st;
	if (stat(dir, &st) != 0)
		return cdx_error_errno(CDX_ENOTFOUND, "impression log %s", dir);
	char **paths = NULL;
	size_t n = 0;
	if (!S_ISDIR(st.st_mode)) {
		if ((paths = malloc(sizeof(char *))) == NULL || (paths[0] = strdup(dir)) == NULL) {
			free(paths);
			return cdx_error(CDX_ENOMEM, "impression log list");
		}
		*pathsp = paths;
		*np = 1;
		return CDX_OK;
	}
	DIR *d = opendir(dir);
	if (d == NULL)
		return cdx_error_errno(CDX_EIO, "impression log directory %s", dir);
	struct dirent *de;
	size_t sl = strlen(CDX_IMPLOG_SUFFIX);
	int rc = CDX_OK;
	while (rc == CDX_OK && (de = readdir(d)) != NULL) {
		size_t len = strlen(de->d_name);
		if (len <= sl || strcmp(de->d_name + len - sl, CDX_IMPLOG_SUFFIX) != 0)
			continue;
		char **grown = realloc(paths, (n + 1) * sizeof(char *));
		if (grown == NULL || asprintf(&grown[n], "%s/%s", dir, de->d_name) < 0) {
			paths = grown ? grown : paths;
			rc = cdx_error(CDX_ENOMEM, "impression log list");
			break;
		}
		paths = grown;
		n++;
	}
	closedir(d);
	if (rc != CDX_OK) {
		for (size_t i = 0; i < n; i++)
			free(paths[i]);
		free(paths);
		return rc;
	}
	if (n > 1)
		qsort(paths, n, sizeof(char *), cdx_cmp_str);
	*pathsp = paths;
	*np = n;
	return CDX_OK;
}
