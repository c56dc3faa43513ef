"""A throwaway PKI made with the openssl CLI: a CA, a broker certificate for 127.0.0.1/localhost, a
client certificate, the same client key encrypted, and a second, unrelated CA (the "wrong CA")."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_key_encrypted: Path  # passphrase "secret"
    rogue_ca: Path  # a CA that signed nothing here


def _openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    assert binary, "openssl not found; install the openssl package (see .ci/run)"
    result = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"openssl {' '.join(args)}:\n{result.stderr}"


def _key(name: str, cwd: Path) -> str:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", name, cwd=cwd)
    return name


def _ca(name: str, cwd: Path) -> tuple[str, str]:
    key = _key(f"{name}.key", cwd)
    cert = f"{name}.crt"
    _openssl(
        *("req", "-x509", "-new", "-key", key, "-out", cert, "-days", "3", "-subj", f"/CN=birdwatch test {name}"),
        *("-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"),
        cwd=cwd,
    )
    return cert, key


def _leaf(name: str, ca: tuple[str, str], extensions: list[str], cwd: Path) -> tuple[str, str]:
    key = _key(f"{name}.key", cwd)
    csr, cert, ext = f"{name}.csr", f"{name}.crt", f"{name}.ext"
    (cwd / ext).write_text(
        "\n".join(
            [
                "basicConstraints=CA:FALSE",
                "keyUsage=critical,digitalSignature,keyEncipherment",
                "subjectKeyIdentifier=hash",
                "authorityKeyIdentifier=keyid,issuer",
                *extensions,
            ]
        )
        + "\n"
    )
    _openssl("req", "-new", "-key", key, "-out", csr, "-subj", f"/CN={name}", cwd=cwd)
    _openssl(
        *("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial"),
        *("-out", cert, "-days", "2", "-extfile", ext),
        cwd=cwd,
    )
    return cert, key


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca("ca", directory)
    server = _leaf(
        "broker", ca, ["extendedKeyUsage=serverAuth", "subjectAltName=IP:127.0.0.1,DNS:localhost"], directory
    )
    client = _leaf("birdwatch", ca, ["extendedKeyUsage=clientAuth"], directory)
    _openssl(
        "pkey", "-in", client[1], "-out", "birdwatch-encrypted.key", "-aes256", "-passout", "pass:secret", cwd=directory
    )
    rogue = _ca("rogue-ca", directory)
    for key in directory.glob("*.key"):
        key.chmod(0o600)
    return Pki(
        ca=directory / ca[0],
        server_cert=directory / server[0],
        server_key=directory / server[1],
        client_cert=directory / client[0],
        client_key=directory / client[1],
        client_key_encrypted=directory / "birdwatch-encrypted.key",
        rogue_ca=directory / rogue[0],
    )
