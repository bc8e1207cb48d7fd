// The steady state qos_bench (Google Benchmark, timed) and qos_drive (a
// fixed number of requests, for cachegrind's deterministic counts) both
// measure: every group keeps requests queued (it is "active": in the ready
// heaps), a window of 64 requests is in flight, and each step completes the
// oldest in-flight request, enqueues it again on its group (a closed-loop
// client) and dispatches the next request the policy picks.
//
// The tree case: the four devices in two tenants (weights 300 and 100;
// devices 200:100 and 100:300), so every dispatch takes its group's
// effective weight from the tree; with `limits` a shared limit on each
// tenant (never reached). Without the tree, `limits` puts one on each group.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <vector>

#include "qos/device_group.h"

namespace ioband::qos::bench {

inline constexpr std::uint32_t kInFlight = 64;
inline constexpr DeviceId kDevices = 4;

// The NBD layer embeds a Request in its own per-request struct; here each
// gets a cache line of its own.
struct alignas(64) Slot {
  Request request;
};

struct Setup {
  DeviceGroup group;
  std::vector<Slot> requests;
  std::deque<Request*> in_flight;
  TimePoint now = TimePoint() + std::chrono::hours(1);
};

// A setting the benchmark needs was refused: its figures would mean nothing.
inline void must(const Status& status) {
  if (status) return;
  std::fprintf(stderr, "qos bench setup: %s\n", status.message().c_str());
  std::abort();
}

inline void prepare(Setup& s, Policy policy, int groups, bool limits, bool tree = false) {
  must(s.group.set_policy(policy));
  must(s.group.set_io_limit(kInFlight));
  // A fixed window: one completion frees exactly one dispatch, so every
  // step measures the same work (the learned window would move it).
  s.group.set_io_limit_auto(false);
  must(s.group.set_io_throttle(0));  // every request goes through the policy
  if (policy == Policy::weight && groups > 1000) must(s.group.set_token(4'000'000));
  for (DeviceId d = 0; d < kDevices; ++d) must(s.group.add_device(d));
  Limits limit;
  limit.iops_total = {10'000'000, 0, 1};  // never reached: measures the bucket arithmetic
  limit.bps_total = {std::uint64_t{1} << 39, 0, 1};
  if (tree) {
    static_assert(kDevices == 4);
    must(s.group.add_tenant(1, 300));
    must(s.group.add_tenant(2, 100));
    const std::uint32_t device_weights[kDevices] = {200, 100, 100, 300};
    for (DeviceId d = 0; d < kDevices; ++d) must(s.group.set_device_tenant(d, d < 2 ? 1 : 2, device_weights[d]));
    if (limits) {
      must(s.group.set_tenant_limits(1, limit));
      must(s.group.set_tenant_limits(2, limit));
    }
  }
  for (int i = 0; i < groups; ++i) {
    DeviceId device = static_cast<DeviceId>(i % kDevices);
    must(s.group.attach(device, 1000 + i));
    must(s.group.set_weight(device, 1000 + i, 50 + static_cast<std::uint32_t>(i % 4) * 50));
    if (policy == Policy::range_bw && i % 10 == 0) must(s.group.set_range_bw(device, 1000 + i, 1024, 0));
    if (limits && !tree) must(s.group.set_limits(device, 1000 + i, limit));
  }
  // Enough requests that every group stays active with the window in flight.
  int per_group = std::max(4, static_cast<int>(2 * kInFlight) / groups);
  s.requests.resize(static_cast<std::size_t>(groups * per_group));
  for (std::size_t i = 0; i < s.requests.size(); ++i) {
    Request& r = s.requests[i].request;
    int g = static_cast<int>(i) % groups;
    r.device = static_cast<DeviceId>(g % kDevices);
    r.group = 1000 + g;
    r.bytes = (i % 8 == 0) ? 65536 : 4096;
    r.direction = (i % 3 == 0) ? Direction::write : Direction::read;
    s.group.enqueue(&r, s.now);
  }
  for (;;) {
    Decision d = s.group.next(s.now);
    if (d.kind != Decision::Kind::dispatch) break;
    s.in_flight.push_back(d.request);
  }
}

// One closed-loop step; false when next() dispatched nothing.
inline bool step(Setup& s, Decision& d) {
  s.now += std::chrono::microseconds(1);
  Request* done = s.in_flight.front();
  s.in_flight.pop_front();
  s.group.complete(done, s.now);
  s.group.enqueue(done, s.now);
  d = s.group.next(s.now);
  if (d.kind != Decision::Kind::dispatch) return false;
  s.in_flight.push_back(d.request);
  return true;
}

}  // namespace ioband::qos::bench
