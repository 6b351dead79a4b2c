/*
 * filter.h — a request's filter on item attributes, compiled once per
 * request against the collection's schema and evaluated on every code the
 * IVF scan visits (search.c).
 *
 * The language (docs/recommenders.md, "Filters"), keywords in any case:
 *
 *   expr  := term (OR term)*
 *   term  := unary (AND unary)*
 *   unary := NOT unary | '(' expr ')' | test
 *   test  := NAME op VALUE              int: = != < <= > >=; bool, enum, group: = !=
 *          | NAME IN '(' VALUE, ... ')' int, enum, group
 *          | NAME HAS VALUE             set: the item's set holds VALUE
 *          | NAME HAS ANY|ALL '(' VALUE, ... ')'
 *   VALUE := a bare word (no space or ()=!<>,") or a "quoted string"
 *
 * e.g.  market has SE and explicit = false and year >= 2015
 *       type in (track, episode) and not artist = "artist-17"
 *
 * A name the schema does not have, a value of the wrong type (year = abc,
 * explicit = maybe) or a comparison the type does not support is an error.
 * An enum or set value that no item of this version has is not: the test
 * simply matches nothing.
 */
#ifndef CANDEX_FILTER_H
#define CANDEX_FILTER_H

#include <stdint.h>

#include "shard/attrs.h"

#define CDX_FILTER_MAX_TEXT  4096 /* bytes of a filter expression */
#define CDX_FILTER_MAX_NODES 512

typedef struct cdx_filter cdx_filter;

/* cdx_filter_compile parses expr against schema (NULL: the collection has
 * no attributes, so every filter is an error). On success *fp is set and
 * the caller frees it with cdx_filter_free(); on failure CDX_EINVAL with a
 * message that names the position and the problem. */
int cdx_filter_compile(cdx_filter **fp, const char *expr, const struct cdx_attr_schema *schema);
void cdx_filter_free(cdx_filter *f); /* NULL is a no-op */

/* cdx_filter_match: whether row of t (a table with the compiled schema)
 * passes. Thread-safe: a compiled filter is read-only. */
int cdx_filter_match(const cdx_filter *f, const struct cdx_attr_table *t, uint64_t row);

#endif
