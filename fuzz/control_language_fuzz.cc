// The dm-ioband language (src/control/language.cc): every line of the input
// is read as a table line (what `create` gets) and as the words of a
// `message`, and each word as a group id, a number and a device name.
// Asserted, besides no crash and no sanitizer report: a refusal says what
// was wrong and gives the usage; an accepted table line, written back in the
// reference's form, reads the same; numbers read are the digits given.
#include <cctype>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "control/language.h"
#include "fuzz_check.h"

using namespace ioband;

namespace {

std::vector<std::string> words(const std::string& line) {
  std::istringstream in(line);
  std::vector<std::string> out;
  for (std::string word; in >> word;) out.push_back(word);
  return out;
}

void check_table_line(const std::string& line) {
  control::TableLine table;
  if (auto error = control::parse_table_line(line, table)) {
    FUZZ_CHECK(!error->message.empty(), "a refused table line says why: " + line);
    return;
  }
  if (table.path.empty()) return;  // a blank or comment line
  FUZZ_CHECK(table.path.find_first_of(" \t\n") == std::string::npos, "the path is one word: " + line);
  std::string again = "0 " + std::to_string(table.sectors) + " ioband " + table.path + " " +
                      std::to_string(table.device_group_id);
  if (table.io_throttle) again += " " + std::to_string(*table.io_throttle);
  if (table.io_limit) again += " " + std::to_string(*table.io_limit);
  control::TableLine reread;
  const auto error = control::parse_table_line(again, reread);
  FUZZ_CHECK(!error, "a table line written back reads again: " + again + " (from " + line + ")");
  FUZZ_CHECK(reread.sectors == table.sectors && reread.path == table.path &&
                 reread.device_group_id == table.device_group_id && reread.io_throttle == table.io_throttle &&
                 reread.io_limit == table.io_limit,
             "a table line written back reads the same: " + again);
}

void check_message(const std::vector<std::string>& args) {
  control::Message message;
  if (auto error = control::parse_message(args, message)) {
    FUZZ_CHECK(!error->message.empty(), "a refused message says why");
    return;
  }
  FUZZ_CHECK(!args.empty(), "an empty message is refused");
  FUZZ_CHECK(!control::verb_name(message.verb).empty(), "the verb has a name");
}

void check_word(const std::string& word) {
  if (auto value = control::parse_unsigned(word, 1000000)) {
    FUZZ_CHECK(*value <= 1000000, "parse_unsigned keeps its bound: " + word);
    FUZZ_CHECK(!word.empty() && word.find_first_not_of("0123456789") == std::string::npos, "digits only: " + word);
    uint64_t expected = 0;
    for (char c : word) expected = expected * 10 + static_cast<uint64_t>(c - '0');
    FUZZ_CHECK(*value == expected, "the number read is the one written: " + word);
  }
  if (auto id = control::parse_group_id(word)) {
    FUZZ_CHECK(*id >= -1, "a group id is -1 or more: " + word);
  }
  (void)control::check_device_name(word);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  size_t start = 0;
  for (int lines = 0; start <= input.size() && lines < 64; ++lines) {
    size_t end = input.find('\n', start);
    if (end == std::string::npos) end = input.size();
    const std::string line = input.substr(start, end - start);
    start = end + 1;
    check_table_line(line);
    const auto args = words(line);
    check_message(args);
    for (const auto& word : args) check_word(word);
  }
  return 0;
}
