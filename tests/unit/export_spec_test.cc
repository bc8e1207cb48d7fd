#include <gtest/gtest.h>

#include <cerrno>

#include "control/export_spec.h"

namespace ioband::control {
namespace {

TEST(ExportSpec, ParsesEveryKey) {
  ExportSpec spec;
  auto error = parse_export_spec("vm1=/srv/a.img,size=64M,readonly,description=test disk", spec);
  ASSERT_FALSE(error) << *error;
  EXPECT_EQ(spec.name, "vm1");
  EXPECT_EQ(spec.path, "/srv/a.img");
  EXPECT_EQ(spec.size, 64u << 20);
  EXPECT_TRUE(spec.read_only);
  EXPECT_EQ(spec.description, "test disk");
  EXPECT_EQ(spec.backend, "raw");

  ExportSpec mem;
  ASSERT_FALSE(parse_export_spec("m=,backend=memory,size=1G,fault-errno=ENOSPC,fault-rate=0.5,fault-delay-ms=3", mem));
  EXPECT_EQ(mem.backend, "memory");
  EXPECT_EQ(mem.size, 1ull << 30);
  EXPECT_EQ(mem.fault_errno, ENOSPC);
  EXPECT_DOUBLE_EQ(mem.fault_rate, 0.5);
  EXPECT_EQ(mem.fault_delay_ms, 3u);
  EXPECT_EQ(mem.fault_length, 0u);  // everywhere

  ExportSpec range;
  ASSERT_FALSE(parse_export_spec("r=/x,fault-errno=EIO,fault-offset=1M,fault-length=64K", range));
  EXPECT_EQ(range.fault_offset, 1u << 20);
  EXPECT_EQ(range.fault_length, 64u << 10);
}

TEST(ExportSpec, ImageFormatAndQcow2Cache) {
  ExportSpec spec;
  ASSERT_FALSE(parse_export_spec("vm=/srv/vm.qcow2", spec));
  EXPECT_EQ(spec.format, "");  // detected from the header
  EXPECT_EQ(spec.cache_bytes, 0u);
  ASSERT_FALSE(parse_export_spec("vm=/srv/vm.qcow2,format=qcow2,cache=1M", spec));
  EXPECT_EQ(spec.format, "qcow2");
  EXPECT_EQ(spec.cache_bytes, 1u << 20);
  ASSERT_FALSE(parse_export_spec("vm=/srv/vm.img,format=raw", spec));
  EXPECT_EQ(spec.format, "raw");
  EXPECT_NE(parse_export_spec("vm=/x,format=vmdk", spec)->find("format must be raw or qcow2"), std::string::npos);
  EXPECT_NE(parse_export_spec("vm=/x,cache=1", spec)->find("cache '1'"), std::string::npos);
  EXPECT_NE(parse_export_spec("m=,backend=memory,size=1M,format=qcow2", spec)->find("not backend=memory"),
            std::string::npos);
}

TEST(ExportSpec, RefusesBadInputNamingIt) {
  ExportSpec spec;
  EXPECT_NE(parse_export_spec("noequals", spec)->find("NAME=PATH"), std::string::npos);
  EXPECT_NE(parse_export_spec("a=/x,size=12Q", spec)->find("size '12Q'"), std::string::npos);
  EXPECT_NE(parse_export_spec("a=/x,colour=red", spec)->find("unknown key 'colour'"), std::string::npos);
  EXPECT_NE(parse_export_spec("a=,backend=memory", spec)->find("needs size"), std::string::npos);
  EXPECT_NE(parse_export_spec("a=/x,backend=qcow9", spec)->find("qcow9"), std::string::npos);
  EXPECT_NE(parse_export_spec("a=/x,fault-rate=2", spec)->find("fault-rate"), std::string::npos);
  EXPECT_NE(parse_export_spec("a=/x,fault-errno=EWHAT", spec)->find("EWHAT"), std::string::npos);
  EXPECT_NE(parse_export_spec("a=", spec)->find("needs a PATH"), std::string::npos);
  EXPECT_NE(parse_export_spec("a=/x,fault-offset=1M", spec)->find("fault-offset needs fault-length"), std::string::npos);
  EXPECT_NE(parse_export_spec("a=/x,fault-length=lots", spec)->find("fault-length 'lots'"), std::string::npos);
}

TEST(ExportSpec, AccessRulesInOrder) {
  ExportSpec spec;
  auto error = parse_export_spec("d=/x,allow=uid:0,allow-ro=10.0.0.0/8,readonly,deny=all", spec);
  ASSERT_FALSE(error) << *error;
  EXPECT_TRUE(spec.read_only);
  EXPECT_EQ(nbd::access_words(spec.access), (std::vector<std::string>{"allow=uid:0", "allow-ro=10.0.0.0/8", "deny=all"}));
  // A certificate DN has commas: ",," is one, as QEMU writes them.
  ASSERT_FALSE(parse_export_spec("d=/x,allow=tls:CN=client,,O=Example Corp,,C=GB,allow=uid:0", spec));
  EXPECT_EQ(nbd::access_words(spec.access), (std::vector<std::string>{"allow=tls:CN=client,O=Example Corp,C=GB", "allow=uid:0"}));
  ASSERT_FALSE(parse_export_spec("d=/x,allow=all", spec));
  EXPECT_TRUE(spec.access.empty());  // the default
  ASSERT_FALSE(parse_export_spec("d=/odd,,name.img,readonly,", spec));
  EXPECT_EQ(spec.path, "/odd,name.img");
  EXPECT_TRUE(spec.read_only);

  EXPECT_NE(parse_export_spec("d=/x,allow=uid:nobody-such", spec)->find("--export d: access rule \"allow=uid:nobody-such\": no user"),
            std::string::npos);
  EXPECT_NE(parse_export_spec("d=/x,allow=10.1.0.0/8", spec)->find("the network is 10.0.0.0/8"), std::string::npos);
  EXPECT_NE(parse_export_spec("d=/x,deny=all,allow=uid:0", spec)->find("can never apply"), std::string::npos);
  EXPECT_NE(parse_export_spec("d=/x,allow", spec)->find("access rule \"allow\""), std::string::npos);
  EXPECT_NE(parse_export_spec("d=/x,allow=", spec)->find("names nobody"), std::string::npos);
}

TEST(ExportSpec, Sizes) {
  EXPECT_EQ(parse_errno("ENOENT"), ENOENT);
  EXPECT_EQ(parse_errno("EBADF"), EBADF);
  EXPECT_EQ(parse_errno("28"), 28);
  EXPECT_FALSE(parse_errno("ENOTANERRNO"));
  EXPECT_EQ(parse_size("4096"), 4096u);
  EXPECT_EQ(parse_size("1K"), 1024u);
  EXPECT_EQ(parse_size("2GiB"), 2ull << 30);
  EXPECT_EQ(parse_size("3T"), 3ull << 40);
  EXPECT_FALSE(parse_size(""));
  EXPECT_FALSE(parse_size("-1"));
  EXPECT_FALSE(parse_size("99999999999999999999"));
  EXPECT_FALSE(parse_size("16777216T"));  // overflows 64 bits
}

}  // namespace
}  // namespace ioband::control
