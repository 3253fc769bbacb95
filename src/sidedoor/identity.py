"""Who a node is: its Ed25519 key, the address made from it, and signatures.

The address is the Ed25519 public key in a text form a person can copy, paste
and read over the phone:

    "sd" + base32(public_key || check)      (lower case, no padding, 58 characters)

where ``check`` is three bytes of a BLAKE2b hash of the key. Parsing ignores
case, spaces and dashes, and reads the digits people confuse with letters
(0, 1, 8) as the letters base32 means (o, l, b). A mistyped address fails the
check instead of silently naming nobody.

Every signature is made over ``domain || 0x00 || message`` with a versioned
domain string (`SignatureDomain`), so a signature made for one purpose can
never be replayed as another.

The Noise static key (X25519) is derived from the Ed25519 seed with HKDF, so a
node has one secret file; the handshake proves the binding with a signature
(`SignatureDomain.NOISE_STATIC`).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sidedoor.errors import IdentityError, InsecureKeyFile, InvalidAddress
from sidedoor.words import bytes_to_words

ADDRESS_PREFIX = "sd"
KEY_LEN = 32
CHECK_LEN = 3
ADDRESS_LEN = len(ADDRESS_PREFIX) + 56  # 35 bytes of base32 without padding
KEY_FILE = "identity.key"

# Digits a person types for the base32 letters they resemble.
_LOOKALIKES = str.maketrans({"0": "o", "1": "l", "8": "b"})


class SignatureDomain(enum.Enum):
    """What a signature is for. The version is part of the string."""

    NOISE_STATIC = b"sidedoor noise-static v1"
    CONTACT_CARD = b"sidedoor contact-card v1"
    MAIL_ENVELOPE = b"sidedoor mail-envelope v1"


def _address_check(key: bytes) -> bytes:
    return hashlib.blake2b(key, digest_size=CHECK_LEN, person=b"sidedoor-addr-v1").digest()


def encode_address(key: bytes) -> str:
    if len(key) != KEY_LEN:
        raise ValueError(f"an Ed25519 public key is {KEY_LEN} bytes, got {len(key)}")
    text = base64.b32encode(key + _address_check(key)).decode("ascii").rstrip("=")
    return ADDRESS_PREFIX + text.lower()


def decode_address(text: str) -> bytes:
    """Parse an address typed or pasted by a person; return the 32-byte key."""
    cleaned = "".join(text.split()).replace("-", "").lower()
    if not cleaned.startswith(ADDRESS_PREFIX):
        raise InvalidAddress(
            f"{text.strip()[:20]!r} is not a sidedoor address (addresses start with "
            f"'{ADDRESS_PREFIX}'; `sidedoor id` prints yours)"
        )
    body = cleaned[len(ADDRESS_PREFIX) :].translate(_LOOKALIKES)
    if len(body) != ADDRESS_LEN - len(ADDRESS_PREFIX):
        raise InvalidAddress(
            f"this address has a typo: it has {len(body) + len(ADDRESS_PREFIX)} characters, "
            f"an address has {ADDRESS_LEN}"
        )
    try:
        raw = base64.b32decode(body.upper())
    except ValueError as exc:
        raise InvalidAddress("this address has a typo: it holds a character that cannot be "
                             "in an address") from exc
    key, check = raw[:KEY_LEN], raw[KEY_LEN:]
    if _address_check(key) != check:
        raise InvalidAddress("this address has a typo: its check does not match; "
                             "copy it again from the sender")
    return key


def signed_bytes(domain: SignatureDomain, message: bytes) -> bytes:
    return domain.value + b"\x00" + message


@dataclass(frozen=True, slots=True)
class PublicIdentity:
    """Someone's public identity: an Ed25519 public key."""

    key: bytes

    def __post_init__(self) -> None:
        if len(self.key) != KEY_LEN:
            raise ValueError(f"an Ed25519 public key is {KEY_LEN} bytes, got {len(self.key)}")

    @classmethod
    def from_address(cls, address: str) -> PublicIdentity:
        return cls(decode_address(address))

    @property
    def address(self) -> str:
        return encode_address(self.key)

    @property
    def short(self) -> str:
        """A short form for tables: the prefix and the first characters of the address."""
        return self.address[:10]

    def fingerprint(self) -> str:
        """Four words that stand for this identity; easy to read aloud."""
        digest = hashlib.blake2b(self.key, digest_size=4, person=b"sidedoor-fpr-v1").digest()
        return "-".join(bytes_to_words(digest))

    def verify(self, domain: SignatureDomain, message: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.key).verify(
                signature, signed_bytes(domain, message)
            )
        except (InvalidSignature, ValueError):
            return False
        return True


def verify_noise_proof(identity: bytes, signature: bytes, noise_static: bytes) -> bool:
    """Does ``signature`` prove that ``identity`` owns the Noise static key ``noise_static``?"""
    if len(identity) != KEY_LEN:
        return False
    return PublicIdentity(identity).verify(SignatureDomain.NOISE_STATIC, noise_static, signature)


def safety_words(a: PublicIdentity, b: PublicIdentity, count: int = 5) -> str:
    """Words both users see on their own screens; the same words mean no one is in between.

    Symmetric: the order of the two identities does not matter.
    """
    first, second = sorted((a.key, b.key))
    digest = hashlib.blake2b(
        first + second, digest_size=count, person=b"sidedoor-safe-v1"
    ).digest()
    return " ".join(bytes_to_words(digest))


class Identity:
    """This node's private identity."""

    __slots__ = ("_signing_key", "noise_private", "noise_public", "public")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != KEY_LEN:
            raise ValueError(f"an Ed25519 seed is {KEY_LEN} bytes, got {len(seed)}")
        self._signing_key = Ed25519PrivateKey.from_private_bytes(seed)
        self.public = PublicIdentity(
            self._signing_key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        )
        self.noise_private = HKDF(
            algorithm=hashes.BLAKE2b(64), length=KEY_LEN, salt=None,
            info=b"sidedoor noise-static-key v1",
        ).derive(seed)
        self.noise_public = (
            X25519PrivateKey.from_private_bytes(self.noise_private)
            .public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )

    @classmethod
    def generate(cls) -> Identity:
        return cls(os.urandom(KEY_LEN))

    @property
    def address(self) -> str:
        return self.public.address

    def sign(self, domain: SignatureDomain, message: bytes) -> bytes:
        return self._signing_key.sign(signed_bytes(domain, message))

    def seed_bytes(self) -> bytes:
        return self._signing_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )


def _check_key_file_mode(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InsecureKeyFile(
            f"the key file {path} can be read by other users (mode {stat.S_IMODE(mode):03o}); "
            f"anyone who reads it can pose as you. Run: chmod 600 {path}"
        )


def load_identity(home: Path) -> Identity:
    path = home / KEY_FILE
    try:
        _check_key_file_mode(path)
        pem = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise IdentityError(f"cannot read the key file {path}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except ValueError as exc:
        raise IdentityError(f"the key file {path} is damaged or not a sidedoor key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"the key file {path} holds a key of the wrong kind")
    return Identity(
        key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
    )


def load_or_create_identity(home: Path) -> tuple[Identity, bool]:
    """Load the identity from ``home``, creating it on first use. Returns (identity, created)."""
    try:
        return load_identity(home), False
    except FileNotFoundError:
        pass
    identity = Identity.generate()
    path = home / KEY_FILE
    pem = Ed25519PrivateKey.from_private_bytes(identity.seed_bytes()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        # Another process created it first: use theirs.
        return load_identity(home), False
    except OSError as exc:
        raise IdentityError(f"cannot create the key file {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    return identity, True
