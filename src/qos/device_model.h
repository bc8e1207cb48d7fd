// The device model: what a request costs the storage, in device time.
//
// The math (a linear model, as blk-iocost's): per direction d (read, write)
// the device is described by six figures measured at saturation,
//   bps[d]        bytes per second of large transfers
//   seq_iops[d]   4 KiB requests per second, each continuing the last
//   rand_iops[d]  4 KiB requests per second at random offsets
// from which a request of b bytes costs
//   t(r) = io_ns[d][seq?] + b * byte_ns[d]        nanoseconds of device time
//   byte_ns[d]       = 1e9 / bps[d]
//   io_ns[d][seq]    = max(0, 1e9 / seq_iops[d]  - 4096 * byte_ns[d])
//   io_ns[d][random] = max(0, 1e9 / rand_iops[d] - 4096 * byte_ns[d])
// so that a stream of 4 KiB requests of one kind, at the measured rate,
// costs exactly one second of device time per second, and large transfers
// cost their bytes at the measured bandwidth. FLUSH costs one random write
// with no bytes, TRIM and WRITE_ZEROES one sequential write with no bytes.
//
// `depth` is the storage's knee: the smallest number of requests in flight
// at which it gives (nearly) all the throughput it can; the in-flight
// window starts there.
//
// Pure data and arithmetic: the measurement that fills it lives outside the
// qos layer (io/calibrate), the scheduler only reads it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>

namespace ioband::qos {

enum class OpKind : std::uint8_t { read, write, flush, trim, write_zeroes };

struct DeviceModel {
  double read_bps = 500e6;
  double read_seq_iops = 50'000;
  double read_rand_iops = 25'000;
  double write_bps = 400e6;
  double write_seq_iops = 40'000;
  double write_rand_iops = 20'000;
  std::uint32_t depth = 32;  // the knee
  friend bool operator==(const DeviceModel&, const DeviceModel&) = default;
};

// The model of a device nobody calibrated: a middle-of-the-road SSD. Only
// the ratios between its figures order requests; what the storage shows
// while serving moves both the ratios and the magnitude (model_learner.h).
inline constexpr DeviceModel kDefaultDeviceModel{};

// Sanity bounds: a result outside them cannot be right (a stalled device, a
// cache that answered instead of the storage) and is refused.
inline constexpr double kMinIops = 10;           // a tape would do better
inline constexpr double kMaxIops = 20'000'000;   // beyond any device today
inline constexpr double kMinBps = 100'000;       // 100 kB/s
inline constexpr double kMaxBps = 200e9;         // 200 GB/s
inline constexpr std::uint32_t kMaxModelDepth = 1024;

// Why `model` cannot be right, or nullopt when it can.
inline std::optional<std::string> model_error(const DeviceModel& model) {
  auto iops = [](const char* name, double value) -> std::optional<std::string> {
    if (!std::isfinite(value) || value < kMinIops || value > kMaxIops) {
      return std::string(name) + " must be between " + std::to_string(static_cast<long long>(kMinIops)) +
             " and " + std::to_string(static_cast<long long>(kMaxIops)) + " requests/s, not " +
             std::to_string(value);
    }
    return std::nullopt;
  };
  auto bps = [](const char* name, double value) -> std::optional<std::string> {
    if (!std::isfinite(value) || value < kMinBps || value > kMaxBps) {
      return std::string(name) + " must be between " + std::to_string(static_cast<long long>(kMinBps)) +
             " and " + std::to_string(static_cast<long long>(kMaxBps)) + " bytes/s, not " + std::to_string(value);
    }
    return std::nullopt;
  };
  if (auto e = bps("rbps", model.read_bps)) return e;
  if (auto e = iops("rseqiops", model.read_seq_iops)) return e;
  if (auto e = iops("rrandiops", model.read_rand_iops)) return e;
  if (auto e = bps("wbps", model.write_bps)) return e;
  if (auto e = iops("wseqiops", model.write_seq_iops)) return e;
  if (auto e = iops("wrandiops", model.write_rand_iops)) return e;
  if (model.depth < 1 || model.depth > kMaxModelDepth) {
    return "depth must be between 1 and " + std::to_string(kMaxModelDepth) + ", not " + std::to_string(model.depth);
  }
  return std::nullopt;
}

// Per-request costs in nanoseconds of device time, precomputed from a model.
struct DeviceCosts {
  double byte_ns[2] = {0, 0};    // by direction: read, write
  double io_ns[2][2] = {{0, 0}, {0, 0}};  // [direction][sequential]

  static DeviceCosts of(const DeviceModel& model) noexcept {
    DeviceCosts costs;
    const double bps[2] = {model.read_bps, model.write_bps};
    const double seq[2] = {model.read_seq_iops, model.write_seq_iops};
    const double rnd[2] = {model.read_rand_iops, model.write_rand_iops};
    for (int d = 0; d < 2; ++d) {
      costs.byte_ns[d] = 1e9 / bps[d];
      costs.io_ns[d][1] = std::max(0.0, 1e9 / seq[d] - 4096 * costs.byte_ns[d]);
      costs.io_ns[d][0] = std::max(0.0, 1e9 / rnd[d] - 4096 * costs.byte_ns[d]);
    }
    return costs;
  }

  // Nanoseconds of device time of one request.
  double cost_ns(OpKind op, std::uint32_t bytes, bool sequential) const noexcept {
    switch (op) {
      case OpKind::read: return io_ns[0][sequential] + bytes * byte_ns[0];
      case OpKind::write: return io_ns[1][sequential] + bytes * byte_ns[1];
      case OpKind::flush: return io_ns[1][0];
      case OpKind::trim:
      case OpKind::write_zeroes: return io_ns[1][1];
    }
    return io_ns[0][0];
  }
};

}  // namespace ioband::qos
