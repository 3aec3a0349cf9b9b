"""Decoders by name and by CoAP Content-Format, from the ``cityflux.decoders`` entry points."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from importlib.metadata import entry_points

from decoders.base import Decoder, TableSpec

ENTRY_POINT_GROUP = "cityflux.decoders"


class UnknownDecoderError(LookupError):
    """No decoder is registered under that name or content format."""


class DecoderRegistry:
    """Holds the decoders the service may use; looked up per frame by name or content format."""

    def __init__(self, decoders: Iterable[Decoder]) -> None:
        self._by_name: dict[str, Decoder] = {}
        self._by_format: dict[int, Decoder] = {}
        for dec in decoders:
            self.add(dec)

    def add(self, decoder: Decoder) -> None:
        """Register a decoder; a second one with the same name is an error."""
        if not isinstance(decoder, Decoder):
            raise TypeError(f"{decoder!r} does not implement the Decoder protocol")
        if decoder.name in self._by_name:
            raise ValueError(f"decoder {decoder.name!r} registered twice")
        self._by_name[decoder.name] = decoder
        for cf in decoder.content_formats:
            self._by_format.setdefault(cf, decoder)

    def get(self, name: str) -> Decoder:
        """The decoder registered as ``name``."""
        try:
            return self._by_name[name]
        except KeyError:
            known = ", ".join(sorted(self._by_name))
            raise UnknownDecoderError(f"unknown format {name!r} (known: {known})") from None

    def by_content_format(self, content_format: int) -> Decoder:
        """The decoder for a CoAP Content-Format number."""
        try:
            return self._by_format[content_format]
        except KeyError:
            raise UnknownDecoderError(f"no decoder for content format {content_format}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[Decoder]:
        return iter(self._by_name.values())

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._by_name)

    def tables(self) -> list[TableSpec]:
        """Every table any registered decoder may write, each once."""
        seen: dict[str, TableSpec] = {}
        for dec in self:
            for spec in dec.tables:
                seen.setdefault(spec.name, spec)
        return list(seen.values())


def load_registry() -> DecoderRegistry:
    """All decoders registered under the ``cityflux.decoders`` entry point group."""
    decoders = [ep.load() for ep in entry_points(group=ENTRY_POINT_GROUP)]
    return DecoderRegistry(sorted(decoders, key=lambda d: d.name))
