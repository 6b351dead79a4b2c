/*
 * utf8.c — cutting and cleaning text that goes to clients. Protobuf string
 * fields must hold valid UTF-8 (strict decoders, such as Python's, refuse
 * the whole message otherwise), so every length limit on a message or an
 * echoed request id cuts on a character boundary, and bytes a client or a
 * file name brought in that are not UTF-8 are replaced before they go out.
 */
#include <string.h>

#include "common/common.h"

/* seq_check looks at the sequence starting at p (left bytes available):
 * its length if it is a valid UTF-8 character (RFC 3629: no overlong
 * forms, no surrogates, nothing above U+10FFFF), 0 if it is invalid, -1 if
 * it is the valid beginning of a character that the text cuts short. */
static int
seq_check(const unsigned char *p, size_t left)
{
	unsigned char c = p[0];
	int n;
	unsigned char lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf) {
		n = 2;
	} else if (c >= 0xe0 && c <= 0xef) {
		n = 3;
		if (c == 0xe0)
			lo = 0xa0;
		else if (c == 0xed)
			hi = 0x9f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		n = 4;
		if (c == 0xf0)
			lo = 0x90;
		else if (c == 0xf4)
			hi = 0x8f;
	} else {
		return 0;
	}
	for (int i = 1; i < n; i++) {
		if ((size_t) i >= left || p[i] == 0)
			return -1;
		unsigned char b = p[i];
		if (i == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xbf))
			return 0;
	}
	return n;
}

size_t
cdx_utf8_char_len(const char *s, size_t left)
{
	int n = left > 0 ? seq_check((const unsigned char *) s, left) : 0;
	return n > 0 ? (size_t) n : 0;
}

int
cdx_utf8_valid(const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *) s;
	for (size_t i = 0; i < len;) {
		int n = seq_check(p + i, len - i);
		if (n <= 0)
			return 0;
		i += (size_t) n;
	}
	return 1;
}

size_t
cdx_utf8_cut(const char *s, size_t max)
{
	const unsigned char *p = (const unsigned char *) s;
	size_t i = 0;
	while (i < max && p[i] != 0) {
		int n = seq_check(p + i, max - i);
		if (n < 0)
			break; /* a character that does not fit whole */
		if (n == 0)
			n = 1; /* an invalid byte is its own unit; sanitize replaces it */
		i += (size_t) n;
	}
	return i;
}

void
cdx_utf8_sanitize(char *s)
{
	unsigned char *p = (unsigned char *) s;
	size_t len = strlen(s);
	for (size_t i = 0; i < len;) {
		int n = seq_check(p + i, len - i);
		if (n < 0) {
			p[i] = '\0'; /* cut short by a byte limit: drop the stump */
			return;
		}
		if (n == 0) {
			p[i++] = '?';
			continue;
		}
		i += (size_t) n;
	}
}

void
cdx_utf8_copy(char *out, size_t size, const char *s)
{
	if (size == 0)
		return;
	size_t n = cdx_utf8_cut(s, size - 1);
	memcpy(out, s, n);
	out[n] = '\0';
	cdx_utf8_sanitize(out);
}
