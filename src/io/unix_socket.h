#pragma once
// Listening Unix sockets of the daemon (NBD and control). A socket file left
// at the path is replaced only when it is stale: a daemon that was killed
// leaves its socket behind, and for a moment the kernel (tearing down the
// dead daemon's ring) may still accept on it without anyone answering.

#include <sys/types.h>

#include <functional>
#include <string>
#include <string_view>

namespace ioband::io {

// Binds and listens on path. is_live(fd) gets a connection to a socket found
// there (receive timeout 1 s) and says whether a live server answered; if
// so, nothing is touched. mode_mask, when not 0, is the umask for the bind
// (0177: the socket is 0600 from its first instant). Returns "" and sets fd,
// or a sentence naming the path.
std::string listen_unix_socket(const std::string& path, int backlog, mode_t mode_mask,
                               const std::function<bool(int)>& is_live, int& fd);

// An is_live for servers that answer a request: sends `ask` on the probe
// connection and says whether at least one byte came back.
bool answers(int probe, std::string_view ask) noexcept;

}  // namespace ioband::io
