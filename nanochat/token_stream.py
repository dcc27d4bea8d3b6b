"""
A queue of token lists read back to back as one stream, the way both training loaders cut batches:
pretraining documents (dataloader) and midtraining conversations (chat_data). Each list remembers
where it came from, so the head of the queue is an exact resume point.
"""

from collections import deque
from dataclasses import dataclass


@dataclass
class Piece:
    ids: list
    offset: int  # index of its next unconsumed token
    origin: tuple  # where it was read from (the loader's own resume coordinates)


class TokenStream:
    def __init__(self):
        self.pieces = deque()  # oldest first
        self.available = 0  # unconsumed tokens in the queue

    def push(self, ids, origin, offset=0):
        """Queue a document's tokens; `offset` > 0 when a resumed stream starts part-way into it."""
        self.pieces.append(Piece(ids, offset, origin))
        self.available += len(ids) - offset

    @property
    def head(self):  # the piece the next token comes from
        return self.pieces[0]

    def take(self, n):
        """Consume the next n tokens (the queue must hold them) and return them as one list."""
        out = []
        while len(out) < n:
            piece = self.head
            end = min(len(piece.ids), piece.offset + n - len(out))
            out.extend(piece.ids[piece.offset:end])
            piece.offset = end
            if end == len(piece.ids):
                self.pieces.popleft()
        self.available -= n
        return out

    def peek(self):
        """The next token, left in the stream: a batch's last target is the next batch's first input."""
        return self.head.ids[self.head.offset]
