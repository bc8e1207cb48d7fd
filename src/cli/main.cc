// iobandctl: the control tool, with the verbs and syntax of dm-ioband's
// dmsetup interface. It turns the command line into one request line of the
// control protocol (control/protocol.h), sends it to iobandd's control
// socket and prints the reply. Exit: 0 done, 1 refused, 2 usage error.
//
// Parsing is by hand: dmsetup's syntax puts free words after the verb
// ("message ioband1 0 weight -5" must reach the server as written), which
// an option parser would take for options.

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <iterator>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/top.h"
#include "control/protocol.h"
#include "control/usage.h"
#include "ioband/version.h"

namespace {

using ioband::control::help_of;
using ioband::control::help_text;
using ioband::control::Request;
using ioband::control::usage_of;
using nlohmann::json;

constexpr int kExitRefused = 1;
constexpr int kExitUsage = 2;

struct UsageError {
  std::string message;
  std::string command;  // whose usage to show
};

struct Options {
  std::string control;
  bool json = false;
  bool help = false;
  bool version = false;
  std::optional<std::string> table;
};

std::string default_control() {
  const char* env = std::getenv("IOBAND_CONTROL");
  if (env != nullptr && *env != '\0') return env;
  return "./var/ioband.ctl";
}

// Takes a global or per-command option at args[i]; false if args[i] is not one.
bool take_option(const std::vector<std::string>& args, size_t& i, const std::string& command, Options& options,
                 Request& request) {
  const std::string& arg = args[i];
  auto value = [&](const std::string& name) -> std::string {
    if (arg.size() > name.size() && arg.compare(0, name.size() + 1, name + "=") == 0) return arg.substr(name.size() + 1);
    if (i + 1 >= args.size()) throw UsageError{name + " needs a value", command};
    return args[++i];
  };
  auto is = [&](const std::string& name) { return arg == name || arg.rfind(name + "=", 0) == 0; };
  if (arg == "--json") {
    options.json = true;
  } else if (arg == "--help" || arg == "-h") {
    options.help = true;
  } else if (arg == "--version" && command.empty()) {
    options.version = true;
  } else if (is("--control")) {
    options.control = value("--control");
  } else if (command == "remove" && (arg == "--force" || arg == "-f")) {
    request.force = true;
  } else if ((command == "table" || command == "status") && is("--target")) {
    request.target = value("--target");
  } else if (command == "create" && is("--table")) {
    options.table = value("--table");
  } else if (command == "calibrate" && is("--seconds")) {
    // The range is the daemon's to judge; a number is ours.
    const std::string text = value("--seconds");
    char* end = nullptr;
    const double seconds = std::strtod(text.c_str(), &end);
    if (text.empty() || end == nullptr || *end != '\0' || !std::isfinite(seconds)) {
      throw UsageError{"--seconds must be a number of seconds, not \"" + text + "\"", command};
    }
    request.seconds = seconds;
  } else {
    return false;
  }
  return true;
}

// The table line with a relative PATH made absolute: the daemon does not
// share our working directory.
std::string absolute_paths(const std::string& table) {
  std::istringstream in(table);
  std::string out;
  for (std::string line; std::getline(in, line);) {
    std::istringstream words_in(line);
    std::vector<std::string> words{std::istream_iterator<std::string>(words_in), {}};
    if (words.size() >= 4 && words[0].front() != '#' && words[3].front() != '/') {
      char cwd[4096];
      if (::getcwd(cwd, sizeof cwd) != nullptr) {
        words[3] = std::string(cwd) + "/" + words[3];
        line.clear();
        for (const std::string& word : words) line += (line.empty() ? "" : " ") + word;
      }
    }
    out += line + "\n";
  }
  return out;
}

Request parse(const std::vector<std::string>& args, Options& options) {
  Request request;
  size_t i = 0;
  for (; i < args.size() && args[i].size() > 1 && args[i][0] == '-'; ++i) {
    if (args[i] == "--") {
      ++i;
      break;
    }
    if (!take_option(args, i, "", options, request)) throw UsageError{"unknown option " + args[i], ""};
  }
  if (i == args.size()) {
    if (options.help || options.version) return request;
    throw UsageError{"no command given", ""};
  }
  request.command = args[i++];
  if (request.command == "help") {
    options.help = true;
    request.command = i < args.size() ? args[i++] : "";
    if (i < args.size()) throw UsageError{"help takes one COMMAND", ""};
    if (!request.command.empty() && help_of(request.command).empty()) {
      throw UsageError{"unknown command \"" + request.command + "\"", ""};
    }
    return request;
  }
  if (help_of(request.command).empty()) throw UsageError{"unknown command \"" + request.command + "\"", ""};
  const std::string& command = request.command;

  std::vector<std::string> positional;
  bool options_end = false;
  for (; i < args.size(); ++i) {
    const std::string& arg = args[i];
    const bool payload = (command == "message" && positional.size() >= 2) || command == "tenant";
    if (payload) {
      // The verb's own words go through as written ("weight -5" is the
      // server's to judge); only our own options, never a verb's word, are taken.
      if (!options_end && (arg == "--json" || arg == "--help" || arg == "-h" || arg == "--control" ||
                           arg.rfind("--control=", 0) == 0)) {
        take_option(args, i, command, options, request);
      } else {
        request.args.push_back(arg);
      }
      continue;
    }
    if (!options_end && arg == "--") {
      options_end = true;
      continue;
    }
    if (!options_end && arg.size() > 1 && arg[0] == '-') {
      if (!take_option(args, i, command, options, request)) {
        if (command == "message" && positional.size() == 1) {  // a sector such as "-1" is the server's to judge
          positional.push_back(arg);
          continue;
        }
        throw UsageError{command + ": unknown option " + arg, command};
      }
      continue;
    }
    positional.push_back(arg);
  }
  if (options.help) return request;

  auto need = [&](size_t min, size_t max, const char* what) {
    if (positional.size() < min) throw UsageError{command + " needs " + what, command};
    if (positional.size() > max) {
      std::string extra;
      for (size_t k = max; k < positional.size(); ++k) extra += (extra.empty() ? "" : " ") + positional[k];
      throw UsageError{command + ": unexpected argument \"" + extra + "\"", command};
    }
  };
  if (command == "create") {
    need(1, 1, "NAME");
    request.name = positional[0];
    std::string table;
    if (options.table) {
      table = *options.table;
    } else {
      if (::isatty(STDIN_FILENO)) {
        std::cerr << "iobandctl: reading the table line from standard input (end with Ctrl-D)\n";
      }
      table.assign(std::istreambuf_iterator<char>(std::cin), {});
    }
    request.table = absolute_paths(table);
  } else if (command == "remove" || command == "calibrate") {
    need(1, 1, "NAME");
    request.name = positional[0];
  } else if (command == "message") {
    need(2, 2, "NAME and SECTOR (0)");
    request.name = positional[0];
    request.sector = positional[1];
    if (request.args.empty()) throw UsageError{"message needs a VERB", command};
  } else if (command == "table" || command == "status") {
    need(0, 1, "");
    if (!positional.empty()) request.name = positional[0];
  } else if (command == "targets") {
    need(0, 0, "");
  } else if (command == "tenant") {
    if (request.args.empty()) throw UsageError{"tenant needs a VERB (create set attach detach remove list)", command};
  }
  return request;
}

int fail_usage(const std::string& message, const std::string& command) {
  std::cerr << "iobandctl: " << message << "; usage: " << usage_of(command) << "\n";
  return kExitUsage;
}

}  // namespace

// Sends one line, reads one line back. "" and `error` set on failure.
std::string ioband::cli::exchange(const std::string& path, const std::string& line, std::string& error) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.size() >= sizeof address.sun_path) {
    error = "the control socket path " + path + " is too long";
    return {};
  }
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    error = std::string("socket: ") + std::strerror(errno);
    return {};
  }
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    error = "cannot connect to " + path + ": " + std::strerror(errno) +
            " (is iobandd running? the socket is set with --control or IOBAND_CONTROL)";
    ::close(fd);
    return {};
  }
  const std::string message = line + "\n";
  size_t sent = 0;
  while (sent < message.size()) {
    const ssize_t n = ::send(fd, message.data() + sent, message.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      error = "sending to " + path + ": " + std::strerror(errno);
      ::close(fd);
      return {};
    }
    sent += static_cast<size_t>(n);
  }
  std::string reply;
  char buffer[65536];
  for (;;) {
    const ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      error = "reading from " + path + ": " + std::strerror(errno);
      break;
    }
    if (n == 0) {
      error = "iobandd closed the connection without a reply";
      break;
    }
    reply.append(buffer, static_cast<size_t>(n));
    if (auto newline = reply.find('\n'); newline != std::string::npos) {
      reply.resize(newline);
      error.clear();
      break;
    }
  }
  ::close(fd);
  if (!error.empty()) return {};
  return reply;
}

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  Options options;
  options.control = default_control();
  Request request;
  // top is the tool's own (many requests, a screen): its options follow it.
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "top") {
      Request ignored;
      try {
        for (size_t k = 0; k < i; ++k) {
          if (!take_option(args, k, "", options, ignored)) throw UsageError{"unknown option " + args[k], ""};
        }
      } catch (const UsageError& e) {
        return fail_usage(e.message, e.command);
      }
      return ioband::cli::run_top({args.begin() + static_cast<long>(i) + 1, args.end()}, options.control, options.json);
    }
    if (args[i].empty() || args[i][0] != '-') break;
    if (args[i] == "--control") ++i;  // its value
  }
  try {
    request = parse(args, options);
  } catch (const UsageError& e) {
    return fail_usage(e.message, e.command);
  }
  if (options.version && request.command.empty()) {
    std::cout << "iobandctl " << ioband::kVersion << "\n";
    return 0;
  }
  if (options.help) {
    std::cout << (request.command.empty() ? help_text() : help_of(request.command));
    return 0;
  }

  if (request.command == "calibrate" && ::isatty(STDERR_FILENO)) {
    std::cerr << "iobandctl: measuring the storage of " << request.name << " (about "
              << static_cast<int>(request.seconds.value_or(25)) << " s)...\n";
  }
  std::string error;
  // Arguments that are not UTF-8 cannot travel in JSON; they arrive with
  // U+FFFD in place of the bad bytes and the daemon names them.
  const std::string line = ioband::control::request_to_json(request).dump(-1, ' ', false, json::error_handler_t::replace);
  const std::string reply_line = ioband::cli::exchange(options.control, line, error);
  if (!error.empty()) {
    std::cerr << "iobandctl: " << error << "\n";
    return kExitRefused;
  }
  json reply;
  try {
    reply = json::parse(reply_line);
  } catch (const json::exception& e) {
    std::cerr << "iobandctl: iobandd sent a reply that is not JSON: " << e.what() << "\n";
    return kExitRefused;
  }
  const bool ok = reply.value("ok", false);
  if (options.json) {
    json shown = reply;
    shown.erase("text");
    std::cout << shown.dump(2) << "\n";
  } else if (ok) {
    std::cout << reply.value("text", std::string());
  }
  if (ok) return 0;
  std::string message = "iobandctl: " + reply.value("error", std::string("refused"));
  if (reply.contains("usage")) message += "; usage: " + reply.value("usage", std::string());
  std::cerr << message << "\n";
  return reply.value("kind", std::string()) == "usage" ? kExitUsage : kExitRefused;
}
