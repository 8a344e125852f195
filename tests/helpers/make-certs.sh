#!/bin/bash
# make-certs.sh DIR [HOST...]: a CA and the server and client certificates it
# signs, in QEMU's tls-creds-x509 layout (ca-cert.pem, server-cert.pem,
# server-key.pem, client-cert.pem, client-key.pem), as QEMU's docs make them
# with certtool.  The server certificate names 127.0.0.1, ::1, localhost and
# each HOST (an IP address or a DNS name).  For tests and for trying rdmig
# out; an operator's certificates come from the site's own CA.
set -euo pipefail
dir=$1
shift
mkdir -p "$dir"
cd "$dir"
umask 077

cat > ca.info <<INFO
cn = rdmig test CA $(basename "$dir")
ca
cert_signing_key
expiration_days = 30
INFO
certtool --generate-privkey --key-type=ecdsa > ca-key.pem 2>/dev/null
certtool --generate-self-signed --load-privkey ca-key.pem --template ca.info \
	--outfile ca-cert.pem >/dev/null 2>&1

names="ip_address = 127.0.0.1
ip_address = ::1
dns_name = localhost"
for h in "$@"; do
	if [[ $h =~ ^[0-9.]+$ || $h == *:* ]]; then
		names+=$'\n'"ip_address = $h"
	else
		names+=$'\n'"dns_name = $h"
	fi
done

for who in server client; do
	{
		echo "organization = rdmig tests"
		echo "cn = rdmig test $who"
		[ $who = server ] && echo "$names"
		echo "tls_www_$who"
		echo "encryption_key"
		echo "signing_key"
		echo "expiration_days = 30"
	} > $who.info
	certtool --generate-privkey --key-type=ecdsa > $who-key.pem 2>/dev/null
	certtool --generate-certificate --load-ca-certificate ca-cert.pem \
		--load-ca-privkey ca-key.pem --load-privkey $who-key.pem \
		--template $who.info --outfile $who-cert.pem >/dev/null 2>&1
done
rm -f ca.info server.info client.info
