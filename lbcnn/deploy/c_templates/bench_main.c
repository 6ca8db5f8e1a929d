#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "model.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    FILE *f;
    long n, i, r, reps, sink = 0, lat_n;
    uint8_t *buf;
    double t0, t1, *lat;
    if (argc < 3) return 2;
    f = fopen(argv[1], "rb");
    if (!f) return 2;
    fseek(f, 0, SEEK_END);
    n = ftell(f) / LBCNN_INPUT_BYTES;
    fseek(f, 0, SEEK_SET);
    buf = malloc((size_t)n * LBCNN_INPUT_BYTES);
    if (!buf || fread(buf, LBCNN_INPUT_BYTES, n, f) != (size_t)n) return 2;
    fclose(f);
    reps = atol(argv[2]);
    for (i = 0; i < n && i < 200; i++) sink += lbcnn_predict(buf + i * LBCNN_INPUT_BYTES);
    /* single-image latency: each call timed alone, median and mean */
    lat_n = n < 2000 ? n : 2000;
    lat = malloc(sizeof(double) * lat_n);
    for (i = 0; i < lat_n; i++) {
        t0 = now();
        sink += lbcnn_predict(buf + i * LBCNN_INPUT_BYTES);
        lat[i] = now() - t0;
    }
    qsort(lat, lat_n, sizeof(double), cmp);
    /* batch throughput: the whole file, reps times */
    t0 = now();
    for (r = 0; r < reps; r++)
        for (i = 0; i < n; i++) sink += lbcnn_predict(buf + i * LBCNN_INPUT_BYTES);
    t1 = now();
    printf("{\"latency_median_us\": %.3f, \"latency_p90_us\": %.3f, "
           "\"throughput_images_per_s\": %.1f, \"images\": %ld, \"sink\": %ld}\n",
           1e6 * lat[lat_n / 2], 1e6 * lat[(lat_n * 9) / 10],
           (double)(n * reps) / (t1 - t0), n * reps, sink);
    return 0;
}
