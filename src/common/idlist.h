/*
 * idlist.h — the compact id list of the wire protocol
 * (SearchRequest.exclude_ids_packed): ids in ascending order, the first as
 * a zigzag LEB128 varint, each next one as its (non-negative) difference
 * from the one before, an unsigned LEB128 varint. A listening history of
 * 50,000 ids out of ten million takes about two bytes an id. Shared by the
 * client library (encoding) and the server (decoding), so it lives here.
 */
#ifndef CANDEX_IDLIST_H
#define CANDEX_IDLIST_H

#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

/* cdx_varint_put writes v as an unsigned LEB128 varint (at most 10 bytes)
 * at p and returns its length. cdx_varint_get reads one from [*p, end),
 * advancing *p: 0, or -1 when it is cut short or passes 64 bits. */
size_t cdx_varint_put(uint8_t *p, uint64_t v);
int cdx_varint_get(const uint8_t **p, const uint8_t *end, uint64_t *out);

/* cdx_idlist_encode appends n ids to out. ids need not be sorted: a sorted
 * copy is encoded (duplicates kept). */
int cdx_idlist_encode(const int64_t *ids, size_t n, cdx_buf *out);

/* cdx_idlist_decode decodes a list of at most max ids. On success *ids is a
 * malloc'd ascending array of *n ids the caller frees (NULL when empty).
 * Input is hostile: CDX_EPROTO for a malformed or overflowing list,
 * CDX_ELIMIT when it holds more than max ids. */
int cdx_idlist_decode(const void *data, size_t len, size_t max, int64_t **ids, size_t *n);

#endif
