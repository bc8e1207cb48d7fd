// iobandctl top: every second, `status` and `table` from the control socket;
// rates are the differences of the counters over the time between two
// readings (the counters of status --json's "observation" only grow).
#include "cli/top.h"

#include <curses.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <map>
#include <optional>
#include <thread>

#include <nlohmann/json.hpp>

#include "control/protocol.h"
#include "control/usage.h"

namespace ioband::cli {

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

Clock::duration seconds(double s) { return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s)); }

struct Counters {
  std::uint64_t requests = 0, reads = 0, writes = 0, bytes = 0, held_ns = 0, held_by_limit = 0;
  std::vector<std::uint64_t> histogram;  // duration buckets, all operations
  std::vector<double> bounds_ms;         // upper bounds; the last is +inf
};

struct GroupReading {
  std::string device;
  std::string group;  // "default" or the id
  int device_group = 0;
  std::uint64_t weight = 0;
  std::uint32_t queued = 0, in_flight = 0;
  std::string limits;  // "iops-total=100,bps-read=..." of the group, else of the device
  Counters counters;
};

struct Reading {
  Clock::time_point at;
  double unix_seconds = 0;
  std::vector<GroupReading> groups;
};

struct Row {
  std::string device, group, limits;
  int device_group = 0;
  std::uint64_t weight = 0;
  double share_configured = 0, share_delivered = 0;
  double iops = 0, read_iops = 0, write_iops = 0, bytes_per_s = 0, held_ms_per_s = 0;
  std::optional<double> p50_ms, p99_ms;
  std::uint32_t queued = 0, in_flight = 0;
  bool limited = false;  // a limit held requests back in this interval
};

// j[key] if it is there, else an empty array or object.
const json& member(const json& j, const char* key, bool array = true) {
  static const json empty_array = json::array(), empty_object = json::object();
  if (j.is_object()) {
    if (auto it = j.find(key); it != j.end()) return *it;
  }
  return array ? empty_array : empty_object;
}

std::string key_of(const std::string& device, const std::string& group) { return device + "/" + group; }

std::string limits_text(const json& limits) {
  std::string text;
  for (const auto& [key, value] : limits.items()) text += (text.empty() ? "" : ",") + key + "=" + value.dump();
  return text;
}

json ask(const std::string& control, const std::string& command, std::string& error) {
  control::Request request;
  request.command = command;
  const std::string reply_line = exchange(control, control::request_to_json(request).dump(), error);
  if (!error.empty()) return {};
  json reply = json::parse(reply_line, nullptr, false);
  if (reply.is_discarded() || !reply.value("ok", false)) {
    error = reply.is_discarded() ? "iobandd sent a reply that is not JSON" : reply.value("error", std::string("refused"));
    return {};
  }
  return reply["data"];
}

std::optional<Reading> read_once(const std::string& control, std::string& error) {
  const json table = ask(control, "table", error);
  if (!error.empty()) return std::nullopt;
  const json status = ask(control, "status", error);
  if (!error.empty()) return std::nullopt;
  Reading reading;
  reading.at = Clock::now();
  reading.unix_seconds = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  std::map<std::string, std::pair<std::uint64_t, std::string>> settings;  // weight, limits by key
  std::map<std::string, std::string> device_limits;
  for (const json& d : member(table, "devices")) {
    const std::string name = d.value("name", "");
    device_limits[name] = limits_text(member(d, "limits", false));
    for (const json& g : member(d, "groups")) {
      const std::int64_t id = g.value("id", std::int64_t{-1});
      settings[key_of(name, id < 0 ? "default" : std::to_string(id))] = {
          g.value("weight", std::uint64_t{0}), limits_text(member(g, "limits", false))};
    }
  }
  for (const json& d : member(status, "devices")) {
    for (const json& g : member(d, "groups")) {
      GroupReading r;
      r.device = d.value("name", "");
      const std::int64_t id = g.value("id", std::int64_t{-1});
      r.group = id < 0 ? "default" : std::to_string(id);
      r.device_group = d.value("device_group_id", 0);
      r.queued = g.value("queue_length", 0u);
      r.in_flight = g.value("in_flight", 0u);
      const auto& [weight, limits] = settings[key_of(r.device, r.group)];
      r.weight = weight;
      r.limits = limits.empty() ? device_limits[r.device] : limits;
      const json& observation = member(g, "observation", false);
      for (const auto& [op, o] : member(observation, "ops", false).items()) {
        const std::uint64_t n = o.value("requests", std::uint64_t{0});
        r.counters.requests += n;
        (op == "read" ? r.counters.reads : r.counters.writes) += op == "read" || op == "write" ? n : 0;
        r.counters.bytes += o.value("bytes", std::uint64_t{0});
        const json& buckets = o["duration_histogram"];
        r.counters.histogram.resize(buckets.size());
        r.counters.bounds_ms.resize(buckets.size());
        for (std::size_t i = 0; i < buckets.size(); ++i) {
          r.counters.histogram[i] += buckets[i].value("count", std::uint64_t{0});
          r.counters.bounds_ms[i] = buckets[i]["le_ns"].is_null() ? INFINITY : buckets[i]["le_ns"].get<double>() / 1e6;
        }
      }
      for (const auto& [reason, h] : member(observation, "held", false).items()) {
        r.counters.held_ns += h.value("ns", std::uint64_t{0});
        if (reason == "limit") r.counters.held_by_limit += h.value("requests", std::uint64_t{0});
      }
      reading.groups.push_back(std::move(r));
    }
  }
  return reading;
}

// A counter that went back (iobandctl message ... reset, or a group detached
// and attached again) counts from zero.
double delta(std::uint64_t now, std::uint64_t before) { return now >= before ? double(now - before) : double(now); }

std::optional<double> quantile(const std::vector<double>& counts, const std::vector<double>& bounds, double q) {
  double total = 0;
  for (double c : counts) total += c;
  if (total <= 0) return std::nullopt;
  double seen = 0;
  for (std::size_t i = 0; i < counts.size(); ++i) {
    seen += counts[i];
    if (seen >= q * total) return bounds[i];
  }
  return std::nullopt;
}

// A group with I/O in the interval: completed, queued or on the storage.
bool busy(const Row& row) { return row.iops > 0 || row.queued > 0 || row.in_flight > 0; }

std::vector<Row> rows_between(const Reading& before, const Reading& now) {
  const double dt = std::chrono::duration<double>(now.at - before.at).count();
  std::map<std::string, const GroupReading*> old;
  for (const GroupReading& g : before.groups) old[key_of(g.device, g.group)] = &g;
  std::map<int, double> busy_weight, iops_total;
  std::vector<Row> rows;
  for (const GroupReading& g : now.groups) {
    Row row;
    row.device = g.device;
    row.group = g.group;
    row.device_group = g.device_group;
    row.weight = g.weight;
    row.limits = g.limits;
    row.queued = g.queued;
    row.in_flight = g.in_flight;
    if (auto it = old.find(key_of(g.device, g.group)); it != old.end() && dt > 0) {
      const Counters& a = it->second->counters;
      const Counters& b = g.counters;
      row.iops = delta(b.requests, a.requests) / dt;
      row.read_iops = delta(b.reads, a.reads) / dt;
      row.write_iops = delta(b.writes, a.writes) / dt;
      row.bytes_per_s = delta(b.bytes, a.bytes) / dt;
      row.held_ms_per_s = delta(b.held_ns, a.held_ns) / dt / 1e6;
      row.limited = b.held_by_limit > a.held_by_limit;
      std::vector<double> counts(b.histogram.size());
      for (std::size_t i = 0; i < counts.size(); ++i) {
        counts[i] = delta(b.histogram[i], i < a.histogram.size() ? a.histogram[i] : 0);
      }
      row.p50_ms = quantile(counts, b.bounds_ms, 0.5);
      row.p99_ms = quantile(counts, b.bounds_ms, 0.99);
    }
    iops_total[g.device_group] += row.iops;
    if (busy(row)) busy_weight[g.device_group] += static_cast<double>(g.weight);
    rows.push_back(std::move(row));
  }
  for (Row& row : rows) {
    // Weights divide the storage among the groups that have I/O: the
    // configured share is the group's weight over theirs (itself counted
    // if idle: what it would be owed if it came now), so that it can be
    // read against the delivered share.
    const double w = busy_weight[row.device_group] + (busy(row) ? 0 : static_cast<double>(row.weight));
    const double t = iops_total[row.device_group];
    row.share_configured = w > 0 ? static_cast<double>(row.weight) / w : 0;
    row.share_delivered = t > 0 ? row.iops / t : 0;
  }
  return rows;
}

// Sort keys: the letter that picks each on the screen.
enum class SortKey { iops, bandwidth, latency, held, share, weight, name };
constexpr std::pair<char, SortKey> kSortKeys[] = {{'i', SortKey::iops},  {'b', SortKey::bandwidth},
                                                 {'l', SortKey::latency}, {'h', SortKey::held},
                                                 {'s', SortKey::share},  {'w', SortKey::weight},
                                                 {'n', SortKey::name}};
const char* sort_name(SortKey key) {
  switch (key) {
    case SortKey::iops: return "iops";
    case SortKey::bandwidth: return "bandwidth";
    case SortKey::latency: return "p99";
    case SortKey::held: return "held";
    case SortKey::share: return "share";
    case SortKey::weight: return "weight";
    case SortKey::name: return "name";
  }
  return "";
}
std::optional<SortKey> parse_sort(const std::string& text) {
  for (SortKey key : {SortKey::iops, SortKey::bandwidth, SortKey::latency, SortKey::held, SortKey::share,
                      SortKey::weight, SortKey::name}) {
    if (text == sort_name(key)) return key;
  }
  return std::nullopt;
}

void sort_rows(std::vector<Row>& rows, SortKey key, bool reverse) {
  auto value = [key](const Row& r) -> double {
    switch (key) {
      case SortKey::iops: return r.iops;
      case SortKey::bandwidth: return r.bytes_per_s;
      case SortKey::latency: return r.p99_ms.value_or(-1);
      case SortKey::held: return r.held_ms_per_s;
      case SortKey::share: return r.share_delivered;
      case SortKey::weight: return static_cast<double>(r.weight);
      case SortKey::name: return 0;
    }
    return 0;
  };
  std::stable_sort(rows.begin(), rows.end(), [&](const Row& a, const Row& b) {
    // Names ascend by default, figures descend (the busiest first).
    if (key == SortKey::name) {
      const auto ka = std::tie(a.device, a.group), kb = std::tie(b.device, b.group);
      return reverse ? kb < ka : ka < kb;
    }
    return reverse ? value(a) < value(b) : value(a) > value(b);
  });
}

json row_json(const Row& r) {
  auto optional = [](const std::optional<double>& v) {
    return v && std::isfinite(*v) ? json(*v) : json(nullptr);
  };
  return {{"device", r.device},
          {"group", r.group},
          {"device_group", r.device_group},
          {"weight", r.weight},
          {"share_configured", r.share_configured},
          {"share_delivered", r.share_delivered},
          {"iops", r.iops},
          {"read_iops", r.read_iops},
          {"write_iops", r.write_iops},
          {"bytes_per_s", r.bytes_per_s},
          {"mib_per_s", r.bytes_per_s / 1048576.0},
          {"p50_ms", optional(r.p50_ms)},
          {"p99_ms", optional(r.p99_ms)},
          {"held_ms_per_s", r.held_ms_per_s},
          {"queued", r.queued},
          {"in_flight", r.in_flight},
          {"limits", r.limits},
          {"limited", r.limited}};
}

std::string ms_text(const std::optional<double>& v) {
  if (!v) return "-";
  if (!std::isfinite(*v)) return ">2500";
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.2f", *v);
  return buffer;
}

constexpr const char* kHeader = "DEVICE           GROUP        WEIGHT  SHARE CONF/DELIV      IOPS    MiB/s   P50 ms   P99 ms  HELD ms/s  QUEUE  INFL  LIMIT";

std::string row_text(const Row& r) {
  char buffer[512];
  std::snprintf(buffer, sizeof buffer, "%-16.16s %-12.12s %6llu  %6.1f%% / %6.1f%%  %8.0f %8.1f %8s %8s %10.1f %6u %5u  %s%s",
                r.device.c_str(), r.group.c_str(), static_cast<unsigned long long>(r.weight), r.share_configured * 100,
                r.share_delivered * 100, r.iops, r.bytes_per_s / 1048576.0, ms_text(r.p50_ms).c_str(),
                ms_text(r.p99_ms).c_str(), r.held_ms_per_s, r.queued, r.in_flight, r.limits.c_str(),
                r.limited ? " (limiting)" : "");
  return buffer;
}

int top_usage(const std::string& message) {
  std::cerr << "iobandctl: " << message << "; usage: " << control::usage_of("top") << "\n";
  return 2;
}

int run_batch(const std::string& control, int samples, double interval, bool as_json, SortKey key, bool reverse) {
  std::string error;
  std::optional<Reading> before = read_once(control, error);
  for (int i = 0; i < samples && before; ++i) {
    std::this_thread::sleep_until(before->at + seconds(interval));
    std::optional<Reading> now = read_once(control, error);
    if (!now) break;
    std::vector<Row> rows = rows_between(*before, *now);
    sort_rows(rows, key, reverse);
    if (as_json) {
      json groups = json::array();
      for (const Row& r : rows) groups.push_back(row_json(r));
      std::cout << json{{"time", now->unix_seconds},
                        {"interval_s", std::chrono::duration<double>(now->at - before->at).count()},
                        {"groups", std::move(groups)}}
                       .dump()
                << std::endl;
    } else {
      std::cout << kHeader << "\n";
      for (const Row& r : rows) std::cout << row_text(r) << "\n";
      std::cout << std::endl;
    }
    before = std::move(now);
  }
  if (!error.empty()) {
    std::cerr << "iobandctl: top: " << error << "\n";
    return 1;
  }
  return 0;
}

int run_screen(const std::string& control, double interval, SortKey key, bool reverse) {
  std::string error;
  std::optional<Reading> before = read_once(control, error);
  if (!before) {
    std::cerr << "iobandctl: top: " << error << "\n";
    return 1;
  }
  initscr();
  cbreak();
  noecho();
  keypad(stdscr, TRUE);
  curs_set(0);
  std::vector<Row> rows;
  Clock::time_point next = before->at + seconds(interval);
  bool quit = false;
  while (!quit) {
    sort_rows(rows, key, reverse);
    erase();
    mvprintw(0, 0, "iobandctl top - %zu groups - every %.1f s - sort: %s%s - keys: i b l h s w n sort, r reverse, q quit",
             rows.size(), interval, sort_name(key), reverse ? " (reversed)" : "");
    if (!error.empty()) mvprintw(1, 0, "error: %s", error.c_str());
    attron(A_REVERSE);
    mvprintw(2, 0, "%-*s", COLS, kHeader);
    attroff(A_REVERSE);
    for (std::size_t i = 0; i < rows.size() && static_cast<int>(i) + 3 < LINES; ++i) {
      mvaddnstr(static_cast<int>(i) + 3, 0, row_text(rows[i]).c_str(), COLS);
    }
    refresh();
    const auto wait_ms = std::chrono::duration_cast<std::chrono::milliseconds>(next - Clock::now()).count();
    timeout(static_cast<int>(std::max<long long>(wait_ms, 0)));
    const int ch = getch();
    if (ch == 'q' || ch == 'Q' || ch == 27) {
      quit = true;
    } else if (ch == 'r') {
      reverse = !reverse;
    } else if (ch != ERR) {
      for (const auto& [letter, sort] : kSortKeys) {
        if (ch == letter) key = sort;
      }
    }
    if (Clock::now() >= next) {
      error.clear();
      if (std::optional<Reading> now = read_once(control, error)) {
        rows = rows_between(*before, *now);
        before = std::move(now);
      }
      next = Clock::now() + seconds(interval);
    }
  }
  endwin();
  return 0;
}

}  // namespace

int run_top(const std::vector<std::string>& args, const std::string& control, bool json_output) {
  int batch = 0;
  double interval = 1.0;
  SortKey key = SortKey::iops;
  bool reverse = false;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    auto value = [&]() -> std::optional<std::string> {
      if (auto eq = arg.find('='); eq != std::string::npos) return arg.substr(eq + 1);
      if (i + 1 < args.size()) return args[++i];
      return std::nullopt;
    };
    auto is = [&](const char* name) { return arg == name || arg.rfind(std::string(name) + "=", 0) == 0; };
    if (arg == "--json") {
      json_output = true;
    } else if (arg == "--help" || arg == "-h") {
      std::cout << control::help_of("top");
      return 0;
    } else if (is("--batch") || arg == "-b") {
      const auto text = value();
      char* end = nullptr;
      batch = text ? static_cast<int>(std::strtol(text->c_str(), &end, 10)) : 0;
      if (!text || *end != '\0' || batch < 1) return top_usage("--batch needs a number of samples, at least 1");
    } else if (is("--interval")) {
      const auto text = value();
      char* end = nullptr;
      interval = text ? std::strtod(text->c_str(), &end) : 0;
      if (!text || *end != '\0' || !(interval >= 0.1 && interval <= 3600)) {
        return top_usage("--interval needs seconds from 0.1 to 3600");
      }
    } else if (is("--sort")) {
      const auto text = value();
      const auto parsed = text ? parse_sort(*text) : std::nullopt;
      if (!parsed) return top_usage("--sort takes iops, bandwidth, p99, held, share, weight or name");
      key = *parsed;
    } else if (arg == "--reverse") {
      reverse = true;
    } else {
      return top_usage("top: unknown argument " + arg);
    }
  }
  if (json_output && batch == 0) batch = 1;
  if (batch > 0) return run_batch(control, batch, interval, json_output, key, reverse);
  if (!::isatty(STDOUT_FILENO)) return top_usage("top needs a terminal; use --batch N (and --json) for scripts");
  return run_screen(control, interval, key, reverse);
}

}  // namespace ioband::cli
