/*
 * cli.h — the candex command-line tool: one cmd_*() per subcommand, each in
 * its own tools/cmd_*.c. Every subcommand describes its options in one
 * table (src/common/opt.h) that drives both parsing and --help, with one
 * strict number parser and one error style:
 *     candex build: unknown option --foo; see candex build --help
 * Exit codes: 0 success, 1 runtime failure, 2 usage error.
 */
#ifndef CANDEX_CLI_H
#define CANDEX_CLI_H

#include "common/opt.h" /* every subcommand's option table */

int cmd_build(int argc, char **argv);    /* tools/cmd_build.c */
int cmd_inspect(int argc, char **argv);  /* tools/cmd_inspect.c */
int cmd_serve(int argc, char **argv);    /* tools/cmd_serve.c */
int cmd_route(int argc, char **argv);    /* tools/cmd_route.c */
int cmd_query(int argc, char **argv);    /* tools/cmd_query.c */
int cmd_recall(int argc, char **argv);   /* tools/cmd_recall.c */
int cmd_sample(int argc, char **argv);   /* tools/cmd_sample.c: the embedded demo catalogue */
int cmd_demo(int argc, char **argv);     /* tools/cmd_demo.c: the README's main job */
int cmd_ope(int argc, char **argv);      /* tools/cmd_ope.c: off-policy evaluation from impression logs */
int cmd_takedown(int argc, char **argv); /* tools/cmd_takedown.c: a collection's takedown list */

#define CLI_EXIT_OK    0
#define CLI_EXIT_FAIL  1
#define CLI_EXIT_USAGE 2

#endif
