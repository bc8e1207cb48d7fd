// Limits (QEMU's throttling keys, Xen blkback's tokens) on top of the policy:
// 2000 IOPS with a 4000-IOPS burst for 5 s, 20 MiB/s, read/write and device
// limits. A limit met means: over any window of T seconds at most
// rate * T + burst, the long-run rate within 1 %, and a client that stays
// under the limit never waits for it.
#include <gtest/gtest.h>

#include "sim/simulator.h"

namespace ioband::sim {
namespace {

using qos::Limits;

constexpr Nanos kDuration = 30 * kSecond;

Limits iops_with_burst() {
  Limits limits;
  limits.iops_total = {2000, 4000, 5};
  limits.bps_total = {20 * MiB, 0, 1};
  return limits;
}

Limits bps_only() {
  Limits limits;
  limits.bps_total = {20 * MiB, 0, 1};
  return limits;
}

Limits iops_1000() {
  Limits limits;
  limits.iops_total = {1000, 0, 1};
  return limits;
}

Scenario limits_scenario(qos::Policy policy) {
  Scenario s;
  s.name = "limits";
  s.policy = policy;
  // Fast storage (256 in parallel, 1 ms): the limits, not the storage, bind.
  s.storage = storage(256, kMilli, 200 * kMicro);
  s.io_limit = 256;
  s.io_limit_auto = false;  // a fixed window, as written (io_limit auto is the default now)
  s.devices = {0, 1};
  GroupSpec burst = group(0, 1, 100);
  burst.limits = iops_with_burst();
  GroupSpec bytes = group(0, 2, 100);
  bytes.limits = bps_only();
  GroupSpec under = group(0, 3, 100);
  under.limits = iops_1000();
  // Device 1: a device-wide limit of 1600 IOPS shared by groups by weight,
  // one of which has separate read and write limits.
  GroupSpec heavy = group(1, 1, 200);
  GroupSpec light = group(1, 2, 100);
  GroupSpec split = group(1, 3, 100);
  Limits rw;
  rw.iops_read = {300, 0, 1};
  rw.iops_write = {150, 0, 1};
  split.limits = rw;
  s.groups = {burst, bytes, under, heavy, light, split};
  s.clients = {
      closed_loop("burst", 0, 1, 32, {4 * KiB}),
      closed_loop("bytes", 0, 2, 32, {64 * KiB}),
      open_loop("under", 0, 3, 950, {4 * KiB}),  // periodic, below its 1000 IOPS
      closed_loop("heavy", 1, 1, 32),
      closed_loop("light", 1, 2, 32),
      closed_loop("split", 1, 3, 32),
  };
  s.clients.back().read_fraction = 0.5;
  Limits device_limit;
  device_limit.iops_total = {1600, 0, 1};
  s.actions.push_back({0, [device_limit](qos::DeviceGroup& g) { ASSERT_TRUE(g.set_limits(1, std::nullopt, device_limit)); }});
  s.duration = kDuration;
  return s;
}

double rate(const ClientResult& client, Nanos t0, Nanos t1) {
  auto count = std::lower_bound(client.dispatched.begin(), client.dispatched.end(), t1) -
               std::lower_bound(client.dispatched.begin(), client.dispatched.end(), t0);
  return static_cast<double>(count) * kSecond / static_cast<double>(t1 - t0);
}

const std::vector<Nanos> kWindows = {10 * kMilli, 100 * kMilli, kSecond, 2 * kSecond, 5 * kSecond,
                                     10 * kSecond, kDuration};

void check(qos::Policy policy) {
  Result result = simulate(limits_scenario(policy));
  const char* name = qos::to_string(policy).data();

  // 2000 IOPS + a 4000 IOPS burst for 5 s (a 10000-request bucket: (4000 - 2000) * 5).
  const ClientResult& burst = result.client("burst");
  double expected = 2000.0 * 30 + 10000;
  printf("%s: burst group: %zu requests in 30 s (expected %.0f, %+.3f %%), %.0f IOPS in [1,4.5 s), %.0f in [6,30 s)\n",
         name, burst.dispatched.size(), expected, 100 * (burst.dispatched.size() / expected - 1),
         rate(burst, kSecond, 4500 * kMilli), rate(burst, 6 * kSecond, kDuration));
  EXPECT_NEAR(static_cast<double>(burst.dispatched.size()), expected, expected * 0.01);
  // The burst bucket (4000/s with 400 of slack) lets 400 go at once, so the
  // 10000-request bucket fills after (10000 - 400) / (4000 - 2000) = 4.8 s.
  EXPECT_NEAR(rate(burst, kSecond, 4500 * kMilli), 4000, 40);
  EXPECT_NEAR(rate(burst, 6 * kSecond, kDuration), 2000, 20);
  for (Nanos window : kWindows) {
    double t = static_cast<double>(window) / kSecond;
    std::uint64_t most = burst.max_dispatched_in(window);
    EXPECT_LE(most, 2000 * t + 10000 + 1) << "window " << t << " s";
    EXPECT_LE(most, 4000 * t + 400 + 1) << "window " << t << " s (burst rate)";
  }

  // 20 MiB/s with 64 KiB requests: 320 requests a second, 2 MiB (32 requests) of slack.
  const ClientResult& bytes = result.client("bytes");
  double mib = static_cast<double>(bytes.dispatched.size()) * 64 * KiB / MiB;
  printf("%s: bytes group: %.1f MiB/s over 30 s, %.2f MiB/s in [1,30 s)\n", name, mib / 30,
         rate(bytes, kSecond, kDuration) * 64 / 1024);
  EXPECT_NEAR(rate(bytes, kSecond, kDuration) * 64 * KiB, 20.0 * MiB, 0.2 * MiB);
  for (Nanos window : kWindows) {
    double t = static_cast<double>(window) / kSecond;
    EXPECT_LE(bytes.max_dispatched_in(window) * 64.0 * KiB, 20.0 * MiB * t + 2.0 * MiB + 64 * KiB)
        << "window " << t << " s";
  }

  // Under the limit: never delayed.
  const ClientResult& under = result.client("under");
  printf("%s: under-limit group: %zu requests, %llu delayed, max delay %lld ns\n", name, under.dispatched.size(),
         static_cast<unsigned long long>(under.delayed), static_cast<long long>(under.max_delay));
  EXPECT_EQ(under.delayed, 0u);
  EXPECT_NEAR(static_cast<double>(under.dispatched.size()), 950.0 * 30, 2);

  // Device-wide 1600 IOPS on device 1, split 200:100:100 by weight among
  // groups, but group 3 is held to 300 reads + 150 writes a second (300 in
  // all at its 50/50 mix, under its 400 share): the others share the rest 2:1.
  const ClientResult& heavy = result.client("heavy");
  const ClientResult& light = result.client("light");
  const ClientResult& split = result.client("split");
  double device_rate = rate(heavy, kSecond, kDuration) + rate(light, kSecond, kDuration) + rate(split, kSecond, kDuration);
  printf("%s: device limit: %.0f IOPS total (heavy %.0f, light %.0f, read/write-limited %.0f)\n", name, device_rate,
         rate(heavy, kSecond, kDuration), rate(light, kSecond, kDuration), rate(split, kSecond, kDuration));
  EXPECT_NEAR(device_rate, 1600, 16);
  EXPECT_NEAR(rate(split, kSecond, kDuration), 300, 6);
  EXPECT_NEAR(rate(heavy, kSecond, kDuration) / rate(light, kSecond, kDuration), 2.0, 0.05);
}

TEST(Limits, Fair) { check(qos::Policy::fair); }
TEST(Limits, Weight) { check(qos::Policy::weight); }
TEST(Limits, RangeBw) { check(qos::Policy::range_bw); }

}  // namespace
}  // namespace ioband::sim
