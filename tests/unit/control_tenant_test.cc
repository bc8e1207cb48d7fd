// The tenant command (control/tenant.h, engine_tenant.cc): its parsing, the
// engine against the fake platform (what the qos layer gets, what is saved
// and restored), and state files whose tenants are wrong.
#include <gtest/gtest.h>

#include "control/engine.h"
#include "control/state_file.h"
#include "control/tenant.h"
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

TEST(TenantLanguage, Parses) {
  TenantCommand c;
  ASSERT_EQ(parse_tenant_command(words("create acme weight 300 limit iops-total=2000,bps-total=10M"), c), std::nullopt);
  EXPECT_EQ(c.verb, TenantCommand::Verb::create);
  EXPECT_EQ(c.name, "acme");
  EXPECT_EQ(c.weight, 300u);
  ASSERT_EQ(c.limits.size(), 2u);
  EXPECT_EQ(c.limits[1], (std::pair<std::string, uint64_t>{"bps-total", 10u << 20}));
  ASSERT_EQ(parse_tenant_command(words("set acme weight vm:1:7"), c), std::nullopt);
  EXPECT_EQ(c.weight_device, "vm:1");
  EXPECT_EQ(c.weight, 7u);
  ASSERT_EQ(parse_tenant_command(words("set acme limit none"), c), std::nullopt);
  EXPECT_TRUE(c.clear_limits);
  ASSERT_EQ(parse_tenant_command(words("attach acme vm1 weight 10000"), c), std::nullopt);
  EXPECT_EQ(c.device, "vm1");
  EXPECT_EQ(c.weight, 10000u);
  ASSERT_EQ(parse_tenant_command(words("list"), c), std::nullopt);
  EXPECT_EQ(c.verb, TenantCommand::Verb::list);
  EXPECT_EQ(c.name, "");
  ASSERT_EQ(parse_tenant_command(words("create web limit iops-total=3000 cluster on"), c), std::nullopt);
  EXPECT_EQ(c.cluster, true);
  ASSERT_EQ(parse_tenant_command(words("set web cluster off"), c), std::nullopt);
  EXPECT_EQ(c.cluster, false);
  EXPECT_FALSE(c.weight);
}

TEST(TenantLanguage, RefusesWithTheReasonAndTheVerbsUsage) {
  const std::pair<const char*, const char*> bad[] = {
      {"", "needs a VERB"},
      {"frob x", "unknown verb \"frob\""},
      {"create", "needs NAME"},
      {"create acme weight", "weight needs a value"},
      {"create acme weight 0", "weight \"0\" is not an integer from 1 to 10000"},
      {"create acme weight 10001", "from 1 to 10000"},
      {"create acme weight -1", "weight \"-1\""},
      {"create acme weight vm1:5", "weight \"vm1:5\""},
      {"create acme limit none", "no limit to clear"},
      {"create acme limit iops=5", "iops"},
      {"create acme limit iops-total", "is not KEY=VAL"},
      {"create acme limit iops-total=x", "iops-total must be a non-negative integer"},
      {"create acme limit iops-total=1 limit bps-total=1", "limit is given twice"},
      {"attach acme", "needs NAME and DEVICE"},
      {"attach acme vm1 limit iops-total=1", "unknown setting \"limit\" (weight)"},
      {"detach acme vm1 weight 5", "unexpected argument \"weight\""},
      {"remove acme now", "unexpected argument \"now\""},
      {"set acme", "nothing to set (weight, limit, cluster)"},
      {"create acme cluster", "cluster needs a value"},
      {"create acme cluster yes", "cluster is on or off, not \"yes\""},
      {"set acme cluster on cluster off", "cluster is given twice"},
      {"attach acme vm1 cluster on", "unknown setting \"cluster\" (weight)"},
      {"set acme weight :5", "the device name is empty"},
      {"create -acme", "the tenant name \"-acme\" starts with '-'"},
  };
  for (const auto& [text, says] : bad) {
    TenantCommand c;
    auto error = parse_tenant_command(words(text), c);
    ASSERT_TRUE(error.has_value()) << text;
    EXPECT_EQ(error->kind, Error::Kind::usage) << text;
    EXPECT_NE(error->message.find(says), std::string::npos) << text << ": " << error->message;
    EXPECT_EQ(error->usage.rfind("iobandctl tenant", 0), 0u) << text << ": " << error->usage;
  }
}

json tenant(Client& client, const std::string& args) {
  return client.send({{"command", "tenant"}, {"args", words(args)}});
}

void ok(const json& reply) { ASSERT_TRUE(reply.value("ok", false)) << reply.dump(); }

// A cluster tenant needs etcd: without --etcd, or with etcd unreachable, the
// command is refused with the reason and nothing is saved.
TEST(TenantEngine, ClusterOnIsRefusedWithoutEtcdAndNothingChanges) {
  TempDir dir;
  const std::string path = dir.file("state.json");
  FakePlatform fake;
  Engine engine(fake.platform(), path);
  ASSERT_EQ(engine.restore(), "");
  Client client{engine};
  ok(client.create("vm1", "0 8 ioband /vmdisk/vm1.img 1"));
  const std::string before = read_file(path);
  json reply = tenant(client, "create web limit iops-total=3000 cluster on");
  EXPECT_FALSE(reply.value("ok", true));
  EXPECT_NE(reply.dump().find("needs iobandd started with --etcd"), std::string::npos) << reply.dump();
  EXPECT_EQ(read_file(path), before);

  cluster::AgentOptions options;
  options.node = "a";
  options.endpoints = {"http://127.0.0.1:1"};  // nothing listens there
  options.etcd.connect_timeout = std::chrono::milliseconds(200);
  cluster::Agent agent(options);
  agent.start();
  engine.set_cluster(&agent);
  // A reservation is not shared among the nodes: refused before etcd is asked.
  reply = tenant(client, "create web limit reservation-iops=500 cluster on");
  EXPECT_FALSE(reply.value("ok", true));
  EXPECT_NE(reply.dump().find("reservation is not shared among the nodes"), std::string::npos) << reply.dump();
  EXPECT_EQ(read_file(path), before);
  reply = tenant(client, "create web limit iops-total=3000 cluster on");
  EXPECT_FALSE(reply.value("ok", true));
  EXPECT_NE(reply.dump().find("etcd: http://127.0.0.1:1"), std::string::npos) << reply.dump();
  EXPECT_EQ(read_file(path), before);
  // A local tenant is not touched by etcd's absence; turning it cluster-wide is refused.
  ok(tenant(client, "create web limit iops-total=3000"));
  const std::string local = read_file(path);
  reply = tenant(client, "set web cluster on");
  EXPECT_FALSE(reply.value("ok", true));
  EXPECT_EQ(read_file(path), local);
  engine.set_cluster(nullptr);
}

TEST(TenantEngine, ReachesTheQosLayerIsSavedAndRestored) {
  TempDir dir;
  const std::string path = dir.file("state.json");
  std::string saved, listed;
  {
    FakePlatform fake;
    Engine engine(fake.platform(), path);
    ASSERT_EQ(engine.restore(), "");
    Client client{engine};
    ok(client.create("vm1", "0 8 ioband /vmdisk/vm1.img 1"));
    ok(client.create("vm2", "0 8 ioband /vmdisk/vm2.img 1"));
    ok(client.create("sdb", "0 8 ioband /dev/sdb3 2"));
    ok(tenant(client, "create acme weight 300 limit iops-total=100"));
    // No device yet: nothing in the qos layer.
    EXPECT_FALSE(engine.scheduling("vm1")->group->has_tenant(1));
    ok(tenant(client, "attach acme vm1 weight 200"));
    ok(tenant(client, "attach acme vm2"));
    qos::DeviceGroup& group = *engine.scheduling("vm1")->group;
    ASSERT_TRUE(group.has_tenant(1));
    EXPECT_EQ(group.device_tenant(engine.scheduling("vm1")->device), std::optional<qos::TenantId>(1));
    EXPECT_EQ(group.tenant_limits(1)->iops_total.rate, 100u);
    EXPECT_DOUBLE_EQ(group.device_share(engine.scheduling("vm1")->device)->configured, 200.0 / 300);
    json refused = tenant(client, "attach acme sdb");
    EXPECT_FALSE(refused["ok"]);
    EXPECT_EQ(refused["error"], "tenant attach acme: sdb is in device group 2, the devices of tenant acme in device "
                                "group 1; a tenant's devices share one storage (one device group)");
    refused = client.message("vm1", "policy weight-iosize");
    EXPECT_FALSE(refused["ok"]);
    EXPECT_NE(refused["error"].get<std::string>().find("device 0 is in tenant 1"), std::string::npos) << refused;
    listed = tenant(client, "list")["text"];
    EXPECT_EQ(listed, "acme: weight 300 devices vm1:200,vm2:100 limit iops-total=100\n");
    saved = read_file(path);
    EXPECT_NE(saved.find("\"tenants\""), std::string::npos);
    // Detaching the last device takes the tenant out of the device group.
    ok(tenant(client, "detach acme vm1"));
    ok(tenant(client, "detach acme vm2"));
    EXPECT_FALSE(group.has_tenant(1));
    ok(tenant(client, "attach acme vm1 weight 200"));
    ok(tenant(client, "attach acme vm2"));
    EXPECT_EQ(read_file(path), saved);
  }
  FakePlatform fake;
  Engine engine(fake.platform(), path);
  ASSERT_EQ(engine.restore(), "");
  Client client{engine};
  EXPECT_EQ(tenant(client, "list")["text"], listed);
  qos::DeviceGroup& group = *engine.scheduling("vm2")->group;
  EXPECT_EQ(group.device_tenant(engine.scheduling("vm2")->device).has_value(), true);
  EXPECT_EQ(group.tenant_limits(*group.device_tenant(engine.scheduling("vm2")->device))->iops_total.rate, 100u);
  // Removing a device drops it from its tenant, in the file too.
  ok(client.remove("vm1"));
  EXPECT_EQ(tenant(client, "list")["text"], "acme: weight 300 devices vm2:100 limit iops-total=100\n");
  EXPECT_EQ(read_file(path).find("\"vm1\""), std::string::npos);
  ok(tenant(client, "remove acme"));
  EXPECT_FALSE(group.device_tenant(engine.scheduling("vm2")->device).has_value());
  EXPECT_EQ(read_file(path).find("\"tenants\""), std::string::npos);
}

TEST(TenantEngine, OnlyTheOwnerMayChangeTenantsAnyoneMayList) {
  TempDir dir;
  FakePlatform fake;
  Engine engine(fake.platform(), dir.file("state.json"));
  Client client{engine, false};
  json reply = tenant(client, "create acme");
  EXPECT_FALSE(reply["ok"]);
  EXPECT_NE(reply["error"].get<std::string>().find("permission denied"), std::string::npos);
  ok(tenant(client, "list"));
}

constexpr const char* kDevices =
    R"({"version":2,"device_groups":[{"id":1,"policy":"fair","token":2048,"carryover":2,"io_throttle":4,"io_limit":128},)"
    R"({"id":2,"policy":"weight","token":2048,"carryover":2,"io_throttle":4,"io_limit":128}],)"
    R"("devices":[{"name":"a","path":"/vmdisk/vm1.img","sectors":8,"device_group_id":1,"type":"none","limits":{},)"
    R"("groups":[{"id":-1,"weight":100,"range_bw":{"min_kib":0,"max_kib":0},"limits":{}}]},)"
    R"({"name":"b","path":"/dev/sdb3","sectors":8,"device_group_id":2,"type":"none","limits":{},)"
    R"("groups":[{"id":-1,"weight":100,"range_bw":{"min_kib":0,"max_kib":0},"limits":{}}]}],)";

TEST(TenantState, WrongTenantsStopTheStart) {
  const std::pair<std::string, const char*> bad[] = {
      {R"("tenants":[{"name":"t","weight":0,"limits":{},"devices":[]}]})", "tenants[0].weight"},
      {R"("tenants":[{"name":"t","weight":5,"limits":{},"devices":[{"name":"zz","weight":1}]}]})",
       "tenants[0].devices[0].name: no device zz in devices"},
      {R"("tenants":[{"name":"t","weight":5,"limits":{},"devices":[{"name":"b","weight":1}]}]})",
       "device group 2 has policy weight"},
      {R"("tenants":[{"name":"t","weight":5,"limits":{},"devices":[{"name":"a","weight":1}]},)"
       R"({"name":"u","weight":5,"limits":{},"devices":[{"name":"a","weight":1}]}]})",
       "tenants[1].devices[0].name: device a is already in tenant t"},
      {R"("tenants":[{"name":"t","weight":5,"limits":{"iops-total-max":3},"devices":[]}]})", "iops-total-max"},
      {R"("tenants":[{"name":"t","weight":5,"limits":{},"devices":[],"colour":1}]})", "unknown key \"colour\""},
      {R"("tenants":[{"name":"t","weight":5,"limits":{},"devices":[]},{"name":"t","weight":5,"limits":{},"devices":[]}]})",
       "tenant t appears twice"},
  };
  for (const auto& [tail, says] : bad) {
    TempDir dir;
    const std::string path = dir.file("state.json");
    const std::string text = kDevices + tail;
    write_file(path, text);
    FakePlatform fake;
    Engine engine(fake.platform(), path);
    const std::string error = engine.restore();
    EXPECT_NE(error.find(says), std::string::npos) << error;
    EXPECT_TRUE(fake.exports.empty());
    EXPECT_EQ(read_file(path), text);
  }
  TempDir dir;
  write_file(dir.file("state.json"),
             std::string(kDevices) + R"("tenants":[{"name":"t","weight":5,"limits":{},"devices":[{"name":"a","weight":1}]}]})");
  FakePlatform fake;
  Engine engine(fake.platform(), dir.file("state.json"));
  EXPECT_EQ(engine.restore(), "");
}

}  // namespace
}  // namespace ioband::control
