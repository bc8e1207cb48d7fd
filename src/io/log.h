#pragma once
// One line per event on stderr, whole lines even from several threads.

#include <cstdio>
#include <string>

namespace ioband {

void log_line(const std::string& line);

}  // namespace ioband
