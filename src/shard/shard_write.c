/*
 * shard_write.c — streaming shard writer.
 *
 * The file is created with O_EXCL, a zeroed header is reserved, and each
 * part is compressed as one LZ4 frame straight to the file in pieces of at
 * most CHUNK input bytes, so memory stays bounded by lz4's 4 MB block buffer
 * plus one output buffer whatever the part size. The real header goes in
 * last with pwrite: a crash before commit leaves a file with a zero header,
 * which readers reject (bad magic). Any failure is sticky: later calls
 * return the first error, and commit/abort unlink the file.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lz4frame.h>

#include "shard/shard.h"

#define CHUNK (1u << 20) /* input bytes fed to LZ4F per call */

struct cdx_shard_writer {
	char *path;
	int fd;
	int err;      /* first error; sticky */
	int in_part;  /* between begin_part and end_part */
	uint64_t off; /* next write offset */
	struct cdx_shard_info info;
	LZ4F_cctx *cctx;
	LZ4F_preferences_t prefs;
	uint8_t *out; /* compressed output staging, outcap bytes */
	size_t outcap;
	cdx_xxh64_state hash; /* of the current part's stored bytes */
	struct cdx_part_desc cur;
	char *stream_buf; /* the stdio buffer of a part stream, while one is open */
};

static int
w_fail(cdx_shard_writer *w, int rc)
{
	if (w->err == CDX_OK)
		w->err = rc;
	return rc;
}

/* w_emit writes compressed bytes and folds them into the part hash. */
static int
w_emit(cdx_shard_writer *w, const void *p, size_t n)
{
	if (n == 0)
		return CDX_OK;
	int rc = cdx_write_all(w->fd, p, n, w->path);
	if (rc != CDX_OK)
		return w_fail(w, rc);
	cdx_xxh64_update(&w->hash, p, n);
	w->off += n;
	return CDX_OK;
}

static int
w_lz4err(cdx_shard_writer *w, size_t code, const char *what)
{
	return w_fail(w, cdx_error(CDX_EINTERNAL, "%s: lz4 %s: %s", w->path, what, LZ4F_getErrorName(code)));
}

int
cdx_shard_writer_open(cdx_shard_writer **wp, const char *path, const struct cdx_shard_info *info)
{
	*wp = NULL;
	if (strnlen(info->collection, CDX_NAME_MAX) >= CDX_NAME_MAX)
		return cdx_error(CDX_EINVAL, "%s: collection name too long", path);
	if (info->dim == 0 || info->shard_count == 0 || info->shard_index >= info->shard_count
	    || info->metric > CDX_METRIC_COS)
		return cdx_error(CDX_EINVAL, "%s: invalid shard info (dim %u, shard %u of %u, metric %u)",
		    path, info->dim, info->shard_index, info->shard_count, info->metric);
	cdx_shard_writer *w = calloc(1, sizeof(*w));
	if (w == NULL)
		return cdx_error(CDX_ENOMEM, "shard writer for %s", path);
	w->fd = -1;
	w->info = *info;
	w->info.format_version = CDX_SHARD_FORMAT_VERSION;
	w->info.nparts = 0;
	memset(w->info.parts, 0, sizeof(w->info.parts));
	w->prefs.frameInfo.blockSizeID = LZ4F_max4MB;
	w->prefs.frameInfo.blockMode = LZ4F_blockLinked;
	w->prefs.frameInfo.contentChecksumFlag = LZ4F_contentChecksumEnabled;
	w->prefs.frameInfo.blockChecksumFlag = LZ4F_noBlockChecksum;
	w->prefs.compressionLevel = 0; /* default: fast */
	w->outcap = LZ4F_compressBound(CHUNK, &w->prefs);
	if (w->outcap < LZ4F_HEADER_SIZE_MAX)
		w->outcap = LZ4F_HEADER_SIZE_MAX;
	w->path = strdup(path);
	w->out = malloc(w->outcap);
	if (w->path == NULL || w->out == NULL) {
		free(w->path);
		free(w->out);
		free(w);
		return cdx_error(CDX_ENOMEM, "shard writer for %s", path);
	}
	size_t r = LZ4F_createCompressionContext(&w->cctx, LZ4F_VERSION);
	if (LZ4F_isError(r)) {
		free(w->path);
		free(w->out);
		free(w);
		return cdx_error(CDX_ENOMEM, "%s: lz4 context: %s", path, LZ4F_getErrorName(r));
	}
	w->fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (w->fd < 0) {
		int rc = cdx_error_errno(CDX_EIO, "create %s", path);
		LZ4F_freeCompressionContext(w->cctx);
		free(w->path);
		free(w->out);
		free(w);
		return rc;
	}
	/* Reserve the header with real bytes (not a hole) so a full disk shows
	 * up now rather than at commit. */
	uint8_t *zero = calloc(1, CDX_SHARD_HEADER_SIZE);
	int rc = zero ? cdx_write_all(w->fd, zero, CDX_SHARD_HEADER_SIZE, path)
	              : cdx_error(CDX_ENOMEM, "shard writer for %s", path);
	free(zero);
	if (rc != CDX_OK) {
		cdx_shard_writer_abort(w);
		return rc;
	}
	w->off = CDX_SHARD_HEADER_SIZE;
	*wp = w;
	return CDX_OK;
}

int
cdx_shard_writer_begin_part(cdx_shard_writer *w, uint32_t kind, uint32_t flags)
{
	if (w->err != CDX_OK)
		return w->err;
	if (w->in_part)
		return cdx_error(CDX_EINVAL, "%s: begin_part inside a part", w->path);
	if (w->info.nparts >= CDX_SHARD_MAX_PARTS)
		return cdx_error(CDX_EINVAL, "%s: too many parts (max %d)", w->path, CDX_SHARD_MAX_PARTS);
	for (uint32_t i = 0; i < w->info.nparts; i++)
		if (w->info.parts[i].kind == kind)
			return cdx_error(
			    CDX_EINVAL, "%s: duplicate part %s", w->path, cdx_part_name((int) kind));
	memset(&w->cur, 0, sizeof(w->cur));
	w->cur.kind = kind;
	w->cur.flags = flags;
	w->cur.offset = w->off;
	cdx_xxh64_init(&w->hash, 0);
	size_t n = LZ4F_compressBegin(w->cctx, w->out, w->outcap, &w->prefs);
	if (LZ4F_isError(n))
		return w_lz4err(w, n, "begin");
	w->in_part = 1;
	return w_emit(w, w->out, n);
}

int
cdx_shard_writer_write(cdx_shard_writer *w, const void *data, size_t len)
{
	if (w->err != CDX_OK)
		return w->err;
	if (!w->in_part)
		return cdx_error(CDX_EINVAL, "%s: write outside a part", w->path);
	const uint8_t *p = data;
	while (len > 0) {
		size_t take = CDX_MIN(len, (size_t) CHUNK);
		size_t n = LZ4F_compressUpdate(w->cctx, w->out, w->outcap, p, take, NULL);
		if (LZ4F_isError(n))
			return w_lz4err(w, n, "compress");
		int rc = w_emit(w, w->out, n);
		if (rc != CDX_OK)
			return rc;
		w->cur.raw_size += take;
		p += take;
		len -= take;
	}
	return CDX_OK;
}

int
cdx_shard_writer_end_part(cdx_shard_writer *w)
{
	if (w->err != CDX_OK)
		return w->err;
	if (!w->in_part)
		return cdx_error(CDX_EINVAL, "%s: end_part outside a part", w->path);
	size_t n = LZ4F_compressEnd(w->cctx, w->out, w->outcap, NULL);
	if (LZ4F_isError(n))
		return w_lz4err(w, n, "end");
	int rc = w_emit(w, w->out, n);
	if (rc != CDX_OK)
		return rc;
	w->in_part = 0;
	w->cur.stored_size = w->off - w->cur.offset;
	w->cur.xxh64 = cdx_xxh64_digest(&w->hash);
	w->info.parts[w->info.nparts++] = w->cur;
	return CDX_OK;
}

static void
w_free(cdx_shard_writer *w)
{
	if (w->fd >= 0)
		close(w->fd);
	LZ4F_freeCompressionContext(w->cctx);
	free(w->out);
	free(w->stream_buf);
	free(w->path);
	free(w);
}

int
cdx_shard_writer_commit(cdx_shard_writer *w, struct cdx_shard_info *info_out)
{
	int rc = w->err;
	if (rc == CDX_OK && w->in_part)
		rc = cdx_error(CDX_EINVAL, "%s: commit inside a part", w->path);
	uint8_t *hdr = NULL;
	if (rc == CDX_OK) {
		hdr = malloc(CDX_SHARD_HEADER_SIZE);
		rc = hdr ? cdx_shard_header_encode(&w->info, hdr)
		         : cdx_error(CDX_ENOMEM, "%s: header", w->path);
	}
	if (rc == CDX_OK)
		rc = cdx_pwrite_all(w->fd, hdr, CDX_SHARD_HEADER_SIZE, 0, w->path);
	free(hdr);
	if (rc == CDX_OK && fsync(w->fd) != 0)
		rc = cdx_error_errno(CDX_EIO, "fsync %s", w->path);
	if (rc == CDX_OK) {
		int fd = w->fd;
		w->fd = -1;
		if (close(fd) != 0)
			rc = cdx_error_errno(CDX_EIO, "close %s", w->path);
	}
	if (rc != CDX_OK) {
		cdx_shard_writer_abort(w);
		return rc;
	}
	if (info_out != NULL)
		*info_out = w->info;
	w_free(w);
	return CDX_OK;
}

void
cdx_shard_writer_abort(cdx_shard_writer *w)
{
	if (w == NULL)
		return;
	int saved = errno;
	unlink(w->path);
	errno = saved;
	w_free(w);
}

/* --- FILE* parts --------------------------------------------------------- */

/* A part stream's stdio buffer: Faiss writes field by field, in pieces of a
 * few bytes, and LZ4F wants large ones (setvbuf with a NULL buffer would
 * ignore the size and use stdio's 4 KiB default). */
#define PART_STREAM_BUFFER (1u << 20)

static ssize_t
wps_write(void *cookie, const char *buf, size_t size)
{
	cdx_shard_writer *w = cookie;
	if (cdx_shard_writer_write(w, buf, size) != CDX_OK) {
		errno = w->err == CDX_ENOSPC ? ENOSPC : EIO;
		return 0; /* fopencookie(3): 0 is an error */
	}
	return (ssize_t) size;
}

static int
wps_close(void *cookie)
{
	cdx_shard_writer *w = cookie;
	/* fclose has flushed: the buffer is no longer used */
	free(w->stream_buf);
	w->stream_buf = NULL;
	if (w->err == CDX_OK && w->in_part && cdx_shard_writer_end_part(w) != CDX_OK)
		w_fail(w, CDX_EIO);
	if (w->err != CDX_OK) {
		errno = w->err == CDX_ENOSPC ? ENOSPC : EIO;
		return -1;
	}
	return 0;
}

int
cdx_shard_writer_part_stream(cdx_shard_writer *w, uint32_t kind, uint32_t flags, FILE **fp)
{
	*fp = NULL;
	int rc = cdx_shard_writer_begin_part(w, kind, flags);
	if (rc != CDX_OK)
		return rc;
	cookie_io_functions_t io = { .read = NULL, .write = wps_write, .seek = NULL, .close = wps_close };
	if ((w->stream_buf = malloc(PART_STREAM_BUFFER)) == NULL)
		return w_fail(w, cdx_error(CDX_ENOMEM, "%s: part stream buffer", w->path));
	FILE *f = fopencookie(w, "w", io);
	if (f == NULL) {
		free(w->stream_buf);
		w->stream_buf = NULL;
		return w_fail(w, cdx_error_errno(CDX_ENOMEM, "%s: fopencookie", w->path));
	}
	setvbuf(f, w->stream_buf, _IOFBF, PART_STREAM_BUFFER);
	*fp = f;
	return CDX_OK;
}

int
cdx_shard_writer_status(const cdx_shard_writer *w)
{
	return w->err;
}
