// What the reservation simulations share (qos_sim_reservation_test and
// qos_sim_reservation_nodes_test): the storage, the three clients of the
// issue's target (a reserved 4 KiB reader against two 64 KiB writers at
// 1:3), and the windows measure.
#pragma once

#include <algorithm>
#include <cstdio>
#include <vector>

#include "sim/simulator.h"

namespace ioband::sim {

inline constexpr GroupId kReserved = 1, kLight = 2, kHeavy = 3;

// The knee storage of the weights tests, with the scheduler's device model
// calibrated to it: the capacity in reserved IOPS (4 KiB random reads a
// second) is its read_rand_iops.
inline StorageModel disk() { return vm_disk_knee(); }
inline double capacity_iops() { return disk().costs.read_rand_iops; }

// At 0: the scheduler's model calibrated to `model`, and `iops` reserved for kReserved.
inline Action calibrate_and_reserve(const qos::DeviceModel& model, std::uint64_t iops) {
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
inline void three_clients(Scenario& s, std::uint32_t depth) {
  s.devices = {0};
  s.groups = {group(0, kReserved, 1), group(0, kLight, 100), group(0, kHeavy, 300)};
  s.clients = {closed_loop("reserved", 0, kReserved, depth, {4 * KiB}),
               closed_loop("light", 0, kLight, 64, {64 * KiB}), closed_loop("heavy", 0, kHeavy, 64, {64 * KiB})};
  s.clients[1].read_fraction = 0;
  s.clients[2].read_fraction = 0;
}

// The reserved client's IOPS in each 1 s window of [t0, t1).
inline std::vector<double> windows(const Result& result, Nanos t0, Nanos t1) {
  std::vector<double> rates;
  for (Nanos t = t0; t + kSecond <= t1; t += kSecond) {
    rates.push_back(static_cast<double>(result.client("reserved").completions(t, t + kSecond)));
  }
  return rates;
}

inline double percentile(std::vector<double> values, double p) {
  std::sort(values.begin(), values.end());
  return values[static_cast<std::size_t>(p * static_cast<double>(values.size() - 1))];
}

inline double met_fraction(const std::vector<double>& rates, double wanted) {
  const auto met = std::count_if(rates.begin(), rates.end(), [&](double r) { return r >= 0.98 * wanted; });
  return static_cast<double>(met) / static_cast<double>(rates.size());
}

// The light writer's share of the two writers' device time.
inline double light_share(const Result& result, Nanos t0, Nanos t1) {
  return device_time_shares(result, {"light", "heavy"}, t0, t1)[0];
}

inline void report(const char* what, const std::vector<double>& rates, double wanted, double light) {
  printf("%-34s reserved %.0f IOPS: windows met %.1f %%, p5 %.1f %%, mean %.1f %%; light %.1f %% of the writers\n", what,
         wanted, 100 * met_fraction(rates, wanted), 100 * percentile(rates, 0.05) / wanted,
         100 * [&] {
           double sum = 0;
           for (double r : rates) sum += r;
           return sum / static_cast<double>(rates.size()) / wanted;
         }(),
         light);
}

}  // namespace ioband::sim
