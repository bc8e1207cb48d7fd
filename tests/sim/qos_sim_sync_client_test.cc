// A group with one outstanding request (a synchronous client, e.g. a VM doing
// one read at a time) against a group with 128 at equal weight: the first
// must keep at least 90 % of the throughput it gets alone.
//
// The storage serves 128 requests in parallel, matching dm-ioband's default
// io_limit: a request dispatched into a full device queue would wait there
// behind the other group's, which no scheduler above the queue can undo
// (that is what io_limit is for: it must not exceed the storage's depth).
#include <gtest/gtest.h>

#include "sim/scenarios.h"

namespace ioband::sim {
namespace {

void run(qos::Policy policy, std::uint32_t storage_depth, std::uint32_t io_limit) {
  Result alone = simulate(sync_client(policy, false, storage_depth, io_limit));
  Result shared = simulate(sync_client(policy, true, storage_depth, io_limit));
  double solo = static_cast<double>(alone.client("sync").completed.size());
  double with = static_cast<double>(shared.client("sync").completed.size());
  printf("%s (storage depth %u, io_limit %u): alone %.0f, with 128-deep competitor %.0f (%.1f %%), competitor %zu\n",
         std::string(qos::to_string(policy)).c_str(), storage_depth, io_limit, solo, with, 100 * with / solo,
         shared.client("bulk").completed.size());
  EXPECT_GE(with / solo, 0.90);
  EXPECT_GE(shared.utilization(kSecond, shared.duration), 0.98);
}

TEST(SyncClient, Fair) { run(qos::Policy::fair, 128, 128); }
TEST(SyncClient, Weight) { run(qos::Policy::weight, 128, 128); }
TEST(SyncClient, WeightIosize) { run(qos::Policy::weight_iosize, 128, 128); }
TEST(SyncClient, RangeBw) { run(qos::Policy::range_bw, 128, 128); }
// A shallower storage with io_limit matched to it.
TEST(SyncClient, FairShallowStorage) { run(qos::Policy::fair, 16, 16); }
TEST(SyncClient, WeightShallowStorage) { run(qos::Policy::weight, 16, 16); }

}  // namespace
}  // namespace ioband::sim
