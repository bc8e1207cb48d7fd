#pragma once
// iobandd's options for bounded resources (see nbd/limits.h): parsed into
// an nbd::LimitsConfig, plus the memory-export cap and the open-file limit.

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>

#include "control/export_spec.h"
#include "nbd/limits.h"

namespace ioband::daemon {

struct LimitOptions {
  nbd::LimitsConfig config;
  uint64_t max_memory_export = 0;  // 0 until finish(): the machine's RAM by default
  std::string request_memory_text;
  std::string memory_export_text;
};

// Adds the options to app, with their defaults in --help.
void add_limit_options(CLI::App& app, LimitOptions& options);
// After parsing: sizes and defaults. An error sentence, or empty.
std::string finish_limit_options(LimitOptions& options);
// A memory export larger than the cap is refused: an error sentence, or empty.
std::string check_memory_export(const control::ExportSpec& spec, const LimitOptions& options);
// Raises the soft open-file limit to the hard one; returns the limit now
// in force (a log line says what changed, and warns when it is below what
// --max-connections needs).
uint64_t raise_open_file_limit(const nbd::LimitsConfig& config);

}  // namespace ioband::daemon
