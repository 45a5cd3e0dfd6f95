#include "client/commands.h"

#include <cstdio>

namespace moe::client {

int RunValidate(int argc, char** argv) {
  std::fprintf(stderr, "moectl validate: not built yet\n");
  return 2;
}

}  // namespace moe::client
