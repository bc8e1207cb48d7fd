// Issue 13, item 1 (shares), in virtual time with default settings: when
// every group has more demand than its share, its share of the device (in
// device time) is its weight's within +-2 points over the run and +-5 in
// every 1 s window -- for 2 to 8 groups; client depths 1 to 256; reads,
// writes and mixes; on a saturated device, inside a device limit and inside
// group limits; as ioband devices of one device group and as groups of one
// device. Cells where some group asks less than its share are judged by
// item 3 instead (weights.h), and say so in their line.
//
// The storage is this VM's disk in the knee shape (vm_disk_knee(): flat
// from 20 in service on, 60.6k 4 KiB reads a second); clients spend 50 us
// per request of their own. The bulk of the matrix runs 4 s (3 s measured
// after a warm-up second); the issue's own cases run 60 s.
#include "sim/weights.h"

namespace ioband::sim::weights {
namespace {

constexpr std::uint32_t kDepths[] = {1, 2, 4, 16, 64, 128, 256};
constexpr Nanos kShort = 4 * kSecond;
constexpr Nanos kLong = 61 * kSecond;  // 60 s after the warm-up second

Cell same_depth(Topology topology, std::size_t groups, std::uint32_t depth, double read_fraction = 1,
                Nanos duration = kShort) {
  Cell cell;
  cell.topology = topology;
  cell.duration = duration;
  for (std::uint32_t weight : weights_for(groups)) {
    Load load;
    load.depth = depth;
    load.weight = weight;
    load.read_fraction = read_fraction;
    cell.loads.push_back(load);
  }
  cell.label = std::to_string(groups) + " groups at QD" + std::to_string(depth);
  return cell;
}

// Every group count and depth, all groups at one depth, 4 KiB random reads.
TEST(WeightsShares, OneDepthAsDevices) {
  std::vector<Cell> cells;
  for (std::uint32_t depth : kDepths) {
    for (std::size_t groups = 2; groups <= 8; ++groups) cells.push_back(same_depth(Topology::devices, groups, depth));
  }
  judge_all("item 1, saturated device, ioband devices of one device group", cells);
}

TEST(WeightsShares, OneDepthAsGroupsOfOneDevice) {
  std::vector<Cell> cells;
  for (std::uint32_t depth : kDepths) {
    for (std::size_t groups : {2u, 8u}) cells.push_back(same_depth(Topology::groups, groups, depth));
  }
  judge_all("item 1, saturated device, groups of one device", cells);
}

// Writes, 50/50 mixes, and readers against writers (by device time: a
// write costs the storage 1.66 times a read).
TEST(WeightsShares, WritesAndMixes) {
  std::vector<Cell> cells;
  auto add = [&](Topology topology, std::size_t groups, std::uint32_t depth) {
    cells.push_back(same_depth(topology, groups, depth, 0.0));
    cells.push_back(same_depth(topology, groups, depth, 0.5));
    Cell split = same_depth(topology, groups, depth);  // groups 1, 3, ... write, 2, 4, ... read
    for (std::size_t i = 0; i < split.loads.size(); i += 2) split.loads[i].read_fraction = 0;
    cells.push_back(split);
  };
  for (std::size_t groups : {2u, 4u, 8u}) {
    for (std::uint32_t depth : {16u, 256u}) add(Topology::devices, groups, depth);
  }
  add(Topology::groups, 4, 64);

  judge_all("item 1, writes and mixes", cells);
}

// Inside a device limit of 3000 IOPS (groups of one device): now even
// shallow clients have more demand than their share.
TEST(WeightsShares, InsideADeviceLimit) {
  std::vector<Cell> cells;
  for (std::uint32_t depth : kDepths) {
    for (std::size_t groups = 2; groups <= 8; ++groups) {
      Cell cell = same_depth(Topology::groups, groups, depth, 1, 10 * kSecond);
      cell.device_limit = iops_limit(3000);
      cells.push_back(cell);
    }
  }
  judge_all("item 1, inside a 3000 IOPS device limit", cells);
}

// Inside group limits: every group limited, the limits together more than
// the device; a group limited below its share keeps its limit and the
// others split the rest by weight.
TEST(WeightsShares, InsideGroupLimits) {
  std::vector<Cell> cells;
  for (Topology topology : {Topology::devices, Topology::groups}) {
    for (std::uint32_t depth : {4u, 16u, 256u}) {
      // 80/20, each limited to 40k IOPS: the heavy one at its limit, the light one takes the rest.
      Cell two = same_depth(topology, 2, depth);
      for (Load& load : two.loads) load.limits = iops_limit(40'000);
      cells.push_back(two);
      // 40/20/10, each limited to 30k IOPS: nobody's limit binds below its share but the heaviest's.
      Cell three = same_depth(topology, 3, depth);
      for (Load& load : three.loads) load.limits = iops_limit(30'000);
      cells.push_back(three);
      // 40/30/20/10, the heaviest limited to 5k IOPS.
      Cell four = same_depth(topology, 4, depth);
      four.loads.front().limits = iops_limit(5'000);
      cells.push_back(four);
    }
  }
  judge_all("item 1, inside group limits", cells);
}

// Unequal depths, both ways: a heavy shallow group against a light deep one
// and the reverse, on the saturated device and inside the device limit.
TEST(WeightsShares, UnequalDepthsBothWays) {
  const std::pair<std::uint32_t, std::uint32_t> pairs[] = {{1, 16}, {2, 16}, {4, 64}, {16, 256}, {2, 128}, {64, 256}};
  std::vector<Cell> cells;
  for (Topology topology : {Topology::devices, Topology::groups}) {
    for (bool limited : {false, true}) {
      if (limited && topology == Topology::devices) continue;  // a device limit holds the groups of one device
      for (auto [shallow, deep] : pairs) {
        for (bool heavy_shallow : {true, false}) {
          Cell cell = same_depth(topology, 2, 0, 1, limited ? 10 * kSecond : kShort);
          cell.loads[0].depth = heavy_shallow ? shallow : deep;
          cell.loads[1].depth = heavy_shallow ? deep : shallow;
          if (limited) cell.device_limit = iops_limit(3000);
          cell.label = "unequal depths";
          cells.push_back(cell);
        }
      }
    }
  }
  judge_all("item 1, unequal depths", cells);
}

// The elastic shape of the disk (its rate keeps rising with depth): the
// capacity is what the clients get together on plain exports.
TEST(WeightsShares, ElasticStorage) {
  std::vector<Cell> cells;
  for (std::size_t groups : {2u, 3u, 8u}) {
    for (std::uint32_t depth : {16u, 64u, 256u}) {
      Cell cell = same_depth(Topology::devices, groups, depth);
      cell.disk = Disk::elastic;
      cells.push_back(cell);
    }
  }
  judge_all("item 1, elastic storage", cells);
}

// Shallow clients only, on the elastic shape (every request in service
// slows the others, as on this disk): nothing is ever queued in iobandd, so
// the order has nothing to act on; the lighter groups are held to their
// weight's part of the heaviest one's device time (anticipation.h, "lighter
// shallow groups"). Before that, 8 clients 4 deep split 12.5 % each.
TEST(WeightsShares, ShallowClientsOnElasticStorage) {
  std::vector<Cell> cells;
  for (Topology topology : {Topology::devices, Topology::groups}) {
    Cell cell = same_depth(topology, 8, 4);
    cell.disk = Disk::elastic;
    cells.push_back(cell);
  }
  judge_all("item 1, shallow clients, elastic storage", cells);
}

// The cases over 60 s: a 2-deep client at weight 80 against a
// 16-deep one at 20 inside a 3000 IOPS device limit (the deep one got 4.4 %
// instead of 20 % on the real disk) and reversed; two 64-deep readers at
// 80/20; dm-ioband's 40/20/10 at 128 deep with 50/50 reads and writes; 8
// groups of one device at 256 deep; 80/20 through slow-downs of the storage.
TEST(WeightsShares, SixtySeconds) {
  std::vector<Cell> cells;
  for (bool heavy_shallow : {true, false}) {
    Cell cell = same_depth(Topology::groups, 2, 0, 1, kLong);
    cell.loads[0].depth = heavy_shallow ? 2 : 16;
    cell.loads[1].depth = heavy_shallow ? 16 : 2;
    cell.device_limit = iops_limit(3000);
    cells.push_back(cell);
  }
  cells.push_back(same_depth(Topology::devices, 2, 64, 1, kLong));
  cells.push_back(same_depth(Topology::devices, 3, 128, 0.5, kLong));
  cells.push_back(same_depth(Topology::groups, 8, 256, 1, kLong));
  // Two 64-deep readers at 80/20 while load from outside slows the storage
  // down: half speed for 10 s, 0.7 for 5 s; the shares hold in every second.
  Cell slowed = same_depth(Topology::groups, 2, 64, 1, kLong);
  slowed.slowdowns = {{20 * kSecond, 30 * kSecond, 0.5}, {40 * kSecond, 45 * kSecond, 0.7}};
  cells.push_back(slowed);
  judge_all("item 1, the issue's cases over 60 s", cells);
}

}  // namespace
}  // namespace ioband::sim::weights
