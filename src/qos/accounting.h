// Accounting: what each group's statistics count (dm-ioband's per-group
// counters plus the delay histogram), apart from ordering (order_policy.h)
// and admission (admission.h).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>

#include "qos/group.h"
#include "qos/stats.h"

namespace ioband::qos::detail {

// `request` of `group` is dispatched at `now`; it was queued at
// request.scheduler.time. It was delayed if it waited at all, or if next()
// answered "wait" since it arrived (`wait_epoch` moved).
inline void count_dispatch(Group& group, const Request& request, Nanos now, std::uint32_t wait_epoch) noexcept {
  const Nanos delay = std::max<Nanos>(now - request.scheduler.time, 0);
  const bool delayed = delay > 0 || request.scheduler.wait_epoch != wait_epoch;
  GroupCounters& counters = group.counters;
  const auto direction = static_cast<std::size_t>(request.direction);
  counters.read_requests += request.direction == Direction::read;
  counters.sectors[direction] += sectors_of(request.bytes);
  counters.delayed_requests[direction] += delayed;
  counters.delayed_nanos += static_cast<std::uint64_t>(delay);
  ++counters.delay_histogram[delay_bucket(std::chrono::nanoseconds(delay))];
}

inline GroupStats stats_of(const Group& group) noexcept {
  const GroupCounters& counters = group.counters;
  constexpr auto read = static_cast<std::size_t>(Direction::read);
  constexpr auto write = static_cast<std::size_t>(Direction::write);
  GroupStats stats;
  stats.read_requests = counters.read_requests;
  stats.delayed_read_requests = counters.delayed_requests[read];
  stats.read_sectors = counters.sectors[read];
  stats.write_requests = counters.write_requests();
  stats.delayed_write_requests = counters.delayed_requests[write];
  stats.write_sectors = counters.sectors[write];
  stats.delayed_time = std::chrono::nanoseconds(counters.delayed_nanos);
  stats.queue_length = group.queue_length;
  stats.in_flight = group.in_flight;
  stats.delay_histogram = counters.delay_histogram;
  return stats;
}

}  // namespace ioband::qos::detail
