"""Text from a growing list of tokens: incremental decoding and stop strings.

A byte-level BPE token can end in the middle of a UTF-8 character (most CJK characters and
emoji take two or three tokens); decoding such a prefix yields U+FFFD. `IncrementalDetokenizer`
therefore only releases text once it no longer ends in U+FFFD, so a stream never shows a
replacement character that the full text does not have, and the concatenation of everything
it releases equals `tokenizer.decode(all ids)`.

`StopStrings` scans the released text for stop strings, holding back any tail that could be
the start of one, and cuts exactly before the first stop string found.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

REPLACEMENT = "\ufffd"


class Decoder(Protocol):
    """What decoding needs from a tokenizer (`plmkit.data.tokenizer.Tokenizer` has it)."""

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str: ...


class IncrementalDetokenizer:
    """Turns token ids, given a few at a time, into text deltas that never split a character.

    Each call decodes only a short window: the tokens since the last text release plus the
    tokens of the release before it (context that decoders such as WordPiece's need to place
    spaces), and returns the new part of that window's text.
    """

    def __init__(self, tokenizer: Decoder, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self._prefix = 0  # window start: first id of the previous release
        self._read = 0  # ids before this were released as text

    def _text(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def add(self, ids: Iterable[int]) -> str:
        """Append ids; return the text they complete ('' while a character is still incomplete)."""
        self.ids.extend(int(i) for i in ids)
        return self._release(final=False)

    def flush(self) -> str:
        """The text still held back (an incomplete character at the very end stays U+FFFD)."""
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        before = self._text(self.ids[self._prefix : self._read])
        window = self._text(self.ids[self._prefix :])
        if len(window) <= len(before) or (window.endswith(REPLACEMENT) and not final):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return window[len(before) :]


class StopStrings:
    """Finds stop strings in streamed text: `feed` returns (text safe to show, stopped).

    Text that might be the beginning of a stop string is held back until it is clear; once a
    stop string appears, the text is cut right before its earliest occurrence and `stopped` is True.
    """

    def __init__(self, stop_strings: Sequence[str]) -> None:
        self.stop_strings = [s for s in stop_strings if s]
        self._pending = ""
        self.stopped = False

    def feed(self, text: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        self._pending += text
        hits = [i for i in (self._pending.find(s) for s in self.stop_strings) if i >= 0]
        if hits:
            self.stopped = True
            out, self._pending = self._pending[: min(hits)], ""
            return out, True
        keep = self._held_back(self._pending)
        out, self._pending = self._pending[: len(self._pending) - keep], self._pending[len(self._pending) - keep :]
        return out, False

    def flush(self) -> str:
        """The held-back tail at the end of the stream (no stop string completed it)."""
        out, self._pending = self._pending, ""
        return "" if self.stopped else out

    def _held_back(self, text: str) -> int:
        """Length of the longest tail of `text` that is a proper prefix of a stop string."""
        for n in range(min(len(text), max((len(s) for s in self.stop_strings), default=1) - 1), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self.stop_strings):
                return n
        return 0


class TextStream:
    """Incremental text of one generated row: detokenization plus stop strings."""

    def __init__(self, tokenizer: Decoder, stop_strings: Sequence[str] = ()) -> None:
        self.detokenizer = IncrementalDetokenizer(tokenizer)
        self.stops = StopStrings(stop_strings)
        self.text = ""

    @property
    def stopped(self) -> bool:
        return self.stops.stopped

    def add(self, ids: Iterable[int]) -> str:
        """Append ids; return the new text that is safe to show."""
        out, _ = self.stops.feed(self.detokenizer.add(ids))
        self.text += out
        return out

    def finish(self) -> str:
        """Release everything still held back (the row has ended)."""
        out, _ = self.stops.feed(self.detokenizer.flush())
        out += self.stops.flush()
        self.text += out
        return out
