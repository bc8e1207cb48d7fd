// The request descriptor the scheduler queues: intrusive and caller-owned.
//
// The NBD layer embeds a `Request` in its own per-request struct, fills the
// four caller fields, and hands a pointer to `DeviceGroup::enqueue`. The
// scheduler links it into its queues through the private fields below and
// never allocates or frees it. The pointer must stay valid from `enqueue`
// until `complete` (or a successful `cancel`).
#pragma once

#include <chrono>
#include <cstdint>

namespace ioband::qos {

using Clock = std::chrono::steady_clock;
using TimePoint = Clock::time_point;
using Duration = Clock::duration;

// Index of an ioband device within its device group.
using DeviceId = std::uint32_t;
// Group id within an ioband device (a uid, gid, pid, ...); -1 is the default group.
using GroupId = std::int64_t;
inline constexpr GroupId kDefaultGroup = -1;

enum class Direction : std::uint8_t { read, write };

namespace detail {
struct Group;
}

struct Request {
  // ---- Set by the caller before enqueue; not changed by the scheduler. ----
  DeviceId device = 0;                   // must be a device of the device group
  GroupId group = kDefaultGroup;         // not attached on `device` -> its default group
  Direction direction = Direction::read; // FLUSH/TRIM/WRITE_ZEROES: the caller maps them
  std::uint32_t bytes = 0;               // payload size; 0 is allowed (e.g. FLUSH)

  // ---- Scheduler-private: do not touch between enqueue and complete. ----
  struct SchedulerState {
    Request* next = nullptr;          // intrusive FIFO of the group
    Request* prev = nullptr;
    detail::Group* group = nullptr;   // group that queues / dispatched it
    TimePoint arrival{};              // enqueue time (queueing delay statistics)
    std::int64_t dispatched = 0;      // dispatch time, ns of TimePoint (io_limit auto)
    std::uint32_t wait_epoch = 0;     // "delayed" detection (see DeviceGroup::next)
    std::uint8_t state = 0;           // idle / queued / in flight
  } scheduler;
};

// The scheduler's own state per queued request, counted against the
// 64-byte budget (ioband keeps no per-request allocation).
static_assert(sizeof(Request::SchedulerState) <= 64);

}  // namespace ioband::qos
