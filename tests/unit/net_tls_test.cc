// net/tls.h without sockets: the PSK file format (psktool's), --tls modes,
// and the start-up checks of TlsContext::load, which must name the option,
// the file and the reason.

#include "net/tls.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

namespace ioband::net {
namespace {

TEST(PskFile, ReadsPsktoolLines) {
  std::string error;
  auto users = parse_psk_file("alice:00ff10\nbob:ABCDEF\r\n\n", error);
  ASSERT_TRUE(users) << error;
  ASSERT_EQ(users->size(), 2u);
  EXPECT_EQ((*users)[0].username, "alice");
  EXPECT_EQ((*users)[0].key, (std::vector<uint8_t>{0x00, 0xff, 0x10}));
  EXPECT_EQ((*users)[1].username, "bob");
  EXPECT_EQ((*users)[1].key, (std::vector<uint8_t>{0xab, 0xcd, 0xef}));
}

TEST(PskFile, NamesTheLineAndTheReason) {
  std::string error;
  EXPECT_FALSE(parse_psk_file("alice:00\nno colon here\n", error));
  EXPECT_EQ(error, "2: expected USERNAME:HEXKEY (as psktool writes)");
  EXPECT_FALSE(parse_psk_file("alice:0g", error));
  EXPECT_EQ(error, "1: the key of 'alice' is not hexadecimal");
  EXPECT_FALSE(parse_psk_file("alice:abc", error));
  EXPECT_EQ(error, "1: the key of 'alice' is not an even number of hexadecimal digits");
  EXPECT_FALSE(parse_psk_file("alice:", error));
  EXPECT_FALSE(parse_psk_file(":00", error));
  EXPECT_EQ(error, "1: the username is empty");
  EXPECT_FALSE(parse_psk_file("a:00\na:11\n", error));
  EXPECT_EQ(error, "2: the username 'a' is given twice");
}

TEST(TlsMode, ParsesTheThreeModes) {
  EXPECT_EQ(parse_tls_mode("off"), TlsMode::off);
  EXPECT_EQ(parse_tls_mode("on"), TlsMode::on);
  EXPECT_EQ(parse_tls_mode("require"), TlsMode::require);
  EXPECT_FALSE(parse_tls_mode("yes"));
}

class TlsLoad : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("ioband-tls-test-" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string write(const std::string& name, const std::string& text) {
    const std::string path = (dir_ / name).string();
    std::ofstream(path) << text;
    return path;
  }
  std::filesystem::path dir_;
};

TEST_F(TlsLoad, OffNeedsNothingAndTakesNoCredentials) {
  std::string error;
  TlsOptions options;
  EXPECT_EQ(TlsContext::load(options, error), nullptr);
  EXPECT_EQ(error, "");
  options.psk_file = write("keys.psk", "alice:00\n");
  EXPECT_EQ(TlsContext::load(options, error), nullptr);
  EXPECT_NE(error.find("--tls-psk is given but TLS is off"), std::string::npos) << error;
}

TEST_F(TlsLoad, OnOrRequireNeedCredentials) {
  std::string error;
  TlsOptions options;
  options.mode = TlsMode::require;
  EXPECT_EQ(TlsContext::load(options, error), nullptr);
  EXPECT_EQ(error, "--tls require needs credentials: --tls-psk FILE and/or --tls-certificates DIR");
  options.psk_file = write("keys.psk", "alice:00\n");
  options.verify_peer = true;
  EXPECT_EQ(TlsContext::load(options, error), nullptr);
  EXPECT_NE(error.find("--tls-verify-peer needs --tls-certificates"), std::string::npos) << error;
}

TEST_F(TlsLoad, PskFileProblemsNameTheFile) {
  std::string error;
  TlsOptions options;
  options.mode = TlsMode::on;
  options.psk_file = (dir_ / "missing.psk").string();
  EXPECT_EQ(TlsContext::load(options, error), nullptr);
  EXPECT_EQ(error, "--tls-psk " + options.psk_file + ": No such file or directory");
  options.psk_file = write("bad.psk", "alice:00\nbob:xyz1\n");
  EXPECT_EQ(TlsContext::load(options, error), nullptr);
  EXPECT_EQ(error, "--tls-psk " + options.psk_file + ":2: the key of 'bob' is not hexadecimal");
  options.psk_file = write("empty.psk", "\n");
  EXPECT_EQ(TlsContext::load(options, error), nullptr);
  EXPECT_NE(error.find(options.psk_file + ": no keys in it"), std::string::npos) << error;
  options.psk_file = write("good.psk", "alice:0011223344556677\n");
  auto context = TlsContext::load(options, error);
  ASSERT_NE(context, nullptr) << error;
  EXPECT_EQ(context->describe(), "optional, PSK");
}

TEST_F(TlsLoad, CertificateDirectoryProblemsNameTheFile) {
  std::string error;
  TlsOptions options;
  options.mode = TlsMode::require;
  options.certificates_dir = (dir_ / "nowhere").string();
  EXPECT_EQ(TlsContext::load(options, error), nullptr);
  EXPECT_EQ(error, "--tls-certificates " + options.certificates_dir + ": No such file or directory");
  options.certificates_dir = dir_.string();
  EXPECT_EQ(TlsContext::load(options, error), nullptr);
  EXPECT_EQ(error, "--tls-certificates " + dir_.string() + ": " + dir_.string() +
                       "/server-cert.pem: No such file or directory");
  write("server-cert.pem", "not a certificate\n");
  write("server-key.pem", "not a key\n");
  EXPECT_EQ(TlsContext::load(options, error), nullptr);
  EXPECT_NE(error.find("server-cert.pem with " + dir_.string() + "/server-key.pem: "), std::string::npos) << error;
}

}  // namespace
}  // namespace ioband::net
