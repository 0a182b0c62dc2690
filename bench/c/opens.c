/* opens PATH N [RATE [SECONDS]]: N times open(PATH, O_RDONLY) + close().
 * RATE > 0 paces the loop to RATE opens per second (checked every 64 opens; sleeps
 * when ahead), for the ingest test; RATE 0 runs as fast as it can. SECONDS > 0 stops
 * the loop after that long even if fewer than N opens were done. */
#include <fcntl.h>
#include <unistd.h>
#include "common.h"

int main(int argc, char **argv)
{
	double rate = 0, limit = 0, t0, el;
	long n, i;

	if (argc < 3 || argc > 5) {
		fprintf(stderr, "usage: opens PATH N [RATE [SECONDS]]\n");
		return 2;
	}
	n = atol(argv[2]);
	if (argc >= 4)
		rate = atof(argv[3]);
	if (argc == 5)
		limit = atof(argv[4]);
	t0 = now_s();
	for (i = 0; i < n; i++) {
		int fd = open(argv[1], O_RDONLY);

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
