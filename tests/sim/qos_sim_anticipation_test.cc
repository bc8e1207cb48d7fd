// The seed's second experiment (seeds/003): a client with few requests
// outstanding at weight 80 against one with 128 at weight 20. In 2008 the
// shallow one kept 2 % of the storage; through ioband with io_limit 128 on
// the real disk, 11-20 % of what it did alone: its requests were dispatched
// at once, then waited in the storage behind the deep client's. Anticipation
// (src/qos/anticipation.h) keeps the storage's queue short while the heavier
// shallow client is active, including between its requests, and lets the
// deep client have its weight's share of the requests meanwhile, in bursts,
// and beyond that whatever it can use beside the shallow one at no cost to
// it (the allowance: on the flat storage, 15 of its 16 slots).
//
// Storage: elastic (110 us + 18 us per request in service, like this VM's
// disk; see qos_sim_auto_window_test.cc) and flat (16 in parallel, 1 ms). The
// shallow client spends 50 us between a completion and its next request (the
// NBD round trip); the deep one none.
#include <gtest/gtest.h>

#include <string>

#include "sim/simulator.h"

namespace ioband::sim {
namespace {

struct Shape {
  const char* name;
  StorageModel storage;
  double kept_qd1;  // what the shallow client must keep of its solo throughput
  double kept_qd4;
};

// The elastic model charges every request in service 18 us against each
// other's, so the deep client's bursts (anticipation.h) cost the shallow
// client a few percent: one wait behind a burst every kBurst x 4 of its
// requests, and bursts at most 1/20 of the time.
Shape elastic_disk() { return {"elastic", elastic_storage(110 * kMicro, 18 * kMicro, 30 * kMicro), 0.95, 0.93}; }
Shape flat_disk() { return {"flat 16", storage(16, kMilli, 200 * kMicro), 0.95, 0.95}; }

Scenario shallow_vs_deep(const Shape& shape, qos::Policy policy, std::uint32_t depth, std::uint32_t weight,
                         bool with_deep, bool io_limit_auto) {
  Scenario s;
  s.name = "shallow vs deep";
  s.policy = policy;
  s.io_limit = 128;
  s.io_limit_auto = io_limit_auto;
  s.storage = shape.storage;
  s.devices = {0, 1};
  s.groups = {group(0, qos::kDefaultGroup, weight), group(1, qos::kDefaultGroup, 100 - weight)};
  s.clients = {closed_loop("shallow", 0, qos::kDefaultGroup, depth)};
  s.clients.back().think = 50 * kMicro;
  if (with_deep) s.clients.push_back(closed_loop("deep", 1, qos::kDefaultGroup, 128));
  s.duration = 10 * kSecond;
  return s;
}

struct Kept {
  double kept = 0;         // shallow client's completions with the deep one / alone
  double deep_share = 0;   // deep client's share of all completions
};

Kept run(const Shape& shape, qos::Policy policy, std::uint32_t depth, std::uint32_t weight, bool io_limit_auto) {
  Result alone = simulate(shallow_vs_deep(shape, policy, depth, weight, false, io_limit_auto));
  Result shared = simulate(shallow_vs_deep(shape, policy, depth, weight, true, io_limit_auto));
  double solo = static_cast<double>(alone.client("shallow").completed.size());
  double with = static_cast<double>(shared.client("shallow").completed.size());
  double deep = static_cast<double>(shared.client("deep").completed.size());
  printf("%s storage, %s, QD%u at weight %u vs QD128 at %u%s: alone %.0f, with the deep client %.0f (%.1f %%); "
         "deep client %.0f\n",
         shape.name, std::string(qos::to_string(policy)).c_str(), depth, weight, 100 - weight,
         io_limit_auto ? ", io_limit auto" : "", solo, with, 100 * with / solo, deep);
  return {with / solo, deep / (deep + with)};
}

TEST(Anticipation, ShallowHeavyClientKeepsItsThroughput) {
  for (const Shape& shape : {elastic_disk(), flat_disk()}) {
    for (qos::Policy policy : {qos::Policy::fair, qos::Policy::weight, qos::Policy::weight_iosize}) {
      for (std::uint32_t depth : {1u, 4u}) {
        for (bool automatic : {false, true}) {
          Kept k = run(shape, policy, depth, 80, automatic);
          const std::string what = std::string(shape.name) + " " + std::string(qos::to_string(policy)) + " QD" +
                                   std::to_string(depth) + (automatic ? " auto" : "");
          EXPECT_GE(k.kept, depth == 1 ? shape.kept_qd1 : shape.kept_qd4) << what;
          if (depth == 1) {
            // The deep client gets at least its weight's share of the
            // requests, one for every four of the shallow one's; on the flat
            // storage, nearly all the slots the shallow one leaves.
            EXPECT_GE(k.deep_share, 0.18) << what;
            if (std::string(shape.name) == "flat 16") {
              EXPECT_GE(k.deep_share, 0.85) << what;
            }
          } else {
            // QD4 keeps the elastic storage busy by itself: its weight's
            // share would need bursts more than 1/20 of the time, so the
            // deep client gets less -- but not nothing.
            EXPECT_GT(k.deep_share, 0.10) << what;
          }
        }
      }
    }
  }
}

// Equal weights: nothing is held (the shallow client is not heavier), so the
// deep one keeps the storage as without anticipation -- and on elastic
// storage the shallow one is left with little (qos_sim_sync_client_test.cc
// covers equal weights on storage whose depth matches io_limit).
TEST(Anticipation, EqualWeightsHoldNothing) {
  Kept k = run(elastic_disk(), qos::Policy::fair, 1, 50, false);
  EXPECT_GT(k.deep_share, 0.9);
}

// Switching to range-bw (weights mean nothing there) ends the anticipation
// at once: the deep client gets the window back. (On the elastic storage,
// where any request beside the shallow one costs it, the deep one is held
// to little more than its weight's share of the requests before.)
TEST(Anticipation, RangeBwAnticipatesNobody) {
  Scenario s = shallow_vs_deep(elastic_disk(), qos::Policy::fair, 1, 80, true, false);
  s.actions.push_back({5 * kSecond, [](qos::DeviceGroup& g) { ASSERT_TRUE(g.set_policy(qos::Policy::range_bw)); }});
  Result r = simulate(s);
  const ClientResult& deep = r.client("deep");
  double before = static_cast<double>(deep.completions(kSecond, 5 * kSecond)) / 4;
  // The first 10 ms after the switch: the anticipation's own deadline would
  // have held the deep client that long (at least 10 ms).
  double at_once = static_cast<double>(deep.completions(5 * kSecond + 2 * kMilli, 5 * kSecond + 10 * kMilli)) / 0.008;
  printf("deep client: %.0f/s under fair with the shallow one anticipated, %.0f/s in the first 10 ms of range-bw\n",
         before, at_once);
  EXPECT_LT(before, 5'000);
  EXPECT_GT(at_once, 10'000);
}

// The anticipated client goes away: within its deadline the deep one has
// the whole window again (elastic storage, as above).
TEST(Anticipation, AShallowClientThatLeavesReleasesTheStorage) {
  Scenario s = shallow_vs_deep(elastic_disk(), qos::Policy::fair, 1, 80, true, false);
  s.clients[0].stop = 5 * kSecond;
  Result r = simulate(s);
  const ClientResult& deep = r.client("deep");
  double before = static_cast<double>(deep.completions(kSecond, 5 * kSecond)) / 4;
  double after = static_cast<double>(deep.completions(5 * kSecond + 10 * kMilli, 10 * kSecond)) / 4.99;
  printf("deep client: %.0f/s while the shallow one runs, %.0f/s after it left (storage: 53 000/s at 128)\n", before,
         after);
  EXPECT_GT(after, 50'000);
  EXPECT_LT(before, after / 4);
}

// Under tenants (tree.h) the anticipation compares effective weights, the
// groups' shares of the storage, not their own weights within their
// devices. Shallow QD1 client at own weight `shallow_weight` in tenant S,
// deep QD128 client at own weight `deep_weight` in tenant D; each alone in
// its device and tenant, so its effective weight is its tenant's.
Kept run_tree(std::uint32_t shallow_weight, std::uint32_t shallow_tenant, std::uint32_t deep_weight,
              std::uint32_t deep_tenant) {
  const Shape shape = elastic_disk();
  auto scenario = [&](bool with_deep) {
    Scenario s = shallow_vs_deep(shape, qos::Policy::fair, 1, 50, with_deep, true);
    s.groups = {group(0, qos::kDefaultGroup, shallow_weight), group(1, qos::kDefaultGroup, deep_weight)};
    for (ClientSpec& c : s.clients) c.start = kMilli;
    s.actions.push_back({0, [=](qos::DeviceGroup& g) {
                           ASSERT_TRUE(g.add_tenant(1, shallow_tenant));
                           ASSERT_TRUE(g.add_tenant(2, deep_tenant));
                           ASSERT_TRUE(g.set_device_tenant(0, 1));
                           ASSERT_TRUE(g.set_device_tenant(1, 2));
                         }});
    return s;
  };
  Result alone = simulate(scenario(false));
  Result shared = simulate(scenario(true));
  const double solo = static_cast<double>(alone.client("shallow").completed.size());
  const double with = static_cast<double>(shared.client("shallow").completed.size());
  const double deep = static_cast<double>(shared.client("deep").completed.size());
  printf("tenants: QD1 at weight %u in a tenant of %u vs QD128 at weight %u in a tenant of %u: QD1 keeps %.1f %% "
         "of its solo rate; the deep client has %.1f %% of the completions\n",
         shallow_weight, shallow_tenant, deep_weight, deep_tenant, 100 * with / solo, 100 * deep / (deep + with));
  return {with / solo, deep / (deep + with)};
}

TEST(Anticipation, UnderTenantsTheEffectiveWeightsDecide) {
  // The shallow group weighs 10 in its device but its tenant 8000 of 10000:
  // it is the heavier one, and keeps its rate as a flat weight of 80 does.
  const Kept protected_one = run_tree(10, 8000, 1000, 2000);
  EXPECT_GE(protected_one.kept, elastic_disk().kept_qd1);
  // The shallow group weighs 1000 in its device but its tenant 2000 of
  // 10000: the deep group's tenant is the heavier, and is not held back
  // for it (its own weight, 10, would have held it to a tenth of the
  // shallow group's completions).
  const Kept not_held = run_tree(1000, 2000, 10, 8000);
  EXPECT_GT(not_held.deep_share, 0.5);
}

// The lighter deep group's part while the heavier shallow one is active is
// its weight's part of the device time, not of the requests (anticipation.h,
// the credit), up to the bursts' 1/20 of the time when the shallow group
// keeps the storage busy by itself, as a 4-deep reader of 1 MiB does. A
// 64-deep reader of 4 KiB beside it, with the scheduler's model the
// storage's own: 4.3 % of the device time at a weight of 3 in 100 (what the
// allowance adds brings it past 3), 6.3 % at 10 in 100. Counted in requests
// it got 2.4 % at either weight (the disk, docs/weights.md: "A shallow client
// of large requests beside a deep one of small requests").
double small_readers_part(std::uint32_t large_weight, std::uint32_t small_weight) {
  Scenario s;
  s.name = "1 MiB shallow, 4 KiB deep";
  s.policy = qos::Policy::fair;
  s.storage = vm_disk_elastic();
  s.devices = {0, 1};
  s.groups = {group(0, qos::kDefaultGroup, large_weight), group(1, qos::kDefaultGroup, small_weight)};
  s.clients = {closed_loop("large", 0, qos::kDefaultGroup, 4, {1024 * KiB}),
               closed_loop("small", 1, qos::kDefaultGroup, 64)};
  for (ClientSpec& c : s.clients) c.think = 50 * kMicro;
  s.duration = 10 * kSecond;
  // The scheduler's model is the storage's own (a calibration that hit):
  // with the default one a 1 MiB read costs 53 reads of 4 KiB, here 100.
  const qos::DeviceModel model = s.storage.costs;
  s.actions = {{0, [model](qos::DeviceGroup& g) { ASSERT_TRUE(g.set_device_model(model, true)); }}};
  const Result r = simulate(s);
  const double large = r.client("large").device_time(2 * kSecond, s.duration);
  const double small = r.client("small").device_time(2 * kSecond, s.duration);
  printf("weights %u/%u: device time of the 1 MiB reader %.1f %%, of the 4 KiB reader %.1f %%\n", large_weight,
         small_weight, 100 * large / (large + small), 100 * small / (large + small));
  return small / (large + small);
}

TEST(Anticipation, TheLighterGroupsPartIsInDeviceTime) {
  EXPECT_GE(small_readers_part(97, 3), 0.03);
  EXPECT_GE(small_readers_part(90, 10), 0.05);
}

// A heavier shallow client that spends most of its time between requests
// (a 1-deep reader that thinks 5 ms: under 200 requests a second) asks far
// less than its share: it keeps what it does alone, and the deep client at
// weight 20 the rest (issue 13, item 3). The allowance is judged by what
// company costs the shallow client's rate, its think time included: held
// to its weight's part of the shallow client's requests, the deep one kept
// 3.5 % of its solo rate on the elastic storage and 10 % on the flat one
// (64 % and 96.5 % now).
TEST(Anticipation, AHeavierClientThatThinksLongLeavesTheStorageToTheOthers) {
  for (const Shape& shape : {elastic_disk(), flat_disk()}) {
    auto scenario = [&](bool shallow, bool deep) {
      Scenario s = shallow_vs_deep(shape, qos::Policy::fair, 1, 80, deep, true);
      s.clients.front().think = 5 * kMilli;
      if (!shallow) s.clients.erase(s.clients.begin());
      return s;
    };
    const Result both = simulate(scenario(true, true));
    const double thinker = static_cast<double>(both.client("shallow").completions(2 * kSecond, 10 * kSecond));
    const double deep = static_cast<double>(both.client("deep").completions(2 * kSecond, 10 * kSecond));
    const double thinker_solo =
        static_cast<double>(simulate(scenario(true, false)).client("shallow").completions(2 * kSecond, 10 * kSecond));
    const double deep_solo =
        static_cast<double>(simulate(scenario(false, true)).client("deep").completions(2 * kSecond, 10 * kSecond));
    printf("%s storage: the 1-deep client thinking 5 ms at weight 80 keeps %.1f %% of its solo rate, the 128-deep "
           "one at 20 %.1f %%\n",
           shape.name, 100 * thinker / thinker_solo, 100 * deep / deep_solo);
    EXPECT_GE(thinker / thinker_solo, 0.95) << shape.name;
    // Elastic storage charges every request in service against the
    // others: the allowance stops where the thinker would lose 3 %.
    EXPECT_GE(deep / deep_solo, std::string(shape.name) == "elastic" ? 0.5 : 0.9) << shape.name;
  }
}

}  // namespace
}  // namespace ioband::sim
