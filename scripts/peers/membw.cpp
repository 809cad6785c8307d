// Memory read bandwidth probe for scripts/peers: OpenMP threads sum disjoint slices of a
// buffer with wide loads (AVX-512 where the compiler targets it, else AVX2, else 64-bit)
// and four accumulators; prints the best of N passes in GB/s (1e9 bytes).
// Usage: membw [MiB (default 1024)] [passes (default 5)]; threads from OMP_NUM_THREADS.
#include <omp.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#if defined(__AVX512F__)
#include <immintrin.h>
typedef __m512i word;
static inline word zero() { return _mm512_setzero_si512(); }
static inline word fill(uint64_t v) { return _mm512_set1_epi64((long long) v); }
static inline word add(word a, const word * p) { return _mm512_add_epi64(a, _mm512_load_si512(p)); }
static inline word add2(word a, word b) { return _mm512_add_epi64(a, b); }
static inline long long fold(word a) { return _mm512_reduce_add_epi64(a); }
static const char * kind = "AVX-512 loads";
#elif defined(__AVX2__)
#include <immintrin.h>
typedef __m256i word;
static inline word zero() { return _mm256_setzero_si256(); }
static inline word fill(uint64_t v) { return _mm256_set1_epi64x((long long) v); }
static inline word add(word a, const word * p) { return _mm256_add_epi64(a, _mm256_load_si256(p)); }
static inline word add2(word a, word b) { return _mm256_add_epi64(a, b); }
static inline long long fold(word a) {
    const __m128i s = _mm_add_epi64(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    return _mm_cvtsi128_si64(s) + _mm_extract_epi64(s, 1);
}
static const char * kind = "AVX2 loads";
#else
typedef uint64_t word;
static inline word zero() { return 0; }
static inline word fill(uint64_t v) { return v; }
static inline word add(word a, const word * p) { return a + *p; }
static inline word add2(word a, word b) { return a + b; }
static inline long long fold(word a) { return (long long) a; }
static const char * kind = "64-bit loads (compiler-vectorized)";
#endif

int main(int argc, char ** argv) {
    const size_t mib    = argc > 1 ? strtoull(argv[1], nullptr, 10) : 1024;
    const int    passes = argc > 2 ? atoi(argv[2]) : 5;
    const size_t n      = (mib << 20) / sizeof(word);
    const size_t bytes  = n * sizeof(word);
    word * buf = static_cast<word *>(aligned_alloc(64, bytes));
    if (!buf) {
        std::fprintf(stderr, "membw: cannot allocate %zu MiB\n", mib);
        return 1;
    }
#pragma omp parallel for
    for (size_t i = 0; i < n; i++) {
        buf[i] = fill(i);  // touch every page from the thread that will read it
    }
    double    best = 0;
    long long sink = 0;
    for (int p = 0; p < passes; p++) {
        const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel reduction(+ : sink)
        {
            const size_t nt = omp_get_num_threads();
            const size_t id = omp_get_thread_num();
            const size_t lo = n * id / nt;
            const size_t hi = n * (id + 1) / nt;
            word a0 = zero(), a1 = zero(), a2 = zero(), a3 = zero();
            size_t i = lo;
            for (; i + 4 <= hi; i += 4) {
                a0 = add(a0, buf + i);
                a1 = add(a1, buf + i + 1);
                a2 = add(a2, buf + i + 2);
                a3 = add(a3, buf + i + 3);
            }
            for (; i < hi; i++) {
                a0 = add(a0, buf + i);
            }
            sink += fold(add2(add2(a0, a1), add2(a2, a3)));
        }
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (bytes / s > best) {
            best = bytes / s;
        }
    }
    std::printf("read bandwidth: %.1f GB/s (best of %d passes over %zu MiB, %d threads, %s; checksum %lld)\n",
                best / 1e9, passes, mib, omp_get_max_threads(), kind, sink & 0xff);
    free(buf);
    return 0;
}
