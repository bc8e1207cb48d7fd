// Every policy of a device group, by name (policy.h) and object (order_policy.h).
#include "qos/fair_policy.h"
#include "qos/order_policy.h"
#include "qos/range_bw_policy.h"
#include "qos/weight_policy.h"

namespace ioband::qos::detail {

std::unique_ptr<OrderPolicy> make_order_policy(Policy policy, const PolicySettings& settings) {
  switch (policy) {
    case Policy::weight:
    case Policy::weight_iosize: return std::make_unique<WeightOrder>(settings, policy);
    case Policy::range_bw: return std::make_unique<RangeBwOrder>(settings);
    case Policy::fair: break;
  }
  return std::make_unique<FairOnlyOrder>(settings);
}

}  // namespace ioband::qos::detail
