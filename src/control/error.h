// Errors of the control plane are values with a sentence a person can act on.
#pragma once

#include <string>
#include <utility>

namespace ioband::control {

struct Error {
  enum class Kind {
    usage,    // the command is malformed: iobandctl exits 2 and shows the usage
    refused,  // well-formed but not possible now: iobandctl exits 1
  };
  Kind kind = Kind::refused;
  std::string message;
  std::string usage;  // "iobandctl message NAME 0 weight [ID:]VAL"; may be empty

  static Error bad_usage(std::string message, std::string usage) {
    return {Kind::usage, std::move(message), std::move(usage)};
  }
  static Error refused(std::string message) { return {Kind::refused, std::move(message), {}}; }
};

}  // namespace ioband::control
