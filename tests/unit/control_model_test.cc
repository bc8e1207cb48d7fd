// The device model in the control plane: `message NAME 0 model ...` parsed
// and validated (a bad key or value changes nothing), `calibrate` with a
// fake measurement (applied, saved, restored; a refused result keeps the old
// model; a block device with clients is refused), and the state file's
// device_model round trip (old files without it still load).
#include <gtest/gtest.h>

#include "control/engine.h"
#include "control/format.h"
#include "control/language.h"
#include "control/state_file.h"
#include "control/usage.h"
#include "unit/control_fake.h"

namespace ioband::control {
namespace {

using nlohmann::json;
using testing::Client;
using testing::FakePlatform;
using testing::read_file;
using testing::TempDir;
using testing::words;
using testing::write_file;

void ok(const json& reply) { ASSERT_TRUE(reply.value("ok", false)) << reply.dump(); }

// The reply's error, which must be a refusal or usage error.
std::string refused(const json& reply) {
  EXPECT_FALSE(reply.value("ok", true)) << reply.dump();
  return reply.value("error", std::string());
}

std::optional<Error> parse(const std::string& text, Message& out) { return parse_message(words(text), out); }

qos::DeviceModel measured() {
  qos::DeviceModel model;
  model.read_bps = 1'062'130'688;
  model.read_seq_iops = 43'296;
  model.read_rand_iops = 49'395;
  model.write_bps = 784'335'872;
  model.write_seq_iops = 47'022;
  model.write_rand_iops = 39'153;
  model.depth = 21;
  return model;
}

// ---- the message language

TEST(ControlModelMessage, ParsesKeysInOneOrManyWords) {
  Message m;
  ASSERT_EQ(parse("model rbps=500M,rrandiops=40000,depth=16", m), std::nullopt);
  EXPECT_EQ(m.verb, Message::Verb::model);
  ASSERT_EQ(m.model.size(), 3u);
  EXPECT_EQ(m.model[0], (std::pair<std::string, uint64_t>{"rbps", 500ull << 20}));
  EXPECT_EQ(m.model[1], (std::pair<std::string, uint64_t>{"rrandiops", 40000}));
  EXPECT_EQ(m.model[2], (std::pair<std::string, uint64_t>{"depth", 16}));
  EXPECT_FALSE(m.model_default);

  // The line calibrate prints, given back as it is.
  const std::string line = model_line(measured());
  ASSERT_EQ(parse("model " + line, m), std::nullopt) << line;
  qos::DeviceModel model;
  for (const auto& [key, value] : m.model) EXPECT_EQ(set_model_key(model, key, value), "");
  EXPECT_EQ(model, measured());

  ASSERT_EQ(parse("model", m), std::nullopt);
  EXPECT_TRUE(m.model.empty());
  EXPECT_FALSE(m.model_default);
  ASSERT_EQ(parse("model default", m), std::nullopt);
  EXPECT_TRUE(m.model_default);
}

TEST(ControlModelMessage, RefusesBadKeysAndValuesNamingThem) {
  struct Case {
    const char* text;
    const char* says;
  };
  const Case cases[] = {
      {"model speed=5", "unknown model key \"speed\""},
      {"model rbps", "\"rbps\" is not KEY=VAL"},
      {"model rbps=fast", "rbps must be a number of bytes/s"},
      {"model rrandiops=40k", "rrandiops must be a number of requests/s, not \"40k\""},
      {"model depth=-1", "depth must be a number of requests in flight"},
      {"model rbps=1M,rbps=2M", "rbps is given twice"},
      {"model rbps=1M rbps=2M", "rbps is given twice"},
      {"model rrandiops=0", "rrandiops must be between 10 and"},
      {"model rbps=10", "rbps must be between 100000 and"},
      {"model depth=0", "depth must be between 1 and 1024"},
      {"model depth=5000", "depth must be between 1 and 1024"},
      {"model wseqiops=99999999999", "wseqiops must be between"},
      {"model default rbps=1M", "model default takes no KEY=VAL"},
      {"model rbps=1M,", "\"\" is not KEY=VAL"},
  };
  for (const Case& c : cases) {
    Message m;
    auto error = parse(c.text, m);
    ASSERT_TRUE(error) << c.text;
    EXPECT_EQ(error->kind, Error::Kind::usage) << c.text;
    EXPECT_NE(error->message.find(c.says), std::string::npos) << c.text << " -> " << error->message;
    EXPECT_NE(error->usage.find("0 model"), std::string::npos) << c.text;
  }
}

TEST(ControlModelMessage, TheLineIsBlkIocostStyle) {
  EXPECT_EQ(model_line(measured()),
            "rbps=1062130688 rseqiops=43296 rrandiops=49395 wbps=784335872 wseqiops=47022 wrandiops=39153 depth=21");
  const json object = model_to_json(measured(), true);
  EXPECT_EQ(object["rbps"], 1062130688u);
  EXPECT_EQ(object["depth"], 21u);
  EXPECT_EQ(object["calibrated"], true);
}

TEST(ControlModelMessage, HelpExplainsCalibrateAndModel) {
  const std::string help = help_of("calibrate");
  EXPECT_NE(help.find("usage: iobandctl calibrate [--seconds N] NAME"), std::string::npos) << help;
  for (const char* word : {"rbps", "wrandiops", "depth", "scratch file", "block device", "Example"}) {
    EXPECT_NE(help.find(word), std::string::npos) << word;
  }
  EXPECT_NE(help_of("message").find("  model [KEY=VAL"), std::string::npos);
  EXPECT_NE(usage_of("message", "model").find(" 0 model"), std::string::npos);
  EXPECT_NE(help_text().find("iobandctl calibrate"), std::string::npos);
}

// ---- the engine

TEST(ControlModelEngine, SetByHandKeepsTheKeysNotGiven) {
  TempDir dir;
  FakePlatform fake;
  Engine engine(fake.platform(), dir.file("state.json"));
  Client client{engine};
  ok(client.create("ioband1", "0 2048 ioband /dev/sda1 1"));
  ok(client.create("ioband2", "0 2048 ioband /dev/sda2 1"));
  json device = client.table("ioband1")["data"]["devices"][0];
  EXPECT_EQ(device["device_model"], model_to_json(qos::kDefaultDeviceModel, false));
  // Nothing saved while the model is the default.
  EXPECT_FALSE(json::parse(read_file(engine.state_path()))["device_groups"][0].contains("device_model"));

  json reply = client.message("ioband1", "model rbps=800M,rrandiops=60000");
  ok(reply);
  qos::DeviceModel expected = qos::kDefaultDeviceModel;
  expected.read_bps = 800 << 20;
  expected.read_rand_iops = 60000;
  EXPECT_EQ(reply["text"], model_line(expected) + "\n");
  // The model is the device group's: ioband2 shows it too.
  EXPECT_EQ(client.table("ioband2")["data"]["devices"][0]["device_model"], model_to_json(expected, false));
  EXPECT_EQ(client.status("ioband2")["data"]["devices"][0]["device_model"], model_to_json(expected, false));
  EXPECT_EQ(engine.scheduling("ioband1")->group->device_model(), expected);
  EXPECT_FALSE(engine.scheduling("ioband1")->group->device_model_calibrated());
  EXPECT_EQ(json::parse(read_file(engine.state_path()))["device_groups"][0]["device_model"],
            model_to_json(expected, false));

  // Show.
  reply = client.message("ioband2", "model");
  ok(reply);
  EXPECT_EQ(reply["text"], model_line(expected) + "\n");

  // Back to the default: not saved any more.
  ok(client.message("ioband1", "model default"));
  EXPECT_EQ(engine.scheduling("ioband1")->group->device_model(), qos::kDefaultDeviceModel);
  EXPECT_FALSE(json::parse(read_file(engine.state_path()))["device_groups"][0].contains("device_model"));
}

TEST(ControlModelEngine, ABadModelMessageChangesNothing) {
  TempDir dir;
  FakePlatform fake;
  Engine engine(fake.platform(), dir.file("state.json"));
  Client client{engine};
  ok(client.create("ioband1", "0 2048 ioband /dev/sda1 1"));
  ok(client.message("ioband1", "model wbps=300M"));
  const std::string before = read_file(engine.state_path());
  const json table = client.table()["data"];
  const qos::DeviceModel model = engine.scheduling("ioband1")->group->device_model();
  for (const char* bad : {"model wbps=300M,colour=red", "model rbps=0", "model depth=2000", "model rrandiops=x",
                          "model wbps=1M,wbps=2M"}) {
    const std::string error = refused(client.message("ioband1", bad));
    EXPECT_NE(error.find("message ioband1: "), std::string::npos) << bad << ": " << error;
    EXPECT_EQ(read_file(engine.state_path()), before) << bad;
    EXPECT_EQ(client.table()["data"], table) << bad;
    EXPECT_EQ(engine.scheduling("ioband1")->group->device_model(), model) << bad;
  }
  EXPECT_NE(refused(client.message("nosuch", "model rbps=1M")).find("no ioband device named nosuch"),
            std::string::npos);
}

// A fake measurement: the report it gives, and the options it was given.
struct FakeCalibration {
  io::CalibrationReport report;
  std::vector<io::CalibrationOptions> calls;
  std::vector<std::string> held;  // exports currently held
  int held_connections = 0;       // what hold_exports answers

  void install(Platform& p) {
    p.calibrate = [this](const io::CalibrationOptions& options, const std::atomic<bool>&) {
      calls.push_back(options);
      return report;
    };
    p.hold_exports = [this](const std::vector<std::string>& names, bool hold) {
      for (const std::string& name : names) {
        if (hold) {
          held.push_back(name);
        } else {
          held.erase(std::remove(held.begin(), held.end(), name), held.end());
        }
      }
      return held_connections;
    };
  }
};

json calibrate(Client& client, const std::string& name, std::optional<double> seconds = std::nullopt) {
  json request = {{"command", "calibrate"}, {"name", name}};
  if (seconds) request["seconds"] = *seconds;
  return client.send(request);
}

TEST(ControlModelEngine, CalibrateAppliesSavesAndARestartRestores) {
  TempDir dir;
  FakePlatform fake;
  FakeCalibration measurement;
  measurement.report.model = measured();
  measurement.report.seconds = 24.8;
  measurement.report.notes = {"reads: the image", "writes: a scratch file"};
  measurement.report.figures = {{"rbps", 16, measured().read_bps, {1e9, 1.1e9}}};
  Platform platform = fake.platform();
  measurement.install(platform);
  std::string state;
  {
    Engine engine(platform, dir.file("state.json"));
    Client client{engine};
    ok(client.create("vm1", "0 4194304 ioband /vmdisk/vm1.img 3"));
    json reply = calibrate(client, "vm1", 5);
    ok(reply);
    ASSERT_EQ(measurement.calls.size(), 1u);
    EXPECT_EQ(measurement.calls[0].path, "/vmdisk/vm1.img");
    EXPECT_EQ(measurement.calls[0].size, uint64_t{4194304} * 512);
    EXPECT_EQ(measurement.calls[0].seconds, 5);
    EXPECT_FALSE(measurement.calls[0].rewrite_in_place);
    const std::string text = reply["text"];
    EXPECT_EQ(text.substr(0, text.find('\n')), model_line(measured()));
    EXPECT_NE(text.find("vm1: calibrated in 24.8 s, applied to device group 3"), std::string::npos) << text;
    EXPECT_NE(text.find("  reads: the image\n"), std::string::npos) << text;
    EXPECT_NE(text.find("differed by up to 10 % (rbps)"), std::string::npos) << text;
    EXPECT_EQ(reply["data"]["device_model"], model_to_json(measured(), true));
    EXPECT_EQ(reply["data"]["seconds"], 24.8);
    EXPECT_EQ(client.table("vm1")["data"]["devices"][0]["device_model"], model_to_json(measured(), true));
    EXPECT_EQ(engine.scheduling("vm1")->group->device_model(), measured());
    EXPECT_TRUE(engine.scheduling("vm1")->group->device_model_calibrated());
    // Calibrated again on request; the default duration this time.
    ok(calibrate(client, "vm1"));
    ASSERT_EQ(measurement.calls.size(), 2u);
    EXPECT_EQ(measurement.calls[1].seconds, io::kDefaultCalibrationSeconds);
    state = engine.state_json();
    EXPECT_EQ(json::parse(read_file(engine.state_path()))["device_groups"][0]["device_model"],
              model_to_json(measured(), true));
  }
  FakePlatform fake2;
  Engine restarted(fake2.platform(), dir.file("state.json"));
  ASSERT_EQ(restarted.restore(), "");
  EXPECT_EQ(restarted.state_json(), state);
  EXPECT_EQ(restarted.scheduling("vm1")->group->device_model(), measured());
  EXPECT_TRUE(restarted.scheduling("vm1")->group->device_model_calibrated());
  // Set by hand afterwards: no longer "calibrated".
  Client client{restarted};
  ok(client.message("vm1", "model depth=8"));
  EXPECT_EQ(client.table("vm1")["data"]["devices"][0]["device_model"]["calibrated"], false);
  EXPECT_EQ(client.table("vm1")["data"]["devices"][0]["device_model"]["depth"], 8);
}

TEST(ControlModelEngine, ARefusedMeasurementKeepsTheOldModel) {
  TempDir dir;
  FakePlatform fake;
  FakeCalibration measurement;
  Platform platform = fake.platform();
  measurement.install(platform);
  Engine engine(platform, dir.file("state.json"));
  Client client{engine};
  ok(client.create("vm1", "0 4194304 ioband /vmdisk/vm1.img 3"));
  ok(client.message("vm1", "model rbps=300M"));
  const std::string before = read_file(engine.state_path());
  const qos::DeviceModel model = engine.scheduling("vm1")->group->device_model();

  measurement.report.error = "the storage stalled: no request completed for 2 s";
  std::string error = refused(calibrate(client, "vm1"));
  EXPECT_NE(error.find("calibrate vm1: not calibrated: the storage stalled"), std::string::npos) << error;
  EXPECT_NE(error.find("the model stays as it was (" + model_line(model) + ")"), std::string::npos) << error;
  EXPECT_EQ(read_file(engine.state_path()), before);
  EXPECT_EQ(engine.scheduling("vm1")->group->device_model(), model);

  // A model out of bounds that the measurement did not catch: refused by the device group.
  measurement.report.error.clear();
  measurement.report.model = measured();
  measurement.report.model.read_rand_iops = 0;
  error = refused(calibrate(client, "vm1"));
  EXPECT_NE(error.find("rrandiops must be between"), std::string::npos) << error;
  EXPECT_EQ(read_file(engine.state_path()), before);
  EXPECT_EQ(engine.scheduling("vm1")->group->device_model(), model);

  // Usage.
  json reply = calibrate(client, "vm1", 0.5);
  EXPECT_EQ(reply["kind"], "usage");
  EXPECT_NE(refused(reply).find("--seconds must be from 1.0 to 60.0, not 0.5"), std::string::npos);
  EXPECT_EQ(calibrate(client, "vm1", 61)["kind"], "usage");
  EXPECT_NE(refused(calibrate(client, "nosuch")).find("no ioband device named nosuch"), std::string::npos);
  EXPECT_EQ(client.send({{"command", "calibrate"}})["kind"], "usage");
  EXPECT_EQ(client.send({{"command", "calibrate"}, {"name", "vm1"}, {"seconds", "ten"}})["kind"], "usage");
  client.may_change = false;
  EXPECT_NE(refused(calibrate(client, "vm1")).find("permission denied"), std::string::npos);
  EXPECT_EQ(measurement.calls.size(), 2u);
}

TEST(ControlModelEngine, OneCalibrationAtATimeAndItsDeviceStays) {
  TempDir dir;
  FakePlatform fake;
  FakeCalibration measurement;
  measurement.report.model = measured();
  Platform platform = fake.platform();
  measurement.install(platform);
  Engine engine(platform, dir.file("state.json"));
  Client client{engine};
  ok(client.create("vm1", "0 4194304 ioband /vmdisk/vm1.img 3"));
  ok(client.create("vm2", "0 4194304 ioband /vmdisk/vm2.img 3"));

  Engine::Answer answer =
      engine.answer_line(json({{"command", "calibrate"}, {"name", "vm1"}}).dump(), /*may_change=*/true);
  ASSERT_TRUE(answer.work);
  ASSERT_TRUE(answer.finish);
  // Meanwhile the engine answers, refuses a second calibration and the
  // removal of the device being measured.
  ok(client.status());
  EXPECT_NE(refused(calibrate(client, "vm2")).find("iobandctl calibrate vm1 is under way"), std::string::npos);
  EXPECT_NE(refused(client.remove("vm1")).find("iobandctl calibrate vm1 is under way"), std::string::npos);
  ok(client.message("vm2", "weight 50"));
  answer.work();
  const json reply = json::parse(answer.finish());
  ok(reply);
  EXPECT_EQ(engine.scheduling("vm2")->group->device_model(), measured());
  ok(client.remove("vm1"));
}

TEST(ControlModelEngine, ABlockDeviceIsRewrittenOnlyWithoutConnections) {
  TempDir dir;
  FakePlatform fake;
  fake.paths["/dev/sda1"].block_device = true;
  fake.paths["/dev/sda2"].block_device = true;
  FakeCalibration measurement;
  measurement.report.model = measured();
  Platform platform = fake.platform();
  measurement.install(platform);
  Engine engine(platform, dir.file("state.json"));
  Client client{engine};
  ok(client.create("ioband1", "0 2048 ioband /dev/sda1 1"));
  ok(client.create("other", "0 2048 ioband /dev/sda1 2"));  // the same sectors, another device group
  ok(client.create("ioband2", "0 2048 ioband /dev/sda2 1"));

  fake.connections["other"] = 1;
  measurement.held_connections = 1;
  const std::string error = refused(calibrate(client, "ioband1"));
  EXPECT_NE(error.find("rewriting data in place"), std::string::npos) << error;
  EXPECT_NE(error.find("other (1) has a client connected"), std::string::npos) << error;
  EXPECT_TRUE(measurement.calls.empty());
  EXPECT_TRUE(measurement.held.empty());  // released again

  fake.connections.clear();
  measurement.held_connections = 0;
  Engine::Answer answer =
      engine.answer_line(json({{"command", "calibrate"}, {"name", "ioband1"}}).dump(), /*may_change=*/true);
  ASSERT_TRUE(answer.work);
  // Held meanwhile: both devices on /dev/sda1, not the one on sda2.
  std::vector<std::string> held = measurement.held;
  std::sort(held.begin(), held.end());
  EXPECT_EQ(held, (std::vector<std::string>{"ioband1", "other"}));
  EXPECT_NE(refused(client.remove("other")).find("under way on the same disk"), std::string::npos);
  EXPECT_NE(refused(client.create("third", "0 2048 ioband /dev/sda1 4")).find("rewriting data in place"),
            std::string::npos);
  answer.work();
  ok(json::parse(answer.finish()));
  ASSERT_EQ(measurement.calls.size(), 1u);
  EXPECT_TRUE(measurement.calls[0].rewrite_in_place);
  EXPECT_EQ(measurement.calls[0].size, 2048u * 512);
  EXPECT_TRUE(measurement.held.empty());
  ok(client.create("third", "0 2048 ioband /dev/sda1 4"));
}

// ---- the state file

TEST(ControlModelState, RoundTripAndOldFiles) {
  State state;
  DeviceGroupSettings group;
  group.id = 1;
  group.device_model = measured();
  group.device_model_calibrated = true;
  state.device_groups[1] = group;
  DeviceGroupSettings plain;
  plain.id = 2;
  state.device_groups[2] = plain;
  DeviceState a;
  a.name = "a";
  a.path = "/a.img";
  a.sectors = 8;
  a.device_group_id = 1;
  DeviceState b = a;
  b.name = "b";
  b.device_group_id = 2;
  state.devices = {a, b};

  const json saved = state_to_json(state);
  EXPECT_EQ(saved["device_groups"][0]["device_model"], model_to_json(measured(), true));
  EXPECT_FALSE(saved["device_groups"][1].contains("device_model"));
  State read;
  ASSERT_EQ(state_from_json(saved, read), std::nullopt);
  EXPECT_EQ(read.device_groups, state.device_groups);

  // A file without device_model (older versions, or the default): the default.
  json old = saved;
  old["device_groups"][0].erase("device_model");
  ASSERT_EQ(state_from_json(old, read), std::nullopt);
  EXPECT_EQ(read.device_groups.at(1).device_model, std::nullopt);
  EXPECT_FALSE(read.device_groups.at(1).device_model_calibrated);

  // Damaged: the element and the reason.
  struct Bad {
    const char* key;
    json value;
    const char* says;
  };
  const Bad bads[] = {
      {"rbps", 0u, "device_groups[0].device_model: rbps must be between"},
      {"depth", 4096u, "depth must be between 1 and 1024"},
      {"rrandiops", -5, "device_groups[0].device_model.rrandiops: expected a non-negative integer"},
      {"calibrated", "yes", "device_groups[0].device_model.calibrated: expected true or false"},
      {"colour", "red", "unknown key \"colour\""},
  };
  for (const Bad& bad : bads) {
    json broken = saved;
    broken["device_groups"][0]["device_model"][bad.key] = bad.value;
    auto error = state_from_json(broken, read);
    ASSERT_TRUE(error) << bad.key;
    EXPECT_NE(error->find(bad.says), std::string::npos) << *error;
  }
  json missing = saved;
  missing["device_groups"][0]["device_model"].erase("wbps");
  auto error = state_from_json(missing, read);
  ASSERT_TRUE(error);
  EXPECT_NE(error->find("\"wbps\" is missing"), std::string::npos) << *error;
}

TEST(ControlModelState, AFileWithABadModelStopsTheStart) {
  TempDir dir;
  const std::string path = dir.file("state.json");
  {
    FakePlatform fake;
    Engine engine(fake.platform(), path);
    Client client{engine};
    ok(client.create("ioband1", "0 2048 ioband /dev/sda1 1"));
    ok(client.message("ioband1", "model depth=16"));
  }
  std::string text = read_file(path);
  const auto at = text.find("\"depth\": 16");
  ASSERT_NE(at, std::string::npos) << text;
  text.replace(at, 11, "\"depth\": 0");
  write_file(path, text);
  FakePlatform fake;
  Engine engine(fake.platform(), path);
  const std::string error = engine.restore();
  EXPECT_NE(error.find(path + ": device_groups[0].device_model: depth must be between 1 and 1024"), std::string::npos)
      << error;
  EXPECT_EQ(read_file(path), text);
}

}  // namespace
}  // namespace ioband::control
