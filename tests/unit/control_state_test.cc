// state.json: every change is saved atomically, a restart restores the same
// table and settings, and a file that cannot be read stops the start
// without ever being overwritten.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <filesystem>

#include "control/engine.h"
#include "control/state_file.h"
#include "unit/control_fake.h"

namespace ioband::control {
namespace {

using nlohmann::json;
using testing::Client;
using testing::FakePlatform;
using testing::read_file;
using testing::TempDir;
using testing::write_file;

void ok(const json& reply) { ASSERT_TRUE(reply.value("ok", false)) << reply.dump(); }

// Every kind of setting, on two device groups.
void configure(Client& client) {
  ok(client.create("ioband1", "0 44371467 ioband /dev/sda1 1 10 400"));
  ok(client.create("ioband2", "0 44371467 ioband /dev/sda2 1"));
  ok(client.create("ioband3", "0 2097152 ioband /dev/sdb3 2"));
  ok(client.create("vm1", "0 4194304 ioband /vmdisk/vm1.img 3"));
  ok(client.message("ioband1", "weight 40"));
  ok(client.message("ioband2", "weight 10"));
  ok(client.message("ioband1", "type user"));
  ok(client.message("ioband1", "attach 1000"));
  ok(client.message("ioband1", "attach 2000"));
  ok(client.message("ioband1", "weight 1000:30"));
  ok(client.message("ioband1", "weight 2000:20"));
  ok(client.message("ioband1", "policy range-bw"));
  ok(client.message("ioband1", "range-bw 1000:100:800"));
  ok(client.message("ioband1", "token 256"));
  ok(client.message("ioband1", "carryover 4"));
  ok(client.message("ioband3", "io_limit 64"));
  ok(client.message("ioband3", "io_throttle 8"));
  ok(client.message("ioband3", "type pid"));
  ok(client.message("ioband3", "attach 15011"));
  ok(client.message("ioband3", "limit 15011:iops-total=200,iops-total-max=400,iops-total-max-length=10,iops-size=8K"));
  ok(client.message("ioband3", "limit bps-total=100M"));
  ok(client.message("ioband3", "limit -1:bps-read=1M"));
  ok(client.message("vm1", "type cgroup"));
  ok(client.message("vm1", "attach 127.0.0.1"));
  ok(client.message("vm1", "policy weight-iosize"));
  ok(client.message("vm1", "io_limit auto"));
  ok(client.message("vm1", "access allow=uid:1000 allow-ro=gid:root allow=tls:CN=a,O=Example allow-ro=fd00::/8 deny=all"));
}

TEST(ControlState, EveryChangeIsSavedAndARestartRestoresIt) {
  TempDir dir;
  const std::string path = dir.file("state.json");
  std::string table, table_json, state;
  {
    FakePlatform fake;
    Engine engine(fake.platform(), path);
    ASSERT_EQ(engine.restore(), "");  // no file yet: a fresh start
    EXPECT_FALSE(std::filesystem::exists(path));
    Client client{engine};
    configure(client);
    table = client.table_text();
    table_json = client.table()["data"].dump();
    state = engine.state_json();
    EXPECT_EQ(read_file(path), state);
  }
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));

  FakePlatform fake;
  Engine engine(fake.platform(), path);
  ASSERT_EQ(engine.restore(), "");
  Client client{engine};
  EXPECT_EQ(client.table_text(), table);
  EXPECT_EQ(client.table_text(),
            "ioband1: 0 44371467 ioband 8:1 1 10 400\n"
            "ioband2: 0 44371467 ioband 8:2 1 10 400\n"
            "ioband3: 0 2097152 ioband 8:19 2 8 64\n"
            "vm1: 0 4194304 ioband 253:0 3 4 128 allow=uid:1000 allow-ro=gid:0 allow=tls:CN=a,O=Example "
            "allow-ro=fd00::/8 deny=all\n");
  // The export is published with its rules.
  EXPECT_EQ(fake.access["vm1"], (std::vector<std::string>{"allow=uid:1000", "allow-ro=gid:0", "allow=tls:CN=a,O=Example",
                                                          "allow-ro=fd00::/8", "deny=all"}));
  EXPECT_EQ(client.table()["data"].dump(), table_json);
  EXPECT_EQ(engine.state_json(), state);
  EXPECT_EQ(read_file(path), state);  // restoring does not rewrite it

  // The settings are in the schedulers, not only in the model.
  auto s1 = *engine.scheduling("ioband1");
  EXPECT_EQ(s1.type, GroupType::user);
  EXPECT_EQ(s1.group->weight(s1.device, -1), 40u);
  EXPECT_EQ(s1.group->weight(s1.device, 1000), 30u);
  EXPECT_EQ(s1.group->weight(s1.device, 2000), 20u);
  EXPECT_EQ(s1.group->range_bw(s1.device, 1000), (qos::RangeBw{100, 800}));
  EXPECT_EQ(s1.group->policy(), qos::Policy::range_bw);
  EXPECT_EQ(s1.group->token(), 256u);
  EXPECT_EQ(s1.group->carryover(), 4u);
  EXPECT_EQ(s1.group->io_throttle(), 10u);
  auto s2 = *engine.scheduling("ioband2");
  EXPECT_EQ(s2.group, s1.group);
  EXPECT_EQ(s2.group->weight(s2.device, -1), 10u);
  auto s3 = *engine.scheduling("ioband3");
  EXPECT_EQ(s3.group->limits(s3.device, 15011)->iops_total, (qos::Rate{200, 400, 10}));
  EXPECT_EQ(s3.group->limits(s3.device, 15011)->iops_size, 8192u);
  EXPECT_EQ(s3.group->limits(s3.device, std::nullopt)->bps_total.rate, 100u << 20);
  EXPECT_EQ(s3.group->limits(s3.device, -1)->bps_read.rate, 1u << 20);
  EXPECT_EQ(s3.group->io_limit(), 64u);
  auto vm1 = *engine.scheduling("vm1");
  EXPECT_TRUE(vm1.group->has_group(vm1.device, 0x7f000001));
  EXPECT_EQ(vm1.group->policy(), qos::Policy::weight_iosize);
  EXPECT_TRUE(vm1.group->io_limit_auto());
  EXPECT_EQ(vm1.group->io_limit(), 128u);  // the cap
  EXPECT_FALSE(s3.group->io_limit_auto());

  // The exports are published with their types.
  EXPECT_EQ(fake.exports.size(), 4u);
  EXPECT_EQ(fake.exports["ioband1"].type, GroupType::user);
  EXPECT_EQ(fake.exports["ioband1"].io_limit, 400u);
  EXPECT_EQ(fake.exports["vm1"].type, GroupType::cgroup);
  EXPECT_EQ(fake.exports["ioband2"].type, GroupType::none);

  // And it goes on from there.
  ok(client.remove("ioband2"));
  ok(client.message("ioband1", "detach 2000"));
  FakePlatform fake3;
  Engine third(fake3.platform(), path);
  ASSERT_EQ(third.restore(), "");
  EXPECT_EQ(third.state_json(), engine.state_json());
}

TEST(ControlState, TheFileIsWhatTheFormatSays) {
  TempDir dir;
  FakePlatform fake;
  Engine engine(fake.platform(), dir.file("state.json"));
  Client client{engine};
  ok(client.create("ioband1", "0 8 ioband /dev/sda1 1"));
  ok(client.message("ioband1", "type user"));
  ok(client.message("ioband1", "attach 1000"));
  ok(client.message("ioband1", "limit 1000:iops-read=5"));
  const json saved = json::parse(read_file(engine.state_path()));
  const json expected = json::parse(R"({
    "version": 2,
    "device_groups": [{"id": 1, "policy": "fair", "token": 2048, "carryover": 2, "io_throttle": 4, "io_limit": 128,
                       "io_limit_auto": true}],
    "devices": [{"name": "ioband1", "path": "/dev/sda1", "sectors": 8, "device_group_id": 1, "type": "user",
                 "limits": {},
                 "groups": [{"id": -1, "weight": 100, "range_bw": {"min_kib": 0, "max_kib": 0}, "limits": {}},
                            {"id": 1000, "weight": 100, "range_bw": {"min_kib": 0, "max_kib": 0},
                             "limits": {"iops-read": 5}}]}]
  })");
  EXPECT_EQ(saved, expected);
}

// Version 1 saved dm-ioband's fixed window of 128 for every device group
// nobody set a window on: it reads as today's default, the learned window.
// Another number, or auto, stays as it was saved.
TEST(ControlState, Version1DefaultWindowBecomesTheLearnedOne) {
  auto restored = [](const std::string& groups_json) {
    State state;
    const json file = json::parse(R"({"version":1,"device_groups":)" + groups_json + R"(,"devices":[{"name":"ioband1","path":"/dev/sda1","sectors":8,"device_group_id":1,"type":"none",)"
                                 R"("limits":{},"groups":[{"id":-1,"weight":100,"range_bw":{"min_kib":0,"max_kib":0},)"
                                 R"("limits":{}}]}]})");
    EXPECT_EQ(state_from_json(file, state), std::nullopt);
    return state.device_groups.at(1);
  };
  const std::string base = R"([{"id":1,"policy":"fair","token":2048,"carryover":2,"io_throttle":4,)";
  EXPECT_TRUE(restored(base + R"("io_limit":128,"io_limit_auto":false}])").io_limit_auto);
  EXPECT_TRUE(restored(base + R"("io_limit":128}])").io_limit_auto);
  EXPECT_FALSE(restored(base + R"("io_limit":64,"io_limit_auto":false}])").io_limit_auto);
  EXPECT_EQ(restored(base + R"("io_limit":64,"io_limit_auto":false}])").io_limit, 64u);
  EXPECT_TRUE(restored(base + R"("io_limit":64,"io_limit_auto":true}])").io_limit_auto);
}

// A state file that cannot be read: the start stops with the file and the
// reason, and the file is never written by that daemon.
struct Corrupt {
  const char* what;
  const char* text;
  const char* says;
};

class ControlStateCorrupt : public ::testing::TestWithParam<Corrupt> {};

TEST_P(ControlStateCorrupt, StopsTheStartAndLeavesTheFileAlone) {
  const Corrupt& corrupt = GetParam();
  TempDir dir;
  const std::string path = dir.file("state.json");
  write_file(path, corrupt.text);
  FakePlatform fake;
  Engine engine(fake.platform(), path);
  const std::string error = engine.restore();
  EXPECT_EQ(error.rfind(path + ": ", 0), 0u) << error;
  EXPECT_NE(error.find(corrupt.says), std::string::npos) << corrupt.what << ": " << error;
  EXPECT_TRUE(fake.exports.empty()) << corrupt.what;

  // Even if the daemon went on, it would not overwrite the file.
  Client client{engine};
  json reply = client.create("ioband9", "0 8 ioband /dev/sdb4 1");
  EXPECT_FALSE(reply["ok"]);
  EXPECT_NE(reply["error"].get<std::string>().find("could not be read"), std::string::npos);
  EXPECT_EQ(read_file(path), corrupt.text);
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
}

constexpr const char* kGood =
    R"({"version":1,"device_groups":[{"id":1,"policy":"fair","token":2048,"carryover":2,"io_throttle":4,"io_limit":128}],)"
    R"("devices":[{"name":"ioband1","path":"/dev/sda1","sectors":8,"device_group_id":1,"type":"user","limits":{},)"
    R"("groups":[{"id":-1,"weight":100,"range_bw":{"min_kib":0,"max_kib":0},"limits":{}}]}]})";

std::string good_with(const std::string& from, const std::string& to) {
  std::string text = kGood;
  const auto at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  return text.replace(at, from.size(), to);
}

const std::string kBadWeight = good_with("\"weight\":100", "\"weight\":0");
const std::string kBadType = good_with("\"type\":\"user\"", "\"type\":\"users\"");
const std::string kUnknownKey = good_with("\"sectors\":8", "\"sectors\":8,\"colour\":\"red\"");
const std::string kNoDefault = good_with("\"id\":-1", "\"id\":5");
const std::string kNoGroup = good_with("\"device_group_id\":1", "\"device_group_id\":2");
const std::string kVersion3 = good_with("\"version\":1", "\"version\":3");
const std::string kBadLimits = good_with("\"limits\":{}}]}]", "\"limits\":{\"iops-read-max\":5}}]}]");
const std::string kMissingPath = good_with("\"/dev/sda1\"", "\"/dev/gone\"");
const std::string kTooSmall = good_with("\"/dev/sda1\",\"sectors\":8", "\"/small.img\",\"sectors\":4096");
const std::string kThrottle = good_with("\"io_throttle\":4", "\"io_throttle\":400");
const std::string kBadAuto = good_with("\"io_limit\":128", "\"io_limit\":128,\"io_limit_auto\":1");
const std::string kStringSectors = good_with("\"sectors\":8", "\"sectors\":\"8\"");
const std::string kBadRule = good_with("\"sectors\":8", "\"sectors\":8,\"access\":[\"allow=uid:0\",\"let=all\"]");
const std::string kRuleNumber = good_with("\"sectors\":8", "\"sectors\":8,\"access\":[\"allow=uid:0\",5]");
const std::string kNoRules = good_with("\"sectors\":8", "\"sectors\":8,\"access\":[]");
const std::string kTwice = good_with("}]}]}", "}]},{\"name\":\"ioband1\",\"path\":\"/dev/sda2\",\"sectors\":8,"
                                               "\"device_group_id\":1,\"type\":\"none\",\"limits\":{},\"groups\":"
                                               "[{\"id\":-1,\"weight\":1,\"range_bw\":{\"min_kib\":0,\"max_kib\":0},"
                                               "\"limits\":{}}]}]}");

// nlohmann reports a number beyond a double as out_of_range, not
// parse_error: it escaped read_state_file and ended the start with
// std::terminate instead of a message (found by fuzz/state_file).
const std::string kHugeNumber = good_with("\"carryover\":2", "\"carryover\":7058e282736");

const Corrupt kCorrupt[] = {
    {"empty", "", "parse error at line 1, column 1"},
    {"garbage", "this is not json\n", "parse error at line 1"},
    {"truncated", "{\n  \"version\": 1,\n  \"devices\": [\n", "parse error at line 4"},
    {"not an object", "[1, 2]", "state: expected an object"},
    {"weight 0", kBadWeight.c_str(), "devices[0].groups[0].weight: must be between 1 and 1000000"},
    {"unknown type", kBadType.c_str(), "devices[0].type: unknown type \"users\""},
    {"unknown key", kUnknownKey.c_str(), "devices[0]: unknown key \"colour\""},
    {"no default group", kNoDefault.c_str(), "the default group (id -1) is missing"},
    {"device group missing", kNoGroup.c_str(), "device group 2 is not in device_groups"},
    {"version 3", kVersion3.c_str(), "version: this iobandd reads versions 1 to 2, not 3"},
    {"invalid limits", kBadLimits.c_str(), "iops-read-max needs iops-read"},
    {"path gone", kMissingPath.c_str(), "device ioband1: /dev/gone: No such file or directory"},
    {"path too small", kTooSmall.c_str(), "device ioband1: /small.img is 1048576 bytes"},
    {"throttle above limit", kThrottle.c_str(), "device_groups[0]: io_throttle (400) exceeds io_limit (128)"},
    {"io_limit_auto not a boolean", kBadAuto.c_str(), "device_groups[0].io_limit_auto: expected true or false"},
    {"sectors as a string", kStringSectors.c_str(), "devices[0].sectors: expected a non-negative integer"},
    {"a name twice", kTwice.c_str(), "devices[1].name: device ioband1 appears twice"},
    {"bad access rule", kBadRule.c_str(), "devices[0].access: access rule \"let=all\": unknown action \"let\""},
    {"access rule not a string", kRuleNumber.c_str(), "devices[0].access[1]: expected a string"},
    {"empty access list", kNoRules.c_str(), "devices[0].access: an empty list"},
    {"a number beyond a double", kHugeNumber.c_str(), "number overflow parsing '7058e282736'"},
};

INSTANTIATE_TEST_SUITE_P(Files, ControlStateCorrupt, ::testing::ValuesIn(kCorrupt),
                         [](const ::testing::TestParamInfo<Corrupt>& info) {
                           std::string name;
                           for (char c : std::string(info.param.what)) name += std::isalnum(c) ? c : '_';
                           return name;
                         });

TEST(ControlState, TheGoodFileOfTheCorruptCasesIsGood) {
  TempDir dir;
  write_file(dir.file("state.json"), kGood);
  FakePlatform fake;
  Engine engine(fake.platform(), dir.file("state.json"));
  EXPECT_EQ(engine.restore(), "");
  EXPECT_TRUE(fake.exports.contains("ioband1"));
}

// ioband1 restores, ioband2's disk (/dev/gone) is gone.
std::string with_a_gone_device() {
  return good_with("}]}]}", "}]},{\"name\":\"ioband2\",\"path\":\"/dev/gone\",\"sectors\":8,"
                                        "\"device_group_id\":1,\"type\":\"none\",\"limits\":{},\"groups\":"
                                        "[{\"id\":-1,\"weight\":1,\"range_bw\":{\"min_kib\":0,\"max_kib\":0},"
                                        "\"limits\":{}}]}]}");
}

TEST(ControlState, AFailedRestoreTearsDownWhatItBuilt) {
  TempDir dir;
  const std::string path = dir.file("state.json");
  const std::string text = with_a_gone_device();
  write_file(path, text);
  FakePlatform fake;
  Engine engine(fake.platform(), path);
  EXPECT_EQ(engine.restore(), path + ": device ioband2: /dev/gone: No such file or directory");
  EXPECT_TRUE(fake.exports.empty());
  EXPECT_EQ(fake.released, 1);
  EXPECT_FALSE(engine.scheduling("ioband1"));
  EXPECT_EQ(read_file(path), text);
}

// What the qos layer holds for a device, as one comparable text.
std::string qos_view(const Engine& engine, const std::string& name) {
  const auto scheduling = engine.scheduling(name);
  if (!scheduling) return "<no device>";
  const qos::DeviceGroup& g = *scheduling->group;
  const qos::DeviceId d = scheduling->device;
  std::string text = std::string(qos::to_string(g.policy())) + " token " + std::to_string(g.token()) + " carryover " +
                     std::to_string(g.carryover()) + " io " + std::to_string(g.io_throttle()) + "/" +
                     std::to_string(g.io_limit()) + (g.io_limit_auto() ? " auto" : "") + " model " +
                     std::to_string(g.device_model().depth) + " type " + std::string(nbd::to_string(scheduling->type));
  for (qos::GroupId id : g.groups(d)) {
    const qos::RangeBw range = *g.range_bw(d, id);
    text += " | " + std::to_string(id) + " w" + std::to_string(*g.weight(d, id)) + " r" +
            std::to_string(range.min_kib) + ":" + std::to_string(range.max_kib) +
            (g.limits(d, id)->unlimited() ? "" : " limited");
  }
  return text + (g.limits(d, std::nullopt)->unlimited() ? "" : " | device limited");
}

// A state file that cannot be written refuses every change, and nothing
// changes: not the model, not the qos layer, not the exports, not the file.
TEST(ControlState, AChangeThatCannotBeSavedChangesNothing) {
  TempDir dir;
  const std::string state_dir = dir.file("state");
  std::filesystem::create_directory(state_dir);
  const std::string path = state_dir + "/state.json";
  FakePlatform fake;
  Engine engine(fake.platform(), path);
  ASSERT_EQ(engine.restore(), "");
  Client client{engine};
  ok(client.create("ioband1", "0 44371467 ioband /dev/sda1 1"));
  ok(client.message("ioband1", "type user"));
  ok(client.message("ioband1", "attach 1000"));
  ok(client.message("ioband1", "weight 1000:30"));
  ok(client.message("ioband1", "limit 1000:iops-total=200"));
  const std::string state = engine.state_json();
  const std::string saved = read_file(path);
  const std::string table = client.table().dump();
  const std::string view = qos_view(engine, "ioband1");
  // The directory is gone: the temporary file cannot be created.
  std::filesystem::rename(state_dir, dir.file("moved"));
  const char* messages[] = {
      "weight 40",       "weight 1000:60",      "token 200",         "carryover 8",
      "io_throttle 2",   "io_limit 64",         "io_limit auto",     "policy weight-iosize",
      "attach 2000",     "detach 1000",         "limit iops-total=100", "limit 1000:none",
      "range-bw 1000:10:200", "model depth=8",
  };
  for (const char* message : messages) {
    const json reply = client.message("ioband1", message);
    EXPECT_FALSE(reply.value("ok", true)) << message;
    EXPECT_NE(reply.value("error", std::string()).find("cannot be saved"), std::string::npos) << message << reply;
    EXPECT_EQ(engine.state_json(), state) << message;
    EXPECT_EQ(client.table().dump(), table) << message;
    EXPECT_EQ(qos_view(engine, "ioband1"), view) << message;
  }
  const size_t exports_log = fake.log.size();
  EXPECT_FALSE(client.create("ioband2", "0 44371467 ioband /dev/sda2 1").value("ok", true));
  EXPECT_FALSE(fake.exports.contains("ioband2"));
  EXPECT_FALSE(client.remove("ioband1", true).value("ok", true));
  EXPECT_TRUE(fake.exports.contains("ioband1"));
  for (size_t i = exports_log; i < fake.log.size(); ++i) EXPECT_NE(fake.log[i], "remove_export ioband1 force");
  EXPECT_EQ(engine.state_json(), state);
  EXPECT_EQ(qos_view(engine, "ioband1"), view);
  // Writable again: saved as before.
  std::filesystem::rename(dir.file("moved"), state_dir);
  EXPECT_EQ(read_file(path), saved);
  ok(client.message("ioband1", "weight 40"));
  EXPECT_NE(qos_view(engine, "ioband1"), view);
}

// A remove whose connections outlive the platform's wait changes nothing:
// the device stays in the model and the state file, and says what is left.
TEST(ControlState, ARemoveWithConnectionsLeftChangesNothing) {
  TempDir dir;
  const std::string path = dir.file("state.json");
  FakePlatform fake;
  Engine engine(fake.platform(), path);
  ASSERT_EQ(engine.restore(), "");
  Client client{engine};
  ok(client.create("ioband1", "0 44371467 ioband /dev/sda1 1"));
  const std::string saved = read_file(path);
  fake.connections["ioband1"] = 1;
  fake.remove_error = "1 connection of ioband1 still closing after 5 s";
  const json reply = client.remove("ioband1", true);
  EXPECT_FALSE(reply.value("ok", true));
  EXPECT_NE(reply.value("error", std::string()).find("still closing"), std::string::npos) << reply;
  EXPECT_TRUE(engine.scheduling("ioband1"));
  EXPECT_EQ(read_file(path), saved);
  fake.remove_error.clear();
  ok(client.remove("ioband1", true));
  EXPECT_FALSE(engine.scheduling("ioband1"));
}

// Not strict: a device that cannot be rebuilt is skipped and kept in the
// state file as it was; the others start.
TEST(ControlState, ANotStrictRestoreSkipsADeviceItCannotBuild) {
  TempDir dir;
  const std::string path = dir.file("state.json");
  const std::string text = with_a_gone_device();
  write_file(path, text);
  FakePlatform fake;
  Engine engine(fake.platform(), path);
  EXPECT_EQ(engine.restore(false), "");
  EXPECT_TRUE(fake.exports.contains("ioband1"));
  EXPECT_FALSE(fake.exports.contains("ioband2"));
  Client client{engine};
  ok(client.message("ioband1", "weight 7"));
  const json saved = json::parse(read_file(path));
  ASSERT_EQ(saved["devices"].size(), 2u) << saved.dump();
  EXPECT_EQ(saved["devices"][1]["name"], "ioband2");
  EXPECT_EQ(saved["devices"][1]["groups"][0]["weight"], 1);
  EXPECT_FALSE(client.create("ioband2", "0 2048 ioband /dev/sda2 1").value("ok", true));
  ok(client.remove("ioband2"));
  EXPECT_EQ(json::parse(read_file(path))["devices"].size(), 1u);
}

TEST(ControlState, AnUnreadableFileStopsTheStart) {
  TempDir dir;
  const std::string path = dir.file("state.json");
  std::filesystem::create_directory(path);
  FakePlatform fake;
  Engine engine(fake.platform(), path);
  const std::string error = engine.restore();
  EXPECT_EQ(error.rfind(path + ": ", 0), 0u) << error;
  EXPECT_NE(error.find("Is a directory"), std::string::npos) << error;
}

TEST(ControlState, AtomicWrite) {
  TempDir dir;
  const std::string path = dir.file("f.json");
  ASSERT_FALSE(write_file_atomically(path, "one\n"));
  EXPECT_EQ(read_file(path), "one\n");
  ASSERT_FALSE(write_file_atomically(path, "two\n"));
  EXPECT_EQ(read_file(path), "two\n");
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  auto error = write_file_atomically(dir.file("no/such/dir.json"), "x");
  ASSERT_TRUE(error);
  EXPECT_NE(error->find("No such file or directory"), std::string::npos) << *error;
}

TEST(ControlState, JsonRoundTrip) {
  TempDir dir;
  FakePlatform fake;
  Engine engine(fake.platform(), dir.file("state.json"));
  Client client{engine};
  configure(client);
  State state;
  ASSERT_FALSE(state_from_json(json::parse(engine.state_json()), state));
  EXPECT_EQ(state_to_text(state), engine.state_json());
  EXPECT_EQ(state.devices.size(), 4u);
  EXPECT_EQ(state.device_groups.size(), 3u);
}

}  // namespace
}  // namespace ioband::control
