#include "control/tenant.h"

#include "control/language.h"
#include "control/usage.h"
#include "qos/tree.h"

namespace ioband::control {

namespace {

constexpr std::pair<std::string_view, TenantCommand::Verb> kVerbs[] = {
    {"create", TenantCommand::Verb::create}, {"set", TenantCommand::Verb::set},
    {"attach", TenantCommand::Verb::attach}, {"detach", TenantCommand::Verb::detach},
    {"remove", TenantCommand::Verb::remove}, {"list", TenantCommand::Verb::list},
    {"capacity", TenantCommand::Verb::capacity},
};

std::string quoted(std::string_view text) { return "\"" + std::string(text) + "\""; }

std::optional<uint32_t> parse_weight(std::string_view text) {
  auto value = parse_unsigned(text, qos::kMaxTreeWeight);
  if (!value || *value == 0) return std::nullopt;
  return static_cast<uint32_t>(*value);
}

std::string bad_weight(std::string_view text) {
  return "weight " + quoted(text) + " is not an integer from 1 to " + std::to_string(qos::kMaxTreeWeight);
}

}  // namespace

std::string_view verb_name(TenantCommand::Verb verb) noexcept {
  for (const auto& [name, value] : kVerbs) {
    if (value == verb) return name;
  }
  return "?";
}

std::string check_tenant_name(std::string_view name) {
  std::string why = check_device_name(name);
  if (const auto at = why.find("device name"); at != std::string::npos) why.replace(at, 11, "tenant name");
  return why;
}

std::optional<Error> parse_tenant_command(const std::vector<std::string>& args, TenantCommand& out) {
  if (args.empty()) return Error::bad_usage("tenant needs a VERB (create set attach detach remove list capacity)", usage_of("tenant"));
  TenantCommand command;
  bool known = false;
  for (const auto& [name, verb] : kVerbs) {
    if (args[0] == name) {
      command.verb = verb;
      known = true;
    }
  }
  if (!known) {
    return Error::bad_usage("tenant: unknown verb " + quoted(args[0]) + " (create set attach detach remove list capacity)",
                            usage_of("tenant"));
  }
  const std::string usage = usage_of("tenant", args[0]);
  const std::string prefix = "tenant " + args[0] + ": ";
  if (command.verb == TenantCommand::Verb::capacity) {
    // No NAME: the capacity every cluster tenant shares, shown or set.
    if (args.size() > 2) return Error::bad_usage(prefix + "unexpected argument \"" + args[2] + "\"", usage);
    if (args.size() == 2) {
      if (args[1] == "none") {
        command.clear_limits = true;
      } else if (auto error = parse_limit_items(args[1], usage, command.limits)) {
        error->message = prefix + error->message;
        return error;
      }
    }
    out = std::move(command);
    return std::nullopt;
  }
  size_t i = 1;
  if (i < args.size()) {
    command.name = args[i++];
    if (auto why = check_tenant_name(command.name); !why.empty()) return Error::bad_usage(prefix + why, usage);
  } else if (command.verb != TenantCommand::Verb::list) {
    return Error::bad_usage(prefix + "needs NAME", usage);
  }
  if (command.verb == TenantCommand::Verb::attach || command.verb == TenantCommand::Verb::detach) {
    if (i == args.size()) return Error::bad_usage(prefix + "needs NAME and DEVICE", usage);
    command.device = args[i++];
    if (auto why = check_device_name(command.device); !why.empty()) return Error::bad_usage(prefix + why, usage);
  }
  // The settings: "weight W" (set: also "weight DEVICE:W"), "limit KEY=VAL,..." (attach: weight only).
  const bool settings = command.verb == TenantCommand::Verb::create || command.verb == TenantCommand::Verb::set ||
                        command.verb == TenantCommand::Verb::attach;
  while (i < args.size()) {
    const std::string& word = args[i++];
    if (!settings) return Error::bad_usage(prefix + "unexpected argument " + quoted(word), usage);
    const bool attach = command.verb == TenantCommand::Verb::attach;
    if (word != "weight" && (attach || (word != "limit" && word != "cluster"))) {
      return Error::bad_usage(
          prefix + "unknown setting " + quoted(word) + (attach ? " (weight)" : " (weight, limit, cluster)"), usage);
    }
    if (i == args.size()) return Error::bad_usage(prefix + word + " needs a value", usage);
    const std::string& value = args[i++];
    if (word == "cluster") {
      if (command.cluster) return Error::bad_usage(prefix + "cluster is given twice", usage);
      if (value != "on" && value != "off") {
        return Error::bad_usage(prefix + "cluster is on or off, not " + quoted(value), usage);
      }
      command.cluster = value == "on";
      continue;
    }
    if (word == "weight") {
      if (command.weight) return Error::bad_usage(prefix + "weight is given twice", usage);
      std::string_view text = value;
      if (const auto colon = text.rfind(':'); colon != std::string_view::npos && command.verb == TenantCommand::Verb::set) {
        command.weight_device = std::string(text.substr(0, colon));
        if (auto why = check_device_name(*command.weight_device); !why.empty()) {
          return Error::bad_usage(prefix + why, usage);
        }
        text = text.substr(colon + 1);
      }
      command.weight = parse_weight(text);
      if (!command.weight) return Error::bad_usage(prefix + bad_weight(text), usage);
      continue;
    }
    if (command.clear_limits || !command.limits.empty()) return Error::bad_usage(prefix + "limit is given twice", usage);
    if (value == "none") {
      if (command.verb == TenantCommand::Verb::create) {
        return Error::bad_usage(prefix + "a new tenant has no limit to clear", usage);
      }
      command.clear_limits = true;
      continue;
    }
    if (auto error = parse_limit_items(value, usage, command.limits)) {
      error->message = prefix + error->message;
      return error;
    }
  }
  if (command.verb == TenantCommand::Verb::set && !command.weight && command.limits.empty() && !command.clear_limits &&
      !command.cluster) {
    return Error::bad_usage(prefix + "nothing to set (weight, limit, cluster)", usage);
  }
  out = std::move(command);
  return std::nullopt;
}

}  // namespace ioband::control
