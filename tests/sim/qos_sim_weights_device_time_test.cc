// Issue 13, item 4 (device time, not request count), in virtual time with
// default settings: at equal weights a 4 KiB random reader and a 1 MiB
// sequential writer each keep 50 +- 5 % of their solo throughput. Both
// depths are deep enough for each alone to fill the storage (knee shape:
// 20 units in service; a 1 MiB request is 8), so half the device's time is
// half of each one's solo rate. The same for other pairs whose requests
// cost the storage differently: 4 KiB random writes (1.66 times a read)
// against random reads, sequential 4 KiB reads (half a random one) against
// random ones, 64 KiB reads against 4 KiB ones.
#include "sim/weights.h"

namespace ioband::sim::weights {
namespace {

constexpr Nanos kDuration = 11 * kSecond;  // 10 s after the warm-up second
constexpr double kTolerance = 5;           // points of the solo rate

Load load(std::uint32_t depth, double read_fraction, std::uint32_t bytes, double sequential) {
  Load l;
  l.depth = depth;
  l.read_fraction = read_fraction;
  l.bytes = bytes;
  l.sequential = sequential;
  return l;
}

TEST(WeightsDeviceTime, EachKeepsHalfOfItsSoloRate) {
  struct Pair {
    Load a, b;
  };
  const Pair pairs[] = {
      // The issue's: a 4 KiB random reader and a 1 MiB sequential writer.
      {load(32, 1, 4 * KiB, 0), load(4, 0, MiB, 1)},
      {load(64, 1, 4 * KiB, 0), load(16, 0, MiB, 1)},
      {load(256, 1, 4 * KiB, 0), load(64, 0, MiB, 1)},
      {load(64, 1, 4 * KiB, 0), load(64, 0, MiB, 1)},
      // Other costs.
      {load(64, 1, 4 * KiB, 0), load(64, 0, 4 * KiB, 0)},      // random reads / random writes
      {load(64, 1, 4 * KiB, 0), load(64, 1, 4 * KiB, 1)},      // random / sequential reads
      {load(64, 1, 4 * KiB, 0), load(32, 1, 64 * KiB, 0)},     // 4 KiB / 64 KiB reads
  };
  std::size_t cells = 0, missed = 0;
  printf("== item 4, equal weights: each keeps 50 +- 5 %% of its solo rate (knee storage, %lld s)\n",
         static_cast<long long>((kDuration - kSecond) / kSecond));
  for (Topology topology : {Topology::devices, Topology::groups}) {
    for (const Pair& pair : pairs) {
      if (topology == Topology::groups && &pair != &pairs[0]) continue;  // the pair in both
      Cell cell;
      cell.topology = topology;
      cell.loads = {pair.a, pair.b};
      cell.duration = kDuration;
      cell.label = "device time";
      Measured m = run(cell, Mode::weighted);
      std::string kept;
      bool pass = true;
      for (std::size_t i = 0; i < 2; ++i) {
        const double k = 100 * m.rate[i] / solo(cell, i);
        kept += (i ? " / " : "") + fixed(k) + "% (" + fixed(m.iops[i], 0) + " IOPS)";
        pass = pass && std::abs(k - 50) <= kTolerance;
      }
      const std::vector<double> requests = {100 * m.iops[0] / (m.iops[0] + m.iops[1]),
                                            100 * m.iops[1] / (m.iops[0] + m.iops[1])};
      const std::string line = std::string(pass ? "PASS" : "MISS") + " item 4 | " + cell.describe() +
                               " | kept of solo " + kept + " (50 +- 5) | device time " +
                               fixed(100 * m.rate[0] / m.total()) + "/" + fixed(100 * m.rate[1] / m.total()) +
                               ", requests " + fixed(requests[0]) + "/" + fixed(requests[1]);
      printf("%s\n", line.c_str());
      fflush(stdout);
      ++cells;
      missed += !pass;
      expect_cell(4, pass, cell);
    }
  }
  printf("== item 4: %zu of %zu cells missed\n", missed, cells);
}

}  // namespace
}  // namespace ioband::sim::weights
