/*
 * implog.h — the impression log: records (serialized candex.v1.Impression
 * messages) written by a background thread, off the request path, into
 * size-rotated files of length-delimited records (each preceded by its
 * length as a LEB128 varint, as protobuf's writeDelimitedTo writes them).
 *
 * DESIGN
 * A request thread only copies its record into the active one of two
 * buffers under a mutex held for that memcpy, and never waits for the disk:
 * when the buffer is full the record is dropped and counted. The writer
 * thread swaps the buffers and writes the full one with write(2). A write
 * that fails (disk full, file size limit, I/O error) drops that buffer's
 * records, counts them, and cuts the file back to its last whole record;
 * the next buffer tries again. Memory is bounded by the two buffers.
 *
 * Files: DIR/impressions-<UTC yyyymmddThhmmssZ>-<seq>.implog, a new one when
 * the current one would pass max_file_bytes. Readers take every
 * *.implog file of the directory in name order.
 */
#ifndef CANDEX_IMPLOG_H
#define CANDEX_IMPLOG_H

#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

#define CDX_IMPLOG_SUFFIX ".implog"

typedef struct cdx_implog cdx_implog;

struct cdx_implog_config {
	const char *dir;         /* created if missing */
	uint64_t max_file_bytes; /* rotate before a file passes this; 0 = 64 MiB */
	size_t buffer_bytes;     /* each of the two buffers; 0 = 4 MiB */
};

struct cdx_implog_stats {
	uint64_t written;       /* records written */
	uint64_t dropped_full;  /* records dropped: the buffer was full */
	uint64_t dropped_write; /* records dropped: the write failed */
	uint64_t files;         /* files opened */
};

/* cdx_implog_open starts the writer thread. On success *lp is set; close it
 * with cdx_implog_close(), which writes what is buffered first. */
int cdx_implog_open(cdx_implog **lp, const struct cdx_implog_config *cfg);
void cdx_implog_close(cdx_implog *l); /* NULL is a no-op */

/* cdx_implog_append queues one record (copied). Never blocks on I/O.
 * CDX_EOVERLOAD when it was dropped (counted in dropped_full). */
int cdx_implog_append(cdx_implog *l, const void *record, size_t len);

/* cdx_implog_flush waits until everything appended before the call is
 * written or dropped (tests; at most timeout_ms). */
int cdx_implog_flush(cdx_implog *l, uint32_t timeout_ms);

void cdx_implog_stats(cdx_implog *l, struct cdx_implog_stats *st);

/* Reading: cdx_implog_next returns the next record of data[*off .. len)
 * in *rec / *rec_len and advances *off: 1 for a record, 0 at the end, -1
 * for a truncated or malformed record (the rest of the file is unusable). */
int cdx_implog_next(const uint8_t *data, size_t len, size_t *off, const uint8_t **rec, size_t *rec_len);

/* cdx_implog_list returns the *.implog files of dir (or dir itself when
 * it is a file), sorted, as a malloc'd array of malloc'd paths. */
int cdx_implog_list(const char *dir, char ***paths, size_t *n);

#endif
