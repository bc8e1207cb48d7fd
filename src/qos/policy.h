// The policies a device group can use, and their names in the control language.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace ioband::qos {

enum class Policy : std::uint8_t {
  weight,         // dm-ioband: one token per request, epochs, carryover
  weight_iosize,  // dm-ioband: one token per 512-byte sector
  range_bw,       // dm-ioband: per-group min-bw (reserved) and max-bw (cap), KiB/s
  fair,           // start-time fair queueing over one cost unit (the default)
};

inline constexpr Policy kDefaultPolicy = Policy::fair;

// "weight", "weight-iosize", "range-bw", "fair".
constexpr std::string_view to_string(Policy policy) noexcept {
  switch (policy) {
    case Policy::weight: return "weight";
    case Policy::weight_iosize: return "weight-iosize";
    case Policy::range_bw: return "range-bw";
    case Policy::fair: return "fair";
  }
  return "?";
}

constexpr std::optional<Policy> parse_policy(std::string_view name) noexcept {
  for (Policy policy : {Policy::weight, Policy::weight_iosize, Policy::range_bw, Policy::fair}) {
    if (to_string(policy) == name) return policy;
  }
  return std::nullopt;
}

// Which rule released a dispatched request (Decision::rule).
enum class Rule : std::uint8_t {
  below_throttle,  // fewer than io_throttle requests in flight: passed without control
  weight,          // weight / weight-iosize: the group held tokens of the current epoch
  fair,            // fair: smallest virtual start time
  reservation,     // range-bw: the group was below its min-bw
  spare,           // range-bw: spare bandwidth, shared by weight
};

constexpr std::string_view to_string(Rule rule) noexcept {
  switch (rule) {
    case Rule::below_throttle: return "below-throttle";
    case Rule::weight: return "weight";
    case Rule::fair: return "fair";
    case Rule::reservation: return "reservation";
    case Rule::spare: return "spare";
  }
  return "?";
}

}  // namespace ioband::qos
