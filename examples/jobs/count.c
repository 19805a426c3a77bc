// count: counts the bytes and lines of /in/NAME (argv[1], default "data")
// and writes the counts to /out/count.txt and to stdout.
//   shoal run count.wasm --input big.log:data
#include <stdio.h>

int main(int argc, char **argv) {
    const char *name = argc > 1 ? argv[1] : "data";
    char path[512];
    snprintf(path, sizeof path, "/in/%s", name);
    FILE *in = fopen(path, "rb");
    if (!in) { perror(path); return 2; }
    unsigned long long bytes = 0, lines = 0;
    static char buf[65536]; // static: the default wasm stack is only 64 KiB
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0) {
        bytes += n;
        for (size_t i = 0; i < n; i++) lines += buf[i] == '\n';
    }
    fclose(in);
    FILE *out = fopen("/out/count.txt", "w");
    if (!out) { perror("/out/count.txt"); return 3; }
    fprintf(out, "%llu bytes %llu lines\n", bytes, lines);
    fclose(out);
    printf("%llu bytes %llu lines\n", bytes, lines);
    return 0;
}
