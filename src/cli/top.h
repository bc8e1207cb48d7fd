#pragma once
// iobandctl top: a live view of every ioband device and group, like iotop.

#include <string>
#include <vector>

namespace ioband::cli {

// Sends one request line to the control socket and reads one line back
// (main.cc). "" and `error` set on failure.
std::string exchange(const std::string& path, const std::string& line, std::string& error);

// `args`: what follows "top" on the command line. Exit status as iobandctl's.
int run_top(const std::vector<std::string>& args, const std::string& control, bool json);

}  // namespace ioband::cli
