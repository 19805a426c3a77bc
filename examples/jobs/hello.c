// hello: prints a greeting and its arguments, and exits with 0.
//   shoal run hello.wasm -- world
#include <stdio.h>

int main(int argc, char **argv) {
    printf("hello from a shoal slot");
    for (int i = 1; i < argc; i++) printf(" %s", argv[i]);
    printf("\n");
    return 0;
}
