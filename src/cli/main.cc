// iobandctl: the control tool. The dm-ioband verbs arrive with the control
// plane; until then it answers --version and says so for anything else.

#include <iostream>
#include <string>

#include "ioband/version.h"

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--version") {
    std::cout << "iobandctl " << ioband::kVersion << "\n";
    return 0;
  }
  std::cerr << "iobandctl: no control verbs in this build yet\n";
  return 2;
}
