// Configuration results: a value, not an exception (STYLE.md point 14).
#pragma once

#include <string>
#include <utility>

namespace ioband::qos {

class [[nodiscard]] Status {
 public:
  Status() = default;  // success

  static Status error(std::string message) {
    Status status;
    status.message_ = message.empty() ? std::string("error") : std::move(message);
    return status;
  }

  bool ok() const noexcept { return message_.empty(); }
  explicit operator bool() const noexcept { return ok(); }
  // Empty on success; otherwise a sentence a person can act on.
  const std::string& message() const noexcept { return message_; }

 private:
  std::string message_;
};

}  // namespace ioband::qos
