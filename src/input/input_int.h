/*
 * input_int.h — what the files of src/input share: the .npy header, the
 * line reader of text files, and the checks every reader makes.
 */
#ifndef CANDEX_INPUT_INT_H
#define CANDEX_INPUT_INT_H

#include <stddef.h>
#include <stdint.h>

#include "input/input.h"

/* cdx__has_suffix: path ends with suffix, ignoring case. */
int cdx__has_suffix(const char *path, const char *suffix);

/* cdx__open_error records why open(path) failed (errno) as cdx_error does:
 * CDX_ENOTFOUND, CDX_EPERM or CDX_EIO, naming what ("input", "ids"...). */
int cdx__open_error(const char *what, const char *path);

/* cdx__looks_like_text: the first bytes of data are printable ASCII and
 * white space, as in a CSV or a list of numbers, never in binary floats. */
int cdx__looks_like_text(const uint8_t *data, size_t len);

/* A parsed .npy header (format 1.0, 2.0 or 3.0). */
struct cdx__npy {
	char descr[16]; /* e.g. "<f4" */
	int fortran;
	int ndim;
	uint64_t shape[3]; /* the first 3 dimensions (ndim may be larger) */
	uint64_t data_off; /* file offset of the data */
};

/* cdx__npy_parse reads the header at the start of map[0..len). */
int cdx__npy_parse(const uint8_t *map, size_t len, const char *path, struct cdx__npy *h);

/* A buffered reader of text lines, for ids and keys files. */
struct cdx__lines {
	const char *path;
	int fd;
	char *buf;
	size_t cap, start, end; /* unread bytes are buf[start..end) */
	int eof;
	uint64_t line; /* 1-based number of the line last returned */
};

int cdx__lines_open(struct cdx__lines *l, const char *path, const char *what);
void cdx__lines_close(struct cdx__lines *l);
/* cdx__lines_next returns 1 with the next line (without "\n" or "\r\n") in
 * *s and *len, 0 at end of file, or -code on error. */
int cdx__lines_next(struct cdx__lines *l, const char **s, size_t *len);

#endif
