// Issue 13, item 6 (seed 003's low-concurrency client), in virtual time with
// default settings: a 1-deep and a 4-deep client at weight 80, each against
// a 128-deep one at weight 20 (as bench/fairness pairs them), keep >= 90 %
// of their solo throughput. 4 KiB random reads, and the seed's 50/50 reads
// and writes; ioband devices of one device group and groups of one device;
// the knee and the elastic shape of this VM's disk.
#include "sim/weights.h"

namespace ioband::sim::weights {
namespace {

constexpr Nanos kDuration = 11 * kSecond;  // 10 s after the warm-up second
constexpr double kKept = 0.90;

TEST(WeightsLowConcurrency, ShallowHeavyClientKeepsItsThroughput) {
  std::size_t cells = 0, missed = 0;
  printf("== item 6: QD1 or QD4 at weight 80 against QD128 at 20 keeps >= 90 %% of its solo throughput\n");
  for (Disk disk : {Disk::knee, Disk::elastic}) {
    for (Topology topology : {Topology::devices, Topology::groups}) {
      for (double read_fraction : {1.0, 0.5}) {
        if (topology == Topology::groups && read_fraction != 1.0) continue;  // the reads in both
        for (std::uint32_t depth : {1u, 4u}) {
          Cell cell;
          cell.disk = disk;
          cell.topology = topology;
          cell.duration = kDuration;
          cell.label = "low concurrency";
          Load shallow, deep;
          shallow.depth = depth;
          shallow.weight = 80;
          deep.depth = 128;
          deep.weight = 20;
          shallow.read_fraction = deep.read_fraction = read_fraction;
          cell.loads = {shallow, deep};
          Measured m = run(cell, Mode::weighted);
          const double alone = solo(cell, 0);
          const double kept = m.rate[0] / alone;
          const bool pass = kept >= kKept;
          const std::string line = std::string(pass ? "PASS" : "MISS") + " item 6 | " + cell.describe() +
                                   " | shallow kept " + fixed(100 * kept) + "% of solo (>= 90): " +
                                   fixed(m.iops[0], 0) + " of " + fixed(alone / m.rate[0] * m.iops[0], 0) +
                                   " IOPS | deep client " + fixed(m.iops[1], 0) + " IOPS, total " +
                                   fixed(m.total(), 3) + " s/s";
          printf("%s\n", line.c_str());
          fflush(stdout);
          ++cells;
          missed += !pass;
          expect_cell(6, pass, cell);
        }
      }
    }
  }
  printf("== item 6: %zu of %zu cells missed\n", missed, cells);
}

}  // namespace
}  // namespace ioband::sim::weights
