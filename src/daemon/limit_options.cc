#include "daemon/limit_options.h"

#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "io/log.h"

namespace ioband::daemon {
namespace {

uint64_t physical_memory() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) : 0;
}

std::string mib(uint64_t bytes) { return std::to_string(bytes >> 20) + " MiB"; }

// Request memory by default: 1 GiB, about ten connections each at its own
// cap (96 MiB), while an honest client needs a few MiB (QD32 of 128 KiB
// requests is 4 MiB); on a small machine a quarter of its RAM, and never
// less than 128 MiB (four 32 MiB requests).
uint64_t default_request_memory() {
  const uint64_t ram = physical_memory();
  uint64_t cap = 1ull << 30;
  if (ram != 0 && ram / 4 < cap) cap = ram / 4;
  return std::max<uint64_t>(cap, 128ull << 20);
}

}  // namespace

void add_limit_options(CLI::App& app, LimitOptions& o) {
  const auto seconds = [&app](const std::string& name, std::chrono::seconds& value, const std::string& help) {
    app.add_option_function<unsigned>(
           name, [&value](unsigned s) { value = std::chrono::seconds(s); }, help)
        ->check(CLI::Range(0u, 86400u * 365))
        ->default_str(std::to_string(value.count()));
  };
  seconds("--handshake-timeout", o.config.handshake_timeout,
          "seconds a client may take from connecting to the end of the handshake (0: no limit)");
  seconds("--idle-timeout", o.config.idle_timeout,
          "seconds a connection in transmission may go without a request, with none in flight, before it is "
          "closed (0: never; an idle VM disk may see no request for hours)");
  seconds("--send-timeout", o.config.send_timeout,
          "seconds replies may wait with the client reading none of them before the connection is closed and "
          "its memory freed (0: never)");
  app.add_option("--max-connections", o.config.max_connections,
                 "connections at once; more are told so in the handshake and closed (0: no limit)")
      ->capture_default_str();
  app.add_option("--max-connections-per-client", o.config.max_connections_per_client,
                 "connections at once per client: per uid over the Unix socket, per address over TCP (0: no limit)")
      ->capture_default_str();
  app.add_option("--max-request-memory", o.request_memory_text,
                 "memory for request and reply buffers across all connections (e.g. 512M); past it "
                 "connections stop reading requests until memory frees (default 1G, or a quarter of RAM if less)");
  app.add_option("--max-memory-export", o.memory_export_text,
                 "largest backend=memory export (default: the machine's RAM)");
}

std::string finish_limit_options(LimitOptions& o) {
  o.config.max_request_memory = default_request_memory();
  if (!o.request_memory_text.empty()) {
    const auto size = control::parse_size(o.request_memory_text);
    if (!size || *size < (64ull << 20)) {
      return "--max-request-memory " + o.request_memory_text + ": expected a size of at least 64M (e.g. 512M, 2G)";
    }
    o.config.max_request_memory = *size;
  }
  o.max_memory_export = physical_memory();
  if (!o.memory_export_text.empty()) {
    const auto size = control::parse_size(o.memory_export_text);
    if (!size) return "--max-memory-export " + o.memory_export_text + ": expected a size (e.g. 4G)";
    o.max_memory_export = *size;
  }
  return {};
}

std::string check_memory_export(const control::ExportSpec& spec, const LimitOptions& o) {
  if (spec.backend != "memory" || o.max_memory_export == 0 || spec.size <= o.max_memory_export) return {};
  return "export " + spec.name + ": a memory export of " + mib(spec.size) + " is larger than --max-memory-export (" +
         mib(o.max_memory_export) + (o.memory_export_text.empty() ? ", the machine's RAM" : "") +
         "); its data would not fit in memory";
}

uint64_t raise_open_file_limit(const nbd::LimitsConfig& config) {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return 0;
  if (limit.rlim_cur < limit.rlim_max) {
    const rlim_t before = limit.rlim_cur;
    limit.rlim_cur = limit.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &limit) != 0) {
      log_line(std::string("cannot raise the open-file limit: ") + std::strerror(errno));
      limit.rlim_cur = before;
    } else {
      log_line("open-file limit raised from " + std::to_string(before) + " to " + std::to_string(limit.rlim_cur));
    }
  }
  // Descriptors also go to images, the control socket and the rings.
  constexpr rlim_t kSpare = 64;
  if (config.max_connections != 0 && limit.rlim_cur < config.max_connections + kSpare) {
    log_line("the open-file limit (" + std::to_string(limit.rlim_cur) + ") allows fewer connections than "
             "--max-connections " + std::to_string(config.max_connections) +
             ": past it, accepting pauses until connections close");
  }
  return limit.rlim_cur;
}

}  // namespace ioband::daemon
