// stepper: a job that shoal can pause between two steps and move whole
// to another peer (a transparent snapshot: nothing in it saves itself).
// It is a WASI *reactor* that exports shoal_step: the executor calls it
// again and again; -1 means "call me again", anything else is the exit
// code. build.sh builds it with -mexec-model=reactor.
//
// It keeps MIB MiB of state (environment MIB, default 64) and makes STEPS
// steps (default 3000). Each step mixes 64 KiB of a HOT_KIB KiB stretch at
// the start of the state (default 1024), ROUNDS times (default 200), so
// little memory changes between two snapshots. The last step writes the
// digest of the whole state to /out/digest.txt, and prints the longest
// gap between two steps by the wall clock: a pause for a move shows there.
//   shoal run stepper.wasm --env MIB=64 --env STEPS=3000
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static uint64_t *w, words, hot, steps, rounds, done;
static double last_ms, gap_ms;

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static uint64_t env(const char *name, uint64_t fallback) {
    const char *v = getenv(name);
    return v ? strtoull(v, 0, 10) : fallback;
}

__attribute__((export_name("shoal_step"))) int shoal_step(void) {
    if (!w) {
        words = env("MIB", 64) * 1024 * 1024 / 8;
        hot = env("HOT_KIB", 1024) * 1024 / 8;
        steps = env("STEPS", 3000);
        rounds = env("ROUNDS", 200);
        if (hot < 8192 || hot > words) hot = words < 8192 ? words : 8192;
        w = malloc(words * 8);
        if (!w) {
            fprintf(stderr, "cannot allocate %llu words\n", (unsigned long long)words);
            return 1;
        }
        for (uint64_t i = 0; i < words; i++) w[i] = i * 0x9e3779b97f4a7c15ULL + 1;
    }
    double t = now_ms();
    if (done > 0 && t - last_ms > gap_ms) gap_ms = t - last_ms;
    uint64_t from = (done * 8192) % (hot - 8191);
    for (uint64_t r = 0; r < rounds; r++) {
        for (uint64_t i = from; i < from + 8192; i++) {
            uint64_t x = w[i] ^ (done * 0xbf58476d1ce4e5b9ULL + r);
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w[i] = x;
        }
    }
    done++;
    last_ms = now_ms();
    if (done < steps) return -1;
    uint64_t digest = 0;
    for (uint64_t i = 0; i < words; i++) digest = (digest << 7 | digest >> 57) ^ w[i];
    FILE *out = fopen("/out/digest.txt", "w");
    if (!out || fprintf(out, "%016llx\n", (unsigned long long)digest) < 0 || fclose(out) != 0) {
        fprintf(stderr, "cannot write /out/digest.txt\n");
        return 1;
    }
    printf("%016llx after %llu steps; longest gap between steps %.1f ms\n", (unsigned long long)digest,
           (unsigned long long)done, gap_ms);
    return 0;
}
