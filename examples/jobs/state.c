// state: a job with a large state that checkpoints itself on a timer. It
// keeps MIB MiB of state (argv[1], default 100) and makes PASSES passes
// over all of it (argv[2], default 1000). After a pass, once EVERY seconds
// (argv[3], default 60; 0: never) have gone by since this run started, it
// writes its state to /ckpt/state and exits with 85: "checkpointed, run
// me again"; the next run reads it back and goes on. /out/digest.txt ends
// the same however often it was interrupted.
//   shoal run state.wasm -- 100 1000 60
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define CHECKPOINTED 85

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    uint64_t mib = argc > 1 ? strtoull(argv[1], 0, 10) : 100;
    uint64_t passes = argc > 2 ? strtoull(argv[2], 0, 10) : 1000;
    double every = argc > 3 ? strtod(argv[3], 0) : 60;
    uint64_t words = mib * 1024 * 1024 / 8, done = 0;
    uint64_t *w = malloc(words * 8);
    if (!w) {
        fprintf(stderr, "cannot allocate %llu MiB\n", (unsigned long long)mib);
        return 1;
    }
    FILE *in = fopen("/ckpt/state", "rb");
    if (in) {
        if (fread(&done, 8, 1, in) != 1 || fread(w, 8, words, in) != words) {
            fprintf(stderr, "/ckpt/state is short\n");
            return 1;
        }
        fclose(in);
    } else {
        for (uint64_t i = 0; i < words; i++) w[i] = i * 0x9e3779b97f4a7c15ULL + 1;
    }
    double start = seconds();
    while (done < passes) {
        for (uint64_t i = 0; i < words; i++) {
            uint64_t x = w[i] ^ (done * 0xbf58476d1ce4e5b9ULL + i);
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w[i] = x;
        }
        done++;
        if (every > 0 && done < passes && seconds() - start >= every) {
            FILE *out = fopen("/ckpt/state.tmp", "wb");
            if (!out || fwrite(&done, 8, 1, out) != 1 || fwrite(w, 8, words, out) != words || fclose(out) != 0 ||
                rename("/ckpt/state.tmp", "/ckpt/state") != 0) {
                fprintf(stderr, "cannot write /ckpt/state\n");
                return 1;
            }
            printf("checkpoint after pass %llu\n", (unsigned long long)done);
            return CHECKPOINTED;
        }
    }
    uint64_t digest = 0;
    for (uint64_t i = 0; i < words; i++) digest = (digest ^ w[i]) * 0x100000001b3ULL;
    printf("%016llx after %llu passes over %llu MiB\n", (unsigned long long)digest, (unsigned long long)passes,
           (unsigned long long)mib);
    FILE *out = fopen("/out/digest.txt", "w");
    if (out) {
        fprintf(out, "%016llx\n", (unsigned long long)digest);
        fclose(out);
    }
    return 0;
}
