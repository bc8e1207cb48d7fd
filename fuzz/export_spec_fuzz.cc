// iobandd --export specs (src/control/export_spec.cc): NAME=PATH[,key[=value]...].
// Asserted, besides no crash and no sanitizer report: a refusal is a
// sentence; an accepted spec has a name and a path (or a memory size), and
// sizes read are what the text says.
#include <cstdint>
#include <string>

#include "control/export_spec.h"
#include "fuzz_check.h"

using namespace ioband;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  control::ExportSpec spec;
  if (auto error = control::parse_export_spec(input, spec)) {
    FUZZ_CHECK(!error->empty(), "a refused spec says why");
  } else {
    FUZZ_CHECK(!spec.name.empty(), "an accepted spec has a name: " + input);
    FUZZ_CHECK(spec.backend == "raw" || spec.backend == "memory", "a known backend: " + spec.backend);
    FUZZ_CHECK(spec.fault_rate >= 0 && spec.fault_rate <= 1, "a fault rate is a fraction: " + input);
    FUZZ_CHECK(spec.format.empty() || spec.format == "raw" || spec.format == "qcow2", "a known format: " + spec.format);
  }
  if (auto bytes = control::parse_size(input)) {
    // The digits times the unit: never wrapped around.
    const uint64_t digits = std::strtoull(input.c_str(), nullptr, 10);
    FUZZ_CHECK(*bytes >= digits, "a size is at least its digits: " + input);
  }
  (void)control::parse_errno(input);
  return 0;
}
