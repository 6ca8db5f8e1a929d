/* LB-CNN feature expander on the CPU: depthwise 3x3 convolutions with +-1
 * kernels followed by 4x4/2 'same' max-pooling, channels-last, one image per
 * OpenMP iteration so every intermediate map stays in the core's cache.
 * Inputs that hold integers (raw uint8 pixels) give exact integer sums, which
 * is why the torch reference path and this kernel agree bit for bit. */
#include <stdlib.h>
#include <string.h>

static void expand_pad(const float *in, int H, int W, int C, int m, int relu,
                       float *xe)
{
    int Co = C * m, Wp = W + 2;
    memset(xe, 0, sizeof(float) * (size_t)Wp * Co);
    memset(xe + (size_t)(H + 1) * Wp * Co, 0, sizeof(float) * (size_t)Wp * Co);
    for (int i = 1; i <= H; i++) {
        memset(xe + (size_t)i * Wp * Co, 0, sizeof(float) * Co);
        memset(xe + ((size_t)i * Wp + W + 1) * Co, 0, sizeof(float) * Co);
    }
    for (int i = 0; i < H; i++) {
        const float *src = in + (size_t)i * W * C;
        float *dst = xe + ((size_t)(i + 1) * Wp + 1) * Co;
        if (m == 1) {
            if (relu)
                for (int k = 0; k < W * C; k++) dst[k] = src[k] > 0.0f ? src[k] : 0.0f;
            else
                memcpy(dst, src, sizeof(float) * (size_t)W * C);
        } else {
            for (int k = 0; k < W * C; k++) {
                float v = src[k];
                if (relu && v < 0.0f) v = 0.0f;
                for (int r = 0; r < m; r++) dst[(size_t)k * m + r] = v;
            }
        }
    }
}

/* w: 9 taps (row-major kh*3+kw) x Co output channels, values +-1. All nine
 * taps are summed in one pass so each output is written once (vectorised
 * over the contiguous channel axis). */
static void dwconv3(const float *restrict xe, int H, int W, int Co,
                    const float *restrict w, float *restrict out)
{
    int Wp = W + 2;
    const float *w0 = w, *w1 = w + Co, *w2 = w + 2 * Co, *w3 = w + 3 * Co,
                *w4 = w + 4 * Co, *w5 = w + 5 * Co, *w6 = w + 6 * Co,
                *w7 = w + 7 * Co, *w8 = w + 8 * Co;
    size_t row = (size_t)Wp * Co;
    for (int i = 0; i < H; i++)
        for (int j = 0; j < W; j++) {
            float *restrict o = out + ((size_t)i * W + j) * Co;
            const float *a = xe + ((size_t)i * Wp + j) * Co;
            const float *b = a + row, *c = b + row;
            for (int co = 0; co < Co; co++)
                o[co] = w0[co] * a[co] + w1[co] * a[co + Co] + w2[co] * a[co + 2 * Co]
                      + w3[co] * b[co] + w4[co] * b[co + Co] + w5[co] * b[co + 2 * Co]
                      + w6[co] * c[co] + w7[co] * c[co + Co] + w8[co] * c[co + 2 * Co];
        }
}

/* Depth multiplier m >= 8: each input channel feeds m contiguous outputs, so
 * broadcast the nine input taps instead of materialising m copies of the
 * input. xp: zero-padded (H+2) x (W+2) x C input. */
static void dwconv3_bcast(const float *restrict xp, int H, int W, int C, int m,
                          const float *restrict w, float *restrict out)
{
    int Co = C * m, Wp = W + 2;
    size_t row = (size_t)Wp * C;
    for (int i = 0; i < H; i++)
        for (int j = 0; j < W; j++) {
            float *restrict o = out + ((size_t)i * W + j) * Co;
            const float *a = xp + ((size_t)i * Wp + j) * C;
            const float *b = a + row, *c = b + row;
            for (int ci = 0; ci < C; ci++) {
                float x0 = a[ci], x1 = a[ci + C], x2 = a[ci + 2 * C],
                      x3 = b[ci], x4 = b[ci + C], x5 = b[ci + 2 * C],
                      x6 = c[ci], x7 = c[ci + C], x8 = c[ci + 2 * C];
                const float *wc = w + ci * m;
                float *oc = o + ci * m;
                for (int r = 0; r < m; r++)
                    oc[r] = wc[r] * x0 + wc[r + Co] * x1 + wc[r + 2 * Co] * x2
                          + wc[r + 3 * Co] * x3 + wc[r + 4 * Co] * x4 + wc[r + 5 * Co] * x5
                          + wc[r + 6 * Co] * x6 + wc[r + 7 * Co] * x7 + wc[r + 8 * Co] * x8;
            }
        }
}

/* 4x4 window, stride 2, output ceil(n/2); window j covers [2j-1, 2j+2]
 * clipped to the image, so padded cells never win the max. */
static void maxpool42(const float *in, int H, int W, int C, float *tmp,
                      float *out)
{
    int Ho = (H + 1) / 2, Wo = (W + 1) / 2;
    for (int i = 0; i < H; i++)
        for (int j = 0; j < Wo; j++) {
            int lo = 2 * j - 1 < 0 ? 0 : 2 * j - 1;
            int hi = 2 * j + 2 > W - 1 ? W - 1 : 2 * j + 2;
            float *o = tmp + ((size_t)i * Wo + j) * C;
            memcpy(o, in + ((size_t)i * W + lo) * C, sizeof(float) * C);
            for (int q = lo + 1; q <= hi; q++) {
                const float *s = in + ((size_t)i * W + q) * C;
                for (int c = 0; c < C; c++) o[c] = s[c] > o[c] ? s[c] : o[c];
            }
        }
    for (int i = 0; i < Ho; i++) {
        int lo = 2 * i - 1 < 0 ? 0 : 2 * i - 1;
        int hi = 2 * i + 2 > H - 1 ? H - 1 : 2 * i + 2;
        float *o = out + (size_t)i * Wo * C;
        memcpy(o, tmp + (size_t)lo * Wo * C, sizeof(float) * Wo * C);
        for (int q = lo + 1; q <= hi; q++) {
            const float *s = tmp + (size_t)q * Wo * C;
            for (int c = 0; c < Wo * C; c++) o[c] = s[c] > o[c] ? s[c] : o[c];
        }
    }
}

/* x: N images H x W x C, float32, or uint8 when x_is_u8 (converted per image). mult[L]: depth multipliers. weights: for
 * each layer the main conv (9 x C_l*m_l) then nl-1 extra convs (9 x C_{l+1}).
 * out: N x d, d = Ho_L * Wo_L * C_L. Returns 0, or -1 when out of memory. */
int lb_features(const void *x, int x_is_u8, int N, int H, int W, int C, int L,
                const int *mult, int nl, const float *weights, float scale,
                float *out, int nthreads)
{
    size_t maxbuf = 0;
    {
        int h = H, w = W, c = C;
        for (int l = 0; l < L; l++) {
            int co = c * mult[l];
            size_t need = (size_t)(h + 2) * (w + 2) * co;
            if (need > maxbuf) maxbuf = need;
            h = (h + 1) / 2; w = (w + 1) / 2; c = co;
        }
    }
    int Hf = H, Wf = W, Cf = C;
    for (int l = 0; l < L; l++) { Hf = (Hf + 1) / 2; Wf = (Wf + 1) / 2; Cf *= mult[l]; }
    size_t d = (size_t)Hf * Wf * Cf;
    int failed = 0;

#pragma omp parallel num_threads(nthreads)
    {
        float *xe = malloc(sizeof(float) * maxbuf);
        float *a = malloc(sizeof(float) * maxbuf);
        float *b = malloc(sizeof(float) * maxbuf);
        float *img = malloc(sizeof(float) * (size_t)H * W * C);
        if (!xe || !a || !b || !img) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int n = 0; n < N; n++) {
            if (failed) continue;
            const float *cur;
            if (x_is_u8) {
                const unsigned char *src = (const unsigned char *)x + (size_t)n * H * W * C;
                for (size_t k = 0; k < (size_t)H * W * C; k++) img[k] = (float)src[k];
                cur = img;
            } else {
                cur = (const float *)x + (size_t)n * H * W * C;
            }
            int h = H, w = W, c = C;
            const float *wp = weights;
            for (int l = 0; l < L; l++) {
                int co = c * mult[l];
                if (mult[l] >= 8) {
                    expand_pad(cur, h, w, c, 1, 0, xe);
                    dwconv3_bcast(xe, h, w, c, mult[l], wp, a);
                } else {
                    expand_pad(cur, h, w, c, mult[l], 0, xe);
                    dwconv3(xe, h, w, co, wp, a);
                }
                wp += 9 * co;
                for (int e = 1; e < nl; e++) {
                    expand_pad(a, h, w, co, 1, 1, xe);
                    dwconv3(xe, h, w, co, wp, a);
                    wp += 9 * co;
                }
                int last = (l == L - 1);
                /* pooling reads all of `a` into `b` before writing, so it may
                 * write back into `a` */
                maxpool42(a, h, w, co, b, last ? out + (size_t)n * d : a);
                cur = a;
                h = (h + 1) / 2; w = (w + 1) / 2; c = co;
            }
            if (scale != 1.0f) {
                float *o = out + (size_t)n * d;
                for (size_t k = 0; k < d; k++) o[k] *= scale;
            }
        }
        free(xe); free(a); free(b); free(img);
    }
    return failed ? -1 : 0;
}
