// Seed 003 (Ryo Tsuruta, dm-devel, March 2008): two ioband devices on one
// disk, weights 80 and 20, 128 outstanding requests on each. Then dm-ioband
// got 49/51 (the clients never had more than one request queued) and 2/98.
// Here: 80/20 within 1 point over the run under every policy, and within 5
// points in every 1-second window under `fair`.
#include <gtest/gtest.h>

#include "sim/simulator.h"

namespace ioband::sim {
namespace {

Scenario seed003(qos::Policy policy) {
  Scenario s;
  s.name = "seed 003, weights 80/20";
  s.policy = policy;
  // dm-ioband's fixed window of 128, which this test was written against
  // (the device group's default before io_limit auto).
  s.io_limit = 128;
  s.io_limit_auto = false;
  s.storage = storage(32, 20 * kMilli, 6 * kMilli);  // about 1600 IOPS
  s.devices = {0, 1};
  s.groups = {group(0, qos::kDefaultGroup, 80), group(1, qos::kDefaultGroup, 20)};
  s.clients = {closed_loop("vm", 0, qos::kDefaultGroup, 128), closed_loop("host", 1, qos::kDefaultGroup, 128)};
  for (ClientSpec& client : s.clients) client.read_fraction = 0.5;
  s.duration = 60 * kSecond;
  return s;
}

// Largest distance from 80 % of the first device's share over 1-second windows.
double worst_window(const Result& result) {
  double worst = 0;
  for (Nanos t = 0; t + kSecond <= result.duration; t += kSecond) {
    worst = std::max(worst, std::abs(shares(result, {"vm", "host"}, t, t + kSecond)[0] - 80.0));
  }
  return worst;
}

// The same over sliding 1-second windows starting every 100 ms.
double worst_sliding_window(const Result& result) {
  double worst = 0;
  for (Nanos t = 0; t + kSecond <= result.duration; t += 100 * kMilli) {
    worst = std::max(worst, std::abs(shares(result, {"vm", "host"}, t, t + kSecond)[0] - 80.0));
  }
  return worst;
}

void run(qos::Policy policy, bool check_windows) {
  Result result = simulate(seed003(policy));
  std::vector<double> share = shares(result, {"vm", "host"}, 0, result.duration);
  double worst = worst_window(result);
  double sliding = worst_sliding_window(result);
  printf("%s: %.2f / %.2f %%, worst 1 s window off by %.2f points (sliding: %.2f)\n",
         std::string(qos::to_string(policy)).c_str(), share[0], share[1], worst, sliding);
  EXPECT_NEAR(share[0], 80.0, 1.0);
  EXPECT_NEAR(share[1], 20.0, 1.0);
  if (check_windows) {
    EXPECT_LE(worst, 5.0);
    EXPECT_LE(sliding, 5.0);
  }
}

TEST(Seed003, Fair) { run(qos::Policy::fair, true); }
TEST(Seed003, RangeBw) { run(qos::Policy::range_bw, true); }
TEST(Seed003, Weight) { run(qos::Policy::weight, false); }
TEST(Seed003, WeightIosize) { run(qos::Policy::weight_iosize, false); }

// The same two devices, but the weight-80 one works in bursts: 1.5 s on,
// 1.5 s off. dm-ioband's refill lets it come back with `carryover` epochs of
// tokens and run ahead; `fair` keeps it within 5 points of 80 % in every
// 1-second window while both are busy (SFQ's bound is one request).
Scenario on_off(qos::Policy policy) {
  Scenario s = seed003(policy);
  s.name = "seed 003 with an on/off group";
  s.clients.erase(s.clients.begin());
  for (Nanos t = kSecond; t < s.duration; t += 3 * kSecond) {
    ClientSpec burst = closed_loop("vm@" + std::to_string(t / kSecond), 0, qos::kDefaultGroup, 128);
    burst.start = t;
    burst.stop = t + 1500 * kMilli;
    s.clients.push_back(burst);
  }
  s.duration = 30 * kSecond;
  return s;
}

void run_on_off(qos::Policy policy, bool check) {
  Scenario scenario = on_off(policy);
  Result result = simulate(scenario);
  // Dispatch shares in 1-second windows inside each on period (the first
  // window starts 100 ms in, when the burst has reached the scheduler).
  double worst = 0;
  double worst_250 = 0;
  for (const ClientSpec& client : scenario.clients) {
    if (client.name == "host") continue;
    const ClientResult& vm = result.client(client.name);
    const ClientResult& host = result.client("host");
    auto dispatched = [](const ClientResult& c, Nanos t0, Nanos t1) {
      return static_cast<double>(std::lower_bound(c.dispatched.begin(), c.dispatched.end(), t1) -
                                 std::lower_bound(c.dispatched.begin(), c.dispatched.end(), t0));
    };
    for (Nanos t = client.start; t + kSecond <= client.stop; t += 50 * kMilli) {
      double a = dispatched(vm, t, t + kSecond);
      double b = dispatched(host, t, t + kSecond);
      worst = std::max(worst, std::abs(100 * a / (a + b) - 80));
    }
    for (Nanos t = client.start; t + 250 * kMilli <= client.stop; t += 50 * kMilli) {
      double a = dispatched(vm, t, t + 250 * kMilli);
      double b = dispatched(host, t, t + 250 * kMilli);
      worst_250 = std::max(worst_250, std::abs(100 * a / (a + b) - 80));
    }
  }
  printf("%s, on/off: worst 1 s window off 80 %% by %.2f points, worst 250 ms window by %.2f\n",
         qos::to_string(policy).data(), worst, worst_250);
  if (check) {
    EXPECT_LE(worst, 5.0);
    EXPECT_LE(worst_250, 5.0);
  }
}

TEST(Seed003OnOff, Fair) { run_on_off(qos::Policy::fair, true); }
TEST(Seed003OnOff, Weight) { run_on_off(qos::Policy::weight, false); }

}  // namespace
}  // namespace ioband::sim
