// steps: a job that checkpoints itself. It runs STEPS steps (argv[1],
// default 20) of about ROUNDS rounds of arithmetic each (argv[2], default
// 50000000), folding every step into a running digest; after every
// EVERY steps (argv[3], default 1) it writes its state to /ckpt/state and
// exits with 85: "checkpointed, run me again". The executor saves /ckpt,
// runs it again, and a peer that takes the job over after its executor
// is lost restores the newest saved /ckpt. Whatever the interruptions,
// /out/digest.txt ends the same as in one uninterrupted run.
//   shoal run steps.wasm -- 20 50000000 1
#include <stdio.h>
#include <stdlib.h>

#define CHECKPOINTED 85

static unsigned long long step(unsigned long long digest, unsigned long long n, unsigned long long rounds) {
    unsigned long long x = digest ^ (n * 0x9e3779b97f4a7c15ULL);
    for (unsigned long long i = 0; i < rounds; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    return x;
}

int main(int argc, char **argv) {
    unsigned long long steps = argc > 1 ? strtoull(argv[1], 0, 10) : 20;
    unsigned long long rounds = argc > 2 ? strtoull(argv[2], 0, 10) : 50000000ULL;
    unsigned long long every = argc > 3 ? strtoull(argv[3], 0, 10) : 1;
    unsigned long long done = 0, digest = 1;
    FILE *state = fopen("/ckpt/state", "r");
    if (state) {
        if (fscanf(state, "%llu %llu", &done, &digest) != 2) {
            fprintf(stderr, "steps: /ckpt/state is damaged\n");
            return 2;
        }
        fclose(state);
        printf("steps: going on from step %llu\n", done);
    }
    unsigned long long this_run = 0;
    while (done < steps) {
        digest = step(digest, done, rounds);
        done++;
        this_run++;
        if (done < steps && every > 0 && this_run == every) {
            // Written whole, then renamed: a crash leaves the old state.
            FILE *tmp = fopen("/ckpt/state.tmp", "w");
            if (!tmp) { perror("/ckpt/state.tmp"); return 3; }
            fprintf(tmp, "%llu %llu\n", done, digest);
            fclose(tmp);
            if (rename("/ckpt/state.tmp", "/ckpt/state") != 0) { perror("rename"); return 3; }
            return CHECKPOINTED;
        }
    }
    FILE *out = fopen("/out/digest.txt", "w");
    if (!out) { perror("/out/digest.txt"); return 3; }
    fprintf(out, "%llu steps, digest %016llx\n", steps, digest);
    fclose(out);
    printf("%llu steps, digest %016llx\n", steps, digest);
    return 0;
}
