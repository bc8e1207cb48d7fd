# TLS credentials for tests and benchmarks, made on the spot (ECDSA keys:
# milliseconds each). Source it; needs psktool and certtool (gnutls-bin).
#
#   make_psk FILE USER          appends USER:HEXKEY (psktool's format)
#   make_ca DIR CN              DIR/ca-key.pem, DIR/ca-cert.pem
#   make_cert DIR CA KIND CN [TEMPLATE_LINES]
#                               DIR/KIND-cert.pem and DIR/KIND-key.pem signed by
#                               CA's key (KIND server or client), DIR/ca-cert.pem;
#                               a server certificate names localhost and
#                               127.0.0.1; TEMPLATE_LINES replace the default
#                               validity (30 days), e.g. dates in the past.

make_psk() {
  mkdir -p "$(dirname "$1")"
  psktool -u "$2" -p "$1" >/dev/null 2>&1 || { echo "psktool failed for $1" >&2; return 1; }
}

make_ca() {
  local dir=$1
  mkdir -p "$dir"
  certtool --generate-privkey --key-type=ecdsa --outfile "$dir/ca-key.pem" >/dev/null 2>&1
  printf 'cn = %s\nca\ncert_signing_key\ncrl_signing_key\nexpiration_days = 30\n' "$2" >"$dir/ca.info"
  certtool --generate-self-signed --load-privkey "$dir/ca-key.pem" --template "$dir/ca.info" \
    --outfile "$dir/ca-cert.pem" >/dev/null 2>&1 || { echo "certtool: cannot make the CA in $dir" >&2; return 1; }
}

make_cert() {
  local dir=$1 ca=$2 kind=$3 cn=$4 validity=${5:-expiration_days = 30}
  mkdir -p "$dir"
  certtool --generate-privkey --key-type=ecdsa --outfile "$dir/$kind-key.pem" >/dev/null 2>&1
  {
    printf 'organization = ioband tests\ncn = %s\nsigning_key\nencryption_key\n%s\n' "$cn" "$validity"
    if [ "$kind" = server ]; then
      printf 'dns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\n'
    else
      printf 'tls_www_client\n'
    fi
  } >"$dir/$kind.info"
  certtool --generate-certificate --load-privkey "$dir/$kind-key.pem" --load-ca-certificate "$ca/ca-cert.pem" \
    --load-ca-privkey "$ca/ca-key.pem" --template "$dir/$kind.info" --outfile "$dir/$kind-cert.pem" >/dev/null 2>&1 ||
    { echo "certtool: cannot make the $kind certificate in $dir" >&2; return 1; }
  cp "$ca/ca-cert.pem" "$dir/ca-cert.pem"
}
