/*
 * err.c — error names and the thread-local error detail.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/common.h"

static _Thread_local char last_message[1024];

const char *
cdx_strerror(int code)
{
	switch (code) {
#define CDX__ERR_DESC(name, num, desc) \
	case num:                      \
		return desc;
		CDX_ERRORS(CDX__ERR_DESC)
#undef CDX__ERR_DESC
	}
	return "unknown error";
}

const char *
cdx_errname(int code)
{
	switch (code) {
#define CDX__ERR_NAME(name, num, desc) \
	case num:                      \
		return #name;
		CDX_ERRORS(CDX__ERR_NAME)
#undef CDX__ERR_NAME
	}
	return "EUNKNOWN";
}

int
cdx_error(int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(last_message, sizeof(last_message), fmt, ap);
	va_end(ap);
	/* messages reach clients: never a character cut in two by the buffer */
	cdx_utf8_sanitize(last_message);
	return code;
}

int
cdx_error_errno(int code, const char *fmt, ...)
{
	int saved = errno;
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(last_message, sizeof(last_message), fmt, ap);
	va_end(ap);
	if (n >= 0 && (size_t) n < sizeof(last_message))
		snprintf(last_message + n, sizeof(last_message) - (size_t) n, ": %s", strerror(saved));
	cdx_utf8_sanitize(last_message);
	if (saved == ENOSPC || saved == EDQUOT || saved == EFBIG)
		return CDX_ENOSPC;
	if (saved == ENOMEM)
		return CDX_ENOMEM;
	return code;
}

const char *
cdx_last_error(void)
{
	return last_message[0] ? last_message : "no detail";
}

void
cdx_error_clear(void)
{
	last_message[0] = 0;
}
