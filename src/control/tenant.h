// The `tenant` command: a level above ioband devices (qos/tree.h), in the
// style of dm-ioband's message verbs (VERB ARG, weights as [ID:]VAL, limits
// as QEMU's KEY=VAL list):
//
//   tenant create NAME [weight W] [limit KEY=VAL[,KEY=VAL...]] [cluster on|off]
//   tenant set NAME [weight [DEVICE:]W] [limit KEY=VAL[,KEY=VAL...]|none] [cluster on|off]
//   tenant attach NAME DEVICE [weight W]
//   tenant detach NAME DEVICE
//   tenant remove NAME
//   tenant list [NAME]
//   tenant capacity [KEY=VAL[,KEY=VAL...]|none]   (cluster tenants' shared capacity)
//
// Pure parsing into values; the engine (engine_tenant.cc) checks them
// against the model. Errors name what was wrong and carry the verb's usage.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "control/error.h"

namespace ioband::control {

struct TenantCommand {
  enum class Verb { create, set, attach, detach, remove, list, capacity };
  Verb verb = Verb::list;
  std::string name;    // the tenant (list: may be empty)
  std::string device;  // attach, detach
  std::optional<uint32_t> weight;              // create, set, attach: the tenant's (or the device's) weight
  std::optional<std::string> weight_device;    // set weight DEVICE:W: the device whose weight in the tenant changes
  std::vector<std::pair<std::string, uint64_t>> limits;  // KEY=VAL in order
  bool clear_limits = false;                   // limit none
  std::optional<bool> cluster;                 // create, set: cluster on|off
};

// Parses the words after "tenant" (the verb first).
std::optional<Error> parse_tenant_command(const std::vector<std::string>& args, TenantCommand& out);

std::string_view verb_name(TenantCommand::Verb verb) noexcept;

// A name a tenant may have: "" or why not (as a device name's rules).
std::string check_tenant_name(std::string_view name);

}  // namespace ioband::control
