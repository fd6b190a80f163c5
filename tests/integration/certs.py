"""Throw-away certificate authorities and certificates for TLS tests, made with the openssl CLI.

    ca = make_ca(tmp, "test-ca")
    server = make_cert(ca, tmp, "server", server=True)   # SAN IP:127.0.0.1, DNS:localhost
    client = make_cert(ca, tmp, "client", server=False)  # clientAuth
    RuntimeClient(address, token, tls_ca=ca.cert, client_cert=client.cert, client_key=client.key)

(`cryptography` is not a dependency of the project; openssl is on every host that runs these.)
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CertPair", "make_ca", "make_cert", "have_openssl"]


@dataclass(frozen=True)
class CertPair:
    name: str
    cert: Path
    key: Path


def have_openssl() -> bool:
    return shutil.which("openssl") is not None


def _openssl(*args: str | Path, cwd: Path) -> None:
    result = subprocess.run(["openssl", *map(str, args)], cwd=cwd, capture_output=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(map(str, args))} failed:\n"
                           f"{result.stderr.decode(errors='replace')}")


def _key(path: Path, cwd: Path) -> None:
    # EC P-256: fast to generate, supported by gRPC's BoringSSL.
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", path, cwd=cwd)


def make_ca(directory: Path, name: str = "test-ca") -> CertPair:
    directory.mkdir(parents=True, exist_ok=True)
    key, cert, ext = directory / f"{name}.key", directory / f"{name}.pem", directory / f"{name}.ext"
    _key(key, directory)
    ext.write_text("[v3_ca]\nbasicConstraints = critical, CA:TRUE\n"
                   "keyUsage = critical, keyCertSign, cRLSign\nsubjectKeyIdentifier = hash\n")
    _openssl("req", "-x509", "-new", "-key", key, "-sha256", "-days", "2", "-subj", f"/CN={name}",
             "-config", ext, "-extensions", "v3_ca", "-out", cert, cwd=directory)
    return CertPair(name, cert, key)


def make_cert(ca: CertPair, directory: Path, name: str, server: bool = True) -> CertPair:
    """A leaf certificate signed by `ca`, valid for 127.0.0.1 and localhost."""
    directory.mkdir(parents=True, exist_ok=True)
    key, csr = directory / f"{name}.key", directory / f"{name}.csr"
    cert, ext = directory / f"{name}.pem", directory / f"{name}.ext"
    _key(key, directory)
    _openssl("req", "-new", "-key", key, "-subj", f"/CN={name}", "-out", csr, cwd=directory)
    usage = "serverAuth" if server else "clientAuth"
    ext.write_text("basicConstraints = critical, CA:FALSE\n"
                   "keyUsage = critical, digitalSignature, keyEncipherment\n"
                   f"extendedKeyUsage = {usage}\n"
                   "subjectAltName = IP:127.0.0.1, DNS:localhost\n")
    _openssl("x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key, "-CAcreateserial",
             "-days", "2", "-sha256", "-extfile", ext, "-out", cert, cwd=directory)
    return CertPair(name, cert, key)
