#include "nbd/limits.h"

namespace ioband::nbd {

std::string client_key(bool unix_socket, unsigned uid, const std::string& address) {
  if (unix_socket) return "uid " + std::to_string(uid);
  const auto colon = address.rfind(':');
  return colon == std::string::npos ? address : address.substr(0, colon);
}

const char* expiry_reason(Expiry why) noexcept {
  switch (why) {
    case Expiry::kHandshake: return "no handshake within --handshake-timeout";
    case Expiry::kIdle: return "idle for --idle-timeout";
    case Expiry::kSlowReader: return "replies unread for --send-timeout";
    case Expiry::kNone: break;
  }
  return "";
}

}  // namespace ioband::nbd
