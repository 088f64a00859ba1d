"""How ``responses.raw`` is stored: zstd, with dictionaries trained on the archive's bodies.

Each ``responses`` row records its encoding in ``raw_codec`` (and ``raw_dict_id``):

- NULL or ``identity``: the body as received (rows written before migration 0008, and
  bodies that zstd would not make smaller);
- ``zstd``: a zstd frame without dictionary (before the first dictionary is trained);
- ``zstd+dict``: a zstd frame compressed with the dictionary ``raw_dict_id`` of
  ``archive_dictionaries``.

When dictionaries are trained (the writer, :mod:`archiver.store`, applies the rule): the
first once ``FIRST_TRAINING_AT`` bodies have been written, then each time the bodies
written grow ``RETRAIN_GROWTH``-fold; each from the most recent bodies, sized to them
(:func:`dictionary_size`), and kept only if it makes the bodies held out of its training
smaller (:func:`train_checked`). Bodies up to ``SMALL_BODY_BYTES`` are compressed with
a dictionary at ``SMALL_BODY_LEVEL``, everything else at ``LEVEL``; a zstd frame carries
all a reader needs, so decoding does not depend on the level.

A body keeps the dictionary it was written with; new dictionaries only change how new
bodies are written (the writer re-encodes the bodies it wrote as plain ``zstd`` once,
right after the first dictionary: :mod:`archiver.reencode`). :class:`Codec` is pure (no
database): callers hand it the dictionaries, and it keeps one compressor per dictionary
and level and one decompressor per dictionary, since preparing a 64 KiB dictionary costs
more than compressing a typical body. A codec is not thread-safe: use one per thread.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import zstandard

from archiver.errors import ArchiverError

IDENTITY = "identity"
ZSTD = "zstd"
ZSTD_DICT = "zstd+dict"
LEVEL = 3
"""zstd level of plain frames and of large bodies."""
SMALL_BODY_LEVEL = 9
"""zstd level of bodies up to ``SMALL_BODY_BYTES`` written with a dictionary: with one, level 9
makes mock and real bodies 6% smaller than level 3, for ~13 us more per 1.4 KB mock body and
~50 us per 4 KB real one (bench/codec_levels.py); level 12 gains 1% more at twice the cost."""
SMALL_BODY_BYTES = 64 * 1024
"""Bodies up to this size get ``SMALL_BODY_LEVEL`` with a dictionary; above it a dictionary
saves a smaller share and compression time grows with the body, so level 3 stays."""
DICTIONARY_SIZE = 64 * 1024
"""Most bytes of a trained dictionary (zstd's default size is 110 KB; 64 KiB was as good on the corpus)."""
SAMPLE_BYTES_PER_DICTIONARY_BYTE = 8
"""A dictionary is at most 1/8 of the bytes it is trained on: from fewer, zstd cannot fill it with
useful content (a 64 KiB one from 180 KB of mock bodies compressed them half as well as a 16 KiB one)."""
MIN_DICTIONARY_SIZE = 1024

FIRST_TRAINING_AT = 128
"""The first dictionary is trained once this many bodies have been written (one from 128 mock
bodies compresses others as well as one from 1,000; on real bodies, 16 already give most of the gain)."""
RETRAIN_GROWTH = 10
"""A new dictionary is trained when the bodies written reach this multiple of the last training's."""
TRAINING_SAMPLES = 2_000
"""At most this many of the most recent bodies up to ``SMALL_BODY_BYTES`` train a dictionary...

Larger ones do not: a dictionary helps a body less the larger it is, and their long opaque
payloads (base64 images) crowd useful content out of it. On the corpus, a dictionary
trained on its bodies up to 64 KiB made other small bodies 6-10% smaller than one trained
on all of them, and the largest bodies are as small with either."""
TRAINING_BYTES = 32 * 1024 * 1024
"""...and at most this many bytes of them."""
HELD_OUT_EVERY = 5
"""One sample in this many is held out of training, to check the dictionary on bodies it has not seen."""
MIN_GAIN = 0.02
"""A dictionary is kept only if it makes the held-out bodies at least this much smaller than plain zstd."""


class MissingDictionary(ArchiverError):
    """A body was compressed with a dictionary that is not in archive_dictionaries."""


class UnknownCodec(ArchiverError):
    """A body is stored with an encoding this version of archiver does not know."""


class DamagedBody(ArchiverError):
    """A stored body does not decode to the bytes that were received."""


def damaged(response_id: str, exc: ArchiverError) -> DamagedBody:
    """One line naming the response whose stored body cannot be read, and what to do."""
    return DamagedBody(
        f"the stored body of {response_id} is damaged ({exc}): restore the row from a backup, or "
        "fetch it again if the provider still has it (README, 'A damaged body')"
    )


def next_training_at(trained_on: int | None) -> int:
    """How many bodies written make the next dictionary due.

    Args:
        trained_on: the bodies written when the latest dictionary was trained (None: none yet).
    """
    if trained_on is None:
        return FIRST_TRAINING_AT
    return max(trained_on * RETRAIN_GROWTH, FIRST_TRAINING_AT)


def dictionary_size(sample_bytes: int) -> int:
    """Bytes of the dictionary to train on ``sample_bytes`` of samples.

    ``SAMPLE_BYTES_PER_DICTIONARY_BYTE`` says why it is not always ``DICTIONARY_SIZE``.
    """
    return max(MIN_DICTIONARY_SIZE, min(DICTIONARY_SIZE, sample_bytes // SAMPLE_BYTES_PER_DICTIONARY_BYTE))


def train(samples: Iterable[bytes], size: int | None = None) -> bytes:
    """A zstd dictionary trained on ``samples`` (decoded bodies).

    Args:
        samples: the bodies to train on.
        size: bytes of the dictionary; by default :func:`dictionary_size` of the samples.

    Raises:
        zstandard.ZstdError: too few or too small samples to train on.
    """
    chosen: list[bytes | bytearray | memoryview[int]] = list(samples)
    if size is None:
        size = dictionary_size(sum(len(s) for s in chosen))
    return zstandard.train_dictionary(size, chosen, level=LEVEL).as_bytes()


@dataclass(frozen=True, slots=True)
class Training:
    """A dictionary trained and checked on held-out samples (:func:`train_checked`)."""

    data: bytes
    trained_on: int
    """Samples it was trained on."""
    held_out: int
    """Samples it was checked on."""
    plain_bytes: int
    """The held-out samples as the writer stores them without a dictionary."""
    dictionary_bytes: int
    """The same with this dictionary."""

    @property
    def useful(self) -> bool:
        """True when the dictionary makes the held-out bodies at least ``MIN_GAIN`` smaller."""
        return self.dictionary_bytes <= self.plain_bytes * (1 - MIN_GAIN)


def train_checked(samples: Sequence[bytes]) -> Training:
    """Train on all samples but one in ``HELD_OUT_EVERY`` and measure the rest with it.

    Samples larger than ``SMALL_BODY_BYTES`` are left out (see ``TRAINING_SAMPLES``). A
    dictionary from too few or too unlike bodies can be worse than none; the held-out
    bodies say so (:attr:`Training.useful`), measured exactly as :meth:`Codec.encode`
    would store them.

    Raises:
        zstandard.ZstdError: too few or too small samples to train on.
    """
    samples = [s for s in samples if len(s) <= SMALL_BODY_BYTES]
    held_out = list(samples[HELD_OUT_EVERY - 1 :: HELD_OUT_EVERY])
    training = [s for i, s in enumerate(samples) if i % HELD_OUT_EVERY != HELD_OUT_EVERY - 1]
    data = train(training)
    plain, with_dictionary = Codec(), Codec({1: data})
    return Training(
        data=data,
        trained_on=len(training),
        held_out=len(held_out),
        plain_bytes=sum(len(plain.encode(body)[0]) for body in held_out),
        dictionary_bytes=sum(len(with_dictionary.encode(body)[0]) for body in held_out),
    )


def level_for(body_bytes: int, with_dictionary: bool) -> int:
    """The zstd level a body of ``body_bytes`` is written with (see ``SMALL_BODY_LEVEL``)."""
    return SMALL_BODY_LEVEL if with_dictionary and body_bytes <= SMALL_BODY_BYTES else LEVEL


class Codec:
    """Encodes new bodies with the newest dictionary and decodes any stored body.

    Args:
        dictionaries: dictionary bytes by ``archive_dictionaries.id`` (at least the ones the
            bodies to decode were written with); more can be added with :meth:`add`.
    """

    def __init__(self, dictionaries: Mapping[int, bytes] | None = None) -> None:
        self._dictionaries: dict[int, zstandard.ZstdCompressionDict] = {}
        self._compressors: dict[tuple[int | None, int], zstandard.ZstdCompressor] = {}
        self._decompressors: dict[int | None, zstandard.ZstdDecompressor] = {}
        self.current: int | None = None
        """The dictionary new bodies are written with (the highest id), None for plain zstd."""
        for dict_id, data in sorted((dictionaries or {}).items()):
            self.add(dict_id, data)

    def add(self, dict_id: int, data: bytes) -> None:
        """Know dictionary ``dict_id``; the highest id becomes the one :meth:`encode` uses."""
        if dict_id not in self._dictionaries:
            self._dictionaries[dict_id] = zstandard.ZstdCompressionDict(data)
        if self.current is None or dict_id > self.current:
            self.current = dict_id

    def encode(self, raw: bytes) -> tuple[bytes, str, int | None]:
        """``(stored bytes, raw_codec, raw_dict_id)`` for a body about to be written."""
        dict_id = self.current
        try:
            stored = self._compressor(dict_id, len(raw)).compress(raw)
        except zstandard.ZstdError:
            if dict_id is None:
                raise
            # A dictionary damaged in the database (on disk, or by hand) cannot compress:
            # plain zstd keeps the daemon archiving (compact re-encodes once it is restored).
            dict_id = None
            stored = self._compressor(None, len(raw)).compress(raw)
        if len(stored) >= len(raw):
            return raw, IDENTITY, None
        return stored, (ZSTD if dict_id is None else ZSTD_DICT), dict_id

    def _compressor(self, dict_id: int | None, size: int) -> zstandard.ZstdCompressor:
        level = level_for(size, dict_id is not None)
        compressor = self._compressors.get((dict_id, level))
        if compressor is None:
            if dict_id is None:
                compressor = zstandard.ZstdCompressor(level=level)
            else:
                compressor = zstandard.ZstdCompressor(level=level, dict_data=self._dictionaries[dict_id])
            self._compressors[dict_id, level] = compressor
        return compressor

    def decode(self, stored: bytes, raw_codec: str | None, raw_dict_id: int | None) -> bytes:
        """The body exactly as received, from a row's ``raw``, ``raw_codec`` and ``raw_dict_id``.

        Raises:
            MissingDictionary: the row names a dictionary this codec was not given.
            UnknownCodec: ``raw_codec`` is not one this version writes.
            DamagedBody: zstd cannot decode it (it may also decode damaged bytes without
                an error: see :meth:`decode_exact`).
        """
        if raw_codec is None or raw_codec == IDENTITY:
            return bytes(stored)
        if raw_codec == ZSTD:
            key: int | None = None
        elif raw_codec == ZSTD_DICT:
            if raw_dict_id is None or raw_dict_id not in self._dictionaries:
                raise MissingDictionary(
                    f"the body was compressed with dictionary {raw_dict_id}, "
                    "which is not in archive_dictionaries"
                )
            key = raw_dict_id
        else:
            raise UnknownCodec(f"unknown raw_codec {raw_codec!r}")
        try:
            return self._decompressor(key).decompress(stored)
        except zstandard.ZstdError as exc:  # the frame, or the dictionary (damaged on disk)
            raise DamagedBody(f"zstd: {exc}") from None

    def _decompressor(self, key: int | None) -> zstandard.ZstdDecompressor:
        decompressor = self._decompressors.get(key)
        if decompressor is None:
            if key is None:
                decompressor = zstandard.ZstdDecompressor()
            else:
                decompressor = zstandard.ZstdDecompressor(dict_data=self._dictionaries[key])
            self._decompressors[key] = decompressor
        return decompressor

    def decode_exact(
        self, stored: bytes, raw_codec: str | None, raw_dict_id: int | None, raw_sha256: str
    ) -> bytes:
        """:meth:`decode`, checked against the row's ``raw_sha256``.

        A zstd frame carries no checksum: a stored body or a dictionary damaged on disk
        mostly decodes to other bytes without an error, so whatever hands a body out as the
        one received (``show``, the export) checks it.

        Raises:
            DamagedBody: it cannot be decoded, or not to the bytes received.
            MissingDictionary, UnknownCodec: see :meth:`decode`.
        """
        body = self.decode(stored, raw_codec, raw_dict_id)
        if hashlib.sha256(body).hexdigest() != raw_sha256:
            raise DamagedBody("it does not decode to the bytes received: raw_sha256 differs")
        return body

    def decode_received(
        self, response_id: str, stored: bytes, raw_codec: str | None, raw_dict_id: int | None, raw_sha256: str
    ) -> bytes:
        """:meth:`decode_exact` of the body ``show`` and the export hand out as received.

        Raises:
            DamagedBody: one line naming ``response_id`` and what to do (:func:`damaged`),
                for a body that cannot be read back exactly, whatever the reason.
        """
        try:
            return self.decode_exact(stored, raw_codec, raw_dict_id, raw_sha256)
        except (DamagedBody, MissingDictionary, UnknownCodec) as exc:  # never handed out as received
            raise damaged(response_id, exc) from None
