// The share rule of cluster tenants (cluster/shares.h) in virtual time:
// nothing sleeps, the clock is a TimePoint moved by hand.
#include "cluster/shares.h"

#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

namespace ioband::cluster {
namespace {

using namespace std::chrono_literals;

double sum(const std::vector<double>& values) { return std::accumulate(values.begin(), values.end(), 0.0); }

TEST(WaterFill, FollowsDemandWhenAllAboveTheFloor) {
  const auto shares = water_fill({1, 2, 5}, 0.1);
  ASSERT_EQ(shares.size(), 3u);
  EXPECT_NEAR(shares[0], 1.0 / 8, 1e-12);
  EXPECT_NEAR(shares[1], 2.0 / 8, 1e-12);
  EXPECT_NEAR(shares[2], 5.0 / 8, 1e-12);
  EXPECT_NEAR(sum(shares), 1, 1e-12);
}

TEST(WaterFill, BusyOnOneNodeGetsMostOfTheLimitThere) {
  const auto shares = water_fill({0, 32, 0}, 0.1);
  EXPECT_NEAR(shares[0], 0.1 / 3, 1e-12);
  EXPECT_NEAR(shares[2], 0.1 / 3, 1e-12);
  EXPECT_NEAR(shares[1], 1 - 0.2 / 3, 1e-12);
  EXPECT_NEAR(sum(shares), 1, 1e-12);
}

TEST(WaterFill, SmallDemandIsRaisedToTheFloorAndTheRestSplitByDemand) {
  // 1 against 100 and 100: proportional would give 0.5 %, under the floor
  // (0.3 / 3 = 10 %); the other two split the remaining 90 % evenly.
  const auto shares = water_fill({1, 100, 100}, 0.3);
  EXPECT_NEAR(shares[0], 0.1, 1e-12);
  EXPECT_NEAR(shares[1], 0.45, 1e-12);
  EXPECT_NEAR(shares[2], 0.45, 1e-12);
}

TEST(WaterFill, NoDemandSplitsEquallyAndBadInputCountsAsZero) {
  const auto idle = water_fill({0, 0, 0, 0}, 0.1);
  for (double share : idle) EXPECT_NEAR(share, 0.25, 1e-12);
  const auto bad = water_fill({-5, std::nan(""), 4}, 0.1);
  EXPECT_NEAR(bad[0], 0.1 / 3, 1e-12);
  EXPECT_NEAR(bad[1], 0.1 / 3, 1e-12);
  EXPECT_NEAR(bad[2], 1 - 0.2 / 3, 1e-12);
  EXPECT_TRUE(water_fill({}, 0.1).empty());
  EXPECT_NEAR(water_fill({7}, 0.1)[0], 1, 1e-12);
}

TEST(WaterFill, SumsToOneForManyShapes) {
  for (int n = 1; n <= 50; ++n) {
    std::vector<double> demands;
    for (int i = 0; i < n; ++i) demands.push_back((i * 37 % 11) * (i % 3 == 0 ? 0.01 : 3.0));
    for (double floor : {0.0, 0.05, 0.1, 0.5, 1.0}) {
      const auto shares = water_fill(demands, floor);
      EXPECT_NEAR(sum(shares), 1, 1e-9) << n << " " << floor;
      for (double share : shares) EXPECT_GE(share, floor / n - 1e-12);
    }
  }
}

TEST(CapacitySplit, ActiveTenantsSplitByWeightAnIdleOneIsToldItsPart) {
  auto parts = capacity_split({{"gold", {200, true}}, {"silver", {100, true}}, {"bronze", {100, false}}});
  EXPECT_NEAR(parts["gold"], 2.0 / 3, 1e-12);
  EXPECT_NEAR(parts["silver"], 1.0 / 3, 1e-12);
  EXPECT_NEAR(parts["bronze"], 0.25, 1e-12);  // as if it came back now: 100 / 400
  parts = capacity_split({{"gold", {200, false}}, {"silver", {100, false}}});
  EXPECT_NEAR(parts["gold"], 1, 1e-12);
  EXPECT_NEAR(parts["silver"], 1, 1e-12);
  EXPECT_TRUE(capacity_split({}).empty());
}

TEST(CapacitySplit, ATenantUsingLessThanItsPartLeavesTheRestToTheOthers) {
  // silver had its weighted third (1000 of 3000 IOPS) and used 100: it is
  // held to 150 (half again as room), gold takes the rest.
  auto parts = capacity_split({{"gold", {200, true, 2000, 2.0 / 3, 0}}, {"silver", {100, true, 100, 1.0 / 3, 0}}}, 3000);
  EXPECT_NEAR(parts["silver"], 150.0 / 3000, 1e-12);
  EXPECT_NEAR(parts["gold"], 1 - 150.0 / 3000, 1e-12);
  // Using most of its part (over kSatisfied) counts as wanting more: by weight.
  parts = capacity_split({{"gold", {200, true, 2000, 2.0 / 3, 0}}, {"silver", {100, true, 900, 1.0 / 3, 0}}}, 3000);
  EXPECT_NEAR(parts["gold"], 2.0 / 3, 1e-12);
  EXPECT_NEAR(parts["silver"], 1.0 / 3, 1e-12);
  // Its own limit caps what gold wants: silver, wanting more, takes the rest.
  parts = capacity_split({{"gold", {200, true, 500, 2.0 / 3, 500}}, {"silver", {100, true, 1000, 1.0 / 3, 0}}}, 3000);
  EXPECT_NEAR(parts["gold"], 500.0 / 3000, 1e-12);
  EXPECT_NEAR(parts["silver"], 1 - 500.0 / 3000, 1e-12);
  // Both satisfied: their wants, and the rest spread by weight (sum 1).
  parts = capacity_split({{"gold", {200, true, 300, 2.0 / 3, 0}}, {"silver", {100, true, 300, 1.0 / 3, 0}}}, 3000);
  EXPECT_NEAR(parts["gold"], 0.15 + 0.7 * 2 / 3, 1e-12);
  EXPECT_NEAR(parts["silver"], 0.15 + 0.7 / 3, 1e-12);
  // No capacity in IOPS, or the last part unknown: by weight alone.
  parts = capacity_split({{"gold", {200, true, 2000, 2.0 / 3, 0}}, {"silver", {100, true, 100, 1.0 / 3, 0}}}, 0);
  EXPECT_NEAR(parts["silver"], 1.0 / 3, 1e-12);
  parts = capacity_split({{"gold", {200, true, 2000, 0, 0}}, {"silver", {100, true, 100, 0, 0}}}, 3000);
  EXPECT_NEAR(parts["silver"], 1.0 / 3, 1e-12);
}

TEST(CapacitySplit, WaterFillsManyTenantsAndAlwaysSumsToOne) {
  // Five tenants of weights 1..5; the two lightest use little, the rest
  // want more: the light ones get their wants, the rest split by weight.
  std::map<std::string, TenantWeight> tenants;
  for (int i = 1; i <= 5; ++i) tenants["t" + std::to_string(i)] = {i * 100.0, true, i <= 2 ? 100.0 : 1e6, 0.2, 0};
  auto parts = capacity_split(tenants, 10000);
  EXPECT_NEAR(parts["t1"], 150.0 / 10000, 1e-12);
  EXPECT_NEAR(parts["t2"], 150.0 / 10000, 1e-12);
  const double rest = 1 - 300.0 / 10000;
  for (int i = 3; i <= 5; ++i) EXPECT_NEAR(parts["t" + std::to_string(i)], rest * i / 12, 1e-12) << i;
  double total = 0;
  for (const auto& [name, part] : parts) total += part;
  EXPECT_NEAR(total, 1, 1e-12);
}

// Tenants sharing a capacity in virtual time: each period a tenant uses
// what its clients ask for up to its part, and the parts are computed from
// that usage, as every node does from the reports it reads.
struct CapacitySim {
  double capacity = 3000;
  std::map<std::string, double> weight, asks;  // asks: IOPS its clients would use (0: idle)
  std::map<std::string, double> parts, usage;
  std::map<std::string, bool> active;

  void period() {
    std::map<std::string, TenantWeight> tenants;
    for (const auto& [name, w] : weight) {
      // A node publishes the part of an active tenant only (an idle one's is
      // only what it was told): a tenant coming back counts as wanting more.
      tenants[name] = {w, asks[name] > 0, usage[name], active[name] ? parts[name] : 0, 0};
      active[name] = asks[name] > 0;
    }
    parts = capacity_split(tenants, capacity);
    double total = 0;
    for (const auto& [name, part] : parts) {
      usage[name] = asks[name] > 0 ? std::min(asks[name], part * capacity) : 0;
      if (asks[name] > 0) total += part;
    }
    EXPECT_LE(total, 1 + 1e-9);  // the active tenants never hold more than the capacity
  }
};

TEST(CapacitySplit, InVirtualTimeUnusedCapacityGoesToTheBusyAndComesBackAtOnce) {
  CapacitySim sim;
  sim.weight = {{"gold", 200}, {"silver", 100}};
  // Both busy: 2:1.
  sim.asks = {{"gold", 1e6}, {"silver", 1e6}};
  for (int i = 0; i < 3; ++i) sim.period();
  EXPECT_NEAR(sim.usage["gold"], 2000, 1e-6);
  EXPECT_NEAR(sim.usage["silver"], 1000, 1e-6);
  // silver's clients slow to 200 IOPS: within two periods gold has all but
  // silver's 200 and its room (half again).
  sim.asks["silver"] = 200;
  sim.period();
  sim.period();
  EXPECT_NEAR(sim.usage["silver"], 200, 1e-6);
  EXPECT_NEAR(sim.usage["gold"], 3000 - 300, 1e-6);
  // silver idle: gold has the whole capacity; silver is told its third.
  sim.asks["silver"] = 0;
  sim.period();
  EXPECT_NEAR(sim.usage["gold"], 3000, 1e-6);
  EXPECT_NEAR(sim.parts["silver"], 1.0 / 3, 1e-12);
  // silver back at 200 IOPS: its part is not known, so it has its third at
  // once, and is held to 300 from the next period.
  sim.asks["silver"] = 200;
  sim.period();
  EXPECT_NEAR(sim.parts["silver"], 1.0 / 3, 1e-12);
  sim.period();
  EXPECT_NEAR(sim.usage["gold"], 3000 - 300, 1e-6);
  // silver wants more: back to 2:1 within two periods (one to use its part
  // up to kSatisfied, one to be seen wanting more).
  sim.asks["silver"] = 1e6;
  int periods = 0;
  while (sim.usage["silver"] < 1000 - 1e-6 && periods < 10) {
    sim.period();
    ++periods;
  }
  EXPECT_LE(periods, 2);
  EXPECT_NEAR(sim.usage["gold"], 2000, 1e-6);
  EXPECT_NEAR(sim.usage["silver"], 1000, 1e-6);
}

// A cluster of nodes publishing reports; the test moves the clock.
struct Cluster {
  TimePoint now{};
  std::map<std::string, NodeReport> store;  // what the store holds

  void publish(const std::string& node, double demand, double usage = 0, const std::string& tenant = "acme") {
    NodeReport& report = store[node];
    report.node = node;
    ++report.sequence;
    report.tenants[tenant] = TenantLoad{demand, usage, 0};
  }
  std::vector<NodeReport> reports() const {
    std::vector<NodeReport> out;
    for (const auto& [name, report] : store) out.push_back(report);
    return out;
  }
};

ShareOptions options() {
  ShareOptions o;
  o.lease = 2s;
  o.fallback = 10s;
  o.floor = 0.1;
  return o;
}

NodeReport own(const std::string& node, double demand) {
  NodeReport report;
  report.node = node;
  report.tenants["acme"] = TenantLoad{demand, 0, 0};
  return report;
}

TEST(ClusterView, BeforeTheFirstReadANodeTakesTheFloor) {
  ClusterView view("a", options());
  const TimePoint t0{};
  EXPECT_EQ(view.mode(t0), ShareMode::alone);
  EXPECT_NEAR(view.share(t0, "acme").share, 0.1, 1e-12);
}

TEST(ClusterView, SharesFollowDemandAndNodesJoin) {
  Cluster cluster;
  ClusterView a("a", options());
  cluster.publish("a", 4);
  a.observed(cluster.now, cluster.reports(), own("a", 4));
  EXPECT_EQ(a.mode(cluster.now), ShareMode::live);
  EXPECT_NEAR(a.share(cluster.now, "acme").share, 1, 1e-12);  // alone in the cluster

  // b joins with the same demand: half each.
  cluster.now += 250ms;
  cluster.publish("a", 4);
  cluster.publish("b", 4);
  a.observed(cluster.now, cluster.reports(), own("a", 4));
  EXPECT_NEAR(a.share(cluster.now, "acme").share, 0.5, 1e-12);
  EXPECT_EQ(a.share(cluster.now, "acme").nodes, 2u);

  // c joins with 5 against 1 and 2.
  cluster.now += 250ms;
  cluster.publish("a", 1, 100);
  cluster.publish("b", 2, 200);
  cluster.publish("c", 5, 500);
  a.observed(cluster.now, cluster.reports(), own("a", 1));
  const TenantShare share = a.share(cluster.now, "acme");
  EXPECT_NEAR(share.share, 1.0 / 8, 1e-12);
  EXPECT_NEAR(share.cluster_usage, 800, 1e-9);
  EXPECT_NEAR(share.cluster_demand, 8, 1e-9);
  EXPECT_NEAR(a.shares().at("acme").at("c"), 5.0 / 8, 1e-12);
}

TEST(ClusterView, AllNodesComputeTheSameSharesFromOneRead) {
  Cluster cluster;
  cluster.publish("a", 3);
  cluster.publish("b", 1);
  cluster.publish("c", 0);
  double total = 0;
  for (const std::string name : {"a", "b", "c"}) {
    ClusterView view(name, options());
    view.observed(cluster.now, cluster.reports(), own(name, 99));  // its own as published, not as now
    total += view.share(cluster.now, "acme").share;
  }
  EXPECT_NEAR(total, 1, 1e-12);
}

TEST(ClusterView, ANodeThatLeavesGivesItsShareToTheOthers) {
  Cluster cluster;
  ClusterView a("a", options());
  cluster.publish("a", 2);
  cluster.publish("b", 2);
  a.observed(cluster.now, cluster.reports(), own("a", 2));
  EXPECT_NEAR(a.share(cluster.now, "acme").share, 0.5, 1e-12);
  // b's lease expired: its key is gone from the store.
  cluster.store.erase("b");
  cluster.now += 250ms;
  cluster.publish("a", 2);
  a.observed(cluster.now, cluster.reports(), own("a", 2));
  EXPECT_NEAR(a.share(cluster.now, "acme").share, 1, 1e-12);
  EXPECT_EQ(a.live_nodes(), std::vector<std::string>{"a"});
}

TEST(ClusterView, AReportThatStopsMovingExpiresAfterTheLease) {
  Cluster cluster;
  ClusterView a("a", options());
  cluster.publish("a", 2);
  cluster.publish("b", 2);
  a.observed(cluster.now, cluster.reports(), own("a", 2));
  // b stops publishing (kill -9) but its key is still in the store until
  // the store expires its lease: it counts until it has not moved for 2 s.
  for (int step = 1; step <= 7; ++step) {
    cluster.now += 250ms;
    cluster.publish("a", 2);
    a.observed(cluster.now, cluster.reports(), own("a", 2));
    EXPECT_NEAR(a.share(cluster.now, "acme").share, 0.5, 1e-12) << step;
  }
  cluster.now += 250ms;  // 2 s since b last moved
  cluster.publish("a", 2);
  a.observed(cluster.now, cluster.reports(), own("a", 2));
  EXPECT_NEAR(a.share(cluster.now, "acme").share, 1, 1e-12);
  // It comes back (a restart publishes again): counted again at once.
  cluster.now += 250ms;
  cluster.publish("a", 2);
  cluster.publish("b", 2);
  a.observed(cluster.now, cluster.reports(), own("a", 2));
  EXPECT_NEAR(a.share(cluster.now, "acme").share, 0.5, 1e-12);
}

TEST(ClusterView, UnreachableHoldsTheLastSharesThenSplitsEquallyThenRejoins) {
  Cluster cluster;
  ClusterView a("a", options());
  cluster.publish("a", 1);
  cluster.publish("b", 3);
  cluster.publish("c", 0, 0, "other");  // serves another tenant only
  a.observed(cluster.now, cluster.reports(), own("a", 1));
  EXPECT_NEAR(a.share(cluster.now, "acme").share, 0.25, 1e-12);
  const TimePoint last = cluster.now;

  cluster.now += 250ms;
  a.unreachable(cluster.now);
  EXPECT_EQ(a.mode(cluster.now), ShareMode::fail_static);
  cluster.now = last + 9999ms;
  a.unreachable(cluster.now);
  EXPECT_EQ(a.mode(cluster.now), ShareMode::fail_static);
  EXPECT_NEAR(a.share(cluster.now, "acme").share, 0.25, 1e-12);
  cluster.now = last + 10s;  // fallback, counted from the last success
  EXPECT_EQ(a.mode(cluster.now), ShareMode::equal_split);
  // The nodes it last saw taking part in acme: a and b (not c).
  EXPECT_NEAR(a.share(cluster.now, "acme").share, 0.5, 1e-12);
  // A tenant a took on since: c and a.
  EXPECT_NEAR(a.share(cluster.now, "other").share, 0.5, 1e-12);

  // The store answers again: shares from demand at once, no restart.
  cluster.now += 20s;
  cluster.publish("a", 1);
  cluster.publish("b", 1);
  cluster.publish("c", 0, 0, "other");
  a.observed(cluster.now, cluster.reports(), own("a", 1));
  EXPECT_EQ(a.mode(cluster.now), ShareMode::live);
  EXPECT_NEAR(a.share(cluster.now, "acme").share, 0.5, 1e-12);
}

TEST(ClusterView, NeverReachedFallsBackToItselfAfterTheFallback) {
  ClusterView a("a", options());
  TimePoint now{};
  a.unreachable(now);
  EXPECT_EQ(a.mode(now), ShareMode::alone);
  EXPECT_NEAR(a.share(now, "acme").share, 0.1, 1e-12);
  now += 10s;
  EXPECT_EQ(a.mode(now), ShareMode::equal_split);
  EXPECT_NEAR(a.share(now, "acme").share, 1, 1e-12);
}

TEST(ClusterView, OwnReportStandsInUntilPublished) {
  Cluster cluster;
  cluster.publish("b", 1);
  ClusterView a("a", options());
  a.observed(cluster.now, cluster.reports(), own("a", 3));
  EXPECT_NEAR(a.share(cluster.now, "acme").share, 0.75, 1e-12);
  // A tenant a took on after the read: 1 / (nodes seen) until counted.
  EXPECT_NEAR(a.share(cluster.now, "new").share, 0.5, 1e-12);
}

}  // namespace
}  // namespace ioband::cluster
