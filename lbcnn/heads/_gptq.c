/* The sequential heart of GPTQ rounding (heads/quantize.py, gptq_round), in its
 * nearest-plane form: one block of features, rounded one at a time, each rounding
 * error added to the compensation of the features of the block not yet rounded.
 * Plain float64 arithmetic in the same order as the NumPy loop it replaces (built
 * with -ffp-contract=off, so no fused multiply-adds): both give the same integers
 * bit for bit. The blocks after this one are updated by a BLAS product in Python.
 *
 * w: bs x k weights, acc: bs x k compensation so far (updated in place),
 * r: bs x bs upper triangle of the Cholesky factor, s: k scales,
 * q, err: bs x k outputs (integers as doubles, errors w - q s); all row-major. */
#include <math.h>

void gptq_block(const double *w, double *acc, const double *r, const double *s,
                double qmax, int bs, int k, double *q, double *err)
{
    for (int i = 0; i < bs; i++) {
        double d = r[(long)i * bs + i];
        for (int c = 0; c < k; c++) {
            long at = (long)i * k + c;
            double v = nearbyint((w[at] + acc[at] / d) / s[c]);
            if (v > qmax) v = qmax;
            if (v < -qmax) v = -qmax;
            q[at] = v;
            err[at] = w[at] - v * s[c];
        }
        for (int j = i + 1; j < bs; j++) {
            double u = r[(long)i * bs + j];
            for (int c = 0; c < k; c++) acc[(long)j * k + c] += u * err[(long)i * k + c];
        }
    }
}
