#pragma once
// Bounded resources of the NBD server (iobandd's --handshake-timeout,
// --idle-timeout, --send-timeout, --max-connections,
// --max-connections-per-client, --max-request-memory): what a hostile or
// broken client may hold, and the counters that say when a limit bit.
//
// Timeouts are checked by one sweep per reactor per second over its
// sessions (Server::tick), so they cost nothing per request and are exact
// to about a second. A session records the time of its last input and of
// its last send progress (one store each, from the reactor's clock).
//
// Request memory is the sum of the buffers of every NbdRequest, in flight
// or cached for reuse, and of every connection's 32 KiB input staging
// buffer, across all sessions and reactors; a reply not yet read by its
// client keeps its buffer, so a slow reader's memory counts. A connection
// without input for kStagingIdle gives back its staging buffer and its
// cached requests and waits for input with a ring poll (Session::
// release_idle_input), so idle connections hold no counted memory; what
// they still hold (the Session object, about 1 KiB, and the kernel's
// socket buffers) is bounded by the connection cap.
// A session admits a READ or WRITE only if its buffer fits:
//
//   used + delta <= cap - reserve                        (anyone), or
//   used + delta <= cap  and  held + delta <= kSmallHold (a light session)
//
// where held is what the session already holds. The reserve (cap / 8)
// keeps room for clients with a few requests in flight (4 KiB at QD32 is
// 128 KiB) while heavy sessions, such as readers that never read their
// replies, fill the rest: they stall only themselves until the send
// timeout closes them. A session refused stops reading (the client's
// requests wait in its socket) and is retried every kRetryInterval and
// whenever it frees memory itself. Several reactors may admit at once, so
// the cap can be passed by at most one request (32 MiB) per reactor.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>

namespace ioband::nbd {

struct LimitsConfig {
  // From accept to the end of option haggling (0: none). qemu-nbd's
  // default (--handshake-limit, 10 s): a real client needs milliseconds.
  std::chrono::seconds handshake_timeout{10};
  // A connection in transmission with nothing in flight and no input for
  // this long is closed (0: never, the default: an idle VM's disk may see
  // no request for hours, and NBD has no keep-alive).
  std::chrono::seconds idle_timeout{0};
  // Replies waiting and no byte of them taken by the client for this long:
  // the connection is closed and its memory freed (0: never).
  std::chrono::seconds send_timeout{60};
  // Connections at once (0: no limit), and per client identity: the uid
  // over a Unix socket, the address over TCP.
  uint32_t max_connections = 16384;
  uint32_t max_connections_per_client = 4096;
  // Request and reply buffers across all sessions.
  uint64_t max_request_memory = 1ull << 30;
};

// What each limit did: read by anyone (status, metrics), written with
// relaxed atomics where the limit bites (never on the request path).
struct LimitCounters {
  std::atomic<uint64_t> handshake_timeouts{0};
  std::atomic<uint64_t> idle_timeouts{0};
  std::atomic<uint64_t> slow_readers_closed{0};
  std::atomic<uint64_t> refused_max_connections{0};
  std::atomic<uint64_t> refused_per_client{0};
  std::atomic<uint64_t> memory_waits{0};  // a session stopped reading for memory
  std::atomic<uint64_t> accept_pauses{0};  // EMFILE/ENFILE/ENOMEM on accept
};

class RequestMemory {
 public:
  static constexpr uint64_t kSmallHold = 4ull << 20;
  static constexpr std::chrono::milliseconds kRetryInterval{20};
  // Without input this long, a connection gives back its staging buffer.
  static constexpr std::chrono::seconds kStagingIdle{1};

  void set_cap(uint64_t cap) noexcept {
    cap_ = cap;
    reserve_ = cap / 8;
  }
  uint64_t cap() const noexcept { return cap_; }
  uint64_t used() const noexcept { return used_.load(std::memory_order_relaxed); }
  // The part of used() that is connections' staging buffers (see add_staging).
  uint64_t staging() const noexcept { return staging_.load(std::memory_order_relaxed); }
  uint64_t peak() const noexcept { return peak_.load(std::memory_order_relaxed); }

  // May a session holding `held` bytes take `delta` more?
  bool admits(uint64_t delta, uint64_t held) const noexcept {
    if (cap_ == 0) return true;
    const uint64_t now = used();
    const uint64_t limit = held + delta <= kSmallHold ? cap_ : cap_ - reserve_;
    return now <= limit && delta <= limit - now;
  }
  // Above the shared part: sessions give back the buffers they cache.
  bool tight() const noexcept { return cap_ != 0 && used() + reserve_ >= cap_; }

  void add(int64_t delta) noexcept {
    const uint64_t now = used_.fetch_add(static_cast<uint64_t>(delta), std::memory_order_relaxed) +
                         static_cast<uint64_t>(delta);
    if (delta > 0 && now > peak_.load(std::memory_order_relaxed)) peak_.store(now, std::memory_order_relaxed);
  }
  // A connection's input staging buffer: counted in used(), so requests
  // see what connections hold, but never refused (a connection without one
  // could not read the requests that free memory). They are bounded by
  // the connection cap, and an idle connection gives its buffer back.
  void add_staging(int64_t delta) noexcept {
    staging_.fetch_add(static_cast<uint64_t>(delta), std::memory_order_relaxed);
    add(delta);
  }

 private:
  uint64_t cap_ = 0;
  uint64_t reserve_ = 0;
  std::atomic<uint64_t> used_{0};
  std::atomic<uint64_t> peak_{0};
  std::atomic<uint64_t> staging_{0};
};

// Why a session's time ran out (Session::expired).
enum class Expiry : uint8_t { kNone, kHandshake, kIdle, kSlowReader };
const char* expiry_reason(Expiry why) noexcept;

// Everything a session needs of the limits: one pointer in SessionHost.
struct Limits {
  LimitsConfig config;
  RequestMemory memory;
  LimitCounters counters;
};

// The identity connection caps count: "uid 1000" or an address without
// its port.
std::string client_key(bool unix_socket, unsigned uid, const std::string& address);

}  // namespace ioband::nbd
