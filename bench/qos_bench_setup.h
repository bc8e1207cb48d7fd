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

// Issue 16's cost of the tokens a limit keeps (device_group.cc,
// kept_for_returns): `groups` 1-deep clients under one binding limit, the
// device's (all on device 0) or, with `tenant`, a tenant's shared over the
// four devices. Each request is in flight for kReturnsLatency; its client
// sends the next one kReturnsThink after it came back, within the tree's
// 10 ms linger, so the group stays "between two requests" meanwhile. The
// limit lets each client one request per 10 ms: about 80 % of the groups
// linger, 1 % are in flight, the rest queue for tokens. Weights are equal
// (the devices' in the tenant too), so the groups between two requests
// went after the asking one and are behind it in the order: none is owed a
// token, and a count of them finds that only by looking at every one.
// Time is the events' (completions, clients' returns, the limit's
// wake-ups), not a clock.
inline constexpr std::chrono::nanoseconds kReturnsLatency = std::chrono::microseconds(100);
inline constexpr std::chrono::nanoseconds kReturnsThink = std::chrono::microseconds(8000);

struct ReturnsSetup {
  DeviceGroup group;
  std::vector<Slot> requests;  // one per group: its client is 1 deep
  std::deque<std::pair<TimePoint, Request*>> in_flight;  // until it completes
  std::deque<std::pair<TimePoint, Request*>> thinking;   // until its client sends it again
  TimePoint now = TimePoint() + std::chrono::hours(1);
};

inline void prepare_returns(ReturnsSetup& s, int groups, bool tenant) {
  must(s.group.set_policy(Policy::fair));
  must(s.group.set_io_limit(1024));  // the window never binds: the limit does
  s.group.set_io_limit_auto(false);
  must(s.group.set_io_throttle(0));
  const DeviceId devices = tenant ? kDevices : 1;
  for (DeviceId d = 0; d < devices; ++d) must(s.group.add_device(d));
  Limits limit;
  limit.iops_total = {static_cast<std::uint64_t>(groups) * 100, 0, 1};  // a request per group every 10 ms
  if (tenant) {
    must(s.group.add_tenant(1, 100));
    for (DeviceId d = 0; d < devices; ++d) must(s.group.set_device_tenant(d, 1, 100));
    must(s.group.set_tenant_limits(1, limit));
  } else {
    must(s.group.set_limits(0, std::nullopt, limit));
  }
  s.requests.resize(static_cast<std::size_t>(groups));
  for (int i = 0; i < groups; ++i) {
    const DeviceId device = static_cast<DeviceId>(i % devices);
    must(s.group.attach(device, 1000 + i));  // equal weights
    Request& r = s.requests[static_cast<std::size_t>(i)].request;
    r.device = device;
    r.group = 1000 + i;
    r.bytes = 4096;
    r.direction = (i % 3 == 0) ? Direction::write : Direction::read;
    // The clients start spread over one think time.
    s.thinking.push_back({s.now + kReturnsThink * i / groups, &r});
  }
}

// Runs the events, as a reactor would (completions, then clients'
// requests, then next()), until next() dispatches one request; false if
// nothing is left to happen.
inline bool step_returns(ReturnsSetup& s, Decision& d) {
  for (;;) {
    while (!s.in_flight.empty() && s.in_flight.front().first <= s.now) {
      Request* done = s.in_flight.front().second;
      s.in_flight.pop_front();
      s.group.complete(done, s.now);
      s.thinking.push_back({s.now + kReturnsThink, done});
    }
    while (!s.thinking.empty() && s.thinking.front().first <= s.now) {
      s.group.enqueue(s.thinking.front().second, s.now);
      s.thinking.pop_front();
    }
    d = s.group.next(s.now);
    if (d.kind == Decision::Kind::dispatch) {
      s.in_flight.push_back({s.now + kReturnsLatency, d.request});
      return true;
    }
    TimePoint at = d.kind == Decision::Kind::wait ? d.until : TimePoint::max();
    if (!s.in_flight.empty()) at = std::min(at, s.in_flight.front().first);
    if (!s.thinking.empty()) at = std::min(at, s.thinking.front().first);
    if (at == TimePoint::max()) return false;
    s.now = std::max(s.now + std::chrono::nanoseconds(1), at);
  }
}

// prepare_returns with the limit bound from the start: the bucket's
// slack (100 ms of tokens) is spent at once by the default group of
// device 0, and the clients then run two rounds.
inline void prepare_returns_bound(ReturnsSetup& s, int groups, bool tenant) {
  prepare_returns(s, groups, tenant);
  Request burst;
  burst.device = 0;
  burst.group = 1;  // not attached: the default group
  burst.bytes = 4096;
  for (;;) {
    s.group.enqueue(&burst, s.now);
    Decision d = s.group.next(s.now);
    if (d.kind != Decision::Kind::dispatch) {
      s.group.cancel(&burst);
      break;
    }
    s.group.complete(&burst, s.now);
  }
  Decision d;
  for (int i = 0; i < 2 * groups; ++i) {
    if (!step_returns(s, d)) break;
  }
}

}  // namespace ioband::qos::bench
