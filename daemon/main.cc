// moed: the controller daemon (placeholder until the control plane lands).
#include <cstdio>

int main() {
  std::fprintf(stderr, "moed: not built yet\n");
  return 1;
}
