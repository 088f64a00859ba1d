"""How ``responses.raw`` is stored: zstd, with dictionaries trained on the archive's bodies.

Each ``responses`` row records its encoding in ``raw_codec`` (and ``raw_dict_id``):

- NULL or ``identity``: the body as received (rows written before migration 0008, and
  bodies that zstd would not make smaller);
- ``zstd``: a zstd frame without dictionary (before the first dictionary is trained);
- ``zstd+dict``: a zstd frame compressed with the dictionary ``raw_dict_id`` of
  ``archive_dictionaries``.

A body keeps the dictionary it was written with; new dictionaries only change how new
bodies are written. :class:`Codec` is pure (no database): callers hand it the
dictionaries, and it keeps one compressor and one decompressor per dictionary, since
preparing a 64 KiB dictionary costs more than compressing a typical body. A codec is not
thread-safe: use one per thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import zstandard

from archiver.errors import ArchiverError

IDENTITY = "identity"
ZSTD = "zstd"
ZSTD_DICT = "zstd+dict"
LEVEL = 3
DICTIONARY_SIZE = 64 * 1024
"""Bytes of a trained dictionary (zstd's default size is 110 KB; 64 KiB was as good on the corpus)."""

FIRST_TRAINING_AT = 1_000
"""The first dictionary is trained once this many bodies have been written."""
RETRAIN_GROWTH = 10
"""A new dictionary is trained when the bodies written reach this multiple of the last training's."""
TRAINING_SAMPLES = 2_000
"""At most this many of the most recent bodies train a dictionary..."""
TRAINING_BYTES = 32 * 1024 * 1024
"""...and at most this many bytes of them."""


class MissingDictionary(ArchiverError):
    """A body was compressed with a dictionary that is not in archive_dictionaries."""


class UnknownCodec(ArchiverError):
    """A body is stored with an encoding this version of archiver does not know."""


def next_training_at(trained_on: int | None) -> int:
    """How many bodies written make the next dictionary due.

    Args:
        trained_on: the bodies written when the latest dictionary was trained (None: none yet).
    """
    if trained_on is None:
        return FIRST_TRAINING_AT
    return max(trained_on * RETRAIN_GROWTH, FIRST_TRAINING_AT)


def train(samples: Iterable[bytes], size: int = DICTIONARY_SIZE) -> bytes:
    """A zstd dictionary of ``size`` bytes trained on ``samples`` (decoded bodies).

    Raises:
        zstandard.ZstdError: too few or too small samples to train on.
    """
    return zstandard.train_dictionary(size, list(samples), level=LEVEL).as_bytes()


class Codec:
    """Encodes new bodies with the newest dictionary and decodes any stored body.

    Args:
        dictionaries: dictionary bytes by ``archive_dictionaries.id`` (at least the ones the
            bodies to decode were written with); more can be added with :meth:`add`.
    """

    def __init__(self, dictionaries: Mapping[int, bytes] | None = None) -> None:
        self._dictionaries: dict[int, zstandard.ZstdCompressionDict] = {}
        self._compressors: dict[int | None, zstandard.ZstdCompressor] = {}
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
        compressor = self._compressors.get(dict_id)
        if compressor is None:
            if dict_id is None:
                compressor = zstandard.ZstdCompressor(level=LEVEL)
            else:
                compressor = zstandard.ZstdCompressor(level=LEVEL, dict_data=self._dictionaries[dict_id])
            self._compressors[dict_id] = compressor
        stored = compressor.compress(raw)
        if len(stored) >= len(raw):
            return raw, IDENTITY, None
        return stored, (ZSTD if dict_id is None else ZSTD_DICT), dict_id

    def decode(self, stored: bytes, raw_codec: str | None, raw_dict_id: int | None) -> bytes:
        """The body exactly as received, from a row's ``raw``, ``raw_codec`` and ``raw_dict_id``.

        Raises:
            MissingDictionary: the row names a dictionary this codec was not given.
            UnknownCodec: ``raw_codec`` is not one this version writes.
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
        decompressor = self._decompressors.get(key)
        if decompressor is None:
            if key is None:
                decompressor = zstandard.ZstdDecompressor()
            else:
                decompressor = zstandard.ZstdDecompressor(dict_data=self._dictionaries[key])
            self._decompressors[key] = decompressor
        return decompressor.decompress(stored)
