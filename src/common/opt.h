/*
 * opt.h — command-line options for every candex program: one option table
 * per subcommand, one parser, one strict number parser, one error style.
 *
 * A subcommand describes its options in a table of struct cdx_opt, each
 * naming a field of the subcommand's own options struct (by offset) and its
 * type. cdx_opt_parse() fills the struct from argv, and cdx_opt_usage()
 * prints the options part of --help from the same table, so that parsing
 * and help cannot drift apart. Errors are printed as
 *
 *     candex build: unknown option --foo; see candex build --help
 *     candex build: --shards 'abc': expected an integer in [1, 9999]
 *
 * Numbers are strict: the whole argument must be the number ("12x", "",
 * " 12" and "1e3" for an integer are refused), out-of-range and overflowing
 * values are refused, and unsigned options take no sign.
 */
#ifndef CANDEX_OPT_H
#define CANDEX_OPT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common/common.h"

/* ---- numbers ---------------------------------------------------------- */

/* cdx_parse_u64 parses all of s as a decimal integer in [min, max]. */
int cdx_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out);
/* cdx_parse_i64 parses all of s as a decimal integer (optional '-') in [min, max]. */
int cdx_parse_i64(const char *s, int64_t min, int64_t max, int64_t *out);
/* cdx_parse_double parses all of s as a finite decimal number in [min, max]. */
int cdx_parse_double(const char *s, double min, double max, double *out);
/* cdx_parse_size parses a byte count with an optional K, M or G suffix
 * (powers of 1024; "KiB", "KB" and "K" alike), at least 1. */
int cdx_parse_size(const char *s, uint64_t *out);
/* These return CDX_OK or CDX_EINVAL, without a message (the caller knows
 * which option or field it was). */
/* cdx_parse_list parses a comma-separated list of at most cap numbers in
 * [lo, hi] ("1,2,4") into out, *n of them; CDX_EINVAL with a message naming
 * the bad element. */
int cdx_parse_list(const char *s, double lo, double hi, double *out, size_t cap, size_t *n);

/* ---- option tables ------------------------------------------------------ */

enum cdx_opt_type {
	CDX_OPT_SECTION, /* not an option: a heading in --help ("inputs:") */
	CDX_OPT_FLAG,    /* int, set to 1 */
	CDX_OPT_STR,     /* const char *, pointing into argv */
	CDX_OPT_STRDUP,  /* char *, a malloc'd copy the options struct owns (replaced ones are freed) */
	CDX_OPT_INT,     /* int in [min, max] */
	CDX_OPT_U32,     /* uint32_t in [min, max] */
	CDX_OPT_U64,     /* uint64_t in [min, max] */
	CDX_OPT_SIZE_T,  /* size_t in [min, max] */
	CDX_OPT_I64,     /* int64_t in [min, max] */
	CDX_OPT_DOUBLE,  /* double in [min, max] */
	CDX_OPT_FLOAT,   /* float in [min, max] */
	CDX_OPT_BYTES,   /* uint64_t byte count, K/M/G suffixes */
	CDX_OPT_CALL,    /* handled by call (lists, repeated options, choices) */
	CDX_OPT_LOGLEVEL /* int, a log level name (cdx_log_level_parse) */
};

struct cdx_opt {
	const char *name; /* long name without "--"; for a SECTION, the heading */
	char short_name;  /* e.g. 'k' for -k, or 0 */
	int type;         /* enum cdx_opt_type */
	size_t offset;    /* of the field in the options struct */
	const char *arg;  /* the value's placeholder in --help ("N", "FILE"); NULL for flags */
	const char *help; /* one or more lines, '\n'-separated */
	double min, max;  /* numbers: the accepted range (both 0: the type's whole range) */
	/* CDX_OPT_CALL: called with the value and the options struct; returns
	 * CDX_OK, or CDX_EINVAL with cdx_error() saying what was expected
	 * (without the option's name: the parser adds it). */
	int (*call)(const char *value, void *opts);
};

/* Table entries (designated initializers, so every field is set). off is
 * offsetof(struct ..., field); lo and hi bound numbers (both 0: the type's
 * range). */
#define CDX_OPT_ENTRY(nm, sh, ty, off, ar, hl, lo, hi, fn)                                                  \
	{                                                                                                   \
		.name = (nm), .short_name = (sh), .type = (ty), .offset = (off), .arg = (ar), .help = (hl), \
		.min = (lo), .max = (hi), .call = (fn)                                                      \
	}
#define CDX_OPT_HEADING(text)                     CDX_OPT_ENTRY(text, 0, CDX_OPT_SECTION, 0, NULL, NULL, 0, 0, NULL)
#define CDX_OPT_FLAG_(nm, off, hl)                CDX_OPT_ENTRY(nm, 0, CDX_OPT_FLAG, off, NULL, hl, 0, 0, NULL)
#define CDX_OPT_STR_(nm, off, ar, hl)             CDX_OPT_ENTRY(nm, 0, CDX_OPT_STR, off, ar, hl, 0, 0, NULL)
#define CDX_OPT_STRDUP_(nm, off, ar, hl)          CDX_OPT_ENTRY(nm, 0, CDX_OPT_STRDUP, off, ar, hl, 0, 0, NULL)
#define CDX_OPT_NUM_(nm, ty, off, ar, hl, lo, hi) CDX_OPT_ENTRY(nm, 0, ty, off, ar, hl, lo, hi, NULL)
#define CDX_OPT_CALL_(nm, ar, hl, fn)             CDX_OPT_ENTRY(nm, 0, CDX_OPT_CALL, 0, ar, hl, 0, 0, fn)
#define CDX_OPT_LOGLEVEL_(nm, off, hl)            CDX_OPT_ENTRY(nm, 0, CDX_OPT_LOGLEVEL, off, "LEVEL", hl, 0, 0, NULL)

/* cdx_opt_parse parses argv[1..argc) (argv[0] is the subcommand) into opts
 * with table. Options are --name VALUE, --name=VALUE or -k VALUE; "--"
 * ends the options. Arguments that are not options are refused unless
 * positional is not NULL: then they are stored there in order (at most
 * max_positional, their count in *npositional). -h/--help sets *help (the
 * rest is still parsed, but not checked). On an error, CDX_EINVAL, and the
 * message (cdx_last_error()) is a whole line in the style above, naming
 * prog ("candex build"). Nothing is printed. */
int cdx_opt_parse(const char *prog, const struct cdx_opt *table, size_t n, void *opts, int argc, char **argv,
    int *help, const char **positional, size_t max_positional, size_t *npositional);

/* cdx_opt_set applies one option by name (as a config file line does);
 * where names the source in errors ("serve.conf:12"). */
int cdx_opt_set(const char *prog, const struct cdx_opt *table, size_t n, void *opts, const char *name,
    const char *value, const char *where);

/* cdx_opt_find returns the table entry of a long option name, or NULL. */
const struct cdx_opt *cdx_opt_find(const struct cdx_opt *table, size_t n, const char *name, size_t len);

/* cdx_opt_usage prints the table as the options part of --help: each
 * option with its placeholder and help text, sections as headings. With
 * defaults (an options struct holding the defaults; may be NULL), each
 * number or string option that is set there shows it as "[value]". */
void cdx_opt_usage(FILE *out, const struct cdx_opt *table, size_t n, const void *defaults);

/* cdx_opt_fail records "prog: message; see prog --help" (message
 * printf-style) with cdx_error() and returns CDX_EINVAL: the one style of
 * usage errors, also for those found after parsing (a missing option). */
int cdx_opt_fail(const char *prog, const char *fmt, ...) CDX_PRINTF(2, 3);

/* ---- whole command lines ------------------------------------------------- */

/* A program's command line: its name ("candex sample"), what --help prints
 * before the options (usage line and description) and after them, and its
 * option table. */
struct cdx_opt_command {
	const char *prog;
	const char *head;
	const char *tail; /* may be NULL */
	const struct cdx_opt *opts;
	size_t nopts;
};

/* cdx_opt_command_usage prints the command's --help: head, options, tail. */
void cdx_opt_command_usage(FILE *out, const struct cdx_opt_command *cmd);

/* cdx_opt_command_parse parses argv (argv[0] is the program or subcommand)
 * into opts, which holds the defaults. Up to maxpos arguments that are not
 * options go to pos (may be NULL), their count to *npos. Returns -1 to go
 * on, or the exit status to return: 0 after printing --help on stdout, 2
 * after printing a usage error on stderr. */
int cdx_opt_command_parse(const struct cdx_opt_command *cmd, void *opts, int argc, char **argv,
    const char **pos, size_t maxpos, size_t *npos);

/* cdx_opt_command_fail prints "prog: message; see prog --help" on stderr
 * and returns 2: for what the table cannot check (a missing option). */
int cdx_opt_command_fail(const struct cdx_opt_command *cmd, const char *fmt, ...) CDX_PRINTF(2, 3);

#endif
