"""Who may say what on a fleet: Ed25519 robot keys and the trusted-keys file (``cryptography``, imported lazily).

Each robot holds one Ed25519 private key (``jepa-edge fleet keygen``: a PKCS#8
PEM file, mode 0600). Every robot of a fleet reads the same *trusted-keys
file*, a JSON object that maps each agent to its public key and the message
kinds it may send::

    {"version": 1,
     "agents": {"agentA": {"public_key": "<64 hex: 32-byte raw Ed25519 key>",
                           "kinds": ["card", "probe", "postcard", "anchors_req", "anchors", "outputs"]}}}

A key is named on the wire by its *key id*: the first 16 hex characters of
sha256(raw public key). What is signed (domain-separated, so a signature of
one message type never verifies as another):

* enveloped messages: ``b"jepa-edge/fleet/v2/envelope\\0" + canonical envelope (sorted-key JSON without "sig")
  + b"\\0" + sha256(payload)``;
* outputs (no envelope): ``b"jepa-edge/fleet/v2/outputs\\0" + fleet + b"\\0" + agent + b"\\0" + the message bytes
  before the signature``.

Nothing here reads a key from the network: public keys come only from the
trusted-keys file; a message only names one by its id.
"""

from __future__ import annotations

import hashlib
import json
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jepa_edge.artifacts import ArtifactError
from jepa_edge.fleet.messages import KINDS, FleetMessageError, check_name

KEYS_VERSION = 1
SIG_BYTES = 64
KID_HEX = 16  # key id: 16 hex characters (8 bytes) of sha256(public key)
MAX_TRUST_BYTES = 1024 * 1024


class FleetKeyError(ArtifactError):
    """A key file or trusted-keys file that cannot be used (one line: which file, what, the fix)."""


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:
        raise FleetKeyError("signed fleet messages need the `cryptography` package: "
                            "pip install 'jepa-edge[fleet]'") from exc
    return ed25519


def key_id(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:KID_HEX]


class Signer:
    """This robot's private key: ``sign(message) -> 64 bytes``."""

    def __init__(self, private: Any) -> None:
        from cryptography.hazmat.primitives import serialization

        self._key = private
        self.public_raw = private.public_key().public_bytes(serialization.Encoding.Raw,
                                                            serialization.PublicFormat.Raw)
        self.kid = key_id(self.public_raw)
        self.kid8 = bytes.fromhex(self.kid)

    @classmethod
    def generate(cls) -> Signer:
        return cls(_crypto().Ed25519PrivateKey.generate())

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def private_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())


@dataclass(frozen=True)
class TrustedKey:
    agent: str
    public_raw: bytes
    kinds: frozenset[str]
    verifier: Any  # Ed25519PublicKey

    @property
    def kid(self) -> str:
        return key_id(self.public_raw)


class TrustStore:
    """Public keys by key id, each bound to one agent and the kinds it may send."""

    def __init__(self, keys: list[TrustedKey]) -> None:
        self.by_kid: dict[str, TrustedKey] = {}
        for k in keys:
            if k.kid in self.by_kid:
                raise FleetKeyError(f"trusted keys: {k.agent} and {self.by_kid[k.kid].agent} share one public key; "
                                    "give each robot its own (jepa-edge fleet keygen)")
            self.by_kid[k.kid] = k
        self.agents = {k.agent: k for k in keys}

    def verify(self, kid: str, agent: str, kind: str, message: bytes, sig: bytes) -> None:
        """Raise ``FleetMessageError`` unless ``sig`` is ``agent``'s signature of ``message`` by a key it owns."""
        key = self.by_kid.get(kid)
        if key is None:
            raise FleetMessageError(f"signed by unknown key {kid!r} (not in the trusted-keys file)")
        if key.agent != agent:
            raise FleetMessageError(f"signed with {key.agent}'s key, but sent as {agent}")
        if kind not in key.kinds:
            raise FleetMessageError(f"{agent} may not send {kind} (trusted kinds: {sorted(key.kinds)})")
        if len(sig) != SIG_BYTES:
            raise FleetMessageError(f"signature of {len(sig)} bytes, expected {SIG_BYTES}")
        from cryptography.exceptions import InvalidSignature

        try:
            key.verifier.verify(sig, message)
        except InvalidSignature:
            raise FleetMessageError("bad signature (message altered, or not signed by the key it names)") from None


def public_entry(signer: Signer, kinds: list[str] | None = None) -> dict[str, Any]:
    return {"public_key": signer.public_raw.hex(), "kinds": list(kinds or KINDS)}


def load_trust(path: str | Path) -> TrustStore:
    """Parse a trusted-keys file; every problem is one ``FleetKeyError`` naming the file and the fix."""
    return _trust_store(_read_trust(Path(path)), f"trusted-keys file {path}")


def _read_trust(path: Path) -> Any:
    """The trusted-keys file's JSON object (its shape is checked by ``_trust_store``)."""
    where = f"trusted-keys file {path}"
    try:
        data = _read_small(path, MAX_TRUST_BYTES)
        obj = json.loads(data.decode("utf-8"))
    except FileNotFoundError:
        raise FleetKeyError(f"{where} does not exist; write it with `jepa-edge fleet keygen AGENT "
                            "--trusted-keys FILE`") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FleetKeyError(f"{where} is not JSON ({str(exc)[:80]}); rewrite it with jepa-edge fleet keygen") from None
    return obj


def _trust_store(obj: Any, where: str) -> TrustStore:
    if not isinstance(obj, dict) or obj.get("version") != KEYS_VERSION or not isinstance(obj.get("agents"), dict):
        raise FleetKeyError(f'{where}: expected {{"version": {KEYS_VERSION}, "agents": {{NAME: {{public_key, '
                            'kinds}}}}}')
    ed25519 = _crypto()
    keys = []
    for agent, entry in obj["agents"].items():
        try:
            check_name("agent", agent)
        except FleetMessageError as exc:
            raise FleetKeyError(f"{where}: {exc}") from None
        if not isinstance(entry, dict) or set(entry) - {"public_key", "kinds"} or "public_key" not in entry:
            raise FleetKeyError(f"{where}: agents.{agent} must be {{public_key, kinds}}")
        hexkey, kinds = entry["public_key"], entry.get("kinds", list(KINDS))
        try:
            raw = bytes.fromhex(hexkey) if isinstance(hexkey, str) else b""
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise FleetKeyError(f"{where}: agents.{agent}.public_key must be 64 hex characters (a raw Ed25519 key)")
        if not isinstance(kinds, list) or not kinds or any(k not in KINDS for k in kinds):
            raise FleetKeyError(f"{where}: agents.{agent}.kinds must be a non-empty list of {list(KINDS)}")
        keys.append(TrustedKey(agent, raw, frozenset(kinds), ed25519.Ed25519PublicKey.from_public_bytes(raw)))
    return TrustStore(keys)


def load_signer(path: str | Path) -> Signer:
    """A robot's private key from its PEM file (refused if others may read it, as ssh does)."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise FleetKeyError(f"key file {path} does not exist; make one with `jepa-edge fleet keygen AGENT`") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise FleetKeyError(f"key file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
                            f"chmod 600 {path}")
    from cryptography.hazmat.primitives import serialization

    ed25519 = _crypto()
    try:
        key = serialization.load_pem_private_key(_read_small(path, 16384), password=None)
    except (ValueError, TypeError) as exc:
        raise FleetKeyError(f"key file {path} is not an unencrypted PEM private key ({str(exc)[:80]}); "
                            "make one with jepa-edge fleet keygen") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise FleetKeyError(f"key file {path} holds a {type(key).__name__}, not an Ed25519 key; "
                            "make one with jepa-edge fleet keygen")
    return Signer(key)


def write_private_key(path: str | Path, signer: Signer, overwrite: bool = False) -> None:
    """PKCS#8 PEM, created 0600 (never readable by others, not even for a moment)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace this robot's key")
    from jepa_edge.artifacts import atomic_write

    atomic_write(path, lambda f: f.write(signer.private_pem()), mode=0o600)


def add_trusted(path: str | Path, agent: str, signer: Signer, kinds: list[str] | None = None) -> None:
    """Add (or replace) ``agent``'s entry in a trusted-keys file, creating it if needed."""
    from jepa_edge.artifacts import atomic_write_json

    path = Path(path)
    check_name("agent", agent)
    obj: dict[str, Any] = {"version": KEYS_VERSION, "agents": {}}
    if path.exists():
        obj = _read_trust(path)
        _trust_store(obj, f"trusted-keys file {path}")  # refuse to extend a file that is already broken
    obj["agents"][agent] = public_entry(signer, kinds)
    atomic_write_json(path, obj, sort_keys=True)


def _read_small(path: Path, cap: int) -> bytes:
    with open(path, "rb") as f:
        data = f.read(cap + 1)
    if len(data) > cap:
        raise ValueError(f"over {cap} bytes")
    return data
