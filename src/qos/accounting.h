// Accounting: what each group's statistics count -- dm-ioband's per-group
// counters and the delay histogram at dispatch, the observation
// (observation.h) at completion -- apart from ordering (order_policy.h)
// and admission (admission.h). The counters' two parts, narrow and wide,
// are described at GroupCounters (group.h).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <limits>

#include "qos/group.h"
#include "qos/observation.h"
#include "qos/stats.h"

namespace ioband::qos::detail {

// `from` would overflow when `n` more is added.
template <typename Narrow>
constexpr bool overflows(Narrow from, std::uint64_t n) noexcept {
  return n > std::uint64_t{std::numeric_limits<Narrow>::max()} - from;
}

inline void add(const NarrowCounters::Dispatch& from, GroupCounters& to) noexcept {
  to.read_requests += from.read_requests;
  to.delayed_nanos += from.delayed_nanos;
  for (std::size_t i = 0; i < 2; ++i) {
    to.sectors[i] += from.sectors[i];
    to.delayed_requests[i] += from.delayed_requests[i];
  }
  for (std::size_t b = 0; b < kDelayBuckets; ++b) to.delay_histogram[b] += from.delay_histogram[b];
}

inline void add(const NarrowCounters::Completion& from, GroupObservation& to) noexcept {
  for (std::size_t kind = 0; kind < kNarrowOps; ++kind) {
    const NarrowCounters::Completion::Op& op = from.ops[kind];
    OpObservation& into = to.ops[kind];
    into.bytes += op.bytes;
    into.duration_ns += op.duration_ns;
    for (std::size_t b = 0; b < kDurationBuckets; ++b) {
      into.requests += op.duration_histogram[b];
      into.duration_histogram[b] += op.duration_histogram[b];
    }
  }
  for (std::size_t r = 0; r < kHoldReasons; ++r) {
    to.held_requests[r] += from.held_requests[r];
    to.held_ns[r] += from.held_ns[r];
  }
}

// Adds the narrow counters of `group` to `wide` and clears them.
[[gnu::noinline]] inline void fold(Group& group, WideCounters& wide) noexcept {
  add(group.counters.dispatch, wide.dispatch);
  group.counters.dispatch = {};
  add(group.counters.completion, wide.completion);
  group.counters.completion = {};
}

// `request` of `group` is dispatched at `now`; it was queued at
// request.scheduler.time. It was delayed if it waited at all, or if next()
// answered "wait" since it arrived (`wait_epoch` moved). `wide(group)`
// gives the group's wide counters, made on first use.
template <typename WideOf>
inline void count_dispatch(Group& group, const Request& request, Nanos now, std::uint32_t wait_epoch,
                           WideOf&& wide) noexcept {
  const Nanos delay = std::max<Nanos>(now - request.scheduler.time, 0);
  const bool delayed = delay > 0 || request.scheduler.wait_epoch != wait_epoch;
  const auto direction = static_cast<std::size_t>(request.direction);
  const std::size_t bucket = delay_bucket(std::chrono::nanoseconds(delay));
  const std::uint64_t sectors = sectors_of(request.bytes);
  if (overflows(std::uint32_t{0}, static_cast<std::uint64_t>(delay))) {  // over 4.3 s: wide at once
    GroupCounters& to = wide(group).dispatch;
    to.read_requests += request.direction == Direction::read;
    to.sectors[direction] += sectors;
    to.delayed_requests[direction] += delayed;
    to.delayed_nanos += static_cast<std::uint64_t>(delay);
    ++to.delay_histogram[bucket];
    return;
  }
  NarrowCounters::Dispatch& d = group.counters.dispatch;
  static_assert(255 * sectors_of(UINT32_MAX) <= UINT32_MAX, "255 requests' sectors fit the narrow sum");
  if (overflows(d.requests, 1) || overflows(d.delayed_nanos, static_cast<std::uint64_t>(delay))) fold(group, wide(group));
  ++d.requests;
  d.read_requests += request.direction == Direction::read;
  d.sectors[direction] += static_cast<std::uint32_t>(sectors);
  d.delayed_requests[direction] += delayed;
  d.delayed_nanos += static_cast<std::uint32_t>(delay);
  ++d.delay_histogram[bucket];
}

// A completion the narrow counters do not take (count_completion), into
// the wide ones. Out of line: the rare path keeps its registers to itself.
[[gnu::noinline]] inline void count_completion_wide(GroupObservation& seen, const Request& request, Nanos duration,
                                                    Nanos queued, unsigned held, bool failed) noexcept {
  OpObservation& op = seen.ops[static_cast<std::size_t>(request.op_kind)];
  ++op.requests;
  op.bytes += request.bytes;
  op.errors += failed;
  op.duration_ns += static_cast<std::uint64_t>(duration);
  ++op.duration_histogram[duration_bucket(duration)];
  if (held != 0) {
    ++seen.held_requests[held - 1];
    seen.held_ns[held - 1] += static_cast<std::uint64_t>(queued);
  }
}

// `request` of `group` completed after `duration` (arrival to completion),
// of which it was queued `queued`; `held` is why it waited (HoldReason + 1,
// 0: it did not).
template <typename WideOf>
inline void count_completion(Group& group, const Request& request, Nanos duration, Nanos queued, unsigned held,
                             bool failed, WideOf&& wide) noexcept {
  const auto kind = static_cast<std::size_t>(request.op_kind);
  NarrowCounters::Completion& c = group.counters.completion;
  if (failed || kind >= kNarrowOps || overflows(std::uint32_t{0}, static_cast<std::uint64_t>(duration))) [[unlikely]] {
    count_completion_wide(wide(group).completion, request, duration, queued, held, failed);
    return;
  }
  // From here on the duration fits 32 bits, and so does the time queued,
  // part of it. The sums are formed 64 bits wide: one test of their high
  // halves (and of the count) says whether a fold must make room first.
  NarrowCounters::Completion::Op& op = c.ops[kind];
  const std::size_t reason = held != 0 ? held - 1 : 0;
  const std::uint64_t bytes = std::uint64_t{op.bytes} + request.bytes;
  const std::uint64_t time = std::uint64_t{op.duration_ns} + static_cast<std::uint64_t>(duration);
  const std::uint64_t held_time = std::uint64_t{c.held_ns[reason]} + (held != 0 ? static_cast<std::uint64_t>(queued) : 0);
  if (((bytes | time | held_time) >> 32) != 0 || c.completions == UINT8_MAX) [[unlikely]] {
    fold(group, wide(group));  // all zero now: the second time fits
    count_completion(group, request, duration, queued, held, failed, wide);
    return;
  }
  ++c.completions;
  op.bytes = static_cast<std::uint32_t>(bytes);
  op.duration_ns = static_cast<std::uint32_t>(time);
  ++op.duration_histogram[duration_bucket(duration)];
  if (held != 0) {
    ++c.held_requests[reason];
    c.held_ns[reason] = static_cast<std::uint32_t>(held_time);
  }
}

// dm-ioband's `reset`: the dispatch counters, narrow and wide (the
// observation only ever grows).
inline void reset_dispatch_counters(Group& group, WideCounters* wide) noexcept {
  group.counters.dispatch = {};
  if (wide != nullptr) wide->dispatch = {};
}

inline GroupStats stats_of(const Group& group, const WideCounters* wide) noexcept {
  GroupCounters all = wide != nullptr ? wide->dispatch : GroupCounters{};
  add(group.counters.dispatch, all);
  std::uint64_t requests = 0;
  for (std::uint64_t n : all.delay_histogram) requests += n;
  constexpr auto read = static_cast<std::size_t>(Direction::read);
  constexpr auto write = static_cast<std::size_t>(Direction::write);
  GroupStats stats;
  stats.read_requests = all.read_requests;
  stats.delayed_read_requests = all.delayed_requests[read];
  stats.read_sectors = all.sectors[read];
  stats.write_requests = requests - all.read_requests;
  stats.delayed_write_requests = all.delayed_requests[write];
  stats.write_sectors = all.sectors[write];
  stats.delayed_time = std::chrono::nanoseconds(all.delayed_nanos);
  stats.queue_length = group.queue_length;
  stats.in_flight = group.in_flight;
  stats.delay_histogram = all.delay_histogram;
  return stats;
}

inline GroupObservation observation_of(const Group& group, const WideCounters* wide) noexcept {
  GroupObservation seen = wide != nullptr ? wide->completion : GroupObservation{};
  add(group.counters.completion, seen);
  return seen;
}

}  // namespace ioband::qos::detail
