// Drives one real nbd::Session over a socketpair on a real io_uring Reactor:
// the harness's bytes are what the client sends after the server's greeting,
// then the client closes its side for writing and reads until the server
// closes. Nothing of the session is stubbed or re-implemented, so the
// handshake and transmission harnesses follow the code as it changes; they
// use only Session's public surface (constructor, start, on_closed).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace ioband::fuzz {

// The export the client talks to, chosen by one byte of the input so the
// fuzzer explores every combination.
struct ServerShape {
  bool read_only = false;    // export flagged read-only (writes get EPERM)
  bool faults = false;       // fault backend: half the storage ops fail with EIO
  bool scheduled = false;    // behind a qos::DeviceGroup and its driver, as ioband devices are
  bool two_exports = false;  // a second export: the empty (default) name no longer resolves
  bool tcp_peer = false;     // the peer looks like a TCP client (no reply holding)
};
ServerShape shape_from_byte(uint8_t byte);

// The export's name and size (1 MiB of memory).
inline constexpr const char* kExportName = "fuzz";
inline constexpr uint64_t kExportSize = 1u << 20;

struct SessionRun {
  std::string output;     // every byte the server sent, greeting first
  bool closed = false;    // the session closed itself (on_closed ran)
};

// Runs the whole connection; returns once the session is gone.
SessionRun run_session(const ServerShape& shape, const uint8_t* input, size_t size);

// A client's handshake: flags, then fixed-newstyle options.
std::string client_flags(uint32_t flags);
std::string option(uint32_t option, const std::string& data);
std::string go_option(uint32_t which, const std::string& name, const std::string& info_requests = "");
std::string meta_context_option(uint32_t which, const std::string& name, const std::vector<std::string>& queries);

}  // namespace ioband::fuzz
