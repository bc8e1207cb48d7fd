#include "net/tls.h"

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>

#include "io/log.h"

namespace ioband::net {

namespace {

// The largest plaintext a TLS record carries.
constexpr uint32_t kRecordPlaintext = 16384;
// Ciphertext received at once: a few full records.
constexpr uint32_t kCipherIn = 64u << 10;
// Sealed records waiting for the socket: past this, send() takes no more.
constexpr size_t kCipherOutHigh = 256u << 10;

// GnuTLS's defaults with the PSK key exchanges added, the same ciphers in
// the same order but for AES-128-GCM ahead of ChaCha20, and the server's
// order winning (%SERVER_PRECEDENCE). A TLS 1.3 PSK is bound to SHA-256,
// which rules AES-256-GCM out; clients then chose ChaCha20, which nettle
// runs in software, over AES-128-GCM, which AES-NI runs: the records of
// 4 KiB reads spent most of their time in ChaCha20 (docs/performance.md).
#define IOBAND_TLS_CIPHERS                                                                                 \
  "-CIPHER-ALL:+AES-256-GCM:+AES-128-GCM:+CHACHA20-POLY1305:+AES-256-CCM:+AES-128-CCM:+AES-256-CBC:" \
  "+AES-128-CBC:%SERVER_PRECEDENCE"
constexpr const char* kPriorityPsk = "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK:" IOBAND_TLS_CIPHERS;
constexpr const char* kPriority = "NORMAL:" IOBAND_TLS_CIPHERS;
#undef IOBAND_TLS_CIPHERS

gnutls_session_t as_session(void* p) { return static_cast<gnutls_session_t>(p); }

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool read_whole_file(const std::string& path, std::string& out, std::string& error) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    error = std::strerror(errno);
    return false;
  }
  std::ostringstream text;
  text << in.rdbuf();
  out = text.str();
  return true;
}

std::string format_time(time_t t) {
  char buf[64];
  tm utc{};
  gmtime_r(&t, &utc);
  strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S UTC", &utc);
  return buf;
}

// A server certificate outside its validity period starts (the operator
// may be replacing it) but every verifying client will refuse it: say so.
void warn_about_validity(const std::string& path) {
  gnutls_datum_t data{};
  if (gnutls_load_file(path.c_str(), &data) < 0) return;
  gnutls_x509_crt_t crt;
  if (gnutls_x509_crt_init(&crt) == 0) {
    if (gnutls_x509_crt_import(crt, &data, GNUTLS_X509_FMT_PEM) == 0) {
      const time_t now = time(nullptr);
      const time_t expires = gnutls_x509_crt_get_expiration_time(crt);
      const time_t activates = gnutls_x509_crt_get_activation_time(crt);
      if (expires != static_cast<time_t>(-1) && expires < now) {
        log_line("warning: " + path + " expired on " + format_time(expires) + "; clients that verify it will refuse it");
      } else if (activates != static_cast<time_t>(-1) && activates > now) {
        log_line("warning: " + path + " is not valid before " + format_time(activates) +
                 "; clients that verify it will refuse it");
      }
    }
    gnutls_x509_crt_deinit(crt);
  }
  gnutls_free(data.data);
}

bool readable_file(const std::string& path, std::string& error) {
  struct stat st{};
  if (stat(path.c_str(), &st) != 0) {
    error = path + ": " + std::strerror(errno);
    return false;
  }
  if (!S_ISREG(st.st_mode)) {
    error = path + ": not a regular file";
    return false;
  }
  if (access(path.c_str(), R_OK) != 0) {
    error = path + ": " + std::strerror(errno);
    return false;
  }
  return true;
}

bool exists(const std::string& path) {
  struct stat st{};
  return stat(path.c_str(), &st) == 0;
}

}  // namespace

std::optional<TlsMode> parse_tls_mode(std::string_view text) noexcept {
  if (text == "off") return TlsMode::off;
  if (text == "on") return TlsMode::on;
  if (text == "require") return TlsMode::require;
  return std::nullopt;
}

std::optional<std::vector<PskEntry>> parse_psk_file(std::string_view text, std::string& error) {
  std::vector<PskEntry> users;
  size_t line_number = 0;
  while (!text.empty()) {
    const size_t eol = text.find('\n');
    std::string_view line = text.substr(0, eol);
    text = eol == std::string_view::npos ? std::string_view{} : text.substr(eol + 1);
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    const std::string where = std::to_string(line_number) + ": ";
    const size_t colon = line.find(':');
    if (colon == std::string_view::npos) {
      error = where + "expected USERNAME:HEXKEY (as psktool writes)";
      return std::nullopt;
    }
    PskEntry entry;
    entry.username = std::string(line.substr(0, colon));
    const std::string_view hex = line.substr(colon + 1);
    if (entry.username.empty()) {
      error = where + "the username is empty";
      return std::nullopt;
    }
    if (hex.empty() || hex.size() % 2 != 0) {
      error = where + "the key of '" + entry.username + "' is not an even number of hexadecimal digits";
      return std::nullopt;
    }
    for (size_t i = 0; i < hex.size(); i += 2) {
      const int hi = hex_digit(hex[i]), lo = hex_digit(hex[i + 1]);
      if (hi < 0 || lo < 0) {
        error = where + "the key of '" + entry.username + "' is not hexadecimal";
        return std::nullopt;
      }
      entry.key.push_back(static_cast<uint8_t>(hi * 16 + lo));
    }
    for (const auto& other : users) {
      if (other.username == entry.username) {
        error = where + "the username '" + entry.username + "' is given twice";
        return std::nullopt;
      }
    }
    users.push_back(std::move(entry));
  }
  return users;
}

// ---------------------------------------------------------------- context

std::unique_ptr<TlsContext> TlsContext::load(const TlsOptions& options, std::string& error) {
  error.clear();
  const bool credentials = !options.psk_file.empty() || !options.certificates_dir.empty();
  if (options.mode == TlsMode::off) {
    if (credentials || options.verify_peer) {
      error = std::string(!options.psk_file.empty() ? "--tls-psk" : !options.certificates_dir.empty()
                                                                        ? "--tls-certificates"
                                                                        : "--tls-verify-peer") +
              " is given but TLS is off: add --tls on (TLS at the client's choice) or --tls require";
    }
    return nullptr;
  }
  const std::string mode = options.mode == TlsMode::on ? "on" : "require";
  if (!credentials) {
    error = "--tls " + mode + " needs credentials: --tls-psk FILE and/or --tls-certificates DIR";
    return nullptr;
  }
  if (options.verify_peer && options.certificates_dir.empty()) {
    error = "--tls-verify-peer needs --tls-certificates DIR (its ca-cert.pem checks the client's certificate)";
    return nullptr;
  }
  std::unique_ptr<TlsContext> context(new TlsContext);
  context->options_ = options;

  if (!options.psk_file.empty()) {
    const std::string& path = options.psk_file;
    std::string text, why;
    if (!readable_file(path, why) || !read_whole_file(path, text, why)) {
      error = "--tls-psk " + (why.rfind(path, 0) == 0 ? why : path + ": " + why);
      return nullptr;
    }
    auto users = parse_psk_file(text, why);
    if (!users) {
      error = "--tls-psk " + path + ":" + why;
      return nullptr;
    }
    if (users->empty()) {
      error = "--tls-psk " + path + ": no keys in it (psktool -u NAME -p " + path + " adds one)";
      return nullptr;
    }
    context->users_ = std::move(*users);
    gnutls_psk_server_credentials_t psk;
    if (gnutls_psk_allocate_server_credentials(&psk) < 0) {
      error = "--tls-psk: GnuTLS cannot allocate PSK credentials";
      return nullptr;
    }
    context->psk_ = psk;
    gnutls_psk_set_server_credentials_function2(
        psk, [](gnutls_session_t session, const gnutls_datum_t* username, gnutls_datum_t* key) -> int {
          auto* transport = static_cast<TlsTransport*>(gnutls_session_get_ptr(session));
          const std::string_view name(reinterpret_cast<const char*>(username->data), username->size);
          return TlsTransport::lookup_psk(transport, name, key);
        });
  }

  if (!options.certificates_dir.empty()) {
    const std::string& dir = options.certificates_dir;
    const std::string option = "--tls-certificates " + dir + ": ";
    struct stat st{};
    if (stat(dir.c_str(), &st) != 0) {
      error = option + std::strerror(errno);
      return nullptr;
    }
    if (!S_ISDIR(st.st_mode)) {
      error = option + "not a directory (it should hold ca-cert.pem, server-cert.pem and server-key.pem)";
      return nullptr;
    }
    const std::string ca = dir + "/ca-cert.pem", cert = dir + "/server-cert.pem", key = dir + "/server-key.pem",
                      crl = dir + "/ca-crl.pem";
    std::string why;
    if (!readable_file(cert, why) || !readable_file(key, why)) {
      error = option + why;
      return nullptr;
    }
    if (options.verify_peer && !readable_file(ca, why)) {
      error = option + why + " (--tls-verify-peer checks client certificates against it)";
      return nullptr;
    }
    gnutls_certificate_credentials_t certificates;
    if (gnutls_certificate_allocate_credentials(&certificates) < 0) {
      error = option + "GnuTLS cannot allocate certificate credentials";
      return nullptr;
    }
    context->certificates_ = certificates;
    int rc = gnutls_certificate_set_x509_key_file(certificates, cert.c_str(), key.c_str(), GNUTLS_X509_FMT_PEM);
    if (rc < 0) {
      error = option + cert + " with " + key + ": " + gnutls_strerror(rc);
      return nullptr;
    }
    if (exists(ca)) {
      rc = gnutls_certificate_set_x509_trust_file(certificates, ca.c_str(), GNUTLS_X509_FMT_PEM);
      if (rc <= 0) {
        error = option + ca + ": " + (rc < 0 ? gnutls_strerror(rc) : "no certificate in it");
        return nullptr;
      }
    }
    if (exists(crl)) {
      rc = gnutls_certificate_set_x509_crl_file(certificates, crl.c_str(), GNUTLS_X509_FMT_PEM);
      if (rc < 0) {
        error = option + crl + ": " + gnutls_strerror(rc);
        return nullptr;
      }
    }
    warn_about_validity(cert);
  }

  gnutls_priority_t priority;
  const char* where = nullptr;
  const int rc = gnutls_priority_init(&priority, context->psk_ ? kPriorityPsk : kPriority, &where);
  if (rc < 0) {
    error = std::string("--tls: GnuTLS refuses its priority string: ") + gnutls_strerror(rc);
    return nullptr;
  }
  context->priority_ = priority;
  return context;
}

TlsContext::~TlsContext() {
  if (priority_) gnutls_priority_deinit(static_cast<gnutls_priority_t>(priority_));
  if (psk_) gnutls_psk_free_server_credentials(static_cast<gnutls_psk_server_credentials_t>(psk_));
  if (certificates_) gnutls_certificate_free_credentials(static_cast<gnutls_certificate_credentials_t>(certificates_));
}

std::string TlsContext::describe() const {
  std::string what = psk_ && certificates_ ? "PSK and X.509" : psk_ ? "PSK" : "X.509";
  if (options_.verify_peer) what += ", client certificates required";
  return std::string(options_.mode == TlsMode::require ? "required" : "optional") + ", " + what;
}

const PskEntry* TlsContext::find_user(std::string_view username) const noexcept {
  for (const auto& user : users_) {
    if (user.username == username) return &user;
  }
  return nullptr;
}

// ---------------------------------------------------------------- transport

TlsTransport::TlsTransport(const TlsContext& context, int fd)
    : context_(context), fd_(fd), in_(new uint8_t[kCipherIn]), gather_(new uint8_t[kRecordPlaintext]) {
  cipher_recv_.transport = this;
  writable_op_.transport = this;
}

std::unique_ptr<TlsTransport> TlsTransport::create(const TlsContext& context, int fd, const uint8_t* early,
                                                   size_t early_length, std::string& error) {
  if (early_length > kCipherIn) {
    error = "too much data after STARTTLS";
    return nullptr;
  }
  std::unique_ptr<TlsTransport> t(new TlsTransport(context, fd));
  std::memcpy(t->in_.get(), early, early_length);
  t->in_end_ = static_cast<uint32_t>(early_length);
  gnutls_session_t session;
  int rc = gnutls_init(&session, GNUTLS_SERVER | GNUTLS_NONBLOCK | GNUTLS_NO_SIGNAL);
  if (rc < 0) {
    error = std::string("GnuTLS: ") + gnutls_strerror(rc);
    return nullptr;
  }
  t->session_ = session;
  rc = gnutls_priority_set(session, static_cast<gnutls_priority_t>(context.priority_));
  if (rc == 0 && context.psk_) {
    rc = gnutls_credentials_set(session, GNUTLS_CRD_PSK, context.psk_);
  }
  if (rc == 0 && context.certificates_) {
    rc = gnutls_credentials_set(session, GNUTLS_CRD_CERTIFICATE, context.certificates_);
    if (rc == 0 && context.options_.verify_peer) {
      gnutls_certificate_server_set_request(session, GNUTLS_CERT_REQUIRE);
      // No host name to match: any certificate ca-cert.pem signed is a client.
      gnutls_session_set_verify_cert(session, nullptr, 0);
    }
  }
  if (rc < 0) {
    error = std::string("GnuTLS: ") + gnutls_strerror(rc);
    return nullptr;
  }
  gnutls_session_set_ptr(session, t.get());
  gnutls_transport_set_ptr(session, t.get());
  gnutls_transport_set_pull_function(session, [](gnutls_transport_ptr_t self, void* data, size_t length) {
    return pull(self, data, length);
  });
  gnutls_transport_set_push_function(session, [](gnutls_transport_ptr_t self, const void* data, size_t length) {
    return push(self, data, length);
  });
  // Never wait inside GnuTLS: "is there data?" is answered from the buffer.
  gnutls_transport_set_pull_timeout_function(session, [](gnutls_transport_ptr_t self, unsigned) -> int {
    auto* t = static_cast<TlsTransport*>(self);
    return t->in_end_ > t->in_start_ ? 1 : 0;
  });
  gnutls_handshake_set_timeout(session, 0);
  return t;
}

TlsTransport::~TlsTransport() {
  if (!session_) return;
  // A clean end of the TLS session (close_notify), if the socket takes it.
  if (stage_ == Stage::records) {
    gnutls_bye(as_session(session_), GNUTLS_SHUT_WR);
    write_out();
  }
  gnutls_deinit(as_session(session_));
}

ssize_t TlsTransport::pull(void* self, void* data, size_t length) noexcept {
  auto* t = static_cast<TlsTransport*>(self);
  const uint32_t available = t->in_end_ - t->in_start_;
  if (available == 0) {
    gnutls_transport_set_errno(as_session(t->session_), EAGAIN);
    return -1;
  }
  const size_t n = std::min<size_t>(length, available);
  std::memcpy(data, t->in_.get() + t->in_start_, n);
  t->in_start_ += static_cast<uint32_t>(n);
  return static_cast<ssize_t>(n);
}

ssize_t TlsTransport::push(void* self, const void* data, size_t length) noexcept {
  auto* t = static_cast<TlsTransport*>(self);
  if (t->out_sent_ == t->out_.size()) {
    t->out_.clear();
    t->out_sent_ = 0;
  }
  const auto* p = static_cast<const uint8_t*>(data);
  t->out_.insert(t->out_.end(), p, p + length);
  return static_cast<ssize_t>(length);
}

int TlsTransport::lookup_psk(void* self, std::string_view username, void* key_out) noexcept {
  auto* t = static_cast<TlsTransport*>(self);
  auto* key = static_cast<gnutls_datum_t*>(key_out);
  const PskEntry* user = t ? t->context_.find_user(username) : nullptr;
  if (!user) {
    if (t) t->error_ = "unknown PSK username '" + std::string(username.substr(0, 256)) + "'";
    return -1;
  }
  key->data = static_cast<unsigned char*>(gnutls_malloc(user->key.size()));
  if (!key->data) return -1;
  std::memcpy(key->data, user->key.data(), user->key.size());
  key->size = static_cast<unsigned>(user->key.size());
  return 0;
}

int TlsTransport::write_out() noexcept {
  while (out_sent_ < out_.size()) {
    const ssize_t n = ::send(fd_, out_.data() + out_sent_, out_.size() - out_sent_, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      out_sent_ += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      // Keep the buffer from growing by what was sent long ago.
      if (out_sent_ >= kCipherOutHigh) {
        out_.erase(out_.begin(), out_.begin() + static_cast<ptrdiff_t>(out_sent_));
        out_sent_ = 0;
      }
      return -EAGAIN;
    }
    return n < 0 ? -errno : -EPIPE;
  }
  out_.clear();
  out_sent_ = 0;
  return 0;
}

// ---------------------------------------------------------------- handshake

void TlsTransport::handshake(io::Reactor& reactor, io::Completion* owner) noexcept {
  reactor_ = &reactor;
  owner_ = owner;
  cancelled_ = false;
  handshake_step(false);
}

// from_ring: called from a ring completion, so owner_ may be called back at
// once. It may destroy this transport: nothing touches a member after it.
void TlsTransport::handshake_step(bool from_ring) noexcept {
  gnutls_session_t session = as_session(session_);
  // Warning alerts are skipped; a bound keeps a peer from looping us.
  for (int round = 0; round < 16; ++round) {
    const int rc = gnutls_handshake(session);
    const int written = write_out();
    if (written < 0 && written != -EAGAIN) {
      error_ = std::string("cannot send: ") + std::strerror(-written);
      return handshake_finish(written, from_ring);
    }
    if (rc == GNUTLS_E_SUCCESS) {
      handshake_done_ = true;
      // The last flight must reach the client, which waits for it.
      if (written == -EAGAIN) return arm_writable();
      return handshake_finish(0, from_ring);
    }
    if (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED) {
      if (written == -EAGAIN) return arm_writable();
      return arm_cipher_recv(*reactor_);
    }
    if (!gnutls_error_is_fatal(rc)) continue;
    if (rc == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR) {
      gnutls_datum_t text{};
      const unsigned status = gnutls_session_get_verify_cert_status(session);
      if (gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &text, 0) == 0) {
        error_ = "the client's certificate: " + std::string(reinterpret_cast<char*>(text.data), text.size);
        gnutls_free(text.data);
      }
    } else if (rc == GNUTLS_E_CERTIFICATE_REQUIRED || rc == GNUTLS_E_NO_CERTIFICATE_FOUND) {
      error_ = "the client sent no certificate (--tls-verify-peer requires one)";
    }
    const std::string reason = gnutls_strerror(rc);
    error_ = error_.empty() ? reason : error_ + " (" + reason + ")";
    gnutls_alert_send_appropriate(session, rc);
    write_out();
    return handshake_finish(-EPROTO, from_ring);
  }
  error_ = "too many alerts during the handshake";
  handshake_finish(-EPROTO, from_ring);
}

void TlsTransport::arm_writable() noexcept {
  io_uring_prep_poll_add(reactor_->prepare(&writable_op_), fd_, POLLOUT);
  writable_pending_ = true;
}

void TlsTransport::handshake_writable(int32_t result) noexcept {
  writable_pending_ = false;
  if (cancelled_ || result == -ECANCELED) {
    error_ = "cancelled";
    handshake_finish(-ECANCELED, true);
  } else if (const int written = write_out(); written == -EAGAIN) {
    arm_writable();
  } else if (written < 0) {
    error_ = std::string("cannot send: ") + std::strerror(-written);
    handshake_finish(written, true);
  } else if (handshake_done_) {
    handshake_finish(0, true);
  } else {
    handshake_step(true);
  }
}

void TlsTransport::handshake_finish(int32_t result, bool from_ring) noexcept {
  gnutls_session_t session = as_session(session_);
  if (result == 0) {
    stage_ = Stage::records;
    error_.clear();
    if (gnutls_auth_get_type(session) == GNUTLS_CRD_PSK) {
      gnutls_datum_t username{};
      if (gnutls_psk_server_get_username2(session, &username) == 0 && username.data) {
        identity_.assign(reinterpret_cast<const char*>(username.data), username.size);
      }
    } else if (context_.options_.verify_peer) {
      unsigned count = 0;
      const gnutls_datum_t* chain = gnutls_certificate_get_peers(session, &count);
      gnutls_x509_crt_t crt;
      if (chain && count > 0 && gnutls_x509_crt_init(&crt) == 0) {
        gnutls_datum_t dn{};
        if (gnutls_x509_crt_import(crt, &chain[0], GNUTLS_X509_FMT_DER) == 0 &&
            gnutls_x509_crt_get_dn3(crt, &dn, 0) == 0) {
          identity_.assign(reinterpret_cast<const char*>(dn.data), dn.size);
          gnutls_free(dn.data);
        }
        gnutls_x509_crt_deinit(crt);
      }
    }
  } else {
    stage_ = Stage::failed;
  }
  io::Completion* owner = owner_;
  if (from_ring) {
    owner->on_complete(result, 0);  // may destroy this transport
  } else {  // still inside handshake(): the caller is not ready to be called back
    reactor_->defer([owner, result] { owner->on_complete(result, 0); });
  }
}

std::string TlsTransport::description() const {
  gnutls_session_t session = as_session(session_);
  char* text = gnutls_session_get_desc(session);
  std::string out = text ? text : "TLS";
  gnutls_free(text);
  return out;
}

// ---------------------------------------------------------------- records

void TlsTransport::arm_cipher_recv(io::Reactor& reactor) noexcept {
  reactor_ = &reactor;
  if (in_start_ == in_end_) {
    in_start_ = in_end_ = 0;
  } else if (in_end_ == kCipherIn) {
    std::memmove(in_.get(), in_.get() + in_start_, in_end_ - in_start_);
    in_end_ -= in_start_;
    in_start_ = 0;
  }
  io_uring_prep_recv(reactor.prepare(&cipher_recv_), fd_, in_.get() + in_end_, kCipherIn - in_end_, 0);
  cipher_recv_pending_ = true;
}

void TlsTransport::recv(io::Reactor& reactor, io::Completion* owner, uint8_t* buffer, uint32_t length) noexcept {
  reactor_ = &reactor;
  owner_ = owner;
  recv_buffer_ = buffer;
  recv_length_ = length;
  cancelled_ = false;
  const int32_t result = open_records();
  if (result == -EAGAIN) return arm_cipher_recv(reactor);
  // Plaintext GnuTLS already held: delivered as a ring completion would be.
  reactor.defer([owner, result] { owner->on_complete(result, 0); });
}

void TlsTransport::cancel(io::Reactor& reactor) noexcept {
  cancelled_ = true;
  if (cipher_recv_pending_) reactor.cancel(&cipher_recv_);
  if (writable_pending_) reactor.cancel(&writable_op_);
}

int32_t TlsTransport::open_records() noexcept {
  if (stage_ != Stage::records) return -EPROTO;
  gnutls_session_t session = as_session(session_);
  uint32_t got = 0;
  int32_t failure = -EAGAIN;
  while (got < recv_length_) {
    const ssize_t n = gnutls_record_recv(session, recv_buffer_ + got, recv_length_ - got);
    if (n > 0) {
      got += static_cast<uint32_t>(n);
      continue;
    }
    if (n == 0) {  // close_notify
      failure = 0;
      break;
    }
    if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) break;
    if (n == GNUTLS_E_REHANDSHAKE) {  // TLS 1.2 renegotiation: declined
      gnutls_alert_send(session, GNUTLS_AL_WARNING, GNUTLS_A_NO_RENEGOTIATION);
      continue;
    }
    if (!gnutls_error_is_fatal(static_cast<int>(n))) continue;
    error_ = gnutls_strerror(static_cast<int>(n));
    log_line("TLS: " + error_);
    stage_ = Stage::failed;
    failure = -EPROTO;
    break;
  }
  // Reading may have produced records of our own (a key update's answer).
  if (out_pending()) write_out();
  return got > 0 ? static_cast<int32_t>(got) : failure;
}

void TlsTransport::cipher_received(int32_t result) noexcept {
  cipher_recv_pending_ = false;
  const bool retry = result == -EAGAIN || result == -EINTR || result == -ENOBUFS;
  if (stage_ == Stage::handshake) {
    if (result > 0) {
      in_end_ += static_cast<uint32_t>(result);
      if (cancelled_) {
        error_ = "cancelled";
        handshake_finish(-ECANCELED, true);
      } else {
        handshake_step(true);
      }
    } else if (retry && !cancelled_) {
      arm_cipher_recv(*reactor_);
    } else {
      error_ = result == 0 ? "the client closed the connection during the TLS handshake"
                           : std::string("receive failed: ") + std::strerror(-result);
      handshake_finish(result == 0 ? -ECONNRESET : result, true);
    }
    return;
  }
  io::Completion* owner = owner_;
  if (result > 0) {
    in_end_ += static_cast<uint32_t>(result);
    result = open_records();
    if (result != -EAGAIN) return owner->on_complete(result, 0);
    if (!cancelled_) return arm_cipher_recv(*reactor_);
    return owner->on_complete(-ECANCELED, 0);
  }
  if (retry && !cancelled_) return arm_cipher_recv(*reactor_);
  owner->on_complete(result, 0);
}

bool TlsTransport::seal(const uint8_t* data, size_t length) noexcept {
  gnutls_session_t session = as_session(session_);
  while (length > 0) {
    const ssize_t n = gnutls_record_send(session, data, std::min<size_t>(length, kRecordPlaintext));
    if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) continue;  // the push never refuses
    if (n < 0) {
      error_ = gnutls_strerror(static_cast<int>(n));
      log_line("TLS: cannot seal a record: " + error_);
      stage_ = Stage::failed;
      return false;
    }
    data += n;
    length -= static_cast<size_t>(n);
  }
  return true;
}

bool TlsTransport::seal_gathered() noexcept {
  const uint32_t n = gathered_;
  gathered_ = 0;
  return seal(gather_.get(), n);
}

ssize_t TlsTransport::send(const iovec* iov, int count) noexcept {
  if (stage_ != Stage::records) return -EPIPE;
  if (out_pending()) {
    const int written = write_out();
    if (written < 0 && written != -EAGAIN) return written;
  }
  if (out_pending() >= kCipherOutHigh) return -EAGAIN;
  // Small pieces (reply headers, 4 KiB reads) are gathered into full
  // records; a piece of a whole record or more is sealed where it lies.
  size_t taken = 0;
  for (int i = 0; i < count && out_pending() < kCipherOutHigh; ++i) {
    const auto* p = static_cast<const uint8_t*>(iov[i].iov_base);
    size_t left = iov[i].iov_len;
    while (left > 0 && out_pending() < kCipherOutHigh) {
      if (gathered_ == 0 && left >= kRecordPlaintext) {
        if (!seal(p, kRecordPlaintext)) return taken ? static_cast<ssize_t>(taken) : -EPROTO;
        p += kRecordPlaintext;
        left -= kRecordPlaintext;
        taken += kRecordPlaintext;
        continue;
      }
      const uint32_t n = static_cast<uint32_t>(std::min<size_t>(left, kRecordPlaintext - gathered_));
      std::memcpy(gather_.get() + gathered_, p, n);
      gathered_ += n;
      p += n;
      left -= n;
      taken += n;
      if (gathered_ == kRecordPlaintext && !seal_gathered()) return -EPROTO;
    }
  }
  // Replies go out when the session sends them: nothing waits for a fuller
  // record.
  if (gathered_ && !seal_gathered()) return -EPROTO;
  const int written = write_out();
  if (written < 0 && written != -EAGAIN && taken == 0) return written;
  return taken > 0 ? static_cast<ssize_t>(taken) : -EAGAIN;
}

ssize_t TlsTransport::send_file(int fd, uint64_t offset, size_t length) noexcept {
  if (stage_ != Stage::records) return -EPIPE;
  if (out_pending() >= kCipherOutHigh) {
    const int written = write_out();
    if (written < 0) return written;
  }
  // Read into memory first: records are sealed in userspace. Sessions over
  // TLS ask their backend for buffers, so this serves only what is left.
  uint8_t buffer[kRecordPlaintext];
  const ssize_t n = ::pread(fd, buffer, std::min<size_t>(length, sizeof buffer), static_cast<off_t>(offset));
  if (n <= 0) return n < 0 ? -errno : 0;
  const iovec piece{buffer, static_cast<size_t>(n)};
  return send(&piece, 1);
}

int TlsTransport::flush() noexcept {
  if (stage_ == Stage::failed) return -EPROTO;
  if (gathered_ && !seal_gathered()) return -EPROTO;
  return write_out();
}

void TlsTransport::wait_writable(io::Reactor& reactor, io::Completion* owner) noexcept {
  io_uring_prep_poll_add(reactor.prepare(owner), fd_, POLLOUT);
}

}  // namespace ioband::net
