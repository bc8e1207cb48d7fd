// Validation of Limits and the QEMU key names.
#include <gtest/gtest.h>

#include "qos/limits.h"

namespace ioband::qos {
namespace {

TEST(Limits, DefaultIsUnlimitedAndValid) {
  Limits limits;
  EXPECT_TRUE(limits.unlimited());
  EXPECT_TRUE(validate(limits).ok());
}

TEST(Limits, MaxNeedsTheBaseRate) {
  Limits limits;
  limits.iops_read.max = 100;
  Status status = validate(limits);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.message(), "iops-read-max needs iops-read (the rate the burst returns to)");
}

TEST(Limits, MaxBelowRateIsRefused) {
  Limits limits;
  limits.bps_total = {1000, 500, 1};
  EXPECT_EQ(validate(limits).message(), "bps-total-max (500) is below bps-total (1000)");
}

TEST(Limits, MaxLengthRules) {
  Limits limits;
  limits.iops_write = {10, 20, 0};
  EXPECT_EQ(validate(limits).message(), "iops-write-max-length must be at least 1 second");
  limits.iops_write = {10, 0, 5};
  EXPECT_EQ(validate(limits).message(), "iops-write-max-length needs iops-write-max (the burst rate it bounds)");
  limits.iops_write = {10, 20, 5};
  EXPECT_TRUE(validate(limits).ok());
  limits.iops_write = {10, 20, 100'000};
  EXPECT_FALSE(validate(limits).ok());
}

TEST(Limits, IopsSizeNeedsAnIopsLimit) {
  Limits limits;
  limits.iops_size = 4096;
  EXPECT_EQ(validate(limits).message(), "iops-size needs an iops limit (iops-total, iops-read or iops-write)");
  limits.iops_total.rate = 100;
  EXPECT_TRUE(validate(limits).ok());
}

TEST(Limits, RatesAreBounded) {
  Limits limits;
  limits.iops_total.rate = std::uint64_t{1} << 40;
  EXPECT_FALSE(validate(limits).ok());
  limits = {};
  limits.bps_read.rate = std::uint64_t{1} << 50;
  EXPECT_FALSE(validate(limits).ok());
}

TEST(Limits, KeysByName) {
  Limits limits;
  for (std::string_view key : kLimitKeys) {
    ASSERT_TRUE(set_limit_key(limits, key, 7).ok()) << key;
    EXPECT_EQ(get_limit_key(limits, key), 7u) << key;
  }
  EXPECT_EQ(limits.iops_total.max_length, 7u);
  EXPECT_EQ(limits.bps_write.max, 7u);
  EXPECT_EQ(limits.iops_size, 7u);
  EXPECT_FALSE(set_limit_key(limits, "iops", 1).ok());
  EXPECT_FALSE(set_limit_key(limits, "bps-total-maxx", 1).ok());
  EXPECT_EQ(get_limit_key(limits, "nonsense"), std::nullopt);
  EXPECT_EQ(limits.reservation_bps, 7u);
  EXPECT_EQ(limits.latency_percentile_permille, 7u);
  EXPECT_EQ(std::size(kLimitKeys), 23u);  // QEMU's 19, then reservations and latency targets
}

}  // namespace
}  // namespace ioband::qos
