// DeviceGroup::observation: completed requests per operation, bytes, errors,
// the duration histogram, and the time held back by reason, with a fake clock.
#include <gtest/gtest.h>

#include <deque>

#include "qos/device_group.h"

namespace ioband::qos {
namespace {

using std::chrono::microseconds;
using std::chrono::milliseconds;

const TimePoint kStart = TimePoint() + std::chrono::hours(1);

struct Pool {
  std::deque<Request> requests;
  Request* make(GroupId group, OpKind op = OpKind::read, std::uint32_t bytes = 4096) {
    requests.emplace_back();
    Request& r = requests.back();
    r.group = group;
    r.op_kind = op;
    r.direction = op == OpKind::read ? Direction::read : Direction::write;
    r.bytes = bytes;
    return &r;
  }
};

// The histogram's bucket of a duration is the first bound it does not
// exceed, for durations on both sides of every bound and across the range.
TEST(DurationBucket, EveryDurationLandsInTheBucketOfItsBounds) {
  std::int64_t ns = 1;
  while (ns < INT64_MAX / 8) {  // ns * 5 below stays in range
    for (std::int64_t d : {ns - 1, ns, ns + 1, ns * 3 / 2}) EXPECT_EQ(duration_bucket(d), duration_bucket_by_scan(d)) << d;
    ns = ns * 5 / 4 + 1;
  }
  for (std::int64_t bound : kDurationBoundsNs) {
    EXPECT_EQ(duration_bucket(bound) + 1, duration_bucket(bound + 1)) << bound;
  }
  EXPECT_EQ(duration_bucket(-1), 0u);
  EXPECT_EQ(duration_bucket(INT64_MAX), kDurationBuckets - 1);
}

Request* next_dispatch(DeviceGroup& g, TimePoint now) {
  Decision d = g.next(now);
  return d.kind == Decision::Kind::dispatch ? d.request : nullptr;
}

TEST(Observation, CountsCompletionsPerOperationWithDurationsAndErrors) {
  DeviceGroup g;
  ASSERT_TRUE(g.add_device(0));
  ASSERT_TRUE(g.attach(0, 7));
  Pool pool;
  Request* read = pool.make(7, OpKind::read, 8192);
  Request* write = pool.make(7, OpKind::write, 4096);
  g.enqueue(read, kStart);
  g.enqueue(write, kStart);
  ASSERT_EQ(next_dispatch(g, kStart), read);
  ASSERT_EQ(next_dispatch(g, kStart), write);
  g.complete(read, kStart + microseconds(300));
  g.complete(write, kStart + milliseconds(3), /*failed=*/true);

  const GroupObservation o = g.observation(0, 7).value();
  const OpObservation& r = o.ops[static_cast<std::size_t>(OpKind::read)];
  const OpObservation& w = o.ops[static_cast<std::size_t>(OpKind::write)];
  EXPECT_EQ(r.requests, 1u);
  EXPECT_EQ(r.bytes, 8192u);
  EXPECT_EQ(r.errors, 0u);
  EXPECT_EQ(r.duration_ns, 300'000u);
  EXPECT_EQ(r.duration_histogram[duration_bucket(300'000)], 1u);
  EXPECT_EQ(w.requests, 1u);
  EXPECT_EQ(w.errors, 1u);
  EXPECT_EQ(w.duration_histogram[duration_bucket(3'000'000)], 1u);
  // Nothing waited: nothing held back; the default group saw nothing.
  EXPECT_EQ(o.held_requests, (std::array<std::uint64_t, kHoldReasons>{}));
  EXPECT_EQ(g.observation(0, kDefaultGroup).value(), GroupObservation{});
  EXPECT_FALSE(g.observation(0, 8).has_value());
}

TEST(Observation, DurationIncludesTheTimeQueuedAndTheReasonIsTheWindow) {
  DeviceGroup g;
  g.set_io_limit_auto(false);
  ASSERT_TRUE(g.set_io_throttle(0));
  ASSERT_TRUE(g.set_io_limit(1));
  ASSERT_TRUE(g.add_device(0));
  Pool pool;
  Request* first = pool.make(kDefaultGroup);
  Request* second = pool.make(kDefaultGroup);
  g.enqueue(first, kStart);
  g.enqueue(second, kStart);
  ASSERT_EQ(next_dispatch(g, kStart), first);
  EXPECT_EQ(next_dispatch(g, kStart), nullptr);  // the window of one is full
  g.complete(first, kStart + milliseconds(2));
  ASSERT_EQ(next_dispatch(g, kStart + milliseconds(2)), second);
  g.complete(second, kStart + milliseconds(3));

  const GroupObservation o = g.observation(0, kDefaultGroup).value();
  const OpObservation& r = o.ops[static_cast<std::size_t>(OpKind::read)];
  EXPECT_EQ(r.requests, 2u);
  EXPECT_EQ(r.duration_ns, 2'000'000u + 3'000'000u);  // the second: 2 ms queued + 1 ms served
  EXPECT_EQ(o.held_requests[static_cast<std::size_t>(HoldReason::window)], 1u);
  EXPECT_EQ(o.held_ns[static_cast<std::size_t>(HoldReason::window)], 2'000'000u);
  EXPECT_EQ(o.held_requests[static_cast<std::size_t>(HoldReason::limit)], 0u);
}

// 300 requests of group 1 of device 0 queued at once (more than a limit's
// burst allows), each served and completed as soon as it is dispatched,
// over at most 4 s in steps of 1 ms. Returns how many were dispatched.
int serve_300(DeviceGroup& g) {
  Pool pool;
  for (int i = 0; i < 300; ++i) g.enqueue(pool.make(1), kStart);
  int dispatched = 0;
  for (int ms = 0; ms <= 4000 && dispatched < 300; ++ms) {
    const TimePoint now = kStart + milliseconds(ms);
    while (Request* r = next_dispatch(g, now)) {
      ++dispatched;
      g.complete(r, now);
    }
  }
  return dispatched;
}

TEST(Observation, ALimitIsTheReasonWhenItPacedTheGroup) {
  DeviceGroup g;
  ASSERT_TRUE(g.add_device(0));
  ASSERT_TRUE(g.attach(0, 1));
  Limits limits;
  limits.iops_total.rate = 100;  // one request every 10 ms
  ASSERT_TRUE(g.set_limits(0, 1, limits));
  ASSERT_EQ(serve_300(g), 300);
  const GroupObservation o = g.observation(0, 1).value();
  const std::uint64_t limited = o.held_requests[static_cast<std::size_t>(HoldReason::limit)];
  EXPECT_GE(limited, 1u);
  EXPECT_EQ(limited + o.held_requests[static_cast<std::size_t>(HoldReason::weight)] +
                o.held_requests[static_cast<std::size_t>(HoldReason::window)],
            o.held_requests[static_cast<std::size_t>(HoldReason::limit)]);
  EXPECT_GT(o.held_ns[static_cast<std::size_t>(HoldReason::limit)], 0u);
}

// A tenant's limit (tree.h) paces its devices' groups as a device's does:
// the time they wait for it is the limit's, not the weights'.
TEST(Observation, ATenantsLimitIsTheReasonWhenItPacedTheGroup) {
  DeviceGroup g;
  ASSERT_TRUE(g.add_device(0));
  ASSERT_TRUE(g.attach(0, 1));
  ASSERT_TRUE(g.add_tenant(5, 100));
  ASSERT_TRUE(g.set_device_tenant(0, 5));
  Limits limits;
  limits.iops_total.rate = 100;  // one request every 10 ms
  ASSERT_TRUE(g.set_tenant_limits(5, limits));
  ASSERT_EQ(serve_300(g), 300);
  const GroupObservation o = g.observation(0, 1).value();
  EXPECT_GE(o.held_requests[static_cast<std::size_t>(HoldReason::limit)], 200u);
  EXPECT_EQ(o.held_requests[static_cast<std::size_t>(HoldReason::weight)], 0u);  // it was alone
}

TEST(Observation, ResetStatsLeavesTheCountersAndADetachedGroupStartsAfresh) {
  DeviceGroup g;
  ASSERT_TRUE(g.add_device(0));
  ASSERT_TRUE(g.attach(0, 3));
  Pool pool;
  Request* r = pool.make(3);
  g.enqueue(r, kStart);
  ASSERT_EQ(next_dispatch(g, kStart), r);
  g.complete(r, kStart + microseconds(10));
  ASSERT_TRUE(g.reset_stats(0));
  EXPECT_EQ(g.observation(0, 3)->ops[0].requests, 1u);
  ASSERT_TRUE(g.detach(0, 3));
  ASSERT_TRUE(g.attach(0, 3));
  EXPECT_EQ(g.observation(0, 3).value(), GroupObservation{});
  // The request, used again, counts in the new group.
  g.enqueue(r, kStart + milliseconds(1));
  ASSERT_EQ(next_dispatch(g, kStart + milliseconds(1)), r);
  g.complete(r, kStart + milliseconds(2));
  EXPECT_EQ(g.observation(0, 3)->ops[0].requests, 1u);
}

// The counters a request adds to are narrow (group.h) and folded into wide
// ones long before they would overflow: a user reading them after 100,000
// requests -- waits of up to 6 s, 32 MiB writes, failures, flushes -- sees
// the exact sums, for dm-ioband's counters and the observation alike, and a
// `reset` between folds clears the former only.
TEST(Observation, CountsStayExactOverManyFoldsOfTheNarrowCounters) {
  DeviceGroup g;
  ASSERT_TRUE(g.add_device(0));
  ASSERT_TRUE(g.attach(0, 5));
  Pool pool;
  Request* r = pool.make(5);
  GroupStats want_stats;
  GroupObservation want;
  std::array<std::uint64_t, kDelayBuckets> delays{};
  TimePoint now = kStart;
  for (std::uint64_t i = 0; i < 100'000; ++i) {
    const OpKind op = i % 97 == 0 ? OpKind::flush : (i % 3 == 0 ? OpKind::write : OpKind::read);
    r->op_kind = op;
    r->direction = op == OpKind::read ? Direction::read : Direction::write;
    r->bytes = op == OpKind::flush ? 0 : (i % 1000 == 0 ? 32u << 20 : 4096u * static_cast<std::uint32_t>(1 + i % 5));
    // Queued: mostly nothing, sometimes milliseconds, rarely seconds.
    const std::int64_t queued_ns = i % 5000 == 1 ? 6'000'000'000 : (i % 7 == 0 ? 1'000'000 * static_cast<std::int64_t>(i % 50) : 0);
    const std::int64_t service_ns = 20'000 + static_cast<std::int64_t>(i % 13) * 40'000;
    const bool failed = i % 1009 == 0;
    g.enqueue(r, now);
    now += std::chrono::nanoseconds(queued_ns);
    ASSERT_EQ(next_dispatch(g, now), r);
    now += std::chrono::nanoseconds(service_ns);
    g.complete(r, now, failed);

    const bool read = op == OpKind::read;
    (read ? want_stats.read_requests : want_stats.write_requests) += 1;
    (read ? want_stats.read_sectors : want_stats.write_sectors) += (r->bytes + 511) / 512;
    if (queued_ns > 0) (read ? want_stats.delayed_read_requests : want_stats.delayed_write_requests) += 1;
    want_stats.delayed_time += std::chrono::nanoseconds(queued_ns);
    ++delays[delay_bucket(std::chrono::nanoseconds(queued_ns))];
    OpObservation& o = want.ops[static_cast<std::size_t>(op)];
    ++o.requests;
    o.bytes += r->bytes;
    o.errors += failed;
    o.duration_ns += static_cast<std::uint64_t>(queued_ns + service_ns);
    ++o.duration_histogram[duration_bucket(queued_ns + service_ns)];
    if (queued_ns > 0) {
      // Dispatched after it arrived, with no limit and the window open.
      ++want.held_requests[static_cast<std::size_t>(HoldReason::weight)];
      want.held_ns[static_cast<std::size_t>(HoldReason::weight)] += static_cast<std::uint64_t>(queued_ns);
    }
  }
  want_stats.delay_histogram = delays;
  EXPECT_EQ(g.stats(0, 5).value(), want_stats);
  EXPECT_EQ(g.observation(0, 5).value(), want);

  ASSERT_TRUE(g.reset_stats(0));
  EXPECT_EQ(g.stats(0, 5).value(), GroupStats{});
  EXPECT_EQ(g.observation(0, 5).value(), want);
  g.enqueue(r, now);
  ASSERT_EQ(next_dispatch(g, now), r);
  g.complete(r, now + microseconds(50));
  EXPECT_EQ(g.stats(0, 5)->write_requests + g.stats(0, 5)->read_requests, 1u);
}

}  // namespace
}  // namespace ioband::qos
