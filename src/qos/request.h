// The request descriptor the scheduler queues: intrusive and caller-owned.
//
// The NBD layer embeds a `Request` in its own per-request struct, fills the
// four caller fields, and hands a pointer to `DeviceGroup::enqueue`. The
// scheduler links it into its queues through the private fields below and
// never allocates or frees it. The pointer must stay valid from `enqueue`
// until `complete` (or a successful `cancel`).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>

#include "qos/device_model.h"

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
  OpKind op_kind = OpKind::read;         // what the device is asked to do (its cost: device_model.h)
  bool sequential = false;               // continues a stream of the same client (cheaper on most storage)
  std::uint32_t bytes = 0;               // payload size; 0 is allowed (e.g. FLUSH)

  // ---- Scheduler-private: do not touch. ----
  // Kept from one use of the Request to the next (the NBD session reuses its
  // Request objects, all for one group): the group it was resolved to, so
  // enqueue skips the group-id lookup while the device group's groups stay
  // as they were. A default-constructed state is always valid.
  struct SchedulerState {
    // What enqueue reads and what next and complete touch first: with the
    // caller's fields above, the first 64 bytes of the Request.
    Request* next = nullptr;          // intrusive FIFO of the group, towards the tail
    detail::Group* group = nullptr;   // group that queues / dispatched it; then the resolved group
    std::int64_t time = 0;            // ns of TimePoint: arrival while queued, dispatch while in flight
    // `group` is the group of (device, resolved_group) while the device
    // group's mapping stamp (48 bits) and the device (16 bits: device ids
    // are below 2^16) give resolved_key = stamp << 16 | device.
    std::uint64_t resolved_key = 0;
    GroupId resolved_group = 0;
    // Written by enqueue, read by next (wait_epoch) and cancel (state).
    Request* prev = nullptr;          // towards the head (not kept for the head itself)
    std::uint32_t wait_epoch = 0;     // "delayed" detection (see DeviceGroup::next)
    std::uint8_t state = 0;           // idle / queued / in flight
    // In flight, a request of the anticipated group (anticipation.h): the
    // other requests in flight when it was dispatched (saturating).
    std::uint8_t company = 0;
    // In flight, for observation.h: why it waited (HoldReason + 1; 0: it
    // did not wait).
    std::uint8_t held = 0;
    // In flight, for observation.h: how long it was queued (units of
    // 16 ns, saturating at about 68 s).
    std::uint32_t queued_16ns = 0;
  } scheduler;
};

// The scheduler's own state per queued request, counted against the
// 64-byte budget (ioband keeps no per-request allocation).
static_assert(sizeof(Request::SchedulerState) <= 64);
// A Request that starts a cache line has all enqueue reads in that line.
static_assert(offsetof(Request, scheduler) + offsetof(Request::SchedulerState, prev) <= 64);

}  // namespace ioband::qos
