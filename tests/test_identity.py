"""Identity: addresses, signatures, safety words, the key file."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from sidedoor.errors import IdentityError, InsecureKeyFile, InvalidAddress
from sidedoor.identity import (
    ADDRESS_LEN,
    KEY_FILE,
    Identity,
    PublicIdentity,
    SignatureDomain,
    decode_address,
    encode_address,
    load_identity,
    load_or_create_identity,
    safety_words,
    verify_noise_proof,
)
from sidedoor.words import WORD_COUNT, wordlist

# RFC 8032 section 7.1, tests 1 to 3: (secret key, public key, message, signature).
RFC8032 = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
]


@pytest.mark.parametrize(("secret", "public", "message", "signature"), RFC8032)
def test_rfc8032_vectors(secret: str, public: str, message: str, signature: str) -> None:
    identity = Identity(bytes.fromhex(secret))
    assert identity.public.key.hex() == public
    # The raw primitive matches the RFC; sidedoor's own signatures add a domain prefix.
    raw = identity._signing_key.sign(bytes.fromhex(message))
    assert raw.hex() == signature


def test_signatures_are_domain_separated() -> None:
    identity = Identity(bytes(32))
    sig = identity.sign(SignatureDomain.NOISE_STATIC, b"payload")
    assert identity.public.verify(SignatureDomain.NOISE_STATIC, b"payload", sig)
    assert not identity.public.verify(SignatureDomain.CONTACT_CARD, b"payload", sig)
    assert not identity.public.verify(SignatureDomain.NOISE_STATIC, b"payloaD", sig)
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    assert not identity.public.verify(SignatureDomain.NOISE_STATIC, b"payload", flipped)


def test_noise_proof_binds_the_static_key() -> None:
    a, b = Identity(bytes(32)), Identity(bytes([1]) * 32)
    proof = a.sign(SignatureDomain.NOISE_STATIC, a.noise_public)
    assert verify_noise_proof(a.public.key, proof, a.noise_public)
    assert not verify_noise_proof(a.public.key, proof, b.noise_public)
    assert not verify_noise_proof(b.public.key, proof, a.noise_public)
    assert not verify_noise_proof(b"short", proof, a.noise_public)


def test_noise_key_is_derived_and_stable() -> None:
    seed = bytes(range(32))
    assert Identity(seed).noise_public == Identity(seed).noise_public
    assert Identity(seed).noise_public != Identity(bytes(32)).noise_public


@given(st.binary(min_size=32, max_size=32))
def test_address_round_trip(key: bytes) -> None:
    address = encode_address(key)
    assert len(address) == ADDRESS_LEN
    assert address == address.lower()
    assert decode_address(address) == key
    assert decode_address(address.upper()) == key
    spaced = " ".join(address[i : i + 6] for i in range(0, len(address), 6))
    assert decode_address(spaced) == key
    assert decode_address("-".join(address[i : i + 8] for i in range(0, len(address), 8))) == key


def test_address_reads_lookalike_digits() -> None:
    key = bytes(range(32))
    address = encode_address(key)
    typed = address[:2] + address[2:].replace("o", "0").replace("l", "1").replace("b", "8")
    assert decode_address(typed) == key


def test_every_single_character_typo_is_caught() -> None:
    rng = random.Random(7)
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    for _ in range(20):
        address = encode_address(rng.randbytes(32))
        for pos in range(2, len(address)):
            for replacement in rng.sample(alphabet, 4):
                if replacement == address[pos]:
                    continue
                typo = address[:pos] + replacement + address[pos + 1 :]
                with pytest.raises(InvalidAddress, match="typo"):
                    decode_address(typo)


def test_swapped_neighbours_are_caught() -> None:
    address = encode_address(bytes(range(32)))
    for pos in range(2, len(address) - 1):
        if address[pos] == address[pos + 1]:
            continue
        swapped = address[:pos] + address[pos + 1] + address[pos] + address[pos + 2 :]
        with pytest.raises(InvalidAddress, match="typo"):
            decode_address(swapped)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not a sidedoor address"),
        ("hello", "not a sidedoor address"),
        ("sd" + "a" * 10, "typo"),
        (encode_address(bytes(32))[:-1], "typo"),
        (encode_address(bytes(32)) + "a", "typo"),
        (encode_address(bytes(32))[:-1] + "!", "typo"),
        (encode_address(bytes(32))[:-1] + "9", "typo"),
    ],
)
def test_bad_addresses_say_why(text: str, message: str) -> None:
    with pytest.raises(InvalidAddress, match=message):
        decode_address(text)


def test_safety_words_are_symmetric_and_distinct() -> None:
    a, b, c = (Identity(bytes([i]) * 32).public for i in range(3))
    assert safety_words(a, b) == safety_words(b, a)
    assert safety_words(a, b) != safety_words(a, c)
    assert len(safety_words(a, b).split()) == 5
    assert all(w in wordlist() for w in safety_words(a, b).split())


def test_fingerprint_is_four_words() -> None:
    public = PublicIdentity(bytes(32))
    words = public.fingerprint().split("-")
    assert len(words) == 4 and all(w in wordlist() for w in words)


def test_wordlist_is_well_formed() -> None:
    words = wordlist()
    assert len(words) == WORD_COUNT == len(set(words))
    assert all(w.isalpha() and w.islower() and 3 <= len(w) <= 8 for w in words)


# ------------------------------------------------------------------ key file

def test_key_file_is_created_private(tmp_path: Path) -> None:
    home = tmp_path / "home"
    identity, created = load_or_create_identity(home)
    assert created
    key_file = home / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    again, created_again = load_or_create_identity(home)
    assert not created_again and again.address == identity.address
    # A standard PKCS#8 PEM file: other tools can read it.
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert key is not None


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    load_or_create_identity(tmp_path)
    key_file = tmp_path / KEY_FILE
    os.chmod(key_file, 0o644)
    with pytest.raises(InsecureKeyFile, match="chmod 600"):
        load_identity(tmp_path)
    with pytest.raises(InsecureKeyFile):
        load_or_create_identity(tmp_path)
    # Nothing was overwritten: fixing the mode brings the same identity back.
    os.chmod(key_file, 0o600)
    assert load_identity(tmp_path).address


def test_damaged_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / KEY_FILE
    key_file.write_bytes(b"not a key")
    os.chmod(key_file, 0o600)
    with pytest.raises(IdentityError, match="damaged"):
        load_identity(tmp_path)
    assert key_file.read_bytes() == b"not a key"
