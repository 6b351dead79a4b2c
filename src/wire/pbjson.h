/*
 * pbjson.h — the protobuf JSON mapping (proto3) for candex's messages, driven
 * by protobuf-c's descriptors, so that a field added to proto/candex.proto
 * is mapped without code here. Used by the HTTP gateway of the server
 * (POST /v1/search) and by cdx_client_info(). Internal (cdx_ prefix, not in
 * the client library's public API).
 *
 * The mapping is the one protobuf documents: a message is an object whose
 * keys are the fields' lowerCamelCase names (the proto names are accepted
 * too), 64-bit integers are decimal strings (numbers are accepted), floats
 * are numbers or "NaN", "Infinity", "-Infinity", enums are their value
 * names (numbers are accepted), repeated fields are arrays, null is the
 * default value, and of a oneof only the member that is set appears.
 *
 * Reading is stricter than the binary format on one point: a key that names
 * no field is an error, not ignored, because in hand-written JSON it is most
 * often a misspelt field. The reader builds no document tree: it fills the
 * message as it parses, so its memory is the message's own size.
 */
#ifndef CANDEX_PBJSON_H
#define CANDEX_PBJSON_H

#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

#include "common/common.h"

/* Flags of cdx_pbjson_write. */
#define CDX_PBJSON_PROTO_NAMES   1u /* keys as named in the .proto, not lowerCamelCase */
#define CDX_PBJSON_DEFAULTS      2u /* also write fields that hold their default value */
#define CDX_PBJSON_INT64_NUMBERS 4u /* 64-bit integers as JSON numbers, not strings */
#define CDX_PBJSON_INDENT        8u /* one member a line, indented by two spaces */

/* cdx_pbjson_write appends the JSON text of m to out (not NUL-terminated;
 * out->len grows). Strings that are not valid UTF-8 have each bad byte
 * replaced by U+FFFD. CDX_ENOMEM is the only error. */
int cdx_pbjson_write(const ProtobufCMessage *m, unsigned flags, cdx_buf *out);

/* cdx_pbjson_read parses text[0..len) (UTF-8 JSON, one object) into a new
 * message of type d. On success *mp is set and the caller frees it with
 * protobuf_c_message_free_unpacked(*mp, NULL). On failure *mp is NULL and
 * the code is CDX_EPROTO (not JSON, or not this message: cdx_error() names
 * the byte offset and the field) or CDX_ENOMEM. */
int cdx_pbjson_read(const ProtobufCMessageDescriptor *d, const char *text, size_t len, ProtobufCMessage **mp);

#endif
