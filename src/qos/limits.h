// Limits any group or ioband device can carry on top of the policy: QEMU's
// drive throttling keys and Xen blkback's tokens-refill / tokens-max.
//
// The math (one `Rate` = one leaky bucket, plus one for its burst rate):
//
//   A bucket holds a debt `level`, which drains at `rate` units per second.
//   A request may pass while level <= capacity; passing adds its cost.
//     capacity = (max - rate) * max_length   if max > rate  (a burst at `max`
//                                              lasts exactly max_length s
//                                              from a drained bucket)
//              = rate / 10                   otherwise      (100 ms of slack,
//                                              as QEMU)
//   With max > rate a second bucket drains at `max` with capacity max / 10,
//   so the burst itself runs no faster than `max`.
//
//   Guarantee: over any window of T seconds the units passed are at most
//     rate * T + burst,   burst = capacity + cost of one request,
//   and, with max > rate, at most max * T + max / 10 + cost of one request.
//   A request that finds level <= capacity (its stream is under the limit)
//   passes at once: a limit never delays it.
//
// Units: iops buckets count requests (a request of b bytes counts
// max(1, b / iops_size) when iops_size > 0); bps buckets count bytes.
// A read is charged to the total and read buckets, a write to total and write.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "qos/status.h"

namespace ioband::qos {

struct Rate {
  std::uint64_t rate = 0;        // per second; 0 = unlimited
  std::uint64_t max = 0;         // burst rate per second; 0 = no burst rate
  std::uint64_t max_length = 1;  // seconds the burst rate may be sustained (>= 1)

  bool limited() const noexcept { return rate != 0; }
  friend bool operator==(const Rate&, const Rate&) = default;
};

struct Limits {
  Rate iops_total, iops_read, iops_write;
  Rate bps_total, bps_read, bps_write;
  std::uint64_t iops_size = 0;  // bytes; 0 = every request counts as one

  // Beside the limits, the floor and the latency promise (reservation.h,
  // latency_target.h): not limits, but set, saved and shown with them.
  // reservation-iops: device time of this many 4 KiB random reads a second;
  // reservation-bps: of this many bytes of large sequential reads a second;
  // the reservation is the larger of the two. 0 = none.
  std::uint64_t reservation_iops = 0;
  std::uint64_t reservation_bps = 0;
  std::uint64_t latency_target_us = 0;            // 0 = no latency target
  std::uint64_t latency_percentile_permille = 0;  // 0 = the default, p99 (990)

  // No rate limit (reservations and latency targets aside).
  bool unlimited() const noexcept {
    return !iops_total.limited() && !iops_read.limited() && !iops_write.limited() &&
           !bps_total.limited() && !bps_read.limited() && !bps_write.limited();
  }
  bool reserves() const noexcept { return reservation_iops != 0 || reservation_bps != 0; }
  // Nothing set at all: no limit, no reservation, no latency target.
  bool empty() const noexcept { return unlimited() && !reserves() && latency_target_us == 0 && iops_size == 0; }
  friend bool operator==(const Limits&, const Limits&) = default;
};

// Checks a Limits value: `*-max` needs its base rate and must not be below
// it, `*-max-length` >= 1 and bounded, rates bounded so the fixed-point math
// cannot overflow, iops-size needs an iops limit. The message names the key.
Status validate(const Limits& limits);

// QEMU's key names: "iops-total", "iops-total-max", "iops-total-max-length",
// ... "bps-write-max-length", "iops-size" (19 keys), then ioband's
// reservation and latency-target keys (4).
inline constexpr std::string_view kLimitKeys[] = {
    "iops-total", "iops-total-max", "iops-total-max-length",
    "iops-read",  "iops-read-max",  "iops-read-max-length",
    "iops-write", "iops-write-max", "iops-write-max-length",
    "bps-total",  "bps-total-max",  "bps-total-max-length",
    "bps-read",   "bps-read-max",   "bps-read-max-length",
    "bps-write",  "bps-write-max",  "bps-write-max-length",
    "iops-size",
    "reservation-iops", "reservation-bps", "latency-target-us", "latency-percentile-permille",
};
inline constexpr std::uint64_t kDefaultLatencyPermille = 990;  // p99
// Latency targets from 10 us to 10 s; percentiles from p50 to p99.9.
inline constexpr std::uint64_t kMinLatencyTargetUs = 10;
inline constexpr std::uint64_t kMaxLatencyTargetUs = 10'000'000;

// Sets one key by name (no validation of the whole; call validate()).
Status set_limit_key(Limits& limits, std::string_view key, std::uint64_t value);
// Reads one key by name; nullopt for an unknown key.
std::optional<std::uint64_t> get_limit_key(const Limits& limits, std::string_view key) noexcept;

}  // namespace ioband::qos
