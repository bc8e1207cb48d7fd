// The dm-ioband command language: the table line `create` reads and the
// verbs of `message`. Pure parsing into values; errors name what was wrong
// and carry the usage of the verb.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "control/error.h"
#include "nbd/access.h"
#include "nbd/classify.h"
#include "qos/device_group.h"
#include "qos/device_model.h"
#include "qos/policy.h"

namespace ioband::control {

// "0 SECTORS ioband PATH DEVICE_GROUP_ID [IO_THROTTLE [IO_LIMIT]] [RULE...]",
// RULE an access rule (nbd/access.h: allow=WHO, allow-ro=WHO, deny=WHO).
struct TableLine {
  uint64_t sectors = 0;
  std::string path;
  int device_group_id = 0;
  std::optional<uint32_t> io_throttle;
  std::optional<uint32_t> io_limit;
  nbd::AccessList access;  // empty: everyone
  std::string format;      // format=raw|qcow2 among the rules; "": detected at create
};

// Accepts one line (blank lines and lines starting with '#' are ignored).
std::optional<Error> parse_table_line(std::string_view text, TableLine& out);

struct Message {
  enum class Verb {
    type, attach, detach, weight, token, carryover, io_throttle, io_limit, policy, range_bw, reset, limit, model,
    access
  };
  Verb verb = Verb::reset;
  nbd::GroupType type = nbd::GroupType::none;  // type
  std::optional<int64_t> group;                // attach, detach; weight, range-bw, limit: nullopt = see below
  uint64_t value = 0;                          // weight, token, carryover, io_throttle, io_limit
  bool io_limit_auto = false;                  // io_limit auto (value unused)
  qos::Policy policy = qos::kDefaultPolicy;    // policy
  qos::RangeBw range_bw;                       // range-bw
  std::vector<std::pair<std::string, uint64_t>> limits;  // limit: KEY=VAL in order
  bool clear_limits = false;                   // limit [ID:]none
  std::vector<std::pair<std::string, uint64_t>> model;   // model: KEY=VAL in order; empty: show the model
  bool model_default = false;                  // model default
  std::optional<nbd::AccessList> access;       // access: the new list; nullopt: show it
};
// weight, range-bw without ID: the device's default group. limit without
// ID: the whole device; with -1: the default group.

// Parses the words after "message NAME SECTOR".
std::optional<Error> parse_message(const std::vector<std::string>& args, Message& out);

// The verb's name in the language ("io_throttle", "range-bw", ...).
std::string_view verb_name(Message::Verb verb) noexcept;

// The device model's keys, as blk-iocost's io.cost.model names them, and
// the knee (qos::DeviceModel::depth).
inline constexpr std::string_view kModelKeys[] = {"rbps", "wbps", "rseqiops", "rrandiops", "wseqiops", "wrandiops",
                                                  "depth"};
// Sets one key: "" or why not (an unknown key). The value's range is
// qos::model_error's to judge, on the whole model.
std::string set_model_key(qos::DeviceModel& model, std::string_view key, uint64_t value);
// The key's value (0 for an unknown key).
uint64_t get_model_key(const qos::DeviceModel& model, std::string_view key);

// A group id: a decimal number 0..2^63-1, -1 (the default group), or a
// dotted IPv4 address (as a 32-bit number, the id of a TCP client).
std::optional<int64_t> parse_group_id(std::string_view text) noexcept;
// Digits only, at most `max`.
std::optional<uint64_t> parse_unsigned(std::string_view text, uint64_t max = UINT64_MAX) noexcept;
// A latency target's duration with its unit ("500us", "2ms", "1.5ms", "1s"; "0"), in microseconds.
std::optional<uint64_t> parse_duration_us(std::string_view text) noexcept;
// A percentile from 50 to 99.9 ("99", "99.9", "p99"), in per mille (990, 999).
std::optional<uint64_t> parse_percentile_permille(std::string_view text) noexcept;
// The body of `limit KEY=VAL[,KEY=VAL...]` (QEMU's keys, limits.h), appended
// to `out` in order. The error names the item and carries `usage`.
std::optional<Error> parse_limit_items(std::string_view body, const std::string& usage,
                                       std::vector<std::pair<std::string, uint64_t>>& out);
// A name an ioband device may have (an NBD export name): "" or why not.
std::string check_device_name(std::string_view name);

}  // namespace ioband::control
