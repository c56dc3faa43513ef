"""The TLS client context of `mqtt.tls`. Built once when the config loads (rules.py), so a PEM file that is
not what its key says fails `check-config` and a reload, and again by the MQTT sink, which uses it."""

from __future__ import annotations

import ssl
from pathlib import Path

from birdwatch.config.schema import MqttTlsConfig
from birdwatch.errors import ConfigError


def tls_context(tls: MqttTlsConfig) -> ssl.SSLContext:
    """A client context: the broker's chain verified against `ca_file` (or the system CAs), our own
    certificate and key when given. Unreadable or mismatched PEM files are config errors."""
    ca_file, cert_file, key_file = (_expand(f) for f in (tls.ca_file, tls.cert_file, tls.key_file))
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(
            f"mqtt.tls.ca_file: {tls.ca_file!r} holds no usable CA certificate ({ssl_reason(exc)}); give a PEM file"
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:

        def no_passphrase() -> str:
            # OpenSSL would otherwise prompt on the terminal, or hang a service that has none.
            raise ConfigError(
                f"mqtt.tls.key_file: {tls.key_file!r} is encrypted; birdwatch needs it unencrypted "
                "(openssl pkey -in KEY -out KEY.plain; chmod 600 KEY.plain)"
            )

        try:
            context.load_cert_chain(cert_file, key_file, password=no_passphrase)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"mqtt.tls.cert_file/key_file: cannot load {tls.cert_file!r} with {tls.key_file!r} "
                f"({ssl_reason(exc)}); give the PEM client certificate and its own private key"
            ) from None
    if tls.insecure:
        context.check_hostname = False  # the chain is still verified (verify_mode stays CERT_REQUIRED)
    return context


def ssl_reason(exc: BaseException) -> str:
    """The readable part of an ssl or OS error, for one-line messages."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return exc.verify_message or str(exc)
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.replace("_", " ").lower()
    return getattr(exc, "strerror", None) or str(exc)


def _expand(name: str | None) -> str | None:
    # The load-time file check (binder.py) expands `~`; OpenSSL would not.
    return str(Path(name).expanduser()) if name else None
