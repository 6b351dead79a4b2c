/*
 * log.c — one line per event on stderr: "2026-11-28T13:01:02.123Z INFO
 * SRV-START: message". Lines are written with a single write(2) so that
 * concurrent threads do not interleave within a line.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "common/common.h"

static int log_level = -1;
static const char *const level_names[] = { "DEBUG", "INFO", "WARN", "ERROR" };

int
cdx_log_level_parse(const char *s, int *level)
{
	for (int i = 0; i < (int) CDX_ARRAY_LEN(level_names); i++) {
		if (strcasecmp(s, level_names[i]) == 0) {
			*level = i;
			return CDX_OK;
		}
	}
	return cdx_error(CDX_EINVAL, "unknown log level '%s' (debug, info, warn, error)", s);
}

void
cdx_log_set_level(int level)
{
	log_level = level;
}

static int
current_level(void)
{
	if (log_level < 0) {
		const char *env = getenv("CANDEX_LOG_LEVEL");
		int level = CDX_LOG_INFO;
		if (env != NULL)
			cdx_log_level_parse(env, &level);
		log_level = level;
	}
	return log_level;
}

void
cdx_log(int level, const char *msgid, const char *fmt, ...)
{
	if (level < current_level())
		return;
	char line[2048], when[32];
	cdx_iso8601_utc(when, cdx_wall_ms());
	int n = snprintf(line, sizeof(line), "%s %s %s: ", when, level_names[level], msgid);
	va_list ap;
	va_start(ap, fmt);
	if (n > 0 && (size_t) n < sizeof(line))
		n += vsnprintf(line + n, sizeof(line) - (size_t) n, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t) n >= sizeof(line) - 1)
		n = (int) cdx_utf8_cut(line, sizeof(line) - 2);
	line[n++] = '\n';
	ssize_t ignored = write(STDERR_FILENO, line, (size_t) n);
	(void) ignored;
}
