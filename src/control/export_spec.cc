#include <cctype>
#include "control/export_spec.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace ioband::control {

std::optional<uint64_t> parse_size(const std::string& text) {
  if (text.empty() || !std::isdigit(static_cast<unsigned char>(text[0]))) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  unsigned long long value = std::strtoull(text.c_str(), &end, 10);
  if (errno != 0) return std::nullopt;
  std::string suffix(end);
  if (suffix.size() > 1 && (suffix.substr(1) == "iB" || suffix.substr(1) == "B")) suffix = suffix.substr(0, 1);
  unsigned shift = 0;
  if (suffix.empty()) {
    shift = 0;
  } else if (suffix == "K" || suffix == "k") {
    shift = 10;
  } else if (suffix == "M" || suffix == "m") {
    shift = 20;
  } else if (suffix == "G" || suffix == "g") {
    shift = 30;
  } else if (suffix == "T" || suffix == "t") {
    shift = 40;
  } else {
    return std::nullopt;
  }
  if (shift && value > (~0ULL >> shift)) return std::nullopt;
  return static_cast<uint64_t>(value) << shift;
}

std::optional<int> parse_errno(const std::string& text) {
  for (int e = 1; e < 4096; ++e) {
    const char* name = strerrorname_np(e);
    if (name && text == name) return e;
  }
  char* end = nullptr;
  long v = std::strtol(text.c_str(), &end, 10);
  if (!text.empty() && *end == '\0' && v > 0 && v < 4096) return static_cast<int>(v);
  return std::nullopt;
}

std::optional<std::string> parse_export_spec(const std::string& text, ExportSpec& out) {
  out = ExportSpec{};
  const auto eq = text.find('=');
  if (eq == std::string::npos || eq == 0) return "--export " + text + ": expected NAME=PATH[,size=BYTES][,readonly]";
  out.name = text.substr(0, eq);
  if (out.name.size() > 4096) return "--export: the name is longer than 4096 bytes";
  // Items split at single commas; ",," stands for a comma.
  std::vector<std::string> items(1);
  const std::string rest = text.substr(eq + 1);
  for (size_t i = 0; i < rest.size(); ++i) {
    if (rest[i] != ',') {
      items.back() += rest[i];
    } else if (i + 1 < rest.size() && rest[i + 1] == ',') {
      items.back() += ',';
      ++i;
    } else {
      items.emplace_back();
    }
  }
  if (!rest.empty() && rest.back() == ',' && items.back().empty()) items.pop_back();
  bool first = true;
  for (const std::string& item : items) {
    if (first) {
      out.path = item;
      first = false;
      continue;
    }
    const auto ke = item.find('=');
    const std::string key = item.substr(0, ke);
    const std::string value = ke == std::string::npos ? "" : item.substr(ke + 1);
    const auto need_value = [&]() -> std::optional<std::string> {
      if (ke == std::string::npos || value.empty()) return "--export " + out.name + ": " + key + " needs a value";
      return std::nullopt;
    };
    if (key == "readonly" || key == "ro") {
      out.read_only = true;
    } else if (key == "size") {
      if (auto e = need_value()) return e;
      auto size = parse_size(value);
      if (!size || *size == 0) return "--export " + out.name + ": size '" + value + "' is not a size (e.g. 1G, 64M, 4096)";
      out.size = *size;
    } else if (key == "backend") {
      if (value != "raw" && value != "memory") return "--export " + out.name + ": backend must be raw or memory, not '" + value + "'";
      out.backend = value;
    } else if (key == "format") {
      if (value != "raw" && value != "qcow2") return "--export " + out.name + ": format must be raw or qcow2, not '" + value + "'";
      out.format = value;
    } else if (key == "cache") {
      if (auto e = need_value()) return e;
      auto bytes = parse_size(value);
      if (!bytes || *bytes < 4096) return "--export " + out.name + ": cache '" + value + "' is not a size of 4K or more";
      out.cache_bytes = *bytes;
    } else if (key == "description") {
      out.description = value;
    } else if (key == "fault-errno") {
      if (auto e = need_value()) return e;
      auto err = parse_errno(value);
      if (!err) return "--export " + out.name + ": fault-errno '" + value + "' is not an errno name (EIO, ENOSPC, ...)";
      out.fault_errno = *err;
    } else if (key == "fault-rate") {
      if (auto e = need_value()) return e;
      char* end = nullptr;
      double rate = std::strtod(value.c_str(), &end);
      if (*end != '\0' || !(rate >= 0.0 && rate <= 1.0)) {
        return "--export " + out.name + ": fault-rate '" + value + "' must be a fraction between 0 and 1";
      }
      out.fault_rate = rate;
    } else if (key == "fault-delay-ms") {
      if (auto e = need_value()) return e;
      char* end = nullptr;
      unsigned long ms = std::strtoul(value.c_str(), &end, 10);
      if (*end != '\0' || ms > 600000) return "--export " + out.name + ": fault-delay-ms '" + value + "' must be 0..600000";
      out.fault_delay_ms = static_cast<uint32_t>(ms);
    } else if (key == "allow" || key == "allow-ro" || key == "deny") {
      nbd::AccessRule rule;
      if (std::string why = nbd::parse_access_rule(item, rule); !why.empty()) return "--export " + out.name + ": " + why;
      out.access.push_back(std::move(rule));
    } else if (key == "fault-offset" || key == "fault-length") {
      if (auto e = need_value()) return e;
      auto bytes = parse_size(value);
      if (!bytes) return "--export " + out.name + ": " + key + " '" + value + "' is not a size (e.g. 1M, 4096)";
      (key == "fault-offset" ? out.fault_offset : out.fault_length) = *bytes;
    } else {
      return "--export " + out.name + ": unknown key '" + key + "'";
    }
  }
  if (std::string why = nbd::check_access_list(out.access); !why.empty()) return "--export " + out.name + ": " + why;
  if (out.access.size() == 1 && out.access.front() == nbd::AccessRule{}) out.access.clear();  // allow=all
  if (out.backend == "raw" && out.path.empty()) return "--export " + out.name + ": a raw export needs a PATH";
  if (out.backend == "memory" && !out.format.empty()) return "--export " + out.name + ": format= is for image files, not backend=memory";
  if (out.backend == "memory" && out.size == 0) return "--export " + out.name + ": a memory export needs size=BYTES";
  if (out.fault_offset && !out.fault_length) return "--export " + out.name + ": fault-offset needs fault-length";
  return std::nullopt;
}

}  // namespace ioband::control
