// Issue 13, item 2 (work conservation), in virtual time with default
// settings: fairness costs no throughput. The total (device time per
// second) of the clients under unequal weights must be >= 0.95 x the same
// clients at equal weights and >= 0.95 x the same clients on plain exports
// (no ioband: requests straight to the storage); inside a device limit, >=
// 0.95 x the limit. And share a group leaves unused goes to the groups that
// want it: when it stops, the others share the whole device by weight.
#include "sim/weights.h"

namespace ioband::sim::weights {
namespace {

constexpr Nanos kDuration = 6 * kSecond;  // 5 s after the warm-up second
constexpr double kKept = 0.95;

Load closed(std::uint32_t depth, std::uint32_t weight, double read_fraction = 1) {
  Load load;
  load.depth = depth;
  load.weight = weight;
  load.read_fraction = read_fraction;
  return load;
}

Cell cell_of(Disk disk, Topology topology, std::vector<Load> loads, std::string label) {
  Cell cell;
  cell.disk = disk;
  cell.topology = topology;
  cell.loads = std::move(loads);
  cell.duration = kDuration;
  cell.label = std::move(label);
  return cell;
}

// One line per cell: totals under the weights, at equal weights, on plain
// exports, and whether both ratios hold.
void conserve(const char* title, const std::vector<Cell>& cells) {
  printf("== %s: %zu cells (total device time per second; W weights, E equal weights, P plain exports)\n", title,
         cells.size());
  std::size_t missed = 0;
  for (const Cell& cell : cells) {
    const double weighted = run(cell, Mode::weighted).total();
    const double equal = run(cell, Mode::equal_weights).total();
    double reference = 0;
    std::string against;
    if (cell.device_limit) {
      reference = capacity(cell);
      against = "limit " + fixed(reference, 3);
    } else {
      reference = run(cell, Mode::plain).total();
      against = "P " + fixed(reference, 3);
    }
    const bool pass = weighted >= kKept * equal && weighted >= kKept * reference;
    const std::string line = std::string(pass ? "PASS" : "MISS") + " item 2 | " + cell.describe() + " | W " +
                             fixed(weighted, 3) + " E " + fixed(equal, 3) + " " + against + " | W/E " +
                             fixed(weighted / equal, 3) + " W/" + (cell.device_limit ? "limit " : "P ") +
                             fixed(weighted / reference, 3) + " (>= 0.95)";
    printf("%s\n", line.c_str());
    fflush(stdout);
    missed += !pass;
    expect_cell(2, pass, cell);
  }
  printf("== %s: %zu of %zu cells missed\n", title, missed, cells.size());
}

TEST(WeightsWorkConserving, TotalsHold) {
  std::vector<Cell> cells;
  for (Disk disk : {Disk::knee, Disk::elastic}) {
    // The issue's: two 64-deep 4 KiB random readers at 80/20.
    cells.push_back(cell_of(disk, Topology::devices, {closed(64, 80), closed(64, 20)}, "issue"));
    cells.push_back(cell_of(disk, Topology::groups, {closed(64, 80), closed(64, 20)}, "issue"));
    // More groups, deeper and shallower; writes and a 50/50 mix.
    cells.push_back(cell_of(disk, Topology::devices, {closed(16, 40), closed(16, 20), closed(16, 10)}, "3 groups"));
    std::vector<Load> eight;
    for (std::uint32_t w : weights_for(8)) eight.push_back(closed(256, w));
    cells.push_back(cell_of(disk, Topology::devices, eight, "8 groups"));
    cells.push_back(cell_of(disk, Topology::devices,
                            {closed(64, 40, 0), closed(64, 30, 0), closed(64, 20, 0), closed(64, 10, 0)}, "writes"));
    cells.push_back(cell_of(disk, Topology::devices, {closed(128, 80, 0.5), closed(128, 20, 0.5)}, "mix"));
    // Unequal depths, both ways.
    cells.push_back(cell_of(disk, Topology::devices, {closed(16, 80), closed(256, 20)}, "shallow heavy"));
    cells.push_back(cell_of(disk, Topology::devices, {closed(256, 80), closed(16, 20)}, "deep heavy"));
    cells.push_back(cell_of(disk, Topology::devices, {closed(1, 80), closed(128, 20)}, "1-deep heavy"));
    cells.push_back(cell_of(disk, Topology::groups, {closed(1, 80), closed(128, 20)}, "1-deep heavy"));
    cells.push_back(cell_of(disk, Topology::devices, {closed(4, 80), closed(128, 20)}, "4-deep heavy"));
  }
  // Inside the 3000 IOPS device limit (groups of one device): the issue's
  // 2-deep client at 80 against a 16-deep one at 20, both ways.
  for (bool heavy_shallow : {true, false}) {
    Cell cell = cell_of(Disk::knee, Topology::groups,
                        {closed(heavy_shallow ? 2 : 16, 80), closed(heavy_shallow ? 16 : 2, 20)}, "in a limit");
    cell.device_limit = iops_limit(3000);
    cells.push_back(cell);
  }
  conserve("item 2, work conservation", cells);
}

// A group goes away halfway: from then on the others have the whole device
// (>= 0.95 x the same two on plain exports) and split it by weight (60/40
// within 2 points); before, the three split it 50/30/20.
TEST(WeightsWorkConserving, UnusedShareGoesToTheOthers) {
  printf("== item 2, unused share: 50/30/20 at 64 deep each, the first stops at 4 s of 8\n");
  for (Disk disk : {Disk::knee, Disk::elastic}) {
    for (Topology topology : {Topology::devices, Topology::groups}) {
      Cell cell = cell_of(disk, topology, {closed(64, 50), closed(64, 30), closed(64, 20)}, "unused share");
      cell.duration = 8 * kSecond;
      cell.loads[0].stop = 4 * kSecond;
      Result result = simulate(build(cell, Mode::weighted));
      Cell two = cell;
      two.loads.erase(two.loads.begin());
      Result plain = simulate(build(two, Mode::plain));
      auto rate = [](const Result& r, const char* name, Nanos t0, Nanos t1) {
        return r.client(name).device_time(t0, t1) / static_cast<double>(t1 - t0);
      };
      const Nanos t0 = 5 * kSecond, t1 = cell.duration;  // a second after the stop
      const double after = rate(result, "c1", t0, t1) + rate(result, "c2", t0, t1);
      const double plain_total = rate(plain, "c0", t0, t1) + rate(plain, "c1", t0, t1);
      const std::vector<double> before = device_time_shares(result, {"c0", "c1", "c2"}, kSecond, 4 * kSecond);
      const std::vector<double> split = device_time_shares(result, {"c1", "c2"}, t0, t1);
      const bool pass = after >= kKept * plain_total && std::abs(split[0] - 60) <= kRunTolerance &&
                        std::abs(before[0] - 50) <= kRunTolerance && std::abs(before[1] - 30) <= kRunTolerance;
      const std::string line = std::string(pass ? "PASS" : "MISS") + " item 2 | " + cell.describe() + " | before " +
                               fixed(before[0]) + "/" + fixed(before[1]) + "/" + fixed(before[2]) +
                               " (50/30/20) | after: total " + fixed(after, 3) + " of P " + fixed(plain_total, 3) +
                               " (" + fixed(after / plain_total, 3) + ", >= 0.95), split " + fixed(split[0]) + "/" +
                               fixed(split[1]) + " (60/40 +-2)";
      printf("%s\n", line.c_str());
      expect_cell(2, pass, cell);
    }
  }
}

}  // namespace
}  // namespace ioband::sim::weights
