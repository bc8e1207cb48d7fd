// What the metrics listener and `iobandctl top` see of one ioband group,
// beyond dm-ioband's counters (stats.h): per operation, completed requests,
// bytes, errors and a histogram of the whole request duration (queued plus
// on the storage); and the time requests were held back, by the reason that
// held them.
//
// Why a request waited, decided when it is dispatched and counted when it
// completes (the latest cause wins in this order):
//   limit   its group or its device was paced by a limit since it arrived;
//   window  the in-flight window (io_limit, or the learned one) was full;
//   weight  otherwise: other groups went first by the policy's order (this
//           includes the anticipation holding a lighter group back).
//
// Counters only grow (a `reset` message does not clear them): scrapers take
// rates of them. A request adds to narrow counters in the group's own lines,
// folded into wide ones kept beside the groups (group.h, accounting.h).
#pragma once

#include <array>
#include <bit>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "qos/device_model.h"

namespace ioband::qos {

inline constexpr std::size_t kOpKinds = 5;  // OpKind::read .. write_zeroes

constexpr std::string_view op_name(OpKind op) noexcept {
  switch (op) {
    case OpKind::read: return "read";
    case OpKind::write: return "write";
    case OpKind::flush: return "flush";
    case OpKind::trim: return "trim";
    case OpKind::write_zeroes: return "write_zeroes";
  }
  return "unknown";
}

// Upper bounds of the duration buckets, ns (Prometheus "le"); one more
// bucket above the last catches everything longer.
inline constexpr std::array<std::int64_t, 16> kDurationBoundsNs = {
    10'000,     25'000,      50'000,     100'000,     250'000,     500'000,     1'000'000,   2'500'000,     5'000'000,
    10'000'000, 25'000'000, 50'000'000, 100'000'000, 250'000'000, 1'000'000'000, 2'500'000'000};
inline constexpr std::size_t kDurationBuckets = kDurationBoundsNs.size() + 1;

// The bucket by a scan of the bounds; duration_bucket() gives the same
// answer in a few instructions (it runs once per request).
constexpr std::size_t duration_bucket_by_scan(std::int64_t ns) noexcept {
  std::size_t i = 0;
  while (i < kDurationBoundsNs.size() && ns > kDurationBoundsNs[i]) ++i;
  return i;
}

namespace detail {
// Consecutive bounds are at least 2x apart, so the durations of one bit
// width, [2^(w-1), 2^w), straddle at most one bound: per width, the bucket
// of its shortest duration and the one bound inside it (or none).
struct DurationBucketRow {
  std::uint8_t first = 0;
  std::int64_t bound = INT64_MAX;
};
constexpr std::array<DurationBucketRow, 65> duration_bucket_rows() noexcept {
  std::array<DurationBucketRow, 65> rows{};
  for (std::size_t width = 0; width <= 64; ++width) {
    const std::int64_t low = width == 0 ? 0 : std::int64_t{1} << (width - 1);
    const std::int64_t high = width >= 63 ? INT64_MAX : (std::int64_t{1} << width) - 1;
    rows[width].first = static_cast<std::uint8_t>(duration_bucket_by_scan(low));
    for (std::int64_t bound : kDurationBoundsNs) {
      if (bound >= low && bound < high) rows[width].bound = bound;
    }
  }
  return rows;
}
inline constexpr std::array<DurationBucketRow, 65> kDurationBucketRows = duration_bucket_rows();
}  // namespace detail

constexpr std::size_t duration_bucket(std::int64_t ns) noexcept {
  if (ns <= 0) return 0;
  const auto& row = detail::kDurationBucketRows[std::bit_width(static_cast<std::uint64_t>(ns))];
  return row.first + (ns > row.bound);
}
static_assert(duration_bucket(0) == 0);
static_assert(duration_bucket(10'000) == 0);
static_assert(duration_bucket(10'001) == 1);
static_assert(duration_bucket(3'000'000'000) == kDurationBuckets - 1);
static_assert(duration_bucket(INT64_MAX) == kDurationBuckets - 1);
static_assert([] {
  for (std::int64_t bound : kDurationBoundsNs) {
    for (std::int64_t ns : {bound - 1, bound, bound + 1}) {
      if (duration_bucket(ns) != duration_bucket_by_scan(ns)) return false;
    }
  }
  return true;
}());

enum class HoldReason : std::uint8_t { weight, limit, window };
inline constexpr std::size_t kHoldReasons = 3;

constexpr std::string_view to_string(HoldReason reason) noexcept {
  switch (reason) {
    case HoldReason::weight: return "weight";
    case HoldReason::limit: return "limit";
    case HoldReason::window: return "window";
  }
  return "unknown";
}

struct OpObservation {
  std::uint64_t requests = 0;     // completed
  std::uint64_t bytes = 0;        // payload of completed requests
  std::uint64_t errors = 0;       // completed with an error from the storage
  std::uint64_t duration_ns = 0;  // sum of arrival-to-completion times
  std::array<std::uint64_t, kDurationBuckets> duration_histogram{};  // per bucket, not cumulative

  friend bool operator==(const OpObservation&, const OpObservation&) = default;
};

struct GroupObservation {
  std::array<std::uint64_t, kHoldReasons> held_requests{};  // by HoldReason: completed after waiting
  std::array<std::uint64_t, kHoldReasons> held_ns{};        // by HoldReason: the time they waited
  std::array<OpObservation, kOpKinds> ops{};                // by OpKind

  friend bool operator==(const GroupObservation&, const GroupObservation&) = default;
};

// Why the learned window moved, counted since it (re)started: `status
// --json` shows them, so a window that sits low says which rule put it there.
struct WindowSteps {
  std::uint64_t up = 0;           // slow start's doublings and up steps
  std::uint64_t down_rate = 0;    // a down probe cost (almost) no rate, or slow start stepped back
  std::uint64_t down_order = 0;   // too many orderless dispatches
  std::uint64_t down_unused = 0;  // a hold used less than the window
};

}  // namespace ioband::qos
