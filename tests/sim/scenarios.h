// Scenarios that more than one simulator test runs: with a fixed io_limit
// and again with io_limit auto (qos_sim_auto_window_test.cc).
#pragma once

#include "sim/simulator.h"

namespace ioband::sim {

// A group with one outstanding request against one with 128, equal weights,
// on storage of `storage_depth` slots of 20 ± 5 ms.
inline Scenario sync_client(qos::Policy policy, bool with_competitor, std::uint32_t storage_depth,
                            std::uint32_t io_limit, bool io_limit_auto = false) {
  Scenario s;
  s.name = io_limit_auto ? "1 outstanding vs 128, io_limit auto" : "1 outstanding vs 128";
  s.policy = policy;
  s.io_limit = io_limit;
  s.io_limit_auto = io_limit_auto;
  s.storage = storage(storage_depth, 20 * kMilli, 5 * kMilli);
  s.devices = {0};
  s.groups = {group(0, 1, 100), group(0, 2, 100)};
  s.clients = {closed_loop("sync", 0, 1, 1)};
  if (with_competitor) s.clients.push_back(closed_loop("bulk", 0, 2, 128));
  s.duration = 20 * kSecond;
  return s;
}

// Three groups over two devices (weights 100/50 and 50), 128 outstanding
// each; "a" stops at 10 s and comes back as "a-again" at 20 s.
inline Scenario idle_group(qos::Policy policy, bool io_limit_auto = false) {
  Scenario s;
  s.name = io_limit_auto ? "a group goes idle, io_limit auto" : "a group goes idle";
  s.policy = policy;
  s.io_limit = 128;  // the fixed window, or the cap of the learned one
  s.io_limit_auto = io_limit_auto;
  s.storage = storage(32, 10 * kMilli, 2 * kMilli);
  s.devices = {0, 1};
  s.groups = {group(0, 1, 100), group(0, 2, 50), group(1, qos::kDefaultGroup, 50)};
  s.clients = {closed_loop("a", 0, 1, 128), closed_loop("b", 0, 2, 128), closed_loop("c", 1, qos::kDefaultGroup, 128)};
  s.clients[0].stop = 10 * kSecond;
  ClientSpec again = closed_loop("a-again", 0, 1, 128);
  again.start = 20 * kSecond;
  s.clients.push_back(again);
  s.duration = 30 * kSecond;
  return s;
}

}  // namespace ioband::sim
