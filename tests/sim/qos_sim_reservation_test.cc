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

#include "sim/reservation_common.h"
#include "sim/simulator.h"

namespace ioband::sim {
namespace {


struct Outcome {
  Result result;
  std::vector<qos::ReservationStatus> status;   // sampled once a second
  std::vector<qos::ReservationSummary> summary;
};

// `share` of the capacity reserved for 4 KiB random reads 64 deep (weight 1)
// against 64 KiB random writers 64 deep at weights 100 and 300; the storage
// at `speed` in [slow_from, slow_to).

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

}  // namespace
}  // namespace ioband::sim
