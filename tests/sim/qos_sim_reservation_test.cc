// Reservations (reservation.h) in virtual time, the targets of issue 16:
// a group reserving 20 % of the storage's capacity against two heavy groups
// at weights 1:3 gets its reservation in at least 98 % of 1 s windows (the
// 5th percentile of the windows at least 98 % of it), and the surplus splits
// 1:3 within 3 points; the same while load from outside ioband halves the
// storage's speed, and again within 2 s after it stops. A reservation the
// slowed storage cannot give is scaled down (and says so), and comes back.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#include "sim/simulator.h"

namespace ioband::sim {
namespace {

constexpr GroupId kReserved = 1, kLight = 2, kHeavy = 3;

// The knee storage of the weights tests, with the scheduler's device model
// calibrated to it: the capacity in reserved IOPS (4 KiB random reads a
// second) is its read_rand_iops.
StorageModel disk() { return vm_disk_knee(); }
double capacity_iops() { return disk().costs.read_rand_iops; }

struct Outcome {
  Result result;
  std::vector<qos::ReservationStatus> status;   // sampled once a second
  std::vector<qos::ReservationSummary> summary;
};

// `share` of the capacity reserved for 4 KiB random reads 64 deep (weight 1)
// against 64 KiB random writers 64 deep at weights 100 and 300; the storage
// at `speed` in [slow_from, slow_to).
// At 0: the scheduler's model calibrated to `model`, and `iops` reserved for kReserved.
Action calibrate_and_reserve(const qos::DeviceModel& model, std::uint64_t iops) {
  return {0, [model, iops](qos::DeviceGroup& g) {
            ASSERT_TRUE(g.set_device_model(model, true));
            qos::Limits limits;
            limits.reservation_iops = iops;
            qos::Status status = g.set_limits(0, kReserved, limits);
            ASSERT_TRUE(status) << status.message();
          }};
}

// The reserved reader (4 KiB random reads, `depth` deep, weight 1) against
// 64 KiB random writers 64 deep at weights 100 and 300.
void three_clients(Scenario& s, std::uint32_t depth) {
  s.devices = {0};
  s.groups = {group(0, kReserved, 1), group(0, kLight, 100), group(0, kHeavy, 300)};
  s.clients = {closed_loop("reserved", 0, kReserved, depth, {4 * KiB}),
               closed_loop("light", 0, kLight, 64, {64 * KiB}), closed_loop("heavy", 0, kHeavy, 64, {64 * KiB})};
  s.clients[1].read_fraction = 0;
  s.clients[2].read_fraction = 0;
}

Outcome run(double share, double speed, Nanos slow_from, Nanos slow_to, Nanos duration) {
  Scenario s;
  s.name = "reservation";
  s.storage = disk();
  if (speed < 1) s.storage.slowdowns.push_back({slow_from, slow_to, speed});
  three_clients(s, 64);
  s.actions.push_back(calibrate_and_reserve(disk().costs, static_cast<std::uint64_t>(share * capacity_iops())));
  s.duration = duration;
  Outcome out;
  for (Nanos t = kSecond; t < duration; t += kSecond) {
    s.actions.push_back({t, [&out](qos::DeviceGroup& g) {
                           out.status.push_back(g.reservation(0, kReserved).value_or(qos::ReservationStatus{}));
                           out.summary.push_back(g.reservations());
                         }});
  }
  out.result = simulate(s);
  return out;
}

// The reserved client's IOPS in each 1 s window of [t0, t1).
std::vector<double> windows(const Result& result, Nanos t0, Nanos t1) {
  std::vector<double> rates;
  for (Nanos t = t0; t + kSecond <= t1; t += kSecond) {
    rates.push_back(static_cast<double>(result.client("reserved").completions(t, t + kSecond)));
  }
  return rates;
}

double percentile(std::vector<double> values, double p) {
  std::sort(values.begin(), values.end());
  return values[static_cast<std::size_t>(p * static_cast<double>(values.size() - 1))];
}

double met_fraction(const std::vector<double>& rates, double wanted) {
  const auto met = std::count_if(rates.begin(), rates.end(), [&](double r) { return r >= 0.98 * wanted; });
  return static_cast<double>(met) / static_cast<double>(rates.size());
}

// The light writer's share of the two writers' device time.
double light_share(const Result& result, Nanos t0, Nanos t1) {
  return device_time_shares(result, {"light", "heavy"}, t0, t1)[0];
}

void report(const char* what, const std::vector<double>& rates, double wanted, double light) {
  printf("%-34s reserved %.0f IOPS: windows met %.1f %%, p5 %.1f %%, mean %.1f %%; light %.1f %% of the writers\n", what,
         wanted, 100 * met_fraction(rates, wanted), 100 * percentile(rates, 0.05) / wanted,
         100 * [&] {
           double sum = 0;
           for (double r : rates) sum += r;
           return sum / static_cast<double>(rates.size()) / wanted;
         }(),
         light);
}

TEST(ReservationSim, TwentyPercentAgainstTwoHeavyGroupsAtOneToThree) {
  const Outcome r = run(0.2, 1, 0, 0, 30 * kSecond);
  const double wanted = static_cast<double>(static_cast<std::uint64_t>(0.2 * capacity_iops()));
  const std::vector<double> rates = windows(r.result, 2 * kSecond, 30 * kSecond);
  const double light = light_share(r.result, 2 * kSecond, 30 * kSecond);
  report("20 % vs 1:3", rates, wanted, light);
  EXPECT_GE(met_fraction(rates, wanted), 0.98);
  EXPECT_GE(percentile(rates, 0.05), 0.98 * wanted);
  EXPECT_NEAR(light, 25, 3);
  // Not a trivial pass: by weight alone (1 of 401) it would get a quarter of a percent.
  const std::array<std::uint64_t, 5>& rules = r.result.client("reserved").by_rule;
  EXPECT_GT(rules[static_cast<std::size_t>(qos::Rule::reservation)], rules[static_cast<std::size_t>(qos::Rule::fair)]);
  ASSERT_FALSE(r.status.empty());
  EXPECT_TRUE(r.status.back().met);
  EXPECT_FALSE(r.status.back().scaled);
  EXPECT_NEAR(r.status.back().effective_iops, wanted, 1);
}

// Clients off the CPU now and then, as fio is on 2 CPUs beside two other
// clients and iobandd (here about 2 ms in every 7): the reserved client's
// requests all come back while it is away. Before, the reserved group was
// parked by a heavier group's anticipation (a writer coming back from such a
// pause looks shallow for its first requests) and stayed out of the
// reservation's heap while parked; it banked nothing of the time it was
// away; and what the weights gave it while the writers were away put its
// tag seconds ahead, so it missed the next second: 0 % of the windows met
// (p5 86 % of the reservation, mean 91 %) on the knee storage, 0 % (p5 84 %)
// on the elastic one.
class ReservationStalling : public ::testing::TestWithParam<bool> {};

TEST_P(ReservationStalling, MetWhileTheClientsAreOffTheCpuNowAndThen) {
  Scenario s;
  s.name = "reservation, stalling clients";
  s.storage = GetParam() ? vm_disk_elastic() : disk();
  three_clients(s, 32);
  for (ClientSpec& c : s.clients) {
    c.stall_every = 5 * kMilli;
    c.stall_length = 2 * kMilli;
  }
  const auto iops = static_cast<std::uint64_t>(0.2 * capacity_iops());
  qos::DeviceModel model = s.storage.costs;
  model.read_rand_iops = capacity_iops();  // the same reservation on both
  s.actions.push_back(calibrate_and_reserve(model, iops));
  s.duration = 20 * kSecond;
  const Result result = simulate(s);
  const double wanted = static_cast<double>(iops);
  const std::vector<double> rates = windows(result, 2 * kSecond, 20 * kSecond);
  report(GetParam() ? "20 % vs 1:3, stalling, elastic" : "20 % vs 1:3, stalling, knee", rates, wanted,
         light_share(result, 2 * kSecond, 20 * kSecond));
  EXPECT_GE(met_fraction(rates, wanted), 0.98);
  EXPECT_GE(percentile(rates, 0.05), 0.98 * wanted);
}

INSTANTIATE_TEST_SUITE_P(Storage, ReservationStalling, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "elastic" : "knee"; });

// The same clients off the CPU 2 ms in every 5, on the elastic storage
// with a fifth of its own capacity reserved (19,000 IOPS): a writer whose
// requests all came back while it was away is waited for a moment by the
// other (fair_policy.h, "Busy groups"), also while the reserved reader,
// weight 1, has requests ready: the writer would go twice before it.
// Before, a ready reserved group turned that wait off: the light writer got
// 38.1 % of the writers' IOPS, as if the heavy one's time away were lost for
// good (the two writers alone: 25.1 %); with reserved groups left out of
// that test 32.1 %, since the reader itself, going by weight while the
// writers were away, did not wait (docs/reservations.md).
Scenario stalling_on_elastic() {
  Scenario s;
  s.name = "reservation, stalling clients, elastic, 20 % of its capacity";
  s.storage = vm_disk_elastic();
  three_clients(s, 32);
  for (ClientSpec& c : s.clients) {
    c.stall_every = 5 * kMilli;
    c.stall_length = 2 * kMilli;
  }
  s.duration = 20 * kSecond;
  return s;
}

// stalling_on_elastic() with a fifth of the storage reserved for the
// reader: every window met, and the writers split the rest 1:3.
void expect_reserved_and_split(Scenario s, const char* label) {
  const auto iops = static_cast<std::uint64_t>(0.2 * s.storage.costs.read_rand_iops);
  s.actions.push_back(calibrate_and_reserve(s.storage.costs, iops));
  const Result result = simulate(s);
  const std::vector<double> rates = windows(result, 2 * kSecond, 20 * kSecond);
  const double light = light_share(result, 2 * kSecond, 20 * kSecond);
  report(label, rates, static_cast<double>(iops), light);
  EXPECT_GE(met_fraction(rates, static_cast<double>(iops)), 0.98);
  EXPECT_NEAR(light, 25, 3);
}

TEST(ReservationSim, AWriterBackFromOffTheCpuIsWaitedForBesideAReservedReader) {
  expect_reserved_and_split(stalling_on_elastic(), "20 % of elastic, stalling");
}

// Clients away for longer (10 ms in every 50, as on the disk beside a
// loaded CPU): the reservation falls behind while the reader is away, and
// the guard holds both writers back (latency_target.h) while the reader,
// its reservation's tag soon ahead of now, goes by weight. Each such
// dispatch at weight 1 moved V by a whole read; the writers, back later
// from an empty queue, were lifted to their floors below that V, the
// light one three times as far below it as the heavy one, and it went
// alone until it had caught up: 37.0 % of the writers. V now stays at the
// held groups' tags (fair_policy.h): 26.5 %.
TEST(ReservationSim, WritersHeldForTheReservationKeepTheirPlaceInTheOrder) {
  Scenario s = stalling_on_elastic();
  for (ClientSpec& c : s.clients) {
    c.stall_every = 50 * kMilli;
    c.stall_length = 10 * kMilli;
  }
  expect_reserved_and_split(s, "20 % of elastic, away 10 ms in 50");
}

// The same without the reservation: the reader, weight 1, is always ready
// and gets its 1/401, and it is far behind the writers in the order; it
// must not turn the wait for a writer that was away off (31.7 % before).
TEST(ReservationSim, AMuchLighterGroupAlwaysReadyDoesNotTurnTheWaitOff) {
  const Result result = simulate(stalling_on_elastic());
  const double light = light_share(result, 2 * kSecond, 20 * kSecond);
  printf("weights 1:100:300, stalling, elastic: light %.1f %% of the writers\n", light);
  EXPECT_NEAR(light, 25, 3);
}

TEST(ReservationSim, HoldsWhileOutsideLoadHalvesTheStorageAndRecovers) {
  // 20 % of the full capacity is 40 % of the halved one: nothing to scale,
  // the group keeps its IOPS while the writers lose half of theirs.
  const Outcome r = run(0.2, 0.5, 10 * kSecond, 20 * kSecond, 30 * kSecond);
  const double wanted = static_cast<double>(static_cast<std::uint64_t>(0.2 * capacity_iops()));
  const std::vector<double> slow = windows(r.result, 11 * kSecond, 20 * kSecond);
  const std::vector<double> after = windows(r.result, 22 * kSecond, 30 * kSecond);
  report("20 %, storage halved", slow, wanted, light_share(r.result, 11 * kSecond, 20 * kSecond));
  report("20 %, after (from 2 s)", after, wanted, light_share(r.result, 22 * kSecond, 30 * kSecond));
  EXPECT_GE(met_fraction(slow, wanted), 0.98);
  EXPECT_GE(percentile(slow, 0.05), 0.98 * wanted);
  EXPECT_NEAR(light_share(r.result, 11 * kSecond, 20 * kSecond), 25, 3);
  EXPECT_GE(met_fraction(after, wanted), 0.98);
  EXPECT_NEAR(light_share(r.result, 22 * kSecond, 30 * kSecond), 25, 3);
  // The writers did lose: the storage was slower.
  const double writers_fast = r.result.client("heavy").device_time(2 * kSecond, 10 * kSecond) / 8;
  const double writers_slow = r.result.client("heavy").device_time(11 * kSecond, 20 * kSecond) / 9;
  EXPECT_LT(writers_slow, 0.7 * writers_fast);
}

TEST(ReservationSim, ScaledDownWhenTheSlowedStorageCannotGiveItAndBackAfter) {
  // 60 % of the full capacity is 120 % of the halved one: scaled to 90 % of
  // what the storage gives, f = 0.75, shown in the status; back to 1 after.
  const Outcome r = run(0.6, 0.5, 10 * kSecond, 20 * kSecond, 30 * kSecond);
  const double wanted = static_cast<double>(static_cast<std::uint64_t>(0.6 * capacity_iops()));
  // Status samples are taken at t = 1 s, 2 s, ...: index i is t = i + 1 s.
  ASSERT_GE(r.summary.size(), 29u);
  for (int t = 3; t < 10; ++t) {
    EXPECT_EQ(r.summary[static_cast<std::size_t>(t - 1)].factor, 1) << "at " << t << " s";
  }
  for (int t = 13; t < 20; ++t) {
    const qos::ReservationSummary& s = r.summary[static_cast<std::size_t>(t - 1)];
    // 0.75 if the learner saw the storage exactly twice as slow; it sees it a
    // little slower than that (its scale comes from a mix of 4 KiB reads and
    // 64 KiB writes), so the factor is a little lower.
    EXPECT_GT(s.factor, 0.6) << "at " << t << " s";
    EXPECT_LT(s.factor, 0.8) << "at " << t << " s";
    EXPECT_TRUE(r.status[static_cast<std::size_t>(t - 1)].scaled) << "at " << t << " s";
  }
  for (int t = 22; t < 30; ++t) {
    EXPECT_EQ(r.summary[static_cast<std::size_t>(t - 1)].factor, 1) << "at " << t << " s";
  }
  // In each window of the slow-down, the group gets what the status says it
  // is due (the effective reservation at the window's end).
  std::vector<double> slow_met;
  for (int t = 12; t < 20; ++t) {
    const double served = static_cast<double>(r.result.client("reserved").completions(t * kSecond, (t + 1) * kSecond));
    const double effective = r.status[static_cast<std::size_t>(t)].effective_iops;
    printf("  %2d-%2d s: factor %.3f, effective %.0f IOPS, served %.0f (%.1f %%)\n", t, t + 1,
           r.summary[static_cast<std::size_t>(t)].factor, effective, served, 100 * served / effective);
    slow_met.push_back(served / effective);
  }
  const std::vector<double> after = windows(r.result, 22 * kSecond, 30 * kSecond);
  report("60 %, after (from 2 s)", after, wanted, light_share(r.result, 22 * kSecond, 30 * kSecond));
  EXPECT_GE(percentile(slow_met, 0.05), 0.98);
  EXPECT_GE(met_fraction(after, wanted), 0.98);
}

TEST(ReservationSim, HeldWhenTheWindowDoesNotQueueAnything) {
  // Elastic storage and a fixed window of 256: the clients' 160 requests
  // all go to the storage at once, and ioband's order alone cannot give the
  // reader its 30 % (it gets 61 % of it); the cap on the others
  // (latency_target.h), stepped in proportion to the miss, does, second by
  // second as when requests queue in ioband.
  Scenario s;
  s.name = "reservation, nothing queued in ioband";
  s.storage = vm_disk_elastic();
  s.io_limit = 256;
  s.io_limit_auto = false;
  three_clients(s, 32);
  const auto iops = static_cast<std::uint64_t>(0.3 * vm_disk_elastic().costs.read_rand_iops);
  s.actions.push_back(calibrate_and_reserve(vm_disk_elastic().costs, iops));
  s.duration = 20 * kSecond;
  std::vector<qos::ReservationStatus> samples;
  for (Nanos t = kSecond; t < 20 * kSecond; t += kSecond) {
    s.actions.push_back({t, [&samples](qos::DeviceGroup& g) {
                           samples.push_back(g.reservation(0, kReserved).value_or(qos::ReservationStatus{}));
                         }});
  }
  const Result with = simulate(s);
  printf("cap on the others each second:");
  for (const auto& r : samples) printf(" %u", r.cap_on_others);
  printf("\n");
  s.actions.resize(1);
  s.actions[0].apply = [](qos::DeviceGroup& g) { ASSERT_TRUE(g.set_device_model(vm_disk_elastic().costs, true)); };
  const Result without = simulate(s);
  const double wanted = static_cast<double>(iops);
  const std::vector<double> rates = windows(with, 2 * kSecond, 20 * kSecond);
  const std::vector<double> before = windows(without, 2 * kSecond, 20 * kSecond);
  report("elastic, window 256, no reservation", before, wanted, light_share(without, 2 * kSecond, 20 * kSecond));
  report("elastic, window 256, reserved", rates, wanted, light_share(with, 2 * kSecond, 20 * kSecond));
  EXPECT_LT(percentile(before, 0.5), 0.9 * wanted) << "the reader gets its reservation without one: no test";
  // Before the cap moved in proportion to the miss (fixed steps of 3/4 and
  // 9/8) it swung from 19 to 163, and only 67 % of the windows reached 98 %.
  EXPECT_GE(met_fraction(rates, wanted), 0.98);
  EXPECT_GE(percentile(rates, 0.05), 0.98 * wanted);
  EXPECT_NEAR(light_share(with, 2 * kSecond, 20 * kSecond), 25, 3);
}

TEST(ReservationSim, AnIdleReservedGroupBanksNothing) {
  // The reserved client stops for 5 s: when it returns it gets its
  // reservation again, not a burst of the time it was away.
  Scenario s;
  s.name = "reservation, idle return";
  s.storage = disk();
  s.devices = {0};
  s.groups = {group(0, kReserved, 1), group(0, kLight, 100)};
  ClientSpec first = closed_loop("reserved", 0, kReserved, 32);
  first.stop = 5 * kSecond;
  ClientSpec again = closed_loop("again", 0, kReserved, 32);
  again.start = 10 * kSecond;
  s.clients = {first, again, closed_loop("light", 0, kLight, 64, {64 * KiB})};
  const auto iops = static_cast<std::uint64_t>(0.2 * capacity_iops());
  s.actions.push_back(calibrate_and_reserve(disk().costs, iops));
  s.duration = 15 * kSecond;
  const Result result = simulate(s);
  const auto in_first_100ms = static_cast<double>(result.client("again").completions(10 * kSecond, 10 * kSecond + 100 * kMilli));
  printf("back from 5 s idle: %.0f completions in its first 100 ms (reservation %.0f a second)\n", in_first_100ms,
         static_cast<double>(iops));
  // At most its reservation's 100 ms plus the 100 ms it may catch up, and what its weight gives.
  EXPECT_LT(in_first_100ms, 0.25 * static_cast<double>(iops));
  EXPECT_GE(static_cast<double>(result.client("again").completions(11 * kSecond, 15 * kSecond)) / 4,
            0.98 * static_cast<double>(iops));
}

// Reservations at other levels (reservation.h): a whole device, and a
// tenant over two devices, reserve 20 % against two heavy devices at 1:3.
// The reserving node's groups share its reservation by their weights
// (1:3 inside it); the surplus splits 1:3 between the heavy devices.
constexpr qos::TenantId kTenant = 7;

struct NodeOutcome {
  Result result;
  std::vector<qos::ReservationStatus> status;  // of the reserving node, once a second
};

// `deep`: elastic storage and a fixed window of 256 (nothing queues in
// ioband: the clients' 160 requests all go to the storage's own queue), 30 %
// reserved for readers 16 deep, as HeldWhenTheWindowDoesNotQueueAnything
// for a group: by their depths alone they would get less.
StorageModel node_storage(bool deep) { return deep ? vm_disk_elastic() : disk(); }
double node_share(bool deep) { return deep ? 0.3 : 0.2; }
std::uint32_t node_depth(bool deep) { return deep ? 16 : 32; }

// Devices 0-3; the node's readers "a" (device 0, group 1) and "b" (device
// `b_device`: group 2 of device 0, or device 1's default group), `depth`
// deep; the writers "light" and "heavy" on devices 2 and 3, their default
// groups at 100 and 300, outside every tenant.
void node_clients(Scenario& s, DeviceId b_device, std::uint32_t depth) {
  s.devices = {0, 1, 2, 3};
  s.groups = {group(0, 1, 100), group(0, 2, 300), group(2, qos::kDefaultGroup, 100), group(3, qos::kDefaultGroup, 300)};
  s.clients = {closed_loop("a", 0, 1, depth, {4 * KiB}),
               closed_loop("b", b_device, b_device == 0 ? 2 : qos::kDefaultGroup, depth, {4 * KiB}),
               closed_loop("light", 2, qos::kDefaultGroup, 64, {64 * KiB}),
               closed_loop("heavy", 3, qos::kDefaultGroup, 64, {64 * KiB})};
  s.clients[2].read_fraction = 0;
  s.clients[3].read_fraction = 0;
}

NodeOutcome run_node(bool tenant, bool deep = false) {
  Scenario s;
  s.name = tenant ? "tenant reservation" : "device reservation";
  s.storage = node_storage(deep);
  if (deep) {
    s.io_limit = 256;
    s.io_limit_auto = false;
  }
  // Reserving node: device 0 (groups 1 and 2 at 100:300), or tenant 7 over
  // devices 0 and 1 (weights 100:300 in it).
  node_clients(s, tenant ? 1 : 0, node_depth(deep));
  for (ClientSpec& c : s.clients) c.start = kMilli;
  const auto iops = static_cast<std::uint64_t>(node_share(deep) * s.storage.costs.read_rand_iops);
  s.actions.push_back({0, [tenant, iops, deep](qos::DeviceGroup& g) {
                         ASSERT_TRUE(g.set_device_model(node_storage(deep).costs, true));
                         ASSERT_TRUE(g.set_weight(0, qos::kDefaultGroup, 1));
                         qos::Limits limits;
                         limits.reservation_iops = iops;
                         if (tenant) {
                           ASSERT_TRUE(g.add_tenant(kTenant, 1));
                           ASSERT_TRUE(g.set_device_tenant(0, kTenant, 100));
                           ASSERT_TRUE(g.set_device_tenant(1, kTenant, 300));
                           qos::Status status = g.set_tenant_limits(kTenant, limits);
                           ASSERT_TRUE(status) << status.message();
                         } else {
                           qos::Status status = g.set_limits(0, std::nullopt, limits);
                           ASSERT_TRUE(status) << status.message();
                         }
                       }});
  if (!tenant) {
    // Device 0's groups weigh 1 and 3 of 404 against the writers: by weight
    // alone it would get 1 %.
    s.groups[0].weight = 1;
    s.groups[1].weight = 3;
  }
  s.duration = 20 * kSecond;
  NodeOutcome out;
  for (Nanos t = kSecond; t < s.duration; t += kSecond) {
    s.actions.push_back({t, [&out, tenant](qos::DeviceGroup& g) {
                           out.status.push_back((tenant ? g.tenant_reservation(kTenant) : g.device_reservation(0))
                                                    .value_or(qos::ReservationStatus{}));
                         }});
  }
  out.result = simulate(s);
  return out;
}

void check_node(const char* what, const NodeOutcome& r, bool deep = false) {
  const double wanted =
      static_cast<double>(static_cast<std::uint64_t>(node_share(deep) * node_storage(deep).costs.read_rand_iops));
  std::vector<double> rates;
  for (Nanos t = 2 * kSecond; t + kSecond <= 20 * kSecond; t += kSecond) {
    rates.push_back(static_cast<double>(r.result.client("a").completions(t, t + kSecond) +
                                        r.result.client("b").completions(t, t + kSecond)));
  }
  const double light = light_share(r.result, 2 * kSecond, 20 * kSecond);
  report(what, rates, wanted, light);
  const double inside = device_time_shares(r.result, {"a", "b"}, 2 * kSecond, 20 * kSecond)[0];
  printf("  inside the node: a %.1f %% (weight 1 of 4)\n", inside);
  EXPECT_GE(met_fraction(rates, wanted), 0.98);
  EXPECT_GE(percentile(rates, 0.05), 0.98 * wanted);
  EXPECT_NEAR(light, 25, 3);
  // Inside the node nothing waits where nothing queues (the cap holds only
  // the groups outside it, and the window of 256 is never full): there
  // the clients' depths split it, as for any groups under a window they do
  // not fill.
  if (!deep) {
    EXPECT_NEAR(inside, 25, 3);
  }
  ASSERT_FALSE(r.status.empty());
  EXPECT_TRUE(r.status.back().met);
  EXPECT_NEAR(r.status.back().effective_iops, wanted, 1);
  EXPECT_GE(r.status.back().served_iops, 0.98 * wanted);
  if (deep) {
    printf("  cap on the others each second:");
    for (const auto& st : r.status) printf(" %u", st.cap_on_others);
    printf("\n");
    // status shows the cap the node's reservation puts on the others.
    EXPECT_NE(r.status.back().cap_on_others, 0U);
  }
}

TEST(ReservationSim, AWholeDeviceReservesTwentyPercentSplitByItsGroupsWeights) {
  check_node("device 20 % vs 1:3", run_node(false));
}

TEST(ReservationSim, ATenantReservesTwentyPercentOverItsDevicesSplitByTheirWeights) {
  check_node("tenant 20 % vs 1:3", run_node(true));
}

// Where nothing queues in ioband the order alone cannot give a device or a
// tenant its reservation (without the cap the node got 61 % of it, in no
// window); the cap on the groups outside it (latency_target.h) does, as
// for a group's.
TEST(ReservationSim, AWholeDeviceReservesTwentyPercentWhenTheWindowDoesNotQueueAnything) {
  check_node("device 30 %, elastic, window 256", run_node(false, true), true);
}

TEST(ReservationSim, ATenantReservesTwentyPercentWhenTheWindowDoesNotQueueAnything) {
  check_node("tenant 30 %, elastic, window 256", run_node(true, true), true);
}

// A node's reservation removed while its groups stay backlogged (or the
// device leaves its reserving tenant): they go on at their weights' share
// at once. Served by the reservation they ran ahead of the others in
// virtual time (their weights split what the reservation gave them); kept
// there, they would wait until the others caught up.
enum class Removal { device, tenant, device_leaves_tenant, device_policy_weight };

class ReservationRemoved : public ::testing::TestWithParam<Removal> {};

// 20 % reserved for device 0 (groups 1 and 2 at weights 1 and 3: clients
// "a" and "b", 32 deep), or for its tenant of weight 1, against the writers
// at 100:300; at 10 s the reservation goes.
Scenario removal_scenario(Removal removal) {
  const bool tenant = removal == Removal::tenant || removal == Removal::device_leaves_tenant;
  Scenario s;
  s.name = "reservation removed";
  s.storage = disk();
  if (removal == Removal::device_policy_weight) s.policy = qos::Policy::weight;
  node_clients(s, 0, 32);
  s.groups[0].weight = 1;
  s.groups[1].weight = 3;
  const auto iops = static_cast<std::uint64_t>(0.2 * capacity_iops());
  s.actions.push_back({0, [tenant, iops](qos::DeviceGroup& g) {
                         ASSERT_TRUE(g.set_device_model(disk().costs, true));
                         ASSERT_TRUE(g.set_weight(0, qos::kDefaultGroup, 1));
                         qos::Limits limits;
                         limits.reservation_iops = iops;
                         if (tenant) {
                           ASSERT_TRUE(g.add_tenant(kTenant, 1));
                           ASSERT_TRUE(g.set_device_tenant(0, kTenant, 100));
                           ASSERT_TRUE(g.set_tenant_limits(kTenant, limits));
                         } else {
                           ASSERT_TRUE(g.set_limits(0, std::nullopt, limits));
                         }
                       }});
  s.actions.push_back({10 * kSecond, [removal](qos::DeviceGroup& g) {
                         const qos::Limits none;
                         switch (removal) {
                           case Removal::device:
                           case Removal::device_policy_weight: ASSERT_TRUE(g.set_limits(0, std::nullopt, none)); break;
                           case Removal::tenant: ASSERT_TRUE(g.set_tenant_limits(kTenant, none)); break;
                           case Removal::device_leaves_tenant:
                             ASSERT_TRUE(g.set_device_tenant(0, std::nullopt, qos::kDefaultWeight));
                             break;
                         }
                       }});
  s.duration = 14 * kSecond;
  return s;
}

// The node's part (the clients `node`) of the device time in each second
// from 9 s to 14 s; of the requests under dm-ioband's token policy
// `weight` (a token a request), what its weights split there.
std::vector<double> node_parts(const Result& r, const std::vector<std::string>& node, Removal removal) {
  std::vector<std::string> all = node;
  all.push_back("light");
  all.push_back("heavy");
  std::vector<double> parts;
  for (Nanos t = 9 * kSecond; t < 14 * kSecond; t += kSecond) {
    std::vector<double> shares = device_time_shares(r, all, t, t + kSecond);
    if (removal == Removal::device_policy_weight) {
      double total = 0;
      for (std::size_t i = 0; i < all.size(); ++i) {
        shares[i] = static_cast<double>(r.client(all[i]).completions(t, t + kSecond));
        total += shares[i];
      }
      for (double& v : shares) v = 100 * v / total;
    }
    double part = 0;
    for (std::size_t i = 0; i < node.size(); ++i) part += shares[i];
    parts.push_back(part);
    printf(" %.2f %%", part);
  }
  return parts;
}

// What a second may be off its due part, relative: dm-ioband's token
// policy splits by epochs, not exactly (1.09-1.18 % of the requests for
// 0.99 %).
double tolerance(Removal removal) { return removal == Removal::device_policy_weight ? 0.6 : 0.25; }

// While reserved, the node's part: 20 % of the device time (under `weight`
// that is two thirds of the requests: its 4 KiB reads against 64 KiB writes).
void expect_reserved(Removal removal, double part) {
  if (removal != Removal::device_policy_weight) {
    EXPECT_NEAR(part, 20, 2);
  }
}

TEST_P(ReservationRemoved, TheNodesGroupsGoOnAtTheirWeightsShare) {
  const Removal removal = GetParam();
  const Result r = simulate(removal_scenario(removal));
  // Weight 4 of 404; in the tenant of weight 1 against 400: 1 of 401.
  const double due = removal == Removal::tenant ? 1.0 / 401 : 4.0 / 404;
  printf("reservation removed at 10 s: the node's part of the device time (weight: requests) each second:");
  const std::vector<double> parts = node_parts(r, {"a", "b"}, removal);
  printf(" (due by weight %.2f %%)\n", 100 * due);
  expect_reserved(removal, parts[0]);
  // Before the lead went with the reservation: 0.00-0.01 % in every second after.
  for (std::size_t i = 1; i < parts.size(); ++i) {
    EXPECT_NEAR(parts[i], 100 * due, tolerance(removal) * 100 * due) << "second " << 9 + i;
  }
}

TEST_P(ReservationRemoved, AGroupIdleWhenItWentComesBackAtItsWeightsShare) {
  // "b" stops at 8 s, while the reservation serves it; its group's next
  // client starts at 11 s, after the reservation went.
  const Removal removal = GetParam();
  Scenario s = removal_scenario(removal);
  s.clients[1].stop = 8 * kSecond;
  ClientSpec again = s.clients[1];
  again.name = "b2";
  again.start = 11 * kSecond;
  again.stop = kNever;
  s.clients.push_back(again);
  const Result r = simulate(s);
  printf("\"b\" idle from 8 s, back at 11 s: the node's part of the device time (weight: requests) each second:");
  const std::vector<double> parts = node_parts(r, {"a", "b", "b2"}, removal);
  // "a" alone at weight 1 of 401 from 10 s; "a" and "b2" from 11 s: 4 of 404
  // (in the tenant: 1 of 401 in all).
  const double due_a = 1.0 / 401;
  const double due = removal == Removal::tenant ? 1.0 / 401 : 4.0 / 404;
  printf(" (due by weight %.2f %% from 10 s, %.2f %% from 11 s)\n", 100 * due_a, 100 * due);
  expect_reserved(removal, parts[0]);
  EXPECT_NEAR(parts[1], 100 * due_a, tolerance(removal) * 100 * due_a);
  // Without the idle group's lead dropped: 0.25 % (a alone) in every second.
  for (std::size_t i = 3; i < parts.size(); ++i) {
    EXPECT_NEAR(parts[i], 100 * due, tolerance(removal) * 100 * due) << "second " << 9 + i;
  }
}

// A node whose own limit holds it (a reservation above its limit, or a
// latency target on a client that asks for more than its limit gives) is
// not missing anything by the others' doing: the cap on the others
// (latency_target.h) stays off. Before, it went to 1 request in flight and
// the writers kept a twentieth of their rate, for nothing.
struct Limited {
  double reader = 0, writers = 0;  // IOPS from 2 s on
  std::uint32_t most_cap = 0;      // the largest cap on the writers sampled each second (0: none)
};

// The reserved reader (32 deep, weight `weight`) limited to 3000 IOPS, and
// a reservation of 20 % of the storage, a latency target of 2 ms, or neither;
// `deep`: elastic storage with a fixed window of 256 (nothing queues).
Limited run_limited(bool deep, bool reservation, bool target, std::uint32_t weight) {
  Scenario s;
  s.name = "limited";
  s.storage = deep ? vm_disk_elastic() : disk();
  if (deep) {
    s.io_limit = 256;
    s.io_limit_auto = false;
  }
  three_clients(s, 32);
  const auto iops = static_cast<std::uint64_t>(0.2 * s.storage.costs.read_rand_iops);
  const qos::DeviceModel model = s.storage.costs;
  s.actions.push_back({0, [=](qos::DeviceGroup& g) {
                         ASSERT_TRUE(g.set_device_model(model, true));
                         ASSERT_TRUE(g.set_weight(0, kReserved, weight));
                         qos::Limits limits;
                         limits.iops_total.rate = 3000;
                         if (reservation) limits.reservation_iops = iops;
                         if (target) limits.latency_target_us = 2000;
                         qos::Status status = g.set_limits(0, kReserved, limits);
                         ASSERT_TRUE(status) << status.message();
                       }});
  Limited out;
  for (Nanos t = kSecond; t < 10 * kSecond; t += kSecond) {
    s.actions.push_back({t, [&out](qos::DeviceGroup& g) {
                           out.most_cap = std::max(out.most_cap, g.latency_cap_on(0, kLight));
                         }});
  }
  s.duration = 10 * kSecond;
  const Result r = simulate(s);
  out.reader = static_cast<double>(r.client("reserved").completions(2 * kSecond, 10 * kSecond)) / 8;
  out.writers = static_cast<double>(r.client("light").completions(2 * kSecond, 10 * kSecond) +
                                    r.client("heavy").completions(2 * kSecond, 10 * kSecond)) / 8;
  return out;
}

// With the reservation or the target, against the same limited reader
// without either, on both storages: the reader at its limit, the writers
// not held. Before, 384-387 and 583 writer IOPS with the cap at 1.
void check_limited(const char* what, bool reservation, bool target, std::uint32_t weight) {
  for (const bool deep : {false, true}) {
    const Limited plain = run_limited(deep, false, false, weight);
    const Limited with = run_limited(deep, reservation, target, weight);
    printf("%s, %s: reader %.0f IOPS, writers %.0f (the limit alone: %.0f, %.0f); cap on the writers %u\n",
           deep ? "elastic, window 256" : "knee", what, with.reader, with.writers, plain.reader, plain.writers,
           with.most_cap);
    EXPECT_NEAR(with.reader, 3000, 100);
    EXPECT_GE(with.writers, 0.9 * plain.writers);
    EXPECT_EQ(with.most_cap, 0U);
  }
}

TEST(ReservationSim, AReservationAboveTheGroupsOwnLimitDoesNotCapTheOthers) {
  check_limited("20 % reserved above a limit of 3000 IOPS", true, false, 1);
}

TEST(ReservationSim, ALatencyTargetMissedByTheGroupsOwnLimitDoesNotCapTheOthers) {
  // A 32-deep reader at weight 1000 limited to 3000 IOPS waits about 10 ms
  // in its own queue, whatever the others do.
  check_limited("a 2 ms target on a reader held by its limit of 3000 IOPS", false, true, 1000);
}

INSTANTIATE_TEST_SUITE_P(Node, ReservationRemoved,
                         ::testing::Values(Removal::device, Removal::tenant, Removal::device_leaves_tenant,
                                           Removal::device_policy_weight),
                         [](const auto& info) {
                           switch (info.param) {
                             case Removal::device: return "device";
                             case Removal::tenant: return "tenant";
                             case Removal::device_leaves_tenant: return "device_leaves_tenant";
                             case Removal::device_policy_weight: return "device_policy_weight";
                           }
                           return "";
                         });

}  // namespace
}  // namespace ioband::sim
