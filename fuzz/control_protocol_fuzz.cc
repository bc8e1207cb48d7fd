// The control protocol as the daemon runs it: every line of the input is a
// request line for Engine::handle_line (parse_request, then the command,
// the dm-ioband language, the qos setters and the state file), as iobandctl
// or any local program may send it. Asserted, besides no crash and no
// sanitizer report:
//  - every answer is one JSON object with a boolean "ok", and a refusal names
//    what was wrong;
//  - a refused command changes nothing (the state is the same before and
//    after), and an accepted one is saved before it is answered (the file
//    holds the state);
//  - a request that parses survives request_to_json and parses to the same;
//  - a daemon restarted on the state file rebuilds the same state.
#include <cstdint>
#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

#include "control/protocol.h"
#include "control/state_file.h"
#include "control_harness.h"
#include "fuzz_check.h"

using nlohmann::json;
using namespace ioband;

namespace {

void check_round_trip(const std::string& line) {
  control::Request request;
  if (control::parse_request(line, request)) return;
  const json once = control::request_to_json(request);
  std::string text;
  try {
    text = once.dump();
  } catch (const json::type_error&) {
    return;  // a string that is not UTF-8: iobandctl never sends one back
  }
  control::Request again;
  const auto error = control::parse_request(text, again);
  FUZZ_CHECK(!error, "a request written by request_to_json parses: " + text);
  FUZZ_CHECK(control::request_to_json(again) == once, "the request survives a round trip: " + text);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const std::string state_path = fuzz::private_directory() + "/state.json";
  std::remove(state_path.c_str());
  fuzz::ControlPlatform fake;
  bool saved = false;
  {
    control::Engine engine(fake.platform(), state_path);
    FUZZ_CHECK(engine.restore().empty(), "no state file yet");
    size_t start = 0;
    for (int lines = 0; start < input.size() && lines < 64; ++lines) {
      size_t end = input.find('\n', start);
      if (end == std::string::npos) end = input.size();
      const std::string line = input.substr(start, end - start);
      start = end + 1;
      check_round_trip(line);

      const std::string before = engine.state_json();
      const auto exports_before = fake.exports.size();
      const std::string answer = engine.handle_line(line, /*may_change=*/true);
      FUZZ_CHECK(answer.find('\n') == std::string::npos, "the answer is one line");
      json reply;
      try {
        reply = json::parse(answer);
      } catch (const json::parse_error&) {
        FUZZ_CHECK(false, "the answer is JSON: " + answer);
      }
      FUZZ_CHECK(reply.is_object() && reply.contains("ok") && reply["ok"].is_boolean(), answer);
      const std::string after = engine.state_json();
      if (!fuzz::directory_intact()) return 0;
      if (!reply["ok"].get<bool>()) {
        FUZZ_CHECK(reply.contains("error") && reply["error"].is_string() && !reply["error"].get<std::string>().empty(),
                   "a refusal says why: " + answer);
        FUZZ_CHECK(after == before, "a refused command changed nothing: " + line + " -> " + answer);
        FUZZ_CHECK(fake.exports.size() == exports_before, "a refused command left no export behind: " + line);
      } else if (after != before) {
        FUZZ_CHECK(control::testing::read_file(state_path) == after, "an accepted change is saved before the answer: " + line);
        saved = true;
      }
    }
    if (saved && fuzz::directory_intact()) {
      // Restart: the same devices and settings come back.
      const std::string final_state = engine.state_json();
      fuzz::ControlPlatform fake2;
      control::Engine restarted(fake2.platform(), state_path);
      const std::string error = restarted.restore();
      FUZZ_CHECK(error.empty(), "the saved state restores: " + error);
      FUZZ_CHECK(restarted.state_json() == final_state, "the restored state is the saved one");
    }
  }
  return 0;
}
