/* Shared by the bench workloads: a monotonic clock and the one output line
 * "<operations> <elapsed seconds>" that bench/run.py parses. */
#ifndef MORAY_BENCH_COMMON_H
#define MORAY_BENCH_COMMON_H
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static inline double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline void report(long ops, double elapsed)
{
	printf("%ld %.9f\n", ops, elapsed);
	fflush(stdout);
}

static inline void die(const char *what)
{
	perror(what);
	exit(1);
}
#endif
