/*
 * shard_header.c — the 4096-byte shard header (layout in shard.h).
 *
 * Fields are serialised one by one in little-endian order rather than by
 * copying a struct, so the format does not depend on compiler padding.
 */
#include <string.h>

#include "shard/shard.h"

#define OFF_MAGIC       0
#define OFF_VERSION     8
#define OFF_HDRSIZE     12
#define OFF_COLLECTION  16
#define OFF_METRIC      80
#define OFF_DIM         84
#define OFF_SHARD_INDEX 88
#define OFF_SHARD_COUNT 92
#define OFF_ROWS        96
#define OFF_NPARTS      104
#define OFF_PARTS       CDX_SHARD_HDR_PARTS_OFFSET

_Static_assert(OFF_PARTS + CDX_SHARD_MAX_PARTS * CDX_SHARD_HDR_PART_SIZE <= CDX_SHARD_HDR_CHECKSUM_OFFSET,
    "part table overlaps the checksum");
_Static_assert(OFF_COLLECTION + CDX_NAME_MAX <= OFF_METRIC, "collection field too small");

int
cdx_shard_header_encode(const struct cdx_shard_info *info, uint8_t out[CDX_SHARD_HEADER_SIZE])
{
	size_t clen = strnlen(info->collection, CDX_NAME_MAX);
	if (clen >= CDX_NAME_MAX)
		return cdx_error(CDX_EINVAL, "shard header: collection name too long");
	if (info->nparts > CDX_SHARD_MAX_PARTS)
		return cdx_error(
		    CDX_EINVAL, "shard header: %u parts (max %d)", info->nparts, CDX_SHARD_MAX_PARTS);
	memset(out, 0, CDX_SHARD_HEADER_SIZE);
	memcpy(out + OFF_MAGIC, CDX_SHARD_MAGIC, 8);
	cdx_put_le32(
	    out + OFF_VERSION, info->format_version ? info->format_version : CDX_SHARD_FORMAT_VERSION);
	cdx_put_le32(out + OFF_HDRSIZE, CDX_SHARD_HEADER_SIZE);
	memcpy(out + OFF_COLLECTION, info->collection, clen);
	cdx_put_le32(out + OFF_METRIC, info->metric);
	cdx_put_le32(out + OFF_DIM, info->dim);
	cdx_put_le32(out + OFF_SHARD_INDEX, info->shard_index);
	cdx_put_le32(out + OFF_SHARD_COUNT, info->shard_count);
	cdx_put_le64(out + OFF_ROWS, info->rows);
	cdx_put_le32(out + OFF_NPARTS, info->nparts);
	for (uint32_t i = 0; i < info->nparts; i++) {
		const struct cdx_part_desc *pd = &info->parts[i];
		uint8_t *p = out + OFF_PARTS + (size_t) i * CDX_SHARD_HDR_PART_SIZE;
		cdx_put_le32(p + 0, pd->kind);
		cdx_put_le32(p + 4, pd->flags);
		cdx_put_le64(p + 8, pd->offset);
		cdx_put_le64(p + 16, pd->stored_size);
		cdx_put_le64(p + 24, pd->raw_size);
		cdx_put_le64(p + 32, pd->xxh64);
	}
	cdx_put_le64(out + CDX_SHARD_HDR_CHECKSUM_OFFSET, cdx_xxh64(out, CDX_SHARD_HDR_CHECKSUM_OFFSET, 0));
	return CDX_OK;
}

int
cdx_shard_header_decode(const uint8_t *buf, struct cdx_shard_info *info, const char *path)
{
	memset(info, 0, sizeof(*info));
	if (memcmp(buf + OFF_MAGIC, CDX_SHARD_MAGIC, 8) != 0)
		return cdx_error(CDX_ECORRUPT, "%s: not a candex shard (bad magic)", path);
	uint32_t version = cdx_get_le32(buf + OFF_VERSION);
	if (version > CDX_SHARD_FORMAT_VERSION)
		return cdx_error(CDX_EVERSION, "%s: shard format version %u is newer than supported (%d)",
		    path, version, CDX_SHARD_FORMAT_VERSION);
	if (version == 0)
		return cdx_error(CDX_ECORRUPT, "%s: shard format version 0", path);
	uint64_t want = cdx_get_le64(buf + CDX_SHARD_HDR_CHECKSUM_OFFSET);
	uint64_t got = cdx_xxh64(buf, CDX_SHARD_HDR_CHECKSUM_OFFSET, 0);
	if (want != got)
		return cdx_error(CDX_ECORRUPT,
		    "%s: header checksum mismatch (stored %016llx, computed %016llx)", path,
		    (unsigned long long) want, (unsigned long long) got);
	if (cdx_get_le32(buf + OFF_HDRSIZE) != CDX_SHARD_HEADER_SIZE)
		return cdx_error(CDX_ECORRUPT, "%s: header size %u", path, cdx_get_le32(buf + OFF_HDRSIZE));
	if (memchr(buf + OFF_COLLECTION, 0, CDX_NAME_MAX) == NULL)
		return cdx_error(CDX_ECORRUPT, "%s: collection name not terminated", path);
	memcpy(info->collection, buf + OFF_COLLECTION, CDX_NAME_MAX);
	info->format_version = version;
	info->metric = cdx_get_le32(buf + OFF_METRIC);
	info->dim = cdx_get_le32(buf + OFF_DIM);
	info->shard_index = cdx_get_le32(buf + OFF_SHARD_INDEX);
	info->shard_count = cdx_get_le32(buf + OFF_SHARD_COUNT);
	info->rows = cdx_get_le64(buf + OFF_ROWS);
	info->nparts = cdx_get_le32(buf + OFF_NPARTS);
	if (info->metric > CDX_METRIC_COS)
		return cdx_error(CDX_ECORRUPT, "%s: unknown metric %u", path, info->metric);
	if (info->dim == 0)
		return cdx_error(CDX_ECORRUPT, "%s: dim 0", path);
	if (info->shard_count == 0 || info->shard_index >= info->shard_count)
		return cdx_error(
		    CDX_ECORRUPT, "%s: shard %u of %u", path, info->shard_index, info->shard_count);
	if (info->nparts > CDX_SHARD_MAX_PARTS)
		return cdx_error(
		    CDX_ECORRUPT, "%s: %u parts (max %d)", path, info->nparts, CDX_SHARD_MAX_PARTS);
	for (uint32_t i = 0; i < info->nparts; i++) {
		const uint8_t *p = buf + OFF_PARTS + (size_t) i * CDX_SHARD_HDR_PART_SIZE;
		struct cdx_part_desc *pd = &info->parts[i];
		pd->kind = cdx_get_le32(p + 0);
		pd->flags = cdx_get_le32(p + 4);
		pd->offset = cdx_get_le64(p + 8);
		pd->stored_size = cdx_get_le64(p + 16);
		pd->raw_size = cdx_get_le64(p + 24);
		pd->xxh64 = cdx_get_le64(p + 32);
	}
	return CDX_OK;
}
