#include "qos/limits.h"

#include <array>
#include <utility>

namespace ioband::qos {

namespace {

// Bounds that keep every bucket level within 64 bits (token_bucket.cc):
// iops in 1/1024 units: 2^30 * 2^10 * 86400 < 2^58; bytes: 2^40 * 86400 < 2^57.
constexpr std::uint64_t kMaxIops = std::uint64_t{1} << 30;      // ~1e9 requests/s
constexpr std::uint64_t kMaxBps = std::uint64_t{1} << 40;       // 1 TiB/s
constexpr std::uint64_t kMaxMaxLength = 86'400;                 // one day, in seconds
constexpr std::uint64_t kMaxIopsSize = std::uint64_t{1} << 32;  // 4 GiB

struct Family {
  std::string_view name;
  Rate Limits::*rate;
  bool bytes;
};

constexpr std::array<Family, 6> kFamilies{{
    {"iops-total", &Limits::iops_total, false},
    {"iops-read", &Limits::iops_read, false},
    {"iops-write", &Limits::iops_write, false},
    {"bps-total", &Limits::bps_total, true},
    {"bps-read", &Limits::bps_read, true},
    {"bps-write", &Limits::bps_write, true},
}};

// Finds "<family>", "<family>-max" or "<family>-max-length".
std::pair<const Family*, std::uint64_t Rate::*> find_key(std::string_view key) noexcept {
  for (const Family& family : kFamilies) {
    if (!key.starts_with(family.name)) continue;
    std::string_view rest = key.substr(family.name.size());
    if (rest.empty()) return {&family, &Rate::rate};
    if (rest == "-max") return {&family, &Rate::max};
    if (rest == "-max-length") return {&family, &Rate::max_length};
  }
  return {nullptr, nullptr};
}

}  // namespace

Status validate(const Limits& limits) {
  for (const Family& family : kFamilies) {
    const Rate& rate = limits.*family.rate;
    std::string name(family.name);
    std::uint64_t bound = family.bytes ? kMaxBps : kMaxIops;
    if (rate.rate > bound) {
      return Status::error(name + " " + std::to_string(rate.rate) + " is above the largest allowed, " +
                           std::to_string(bound));
    }
    if (rate.max != 0) {
      if (rate.rate == 0) {
        return Status::error(name + "-max needs " + name + " (the rate the burst returns to)");
      }
      if (rate.max < rate.rate) {
        return Status::error(name + "-max (" + std::to_string(rate.max) + ") is below " + name + " (" +
                             std::to_string(rate.rate) + ")");
      }
      if (rate.max > bound) {
        return Status::error(name + "-max " + std::to_string(rate.max) + " is above the largest allowed, " +
                             std::to_string(bound));
      }
    }
    if (rate.max_length == 0) {
      return Status::error(name + "-max-length must be at least 1 second");
    }
    if (rate.max_length > kMaxMaxLength) {
      return Status::error(name + "-max-length " + std::to_string(rate.max_length) +
                           " is above the largest allowed, " + std::to_string(kMaxMaxLength) + " s");
    }
    if (rate.max_length != 1 && rate.max == 0) {
      return Status::error(name + "-max-length needs " + name + "-max (the burst rate it bounds)");
    }
  }
  if (limits.reservation_iops > kMaxIops) {
    return Status::error("reservation-iops " + std::to_string(limits.reservation_iops) +
                         " is above the largest allowed, " + std::to_string(kMaxIops));
  }
  if (limits.reservation_bps > kMaxBps) {
    return Status::error("reservation-bps " + std::to_string(limits.reservation_bps) +
                         " is above the largest allowed, " + std::to_string(kMaxBps));
  }
  if (limits.latency_target_us != 0 &&
      (limits.latency_target_us < kMinLatencyTargetUs || limits.latency_target_us > kMaxLatencyTargetUs)) {
    return Status::error("latency-target must be from 10us to 10s, not " + std::to_string(limits.latency_target_us) +
                         "us");
  }
  if (limits.latency_percentile_permille != 0) {
    if (limits.latency_target_us == 0) {
      return Status::error("latency-percentile needs latency-target (the latency the percentile must stay under)");
    }
    if (limits.latency_percentile_permille < 500 || limits.latency_percentile_permille > 999) {
      return Status::error("latency-percentile must be from 50 to 99.9, not " +
                           std::to_string(limits.latency_percentile_permille / 10) + "." +
                           std::to_string(limits.latency_percentile_permille % 10));
    }
  }
  if (limits.iops_size != 0) {
    if (!limits.iops_total.limited() && !limits.iops_read.limited() && !limits.iops_write.limited()) {
      return Status::error("iops-size needs an iops limit (iops-total, iops-read or iops-write)");
    }
    if (limits.iops_size > kMaxIopsSize) {
      return Status::error("iops-size " + std::to_string(limits.iops_size) + " is above the largest allowed, " +
                           std::to_string(kMaxIopsSize));
    }
  }
  return {};
}

namespace {

// ioband's own keys beside QEMU's.
std::uint64_t* own_key(Limits& limits, std::string_view key) noexcept {
  if (key == "iops-size") return &limits.iops_size;
  if (key == "reservation-iops") return &limits.reservation_iops;
  if (key == "reservation-bps") return &limits.reservation_bps;
  if (key == "latency-target-us") return &limits.latency_target_us;
  if (key == "latency-percentile-permille") return &limits.latency_percentile_permille;
  return nullptr;
}

}  // namespace

Status set_limit_key(Limits& limits, std::string_view key, std::uint64_t value) {
  if (std::uint64_t* field = own_key(limits, key)) {
    *field = value;
    return {};
  }
  auto [family, field] = find_key(key);
  if (family == nullptr) {
    return Status::error("unknown limit \"" + std::string(key) +
                         "\" (expected iops-total, iops-read, iops-write, bps-total, bps-read, bps-write, "
                         "each optionally with -max or -max-length, iops-size, reservation-iops, reservation-bps, "
                         "latency-target or latency-percentile)");
  }
  limits.*(family->rate).*field = value;
  return {};
}

std::optional<std::uint64_t> get_limit_key(const Limits& limits, std::string_view key) noexcept {
  if (const std::uint64_t* field = own_key(const_cast<Limits&>(limits), key)) return *field;
  auto [family, field] = find_key(key);
  if (family == nullptr) return std::nullopt;
  return limits.*(family->rate).*field;
}

}  // namespace ioband::qos
