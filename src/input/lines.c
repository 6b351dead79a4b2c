/*
 * lines.c — the line reader of text inputs, and the checks all readers
 * share (extension, open errors, text detection).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "input/input_int.h"

int
cdx__has_suffix(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);
	return n >= m && strcasecmp(s + n - m, suffix) == 0;
}

int
cdx__open_error(const char *what, const char *path)
{
	return cdx_error_errno(errno == ENOENT ? CDX_ENOTFOUND
	        : errno == EACCES              ? CDX_EPERM
	                                       : CDX_EIO,
	    "cannot read %s %s", what, path);
}

int
cdx__looks_like_text(const uint8_t *data, size_t len)
{
	size_t n = CDX_MIN(len, (size_t) 4096);
	if (n == 0)
		return 0;
	for (size_t i = 0; i < n; i++)
		if ((data[i] < 0x20 || data[i] > 0x7e) && data[i] != '\n' && data[i] != '\r'
		    && data[i] != '\t')
			return 0;
	return 1;
}

int
cdx__lines_open(struct cdx__lines *l, const char *path, const char *what)
{
	memset(l, 0, sizeof(*l));
	l->path = path;
	l->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (l->fd < 0)
		return cdx__open_error(what, path);
	l->cap = 1 << 20;
	l->buf = malloc(l->cap);
	if (l->buf == NULL) {
		close(l->fd);
		l->fd = -1;
		return cdx_error(CDX_ENOMEM, "reading %s", path);
	}
	return CDX_OK;
}

void
cdx__lines_close(struct cdx__lines *l)
{
	if (l->fd >= 0)
		close(l->fd);
	l->fd = -1;
	free(l->buf);
	l->buf = NULL;
}

int
cdx__lines_next(struct cdx__lines *l, const char **s, size_t *len)
{
	for (;;) {
		char *nl = memchr(l->buf + l->start, '\n', l->end - l->start);
		if (nl != NULL || (l->eof && l->end > l->start)) {
			char *b = l->buf + l->start;
			size_t n = nl ? (size_t) (nl - b) : l->end - l->start;
			l->start += nl ? n + 1 : n;
			if (n > 0 && b[n - 1] == '\r')
				n--;
			*s = b;
			*len = n;
			l->line++;
			return 1;
		}
		if (l->eof)
			return 0;
		if (l->start > 0) {
			memmove(l->buf, l->buf + l->start, l->end - l->start);
			l->end -= l->start;
			l->start = 0;
		}
		if (l->end == l->cap) {
			/* a line longer than the buffer: grow (keys are capped later) */
			char *nb = realloc(l->buf, l->cap * 2);
			if (nb == NULL)
				return -cdx_error(CDX_ENOMEM, "reading %s", l->path);
			l->buf = nb;
			l->cap *= 2;
		}
		ssize_t got = read(l->fd, l->buf + l->end, l->cap - l->end);
		if (got < 0) {
			if (errno == EINTR)
				continue;
			return -cdx_error_errno(CDX_EIO, "read %s", l->path);
		}
		if (got == 0)
			l->eof = 1;
		l->end += (size_t) got;
	}
}
