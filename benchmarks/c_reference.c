/* Hand-written C reference kernels for benchmarks/c_reference.py (not part of the package).
 *
 * a_i = sum_{j != i} m_j (x_j - x_i) / (r2 + eps2)^(3/2), each unordered pair once (Newton's
 * third law), OpenMP over rows (dynamic schedule), one (3, N) accumulator per thread summed at
 * the end. r**-3 from the float32 hardware rsqrt estimate, one Newton step in float32, then one
 * third-order float64 correction (as numba_parallel does). A pair with r2 == 0 contributes 0.
 *
 * nbody_avx2: 4 float64 lanes (__m256d, FMA); nbody_avx512: 8 lanes (__m512d).
 * Build: gcc -O3 -march=native -fopenmp -shared -fPIC c_reference.c -o libcref.so
 */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

static inline double inv_r3_scalar(double r2) {
    float yf = 1.0f / sqrtf((float)r2);
    double y = yf, y2 = y * y, e = 1.0 - r2 * y2, y3 = y * y2;
    return y3 + (y3 * e) * (1.5 + 1.875 * e);
}

static inline __m256d inv_r3_avx2(__m256d r2) {
    __m128 rf = _mm256_cvtpd_ps(r2);
    __m128 yf = _mm_rsqrt_ps(rf); /* 12 bits */
    /* one Newton step in float32: y * (1.5 - 0.5 r y^2) */
    __m128 t = _mm_mul_ps(_mm_mul_ps(rf, yf), yf);
    yf = _mm_mul_ps(_mm_mul_ps(_mm_set1_ps(0.5f), yf), _mm_sub_ps(_mm_set1_ps(3.0f), t));
    __m256d y = _mm256_cvtps_pd(yf);
    __m256d y2 = _mm256_mul_pd(y, y);
    __m256d e = _mm256_fnmadd_pd(r2, y2, _mm256_set1_pd(1.0));
    __m256d y3 = _mm256_mul_pd(y, y2);
    __m256d c = _mm256_fmadd_pd(_mm256_set1_pd(1.875), e, _mm256_set1_pd(1.5));
    return _mm256_fmadd_pd(_mm256_mul_pd(y3, e), c, y3);
}

static inline double hsum256(__m256d v) {
    __m128d lo = _mm256_castpd256_pd128(v), hi = _mm256_extractf128_pd(v, 1);
    lo = _mm_add_pd(lo, hi);
    return _mm_cvtsd_f64(_mm_add_sd(lo, _mm_unpackhi_pd(lo, lo)));
}

static void reduce(int n, int nt, const double *acc, double *out) {
#pragma omp parallel for schedule(static)
    for (long i = 0; i < 3L * n; i++) {
        double s = 0.0;
        for (int t = 0; t < nt; t++) s += acc[(long)t * 3 * n + i];
        out[i] = s;
    }
}

/* scalar tail of row i: pairs (i, j) for j in [j0, n) */
static inline void tail(int i, int j0, int n, const double *x, const double *y, const double *z,
                        const double *m, double eps2, double *ax, double *ay, double *az,
                        double *sx, double *sy, double *sz) {
    for (int j = j0; j < n; j++) {
        double dx = x[j] - x[i], dy = y[j] - y[i], dz = z[j] - z[i];
        double r2 = dx * dx + dy * dy + dz * dz + eps2;
        double w = r2 > 0.0 ? inv_r3_scalar(r2) : 0.0;
        double sj = m[j] * w, si = m[i] * w;
        *sx += dx * sj; *sy += dy * sj; *sz += dz * sj;
        ax[j] -= dx * si; ay[j] -= dy * si; az[j] -= dz * si;
    }
}

void nbody_avx2(int n, const double *x, const double *y, const double *z, const double *m,
                double eps2, double *acc, double *out, int nthreads) {
    memset(acc, 0, sizeof(double) * 3 * (size_t)n * nthreads);
#pragma omp parallel num_threads(nthreads)
    {
        int t = omp_get_thread_num();
        double *ax = acc + (size_t)t * 3 * n, *ay = ax + n, *az = ay + n;
#pragma omp for schedule(dynamic, 16)
        for (int i = 0; i < n - 1; i++) {
            __m256d xi = _mm256_set1_pd(x[i]), yi = _mm256_set1_pd(y[i]), zi = _mm256_set1_pd(z[i]);
            __m256d mi = _mm256_set1_pd(m[i]), e2 = _mm256_set1_pd(eps2), zero = _mm256_setzero_pd();
            __m256d sx = zero, sy = zero, sz = zero;
            int j = i + 1;
            for (; j + 4 <= n; j += 4) {
                __m256d dx = _mm256_sub_pd(_mm256_loadu_pd(x + j), xi);
                __m256d dy = _mm256_sub_pd(_mm256_loadu_pd(y + j), yi);
                __m256d dz = _mm256_sub_pd(_mm256_loadu_pd(z + j), zi);
                __m256d r2 = _mm256_fmadd_pd(dx, dx, e2);
                r2 = _mm256_fmadd_pd(dy, dy, r2);
                r2 = _mm256_fmadd_pd(dz, dz, r2);
                __m256d ok = _mm256_cmp_pd(r2, zero, _CMP_GT_OQ);
                __m256d w = _mm256_and_pd(inv_r3_avx2(_mm256_blendv_pd(_mm256_set1_pd(1.0), r2, ok)), ok);
                __m256d sj = _mm256_mul_pd(_mm256_loadu_pd(m + j), w), si = _mm256_mul_pd(mi, w);
                sx = _mm256_fmadd_pd(dx, sj, sx);
                sy = _mm256_fmadd_pd(dy, sj, sy);
                sz = _mm256_fmadd_pd(dz, sj, sz);
                _mm256_storeu_pd(ax + j, _mm256_fnmadd_pd(dx, si, _mm256_loadu_pd(ax + j)));
                _mm256_storeu_pd(ay + j, _mm256_fnmadd_pd(dy, si, _mm256_loadu_pd(ay + j)));
                _mm256_storeu_pd(az + j, _mm256_fnmadd_pd(dz, si, _mm256_loadu_pd(az + j)));
            }
            double tx = hsum256(sx), ty = hsum256(sy), tz = hsum256(sz);
            tail(i, j, n, x, y, z, m, eps2, ax, ay, az, &tx, &ty, &tz);
            ax[i] += tx; ay[i] += ty; az[i] += tz;
        }
    }
    reduce(n, nthreads, acc, out);
}

#ifdef __AVX512F__
static inline __m512d inv_r3_avx512(__m512d r2) {
    __m256 rf = _mm512_cvtpd_ps(r2);
    __m256 yf = _mm256_rsqrt14_ps(rf); /* 14 bits */
    __m256 t = _mm256_mul_ps(_mm256_mul_ps(rf, yf), yf);
    yf = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), yf), _mm256_sub_ps(_mm256_set1_ps(3.0f), t));
    __m512d y = _mm512_cvtps_pd(yf);
    __m512d y2 = _mm512_mul_pd(y, y);
    __m512d e = _mm512_fnmadd_pd(r2, y2, _mm512_set1_pd(1.0));
    __m512d y3 = _mm512_mul_pd(y, y2);
    __m512d c = _mm512_fmadd_pd(_mm512_set1_pd(1.875), e, _mm512_set1_pd(1.5));
    return _mm512_fmadd_pd(_mm512_mul_pd(y3, e), c, y3);
}

void nbody_avx512(int n, const double *x, const double *y, const double *z, const double *m,
                  double eps2, double *acc, double *out, int nthreads) {
    memset(acc, 0, sizeof(double) * 3 * (size_t)n * nthreads);
#pragma omp parallel num_threads(nthreads)
    {
        int t = omp_get_thread_num();
        double *ax = acc + (size_t)t * 3 * n, *ay = ax + n, *az = ay + n;
#pragma omp for schedule(dynamic, 16)
        for (int i = 0; i < n - 1; i++) {
            __m512d xi = _mm512_set1_pd(x[i]), yi = _mm512_set1_pd(y[i]), zi = _mm512_set1_pd(z[i]);
            __m512d mi = _mm512_set1_pd(m[i]), e2 = _mm512_set1_pd(eps2), zero = _mm512_setzero_pd();
            __m512d sx = zero, sy = zero, sz = zero;
            int j = i + 1;
            for (; j + 8 <= n; j += 8) {
                __m512d dx = _mm512_sub_pd(_mm512_loadu_pd(x + j), xi);
                __m512d dy = _mm512_sub_pd(_mm512_loadu_pd(y + j), yi);
                __m512d dz = _mm512_sub_pd(_mm512_loadu_pd(z + j), zi);
                __m512d r2 = _mm512_fmadd_pd(dx, dx, e2);
                r2 = _mm512_fmadd_pd(dy, dy, r2);
                r2 = _mm512_fmadd_pd(dz, dz, r2);
                __mmask8 ok = _mm512_cmp_pd_mask(r2, zero, _CMP_GT_OQ);
                __m512d w = _mm512_maskz_mov_pd(ok, inv_r3_avx512(_mm512_mask_blend_pd(ok, _mm512_set1_pd(1.0), r2)));
                __m512d sj = _mm512_mul_pd(_mm512_loadu_pd(m + j), w), si = _mm512_mul_pd(mi, w);
                sx = _mm512_fmadd_pd(dx, sj, sx);
                sy = _mm512_fmadd_pd(dy, sj, sy);
                sz = _mm512_fmadd_pd(dz, sj, sz);
                _mm512_storeu_pd(ax + j, _mm512_fnmadd_pd(dx, si, _mm512_loadu_pd(ax + j)));
                _mm512_storeu_pd(ay + j, _mm512_fnmadd_pd(dy, si, _mm512_loadu_pd(ay + j)));
                _mm512_storeu_pd(az + j, _mm512_fnmadd_pd(dz, si, _mm512_loadu_pd(az + j)));
            }
            double tx = _mm512_reduce_add_pd(sx), ty = _mm512_reduce_add_pd(sy), tz = _mm512_reduce_add_pd(sz);
            tail(i, j, n, x, y, z, m, eps2, ax, ay, az, &tx, &ty, &tz);
            ax[i] += tx; ay[i] += ty; az[i] += tz;
        }
    }
    reduce(n, nthreads, acc, out);
}
int has_avx512(void) { return 1; }
#else
void nbody_avx512(int n, const double *x, const double *y, const double *z, const double *m,
                  double eps2, double *acc, double *out, int nthreads) {
    nbody_avx2(n, x, y, z, m, eps2, acc, out, nthreads);
}
int has_avx512(void) { return 0; }
#endif
