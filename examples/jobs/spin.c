// spin: CPU-bound work for about SECONDS (argv[1], default 2) of one core
// of this machine, counted in iterations so that the work is the same
// wherever it runs; prints a checksum.
//   shoal run spin.wasm -- 2
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 2.0;
    // About 4e8 rounds a second in wasmtime on the machine of BENCHMARKS.md
    // (natively, about half as long again faster).
    unsigned long long rounds = (unsigned long long)(seconds * 4e8);
    unsigned long long x = 88172645463325252ULL;
    for (unsigned long long i = 0; i < rounds; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    }
    printf("%llu\n", x);
    return 0;
}
