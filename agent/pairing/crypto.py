"""The cryptography of pairing: SPAKE2, key confirmation and sealed identities.

Nothing here is home-made: the password-authenticated key exchange is SPAKE2 (Abdalla and
Pointcheval, 2005; RFC 9382 describes the protocol) from the ``spake2`` package on its default
Ed25519 group, and every other primitive comes from ``cryptography`` (HKDF RFC 5869, HMAC-SHA256
RFC 2104, ChaCha20-Poly1305 RFC 8439).

Roles: the **joiner** (who typed the code) is SPAKE2 side A, the **shower** (who displays it) is
side B. Both bind the node IDs their session preambles claim (``idA`` = joiner, ``idB`` =
shower), so a key agreed with one node is useless with another.

Key schedule, after ``K = SPAKE2.finish(...)`` (32 bytes)::

    transcript = SHA-256(len-prefixed: "florete-pairing-v1", idA, idB, msgA, msgB)
    mac_a | mac_b | seal_a | seal_b = HKDF-SHA256(K, salt=transcript,
                                                  info="florete pairing v1 keys", 128 bytes)
    confirm_b = HMAC-SHA256(mac_b, "B" + transcript)     shower -> joiner (RFC 9382 §4)
    confirm_a = HMAC-SHA256(mac_a, "A" + transcript)     joiner -> shower

A confirmation that does not verify means the other side used another code. Identities travel
sealed with ChaCha20-Poly1305: ``seal_a`` for what the joiner sends, ``seal_b`` for the shower's,
a random 96-bit nonce in front of each box and the transcript as associated data.
"""

from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from spake2 import SPAKE2_A, SPAKE2_B, SPAKEError
from spake2.ed25519_basic import NotOnCurve

from agent.errors import RemoteProtocolError
from agent.pairing.wire import MAC_SIZE, PAKE_MESSAGE_SIZE

__all__ = [
    "MAC_SIZE",
    "PAKE_MESSAGE_SIZE",
    "PairingKeys",
    "Spake",
    "open_box",
    "seal_box",
]

_NONCE = 12
_LABEL = b"florete-pairing-v1"


def _prefixed(*parts: bytes) -> bytes:
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


class PairingKeys:
    """The keys both sides derive from one SPAKE2 run (see the module docstring).

    Attributes:
        transcript: SHA-256 of the exchange, 32 bytes.
    """

    def __init__(self, shared: bytes, transcript: bytes) -> None:
        self.transcript = transcript
        okm = HKDF(
            algorithm=hashes.SHA256(),
            length=128,
            salt=transcript,
            info=b"florete pairing v1 keys",
        ).derive(shared)
        self._mac = {"A": okm[:32], "B": okm[32:64]}
        self._seal = {"A": okm[64:96], "B": okm[96:]}

    def confirmation(self, side: str) -> bytes:
        """The key confirmation ``side`` (``"A"`` joiner, ``"B"`` shower) sends, 32 bytes."""
        mac = hmac.HMAC(self._mac[side], hashes.SHA256())
        mac.update(side.encode() + self.transcript)
        return mac.finalize()

    def confirms(self, side: str, received: bytes) -> bool:
        """True when ``received`` is ``side``'s confirmation (constant-time comparison)."""
        mac = hmac.HMAC(self._mac[side], hashes.SHA256())
        mac.update(side.encode() + self.transcript)
        try:
            mac.verify(received)
        except InvalidSignature:
            return False
        return True

    def seal(self, side: str, plaintext: bytes) -> bytes:
        """Encrypt and authenticate what ``side`` sends: nonce (12 bytes) + ciphertext + tag."""
        return seal_box(self._seal[side], plaintext, self.transcript)

    def open(self, side: str, box: bytes) -> bytes:
        """Decrypt what ``side`` sent.

        Raises:
            RemoteProtocolError: the box is short or does not authenticate.
        """
        return open_box(self._seal[side], box, self.transcript)


def seal_box(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """ChaCha20-Poly1305 with a random nonce; returns ``nonce + ciphertext + tag``."""
    nonce = os.urandom(_NONCE)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, associated)


def open_box(key: bytes, box: bytes, associated: bytes) -> bytes:
    """Open a :func:`seal_box` box.

    Raises:
        RemoteProtocolError: the box is shorter than nonce and tag, or fails authentication.
    """
    if len(box) < _NONCE + 16:
        raise RemoteProtocolError(f"sealed box of {len(box)} bytes is too short")
    try:
        return ChaCha20Poly1305(key).decrypt(box[:_NONCE], box[_NONCE:], associated)
    except InvalidTag:
        raise RemoteProtocolError("sealed box does not authenticate") from None


class Spake:
    """One side of one SPAKE2 run.

    Args:
        side: ``"A"`` (joiner) or ``"B"`` (shower).
        code: the 8-digit code, the shared password.
        joiner_id: the joiner's node ID (``idA``).
        shower_id: the shower's node ID (``idB``).
    """

    def __init__(self, side: str, code: str, joiner_id: str, shower_id: str) -> None:
        cls = SPAKE2_A if side == "A" else SPAKE2_B
        self.side = side
        self._ids = (joiner_id.encode(), shower_id.encode())
        self._spake = cls(code.encode(), idA=self._ids[0], idB=self._ids[1])
        self.message: bytes = self._spake.start()
        """This side's SPAKE2 message (:data:`PAKE_MESSAGE_SIZE` bytes)."""

    def finish(self, peer_message: bytes) -> PairingKeys:
        """Complete the exchange with the other side's message.

        Returns:
            The derived keys. They agree with the peer's only when both used the same code;
            the key confirmation tells.

        Raises:
            RemoteProtocolError: the message is not a SPAKE2 message of the other side (wrong
                size, same side, a point not on the curve, our own message reflected).
        """
        if len(peer_message) != PAKE_MESSAGE_SIZE:
            raise RemoteProtocolError(
                f"SPAKE2 message of {len(peer_message)} bytes, expected {PAKE_MESSAGE_SIZE}"
            )
        try:
            shared: bytes = self._spake.finish(peer_message)
        except (SPAKEError, NotOnCurve, ValueError, ArithmeticError) as err:
            reason = str(err) or type(err).__name__
            raise RemoteProtocolError(f"bad SPAKE2 message: {reason}") from None
        msg_a, msg_b = (
            (self.message, peer_message) if self.side == "A" else (peer_message, self.message)
        )
        transcript = hashlib.sha256(_prefixed(_LABEL, *self._ids, msg_a, msg_b)).digest()
        return PairingKeys(shared, transcript)
