"""A secured listener in front of the bundled broker, which serves plaintext only.

``SecuredListener`` terminates TLS (Python's ``ssl``; a client certificate from the test's CA
required) and runs the Kafka SASL exchange (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) itself, then
relays the connection's bytes to the broker unchanged. Start the broker advertising the
listener's port (``EmbeddedKafkaBroker(advertised_port=...)``) so metadata sends clients back
through it. ``make_certificates`` writes a CA with a server and a client certificate.

Kafka framing: a 4-byte big-endian size, then the request header (api key, version, correlation
id, client id) and the body; responses start with the correlation id. The listener advertises
SaslHandshake v1 and SaslAuthenticate v0-1 only, so the SASL messages it reads are never the
flexible (tagged-field) encodings.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import hmac
import ipaddress
import secrets
import ssl
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE = 18, 17, 36
SASL_VERSIONS = {SASL_HANDSHAKE: (1, 1), SASL_AUTHENTICATE: (0, 1)}
UNSUPPORTED_SASL_MECHANISM, SASL_AUTHENTICATION_FAILED = 33, 58
SCRAM_HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}
SCRAM_ITERATIONS = 4096


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server_certificate: Path
    server_key: Path
    client_certificate: Path
    client_key: Path


def make_certificates(directory: Path) -> Certificates:
    """A new CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM files."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"test CA {secrets.token_hex(4)}")])
    ca = _certificate(ca_name, ca_key.public_key(), ca_name, ca_key, ca=True)
    paths = Certificates(*(directory / name for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")))
    _write(paths.ca, ca.public_bytes(serialization.Encoding.PEM))
    for common_name, certificate_path, key_path in (
        ("127.0.0.1", paths.server_certificate, paths.server_key),
        ("order-service", paths.client_certificate, paths.client_key),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        _write(certificate_path, _certificate(name, key.public_key(), ca_name, ca_key, ca=False).public_bytes(serialization.Encoding.PEM))
        _write(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths


def _certificate(subject, public_key, issuer, issuer_key, *, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        alt_names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def server_tls_context(certificates: Certificates) -> ssl.SSLContext:
    """TLS that requires a client certificate issued by the certificates' CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certificates.ca))
    context.load_cert_chain(str(certificates.server_certificate), str(certificates.server_key))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


class SecuredListener:
    """Listens on ``port``; per connection: TLS if ``tls`` is given, the SASL exchange if ``users``
    (name -> password) is given, then a byte relay to the broker at ``upstream_port``."""

    def __init__(
        self,
        *,
        port: int,
        upstream_port: int,
        tls: ssl.SSLContext | None = None,
        users: dict[str, str] | None = None,
        mechanisms: tuple[str, ...] = ("PLAIN", *SCRAM_HASHES),
    ):
        self.port, self.upstream_port, self.tls, self.users, self.mechanisms = port, upstream_port, tls, users, mechanisms
        # (mechanism, user) of each connection that authenticated.
        self.sessions: list[tuple[str, str]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="secured-kafka-listener", daemon=True)

    def start(self) -> SecuredListener:
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._connection, "127.0.0.1", self.port, ssl=self.tls), self._loop
        )
        self._server = started.result(timeout=10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> SecuredListener:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    async def _connection(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            broker_reader, broker_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_writer.close()
            return
        try:
            if self.users is None or await self._authenticate(client_reader, client_writer, broker_reader, broker_writer):
                await asyncio.gather(_pipe(client_reader, broker_writer), _pipe(broker_reader, client_writer))
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass  # the client went away mid-exchange
        finally:
            client_writer.close()
            broker_writer.close()

    async def _authenticate(self, client_reader, client_writer, broker_reader, broker_writer) -> bool:
        """Answer the client's requests until SASL succeeded (True) or was refused (False)."""
        mechanism, scram = None, None
        while True:
            frame = await _read_frame(client_reader)
            api_key, version, correlation_id, client_id_length = struct.unpack(">hhih", frame[:10])
            body = frame[10 + max(client_id_length, 0) :]
            if api_key == API_VERSIONS:
                broker_writer.write(_frame(frame))
                answer = await _read_frame(broker_reader)
                client_writer.write(_frame(_with_sasl_versions(answer, version)))
            elif api_key == SASL_HANDSHAKE and version == 1:
                mechanism = _read_string(body, 0)[0]
                error = 0 if mechanism in self.mechanisms else UNSUPPORTED_SASL_MECHANISM
                names = b"".join(_string(name) for name in self.mechanisms)
                client_writer.write(_response(correlation_id, struct.pack(">hi", error, len(self.mechanisms)) + names))
                if error:
                    return False
            elif api_key == SASL_AUTHENTICATE and mechanism in self.mechanisms:
                (length,) = struct.unpack(">i", body[:4])
                token = body[4 : 4 + length]
                if mechanism == "PLAIN":
                    _authzid, user, password = token.decode().split("\0")
                    reply, failure, done = b"", None if self._password_matches(user, password) else "Invalid username or password", True
                else:
                    scram = scram or ScramServer(SCRAM_HASHES[mechanism], self.users)
                    reply, failure, done = scram.step(token)
                    user = scram.user
                client_writer.write(_authenticate_response(correlation_id, version, reply, failure))
                await client_writer.drain()
                if failure is None and done:
                    self.sessions.append((mechanism, user))
                if failure or done:
                    return failure is None
            else:  # anything else before authentication: the connection is closed, as Kafka does
                return False
            await client_writer.drain()

    def _password_matches(self, user: str, password: str) -> bool:
        expected = self.users.get(user)
        return expected is not None and hmac.compare_digest(expected.encode(), password.encode())


class ScramServer:
    """The server side of one SCRAM exchange (RFC 5802; SCRAM-SHA-256 is RFC 7677)."""

    def __init__(self, hash_name: str, users: dict[str, str]):
        self.hash_name, self.users = hash_name, users
        self.client_first_bare = self.server_first = self.user = ""
        self.salted_password = b""

    def _hmac(self, key: bytes, message: str | bytes) -> bytes:
        return hmac.new(key, message.encode() if isinstance(message, str) else message, self.hash_name).digest()

    def step(self, token: bytes) -> tuple[bytes, str | None, bool]:
        """The reply to the client's message, the failure (None if none) and whether the exchange is over."""
        message = token.decode()
        if not self.server_first:
            self.client_first_bare = message.split(",", 2)[2]  # after the GS2 header "n,,"
            attributes = dict(part.split("=", 1) for part in self.client_first_bare.split(","))
            self.user = attributes["n"]
            password = self.users.get(self.user, secrets.token_hex(16))  # an unknown user fails the proof
            salt = hashlib.sha256(self.user.encode()).digest()[:16]
            self.salted_password = hashlib.pbkdf2_hmac(self.hash_name, password.encode(), salt, SCRAM_ITERATIONS)
            nonce = attributes["r"] + secrets.token_urlsafe(18)
            self.server_first = f"r={nonce},s={base64.b64encode(salt).decode()},i={SCRAM_ITERATIONS}"
            return self.server_first.encode(), None, False
        without_proof, proof = message.rsplit(",p=", 1)
        auth_message = f"{self.client_first_bare},{self.server_first},{without_proof}"
        client_key = self._hmac(self.salted_password, "Client Key")
        stored_key = hashlib.new(self.hash_name, client_key).digest()
        signature = self._hmac(stored_key, auth_message)
        recovered = bytes(a ^ b for a, b in zip(base64.b64decode(proof), signature))
        if not hmac.compare_digest(hashlib.new(self.hash_name, recovered).digest(), stored_key):
            return b"", "Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM", True
        server_signature = self._hmac(self._hmac(self.salted_password, "Server Key"), auth_message)
        return f"v={base64.b64encode(server_signature).decode()}".encode(), None, True


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    return await reader.readexactly(size)


def _frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def _response(correlation_id: int, body: bytes) -> bytes:
    return _frame(struct.pack(">i", correlation_id) + body)


def _string(value: str) -> bytes:
    return struct.pack(">h", len(value.encode())) + value.encode()


def _read_string(data: bytes, offset: int) -> tuple[str, int]:
    (length,) = struct.unpack_from(">h", data, offset)
    return data[offset + 2 : offset + 2 + length].decode(), offset + 2 + length


def _authenticate_response(correlation_id: int, version: int, reply: bytes, failure: str | None) -> bytes:
    message = _string(failure) if failure else struct.pack(">h", -1)
    body = struct.pack(">h", SASL_AUTHENTICATION_FAILED if failure else 0) + message + struct.pack(">i", len(reply)) + reply
    if version >= 1:
        body += struct.pack(">q", 0)  # session lifetime: no re-authentication
    return _response(correlation_id, body)


def _varint(data: bytes, offset: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[offset]
        value |= (byte & 0x7F) << shift
        offset += 1
        if not byte & 0x80:
            return value, offset
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _with_sasl_versions(answer: bytes, version: int) -> bytes:
    """The broker's ApiVersions response listing SaslHandshake and SaslAuthenticate as this
    listener serves them (v3+ is flexible: compact array, tagged fields per entry)."""
    correlation_id, error = struct.unpack_from(">ih", answer)
    if error:
        return answer
    flexible = version >= 3
    count, offset = _varint(answer, 6) if flexible else (struct.unpack_from(">i", answer, 6)[0] + 1, 10)
    versions = {}
    for _ in range(count - 1):
        api_key, low, high = struct.unpack_from(">hhh", answer, offset)
        offset += 6
        if flexible:
            offset = _skip_tagged_fields(answer, offset)
        versions[api_key] = (low, high)
    versions.update(SASL_VERSIONS)
    entry_end = b"\0" if flexible else b""
    entries = b"".join(struct.pack(">hhh", key, *span) + entry_end for key, span in sorted(versions.items()))
    size = _encode_varint(len(versions) + 1) if flexible else struct.pack(">i", len(versions))
    return struct.pack(">ih", correlation_id, error) + size + entries + answer[offset:]


def _skip_tagged_fields(data: bytes, offset: int) -> int:
    fields, offset = _varint(data, offset)
    for _ in range(fields):
        _tag, offset = _varint(data, offset)
        size, offset = _varint(data, offset)
        offset += size
    return offset
