/* opens PATH N [RATE [SECONDS [FILES]]]: N times open(PATH, O_RDONLY) + close().
 * RATE > 0 paces the loop to RATE opens per second (checked every 64 opens; sleeps
 * when ahead), for the ingest test; RATE 0 runs as fast as it can. SECONDS > 0 stops
 * the loop after that long even if fewer than N opens were done. FILES > 0: PATH is a
 * directory holding f0 .. f<FILES-1>, opened in turn (distinct paths). */
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include "common.h"

int main(int argc, char **argv)
{
	double rate = 0, limit = 0, t0, el;
	long n, i, files = 0;
	char **paths = NULL;

	if (argc < 3 || argc > 6) {
		fprintf(stderr, "usage: opens PATH N [RATE [SECONDS [FILES]]]\n");
		return 2;
	}
	n = atol(argv[2]);
	if (argc >= 4)
		rate = atof(argv[3]);
	if (argc >= 5)
		limit = atof(argv[4]);
	if (argc == 6)
		files = atol(argv[5]);
	if (files > 0) {
		paths = calloc(files, sizeof(*paths));
		if (!paths)
			die("calloc");
		for (i = 0; i < files; i++) {
			size_t len = strlen(argv[1]) + 24;

			paths[i] = malloc(len);
			if (!paths[i])
				die("malloc");
			snprintf(paths[i], len, "%s/f%ld", argv[1], i);
		}
	}
	t0 = now_s();
	for (i = 0; i < n; i++) {
		int fd = open(paths ? paths[i % files] : argv[1], O_RDONLY);

		if (fd < 0)
			die("open");
		close(fd);
		if ((rate > 0 || limit > 0) && (i & 63) == 63) {
			el = now_s() - t0;
			if (limit > 0 && el >= limit) {
				n = i + 1;
				break;
			}
			if (rate <= 0)
				continue;
			double ahead = (double)(i + 1) / rate - el;

			if (ahead > 0) {
				struct timespec ts = { (time_t)ahead, (long)((ahead - (time_t)ahead) * 1e9) };

				nanosleep(&ts, NULL);
			}
		}
	}
	report(n, now_s() - t0);
	return 0;
}
