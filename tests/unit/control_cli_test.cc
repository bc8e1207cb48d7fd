// iobandctl end to end against an engine on a private control socket: the
// reference's commands as a user types them, output, and exit status
// (0 done, 1 refused, 2 usage). Skipped when iobandctl is not built next to
// this test (build it: ninja iobandctl).
#include <gtest/gtest.h>

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include "control/engine.h"
#include "ioband/version.h"
#include "unit/control_fake.h"

extern char** environ;

namespace ioband::control {
namespace {

using testing::FakePlatform;
using testing::TempDir;

std::string iobandctl_path() {
  char self[4096];
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return {};
  self[n] = '\0';
  std::filesystem::path path = std::filesystem::path(self).parent_path().parent_path() / "bin" / "iobandctl";
  return std::filesystem::exists(path) ? path.string() : std::string();
}

// An engine answering on a Unix socket, one request per connection, on its own thread.
class Server {
 public:
  // image: a path the fake file system holds besides the reference's disks.
  Server(const std::string& socket_path, const std::string& state_path, const std::string& image = "")
      : engine_(fake_.platform(), state_path) {
    if (!image.empty()) fake_.paths[image] = {1 << 20, 253, 0};
    listener_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::snprintf(address.sun_path, sizeof address.sun_path, "%s", socket_path.c_str());
    if (::bind(listener_, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 || ::listen(listener_, 8) != 0) {
      std::perror("bind");
    }
    thread_ = std::thread([this] { serve(); });
  }
  ~Server() {
    stop_ = true;
    thread_.join();
    ::close(listener_);
  }
  FakePlatform& fake() { return fake_; }

 private:
  void serve() {
    while (!stop_) {
      pollfd fd{listener_, POLLIN, 0};
      if (::poll(&fd, 1, 20) <= 0) continue;
      const int client = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
      if (client < 0) continue;
      std::string line;
      char c;
      while (::read(client, &c, 1) == 1 && c != '\n') line += c;
      const std::string reply = engine_.handle_line(line, true) + "\n";
      (void)!::write(client, reply.data(), reply.size());
      ::close(client);
    }
  }

  FakePlatform fake_;
  Engine engine_;
  int listener_ = -1;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

struct Result {
  int code = -1;
  std::string out, err;
};

std::string drain(int fd) {
  std::string text;
  char buffer[4096];
  ssize_t n;
  while ((n = ::read(fd, buffer, sizeof buffer)) > 0) text.append(buffer, static_cast<size_t>(n));
  ::close(fd);
  return text;
}

class ControlCli : public ::testing::Test {
 protected:
  void SetUp() override {
    binary = iobandctl_path();
    if (binary.empty()) GTEST_SKIP() << "iobandctl is not built next to this test (ninja iobandctl)";
    server = std::make_unique<Server>(socket, dir.file("state.json"), dir.file("rel.img"));
  }

  Result run(const std::vector<std::string>& args, const std::string& input = "",
             std::vector<std::string> env = {}, const std::string& cwd = "") {
    if (env.empty()) env.push_back("IOBAND_CONTROL=" + socket);
    std::vector<std::string> argv_strings{binary};
    argv_strings.insert(argv_strings.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& arg : argv_strings) argv.push_back(arg.data());
    argv.push_back(nullptr);
    std::vector<std::string> env_strings;
    for (char** e = environ; *e; ++e) {
      if (std::string(*e).rfind("IOBAND_CONTROL=", 0) != 0) env_strings.push_back(*e);
    }
    env_strings.insert(env_strings.end(), env.begin(), env.end());
    std::vector<char*> envp;
    for (auto& e : env_strings) envp.push_back(e.data());
    envp.push_back(nullptr);

    int in[2], out[2], err[2];
    EXPECT_EQ(::pipe2(in, O_CLOEXEC), 0);
    EXPECT_EQ(::pipe2(out, O_CLOEXEC), 0);
    EXPECT_EQ(::pipe2(err, O_CLOEXEC), 0);
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::dup2(in[0], 0);
      ::dup2(out[1], 1);
      ::dup2(err[1], 2);
      if (!cwd.empty() && ::chdir(cwd.c_str()) != 0) ::_exit(127);
      ::execve(binary.c_str(), argv.data(), envp.data());
      ::_exit(127);
    }
    ::close(in[0]);
    ::close(out[1]);
    ::close(err[1]);
    (void)!::write(in[1], input.data(), input.size());
    ::close(in[1]);
    Result result;
    result.out = drain(out[0]);
    result.err = drain(err[0]);
    int status = 0;
    ::waitpid(pid, &status, 0);
    result.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return result;
  }

  // Runs a command that must succeed and print nothing.
  void quiet(const std::vector<std::string>& args, const std::string& input = "") {
    Result result = run(args, input);
    EXPECT_EQ(result.code, 0) << args.front() << ": " << result.err;
    EXPECT_EQ(result.out, "");
    EXPECT_EQ(result.err, "");
  }

  TempDir dir;
  std::string socket = dir.file("ioband.ctl");
  std::string binary;
  std::unique_ptr<Server> server;
};

TEST_F(ControlCli, GettingStartedAsTyped) {
  quiet({"create", "ioband1"}, "0 44371467 ioband /dev/sda1 1\n");
  quiet({"create", "ioband2"}, "0 44371467 ioband /dev/sda2 1\n");
  quiet({"message", "ioband1", "0", "weight", "40"});
  quiet({"message", "ioband2", "0", "weight", "10"});
  quiet({"message", "ioband1", "0", "type", "user"});
  quiet({"message", "ioband1", "0", "attach", "1000"});
  quiet({"message", "ioband1", "0", "attach", "2000"});
  quiet({"message", "ioband1", "0", "weight", "1000:30"});
  quiet({"message", "ioband1", "0", "weight", "2000:20"});

  Result table = run({"table", "--target", "ioband"});
  EXPECT_EQ(table.code, 0);
  EXPECT_EQ(table.out,
            "ioband1: 0 44371467 ioband 8:1 1 4 128\n"
            "ioband2: 0 44371467 ioband 8:2 1 4 128\n");
  Result status = run({"status"});
  EXPECT_EQ(status.code, 0);
  EXPECT_EQ(status.out,
            "ioband1: 0 44371467 ioband 1 -1 0 0 0 0 0 0 1000 0 0 0 0 0 0 2000 0 0 0 0 0 0\n"
            "ioband2: 0 44371467 ioband 1 -1 0 0 0 0 0 0\n");
  EXPECT_EQ(run({"table", "ioband2"}).out, "0 44371467 ioband 8:2 1 4 128\n");
  quiet({"message", "ioband1", "0", "reset"});
  quiet({"remove", "ioband1"});
  quiet({"remove", "ioband2"});
  EXPECT_EQ(run({"table"}).out, "No devices found\n");
}

TEST_F(ControlCli, Targets) {
  Result result = run({"targets"});
  EXPECT_EQ(result.code, 0);
  EXPECT_EQ(result.out, "ioband           v" + std::string(kVersion) + "\n");
}

TEST_F(ControlCli, JsonOnEveryVerb) {
  Result create = run({"create", "--json", "ioband1"}, "0 8 ioband /dev/sda1 1");
  EXPECT_EQ(create.code, 0) << create.err;
  auto reply = nlohmann::json::parse(create.out);
  EXPECT_EQ(reply["ok"], true);
  EXPECT_EQ(reply["data"]["device"]["name"], "ioband1");
  for (const std::vector<std::string>& args :
       std::vector<std::vector<std::string>>{{"table", "--json"},
                                             {"status", "--json"},
                                             {"targets", "--json"},
                                             {"message", "ioband1", "0", "weight", "40", "--json"},
                                             {"--json", "message", "ioband1", "0", "reset"},
                                             {"remove", "ioband1", "--json"}}) {
    Result result = run(args);
    EXPECT_EQ(result.code, 0) << args.front() << result.err;
    auto json = nlohmann::json::parse(result.out, nullptr, false);
    ASSERT_FALSE(json.is_discarded()) << result.out;
    EXPECT_EQ(json["ok"], true);
    EXPECT_FALSE(json.contains("text"));
  }
  Result refused = run({"remove", "--json", "ioband1"});
  EXPECT_EQ(refused.code, 1);
  EXPECT_EQ(nlohmann::json::parse(refused.out)["ok"], false);
}

TEST_F(ControlCli, ExitStatusAndOneLineForBadInput) {
  quiet({"create", "ioband1"}, "0 8 ioband /dev/sda1 1");
  struct Case {
    std::vector<std::string> args;
    std::string input;
    int code;
    std::string says;
  } cases[] = {
      {{"frobnicate"}, "", 2, "unknown command \"frobnicate\""},
      {{}, "", 2, "no command given"},
      {{"--frob", "table"}, "", 2, "unknown option --frob"},
      {{"create"}, "", 2, "create needs NAME"},
      {{"create", "a", "b"}, "", 2, "unexpected argument \"b\""},
      {{"create", "x"}, "0 8 linear /dev/sdb3 1", 2, "unknown target type \"linear\""},
      {{"create", "x"}, "", 2, "no table line"},
      {{"create", "ioband1"}, "0 8 ioband /dev/sdb3 1", 1, "ioband device ioband1 already exists"},
      {{"create", "x"}, "0 8 ioband /dev/nope 1", 1, "/dev/nope: No such file or directory"},
      {{"create", "x"}, "0 4096 ioband /small.img 1", 1, "smaller than 4096 sectors"},
      {{"remove"}, "", 2, "remove needs NAME"},
      {{"remove", "a", "b"}, "", 2, "unexpected argument \"b\""},
      {{"remove", "nope"}, "", 1, "no ioband device named nope"},
      {{"message", "ioband1"}, "", 2, "message needs NAME and SECTOR"},
      {{"message", "ioband1", "0"}, "", 2, "message needs a VERB"},
      {{"message", "ioband1", "0", "wieght", "4"}, "", 2, "unknown message verb \"wieght\""},
      {{"message", "ioband1", "0", "weight"}, "", 2, "weight needs an argument"},
      {{"message", "ioband1", "0", "weight", "4", "5"}, "", 2, "extra: \"5\""},
      {{"message", "ioband1", "0", "weight", "-5"}, "", 2, "not \"-5\""},
      {{"message", "ioband1", "0", "weight", "0"}, "", 2, "not \"0\""},
      {{"message", "ioband1", "0", "weight", "abc"}, "", 2, "not \"abc\""},
      {{"message", "ioband1", "-1", "reset"}, "", 2, "the sector must be 0"},
      {{"message", "ioband1", "0", "weight", "3000:10"}, "", 1, "ioband1 has no group 3000"},
      {{"message", "nope", "0", "reset"}, "", 1, "no ioband device named nope"},
      {{"table", "a", "b"}, "", 2, "unexpected argument \"b\""},
      {{"table", "--target"}, "", 2, "--target needs a value"},
      {{"targets", "x"}, "", 2, "unexpected argument \"x\""},
      {{"status", "--force"}, "", 2, "unknown option --force"},
  };
  for (const Case& c : cases) {
    Result result = run(c.args, c.input);
    const std::string what = c.args.empty() ? "(none)" : c.args.front();
    EXPECT_EQ(result.code, c.code) << what << ": " << result.err;
    EXPECT_EQ(result.out, "") << what;
    EXPECT_NE(result.err.find(c.says), std::string::npos) << what << ": " << result.err;
    EXPECT_EQ(result.err.rfind("iobandctl: ", 0), 0u) << result.err;
    ASSERT_FALSE(result.err.empty());
    EXPECT_EQ(result.err.find('\n'), result.err.size() - 1) << "one line: " << result.err;
    if (c.code == 2) {
      EXPECT_NE(result.err.find("; usage: iobandctl"), std::string::npos) << result.err;
    }
  }
  // None of it changed anything.
  EXPECT_EQ(run({"table"}).out, "ioband1: 0 8 ioband 8:1 1 4 128\n");
  EXPECT_EQ(run({"status"}).out, "ioband1: 0 8 ioband 1 -1 0 0 0 0 0 0\n");
}

TEST_F(ControlCli, HelpExplainsWithAnExample) {
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"--help"}, {"-h"}, {"help"}, {"help", "message"}, {"create", "--help"}, {"remove", "--help"},
           {"message", "--help"}, {"message", "ioband1", "0", "weight", "--help"}, {"table", "--help"},
           {"status", "-h"}, {"targets", "--help"}}) {
    Result result = run(args, "", {"IOBAND_CONTROL=/nonexistent"});
    EXPECT_EQ(result.code, 0) << args.front();
    EXPECT_NE(result.out.find("usage: iobandctl"), std::string::npos) << args.front();
    EXPECT_NE(result.out.find("Example"), std::string::npos) << args.front();
  }
  EXPECT_NE(run({"create", "--help"}).out.find("0 SECTORS ioband PATH DEVICE_GROUP_ID"), std::string::npos);
  EXPECT_NE(run({"message", "--help"}).out.find("weight ID:VAL"), std::string::npos);
  EXPECT_EQ(run({"--version"}).out, "iobandctl " + std::string(kVersion) + "\n");
  EXPECT_EQ(run({"help", "nope"}).code, 2);
}

TEST_F(ControlCli, FindsTheSocket) {
  Result none = run({"table"}, "", {"IOBAND_CONTROL=" + dir.file("nothing.ctl")});
  EXPECT_EQ(none.code, 1);
  EXPECT_NE(none.err.find("cannot connect to " + dir.file("nothing.ctl")), std::string::npos) << none.err;
  EXPECT_NE(none.err.find("is iobandd running?"), std::string::npos);
  // --control wins over the environment, in both spellings.
  EXPECT_EQ(run({"--control", socket, "targets"}, "", {"IOBAND_CONTROL=/nonexistent"}).code, 0);
  EXPECT_EQ(run({"targets", "--control=" + socket}, "", {"IOBAND_CONTROL=/nonexistent"}).code, 0);
  // Default: ./var/ioband.ctl.
  std::filesystem::create_directory(dir.file("var"));
  Server local(dir.file("var/ioband.ctl"), dir.file("var/state.json"));
  Result result = run({"targets"}, "", {"HOME=/"}, dir.path);
  EXPECT_EQ(result.code, 0) << result.err;
}

TEST_F(ControlCli, TableOptionAndRelativePaths) {
  quiet({"create", "--table", "0 8 ioband /dev/sdb3 2", "ioband3"});
  // A relative path is the caller's, made absolute before it reaches the daemon.
  Result result = run({"create", "rel"}, "0 8 ioband rel.img 1\n", {"IOBAND_CONTROL=" + socket}, dir.path);
  EXPECT_EQ(result.code, 0) << result.err;
  auto table = nlohmann::json::parse(run({"table", "--json", "rel"}).out);
  const std::string path = table["data"]["devices"][0]["path"];
  EXPECT_EQ(path.front(), '/');
  EXPECT_EQ(path, dir.file("rel.img"));
}

TEST_F(ControlCli, RemoveForce) {
  quiet({"create", "ioband1"}, "0 8 ioband /dev/sda1 1");
  server->fake().connections["ioband1"] = 1;  // the server thread is idle between commands
  Result refused = run({"remove", "ioband1"});
  EXPECT_EQ(refused.code, 1);
  EXPECT_NE(refused.err.find("1 client is connected"), std::string::npos) << refused.err;
  quiet({"remove", "--force", "ioband1"});
  EXPECT_EQ(run({"table"}).out, "No devices found\n");
}

}  // namespace
}  // namespace ioband::control
