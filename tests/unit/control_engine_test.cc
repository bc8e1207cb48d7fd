// The control engine driven through its protocol with a fake platform: the
// dm-ioband reference's examples, their table and status output, the
// effect on the qos layer, and every kind of bad input leaving no trace.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <sys/sysmacros.h>

#include "control/engine.h"
#include "ioband/version.h"
#include "unit/control_fake.h"

namespace ioband::control {
namespace {

using nlohmann::json;
using testing::Client;
using testing::FakePlatform;
using testing::TempDir;

class ControlEngine : public ::testing::Test {
 protected:
  TempDir dir;
  FakePlatform fake;
  Engine engine{fake.platform(), dir.file("state.json")};
  Client client{engine};

  void ok(const json& reply) { ASSERT_TRUE(reply.value("ok", false)) << reply.dump(); }
  qos::DeviceGroup& group_of(const std::string& name) { return *engine.scheduling(name)->group; }
  qos::DeviceId device_of(const std::string& name) { return engine.scheduling(name)->device; }
  uint32_t weight(const std::string& name, int64_t group) {
    return group_of(name).weight(device_of(name), group).value_or(0);
  }

  // Dispatches and completes `count` requests of `bytes` for a group. A
  // request held for a while (a lighter group beside a heavier one that was
  // just served: the anticipation) is dispatched when the scheduler says,
  // as the daemon's reactor does.
  void run_requests(const std::string& name, int64_t group, qos::Direction direction, int count, uint32_t bytes) {
    qos::DeviceGroup& device_group = group_of(name);
    std::vector<qos::Request> requests(count);
    for (qos::Request& request : requests) {
      request.device = device_of(name);
      request.group = group;
      request.direction = direction;
      request.bytes = bytes;
      device_group.enqueue(&request, clock_);
    }
    for (int done = 0; done < count;) {
      qos::Decision decision = device_group.next(clock_);
      if (decision.kind == qos::Decision::Kind::wait) {
        ASSERT_LT(decision.until, clock_ + std::chrono::seconds(1)) << "a request held for good";
        clock_ = decision.until;
        continue;
      }
      ASSERT_EQ(decision.kind, qos::Decision::Kind::dispatch);
      device_group.complete(decision.request, clock_);
      ++done;
    }
  }
  qos::TimePoint clock_ = qos::TimePoint{} + std::chrono::seconds(1);

  void getting_started() {
    ok(client.create("ioband1", "0 44371467 ioband /dev/sda1 1"));
    ok(client.create("ioband2", "0 44371467 ioband /dev/sda2 1"));
  }
};

TEST_F(ControlEngine, GettingStarted) {
  getting_started();
  EXPECT_TRUE(fake.exports.contains("ioband1"));
  EXPECT_TRUE(fake.exports.contains("ioband2"));
  EXPECT_EQ(fake.exports["ioband1"].sectors, 44371467u);
  EXPECT_EQ(fake.exports["ioband1"].path, "/dev/sda1");
  // Same device group ID: one scheduler.
  EXPECT_EQ(engine.scheduling("ioband1")->group, engine.scheduling("ioband2")->group);
  EXPECT_NE(device_of("ioband1"), device_of("ioband2"));

  // Bandwidth control.
  ok(client.message("ioband1", "weight 40"));
  ok(client.message("ioband2", "weight 10"));
  EXPECT_EQ(weight("ioband1", -1), 40u);
  EXPECT_EQ(weight("ioband2", -1), 10u);
  EXPECT_EQ(client.table_text(),
            "ioband1: 0 44371467 ioband 8:1 1 4 128\n"
            "ioband2: 0 44371467 ioband 8:2 1 4 128\n");

  // Additional bandwidth control.
  ok(client.message("ioband1", "type user"));
  ok(client.message("ioband1", "attach 1000"));
  ok(client.message("ioband1", "attach 2000"));
  ok(client.message("ioband1", "weight 1000:30"));
  ok(client.message("ioband1", "weight 2000:20"));
  EXPECT_EQ(weight("ioband1", 1000), 30u);
  EXPECT_EQ(weight("ioband1", 2000), 20u);
  EXPECT_EQ(weight("ioband1", -1), 40u);
  EXPECT_EQ(weight("ioband2", -1), 10u);
  EXPECT_EQ(fake.types["ioband1"], GroupType::user);
  EXPECT_EQ(client.status_text(),
            "ioband1: 0 44371467 ioband 1 -1 0 0 0 0 0 0 1000 0 0 0 0 0 0 2000 0 0 0 0 0 0\n"
            "ioband2: 0 44371467 ioband 1 -1 0 0 0 0 0 0\n");
  json table = client.table("ioband1");
  ok(table);
  EXPECT_EQ(table["text"], "0 44371467 ioband 8:1 1 4 128\n");
  const json& device = table["data"]["devices"][0];
  EXPECT_EQ(device["type"], "user");
  EXPECT_EQ(device["groups"].size(), 3u);
  EXPECT_EQ(device["groups"][0]["id"], -1);
  EXPECT_EQ(device["groups"][0]["weight"], 40);
  EXPECT_EQ(device["groups"][1]["id"], 1000);
  EXPECT_EQ(device["groups"][1]["weight"], 30);
  EXPECT_EQ(device["groups"][2]["weight"], 20);

  // Remove the ioband devices.
  ok(client.remove("ioband1"));
  EXPECT_FALSE(fake.exports.contains("ioband1"));
  EXPECT_EQ(fake.released, 0);  // ioband2 still uses device group 1
  ok(client.remove("ioband2"));
  EXPECT_EQ(fake.released, 1);
  EXPECT_TRUE(fake.exports.empty());
  EXPECT_EQ(client.table_text(), "No devices found\n");
  EXPECT_EQ(client.status_text(), "No devices found\n");
  EXPECT_FALSE(engine.scheduling("ioband1"));
}

TEST_F(ControlEngine, TableExampleOfTheReference) {
  ok(client.create("ioband1", "0 44371467 ioband /dev/xvdc1 128 10 400"));
  EXPECT_EQ(client.table_text(), "ioband1: 0 44371467 ioband 202:33 128 10 400\n");
  EXPECT_EQ(client.table("", "ioband")["text"], "ioband1: 0 44371467 ioband 202:33 128 10 400\n");
  EXPECT_EQ(client.table("", "linear")["text"], "");
  EXPECT_EQ(client.table("ioband1")["text"], "0 44371467 ioband 202:33 128 10 400\n");
  EXPECT_EQ(group_of("ioband1").io_throttle(), 10u);
  EXPECT_EQ(group_of("ioband1").io_limit(), 400u);
  EXPECT_EQ(fake.exports["ioband1"].io_throttle, 10u);
  EXPECT_EQ(fake.exports["ioband1"].io_limit, 400u);
  json table = client.table("ioband1");
  const json& device = table["data"]["devices"][0];
  EXPECT_EQ(device["major"], 202);
  EXPECT_EQ(device["minor"], 33);
  EXPECT_EQ(device["device_group_id"], 128);
  EXPECT_EQ(device["io_throttle"], 10);
  EXPECT_EQ(device["io_limit"], 400);
  EXPECT_EQ(device["path"], "/dev/xvdc1");
  EXPECT_EQ(device["policy"], "fair");
}

TEST_F(ControlEngine, Targets) {
  json reply = client.send({{"command", "targets"}});
  ok(reply);
  EXPECT_EQ(reply["text"], "ioband           v" + std::string(kVersion) + "\n");
  EXPECT_EQ(reply["data"]["targets"][0]["version"], kVersion);
}

TEST_F(ControlEngine, TwoDeviceGroupsAreControlledIndividually) {
  ok(client.create("ioband1", "0 44371467 ioband /dev/sda1 1"));
  ok(client.create("ioband2", "0 44371467 ioband /dev/sda2 1"));
  ok(client.create("ioband3", "0 2097152 ioband /dev/sdb3 2"));
  ok(client.create("ioband4", "0 2097152 ioband /dev/sdb4 2"));
  EXPECT_EQ(engine.scheduling("ioband3")->group, engine.scheduling("ioband4")->group);
  EXPECT_NE(engine.scheduling("ioband1")->group, engine.scheduling("ioband3")->group);
  ok(client.message("ioband3", "io_throttle 16"));
  ok(client.message("ioband4", "io_limit 64"));
  ok(client.message("ioband1", "token 256"));
  EXPECT_EQ(client.table_text(),
            "ioband1: 0 44371467 ioband 8:1 1 4 128\n"
            "ioband2: 0 44371467 ioband 8:2 1 4 128\n"
            "ioband3: 0 2097152 ioband 8:19 2 16 64\n"
            "ioband4: 0 2097152 ioband 8:20 2 16 64\n");
  EXPECT_EQ(group_of("ioband2").token(), 256u);
  EXPECT_EQ(group_of("ioband3").token(), qos::kDefaultToken);
  EXPECT_EQ(group_of("ioband4").io_throttle(), 16u);
}

TEST_F(ControlEngine, Example1And3PartitionsThenProcesses) {
  getting_started();
  ok(client.message("ioband1", "weight 80"));
  ok(client.message("ioband2", "weight 40"));
  // Example #3, literally: "type user." ends a sentence in the reference.
  ok(client.message("ioband2", "type user."));
  ok(client.message("ioband2", "attach 1000"));
  ok(client.message("ioband2", "weight 1000:20"));
  EXPECT_EQ(weight("ioband1", -1), 80u);
  EXPECT_EQ(weight("ioband2", -1), 40u);
  EXPECT_EQ(weight("ioband2", 1000), 20u);
  EXPECT_EQ(fake.types["ioband2"], GroupType::user);
  EXPECT_EQ(fake.types["ioband1"], GroupType::none);
  EXPECT_EQ(client.status_text(),
            "ioband1: 0 44371467 ioband 1 -1 0 0 0 0 0 0\n"
            "ioband2: 0 44371467 ioband 1 -1 0 0 0 0 0 0 1000 0 0 0 0 0 0\n");
}

TEST_F(ControlEngine, Example5BlktapProcesses) {
  ok(client.create("ioband1", "0 44371467 ioband /dev/sda1 1"));
  ok(client.message("ioband1", "type pid"));
  ok(client.message("ioband1", "attach 15011"));
  ok(client.message("ioband1", "weight 15011:80"));
  ok(client.message("ioband1", "attach 15276"));
  ok(client.message("ioband1", "weight 15276:40"));
  EXPECT_EQ(weight("ioband1", 15011), 80u);
  EXPECT_EQ(weight("ioband1", 15276), 40u);
  EXPECT_EQ(group_of("ioband1").groups(device_of("ioband1")), (std::vector<qos::GroupId>{-1, 15011, 15276}));
  EXPECT_EQ(client.table_text(), "ioband1: 0 44371467 ioband 8:1 1 4 128\n");

  run_requests("ioband1", 15011, qos::Direction::read, 3, 4096);
  run_requests("ioband1", 15276, qos::Direction::write, 2, 1000);
  run_requests("ioband1", 4242, qos::Direction::read, 1, 512);  // not attached: the default group
  // 15276's two writes waited: it is lighter than 15011, which had just been
  // served a few requests at a time (the anticipation), so they count as
  // delayed.
  EXPECT_EQ(client.status_text(), "ioband1: 0 44371467 ioband 1 -1 1 0 1 0 0 0 15011 3 0 24 0 0 0 15276 0 0 0 2 2 4\n");
  json status = client.status("ioband1");
  EXPECT_EQ(status["text"], "0 44371467 ioband 1 -1 1 0 1 0 0 0 15011 3 0 24 0 0 0 15276 0 0 0 2 2 4\n");
  const json& groups = status["data"]["devices"][0]["groups"];
  EXPECT_EQ(groups[1]["id"], 15011);
  EXPECT_EQ(groups[1]["read_requests"], 3);
  EXPECT_EQ(groups[1]["read_sectors"], 24);
  EXPECT_EQ(groups[2]["write_sectors"], 4);
  EXPECT_EQ(groups[2]["delay_histogram"].size(), qos::kDelayBuckets);
  EXPECT_EQ(status["data"]["devices"][0]["connections"], 0);

  // Reset status counter.
  const std::string saved = testing::read_file(engine.state_path());
  ok(client.message("ioband1", "reset"));
  EXPECT_EQ(client.status_text(), "ioband1: 0 44371467 ioband 1 -1 0 0 0 0 0 0 15011 0 0 0 0 0 0 15276 0 0 0 0 0 0\n");
  EXPECT_EQ(testing::read_file(engine.state_path()), saved);
}

TEST_F(ControlEngine, TypeAttachAndDetachReclassifyLiveConnections) {
  ok(client.create("ioband1", "0 8 ioband /dev/sda1 1"));
  fake.log.clear();
  ok(client.message("ioband1", "type gid"));
  ok(client.message("ioband1", "type gid"));  // unchanged: nothing to do
  ok(client.message("ioband1", "attach 100"));
  ok(client.message("ioband1", "weight 100:5"));
  ok(client.message("ioband1", "detach 100"));
  ok(client.message("ioband1", "type cgroup"));
  ok(client.message("ioband1", "attach 127.0.0.1"));
  EXPECT_EQ(fake.log, (std::vector<std::string>{"set_type ioband1 gid", "set_type ioband1 gid", "set_type ioband1 gid",
                                                "set_type ioband1 cgroup", "set_type ioband1 cgroup"}));
  EXPECT_TRUE(group_of("ioband1").has_group(device_of("ioband1"), 0x7f000001));
  EXPECT_FALSE(group_of("ioband1").has_group(device_of("ioband1"), 100));
  EXPECT_EQ(engine.scheduling("ioband1")->type, GroupType::cgroup);
}

TEST_F(ControlEngine, DeviceGroupSettings) {
  getting_started();
  ok(client.message("ioband1", "policy weight-iosize"));
  ok(client.message("ioband2", "carryover 5"));
  ok(client.message("ioband1", "io_limit 300"));
  ok(client.message("ioband2", "io_throttle 200"));
  qos::DeviceGroup& group = group_of("ioband1");
  EXPECT_EQ(group.policy(), qos::Policy::weight_iosize);
  EXPECT_EQ(group.carryover(), 5u);
  EXPECT_EQ(group.io_limit(), 300u);
  EXPECT_EQ(group.io_throttle(), 200u);
  json table = client.table();
  for (const json& device : table["data"]["devices"]) {
    EXPECT_EQ(device["policy"], "weight-iosize");
    EXPECT_EQ(device["carryover"], 5);
  }
  EXPECT_EQ(table["text"],
            "ioband1: 0 44371467 ioband 8:1 1 200 300\n"
            "ioband2: 0 44371467 ioband 8:2 1 200 300\n");
}

TEST_F(ControlEngine, IoLimitAuto) {
  getting_started();
  qos::DeviceGroup& group = group_of("ioband1");
  // The default: the window is learned, io_limit caps it.
  EXPECT_TRUE(group.io_limit_auto());
  json device = client.table()["data"]["devices"][0];
  EXPECT_EQ(device["io_limit_auto"], true);
  EXPECT_EQ(device["io_window"], group.io_window());

  // A number is dm-ioband's fixed window; auto brings the learned one back.
  ok(client.message("ioband1", "io_limit 128"));
  EXPECT_FALSE(group.io_limit_auto());
  device = client.table()["data"]["devices"][0];
  EXPECT_EQ(device["io_limit_auto"], false);
  EXPECT_EQ(device["io_window"], device["io_limit"]);

  ok(client.message("ioband1", "io_limit auto"));
  EXPECT_TRUE(group.io_limit_auto());
  const uint32_t cap = group.io_limit();
  json table = client.table();
  for (const json& d : table["data"]["devices"]) {
    EXPECT_EQ(d["io_limit_auto"], true);  // the whole device group
    EXPECT_EQ(d["io_limit"], cap);        // the cap, still numeric in the table line
    EXPECT_EQ(d["io_window"], group.io_window());
    EXPECT_LE(d["io_window"].get<uint32_t>(), cap);
  }
  json status = client.status();
  EXPECT_EQ(status["data"]["devices"][0]["io_limit_auto"], true);
  EXPECT_EQ(status["data"]["devices"][0]["io_window"], group.io_window());
  // Why the window moved: counted by rule since it started.
  const json& steps = status["data"]["devices"][0]["io_window_steps"];
  EXPECT_EQ(steps["up"], group.io_window_steps().up);
  for (const char* key : {"down_rate", "down_order", "down_unused"}) EXPECT_TRUE(steps.contains(key)) << key;
  // The model learned while serving is shown beside the configured one.
  EXPECT_EQ(status["data"]["devices"][0]["learned_model"]["rrandiops"],
            std::llround(group.learned_device_model().read_rand_iops));

  // A number turns it off.
  ok(client.message("ioband1", "io_limit 64"));
  EXPECT_FALSE(group.io_limit_auto());
  EXPECT_EQ(group.io_window(), 64u);
  device = client.table()["data"]["devices"][0];
  EXPECT_EQ(device["io_limit_auto"], false);
  EXPECT_EQ(device["io_window"], 64);
  EXPECT_FALSE(client.status()["data"]["devices"][0].contains("io_window_steps"));  // nothing learned
  EXPECT_FALSE(client.message("ioband1", "io_limit automatic")["ok"]);
}

TEST_F(ControlEngine, CreateWithThrottleAndLimitSetsTheDeviceGroup) {
  ok(client.create("ioband1", "0 8 ioband /dev/sda1 1"));
  ok(client.create("ioband2", "0 8 ioband /dev/sda2 1 20 200"));
  EXPECT_EQ(client.table_text(),
            "ioband1: 0 8 ioband 8:1 1 20 200\n"
            "ioband2: 0 8 ioband 8:2 1 20 200\n");
  // A creation that fails leaves the device group's values as they were.
  fake.create_error = "/dev/sdb3: Permission denied";
  json reply = client.create("ioband3", "0 8 ioband /dev/sdb3 1 300 400");
  EXPECT_FALSE(reply["ok"]);
  EXPECT_EQ(reply["error"], "create ioband3: /dev/sdb3: Permission denied");
  EXPECT_EQ(group_of("ioband1").io_throttle(), 20u);
  EXPECT_EQ(group_of("ioband1").io_limit(), 200u);
  EXPECT_EQ(group_of("ioband1").devices().size(), 2u);
}

TEST_F(ControlEngine, RangeBwAndLimits) {
  ok(client.create("ioband1", "0 8 ioband /dev/sda1 1"));
  ok(client.message("ioband1", "type user"));
  ok(client.message("ioband1", "attach 1000"));
  ok(client.message("ioband1", "policy range-bw"));
  ok(client.message("ioband1", "range-bw 1000:100:500"));
  ok(client.message("ioband1", "range-bw 0:900"));
  EXPECT_EQ(group_of("ioband1").range_bw(device_of("ioband1"), 1000), (qos::RangeBw{100, 500}));
  EXPECT_EQ(group_of("ioband1").range_bw(device_of("ioband1"), -1), (qos::RangeBw{0, 900}));

  ok(client.message("ioband1", "limit iops-total=1000,bps-write=10M"));
  ok(client.message("ioband1", "limit 1000:iops-read=50,iops-read-max=100,iops-read-max-length=3"));
  ok(client.message("ioband1", "limit 1000:bps-total=1M"));  // adds to the group's limits
  ok(client.message("ioband1", "limit -1:iops-write=7"));
  const auto device_limits = group_of("ioband1").limits(device_of("ioband1"), std::nullopt);
  EXPECT_EQ(device_limits->iops_total.rate, 1000u);
  EXPECT_EQ(device_limits->bps_write.rate, 10u << 20);
  const auto group_limits = group_of("ioband1").limits(device_of("ioband1"), 1000);
  EXPECT_EQ(group_limits->iops_read, (qos::Rate{50, 100, 3}));
  EXPECT_EQ(group_limits->bps_total.rate, 1u << 20);
  EXPECT_EQ(group_of("ioband1").limits(device_of("ioband1"), -1)->iops_write.rate, 7u);

  json device = client.table("ioband1")["data"]["devices"][0];
  EXPECT_EQ(device["limits"], (json{{"iops-total", 1000}, {"bps-write", 10 << 20}}));
  EXPECT_EQ(device["groups"][1]["limits"],
            (json{{"iops-read", 50}, {"iops-read-max", 100}, {"iops-read-max-length", 3}, {"bps-total", 1 << 20}}));
  EXPECT_EQ(device["groups"][1]["range_bw"], (json{{"min_kib", 100}, {"max_kib", 500}}));

  ok(client.message("ioband1", "limit 1000:none"));
  ok(client.message("ioband1", "limit iops-total=0,bps-write=0"));
  EXPECT_TRUE(group_of("ioband1").limits(device_of("ioband1"), 1000)->unlimited());
  EXPECT_TRUE(group_of("ioband1").limits(device_of("ioband1"), std::nullopt)->unlimited());
  device = client.table("ioband1")["data"]["devices"][0];
  EXPECT_EQ(device["limits"], json::object());
}

TEST_F(ControlEngine, ReservationsAndLatencyTargetsRideOnLimitKeys) {
  ok(client.create("ioband1", "0 8 ioband /dev/sda1 1"));
  ok(client.message("ioband1", "type user"));
  ok(client.message("ioband1", "attach 1000"));
  ok(client.message("ioband1", "attach 2000"));
  // A capacity of 10,000 reserved IOPS (4 KiB random reads), measured.
  ok(client.message("ioband1", "model rrandiops=10000"));
  ok(client.message("ioband1", "limit 1000:reservation-iops=5000,latency-target=2ms"));
  const std::string saved = testing::read_file(engine.state_path());
  json reply = client.message("ioband1", "limit 2000:reservation-iops=4500,iops-total=100");
  EXPECT_FALSE(reply["ok"]);
  EXPECT_EQ(reply["kind"], "refused");
  const std::string error = reply["error"].get<std::string>();
  EXPECT_NE(error.find("reservations would total 9500 IOPS"), std::string::npos) << error;
  EXPECT_NE(error.find("capacity of 10000 IOPS"), std::string::npos) << error;
  // Nothing changed: not the qos layer, not the model, not the file.
  EXPECT_EQ(group_of("ioband1").limits(device_of("ioband1"), 2000), qos::Limits{});
  EXPECT_EQ(testing::read_file(engine.state_path()), saved);
  // A whole device's latency target: saved with its limits, shown beside its groups.
  ok(client.message("ioband1", "limit latency-target=3ms,latency-percentile=95"));
  EXPECT_EQ(group_of("ioband1").limits(device_of("ioband1"), std::nullopt)->latency_target_us, 3000u);
  EXPECT_EQ(client.table("ioband1")["data"]["devices"][0]["limits"],
            (json{{"latency-target-us", 3000}, {"latency-percentile-permille", 950}}));
  EXPECT_EQ(client.status("ioband1")["data"]["devices"][0]["latency_target"]["target_us"], 3000);
  EXPECT_EQ(client.status("ioband1")["data"]["devices"][0]["latency_target"]["percentile"], 95.0);
  reply = client.message("ioband1", "limit latency-target=5us");
  EXPECT_FALSE(reply["ok"]);
  EXPECT_NE(reply["error"].get<std::string>().find("latency-target must be from 10us to 10s"), std::string::npos)
      << reply["error"];
  EXPECT_EQ(group_of("ioband1").limits(device_of("ioband1"), std::nullopt)->latency_target_us, 3000u);
  ok(client.message("ioband1", "limit none"));
  EXPECT_FALSE(client.status("ioband1")["data"]["devices"][0].contains("latency_target"));

  reply = client.message("ioband1", "limit 2000:reservation-bps=10M,latency-percentile=99.9");
  EXPECT_FALSE(reply["ok"]);
  EXPECT_NE(reply["error"].get<std::string>().find("latency-percentile needs latency-target"), std::string::npos);
  EXPECT_EQ(group_of("ioband1").limits(device_of("ioband1"), 2000), qos::Limits{});
  ok(client.message("ioband1", "limit 2000:reservation-bps=10M,latency-target=500us,latency-percentile=99.9"));
  json device = client.table("ioband1")["data"]["devices"][0];
  EXPECT_EQ(device["groups"][1]["limits"], (json{{"reservation-iops", 5000}, {"latency-target-us", 2000}}));
  EXPECT_EQ(device["groups"][2]["limits"], (json{{"reservation-bps", 10 << 20},
                                                 {"latency-target-us", 500},
                                                 {"latency-percentile-permille", 999}}));
  json status = client.status("ioband1")["data"]["devices"][0];
  json group = status["groups"][1];
  EXPECT_EQ(group["reservation"]["iops"], 5000);
  EXPECT_EQ(group["reservation"]["effective_iops"], 5000);
  EXPECT_EQ(group["reservation"]["met"], true);
  EXPECT_EQ(group["reservation"]["scaled"], false);
  EXPECT_EQ(group["latency_target"]["target_us"], 2000);
  EXPECT_EQ(group["latency_target"]["percentile"], 99.0);
  EXPECT_EQ(group["latency_target"]["measured_us"], nullptr);
  EXPECT_EQ(status["groups"][2]["latency_target"]["percentile"], 99.9);
  EXPECT_FALSE(status["groups"][0].contains("reservation"));
  EXPECT_EQ(status["reservations"]["capacity_iops"], 10000);
  EXPECT_EQ(status["reservations"]["scaled"], false);

  // Saved: a second engine on the same state file has them again.
  FakePlatform fake2;
  Engine again{fake2.platform(), dir.file("state.json")};
  ASSERT_EQ(again.restore(), "");
  const auto restored = again.scheduling("ioband1");
  ASSERT_TRUE(restored && restored->group);
  EXPECT_EQ(restored->group->limits(restored->device, 1000)->reservation_iops, 5000u);
  EXPECT_EQ(restored->group->limits(restored->device, 2000)->latency_percentile_permille, 999u);
  ASSERT_TRUE(restored->group->reservation(restored->device, 1000).has_value());
  ASSERT_TRUE(restored->group->latency_target(restored->device, 2000).has_value());

  ok(client.message("ioband1", "limit 1000:none"));
  EXPECT_FALSE(group_of("ioband1").reservation(device_of("ioband1"), 1000).has_value());
  EXPECT_FALSE(group_of("ioband1").latency_target(device_of("ioband1"), 1000).has_value());
}

TEST_F(ControlEngine, AccessListsAtCreateAndByMessage) {
  ok(client.create("vm1", "0 8 ioband /vmdisk/vm1.img 1 allow=uid:1000 allow-ro=all"));
  EXPECT_EQ(fake.access["vm1"], (std::vector<std::string>{"allow=uid:1000", "allow-ro=all"}));
  EXPECT_EQ(client.table_text(), "vm1: 0 8 ioband 253:0 1 4 128 allow=uid:1000 allow-ro=all\n");
  json shown = client.message("vm1", "access");
  ok(shown);
  EXPECT_EQ(shown["text"], "allow=uid:1000 allow-ro=all\n");

  const std::string state = engine.state_json();
  fake.log.clear();
  ok(client.message("vm1", "access allow=uid:1000 allow-ro=all"));  // the same list: nothing to do
  EXPECT_TRUE(fake.log.empty());
  EXPECT_EQ(engine.state_json(), state);

  json changed = client.message("vm1", "access deny=10.0.0.0/8 allow=tcp");
  ok(changed);
  EXPECT_EQ(changed["text"], "deny=10.0.0.0/8 allow=tcp\n");
  EXPECT_EQ(changed["data"]["device"]["access"], json::array({"deny=10.0.0.0/8", "allow=tcp"}));
  EXPECT_EQ(fake.log, std::vector<std::string>{"set_access vm1"});
  EXPECT_EQ(fake.access["vm1"], (std::vector<std::string>{"deny=10.0.0.0/8", "allow=tcp"}));
  EXPECT_NE(testing::read_file(engine.state_path()).find("\"deny=10.0.0.0/8\""), std::string::npos);

  ok(client.message("vm1", "access allow=all"));
  EXPECT_EQ(fake.access["vm1"], std::vector<std::string>{"allow=all"});
  EXPECT_EQ(client.table_text(), "vm1: 0 8 ioband 253:0 1 4 128\n");
  EXPECT_EQ(testing::read_file(engine.state_path()).find("\"access\""), std::string::npos);
}

TEST_F(ControlEngine, RemoveIsRefusedWhileClientsAreConnectedUnlessForced) {
  getting_started();
  fake.connections["ioband1"] = 2;
  const std::string saved = testing::read_file(engine.state_path());
  json reply = client.remove("ioband1");
  EXPECT_FALSE(reply["ok"]);
  EXPECT_EQ(reply["kind"], "refused");
  EXPECT_NE(reply["error"].get<std::string>().find("2 clients are connected"), std::string::npos);
  EXPECT_NE(reply["error"].get<std::string>().find("--force"), std::string::npos);
  EXPECT_TRUE(fake.exports.contains("ioband1"));
  EXPECT_EQ(testing::read_file(engine.state_path()), saved);

  fake.log.clear();
  ok(client.remove("ioband1", true));
  EXPECT_EQ(fake.log, std::vector<std::string>{"remove_export ioband1 force"});
  EXPECT_EQ(client.table_text(), "ioband2: 0 44371467 ioband 8:2 1 4 128\n");
  // The name can be used again, in another device group.
  ok(client.create("ioband1", "0 8 ioband /dev/sdb3 7"));
  EXPECT_NE(engine.scheduling("ioband1")->group, engine.scheduling("ioband2")->group);
}

// The daemon's remove: the wait for the connections is work for another
// thread; the control thread answers others meanwhile.
TEST(ControlEngineRemove, WaitsOffTheControlThreadHoldingTheNameThenRemovesOrPutsBack) {
  TempDir dir;
  FakePlatform fake;
  fake.two_step_remove = true;
  Engine engine{fake.platform(), dir.file("state.json")};
  Client client{engine};
  ASSERT_TRUE(client.create("ioband1", "0 44371467 ioband /dev/sda1 1")["ok"]);
  ASSERT_TRUE(client.create("ioband2", "0 44371467 ioband /dev/sda2 2")["ok"]);
  fake.connections["ioband1"] = 1;
  const auto remove_line = json({{"command", "remove"}, {"name", "ioband1"}, {"force", true}}).dump();

  // Connections outlive the wait: the device comes back, and says why.
  fake.remove_error = "1 connection of ioband1 still closing after 5 s";
  Engine::Answer answer = engine.answer_line(remove_line, true);
  ASSERT_TRUE(answer.work && answer.finish);
  EXPECT_EQ(fake.log.back(), "unpublish_export ioband1 force");
  // Meanwhile: out of the table and the state file, its name held.
  EXPECT_EQ(client.table_text(), "ioband2: 0 44371467 ioband 8:2 2 4 128\n");
  EXPECT_EQ(testing::read_file(engine.state_path()).find("ioband1"), std::string::npos);
  json again = client.create("ioband1", "0 8 ioband /dev/sdb3 3");
  EXPECT_FALSE(again["ok"]);
  EXPECT_NE(again["error"].get<std::string>().find("is being removed"), std::string::npos) << again.dump();
  json twice = client.remove("ioband1", true);
  EXPECT_FALSE(twice["ok"]);
  EXPECT_NE(twice["error"].get<std::string>().find("under way"), std::string::npos) << twice.dump();
  answer.work();
  json left = json::parse(answer.finish());
  EXPECT_FALSE(left["ok"]);
  EXPECT_NE(left["error"].get<std::string>().find("still closing"), std::string::npos) << left.dump();
  EXPECT_NE(client.table_text().find("ioband1: 0 44371467 ioband 8:1 1"), std::string::npos);
  EXPECT_NE(testing::read_file(engine.state_path()).find("ioband1"), std::string::npos);

  // Gone this time: removed from its device group, which goes with it.
  fake.remove_error.clear();
  answer = engine.answer_line(remove_line, true);
  ASSERT_TRUE(answer.work);
  answer.work();
  EXPECT_TRUE(json::parse(answer.finish())["ok"]);
  EXPECT_EQ(fake.log.back(), "release_device_group 1");
  EXPECT_FALSE(engine.scheduling("ioband1").has_value());
  EXPECT_EQ(client.table_text(), "ioband2: 0 44371467 ioband 8:2 2 4 128\n");
  EXPECT_TRUE(client.create("ioband1", "0 8 ioband /dev/sdb3 3")["ok"]);
}

TEST_F(ControlEngine, ReplacesFreedDeviceIdsInADeviceGroup) {
  ok(client.create("a", "0 8 ioband /dev/sda1 1"));
  ok(client.create("b", "0 8 ioband /dev/sda2 1"));
  ok(client.create("c", "0 8 ioband /dev/sdb3 1"));
  const qos::DeviceId b = device_of("b");
  ok(client.remove("b"));
  ok(client.create("d", "0 8 ioband /dev/sdb4 1"));
  EXPECT_EQ(device_of("d"), b);
  EXPECT_EQ(group_of("a").devices().size(), 3u);
}

TEST_F(ControlEngine, OnlyTheOwnerMayChangeState) {
  getting_started();
  const std::string state = engine.state_json();
  Client stranger{engine, false};
  for (const json& reply : {stranger.create("x", "0 8 ioband /dev/sdb3 1"), stranger.message("ioband1", "weight 5"),
                            stranger.message("ioband1", "reset"), stranger.remove("ioband1")}) {
    EXPECT_FALSE(reply["ok"]);
    EXPECT_EQ(reply["kind"], "refused");
    EXPECT_NE(reply["error"].get<std::string>().find("permission denied"), std::string::npos);
  }
  EXPECT_EQ(engine.state_json(), state);
  EXPECT_TRUE(stranger.table()["ok"]);
  EXPECT_TRUE(stranger.status()["ok"]);
  EXPECT_TRUE(stranger.send({{"command", "targets"}})["ok"]);
}

TEST_F(ControlEngine, RepliesEchoTheRequestId) {
  json reply = client.send({{"command", "targets"}, {"id", 17}});
  EXPECT_EQ(reply["id"], 17);
  reply = client.send({{"command", "nope"}, {"id", "a"}});
  EXPECT_EQ(reply["id"], "a");
  EXPECT_FALSE(reply["ok"]);
}

// Found by fuzz/control_protocol: one line with a number beyond a double
// (valid JSON, which nlohmann reports as out_of_range) ended the daemon, from
// any local user who could connect. Now it is a usage error like any other
// malformed line, nothing changes, and the engine goes on answering.
TEST_F(ControlEngine, ANumberBeyondADoubleIsAMalformedRequestNotACrash) {
  getting_started();
  const std::string state = engine.state_json();
  const uint32_t weight_before = weight("ioband1", -1);
  const json reply = json::parse(engine.handle_line(
      R"({"command":"message","name":"ioband1","sector":"0","args":["weight","5"],"seconds":1e999})", true));
  EXPECT_FALSE(reply["ok"]);
  EXPECT_EQ(reply["kind"], "usage");
  EXPECT_NE(reply.value("error", "").find("out of range"), std::string::npos) << reply.dump();
  EXPECT_EQ(engine.state_json(), state);
  EXPECT_EQ(weight("ioband1", -1), weight_before);
  ok(client.table());
}

// ---- Bad input: one sentence naming what was wrong, and no change at all ----

struct BadInput {
  const char* what;
  json request;
  const char* kind;   // usage | refused
  const char* says;   // part of the error
  bool usage;         // the reply carries a usage line
};

class ControlEngineBadInput : public ControlEngine, public ::testing::WithParamInterface<BadInput> {};

json message_request(const char* name, const char* args, const char* sector = "0") {
  return {{"command", "message"}, {"name", name}, {"sector", sector}, {"args", testing::words(args)}};
}
json create_request(const char* name, const char* table) {
  return {{"command", "create"}, {"name", name}, {"table", table}};
}

TEST_P(ControlEngineBadInput, NamesTheProblemAndChangesNothing) {
  const BadInput& bad = GetParam();
  // A configured system: two devices in one device group, user groups.
  getting_started();
  ok(client.message("ioband1", "type user"));
  ok(client.message("ioband1", "attach 1000"));
  ok(client.message("ioband1", "weight 1000:30"));
  ok(client.message("ioband1", "limit 1000:iops-total=100"));
  ok(client.message("ioband1", "access allow=uid:1000 deny=all"));

  struct stat before_stat {};
  ASSERT_EQ(::stat(engine.state_path().c_str(), &before_stat), 0);
  const std::string state_file = testing::read_file(engine.state_path());
  const std::string state = engine.state_json();
  const json table = client.table()["data"];
  const auto exports = fake.exports.size();
  const auto types = fake.types;
  const auto access = fake.access;
  const qos::DeviceGroup& group = group_of("ioband1");
  const auto qos_groups = group.groups(device_of("ioband1"));
  const auto qos_weight = weight("ioband1", 1000);
  const auto io_throttle = group.io_throttle();
  const auto io_limit = group.io_limit();

  json reply = client.send(bad.request);
  EXPECT_FALSE(reply["ok"]) << bad.what;
  EXPECT_EQ(reply["kind"], bad.kind) << bad.what << ": " << reply.dump();
  const std::string error = reply.value("error", "");
  EXPECT_NE(error.find(bad.says), std::string::npos) << bad.what << ": " << error;
  EXPECT_EQ(error.find('\n'), std::string::npos) << "one line";
  EXPECT_EQ(reply.contains("usage"), bad.usage) << bad.what << ": " << reply.dump();

  EXPECT_EQ(engine.state_json(), state) << bad.what;
  EXPECT_EQ(client.table()["data"], table) << bad.what;
  EXPECT_EQ(fake.exports.size(), exports) << bad.what;
  EXPECT_EQ(fake.types, types) << bad.what;
  EXPECT_EQ(fake.access, access) << bad.what;
  EXPECT_EQ(group.groups(device_of("ioband1")), qos_groups) << bad.what;
  EXPECT_EQ(weight("ioband1", 1000), qos_weight) << bad.what;
  EXPECT_EQ(group.io_throttle(), io_throttle) << bad.what;
  EXPECT_EQ(group.io_limit(), io_limit) << bad.what;
  EXPECT_EQ(testing::read_file(engine.state_path()), state_file) << bad.what;
  struct stat after_stat {};
  ASSERT_EQ(::stat(engine.state_path().c_str(), &after_stat), 0);
  EXPECT_EQ(after_stat.st_ino, before_stat.st_ino) << bad.what << ": the state file was rewritten";
}

const BadInput kBadInputs[] = {
    {"unknown command", {{"command", "frobnicate"}}, "usage", "unknown command \"frobnicate\"", true},
    {"not JSON", "weight 40", "usage", "malformed request", true},
    {"unknown verb", message_request("ioband1", "wieght 40"), "usage", "unknown message verb \"wieght\"", true},
    {"no verb", message_request("ioband1", ""), "usage", "message needs a verb", true},
    {"missing argument", message_request("ioband1", "attach"), "usage", "attach needs an argument", true},
    {"missing weight", message_request("ioband1", "weight"), "usage", "weight needs an argument", true},
    {"extra argument", message_request("ioband1", "weight 40 50"), "usage", "extra: \"50\"", true},
    {"extra argument to reset", message_request("ioband1", "reset all"), "usage", "reset takes no argument", true},
    {"non-numeric weight", message_request("ioband1", "weight abc"), "usage", "not \"abc\"", true},
    {"negative weight", message_request("ioband1", "weight -5"), "usage", "not \"-5\"", true},
    {"zero weight", message_request("ioband1", "weight 0"), "usage", "not \"0\"", true},
    {"zero group weight", message_request("ioband1", "weight 1000:0"), "usage", "not \"0\"", true},
    {"sector not 0", message_request("ioband1", "weight 40", "1"), "usage", "the sector must be 0", true},
    {"message without name", {{"command", "message"}, {"args", {"weight", "4"}}}, "usage", "message needs NAME", true},
    {"unknown device", message_request("ioband9", "weight 40"), "refused", "no ioband device named ioband9", false},
    {"unknown group weight", message_request("ioband1", "weight 3000:10"), "refused", "ioband1 has no group 3000",
     false},
    {"unknown group detach", message_request("ioband1", "detach 3000"), "refused", "ioband1 has no group 3000", false},
    {"unknown group range-bw", message_request("ioband1", "range-bw 3000:1:2"), "refused", "no group 3000", false},
    {"unknown group limit", message_request("ioband1", "limit 3000:iops-total=5"), "refused", "no group 3000", false},
    {"group on the other device", message_request("ioband2", "weight 1000:10"), "refused", "ioband2 has no group 1000",
     false},
    {"type change with groups attached", message_request("ioband1", "type gid"), "refused",
     "cannot change the type from user to gid while groups are attached (1000)", false},
    {"type none with groups attached", message_request("ioband1", "type none"), "refused", "detach them first", false},
    {"unknown type", message_request("ioband1", "type uid"), "usage", "unknown type \"uid\"", true},
    {"attach without a type", message_request("ioband2", "attach 1000"), "refused", "ioband2 has type none", false},
    {"attach twice", message_request("ioband1", "attach 1000"), "refused", "group 1000 is already attached", false},
    {"attach the default group", message_request("ioband1", "attach -1"), "refused", "-1 is the default group", false},
    {"detach the default group", message_request("ioband1", "detach -1"), "refused", "cannot be detached", false},
    {"io_throttle above io_limit", message_request("ioband1", "io_throttle 500"), "refused",
     "io_throttle (500) must not exceed io_limit (128)", false},
    {"io_limit below io_throttle", message_request("ioband1", "io_limit 2"), "refused", "must not be below io_throttle",
     false},
    {"carryover too large", message_request("ioband1", "carryover 1000"), "refused", "carryover must be between", false},
    {"limit burst without rate", message_request("ioband1", "limit 1000:bps-read-max=5"), "refused",
     "bps-read-max needs bps-read", false},
    {"limit below rate", message_request("ioband1", "limit 1000:iops-total-max=5"), "refused",
     "iops-total-max (5) is below iops-total (100)", false},
    {"unknown limit key", message_request("ioband1", "limit iops=5"), "usage", "unknown limit \"iops\"", true},
    {"range-bw min above max", message_request("ioband1", "range-bw 1000:500:100"), "refused", "is above max-bw",
     false},
    {"path does not exist", create_request("ioband3", "0 8 ioband /dev/nope 1"), "refused",
     "create ioband3: /dev/nope: No such file or directory", false},
    {"path too small", create_request("ioband3", "0 4096 ioband /small.img 1"), "refused",
     "/small.img is 1048576 bytes, smaller than 4096 sectors (2097152 bytes)", false},
    {"path too small for a new device group", create_request("ioband3", "0 4096 ioband /small.img 9"), "refused",
     "smaller than 4096 sectors", false},
    {"duplicate name", create_request("ioband1", "0 8 ioband /dev/sdb3 1"), "refused",
     "ioband device ioband1 already exists", false},
    {"bad table line", create_request("ioband3", "0 8 ioband /dev/sdb3"), "usage", "has 4 fields", true},
    {"relative path", create_request("ioband3", "0 8 ioband sdb3 1"), "usage", "not absolute", true},
    {"no table line", create_request("ioband3", ""), "usage", "no table line", true},
    {"bad device name", create_request("io band", "0 8 ioband /dev/sdb3 1"), "usage", "space", true},
    {"missing name", {{"command", "create"}, {"table", "0 8 ioband /dev/sdb3 1"}}, "usage", "the device name is empty",
     true},
    {"throttle above limit at create", create_request("ioband3", "0 8 ioband /dev/sdb3 1 300 200"), "refused",
     "device group 1", false},
    {"throttle above limit in a new device group", create_request("ioband3", "0 8 ioband /dev/sdb3 5 300 200"),
     "refused", "device group 5", false},
    {"remove unknown", {{"command", "remove"}, {"name", "ioband9"}}, "refused", "no ioband device named ioband9",
     false},
    {"remove without name", {{"command", "remove"}}, "usage", "remove needs NAME", true},
    {"table of unknown device", {{"command", "table"}, {"name", "ioband9"}}, "refused", "no ioband device named", false},
    {"status of unknown device", {{"command", "status"}, {"name", "ioband9"}}, "refused", "no ioband device named",
     false},
    {"bad access rule", message_request("ioband1", "access allow=uid:0 grant=all"), "usage",
     "access rule \"grant=all\": unknown action \"grant\"", true},
    {"unreachable access rule", message_request("ioband1", "access allow=all deny=uid:0"), "usage",
     "can never apply", true},
    {"access rule with host bits", message_request("ioband1", "access allow=192.168.1.1/24"), "usage",
     "the network is 192.168.1.0/24", true},
    {"bad access rule at create", create_request("ioband3", "0 8 ioband /dev/sdb3 1 allow=uid:"), "usage",
     "uid: needs a user", true},
    {"args not strings", {{"command", "message"}, {"name", "ioband1"}, {"args", {"weight", 40}}}, "usage",
     "\"args\" must be an array of strings", true},
};

INSTANTIATE_TEST_SUITE_P(Item7, ControlEngineBadInput, ::testing::ValuesIn(kBadInputs),
                         [](const ::testing::TestParamInfo<BadInput>& info) {
                           std::string name;
                           for (char c : std::string(info.param.what)) name += std::isalnum(c) ? c : '_';
                           return name;
                         });

TEST_F(ControlEngine, AFailingExportLeavesNoDeviceGroupBehind) {
  fake.create_error = "/dev/sda1: Permission denied";
  json reply = client.create("ioband1", "0 8 ioband /dev/sda1 3");
  EXPECT_FALSE(reply["ok"]);
  EXPECT_EQ(reply["kind"], "refused");
  EXPECT_FALSE(engine.scheduling("ioband1"));
  EXPECT_EQ(fake.released, 1);
  EXPECT_EQ(engine.state_json(), Engine(fake.platform(), dir.file("other.json")).state_json());
  EXPECT_FALSE(std::filesystem::exists(engine.state_path()));
}

TEST_F(ControlEngine, ACreateThatCannotBeSavedSaysSoAndCreatesNothing) {
  Engine lost(fake.platform(), dir.file("missing-dir/state.json"));
  Client c{lost};
  json reply = c.create("ioband1", "0 8 ioband /dev/sda1 1");
  EXPECT_FALSE(reply["ok"]);
  EXPECT_NE(reply["error"].get<std::string>().find("not created, the state cannot be saved"), std::string::npos)
      << reply.dump();
  EXPECT_NE(reply["error"].get<std::string>().find("No such file or directory"), std::string::npos);
  EXPECT_FALSE(lost.scheduling("ioband1"));
  EXPECT_FALSE(fake.exports.contains("ioband1"));
}

}  // namespace
}  // namespace ioband::control

namespace ioband::control {
namespace {

TEST(ControlProbe, RealFilesUseTheirFileSystemsDeviceNumber) {
  TempDir dir;
  const std::string image = dir.file("disk.img");
  testing::write_file(image, std::string(8192, '\0'));
  struct stat st {};
  ASSERT_EQ(::stat(image.c_str(), &st), 0);
  PathInfo info;
  EXPECT_EQ(probe_path(image, info), "");
  EXPECT_EQ(info.bytes, 8192u);
  EXPECT_EQ(info.major, major(st.st_dev));
  EXPECT_EQ(info.minor, minor(st.st_dev));
  EXPECT_EQ(probe_path(dir.file("nope.img"), info), dir.file("nope.img") + ": No such file or directory");
  EXPECT_EQ(probe_path(dir.path, info), dir.path + " is neither a regular file nor a block device");
  EXPECT_EQ(probe_path("/dev/null", info), "/dev/null is neither a regular file nor a block device");

  // The engine's default probe: a real image in the table, a short one refused.
  FakePlatform fake;
  Platform platform = fake.platform();
  platform.probe = nullptr;
  Engine engine(platform, dir.file("state.json"));
  Client client{engine};
  EXPECT_TRUE(client.create("disk", "0 16 ioband " + image + " 1")["ok"]);
  EXPECT_EQ(client.table_text(), "disk: 0 16 ioband " + std::to_string(major(st.st_dev)) + ":" +
                                     std::to_string(minor(st.st_dev)) + " 1 4 128\n");
  json reply = client.create("big", "0 17 ioband " + image + " 1");
  EXPECT_EQ(reply["error"], "create big: " + image + " is 8192 bytes, smaller than 17 sectors (8704 bytes)");
}

TEST(ControlPlatform, OptionalHooksMayBeEmpty) {
  TempDir dir;
  FakePlatform fake;
  Platform platform = fake.platform();
  platform.run_on_owner = nullptr;
  platform.connections = nullptr;
  platform.set_type = nullptr;
  platform.release_device_group = nullptr;
  Engine engine(platform, dir.file("state.json"));
  Client client{engine};
  EXPECT_TRUE(client.create("ioband1", "0 8 ioband /dev/sda1 1")["ok"]);
  EXPECT_TRUE(client.message("ioband1", "type user")["ok"]);
  EXPECT_TRUE(client.message("ioband1", "attach 5")["ok"]);
  EXPECT_TRUE(client.status()["ok"]);
  EXPECT_TRUE(client.remove("ioband1")["ok"]);
}

}  // namespace
}  // namespace ioband::control
