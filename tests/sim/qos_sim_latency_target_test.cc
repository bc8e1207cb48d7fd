// Latency targets (latency_target.h) in virtual time, the target of issue
// 16: a 4 KiB random reader 1 to 4 deep, with a p99 target of twice its p99
// alone, against two 64 KiB random writers 64 deep. Its p99 meets the target
// in at least 95 % of 1 s windows, from the first second on (converging
// within 1 s), and the writers keep at least 80 % of the storage's time the
// reader leaves. Without the target the same reader misses it (the test
// shows the target is what holds it).
//
// The same target sits on the reader's group, on its whole ioband device
// (the writers on another device of the same storage), or on its tenant
// (two devices; the writers on a device outside it): the percentile is then
// over all the node's requests, and the groups outside the node are capped.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "sim/simulator.h"

namespace ioband::sim {
namespace {

constexpr GroupId kReader = 1, kWriterA = 2, kWriterB = 3;
constexpr Nanos kThinkTime = 50 * kMicro;  // an NBD client's own time per request
constexpr qos::TenantId kTenant = 7;

// Where the target sits, and where the writers are.
enum class Level { group, device, tenant };
const char* to_string(Level level) {
  return level == Level::group ? "group" : level == Level::device ? "device" : "tenant";
}
// group: all on device 0; device: the writers on device 1; tenant: the
// reader's device 0 and an idle device 1 in the tenant, the writers on
// device 2 outside it.
DeviceId writers_device(Level level) {
  return level == Level::group ? 0 : level == Level::device ? 1 : 2;
}

qos::Status set_target(qos::DeviceGroup& g, Level level, const qos::Limits& limits) {
  switch (level) {
    case Level::group: return g.set_limits(0, kReader, limits);
    case Level::device: return g.set_limits(0, std::nullopt, limits);
    case Level::tenant: return g.set_tenant_limits(kTenant, limits);
  }
  return qos::Status::error("no level");
}

std::optional<qos::LatencyTargetStatus> target_status(const qos::DeviceGroup& g, Level level) {
  switch (level) {
    case Level::group: return g.latency_target(0, kReader);
    case Level::device: return g.device_latency_target(0);
    case Level::tenant: return g.tenant_latency_target(kTenant);
  }
  return std::nullopt;
}

ClientSpec reader(std::uint32_t depth) {
  ClientSpec c = closed_loop("reader", 0, kReader, depth, {4 * KiB});
  c.think = kThinkTime;
  return c;
}

Scenario base(std::uint32_t depth, Nanos duration, Level level = Level::group) {
  Scenario s;
  s.name = "latency target";
  s.storage = vm_disk_knee();
  const DeviceId w = writers_device(level);
  s.devices = level == Level::group ? std::vector<DeviceId>{0} : level == Level::device ? std::vector<DeviceId>{0, 1}
                                                                                          : std::vector<DeviceId>{0, 1, 2};
  s.groups = {group(0, kReader, 100), group(w, kWriterA, 100), group(w, kWriterB, 100)};
  s.clients = {reader(depth)};
  s.duration = duration;
  if (level == Level::tenant) {
    s.actions.push_back({0, [](qos::DeviceGroup& g) {
                           ASSERT_TRUE(g.add_tenant(kTenant, 100));
                           ASSERT_TRUE(g.set_device_tenant(0, kTenant, 100));
                           ASSERT_TRUE(g.set_device_tenant(1, kTenant, 100));
                         }});
  }
  return s;
}

// The p-th percentile of the reader's latencies completed in [t0, t1).
Nanos percentile(const ClientResult& c, Nanos t0, Nanos t1, double p) {
  const auto first = std::lower_bound(c.completed.begin(), c.completed.end(), t0) - c.completed.begin();
  const auto last = std::lower_bound(c.completed.begin(), c.completed.end(), t1) - c.completed.begin();
  std::vector<Nanos> values(c.latency.begin() + first, c.latency.begin() + last);
  if (values.empty()) return -1;
  const std::size_t rank = std::min(values.size() - 1, static_cast<std::size_t>(p * static_cast<double>(values.size())));
  std::nth_element(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(rank), values.end());
  return values[rank];
}

struct Outcome {
  double windows_met = 0;   // fraction of 1 s windows from 1 s on whose p99 met the target
  bool first_second_met = false;
  double writers_kept = 0;  // writers' device time / the time the reader leaves
  double reader_iops = 0;
  std::vector<qos::LatencyTargetStatus> status;
};

Outcome contend(std::uint32_t depth, Nanos target, bool with_target, Nanos duration, Level level = Level::group) {
  Scenario s = base(depth, duration, level);
  for (auto [name, id] : {std::pair{"writer-a", kWriterA}, std::pair{"writer-b", kWriterB}}) {
    ClientSpec w = closed_loop(name, writers_device(level), id, 64, {64 * KiB});
    w.read_fraction = 0;
    s.clients.push_back(w);
  }
  Outcome out;
  if (with_target) {
    s.actions.push_back({0, [target, level](qos::DeviceGroup& g) {
                           qos::Limits limits;
                           limits.latency_target_us = static_cast<std::uint64_t>(target / kMicro);
                           qos::Status status = set_target(g, level, limits);
                           ASSERT_TRUE(status) << status.message();
                         }});
    for (Nanos t = kSecond; t < duration; t += kSecond) {
      s.actions.push_back({t, [&out, level](qos::DeviceGroup& g) {
                             out.status.push_back(target_status(g, level).value_or(qos::LatencyTargetStatus{}));
                           }});
    }
  }
  const Result r = simulate(s);
  const ClientResult& c = r.client("reader");
  int met = 0, windows = 0;
  for (Nanos t = kSecond; t + kSecond <= duration; t += kSecond) {
    const Nanos p99 = percentile(c, t, t + kSecond, 0.99);
    if (getenv("DEBUG_LAT")) {
      const auto i = static_cast<std::size_t>(t / kSecond - 1);
      printf("    %2lld s p99 %6lld us p50 %6lld; status p %lld cap %u epochs %llu missed %llu\n", (long long)(t / kSecond), (long long)(p99 / 1000),
             (long long)(percentile(c, t, t + kSecond, 0.5) / 1000),
             i < out.status.size() ? (long long)(out.status[i].percentile_ns / 1000) : -1LL,
             i < out.status.size() ? out.status[i].cap : 0u, i < out.status.size() ? (unsigned long long)out.status[i].epochs : 0ULL,
             i < out.status.size() ? (unsigned long long)out.status[i].missed_epochs : 0ULL);
    }
    met += p99 >= 0 && p99 <= target;
    ++windows;
  }
  out.windows_met = static_cast<double>(met) / windows;
  const Nanos first = percentile(c, 0, kSecond, 0.99);
  out.first_second_met = first >= 0 && first <= target;
  const double span = static_cast<double>(duration - kSecond);
  const double reader_time = c.device_time(kSecond, duration) / span;
  const double writers_time =
      (r.client("writer-a").device_time(kSecond, duration) + r.client("writer-b").device_time(kSecond, duration)) / span;
  out.writers_kept = writers_time / (1 - reader_time);
  out.reader_iops = static_cast<double>(c.completions(kSecond, duration)) / (span / kSecond);
  return out;
}

class LatencyTargetSim : public ::testing::TestWithParam<std::tuple<Level, std::uint32_t>> {};

TEST_P(LatencyTargetSim, ReaderMeetsTwiceItsSoloP99AgainstTwoDeepWriters) {
  const auto [level, depth] = GetParam();
  const Result alone = simulate(base(depth, 3 * kSecond, level));
  const Nanos solo_p99 = percentile(alone.client("reader"), kSecond, 3 * kSecond, 0.99);
  const Nanos target = 2 * solo_p99;
  constexpr Nanos kDuration = 20 * kSecond;

  const Outcome without = contend(depth, target, false, kDuration, level);
  const Outcome with = contend(depth, target, true, kDuration, level);
  printf("target on the %s, reader %u deep: p99 alone %.0f us, target %.0f us\n", to_string(level), depth,
         solo_p99 / 1e3, target / 1e3);
  printf("  no target: windows met %5.1f %%, reader %6.0f IOPS, writers keep %.1f %% of what it leaves\n",
         100 * without.windows_met, without.reader_iops, 100 * without.writers_kept);
  printf("  target:    windows met %5.1f %% (first second %s), reader %6.0f IOPS, writers keep %.1f %%; cap on them",
         100 * with.windows_met, with.first_second_met ? "met" : "missed", with.reader_iops, 100 * with.writers_kept);
  for (std::size_t i = 0; i < with.status.size() && i < 8; ++i) printf(" %u", with.status[i].cap);
  printf(" ...\n");

  // The control: without the target the reader misses it, at every level.
  // (Under a tenant a 4-deep reader used to meet it without one: its
  // tenant's V_T lagged V, so it went first at every request, banking the
  // share it did not use; tree.h's tenant_vtime now follows V for a tenant
  // without limits, docs/hierarchy.md.)
  EXPECT_LT(without.windows_met, 0.95) << "the reader meets its target without one: no test";
  EXPECT_GE(with.windows_met, 0.95);
  EXPECT_TRUE(with.first_second_met);
  EXPECT_GE(with.writers_kept, 0.8);
  ASSERT_FALSE(with.status.empty());
  EXPECT_EQ(with.status.back().target_ns, target / kMicro * kMicro);
  EXPECT_GT(with.status.back().cap, 0u);
  EXPECT_GT(with.status.back().percentile_ns, 0);
}

INSTANTIATE_TEST_SUITE_P(Depths, LatencyTargetSim,
                         ::testing::Combine(::testing::Values(Level::group, Level::device, Level::tenant),
                                            ::testing::Values(1u, 2u, 4u)),
                         [](const auto& info) {
                           return std::string(to_string(std::get<0>(info.param))) + "_" +
                                  std::to_string(std::get<1>(info.param)) + "deep";
                         });

class LatencyTargetSimRecovery : public ::testing::TestWithParam<Level> {};

TEST_P(LatencyTargetSimRecovery, TheCapGoesAwayWhenTheProtectedNodeStops) {
  // The reader stops at 5 s: its target no longer needs the cap, which
  // doubles each idle epoch (250 ms) until it is gone.
  const Level level = GetParam();
  Scenario s = base(4, 10 * kSecond, level);
  s.clients[0].stop = 5 * kSecond;
  const DeviceId writers = writers_device(level);
  for (auto [name, id] : {std::pair{"writer-a", kWriterA}, std::pair{"writer-b", kWriterB}}) {
    ClientSpec w = closed_loop(name, writers, id, 64, {64 * KiB});
    w.read_fraction = 0;
    s.clients.push_back(w);
  }
  std::vector<std::uint32_t> caps;
  s.actions.push_back({0, [level](qos::DeviceGroup& g) {
                         qos::Limits limits;
                         limits.latency_target_us = 500;
                         ASSERT_TRUE(set_target(g, level, limits));
                       }});
  for (Nanos t = kSecond; t < 10 * kSecond; t += kSecond) {
    s.actions.push_back(
        {t, [&caps, writers](qos::DeviceGroup& g) { caps.push_back(g.latency_cap_on(writers, kWriterA)); }});
  }
  (void)simulate(s);
  ASSERT_EQ(caps.size(), 9u);
  printf("cap on the writers, each second:");
  for (std::uint32_t cap : caps) printf(" %u", cap);
  printf("\n");
  EXPECT_GT(caps[3], 0u);   // 4 s: the reader is protected
  EXPECT_EQ(caps[6], 0u);   // 7 s: 2 s after it stopped, no cap
  EXPECT_EQ(caps[8], 0u);
}

INSTANTIATE_TEST_SUITE_P(Levels, LatencyTargetSimRecovery,
                         ::testing::Values(Level::group, Level::device, Level::tenant),
                         [](const auto& info) { return std::string(to_string(info.param)); });

// A target on a device or tenant does not cap the groups inside it: two
// groups of the protected device are never held by its target, only the
// writers outside are.
TEST(LatencyTargetSimNode, TheNodesOwnGroupsAreNotCapped) {
  Scenario s = base(2, 4 * kSecond, Level::device);
  s.groups.push_back(group(0, 9, 100));
  ClientSpec second = closed_loop("reader-2", 0, 9, 2, {4 * KiB});
  second.think = kThinkTime;
  s.clients.push_back(second);
  for (auto [name, id] : {std::pair{"writer-a", kWriterA}, std::pair{"writer-b", kWriterB}}) {
    ClientSpec w = closed_loop(name, 1, id, 64, {64 * KiB});
    w.read_fraction = 0;
    s.clients.push_back(w);
  }
  std::vector<std::uint32_t> on_reader, on_second, on_writer;
  s.actions.push_back({0, [](qos::DeviceGroup& g) {
                         qos::Limits limits;
                         limits.latency_target_us = 500;
                         ASSERT_TRUE(g.set_limits(0, std::nullopt, limits));
                       }});
  for (Nanos t = kSecond; t < 4 * kSecond; t += kSecond) {
    s.actions.push_back({t, [&](qos::DeviceGroup& g) {
                           on_reader.push_back(g.latency_cap_on(0, kReader));
                           on_second.push_back(g.latency_cap_on(0, 9));
                           on_writer.push_back(g.latency_cap_on(1, kWriterA));
                         }});
  }
  (void)simulate(s);
  ASSERT_EQ(on_writer.size(), 3u);
  for (std::size_t i = 0; i < on_writer.size(); ++i) {
    EXPECT_EQ(on_reader[i], 0u);
    EXPECT_EQ(on_second[i], 0u);
    EXPECT_GT(on_writer[i], 0u) << "second " << i + 1;
  }
}

}  // namespace
}  // namespace ioband::sim
