/*
 * pbjson.c — the protobuf JSON mapping over protobuf-c descriptors (see
 * pbjson.h). The reader is a recursive-descent parser that knows, at every
 * point, which field it is filling: a value of the wrong kind is an error
 * at once, and nesting is bounded by the message types, not by the input.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wire/pbjson.h"

/* ---- field access --------------------------------------------------- */

static void *
field_ptr(const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f)
{
	return (char *) m + f->offset;
}

static void *
quantifier_ptr(const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f)
{
	return (char *) m + f->quantifier_offset;
}

static int
is_oneof(const ProtobufCFieldDescriptor *f)
{
	return (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) != 0;
}

/* elem_size is the in-memory size of one value of the field's type. */
static size_t
elem_size(ProtobufCType t)
{
	switch (t) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32:
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
	case PROTOBUF_C_TYPE_FLOAT:
	case PROTOBUF_C_TYPE_ENUM:
		return 4;
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
	case PROTOBUF_C_TYPE_DOUBLE:
		return 8;
	case PROTOBUF_C_TYPE_BOOL:
		return sizeof(protobuf_c_boolean);
	case PROTOBUF_C_TYPE_STRING:
	case PROTOBUF_C_TYPE_MESSAGE:
		return sizeof(void *);
	case PROTOBUF_C_TYPE_BYTES:
		return sizeof(ProtobufCBinaryData);
	}
	return 0;
}

/* json_name writes the field's lowerCamelCase JSON name ("query_keys" ->
 * "queryKeys") into out. */
static const char *
json_name(const char *name, char *out, size_t size)
{
	size_t j = 0;
	int upper = 0;
	for (size_t i = 0; name[i] != '\0' && j + 1 < size; i++) {
		if (name[i] == '_') {
			upper = 1;
			continue;
		}
		out[j++] = upper && name[i] >= 'a' && name[i] <= 'z' ? (char) (name[i] - 'a' + 'A') : name[i];
		upper = 0;
	}
	out[j] = '\0';
	return out;
}

static const ProtobufCFieldDescriptor *
find_field(const ProtobufCMessageDescriptor *d, const char *key)
{
	char camel[128];
	for (unsigned i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];
		if (strcmp(key, f->name) == 0 || strcmp(key, json_name(f->name, camel, sizeof(camel))) == 0)
			return f;
	}
	return NULL;
}

/* ---- writer ---------------------------------------------------------- */

static int
put_indent(cdx_buf *b, unsigned flags, int depth)
{
	if (!(flags & CDX_PBJSON_INDENT))
		return CDX_OK;
	int rc = cdx_buf_append(b, "\n", 1);
	for (int i = 0; rc == CDX_OK && i < depth; i++)
		rc = cdx_buf_append(b, "  ", 2);
	return rc;
}

/* bytes are base64 in JSON (RFC 4648, standard alphabet, padded on write;
 * read also URL-safe and unpadded, as the proto3 JSON mapping allows). */
static const char b64_alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int
put_base64(cdx_buf *b, const ProtobufCBinaryData *v)
{
	int rc = cdx_buf_append(b, "\"", 1);
	for (size_t i = 0; rc == CDX_OK && i < v->len; i += 3) {
		uint32_t w = (uint32_t) v->data[i] << 16;
		size_t left = v->len - i;
		if (left > 1)
			w |= (uint32_t) v->data[i + 1] << 8;
		if (left > 2)
			w |= v->data[i + 2];
		char q[4] = { b64_alphabet[w >> 18 & 63], b64_alphabet[w >> 12 & 63],
			left > 1 ? b64_alphabet[w >> 6 & 63] : '=', left > 2 ? b64_alphabet[w & 63] : '=' };
		rc = cdx_buf_append(b, q, 4);
	}
	return rc == CDX_OK ? cdx_buf_append(b, "\"", 1) : rc;
}

/* base64_value: the 6-bit value of c, or -1. */
static int
base64_value(char c)
{
	if (c == '-')
		return 62;
	if (c == '_')
		return 63;
	const char *at = c != '\0' ? strchr(b64_alphabet, c) : NULL;
	return at != NULL ? (int) (at - b64_alphabet) : -1;
}

/* base64_decode decodes text (padding optional) into *out (malloc'd). */
static int
base64_decode(const char *text, ProtobufCBinaryData *out)
{
	size_t n = strlen(text);
	while (n > 0 && text[n - 1] == '=')
		n--;
	if (n % 4 == 1)
		return -1;
	uint8_t *data = malloc(n / 4 * 3 + 3);
	if (data == NULL)
		return -2;
	size_t len = 0;
	uint32_t acc = 0;
	for (size_t i = 0; i < n; i++) {
		int v = base64_value(text[i]);
		if (v < 0) {
			free(data);
			return -1;
		}
		acc = acc << 6 | (uint32_t) v;
		if (i % 4 == 3) {
			data[len++] = (uint8_t) (acc >> 16);
			data[len++] = (uint8_t) (acc >> 8);
			data[len++] = (uint8_t) acc;
			acc = 0;
		}
	}
	if (n % 4 == 2) {
		data[len++] = (uint8_t) (acc >> 4);
	} else if (n % 4 == 3) {
		data[len++] = (uint8_t) (acc >> 10);
		data[len++] = (uint8_t) (acc >> 2);
	}
	out->data = data;
	out->len = len;
	return 0;
}

static int
put_string(cdx_buf *b, const char *s)
{
	const unsigned char *p = (const unsigned char *) (s != NULL ? s : "");
	size_t n = strlen((const char *) p);
	int rc = cdx_buf_append(b, "\"", 1);
	for (size_t i = 0; rc == CDX_OK && i < n;) {
		unsigned char c = p[i];
		if (c == '"' || c == '\\') {
			char esc[2] = { '\\', (char) c };
			rc = cdx_buf_append(b, esc, 2);
			i++;
		} else if (c < 0x20) {
			char esc[8];
			snprintf(esc, sizeof(esc), "\\u%04x", c);
			rc = cdx_buf_append(b, esc, 6);
			i++;
		} else {
			size_t len = cdx_utf8_char_len((const char *) p + i, n - i);
			if (len == 0) {
				rc = cdx_buf_append(b, "\xef\xbf\xbd", 3); /* U+FFFD */
				i++;
			} else {
				rc = cdx_buf_append(b, p + i, len);
				i += len;
			}
		}
	}
	return rc == CDX_OK ? cdx_buf_append(b, "\"", 1) : rc;
}

/* put_real writes the shortest decimal form that reads back as the same
 * float (digits 6..9) or double (15..17); non-finite values as the
 * mapping's strings. */
static int
put_real(cdx_buf *b, double v, int is_float)
{
	if (isnan(v))
		return cdx_buf_printf(b, "\"NaN\"");
	if (isinf(v))
		return cdx_buf_printf(b, v > 0 ? "\"Infinity\"" : "\"-Infinity\"");
	char text[40];
	int lo = is_float ? 6 : 15, hi = is_float ? 9 : 17;
	for (int digits = lo; digits <= hi; digits++) {
		snprintf(text, sizeof(text), "%.*g", digits, v);
		if (is_float ? strtof(text, NULL) == (float) v : strtod(text, NULL) == v)
			break;
	}
	return cdx_buf_printf(b, "%s", text);
}

static int write_message(cdx_buf *b, const ProtobufCMessage *m, unsigned flags, int depth);

/* write_value writes one value of field f stored at p. */
static int
write_value(cdx_buf *b, const ProtobufCFieldDescriptor *f, const void *p, unsigned flags, int depth)
{
	const char *q = (flags & CDX_PBJSON_INT64_NUMBERS) ? "" : "\"";
	switch (f->type) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32:
		return cdx_buf_printf(b, "%" PRId32, *(const int32_t *) p);
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
		return cdx_buf_printf(b, "%" PRIu32, *(const uint32_t *) p);
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
		return cdx_buf_printf(b, "%s%" PRId64 "%s", q, *(const int64_t *) p, q);
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
		return cdx_buf_printf(b, "%s%" PRIu64 "%s", q, *(const uint64_t *) p, q);
	case PROTOBUF_C_TYPE_FLOAT:
		return put_real(b, *(const float *) p, 1);
	case PROTOBUF_C_TYPE_DOUBLE:
		return put_real(b, *(const double *) p, 0);
	case PROTOBUF_C_TYPE_BOOL:
		return cdx_buf_printf(b, "%s", *(const protobuf_c_boolean *) p ? "true" : "false");
	case PROTOBUF_C_TYPE_ENUM: {
		int v = *(const int *) p;
		const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(f->descriptor, v);
		return ev != NULL ? put_string(b, ev->name) : cdx_buf_printf(b, "%d", v);
	}
	case PROTOBUF_C_TYPE_STRING:
		return put_string(b, *(char *const *) p);
	case PROTOBUF_C_TYPE_MESSAGE: {
		const ProtobufCMessage *sub = *(const ProtobufCMessage *const *) p;
		if (sub == NULL)
			return cdx_buf_printf(b, "null");
		return write_message(b, sub, flags, depth);
	}
	case PROTOBUF_C_TYPE_BYTES:
		return put_base64(b, (const ProtobufCBinaryData *) p);
	}
	return cdx_error(CDX_EINTERNAL, "field %s: type %d has no JSON form here", f->name, (int) f->type);
}

/* is_default says whether a singular field holds its default (zero) value. */
static int
is_default(const ProtobufCFieldDescriptor *f, const void *p)
{
	switch (f->type) {
	case PROTOBUF_C_TYPE_STRING: {
		const char *s = *(char *const *) p;
		return s == NULL || s[0] == '\0';
	}
	case PROTOBUF_C_TYPE_MESSAGE:
		return *(void *const *) p == NULL;
	case PROTOBUF_C_TYPE_BYTES:
		return ((const ProtobufCBinaryData *) p)->len == 0;
	case PROTOBUF_C_TYPE_FLOAT:
		return *(const float *) p == 0 && !signbit(*(const float *) p);
	case PROTOBUF_C_TYPE_DOUBLE:
		return *(const double *) p == 0 && !signbit(*(const double *) p);
	default: {
		static const char zero[8];
		return memcmp(p, zero, elem_size(f->type)) == 0;
	}
	}
}

static int
write_message(cdx_buf *b, const ProtobufCMessage *m, unsigned flags, int depth)
{
	const ProtobufCMessageDescriptor *d = m->descriptor;
	int rc = cdx_buf_append(b, "{", 1), first = 1;
	for (unsigned i = 0; rc == CDX_OK && i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];
		const void *p = field_ptr(m, f);
		size_t n = 0;
		if (f->label == PROTOBUF_C_LABEL_REPEATED) {
			n = *(const size_t *) quantifier_ptr(m, f);
			if (n == 0 && !(flags & CDX_PBJSON_DEFAULTS))
				continue;
		} else if (is_oneof(f)) {
			if (*(const uint32_t *) quantifier_ptr(m, f) != f->id)
				continue;
		} else if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->type != PROTOBUF_C_TYPE_MESSAGE
		    && f->type != PROTOBUF_C_TYPE_STRING) {
			if (!*(const protobuf_c_boolean *) quantifier_ptr(m, f))
				continue;
		} else if (!(flags & CDX_PBJSON_DEFAULTS) && is_default(f, p)) {
			continue;
		}
		char camel[128];
		const char *key
		    = (flags & CDX_PBJSON_PROTO_NAMES) ? f->name : json_name(f->name, camel, sizeof(camel));
		if (!first)
			rc = cdx_buf_append(b, ",", 1);
		first = 0;
		if (rc == CDX_OK)
			rc = put_indent(b, flags, depth + 1);
		if (rc == CDX_OK)
			rc = put_string(b, key);
		if (rc == CDX_OK)
			rc = cdx_buf_append(
			    b, (flags & CDX_PBJSON_INDENT) ? ": " : ":", (flags & CDX_PBJSON_INDENT) ? 2 : 1);
		if (rc != CDX_OK)
			break;
		if (f->label != PROTOBUF_C_LABEL_REPEATED) {
			rc = write_value(b, f, p, flags, depth + 1);
			continue;
		}
		const char *arr = *(const char *const *) p;
		size_t esz = elem_size(f->type);
		/* arrays of messages go one element a line; numbers stay on one */
		int nested = f->type == PROTOBUF_C_TYPE_MESSAGE;
		rc = cdx_buf_append(b, "[", 1);
		for (size_t j = 0; rc == CDX_OK && j < n; j++) {
			if (j > 0)
				rc = cdx_buf_append(b, ",", 1);
			if (rc == CDX_OK && nested)
				rc = put_indent(b, flags, depth + 2);
			if (rc == CDX_OK)
				rc = write_value(b, f, arr + j * esz, flags, depth + 2);
		}
		if (rc == CDX_OK && nested && n > 0)
			rc = put_indent(b, flags, depth + 1);
		if (rc == CDX_OK)
			rc = cdx_buf_append(b, "]", 1);
	}
	if (rc == CDX_OK && !first)
		rc = put_indent(b, flags, depth);
	return rc == CDX_OK ? cdx_buf_append(b, "}", 1) : rc;
}

int
cdx_pbjson_write(const ProtobufCMessage *m, unsigned flags, cdx_buf *out)
{
	return write_message(out, m, flags, 0);
}

/* ---- reader ---------------------------------------------------------- */

struct reader {
	const char *start, *p, *end;
	int rc; /* first error, CDX_OK while parsing */
};

static int CDX_PRINTF(2, 3) bad(struct reader *r, const char *fmt, ...)
{
	if (r->rc != CDX_OK)
		return r->rc;
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	r->rc = cdx_error(CDX_EPROTO, "JSON at byte %zu: %s", (size_t) (r->p - r->start), msg);
	return r->rc;
}

static int
nomem(struct reader *r)
{
	if (r->rc == CDX_OK)
		r->rc = cdx_error(CDX_ENOMEM, "out of memory decoding JSON");
	return r->rc;
}

static void
skip_ws(struct reader *r)
{
	while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r'))
		r->p++;
}

/* peek skips white space and returns the next byte, or 0 at the end. */
static char
peek(struct reader *r)
{
	skip_ws(r);
	return r->p < r->end ? *r->p : '\0';
}

static int
expect(struct reader *r, char c, const char *what)
{
	if (peek(r) != c)
		return bad(r, "expected %s", what);
	r->p++;
	return CDX_OK;
}

static int
literal(struct reader *r, const char *word)
{
	size_t n = strlen(word);
	if ((size_t) (r->end - r->p) < n || memcmp(r->p, word, n) != 0)
		return 0;
	r->p += n;
	return 1;
}

static int
hex4(const char *s, uint32_t *v)
{
	*v = 0;
	for (int i = 0; i < 4; i++) {
		int d = cdx_hexval(s[i]);
		if (d < 0)
			return -1;
		*v = *v << 4 | (uint32_t) d;
	}
	return 0;
}

static size_t
put_utf8(char *out, uint32_t cp)
{
	if (cp < 0x80) {
		out[0] = (char) cp;
		return 1;
	}
	if (cp < 0x800) {
		out[0] = (char) (0xc0 | cp >> 6);
		out[1] = (char) (0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000) {
		out[0] = (char) (0xe0 | cp >> 12);
		out[1] = (char) (0x80 | ((cp >> 6) & 0x3f));
		out[2] = (char) (0x80 | (cp & 0x3f));
		return 3;
	}
	out[0] = (char) (0xf0 | cp >> 18);
	out[1] = (char) (0x80 | ((cp >> 12) & 0x3f));
	out[2] = (char) (0x80 | ((cp >> 6) & 0x3f));
	out[3] = (char) (0x80 | (cp & 0x3f));
	return 4;
}

/* read_string parses a JSON string into a malloc'd NUL-terminated UTF-8
 * text (a NUL inside, from \u0000, is refused: protobuf-c strings end at
 * the first NUL). */
static int
read_string(struct reader *r, char **out)
{
	*out = NULL;
	if (peek(r) != '"')
		return bad(r, "expected a string");
	const char *s = ++r->p;
	/* the decoded text is never longer than the quoted one */
	const char *close = s;
	while (close < r->end && *close != '"')
		close += *close == '\\' && close + 1 < r->end ? 2 : 1;
	if (close >= r->end)
		return bad(r, "unterminated string");
	char *buf = malloc((size_t) (close - s) + 1), *o = buf;
	if (buf == NULL)
		return nomem(r);
	while (r->p < close) {
		unsigned char c = (unsigned char) *r->p;
		if (c < 0x20) {
			free(buf);
			return bad(r, "control character in a string (escape it)");
		}
		if (c != '\\') {
			size_t len = cdx_utf8_char_len(r->p, (size_t) (close - r->p));
			if (len == 0) {
				free(buf);
				return bad(r, "string is not valid UTF-8");
			}
			memcpy(o, r->p, len);
			o += len;
			r->p += len;
			continue;
		}
		char e = r->p[1];
		r->p += 2;
		switch (e) {
		case '"':
		case '\\':
		case '/':
			*o++ = e;
			continue;
		case 'b':
			*o++ = '\b';
			continue;
		case 'f':
			*o++ = '\f';
			continue;
		case 'n':
			*o++ = '\n';
			continue;
		case 'r':
			*o++ = '\r';
			continue;
		case 't':
			*o++ = '\t';
			continue;
		case 'u':
			break;
		default:
			free(buf);
			r->p -= 2;
			return bad(r, "bad escape in a string");
		}
		uint32_t cp, lo;
		if (close - r->p < 4 || hex4(r->p, &cp) != 0) {
			free(buf);
			return bad(r, "bad \\u escape");
		}
		r->p += 4;
		if (cp >= 0xd800 && cp <= 0xdbff) {
			if (close - r->p < 6 || r->p[0] != '\\' || r->p[1] != 'u' || hex4(r->p + 2, &lo) != 0
			    || lo < 0xdc00 || lo > 0xdfff) {
				free(buf);
				return bad(r, "unpaired surrogate in a \\u escape");
			}
			r->p += 6;
			cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
		} else if ((cp >= 0xdc00 && cp <= 0xdfff) || cp == 0) {
			free(buf);
			return bad(r, cp == 0 ? "\\u0000 in a string" : "unpaired surrogate in a \\u escape");
		}
		o += put_utf8(o, cp);
	}
	*o = '\0';
	r->p = close + 1;
	*out = buf;
	return CDX_OK;
}

/* A number token, NUL-terminated for strtod/strtoll. */
struct number {
	char text[64];
	int integral; /* no fraction and no exponent */
};

/* scan_number reads the JSON number at s (up to end) into n; 0 on
 * success with *stop after it, -1 if s does not start with one. */
static int
scan_number(const char *s, const char *end, struct number *n, const char **stop)
{
	const char *p = s;
	n->integral = 1;
	if (p < end && *p == '-')
		p++;
	if (p >= end || !(*p >= '0' && *p <= '9'))
		return -1;
	if (*p == '0')
		p++;
	else
		while (p < end && *p >= '0' && *p <= '9')
			p++;
	if (p < end && *p == '.') {
		n->integral = 0;
		p++;
		if (p >= end || !(*p >= '0' && *p <= '9'))
			return -1;
		while (p < end && *p >= '0' && *p <= '9')
			p++;
	}
	if (p < end && (*p == 'e' || *p == 'E')) {
		n->integral = 0;
		p++;
		if (p < end && (*p == '+' || *p == '-'))
			p++;
		if (p >= end || !(*p >= '0' && *p <= '9'))
			return -1;
		while (p < end && *p >= '0' && *p <= '9')
			p++;
	}
	if ((size_t) (p - s) >= sizeof(n->text))
		return -1;
	memcpy(n->text, s, (size_t) (p - s));
	n->text[p - s] = '\0';
	*stop = p;
	return 0;
}

/* read_number reads a JSON number, or a string holding one (or "NaN",
 * "Infinity", "-Infinity"), as the mapping allows for every numeric type. */
static int
read_number(struct reader *r, const ProtobufCFieldDescriptor *f, struct number *n)
{
	const char *stop;
	if (peek(r) != '"') {
		if (scan_number(r->p, r->end, n, &stop) != 0)
			return bad(r, "field '%s': expected a number", f->name);
		r->p = stop;
		return CDX_OK;
	}
	char *s = NULL;
	const char *at = r->p;
	if (read_string(r, &s) != CDX_OK)
		return r->rc;
	int ok;
	if (strcmp(s, "NaN") == 0 || strcmp(s, "Infinity") == 0 || strcmp(s, "-Infinity") == 0) {
		snprintf(n->text, sizeof(n->text), "%s", s);
		n->integral = 0;
		ok = 1;
	} else {
		ok = scan_number(s, s + strlen(s), n, &stop) == 0 && *stop == '\0';
	}
	if (!ok) {
		r->p = at;
		bad(r, "field '%s': '%.40s' is not a number", f->name, s);
	}
	free(s);
	return r->rc;
}

static int
read_int(struct reader *r, const ProtobufCFieldDescriptor *f, int is_signed, int64_t lo, uint64_t hi,
    void *out, size_t size)
{
	struct number n;
	if (read_number(r, f, &n) != CDX_OK)
		return r->rc;
	int64_t sv = 0;
	uint64_t uv = 0;
	int neg = n.text[0] == '-', ok;
	errno = 0;
	if (n.integral) {
		char *end;
		if (neg) {
			sv = strtoll(n.text, &end, 10);
			ok = is_signed && errno == 0 && sv >= lo;
		} else {
			uv = strtoull(n.text, &end, 10);
			ok = errno == 0 && uv <= hi;
		}
	} else {
		/* 1e3 and 10.0 are integers too; only exact ones are taken */
		double d = strtod(n.text, NULL);
		ok = isfinite(d) && fabs(d) <= 9007199254740992.0 && (double) (int64_t) d == d
		    && (d >= 0 ? (uint64_t) d <= hi : is_signed && (int64_t) d >= lo);
		neg = d < 0;
		if (ok && neg)
			sv = (int64_t) d;
		else if (ok)
			uv = (uint64_t) d;
	}
	if (!ok)
		return bad(r, "field '%s': %s is not an integer in [%" PRId64 ", %" PRIu64 "]", f->name,
		    n.text, is_signed ? lo : 0, hi);
	if (neg)
		uv = (uint64_t) sv;
	if (size == 4) {
		uint32_t v32 = (uint32_t) uv;
		memcpy(out, &v32, 4);
	} else {
		memcpy(out, &uv, 8);
	}
	return CDX_OK;
}

static int
read_real(struct reader *r, const ProtobufCFieldDescriptor *f, void *out)
{
	struct number n;
	if (read_number(r, f, &n) != CDX_OK)
		return r->rc;
	double d;
	if (strcmp(n.text, "NaN") == 0)
		d = NAN;
	else if (strcmp(n.text, "Infinity") == 0)
		d = INFINITY;
	else if (strcmp(n.text, "-Infinity") == 0)
		d = -INFINITY;
	else {
		errno = 0;
		d = strtod(n.text, NULL);
		if (!isfinite(d) || (f->type == PROTOBUF_C_TYPE_FLOAT && fabs(d) > (double) FLT_MAX))
			return bad(r, "field '%s': %s is out of the range of a %s", f->name, n.text,
			    f->type == PROTOBUF_C_TYPE_FLOAT ? "float" : "double");
	}
	if (f->type == PROTOBUF_C_TYPE_FLOAT) {
		float v = (float) d;
		memcpy(out, &v, 4);
	} else {
		memcpy(out, &d, 8);
	}
	return CDX_OK;
}

static int read_object(struct reader *r, const ProtobufCMessageDescriptor *d, ProtobufCMessage *m);

/* read_value reads one value of field f (not a whole repeated field) into
 * out, which holds elem_size(f->type) bytes. */
static int
read_value(struct reader *r, const ProtobufCFieldDescriptor *f, void *out)
{
	switch (f->type) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32:
		return read_int(r, f, 1, INT32_MIN, INT32_MAX, out, 4);
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
		return read_int(r, f, 0, 0, UINT32_MAX, out, 4);
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
		return read_int(r, f, 1, INT64_MIN, INT64_MAX, out, 8);
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
		return read_int(r, f, 0, 0, UINT64_MAX, out, 8);
	case PROTOBUF_C_TYPE_FLOAT:
	case PROTOBUF_C_TYPE_DOUBLE:
		return read_real(r, f, out);
	case PROTOBUF_C_TYPE_BOOL: {
		protobuf_c_boolean v;
		skip_ws(r);
		if (literal(r, "true"))
			v = 1;
		else if (literal(r, "false"))
			v = 0;
		else
			return bad(r, "field '%s': expected true or false", f->name);
		memcpy(out, &v, sizeof(v));
		return CDX_OK;
	}
	case PROTOBUF_C_TYPE_ENUM: {
		const ProtobufCEnumDescriptor *ed = f->descriptor;
		int v;
		if (peek(r) == '"') {
			char *name = NULL;
			if (read_string(r, &name) != CDX_OK)
				return r->rc;
			const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value_by_name(ed, name);
			if (ev == NULL) {
				bad(r, "field '%s': '%.60s' is not a %s value", f->name, name, ed->name);
				free(name);
				return r->rc;
			}
			free(name);
			v = ev->value;
		} else {
			int32_t n32;
			if (read_int(r, f, 1, INT32_MIN, INT32_MAX, &n32, 4) != CDX_OK)
				return r->rc;
			v = n32;
		}
		memcpy(out, &v, sizeof(v));
		return CDX_OK;
	}
	case PROTOBUF_C_TYPE_STRING: {
		char *s = NULL;
		if (read_string(r, &s) != CDX_OK)
			return r->rc;
		memcpy(out, &s, sizeof(s));
		return CDX_OK;
	}
	case PROTOBUF_C_TYPE_MESSAGE: {
		const ProtobufCMessageDescriptor *sd = f->descriptor;
		ProtobufCMessage *sub = malloc(sd->sizeof_message);
		if (sub == NULL)
			return nomem(r);
		sd->message_init(sub);
		if (read_object(r, sd, sub) != CDX_OK) {
			protobuf_c_message_free_unpacked(sub, NULL);
			return r->rc;
		}
		memcpy(out, &sub, sizeof(sub));
		return CDX_OK;
	}
	case PROTOBUF_C_TYPE_BYTES: {
		char *text = NULL;
		if (read_string(r, &text) != CDX_OK)
			return r->rc;
		ProtobufCBinaryData v = { 0, NULL };
		int bad64 = base64_decode(text, &v);
		free(text);
		if (bad64 == -2)
			return nomem(r);
		if (bad64 != 0)
			return bad(r, "field '%s': not base64", f->name);
		memcpy(out, &v, sizeof(v));
		return CDX_OK;
	}
	}
	return bad(r, "field '%s': type %d has no JSON form here", f->name, (int) f->type);
}

/* read_repeated reads a JSON array into the repeated field f of m. */
static int
read_repeated(struct reader *r, const ProtobufCFieldDescriptor *f, ProtobufCMessage *m)
{
	size_t esz = elem_size(f->type), n = 0, cap = 0;
	char *arr = NULL;
	if (expect(r, '[', "an array") != CDX_OK)
		return r->rc;
	/* the array is the field's from the start, so that an error part-way
	 * frees what was read with the message */
	size_t *np = quantifier_ptr(m, f);
	void **ap = field_ptr(m, f);
	if (peek(r) == ']') {
		r->p++;
		return CDX_OK;
	}
	for (;;) {
		if (n == cap) {
			size_t ncap = cap ? cap * 2 : 16;
			char *grown = realloc(arr, ncap * esz);
			if (grown == NULL)
				return nomem(r);
			arr = grown;
			cap = ncap;
			*ap = arr;
		}
		if (peek(r) == 'n')
			return bad(r, "field '%s': null inside an array", f->name);
		memset(arr + n * esz, 0, esz);
		if (read_value(r, f, arr + n * esz) != CDX_OK)
			return r->rc;
		*np = ++n;
		char c = peek(r);
		if (c == ',') {
			r->p++;
			continue;
		}
		if (c == ']') {
			r->p++;
			return CDX_OK;
		}
		return bad(r, "field '%s': expected ',' or ']' in an array", f->name);
	}
}

/* read_field reads the value of member f (its key already read) into m. */
static int
read_field(struct reader *r, const ProtobufCFieldDescriptor *f, ProtobufCMessage *m)
{
	skip_ws(r);
	if (literal(r, "null"))
		return CDX_OK; /* the default */
	if (f->label == PROTOBUF_C_LABEL_REPEATED)
		return read_repeated(r, f, m);
	if (is_oneof(f)) {
		uint32_t *which = quantifier_ptr(m, f);
		if (*which != 0 && *which != f->id)
			return bad(r, "field '%s': another member of its oneof is already given", f->name);
		if (read_value(r, f, field_ptr(m, f)) != CDX_OK)
			return r->rc;
		*which = f->id;
		return CDX_OK;
	}
	if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->type != PROTOBUF_C_TYPE_MESSAGE
	    && f->type != PROTOBUF_C_TYPE_STRING)
		*(protobuf_c_boolean *) quantifier_ptr(m, f) = 1;
	return read_value(r, f, field_ptr(m, f));
}

static int
read_object(struct reader *r, const ProtobufCMessageDescriptor *d, ProtobufCMessage *m)
{
	if (expect(r, '{', "an object") != CDX_OK)
		return r->rc;
	unsigned char *seen = calloc(d->n_fields ? d->n_fields : 1, 1);
	if (seen == NULL)
		return nomem(r);
	if (peek(r) == '}') {
		r->p++;
		free(seen);
		return CDX_OK;
	}
	for (;;) {
		char *key = NULL;
		const char *at = r->p;
		if (read_string(r, &key) != CDX_OK)
			break;
		const ProtobufCFieldDescriptor *f = find_field(d, key);
		if (f == NULL) {
			r->p = at;
			bad(r, "%s has no field '%.60s'", d->name, key);
			free(key);
			break;
		}
		free(key);
		size_t idx = (size_t) (f - d->fields);
		if (seen[idx]) {
			r->p = at;
			bad(r, "field '%s' is given twice", f->name);
			break;
		}
		seen[idx] = 1;
		if (expect(r, ':', "':' after a key") != CDX_OK || read_field(r, f, m) != CDX_OK)
			break;
		char c = peek(r);
		if (c == ',') {
			r->p++;
			continue;
		}
		if (c == '}') {
			r->p++;
			break;
		}
		bad(r, "expected ',' or '}' in an object");
		break;
	}
	free(seen);
	return r->rc;
}

int
cdx_pbjson_read(const ProtobufCMessageDescriptor *d, const char *text, size_t len, ProtobufCMessage **mp)
{
	*mp = NULL;
	struct reader r = { .start = text, .p = text, .end = text + len, .rc = CDX_OK };
	ProtobufCMessage *m = malloc(d->sizeof_message);
	if (m == NULL)
		return cdx_error(CDX_ENOMEM, "out of memory decoding JSON");
	d->message_init(m);
	if (read_object(&r, d, m) == CDX_OK && peek(&r) != '\0')
		bad(&r, "text after the JSON object");
	if (r.rc != CDX_OK) {
		protobuf_c_message_free_unpacked(m, NULL);
		return r.rc;
	}
	*mp = m;
	return CDX_OK;
}
