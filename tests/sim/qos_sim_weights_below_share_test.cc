// Issue 13, item 3 (demand below share), in virtual time with default
// settings: a group asking less than its share gets >= 95 % of what it does
// alone, and the others split the rest by weight (+-2 points of their own
// total). Asking less: a shallow client at a high weight against deep ones,
// a client that issues at a fixed rate, a group held by its own limit.
// Judged as weights.h says; a cell whose groups all turn out to ask more
// than their share is judged by item 1 and says so.
//
// Storage: this VM's disk in the knee shape (below the knee a request's
// latency does not depend on the others in service, so a shallow client
// can keep its solo rate while deep ones fill the rest) and in the elastic
// shape (every request in service slows the others: keeping the shallow
// client's rate means holding the deep ones back).
#include "sim/weights.h"

namespace ioband::sim::weights {
namespace {

constexpr Nanos kDuration = 6 * kSecond;  // 5 s after the warm-up second

Load closed(std::uint32_t depth, std::uint32_t weight) {
  Load load;
  load.depth = depth;
  load.weight = weight;
  return load;
}

Load at_rate(double rate, std::uint32_t weight) {
  Load load;
  load.rate = rate;
  load.weight = weight;
  return load;
}

std::vector<Cell> cells_on(Disk disk, std::vector<Topology> topologies) {
  const std::vector<std::vector<Load>> sets = {
      // A 1-deep client at a high weight against deep ones.
      {closed(1, 80), closed(64, 20)},
      {closed(1, 70), closed(128, 20), closed(64, 10)},
      {closed(1, 90), closed(16, 6), closed(256, 3), closed(64, 1)},
      // 2- and 4-deep.
      {closed(2, 80), closed(128, 20)},
      {closed(4, 60), closed(64, 30), closed(64, 10)},
      // A client at a fixed rate (Poisson), below its share.
      {at_rate(5000, 50), closed(64, 30), closed(64, 20)},
      {at_rate(20000, 60), closed(256, 30), closed(16, 10)},
  };
  std::vector<Cell> cells;
  for (Topology topology : topologies) {
    for (const std::vector<Load>& loads : sets) {
      Cell cell;
      cell.disk = disk;
      cell.topology = topology;
      cell.loads = loads;
      cell.duration = kDuration;
      cell.label = "below share";
      cells.push_back(cell);
    }
    // A group held below its share by its own limit (10k IOPS of a 60k
    // device at weight 50); the others split the rest 60/40.
    Cell limited;
    limited.disk = disk;
    limited.topology = topology;
    limited.loads = {closed(64, 50), closed(64, 30), closed(64, 20)};
    limited.loads[0].limits = iops_limit(10'000);
    limited.duration = kDuration;
    limited.label = "limited below share";
    cells.push_back(limited);
  }
  return cells;
}

TEST(WeightsBelowShare, KneeStorage) {
  judge_all("item 3, knee storage", cells_on(Disk::knee, {Topology::devices, Topology::groups}));
}
TEST(WeightsBelowShare, ElasticStorage) {
  judge_all("item 3, elastic storage", cells_on(Disk::elastic, {Topology::devices}));
}

}  // namespace
}  // namespace ioband::sim::weights
