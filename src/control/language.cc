#include "control/language.h"

#include <arpa/inet.h>

#include <algorithm>
#include <charconv>
#include <climits>
#include <cmath>
#include <sstream>

#include "control/export_spec.h"
#include "control/usage.h"
#include "qos/limits.h"

namespace ioband::control {

namespace {

std::vector<std::string> split_words(std::string_view line) {
  std::vector<std::string> words;
  std::istringstream in{std::string(line)};
  std::string word;
  while (in >> word) words.push_back(word);
  return words;
}

std::string quoted(std::string_view text) { return "\"" + std::string(text) + "\""; }

constexpr std::pair<std::string_view, Message::Verb> kVerbs[] = {
    {"type", Message::Verb::type},
    {"attach", Message::Verb::attach},
    {"detach", Message::Verb::detach},
    {"weight", Message::Verb::weight},
    {"token", Message::Verb::token},
    {"carryover", Message::Verb::carryover},
    {"io_throttle", Message::Verb::io_throttle},
    {"io_limit", Message::Verb::io_limit},
    {"policy", Message::Verb::policy},
    {"range-bw", Message::Verb::range_bw},
    {"reset", Message::Verb::reset},
    {"limit", Message::Verb::limit},
    {"model", Message::Verb::model},
    {"access", Message::Verb::access},
};

// Splits "ID:REST" when the part before the first ':' is a group id.
// Returns false (and leaves `id` empty) when there is no ':'.
bool split_id(std::string_view arg, std::string_view& id, std::string_view& rest) {
  const auto colon = arg.find(':');
  if (colon == std::string_view::npos) {
    rest = arg;
    return false;
  }
  id = arg.substr(0, colon);
  rest = arg.substr(colon + 1);
  return true;
}

// "model": no word (show it), "default", or KEY=VAL[,KEY=VAL...] in one or
// more words, so that the line `calibrate` prints can be given as it is.
std::optional<Error> parse_model(const std::vector<std::string>& args, Message& out) {
  const std::string usage = usage_of("message", "model");
  if (args.size() == 2 && args[1] == "default") {
    out.model_default = true;
    return std::nullopt;
  }
  qos::DeviceModel probe = qos::kDefaultDeviceModel;
  for (size_t i = 1; i < args.size(); ++i) {
    std::string_view rest = args[i];
    if (rest == "default") return Error::bad_usage("model default takes no KEY=VAL", usage);
    for (;;) {
      const auto comma = rest.find(',');
      const std::string_view item = rest.substr(0, comma);
      const auto eq = item.find('=');
      if (eq == std::string_view::npos) return Error::bad_usage("model " + quoted(item) + " is not KEY=VAL", usage);
      std::string key(item.substr(0, eq));
      const std::string value_text(item.substr(eq + 1));
      if (std::string why = set_model_key(probe, key, 1); !why.empty()) return Error::bad_usage(why, usage);
      for (const auto& [seen, value] : out.model) {
        if (seen == key) return Error::bad_usage("model key " + key + " is given twice", usage);
      }
      // Bytes/s take K, M, G suffixes (binary); request rates and the depth are plain numbers.
      const bool bytes = key.ends_with("bps");
      const std::optional<uint64_t> value = bytes ? parse_size(value_text) : parse_unsigned(value_text);
      if (!value) {
        return Error::bad_usage("model " + key + " must be " +
                                    (bytes ? std::string("a number of bytes/s (K, M, G suffixes allowed)")
                                           : key == "depth" ? std::string("a number of requests in flight")
                                                            : std::string("a number of requests/s")) +
                                    ", not " + quoted(value_text),
                                usage);
      }
      (void)set_model_key(probe, key, *value);
      out.model.emplace_back(std::move(key), *value);
      if (comma == std::string_view::npos) break;
      rest = rest.substr(comma + 1);
    }
  }
  // Each value alone, on a model that is right otherwise: the bounds.
  if (auto why = qos::model_error(probe)) return Error::bad_usage(*why, usage);
  return std::nullopt;
}

std::string bad_id(std::string_view id) {
  return "group ID " + quoted(id) + " is not a group id (a number such as 1000, or an IPv4 address such as 127.0.0.1)";
}

}  // namespace

std::optional<uint64_t> parse_unsigned(std::string_view text, uint64_t max) noexcept {
  if (text.empty()) return std::nullopt;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
  }
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || value > max) return std::nullopt;
  return value;
}

std::optional<int64_t> parse_group_id(std::string_view text) noexcept {
  if (text == "-1") return qos::kDefaultGroup;
  if (auto number = parse_unsigned(text, INT64_MAX)) return static_cast<int64_t>(*number);
  if (text.find('.') == std::string_view::npos || text.size() > 15) return std::nullopt;
  std::string copy(text);
  in_addr address{};
  if (inet_pton(AF_INET, copy.c_str(), &address) != 1) return std::nullopt;
  return static_cast<int64_t>(ntohl(address.s_addr));
}

std::string check_device_name(std::string_view name) {
  if (name.empty()) return "the device name is empty";
  if (name.size() > 127) return "the device name is longer than 127 bytes";
  if (name.front() == '-') return "the device name " + quoted(name) + " starts with '-'";
  for (unsigned char c : name) {
    if (c <= ' ' || c == 0x7f) return "the device name " + quoted(name) + " contains a space or control character";
  }
  return {};
}

std::optional<Error> parse_limit_items(std::string_view body, const std::string& usage,
                                       std::vector<std::pair<std::string, uint64_t>>& out) {
  if (body.empty()) return Error::bad_usage("limit needs KEY=VAL", usage);
  std::string_view rest = body;
  for (;;) {
    auto comma = rest.find(',');
    std::string_view item = rest.substr(0, comma);
    auto eq = item.find('=');
    if (eq == std::string_view::npos) {
      return Error::bad_usage("limit " + quoted(item) + " is not KEY=VAL", usage);
    }
    std::string key(item.substr(0, eq));
    std::string_view value_text = item.substr(eq + 1);
    // A latency target is written as a duration, its percentile as a
    // percent; they are kept in microseconds and per mille.
    if (key == "latency-target" || key == "latency-percentile") {
      const bool target = key == "latency-target";
      auto value = target ? parse_duration_us(value_text) : parse_percentile_permille(value_text);
      if (!value) {
        return Error::bad_usage(
            target ? "limit latency-target must be a duration with its unit (500us, 2ms, 1.5ms, 1s; 0 removes it), "
                     "not " + quoted(value_text)
                   : "limit latency-percentile must be a percentile from 50 to 99.9 (99, 99.9, p99), not " +
                         quoted(value_text),
            usage);
      }
      out.emplace_back(target ? "latency-target-us" : "latency-percentile-permille", *value);
      if (comma == std::string_view::npos) break;
      rest = rest.substr(comma + 1);
      continue;
    }
    qos::Limits probe;
    if (qos::Status status = qos::set_limit_key(probe, key, 0); !status) {
      return Error::bad_usage(status.message(), usage);
    }
    auto value = parse_size(std::string(value_text));
    if (!value) {
      return Error::bad_usage("limit " + key + " must be a non-negative integer (K, M, G, T suffixes allowed), not " +
                                  quoted(value_text),
                              usage);
    }
    out.emplace_back(std::move(key), *value);
    if (comma == std::string_view::npos) break;
    rest = rest.substr(comma + 1);
  }
  return std::nullopt;
}

std::optional<Error> parse_table_line(std::string_view text, TableLine& out) {
  const std::string usage = usage_of("create");
  std::vector<std::string> lines;
  std::istringstream in{std::string(text)};
  for (std::string line; std::getline(in, line);) {
    auto words = split_words(line);
    if (words.empty() || words.front().starts_with("#")) continue;
    lines.push_back(line);
  }
  if (lines.empty()) {
    return Error::bad_usage("no table line (expected \"0 SECTORS ioband PATH DEVICE_GROUP_ID\" on standard input)",
                            usage);
  }
  if (lines.size() > 1) {
    return Error::bad_usage("expected one table line, got " + std::to_string(lines.size()), usage);
  }
  auto words = split_words(lines.front());
  // Access rules (KEY=WHO) follow the numbers.
  std::vector<std::string> rules;
  while (words.size() > 5 && words.back().find('=') != std::string::npos) {
    rules.insert(rules.begin(), words.back());
    words.pop_back();
  }
  for (size_t i = 5; i < words.size(); ++i) {
    if (words[i].find('=') != std::string::npos) {
      return Error::bad_usage("the access rule " + quoted(words[i]) + " comes before " + quoted(words[i + 1]) +
                                  "; access rules come last, after IO_THROTTLE and IO_LIMIT",
                              usage);
    }
  }
  if (words.size() < 5 || words.size() > 7) {
    return Error::bad_usage("the table line has " + std::to_string(words.size() + rules.size()) +
                                " fields; expected 0 SECTORS ioband PATH DEVICE_GROUP_ID [IO_THROTTLE [IO_LIMIT]] "
                                "then any access rules (allow=WHO, allow-ro=WHO, deny=WHO)",
                            usage);
  }
  TableLine line;
  if (words[0] != "0") {
    return Error::bad_usage("the logical start sector must be 0, not " + quoted(words[0]), usage);
  }
  auto sectors = parse_unsigned(words[1], UINT64_MAX / 512);
  if (!sectors || *sectors == 0) {
    return Error::bad_usage("the number of sectors " + quoted(words[1]) + " is not a positive integer", usage);
  }
  line.sectors = *sectors;
  if (words[2] != "ioband") {
    return Error::bad_usage("unknown target type " + quoted(words[2]) + " (the only target is ioband)", usage);
  }
  line.path = words[3];
  if (line.path.front() != '/') {
    return Error::bad_usage("the path " + quoted(line.path) + " is not absolute", usage);
  }
  auto group_id = parse_unsigned(words[4], INT_MAX);
  if (!group_id) {
    return Error::bad_usage("the device group ID " + quoted(words[4]) + " is not a non-negative integer", usage);
  }
  line.device_group_id = static_cast<int>(*group_id);
  if (words.size() > 5) {
    auto io_throttle = parse_unsigned(words[5], UINT32_MAX);
    if (!io_throttle) {
      return Error::bad_usage("the I/O throttle " + quoted(words[5]) + " is not a non-negative integer", usage);
    }
    line.io_throttle = static_cast<uint32_t>(*io_throttle);
  }
  if (words.size() > 6) {
    auto io_limit = parse_unsigned(words[6], UINT32_MAX);
    if (!io_limit || *io_limit == 0) {
      return Error::bad_usage("the I/O limit " + quoted(words[6]) + " is not a positive integer", usage);
    }
    line.io_limit = static_cast<uint32_t>(*io_limit);
  }
  // format=raw|qcow2 stands among the rules: the image format (io/image.h).
  for (auto it = rules.begin(); it != rules.end();) {
    if (!it->starts_with("format=")) {
      ++it;
      continue;
    }
    line.format = it->substr(7);
    if (line.format != "raw" && line.format != "qcow2") {
      return Error::bad_usage("the image format " + quoted(line.format) + " is not raw or qcow2", usage);
    }
    it = rules.erase(it);
  }
  if (std::string why = nbd::parse_access_list(rules, line.access); !why.empty()) {
    return Error::bad_usage(why, usage);
  }
  out = std::move(line);
  return std::nullopt;
}

std::string set_model_key(qos::DeviceModel& model, std::string_view key, uint64_t value) {
  const auto figure = static_cast<double>(value);
  if (key == "rbps") {
    model.read_bps = figure;
  } else if (key == "rseqiops") {
    model.read_seq_iops = figure;
  } else if (key == "rrandiops") {
    model.read_rand_iops = figure;
  } else if (key == "wbps") {
    model.write_bps = figure;
  } else if (key == "wseqiops") {
    model.write_seq_iops = figure;
  } else if (key == "wrandiops") {
    model.write_rand_iops = figure;
  } else if (key == "depth") {
    model.depth = static_cast<uint32_t>(std::min<uint64_t>(value, UINT32_MAX));
  } else {
    return "unknown model key " + quoted(key) +
           " (expected rbps, rseqiops, rrandiops, wbps, wseqiops, wrandiops or depth)";
  }
  return {};
}

uint64_t get_model_key(const qos::DeviceModel& model, std::string_view key) {
  auto whole = [](double value) -> uint64_t {
    return value > 0 && std::isfinite(value) ? static_cast<uint64_t>(std::llround(value)) : 0;
  };
  if (key == "rbps") return whole(model.read_bps);
  if (key == "rseqiops") return whole(model.read_seq_iops);
  if (key == "rrandiops") return whole(model.read_rand_iops);
  if (key == "wbps") return whole(model.write_bps);
  if (key == "wseqiops") return whole(model.write_seq_iops);
  if (key == "wrandiops") return whole(model.write_rand_iops);
  if (key == "depth") return model.depth;
  return 0;
}

std::optional<uint64_t> parse_duration_us(std::string_view text) noexcept {
  if (text == "0") return 0;
  static constexpr std::pair<std::string_view, double> kUnits[] = {{"us", 1}, {"ms", 1e3}, {"s", 1e6}};
  for (const auto& [unit, scale] : kUnits) {
    if (!text.ends_with(unit)) continue;
    const std::string_view number = text.substr(0, text.size() - unit.size());
    if (number.empty() || number.find_first_not_of("0123456789.") != std::string_view::npos) return std::nullopt;
    double value = 0;
    const auto [end, error] = std::from_chars(number.data(), number.data() + number.size(), value);
    if (error != std::errc() || end != number.data() + number.size()) return std::nullopt;
    const double us = std::round(value * scale);
    if (!(us >= 1 && us <= 1e12)) return std::nullopt;
    return static_cast<uint64_t>(us);
  }
  return std::nullopt;
}

std::optional<uint64_t> parse_percentile_permille(std::string_view text) noexcept {
  if (text.starts_with("p")) text.remove_prefix(1);
  if (text.empty() || text.find_first_not_of("0123456789.") != std::string_view::npos) return std::nullopt;
  double value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size()) return std::nullopt;
  const double permille = value * 10;
  if (!(permille >= 500 && permille <= 999) || std::abs(permille - std::round(permille)) > 1e-6) return std::nullopt;
  return static_cast<uint64_t>(std::round(permille));
}

std::string_view verb_name(Message::Verb verb) noexcept {
  for (const auto& [name, v] : kVerbs) {
    if (v == verb) return name;
  }
  return "?";
}

std::optional<Error> parse_message(const std::vector<std::string>& args, Message& out) {
  if (args.empty()) {
    return Error::bad_usage("message needs a verb", usage_of("message"));
  }
  const std::string& verb_word = args.front();
  const Message::Verb* verb = nullptr;
  for (const auto& [name, v] : kVerbs) {
    if (name == verb_word) verb = &v;
  }
  if (verb == nullptr) {
    return Error::bad_usage("unknown message verb " + quoted(verb_word), usage_of("message"));
  }
  const std::string usage = usage_of("message", verb_word);
  if (*verb == Message::Verb::model) {
    out = Message{};
    out.verb = *verb;
    return parse_model(args, out);
  }
  if (*verb == Message::Verb::access) {
    // No rule: show the list; otherwise the rules replace it, in order.
    Message message;
    message.verb = *verb;
    if (args.size() > 1) {
      nbd::AccessList rules;
      const std::vector<std::string> words(args.begin() + 1, args.end());
      if (std::string why = nbd::parse_access_list(words, rules); !why.empty()) return Error::bad_usage(why, usage);
      message.access = std::move(rules);
    }
    out = std::move(message);
    return std::nullopt;
  }
  const size_t wanted = *verb == Message::Verb::reset ? 0 : 1;
  const size_t given = args.size() - 1;
  if (given < wanted) return Error::bad_usage(verb_word + " needs an argument", usage);
  if (given > wanted) {
    std::string extra;
    for (size_t i = 1 + wanted; i < args.size(); ++i) extra += (extra.empty() ? "" : " ") + args[i];
    return Error::bad_usage(verb_word + " takes " + (wanted ? "one argument" : "no argument") + "; extra: " + quoted(extra),
                            usage);
  }
  Message message;
  message.verb = *verb;
  const std::string_view arg = wanted ? std::string_view(args[1]) : std::string_view();

  switch (*verb) {
    case Message::Verb::reset:
    case Message::Verb::model:
    case Message::Verb::access: break;

    case Message::Verb::type: {
      std::string_view name = arg;
      // The reference's Example #3 writes "type user." at the end of a sentence.
      if (name.size() > 1 && name.back() == '.') name.remove_suffix(1);
      auto type = nbd::parse_group_type(name);
      if (!type) {
        return Error::bad_usage("unknown type " + quoted(arg) + " (expected none, user, gid, pid, pgrp or cgroup)",
                                usage);
      }
      message.type = *type;
      break;
    }

    case Message::Verb::attach:
    case Message::Verb::detach: {
      auto id = parse_group_id(arg);
      if (!id) return Error::bad_usage(bad_id(arg), usage);
      message.group = *id;
      break;
    }

    case Message::Verb::weight: {
      std::string_view id_text, value_text;
      if (split_id(arg, id_text, value_text)) {
        auto id = parse_group_id(id_text);
        if (!id) return Error::bad_usage(bad_id(id_text), usage);
        message.group = *id;
      }
      auto weight = parse_unsigned(value_text, qos::kMaxWeight);
      if (!weight || *weight == 0) {
        return Error::bad_usage("weight must be an integer from 1 to " + std::to_string(qos::kMaxWeight) + ", not " +
                                    quoted(value_text),
                                usage);
      }
      message.value = *weight;
      break;
    }

    case Message::Verb::token:
    case Message::Verb::carryover:
    case Message::Verb::io_throttle:
    case Message::Verb::io_limit: {
      if (*verb == Message::Verb::io_limit && arg == "auto") {
        message.io_limit_auto = true;
        break;
      }
      const bool positive = *verb == Message::Verb::token || *verb == Message::Verb::io_limit;
      const uint64_t max = *verb == Message::Verb::token ? UINT64_MAX : UINT32_MAX;
      auto value = parse_unsigned(arg, max);
      if (!value || (positive && *value == 0)) {
        return Error::bad_usage(verb_word + " must be " + (positive ? "an integer larger than 0" : "a non-negative integer") +
                                    ", not " + quoted(arg),
                                usage);
      }
      message.value = *value;
      break;
    }

    case Message::Verb::policy: {
      auto policy = qos::parse_policy(arg);
      if (!policy) {
        return Error::bad_usage("unknown policy " + quoted(arg) + " (expected weight, weight-iosize, range-bw or fair)",
                                usage);
      }
      message.policy = *policy;
      break;
    }

    case Message::Verb::range_bw: {
      std::vector<std::string_view> parts;
      std::string_view rest = arg;
      for (;;) {
        auto colon = rest.find(':');
        parts.push_back(rest.substr(0, colon));
        if (colon == std::string_view::npos) break;
        rest = rest.substr(colon + 1);
      }
      if (parts.size() != 2 && parts.size() != 3) {
        return Error::bad_usage("range-bw takes ID:MIN:MAX (KiB/s), not " + quoted(arg), usage);
      }
      if (parts.size() == 3) {
        auto id = parse_group_id(parts[0]);
        if (!id) return Error::bad_usage(bad_id(parts[0]), usage);
        message.group = *id;
      }
      auto min = parse_unsigned(parts[parts.size() - 2]);
      auto max = parse_unsigned(parts[parts.size() - 1]);
      if (!min || !max) {
        return Error::bad_usage("range-bw MIN and MAX must be non-negative integers (KiB/s), not " + quoted(arg), usage);
      }
      message.range_bw = {*min, *max};
      break;
    }

    case Message::Verb::limit: {
      std::string_view body = arg;
      const auto colon = arg.find(':');
      const auto equals = arg.find('=');
      if (colon != std::string_view::npos && (equals == std::string_view::npos || colon < equals)) {
        auto id = parse_group_id(arg.substr(0, colon));
        if (!id) return Error::bad_usage(bad_id(arg.substr(0, colon)), usage);
        message.group = *id;
        body = arg.substr(colon + 1);
      }
      if (body == "none") {
        message.clear_limits = true;
        break;
      }
      if (auto error = parse_limit_items(body, usage, message.limits)) return error;
      break;
    }
  }
  out = std::move(message);
  return std::nullopt;
}

}  // namespace ioband::control
