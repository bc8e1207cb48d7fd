// tls_read: 4 KiB random reads over NBD with TLS and a pre-shared key, DEPTH
// in flight, for bench/tls. fio's nbd engine cannot take a PSK (libnbd
// refuses a tls-psk-file in a URI unless the program allows it) and a
// Python client tops out near 5,000 requests/s, far below the servers; this
// one is a plain GnuTLS client on one thread with a blocking socket: the
// option haggling (STARTTLS first, then GO), then each batch of new
// requests in one TLS record, replies read as they come (simple replies).
//
//   tls_read HOST PORT EXPORT PSK_FILE USERNAME SECONDS [DEPTH]
//
// Prints the requests completed per second. Every reply is checked (magic,
// error, handle); anything wrong ends the run with a message and exit 1.

#include <arpa/inet.h>
#include <endian.h>
#include <gnutls/gnutls.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

namespace {

[[noreturn]] void die(const std::string& message) {
  std::fprintf(stderr, "tls_read: %s\n", message.c_str());
  std::exit(1);
}

int fd = -1;
gnutls_session_t tls = nullptr;

void write_all(const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    const ssize_t w = tls ? gnutls_record_send(tls, p, n) : ::send(fd, p, n, MSG_NOSIGNAL);
    if (w == GNUTLS_E_AGAIN || w == GNUTLS_E_INTERRUPTED) continue;
    if (w <= 0) die(tls ? std::string("send: ") + gnutls_strerror(static_cast<int>(w)) : "send failed");
    p += w;
    n -= static_cast<size_t>(w);
  }
}

void read_all(void* data, size_t n) {
  auto* p = static_cast<uint8_t*>(data);
  while (n > 0) {
    const ssize_t r = tls ? gnutls_record_recv(tls, p, n) : ::recv(fd, p, n, 0);
    if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED) continue;
    if (r <= 0) die(tls && r < 0 ? std::string("recv: ") + gnutls_strerror(static_cast<int>(r)) : "the server closed");
    p += r;
    n -= static_cast<size_t>(r);
  }
}

void send_option(uint32_t option, const std::string& data) {
  std::string m(16, '\0');
  const uint64_t magic = htobe64(0x49484156454F5054ULL);
  const uint32_t o = htobe32(option), l = htobe32(static_cast<uint32_t>(data.size()));
  std::memcpy(&m[0], &magic, 8);
  std::memcpy(&m[8], &o, 4);
  std::memcpy(&m[12], &l, 4);
  m += data;
  write_all(m.data(), m.size());
}

// One option reply: its type; its data in out.
uint32_t option_reply(std::string& out) {
  uint8_t h[20];
  read_all(h, sizeof h);
  uint32_t type, length;
  std::memcpy(&type, h + 12, 4);
  std::memcpy(&length, h + 16, 4);
  out.resize(be32toh(length));
  if (!out.empty()) read_all(out.data(), out.size());
  return be32toh(type);
}

std::vector<uint8_t> read_key(const std::string& path, const std::string& user) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(user + ":", 0) != 0) continue;
    const std::string hex = line.substr(user.size() + 1);
    std::vector<uint8_t> key;
    for (size_t i = 0; i + 1 < hex.size(); i += 2) key.push_back(static_cast<uint8_t>(std::stoi(hex.substr(i, 2), nullptr, 16)));
    return key;
  }
  die(path + ": no key for " + user);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 7) die("usage: tls_read HOST PORT EXPORT PSK_FILE USERNAME SECONDS [DEPTH]");
  const std::string host = argv[1], port = argv[2], name = argv[3], psk_file = argv[4], user = argv[5];
  const double seconds = std::atof(argv[6]);
  const unsigned depth = argc > 7 ? static_cast<unsigned>(std::atoi(argv[7])) : 32;

  addrinfo hints{}, *ai = nullptr;
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(host.c_str(), port.c_str(), &hints, &ai) != 0 || !ai) die("cannot resolve " + host);
  fd = socket(ai->ai_family, SOCK_STREAM, 0);
  if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) die("cannot connect to " + host + ":" + port);
  freeaddrinfo(ai);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);

  uint8_t greeting[18];
  read_all(greeting, sizeof greeting);
  const uint32_t flags = htobe32(3);  // fixed newstyle, no zeroes
  write_all(&flags, 4);
  std::string data;
  send_option(5, "");  // NBD_OPT_STARTTLS
  if (option_reply(data) != 1) die("STARTTLS refused");

  gnutls_psk_client_credentials_t psk;
  gnutls_psk_allocate_client_credentials(&psk);
  std::vector<uint8_t> key = read_key(psk_file, user);
  gnutls_datum_t k{key.data(), static_cast<unsigned>(key.size())};
  if (gnutls_psk_set_client_credentials(psk, user.c_str(), &k, GNUTLS_PSK_KEY_RAW) < 0) die("bad PSK");
  gnutls_init(&tls, GNUTLS_CLIENT);
  gnutls_priority_set_direct(tls, "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK", nullptr);
  gnutls_credentials_set(tls, GNUTLS_CRD_PSK, psk);
  gnutls_transport_set_int(tls, fd);
  int rc;
  do {
    rc = gnutls_handshake(tls);
  } while (rc < 0 && !gnutls_error_is_fatal(rc));
  if (rc < 0) die(std::string("TLS handshake: ") + gnutls_strerror(rc));

  std::string go(4, '\0');
  const uint32_t nl = htobe32(static_cast<uint32_t>(name.size()));
  std::memcpy(&go[0], &nl, 4);
  go += name;
  go += std::string(2, '\0');
  send_option(7, go);  // NBD_OPT_GO
  uint64_t size = 0;
  for (;;) {
    const uint32_t type = option_reply(data);
    if (type == 1) break;
    if (type != 3) die("GO refused");
    if (data.size() >= 12 && data[0] == 0 && data[1] == 0) {
      std::memcpy(&size, data.data() + 2, 8);
      size = be64toh(size);
    }
  }
  const uint64_t blocks = size / 4096;
  if (blocks == 0) die("the export is smaller than 4 KiB");

  uint64_t rng = 0x9E3779B97F4A7C15ULL;
  auto request = [&](std::string& batch, uint64_t handle) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    uint8_t r[28];
    const uint32_t magic = htobe32(0x25609513), length = htobe32(4096);
    const uint16_t zero = 0;
    const uint64_t h = htobe64(handle), offset = htobe64((rng % blocks) * 4096);
    std::memcpy(r, &magic, 4);
    std::memcpy(r + 4, &zero, 2);
    std::memcpy(r + 6, &zero, 2);  // NBD_CMD_READ
    std::memcpy(r + 8, &h, 8);
    std::memcpy(r + 16, &offset, 8);
    std::memcpy(r + 24, &length, 4);
    batch.append(reinterpret_cast<char*>(r), sizeof r);
  };

  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  const auto end = start + std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(seconds));
  std::string batch;
  uint64_t next_handle = 1, done = 0;
  unsigned in_flight = 0;
  for (unsigned i = 0; i < depth; ++i) request(batch, next_handle++), ++in_flight;
  write_all(batch.data(), batch.size());
  batch.clear();
  bool stopping = false;
  static uint8_t buffer[4096];
  while (in_flight > 0) {
    uint8_t reply[16];
    read_all(reply, sizeof reply);
    uint32_t magic, error;
    std::memcpy(&magic, reply, 4);
    std::memcpy(&error, reply + 4, 4);
    if (be32toh(magic) != 0x67446698) die("not a simple reply");
    if (error != 0) die("a read failed: NBD error " + std::to_string(be32toh(error)));
    read_all(buffer, sizeof buffer);
    --in_flight;
    ++done;
    if (!stopping && (done & 63) == 0 && clock::now() >= end) stopping = true;
    if (!stopping) request(batch, next_handle++), ++in_flight;
    // Send the new requests once no reply is left to read without waiting.
    if (!batch.empty() && gnutls_record_check_pending(tls) == 0) {
      write_all(batch.data(), batch.size());
      batch.clear();
    }
  }
  const double elapsed = std::chrono::duration<double>(clock::now() - start).count();
  uint8_t disc[28] = {};
  const uint32_t magic = htobe32(0x25609513);
  const uint16_t type = htobe16(2);
  std::memcpy(disc, &magic, 4);
  std::memcpy(disc + 6, &type, 2);
  write_all(disc, sizeof disc);
  gnutls_bye(tls, GNUTLS_SHUT_WR);
  std::printf("%.0f\n", static_cast<double>(done) / elapsed);
  return 0;
}
