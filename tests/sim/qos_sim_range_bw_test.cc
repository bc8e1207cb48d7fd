// range-bw: a group's min-bw is reserved whatever the weights, max-bw caps a
// group (max alone allowed), and the rest is shared by weight.
#include <gtest/gtest.h>

#include "sim/simulator.h"

namespace ioband::sim {
namespace {

TEST(RangeBw, MinReservedMaxCapped) {
  Scenario s;
  s.name = "range-bw";
  s.policy = qos::Policy::range_bw;
  // 16 in parallel, 1 ms + transfer at 200 MB/s: about 160 MiB/s of 64 KiB requests.
  s.storage = storage(16, kMilli, 0, 200e6);
  s.io_limit = 16;
  s.io_limit_auto = false;  // a fixed window, as written (io_limit auto is the default now)
  s.devices = {0};
  GroupSpec reserved = group(0, 1, 10);  // tiny weight, but 40 MiB/s reserved
  reserved.range = qos::RangeBw{40 * 1024, 0};
  GroupSpec capped = group(0, 2, 1000);  // huge weight, capped at 10 MiB/s
  capped.range = qos::RangeBw{0, 10 * 1024};
  GroupSpec ranged = group(0, 3, 10);    // between 20 and 30 MiB/s
  ranged.range = qos::RangeBw{20 * 1024, 30 * 1024};
  GroupSpec plain = group(0, 4, 1000);
  s.groups = {reserved, capped, ranged, plain};
  for (GroupId id = 1; id <= 4; ++id) s.clients.push_back(closed_loop("g" + std::to_string(id), 0, id, 64, {64 * KiB}));
  s.duration = 30 * kSecond;
  Result result = simulate(s);
  auto mib_per_s = [&](const std::string& name) {
    return static_cast<double>(result.client(name).bytes(kSecond, s.duration)) / MiB / 29.0;
  };
  double total = mib_per_s("g1") + mib_per_s("g2") + mib_per_s("g3") + mib_per_s("g4");
  printf("range-bw: min 40: %.1f MiB/s, max 10: %.1f, 20..30: %.1f, weight only: %.1f (total %.1f), utilization %.3f\n",
         mib_per_s("g1"), mib_per_s("g2"), mib_per_s("g3"), mib_per_s("g4"), total,
         result.utilization(kSecond, s.duration));
  for (const ClientResult& c : result.clients) {
    printf("  %s: below-throttle %llu, reservation %llu, spare %llu\n", c.name.c_str(),
           static_cast<unsigned long long>(c.by_rule[0]), static_cast<unsigned long long>(c.by_rule[3]),
           static_cast<unsigned long long>(c.by_rule[4]));
  }
  EXPECT_GE(mib_per_s("g1"), 40 * 0.99);
  EXPECT_LE(mib_per_s("g2"), 10 * 1.01);
  EXPECT_GE(mib_per_s("g2"), 10 * 0.99);
  EXPECT_GE(mib_per_s("g3"), 20 * 0.99);
  EXPECT_LE(mib_per_s("g3"), 30 * 1.01);
  EXPECT_GE(result.utilization(kSecond, s.duration), 0.98);
}

}  // namespace
}  // namespace ioband::sim
