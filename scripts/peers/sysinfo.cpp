// Prints llama.cpp's system_info line (the CPU features ggml was built with, REPACK, ...)
// without loading a model. Built by build_llamacpp.sh against the static libraries.
#include <cstdio>

#include "llama.h"

int main() {
    llama_backend_init();
    std::printf("%s\n", llama_print_system_info());
    llama_backend_free();
    return 0;
}
