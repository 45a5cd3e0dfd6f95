// moe-worker: one rank of a training job (placeholder until the trainer lands).
#include <cstdio>

int main() {
  std::fprintf(stderr, "moe-worker: not built yet\n");
  return 1;
}
