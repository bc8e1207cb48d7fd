// state.json (src/control/state_file.cc) as a daemon meets it at start: the
// input is the file. Asserted, besides no crash and no sanitizer report:
//  - a file read_state_file accepts, written back by state_to_text, reads
//    to the same text (nothing is lost or changed on the way);
//  - a refused file is refused with a reason, and Engine::restore refuses it
//    too (the start stops) and never writes over it;
//  - a file the engine restores gives back, from the engine, the state read.
#include <cstdint>
#include <cstdio>
#include <string>

#include "control/state_file.h"
#include "control_harness.h"
#include "fuzz_check.h"

using namespace ioband;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const std::string path = fuzz::private_directory() + "/state.json";
  control::testing::write_file(path, input);

  control::State state;
  bool exists = false;
  const auto error = control::read_state_file(path, state, exists);
  if (!fuzz::directory_intact()) return 0;
  FUZZ_CHECK(exists, "the file exists");
  if (error) {
    FUZZ_CHECK(!error->empty(), "a refused state file says why");
  } else {
    const std::string text = control::state_to_text(state);
    control::testing::write_file(path, text);
    control::State again;
    const auto reread = control::read_state_file(path, again, exists);
    if (!fuzz::directory_intact()) return 0;
    FUZZ_CHECK(!reread, "a state written by state_to_text reads again: " + reread.value_or(""));
    FUZZ_CHECK(control::state_to_text(again) == text, "a state survives being written and read");
    control::testing::write_file(path, input);
  }

  fuzz::ControlPlatform fake;
  control::Engine engine(fake.platform(), path);
  const std::string restored = engine.restore();
  if (!fuzz::directory_intact()) return 0;
  if (error) {
    FUZZ_CHECK(!restored.empty(), "a file read_state_file refuses stops the start");
  } else if (restored.empty()) {
    FUZZ_CHECK(engine.state_json() == control::state_to_text(state), "the engine holds the state it read");
  }
  if (!restored.empty()) {
    // The engine must never write over a file it could not restore.
    (void)engine.handle_line(R"({"command":"create","name":"fuzzcheck","table":"0 2048 ioband /small.img 99"})", true);
    if (!fuzz::directory_intact()) return 0;
    FUZZ_CHECK(control::testing::read_file(path) == input, "a state file the start refused is left as it was");
  }
  return 0;
}
