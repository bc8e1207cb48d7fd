// Issue 13, items 1 and 2 with clients on a busy CPU: the README's demo (two
// 64-deep 4 KiB random read/write clients at weights 80 and 40, as ioband
// devices of one device group) and deep readers, where each client is off
// the CPU for about 1 ms every 10 ms (weights.h: kStallEvery,
// kStallLength). A stalled client sends nothing and reads no replies; when
// it runs again it sends a burst. On the real disk this is the rule, not the
// exception: fio twice and iobandd on 2 cores.
#include "sim/weights.h"

namespace ioband::sim::weights {
namespace {

Cell stalled(Disk disk, Topology topology, std::vector<std::pair<std::uint32_t, std::uint32_t>> clients,
             double read_fraction, std::string label) {
  Cell cell;
  cell.disk = disk;
  cell.topology = topology;
  cell.duration = 6 * kSecond;
  for (auto [depth, weight] : clients) {
    Load load;
    load.depth = depth;
    load.weight = weight;
    load.read_fraction = read_fraction;
    load.stalls = true;
    cell.loads.push_back(load);
  }
  cell.label = std::move(label);
  return cell;
}

TEST(WeightsBusyCpu, SharesHoldWhenClientsStall) {
  std::vector<Cell> cells;
  for (Disk disk : {Disk::knee, Disk::elastic}) {
    cells.push_back(stalled(disk, Topology::devices, {{64, 80}, {64, 40}}, 0.5, "README demo"));
    cells.push_back(stalled(disk, Topology::groups, {{64, 80}, {64, 40}}, 0.5, "README demo as groups"));
    cells.push_back(stalled(disk, Topology::devices, {{16, 80}, {16, 20}}, 1, "80/20 QD16"));
    cells.push_back(stalled(disk, Topology::devices, {{128, 80}, {128, 20}}, 1, "80/20 QD128"));
    cells.push_back(stalled(disk, Topology::devices, {{64, 40}, {64, 20}, {64, 10}}, 0, "40/20/10 QD64 writes"));
  }
  judge_all("items 1 and 3, clients stalled 1 ms every 10 ms", cells);
}

}  // namespace
}  // namespace ioband::sim::weights
