// Statistics of one ioband group: dm-ioband's status counters plus the time
// requests spent queued and a histogram of that queueing delay.
#pragma once

#include <array>
#include <bit>
#include <chrono>
#include <cstdint>

namespace ioband::qos {

// Queueing delay buckets, powers of 4 from 16 us: bucket 0 is [0, 16 us)
// (not delayed, in practice), bucket i is [4^(i+1), 4^(i+2)) us, the last is
// [4^9 us = 262 ms, inf).
inline constexpr std::size_t kDelayBuckets = 9;

constexpr std::size_t delay_bucket(std::chrono::nanoseconds delay) noexcept {
  if (delay.count() <= 0) return 0;
  // v = delay / 16 us; bucket = ceil(bit_width(v) / 2): v in [4^(k-1), 4^k) -> k.
  std::uint64_t v = static_cast<std::uint64_t>(delay.count()) / 16'000;
  std::size_t bucket = (static_cast<std::size_t>(std::bit_width(v)) + 1) / 2;
  return bucket < kDelayBuckets ? bucket : kDelayBuckets - 1;
}

// Lower edge of bucket i.
constexpr std::chrono::microseconds delay_bucket_floor(std::size_t bucket) noexcept {
  if (bucket == 0) return std::chrono::microseconds(0);
  std::int64_t us = 4;
  for (std::size_t i = 0; i < bucket; ++i) us *= 4;
  return std::chrono::microseconds(us);
}
static_assert(delay_bucket(std::chrono::microseconds(15)) == 0);
static_assert(delay_bucket(std::chrono::microseconds(16)) == 1);
static_assert(delay_bucket(std::chrono::microseconds(1024)) == 4);
static_assert(delay_bucket(std::chrono::microseconds(63)) == 1);
static_assert(delay_bucket(std::chrono::microseconds(64)) == 2);
static_assert(delay_bucket(std::chrono::microseconds(262'143)) == 7);
static_assert(delay_bucket(std::chrono::microseconds(262'144)) == 8);
static_assert(delay_bucket(std::chrono::seconds(10)) == kDelayBuckets - 1);
static_assert(delay_bucket(std::chrono::nanoseconds(-5)) == 0);
static_assert(delay_bucket_floor(4) == std::chrono::microseconds(1024));

struct GroupStats {
  // dm-ioband's columns (counted when a request is dispatched).
  std::uint64_t read_requests = 0;
  std::uint64_t delayed_read_requests = 0;  // reads that had to wait in the queue
  std::uint64_t read_sectors = 0;           // 512-byte sectors, rounded up
  std::uint64_t write_requests = 0;
  std::uint64_t delayed_write_requests = 0;
  std::uint64_t write_sectors = 0;
  // Total time dispatched requests spent queued.
  std::chrono::nanoseconds delayed_time{0};
  // Now: requests queued and dispatched-but-not-completed.
  std::uint32_t queue_length = 0;
  std::uint32_t in_flight = 0;
  // Queueing delay of every dispatched request (see delay_bucket).
  std::array<std::uint64_t, kDelayBuckets> delay_histogram{};

  friend bool operator==(const GroupStats&, const GroupStats&) = default;
};

}  // namespace ioband::qos
