// One cost unit for every policy (STYLE.md point 4).
//
// A request's cost is a fixed-point number of tokens:
//     cost = request_tokens + sectors * sector_tokens          (sectors = ceil(bytes / 512))
// in units of 1 / 2^kCostShift token. The policies differ only in the model:
//   weight         1 token per request               {1, 0}
//   weight-iosize  1 token per 512-byte sector        {0, 1}
//   fair           its device time in nanoseconds, from the device model
//                  (device_model.h: by size, direction, sequential or random,
//                  and flush / trim / write-zeroes); set_cost_model() puts a
//                  token model here instead (tests, experiments)
//   range-bw       reservations and caps are in bytes; its spare share uses fair's model
#pragma once

#include <cstdint>

namespace ioband::qos {

using Cost = std::uint64_t;
inline constexpr unsigned kCostShift = 16;
inline constexpr Cost kCostPerToken = Cost{1} << kCostShift;

struct CostModel {
  Cost request_tokens = kCostPerToken;       // fixed point, per request
  Cost sector_tokens = kCostPerToken / 128;  // fixed point, per 512-byte sector
  friend bool operator==(const CostModel&, const CostModel&) = default;
};

inline constexpr CostModel kWeightCostModel{kCostPerToken, 0};
inline constexpr CostModel kIosizeCostModel{0, kCostPerToken};

// Bounds that keep a cost below 2^40, so the policies can scale it by 2^16
// or more within 64 bits: bytes < 2^32 -> sectors <= 2^23.
inline constexpr Cost kMaxRequestTokens = Cost{1} << 32;  // 65536 tokens a request
inline constexpr Cost kMaxSectorTokens = Cost{1} << 16;   // 1 token a sector
inline constexpr Cost kMaxCost = kMaxRequestTokens + (Cost{1} << 23) * kMaxSectorTokens;
static_assert(kMaxCost < (Cost{1} << 40));

constexpr std::uint64_t sectors_of(std::uint32_t bytes) noexcept {
  return (std::uint64_t{bytes} + 511) / 512;
}

constexpr Cost request_cost(const CostModel& model, std::uint32_t bytes) noexcept {
  Cost cost = model.request_tokens + sectors_of(bytes) * model.sector_tokens;
  return cost == 0 ? 1 : cost;  // nothing is free: every request moves the clock
  // (a 0-byte FLUSH under weight-iosize costs the smallest unit)
}

}  // namespace ioband::qos
