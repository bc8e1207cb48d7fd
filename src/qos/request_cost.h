// What `fair` (and range-bw's spare share) charges a request, in cost.h's
// unit: its device time in nanoseconds under the device model
// (device_model.h) times the shape its class was learned to have
// (model_learner.h), or a token model that a caller set instead
// (DeviceGroup::set_cost_model: tests and experiments).
#pragma once

#include <algorithm>
#include <array>

#include "qos/cost.h"
#include "qos/device_model.h"
#include "qos/model_learner.h"
#include "qos/request.h"

namespace ioband::qos::detail {

class RequestCost {
 public:
  void set_device_model(const DeviceModel& model) noexcept { device_ = DeviceCosts::of(model); }
  void set_tokens(const CostModel& model) noexcept {
    tokens_ = model;
    use_tokens_ = true;
  }
  const CostModel& tokens() const noexcept { return tokens_; }

  void set_shape(const ModelLearner& learner) noexcept {
    for (int c = 0; c < ModelLearner::kClasses; ++c) shape_[static_cast<std::size_t>(c)] = learner.shape(c);
  }

  // The operation the model prices: reads and writes by their direction.
  static OpKind op_of(const Request& request) noexcept {
    if (request.op_kind == OpKind::read || request.op_kind == OpKind::write) {
      return request.direction == Direction::write ? OpKind::write : OpKind::read;
    }
    return request.op_kind;
  }
  static int class_of(const Request& request) noexcept {
    return ModelLearner::class_of(op_of(request), request.direction, request.sequential, request.bytes);
  }
  // The device model's time for the request, ns (nothing learned).
  double model_ns(const Request& request) const noexcept {
    return device_.cost_ns(op_of(request), request.bytes, request.sequential);
  }

  // The device time fair charges for the request, ns: the model's time
  // shaped by what was learned (a token model set instead does not change it).
  double device_ns(const Request& request) const noexcept { return device_ns(request, model_ns(request)); }
  // The same, with its model_ns() already known (the dispatch has it).
  double device_ns(const Request& request, double model) const noexcept {
    const int c = class_of(request);
    return model * (c < 0 ? 1.0 : shape_[static_cast<std::size_t>(c)]);
  }

  Cost of(const Request& request) const noexcept { return of(request, model_ns(request)); }
  Cost of(const Request& request, double model) const noexcept {
    if (use_tokens_) return request_cost(tokens_, request.bytes);
    return std::clamp<Cost>(static_cast<Cost>(device_ns(request, model)), 1, kMaxCost);
  }

 private:
  DeviceCosts device_ = DeviceCosts::of(kDefaultDeviceModel);
  CostModel tokens_{};
  bool use_tokens_ = false;
  std::array<double, ModelLearner::kClasses> shape_ = {1, 1, 1, 1, 1, 1, 1, 1};
};

}  // namespace ioband::qos::detail
